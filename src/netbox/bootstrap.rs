//! Bootstrap: the shared objects every owned object refers to (tags, custom fields, site,
//! tenant, VRF, cluster, roles, platforms, VLANs, device types), found or created.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::apply::{Session, is_placeholder};
use super::client::{NetBoxApi, NetBoxError, NetBoxVersion};
use super::kinds::{
    CF_CHASSIS_MANUFACTURER, CF_CHASSIS_PRODUCT, CF_CHASSIS_SERIAL, CF_DISK_STORAGE, CF_GATEWAY,
    CF_GROUP, CF_GUEST_TYPE, CF_NIC_DUPLEX, CF_NIC_LINK, CF_NIC_SPEED, CF_OWNER, CF_PREFIX,
    CF_PROVISION, CF_PROVISION_VMID, CF_PROVISIONED_BY, CF_STALE_SINCE, CF_START, CF_TARGET_NODE,
    CF_TEMPLATE, CF_VMID, OWNER_TAG, PVE_TAG_DESCRIPTION, STALE_TAG, fields, id_of,
};
use super::mapping::{platform_name, slugify};
use super::plan::{REASON_NEW, SharedIds, device_model};
use super::report::{Collision, actions};
use crate::crd::facts::NodeHardware;
use crate::inventory::Inventory;

/// The first NetBox release that assigns an unassigned MAC address given as primary MAC
/// in an interface's create (NetBox pull request 20457).
const PRIMARY_MAC_AT_CREATE: NetBoxVersion = (4, 4, 2);

/// One custom field the operator creates.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    /// Its name.
    pub name: &'static str,
    /// Label in the UI.
    pub label: &'static str,
    /// NetBox field type (`text`, `integer`, `boolean`, `object`).
    pub type_: &'static str,
    /// Object types it is on.
    pub object_types: &'static [&'static str],
    /// Description in the UI.
    pub description: &'static str,
    /// The object type an `object` field points to.
    pub related: Option<&'static str>,
    /// Editable in NetBox's UI (the operator's own marks and identities are read-only).
    pub ui_editable: bool,
}

/// A field read-only in the UI.
const fn field(
    name: &'static str,
    label: &'static str,
    type_: &'static str,
    object_types: &'static [&'static str],
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        label,
        type_,
        object_types,
        description,
        related: None,
        ui_editable: false,
    }
}

/// A field editable in the UI.
const fn editable_field(
    name: &'static str,
    label: &'static str,
    type_: &'static str,
    object_types: &'static [&'static str],
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        ui_editable: true,
        ..field(name, label, type_, object_types, description)
    }
}

/// Object types of every owned kind (and the cluster and VLANs the operator creates).
const OWNED_TYPES: &[&str] = &[
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

/// The custom fields the operator creates.
const CUSTOM_FIELDS: &[FieldSpec] = &[
    field(
        CF_OWNER,
        "Proxmox owner",
        "text",
        OWNED_TYPES,
        "ProxmoxCluster (namespace/name) that owns this object",
    ),
    field(
        CF_VMID,
        "Proxmox VMID",
        "integer",
        &["virtualization.virtualmachine"],
        "VM id in Proxmox VE",
    ),
    field(
        CF_GUEST_TYPE,
        "Proxmox guest type",
        "text",
        &["virtualization.virtualmachine"],
        "qemu or lxc",
    ),
    field(
        CF_DISK_STORAGE,
        "Proxmox storage",
        "text",
        &["virtualization.virtualdisk"],
        "Proxmox storage of the disk",
    ),
    field(
        CF_STALE_SINCE,
        "Gone from Proxmox since",
        "text",
        &["dcim.device", "virtualization.virtualmachine"],
        "When the operator found it gone (pruning grace period)",
    ),
    editable_field(
        CF_CHASSIS_SERIAL,
        "Chassis serial",
        "text",
        &["dcim.device"],
        "dmidecode chassis serial",
    ),
    editable_field(
        CF_CHASSIS_MANUFACTURER,
        "Chassis manufacturer",
        "text",
        &["dcim.device"],
        "dmidecode chassis manufacturer",
    ),
    editable_field(
        CF_CHASSIS_PRODUCT,
        "Chassis product",
        "text",
        &["dcim.device"],
        "dmidecode system product name",
    ),
    editable_field(
        CF_NIC_SPEED,
        "NIC speed (Gbps)",
        "integer",
        &["dcim.interface"],
        "ethtool link speed",
    ),
    editable_field(
        CF_NIC_DUPLEX,
        "NIC duplex",
        "text",
        &["dcim.interface"],
        "ethtool duplex",
    ),
    editable_field(
        CF_NIC_LINK,
        "NIC link",
        "boolean",
        &["dcim.interface"],
        "ethtool link detected",
    ),
];

/// The custom fields of provisioning (created only when `spec.provisioning` is on).
pub const PROVISIONING_FIELDS: &[FieldSpec] = &[
    field(
        CF_PROVISION,
        "Proxmox provisioning",
        "text",
        VM,
        "Where provisioning of this VM is (reserved, provisioned, retiring, retired)",
    ),
    field(
        CF_PROVISION_VMID,
        "Proxmox reserved VMID",
        "integer",
        VM,
        "VM id reserved in Proxmox VE before the clone",
    ),
    field(
        CF_PROVISIONED_BY,
        "Proxmox provisioned by",
        "text",
        VM,
        "Owner mark of the ProxmoxCluster that created this VM in Proxmox VE",
    ),
    editable_field(
        CF_TEMPLATE,
        "Proxmox template",
        "text",
        VM,
        "Template (name or vmid) this VM is cloned from",
    ),
    editable_field(
        CF_TARGET_NODE,
        "Proxmox target node",
        "text",
        VM,
        "Node this VM is created on (default: the template's node)",
    ),
    editable_field(
        CF_START,
        "Proxmox start",
        "boolean",
        VM,
        "Start this VM once it is created",
    ),
    FieldSpec {
        related: Some("ipam.prefix"),
        ..editable_field(
            CF_PREFIX,
            "Proxmox prefix",
            "object",
            &["virtualization.vminterface"],
            "Prefix the address of this interface is allocated from when it has none",
        )
    },
    editable_field(
        CF_GATEWAY,
        "Proxmox gateway",
        "text",
        &["ipam.prefix"],
        "Gateway of the addresses of this prefix in cloud-init",
    ),
];

const VM: &[&str] = &["virtualization.virtualmachine"];

const TAGS: &str = "extras/tags";
const ROLES: &str = "dcim/device-roles";

fn decode(endpoint: &str) -> NetBoxError {
    NetBoxError::Decode {
        endpoint: endpoint.into(),
        message: "no id in the answer".into(),
    }
}

/// Finds or creates the shared objects; `Err` when NetBox cannot be used at all.
pub async fn bootstrap(
    session: &mut Session<'_>,
    inv: &Inventory,
    hw: &BTreeMap<String, NodeHardware>,
) -> Result<SharedIds, NetBoxError> {
    let mut b = Bootstrap {
        s: session,
        shared: SharedIds::default(),
    };
    b.shared.primary_mac_at_create =
        b.s.api
            .version()
            .await?
            .is_some_and(|v| v >= PRIMARY_MAC_AT_CREATE);
    b.tags(inv).await?;
    b.custom_fields().await?;
    b.site_tenant_vrf().await?;
    b.cluster().await?;
    b.roles().await?;
    if b.s.settings.virtual_machines {
        b.platforms(inv).await?;
        b.vlans(inv).await?;
    }
    if b.s.settings.nodes {
        b.device_types(inv, hw).await?;
    }
    Ok(b.shared)
}

struct Bootstrap<'s, 'a> {
    s: &'s mut Session<'a>,
    shared: SharedIds,
}

impl Bootstrap<'_, '_> {
    /// Finds an object by slug (or name), creating it when missing.
    async fn ensure(
        &mut self,
        endpoint: &str,
        kind: &str,
        slug: &str,
        name: &str,
        extra: Value,
    ) -> Result<u64, NetBoxError> {
        let api = self.s.api;
        let by_slug = [("slug".to_string(), slug.to_string())];
        if let Some(found) = api.list(endpoint, &by_slug).await?.first() {
            return id_of(found).ok_or_else(|| decode(endpoint));
        }
        let by_name = [("name".to_string(), name.to_string())];
        if let Some(found) = api.list(endpoint, &by_name).await?.first() {
            return id_of(found).ok_or_else(|| decode(endpoint));
        }
        let mut body = fields(extra);
        body.insert("name".into(), json!(name));
        body.insert("slug".into(), json!(slug));
        self.create_one(endpoint, kind, name, body).await
    }

    /// Creates one shared object (in dry-run, records it and hands out a placeholder).
    async fn create_one(
        &mut self,
        endpoint: &str,
        kind: &str,
        name: &str,
        body: serde_json::Map<String, Value>,
    ) -> Result<u64, NetBoxError> {
        self.s.report.counts(kind).created += 1;
        self.s
            .record(kind, name, actions::CREATE, REASON_NEW, &body);
        if self.s.dry_run {
            return Ok(self.s.next_placeholder());
        }
        let created = self
            .s
            .api
            .create(endpoint, vec![Value::Object(body)])
            .await?;
        created
            .first()
            .and_then(id_of)
            .ok_or_else(|| decode(endpoint))
    }

    async fn tag(&mut self, slug: &str, name: &str, extra: Value) -> Result<u64, NetBoxError> {
        self.ensure(TAGS, "extras.tag", slug, name, extra).await
    }

    /// The owner and stale tags, `spec.netbox.tags`, and a tag per Proxmox VE tag in use.
    async fn tags(&mut self, inv: &Inventory) -> Result<(), NetBoxError> {
        let owner = json!({"color": "ff5722", "description": "Managed by proxmox-netbox-operator"});
        self.shared.owner_tag = self.tag(OWNER_TAG, OWNER_TAG, owner).await?;
        let stale = json!({"color": "9e9e9e", "description": "Gone from Proxmox VE; deleted after the grace period"});
        self.shared.stale_tag = self.tag(STALE_TAG, STALE_TAG, stale).await?;
        for t in self.s.settings.extra_tags.clone() {
            let id = self.tag(&slugify(&t), &t, json!({})).await?;
            self.shared.extra_tags.push(id);
        }
        if !self.s.settings.virtual_machines {
            return Ok(());
        }
        let pve_tags: BTreeSet<&String> = inv.guests.iter().flat_map(|g| &g.tags).collect();
        for t in pve_tags {
            let description = json!({"description": PVE_TAG_DESCRIPTION});
            let id = self
                .tag(
                    &format!("pve-{}", slugify(t)),
                    &format!("pve:{t}"),
                    description,
                )
                .await?;
            self.shared.pve_tags.insert(t.clone(), id);
        }
        let made = [("description".to_string(), PVE_TAG_DESCRIPTION.to_string())];
        for tag in self.s.api.list(TAGS, &made).await? {
            self.shared.pve_tags_made.extend(id_of(&tag));
        }
        Ok(())
    }

    /// The operator's custom fields: created when missing, object types added when
    /// missing; a field of ours in a background job, or someone else's field with our
    /// name, stops or is reported.
    async fn custom_fields(&mut self) -> Result<(), NetBoxError> {
        let existing = read_fields(self.s.api, CUSTOM_FIELDS).await?;
        let plan = plan_fields(CUSTOM_FIELDS, &existing);
        for (name, cf, message) in &plan.foreign {
            self.s.report.collisions.push(Collision {
                kind: "extras.customfield".into(),
                object: name.to_string(),
                existing_id: id_of(cf),
                message: message.clone(),
            });
        }
        for (name, patch) in &plan.patches {
            self.s.record_fields(
                "extras.customfield",
                name,
                actions::UPDATE,
                "object types missing",
                vec!["object_types".into()],
                patch.as_object(),
            );
        }
        for (name, body) in &plan.creates {
            self.s.report.counts("extras.customfield").created += 1;
            let named = vec!["name".into(), "object_types".into()];
            self.s.record_fields(
                "extras.customfield",
                name,
                actions::CREATE,
                REASON_NEW,
                named,
                body.as_object(),
            );
        }
        let creates: Vec<Value> = plan.creates.into_iter().map(|(_, b)| b).collect();
        let patches: Vec<Value> = plan.patches.into_iter().map(|(_, p)| p).collect();
        self.shared.custom_fields_exist = creates.is_empty();
        self.shared.owner_field_existed = existing.iter().any(|c| c["name"] == CF_OWNER);
        if self.s.dry_run {
            return Ok(());
        }
        if !creates.is_empty() {
            self.s.api.create(FIELDS, creates).await?;
            self.shared.custom_fields_exist = true;
        }
        if !patches.is_empty() {
            self.s.api.update(FIELDS, patches).await?;
        }
        Ok(())
    }

    /// The site (created when missing), the tenant (must exist) and the VRF.
    async fn site_tenant_vrf(&mut self) -> Result<(), NetBoxError> {
        let settings = self.s.settings;
        let site = &settings.site;
        self.shared.site = self
            .ensure(
                "dcim/sites",
                "dcim.site",
                &slugify(site),
                site,
                json!({"status": "active"}),
            )
            .await?;
        if let Some(t) = &settings.tenant {
            self.shared.tenant = Some(self.tenant(t).await?);
        }
        if let Some(name) = &settings.vrf {
            self.shared.vrf = Some(self.vrf(name).await?);
        }
        Ok(())
    }

    async fn tenant(&mut self, t: &str) -> Result<u64, NetBoxError> {
        const EP: &str = "tenancy/tenants";
        let api = self.s.api;
        let mut found = api.list(EP, &[("slug".into(), slugify(t))]).await?;
        if found.is_empty() {
            found = api.list(EP, &[("name".into(), t.to_string())]).await?;
        }
        found
            .first()
            .and_then(id_of)
            .ok_or_else(|| NetBoxError::Invalid {
                endpoint: EP.into(),
                message: format!("spec.netbox.tenant: tenant {t:?} does not exist in NetBox"),
            })
    }

    /// The VRF named `name` (VRFs have no slug), created when missing with unique
    /// addresses enforced and the owner tag.
    async fn vrf(&mut self, name: &str) -> Result<u64, NetBoxError> {
        const EP: &str = "ipam/vrfs";
        let by_name = [("name".to_string(), name.to_string())];
        if let Some(found) = self.s.api.list(EP, &by_name).await?.first() {
            return id_of(found).ok_or_else(|| decode(EP));
        }
        let body = fields(json!({
            "name": name,
            "enforce_unique": true,
            "description": "IP space of a Proxmox VE cluster (spec.netbox.vrf)",
            "tags": [self.shared.owner_tag],
        }));
        self.create_one(EP, "ipam.vrf", name, body).await
    }

    /// The NetBox cluster with its type and group, created when missing.
    async fn cluster(&mut self) -> Result<(), NetBoxError> {
        const EP: &str = "virtualization/clusters";
        let settings = self.s.settings;
        let type_name = &settings.cluster_type;
        let cluster_type = self
            .ensure(
                "virtualization/cluster-types",
                "virtualization.clustertype",
                &slugify(type_name),
                type_name,
                json!({}),
            )
            .await?;
        let group = match &settings.cluster_group {
            Some(g) => Some(
                self.ensure(
                    "virtualization/cluster-groups",
                    "virtualization.clustergroup",
                    &slugify(g),
                    g,
                    json!({}),
                )
                .await?,
            ),
            None => None,
        };
        let name = &settings.cluster_name;
        if let Some(found) = self
            .s
            .api
            .list(EP, &[("name".into(), name.clone())])
            .await?
            .first()
        {
            self.shared.cluster = id_of(found).ok_or_else(|| decode(EP))?;
            return Ok(());
        }
        let mut body = json!({
            "name": name, "type": cluster_type, "status": "active", "scope_type": "dcim.site",
            "scope_id": self.shared.site, "tags": self.shared.owned_tags(),
        });
        if let Some(g) = group {
            body["group"] = json!(g);
        }
        if let Some(t) = self.shared.tenant {
            body["tenant"] = json!(t);
        }
        if self.shared.custom_fields_exist || !self.s.dry_run {
            body["custom_fields"] = json!({CF_OWNER: settings.owner});
        }
        self.shared.cluster = self
            .create_one(EP, "virtualization.cluster", name, fields(body))
            .await?;
        Ok(())
    }

    async fn role(&mut self, name: &str, vm_role: bool, color: &str) -> Result<u64, NetBoxError> {
        let extra = json!({"vm_role": vm_role, "color": color});
        self.ensure(ROLES, "dcim.devicerole", &slugify(name), name, extra)
            .await
    }

    /// Roles of nodes, and of VMs, containers and templates when guests are synced.
    async fn roles(&mut self) -> Result<(), NetBoxError> {
        let s = self.s.settings;
        self.shared.device_role = self.role(&s.device_role, false, "2196f3").await?;
        if !s.virtual_machines {
            return Ok(());
        }
        self.shared.role_qemu = self.role(&s.role_qemu, true, "4caf50").await?;
        self.shared.role_lxc = self.role(&s.role_lxc, true, "009688").await?;
        if s.sync_templates {
            self.shared.role_template = self.role(&s.role_template, true, "9e9e9e").await?;
        }
        Ok(())
    }

    /// A platform per guest OS type in use.
    async fn platforms(&mut self, inv: &Inventory) -> Result<(), NetBoxError> {
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
        Ok(())
    }

    /// VLANs by vid, for untagged VLANs of guest NICs (only unambiguous matches); missing
    /// ones created with the `Create` policy.
    async fn vlans(&mut self, inv: &Inventory) -> Result<(), NetBoxError> {
        let vids: BTreeSet<u16> = inv
            .guests
            .iter()
            .flat_map(|g| g.nics.iter().filter_map(|n| n.vlan_tag))
            .collect();
        if !self.s.settings.vm_interfaces || vids.is_empty() {
            return Ok(());
        }
        let q: Vec<(String, String)> = vids
            .iter()
            .map(|v| ("vid".to_string(), v.to_string()))
            .collect();
        let vlans = self.s.api.list("ipam/vlans", &q).await?;
        for &vid in &vids {
            if let Some(id) = pick_vlan(&vlans, vid, self.shared.site) {
                self.shared.vlans.insert(vid, id);
            }
        }
        let missing: Vec<u16> = vids
            .into_iter()
            .filter(|v| !self.shared.vlans.contains_key(v))
            .collect();
        if self.s.settings.create_missing_vlans && !missing.is_empty() {
            self.create_vlans(&missing).await?;
        }
        Ok(())
    }

    /// Creates the site's VLANs for guest NIC tags that have none (policy `Create`).
    async fn create_vlans(&mut self, vids: &[u16]) -> Result<(), NetBoxError> {
        const EP: &str = "ipam/vlans";
        let mut bodies = Vec::new();
        for vid in vids {
            let name = format!("VLAN {vid}");
            let body = json!({
                "vid": vid, "name": name, "status": "active", "site": self.shared.site,
                "tenant": self.shared.tenant,
                "description": "Created by proxmox-netbox-operator for a Proxmox VE VLAN tag",
                "tags": self.shared.owned_tags(), "custom_fields": {CF_OWNER: self.s.settings.owner},
            });
            self.s.report.counts("ipam.vlan").created += 1;
            let named = vec!["vid".into(), "name".into()];
            self.s.record_fields(
                "ipam.vlan",
                &name,
                actions::CREATE,
                REASON_NEW,
                named,
                body.as_object(),
            );
            bodies.push(body);
        }
        if self.s.dry_run {
            for vid in vids {
                let id = self.s.next_placeholder();
                self.shared.vlans.insert(*vid, id);
            }
            return Ok(());
        }
        for created in self.s.api.create(EP, bodies).await? {
            if let (Some(vid), Some(id)) = (
                created["vid"].as_u64().and_then(|v| u16::try_from(v).ok()),
                id_of(&created),
            ) {
                self.shared.vlans.insert(vid, id);
            }
        }
        Ok(())
    }

    /// A device type (and manufacturer) per node model.
    async fn device_types(
        &mut self,
        inv: &Inventory,
        hw: &BTreeMap<String, NodeHardware>,
    ) -> Result<(), NetBoxError> {
        const EP: &str = "dcim/device-types";
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
                let q = [
                    ("manufacturer_id".into(), m.to_string()),
                    ("model".into(), model.clone()),
                ];
                self.s.api.list(EP, &q).await?
            };
            let id = match found.first().and_then(id_of) {
                Some(id) => id,
                None => {
                    let slug = slugify(&format!("{manufacturer}-{model}"));
                    let body =
                        json!({"manufacturer": m, "model": model, "slug": slug, "u_height": 1});
                    self.create_one(EP, "dcim.devicetype", &model, fields(body))
                        .await?
                }
            };
            self.shared.device_types.insert(key, id);
        }
        Ok(())
    }
}

/// The body that creates a custom field: operator fields filter exactly and are not
/// editable in the UI.
fn field_body(spec: &FieldSpec) -> Value {
    let filter = if EXACT_FILTER.contains(&spec.name) {
        "exact"
    } else {
        "loose"
    };
    let mut body = json!({
        "name": spec.name, "label": spec.label, "type": spec.type_,
        "object_types": spec.object_types, "group_name": CF_GROUP,
        "description": spec.description, "filter_logic": filter,
        "ui_editable": if spec.ui_editable { "yes" } else { "no" },
    });
    if let Some(related) = spec.related {
        body["related_object_type"] = json!(related);
    }
    body
}

/// Fields read by exact value (the marks and identities the operator queries by).
const EXACT_FILTER: &[&str] = &[CF_OWNER, CF_VMID, CF_PROVISIONED_BY];

/// NetBox's endpoint of custom fields.
const FIELDS: &str = "extras/custom-fields";

/// What to write so that the fields of `specs` exist: creates, object types to add, and
/// fields of the same name that are someone else's (another group or type: never changed).
#[derive(Debug, Default)]
struct FieldPlan {
    creates: Vec<(&'static str, Value)>,
    patches: Vec<(&'static str, Value)>,
    foreign: Vec<(&'static str, Value, String)>,
}

/// The existing fields of `specs`' names.
async fn read_fields(api: &dyn NetBoxApi, specs: &[FieldSpec]) -> Result<Vec<Value>, NetBoxError> {
    let names: Vec<(String, String)> = specs
        .iter()
        .map(|s| ("name".to_string(), s.name.to_string()))
        .collect();
    let existing = api.list(FIELDS, &names).await?;
    refuse_fields_in_jobs(&existing)?;
    Ok(existing)
}

/// The field plan of `specs` against the `existing` fields (pure).
fn plan_fields(specs: &[FieldSpec], existing: &[Value]) -> FieldPlan {
    let mut plan = FieldPlan::default();
    for spec in specs {
        let name = spec.name;
        match existing.iter().find(|c| c["name"] == name) {
            Some(cf) if cf["group_name"] != CF_GROUP || cf["type"]["value"] != spec.type_ => {
                plan.foreign.push((
                    name,
                    cf.clone(),
                    format!(
                        "a custom field {name:?} exists outside the group {CF_GROUP:?} or with another type than {:?}; it is left as it is and values may be rejected: rename or delete it",
                        spec.type_
                    ),
                ));
            }
            Some(cf) => {
                let have: BTreeSet<&str> = cf["object_types"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if spec.object_types.iter().any(|t| !have.contains(t)) {
                    let mut all = have.clone();
                    all.extend(spec.object_types.iter().copied());
                    plan.patches
                        .push((name, json!({"id": cf["id"], "object_types": all})));
                }
            }
            None => plan.creates.push((name, field_body(spec))),
        }
    }
    plan
}

/// Makes sure the custom fields of `specs` exist (the provisioning ones, created only when
/// provisioning is on). Returns the problems with fields of the same name that are someone
/// else's; in dry-run nothing is written, and the names of missing fields are returned too.
pub async fn ensure_fields(
    api: &dyn NetBoxApi,
    specs: &[FieldSpec],
    dry_run: bool,
) -> Result<EnsuredFields, NetBoxError> {
    let existing = read_fields(api, specs).await?;
    let plan = plan_fields(specs, &existing);
    let out = EnsuredFields {
        foreign: plan.foreign.iter().map(|(_, _, m)| m.clone()).collect(),
        missing: plan.creates.iter().map(|(n, _)| n.to_string()).collect(),
    };
    if dry_run {
        return Ok(out);
    }
    if !plan.creates.is_empty() {
        api.create(FIELDS, plan.creates.into_iter().map(|(_, b)| b).collect())
            .await?;
    }
    if !plan.patches.is_empty() {
        api.update(FIELDS, plan.patches.into_iter().map(|(_, p)| p).collect())
            .await?;
    }
    Ok(EnsuredFields {
        missing: Vec::new(),
        ..out
    })
}

/// What [`ensure_fields`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsuredFields {
    /// Problems with same-named fields that are someone else's.
    pub foreign: Vec<String>,
    /// Fields still missing (dry-run only).
    pub missing: Vec<String>,
}

/// NetBox >= 4.7 provisions and purges a field's data in a background job; until the job
/// is done the field is not live and its name stays taken: the sync stops.
fn refuse_fields_in_jobs(existing: &[Value]) -> Result<(), NetBoxError> {
    let Some((cf, status)) = existing.iter().find_map(|c| {
        let status = c["status"]["value"].as_str().or(c["status"].as_str())?;
        (status != "active").then_some((c, status))
    }) else {
        return Ok(());
    };
    Err(NetBoxError::Invalid {
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
    })
}

/// The VLAN of `vid` a VM of `site` may use: NetBox accepts one of the VM's site or a
/// global one (no site), never one of another site: the site's first, else the one
/// global VLAN; none when ambiguous.
fn pick_vlan(vlans: &[Value], vid: u16, site: u64) -> Option<u64> {
    let matching: Vec<&Value> = vlans
        .iter()
        .filter(|v| v["vid"].as_u64() == Some(u64::from(vid)))
        .collect();
    let in_site: Vec<&&Value> = matching
        .iter()
        .filter(|v| id_of(&v["site"]) == Some(site))
        .collect();
    let global: Vec<&&Value> = matching.iter().filter(|v| v["site"].is_null()).collect();
    let pick = match (in_site.as_slice(), global.as_slice()) {
        ([one], _) => Some(**one),
        ([], [one]) => Some(**one),
        _ => None,
    };
    pick.and_then(id_of)
}
