//! The `ProxmoxCluster` resource: one Proxmox VE cluster kept in sync with NetBox.

// Several `printcolumn(...)` entries legitimately repeat the same keys.
#![allow(clippy::duplicated_attributes)]

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::facts::NodeHardware;
use super::provisioning::{
    ProvisioningSpec, ProvisioningStatus, SHUTDOWN_TIMEOUT_BOUNDS, TASK_TIMEOUT_BOUNDS,
};
use super::{SecretKeyRef, SecretRef, TlsSpec};

/// Pattern of a Go-style duration such as `30s`, `15m`, `1h30m`, `1.5h`: one or more numbers,
/// each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), no sign.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$";

/// Longest text accepted in a duration field (the parser and the CRD agree on it).
pub const DURATION_MAX_LENGTH: usize = 32;

/// Set to `"true"` on a ProxmoxCluster to take over the NetBox objects it marked earlier:
/// with its `namespace/name` mark of versions before 0.2, or for another Proxmox cluster
/// (a standalone node that joined a cluster, endpoints pointed elsewhere). Only this
/// resource's own marks qualify, never another resource's or installation's.
pub const ADOPT_PREVIOUS_OWNER_ANNOTATION: &str = "proxmox-netbox.io/adopt-previous-owner";

/// Bounds of one duration field of the spec. The CRD's CEL rule ([`DurationBounds::rule`]) and
/// the operator's own parser (`config::bounded_duration`) both read them, so an object the API
/// server accepts is one the operator can use, and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationBounds {
    /// Path of the field in the resource, as error messages name it (`spec.sync.interval`).
    pub field: &'static str,
    /// Shortest accepted value, in whole seconds.
    pub min_secs: u64,
    /// Longest accepted value, in whole seconds.
    pub max_secs: u64,
}

impl DurationBounds {
    /// Shortest accepted value.
    pub const fn min(&self) -> Duration {
        Duration::from_secs(self.min_secs)
    }

    /// Longest accepted value.
    pub const fn max(&self) -> Duration {
        Duration::from_secs(self.max_secs)
    }

    /// The shortest accepted value as a Go duration (`30s`).
    pub fn min_text(&self) -> String {
        go_duration_text(self.min_secs)
    }

    /// The longest accepted value as a Go duration (`720h`).
    pub fn max_text(&self) -> String {
        go_duration_text(self.max_secs)
    }

    /// The CEL rule the CRD puts on the field. It names the field in its message: a value that
    /// CEL's `duration()` itself refuses (out of range) is reported with this message too.
    pub fn rule(&self) -> Rule {
        let max = format!("duration(self) <= duration('{}')", self.max_text());
        let (rule, message) = if self.min_secs == 0 {
            (
                max,
                format!("{} must be at most {}", self.field, self.max_text()),
            )
        } else {
            (
                format!("duration(self) >= duration('{}') && {max}", self.min_text()),
                format!(
                    "{} must be between {} and {}",
                    self.field,
                    self.min_text(),
                    self.max_text()
                ),
            )
        };
        Rule::new(rule).message(Message::Message(message))
    }
}

/// Whole seconds as the shortest Go duration text: `720h`, `10m`, `30s`, `0s`.
fn go_duration_text(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `spec.sync.interval`: 30 s to 30 days.
pub const SYNC_INTERVAL_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.sync.interval",
    min_secs: 30,
    max_secs: 720 * 3600,
};
/// `spec.sync.watchInterval`: 0 (off) to 1 h; a value other than 0 is at least
/// [`MIN_WATCH_INTERVAL_SECS`].
pub const WATCH_INTERVAL_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.sync.watchInterval",
    min_secs: 0,
    max_secs: 3600,
};
/// Shortest `spec.sync.watchInterval` other than 0 (a poll is a request to PVE).
pub const MIN_WATCH_INTERVAL_SECS: u64 = 5;
/// `spec.sync.prune.gracePeriod`: 0 (delete in the sync that finds it gone) to 30 days.
pub const PRUNE_GRACE_PERIOD_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.sync.prune.gracePeriod",
    min_secs: 0,
    max_secs: 720 * 3600,
};
/// `spec.proxmox.requestTimeout`: 1 s to 1 h.
pub const PVE_REQUEST_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.proxmox.requestTimeout",
    min_secs: 1,
    max_secs: 3600,
};
/// `spec.netbox.requestTimeout`: 1 s to 1 h.
pub const NETBOX_REQUEST_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.netbox.requestTimeout",
    min_secs: 1,
    max_secs: 3600,
};
/// `spec.hardwareDiscovery.connectTimeout`: 1 s to 10 min.
pub const SSH_CONNECT_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.hardwareDiscovery.connectTimeout",
    min_secs: 1,
    max_secs: 600,
};
/// `spec.hardwareDiscovery.commandTimeout`: 1 s to 1 h.
pub const SSH_COMMAND_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.hardwareDiscovery.commandTimeout",
    min_secs: 1,
    max_secs: 3600,
};

/// Every duration field of the spec with its bounds.
pub const DURATION_FIELDS: [DurationBounds; 9] = [
    PVE_REQUEST_TIMEOUT_BOUNDS,
    NETBOX_REQUEST_TIMEOUT_BOUNDS,
    SYNC_INTERVAL_BOUNDS,
    WATCH_INTERVAL_BOUNDS,
    PRUNE_GRACE_PERIOD_BOUNDS,
    SSH_CONNECT_TIMEOUT_BOUNDS,
    SSH_COMMAND_TIMEOUT_BOUNDS,
    TASK_TIMEOUT_BOUNDS,
    SHUTDOWN_TIMEOUT_BOUNDS,
];

/// Longest name or slug of a NetBox object set from the spec (NetBox's own limit is 100).
pub const NETBOX_NAME_MAX_LENGTH: usize = 100;

/// A Proxmox VE cluster whose inventory the operator keeps in NetBox.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "proxmox-netbox.io",
    version = "v1alpha1",
    kind = "ProxmoxCluster",
    namespaced,
    status = "ProxmoxClusterStatus",
    shortname = "pxc",
    category = "proxmox-netbox",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.summary.nodes"),
    printcolumn(name = "VMs", type_ = "integer", json_path = ".status.summary.vms"),
    printcolumn(
        name = "Containers",
        type_ = "integer",
        json_path = ".status.summary.containers",
        priority = 1
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProxmoxClusterSpec {
    /// How to reach the Proxmox VE API.
    pub proxmox: ProxmoxSpec,
    /// Where and how to write the inventory in NetBox.
    pub netbox: NetBoxSpec,
    /// When and how to sync.
    #[serde(default)]
    pub sync: SyncSpec,
    /// Optional hardware discovery over SSH (dmidecode, ip, ethtool) using NodeSSHCredentials.
    #[serde(default)]
    pub hardware_discovery: HardwareDiscoverySpec,
    /// What happens in NetBox when this resource is deleted: `Orphan` (default) leaves every
    /// NetBox object as it is; `Delete` removes the objects this operator owns for this cluster.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Optional provisioning: VMs described in NetBox (status `staged`) created in Proxmox
    /// VE, and retired from it (docs/provisioning.md). Off by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub provisioning: ProvisioningSpec,
}

fn is_default(p: &ProvisioningSpec) -> bool {
    *p == ProvisioningSpec::default()
}

/// Connection to the Proxmox VE API.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxmoxSpec {
    /// API endpoints (`https://host:8006`), tried in order: the next one is used when one is down.
    /// https only, without user name, query or fragment; each host, and every address it
    /// resolves to, must pass the operator's endpoint guard (see `netbox.url`).
    #[schemars(
        length(min = 1, max = 16),
        inner(length(max = 512), pattern(r"^https://[^\s/]+(:[0-9]+)?/?$"))
    )]
    pub endpoints: Vec<String>,
    /// Secret with either keys `tokenId` (`user@realm!name`) and `tokenSecret` (API token, preferred),
    /// or keys `username` (`user@realm`) and `password` (ticket authentication).
    pub credentials_secret_ref: SecretRef,
    /// TLS verification of the PVE API.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Timeout of one API request (Go duration, default `30s`, from `1s` to `1h`).
    #[serde(default = "default_request_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = PVE_REQUEST_TIMEOUT_BOUNDS.rule())]
    pub request_timeout: String,
    /// Maximum number of PVE API requests in flight for this cluster.
    #[serde(default = "default_pve_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrency: i32,
    /// Read guest IP addresses from the QEMU guest agent (needs `VM.GuestAgent.Audit` on PVE 9).
    #[serde(default = "default_true")]
    pub read_guest_agent: bool,
    /// Read Ceph status, OSDs and pools when Ceph is installed.
    #[serde(default = "default_true")]
    pub read_ceph: bool,
}

/// Target NetBox and where the objects go.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.url.startsWith('https://') || (has(self.allowInsecureHttp) && self.allowInsecureHttp)").message("spec.netbox.url must use https unless spec.netbox.allowInsecureHttp is true"))]
#[serde(rename_all = "camelCase")]
pub struct NetBoxSpec {
    /// Base URL of NetBox (`https://netbox.example.com`), without `/api`, user name,
    /// password, query or fragment. Plain `http` only with `allowInsecureHttp: true`. The
    /// host, and every address it resolves to, must pass the operator's endpoint guard
    /// (loopback, link-local and cloud metadata addresses are refused unless the operator
    /// runs with `--allow-endpoint-cidr`; see docs/security.md).
    #[schemars(length(max = 2048), pattern(r"^https?://[^\s]+$"))]
    pub url: String,
    /// Allow a plain `http://` URL: the NetBox token then crosses the network unencrypted.
    /// Default false (https only). For a NetBox reached over loopback or a trusted link.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Secret key holding a NetBox API token with write permission (`nbt_...` v2 token or a v1 token).
    pub token_secret_ref: SecretKeyRef,
    /// TLS verification of NetBox.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Timeout of one NetBox request (Go duration, default `60s`, from `1s` to `1h`).
    #[serde(default = "default_netbox_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = NETBOX_REQUEST_TIMEOUT_BOUNDS.rule())]
    pub request_timeout: String,
    /// Maximum number of NetBox requests in flight.
    #[serde(default = "default_netbox_in_flight")]
    #[schemars(range(min = 1, max = 16))]
    pub max_in_flight: i32,
    /// Slug or name of the NetBox site for nodes and the cluster. Created if missing.
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub site: String,
    /// Slug or name of an existing NetBox tenant for the cluster, nodes and guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub tenant: Option<String>,
    /// Name of a NetBox VRF for the IP addresses of this cluster's nodes and guests. Created
    /// if missing (with unique addresses enforced inside it). Give each Proxmox cluster its
    /// own VRF when their private address ranges overlap: in the global table, with NetBox's
    /// `ENFORCE_GLOBAL_UNIQUE`, an address another cluster already uses is refused and
    /// reported as a collision. Default: the global table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub vrf: Option<String>,
    /// Name of the NetBox cluster. Defaults to the PVE cluster name, else this resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub cluster_name: Option<String>,
    /// Name of the NetBox cluster group. Created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub cluster_group: Option<String>,
    /// Name of the NetBox cluster type. Created if missing.
    #[serde(default = "default_cluster_type")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub cluster_type: String,
    /// Name of the device role for PVE nodes. Created if missing.
    #[serde(default = "default_device_role")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub device_role: String,
    /// Roles for guests. Created if missing.
    #[serde(default)]
    pub vm_roles: VmRolesSpec,
    /// Extra tags put on every object this operator creates (at most 32). Created if missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = NETBOX_NAME_MAX_LENGTH)))]
    pub tags: Vec<String>,
    /// Take over existing objects that were not created by this operator but have the same
    /// identity (for example a node documented by hand). Off by default: such objects are
    /// reported and left untouched.
    #[serde(default)]
    pub adopt_existing: bool,
    /// Set each VM's description from the first line of its Proxmox VE notes (default
    /// true). When false the operator never writes VM descriptions, so people can keep
    /// their own.
    #[serde(default = "default_true")]
    pub description_from_notes: bool,
    /// When a guest NIC has a VLAN tag (`tag=` in PVE) and no NetBox VLAN with that VID
    /// exists in the site (or globally, unambiguously): `Ignore` (default) leaves the
    /// interface without an untagged VLAN; `Create` creates the VLAN in the site (owned and
    /// marked like every object of the operator, never pruned).
    #[serde(default)]
    pub missing_vlans: MissingVlanPolicy,
}

/// What to do about a guest NIC's VLAN tag that has no NetBox VLAN.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissingVlanPolicy {
    /// Leave the interface without an untagged VLAN.
    #[default]
    Ignore,
    /// Create the VLAN in the site.
    Create,
}

/// NetBox roles given to guests by kind.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRolesSpec {
    /// Role of QEMU virtual machines.
    #[serde(default = "default_qemu_role")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub qemu: String,
    /// Role of LXC containers.
    #[serde(default = "default_lxc_role")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub lxc: String,
    /// Role of templates (used when `sync.templates` is `Sync`).
    #[serde(default = "default_template_role")]
    #[schemars(length(min = 1, max = NETBOX_NAME_MAX_LENGTH))]
    pub template: String,
}

impl Default for VmRolesSpec {
    fn default() -> Self {
        Self {
            qemu: default_qemu_role(),
            lxc: default_lxc_role(),
            template: default_template_role(),
        }
    }
}

/// Sync policy.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// Time between two syncs (Go duration, default `15m`, from `30s` to `720h`). A small
    /// random jitter is added.
    #[serde(default = "default_interval")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = SYNC_INTERVAL_BOUNDS.rule())]
    pub interval: String,
    /// Time between two polls of Proxmox for changes (Go duration, default `15s`, `0s`
    /// turns polling off; from `5s` to `1h`). A poll is one request to
    /// `/cluster/resources`; the guests created, destroyed, migrated or changed since the
    /// last one are read again and written to NetBox at once. The full sync at `interval`
    /// stays the safety net (it also sees what a poll cannot, such as a new NIC).
    #[serde(default = "default_watch_interval")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = WATCH_INTERVAL_BOUNDS.rule())]
    pub watch_interval: String,
    /// `Sync` writes to NetBox; `DryRun` computes and reports the plan and writes nothing.
    #[serde(default)]
    pub mode: SyncMode,
    /// Stop syncing. Nothing is read or written while true.
    #[serde(default)]
    pub suspend: bool,
    /// Which kinds of NetBox objects to sync. Default: all.
    #[serde(default = "SyncKind::all")]
    #[schemars(length(min = 1, max = 6))]
    pub kinds: Vec<SyncKind>,
    /// Templates: `Skip` (default) or `Sync` (with the template role).
    #[serde(default)]
    pub templates: TemplatePolicy,
    /// Removal of NetBox objects whose Proxmox counterpart is gone.
    #[serde(default)]
    pub prune: PruneSpec,
}

impl Default for SyncSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            watch_interval: default_watch_interval(),
            mode: SyncMode::default(),
            suspend: false,
            kinds: SyncKind::all(),
            templates: TemplatePolicy::default(),
            prune: PruneSpec::default(),
        }
    }
}

/// Whether the sync writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SyncMode {
    /// Write changes to NetBox.
    #[default]
    Sync,
    /// Compute and report the plan; write nothing.
    DryRun,
}

/// A kind of NetBox object the operator can sync.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum SyncKind {
    /// PVE nodes as `dcim.Device`.
    Nodes,
    /// Node network interfaces as `dcim.Interface` (with MAC addresses).
    NodeInterfaces,
    /// QEMU VMs and LXC containers as `virtualization.VirtualMachine`.
    VirtualMachines,
    /// Guest NICs as `virtualization.VMInterface` (with MAC addresses).
    VmInterfaces,
    /// Guest disks as `virtualization.VirtualDisk`.
    VirtualDisks,
    /// Node and guest addresses as `ipam.IPAddress`.
    IpAddresses,
}

impl SyncKind {
    /// Every kind, the default.
    pub fn all() -> Vec<SyncKind> {
        vec![
            Self::Nodes,
            Self::NodeInterfaces,
            Self::VirtualMachines,
            Self::VmInterfaces,
            Self::VirtualDisks,
            Self::IpAddresses,
        ]
    }
}

/// What to do with PVE templates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TemplatePolicy {
    /// Leave templates out of NetBox.
    #[default]
    Skip,
    /// Sync templates as virtual machines with the template role.
    Sync,
}

/// Pruning of owned NetBox objects whose Proxmox counterpart is gone.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneSpec {
    /// Off by default. When on, a missing object is first marked stale and deleted after the
    /// grace period, and only when the read of its scope was complete.
    #[serde(default)]
    pub enabled: bool,
    /// How long an object stays marked stale before it is deleted (Go duration, default `24h`,
    /// at most `720h`; `0s` deletes it in the sync that finds it gone, without a mark).
    #[serde(default = "default_grace_period")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = PRUNE_GRACE_PERIOD_BOUNDS.rule())]
    pub grace_period: String,
    /// Safety limit: a sync that finds more than this percentage of the owned nodes or
    /// guests gone from Proxmox (a token that lost its permissions sees fewer guests)
    /// marks none of them stale and deletes none, and says so (`PruneBlocked`). One object
    /// is always allowed. Default 10.
    #[serde(default = "default_prune_max_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_percent: i32,
}

fn default_prune_max_percent() -> i32 {
    10
}

impl Default for PruneSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            grace_period: default_grace_period(),
            max_percent: default_prune_max_percent(),
        }
    }
}

/// Hardware discovery over SSH.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDiscoverySpec {
    /// Off by default. When on, each node with a NodeSSHCredential is visited over SSH, one
    /// node after another.
    #[serde(default)]
    pub enabled: bool,
    /// Timeout of the SSH connection and authentication (Go duration, default `10s`, from `1s`
    /// to `10m`).
    #[serde(default = "default_connect_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = SSH_CONNECT_TIMEOUT_BOUNDS.rule())]
    pub connect_timeout: String,
    /// Timeout of each remote command (Go duration, default `30s`, from `1s` to `1h`).
    #[serde(default = "default_command_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = SSH_COMMAND_TIMEOUT_BOUNDS.rule())]
    pub command_timeout: String,
}

impl Default for HardwareDiscoverySpec {
    fn default() -> Self {
        Self {
            enabled: false,
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
        }
    }
}

/// What happens in NetBox when the ProxmoxCluster is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave NetBox as it is.
    #[default]
    Orphan,
    /// Delete the NetBox objects this operator owns for this cluster.
    Delete,
}

/// Observed state of a ProxmoxCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxmoxClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (kstatus summary), `ProxmoxReachable`, `HardwareDiscovered`, `NetBoxSynced`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the last sync attempt finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// When the last fully successful sync finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_sync_time: Option<String>,
    /// Value of the `proxmox-netbox.io/resync` annotation last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync_request: Option<String>,
    /// Proxmox VE version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pve_version: Option<String>,
    /// Proxmox VE cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pve_cluster_name: Option<String>,
    /// Inventory counts from the last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<InventorySummary>,
    /// Outcome of the last NetBox sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSummary>,
    /// Parts of the last Proxmox read that failed (at most 50 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_failures: Vec<ReadFailureEntry>,
    /// Per-node facts and warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatusEntry>,
    /// Storage pools with capacity and usage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<StorageStatusEntry>,
    /// Ceph health, when Ceph is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephStatusEntry>,
    /// The last guests a poll found changed in Proxmox between full syncs
    /// (`spec.sync.watchInterval`), and when their NetBox sync ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<LastChangeEntry>,
    /// What provisioning (`spec.provisioning`) found and did in the last full pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningStatus>,
}

/// Guests a poll found changed, synced to NetBox at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastChangeEntry {
    /// When the poll found them (RFC 3339).
    pub detected_time: String,
    /// When their NetBox sync ended (RFC 3339).
    pub applied_time: String,
    /// Guests created.
    pub created: i64,
    /// Guests destroyed.
    pub destroyed: i64,
    /// Guests on another node.
    pub migrated: i64,
    /// Guests with another name, power state, template flag, tags, pool, memory, vCPUs or
    /// disk size.
    pub changed: i64,
}

/// Inventory counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySummary {
    /// PVE nodes.
    pub nodes: i64,
    /// Nodes online.
    pub nodes_online: i64,
    /// QEMU VMs (templates excluded).
    pub vms: i64,
    /// LXC containers (templates excluded).
    pub containers: i64,
    /// Templates.
    pub templates: i64,
    /// Network interfaces (node and guest).
    pub interfaces: i64,
    /// IP addresses (node and guest).
    pub ip_addresses: i64,
    /// Disks (guest disks and node physical disks).
    pub disks: i64,
    /// Storage pools.
    pub storage_pools: i64,
}

/// Outcome of the last NetBox sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSummary {
    /// `Sync` or `DryRun`.
    pub mode: String,
    /// Objects created (or that would be, in dry-run).
    pub created: i64,
    /// Objects updated.
    pub updated: i64,
    /// Objects already right.
    pub unchanged: i64,
    /// Objects deleted.
    pub deleted: i64,
    /// Objects marked stale (pruning grace period running).
    pub stale: i64,
    /// Objects that failed.
    pub failed: i64,
    /// Unowned NetBox objects in the way, left untouched.
    pub collisions: i64,
    /// NetBox read requests.
    pub read_requests: i64,
    /// NetBox write requests.
    pub write_requests: i64,
    /// Why pruning was refused this sync (too many owned objects gone at once), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_blocked: Option<String>,
    /// First errors (at most 20), each naming the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One part of the Proxmox read that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadFailureEntry {
    /// What was read (`node pve2 guests`, `vm 101 addresses`, ...).
    pub scope: String,
    /// Machine-readable reason (`NodeOffline`, `Forbidden`, `AgentNotRunning`, ...).
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// Per-node state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusEntry {
    /// PVE node name.
    pub name: String,
    /// Online according to the cluster.
    pub online: bool,
    /// Address used for the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Hardware facts from the last successful discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<NodeHardware>,
    /// Warning of the last discovery, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<NodeWarning>,
    /// When hardware discovery last succeeded on this node (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_discovery_time: Option<String>,
}

/// A hardware-discovery warning for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeWarning {
    /// `NoAddress`, `NoCredential`, `CredentialInvalid`, `Timeout`, `AuthFailed`,
    /// `HostKeyMismatch`, `CommandFailed`, `EndpointRefused` or `Failed`.
    pub code: String,
    /// Detail, free of secrets.
    pub message: String,
}

/// A storage pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatusEntry {
    /// Storage id.
    pub name: String,
    /// Node that reported it (for shared storage, the first node).
    pub node: String,
    /// Storage type.
    #[serde(rename = "type")]
    pub storage_type: String,
    /// Shared between nodes.
    pub shared: bool,
    /// Total bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Used bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<i64>,
}

/// Ceph health.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CephStatusEntry {
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`.
    pub health: String,
    /// Monitors.
    pub monitors: i64,
    /// OSDs in total.
    pub osds_total: i64,
    /// OSDs up.
    pub osds_up: i64,
    /// Pools.
    pub pools: i64,
}

fn default_true() -> bool {
    true
}
fn default_request_timeout() -> String {
    "30s".into()
}
fn default_netbox_timeout() -> String {
    "60s".into()
}
fn default_pve_concurrency() -> i32 {
    8
}
fn default_netbox_in_flight() -> i32 {
    4
}
fn default_cluster_type() -> String {
    "Proxmox VE".into()
}
fn default_device_role() -> String {
    "Proxmox Node".into()
}
fn default_qemu_role() -> String {
    "Virtual Machine".into()
}
fn default_lxc_role() -> String {
    "Container".into()
}
fn default_template_role() -> String {
    "Template".into()
}
fn default_interval() -> String {
    "15m".into()
}
fn default_watch_interval() -> String {
    "15s".into()
}
fn default_grace_period() -> String {
    "24h".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_command_timeout() -> String {
    "30s".into()
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use kube::core::cel::Validator;
    use serde_json::{Value, json};

    use super::*;

    fn cluster(netbox: Value) -> Value {
        let mut nb = json!({"tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"});
        for (k, v) in netbox.as_object().unwrap() {
            nb[k] = v.clone();
        }
        json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab", "namespace": "infra"},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1.example.com:8006"],
                            "credentialsSecretRef": {"name": "pve"}},
                "netbox": nb
            }
        })
    }

    #[test]
    fn plain_http_netbox_needs_allow_insecure_http() {
        let crd = ProxmoxCluster::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let v = Validator::new();
        for ok in [
            json!({"url": "https://netbox.example.com"}),
            json!({"url": "https://netbox.example.com", "allowInsecureHttp": false}),
            json!({"url": "http://netbox.internal:8000", "allowInsecureHttp": true}),
        ] {
            assert!(
                v.validate(&schema, &cluster(ok.clone()), None).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            json!({"url": "http://netbox.internal:8000"}),
            json!({"url": "http://netbox.internal:8000", "allowInsecureHttp": false}),
        ] {
            let err = v
                .validate(&schema, &cluster(bad.clone()), None)
                .unwrap_err();
            assert!(
                format!("{err:?}").contains(
                    "spec.netbox.url must use https unless spec.netbox.allowInsecureHttp is true"
                ),
                "{bad}: {err:?}"
            );
        }
        let spec: NetBoxSpec =
            serde_json::from_value(cluster(json!({"url": "https://nb"}))["spec"]["netbox"].clone())
                .unwrap();
        assert!(!spec.allow_insecure_http, "https only by default");
    }
}
