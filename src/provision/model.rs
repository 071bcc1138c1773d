//! What provisioning works from: the NetBox records (typed from NetBox's answers, which may
//! be wrong or hostile) and what Proxmox VE shows of the guest each one names.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mark::ProvisionMark;

/// Progress of a record, kept in its custom field `proxmox_provision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A vmid is reserved for it (`proxmox_provision_vmid`); the VM may or may not exist.
    Reserved,
    /// Created and handed over to the sync (`proxmox_owner`, `proxmox_vmid` set).
    Provisioned,
    /// Being retired: shut down and destroyed.
    Retiring,
    /// Destroyed; the record was kept (`Offline` policy).
    Retired,
}

impl Phase {
    /// The value stored in NetBox.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Provisioned => "provisioned",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    /// The phase of a stored value; an unknown one is none.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "reserved" => Self::Reserved,
            "provisioned" => Self::Provisioned,
            "retiring" => Self::Retiring,
            "retired" => Self::Retired,
            _ => return None,
        })
    }
}

/// A NetBox prefix an interface's address comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbPrefix {
    /// Its id.
    pub id: u64,
    /// `10.0.8.0/24`.
    pub prefix: String,
    /// Its custom field `proxmox_gateway`, when it is an IP address.
    pub gateway: Option<String>,
}

/// An IP address of a record's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbIp {
    /// Its id.
    pub id: u64,
    /// `10.0.8.5/24`.
    pub address: String,
    /// Its owner mark, if any.
    pub owner: Option<String>,
    /// The gateway for it: `proxmox_gateway` of the most specific prefix holding it.
    pub gateway: Option<String>,
}

impl NbIp {
    /// True for an IPv6 address.
    pub fn is_v6(&self) -> bool {
        self.address.contains(':')
    }
}

/// An interface of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbInterface {
    /// Its id.
    pub id: u64,
    /// Its name (`net0`: the PVE slot it becomes).
    pub name: String,
    /// Enabled (else the NIC is created with its link down).
    pub enabled: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// Its primary MAC address, upper case.
    pub mac: Option<String>,
    /// VID of its untagged VLAN (the NIC's `tag=`).
    pub untagged_vid: Option<u16>,
    /// The prefix to allocate an address from when it has none: its custom field
    /// `proxmox_prefix`, else the one prefix of its untagged VLAN.
    pub prefix: Option<NbPrefix>,
    /// Why no prefix could be chosen, when it needs one (`PrefixAmbiguous`).
    pub prefix_problem: Option<String>,
    /// Its IP addresses.
    pub ips: Vec<NbIp>,
    /// Its owner mark, if any.
    pub owner: Option<String>,
}

/// A virtual disk of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbDisk {
    /// Its id.
    pub id: u64,
    /// Its name (`scsi0`: the PVE slot it sizes).
    pub name: String,
    /// Size in MB as NetBox stores it (the sync writes MiB there).
    pub size_mb: u64,
    /// Its owner mark, if any.
    pub owner: Option<String>,
}

/// A NetBox virtual machine provisioning looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbVm {
    /// Its id.
    pub id: u64,
    /// Its name (the PVE VM's name).
    pub name: String,
    /// Status value (`staged`, `active`, `decommissioning`, ...).
    pub status: String,
    /// First line of its description.
    pub description: String,
    /// vCPUs as NetBox holds them (a decimal).
    pub vcpus: Option<String>,
    /// Memory in MB.
    pub memory_mb: Option<u64>,
    /// Slugs and names of its tags.
    pub tags: Vec<String>,
    /// Slug and name of its role.
    pub role: Vec<String>,
    /// `proxmox_provision`.
    pub phase: Option<Phase>,
    /// `proxmox_provision_vmid`.
    pub reserved_vmid: Option<u32>,
    /// `proxmox_provisioned_by`.
    pub provisioned_by: Option<String>,
    /// `proxmox_owner`.
    pub owner: Option<String>,
    /// `proxmox_vmid`.
    pub vmid: Option<u32>,
    /// `proxmox_template`.
    pub template: Option<String>,
    /// `proxmox_target_node`.
    pub target_node: Option<String>,
    /// `proxmox_start`.
    pub start: Option<bool>,
    /// Its interfaces, by name.
    pub interfaces: Vec<NbInterface>,
    /// Its virtual disks.
    pub disks: Vec<NbDisk>,
}

/// A guest's power state as provisioning needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// Running (or paused).
    Running,
    /// Stopped.
    Stopped,
    /// Not known.
    Unknown,
}

/// What Proxmox VE shows of the guest a record names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestView {
    /// Its vmid.
    pub vmid: u32,
    /// Node it is on.
    pub node: String,
    /// QEMU (provisioning never touches containers).
    pub qemu: bool,
    /// Its name.
    pub name: String,
    /// Power state.
    pub power: Power,
    /// A lock (`clone`, `backup`, `migrate`, ...).
    pub lock: Option<String>,
    /// PVE's protection flag.
    pub protected: bool,
    /// The provisioning mark in its notes.
    pub mark: Option<ProvisionMark>,
    /// Its configuration (`GET .../config`), read for the guests provisioning acts on;
    /// `digest` included.
    pub config: Option<BTreeMap<String, String>>,
    /// Values waiting for the next start (`GET .../pending`), when read.
    pub pending: BTreeMap<String, String>,
}

/// A template a record may be cloned from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TemplateView {
    /// Its vmid.
    pub vmid: u32,
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: String,
}

/// What the pure planner knows of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The owner mark of this ProxmoxCluster ([`crate::owner`]).
    pub mark: String,
    /// QEMU templates.
    pub templates: Vec<TemplateView>,
    /// Online nodes.
    pub nodes_online: Vec<String>,
    /// Nodes known (online or not).
    pub nodes: Vec<String>,
    /// Shared storages that hold VM images.
    pub shared_image_storages: Vec<String>,
    /// Storages that hold VM images, by node (shared ones on every node).
    pub image_storages: BTreeMap<String, Vec<String>>,
    /// The guest lists of every node were read completely: a vmid missing from them is
    /// gone.
    pub guests_complete: bool,
}
