//! The plan: pure functions from the inventory, the owned NetBox objects and the settings
//! to the objects NetBox should hold, kind by kind, and the changes that get it there.
//! Nothing here does I/O; [`super::apply`] writes what the plan says.

pub mod addresses;
pub mod guests;
pub mod nodes;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::diff::changed_fields;
use super::kinds::{CF_OWNER, Kind, OwnedObjects, custom_field, id_of};
use super::mapping::truncate;
use super::report::Collision;
use super::settings::SyncSettings;
use crate::crd::facts::NodeHardware;
use crate::inventory::{Guest, Inventory};

/// Why an object is created.
pub const REASON_NEW: &str = "not in NetBox";
/// Why an object is updated.
pub const REASON_CHANGED: &str = "differs from Proxmox";
/// Why an unowned object is taken over.
pub const REASON_ADOPTED: &str = "unowned object with this identity (spec.netbox.adoptExisting)";
/// Why an unmarked child of a device or VM taken back by the owner tag is taken back.
pub const REASON_TAKEN_BACK: &str =
    "child of an owned object, with a desired identity, unmarked after proxmox_owner was deleted";

/// Ids of the shared objects (tags, site, cluster, roles...) the owned objects refer to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedIds {
    /// The owner tag.
    pub owner_tag: u64,
    /// The stale tag.
    pub stale_tag: u64,
    /// `spec.netbox.tags`.
    pub extra_tags: Vec<u64>,
    /// Tags of Proxmox VE tags in use, by PVE tag.
    pub pve_tags: BTreeMap<String, u64>,
    /// Every tag the operator made for a Proxmox VE tag, in use or not.
    pub pve_tags_made: BTreeSet<u64>,
    /// The site.
    pub site: u64,
    /// The tenant.
    pub tenant: Option<u64>,
    /// The VRF of the IP addresses.
    pub vrf: Option<u64>,
    /// The NetBox cluster.
    pub cluster: u64,
    /// Role of nodes.
    pub device_role: u64,
    /// Role of QEMU VMs.
    pub role_qemu: u64,
    /// Role of LXC containers.
    pub role_lxc: u64,
    /// Role of templates.
    pub role_template: u64,
    /// Device types by `manufacturer/model`.
    pub device_types: BTreeMap<String, u64>,
    /// Platforms by name.
    pub platforms: BTreeMap<String, u64>,
    /// VLANs by vid (only unambiguous matches).
    pub vlans: BTreeMap<u16, u64>,
    /// Every custom field exists (else, in dry-run, values cannot be set yet).
    pub custom_fields_exist: bool,
    /// `proxmox_owner` existed before this sync (else it is new, or was deleted and
    /// re-created: owned objects are found by tag and cluster instead, and marked again).
    pub owner_field_existed: bool,
    /// NetBox assigns an unassigned MAC address given as an interface's primary MAC when
    /// the interface is created (NetBox 4.4.2 and newer), which saves a PATCH per new
    /// interface.
    #[serde(default)]
    pub primary_mac_at_create: bool,
}

impl SharedIds {
    /// The tags the cluster and the VLANs the operator made carry.
    pub fn owned_tags(&self) -> Vec<u64> {
        let mut t = vec![self.owner_tag];
        t.extend(&self.extra_tags);
        t
    }
}

/// Unowned objects in the way and repairs, read before planning.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Candidates {
    /// Unowned devices with a node's name in the site, by node name.
    pub unowned_devices: BTreeMap<String, Value>,
    /// Unowned VMs with a guest's name in the cluster, by NetBox name.
    pub unowned_vms: BTreeMap<String, Value>,
    /// VMs whose `disk` total is not the sum of their disks: the right total, by vmid.
    pub disk_repairs: BTreeMap<String, Value>,
    /// When `proxmox_owner` was missing: the unmarked children of the devices and VMs
    /// taken back by the owner tag. Each is taken back only where a desired object has its
    /// identity; the others are left alone.
    pub unmarked_children: OwnedObjects,
}

/// Everything the plan is computed from, besides the owned objects.
pub struct PlanInput<'a> {
    /// The settings.
    pub settings: &'a SyncSettings,
    /// What Proxmox runs.
    pub inventory: &'a Inventory,
    /// Hardware facts by node.
    pub hardware: &'a BTreeMap<String, NodeHardware>,
    /// Ids of the shared objects.
    pub shared: &'a SharedIds,
    /// Unowned objects in the way, and repairs.
    pub candidates: &'a Candidates,
    /// Now (stale marks and the grace period).
    pub now: DateTime<Utc>,
}

impl PlanInput<'_> {
    /// The owner custom field.
    pub fn owner_cf(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(CF_OWNER.into(), Value::String(self.settings.owner.clone()));
        m
    }

    /// The guests planned: those synced (templates only when `syncTemplates`), in a
    /// targeted pass only those in its scope.
    pub fn synced_guests(&self) -> impl Iterator<Item = &Guest> {
        let settings = self.settings;
        settings
            .synced_guests(self.inventory)
            .filter(|g| settings.in_scope(g.vmid))
    }

    /// The tags an object of `kind` should have: the human ones it has, plus
    /// `spec.netbox.tags` and its PVE tags, minus stale and PVE tags that no longer apply;
    /// a human tag is never removed, whatever its name. Only devices get the owner tag
    /// ([`Kind::carries_owner_tag`]); on other kinds it is kept where an earlier version
    /// put it, and not added.
    pub fn tags(&self, kind: Kind, existing: Option<&Value>, pve_tags: &[u64]) -> Vec<u64> {
        let mut out = self.kept_tags(existing);
        if kind.carries_owner_tag() {
            out.insert(self.shared.owner_tag);
        }
        out.extend(&self.shared.extra_tags);
        out.extend(pve_tags);
        out.into_iter().collect()
    }

    /// The tags of `existing` that stay: all but the stale tag and PVE tags.
    fn kept_tags(&self, existing: Option<&Value>) -> BTreeSet<u64> {
        let shared = self.shared;
        let mut out: BTreeSet<u64> = BTreeSet::new();
        for t in existing
            .and_then(|o| o["tags"].as_array())
            .into_iter()
            .flatten()
        {
            let Some(id) = id_of(t) else { continue };
            let is_pve =
                shared.pve_tags_made.contains(&id) || shared.pve_tags.values().any(|p| *p == id);
            if id != shared.stale_tag && !is_pve {
                out.insert(id);
            }
        }
        out
    }
}

/// One object as NetBox should hold it.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Identity key ([`Kind::key_of`]).
    pub key: String,
    /// Human name (`vm 101 (web01)`).
    pub label: String,
    /// The managed fields, in NetBox's write format.
    pub fields: Map<String, Value>,
}

/// An unowned object with a desired object's identity, taken over.
#[derive(Clone, Debug)]
pub struct Adoption {
    /// Identity key.
    pub key: String,
    /// Human name.
    pub label: String,
    /// The object as read.
    pub object: Value,
    /// Why it is taken over.
    pub reason: &'static str,
}

/// The desired objects of one kind, with the unowned objects in their way.
#[derive(Clone, Debug, Default)]
pub struct StagePlan {
    /// The objects NetBox should hold.
    pub desired: Vec<Desired>,
    /// Unowned objects taken over first.
    pub adoptions: Vec<Adoption>,
    /// Unowned objects in the way, left untouched (their desired object is not planned).
    pub collisions: Vec<Collision>,
}

/// Handles an unowned object in the way of `key`: adopted when the spec allows it, else
/// a collision. Returns whether the desired object goes on.
pub fn adopt_or_collide(
    input: &PlanInput,
    kind: Kind,
    key: &str,
    label: &str,
    existing: &Value,
    stage: &mut StagePlan,
) -> bool {
    let owner = custom_field(existing, CF_OWNER);
    if input.settings.adopt_existing && owner.is_none() {
        stage.adoptions.push(Adoption {
            key: key.into(),
            label: label.into(),
            object: existing.clone(),
            reason: REASON_ADOPTED,
        });
        return true;
    }
    let message = match owner {
        Some(o) => format!("a NetBox object with this name belongs to {o}"),
        None => "a NetBox object with this name exists and is not managed by this operator (set spec.netbox.adoptExisting to take it over)".into(),
    };
    stage.collisions.push(Collision {
        kind: kind.name().into(),
        object: label.into(),
        existing_id: id_of(existing),
        message,
    });
    false
}

/// The desired children of one kind, with the unmarked children of recovered parents
/// that have their identity taken back first (see [`Candidates::unmarked_children`]).
pub fn children_stage(
    input: &PlanInput,
    owned: &OwnedObjects,
    kind: Kind,
    desired: Vec<Desired>,
) -> StagePlan {
    let unmarked = input.candidates.unmarked_children.of(kind);
    let adoptions = desired
        .iter()
        .filter(|d| !owned.contains(kind, &d.key))
        .filter_map(|d| {
            unmarked.get(&d.key).map(|object| Adoption {
                key: d.key.clone(),
                label: d.label.clone(),
                object: object.clone(),
                reason: REASON_TAKEN_BACK,
            })
        })
        .collect();
    StagePlan {
        desired,
        adoptions,
        collisions: Vec::new(),
    }
}

/// An owned object with changed fields.
#[derive(Clone, Debug)]
pub struct Update {
    /// The desired object.
    pub desired: Desired,
    /// Its NetBox id.
    pub id: u64,
    /// The fields that differ, with their desired values.
    pub changed: Map<String, Value>,
}

/// The writes that make NetBox hold the desired objects of one kind.
#[derive(Clone, Debug, Default)]
pub struct KindChanges {
    /// Objects to create.
    pub creates: Vec<Desired>,
    /// Objects to update.
    pub updates: Vec<Update>,
    /// Objects already right.
    pub unchanged: u64,
    /// Ids of the existing desired objects, by key.
    pub ids: BTreeMap<String, u64>,
}

/// Compares desired objects of `kind` with the owned ones: what to create, what to
/// update (changed fields only) and what is already right.
pub fn diff(kind: Kind, desired: Vec<Desired>, owned: &OwnedObjects) -> KindChanges {
    let mut out = KindChanges::default();
    for d in desired {
        match owned.get(kind, &d.key) {
            Some(obj) => {
                let id = id_of(obj).unwrap_or(0);
                let changed = changed_fields(&d.fields, obj);
                out.ids.insert(d.key.clone(), id);
                if changed.is_empty() {
                    out.unchanged += 1;
                } else {
                    out.updates.push(Update {
                        desired: d,
                        id,
                        changed,
                    });
                }
            }
            None => out.creates.push(d),
        }
    }
    out
}

/// Canonical `address/prefix` (NetBox stores the canonical form).
pub fn normalize_cidr(cidr: &str) -> Option<String> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let prefix: u8 = prefix.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then(|| format!("{ip}/{prefix}"))
}

/// Manufacturer and model of a node: from dmidecode when known, else generic.
pub fn device_model(hw: Option<&NodeHardware>) -> (String, String) {
    let sys = hw.and_then(|h| h.system.as_ref());
    let manufacturer = sys
        .and_then(|s| s.manufacturer.clone())
        .unwrap_or_else(|| "Generic".into());
    let model = sys
        .and_then(|s| s.product_name.clone())
        .unwrap_or_else(|| "Proxmox VE node".into());
    (truncate(&manufacturer, 100), truncate(&model, 100))
}

/// A `{"primary_ip4", "primary_ip6"}` body.
pub fn primary_ips(p4: Option<u64>, p6: Option<u64>) -> Map<String, Value> {
    super::kinds::fields(json!({"primary_ip4": p4, "primary_ip6": p6}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_canonical() {
        assert_eq!(
            normalize_cidr("2001:DB8:0::10/64").as_deref(),
            Some("2001:db8::10/64")
        );
        assert_eq!(normalize_cidr("10.0.0.1/33"), None);
        assert_eq!(normalize_cidr("dhcp"), None);
    }
}
