//! A targeted read: the last full inventory with only some guests read again (their config
//! and runtime addresses), the others kept as they were.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};

use super::client::PveApi;
use super::reader::{GuestRead, ReadOptions, read_guest, scope_order};
use super::resources::GuestSummary;
use crate::inventory::{Inventory, ReadScope};

/// The last inventory with the guests of `read` read again and those of `gone` left out.
/// The HA states are the last inventory's (a change of HA state waits for the next full
/// sync).
pub async fn refresh_guests(
    api: &dyn PveApi,
    last: &Inventory,
    read: &[GuestSummary],
    gone: &BTreeSet<u32>,
    opts: &ReadOptions,
) -> Inventory {
    let ha: BTreeMap<u32, String> = last
        .guests
        .iter()
        .filter_map(|g| Some((g.vmid, g.ha_state.clone()?)))
        .collect();
    let fresh: Vec<GuestRead> = stream::iter(read.iter().cloned())
        .map(|g| {
            let item = g.list_item();
            let ha = &ha;
            async move { read_guest(api, g.node, g.kind, item, opts, ha).await }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    merge_guests(
        last,
        read.iter().map(|g| g.vmid).chain(gone.iter().copied()),
        fresh,
    )
}

/// `last` without the guests `replaced` (and their read outcomes), plus the `fresh` reads.
pub(super) fn merge_guests(
    last: &Inventory,
    replaced: impl IntoIterator<Item = u32>,
    fresh: Vec<GuestRead>,
) -> Inventory {
    let replaced: BTreeSet<u32> = replaced.into_iter().collect();
    let mut inv = last.clone();
    inv.guests.retain(|g| !replaced.contains(&g.vmid));
    inv.completeness.parts.retain(|p| match p.scope {
        ReadScope::GuestConfig(v) | ReadScope::GuestAddresses(v) => !replaced.contains(&v),
        _ => true,
    });
    for (guest, parts) in fresh {
        inv.guests.extend(guest);
        for (scope, outcome) in parts {
            inv.completeness.record(scope, outcome);
        }
    }
    inv.guests.sort_by_key(|g| g.vmid);
    inv.completeness
        .parts
        .sort_by_key(|p| scope_order(&p.scope));
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Guest, ReadOutcome};

    fn guest(vmid: u32, memory: u64) -> Guest {
        Guest {
            vmid,
            memory_mib: Some(memory),
            ..Default::default()
        }
    }

    fn parts(vmid: u32) -> Vec<(ReadScope, ReadOutcome)> {
        vec![
            (ReadScope::GuestConfig(vmid), ReadOutcome::Complete),
            (ReadScope::GuestAddresses(vmid), ReadOutcome::Complete),
        ]
    }

    #[test]
    fn only_the_guests_read_again_change() {
        let mut last = Inventory::default();
        for v in [100, 101, 102] {
            last.guests.push(guest(v, 512));
            for (scope, outcome) in parts(v) {
                last.completeness.record(scope, outcome);
            }
        }
        last.completeness
            .record(ReadScope::NodeGuests("pve1".into()), ReadOutcome::Complete);
        let fresh = vec![
            (Some(guest(101, 2048)), parts(101)),
            (Some(guest(200, 256)), parts(200)),
        ];
        let inv = merge_guests(&last, [101, 102, 200], fresh);
        let memory: Vec<(u32, Option<u64>)> =
            inv.guests.iter().map(|g| (g.vmid, g.memory_mib)).collect();
        assert_eq!(
            memory,
            [(100, Some(512)), (101, Some(2048)), (200, Some(256))]
        );
        // One outcome per part: the destroyed guest's are gone, none doubled.
        let scopes: Vec<&ReadScope> = inv.completeness.parts.iter().map(|p| &p.scope).collect();
        assert_eq!(scopes.len(), 1 + 2 * 3, "{scopes:?}");
        assert!(!scopes.contains(&&ReadScope::GuestConfig(102)));
        assert!(
            inv.completeness
                .is_complete(&ReadScope::NodeGuests("pve1".into()))
        );
    }
}
