//! Desired objects of the Proxmox nodes: devices, their interfaces, the interfaces'
//! references to each other and the devices' primary IPs.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    Desired, PlanInput, StagePlan, adopt_or_collide, device_model, normalize_cidr, primary_ips,
};
use crate::crd::facts::NodeHardware;
use crate::inventory::{Node, NodeInterface, NodeInterfaceKind, ReadScope};
use crate::netbox::kinds::{
    CF_CHASSIS_MANUFACTURER, CF_CHASSIS_PRODUCT, CF_CHASSIS_SERIAL, CF_NIC_DUPLEX, CF_NIC_LINK,
    CF_NIC_SPEED, CF_STALE_SINCE, Kind, OwnedObjects, fields, id_of,
};
use crate::netbox::mapping::{interface_type, truncate};

/// The label of a node's device.
fn label(node: &Node) -> String {
    format!("node {}", node.name)
}

/// Devices of the nodes; unowned devices with a node's name are adopted or reported.
pub fn devices(input: &PlanInput, owned: &OwnedObjects) -> StagePlan {
    let mut stage = StagePlan::default();
    if !input.settings.nodes {
        return stage;
    }
    for node in &input.inventory.nodes {
        let h = input.hardware.get(&node.name);
        let label = label(node);
        let adopted = match input.candidates.unowned_devices.get(&node.name) {
            Some(existing) if !owned.contains(Kind::Device, &node.name) => {
                if !adopt_or_collide(
                    input,
                    Kind::Device,
                    &node.name,
                    &label,
                    existing,
                    &mut stage,
                ) {
                    continue;
                }
                Some(existing)
            }
            _ => None,
        };
        let existing = owned.get(Kind::Device, &node.name).or(adopted);
        let mut f = device_fields(input, node, h);
        if h.is_none() && existing.is_some() {
            // Without facts this run the model is unknown, not generic: keep the one set.
            f.remove("device_type");
        }
        f.insert(
            "tags".into(),
            json!(input.tags(Kind::Device, existing, &[])),
        );
        stage.desired.push(Desired {
            key: node.name.clone(),
            label,
            fields: f,
        });
    }
    stage
}

/// The managed fields of a node's device, tags aside.
fn device_fields(input: &PlanInput, node: &Node, h: Option<&NodeHardware>) -> Map<String, Value> {
    let shared = input.shared;
    let (manufacturer, model) = device_model(h);
    let mut cf = input.owner_cf();
    cf.insert(CF_STALE_SINCE.into(), Value::Null);
    if let Some(h) = h {
        let chassis = h.chassis.as_ref();
        cf.insert(
            CF_CHASSIS_SERIAL.into(),
            json!(chassis.and_then(|c| c.serial_number.clone())),
        );
        cf.insert(
            CF_CHASSIS_MANUFACTURER.into(),
            json!(chassis.and_then(|c| c.manufacturer.clone())),
        );
        cf.insert(
            CF_CHASSIS_PRODUCT.into(),
            json!(h.system.as_ref().and_then(|s| s.product_name.clone())),
        );
    }
    let mut f = fields(json!({
        "name": node.name,
        "device_type": shared.device_types.get(&format!("{manufacturer}/{model}")),
        "role": shared.device_role,
        "site": shared.site,
        "cluster": shared.cluster,
        "status": if node.online { "active" } else { "offline" },
        "tenant": shared.tenant,
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
    f
}

/// Interfaces of the nodes whose device exists (or is planned).
pub fn interfaces(
    input: &PlanInput,
    owned: &OwnedObjects,
    devices: &BTreeMap<String, u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    if !input.settings.node_interfaces {
        return desired;
    }
    for node in &input.inventory.nodes {
        let Some(&device) = devices.get(&node.name) else {
            continue;
        };
        let facts = input.hardware.get(&node.name);
        let facts_missing = input.settings.hardware_discovery && facts.is_none();
        for iface in &node.interfaces {
            let key = format!("{device}/{}", iface.name);
            let mut f = interface_fields(input, device, iface, facts);
            f.insert(
                "tags".into(),
                json!(input.tags(Kind::Interface, owned.get(Kind::Interface, &key), &[])),
            );
            let exists = owned.contains(Kind::Interface, &key);
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
    desired
}

/// The managed fields of a node interface, tags aside.
fn interface_fields(
    input: &PlanInput,
    device: u64,
    iface: &NodeInterface,
    facts: Option<&NodeHardware>,
) -> Map<String, Value> {
    let nic = facts.and_then(|h| h.nics.iter().find(|n| n.link.name == iface.name));
    let ethtool = nic.and_then(|n| n.ethtool.as_ref());
    let mut cf = input.owner_cf();
    if let Some(e) = ethtool {
        cf.insert(
            CF_NIC_SPEED.into(),
            json!(e.speed_mbps.map(|s| s.saturating_add(500) / 1000)),
        );
        cf.insert(CF_NIC_DUPLEX.into(), json!(e.duplex));
        cf.insert(CF_NIC_LINK.into(), json!(e.link_detected));
    }
    let link_up = nic.is_some_and(|n| n.link.state.as_deref() == Some("UP"));
    let mut f = fields(json!({
        "device": device,
        "name": iface.name,
        "type": interface_type(&iface.kind, ethtool),
        "enabled": iface.active || iface.kind == NodeInterfaceKind::Physical && link_up,
        "mtu": iface.mtu,
        // A VLAN-aware bridge carries every VLAN; other interfaces have no mode.
        "mode": iface.bridge_vlan_aware.then_some("tagged-all"),
        "description": truncate(iface.comments.as_deref().unwrap_or_default(), 200),
        "custom_fields": cf,
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
    f
}

/// References of a node interface to other interfaces.
#[derive(Clone, Copy, Default)]
struct InterfaceRefs {
    parent: Option<u64>,
    lag: Option<u64>,
    bridge: Option<u64>,
}

/// Second pass over node interfaces: parent, LAG, bridge and primary MAC, known only once
/// every interface and MAC exists. `mac_of` gives the MAC of an interface id.
pub fn interface_refs(
    input: &PlanInput,
    owned: &OwnedObjects,
    interfaces: &BTreeMap<String, u64>,
    mac_of: &dyn Fn(u64) -> Option<u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    if !input.settings.node_interfaces {
        return desired;
    }
    let devices = owned.ids(Kind::Device);
    for node in &input.inventory.nodes {
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
            let mut f = fields(json!({"parent": r.parent, "lag": r.lag, "bridge": r.bridge}));
            // Node MACs come from discovery: without them this run, keep the one set.
            if let Some(mac) = mac_of(id) {
                f.insert("primary_mac_address".into(), json!(mac));
            }
            desired.push(Desired {
                key,
                label: format!("node {} interface {}", node.name, iface.name),
                fields: f,
            });
        }
    }
    desired
}

/// Primary IPs of the devices: the address of the interface with the default gateway,
/// else of the node's cluster address. `ip_id` gives the id of an interface's address.
pub fn primary_ips_of_devices(
    input: &PlanInput,
    owned: &OwnedObjects,
    devices: &BTreeMap<String, u64>,
    ip_id: &dyn Fn(u64, &str) -> Option<u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    if !(input.settings.nodes && input.settings.ip_addresses) {
        return desired;
    }
    for node in &input.inventory.nodes {
        let Some(&device) = devices.get(&node.name) else {
            continue;
        };
        if !input
            .inventory
            .completeness
            .is_complete(&ReadScope::NodeNetwork(node.name.clone()))
        {
            // Its addresses are unknown this run: keep the primary IPs set.
            continue;
        }
        let cluster_prefix = format!("{}/", node.address.clone().unwrap_or_default());
        let mut candidates: Vec<&NodeInterface> = node.interfaces.iter().collect();
        candidates.sort_by_key(|i| {
            (
                i.gateway.is_none(),
                i.cidr.as_deref().map(|c| !c.starts_with(&cluster_prefix)),
                i.name.clone(),
            )
        });
        let (mut p4, mut p6) = (None, None);
        for iface in candidates {
            let Some(id) = owned
                .get(Kind::Interface, &format!("{device}/{}", iface.name))
                .and_then(id_of)
            else {
                continue;
            };
            let address = |cidr: &Option<String>| {
                cidr.as_deref()
                    .and_then(normalize_cidr)
                    .and_then(|c| ip_id(id, &c))
            };
            p4 = p4.or_else(|| address(&iface.cidr));
            p6 = p6.or_else(|| address(&iface.cidr6));
        }
        desired.push(Desired {
            key: node.name.clone(),
            label: label(node),
            fields: primary_ips(p4, p6),
        });
    }
    desired
}
