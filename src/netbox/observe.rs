//! Observe: the owned objects read once per kind (compacted as they arrive), owned
//! duplicates removed, and the unowned objects in the way of the desired ones.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use serde_json::{Value, json};

use super::apply::{Session, is_placeholder};
use super::client::NetBoxError;
use super::kinds::{CF_OWNER, Kind, OWNER_TAG, OwnedObjects, custom_field, id_of};
use super::mapping::guest_names;
use super::plan::{Candidates, SharedIds};
use super::prune::Deletion;
use super::settings::SyncSettings;
use crate::inventory::Inventory;

/// Why an owned duplicate is deleted.
pub const REASON_DUPLICATE: &str = "a second owned object with the identity of an older one";

/// Reads the owned objects into the session (owned duplicates deleted first, children
/// before their parents) and the candidates for adoption and repair.
pub async fn observe(
    s: &mut Session<'_>,
    shared: &SharedIds,
    inv: &Inventory,
) -> Result<Candidates, NetBoxError> {
    let desired_vms = desired_vm_keys(s.settings, inv);
    let unmarked_children = observe_owned(s, shared, &desired_vms).await?;
    let nodes: Vec<String> = inv
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| !s.owned.contains(Kind::Device, n))
        .collect();
    let settings = s.settings;
    let unowned_devices = if settings.nodes {
        unowned_by_name(s, Kind::Device, &nodes, ("site_id", shared.site)).await?
    } else {
        BTreeMap::new()
    };
    let unowned_vms = if settings.virtual_machines {
        let synced = settings.synced_guests(inv);
        let names = guest_names(synced.clone());
        let wanted: Vec<String> = synced
            .filter(|g| settings.in_scope(g.vmid))
            .filter(|g| !s.owned.contains(Kind::VirtualMachine, &g.vmid.to_string()))
            .map(|g| names[&g.vmid].clone())
            .collect();
        unowned_by_name(
            s,
            Kind::VirtualMachine,
            &wanted,
            ("cluster_id", shared.cluster),
        )
        .await?
    } else {
        BTreeMap::new()
    };
    let disk_repairs = if settings.virtual_machines && settings.virtual_disks {
        disk_totals_to_repair(s).await?
    } else {
        BTreeMap::new()
    };
    Ok(Candidates {
        unowned_devices,
        unowned_vms,
        disk_repairs,
        unmarked_children,
    })
}

/// Reads the owned objects; owned duplicates are deleted first (children before their
/// parents, by the order of the kinds) and the objects read again. Returns the unmarked
/// children of objects taken back by the owner tag ([`read_owned_by_tag`]).
async fn observe_owned(
    s: &mut Session<'_>,
    shared: &SharedIds,
    desired_vms: &BTreeSet<String>,
) -> Result<OwnedObjects, NetBoxError> {
    if !shared.owner_field_existed {
        for k in Kind::OWNED {
            s.owned.set(k, BTreeMap::new());
        }
        return read_owned_by_tag(s, shared, desired_vms).await;
    }
    let mut duplicates = read_owned(s).await?;
    if duplicates.is_empty() {
        return Ok(OwnedObjects::default());
    }
    tracing::warn!(
        owner = %s.settings.owner,
        duplicates = duplicates.len(),
        "owned duplicates found (writes NetBox finished after their client gave up): the newer ones are deleted"
    );
    duplicates.sort_by_key(|d| Kind::OWNED.iter().position(|k| *k == d.kind));
    s.report.duplicates_removed += duplicates.len() as u64;
    s.delete_many(duplicates).await;
    if !s.dry_run {
        let again = read_owned(s).await?;
        if !again.is_empty() {
            tracing::warn!(owner = %s.settings.owner, duplicates = again.len(), "owned duplicates left; deleted on the next sync");
        }
    }
    Ok(OwnedObjects::default())
}

/// Most ids in one filter of a targeted pass's read: the request line stays well under
/// the 4 KiB a gunicorn in front of NetBox accepts by default.
const IDS_PER_QUERY: usize = 100;

/// Reads every owned kind by the owner's marks (devices and VMs: the owner custom field
/// and the owner tag; their children: the custom field); returns the owned duplicates.
/// A targeted pass ([`SyncSettings::scope`]) reads the devices, the VMs in its scope and
/// their children only.
async fn read_owned(s: &mut Session<'_>) -> Result<Vec<Deletion>, NetBoxError> {
    let mut duplicates = Vec::new();
    for k in Kind::OWNED {
        s.owned.set(k, BTreeMap::new());
    }
    let Some(scope) = s.settings.scope.clone() else {
        read_kinds(s, &Kind::OWNED, &[], &mut duplicates).await?;
        return Ok(duplicates);
    };
    read_kinds(s, &[Kind::Device], &[], &mut duplicates).await?;
    let vmids = id_filters("cf_proxmox_vmid", scope.iter().map(u32::to_string));
    read_kinds(s, &[Kind::VirtualMachine], &vmids, &mut duplicates).await?;
    let vm_ids = s.owned.ids(Kind::VirtualMachine).into_values();
    let parents = id_filters("virtual_machine_id", vm_ids.map(|id| id.to_string()));
    if !parents.is_empty() {
        let children = [
            Kind::IpAddress,
            Kind::MacAddress,
            Kind::VirtualDisk,
            Kind::VmInterface,
        ];
        read_kinds(s, &children, &parents, &mut duplicates).await?;
    }
    keep_scope(s, &scope);
    Ok(duplicates)
}

/// `name=id` filters, at most [`IDS_PER_QUERY`] ids each.
fn id_filters(name: &str, ids: impl Iterator<Item = String>) -> Vec<Vec<(String, String)>> {
    let ids: Vec<String> = ids.collect();
    ids.chunks(IDS_PER_QUERY)
        .map(|chunk| {
            chunk
                .iter()
                .map(|id| (name.to_string(), id.clone()))
                .collect()
        })
        .collect()
}

/// Reads `kinds` by the owner's marks, each query narrowed by each of `filters` (none:
/// one query per kind and mark), into the owned objects.
async fn read_kinds(
    s: &mut Session<'_>,
    kinds: &[Kind],
    filters: &[Vec<(String, String)>],
    duplicates: &mut Vec<Deletion>,
) -> Result<(), NetBoxError> {
    // The owner's mark; with adoption, also this scope's other marks and its legacy one.
    let settings = s.settings;
    let mut marks = vec![("cf_proxmox_owner", settings.owner.clone())];
    if let Some(previous) = &settings.adopt_previous {
        marks.push(("cf_proxmox_owner__isw", previous.prefix()));
        marks.push(("cf_proxmox_owner", previous.legacy_mark()));
    }
    let unfiltered = [Vec::new()];
    let filters = if filters.is_empty() {
        &unfiltered[..]
    } else {
        filters
    };
    let mut queries: Vec<(Kind, Vec<(String, String)>)> = Vec::new();
    for k in kinds {
        for (filter, mark) in &marks {
            for narrowing in filters {
                let mut q = vec![
                    (filter.to_string(), mark.clone()),
                    ("fields".to_string(), k.fields().to_string()),
                ];
                if k.carries_owner_tag() {
                    q.push(("tag".to_string(), OWNER_TAG.to_string()));
                }
                q.extend(narrowing.iter().cloned());
                queries.push((*k, q));
            }
        }
    }
    let api = s.api;
    let mut results = stream::iter(queries)
        .map(|(k, q)| async move { (k, api.list(k.endpoint(), &q).await) })
        .buffer_unordered(4);
    // Each answer is compacted as soon as it is read, so the raw answers of all kinds are
    // never held at once.
    while let Some((k, r)) = results.next().await {
        for o in r? {
            // The owner mark is checked again on the answer (NetBox ignores a filter it
            // does not know).
            let mark = custom_field(&o, CF_OWNER);
            if !mark.as_deref().is_some_and(|m| owned_mark(s, m)) {
                continue;
            }
            if let Some(key) = k.key_of(&o) {
                keep_first(s, k, key, o, duplicates);
            }
        }
    }
    Ok(())
}

/// Drops what a targeted pass read outside its scope: VMs of other vmids, and children of
/// other VMs (were a filter ignored by NetBox, their absence from the plan must not read
/// as "gone").
fn keep_scope(s: &mut Session<'_>, scope: &BTreeSet<u32>) {
    let keep = |s: &mut Session<'_>, kind: Kind, wanted: &dyn Fn(&str, &Value) -> bool| {
        let kept: BTreeMap<String, Value> = s
            .owned
            .of(kind)
            .iter()
            .filter(|(key, obj)| wanted(key, obj))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        s.owned.set(kind, kept);
    };
    keep(s, Kind::VirtualMachine, &|key, _| {
        key.parse().is_ok_and(|vmid| scope.contains(&vmid))
    });
    let vms: BTreeSet<u64> = s.owned.ids(Kind::VirtualMachine).into_values().collect();
    for kind in [Kind::VmInterface, Kind::VirtualDisk] {
        keep(s, kind, &|_, obj| {
            id_of(&obj["virtual_machine"]).is_some_and(|vm| vms.contains(&vm))
        });
    }
    let ifaces: BTreeSet<u64> = s.owned.ids(Kind::VmInterface).into_values().collect();
    for kind in [Kind::MacAddress, Kind::IpAddress] {
        keep(s, kind, &|_, obj| {
            obj["assigned_object_type"].as_str() == Some(Kind::VmInterface.name())
                && obj["assigned_object_id"]
                    .as_u64()
                    .is_some_and(|i| ifaces.contains(&i))
        });
    }
}

/// True for the owner's mark, and with adoption for the scope's previous marks.
fn owned_mark(s: &Session, mark: &str) -> bool {
    mark == s.settings.owner
        || s.settings
            .adopt_previous
            .as_ref()
            .is_some_and(|p| p.owns(mark) || mark == p.legacy_mark())
}

/// Adds an owned object to the owned ones. Of two owned objects with one identity (a
/// create NetBox finished after its client gave up, then made again), the older (lower
/// id) is kept and the other returned for deletion.
fn keep_first(
    s: &mut Session,
    kind: Kind,
    key: String,
    obj: Value,
    duplicates: &mut Vec<Deletion>,
) {
    let owner = s.settings.owner.as_str();
    let exact = |o: &Value| custom_field(o, CF_OWNER).as_deref() == Some(owner);
    let new_id = id_of(&obj).unwrap_or(u64::MAX);
    let old = s.owned.get(kind, &key);
    // Only two objects of the exact current mark are duplicates; one taken over from an
    // earlier mark only stands aside (the first one read stays).
    let both_exact = exact(&obj) && old.is_some_and(exact);
    let duplicate = |id: u64| Deletion {
        kind,
        id,
        label: format!("duplicate {key} (id {id})"),
        reason: REASON_DUPLICATE,
    };
    match old.and_then(id_of) {
        Some(old_id) if old_id == new_id => {}
        Some(_) if !both_exact => {}
        Some(old_id) if old_id < new_id => duplicates.push(duplicate(new_id)),
        Some(old_id) => {
            duplicates.push(duplicate(old_id));
            s.owned.insert(kind, key, obj);
        }
        None => s.owned.insert(kind, key, obj),
    }
}

/// The vmids (VM keys) of the guests this sync wants in NetBox.
fn desired_vm_keys(settings: &SyncSettings, inv: &Inventory) -> BTreeSet<String> {
    if !settings.virtual_machines {
        return BTreeSet::new();
    }
    settings
        .synced_guests(inv)
        .map(|g| g.vmid.to_string())
        .collect()
}

/// Without `proxmox_owner` (first sync, or the field was deleted, which wipes its values),
/// the owned objects are found again in this sync's NetBox cluster: devices by the
/// operator's tag; VMs by the tag (every VM had it before 2026-12) or, unmarked, by a
/// `proxmox_vmid` this sync wants ([`vm_taken_back`]). Their children with the tag are
/// taken back at once; their unmarked children are returned: each is taken back only where
/// a desired object has its identity ([`super::plan::children_stage`]), the others are
/// left alone. Everything taken back gets the owner mark again on this sync.
async fn read_owned_by_tag(
    s: &mut Session<'_>,
    shared: &SharedIds,
    desired_vms: &BTreeSet<String>,
) -> Result<OwnedObjects, NetBoxError> {
    let mut unmarked = OwnedObjects::default();
    if is_placeholder(shared.cluster) {
        return Ok(unmarked);
    }
    for kind in [Kind::Device, Kind::VirtualMachine] {
        let mut q = vec![
            ("cluster_id".to_string(), shared.cluster.to_string()),
            ("fields".to_string(), kind.fields().to_string()),
        ];
        if kind.carries_owner_tag() {
            q.push(("tag".to_string(), OWNER_TAG.to_string()));
        }
        let found: BTreeMap<String, Value> = s
            .api
            .list(kind.endpoint(), &q)
            .await?
            .into_iter()
            .filter(|o| custom_field(o, CF_OWNER).is_none())
            .filter(|o| kind.carries_owner_tag() || vm_taken_back(o, shared, desired_vms))
            .filter_map(|o| Some((kind.key_of(&o)?, kind.compact(o))))
            .collect();
        warn_taken_back(kind, found.len());
        s.owned.set(kind, found);
    }
    let devices: Vec<u64> = s.owned.ids(Kind::Device).into_values().collect();
    let vms: Vec<u64> = s.owned.ids(Kind::VirtualMachine).into_values().collect();
    // Ids of the parents taken back (or unmarked, for addresses), by kind.
    let mut parents: BTreeMap<Kind, BTreeSet<u64>> = BTreeMap::new();
    parents.insert(Kind::Device, devices.iter().copied().collect());
    parents.insert(Kind::VirtualMachine, vms.iter().copied().collect());
    for kind in [
        Kind::Interface,
        Kind::VmInterface,
        Kind::VirtualDisk,
        Kind::MacAddress,
        Kind::IpAddress,
    ] {
        let mut read = Vec::new();
        if matches!(kind, Kind::Interface | Kind::MacAddress | Kind::IpAddress) {
            read.extend(children_of(s, kind, "device_id", &devices).await?);
        }
        if kind != Kind::Interface {
            read.extend(children_of(s, kind, "virtual_machine_id", &vms).await?);
        }
        let mut tagged = BTreeMap::new();
        for o in read {
            let has_tag = has_owner_tag(&o, shared);
            let Some(key) = kind.key_of(&o) else { continue };
            if custom_field(&o, CF_OWNER).is_some() || !has_owned_parent(&parents, kind, &o) {
                continue;
            }
            parents.entry(kind).or_default().extend(id_of(&o));
            if has_tag {
                tagged.insert(key, kind.compact(o));
            } else {
                unmarked.insert(kind, key, o);
            }
        }
        warn_taken_back(kind, tagged.len());
        s.owned.set(kind, tagged);
    }
    Ok(unmarked)
}

/// True for an object with the operator's tag.
fn has_owner_tag(o: &Value, shared: &SharedIds) -> bool {
    o["tags"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["slug"] == OWNER_TAG || id_of(t) == Some(shared.owner_tag))
    })
}

/// True for an unmarked VM of this sync's cluster taken back after `proxmox_owner` was
/// deleted: it has the operator's tag (an earlier version's mark), or its `proxmox_vmid`
/// is a guest this sync wants. A VM for no wanted guest is left alone, never deleted.
fn vm_taken_back(vm: &Value, shared: &SharedIds, desired: &BTreeSet<String>) -> bool {
    has_owner_tag(vm, shared)
        || Kind::VirtualMachine
            .key_of(vm)
            .is_some_and(|vmid| desired.contains(&vmid))
}

/// Logs objects taken back after `proxmox_owner` was missing.
fn warn_taken_back(kind: Kind, objects: usize) {
    if objects > 0 {
        tracing::warn!(
            kind = kind.name(),
            objects,
            "custom field proxmox_owner was missing: objects of this cluster with the operator's tag or a wanted identity are taken back"
        );
    }
}

/// Objects of `kind` whose parent is one of `parents` (`filter`: `device_id` or
/// `virtual_machine_id`), read in chunks of 100 parents.
async fn children_of(
    s: &Session<'_>,
    kind: Kind,
    filter: &str,
    parents: &[u64],
) -> Result<Vec<Value>, NetBoxError> {
    let mut out = Vec::new();
    for chunk in parents.chunks(100) {
        let mut q: Vec<(String, String)> = chunk
            .iter()
            .map(|id| (filter.to_string(), id.to_string()))
            .collect();
        q.push(("fields".to_string(), kind.fields().to_string()));
        out.extend(s.api.list(kind.endpoint(), &q).await?);
    }
    Ok(out)
}

/// True when the parent of a child object is among `parents` (ids by kind).
fn has_owned_parent(parents: &BTreeMap<Kind, BTreeSet<u64>>, kind: Kind, o: &Value) -> bool {
    let known = |parent: Kind, id: Option<u64>| {
        id.is_some_and(|id| parents.get(&parent).is_some_and(|p| p.contains(&id)))
    };
    match kind {
        Kind::Interface => known(Kind::Device, id_of(&o["device"])),
        Kind::VmInterface | Kind::VirtualDisk => {
            known(Kind::VirtualMachine, id_of(&o["virtual_machine"]))
        }
        Kind::MacAddress | Kind::IpAddress => o["assigned_object_type"]
            .as_str()
            .and_then(Kind::from_name)
            .filter(|k| matches!(k, Kind::Interface | Kind::VmInterface))
            .is_some_and(|of| known(of, o["assigned_object_id"].as_u64())),
        Kind::Device | Kind::VirtualMachine => true,
    }
}

/// Unowned objects of `kind` with the given names in a scope (`site_id`, `cluster_id`).
async fn unowned_by_name(
    s: &mut Session<'_>,
    kind: Kind,
    names: &[String],
    scope: (&str, u64),
) -> Result<BTreeMap<String, Value>, NetBoxError> {
    let mut out = BTreeMap::new();
    if is_placeholder(scope.1) {
        return Ok(out);
    }
    for chunk in names.chunks(100) {
        let mut q: Vec<(String, String)> = vec![(scope.0.to_string(), scope.1.to_string())];
        q.extend(chunk.iter().map(|n| ("name".to_string(), n.clone())));
        for o in s.api.list(kind.endpoint(), &q).await? {
            let owned = custom_field(&o, CF_OWNER).as_deref() == Some(s.settings.owner.as_str());
            if !owned && let Some(name) = o["name"].as_str() {
                out.insert(name.to_lowercase(), o);
            }
        }
    }
    Ok(names
        .iter()
        .filter_map(|n| out.get(&n.to_lowercase()).map(|o| (n.clone(), o.clone())))
        .collect())
}

/// VMs whose `disk` total in NetBox is not the sum of their virtual disks (left by
/// another client writing disks of one VM concurrently): NetBox then refuses every update
/// of the VM, so the total is put back. Checked against the owned disks read at the start
/// (no request when they agree); on a mismatch all of the VM's disks are read, hand-made
/// ones included, since NetBox sums them all. By vmid key.
async fn disk_totals_to_repair(
    s: &mut Session<'_>,
) -> Result<BTreeMap<String, Value>, NetBoxError> {
    let mut out = BTreeMap::new();
    let mut owned_sum: BTreeMap<u64, u64> = BTreeMap::new();
    for d in s.owned.of(Kind::VirtualDisk).values() {
        if let Some(vm) = id_of(&d["virtual_machine"]) {
            *owned_sum.entry(vm).or_default() += d["size"].as_u64().unwrap_or(0);
        }
    }
    let suspects: Vec<(String, u64, u64)> = s
        .owned
        .of(Kind::VirtualMachine)
        .iter()
        .filter_map(|(key, vm)| {
            let id = id_of(vm)?;
            let have = vm["disk"].as_u64().unwrap_or(0);
            (have != owned_sum.get(&id).copied().unwrap_or(0)).then(|| (key.clone(), id, have))
        })
        .collect();
    for chunk in suspects.chunks(100) {
        let q: Vec<(String, String)> = chunk
            .iter()
            .map(|(_, id, _)| ("virtual_machine_id".to_string(), id.to_string()))
            .collect();
        let mut total: BTreeMap<u64, u64> = BTreeMap::new();
        for d in s.api.list(Kind::VirtualDisk.endpoint(), &q).await? {
            if let Some(vm) = id_of(&d["virtual_machine"]) {
                *total.entry(vm).or_default() += d["size"].as_u64().unwrap_or(0);
            }
        }
        for (key, id, have) in chunk {
            let want = total.get(id).copied().unwrap_or(0);
            if want != *have {
                let total = if want > 0 { json!(want) } else { Value::Null };
                out.insert(key.clone(), total);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> SharedIds {
        SharedIds {
            owner_tag: 7,
            ..SharedIds::default()
        }
    }

    fn vm(vmid: u64, tags: Value) -> Value {
        json!({"id": 1, "name": "web", "tags": tags, "custom_fields": {"proxmox_vmid": vmid}})
    }

    #[test]
    fn an_unmarked_vm_is_taken_back_only_for_a_wanted_vmid_or_the_owner_tag() {
        let desired: BTreeSet<String> = ["100".to_string()].into();
        assert!(vm_taken_back(&vm(100, json!([])), &shared(), &desired));
        assert!(!vm_taken_back(&vm(101, json!([])), &shared(), &desired));
        assert!(!vm_taken_back(
            &json!({"id": 2, "tags": [], "custom_fields": {}}),
            &shared(),
            &desired
        ));
        // Tagged by an earlier version: taken back even when no longer wanted (then stale).
        assert!(vm_taken_back(
            &vm(101, json!([{"id": 7}])),
            &shared(),
            &desired
        ));
        assert!(vm_taken_back(
            &vm(101, json!([{"id": 9, "slug": OWNER_TAG}])),
            &shared(),
            &desired
        ));
        assert!(!vm_taken_back(
            &vm(101, json!([{"id": 9, "slug": "other"}])),
            &shared(),
            &desired
        ));
    }
}
