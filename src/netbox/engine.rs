//! The sync engine: observe (read NetBox once per kind, owned objects only) -> plan (pure
//! diff of desired and current values) -> apply (bulk writes of changed fields only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{Map, Value, json};

use super::client::{NetBoxApi, NetBoxError};
use super::diff::changed_fields;
use super::mapping::{
    bytes_to_mib, guest_names, interface_type, platform_name, slugify, total_mib, truncate,
    vm_status,
};
use super::report::{Collision, SyncReport};
use crate::crd::facts::NodeHardware;
use crate::inventory::{
    GuestKind, Inventory, NodeInterfaceKind, ReadFailure, ReadOutcome, ReadScope,
};
use crate::owner::OwnerScope;

/// Slug of the tag on every object the operator owns.
pub const OWNER_TAG: &str = "proxmox-netbox-operator";
/// Slug of the tag on owned objects whose Proxmox counterpart is gone (pruning).
pub const STALE_TAG: &str = "proxmox-stale";
/// Description of the tags the operator creates for Proxmox VE tags (`pve:<tag>`); only
/// tags with it are ever taken off an object when the Proxmox tag goes.
pub const PVE_TAG_DESCRIPTION: &str = "Proxmox VE tag (managed by proxmox-netbox-operator)";
/// Group of every custom field the operator creates.
pub const CF_GROUP: &str = "Proxmox";
/// Custom field holding the owning ProxmoxCluster (`namespace/name`).
pub const CF_OWNER: &str = "proxmox_owner";
/// Custom field holding a guest's vmid.
pub const CF_VMID: &str = "proxmox_vmid";
/// Custom field holding the guest type (`qemu` or `lxc`).
pub const CF_GUEST_TYPE: &str = "proxmox_guest_type";
/// Custom field holding the storage of a virtual disk.
pub const CF_DISK_STORAGE: &str = "proxmox_disk_storage";
/// Custom field holding when an object was first found gone from Proxmox.
pub const CF_STALE_SINCE: &str = "proxmox_stale_since";

/// What NetBox says when an address is taken in the same IP space (the global table with
/// `ENFORCE_GLOBAL_UNIQUE`, or a VRF enforcing unique addresses).
const DUPLICATE_IP: &str = "Duplicate IP address";
/// The remedy given with an address taken in the same IP space.
pub const IP_SPACE_REMEDY: &str = "the address is in use in the same IP space by another Proxmox cluster or a hand-made object; give each Proxmox cluster its own VRF with spec.netbox.vrf";
/// The remedy given with an unowned object in the way.
const OWNER_REMEDY: &str = "an object not managed by this operator is in the way; spec.netbox.adoptExisting takes such objects over";

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
}

#[derive(Clone, Copy, Debug)]
struct Kind {
    name: &'static str,
    endpoint: &'static str,
    /// The fields read of owned objects (NetBox's `?fields=`): identity, ownership marks
    /// and every field the operator manages. Reading only these halves the time of a
    /// no-op resync; a field missing here would show as changed at every sync (the
    /// zero-write tests catch it).
    fields: &'static str,
}

const DEVICE: Kind = Kind {
    name: "dcim.device",
    endpoint: "dcim/devices",
    fields: "id,name,device_type,role,site,cluster,status,tenant,serial,primary_ip4,primary_ip6,tags,custom_fields",
};
const INTERFACE: Kind = Kind {
    name: "dcim.interface",
    endpoint: "dcim/interfaces",
    fields: "id,device,name,type,enabled,mtu,mode,description,speed,duplex,parent,lag,bridge,primary_mac_address,tags,custom_fields",
};
const MAC: Kind = Kind {
    name: "dcim.macaddress",
    endpoint: "dcim/mac-addresses",
    fields: "id,mac_address,assigned_object_type,assigned_object_id,tags,custom_fields",
};
const IP: Kind = Kind {
    name: "ipam.ipaddress",
    endpoint: "ipam/ip-addresses",
    fields: "id,address,vrf,status,assigned_object_type,assigned_object_id,tenant,description,tags,custom_fields",
};
const VM: Kind = Kind {
    name: "virtualization.virtualmachine",
    endpoint: "virtualization/virtual-machines",
    fields: "id,name,status,cluster,device,role,tenant,platform,vcpus,memory,disk,description,primary_ip4,primary_ip6,tags,custom_fields",
};
const VMIF: Kind = Kind {
    name: "virtualization.vminterface",
    endpoint: "virtualization/interfaces",
    fields: "id,virtual_machine,name,enabled,mtu,description,mode,untagged_vlan,primary_mac_address,tags,custom_fields",
};
const VDISK: Kind = Kind {
    name: "virtualization.virtualdisk",
    endpoint: "virtualization/virtual-disks",
    fields: "id,virtual_machine,name,size,description,tags,custom_fields",
};

/// Owned kinds, children first (the order of deletion).
const OWNED_KINDS: [Kind; 7] = [IP, MAC, VDISK, VMIF, VM, INTERFACE, DEVICE];

/// (key, label, body) of one object to write.
type WriteItem = (String, String, Value);
/// Per key: the written object, or (label, reason).
type WriteResult = (String, Result<Value, (String, String)>);

/// References of a node interface to other interfaces.
#[derive(Clone, Copy, Default)]
struct InterfaceRefs {
    parent: Option<u64>,
    lag: Option<u64>,
    bridge: Option<u64>,
}

struct Desired {
    key: String,
    label: String,
    fields: Map<String, Value>,
}

/// Ids of the shared objects (tags, site, cluster, roles...).
#[derive(Default)]
struct Shared {
    owner_tag: u64,
    stale_tag: u64,
    extra_tags: Vec<u64>,
    pve_tags: BTreeMap<String, u64>,
    /// Every tag the operator made for a Proxmox VE tag, in use or not.
    pve_tags_made: BTreeSet<u64>,
    site: u64,
    tenant: Option<u64>,
    vrf: Option<u64>,
    cluster: u64,
    device_role: u64,
    role_qemu: u64,
    role_lxc: u64,
    role_template: u64,
    device_types: BTreeMap<String, u64>,
    platforms: BTreeMap<String, u64>,
    vlans: BTreeMap<u16, u64>,
    custom_fields_exist: bool,
    /// `proxmox_owner` existed before this sync (else it is new, or was deleted and
    /// re-created: owned objects are found by tag and cluster instead, and marked again).
    owner_field_existed: bool,
}

struct Engine<'a> {
    api: &'a dyn NetBoxApi,
    s: &'a SyncSettings,
    dry_run: bool,
    now: DateTime<Utc>,
    report: SyncReport,
    placeholder: u64,
    shared: Shared,
    /// Owned objects by kind and key, kept up to date with what was written.
    current: HashMap<&'static str, BTreeMap<String, Value>>,
}

fn id_of(v: &Value) -> Option<u64> {
    v.get("id").and_then(Value::as_u64).or_else(|| v.as_u64())
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn custom_field(obj: &Value, name: &str) -> Option<String> {
    match &obj["custom_fields"][name] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn current_key(kind: Kind, obj: &Value) -> Option<String> {
    let nested = |f: &str| id_of(&obj[f]);
    match kind.name {
        "dcim.device" => obj["name"].as_str().map(str::to_string),
        "dcim.interface" => Some(format!("{}/{}", nested("device")?, obj["name"].as_str()?)),
        "virtualization.virtualmachine" => custom_field(obj, CF_VMID),
        "virtualization.vminterface" | "virtualization.virtualdisk" => Some(format!(
            "{}/{}",
            nested("virtual_machine")?,
            obj["name"].as_str()?
        )),
        "dcim.macaddress" => Some(format!(
            "{}/{}/{}",
            obj["assigned_object_type"].as_str()?,
            obj["assigned_object_id"].as_u64()?,
            obj["mac_address"].as_str()?.to_ascii_uppercase()
        )),
        "ipam.ipaddress" => Some(format!(
            "{}/{}/{}",
            obj["assigned_object_type"].as_str()?,
            obj["assigned_object_id"].as_u64()?,
            obj["address"].as_str()?
        )),
        _ => None,
    }
}

/// Syncs the inventory to NetBox. `Err` only when NetBox cannot be used at all (token,
/// bootstrap objects, reads); failures of single objects are in the report.
pub async fn sync(
    api: &dyn NetBoxApi,
    settings: &SyncSettings,
    inventory: &Inventory,
    hardware: &BTreeMap<String, NodeHardware>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<SyncReport, NetBoxError> {
    let mut e = Engine {
        api,
        s: settings,
        dry_run,
        now,
        report: SyncReport {
            dry_run,
            ..Default::default()
        },
        placeholder: PLACEHOLDER_BASE,
        shared: Shared::default(),
        current: HashMap::new(),
    };
    e.bootstrap(inventory, hardware).await?;
    e.observe_owned().await?;

    let devices = e.sync_devices(inventory, hardware).await?;
    let interfaces = e.sync_node_interfaces(inventory, hardware, &devices).await;
    let vms = e.sync_vms(inventory).await?;
    let vm_ifaces = e.sync_vm_interfaces(inventory, &vms).await;
    e.sync_virtual_disks(inventory, &vms).await;
    let macs = e
        .sync_macs(inventory, hardware, &interfaces, &vm_ifaces)
        .await;
    e.sync_interface_refs(inventory, &interfaces, &vm_ifaces, &macs)
        .await;
    let ips = e.sync_ips(inventory, &interfaces, &vm_ifaces).await;
    e.sync_primary_ips(inventory, &devices, &vms, &ips).await;
    e.prune(inventory, &devices, &vms).await;

    let (reads, writes) = api.request_counts();
    e.report.read_requests = reads;
    e.report.write_requests = writes;
    Ok(e.report)
}

impl Engine<'_> {
    fn next_placeholder(&mut self) -> u64 {
        self.placeholder += 1;
        self.placeholder
    }

    fn owned_tags(&self) -> Vec<u64> {
        let mut t = vec![self.shared.owner_tag];
        t.extend(&self.shared.extra_tags);
        t
    }

    fn owner_cf(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(CF_OWNER.into(), Value::String(self.s.owner.clone()));
        m
    }

    // ------------------------------------------------------------------ bootstrap

    /// Finds an object by slug (or name), creating it when missing.
    async fn ensure(
        &mut self,
        endpoint: &str,
        kind: &str,
        slug: &str,
        name: &str,
        extra: Value,
    ) -> Result<u64, NetBoxError> {
        let by_slug = [("slug".to_string(), slug.to_string())];
        if let Some(found) = self.api.list(endpoint, &by_slug).await?.first() {
            return id_of(found).ok_or_else(|| decode(endpoint));
        }
        let by_name = [("name".to_string(), name.to_string())];
        if let Some(found) = self.api.list(endpoint, &by_name).await?.first() {
            return id_of(found).ok_or_else(|| decode(endpoint));
        }
        let mut body = fields(extra);
        body.insert("name".into(), json!(name));
        body.insert("slug".into(), json!(slug));
        self.report.counts(kind).created += 1;
        self.report
            .plan(kind, name, "create", body.keys().cloned().collect());
        if self.dry_run {
            return Ok(self.next_placeholder());
        }
        let created = self.api.create(endpoint, vec![Value::Object(body)]).await?;
        created
            .first()
            .and_then(id_of)
            .ok_or_else(|| decode(endpoint))
    }

    /// The VRF named `name` (VRFs have no slug), created when missing with unique
    /// addresses enforced and the owner tag.
    async fn ensure_vrf(&mut self, name: &str) -> Result<u64, NetBoxError> {
        const EP: &str = "ipam/vrfs";
        let by_name = [("name".to_string(), name.to_string())];
        if let Some(found) = self.api.list(EP, &by_name).await?.first() {
            return id_of(found).ok_or_else(|| decode(EP));
        }
        let body = fields(json!({
            "name": name,
            "enforce_unique": true,
            "description": "IP space of a Proxmox VE cluster (spec.netbox.vrf)",
            "tags": [self.shared.owner_tag],
        }));
        self.report.counts("ipam.vrf").created += 1;
        self.report
            .plan("ipam.vrf", name, "create", body.keys().cloned().collect());
        if self.dry_run {
            return Ok(self.next_placeholder());
        }
        let created = self.api.create(EP, vec![Value::Object(body)]).await?;
        created.first().and_then(id_of).ok_or_else(|| decode(EP))
    }

    async fn ensure_custom_fields(&mut self) -> Result<(), NetBoxError> {
        let owned_types = [
            "dcim.device",
            "dcim.interface",
            "dcim.macaddress",
            "ipam.ipaddress",
            "virtualization.cluster",
            "ipam.vlan",
            "virtualization.virtualmachine",
            "virtualization.vminterface",
            "virtualization.virtualdisk",
        ];
        let specs: Vec<(&str, &str, &str, Vec<&str>, &str)> = vec![
            (
                CF_OWNER,
                "Proxmox owner",
                "text",
                owned_types.to_vec(),
                "ProxmoxCluster (namespace/name) that owns this object",
            ),
            (
                CF_VMID,
                "Proxmox VMID",
                "integer",
                vec!["virtualization.virtualmachine"],
                "VM id in Proxmox VE",
            ),
            (
                CF_GUEST_TYPE,
                "Proxmox guest type",
                "text",
                vec!["virtualization.virtualmachine"],
                "qemu or lxc",
            ),
            (
                CF_DISK_STORAGE,
                "Proxmox storage",
                "text",
                vec!["virtualization.virtualdisk"],
                "Proxmox storage of the disk",
            ),
            (
                CF_STALE_SINCE,
                "Gone from Proxmox since",
                "text",
                vec!["dcim.device", "virtualization.virtualmachine"],
                "When the operator found it gone (pruning grace period)",
            ),
            (
                "hardware_chassis_serial",
                "Chassis serial",
                "text",
                vec!["dcim.device"],
                "dmidecode chassis serial",
            ),
            (
                "hardware_chassis_manufacturer",
                "Chassis manufacturer",
                "text",
                vec!["dcim.device"],
                "dmidecode chassis manufacturer",
            ),
            (
                "hardware_chassis_product",
                "Chassis product",
                "text",
                vec!["dcim.device"],
                "dmidecode system product name",
            ),
            (
                "nic_speed_gbps",
                "NIC speed (Gbps)",
                "integer",
                vec!["dcim.interface"],
                "ethtool link speed",
            ),
            (
                "nic_duplex",
                "NIC duplex",
                "text",
                vec!["dcim.interface"],
                "ethtool duplex",
            ),
            (
                "nic_link",
                "NIC link",
                "boolean",
                vec!["dcim.interface"],
                "ethtool link detected",
            ),
        ];
        let names = specs
            .iter()
            .map(|s| ("name".to_string(), s.0.to_string()))
            .collect::<Vec<_>>();
        let existing = self.api.list("extras/custom-fields", &names).await?;
        // NetBox >= 4.7 provisions and purges a field's data in a background job; until the
        // job is done the field is not live and its name stays taken.
        if let Some((cf, status)) = existing.iter().find_map(|c| {
            let status = c["status"]["value"].as_str().or(c["status"].as_str())?;
            (status != "active").then_some((c, status))
        }) {
            return Err(NetBoxError::Invalid {
                endpoint: "extras/custom-fields".into(),
                message: format!(
                    "custom field {} is being {} by a NetBox background job (is netbox-rqworker running?); syncing again when the job is done",
                    cf["name"],
                    match status {
                        "deleting" => "deleted",
                        "provisioning" => "provisioned",
                        _ => "updated",
                    }
                ),
            });
        }
        let mut creates = Vec::new();
        let mut patches = Vec::new();
        for (name, label, type_, types, description) in &specs {
            match existing.iter().find(|c| c["name"] == *name) {
                Some(cf) if cf["group_name"] != CF_GROUP || cf["type"]["value"] != *type_ => {
                    // Someone else's field with our name: never changed, reported.
                    self.report.collisions.push(Collision {
                        kind: "extras.customfield".into(),
                        object: (*name).to_string(),
                        existing_id: id_of(cf),
                        message: format!(
                            "a custom field {name:?} exists outside the group {CF_GROUP:?} or with another type than {type_:?}; it is left as it is and values may be rejected: rename or delete it"
                        ),
                    });
                }
                Some(cf) => {
                    let have: BTreeSet<&str> = cf["object_types"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if types.iter().any(|t| !have.contains(t)) {
                        let mut all: BTreeSet<&str> = have.clone();
                        all.extend(types.iter().copied());
                        patches.push(json!({"id": cf["id"], "object_types": all}));
                        self.report.plan(
                            "extras.customfield",
                            name,
                            "update",
                            vec!["object_types".into()],
                        );
                    }
                }
                None => {
                    let filter = if *name == CF_OWNER || *name == CF_VMID {
                        "exact"
                    } else {
                        "loose"
                    };
                    creates.push(json!({
                        "name": name, "label": label, "type": type_, "object_types": types,
                        "group_name": CF_GROUP, "description": description, "filter_logic": filter,
                        "ui_editable": if name.starts_with("proxmox_") { "no" } else { "yes" },
                    }));
                    self.report.counts("extras.customfield").created += 1;
                    self.report.plan(
                        "extras.customfield",
                        name,
                        "create",
                        vec!["name".into(), "object_types".into()],
                    );
                }
            }
        }
        self.shared.custom_fields_exist = creates.is_empty();
        self.shared.owner_field_existed = existing.iter().any(|c| c["name"] == CF_OWNER);
        if self.dry_run {
            return Ok(());
        }
        if !creates.is_empty() {
            self.api.create("extras/custom-fields", creates).await?;
            self.shared.custom_fields_exist = true;
        }
        if !patches.is_empty() {
            self.api.update("extras/custom-fields", patches).await?;
        }
        Ok(())
    }

    async fn bootstrap(
        &mut self,
        inv: &Inventory,
        hw: &BTreeMap<String, NodeHardware>,
    ) -> Result<(), NetBoxError> {
        const TAGS: &str = "extras/tags";
        self.shared.owner_tag = self
            .ensure(
                TAGS,
                "extras.tag",
                OWNER_TAG,
                OWNER_TAG,
                json!({"color": "ff5722", "description": "Managed by proxmox-netbox-operator"}),
            )
            .await?;
        self.shared.stale_tag = self
            .ensure(TAGS, "extras.tag", STALE_TAG, STALE_TAG, json!({"color": "9e9e9e", "description": "Gone from Proxmox VE; deleted after the grace period"}))
            .await?;
        for t in self.s.extra_tags.clone() {
            let id = self
                .ensure(TAGS, "extras.tag", &slugify(&t), &t, json!({}))
                .await?;
            self.shared.extra_tags.push(id);
        }
        if self.s.virtual_machines {
            let mut pve_tags: BTreeSet<String> = BTreeSet::new();
            for g in &inv.guests {
                pve_tags.extend(g.tags.iter().cloned());
            }
            for t in pve_tags {
                let id = self
                    .ensure(
                        TAGS,
                        "extras.tag",
                        &format!("pve-{}", slugify(&t)),
                        &format!("pve:{t}"),
                        json!({"description": PVE_TAG_DESCRIPTION}),
                    )
                    .await?;
                self.shared.pve_tags.insert(t, id);
            }
            let made = [("description".to_string(), PVE_TAG_DESCRIPTION.to_string())];
            for tag in self.api.list(TAGS, &made).await? {
                self.shared.pve_tags_made.extend(id_of(&tag));
            }
        }
        self.ensure_custom_fields().await?;
        self.shared.site = self
            .ensure(
                "dcim/sites",
                "dcim.site",
                &slugify(&self.s.site),
                &self.s.site.clone(),
                json!({"status": "active"}),
            )
            .await?;
        if let Some(t) = self.s.tenant.clone() {
            let found = self
                .api
                .list("tenancy/tenants", &[("slug".into(), slugify(&t))])
                .await?;
            let found = if found.is_empty() {
                self.api
                    .list("tenancy/tenants", &[("name".into(), t.clone())])
                    .await?
            } else {
                found
            };
            self.shared.tenant =
                Some(
                    found
                        .first()
                        .and_then(id_of)
                        .ok_or_else(|| NetBoxError::Invalid {
                            endpoint: "tenancy/tenants".into(),
                            message: format!(
                                "spec.netbox.tenant: tenant {t:?} does not exist in NetBox"
                            ),
                        })?,
                );
        }
        if let Some(name) = self.s.vrf.clone() {
            self.shared.vrf = Some(self.ensure_vrf(&name).await?);
        }
        let cluster_type = self
            .ensure(
                "virtualization/cluster-types",
                "virtualization.clustertype",
                &slugify(&self.s.cluster_type),
                &self.s.cluster_type.clone(),
                json!({}),
            )
            .await?;
        let group = match self.s.cluster_group.clone() {
            Some(g) => Some(
                self.ensure(
                    "virtualization/cluster-groups",
                    "virtualization.clustergroup",
                    &slugify(&g),
                    &g,
                    json!({}),
                )
                .await?,
            ),
            None => None,
        };
        self.shared.cluster = self.ensure_cluster(cluster_type, group).await?;
        let role = |vm_role: bool, color: &str| json!({"vm_role": vm_role, "color": color});
        self.shared.device_role = self
            .ensure(
                "dcim/device-roles",
                "dcim.devicerole",
                &slugify(&self.s.device_role),
                &self.s.device_role.clone(),
                role(false, "2196f3"),
            )
            .await?;
        if self.s.virtual_machines {
            self.shared.role_qemu = self
                .ensure(
                    "dcim/device-roles",
                    "dcim.devicerole",
                    &slugify(&self.s.role_qemu),
                    &self.s.role_qemu.clone(),
                    role(true, "4caf50"),
                )
                .await?;
            self.shared.role_lxc = self
                .ensure(
                    "dcim/device-roles",
                    "dcim.devicerole",
                    &slugify(&self.s.role_lxc),
                    &self.s.role_lxc.clone(),
                    role(true, "009688"),
                )
                .await?;
            if self.s.sync_templates {
                self.shared.role_template = self
                    .ensure(
                        "dcim/device-roles",
                        "dcim.devicerole",
                        &slugify(&self.s.role_template),
                        &self.s.role_template.clone(),
                        role(true, "9e9e9e"),
                    )
                    .await?;
            }
            let os: BTreeSet<String> = inv
                .guests
                .iter()
                .filter_map(|g| g.os_type.as_deref())
                .map(platform_name)
                .collect();
            for name in os {
                let id = self
                    .ensure(
                        "dcim/platforms",
                        "dcim.platform",
                        &slugify(&name),
                        &name,
                        json!({}),
                    )
                    .await?;
                self.shared.platforms.insert(name, id);
            }
            // VLANs by vid, for untagged VLANs of guest NICs (only unambiguous matches).
            let vids: BTreeSet<u16> = inv
                .guests
                .iter()
                .flat_map(|g| g.nics.iter().filter_map(|n| n.vlan_tag))
                .collect();
            if self.s.vm_interfaces && !vids.is_empty() {
                let q: Vec<(String, String)> = vids
                    .iter()
                    .map(|v| ("vid".to_string(), v.to_string()))
                    .collect();
                let vlans = self.api.list("ipam/vlans", &q).await?;
                for &vid in &vids {
                    let matching: Vec<&Value> = vlans
                        .iter()
                        .filter(|v| v["vid"].as_u64() == Some(u64::from(vid)))
                        .collect();
                    // NetBox accepts a VLAN of the VM's site or a global one (no site), never
                    // one of another site: the site's first, else the one global VLAN.
                    let in_site: Vec<&&Value> = matching
                        .iter()
                        .filter(|v| id_of(&v["site"]) == Some(self.shared.site))
                        .collect();
                    let global: Vec<&&Value> =
                        matching.iter().filter(|v| v["site"].is_null()).collect();
                    let pick = match (in_site.as_slice(), global.as_slice()) {
                        ([one], _) => Some(**one),
                        ([], [one]) => Some(**one),
                        _ => None,
                    };
                    if let Some(id) = pick.and_then(id_of) {
                        self.shared.vlans.insert(vid, id);
                    }
                }
                let missing: Vec<u16> = vids
                    .into_iter()
                    .filter(|v| !self.shared.vlans.contains_key(v))
                    .collect();
                if self.s.create_missing_vlans && !missing.is_empty() {
                    self.create_vlans(&missing).await?;
                }
            }
        }
        if self.s.nodes {
            for node in &inv.nodes {
                let (manufacturer, model) = device_model(hw.get(&node.name));
                let key = format!("{manufacturer}/{model}");
                if self.shared.device_types.contains_key(&key) {
                    continue;
                }
                let m = self
                    .ensure(
                        "dcim/manufacturers",
                        "dcim.manufacturer",
                        &slugify(&manufacturer),
                        &manufacturer,
                        json!({}),
                    )
                    .await?;
                // In dry-run a manufacturer to be created has no real id: nothing to look up.
                let found = if is_placeholder(m) {
                    Vec::new()
                } else {
                    self.api
                        .list(
                            "dcim/device-types",
                            &[
                                ("manufacturer_id".into(), m.to_string()),
                                ("model".into(), model.clone()),
                            ],
                        )
                        .await?
                };
                let id = match found.first().and_then(id_of) {
                    Some(id) => id,
                    None => {
                        let body = json!({"manufacturer": m, "model": model, "slug": slugify(&format!("{manufacturer}-{model}")), "u_height": 1});
                        self.report.counts("dcim.devicetype").created += 1;
                        self.report
                            .plan("dcim.devicetype", &model, "create", vec!["model".into()]);
                        if self.dry_run {
                            self.next_placeholder()
                        } else {
                            self.api
                                .create("dcim/device-types", vec![body])
                                .await?
                                .first()
                                .and_then(id_of)
                                .ok_or_else(|| decode("dcim/device-types"))?
                        }
                    }
                };
                self.shared.device_types.insert(key, id);
            }
        }
        Ok(())
    }

    /// Creates the site's VLANs for guest NIC tags that have none (policy `Create`).
    async fn create_vlans(&mut self, vids: &[u16]) -> Result<(), NetBoxError> {
        const EP: &str = "ipam/vlans";
        let mut bodies = Vec::new();
        for vid in vids {
            let name = format!("VLAN {vid}");
            self.report.counts("ipam.vlan").created += 1;
            self.report.plan(
                "ipam.vlan",
                &name,
                "create",
                vec!["vid".into(), "name".into()],
            );
            bodies.push(json!({
                "vid": vid, "name": name, "status": "active", "site": self.shared.site,
                "tenant": self.shared.tenant,
                "description": "Created by proxmox-netbox-operator for a Proxmox VE VLAN tag",
                "tags": self.owned_tags(), "custom_fields": self.owner_cf(),
            }));
        }
        if self.dry_run {
            for vid in vids {
                let id = self.next_placeholder();
                self.shared.vlans.insert(*vid, id);
            }
            return Ok(());
        }
        for created in self.api.create(EP, bodies).await? {
            if let (Some(vid), Some(id)) = (
                created["vid"].as_u64().and_then(|v| u16::try_from(v).ok()),
                id_of(&created),
            ) {
                self.shared.vlans.insert(vid, id);
            }
        }
        Ok(())
    }

    async fn ensure_cluster(
        &mut self,
        cluster_type: u64,
        group: Option<u64>,
    ) -> Result<u64, NetBoxError> {
        const EP: &str = "virtualization/clusters";
        let name = self.s.cluster_name.clone();
        if let Some(found) = self
            .api
            .list(EP, &[("name".into(), name.clone())])
            .await?
            .first()
        {
            return id_of(found).ok_or_else(|| decode(EP));
        }
        let mut body = json!({
            "name": name, "type": cluster_type, "status": "active", "scope_type": "dcim.site", "scope_id": self.shared.site,
            "tags": self.owned_tags(),
        });
        if let Some(g) = group {
            body["group"] = json!(g);
        }
        if let Some(t) = self.shared.tenant {
            body["tenant"] = json!(t);
        }
        if self.shared.custom_fields_exist || !self.dry_run {
            body["custom_fields"] = Value::Object(self.owner_cf());
        }
        self.report.counts("virtualization.cluster").created += 1;
        self.report.plan(
            "virtualization.cluster",
            &name,
            "create",
            vec!["name".into(), "type".into()],
        );
        if self.dry_run {
            return Ok(self.next_placeholder());
        }
        self.api
            .create(EP, vec![body])
            .await?
            .first()
            .and_then(id_of)
            .ok_or_else(|| decode(EP))
    }

    // ------------------------------------------------------------------- observe

    async fn read_owned(&mut self) -> Result<Vec<(Kind, u64, String)>, NetBoxError> {
        let mut duplicates = Vec::new();
        if !self.shared.owner_field_existed {
            self.read_owned_by_tag().await?;
            return Ok(duplicates);
        }
        // The owner's mark; with adoption, also this scope's other marks and its legacy one.
        let mut marks = vec![("cf_proxmox_owner", self.s.owner.clone())];
        if let Some(previous) = &self.s.adopt_previous {
            marks.push(("cf_proxmox_owner__isw", previous.prefix()));
            marks.push(("cf_proxmox_owner", previous.legacy_mark()));
        }
        let queries: Vec<(Kind, Vec<(String, String)>)> = OWNED_KINDS
            .iter()
            .flat_map(|k| {
                marks.iter().map(|(filter, mark)| {
                    let q = vec![
                        (filter.to_string(), mark.clone()),
                        ("tag".to_string(), OWNER_TAG.to_string()),
                        ("fields".to_string(), k.fields.to_string()),
                    ];
                    (*k, q)
                })
            })
            .collect();
        for k in OWNED_KINDS {
            self.current.insert(k.name, BTreeMap::new());
        }
        let api = self.api;
        let mut results = stream::iter(queries)
            .map(|(k, q)| async move { (k, api.list(k.endpoint, &q).await) })
            .buffer_unordered(4);
        // Each answer is compacted as soon as it is read, so the raw answers of all kinds
        // are never held at once.
        while let Some((k, r)) = results.next().await {
            for o in r? {
                // Both marks, checked again on the answer: the tag (by the query) and the
                // owner (NetBox ignores a filter it does not know).
                let mark = custom_field(&o, CF_OWNER);
                if !mark.as_deref().is_some_and(|m| self.owned_mark(m)) {
                    continue;
                }
                if let Some(key) = current_key(k, &o) {
                    self.keep_first(k, key, o, &mut duplicates);
                }
            }
        }
        Ok(duplicates)
    }

    /// Adds an owned object to the current ones. Of two owned objects with one identity
    /// (a create NetBox finished after its client gave up, then made again), the older
    /// (lower id) is kept and the other returned for deletion.
    fn keep_first(
        &mut self,
        kind: Kind,
        key: String,
        obj: Value,
        duplicates: &mut Vec<(Kind, u64, String)>,
    ) {
        let exact = |o: &Value| custom_field(o, CF_OWNER).as_deref() == Some(self.s.owner.as_str());
        let new_exact = exact(&obj);
        let map = self.current.entry(kind.name).or_default();
        let new_id = id_of(&obj).unwrap_or(u64::MAX);
        let label = format!("duplicate {key} (id {new_id})");
        let old = map.get(&key);
        // Only two objects of the exact current mark are duplicates; one taken over from an
        // earlier mark only stands aside (the first one read stays).
        let both_exact = new_exact && old.is_some_and(exact);
        match old.and_then(id_of) {
            Some(old_id) if old_id == new_id => {}
            Some(_) if !both_exact => {}
            Some(old_id) if old_id < new_id => duplicates.push((kind, new_id, label)),
            Some(old_id) => {
                duplicates.push((kind, old_id, format!("duplicate {key} (id {old_id})")));
                map.insert(key, compact(kind, obj));
            }
            None => {
                map.insert(key, compact(kind, obj));
            }
        }
    }

    /// Reads the owned objects; owned duplicates are deleted first (children before their
    /// parents, by the order of the kinds) and the objects read again.
    async fn observe_owned(&mut self) -> Result<(), NetBoxError> {
        let duplicates = self.read_owned().await?;
        if duplicates.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            owner = %self.s.owner,
            duplicates = duplicates.len(),
            "owned duplicates found (writes NetBox finished after their client gave up): the newer ones are deleted"
        );
        let mut ordered = duplicates;
        ordered.sort_by_key(|(k, _, _)| OWNED_KINDS.iter().position(|o| o.name == k.name));
        self.report.duplicates_removed += ordered.len() as u64;
        self.delete_many(ordered).await;
        if self.dry_run {
            return Ok(());
        }
        self.current.clear();
        let again = self.read_owned().await?;
        if !again.is_empty() {
            tracing::warn!(owner = %self.s.owner, duplicates = again.len(), "owned duplicates left; deleted on the next sync");
        }
        Ok(())
    }

    /// True for the owner's mark, and with adoption for the scope's previous marks.
    fn owned_mark(&self, mark: &str) -> bool {
        mark == self.s.owner
            || self
                .s
                .adopt_previous
                .as_ref()
                .is_some_and(|p| p.owns(mark) || mark == p.legacy_mark())
    }

    /// Without `proxmox_owner` (first sync, or the field was deleted, which wipes its
    /// values), the owned objects are those with the operator's tag in this sync's NetBox
    /// cluster and their children with the tag. They get the owner mark back on this sync.
    async fn read_owned_by_tag(&mut self) -> Result<(), NetBoxError> {
        for k in OWNED_KINDS {
            self.current.insert(k.name, BTreeMap::new());
        }
        if is_placeholder(self.shared.cluster) {
            return Ok(());
        }
        let tagged = |extra: Option<(&str, u64)>| {
            let mut q = vec![("tag".to_string(), OWNER_TAG.to_string())];
            q.extend(extra.map(|(k, v)| (k.to_string(), v.to_string())));
            q
        };
        let in_cluster = tagged(Some(("cluster_id", self.shared.cluster)));
        let unmarked = |o: &Value| custom_field(o, CF_OWNER).is_none();
        let mut parents: BTreeMap<&'static str, BTreeSet<u64>> = BTreeMap::new();
        for (kind, parent_field) in [
            (DEVICE, None),
            (VM, None),
            (INTERFACE, Some("device")),
            (VMIF, Some("virtual_machine")),
            (VDISK, Some("virtual_machine")),
            (MAC, None),
            (IP, None),
        ] {
            let mut q = if parent_field.is_none()
                && matches!(kind.name, "dcim.device" | "virtualization.virtualmachine")
            {
                in_cluster.clone()
            } else {
                tagged(None)
            };
            q.push(("fields".to_string(), kind.fields.to_string()));
            let mut map = BTreeMap::new();
            for o in self.api.list(kind.endpoint, &q).await? {
                let parent_ok = match (kind.name, parent_field) {
                    (_, Some(field)) => {
                        let of = if field == "device" { DEVICE } else { VM };
                        id_of(&o[field])
                            .is_some_and(|p| parents.get(of.name).is_some_and(|s| s.contains(&p)))
                    }
                    ("dcim.macaddress" | "ipam.ipaddress", None) => {
                        let of = match o["assigned_object_type"].as_str() {
                            Some("dcim.interface") => INTERFACE,
                            Some("virtualization.vminterface") => VMIF,
                            _ => continue,
                        };
                        o["assigned_object_id"]
                            .as_u64()
                            .is_some_and(|p| parents.get(of.name).is_some_and(|s| s.contains(&p)))
                    }
                    _ => true,
                };
                if !(parent_ok && unmarked(&o)) {
                    continue;
                }
                if let Some(key) = current_key(kind, &o) {
                    parents.entry(kind.name).or_default().extend(id_of(&o));
                    map.insert(key, compact(kind, o));
                }
            }
            if !map.is_empty() {
                tracing::warn!(
                    kind = kind.name,
                    objects = map.len(),
                    "custom field proxmox_owner was missing: objects with the operator's tag in this cluster are taken back"
                );
            }
            self.current.insert(kind.name, map);
        }
        Ok(())
    }

    // ------------------------------------------------------------------- apply

    /// Creates or updates `desired` objects of `kind`; returns ids by key. Objects that
    /// failed are reported and missing from the result.
    async fn apply(&mut self, kind: Kind, desired: Vec<Desired>) -> BTreeMap<String, u64> {
        let mut ids = BTreeMap::new();
        let mut creates: Vec<Desired> = Vec::new();
        let mut updates: Vec<(Desired, u64, Map<String, Value>)> = Vec::new();
        let current = self.current.entry(kind.name).or_default();
        for d in desired {
            match current.get(&d.key) {
                Some(obj) => {
                    let id = id_of(obj).unwrap_or(0);
                    let changed = changed_fields(&d.fields, obj);
                    ids.insert(d.key.clone(), id);
                    if changed.is_empty() {
                        self.report.counts(kind.name).unchanged += 1;
                    } else {
                        updates.push((d, id, changed));
                    }
                }
                None => creates.push(d),
            }
        }
        for (d, _, changed) in &updates {
            self.report.plan(
                kind.name,
                &d.label,
                "update",
                changed.keys().cloned().collect(),
            );
        }
        for d in &creates {
            self.report.plan(
                kind.name,
                &d.label,
                "create",
                d.fields.keys().cloned().collect(),
            );
        }
        if self.dry_run {
            self.report.counts(kind.name).updated += updates.len() as u64;
            self.report.counts(kind.name).created += creates.len() as u64;
            for d in creates {
                let id = self.next_placeholder();
                ids.insert(d.key, id);
            }
            return ids;
        }
        // Updates: bulk PATCH of changed fields only.
        let patches: Vec<(String, String, Value)> = updates
            .into_iter()
            .map(|(d, id, mut changed)| {
                changed.insert("id".into(), json!(id));
                (d.key, d.label, Value::Object(changed))
            })
            .collect();
        for (key, result) in self.write_batches(kind, patches, false).await {
            match result {
                Ok(obj) => {
                    self.report.counts(kind.name).updated += 1;
                    self.current
                        .entry(kind.name)
                        .or_default()
                        .insert(key, compact(kind, obj));
                }
                Err((label, message)) => {
                    ids.remove(&key);
                    self.report.error(kind.name, &label, message);
                }
            }
        }
        let bodies: Vec<(String, String, Value)> = creates
            .into_iter()
            .map(|d| (d.key, d.label, Value::Object(d.fields)))
            .collect();
        for (key, result) in self.write_batches(kind, bodies, true).await {
            match result {
                Ok(obj) => {
                    self.report.counts(kind.name).created += 1;
                    if let Some(id) = id_of(&obj) {
                        ids.insert(key.clone(), id);
                    }
                    self.current
                        .entry(kind.name)
                        .or_default()
                        .insert(key, compact(kind, obj));
                }
                Err((label, message)) => {
                    if message.contains(DUPLICATE_IP) || message.contains("already exists") {
                        let remedy = if message.contains(DUPLICATE_IP) {
                            IP_SPACE_REMEDY
                        } else {
                            OWNER_REMEDY
                        };
                        self.report.collisions.push(Collision {
                            kind: kind.name.into(),
                            object: label.clone(),
                            existing_id: None,
                            message: format!("{message} ({remedy})"),
                        });
                    }
                    self.report.error(kind.name, &label, message);
                }
            }
        }
        ids
    }

    /// Sends bulk creates or updates in batches, several in flight; a batch NetBox rejects
    /// (400) is split until the bad objects fail alone. Returns per key the written object
    /// or (label, reason).
    async fn write_batches(
        &mut self,
        kind: Kind,
        items: Vec<WriteItem>,
        create: bool,
    ) -> Vec<WriteResult> {
        let mut out = Vec::new();
        if items.is_empty() {
            return out;
        }
        let chunks = batches(kind, items, self.s.batch_size.max(1));
        let api = self.api;
        let send = |chunk: Vec<WriteItem>| async move {
            let bodies: Vec<Value> = chunk.iter().map(|c| c.2.clone()).collect();
            let r = if create {
                api.create(kind.endpoint, bodies).await
            } else {
                api.update(kind.endpoint, bodies).await
            };
            (chunk, r)
        };
        let first: Vec<_> = stream::iter(chunks)
            .map(send)
            .buffer_unordered(self.s.max_in_flight.max(1))
            .collect()
            .await;
        let mut retry: Vec<Vec<WriteItem>> = Vec::new();
        for (chunk, r) in first {
            self.settle(kind, chunk, r, create, &mut out, &mut retry)
                .await;
        }
        while let Some(chunk) = retry.pop() {
            let (chunk, r) = send(chunk).await;
            self.settle(kind, chunk, r, create, &mut out, &mut retry)
                .await;
        }
        out
    }

    async fn settle(
        &mut self,
        kind: Kind,
        chunk: Vec<WriteItem>,
        result: Result<Vec<Value>, NetBoxError>,
        create: bool,
        out: &mut Vec<WriteResult>,
        retry: &mut Vec<Vec<WriteItem>>,
    ) {
        match result {
            Ok(objs) if objs.len() == chunk.len() => {
                // NetBox answers bulk updates in its own order (by id), creates in request
                // order: match by id, or by identity, never by position alone.
                let mut by_match: BTreeMap<String, Value> = BTreeMap::new();
                for obj in objs {
                    let m = if create {
                        current_key(kind, &obj)
                    } else {
                        id_of(&obj).map(|id| id.to_string())
                    };
                    if let Some(m) = m {
                        by_match.insert(m, obj);
                    }
                }
                for (key, label, body) in chunk {
                    let m = if create {
                        Some(key.clone())
                    } else {
                        id_of(&body).map(|id| id.to_string())
                    };
                    match m.and_then(|m| by_match.remove(&m)) {
                        Some(obj) => out.push((key, Ok(obj))),
                        None => out.push((
                            key,
                            Err((label, "NetBox's answer did not include this object".into())),
                        )),
                    }
                }
            }
            Ok(_) => {
                for (key, label, _) in chunk {
                    out.push((
                        key,
                        Err((
                            label,
                            "NetBox answered with a different number of objects".into(),
                        )),
                    ));
                }
            }
            Err(NetBoxError::Invalid { .. }) if chunk.len() > 1 => {
                let mut a = chunk;
                let b = a.split_off(a.len() / 2);
                retry.push(a);
                retry.push(b);
            }
            Err(NetBoxError::Invalid { message, .. }) => {
                for (key, label, _) in chunk {
                    out.push((key, Err((label, message.clone()))));
                }
            }
            Err(NetBoxError::Transport { message, .. }) if create => {
                // The answer was lost: the objects may exist now. Look them up by identity
                // before anything is retried, so nothing is created twice.
                let q = vec![("cf_proxmox_owner".to_string(), self.s.owner.clone())];
                let found: BTreeMap<String, Value> = match self.api.list(kind.endpoint, &q).await {
                    Ok(objs) => objs
                        .into_iter()
                        .filter_map(|o| current_key(kind, &o).map(|k| (k, o)))
                        .collect(),
                    Err(_) => BTreeMap::new(),
                };
                let mut missing = Vec::new();
                for item in chunk {
                    match found.get(&item.0) {
                        Some(obj) => out.push((item.0.clone(), Ok(obj.clone()))),
                        None => missing.push(item),
                    }
                }
                self.report.lost_creates += missing.len() as u64;
                for (key, label, _) in missing {
                    out.push((key, Err((label, format!("no answer from NetBox ({message}); not created, will be retried next sync")))));
                }
            }
            Err(e) => {
                for (key, label, _) in chunk {
                    out.push((key, Err((label, e.to_string()))));
                }
            }
        }
    }

    // ------------------------------------------------------------------- devices

    async fn sync_devices(
        &mut self,
        inv: &Inventory,
        hw: &BTreeMap<String, NodeHardware>,
    ) -> Result<BTreeMap<String, u64>, NetBoxError> {
        if !self.s.nodes {
            return Ok(BTreeMap::new());
        }
        // Unowned devices with a node's name in the site are in the way.
        let names: Vec<String> = inv
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| !self.current[DEVICE.name].contains_key(n))
            .collect();
        let unowned = self
            .unowned_by_name(DEVICE, &names, ("site_id", self.shared.site))
            .await?;
        let mut desired = Vec::new();
        for node in &inv.nodes {
            let h = hw.get(&node.name);
            let (manufacturer, model) = device_model(h);
            let mut cf = self.owner_cf();
            cf.insert(CF_STALE_SINCE.into(), Value::Null);
            if let Some(h) = h {
                let chassis = h.chassis.as_ref();
                cf.insert(
                    "hardware_chassis_serial".into(),
                    json!(chassis.and_then(|c| c.serial_number.clone())),
                );
                cf.insert(
                    "hardware_chassis_manufacturer".into(),
                    json!(chassis.and_then(|c| c.manufacturer.clone())),
                );
                cf.insert(
                    "hardware_chassis_product".into(),
                    json!(h.system.as_ref().and_then(|s| s.product_name.clone())),
                );
            }
            let mut f = fields(json!({
                "name": node.name,
                "device_type": self.shared.device_types.get(&format!("{manufacturer}/{model}")),
                "role": self.shared.device_role,
                "site": self.shared.site,
                "cluster": self.shared.cluster,
                "status": if node.online { "active" } else { "offline" },
                "tenant": self.shared.tenant,
                "custom_fields": cf,
            }));
            if let Some(serial) = h.and_then(|h| {
                h.system
                    .as_ref()
                    .and_then(|s| s.serial_number.clone())
                    .or_else(|| h.chassis.as_ref().and_then(|c| c.serial_number.clone()))
            }) {
                f.insert("serial".into(), json!(truncate(&serial, 50)));
            }
            let label = format!("node {}", node.name);
            if let Some(existing) = unowned.get(&node.name)
                && !self.adopt(DEVICE, &node.name, &label, existing)
            {
                continue;
            }
            if h.is_none() && self.current[DEVICE.name].contains_key(&node.name) {
                // Without facts this run the model is unknown, not generic: keep the one set.
                f.remove("device_type");
            }
            let tags = self.merged_tags(DEVICE, &node.name, &[]);
            f.insert("tags".into(), json!(tags));
            desired.push(Desired {
                key: node.name.clone(),
                label,
                fields: f,
            });
        }
        Ok(self.apply(DEVICE, desired).await)
    }

    /// Unowned objects of `kind` with the given names in a scope (`site_id`, `cluster_id`).
    async fn unowned_by_name(
        &mut self,
        kind: Kind,
        names: &[String],
        scope: (&str, u64),
    ) -> Result<BTreeMap<String, Value>, NetBoxError> {
        let mut out = BTreeMap::new();
        for chunk in names.chunks(100) {
            if chunk.is_empty() || is_placeholder(scope.1) {
                continue;
            }
            let mut q: Vec<(String, String)> = vec![(scope.0.to_string(), scope.1.to_string())];
            q.extend(chunk.iter().map(|n| ("name".to_string(), n.clone())));
            for o in self.api.list(kind.endpoint, &q).await? {
                let owned = custom_field(&o, CF_OWNER).as_deref() == Some(self.s.owner.as_str());
                if !owned && let Some(name) = o["name"].as_str() {
                    out.insert(name.to_lowercase(), o);
                }
            }
        }
        let mut by_name = BTreeMap::new();
        for n in names {
            if let Some(o) = out.get(&n.to_lowercase()) {
                by_name.insert(n.clone(), o.clone());
            }
        }
        Ok(by_name)
    }

    /// Handles an unowned object in the way: adopted (becomes current, owned by the next
    /// write) when the spec allows it, else reported. Returns whether to go on with it.
    fn adopt(&mut self, kind: Kind, key: &str, label: &str, existing: &Value) -> bool {
        let id = id_of(existing);
        let owner = custom_field(existing, CF_OWNER);
        if self.s.adopt_existing && owner.is_none() {
            self.report.plan(
                kind.name,
                label,
                "adopt",
                vec![CF_OWNER.into(), "tags".into()],
            );
            self.current
                .entry(kind.name)
                .or_default()
                .insert(key.to_string(), compact(kind, existing.clone()));
            return true;
        }
        let message = match owner {
            Some(o) => format!("a NetBox object with this name belongs to {o}"),
            None => "a NetBox object with this name exists and is not managed by this operator (set spec.netbox.adoptExisting to take it over)".into(),
        };
        self.report.collisions.push(Collision {
            kind: kind.name.into(),
            object: label.into(),
            existing_id: id,
            message,
        });
        false
    }

    /// The tags an object should have: the human ones it has, plus ours, minus stale and
    /// PVE tags that no longer apply. A human tag is never removed, whatever its name.
    fn merged_tags(&self, kind: Kind, key: &str, pve_tags: &[u64]) -> Vec<u64> {
        let mut out: BTreeSet<u64> = BTreeSet::new();
        if let Some(obj) = self.current.get(kind.name).and_then(|m| m.get(key)) {
            for t in obj["tags"].as_array().into_iter().flatten() {
                let Some(id) = id_of(t) else { continue };
                let is_pve = self.shared.pve_tags_made.contains(&id)
                    || self.shared.pve_tags.values().any(|p| *p == id);
                if id != self.shared.stale_tag && !is_pve {
                    out.insert(id);
                }
            }
        }
        out.extend(self.owned_tags());
        out.extend(pve_tags);
        out.into_iter().collect()
    }

    // ---------------------------------------------------------- node interfaces

    async fn sync_node_interfaces(
        &mut self,
        inv: &Inventory,
        hw: &BTreeMap<String, NodeHardware>,
        devices: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        if !self.s.node_interfaces {
            return BTreeMap::new();
        }
        let mut desired = Vec::new();
        for node in &inv.nodes {
            let Some(&device) = devices.get(&node.name) else {
                continue;
            };
            let facts = hw.get(&node.name);
            let facts_missing = self.s.hardware_discovery && facts.is_none();
            for iface in &node.interfaces {
                let nic = facts.and_then(|h| h.nics.iter().find(|n| n.link.name == iface.name));
                let ethtool = nic.and_then(|n| n.ethtool.as_ref());
                let mut cf = self.owner_cf();
                if let Some(e) = ethtool {
                    cf.insert(
                        "nic_speed_gbps".into(),
                        json!(e.speed_mbps.map(|s| s.saturating_add(500) / 1000)),
                    );
                    cf.insert("nic_duplex".into(), json!(e.duplex));
                    cf.insert("nic_link".into(), json!(e.link_detected));
                }
                let key = format!("{device}/{}", iface.name);
                let mut f = fields(json!({
                    "device": device,
                    "name": iface.name,
                    "type": interface_type(&iface.kind, ethtool),
                    "enabled": iface.active || iface.kind == NodeInterfaceKind::Physical && nic.is_some_and(|n| n.link.state.as_deref() == Some("UP")),
                    "mtu": iface.mtu,
                    // A VLAN-aware bridge carries every VLAN; other interfaces have no mode.
                    "mode": iface.bridge_vlan_aware.then_some("tagged-all"),
                    "description": truncate(iface.comments.as_deref().unwrap_or_default(), 200),
                    "custom_fields": cf,
                    "tags": self.merged_tags(INTERFACE, &key, &[]),
                }));
                if let Some(e) = ethtool {
                    f.insert(
                        "speed".into(),
                        json!(e.speed_mbps.map(|s| s.saturating_mul(1000))),
                    );
                    f.insert(
                        "duplex".into(),
                        json!(
                            e.duplex
                                .as_deref()
                                .filter(|d| matches!(*d, "full" | "half"))
                        ),
                    );
                }
                let exists = self.current[INTERFACE.name].contains_key(&key);
                let physical = matches!(
                    iface.kind,
                    NodeInterfaceKind::Physical | NodeInterfaceKind::Unknown
                );
                // A physical type comes from a known link speed; without one (no facts, link
                // down) the type is unknown, not `other`: keep the one set.
                if exists && physical && f["type"] == "other" {
                    f.remove("type");
                }
                // Link state is part of `enabled`: unknown when this node's discovery failed.
                if exists && physical && facts_missing {
                    f.remove("enabled");
                }
                desired.push(Desired {
                    key,
                    label: format!("node {} interface {}", node.name, iface.name),
                    fields: f,
                });
            }
        }
        self.apply(INTERFACE, desired).await
    }

    // ------------------------------------------------------------------------ VMs

    fn synced_guests<'i>(
        &self,
        inv: &'i Inventory,
    ) -> impl Iterator<Item = &'i crate::inventory::Guest> + use<'i> {
        let templates = self.s.sync_templates;
        inv.guests.iter().filter(move |g| templates || !g.template)
    }

    async fn sync_vms(&mut self, inv: &Inventory) -> Result<BTreeMap<String, u64>, NetBoxError> {
        if !self.s.virtual_machines {
            return Ok(BTreeMap::new());
        }
        let names = guest_names(self.synced_guests(inv));
        let node_devices: BTreeMap<String, u64> = self.current[DEVICE.name]
            .iter()
            .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
            .collect();
        let wanted: Vec<String> = self
            .synced_guests(inv)
            .filter(|g| !self.current[VM.name].contains_key(&g.vmid.to_string()))
            .map(|g| names[&g.vmid].clone())
            .collect();
        let unowned = self
            .unowned_by_name(VM, &wanted, ("cluster_id", self.shared.cluster))
            .await?;
        let disk_repairs = self.disk_totals_to_repair().await?;
        let mut desired = Vec::new();
        for g in self.synced_guests(inv).collect::<Vec<_>>() {
            let key = g.vmid.to_string();
            let name = names[&g.vmid].clone();
            let label = format!("vm {} ({})", g.vmid, g.name);
            if let Some(existing) = unowned.get(&name)
                && !self.adopt(VM, &key, &label, existing)
            {
                continue;
            }
            let role = match (g.template, g.kind) {
                (true, _) => self.shared.role_template,
                (false, GuestKind::Qemu) => self.shared.role_qemu,
                (false, GuestKind::Lxc) => self.shared.role_lxc,
            };
            let mut cf = self.owner_cf();
            cf.insert(CF_VMID.into(), json!(g.vmid));
            cf.insert(
                CF_GUEST_TYPE.into(),
                json!(match g.kind {
                    GuestKind::Qemu => "qemu",
                    GuestKind::Lxc => "lxc",
                }),
            );
            cf.insert(CF_STALE_SINCE.into(), Value::Null);
            let pve_tags: Vec<u64> = g
                .tags
                .iter()
                .filter_map(|t| self.shared.pve_tags.get(t).copied())
                .collect();
            let mut f = fields(json!({
                "name": name,
                "status": vm_status(g),
                "cluster": self.shared.cluster,
                "device": node_devices.get(&g.node),
                "role": role,
                "tenant": self.shared.tenant,
                "platform": g.os_type.as_deref().map(platform_name).and_then(|p| self.shared.platforms.get(&p).copied()),
                "vcpus": g.vcpus,
                "memory": g.memory_mib,
                "description": truncate(g.description.as_deref().unwrap_or_default().lines().next().unwrap_or_default(), 200),
                "custom_fields": cf,
                "tags": self.merged_tags(VM, &key, &pve_tags),
            }));
            // With virtual disks synced, NetBox keeps `disk` equal to their sum itself.
            if !self.s.virtual_disks {
                let total = total_mib(g.disks.iter().map(|d| d.size_bytes));
                f.insert(
                    "disk".into(),
                    if total > 0 { json!(total) } else { Value::Null },
                );
            }
            if let Some(total) = disk_repairs.get(&key) {
                f.insert("disk".into(), total.clone());
            }
            let config_read = inv
                .completeness
                .is_complete(&ReadScope::GuestConfig(g.vmid));
            if !self.s.description_from_notes {
                f.remove("description");
            }
            if !config_read && self.current[VM.name].contains_key(&key) {
                // Its config could not be read: what comes from it is unknown, not empty.
                for field in ["platform", "vcpus", "memory", "description", "disk"] {
                    f.remove(field);
                }
            }
            desired.push(Desired {
                key,
                label,
                fields: f,
            });
        }
        Ok(self.apply(VM, desired).await)
    }

    /// VMs whose `disk` total in NetBox is not the sum of their virtual disks (left by
    /// another client writing disks of one VM concurrently): NetBox then refuses every
    /// update of the VM, so the total is put back. Checked against the owned disks read at
    /// the start (no request when they agree); on a mismatch all of the VM's disks are read,
    /// hand-made ones included, since NetBox sums them all. By vmid key.
    async fn disk_totals_to_repair(&mut self) -> Result<BTreeMap<String, Value>, NetBoxError> {
        let mut out = BTreeMap::new();
        if !self.s.virtual_disks {
            return Ok(out);
        }
        let mut owned_sum: BTreeMap<u64, u64> = BTreeMap::new();
        for d in self.current[VDISK.name].values() {
            if let Some(vm) = id_of(&d["virtual_machine"]) {
                *owned_sum.entry(vm).or_default() += d["size"].as_u64().unwrap_or(0);
            }
        }
        let suspects: Vec<(String, u64, u64)> = self.current[VM.name]
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
            for d in self.api.list(VDISK.endpoint, &q).await? {
                if let Some(vm) = id_of(&d["virtual_machine"]) {
                    *total.entry(vm).or_default() += d["size"].as_u64().unwrap_or(0);
                }
            }
            for (key, id, have) in chunk {
                let want = total.get(id).copied().unwrap_or(0);
                if want != *have {
                    out.insert(
                        key.clone(),
                        if want > 0 { json!(want) } else { Value::Null },
                    );
                }
            }
        }
        Ok(out)
    }

    async fn sync_vm_interfaces(
        &mut self,
        inv: &Inventory,
        vms: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        if !self.s.vm_interfaces {
            return BTreeMap::new();
        }
        let mut desired = Vec::new();
        for g in self.synced_guests(inv).collect::<Vec<_>>() {
            let Some(&vm) = vms.get(&g.vmid.to_string()) else {
                continue;
            };
            for nic in &g.nics {
                let key = format!("{vm}/{}", nic.slot);
                let vlan = nic
                    .vlan_tag
                    .and_then(|t| self.shared.vlans.get(&t).copied());
                let description = match (&nic.model, &nic.bridge) {
                    (Some(m), Some(b)) => format!("{m} on {b}"),
                    (None, Some(b)) => format!("on {b}"),
                    _ => String::new(),
                };
                let f = fields(json!({
                    "virtual_machine": vm,
                    "name": nic.slot,
                    "enabled": !nic.link_down,
                    "mtu": nic.mtu,
                    "description": description,
                    "mode": vlan.map(|_| "access"),
                    "untagged_vlan": vlan,
                    "custom_fields": self.owner_cf(),
                    "tags": self.merged_tags(VMIF, &key, &[]),
                }));
                desired.push(Desired {
                    key,
                    label: format!("vm {} interface {}", g.vmid, nic.slot),
                    fields: f,
                });
            }
        }
        self.apply(VMIF, desired).await
    }

    /// Virtual disks; NetBox keeps each VM's `disk` equal to their sum.
    async fn sync_virtual_disks(&mut self, inv: &Inventory, vms: &BTreeMap<String, u64>) {
        if !self.s.virtual_disks {
            return;
        }
        let mut desired = Vec::new();
        for g in self.synced_guests(inv).collect::<Vec<_>>() {
            let Some(&vm) = vms.get(&g.vmid.to_string()) else {
                continue;
            };
            for d in &g.disks {
                let key = format!("{vm}/{}", d.slot);
                let mut cf = self.owner_cf();
                cf.insert(CF_DISK_STORAGE.into(), json!(d.storage));
                let f = fields(json!({
                    "virtual_machine": vm,
                    "name": d.slot,
                    "size": bytes_to_mib(d.size_bytes.unwrap_or(0)),
                    "description": truncate(&d.volume, 200),
                    "custom_fields": cf,
                    "tags": self.merged_tags(VDISK, &key, &[]),
                }));
                desired.push(Desired {
                    key,
                    label: format!("vm {} disk {}", g.vmid, d.slot),
                    fields: f,
                });
            }
        }
        self.apply(VDISK, desired).await;
    }

    // ------------------------------------------------------------- MACs and refs

    async fn sync_macs(
        &mut self,
        inv: &Inventory,
        hw: &BTreeMap<String, NodeHardware>,
        interfaces: &BTreeMap<String, u64>,
        vm_ifaces: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        let mut desired = Vec::new();
        let mut add =
            |e: &mut Self, object_type: &str, object_id: u64, mac: &str, label: String| {
                let key = format!("{object_type}/{object_id}/{mac}");
                let f = fields(json!({
                    "mac_address": mac,
                    "assigned_object_type": object_type,
                    "assigned_object_id": object_id,
                    "custom_fields": e.owner_cf(),
                    "tags": e.merged_tags(MAC, &key, &[]),
                }));
                desired.push(Desired {
                    key,
                    label,
                    fields: f,
                });
            };
        if self.s.node_interfaces {
            let devices: BTreeMap<String, u64> = self.current[DEVICE.name]
                .iter()
                .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
                .collect();
            for node in &inv.nodes {
                let (Some(device), Some(h)) = (devices.get(&node.name), hw.get(&node.name)) else {
                    continue;
                };
                for nic in &h.nics {
                    let (Some(mac), Some(&iface)) = (
                        nic.link.mac.as_deref(),
                        interfaces.get(&format!("{device}/{}", nic.link.name)),
                    ) else {
                        continue;
                    };
                    add(
                        self,
                        "dcim.interface",
                        iface,
                        mac,
                        format!("node {} interface {} MAC {mac}", node.name, nic.link.name),
                    );
                }
            }
        }
        if self.s.vm_interfaces {
            let vms: BTreeMap<String, u64> = self.current[VM.name]
                .iter()
                .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
                .collect();
            for g in self.synced_guests(inv).collect::<Vec<_>>() {
                let Some(vm) = vms.get(&g.vmid.to_string()) else {
                    continue;
                };
                for nic in &g.nics {
                    let (Some(mac), Some(&iface)) = (
                        nic.mac.as_deref(),
                        vm_ifaces.get(&format!("{vm}/{}", nic.slot)),
                    ) else {
                        continue;
                    };
                    add(
                        self,
                        "virtualization.vminterface",
                        iface,
                        mac,
                        format!("vm {} {} MAC {mac}", g.vmid, nic.slot),
                    );
                }
            }
        }
        self.apply(MAC, desired).await
    }

    /// Second pass over interfaces: references to other objects (parent, LAG, bridge,
    /// primary MAC), known only once everything exists.
    async fn sync_interface_refs(
        &mut self,
        inv: &Inventory,
        interfaces: &BTreeMap<String, u64>,
        vm_ifaces: &BTreeMap<String, u64>,
        macs: &BTreeMap<String, u64>,
    ) {
        let mut desired = Vec::new();
        let mac_of = |object_type: &str, id: u64| -> Option<u64> {
            let prefix = format!("{object_type}/{id}/");
            macs.iter()
                .find(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| *v)
        };
        if self.s.node_interfaces {
            let devices: BTreeMap<String, u64> = self.current[DEVICE.name]
                .iter()
                .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
                .collect();
            for node in &inv.nodes {
                let Some(device) = devices.get(&node.name) else {
                    continue;
                };
                let id_of_iface = |name: &str| interfaces.get(&format!("{device}/{name}")).copied();
                let mut refs: BTreeMap<&str, InterfaceRefs> = BTreeMap::new();
                for iface in &node.interfaces {
                    refs.entry(&iface.name).or_default().parent =
                        iface.vlan_parent.as_deref().and_then(id_of_iface);
                    for member in &iface.bond_slaves {
                        refs.entry(member).or_default().lag = id_of_iface(&iface.name);
                    }
                    for port in &iface.bridge_ports {
                        refs.entry(port).or_default().bridge = id_of_iface(&iface.name);
                    }
                }
                for iface in &node.interfaces {
                    let key = format!("{device}/{}", iface.name);
                    let Some(&id) = interfaces.get(&key) else {
                        continue;
                    };
                    let r = refs.get(iface.name.as_str()).copied().unwrap_or_default();
                    let mut f =
                        fields(json!({"parent": r.parent, "lag": r.lag, "bridge": r.bridge}));
                    // Node MACs come from discovery: without them this run, keep the one set.
                    if let Some(mac) = mac_of("dcim.interface", id) {
                        f.insert("primary_mac_address".into(), json!(mac));
                    }
                    desired.push(Desired {
                        key,
                        label: format!("node {} interface {}", node.name, iface.name),
                        fields: f,
                    });
                }
            }
            self.apply_refs(INTERFACE, desired).await;
        }
        if self.s.vm_interfaces {
            let mut desired = Vec::new();
            for (key, &id) in vm_ifaces {
                let Some(mac) = mac_of("virtualization.vminterface", id) else {
                    continue;
                };
                let f = fields(json!({"primary_mac_address": mac}));
                desired.push(Desired {
                    key: key.clone(),
                    label: format!("vm interface {key}"),
                    fields: f,
                });
            }
            self.apply_refs(VMIF, desired).await;
        }
    }

    /// Like [`Engine::apply`] for objects that already exist: only updates, counted once.
    async fn apply_refs(&mut self, kind: Kind, desired: Vec<Desired>) {
        let before = self.report.counts(kind.name).clone();
        let existing: Vec<Desired> = desired
            .into_iter()
            .filter(|d| {
                self.current
                    .get(kind.name)
                    .is_some_and(|m| m.contains_key(&d.key))
            })
            .collect();
        self.apply(kind, existing).await;
        // The object was already counted in the first pass: keep one count per object.
        let after = self.report.counts(kind.name);
        let extra_updates = after.updated - before.updated;
        after.unchanged = before.unchanged;
        // An object updated here that was unchanged in the first pass moves to updated.
        let moved = extra_updates.min(before.unchanged);
        after.updated = before.updated + moved;
        after.unchanged = before.unchanged - moved;
    }

    // ------------------------------------------------------------------------ IPs

    async fn sync_ips(
        &mut self,
        inv: &Inventory,
        interfaces: &BTreeMap<String, u64>,
        vm_ifaces: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        if !self.s.ip_addresses {
            return BTreeMap::new();
        }
        let mut desired = Vec::new();
        let mut push = |e: &Self,
                        object_type: &str,
                        object_id: u64,
                        cidr: &str,
                        label: String,
                        description: &str| {
            let key = format!("{object_type}/{object_id}/{cidr}");
            let f = fields(json!({
                "address": cidr,
                "vrf": e.shared.vrf,
                "status": "active",
                "assigned_object_type": object_type,
                "assigned_object_id": object_id,
                "tenant": e.shared.tenant,
                "description": description,
                "custom_fields": e.owner_cf(),
                "tags": e.merged_tags(IP, &key, &[]),
            }));
            desired.push(Desired {
                key,
                label,
                fields: f,
            });
        };
        let devices: BTreeMap<String, u64> = self
            .current
            .get(DEVICE.name)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
                    .collect()
            })
            .unwrap_or_default();
        for node in &inv.nodes {
            let Some(device) = devices.get(&node.name) else {
                continue;
            };
            for iface in &node.interfaces {
                let Some(&id) = interfaces.get(&format!("{device}/{}", iface.name)) else {
                    continue;
                };
                for cidr in [&iface.cidr, &iface.cidr6].into_iter().flatten() {
                    if let Some(c) = normalize_cidr(cidr) {
                        push(
                            self,
                            "dcim.interface",
                            id,
                            &c,
                            format!("node {} {} {c}", node.name, iface.name),
                            "",
                        );
                    }
                }
            }
        }
        let vms: BTreeMap<String, u64> = self
            .current
            .get(VM.name)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
                    .collect()
            })
            .unwrap_or_default();
        for g in self.synced_guests(inv).collect::<Vec<_>>() {
            let Some(vm) = vms.get(&g.vmid.to_string()) else {
                continue;
            };
            for a in &g.addresses {
                let Some(slot) = &a.nic_slot else { continue };
                let Some(&iface) = vm_ifaces.get(&format!("{vm}/{slot}")) else {
                    continue;
                };
                if let Some(c) = normalize_cidr(&a.cidr) {
                    let source = match a.source {
                        crate::inventory::AddressSource::Agent => "from the QEMU guest agent",
                        crate::inventory::AddressSource::LxcRuntime => "from the running container",
                        crate::inventory::AddressSource::LxcConfig => "from the container config",
                        crate::inventory::AddressSource::CloudInit => "from cloud-init ipconfig",
                    };
                    push(
                        self,
                        "virtualization.vminterface",
                        iface,
                        &c,
                        format!("vm {} {slot} {c}", g.vmid),
                        source,
                    );
                }
            }
        }
        self.apply(IP, desired).await
    }

    async fn sync_primary_ips(
        &mut self,
        inv: &Inventory,
        devices: &BTreeMap<String, u64>,
        vms: &BTreeMap<String, u64>,
        ips: &BTreeMap<String, u64>,
    ) {
        let ip_id = |object_type: &str, iface: u64, cidr: &str| {
            ips.get(&format!("{object_type}/{iface}/{cidr}")).copied()
        };
        if self.s.nodes && self.s.ip_addresses {
            let interfaces = self
                .current
                .get(INTERFACE.name)
                .cloned()
                .unwrap_or_default();
            let mut desired = Vec::new();
            for node in &inv.nodes {
                let Some(&device) = devices.get(&node.name) else {
                    continue;
                };
                // Prefer the interface with the default gateway, then the node's cluster address.
                let mut candidates: Vec<&crate::inventory::NodeInterface> =
                    node.interfaces.iter().collect();
                candidates.sort_by_key(|i| {
                    (
                        i.gateway.is_none(),
                        i.cidr.as_deref().map(|c| {
                            !c.starts_with(&format!(
                                "{}/",
                                node.address.clone().unwrap_or_default()
                            ))
                        }),
                        i.name.clone(),
                    )
                });
                let mut p4 = None;
                let mut p6 = None;
                for iface in candidates {
                    let Some(id) = interfaces
                        .get(&format!("{device}/{}", iface.name))
                        .and_then(id_of)
                    else {
                        continue;
                    };
                    if p4.is_none() {
                        p4 = iface
                            .cidr
                            .as_deref()
                            .and_then(normalize_cidr)
                            .and_then(|c| ip_id("dcim.interface", id, &c));
                    }
                    if p6.is_none() {
                        p6 = iface
                            .cidr6
                            .as_deref()
                            .and_then(normalize_cidr)
                            .and_then(|c| ip_id("dcim.interface", id, &c));
                    }
                }
                if !inv
                    .completeness
                    .is_complete(&ReadScope::NodeNetwork(node.name.clone()))
                {
                    // Its addresses are unknown this run: keep the primary IPs set.
                    continue;
                }
                let f = fields(json!({"primary_ip4": p4, "primary_ip6": p6}));
                desired.push(Desired {
                    key: node.name.clone(),
                    label: format!("node {}", node.name),
                    fields: f,
                });
            }
            self.apply_refs(DEVICE, desired).await;
        }
        // Without IP addresses synced, primary IPs are not managed either.
        if self.s.virtual_machines && self.s.ip_addresses {
            let vm_ifaces = self.current.get(VMIF.name).cloned().unwrap_or_default();
            let mut desired = Vec::new();
            for g in self.synced_guests(inv).collect::<Vec<_>>() {
                let key = g.vmid.to_string();
                let Some(&vm) = vms.get(&key) else { continue };
                let mut p4 = None;
                let mut p6 = None;
                {
                    // Deterministic: lowest NIC slot first, then the address order.
                    let mut addrs: Vec<&crate::inventory::GuestAddress> =
                        g.addresses.iter().collect();
                    addrs.sort_by_key(|a| {
                        (
                            a.nic_slot
                                .as_deref()
                                .and_then(|s| s.trim_start_matches("net").parse::<u32>().ok())
                                .unwrap_or(u32::MAX),
                            a.cidr.clone(),
                        )
                    });
                    for a in addrs {
                        let (Some(slot), Some(c)) = (&a.nic_slot, normalize_cidr(&a.cidr)) else {
                            continue;
                        };
                        let Some(iface) = vm_ifaces.get(&format!("{vm}/{slot}")).and_then(id_of)
                        else {
                            continue;
                        };
                        let id = ip_id("virtualization.vminterface", iface, &c);
                        if c.contains(':') {
                            p6 = p6.or(id);
                        } else {
                            p4 = p4.or(id);
                        }
                    }
                }
                let mut f = fields(json!({"primary_ip4": p4, "primary_ip6": p6}));
                if !self.addresses_known(inv, g.vmid) {
                    // Part of its addresses is unknown this run (stopped, agent not running,
                    // read failed): keep a primary IP that is still one of its addresses,
                    // and never clear one.
                    let current = self.current[VM.name].get(&key);
                    for field in ["primary_ip4", "primary_ip6"] {
                        let held = current
                            .and_then(|c| id_of(&c[field]))
                            .is_some_and(|id| self.vm_owns_ip(vm, id));
                        if held || f[field].is_null() {
                            f.remove(field);
                        }
                    }
                }
                desired.push(Desired {
                    key,
                    label: format!("vm {} ({})", g.vmid, g.name),
                    fields: f,
                });
            }
            self.apply_refs(VM, desired).await;
        }
    }

    /// Every address of a guest was read this run: its config, and its runtime addresses
    /// (or it has none to read because it runs without an agent).
    fn addresses_known(&self, inv: &Inventory, vmid: u32) -> bool {
        let c = &inv.completeness;
        c.is_complete(&ReadScope::GuestConfig(vmid))
            && matches!(
                c.outcome(&ReadScope::GuestAddresses(vmid)),
                Some(ReadOutcome::Complete)
                    | Some(ReadOutcome::NotApplicable {
                        reason: ReadFailure::AgentDisabled,
                        ..
                    })
            )
    }

    /// The IP address `ip` is owned and assigned to an interface of the VM `vm`.
    fn vm_owns_ip(&self, vm: u64, ip: u64) -> bool {
        let Some(obj) = self.current[IP.name]
            .values()
            .find(|o| id_of(o) == Some(ip))
        else {
            return false;
        };
        obj["assigned_object_type"] == "virtualization.vminterface"
            && obj["assigned_object_id"].as_u64().is_some_and(|iface| {
                self.current[VMIF.name]
                    .values()
                    .any(|i| id_of(i) == Some(iface) && id_of(&i["virtual_machine"]) == Some(vm))
            })
    }

    // --------------------------------------------------------------------- prune

    async fn prune(
        &mut self,
        inv: &Inventory,
        devices: &BTreeMap<String, u64>,
        vms: &BTreeMap<String, u64>,
    ) {
        let complete = |scope: ReadScope| inv.completeness.is_complete(&scope);
        let addresses_read = |vmid: u32| {
            matches!(
                inv.completeness.outcome(&ReadScope::GuestAddresses(vmid)),
                Some(ReadOutcome::Complete)
            )
        };
        let device_ids: BTreeMap<u64, String> =
            devices.iter().map(|(k, v)| (*v, k.clone())).collect();
        let vm_ids: BTreeMap<u64, u32> = vms
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|vmid| (*v, vmid)))
            .collect();
        // Node interface id -> its node's name.
        let iface_nodes: BTreeMap<u64, String> = self
            .current
            .get(INTERFACE.name)
            .map(|m| {
                m.values()
                    .filter_map(|i| {
                        let node = device_ids.get(&id_of(&i["device"])?)?;
                        Some((id_of(i)?, node.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();

        // Children of objects that still exist: deleted at once when their scope was read.
        // Owned children nothing wanted this sync: deleted, or (not prunable) counted as
        // orphaned once the borrow of the current objects ends.
        let mut deletes: Vec<(Kind, u64, String)> = Vec::new();
        let mut orphaned: Vec<&'static str> = Vec::new();
        let wanted_keys = self.desired_child_keys(inv, devices, vms);
        for kind in [IP, MAC, VDISK, VMIF, INTERFACE] {
            let Some(objs) = self.current.get(kind.name) else {
                continue;
            };
            for (key, obj) in objs {
                if wanted_keys.contains(&(kind.name, key.clone())) {
                    continue;
                }
                let Some(id) = id_of(obj) else { continue };
                if !self.kind_synced(kind, obj) {
                    // Not synced now (sync.kinds): left as it is.
                    continue;
                }
                // Which scope must have been read for the absence to mean deletion.
                let scope_ok = match kind.name {
                    "dcim.interface" => id_of(&obj["device"])
                        .and_then(|d| device_ids.get(&d))
                        .is_some_and(|n| complete(ReadScope::NodeNetwork(n.clone()))),
                    "virtualization.vminterface" | "virtualization.virtualdisk" => {
                        id_of(&obj["virtual_machine"])
                            .and_then(|v| vm_ids.get(&v))
                            .is_some_and(|vmid| complete(ReadScope::GuestConfig(*vmid)))
                    }
                    "dcim.macaddress" | "ipam.ipaddress" => {
                        let parent = obj["assigned_object_id"].as_u64();
                        match obj["assigned_object_type"].as_str() {
                            Some("virtualization.vminterface") => parent
                                .and_then(|p| {
                                    self.current[VMIF.name]
                                        .values()
                                        .find(|v| id_of(v) == Some(p))
                                })
                                .and_then(|v| id_of(&v["virtual_machine"]))
                                .and_then(|v| vm_ids.get(&v))
                                .is_some_and(|vmid| {
                                    complete(ReadScope::GuestConfig(*vmid))
                                        && (kind.name == "dcim.macaddress" || addresses_read(*vmid))
                                }),
                            // Node MACs come from discovery and are kept; node IPs go
                            // only when that node's network was read.
                            Some("dcim.interface") => {
                                kind.name == "ipam.ipaddress"
                                    && parent.and_then(|p| iface_nodes.get(&p)).is_some_and(|n| {
                                        complete(ReadScope::NodeNetwork(n.clone()))
                                    })
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                let parent_gone = match kind.name {
                    "dcim.interface" => {
                        id_of(&obj["device"]).is_none_or(|d| !device_ids.contains_key(&d))
                    }
                    "virtualization.vminterface" | "virtualization.virtualdisk" => {
                        id_of(&obj["virtual_machine"]).is_none_or(|v| !vm_ids.contains_key(&v))
                    }
                    _ => false,
                };
                if parent_gone {
                    // Goes with its parent (stale, then deleted by NetBox's cascade).
                    continue;
                }
                if self.s.prune && scope_ok {
                    deletes.push((kind, id, key.clone()));
                } else {
                    orphaned.push(kind.name);
                }
            }
        }
        for kind in orphaned {
            self.report.counts(kind).orphaned += 1;
        }
        self.delete_many(deletes).await;

        // Devices and VMs: stale first, deleted after the grace period (at once when it is
        // zero). A kind that is not
        // synced is not managed: its objects are left as they are. So is a template when
        // templates are skipped: it still exists in Proxmox.
        let node_names: BTreeSet<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
        let guest_ids: BTreeSet<String> = inv.guests.iter().map(|g| g.vmid.to_string()).collect();
        let mut expired: Vec<(Kind, u64, String)> = Vec::new();
        let clean = inv.permissions_clean();
        for (kind, synced, set_complete) in [
            (DEVICE, self.s.nodes, clean && inv.node_set_complete()),
            (
                VM,
                self.s.virtual_machines,
                clean && inv.guest_set_complete(),
            ),
        ] {
            if !synced {
                continue;
            }
            // Only the objects gone from Proxmox are taken out of the current map's borrow.
            let gone: Vec<(String, Value)> = self
                .current
                .get(kind.name)
                .into_iter()
                .flatten()
                .filter(|(key, _)| match kind.name {
                    "dcim.device" => !node_names.contains(key.as_str()),
                    _ => !guest_ids.contains(*key),
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let owned = self.current.get(kind.name).map_or(0, BTreeMap::len);
            let blocked = self.s.prune
                && set_complete
                && prune_refused(gone.len(), owned, self.s.prune_max_percent);
            if blocked {
                let message = format!(
                    "{}: {} of {} owned objects are gone from Proxmox, more than spec.sync.prune.maxPercent ({}%): none marked stale or deleted; check the PVE token's permissions, or raise maxPercent for one sync to confirm",
                    kind.name,
                    gone.len(),
                    owned,
                    self.s.prune_max_percent
                );
                tracing::warn!(
                    kind = kind.name,
                    gone = gone.len(),
                    owned,
                    "pruning refused"
                );
                self.report.prune_blocked = Some(match self.report.prune_blocked.take() {
                    Some(previous) => format!("{previous}; {message}"),
                    None => message,
                });
            }
            let mut stale_patches: Vec<WriteItem> = Vec::new();
            for (key, obj) in gone {
                if blocked || !(self.s.prune && set_complete) {
                    self.report.counts(kind.name).orphaned += 1;
                    continue;
                }
                let Some(id) = id_of(&obj) else { continue };
                let noun = if kind.name == "dcim.device" {
                    "node"
                } else {
                    "vm"
                };
                let label = format!("{noun} {key}");
                let since = custom_field(&obj, CF_STALE_SINCE)
                    .and_then(|s| DateTime::parse_from_rfc3339(&s).ok());
                match since {
                    Some(since)
                        if (self.now - since.with_timezone(&Utc))
                            .to_std()
                            .unwrap_or_default()
                            >= self.s.grace_period =>
                    {
                        expired.push((kind, id, label));
                    }
                    Some(_) => self.report.counts(kind.name).stale += 1,
                    // No grace period: deleted in the sync that finds it gone, without a
                    // stale mark first (one write, and one clean sync converges).
                    None if self.s.grace_period.is_zero() => expired.push((kind, id, label)),
                    None => {
                        let mut tags: BTreeSet<u64> = obj["tags"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(id_of)
                            .collect();
                        tags.insert(self.shared.stale_tag);
                        let mut cf = Map::new();
                        cf.insert(
                            CF_STALE_SINCE.into(),
                            json!(self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                        );
                        self.report.plan(
                            kind.name,
                            &label,
                            "markStale",
                            vec!["status".into(), "tags".into(), CF_STALE_SINCE.into()],
                        );
                        let patch = json!({"id": id, "status": "offline", "tags": tags, "custom_fields": cf});
                        stale_patches.push((key, label, patch));
                    }
                }
            }
            if self.dry_run {
                self.report.counts(kind.name).stale += stale_patches.len() as u64;
                continue;
            }
            for (_, result) in self.write_batches(kind, stale_patches, false).await {
                match result {
                    Ok(_) => self.report.counts(kind.name).stale += 1,
                    Err((label, message)) => self.report.error(kind.name, &label, message),
                }
            }
        }
        self.delete_many(expired).await;
    }

    /// Whether objects like `obj` of `kind` are synced (`sync.kinds`); MACs and IPs follow
    /// the kind of interface they are assigned to.
    fn kind_synced(&self, kind: Kind, obj: &Value) -> bool {
        let on_node = obj["assigned_object_type"] == "dcim.interface";
        match kind.name {
            "dcim.interface" => self.s.node_interfaces,
            "virtualization.vminterface" => self.s.vm_interfaces,
            "virtualization.virtualdisk" => self.s.virtual_disks,
            "dcim.macaddress" if on_node => self.s.node_interfaces,
            "dcim.macaddress" => self.s.vm_interfaces,
            "ipam.ipaddress" if on_node => self.s.ip_addresses && self.s.node_interfaces,
            "ipam.ipaddress" => self.s.ip_addresses && self.s.vm_interfaces,
            "dcim.device" => self.s.nodes,
            "virtualization.virtualmachine" => self.s.virtual_machines,
            _ => false,
        }
    }

    /// Deletes objects in bulk, kind by kind in the order given; a bulk delete NetBox
    /// refuses is retried one object at a time so each failure names its object.
    async fn delete_many(&mut self, items: Vec<(Kind, u64, String)>) {
        let mut by_kind: Vec<(Kind, Vec<(u64, String)>)> = Vec::new();
        for (kind, id, label) in items {
            self.report.plan(kind.name, &label, "delete", Vec::new());
            match by_kind.iter_mut().find(|(k, _)| k.name == kind.name) {
                Some((_, v)) => v.push((id, label)),
                None => by_kind.push((kind, vec![(id, label)])),
            }
        }
        for (kind, objs) in by_kind {
            if self.dry_run {
                self.report.counts(kind.name).deleted += objs.len() as u64;
                continue;
            }
            for chunk in objs.chunks(self.s.batch_size.max(1)) {
                let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
                if self.api.delete(kind.endpoint, ids).await.is_ok() {
                    self.report.counts(kind.name).deleted += chunk.len() as u64;
                    continue;
                }
                for (id, label) in chunk {
                    match self.api.delete(kind.endpoint, vec![*id]).await {
                        Ok(()) => self.report.counts(kind.name).deleted += 1,
                        Err(e) => self.report.error(kind.name, label, e.to_string()),
                    }
                }
            }
        }
    }

    /// Keys of every child object this sync wanted (so the rest are candidates for pruning).
    fn desired_child_keys(
        &self,
        inv: &Inventory,
        devices: &BTreeMap<String, u64>,
        vms: &BTreeMap<String, u64>,
    ) -> BTreeSet<(&'static str, String)> {
        let mut out = BTreeSet::new();
        let none = BTreeMap::new();
        let ifaces = self.current.get(INTERFACE.name).unwrap_or(&none);
        let vmifs = self.current.get(VMIF.name).unwrap_or(&none);
        for node in &inv.nodes {
            let Some(d) = devices.get(&node.name) else {
                continue;
            };
            for i in &node.interfaces {
                let key = format!("{d}/{}", i.name);
                out.insert((INTERFACE.name, key.clone()));
                if let Some(id) = ifaces.get(&key).and_then(id_of) {
                    for c in [&i.cidr, &i.cidr6]
                        .into_iter()
                        .flatten()
                        .filter_map(|c| normalize_cidr(c))
                    {
                        out.insert((IP.name, format!("dcim.interface/{id}/{c}")));
                    }
                }
            }
        }
        // MACs of node interfaces come from hardware discovery, which may not run: keep them.
        for (key, _) in self.current.get(MAC.name).into_iter().flatten() {
            if key.starts_with("dcim.interface/") {
                out.insert((MAC.name, key.clone()));
            }
        }
        for g in self.synced_guests(inv) {
            let Some(vm) = vms.get(&g.vmid.to_string()) else {
                continue;
            };
            for d in &g.disks {
                out.insert((VDISK.name, format!("{vm}/{}", d.slot)));
            }
            for n in &g.nics {
                let key = format!("{vm}/{}", n.slot);
                out.insert((VMIF.name, key.clone()));
                if let (Some(id), Some(mac)) = (vmifs.get(&key).and_then(id_of), &n.mac) {
                    out.insert((MAC.name, format!("virtualization.vminterface/{id}/{mac}")));
                }
            }
            for a in &g.addresses {
                let (Some(slot), Some(c)) = (&a.nic_slot, normalize_cidr(&a.cidr)) else {
                    continue;
                };
                if let Some(id) = vmifs.get(&format!("{vm}/{slot}")).and_then(id_of) {
                    out.insert((IP.name, format!("virtualization.vminterface/{id}/{c}")));
                }
            }
        }
        out
    }
}

/// What is kept in memory of an object NetBox returned: the fields of `kind.fields`
/// without nulls, nested objects reduced to their id and choices to their value, which is
/// all the diff and the identity keys use (read nested references with [`id_of`]). An
/// object as NetBox returns it takes several KiB as JSON values; this keeps the operator
/// under 150 MiB at 3000 guests (docs/benchmarks.md).
fn compact(kind: Kind, obj: Value) -> Value {
    fn shrink(v: Value) -> Value {
        match v {
            Value::Object(mut o) if o.get("id").is_some_and(Value::is_u64) => {
                o.remove("id").unwrap_or_default()
            }
            Value::Object(mut o) if o.contains_key("value") && o.contains_key("label") => {
                o.remove("value").unwrap_or_default()
            }
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, shrink(v))).collect()),
            Value::Array(a) => Value::Array(a.into_iter().map(shrink).collect()),
            other => other,
        }
    }
    let Value::Object(map) = obj else { return obj };
    let managed = |field: &str| kind.fields.split(',').any(|f| f == field);
    // A missing field reads as null, so nulls (most custom fields) need no room.
    let without_nulls = |m: Map<String, Value>| -> Map<String, Value> {
        m.into_iter().filter(|(_, v)| !v.is_null()).collect()
    };
    Value::Object(
        map.into_iter()
            .filter(|(k, v)| !v.is_null() && managed(k))
            .map(|(k, v)| match (k.as_str(), v) {
                ("custom_fields", Value::Object(cf)) => {
                    (k, shrink(Value::Object(without_nulls(cf))))
                }
                (_, v) => (k, shrink(v)),
            })
            .collect(),
    )
}

/// Splits writes into batches of about `size`. The virtual disks of one VM always go in
/// the same batch: NetBox recomputes the VM's total disk size on each disk save, and two
/// batches in flight for one VM would race and leave a total that later fails validation
/// ("must match the aggregate size of assigned virtual disks").
fn batches(kind: Kind, items: Vec<WriteItem>, size: usize) -> Vec<Vec<WriteItem>> {
    let group = |key: &str| -> Option<String> {
        (kind.name == VDISK.name).then(|| key.split('/').next().unwrap_or_default().to_string())
    };
    let mut out: Vec<Vec<WriteItem>> = Vec::new();
    for item in items {
        let same_group = out
            .last()
            .and_then(|b| b.last())
            .is_some_and(|last| group(&last.0).is_some() && group(&last.0) == group(&item.0));
        match out.last_mut() {
            Some(b) if b.len() < size || same_group => b.push(item),
            _ => out.push(vec![item]),
        }
    }
    out
}

/// Canonical `address/prefix` (NetBox stores the canonical form).
fn normalize_cidr(cidr: &str) -> Option<String> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let prefix: u8 = prefix.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then(|| format!("{ip}/{prefix}"))
}

/// First id handed out for objects a dry-run would create.
const PLACEHOLDER_BASE: u64 = 1 << 48;

/// True for ids of objects that a dry-run would create (they do not exist in NetBox).
fn is_placeholder(id: u64) -> bool {
    id > PLACEHOLDER_BASE
}

fn decode(endpoint: &str) -> NetBoxError {
    NetBoxError::Decode {
        endpoint: endpoint.into(),
        message: "no id in the answer".into(),
    }
}

/// Manufacturer and model of a node: from dmidecode when known, else generic.
fn device_model(hw: Option<&NodeHardware>) -> (String, String) {
    let sys = hw.and_then(|h| h.system.as_ref());
    let manufacturer = sys
        .and_then(|s| s.manufacturer.clone())
        .unwrap_or_else(|| "Generic".into());
    let model = sys
        .and_then(|s| s.product_name.clone())
        .unwrap_or_else(|| "Proxmox VE node".into());
    (truncate(&manufacturer, 100), truncate(&model, 100))
}

/// Deletes every object owned by `owner` (deletion policy `Delete`), children first.
/// Returns how many were deleted.
pub async fn delete_owned(api: &dyn NetBoxApi, owner: &OwnerScope) -> Result<u64, NetBoxError> {
    // Every mark of this scope, whatever Proxmox cluster it was synced from.
    let q = vec![
        ("cf_proxmox_owner__isw".to_string(), owner.prefix()),
        ("tag".to_string(), OWNER_TAG.to_string()),
    ];
    let mut deleted = 0;
    for kind in OWNED_KINDS {
        let ids: Vec<u64> = api
            .list(kind.endpoint, &q)
            .await?
            .iter()
            .filter(|o| custom_field(o, CF_OWNER).is_some_and(|m| owner.owns(&m)))
            .filter_map(id_of)
            .collect();
        for chunk in ids.chunks(200) {
            api.delete(kind.endpoint, chunk.to_vec()).await?;
            deleted += chunk.len() as u64;
        }
    }
    Ok(deleted)
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

    /// NetBox with every lookup answering one object, and `proxmox_owner` being purged.
    struct PurgingNetBox;

    impl NetBoxApi for PurgingNetBox {
        fn list<'a>(
            &'a self,
            endpoint: &'a str,
            _query: &'a [(String, String)],
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            Box::pin(async move {
                Ok(match endpoint {
                    "extras/custom-fields" => vec![json!({
                        "id": 7, "name": CF_OWNER, "group_name": CF_GROUP,
                        "type": {"value": "text"}, "object_types": [],
                        "status": {"value": "deleting", "label": "Deleting"},
                    })],
                    _ => vec![json!({"id": 1})],
                })
            })
        }
        fn create<'a>(
            &'a self,
            _: &'a str,
            _: Vec<Value>,
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("nothing is created while a field is not live")
        }
        fn update<'a>(
            &'a self,
            _: &'a str,
            _: Vec<Value>,
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("nothing is updated while a field is not live")
        }
        fn delete<'a>(
            &'a self,
            _: &'a str,
            _: Vec<u64>,
        ) -> futures::future::BoxFuture<'a, Result<(), NetBoxError>> {
            unreachable!("nothing is deleted while a field is not live")
        }
        fn request_counts(&self) -> (u64, u64) {
            (0, 0)
        }
    }

    #[tokio::test]
    async fn a_custom_field_being_purged_stops_the_sync_with_a_clear_reason() {
        let settings = SyncSettings {
            owner: "infra/lab".into(),
            adopt_previous: None,
            site: "dc1".into(),
            tenant: None,
            vrf: None,
            cluster_name: "lab".into(),
            cluster_group: None,
            cluster_type: "Proxmox VE".into(),
            device_role: "Proxmox Node".into(),
            role_qemu: "VM".into(),
            role_lxc: "CT".into(),
            role_template: "Template".into(),
            extra_tags: Vec::new(),
            sync_templates: false,
            nodes: true,
            node_interfaces: true,
            virtual_machines: true,
            vm_interfaces: true,
            virtual_disks: true,
            ip_addresses: true,
            adopt_existing: false,
            description_from_notes: true,
            create_missing_vlans: false,
            prune: true,
            hardware_discovery: false,
            grace_period: Duration::from_secs(60),
            prune_max_percent: 10,
            batch_size: 100,
            max_in_flight: 4,
        };
        let err = sync(
            &PurgingNetBox,
            &settings,
            &Inventory::default(),
            &BTreeMap::new(),
            false,
            Utc::now(),
        )
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(
                "custom field \"proxmox_owner\" is being deleted by a NetBox background job"
            ),
            "{message}"
        );
        assert!(message.contains("netbox-rqworker"), "{message}");
    }

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

    #[test]
    fn compacted_objects_keep_identity_and_compare_the_same() {
        let full = json!({
            "id": 5, "url": "http://nb/api/virtualization/interfaces/5/", "display": "net0",
            "virtual_machine": {"id": 9, "url": "u", "display": "web01", "name": "web01"},
            "name": "net0", "enabled": true, "mtu": null, "description": "virtio on vmbr0",
            "mode": {"value": "access", "label": "Access"}, "untagged_vlan": {"id": 3, "vid": 100, "name": "v100"},
            "primary_mac_address": {"id": 12, "mac_address": "BC:24:11:00:00:01"},
            "tags": [{"id": 1, "slug": "proxmox-netbox-operator", "color": "ff5722"}],
            "custom_fields": {"proxmox_owner": "infra/lab", "human_ref": {"id": 4, "name": "x"}, "proxmox_stale_since": null},
            "created": "2026-12-01T00:00:00Z", "last_updated": "2026-12-01T00:00:00Z",
            "count_ipaddresses": 2,
        });
        let small = compact(VMIF, full.clone());
        assert_eq!(
            small,
            json!({
                "id": 5, "virtual_machine": 9, "name": "net0", "enabled": true,
                "description": "virtio on vmbr0", "mode": "access", "untagged_vlan": 3,
                "primary_mac_address": 12, "tags": [1],
                "custom_fields": {"proxmox_owner": "infra/lab", "human_ref": 4},
            })
        );
        assert_eq!(current_key(VMIF, &small), current_key(VMIF, &full));
        let desired = fields(json!({
            "virtual_machine": 9, "name": "net0", "enabled": true, "mtu": null,
            "description": "virtio on vmbr0", "mode": "access", "untagged_vlan": 3,
            "primary_mac_address": 12, "tags": [1],
            "custom_fields": {"proxmox_owner": "infra/lab", "proxmox_stale_since": null},
        }));
        assert!(changed_fields(&desired, &full).is_empty());
        assert!(changed_fields(&desired, &small).is_empty());
    }

    #[test]
    fn a_vms_disks_never_straddle_two_batches() {
        let item = |key: &str| (key.to_string(), key.to_string(), json!({}));
        let disks: Vec<WriteItem> = [
            "1/scsi0",
            "1/scsi1",
            "2/scsi0",
            "2/scsi1",
            "2/virtio0",
            "3/scsi0",
        ]
        .into_iter()
        .map(item)
        .collect();
        let keys = |b: Vec<Vec<WriteItem>>| -> Vec<Vec<String>> {
            b.into_iter()
                .map(|c| c.into_iter().map(|i| i.0).collect())
                .collect()
        };
        assert_eq!(
            keys(batches(VDISK, disks.clone(), 3)),
            vec![
                vec!["1/scsi0", "1/scsi1", "2/scsi0", "2/scsi1", "2/virtio0"],
                vec!["3/scsi0"]
            ]
        );
        // Other kinds are cut at the size.
        assert_eq!(
            keys(batches(VMIF, disks, 3)),
            vec![
                vec!["1/scsi0", "1/scsi1", "2/scsi0"],
                vec!["2/scsi1", "2/virtio0", "3/scsi0"]
            ]
        );
    }

    #[test]
    fn cidrs_are_canonical() {
        assert_eq!(
            normalize_cidr("2001:DB8:0::10/64").as_deref(),
            Some("2001:db8::10/64")
        );
        assert_eq!(normalize_cidr("10.0.0.1/33"), None);
        assert_eq!(normalize_cidr("dhcp"), None);
    }

    #[test]
    fn keys_of_netbox_objects() {
        let vmif = json!({"id": 5, "name": "net0", "virtual_machine": {"id": 9}});
        assert_eq!(current_key(VMIF, &vmif).as_deref(), Some("9/net0"));
        let vm = json!({"id": 9, "custom_fields": {"proxmox_vmid": 101}});
        assert_eq!(current_key(VM, &vm).as_deref(), Some("101"));
        let ip = json!({"address": "10.0.0.5/24", "assigned_object_type": "virtualization.vminterface", "assigned_object_id": 5});
        assert_eq!(
            current_key(IP, &ip).as_deref(),
            Some("virtualization.vminterface/5/10.0.0.5/24")
        );
        let mac = json!({"mac_address": "bc:24:11:00:00:01", "assigned_object_type": "dcim.interface", "assigned_object_id": 3});
        assert_eq!(
            current_key(MAC, &mac).as_deref(),
            Some("dcim.interface/3/BC:24:11:00:00:01")
        );
    }
}
