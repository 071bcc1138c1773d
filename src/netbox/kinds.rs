//! The NetBox object kinds the operator owns, their identity keys, and the names of the
//! tags and custom fields that mark ownership.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
/// Custom field: a VM's provisioning progress (`reserved`, `provisioned`, `retiring`,
/// `retired`; docs/provisioning.md).
pub const CF_PROVISION: &str = "proxmox_provision";
/// Custom field: the vmid reserved for a VM before it is cloned.
pub const CF_PROVISION_VMID: &str = "proxmox_provision_vmid";
/// Custom field: the owner mark of the ProxmoxCluster that provisioned a VM.
pub const CF_PROVISIONED_BY: &str = "proxmox_provisioned_by";
/// Custom field: the template a VM is cloned from (name or vmid), set by people.
pub const CF_TEMPLATE: &str = "proxmox_template";
/// Custom field: the node a VM is created on, set by people (not `proxmox_node`, the
/// proxbox plugin's).
pub const CF_TARGET_NODE: &str = "proxmox_target_node";
/// Custom field: start a VM once it is created (boolean), set by people.
pub const CF_START: &str = "proxmox_start";
/// Custom field of a VM interface: the prefix its address is allocated from.
pub const CF_PREFIX: &str = "proxmox_prefix";
/// Custom field of a prefix: the gateway of its addresses in cloud-init.
pub const CF_GATEWAY: &str = "proxmox_gateway";
/// Custom field: chassis serial number from dmidecode.
pub const CF_CHASSIS_SERIAL: &str = "hardware_chassis_serial";
/// Custom field: chassis manufacturer from dmidecode.
pub const CF_CHASSIS_MANUFACTURER: &str = "hardware_chassis_manufacturer";
/// Custom field: system product name from dmidecode.
pub const CF_CHASSIS_PRODUCT: &str = "hardware_chassis_product";
/// Custom field: link speed from ethtool, in Gbps.
pub const CF_NIC_SPEED: &str = "nic_speed_gbps";
/// Custom field: duplex from ethtool.
pub const CF_NIC_DUPLEX: &str = "nic_duplex";
/// Custom field: link detected, from ethtool.
pub const CF_NIC_LINK: &str = "nic_link";

/// A kind of NetBox object the operator creates and owns (serialized by its NetBox name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A Proxmox node (`dcim.device`).
    #[serde(rename = "dcim.device")]
    Device,
    /// A node's network interface (`dcim.interface`).
    #[serde(rename = "dcim.interface")]
    Interface,
    /// A MAC address of a node or guest interface (`dcim.macaddress`).
    #[serde(rename = "dcim.macaddress")]
    MacAddress,
    /// An IP address of a node or guest interface (`ipam.ipaddress`).
    #[serde(rename = "ipam.ipaddress")]
    IpAddress,
    /// A guest (`virtualization.virtualmachine`).
    #[serde(rename = "virtualization.virtualmachine")]
    VirtualMachine,
    /// A guest's network interface (`virtualization.vminterface`).
    #[serde(rename = "virtualization.vminterface")]
    VmInterface,
    /// A guest's disk (`virtualization.virtualdisk`).
    #[serde(rename = "virtualization.virtualdisk")]
    VirtualDisk,
}

impl Kind {
    /// Every owned kind, children first (the order of deletion).
    pub const OWNED: [Kind; 7] = [
        Kind::IpAddress,
        Kind::MacAddress,
        Kind::VirtualDisk,
        Kind::VmInterface,
        Kind::VirtualMachine,
        Kind::Interface,
        Kind::Device,
    ];

    /// True for the kinds marked by the owner tag as well as the owner custom field
    /// (devices, so that they are found again if the custom field is deleted); every other
    /// kind is marked by the custom field only (a tag is a many-to-many row per object,
    /// docs/benchmarks.md), and found again by its identity.
    pub fn carries_owner_tag(self) -> bool {
        matches!(self, Kind::Device)
    }

    /// NetBox's name of the kind (`app_label.model`), also its object type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Device => "dcim.device",
            Kind::Interface => "dcim.interface",
            Kind::MacAddress => "dcim.macaddress",
            Kind::IpAddress => "ipam.ipaddress",
            Kind::VirtualMachine => "virtualization.virtualmachine",
            Kind::VmInterface => "virtualization.vminterface",
            Kind::VirtualDisk => "virtualization.virtualdisk",
        }
    }

    /// REST endpoint below `/api/`.
    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::Device => "dcim/devices",
            Kind::Interface => "dcim/interfaces",
            Kind::MacAddress => "dcim/mac-addresses",
            Kind::IpAddress => "ipam/ip-addresses",
            Kind::VirtualMachine => "virtualization/virtual-machines",
            Kind::VmInterface => "virtualization/interfaces",
            Kind::VirtualDisk => "virtualization/virtual-disks",
        }
    }

    /// The fields read of owned objects (NetBox's `?fields=`): identity, ownership marks
    /// and every field the operator manages. Reading only these halves the time of a
    /// no-op resync; a field missing here would show as changed at every sync (the
    /// zero-write tests catch it).
    pub fn fields(self) -> &'static str {
        match self {
            Kind::Device => {
                "id,name,device_type,role,site,cluster,status,tenant,serial,primary_ip4,primary_ip6,tags,custom_fields"
            }
            Kind::Interface => {
                "id,device,name,type,enabled,mtu,mode,description,speed,duplex,parent,lag,bridge,primary_mac_address,tags,custom_fields"
            }
            Kind::MacAddress => {
                "id,mac_address,assigned_object_type,assigned_object_id,tags,custom_fields"
            }
            Kind::IpAddress => {
                "id,address,vrf,status,assigned_object_type,assigned_object_id,tenant,description,tags,custom_fields"
            }
            Kind::VirtualMachine => {
                "id,name,status,cluster,device,role,tenant,platform,vcpus,memory,disk,description,primary_ip4,primary_ip6,tags,custom_fields"
            }
            Kind::VmInterface => {
                "id,virtual_machine,name,enabled,mtu,description,mode,untagged_vlan,primary_mac_address,tags,custom_fields"
            }
            Kind::VirtualDisk => "id,virtual_machine,name,size,description,tags,custom_fields",
        }
    }

    /// The kind named `name` (`dcim.interface`), if it is an owned one.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::OWNED.into_iter().find(|k| k.name() == name)
    }

    /// Identity of an object of this kind, as the operator keys it: the node name, the
    /// vmid, `parent id/name` for interfaces and disks, `object type/interface id/value`
    /// for MAC and IP addresses, `unassigned/value` for a MAC address not assigned yet
    /// (created just before the interface it is the primary MAC of).
    pub fn key_of(self, obj: &Value) -> Option<String> {
        let nested = |f: &str| id_of(&obj[f]);
        let assigned = |value: &str| {
            Some(format!(
                "{}/{}/{}",
                obj["assigned_object_type"].as_str()?,
                obj["assigned_object_id"].as_u64()?,
                value
            ))
        };
        match self {
            Kind::Device => obj["name"].as_str().map(str::to_string),
            Kind::Interface => Some(format!("{}/{}", nested("device")?, obj["name"].as_str()?)),
            Kind::VirtualMachine => custom_field(obj, CF_VMID),
            Kind::VmInterface | Kind::VirtualDisk => Some(format!(
                "{}/{}",
                nested("virtual_machine")?,
                obj["name"].as_str()?
            )),
            Kind::MacAddress => {
                let mac = obj["mac_address"].as_str()?.to_ascii_uppercase();
                if obj["assigned_object_type"].is_null() {
                    Some(unassigned_mac_key(&mac))
                } else {
                    assigned(&mac)
                }
            }
            Kind::IpAddress => assigned(obj["address"].as_str()?),
        }
    }

    /// What is kept in memory of an object NetBox returned: the fields of
    /// [`Kind::fields`] without nulls, nested objects reduced to their id and choices to
    /// their value, which is all the diff and the identity keys use (read nested
    /// references with [`id_of`]). An object as NetBox returns it takes several KiB as
    /// JSON values; this keeps the operator under 150 MiB at 3000 guests
    /// (docs/benchmarks.md).
    pub fn compact(self, obj: Value) -> Value {
        let Value::Object(map) = obj else { return obj };
        let managed = |field: &str| self.fields().split(',').any(|f| f == field);
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
}

/// The key of an owned MAC address not assigned to an interface.
pub fn unassigned_mac_key(mac: &str) -> String {
    format!("{UNASSIGNED_MAC}{}", mac.to_ascii_uppercase())
}

/// Key prefix of owned MAC addresses not assigned to an interface.
pub const UNASSIGNED_MAC: &str = "unassigned/";

/// Nested objects to their id, choices to their value.
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

/// The id of an object, of a nested object, or a bare id.
pub fn id_of(v: &Value) -> Option<u64> {
    v.get("id").and_then(Value::as_u64).or_else(|| v.as_u64())
}

/// The fields of a JSON object (empty for anything else).
pub fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A custom field's value as text (numbers included).
pub fn custom_field(obj: &Value, name: &str) -> Option<String> {
    match &obj["custom_fields"][name] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Owned objects by kind and key (compacted), as read and as written since.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnedObjects {
    by_kind: BTreeMap<Kind, BTreeMap<String, Value>>,
}

impl OwnedObjects {
    /// The objects of `kind` by key.
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Value> {
        static EMPTY: BTreeMap<String, Value> = BTreeMap::new();
        self.by_kind.get(&kind).unwrap_or(&EMPTY)
    }

    /// The object of `kind` with `key`.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Value> {
        self.of(kind).get(key)
    }

    /// True when an object of `kind` with `key` is owned.
    pub fn contains(&self, kind: Kind, key: &str) -> bool {
        self.of(kind).contains_key(key)
    }

    /// Ids of the objects of `kind` by key.
    pub fn ids(&self, kind: Kind) -> BTreeMap<String, u64> {
        self.of(kind)
            .iter()
            .filter_map(|(k, v)| id_of(v).map(|id| (k.clone(), id)))
            .collect()
    }

    /// The object of `kind` with the id `id`.
    pub fn by_id(&self, kind: Kind, id: u64) -> Option<&Value> {
        self.of(kind).values().find(|o| id_of(o) == Some(id))
    }

    /// Records an object (compacted) under `key`.
    pub fn insert(&mut self, kind: Kind, key: String, obj: Value) {
        self.by_kind
            .entry(kind)
            .or_default()
            .insert(key, kind.compact(obj));
    }

    /// Changes fields of the object of `kind` with `key` as a PATCH would: custom fields
    /// are merged, other fields replaced.
    pub fn merge(&mut self, kind: Kind, key: &str, changed: Map<String, Value>) {
        let Some(Value::Object(obj)) = self.by_kind.get_mut(&kind).and_then(|m| m.get_mut(key))
        else {
            return;
        };
        for (field, value) in changed {
            match (obj.get_mut(&field), value) {
                (Some(Value::Object(have)), Value::Object(want)) if field == "custom_fields" => {
                    have.extend(want)
                }
                (_, value) => {
                    obj.insert(field, value);
                }
            }
        }
        let merged = std::mem::take(obj);
        self.insert(kind, key.to_string(), Value::Object(merged));
    }

    /// Removes and returns the object of `kind` with `key`.
    pub fn take(&mut self, kind: Kind, key: &str) -> Option<Value> {
        self.by_kind.get_mut(&kind)?.remove(key)
    }

    /// Forgets the objects of `kind` with these ids (deleted).
    pub fn remove_ids(&mut self, kind: Kind, ids: BTreeSet<u64>) {
        if let Some(m) = self.by_kind.get_mut(&kind) {
            m.retain(|_, o| id_of(o).is_none_or(|id| !ids.contains(&id)));
        }
    }

    /// Replaces every object of `kind`.
    pub fn set(&mut self, kind: Kind, objects: BTreeMap<String, Value>) {
        self.by_kind.insert(kind, objects);
    }

    /// The highest id of any owned object (0 when none).
    pub fn max_id(&self) -> u64 {
        self.by_kind
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(id_of)
            .max()
            .unwrap_or(0)
    }

    /// The number of objects of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.of(kind).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netbox::diff::changed_fields;
    use serde_json::json;

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
        let small = Kind::VmInterface.compact(full.clone());
        assert_eq!(
            small,
            json!({
                "id": 5, "virtual_machine": 9, "name": "net0", "enabled": true,
                "description": "virtio on vmbr0", "mode": "access", "untagged_vlan": 3,
                "primary_mac_address": 12, "tags": [1],
                "custom_fields": {"proxmox_owner": "infra/lab", "human_ref": 4},
            })
        );
        assert_eq!(
            Kind::VmInterface.key_of(&small),
            Kind::VmInterface.key_of(&full)
        );
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
    fn keys_of_netbox_objects() {
        let vmif = json!({"id": 5, "name": "net0", "virtual_machine": {"id": 9}});
        assert_eq!(Kind::VmInterface.key_of(&vmif).as_deref(), Some("9/net0"));
        let vm = json!({"id": 9, "custom_fields": {"proxmox_vmid": 101}});
        assert_eq!(Kind::VirtualMachine.key_of(&vm).as_deref(), Some("101"));
        let ip = json!({"address": "10.0.0.5/24", "assigned_object_type": "virtualization.vminterface", "assigned_object_id": 5});
        assert_eq!(
            Kind::IpAddress.key_of(&ip).as_deref(),
            Some("virtualization.vminterface/5/10.0.0.5/24")
        );
        let mac = json!({"mac_address": "bc:24:11:00:00:01", "assigned_object_type": "dcim.interface", "assigned_object_id": 3});
        assert_eq!(
            Kind::MacAddress.key_of(&mac).as_deref(),
            Some("dcim.interface/3/BC:24:11:00:00:01")
        );
        let unassigned = json!({"mac_address": "bc:24:11:00:00:01", "assigned_object_type": null, "assigned_object_id": null});
        assert_eq!(
            Kind::MacAddress.key_of(&unassigned).as_deref(),
            Some("unassigned/BC:24:11:00:00:01")
        );
        assert_eq!(
            Kind::MacAddress.key_of(&Kind::MacAddress.compact(unassigned)),
            Kind::MacAddress.key_of(&json!({"mac_address": "BC:24:11:00:00:01"}))
        );
        for k in Kind::OWNED {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
    }
}
