//! The Proxmox VE inventory: what the PVE reader produces and the NetBox sync consumes.
//!
//! Plain data, no I/O. Every part of the read is tracked in [`Completeness`] so that
//! the sync never treats something it could not read as deleted.

use serde::{Deserialize, Serialize};

/// Everything read from one Proxmox VE cluster in one pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// PVE version string from `/version` (for example `9.1.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pve_version: Option<String>,
    /// Cluster-level facts from `/cluster/status`.
    pub cluster: ClusterInfo,
    /// Nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// QEMU VMs and LXC containers, sorted by vmid.
    pub guests: Vec<Guest>,
    /// Storage pools as seen per node.
    pub storage: Vec<StoragePool>,
    /// Ceph state, when Ceph is installed and readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephInfo>,
    /// Which parts of the read succeeded.
    pub completeness: Completeness,
}

/// Cluster-level facts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// Cluster name; absent for a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the cluster has quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorate: Option<bool>,
}

/// One PVE node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Node name as PVE knows it.
    pub name: String,
    /// Whether the node is online according to the cluster.
    pub online: bool,
    /// Node address from `/cluster/status` (`ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Runtime status from `/nodes/{node}/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    /// Network configuration from `/nodes/{node}/network`, sorted by name.
    pub interfaces: Vec<NodeInterface>,
    /// Physical disks from `/nodes/{node}/disks/list`, sorted by device path.
    pub disks: Vec<PhysicalDisk>,
}

/// Runtime status of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// CPU usage, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<f64>,
    /// Number of logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    /// CPU model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Total memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Used memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Uptime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// Running kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// PVE manager version on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pve_version: Option<String>,
}

/// Kind of a node network interface, as PVE's `type` field says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeInterfaceKind {
    /// A physical NIC (`eth`).
    Physical,
    /// A Linux bridge.
    Bridge,
    /// A Linux bond.
    Bond,
    /// A VLAN interface.
    Vlan,
    /// An Open vSwitch bridge.
    OvsBridge,
    /// An Open vSwitch bond.
    OvsBond,
    /// An Open vSwitch port.
    OvsPort,
    /// An Open vSwitch internal port.
    OvsIntPort,
    /// An alias interface.
    Alias,
    /// A type this operator does not know, kept verbatim.
    #[default]
    Unknown,
}

/// One network interface of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInterface {
    /// Interface name (`eno1`, `bond0`, `vmbr0`, `vmbr0.50`).
    pub name: String,
    /// Interface kind.
    pub kind: NodeInterfaceKind,
    /// PVE's raw `type` string.
    pub raw_type: String,
    /// Whether the interface is active.
    pub active: bool,
    /// Whether the interface starts on boot.
    pub autostart: bool,
    /// MTU, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// IPv4 address with prefix (`10.0.0.5/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// IPv6 address with prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<String>,
    /// IPv4 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// IPv6 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// Bridge member ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_ports: Vec<String>,
    /// Whether a bridge is VLAN aware.
    #[serde(default)]
    pub bridge_vlan_aware: bool,
    /// Bond member interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bond_slaves: Vec<String>,
    /// Bond mode (`802.3ad`, `active-backup`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<String>,
    /// Parent device of a VLAN interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_parent: Option<String>,
    /// VLAN id of a VLAN interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_tag: Option<u16>,
    /// Free-text comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

/// One physical disk of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalDisk {
    /// Device path (`/dev/sda`).
    pub dev_path: String,
    /// Disk model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Disk type (`ssd`, `hdd`, `nvme`, `usb`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<String>,
    /// SMART health (`PASSED`, `OK`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// SSD wearout in percent of life left, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wearout: Option<i64>,
}

/// A storage pool as seen from one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoragePool {
    /// Storage id (`local-lvm`).
    pub name: String,
    /// Node that reported it.
    pub node: String,
    /// Storage type (`lvmthin`, `rbd`, `nfs`, `dir`, `zfspool`, ...).
    pub storage_type: String,
    /// Content types (`images`, `rootdir`, `iso`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<String>,
    /// Shared between nodes.
    pub shared: bool,
    /// Active on this node.
    pub active: bool,
    /// Enabled in the configuration.
    pub enabled: bool,
    /// Total bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Used bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Available bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
}

/// Ceph state of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CephInfo {
    /// Overall health (`HEALTH_OK`, `HEALTH_WARN`, `HEALTH_ERR`).
    pub health: String,
    /// Monitor names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    /// Number of OSDs.
    pub osds_total: u32,
    /// Number of OSDs up.
    pub osds_up: u32,
    /// Number of OSDs in.
    pub osds_in: u32,
    /// Pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<CephPool>,
}

/// One Ceph pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CephPool {
    /// Pool name.
    pub name: String,
    /// Replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Bytes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
}

/// QEMU VM or LXC container.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A QEMU virtual machine.
    #[default]
    Qemu,
    /// An LXC container.
    Lxc,
}

/// Run state of a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    /// Running.
    Running,
    /// Stopped.
    Stopped,
    /// Paused or suspended.
    Paused,
    /// Anything else.
    #[default]
    Unknown,
}

/// One guest (QEMU VM or LXC container) with its configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Guest {
    /// VM id, unique in the cluster.
    pub vmid: u32,
    /// QEMU or LXC.
    pub kind: GuestKind,
    /// Node the guest runs on.
    pub node: String,
    /// Name (QEMU `name`, LXC `hostname`); may be empty.
    pub name: String,
    /// Run state.
    pub state: GuestState,
    /// Whether this is a template.
    pub template: bool,
    /// Virtual CPUs (sockets x cores, or `vcpus` when set; LXC `cores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Disks, in config order of slot name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<GuestDisk>,
    /// NICs, sorted by slot (`net0`, `net1`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<GuestNic>,
    /// Addresses configured or observed, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GuestAddress>,
    /// PVE tags, sorted, deduplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Resource pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// OS type (`l26`, `win11`, LXC `debian`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    /// Notes (description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// HA state (`started`, `stopped`, ...), when the guest is HA-managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_state: Option<String>,
    /// Whether the QEMU guest agent is enabled in the config.
    #[serde(default)]
    pub agent_enabled: bool,
    /// PVE's lock on the guest (`clone`, `backup`, `migrate`, `snapshot`, ...), from the
    /// node's guest list or the config: while it is set, PVE refuses most changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Protection mode (config `protection: 1`): PVE refuses to destroy the guest or its
    /// disks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protection: bool,
}

/// One guest disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestDisk {
    /// Config key: `scsi0`, `virtio1`, `sata0`, `ide0`, `efidisk0`, `tpmstate0`, `rootfs`, `mp0`.
    pub slot: String,
    /// Storage id, absent for bind mounts and passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Volume (`vm-100-disk-0`) or path.
    pub volume: String,
    /// Size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Mount point inside an LXC container (`mp0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
}

/// One guest NIC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestNic {
    /// Config key: `net0`, `net1`, ...
    pub slot: String,
    /// QEMU model (`virtio`, `e1000`, ...) or `veth` for LXC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Interface name inside an LXC container (`eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_name: Option<String>,
    /// MAC address, upper case with colons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Bridge (`vmbr0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// VLAN tag (`tag=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_tag: Option<u16>,
    /// PVE firewall enabled on this NIC.
    #[serde(default)]
    pub firewall: bool,
    /// Link disconnected (`link_down=1`).
    #[serde(default)]
    pub link_down: bool,
    /// MTU, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Where a guest address came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AddressSource {
    /// Reported by the QEMU guest agent.
    Agent,
    /// Reported by LXC `/interfaces`.
    LxcRuntime,
    /// Static `ip=` in an LXC NIC config.
    LxcConfig,
    /// Cloud-init `ipconfigN`.
    #[default]
    CloudInit,
}

/// One IP address of a guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestAddress {
    /// Address with prefix length (`10.0.0.5/24`, `2001:db8::5/64`).
    pub cidr: String,
    /// NIC slot it belongs to (`net0`) when it could be matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_slot: Option<String>,
    /// MAC of the interface it was seen on, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Where it came from.
    pub source: AddressSource,
}

/// Which parts of the read succeeded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completeness {
    /// One entry per part that was attempted; parts not listed were not attempted.
    pub parts: Vec<ReadPart>,
}

/// One part of the read and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadPart {
    /// What was read.
    pub scope: ReadScope,
    /// How it went.
    pub outcome: ReadOutcome,
}

/// A part of the PVE read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "id")]
pub enum ReadScope {
    /// `/version`.
    Version,
    /// `/cluster/status` (cluster name, node list, addresses).
    ClusterStatus,
    /// `/access/permissions`.
    Permissions,
    /// `/nodes/{node}/status`.
    NodeStatus(String),
    /// `/nodes/{node}/network`.
    NodeNetwork(String),
    /// `/nodes/{node}/disks/list`.
    NodeDisks(String),
    /// `/nodes/{node}/storage`.
    NodeStorage(String),
    /// `/nodes/{node}/qemu` and `/nodes/{node}/lxc` (the guest list of a node).
    NodeGuests(String),
    /// A guest's config and status.
    GuestConfig(u32),
    /// A guest's runtime addresses (agent or LXC interfaces).
    GuestAddresses(u32),
    /// Ceph status, OSDs and pools.
    Ceph,
    /// `/cluster/ha/resources` (HA state of guests).
    HaResources,
}

/// Outcome of one part of the read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum ReadOutcome {
    /// Read completely.
    Complete,
    /// Not applicable (for example Ceph not installed, agent disabled); nothing is missing.
    NotApplicable {
        /// Why it does not apply.
        reason: ReadFailure,
        /// Human-readable detail, free of secrets.
        message: String,
    },
    /// Could not be read: data in this scope is unknown, not absent.
    Failed {
        /// Machine-readable reason.
        reason: ReadFailure,
        /// Human-readable detail, free of secrets.
        message: String,
    },
}

/// Why a part could not be read (or does not apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReadFailure {
    /// 401: the credentials were rejected.
    Unauthorized,
    /// 403: a privilege is missing.
    Forbidden,
    /// The node is offline.
    NodeOffline,
    /// The QEMU guest agent is not running or not installed.
    AgentNotRunning,
    /// The QEMU guest agent is disabled in the VM config.
    AgentDisabled,
    /// The guest is not running, so it has no runtime addresses.
    GuestNotRunning,
    /// Ceph is not installed or not initialised.
    CephNotInstalled,
    /// The request timed out.
    Timeout,
    /// Connection or TLS error.
    Connection,
    /// PVE answered with a server error.
    ServerError,
    /// The answer could not be decoded.
    InvalidResponse,
}

impl ReadFailure {
    /// Stable name used as a condition reason, Event reason and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NodeOffline => "NodeOffline",
            Self::AgentNotRunning => "AgentNotRunning",
            Self::AgentDisabled => "AgentDisabled",
            Self::GuestNotRunning => "GuestNotRunning",
            Self::CephNotInstalled => "CephNotInstalled",
            Self::Timeout => "Timeout",
            Self::Connection => "Connection",
            Self::ServerError => "ServerError",
            Self::InvalidResponse => "InvalidResponse",
        }
    }
}

impl Completeness {
    /// Records the outcome of one part.
    pub fn record(&mut self, scope: ReadScope, outcome: ReadOutcome) {
        self.parts.push(ReadPart { scope, outcome });
    }

    /// The outcome recorded for a scope, if it was attempted.
    pub fn outcome(&self, scope: &ReadScope) -> Option<&ReadOutcome> {
        self.parts
            .iter()
            .find(|p| &p.scope == scope)
            .map(|p| &p.outcome)
    }

    /// True when the scope was attempted and did not fail.
    pub fn is_complete(&self, scope: &ReadScope) -> bool {
        matches!(
            self.outcome(scope),
            Some(ReadOutcome::Complete | ReadOutcome::NotApplicable { .. })
        )
    }

    /// The parts that failed.
    pub fn failures(&self) -> impl Iterator<Item = &ReadPart> {
        self.parts
            .iter()
            .filter(|p| matches!(p.outcome, ReadOutcome::Failed { .. }))
    }

    /// True when nothing failed.
    pub fn all_complete(&self) -> bool {
        self.failures().next().is_none()
    }
}

impl Inventory {
    /// The Proxmox cluster as the owner mark names it: its corosync name, or for a
    /// standalone node that node's name.
    pub fn pve_identity(&self) -> Option<String> {
        self.cluster
            .name
            .clone()
            .or_else(|| match self.nodes.as_slice() {
                [only] => Some(only.name.clone()),
                _ => None,
            })
    }

    /// True when the set of guests is known for every node, so a guest absent
    /// from this inventory really is gone (guests migrate between nodes, so one
    /// failed node list makes every absence uncertain).
    pub fn guest_set_complete(&self) -> bool {
        self.completeness.is_complete(&ReadScope::ClusterStatus)
            && !self.nodes.is_empty()
            && self.nodes.iter().all(|n| {
                self.completeness
                    .is_complete(&ReadScope::NodeGuests(n.name.clone()))
            })
    }

    /// True unless the permission preflight ran and found that the token cannot see
    /// everything (then an object missing from PVE's answers may only be hidden, and
    /// pruning must not act). An inventory read without the preflight counts as clean.
    pub fn permissions_clean(&self) -> bool {
        matches!(
            self.completeness.outcome(&ReadScope::Permissions),
            None | Some(ReadOutcome::Complete)
        )
    }

    /// True when the set of nodes is known.
    pub fn node_set_complete(&self) -> bool {
        self.completeness.is_complete(&ReadScope::ClusterStatus) && !self.nodes.is_empty()
    }
}

/// Inventory counts, as shown in the status summary and the `sync` output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryCounts {
    /// Nodes.
    pub nodes: usize,
    /// Nodes online.
    pub nodes_online: usize,
    /// QEMU VMs, templates excluded.
    pub vms: usize,
    /// LXC containers, templates excluded.
    pub containers: usize,
    /// Templates (QEMU and LXC).
    pub templates: usize,
    /// Node interfaces plus guest NICs.
    pub interfaces: usize,
    /// Node addresses plus guest addresses.
    pub ip_addresses: usize,
    /// Guest disks plus node physical disks.
    pub disks: usize,
    /// Distinct storage pools.
    pub storage_pools: usize,
}

impl Inventory {
    /// Counts of what was read.
    pub fn counts(&self) -> InventoryCounts {
        let non_template = |kind: GuestKind| {
            self.guests
                .iter()
                .filter(|g| g.kind == kind && !g.template)
                .count()
        };
        let mut pools: Vec<&str> = self.storage.iter().map(|s| s.name.as_str()).collect();
        pools.sort_unstable();
        pools.dedup();
        InventoryCounts {
            nodes: self.nodes.len(),
            nodes_online: self.nodes.iter().filter(|n| n.online).count(),
            vms: non_template(GuestKind::Qemu),
            containers: non_template(GuestKind::Lxc),
            templates: self.guests.iter().filter(|g| g.template).count(),
            interfaces: self.nodes.iter().map(|n| n.interfaces.len()).sum::<usize>()
                + self.guests.iter().map(|g| g.nics.len()).sum::<usize>(),
            ip_addresses: self
                .nodes
                .iter()
                .flat_map(|n| &n.interfaces)
                .map(|i| usize::from(i.cidr.is_some()) + usize::from(i.cidr6.is_some()))
                .sum::<usize>()
                + self.guests.iter().map(|g| g.addresses.len()).sum::<usize>(),
            disks: self.nodes.iter().map(|n| n.disks.len()).sum::<usize>()
                + self.guests.iter().map(|g| g.disks.len()).sum::<usize>(),
            storage_pools: pools.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            online: true,
            ..Default::default()
        }
    }

    #[test]
    fn guest_set_is_incomplete_when_one_node_list_failed() {
        let mut inv = Inventory {
            nodes: vec![node("pve1"), node("pve2")],
            ..Default::default()
        };
        inv.completeness
            .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        inv.completeness
            .record(ReadScope::NodeGuests("pve1".into()), ReadOutcome::Complete);
        assert!(!inv.guest_set_complete(), "pve2 was never read");
        inv.completeness.record(
            ReadScope::NodeGuests("pve2".into()),
            ReadOutcome::Failed {
                reason: ReadFailure::NodeOffline,
                message: "node pve2 is offline".into(),
            },
        );
        assert!(!inv.guest_set_complete());
        assert_eq!(inv.completeness.failures().count(), 1);
    }

    #[test]
    fn guest_set_is_complete_when_every_node_list_was_read() {
        let mut inv = Inventory {
            nodes: vec![node("pve1")],
            ..Default::default()
        };
        inv.completeness
            .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        inv.completeness
            .record(ReadScope::NodeGuests("pve1".into()), ReadOutcome::Complete);
        assert!(inv.guest_set_complete());
        assert!(inv.node_set_complete());
    }

    #[test]
    fn counts_split_templates_from_guests() {
        let guest = |vmid, kind, template| Guest {
            vmid,
            kind,
            template,
            nics: vec![GuestNic::default()],
            ..Default::default()
        };
        let inv = Inventory {
            nodes: vec![node("pve1")],
            guests: vec![
                guest(100, GuestKind::Qemu, false),
                guest(101, GuestKind::Qemu, true),
                guest(200, GuestKind::Lxc, false),
            ],
            ..Default::default()
        };
        let c = inv.counts();
        assert_eq!((c.vms, c.containers, c.templates), (1, 1, 1));
        assert_eq!(c.interfaces, 3);
        assert_eq!(c.nodes_online, 1);
    }

    #[test]
    fn empty_node_list_never_counts_as_complete() {
        let mut inv = Inventory::default();
        inv.completeness
            .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        assert!(!inv.guest_set_complete());
        assert!(!inv.node_set_complete());
    }
}
