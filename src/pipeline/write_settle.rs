//! Waiting out NetBox writes of an interrupted sync. NetBox goes on executing a request
//! after its client gave up (a timeout, a lost answer, a killed or fenced process): a bulk
//! create may commit seconds later. A sync that read the owned objects before that commit
//! would create them again. So a sync of an owner whose previous NetBox stage may have
//! left writes running first waits for the settle window; the owned duplicates that slip
//! through anyway are removed by the engine on the next sync.
//!
//! What is known in this process comes first (a sync that finished cleanly, or one that
//! lost answers or was dropped); for an owner this process has not synced yet, the
//! resource's status tells: a NetBox stage still `Reconciling` was never finished (the
//! process that ran it died).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Shortest settle window.
pub const MIN_SETTLE_WINDOW: Duration = Duration::from_secs(30);
/// Longest settle window.
pub const MAX_SETTLE_WINDOW: Duration = Duration::from_secs(10 * 60);

#[derive(Clone, Copy, Debug)]
enum Settle {
    /// The last NetBox stage of this owner ended with every write answered.
    Done,
    /// Writes may be running until then.
    Until(Instant),
}

/// Per owner mark: whether NetBox may still be executing writes of an earlier sync.
#[derive(Debug, Default)]
pub struct WriteSettle {
    owners: Mutex<HashMap<String, Settle>>,
}

/// How long NetBox may go on with a request its client gave up: twice the client's request
/// timeout (NetBox's own gunicorn timeout is 120 s by default, twice the default request
/// timeout of 60 s), within [`MIN_SETTLE_WINDOW`] and [`MAX_SETTLE_WINDOW`].
pub fn settle_window(request_timeout: Duration) -> Duration {
    request_timeout
        .saturating_mul(2)
        .clamp(MIN_SETTLE_WINDOW, MAX_SETTLE_WINDOW)
}

impl WriteSettle {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Settle>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when a sync of `owner` must wait before it reads NetBox, if at all.
    /// `interrupted_per_status`: the resource's status shows a NetBox stage that never
    /// finished (used only when this process knows nothing of the owner).
    pub fn wait_until(
        &self,
        owner: &str,
        interrupted_per_status: bool,
        window: Duration,
    ) -> Option<Instant> {
        let now = Instant::now();
        match self.owners().get(owner) {
            Some(Settle::Until(t)) if *t > now => Some(*t),
            Some(_) => None,
            // The writes of the dead process may have started just before it died: a full
            // window from now.
            None if interrupted_per_status => Some(now + window),
            None => None,
        }
    }

    /// Marks the start of writes for `owner`: unless [`SettleGuard::finished`] is called,
    /// dropping the guard (the sync was cancelled) leaves the writes unsettled for
    /// `window`.
    pub fn begin(self: &Arc<Self>, owner: &str, window: Duration) -> SettleGuard {
        SettleGuard {
            settle: self.clone(),
            owner: owner.to_string(),
            window,
            armed: true,
        }
    }
}

/// Records how a NetBox stage ended; see [`WriteSettle::begin`].
#[derive(Debug)]
pub struct SettleGuard {
    settle: Arc<WriteSettle>,
    owner: String,
    window: Duration,
    armed: bool,
}

impl SettleGuard {
    /// The stage ended; `lost_writes`: some write got no answer.
    pub fn finished(mut self, lost_writes: bool) {
        self.armed = false;
        let state = if lost_writes {
            Settle::Until(Instant::now() + self.window)
        } else {
            Settle::Done
        };
        self.settle.owners().insert(self.owner.clone(), state);
    }
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if self.armed {
            let until = Instant::now() + self.window;
            self.settle
                .owners()
                .insert(std::mem::take(&mut self.owner), Settle::Until(until));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    #[tokio::test(start_paused = true)]
    async fn only_an_interrupted_or_lossy_stage_makes_the_next_one_wait() {
        let s = Arc::new(WriteSettle::default());
        // Unknown owner, status clean: no wait. Status says interrupted: a full window.
        assert_eq!(s.wait_until("a", false, WINDOW), None);
        assert_eq!(
            s.wait_until("a", true, WINDOW),
            Some(Instant::now() + WINDOW)
        );
        // A clean stage in this process wins over a stale status.
        s.begin("a", WINDOW).finished(false);
        assert_eq!(s.wait_until("a", true, WINDOW), None);
        // Lost answers: wait the window from the end of the stage, then no more.
        s.begin("a", WINDOW).finished(true);
        let until = s.wait_until("a", false, WINDOW).unwrap();
        assert_eq!(until, Instant::now() + WINDOW);
        tokio::time::advance(WINDOW).await;
        assert_eq!(s.wait_until("a", false, WINDOW), None);
        // A stage dropped mid-way (deadline, abort): the same.
        let guard = s.begin("b", WINDOW);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        assert_eq!(
            s.wait_until("b", false, WINDOW),
            Some(Instant::now() + WINDOW)
        );
        assert_eq!(s.wait_until("a", false, WINDOW), None, "owners are apart");
    }

    #[test]
    fn the_window_is_twice_the_request_timeout_within_bounds() {
        assert_eq!(settle_window(Duration::from_secs(60)), WINDOW);
        assert_eq!(settle_window(Duration::from_secs(1)), MIN_SETTLE_WINDOW);
        assert_eq!(settle_window(Duration::MAX), MAX_SETTLE_WINDOW);
    }
}
