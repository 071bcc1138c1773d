//! Fencing of the elected leader: a leader that cannot prove a recent renewal of its Lease
//! stops writing before another replica could take the Lease over.
//!
//! Another replica may take the Lease `duration` after its last renewal. The fence reads
//! the Lease every [`POLL`]; each time it shows this replica as holder with a new
//! `renewTime`, the local instant of that read is the proof of a renewal (at most one poll
//! late). When the newest proof is older than `duration - margin` (the API server is
//! unreachable, or the renewals stopped), or the Lease names another holder, the fence
//! fires and the caller aborts every write at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::time::Instant;

/// Time between two reads of the Lease.
pub const POLL: Duration = Duration::from_secs(1);

/// What one read of the Lease showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRead {
    /// The read failed or timed out: no proof either way.
    Failed,
    /// The Lease names this replica, renewed at this (server) time.
    Held(Option<String>),
    /// The Lease names no holder or another one.
    NotHeld,
}

/// The fence's state: the newest renewal seen and when it was seen.
#[derive(Debug)]
pub struct Fence {
    deadline: Duration,
    last_renew: Option<String>,
    proof: Instant,
}

impl Fence {
    /// A fence for a Lease of `duration`, firing `margin` before another replica could take
    /// it. Starts with a proof at `now` (leadership was just acquired).
    pub fn new(duration: Duration, margin: Duration, now: Instant) -> Self {
        Self {
            deadline: duration.saturating_sub(margin),
            last_renew: None,
            proof: now,
        }
    }

    /// Takes one read at `now`; true when this replica must stop writing.
    pub fn observe(&mut self, read: LeaseRead, now: Instant) -> bool {
        match read {
            LeaseRead::NotHeld => return true,
            LeaseRead::Held(renew) if renew != self.last_renew => {
                self.last_renew = renew;
                self.proof = now;
            }
            LeaseRead::Held(_) | LeaseRead::Failed => {}
        }
        now.saturating_duration_since(self.proof) > self.deadline
    }
}

/// Reads the Lease `name` through `api` and classifies it for `identity`.
async fn read(api: &Api<Lease>, name: &str, identity: &str) -> LeaseRead {
    match tokio::time::timeout(POLL, api.get_opt(name)).await {
        Ok(Ok(Some(lease))) => {
            let spec = lease.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(identity) {
                LeaseRead::Held(spec.renew_time.map(|t| format!("{:?}", t.0)))
            } else {
                LeaseRead::NotHeld
            }
        }
        Ok(Ok(None)) => LeaseRead::NotHeld,
        Ok(Err(_)) | Err(_) => LeaseRead::Failed,
    }
}

/// Resolves when this replica, holder of Lease `name` as `identity`, must stop writing.
pub async fn fenced(
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    margin: Duration,
) {
    let mut fence = Fence::new(duration, margin, Instant::now());
    loop {
        tokio::time::sleep(POLL).await;
        let seen = read(&api, &name, &identity).await;
        if fence.observe(seen.clone(), Instant::now()) {
            tracing::error!(
                lease = %name,
                last_read = ?seen,
                "no proof of a Lease renewal in time: fencing this replica (stopping all writes)"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renewals_keep_the_fence_open_and_silence_closes_it_before_the_lease_expires() {
        let t0 = Instant::now();
        let mut f = Fence::new(secs(15), secs(4), t0);
        // Renewed every 5 s: never fires.
        for i in 1..=6u64 {
            assert!(!f.observe(LeaseRead::Held(Some(format!("r{i}"))), t0 + secs(5 * i)));
        }
        // Then the API server goes away: reads fail. The last proof was at 30 s.
        assert!(!f.observe(LeaseRead::Failed, t0 + secs(36)));
        assert!(!f.observe(LeaseRead::Failed, t0 + secs(41)));
        // 11 s after the proof: fenced, 4 s before another replica may take the Lease.
        assert!(f.observe(LeaseRead::Failed, t0 + secs(41) + Duration::from_millis(1)));
    }

    #[test]
    fn the_same_renew_time_is_no_new_proof_and_another_holder_fences_at_once() {
        let t0 = Instant::now();
        let mut f = Fence::new(secs(15), secs(4), t0);
        assert!(!f.observe(LeaseRead::Held(Some("r1".into())), t0 + secs(1)));
        // The Lease is readable but no longer renewed (a stuck renewal task).
        assert!(!f.observe(LeaseRead::Held(Some("r1".into())), t0 + secs(11)));
        assert!(f.observe(LeaseRead::Held(Some("r1".into())), t0 + secs(13)));

        let mut f = Fence::new(secs(15), secs(4), t0);
        assert!(f.observe(LeaseRead::NotHeld, t0 + secs(1)));
    }
}
