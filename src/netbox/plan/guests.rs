//! Desired objects of the Proxmox guests: virtual machines, their interfaces and disks,
//! the interfaces' primary MACs and the VMs' primary IPs.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Desired, PlanInput, StagePlan, adopt_or_collide, normalize_cidr, primary_ips};
use crate::inventory::{
    Guest, GuestAddress, GuestKind, Inventory, ReadFailure, ReadOutcome, ReadScope,
};
use crate::netbox::kinds::{
    CF_DISK_STORAGE, CF_GUEST_TYPE, CF_STALE_SINCE, CF_VMID, Kind, OwnedObjects, fields, id_of,
};
use crate::netbox::mapping::{
    bytes_to_mib, guest_names, platform_name, total_mib, truncate, vm_status,
};

/// The label of a guest's VM.
fn label(g: &Guest) -> String {
    format!("vm {} ({})", g.vmid, g.name)
}

/// VMs of the guests; unowned VMs with a guest's name in the cluster are adopted or
/// reported.
pub fn vms(input: &PlanInput, owned: &OwnedObjects) -> StagePlan {
    let mut stage = StagePlan::default();
    if !input.settings.virtual_machines {
        return stage;
    }
    // Names are unique among all synced guests, also in a targeted pass.
    let names = guest_names(input.settings.synced_guests(input.inventory));
    let node_devices = owned.ids(Kind::Device);
    for g in input.synced_guests() {
        let key = g.vmid.to_string();
        let name = names[&g.vmid].clone();
        let label = label(g);
        let adopted = match input.candidates.unowned_vms.get(&name) {
            Some(existing) if !owned.contains(Kind::VirtualMachine, &key) => {
                if !adopt_or_collide(
                    input,
                    Kind::VirtualMachine,
                    &key,
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
        let existing = owned.get(Kind::VirtualMachine, &key).or(adopted);
        let mut f = vm_fields(input, g, name, node_devices.get(&g.node).copied());
        let pve_tags: Vec<u64> = g
            .tags
            .iter()
            .filter_map(|t| input.shared.pve_tags.get(t).copied())
            .collect();
        f.insert(
            "tags".into(),
            json!(input.tags(Kind::VirtualMachine, existing, &pve_tags)),
        );
        if let Some(total) = input.candidates.disk_repairs.get(&key) {
            f.insert("disk".into(), total.clone());
        }
        let config_read = input
            .inventory
            .completeness
            .is_complete(&ReadScope::GuestConfig(g.vmid));
        if !input.settings.description_from_notes {
            f.remove("description");
        }
        if !config_read && existing.is_some() {
            // Its config could not be read: what comes from it is unknown, not empty.
            for field in ["platform", "vcpus", "memory", "description", "disk"] {
                f.remove(field);
            }
        }
        keep_netbox_fields(input, g.vmid, existing, &mut f);
        stage.desired.push(Desired {
            key,
            label,
            fields: f,
        });
    }
    stage
}

/// Leaves out what NetBox owns on an existing VM when provisioning is on: a status
/// `decommissioning` a person set, the role, description and tenant of a provisioned VM,
/// and with `followResources` its vCPUs, memory and disk total.
fn keep_netbox_fields(
    input: &PlanInput,
    vmid: u32,
    existing: Option<&Value>,
    f: &mut Map<String, Value>,
) {
    let Some(existing) = existing else { return };
    let overrides = &input.settings.guests;
    if overrides.keep_decommissioning && existing["status"] == "decommissioning" {
        f.remove("status");
    }
    if let Some(&resources) = overrides.provisioned.get(&vmid) {
        // The record people wrote it from: their role, description and tenant stay.
        for field in ["role", "description", "tenant"] {
            f.remove(field);
        }
        if resources {
            for field in ["vcpus", "memory", "disk"] {
                f.remove(field);
            }
        }
    }
}

/// The managed fields of a guest's VM, tags aside.
fn vm_fields(
    input: &PlanInput,
    g: &Guest,
    name: String,
    device: Option<u64>,
) -> Map<String, Value> {
    let shared = input.shared;
    let role = match (g.template, g.kind) {
        (true, _) => shared.role_template,
        (false, GuestKind::Qemu) => shared.role_qemu,
        (false, GuestKind::Lxc) => shared.role_lxc,
    };
    let mut cf = input.owner_cf();
    cf.insert(CF_VMID.into(), json!(g.vmid));
    cf.insert(
        CF_GUEST_TYPE.into(),
        json!(match g.kind {
            GuestKind::Qemu => "qemu",
            GuestKind::Lxc => "lxc",
        }),
    );
    cf.insert(CF_STALE_SINCE.into(), Value::Null);
    let platform = g
        .os_type
        .as_deref()
        .map(platform_name)
        .and_then(|p| shared.platforms.get(&p).copied());
    let description = g.description.as_deref().unwrap_or_default();
    let mut f = fields(json!({
        "name": name,
        "status": vm_status(g),
        "cluster": shared.cluster,
        "device": device,
        "role": role,
        "tenant": shared.tenant,
        "platform": platform,
        "vcpus": g.vcpus,
        "memory": g.memory_mib,
        "description": truncate(description.lines().next().unwrap_or_default(), 200),
        "custom_fields": cf,
    }));
    // With virtual disks synced, NetBox keeps `disk` equal to their sum itself.
    if !input.settings.virtual_disks {
        let total = total_mib(g.disks.iter().map(|d| d.size_bytes));
        f.insert(
            "disk".into(),
            if total > 0 { json!(total) } else { Value::Null },
        );
    }
    f
}

/// Interfaces of the guests whose VM exists (or is planned).
pub fn interfaces(
    input: &PlanInput,
    owned: &OwnedObjects,
    vms: &BTreeMap<String, u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    if !input.settings.vm_interfaces {
        return desired;
    }
    for g in input.synced_guests() {
        let Some(&vm) = vms.get(&g.vmid.to_string()) else {
            continue;
        };
        for nic in &g.nics {
            let key = format!("{vm}/{}", nic.slot);
            let vlan = nic
                .vlan_tag
                .and_then(|t| input.shared.vlans.get(&t).copied());
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
                "custom_fields": input.owner_cf(),
                "tags": input.tags(Kind::VmInterface, owned.get(Kind::VmInterface, &key), &[]),
            }));
            desired.push(Desired {
                key,
                label: format!("vm {} interface {}", g.vmid, nic.slot),
                fields: f,
            });
        }
    }
    desired
}

/// Virtual disks of the guests; NetBox keeps each VM's `disk` equal to their sum.
pub fn disks(input: &PlanInput, owned: &OwnedObjects, vms: &BTreeMap<String, u64>) -> Vec<Desired> {
    let mut desired = Vec::new();
    if !input.settings.virtual_disks {
        return desired;
    }
    for g in input.synced_guests() {
        let Some(&vm) = vms.get(&g.vmid.to_string()) else {
            continue;
        };
        for d in &g.disks {
            let key = format!("{vm}/{}", d.slot);
            let mut cf = input.owner_cf();
            cf.insert(CF_DISK_STORAGE.into(), json!(d.storage));
            let mut f = fields(json!({
                "virtual_machine": vm,
                "name": d.slot,
                "size": bytes_to_mib(d.size_bytes.unwrap_or(0)),
                "description": truncate(&d.volume, 200),
                "custom_fields": cf,
                "tags": input.tags(Kind::VirtualDisk, owned.get(Kind::VirtualDisk, &key), &[]),
            }));
            // `followResources`: NetBox sets the size of a provisioned VM's disk.
            if input.settings.guests.provisioned.get(&g.vmid) == Some(&true)
                && owned.contains(Kind::VirtualDisk, &key)
            {
                f.remove("size");
            }
            desired.push(Desired {
                key,
                label: format!("vm {} disk {}", g.vmid, d.slot),
                fields: f,
            });
        }
    }
    desired
}

/// Second pass over guest interfaces: the primary MAC, known once the MAC exists.
/// `mac_of` gives the MAC of an interface id.
pub fn interface_refs(
    input: &PlanInput,
    vm_ifaces: &BTreeMap<String, u64>,
    mac_of: &dyn Fn(u64) -> Option<u64>,
) -> Vec<Desired> {
    if !input.settings.vm_interfaces {
        return Vec::new();
    }
    vm_ifaces
        .iter()
        .filter_map(|(key, &id)| {
            let mac = mac_of(id)?;
            Some(Desired {
                key: key.clone(),
                label: format!("vm interface {key}"),
                fields: fields(json!({"primary_mac_address": mac})),
            })
        })
        .collect()
}

/// Primary IPs of the VMs: the first address by NIC slot, then address order.
/// `ip_id` gives the id of an interface's address.
pub fn primary_ips_of_vms(
    input: &PlanInput,
    owned: &OwnedObjects,
    vms: &BTreeMap<String, u64>,
    ip_id: &dyn Fn(u64, &str) -> Option<u64>,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    // Without IP addresses synced, primary IPs are not managed either.
    if !(input.settings.virtual_machines && input.settings.ip_addresses) {
        return desired;
    }
    for g in input.synced_guests() {
        let key = g.vmid.to_string();
        let Some(&vm) = vms.get(&key) else { continue };
        let (mut p4, mut p6) = (None, None);
        // Deterministic: lowest NIC slot first, then the address order.
        let mut addrs: Vec<&GuestAddress> = g.addresses.iter().collect();
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
            let Some(iface) = owned
                .get(Kind::VmInterface, &format!("{vm}/{slot}"))
                .and_then(id_of)
            else {
                continue;
            };
            let id = ip_id(iface, &c);
            if c.contains(':') {
                p6 = p6.or(id);
            } else {
                p4 = p4.or(id);
            }
        }
        let mut f = primary_ips(p4, p6);
        if !addresses_known(input.inventory, g.vmid) {
            // Part of its addresses is unknown this run (stopped, agent not running, read
            // failed): keep a primary IP that is still one of its addresses, and never
            // clear one.
            let current = owned.get(Kind::VirtualMachine, &key);
            for field in ["primary_ip4", "primary_ip6"] {
                let held = current
                    .and_then(|c| id_of(&c[field]))
                    .is_some_and(|id| vm_owns_ip(owned, vm, id));
                if held || f[field].is_null() {
                    f.remove(field);
                }
            }
        }
        desired.push(Desired {
            key,
            label: label(g),
            fields: f,
        });
    }
    desired
}

/// Every address of a guest was read this run: its config, and its runtime addresses
/// (or it has none to read because it runs without an agent).
fn addresses_known(inv: &Inventory, vmid: u32) -> bool {
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
fn vm_owns_ip(owned: &OwnedObjects, vm: u64, ip: u64) -> bool {
    let Some(obj) = owned.by_id(Kind::IpAddress, ip) else {
        return false;
    };
    obj["assigned_object_type"] == Kind::VmInterface.name()
        && obj["assigned_object_id"].as_u64().is_some_and(|iface| {
            owned
                .by_id(Kind::VmInterface, iface)
                .is_some_and(|i| id_of(&i["virtual_machine"]) == Some(vm))
        })
}
