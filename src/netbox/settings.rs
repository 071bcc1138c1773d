//! What to sync and how, resolved from the ProxmoxCluster spec.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::inventory::{Guest, Inventory};
use crate::owner::OwnerScope;

/// What to sync and how; built from the ProxmoxCluster spec.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// The owner mark written on every object ([`crate::owner`]).
    pub owner: String,
    /// When set, objects marked by this scope for another Proxmox cluster, or with its
    /// legacy `namespace/name` mark, are taken over (re-marked) as owned.
    pub adopt_previous: Option<OwnerScope>,
    /// Site slug or name.
    pub site: String,
    /// Tenant slug or name (must exist).
    pub tenant: Option<String>,
    /// VRF (by name) of the IP addresses; `None`: the global table.
    pub vrf: Option<String>,
    /// NetBox cluster name.
    pub cluster_name: String,
    /// Cluster group name.
    pub cluster_group: Option<String>,
    /// Cluster type name.
    pub cluster_type: String,
    /// Device role of nodes.
    pub device_role: String,
    /// Role of QEMU VMs.
    pub role_qemu: String,
    /// Role of LXC containers.
    pub role_lxc: String,
    /// Role of templates.
    pub role_template: String,
    /// Extra tags on every object.
    pub extra_tags: Vec<String>,
    /// Sync templates (else skip them).
    pub sync_templates: bool,
    /// Sync nodes as devices.
    pub nodes: bool,
    /// Sync node interfaces.
    pub node_interfaces: bool,
    /// Sync guests as VMs.
    pub virtual_machines: bool,
    /// Sync guest NICs.
    pub vm_interfaces: bool,
    /// Sync guest disks.
    pub virtual_disks: bool,
    /// Sync IP addresses.
    pub ip_addresses: bool,
    /// Take over unowned objects with the same identity.
    pub adopt_existing: bool,
    /// VM descriptions come from the PVE notes (else they are not managed).
    pub description_from_notes: bool,
    /// Create missing VLANs of guest NIC tags in the site (else leave the NIC without one).
    pub create_missing_vlans: bool,
    /// Prune owned objects gone from Proxmox.
    pub prune: bool,
    /// Hardware discovery is on: a node without facts in this run failed discovery, and
    /// the fields that come from its facts are left as they are.
    pub hardware_discovery: bool,
    /// How long an object stays stale before it is deleted.
    pub grace_period: Duration,
    /// Largest share (percent) of the owned nodes or guests that one sync may mark stale
    /// or delete; above it, pruning of that kind is refused (one object is always allowed).
    pub prune_max_percent: u32,
    /// Objects per bulk request.
    pub batch_size: usize,
    /// Bulk requests in flight.
    pub max_in_flight: usize,
    /// A targeted pass (guests a poll found changed): only these guests' objects are read,
    /// planned and written; the nodes' devices are read for the VMs' `device`, never
    /// planned. `None`: everything (a full sync).
    pub scope: Option<BTreeSet<u32>>,
    /// What provisioning (`spec.provisioning`) says about some guests.
    pub guests: GuestOverrides,
}

/// What provisioning tells the sync about some guests (all empty without provisioning).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestOverrides {
    /// Guests being provisioned, not handed over yet: not planned (no create, update,
    /// adoption or collision with the staged record they come from); their absence from
    /// the sync never counts as gone.
    pub excluded: BTreeSet<u32>,
    /// Owned VMs whose NetBox status `decommissioning` is kept (provisioning is on: a person
    /// set it, and retirement or the report reads it).
    pub keep_decommissioning: bool,
    /// Provisioned guests: their NetBox role, description and tenant stay as people set
    /// them; with `true` (`followResources`), their vCPUs, memory and disk sizes too
    /// (NetBox is their source).
    pub provisioned: BTreeMap<u32, bool>,
    /// Guests being retired by provisioning: never marked stale or pruned by the sync
    /// (provisioning releases or deletes their record once they are destroyed).
    pub retiring: BTreeSet<u32>,
}
impl SyncSettings {
    /// Whether guest `vmid` is planned in this pass.
    pub fn in_scope(&self, vmid: u32) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(&vmid))
    }

    /// The guests of `inventory` synced (templates only when `syncTemplates`).
    pub fn synced_guests<'a>(
        &self,
        inventory: &'a Inventory,
    ) -> impl Iterator<Item = &'a Guest> + Clone {
        let templates = self.sync_templates;
        let excluded = &self.guests.excluded;
        inventory
            .guests
            .iter()
            .filter(move |g| (templates || !g.template) && !excluded.contains(&g.vmid))
    }
}
