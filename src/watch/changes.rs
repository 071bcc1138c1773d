//! Change detection (pure): two polls of `/cluster/resources` give the guests created,
//! destroyed or changed in between; a poll that looks partial gives none, and the next
//! full sync decides instead.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pve::resources::ClusterResources;

/// Most guests one poll may see destroyed before it is taken as partial (a permission or
/// node problem hides guests; a full sync checks those with all its safeguards): this many,
/// or a fifth of the guests, whichever is more.
pub const MAX_DESTROYED_PER_POLL: usize = 10;

/// What happened to one guest between two polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GuestChange {
    /// New since the last poll.
    Created,
    /// Gone since the last poll.
    Destroyed,
    /// On another node.
    Migrated,
    /// Its name, power state, template flag, tags, pool, memory, vCPUs or disk size.
    Changed,
}

impl GuestChange {
    /// Stable name (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Destroyed => "destroyed",
            Self::Migrated => "migrated",
            Self::Changed => "changed",
        }
    }
}

/// Why a poll was not used for a targeted sync.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartialPoll {
    /// A node is offline or was added or removed.
    #[error("node {0} is offline, new or gone: the next full sync reads the cluster")]
    Nodes(String),
    /// A guest's state is unknown (its node does not answer).
    #[error("guest {0} is in state unknown: the next full sync reads the cluster")]
    GuestUnknown(u32),
    /// Too many guests vanished at once.
    #[error("{0} guests vanished at once: the next full sync reads the cluster")]
    TooManyGone(usize),
}

/// The guests that changed between two polls, by vmid.
pub type ChangeSet = BTreeMap<u32, GuestChange>;

/// The changes from `last` to `now`, or why `now` is not trusted.
pub fn detect(last: &ClusterResources, now: &ClusterResources) -> Result<ChangeSet, PartialPoll> {
    for (name, online) in &now.nodes {
        if !online || !last.nodes.contains_key(name) {
            return Err(PartialPoll::Nodes(name.clone()));
        }
    }
    if let Some(name) = last.nodes.keys().find(|n| !now.nodes.contains_key(*n)) {
        return Err(PartialPoll::Nodes(name.clone()));
    }
    if let Some(g) = now.guests.values().find(|g| g.status == "unknown") {
        return Err(PartialPoll::GuestUnknown(g.vmid));
    }
    let mut out = ChangeSet::new();
    for (vmid, before) in &last.guests {
        match now.guests.get(vmid) {
            None => {
                out.insert(*vmid, GuestChange::Destroyed);
            }
            Some(after) if after.node != before.node => {
                out.insert(*vmid, GuestChange::Migrated);
            }
            Some(after) if after != before => {
                out.insert(*vmid, GuestChange::Changed);
            }
            Some(_) => {}
        }
    }
    for vmid in now.guests.keys() {
        if !last.guests.contains_key(vmid) {
            out.insert(*vmid, GuestChange::Created);
        }
    }
    let gone = out
        .values()
        .filter(|c| **c == GuestChange::Destroyed)
        .count();
    if gone > MAX_DESTROYED_PER_POLL.max(last.guests.len() / 5) {
        return Err(PartialPoll::TooManyGone(gone));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::GuestKind;
    use crate::pve::resources::GuestSummary;

    fn guest(vmid: u32, node: &str) -> GuestSummary {
        GuestSummary {
            vmid,
            kind: GuestKind::Qemu,
            node: node.into(),
            name: format!("vm-{vmid}"),
            status: "running".into(),
            template: false,
            tags: String::new(),
            pool: String::new(),
            max_memory: 1 << 30,
            max_cpu: 2,
            max_disk: 8 << 30,
        }
    }

    fn cluster(guests: impl IntoIterator<Item = GuestSummary>) -> ClusterResources {
        ClusterResources {
            guests: guests.into_iter().map(|g| (g.vmid, g)).collect(),
            nodes: [("pve1".to_string(), true), ("pve2".to_string(), true)].into(),
        }
    }

    #[test]
    fn each_kind_of_change_is_found_and_nothing_else() {
        let last = cluster((100..120).map(|v| guest(v, "pve1")));
        assert_eq!(detect(&last, &last.clone()), Ok(ChangeSet::new()));
        let mut now = last.clone();
        now.guests.remove(&101);
        now.guests.insert(200, guest(200, "pve2"));
        now.guests.get_mut(&102).unwrap().node = "pve2".into();
        now.guests.get_mut(&103).unwrap().max_memory = 4 << 30;
        now.guests.get_mut(&104).unwrap().status = "stopped".into();
        now.guests.get_mut(&105).unwrap().tags = "web".into();
        let changes = detect(&last, &now).unwrap();
        assert_eq!(
            changes,
            [
                (101, GuestChange::Destroyed),
                (102, GuestChange::Migrated),
                (103, GuestChange::Changed),
                (104, GuestChange::Changed),
                (105, GuestChange::Changed),
                (200, GuestChange::Created),
            ]
            .into()
        );
    }

    #[test]
    fn a_poll_that_looks_partial_gives_no_changes() {
        let last = cluster((100..200).map(|v| guest(v, "pve1")));
        let mut offline = last.clone();
        offline.nodes.insert("pve2".into(), false);
        assert_eq!(
            detect(&last, &offline),
            Err(PartialPoll::Nodes("pve2".into()))
        );
        let mut gone_node = last.clone();
        gone_node.nodes.remove("pve2");
        assert!(matches!(
            detect(&last, &gone_node),
            Err(PartialPoll::Nodes(_))
        ));
        let mut new_node = last.clone();
        new_node.nodes.insert("pve3".into(), true);
        assert!(matches!(
            detect(&last, &new_node),
            Err(PartialPoll::Nodes(_))
        ));
        let mut unknown = last.clone();
        unknown.guests.get_mut(&150).unwrap().status = "unknown".into();
        assert_eq!(detect(&last, &unknown), Err(PartialPoll::GuestUnknown(150)));
        // A fifth of the guests may go in one poll, not more.
        let mut many_gone = last.clone();
        many_gone.guests.retain(|v, _| *v >= 120);
        assert_eq!(detect(&last, &many_gone).unwrap().len(), 20);
        many_gone.guests.remove(&120);
        assert_eq!(detect(&last, &many_gone), Err(PartialPoll::TooManyGone(21)));
    }
}
