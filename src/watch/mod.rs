//! Near-real-time sync: between two full syncs, one cheap poll of `/cluster/resources` per
//! `spec.sync.watchInterval` finds the guests that changed, and only those are read again
//! from Proxmox; the NetBox sync then runs on the last inventory with them replaced, with
//! the same plan and apply code (and identity, ownership and zero-write rules) as a full
//! sync. A poll that fails or looks partial changes nothing: the next full sync decides.

pub mod changes;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::crd::facts::NodeHardware;
use crate::inventory::Inventory;
use crate::pve::client::PveApi;
use crate::pve::reader::ReadOptions;
use crate::pve::refresh::refresh_guests;
use crate::pve::resources::{ClusterResources, ReadResourcesError, read_resources};

pub use changes::{ChangeSet, GuestChange, PartialPoll, detect};

/// What a cluster's polls compare with: the last poll, and the inventory and hardware
/// facts of the last sync (full or targeted).
#[derive(Clone, Debug)]
pub struct WatchMemory {
    /// The last `/cluster/resources` answer.
    pub resources: ClusterResources,
    /// The inventory the last sync wrote to NetBox.
    pub inventory: Inventory,
    /// The hardware facts of the last full sync.
    pub hardware: BTreeMap<String, NodeHardware>,
}

/// What one poll found.
#[derive(Debug)]
pub enum PollOutcome {
    /// Nothing changed: no read beyond the poll, nothing to write.
    Idle,
    /// Guests changed: the inventory to sync, with them read again.
    Changed {
        /// What happened to each guest.
        changes: ChangeSet,
        /// The last inventory with the changed guests read again.
        inventory: Box<Inventory>,
        /// The poll's answer, the next poll's reference once the sync succeeded.
        resources: ClusterResources,
    },
    /// The poll looked partial: nothing is changed, the next full sync decides.
    Partial(PartialPoll),
    /// The poll failed: nothing is changed, the next poll or full sync tries again.
    Failed(ReadResourcesError),
    /// The poll (or the re-read of the changed guests) ran past its deadline.
    TimedOut(Duration),
}

/// What the poll of a targeted pass found, as the status and metrics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollRecord {
    /// Nothing changed; nothing else ran.
    Idle,
    /// Guests changed, and the NetBox sync ran for the inventory with them read again.
    Changed(ChangeSet),
    /// The poll looked partial; nothing else ran, the next pass is a full one.
    Partial(String),
    /// The poll failed; nothing else ran.
    Failed(String),
    /// The NetBox records provisioning looks at changed (or could not be read): nothing
    /// else ran, the next pass is a full one at once.
    Provisioning(String),
}

impl PollRecord {
    /// The record of a poll that ran nothing else (`Changed` only from the pass).
    pub fn from_outcome(outcome: &PollOutcome) -> Self {
        match outcome {
            PollOutcome::Idle => Self::Idle,
            PollOutcome::Changed { changes, .. } => Self::Changed(changes.clone()),
            PollOutcome::Partial(p) => Self::Partial(p.to_string()),
            PollOutcome::Failed(e) => Self::Failed(e.to_string()),
            PollOutcome::TimedOut(limit) => Self::Failed(format!(
                "the poll ran past its deadline of {}s",
                limit.as_secs()
            )),
        }
    }

    /// Stable name: metric label and log field.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Changed(_) => "changed",
            Self::Partial(_) => "partial",
            Self::Failed(_) => "failed",
            Self::Provisioning(_) => "provisioning",
        }
    }
}

/// Polls `/cluster/resources` and, when guests changed, reads them again.
pub async fn poll(api: &dyn PveApi, memory: &WatchMemory, opts: &ReadOptions) -> PollOutcome {
    let resources = match read_resources(api).await {
        Ok(r) => r,
        Err(e) => return PollOutcome::Failed(e),
    };
    let changes = match detect(&memory.resources, &resources) {
        Ok(c) if c.is_empty() => return PollOutcome::Idle,
        Ok(c) => c,
        Err(p) => return PollOutcome::Partial(p),
    };
    let read: Vec<_> = changes
        .iter()
        .filter(|(_, c)| **c != GuestChange::Destroyed)
        .filter_map(|(vmid, _)| resources.guests.get(vmid).cloned())
        .collect();
    let gone: BTreeSet<u32> = changes
        .iter()
        .filter(|(_, c)| **c == GuestChange::Destroyed)
        .map(|(vmid, _)| *vmid)
        .collect();
    let inventory = refresh_guests(api, &memory.inventory, &read, &gone, opts).await;
    PollOutcome::Changed {
        changes,
        inventory: Box::new(inventory),
        resources,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use serde_json::{Value, json};

    use super::*;
    use crate::inventory::Guest;
    use crate::pve::client::PveError;
    use crate::pve::resources::parse_resources;

    /// Answers from a map of paths, recording each request.
    struct Pve {
        answers: BTreeMap<String, Value>,
        requests: Mutex<Vec<String>>,
    }

    impl Pve {
        fn new(resources: Value) -> Self {
            let mut answers = BTreeMap::new();
            answers.insert("/cluster/resources".to_string(), resources);
            Self {
                answers,
                requests: Mutex::new(Vec::new()),
            }
        }
        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl PveApi for Pve {
        fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
            self.requests.lock().unwrap().push(path.to_string());
            let answer = self.answers.get(path).cloned();
            Box::pin(async move { answer.ok_or(PveError::NotFound { path: path.into() }) })
        }
    }

    fn resources(memory_of_101: u64) -> Value {
        json!([
            {"type": "node", "node": "pve1", "status": "online"},
            {"type": "qemu", "vmid": 100, "node": "pve1", "name": "a", "status": "running", "maxmem": 1024},
            {"type": "qemu", "vmid": 101, "node": "pve1", "name": "b", "status": "running", "maxmem": memory_of_101},
        ])
    }

    fn memory() -> WatchMemory {
        let mut inventory = Inventory::default();
        for vmid in [100, 101] {
            inventory.guests.push(Guest {
                vmid,
                node: "pve1".into(),
                memory_mib: Some(1),
                ..Default::default()
            });
        }
        WatchMemory {
            resources: parse_resources(&resources(1024)).unwrap(),
            inventory,
            hardware: BTreeMap::new(),
        }
    }

    fn opts() -> ReadOptions {
        ReadOptions {
            guest_agent: false,
            ceph: false,
            concurrency: 2,
        }
    }

    #[tokio::test]
    async fn an_idle_poll_is_one_request() {
        let pve = Pve::new(resources(1024));
        assert!(matches!(
            poll(&pve, &memory(), &opts()).await,
            PollOutcome::Idle
        ));
        assert_eq!(pve.requests(), ["/cluster/resources"]);
    }

    #[tokio::test]
    async fn only_the_changed_guest_is_read_again() {
        let mut pve = Pve::new(resources(4096));
        pve.answers.insert(
            "/nodes/pve1/qemu/101/config".into(),
            json!({"name": "b", "memory": "4096"}),
        );
        let PollOutcome::Changed {
            changes, inventory, ..
        } = poll(&pve, &memory(), &opts()).await
        else {
            panic!("a change was expected")
        };
        assert_eq!(changes, [(101, GuestChange::Changed)].into());
        let memories: Vec<Option<u64>> = inventory.guests.iter().map(|g| g.memory_mib).collect();
        assert_eq!(memories, [Some(1), Some(4096)]);
        let requests = pve.requests();
        assert_eq!(requests[0], "/cluster/resources");
        assert!(
            requests[1..].iter().all(|p| p.contains("/101/")),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_or_partial_poll_changes_nothing() {
        let pve = Pve {
            answers: BTreeMap::new(),
            requests: Mutex::new(Vec::new()),
        };
        assert!(matches!(
            poll(&pve, &memory(), &opts()).await,
            PollOutcome::Failed(_)
        ));
        let offline = json!([{"type": "node", "node": "pve1", "status": "offline"}]);
        let pve = Pve::new(offline);
        assert!(matches!(
            poll(&pve, &memory(), &opts()).await,
            PollOutcome::Partial(PartialPoll::Nodes(_))
        ));
        assert_eq!(pve.requests().len(), 1);
    }
}
