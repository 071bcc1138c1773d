//! Reads a whole Proxmox VE cluster into an [`Inventory`], recording the outcome of every
//! part so that nothing that could not be read is ever treated as deleted.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::client::{PveApi, PveError, is_agent_not_running};
use super::propstr::{self, as_bool, as_u64};
use crate::inventory::{
    AddressSource, CephInfo, CephPool, ClusterInfo, Guest, GuestAddress, GuestKind, GuestState,
    Inventory, Node, NodeInterface, NodeInterfaceKind, NodeStatus, PhysicalDisk, ReadFailure,
    ReadOutcome, ReadScope, StoragePool,
};

/// A guest and the outcomes of reading its parts.
pub(super) type GuestRead = (Option<Guest>, Vec<(ReadScope, ReadOutcome)>);

/// What to read besides the essentials.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Read guest IPs from the QEMU guest agent.
    pub guest_agent: bool,
    /// Read Ceph status and pools.
    pub ceph: bool,
    /// Requests in flight while reading guests (the client bounds it too).
    pub concurrency: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            guest_agent: true,
            ceph: true,
            concurrency: 8,
        }
    }
}

fn failed(e: &PveError) -> ReadOutcome {
    ReadOutcome::Failed {
        reason: e.read_failure(),
        message: e.to_string(),
    }
}

fn s(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the cluster. `Err` only when nothing could be read (cluster membership unknown).
pub async fn read_inventory(api: &dyn PveApi, opts: &ReadOptions) -> Result<Inventory, PveError> {
    let mut inv = Inventory::default();

    match api.get("/version").await {
        Ok(v) => {
            inv.pve_version = s(&v["version"]);
            inv.completeness
                .record(ReadScope::Version, ReadOutcome::Complete);
        }
        Err(
            e
            @ (PveError::Unauthorized { .. } | PveError::Tls { .. } | PveError::Connection { .. }),
        ) => {
            return Err(e);
        }
        Err(e) => inv.completeness.record(ReadScope::Version, failed(&e)),
    }

    read_membership(api, &mut inv).await?;

    let node_names: Vec<(String, bool)> = inv
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.online))
        .collect();
    let ha = match read_ha_states(api).await {
        Ok(ha) => {
            inv.completeness
                .record(ReadScope::HaResources, ReadOutcome::Complete);
            ha
        }
        Err(e) => {
            inv.completeness.record(ReadScope::HaResources, failed(&e));
            BTreeMap::new()
        }
    };

    // Nodes one by one (each node's parts in parallel); guests of all nodes in parallel.
    let mut guest_refs: Vec<(String, GuestKind, Value)> = Vec::new();
    for (i, (name, online)) in node_names.iter().enumerate() {
        if !online {
            let reason = ReadOutcome::Failed {
                reason: ReadFailure::NodeOffline,
                message: format!("node {name} is offline"),
            };
            for scope in [
                ReadScope::NodeStatus(name.clone()),
                ReadScope::NodeNetwork(name.clone()),
                ReadScope::NodeDisks(name.clone()),
                ReadScope::NodeStorage(name.clone()),
                ReadScope::NodeGuests(name.clone()),
            ] {
                inv.completeness.record(scope, reason.clone());
            }
            continue;
        }
        let p_status = format!("/nodes/{name}/status");
        let p_network = format!("/nodes/{name}/network");
        let p_disks = format!("/nodes/{name}/disks/list");
        let p_storage = format!("/nodes/{name}/storage");
        let p_qemu = format!("/nodes/{name}/qemu");
        let p_lxc = format!("/nodes/{name}/lxc");
        let (status, network, disks, storage, qemu, lxc) = futures::join!(
            api.get(&p_status),
            api.get(&p_network),
            api.get(&p_disks),
            api.get(&p_storage),
            api.get(&p_qemu),
            api.get(&p_lxc),
        );
        let node = &mut inv.nodes[i];
        match status {
            Ok(v) => {
                node.status = Some(node_status(&v));
                inv.completeness
                    .record(ReadScope::NodeStatus(name.clone()), ReadOutcome::Complete);
            }
            Err(e) => inv
                .completeness
                .record(ReadScope::NodeStatus(name.clone()), failed(&e)),
        }
        match network {
            Ok(v) => {
                node.interfaces = v
                    .as_array()
                    .map(|a| a.iter().filter_map(node_interface).collect())
                    .unwrap_or_default();
                node.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
                inv.completeness
                    .record(ReadScope::NodeNetwork(name.clone()), ReadOutcome::Complete);
            }
            Err(e) => inv
                .completeness
                .record(ReadScope::NodeNetwork(name.clone()), failed(&e)),
        }
        match disks {
            Ok(v) => {
                node.disks = v
                    .as_array()
                    .map(|a| a.iter().filter_map(physical_disk).collect())
                    .unwrap_or_default();
                node.disks.sort_by(|a, b| a.dev_path.cmp(&b.dev_path));
                inv.completeness
                    .record(ReadScope::NodeDisks(name.clone()), ReadOutcome::Complete);
            }
            Err(e) => inv
                .completeness
                .record(ReadScope::NodeDisks(name.clone()), failed(&e)),
        }
        match storage {
            Ok(v) => {
                inv.storage.extend(
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| storage_pool(name, x)),
                );
                inv.completeness
                    .record(ReadScope::NodeStorage(name.clone()), ReadOutcome::Complete);
            }
            Err(e) => inv
                .completeness
                .record(ReadScope::NodeStorage(name.clone()), failed(&e)),
        }
        match (qemu, lxc) {
            (Ok(q), Ok(l)) => {
                for (kind, list) in [(GuestKind::Qemu, q), (GuestKind::Lxc, l)] {
                    for item in list.as_array().into_iter().flatten() {
                        guest_refs.push((name.clone(), kind, item.clone()));
                    }
                }
                inv.completeness
                    .record(ReadScope::NodeGuests(name.clone()), ReadOutcome::Complete);
            }
            (Err(e), _) | (_, Err(e)) => inv
                .completeness
                .record(ReadScope::NodeGuests(name.clone()), failed(&e)),
        }
    }

    let results: Vec<GuestRead> = stream::iter(guest_refs)
        .map(|(node, kind, item)| read_guest(api, node, kind, item, opts, &ha))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for (guest, parts) in results {
        inv.guests.extend(guest);
        for (scope, outcome) in parts {
            inv.completeness.record(scope, outcome);
        }
    }
    inv.guests.sort_by_key(|g| g.vmid);
    inv.storage
        .sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
    inv.completeness
        .parts
        .sort_by_key(|p| scope_order(&p.scope));

    if opts.ceph {
        read_ceph(api, &mut inv).await;
    }
    Ok(inv)
}

/// Sort key of a read part: config before addresses of each guest, guests by vmid (in u64,
/// so `2 * vmid + 1` cannot overflow for any u32 vmid).
pub(super) fn scope_order(scope: &ReadScope) -> (u8, String, u64) {
    match scope {
        ReadScope::Version => (0, String::new(), 0),
        ReadScope::ClusterStatus => (1, String::new(), 0),
        ReadScope::Permissions => (2, String::new(), 0),
        ReadScope::HaResources => (2, String::new(), 1),
        ReadScope::NodeStatus(n) => (3, n.clone(), 0),
        ReadScope::NodeNetwork(n) => (3, n.clone(), 1),
        ReadScope::NodeDisks(n) => (3, n.clone(), 2),
        ReadScope::NodeStorage(n) => (3, n.clone(), 3),
        ReadScope::NodeGuests(n) => (3, n.clone(), 4),
        ReadScope::GuestConfig(id) => (4, String::new(), u64::from(*id) * 2),
        ReadScope::GuestAddresses(id) => (4, String::new(), u64::from(*id) * 2 + 1),
        ReadScope::Ceph => (5, String::new(), 0),
    }
}

async fn read_membership(api: &dyn PveApi, inv: &mut Inventory) -> Result<(), PveError> {
    match api.get("/cluster/status").await {
        Ok(v) => {
            for item in v.as_array().into_iter().flatten() {
                match item["type"].as_str() {
                    Some("cluster") => {
                        inv.cluster = ClusterInfo {
                            name: s(&item["name"]),
                            quorate: Some(as_bool(&item["quorate"])),
                        }
                    }
                    Some("node") => {
                        if let Some(name) = s(&item["name"]) {
                            inv.nodes.push(Node {
                                name,
                                online: as_bool(&item["online"]),
                                address: s(&item["ip"]),
                                ..Default::default()
                            });
                        }
                    }
                    _ => {}
                }
            }
            if inv.nodes.is_empty() {
                return Err(PveError::Decode {
                    path: "/cluster/status".into(),
                    message: "no node listed".into(),
                });
            }
            inv.completeness
                .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        }
        Err(
            e @ (PveError::Unauthorized { .. }
            | PveError::Tls { .. }
            | PveError::Connection { .. }
            | PveError::Timeout { .. }),
        ) => {
            return Err(e);
        }
        Err(e) => {
            // Without Sys.Audit on / the cluster status is hidden; /nodes still lists the
            // nodes, but membership is then uncertain: nothing will be pruned.
            inv.completeness
                .record(ReadScope::ClusterStatus, failed(&e));
            let nodes = api.get("/nodes").await?;
            for item in nodes.as_array().into_iter().flatten() {
                if let Some(name) = s(&item["node"]) {
                    inv.nodes.push(Node {
                        name,
                        online: item["status"].as_str() == Some("online"),
                        ..Default::default()
                    });
                }
            }
            if inv.nodes.is_empty() {
                return Err(e);
            }
        }
    }
    inv.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    inv.nodes.dedup_by(|a, b| a.name == b.name);
    Ok(())
}

/// HA states by vmid, from `/cluster/ha/resources` (`sid` is `vm:100` or `ct:200`).
async fn read_ha_states(api: &dyn PveApi) -> Result<BTreeMap<u32, String>, PveError> {
    let mut out = BTreeMap::new();
    for r in api
        .get("/cluster/ha/resources")
        .await?
        .as_array()
        .into_iter()
        .flatten()
    {
        let sid = r["sid"].as_str().unwrap_or_default();
        let vmid = sid.rsplit(':').next().and_then(|n| n.parse::<u32>().ok());
        if let (Some(vmid), Some(state)) = (vmid, s(&r["state"])) {
            out.insert(vmid, state);
        }
    }
    Ok(out)
}

fn node_status(v: &Value) -> NodeStatus {
    NodeStatus {
        cpu_usage: v["cpu"].as_f64(),
        cpus: as_u64(&v["cpuinfo"]["cpus"]).and_then(|c| i64::try_from(c).ok()),
        cpu_model: s(&v["cpuinfo"]["model"]),
        memory_total_bytes: as_u64(&v["memory"]["total"]),
        memory_used_bytes: as_u64(&v["memory"]["used"]),
        uptime_seconds: as_u64(&v["uptime"]),
        kernel: s(&v["kversion"]).or_else(|| s(&v["current-kernel"]["release"])),
        pve_version: s(&v["pveversion"]),
    }
}

fn split_words(v: &Value) -> Vec<String> {
    s(v).map(|x| x.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn node_interface(v: &Value) -> Option<NodeInterface> {
    let name = s(&v["iface"])?;
    let raw_type = s(&v["type"]).unwrap_or_default();
    let kind = match raw_type.as_str() {
        "eth" => NodeInterfaceKind::Physical,
        "bridge" => NodeInterfaceKind::Bridge,
        "bond" => NodeInterfaceKind::Bond,
        "vlan" => NodeInterfaceKind::Vlan,
        "OVSBridge" => NodeInterfaceKind::OvsBridge,
        "OVSBond" => NodeInterfaceKind::OvsBond,
        "OVSPort" => NodeInterfaceKind::OvsPort,
        "OVSIntPort" => NodeInterfaceKind::OvsIntPort,
        "alias" => NodeInterfaceKind::Alias,
        _ => NodeInterfaceKind::Unknown,
    };
    // `vmbr0.50` style names carry parent and tag when the fields are absent.
    let dotted = name
        .rsplit_once('.')
        .and_then(|(p, t)| t.parse::<u16>().ok().map(|t| (p.to_string(), t)));
    let vlan_tag = as_u64(&v["vlan-id"])
        .and_then(|t| u16::try_from(t).ok())
        .or(if kind == NodeInterfaceKind::Vlan {
            dotted.as_ref().map(|d| d.1)
        } else {
            None
        });
    let vlan_parent = s(&v["vlan-raw-device"]).or(if kind == NodeInterfaceKind::Vlan {
        dotted.map(|d| d.0)
    } else {
        None
    });
    Some(NodeInterface {
        name,
        kind,
        raw_type,
        active: as_bool(&v["active"]),
        autostart: as_bool(&v["autostart"]),
        mtu: as_u64(&v["mtu"]).and_then(|m| u32::try_from(m).ok()),
        cidr: s(&v["cidr"]).or_else(|| match (s(&v["address"]), s(&v["netmask"])) {
            (Some(a), Some(m)) if !m.contains('.') => Some(format!("{a}/{m}")),
            _ => None,
        }),
        cidr6: s(&v["cidr6"]),
        gateway: s(&v["gateway"]),
        gateway6: s(&v["gateway6"]),
        bridge_ports: split_words(&v["bridge_ports"]),
        bridge_vlan_aware: as_bool(&v["bridge_vlan_aware"]),
        bond_slaves: split_words(&v["slaves"]),
        bond_mode: s(&v["bond_mode"]),
        vlan_parent,
        vlan_tag,
        comments: s(&v["comments"]).map(|c| c.trim().to_string()),
    })
}

fn physical_disk(v: &Value) -> Option<PhysicalDisk> {
    Some(PhysicalDisk {
        dev_path: s(&v["devpath"])?,
        model: s(&v["model"]),
        vendor: s(&v["vendor"]).filter(|x| x != "unknown"),
        serial: s(&v["serial"]).filter(|x| x != "unknown"),
        size_bytes: as_u64(&v["size"]),
        disk_type: s(&v["type"]),
        health: s(&v["health"]),
        wearout: as_u64(&v["wearout"]).and_then(|w| i64::try_from(w).ok()),
    })
}

fn storage_pool(node: &str, v: &Value) -> Option<StoragePool> {
    Some(StoragePool {
        name: s(&v["storage"])?,
        node: node.into(),
        storage_type: s(&v["type"]).unwrap_or_default(),
        content: s(&v["content"])
            .map(|c| {
                let mut parts: Vec<String> = c
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                parts.sort();
                parts
            })
            .unwrap_or_default(),
        shared: as_bool(&v["shared"]),
        active: as_bool(&v["active"]),
        enabled: v.get("enabled").map(as_bool).unwrap_or(true),
        total_bytes: as_u64(&v["total"]),
        used_bytes: as_u64(&v["used"]),
        available_bytes: as_u64(&v["avail"]),
    })
}

fn guest_state(v: &Value) -> GuestState {
    match v["status"].as_str() {
        Some("running") => GuestState::Running,
        Some("stopped") => GuestState::Stopped,
        Some("paused" | "suspended") => GuestState::Paused,
        _ => GuestState::Unknown,
    }
}

/// Reads one guest's config and runtime addresses.
pub(super) async fn read_guest(
    api: &dyn PveApi,
    node: String,
    kind: GuestKind,
    item: Value,
    opts: &ReadOptions,
    ha: &BTreeMap<u32, String>,
) -> GuestRead {
    let mut parts = Vec::new();
    let Some(vmid) = as_u64(&item["vmid"]).and_then(|v| u32::try_from(v).ok()) else {
        return (None, parts);
    };
    let kind_path = match kind {
        GuestKind::Qemu => "qemu",
        GuestKind::Lxc => "lxc",
    };
    let config = match api
        .get(&format!("/nodes/{node}/{kind_path}/{vmid}/config"))
        .await
    {
        Ok(c) => {
            parts.push((ReadScope::GuestConfig(vmid), ReadOutcome::Complete));
            c
        }
        Err(e) => {
            parts.push((ReadScope::GuestConfig(vmid), failed(&e)));
            // Known to exist (it is in the list) but its config is unknown: keep what the
            // list says, so the guest is not mistaken for deleted.
            Value::Null
        }
    };
    let state = guest_state(&item);
    let mut guest = Guest {
        vmid,
        kind,
        node: node.clone(),
        name: s(&config["name"])
            .or_else(|| s(&config["hostname"]))
            .or_else(|| s(&item["name"]))
            .unwrap_or_default(),
        state,
        template: as_bool(&config["template"]) || as_bool(&item["template"]),
        tags: {
            let raw = s(&config["tags"])
                .or_else(|| s(&item["tags"]))
                .unwrap_or_default();
            let set: BTreeSet<String> = raw
                .split([';', ',', ' '])
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            set.into_iter().collect()
        },
        pool: s(&config["pool"]).or_else(|| s(&item["pool"])),
        os_type: s(&config["ostype"]),
        description: s(&config["description"]).map(|d| d.trim_end().to_string()),
        ha_state: ha.get(&vmid).cloned(),
        agent_enabled: kind == GuestKind::Qemu
            && s(&config["agent"])
                .map(|a| {
                    let p = propstr::parse(&a);
                    p.default.as_deref() == Some("1")
                        || p.props.get("enabled").is_some_and(|e| e == "1")
                })
                .unwrap_or(false),
        lock: s(&item["lock"])
            .or_else(|| s(&config["lock"]))
            .map(guest_lock),
        protection: as_bool(&config["protection"]),
        ..Default::default()
    };
    let mut static_addrs: Vec<(String, String, AddressSource)> = Vec::new();
    if let Some(cfg) = config.as_object() {
        match kind {
            GuestKind::Qemu => {
                guest.vcpus = qemu_vcpus(&config);
                guest.memory_mib = propstr::memory_mib(&config["memory"]).or(Some(512));
            }
            GuestKind::Lxc => {
                guest.vcpus = as_u64(&config["cores"]).and_then(|v| u32::try_from(v).ok());
                guest.memory_mib = as_u64(&config["memory"]).or(Some(512));
            }
        }
        let mut keys: Vec<&String> = cfg.keys().collect();
        keys.sort_by_key(|k| slot_sort_key(k));
        for key in keys {
            let Some(value) = cfg[key].as_str() else {
                continue;
            };
            let is_disk = match kind {
                GuestKind::Qemu => propstr::is_qemu_disk_key(key),
                GuestKind::Lxc => propstr::is_lxc_disk_key(key),
            };
            if is_disk {
                guest.disks.extend(propstr::disk(key, value));
            } else if key.starts_with("net") && key[3..].parse::<u32>().is_ok() {
                match kind {
                    GuestKind::Qemu => guest.nics.push(propstr::qemu_nic(key, value)),
                    GuestKind::Lxc => {
                        let (nic, addrs) = propstr::lxc_nic(key, value);
                        for a in addrs {
                            static_addrs.push((a, key.clone(), AddressSource::LxcConfig));
                        }
                        guest.nics.push(nic);
                    }
                }
            } else if let Some(n) = key.strip_prefix("ipconfig")
                && n.parse::<u32>().is_ok()
            {
                for a in propstr::ipconfig_addresses(value) {
                    static_addrs.push((a, format!("net{n}"), AddressSource::CloudInit));
                }
            }
        }
    }

    // Runtime addresses: the agent for running QEMU guests, /interfaces for running LXC.
    let mut runtime: Vec<(String, String, AddressSource)> = Vec::new();
    let scope = ReadScope::GuestAddresses(vmid);
    if state != GuestState::Running || guest.template {
        parts.push((
            scope,
            ReadOutcome::NotApplicable {
                reason: ReadFailure::GuestNotRunning,
                message: format!("guest {vmid} is not running"),
            },
        ));
    } else if kind == GuestKind::Qemu && !(guest.agent_enabled && opts.guest_agent) {
        parts.push((
            scope,
            ReadOutcome::NotApplicable {
                reason: ReadFailure::AgentDisabled,
                message: format!("guest agent not enabled for vm {vmid}"),
            },
        ));
    } else {
        let path = match kind {
            GuestKind::Qemu => format!("/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"),
            GuestKind::Lxc => format!("/nodes/{node}/lxc/{vmid}/interfaces"),
        };
        match api.get(&path).await {
            Ok(v) => {
                let list = if kind == GuestKind::Qemu {
                    &v["result"]
                } else {
                    &v
                };
                runtime = runtime_addresses(list, &guest, kind);
                parts.push((scope, ReadOutcome::Complete));
            }
            Err(e @ PveError::Status { .. }) if is_agent_not_running(&e.to_string()) => {
                parts.push((
                    scope,
                    ReadOutcome::NotApplicable {
                        reason: ReadFailure::AgentNotRunning,
                        message: format!("QEMU guest agent of vm {vmid} is not running"),
                    },
                ));
            }
            Err(e) => parts.push((scope, failed(&e))),
        }
    }
    guest.addresses = merge_addresses(&guest, runtime, static_addrs);
    (Some(guest), parts)
}

/// A guest's lock as PVE names it (`backup`, `clone`, `snapshot-delete`, ...); anything
/// else (too long, other characters) is kept as `unknown`: still a lock, but nothing of the
/// answer is carried further.
fn guest_lock(lock: String) -> String {
    if lock.len() <= 32 && lock.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        lock
    } else {
        "unknown".into()
    }
}

/// vCPUs of a QEMU guest: `vcpus` when set, else `sockets * cores` (each 1 when absent).
/// `None` when the product does not fit a u32 (a nonsense config, not a panic).
fn qemu_vcpus(config: &Value) -> Option<u32> {
    let sockets = as_u64(&config["sockets"]).unwrap_or(1);
    let cores = as_u64(&config["cores"]).unwrap_or(1);
    as_u64(&config["vcpus"])
        .filter(|v| *v > 0)
        .or_else(|| sockets.checked_mul(cores))
        .and_then(|v| u32::try_from(v).ok())
}

/// Orders config keys so disks and NICs come out as net0, net1, ..., net10.
fn slot_sort_key(key: &str) -> (String, u32) {
    let split = key.find(|c: char| c.is_ascii_digit()).unwrap_or(key.len());
    (key[..split].to_string(), key[split..].parse().unwrap_or(0))
}

fn is_reportable(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()
        }
        std::net::IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn runtime_addresses(
    list: &Value,
    guest: &Guest,
    kind: GuestKind,
) -> Vec<(String, String, AddressSource)> {
    let source = match kind {
        GuestKind::Qemu => AddressSource::Agent,
        GuestKind::Lxc => AddressSource::LxcRuntime,
    };
    let mut out = Vec::new();
    for iface in list.as_array().into_iter().flatten() {
        let mac = s(&iface["hardware-address"])
            .or_else(|| s(&iface["hwaddr"]))
            .and_then(|m| propstr::normalize_mac(&m));
        let Some(nic) = mac
            .as_ref()
            .and_then(|m| guest.nics.iter().find(|n| n.mac.as_ref() == Some(m)))
        else {
            // Docker bridges, veths, tunnels: not a NIC of the guest, nowhere to put it.
            continue;
        };
        // The agent and PVE 9 answer `ip-addresses: [{ip-address, prefix}]`; PVE 7/8 answer
        // LXC interfaces with `inet` / `inet6` as `address/prefix` strings.
        let listed = iface["ip-addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((s(&a["ip-address"])?, as_u64(&a["prefix"])?)));
        let inet = ["inet", "inet6"]
            .into_iter()
            .filter_map(|k| s(&iface[k]))
            .flat_map(|v| {
                v.split([' ', ','])
                    .filter_map(|c| {
                        let (ip, prefix) = c.trim().split_once('/')?;
                        Some((ip.to_string(), prefix.parse::<u64>().ok()?))
                    })
                    .collect::<Vec<_>>()
            });
        for (ip, prefix) in listed.chain(inet) {
            let Ok(parsed) = ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            if is_reportable(&parsed) {
                out.push((format!("{parsed}/{prefix}"), nic.slot.clone(), source));
            }
        }
    }
    out
}

fn merge_addresses(
    guest: &Guest,
    runtime: Vec<(String, String, AddressSource)>,
    configured: Vec<(String, String, AddressSource)>,
) -> Vec<GuestAddress> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    // Runtime observations first: they win over configuration for the same address.
    for (cidr, slot, source) in runtime.into_iter().chain(configured) {
        let Some((ip, prefix)) = cidr.split_once('/') else {
            continue;
        };
        let Ok(parsed) = ip.parse::<std::net::IpAddr>() else {
            continue;
        };
        if !is_reportable(&parsed) || prefix.parse::<u8>().is_err() {
            continue;
        }
        let normalized = format!("{parsed}/{prefix}");
        if !seen.insert(parsed) {
            continue;
        }
        let mac = guest
            .nics
            .iter()
            .find(|n| n.slot == slot)
            .and_then(|n| n.mac.clone());
        out.push(GuestAddress {
            cidr: normalized,
            nic_slot: Some(slot),
            mac,
            source,
        });
    }
    out.sort();
    out
}

fn ceph_not_installed(e: &PveError) -> bool {
    let m = e.to_string().to_ascii_lowercase();
    m.contains("not installed")
        || m.contains("not initialized")
        || m.contains("no such file")
        || m.contains("binary not installed")
        || m.contains("ceph.conf")
}

async fn read_ceph(api: &dyn PveApi, inv: &mut Inventory) {
    let status = match api.get("/cluster/ceph/status").await {
        Ok(v) => v,
        Err(e)
            if matches!(e, PveError::Status { .. } | PveError::NotFound { .. })
                && ceph_not_installed(&e) =>
        {
            inv.completeness.record(
                ReadScope::Ceph,
                ReadOutcome::NotApplicable {
                    reason: ReadFailure::CephNotInstalled,
                    message: "Ceph is not installed".into(),
                },
            );
            return;
        }
        Err(e) => {
            inv.completeness.record(ReadScope::Ceph, failed(&e));
            return;
        }
    };
    let osdmap = if status["osdmap"]["osdmap"].is_object() {
        &status["osdmap"]["osdmap"]
    } else {
        &status["osdmap"]
    };
    let count = |k: &str| {
        as_u64(&osdmap[k])
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let mut ceph = CephInfo {
        health: s(&status["health"]["status"]).unwrap_or_else(|| "UNKNOWN".into()),
        monitors: status["quorum_names"]
            .as_array()
            .map(|a| a.iter().filter_map(s).collect())
            .unwrap_or_default(),
        osds_total: count("num_osds"),
        osds_up: count("num_up_osds"),
        osds_in: count("num_in_osds"),
        pools: Vec::new(),
    };
    let first_online = inv.nodes.iter().find(|n| n.online).map(|n| n.name.clone());
    let mut outcome = ReadOutcome::Complete;
    if let Some(node) = first_online {
        match api.get(&format!("/nodes/{node}/ceph/pool")).await {
            Ok(v) => {
                ceph.pools = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(CephPool {
                            name: s(&p["pool_name"]).or_else(|| s(&p["name"]))?,
                            size: as_u64(&p["size"]).and_then(|n| u32::try_from(n).ok()),
                            used_bytes: as_u64(&p["bytes_used"]),
                        })
                    })
                    .collect();
                ceph.pools.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Err(e) => outcome = failed(&e),
        }
    }
    inv.completeness.record(ReadScope::Ceph, outcome);
    inv.ceph = Some(ceph);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scope_order_does_not_overflow_on_the_largest_vmids() {
        let mut scopes = vec![
            ReadScope::GuestAddresses(u32::MAX),
            ReadScope::GuestConfig(u32::MAX),
            ReadScope::GuestAddresses(u32::MAX - 1),
            ReadScope::GuestConfig(1 << 31),
            ReadScope::Ceph,
            ReadScope::Version,
        ];
        scopes.sort_by_key(scope_order);
        assert_eq!(
            scopes,
            vec![
                ReadScope::Version,
                ReadScope::GuestConfig(1 << 31),
                ReadScope::GuestAddresses(u32::MAX - 1),
                ReadScope::GuestConfig(u32::MAX),
                ReadScope::GuestAddresses(u32::MAX),
                ReadScope::Ceph,
            ]
        );
    }

    /// Answers each guest's config from a map; everything else is not found.
    struct Configs(BTreeMap<String, Value>);

    impl PveApi for Configs {
        fn get<'a>(
            &'a self,
            path: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Value, PveError>> {
            let answer = self
                .0
                .get(path)
                .cloned()
                .ok_or_else(|| PveError::NotFound { path: path.into() });
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn lock_and_protection_are_read_from_the_list_or_the_config() {
        let api = Configs(BTreeMap::from([
            (
                "/nodes/pve1/qemu/100/config".to_string(),
                json!({"name": "a", "protection": 1}),
            ),
            (
                "/nodes/pve1/qemu/101/config".to_string(),
                json!({"name": "b", "lock": "clone"}),
            ),
            (
                "/nodes/pve1/qemu/102/config".to_string(),
                json!({"name": "c", "protection": "0", "lock": "Backup; rm -rf /"}),
            ),
        ]));
        let opts = ReadOptions::default();
        let ha = BTreeMap::new();
        let read = |item: Value| read_guest(&api, "pve1".into(), GuestKind::Qemu, item, &opts, &ha);
        let (g, _) = read(json!({"vmid": 100, "status": "stopped", "lock": "backup"})).await;
        let g = g.unwrap();
        assert_eq!((g.lock.as_deref(), g.protection), (Some("backup"), true));
        let (g, _) = read(json!({"vmid": 101, "status": "stopped"})).await;
        let g = g.unwrap();
        assert_eq!((g.lock.as_deref(), g.protection), (Some("clone"), false));
        let (g, _) = read(json!({"vmid": 102, "status": "stopped"})).await;
        let g = g.unwrap();
        assert_eq!((g.lock.as_deref(), g.protection), (Some("unknown"), false));
        // Not locked, not protected: nothing serialized, so older inventories compare equal.
        let (g, _) = read(json!({"vmid": 103, "status": "stopped"})).await;
        let text = serde_json::to_string(&g.unwrap()).unwrap();
        assert!(
            !text.contains("lock") && !text.contains("protection"),
            "{text}"
        );
    }

    #[test]
    fn qemu_vcpus_never_overflow() {
        assert_eq!(qemu_vcpus(&json!({"sockets": 2, "cores": 4})), Some(8));
        assert_eq!(
            qemu_vcpus(&json!({"sockets": 2, "cores": 4, "vcpus": 6})),
            Some(6)
        );
        assert_eq!(qemu_vcpus(&json!({})), Some(1));
        // u64 * u64 would overflow: no value rather than a panic or a wrapped count.
        assert_eq!(
            qemu_vcpus(&json!({"sockets": u64::MAX, "cores": u64::MAX})),
            None
        );
        assert_eq!(
            qemu_vcpus(&json!({"sockets": "4294967296", "cores": "4294967296"})),
            None
        );
        // Fits u64, not u32.
        assert_eq!(qemu_vcpus(&json!({"sockets": 65536, "cores": 65536})), None);
    }

    #[test]
    fn counts_above_i64_are_dropped_not_wrapped() {
        let status = node_status(&json!({"cpuinfo": {"cpus": u64::MAX}}));
        assert_eq!(status.cpus, None, "u64::MAX as i64 would be -1");
        assert_eq!(
            node_status(&json!({"cpuinfo": {"cpus": 64}})).cpus,
            Some(64)
        );
        let disk = physical_disk(&json!({"devpath": "/dev/sda", "wearout": u64::MAX})).unwrap();
        assert_eq!(disk.wearout, None);
        let disk = physical_disk(&json!({"devpath": "/dev/sda", "wearout": 97})).unwrap();
        assert_eq!(disk.wearout, Some(97));
    }
}
