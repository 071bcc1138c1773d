//! Desired MAC and IP addresses of node and guest interfaces.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Desired, PlanInput, normalize_cidr};
use crate::inventory::AddressSource;
use crate::netbox::kinds::{Kind, OwnedObjects, fields};

/// The desired object of an address of `value` on an interface.
struct Assigned<'a> {
    kind: Kind,
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
        let f = fields(json!({
            "mac_address": on.value,
            "assigned_object_type": on.object_type.name(),
            "assigned_object_id": on.object_id,
            "custom_fields": input.owner_cf(),
            "tags": input.merged_tags(owned.get(on.kind, &key), &[]),
        }));
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
                    kind: Kind::MacAddress,
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
    if input.settings.vm_interfaces {
        let vms = owned.ids(Kind::VirtualMachine);
        for g in input.synced_guests() {
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
                let on = Assigned {
                    kind: Kind::MacAddress,
                    object_type: Kind::VmInterface,
                    object_id: iface,
                    value: mac,
                };
                add(on, format!("vm {} {} MAC {mac}", g.vmid, nic.slot));
            }
        }
    }
    desired
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
        "tags": input.merged_tags(owned.get(on.kind, &key), &[]),
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
                kind: Kind::IpAddress,
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
                    kind: Kind::IpAddress,
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
