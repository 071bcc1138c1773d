//! Desired MAC and IP addresses of node and guest interfaces.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{Desired, PlanInput, normalize_cidr};
use crate::inventory::AddressSource;
use crate::netbox::kinds::{Kind, OwnedObjects, fields, id_of, unassigned_mac_key};

/// The desired object of an address of `value` on an interface.
struct Assigned<'a> {
    object_type: Kind,
    object_id: u64,
    value: &'a str,
}

impl Assigned<'_> {
    fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.object_type.name(),
            self.object_id,
            self.value
        )
    }
}

/// The fields of an owned MAC address of `value`, assigned to `on` (type and id) or not
/// assigned yet.
fn mac_fields(
    input: &PlanInput,
    owned: &OwnedObjects,
    key: &str,
    value: &str,
    on: Option<(Kind, u64)>,
) -> Map<String, Value> {
    let mut f = fields(json!({
        "mac_address": value,
        "custom_fields": input.owner_cf(),
        "tags": input.tags(Kind::MacAddress, owned.get(Kind::MacAddress, key), &[]),
    }));
    if let Some((object_type, id)) = on {
        f.insert("assigned_object_type".into(), json!(object_type.name()));
        f.insert("assigned_object_id".into(), json!(id));
    }
    f
}

/// MAC addresses of node interfaces (from discovery) and guest interfaces.
pub fn macs(
    input: &PlanInput,
    owned: &OwnedObjects,
    interfaces: &BTreeMap<String, u64>,
    vm_ifaces: &BTreeMap<String, u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    let mut add = |on: Assigned, label: String| {
        let key = on.key();
        let f = mac_fields(
            input,
            owned,
            &key,
            on.value,
            Some((on.object_type, on.object_id)),
        );
        desired.push(Desired {
            key,
            label,
            fields: f,
        });
    };
    if input.settings.node_interfaces {
        let devices = owned.ids(Kind::Device);
        for node in &input.inventory.nodes {
            let (Some(device), Some(h)) = (devices.get(&node.name), input.hardware.get(&node.name))
            else {
                continue;
            };
            for nic in &h.nics {
                let (Some(mac), Some(&iface)) = (
                    nic.link.mac.as_deref(),
                    interfaces.get(&format!("{device}/{}", nic.link.name)),
                ) else {
                    continue;
                };
                let on = Assigned {
                    object_type: Kind::Interface,
                    object_id: iface,
                    value: mac,
                };
                add(
                    on,
                    format!("node {} interface {} MAC {mac}", node.name, nic.link.name),
                );
            }
        }
    }
    for (iface_key, (mac, label)) in guest_nic_macs(input, owned) {
        let Some(&iface) = vm_ifaces.get(&iface_key) else {
            continue;
        };
        let on = Assigned {
            object_type: Kind::VmInterface,
            object_id: iface,
            value: mac,
        };
        add(on, label);
    }
    desired
}

/// The MAC of each synced guest NIC whose VM exists, by interface key (`vm id/slot`),
/// with its label.
fn guest_nic_macs<'a>(
    input: &'a PlanInput,
    owned: &OwnedObjects,
) -> BTreeMap<String, (&'a str, String)> {
    let mut out = BTreeMap::new();
    if !input.settings.vm_interfaces {
        return out;
    }
    let vms = owned.ids(Kind::VirtualMachine);
    for g in input.synced_guests() {
        let Some(vm) = vms.get(&g.vmid.to_string()) else {
            continue;
        };
        for nic in &g.nics {
            if let Some(mac) = nic.mac.as_deref() {
                let label = format!("vm {} {} MAC {mac}", g.vmid, nic.slot);
                out.insert(format!("{vm}/{}", nic.slot), (mac, label));
            }
        }
    }
    out
}

/// The MACs of the guest interfaces `planned` that do not exist yet, one interface per
/// MAC value: (interface key, unassigned MAC key, MAC, label).
fn new_interface_macs<'a>(
    input: &'a PlanInput,
    owned: &OwnedObjects,
    planned: &[Desired],
) -> Vec<(String, String, &'a str, String)> {
    if !input.shared.primary_mac_at_create {
        return Vec::new();
    }
    let macs = guest_nic_macs(input, owned);
    let mut seen = BTreeSet::new();
    planned
        .iter()
        .filter(|d| !owned.contains(Kind::VmInterface, &d.key))
        .filter_map(|d| {
            let (mac, label) = macs.get(&d.key)?;
            let key = unassigned_mac_key(mac);
            seen.insert(key.clone())
                .then(|| (d.key.clone(), key, *mac, label.clone()))
        })
        .collect()
}

/// MAC addresses created, unassigned, before the new guest interfaces they are the
/// primary MAC of, where NetBox assigns such a MAC at the interface's creation
/// ([`super::SharedIds::primary_mac_at_create`]): one PATCH per new interface saved. An
/// owned unassigned MAC of the same value, left by an interrupted sync, is used instead
/// of a new one.
pub fn macs_before_interfaces(
    input: &PlanInput,
    owned: &OwnedObjects,
    planned: &[Desired],
) -> Vec<Desired> {
    new_interface_macs(input, owned, planned)
        .into_iter()
        .filter(|(_, key, _, _)| !owned.contains(Kind::MacAddress, key))
        .map(|(_, key, mac, label)| Desired {
            fields: mac_fields(input, owned, &key, mac, None),
            key,
            label,
        })
        .collect()
}

/// The new guest interfaces `planned`, each given its unassigned MAC (made by
/// [`macs_before_interfaces`]) as primary MAC.
pub fn with_primary_macs(
    input: &PlanInput,
    owned: &OwnedObjects,
    mut planned: Vec<Desired>,
) -> Vec<Desired> {
    let ids: BTreeMap<String, u64> = new_interface_macs(input, owned, &planned)
        .into_iter()
        .filter_map(|(iface, key, _, _)| Some((iface, id_of(owned.get(Kind::MacAddress, &key)?)?)))
        .collect();
    for d in &mut planned {
        if let Some(id) = ids.get(&d.key) {
            d.fields.insert("primary_mac_address".into(), json!(id));
        }
    }
    planned
}

/// The desired IP address `on` an interface.
fn ip(
    input: &PlanInput,
    owned: &OwnedObjects,
    on: Assigned,
    label: String,
    description: &str,
) -> Desired {
    let key = on.key();
    let f = fields(json!({
        "address": on.value,
        "vrf": input.shared.vrf,
        "status": "active",
        "assigned_object_type": on.object_type.name(),
        "assigned_object_id": on.object_id,
        "tenant": input.shared.tenant,
        "description": description,
        "custom_fields": input.owner_cf(),
        "tags": input.tags(Kind::IpAddress, owned.get(Kind::IpAddress, &key), &[]),
    }));
    Desired {
        key,
        label,
        fields: f,
    }
}

/// IP addresses of node interfaces and guest interfaces.
pub fn ips(
    input: &PlanInput,
    owned: &OwnedObjects,
    interfaces: &BTreeMap<String, u64>,
    vm_ifaces: &BTreeMap<String, u64>,
) -> Vec<Desired> {
    if !input.settings.ip_addresses {
        return Vec::new();
    }
    let mut desired = node_ips(input, owned, interfaces);
    let vms = owned.ids(Kind::VirtualMachine);
    for g in input.synced_guests() {
        let Some(vm) = vms.get(&g.vmid.to_string()) else {
            continue;
        };
        for a in &g.addresses {
            let Some(slot) = &a.nic_slot else { continue };
            let Some(&iface) = vm_ifaces.get(&format!("{vm}/{slot}")) else {
                continue;
            };
            let Some(c) = normalize_cidr(&a.cidr) else {
                continue;
            };
            let source = match a.source {
                AddressSource::Agent => "from the QEMU guest agent",
                AddressSource::LxcRuntime => "from the running container",
                AddressSource::LxcConfig => "from the container config",
                AddressSource::CloudInit => "from cloud-init ipconfig",
            };
            let on = Assigned {
                object_type: Kind::VmInterface,
                object_id: iface,
                value: &c,
            };
            let label = format!("vm {} {slot} {c}", g.vmid);
            desired.push(ip(input, owned, on, label, source));
        }
    }
    desired
}

/// IP addresses of node interfaces.
fn node_ips(
    input: &PlanInput,
    owned: &OwnedObjects,
    interfaces: &BTreeMap<String, u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    let devices = owned.ids(Kind::Device);
    for node in &input.inventory.nodes {
        let Some(device) = devices.get(&node.name) else {
            continue;
        };
        for iface in &node.interfaces {
            let Some(&id) = interfaces.get(&format!("{device}/{}", iface.name)) else {
                continue;
            };
            for c in [&iface.cidr, &iface.cidr6]
                .into_iter()
                .flatten()
                .filter_map(|c| normalize_cidr(c))
            {
                let on = Assigned {
                    object_type: Kind::Interface,
                    object_id: id,
                    value: &c,
                };
                let label = format!("node {} {} {c}", node.name, iface.name);
                desired.push(ip(input, owned, on, label, ""));
            }
        }
    }
    desired
}
