//! The prune plan (pure): which owned objects gone from Proxmox are deleted, marked stale
//! or kept, from what was read completely this run. Nothing is pruned on a failed,
//! partial or permission-filtered read.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::kinds::{CF_STALE_SINCE, Kind, OwnedObjects, UNASSIGNED_MAC, custom_field, id_of};
use super::plan::{PlanInput, normalize_cidr};
use crate::inventory::{ReadOutcome, ReadScope};

/// Why a child object is deleted.
pub const REASON_CHILD_GONE: &str = "gone from Proxmox (its parent's config was read)";
/// Why a node or guest is deleted after its stale mark.
pub const REASON_GRACE_EXPIRED: &str = "gone from Proxmox for longer than the grace period";
/// Why a node or guest is deleted at once.
pub const REASON_GONE_NO_GRACE: &str = "gone from Proxmox (grace period 0)";
/// Why an unassigned MAC address is deleted.
pub const REASON_UNASSIGNED_MAC: &str =
    "made for an interface whose create did not finish (the interface gets a new one)";
/// Why a node or guest is marked stale.
pub const REASON_GONE: &str = "gone from Proxmox";

/// An owned object to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// Its kind.
    pub kind: Kind,
    /// Its id.
    pub id: u64,
    /// Human name.
    pub label: String,
    /// Why.
    pub reason: &'static str,
}

/// A stale mark on a node's device or a guest's VM.
#[derive(Clone, Debug)]
pub struct StaleMark {
    /// Identity key.
    pub key: String,
    /// Human name.
    pub label: String,
    /// The PATCH body (`id`, `status`, `tags`, the stale-since custom field).
    pub patch: Value,
}

/// What pruning does this sync.
#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    /// Children of objects that still exist, gone from their parent's config.
    pub child_deletes: Vec<Deletion>,
    /// Stale marks, devices first.
    pub stale_marks: Vec<(Kind, Vec<StaleMark>)>,
    /// Devices and VMs past their grace period (or gone with a grace period of 0).
    pub expired: Vec<Deletion>,
    /// Owned objects gone but kept (pruning off, scope not read, or refused), per kind.
    pub orphaned: BTreeMap<Kind, u64>,
    /// Devices and VMs already stale, within the grace period, per kind.
    pub still_stale: BTreeMap<Kind, u64>,
    /// Why pruning of a kind was refused (too many gone at once).
    pub blocked: Vec<String>,
}

/// The prune plan, from the ids of the devices and VMs this sync wrote or kept.
pub fn plan(
    input: &PlanInput,
    owned: &OwnedObjects,
    devices: &BTreeMap<String, u64>,
    vms: &BTreeMap<String, u64>,
) -> PrunePlan {
    let mut out = PrunePlan::default();
    children(input, owned, devices, vms, &mut out);
    nodes_and_guests(input, owned, &mut out);
    out
}

/// Child objects nothing wanted this sync: deleted when their scope was read, else kept.
fn children(
    input: &PlanInput,
    owned: &OwnedObjects,
    devices: &BTreeMap<String, u64>,
    vms: &BTreeMap<String, u64>,
    out: &mut PrunePlan,
) {
    let device_ids: BTreeMap<u64, String> = devices.iter().map(|(k, v)| (*v, k.clone())).collect();
    let vm_ids: BTreeMap<u64, u32> = vms
        .iter()
        .filter_map(|(k, v)| k.parse().ok().map(|vmid| (*v, vmid)))
        .collect();
    let scopes = Scopes {
        input,
        owned,
        device_ids: &device_ids,
        vm_ids: &vm_ids,
    };
    let wanted = desired_child_keys(input, owned, devices, vms);
    for kind in [
        Kind::IpAddress,
        Kind::MacAddress,
        Kind::VirtualDisk,
        Kind::VmInterface,
        Kind::Interface,
    ] {
        for (key, obj) in owned.of(kind) {
            let Some(id) = id_of(obj) else { continue };
            if kind == Kind::MacAddress && key.starts_with(UNASSIGNED_MAC) {
                // Made just before a new interface's create that failed or was cut short:
                // the operator's own half-done write, cleaned up whatever the settings.
                out.child_deletes.push(Deletion {
                    kind,
                    id,
                    label: key.clone(),
                    reason: REASON_UNASSIGNED_MAC,
                });
                continue;
            }
            if wanted.contains(&(kind, key.clone())) || !kind_synced(input, kind, obj) {
                continue;
            }
            if scopes.parent_gone(kind, obj) {
                // Goes with its parent (stale, then deleted by NetBox's cascade).
                continue;
            }
            if input.settings.prune && scopes.absence_means_deletion(kind, obj) {
                out.child_deletes.push(Deletion {
                    kind,
                    id,
                    label: key.clone(),
                    reason: REASON_CHILD_GONE,
                });
            } else {
                *out.orphaned.entry(kind).or_default() += 1;
            }
        }
    }
}

/// The parents of child objects, and what was read of them.
struct Scopes<'a> {
    input: &'a PlanInput<'a>,
    owned: &'a OwnedObjects,
    /// Device id -> node name.
    device_ids: &'a BTreeMap<u64, String>,
    /// VM id -> vmid.
    vm_ids: &'a BTreeMap<u64, u32>,
}

impl Scopes<'_> {
    fn complete(&self, scope: ReadScope) -> bool {
        self.input.inventory.completeness.is_complete(&scope)
    }

    fn node_read(&self, device: Option<u64>) -> bool {
        device
            .and_then(|d| self.device_ids.get(&d))
            .is_some_and(|n| self.complete(ReadScope::NodeNetwork(n.clone())))
    }

    fn vmid_of(&self, vm: Option<u64>) -> Option<u32> {
        vm.and_then(|v| self.vm_ids.get(&v)).copied()
    }

    /// Whether the scope of `obj` was read, so that its absence means deletion.
    fn absence_means_deletion(&self, kind: Kind, obj: &Value) -> bool {
        match kind {
            Kind::Interface => self.node_read(id_of(&obj["device"])),
            Kind::VmInterface | Kind::VirtualDisk => self
                .vmid_of(id_of(&obj["virtual_machine"]))
                .is_some_and(|vmid| self.complete(ReadScope::GuestConfig(vmid))),
            Kind::MacAddress | Kind::IpAddress => {
                let parent = obj["assigned_object_id"].as_u64();
                match obj["assigned_object_type"]
                    .as_str()
                    .and_then(Kind::from_name)
                {
                    Some(Kind::VmInterface) => {
                        let vm = parent
                            .and_then(|p| self.owned.by_id(Kind::VmInterface, p))
                            .and_then(|v| id_of(&v["virtual_machine"]));
                        self.vmid_of(vm).is_some_and(|vmid| {
                            self.complete(ReadScope::GuestConfig(vmid))
                                && (kind == Kind::MacAddress || self.addresses_read(vmid))
                        })
                    }
                    // Node MACs come from discovery and are kept; node IPs go only when
                    // that node's network was read.
                    Some(Kind::Interface) => {
                        kind == Kind::IpAddress
                            && self.node_read(
                                parent
                                    .and_then(|p| self.owned.by_id(Kind::Interface, p))
                                    .and_then(|i| id_of(&i["device"])),
                            )
                    }
                    _ => false,
                }
            }
            Kind::Device | Kind::VirtualMachine => false,
        }
    }

    fn addresses_read(&self, vmid: u32) -> bool {
        matches!(
            self.input
                .inventory
                .completeness
                .outcome(&ReadScope::GuestAddresses(vmid)),
            Some(ReadOutcome::Complete)
        )
    }

    /// Whether the parent of an interface or disk is not among this sync's objects.
    fn parent_gone(&self, kind: Kind, obj: &Value) -> bool {
        match kind {
            Kind::Interface => {
                id_of(&obj["device"]).is_none_or(|d| !self.device_ids.contains_key(&d))
            }
            Kind::VmInterface | Kind::VirtualDisk => {
                id_of(&obj["virtual_machine"]).is_none_or(|v| !self.vm_ids.contains_key(&v))
            }
            _ => false,
        }
    }
}

/// Devices and VMs gone: stale first, deleted after the grace period (at once when it is
/// zero). A kind that is not synced is not managed: its objects are left as they are. So
/// is a template when templates are skipped: it still exists in Proxmox.
fn nodes_and_guests(input: &PlanInput, owned: &OwnedObjects, out: &mut PrunePlan) {
    let inv = input.inventory;
    let s = input.settings;
    let node_names: BTreeSet<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
    let guest_ids: BTreeSet<String> = inv.guests.iter().map(|g| g.vmid.to_string()).collect();
    let clean = inv.permissions_clean();
    // A targeted pass read only its guests' VMs (and plans no device): the share gone is
    // counted against every synced guest, as in a full sync.
    let scoped = s.scope.is_some();
    for (kind, synced, set_complete) in [
        (
            Kind::Device,
            s.nodes && !scoped,
            clean && inv.node_set_complete(),
        ),
        (
            Kind::VirtualMachine,
            s.virtual_machines,
            clean && inv.guest_set_complete(),
        ),
    ] {
        if !synced {
            continue;
        }
        let gone: Vec<(&String, &Value)> = owned
            .of(kind)
            .iter()
            .filter(|(key, _)| match kind {
                Kind::Device => !node_names.contains(key.as_str()),
                // A VM provisioning retires is released or deleted by provisioning.
                _ => {
                    !guest_ids.contains(*key)
                        && !key
                            .parse::<u32>()
                            .is_ok_and(|vmid| s.guests.retiring.contains(&vmid))
                }
            })
            .collect();
        let count = if scoped {
            owned
                .count(kind)
                .max(s.synced_guests(inv).count() + gone.len())
        } else {
            owned.count(kind)
        };
        let blocked =
            s.prune && set_complete && prune_refused(gone.len(), count, s.prune_max_percent);
        if blocked {
            tracing::warn!(
                kind = kind.name(),
                gone = gone.len(),
                owned = count,
                "pruning refused"
            );
            out.blocked
                .push(refusal(kind, gone.len(), count, s.prune_max_percent));
        }
        let mut marks = Vec::new();
        for (key, obj) in gone {
            if blocked || !(s.prune && set_complete) {
                *out.orphaned.entry(kind).or_default() += 1;
                continue;
            }
            let Some(id) = id_of(obj) else { continue };
            let noun = if kind == Kind::Device { "node" } else { "vm" };
            let label = format!("{noun} {key}");
            let since = custom_field(obj, CF_STALE_SINCE)
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok());
            let deletion = |reason| Deletion {
                kind,
                id,
                label: label.clone(),
                reason,
            };
            match since {
                Some(since)
                    if (input.now - since.with_timezone(&Utc))
                        .to_std()
                        .unwrap_or_default()
                        >= s.grace_period =>
                {
                    out.expired.push(deletion(REASON_GRACE_EXPIRED));
                }
                Some(_) => *out.still_stale.entry(kind).or_default() += 1,
                // No grace period: deleted in the sync that finds it gone, without a stale
                // mark first (one write, and one clean sync converges).
                None if s.grace_period.is_zero() => {
                    out.expired.push(deletion(REASON_GONE_NO_GRACE))
                }
                None => marks.push(stale_mark(input, key, label, id, obj)),
            }
        }
        out.stale_marks.push((kind, marks));
    }
}

/// Why pruning of `kind` is refused.
fn refusal(kind: Kind, gone: usize, owned: usize, max_percent: u32) -> String {
    format!(
        "{}: {gone} of {owned} owned objects are gone from Proxmox, more than spec.sync.prune.maxPercent ({max_percent}%): none marked stale or deleted; check the PVE token's permissions, or raise maxPercent for one sync to confirm",
        kind.name()
    )
}

/// The stale mark of a gone object: status offline, the stale tag, the time found gone.
fn stale_mark(input: &PlanInput, key: &str, label: String, id: u64, obj: &Value) -> StaleMark {
    let mut tags: BTreeSet<u64> = obj["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(id_of)
        .collect();
    tags.insert(input.shared.stale_tag);
    let mut cf = Map::new();
    cf.insert(
        CF_STALE_SINCE.into(),
        json!(input.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    StaleMark {
        key: key.to_string(),
        label,
        patch: json!({"id": id, "status": "offline", "tags": tags, "custom_fields": cf}),
    }
}

/// Whether objects like `obj` of `kind` are synced (`sync.kinds`); MACs and IPs follow
/// the kind of interface they are assigned to.
fn kind_synced(input: &PlanInput, kind: Kind, obj: &Value) -> bool {
    let s = input.settings;
    let on_node = obj["assigned_object_type"] == Kind::Interface.name();
    match kind {
        Kind::Interface => s.node_interfaces,
        Kind::VmInterface => s.vm_interfaces,
        Kind::VirtualDisk => s.virtual_disks,
        Kind::MacAddress if on_node => s.node_interfaces,
        Kind::MacAddress => s.vm_interfaces,
        Kind::IpAddress if on_node => s.ip_addresses && s.node_interfaces,
        Kind::IpAddress => s.ip_addresses && s.vm_interfaces,
        Kind::Device => s.nodes,
        Kind::VirtualMachine => s.virtual_machines,
    }
}

/// Keys of every child object this sync wanted (so the rest are candidates for pruning).
fn desired_child_keys(
    input: &PlanInput,
    owned: &OwnedObjects,
    devices: &BTreeMap<String, u64>,
    vms: &BTreeMap<String, u64>,
) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    for node in &input.inventory.nodes {
        let Some(d) = devices.get(&node.name) else {
            continue;
        };
        for i in &node.interfaces {
            let key = format!("{d}/{}", i.name);
            out.insert((Kind::Interface, key.clone()));
            if let Some(id) = owned.get(Kind::Interface, &key).and_then(id_of) {
                for c in [&i.cidr, &i.cidr6]
                    .into_iter()
                    .flatten()
                    .filter_map(|c| normalize_cidr(c))
                {
                    out.insert((Kind::IpAddress, format!("dcim.interface/{id}/{c}")));
                }
            }
        }
    }
    // MACs of node interfaces come from hardware discovery, which may not run: keep them.
    for key in owned.of(Kind::MacAddress).keys() {
        if key.starts_with("dcim.interface/") {
            out.insert((Kind::MacAddress, key.clone()));
        }
    }
    for g in input.synced_guests() {
        let Some(vm) = vms.get(&g.vmid.to_string()) else {
            continue;
        };
        for d in &g.disks {
            out.insert((Kind::VirtualDisk, format!("{vm}/{}", d.slot)));
        }
        for n in &g.nics {
            let key = format!("{vm}/{}", n.slot);
            out.insert((Kind::VmInterface, key.clone()));
            if let (Some(id), Some(mac)) =
                (owned.get(Kind::VmInterface, &key).and_then(id_of), &n.mac)
            {
                out.insert((
                    Kind::MacAddress,
                    format!("virtualization.vminterface/{id}/{mac}"),
                ));
            }
        }
        for a in &g.addresses {
            let (Some(slot), Some(c)) = (&a.nic_slot, normalize_cidr(&a.cidr)) else {
                continue;
            };
            if let Some(id) = owned
                .get(Kind::VmInterface, &format!("{vm}/{slot}"))
                .and_then(id_of)
            {
                out.insert((
                    Kind::IpAddress,
                    format!("virtualization.vminterface/{id}/{c}"),
                ));
            }
        }
    }
    out
}

/// True when pruning `gone` of `owned` objects exceeds `max_percent` of them (one object
/// is always allowed).
fn prune_refused(gone: usize, owned: usize, max_percent: u32) -> bool {
    let limit = owned.saturating_mul(max_percent as usize) / 100;
    gone > limit.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_is_refused_above_the_share_of_owned_objects() {
        // One object always allowed, whatever the share.
        assert!(!prune_refused(1, 3, 10));
        assert!(prune_refused(2, 3, 10));
        // 10% of 100 owned: 10 allowed, 11 refused.
        assert!(!prune_refused(10, 100, 10));
        assert!(prune_refused(11, 100, 10));
        assert!(!prune_refused(100, 100, 100));
        // Nothing owned, nothing gone: nothing to refuse.
        assert!(!prune_refused(0, 0, 10));
        assert!(
            !prune_refused(5, usize::MAX, 10),
            "no overflow on huge counts"
        );
    }
}
