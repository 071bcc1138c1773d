//! Observe: the provisioning custom fields made sure of, the records read from NetBox
//! (staged and decommissioning VMs of this cluster, and every VM this owner provisioned)
//! with their interfaces, addresses, disks and prefixes, and what the inventory shows of
//! Proxmox VE. Every NetBox answer is checked and bounded before it is used.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::mark::ProvisionMark;
use super::model::{
    ClusterView, GuestView, NbDisk, NbInterface, NbIp, NbPrefix, NbVm, Phase, Power, TemplateView,
};
use super::settings::ProvisionSettings;
use crate::inventory::{GuestKind, GuestState, Inventory};
use crate::netbox::bootstrap::{PROVISIONING_FIELDS, ensure_fields};
use crate::netbox::client::{NetBoxApi, NetBoxError};
use crate::netbox::kinds::{
    CF_GATEWAY, CF_OWNER, CF_PREFIX, CF_PROVISION, CF_PROVISION_VMID, CF_PROVISIONED_BY, CF_START,
    CF_TARGET_NODE, CF_TEMPLATE, CF_VMID, id_of,
};
use crate::netbox::mapping::truncate;

/// Most records one pass reads: more is refused as a whole (a selector that matches
/// thousands of records is a mistake, not a plan).
pub const MAX_RECORDS: usize = 1000;
/// Most interfaces, and most disks, of one record.
pub const MAX_CHILDREN: usize = 32;
/// Ids per filtered NetBox query.
const IDS_PER_QUERY: usize = 50;

/// NetBox endpoint of virtual machines.
pub const VIRTUAL_MACHINES: &str = "virtualization/virtual-machines";

/// What provisioning found.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The cluster as the planner sees it.
    pub cluster: ClusterView,
    /// Every record read, without children ([`add_children`] reads them for the records
    /// acted on).
    pub records: Vec<NbVm>,
    /// What PVE shows of each guest, by vmid.
    pub guests: BTreeMap<u32, GuestView>,
    /// Problems with the provisioning custom fields (someone else's of the same name).
    pub field_problems: Vec<String>,
    /// The NetBox cluster's id, when it exists.
    pub netbox_cluster: Option<u64>,
}

/// Reads what provisioning needs. `mark`: this owner's mark; `cluster_name`: the NetBox
/// cluster of the sync.
pub async fn observe(
    api: &dyn NetBoxApi,
    settings: &ProvisionSettings,
    mark: &str,
    cluster_name: &str,
    inventory: &Inventory,
) -> Result<Observed, NetBoxError> {
    let fields = ensure_fields(api, PROVISIONING_FIELDS, settings.dry_run).await?;
    let fields_ready = fields.missing.is_empty();
    let cluster = cluster_id(api, cluster_name).await?;
    let mut raw: BTreeMap<u64, Value> = BTreeMap::new();
    if let Some(cluster) = cluster {
        let query = vec![
            ("cluster_id".to_string(), cluster.to_string()),
            ("status".to_string(), "staged".to_string()),
            ("status".to_string(), "decommissioning".to_string()),
        ];
        collect(&mut raw, api.list(VIRTUAL_MACHINES, &query).await?)?;
    }
    if fields_ready {
        let query = vec![(format!("cf_{CF_PROVISIONED_BY}"), mark.to_string())];
        collect(&mut raw, api.list(VIRTUAL_MACHINES, &query).await?)?;
    }
    let records: Vec<NbVm> = raw.values().filter_map(parse_vm).collect();
    Ok(Observed {
        netbox_cluster: cluster,
        cluster: cluster_view(inventory, mark),
        guests: guest_views(inventory),
        records,
        field_problems: fields.foreign,
    })
}

/// What the records provisioning looks at are like now, in the NetBox cluster `cluster`
/// (found by name when `None`): the staged and decommissioning records' ids and statuses,
/// and of the records this owner provisioned their status and progress, with
/// `follow_resources` also their vCPUs and memory. What the sync itself writes on them
/// (their primary IPs, PVE's state) is left out, so a targeted pass does not start a full
/// one. Two NetBox reads (three without the cluster's id); compared between full passes, a
/// difference starts a full pass.
pub async fn fingerprint(
    api: &dyn NetBoxApi,
    cluster: Option<u64>,
    cluster_name: &str,
    mark: &str,
    follow_resources: bool,
) -> Result<Fingerprint, NetBoxError> {
    let cluster = match cluster {
        Some(c) => Some(c),
        None => cluster_id(api, cluster_name).await?,
    };
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut queries = vec![vec![
        (format!("cf_{CF_PROVISIONED_BY}"), mark.to_string()),
        (
            "fields".to_string(),
            "id,status,vcpus,memory,custom_fields".to_string(),
        ),
    ]];
    if let Some(c) = cluster {
        queries.push(vec![
            ("cluster_id".to_string(), c.to_string()),
            ("status".to_string(), "staged".to_string()),
            ("status".to_string(), "decommissioning".to_string()),
            ("fields".to_string(), "id,status".to_string()),
        ]);
    }
    for query in queries {
        for vm in api.list(VIRTUAL_MACHINES, &query).await? {
            let Some(id) = id_of(&vm) else { continue };
            let mut state = format!(
                "{}|{}",
                choice(&vm["status"]).unwrap_or_default(),
                text(&vm["custom_fields"][CF_PROVISION], 32).unwrap_or_default()
            );
            if follow_resources {
                state.push_str(&format!("|{}|{}", vm["vcpus"], vm["memory"]));
            }
            seen.push((id, state));
        }
        if seen.len() > 2 * MAX_RECORDS {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&seen, &mut hasher);
    Ok(Fingerprint {
        cluster,
        digest: std::hash::Hasher::finish(&hasher),
    })
}

/// The fingerprint of the records provisioning looks at ([`fingerprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// The NetBox cluster's id, once it exists.
    pub cluster: Option<u64>,
    /// A digest of the records' ids and last changes.
    pub digest: u64,
}

/// The id of the NetBox cluster named `name`, if it exists.
async fn cluster_id(api: &dyn NetBoxApi, name: &str) -> Result<Option<u64>, NetBoxError> {
    Ok(api
        .list(
            "virtualization/clusters",
            &[("name".to_string(), name.to_string())],
        )
        .await?
        .into_iter()
        .find(|c| c["name"] == name)
        .and_then(|c| id_of(&c)))
}

/// Adds VMs to `raw` by id, refusing more than [`MAX_RECORDS`].
fn collect(raw: &mut BTreeMap<u64, Value>, vms: Vec<Value>) -> Result<(), NetBoxError> {
    for vm in vms {
        if let Some(id) = id_of(&vm) {
            raw.insert(id, vm);
        }
        if raw.len() > MAX_RECORDS {
            return Err(NetBoxError::Invalid {
                endpoint: VIRTUAL_MACHINES.into(),
                message: format!(
                    "more than {MAX_RECORDS} virtual machines are staged, decommissioning or provisioned in this cluster: provisioning does not run (narrow spec.provisioning.selector)"
                ),
            });
        }
    }
    Ok(())
}

/// A text value, cut to `max` characters.
fn text(v: &Value, max: usize) -> Option<String> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(|s| truncate(s, max))
}

/// A choice's value (`{"value": "staged", "label": ...}` or a bare string).
fn choice(v: &Value) -> Option<String> {
    text(&v["value"], 50).or_else(|| text(v, 50))
}

fn u32_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A record from NetBox's answer; `None` when it has no id or name.
pub fn parse_vm(vm: &Value) -> Option<NbVm> {
    let cf = &vm["custom_fields"];
    let names = |v: &Value| -> Vec<String> {
        [text(&v["slug"], 100), text(&v["name"], 100)]
            .into_iter()
            .flatten()
            .collect()
    };
    Some(NbVm {
        id: id_of(vm)?,
        name: text(&vm["name"], 200)?,
        status: choice(&vm["status"]).unwrap_or_default(),
        description: text(&vm["description"], 200)
            .map(|d| d.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default(),
        vcpus: match &vm["vcpus"] {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(truncate(s, 20)),
            _ => None,
        },
        memory_mb: vm["memory"].as_u64(),
        tags: vm["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .take(64)
            .flat_map(names)
            .collect(),
        role: names(&vm["role"]),
        phase: cf[CF_PROVISION].as_str().and_then(Phase::parse),
        reserved_vmid: u32_of(&cf[CF_PROVISION_VMID]),
        provisioned_by: text(&cf[CF_PROVISIONED_BY], 512),
        owner: text(&cf[CF_OWNER], 512),
        vmid: u32_of(&cf[CF_VMID]),
        template: text(&cf[CF_TEMPLATE], 100)
            .or_else(|| cf[CF_TEMPLATE].as_u64().map(|n| n.to_string())),
        target_node: text(&cf[CF_TARGET_NODE], 63),
        start: cf[CF_START].as_bool(),
        interfaces: Vec::new(),
        disks: Vec::new(),
    })
}

/// The ids of `records` in chunks, as `key=id` query pairs.
fn id_queries(key: &str, ids: impl IntoIterator<Item = u64>) -> Vec<Vec<(String, String)>> {
    let ids: Vec<u64> = ids.into_iter().collect();
    ids.chunks(IDS_PER_QUERY)
        .map(|c| {
            c.iter()
                .map(|id| (key.to_string(), id.to_string()))
                .collect()
        })
        .collect()
}

/// Lists `endpoint` for every chunk of ids.
async fn list_by_ids(
    api: &dyn NetBoxApi,
    endpoint: &str,
    key: &str,
    ids: impl IntoIterator<Item = u64>,
) -> Result<Vec<Value>, NetBoxError> {
    let mut out = Vec::new();
    for query in id_queries(key, ids) {
        out.extend(api.list(endpoint, &query).await?);
    }
    Ok(out)
}

/// Interfaces (with their addresses, prefixes and gateways) and disks of the records.
pub async fn add_children(api: &dyn NetBoxApi, records: &mut [NbVm]) -> Result<(), NetBoxError> {
    if records.is_empty() {
        return Ok(());
    }
    let vm_ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    let ifaces = list_by_ids(
        api,
        "virtualization/interfaces",
        "virtual_machine_id",
        vm_ids.clone(),
    )
    .await?;
    let iface_ids: Vec<u64> = ifaces.iter().filter_map(id_of).collect();
    let ips = list_by_ids(api, "ipam/ip-addresses", "vminterface_id", iface_ids).await?;
    let disks = list_by_ids(
        api,
        "virtualization/virtual-disks",
        "virtual_machine_id",
        vm_ids,
    )
    .await?;
    let mut ips_by_iface: BTreeMap<u64, Vec<(NbIp, Option<u64>)>> = BTreeMap::new();
    for ip in &ips {
        let (Some(id), Some(iface), Some(address)) = (
            id_of(ip),
            ip["assigned_object_id"].as_u64(),
            text(&ip["address"], 64).filter(|a| is_cidr(a)),
        ) else {
            continue;
        };
        ips_by_iface.entry(iface).or_default().push((
            NbIp {
                id,
                address,
                owner: text(&ip["custom_fields"][CF_OWNER], 512),
                gateway: None,
            },
            id_of(&ip["vrf"]),
        ));
    }
    let mut prefix_ids = BTreeSet::new();
    let mut vlan_ids = BTreeSet::new();
    for r in records.iter_mut() {
        for iface in ifaces
            .iter()
            .filter(|i| id_of(&i["virtual_machine"]) == Some(r.id))
        {
            let Some(parsed) = parse_interface(iface) else {
                continue;
            };
            if r.interfaces.len() >= MAX_CHILDREN {
                break;
            }
            let ips = ips_by_iface.remove(&parsed.0.id).unwrap_or_default();
            let mut nb = parsed.0;
            nb.ips = ips.iter().map(|(ip, _)| ip.clone()).take(16).collect();
            if nb.ips.is_empty() {
                match parsed.1 {
                    Some(p) => {
                        prefix_ids.insert(p);
                    }
                    None => {
                        if let Some(v) = parsed.2 {
                            vlan_ids.insert(v);
                        }
                    }
                }
            }
            r.interfaces.push(nb);
            r.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        }
        r.disks = disks
            .iter()
            .filter(|d| id_of(&d["virtual_machine"]) == Some(r.id))
            .filter_map(parse_disk)
            .take(MAX_CHILDREN)
            .collect();
    }
    // Which prefix an interface without an address takes its address from.
    let by_id = list_by_ids(api, "ipam/prefixes", "id", prefix_ids).await?;
    let by_vlan = list_by_ids(api, "ipam/prefixes", "vlan_id", vlan_ids).await?;
    for iface_json in &ifaces {
        let Some((id, cf_prefix, vlan)) = parse_interface(iface_json).map(|p| (p.0.id, p.1, p.2))
        else {
            continue;
        };
        let Some(iface) = records
            .iter_mut()
            .flat_map(|r| r.interfaces.iter_mut())
            .find(|i| i.id == id && i.ips.is_empty())
        else {
            continue;
        };
        match (cf_prefix, vlan) {
            (Some(p), _) => match by_id
                .iter()
                .find(|x| id_of(x) == Some(p))
                .and_then(parse_prefix)
            {
                Some(prefix) => iface.prefix = Some(prefix),
                None => {
                    iface.prefix_problem = Some(format!(
                        "its custom field proxmox_prefix names prefix {p}, which cannot be read"
                    ));
                }
            },
            (None, Some(v)) => {
                let matching: Vec<NbPrefix> = by_vlan
                    .iter()
                    .filter(|x| id_of(&x["vlan"]) == Some(v))
                    .filter_map(parse_prefix)
                    .collect();
                match matching.as_slice() {
                    [] => {}
                    [one] => iface.prefix = Some(one.clone()),
                    _ => {
                        iface.prefix_problem = Some(format!(
                            "its untagged VLAN has {} prefixes: name one in its custom field proxmox_prefix",
                            matching.len()
                        ))
                    }
                }
            }
            (None, None) => {}
        }
    }
    gateways(api, records, &ips).await
}

/// The gateway of each fixed address: `proxmox_gateway` of the most specific prefix in its
/// VRF that holds it.
async fn gateways(
    api: &dyn NetBoxApi,
    records: &mut [NbVm],
    ips: &[Value],
) -> Result<(), NetBoxError> {
    let vrf_of: BTreeMap<u64, Option<u64>> = ips
        .iter()
        .filter_map(|ip| Some((id_of(ip)?, id_of(&ip["vrf"]))))
        .collect();
    let mut cache: BTreeMap<(String, Option<u64>), Option<String>> = BTreeMap::new();
    for ip in records
        .iter_mut()
        .filter(|r| r.phase.is_none() || r.phase == Some(Phase::Reserved))
        .flat_map(|r| r.interfaces.iter_mut())
        .flat_map(|i| i.ips.iter_mut())
    {
        let host = ip.address.split('/').next().unwrap_or_default().to_string();
        let vrf = vrf_of.get(&ip.id).copied().flatten();
        let key = (host.clone(), vrf);
        if !cache.contains_key(&key) {
            let query = vec![
                ("contains".to_string(), host),
                (
                    "vrf_id".to_string(),
                    vrf.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
                ),
            ];
            let best = api
                .list("ipam/prefixes", &query)
                .await?
                .iter()
                .filter_map(parse_prefix)
                .max_by_key(|p| prefix_len(&p.prefix));
            cache.insert(key.clone(), best.and_then(|p| p.gateway));
        }
        ip.gateway = cache.get(&key).cloned().flatten();
    }
    Ok(())
}

/// True for `address/length` with a valid IP address and length: what goes into
/// `ipconfigN` is never more than that.
pub fn is_cidr(text: &str) -> bool {
    let Some((ip, len)) = text.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max) && len.bytes().all(|b| b.is_ascii_digit())
}

fn prefix_len(prefix: &str) -> u8 {
    prefix
        .split('/')
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// An interface from NetBox's answer (without its addresses and prefix), if it has an id
/// and a name.
pub fn parse_interface_json(v: &Value) -> Option<NbInterface> {
    parse_interface(v).map(|(iface, _, _)| iface)
}

/// An interface, with the prefix id of its `proxmox_prefix` and its untagged VLAN id.
fn parse_interface(v: &Value) -> Option<(NbInterface, Option<u64>, Option<u64>)> {
    let vlan = &v["untagged_vlan"];
    let nb = NbInterface {
        id: id_of(v)?,
        name: text(&v["name"], 64)?,
        enabled: v["enabled"].as_bool().unwrap_or(true),
        mtu: u32_of(&v["mtu"]).filter(|m| (576..=65520).contains(m)),
        mac: v["primary_mac_address"]["mac_address"]
            .as_str()
            .and_then(crate::pve::propstr::normalize_mac),
        untagged_vid: vlan["vid"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..4095).contains(n)),
        prefix: None,
        prefix_problem: None,
        ips: Vec::new(),
        owner: text(&v["custom_fields"][CF_OWNER], 512),
    };
    Some((nb, id_of(&v["custom_fields"][CF_PREFIX]), id_of(vlan)))
}

fn parse_disk(v: &Value) -> Option<NbDisk> {
    Some(NbDisk {
        id: id_of(v)?,
        name: text(&v["name"], 64)?,
        size_mb: v["size"].as_u64()?,
        owner: text(&v["custom_fields"][CF_OWNER], 512),
    })
}

fn parse_prefix(v: &Value) -> Option<NbPrefix> {
    let gateway =
        text(&v["custom_fields"][CF_GATEWAY], 64).filter(|g| g.parse::<std::net::IpAddr>().is_ok());
    Some(NbPrefix {
        id: id_of(v)?,
        prefix: text(&v["prefix"], 64).filter(|p| is_cidr(p))?,
        gateway,
    })
}

/// What the planner knows of the cluster, from the inventory.
pub fn cluster_view(inv: &Inventory, mark: &str) -> ClusterView {
    let mut image_storages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut shared = BTreeSet::new();
    for s in &inv.storage {
        if !s.active || !s.enabled || !s.content.iter().any(|c| c == "images") {
            continue;
        }
        if s.shared {
            shared.insert(s.name.clone());
        }
        image_storages
            .entry(s.node.clone())
            .or_default()
            .push(s.name.clone());
    }
    for node in &inv.nodes {
        let list = image_storages.entry(node.name.clone()).or_default();
        list.extend(shared.iter().cloned());
        list.sort();
        list.dedup();
    }
    ClusterView {
        mark: mark.to_string(),
        templates: inv
            .guests
            .iter()
            .filter(|g| g.template && g.kind == GuestKind::Qemu)
            .map(|g| TemplateView {
                vmid: g.vmid,
                name: g.name.clone(),
                node: g.node.clone(),
            })
            .collect(),
        nodes_online: inv
            .nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| n.name.clone())
            .collect(),
        nodes: inv.nodes.iter().map(|n| n.name.clone()).collect(),
        shared_image_storages: shared.into_iter().collect(),
        image_storages,
        guests_complete: inv.permissions_clean() && inv.guest_set_complete(),
    }
}

/// What PVE shows of every guest, by vmid.
pub fn guest_views(inv: &Inventory) -> BTreeMap<u32, GuestView> {
    inv.guests
        .iter()
        .map(|g| {
            let power = match g.state {
                GuestState::Running | GuestState::Paused => Power::Running,
                GuestState::Stopped => Power::Stopped,
                _ => Power::Unknown,
            };
            (
                g.vmid,
                GuestView {
                    vmid: g.vmid,
                    node: g.node.clone(),
                    qemu: g.kind == GuestKind::Qemu,
                    name: g.name.clone(),
                    power,
                    lock: g.lock.clone(),
                    protected: g.protection,
                    mark: g.description.as_deref().and_then(ProvisionMark::find),
                    config: None,
                    pending: BTreeMap::new(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hostile_records_are_typed_bounded_or_dropped() {
        assert!(is_cidr("10.0.0.5/24") && is_cidr("2001:db8::5/64"));
        for bad in [
            "10.0.0.5/24,gw=6.6.6.6",
            "10.0.0.5",
            "10.0.0.5/33",
            "x/24",
            "10.0.0.5/+24",
            "::1/129",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
        let vm = parse_vm(&json!({
            "id": 7, "name": "x".repeat(5000), "status": {"value": "staged"},
            "vcpus": 2.5, "memory": 2048, "tags": (0..1000).map(|i| json!({"slug": format!("t{i}")})).collect::<Vec<_>>(),
            "custom_fields": {"proxmox_provision": "owned-by-me", "proxmox_provision_vmid": 99999999999u64,
                              "proxmox_template": 9000, "proxmox_start": "yes"}
        }))
        .unwrap();
        assert_eq!(vm.name.chars().count(), 200);
        assert_eq!(vm.vcpus.as_deref(), Some("2.5"));
        assert_eq!(vm.tags.len(), 64, "at most 64 tags are read");
        assert_eq!(vm.phase, None, "an unknown phase is none");
        assert_eq!(vm.reserved_vmid, None, "a vmid beyond u32 is none");
        assert_eq!(vm.template.as_deref(), Some("9000"));
        assert_eq!(vm.start, None);
        assert!(parse_vm(&json!({"name": "no id"})).is_none());
        assert!(parse_vm(&json!({"id": 1})).is_none());
        let (iface, prefix, vlan) = parse_interface(&json!({
            "id": 3, "name": "net0", "mtu": 100000, "untagged_vlan": {"id": 9, "vid": 5000},
            "primary_mac_address": {"mac_address": "not a mac"}, "custom_fields": {"proxmox_prefix": {"id": 4}}
        }))
        .unwrap();
        assert_eq!(
            (iface.mtu, iface.untagged_vid, iface.mac),
            (None, None, None)
        );
        assert_eq!((prefix, vlan), (Some(4), Some(9)));
        assert!(parse_prefix(&json!({"id": 1, "prefix": "10.0.0.0/24;rm"})).is_none());
        let p = parse_prefix(&json!({"id": 1, "prefix": "10.0.0.0/24", "custom_fields": {"proxmox_gateway": "not an ip"}})).unwrap();
        assert_eq!(p.gateway, None);
    }
}
