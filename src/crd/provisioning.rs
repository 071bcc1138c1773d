//! `spec.provisioning` of a ProxmoxCluster: virtual machines described in NetBox are
//! created in Proxmox VE (cloned from a template) and retired from it (docs/provisioning.md).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::{DURATION_MAX_LENGTH, DURATION_PATTERN, DurationBounds};
use super::{SecretKeyRef, SecretRef};

/// `spec.provisioning.taskTimeout`: 10 s to 2 h.
pub const TASK_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.provisioning.taskTimeout",
    min_secs: 10,
    max_secs: 2 * 3600,
};
/// `spec.provisioning.shutdownTimeout`: 10 s to 1 h.
pub const SHUTDOWN_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    field: "spec.provisioning.shutdownTimeout",
    min_secs: 10,
    max_secs: 3600,
};

/// Pattern of a Proxmox VE node name.
pub const NODE_NAME_PATTERN: &str = r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$";
/// Pattern of a Proxmox VE storage or pool id.
pub const STORAGE_ID_PATTERN: &str = r"^[a-zA-Z][a-zA-Z0-9._-]*$";
/// Longest list of DNS servers cloud-init takes from the spec.
pub const MAX_NAMESERVERS: usize = 3;

/// Provisioning: NetBox virtual machines in this cluster with status `staged` that match
/// the selector are cloned from a template in Proxmox VE, configured from their NetBox
/// record (vCPUs, memory, interfaces, IP addresses, disk sizes) and handed over to the
/// regular sync; with `retire.enabled`, the VMs it provisioned that are set to
/// `decommissioning` are shut down and destroyed. Off by default.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.enabled) && self.enabled) || has(self.storage)").message(Message::Message("spec.provisioning.storage is required when spec.provisioning.enabled is true".into())))]
#[x_kube(validation = Rule::new("!(has(self.enabled) && self.enabled) || (has(self.selector) && (has(self.selector.tag) || has(self.selector.role)))").message(Message::Message("spec.provisioning.selector must name a tag or a role when spec.provisioning.enabled is true".into())))]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningSpec {
    /// Turn provisioning on. Off by default: no NetBox record is read for it and nothing is
    /// created or destroyed in Proxmox VE.
    #[serde(default)]
    pub enabled: bool,
    /// `Provision` carries out the plan; `DryRun` reports it in `status.provisioning.plan`
    /// and changes nothing on either side (so does `spec.sync.mode: DryRun`).
    #[serde(default)]
    pub mode: ProvisioningMode,
    /// A Secret with a second PVE API token (`tokenId`, `tokenSecret`) or user
    /// (`username`, `password`) that holds the provisioning role (docs/provisioning.md).
    /// Without it the token of `spec.proxmox.credentialsSecretRef` is used, and then holds
    /// write privileges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Which staged NetBox VMs of this cluster are provisioned: those with this tag, and/or
    /// this role. At least one must be set.
    #[serde(default)]
    pub selector: ProvisioningSelector,
    /// The template cloned (its name or vmid) when the VM's custom field
    /// `proxmox_template` names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub template: Option<String>,
    /// The node the VM is created on when its custom field `proxmox_target_node` names none.
    /// Default: the template's node. Another node than the template's needs shared storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NODE_NAME_PATTERN))]
    pub node: Option<String>,
    /// Storage of the cloned disks (a full clone). Required when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(STORAGE_ID_PATTERN))]
    pub storage: Option<String>,
    /// Resource pool the new VMs join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(STORAGE_ID_PATTERN))]
    pub pool: Option<String>,
    /// Cloud-init settings of the new VMs (the template needs a cloud-init drive).
    #[serde(default)]
    pub cloud_init: CloudInitSpec,
    /// Network devices added for NetBox interfaces the template has no NIC for.
    #[serde(default)]
    pub network: NetworkDefaults,
    /// Start a VM once it is configured (default true). The VM's boolean custom field
    /// `proxmox_start` overrides it.
    #[serde(default = "default_true")]
    pub start: bool,
    /// Longest wait for one Proxmox VE task (clone, configure, start, destroy; Go duration,
    /// default `10m`, from `10s` to `2h`). A task still running then is left running and
    /// looked at again in the next pass.
    #[serde(default = "default_task_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = TASK_TIMEOUT_BOUNDS.rule())]
    pub task_timeout: String,
    /// How long a retired VM is given to shut down before it is stopped (Go duration,
    /// default `3m`, from `10s` to `1h`).
    #[serde(default = "default_shutdown_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = SHUTDOWN_TIMEOUT_BOUNDS.rule())]
    pub shutdown_timeout: String,
    /// Proxmox VE tasks this cluster's provisioning runs at once (default 2).
    #[serde(default = "default_max_concurrent_tasks")]
    #[schemars(range(min = 1, max = 8))]
    pub max_concurrent_tasks: i32,
    /// Most VMs created in one pass (default 5). When more are selected, none is created
    /// and the status says so: a tag put on many records by mistake creates nothing.
    #[serde(default = "default_max_creates_per_pass")]
    #[schemars(range(min = 1, max = 100))]
    pub max_creates_per_pass: i32,
    /// Retirement of the VMs this operator provisioned.
    #[serde(default)]
    pub retire: RetireSpec,
    /// Keep vCPUs, memory and disk sizes of provisioned VMs following NetBox: a change in
    /// NetBox is applied in Proxmox VE (disks only grow; vCPUs and memory of a running VM
    /// wait for its next reboot, and `RebootRequired` says so). Default false: Proxmox VE
    /// is the source of these values after the hand-over, as for every synced VM.
    #[serde(default)]
    pub follow_resources: bool,
}

impl Default for ProvisioningSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: ProvisioningMode::default(),
            credentials_secret_ref: None,
            selector: ProvisioningSelector::default(),
            template: None,
            node: None,
            storage: None,
            pool: None,
            cloud_init: CloudInitSpec::default(),
            network: NetworkDefaults::default(),
            start: true,
            task_timeout: default_task_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            max_concurrent_tasks: default_max_concurrent_tasks(),
            max_creates_per_pass: default_max_creates_per_pass(),
            retire: RetireSpec::default(),
            follow_resources: false,
        }
    }
}

/// Whether provisioning changes anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProvisioningMode {
    /// Create, configure, start and retire VMs.
    #[default]
    Provision,
    /// Report what would be done; change nothing.
    DryRun,
}

/// Which staged NetBox VMs are provisioned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningSelector {
    /// Slug or name of a NetBox tag the VM must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub tag: Option<String>,
    /// Slug or name of the NetBox role the VM must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub role: Option<String>,
}

/// Cloud-init settings of new VMs.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSpec {
    /// The user cloud-init creates (`ciuser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(r"^[a-z_][a-z0-9_-]*$"))]
    pub user: Option<String>,
    /// Secret key with the SSH public keys of that user, one OpenSSH key per line. The
    /// Secret needs the label `proxmox-netbox.io/credentials: "true"` like every Secret the
    /// operator reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_keys_secret_ref: Option<SecretKeyRef>,
    /// DNS servers (IP addresses, at most 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), inner(length(min = 2, max = 45)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message(Message::Message("spec.provisioning.cloudInit.nameservers must be IP addresses".into())))]
    pub nameservers: Vec<String>,
    /// DNS search domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub search_domain: Option<String>,
}

/// Network devices added for NetBox interfaces the template has no NIC for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkDefaults {
    /// Bridge of an added NIC (default `vmbr0`).
    #[serde(default = "default_bridge")]
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-zA-Z][a-zA-Z0-9_.-]*$"))]
    pub bridge: String,
    /// Model of an added NIC (default `virtio`).
    #[serde(default)]
    pub model: NicModel,
}

impl Default for NetworkDefaults {
    fn default() -> Self {
        Self {
            bridge: default_bridge(),
            model: NicModel::default(),
        }
    }
}

/// A QEMU NIC model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// Paravirtualized (the default).
    #[default]
    Virtio,
    /// Intel E1000.
    E1000,
    /// VMware vmxnet3.
    Vmxnet3,
    /// Realtek RTL8139.
    Rtl8139,
}

impl NicModel {
    /// PVE's name of the model.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::E1000 => "e1000",
            Self::Vmxnet3 => "vmxnet3",
            Self::Rtl8139 => "rtl8139",
        }
    }
}

/// Retirement of provisioned VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetireSpec {
    /// Destroy, with its disks, a VM this operator provisioned once its NetBox status is
    /// `decommissioning` (default false: such VMs are only reported). A VM with PVE's
    /// protection flag, or one the operator did not provision, is never destroyed.
    #[serde(default)]
    pub enabled: bool,
    /// What becomes of the NetBox record once the VM is destroyed: `Offline` (default)
    /// keeps it with status `offline`, released to people (no longer owned); `Delete`
    /// deletes it with its interfaces, disks and IP addresses.
    #[serde(default)]
    pub record_policy: RetiredRecordPolicy,
}

/// What becomes of a retired VM's NetBox record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetiredRecordPolicy {
    /// Status `offline`, no longer owned by the operator.
    #[default]
    Offline,
    /// Deleted with its interfaces, disks and IP addresses.
    Delete,
}

fn default_true() -> bool {
    true
}
fn default_task_timeout() -> String {
    "10m".into()
}
fn default_shutdown_timeout() -> String {
    "3m".into()
}
fn default_max_concurrent_tasks() -> i32 {
    2
}
fn default_max_creates_per_pass() -> i32 {
    5
}
fn default_bridge() -> String {
    "vmbr0".into()
}

/// What provisioning found and did in the last full pass (`status.provisioning`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningStatus {
    /// `Provision` or `DryRun`.
    pub mode: String,
    /// Counts of the last pass.
    pub counts: ProvisioningCounts,
    /// The VMs provisioning looked at that are not done, or were done in the last pass
    /// (at most 50 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<ProvisionedVmEntry>,
    /// Proxmox VE guests that carry this operator's provisioning mark but that no NetBox
    /// record claims (at most 50 listed). Reported, never destroyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<ProvisioningOrphanEntry>,
    /// In `DryRun`: the steps that would run, one line each (at most 50 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
}

/// Provisioning counts of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningCounts {
    /// NetBox records selected for creation or retirement.
    pub selected: i64,
    /// VMs created and handed over to the sync in this pass.
    pub provisioned: i64,
    /// VMs destroyed in this pass.
    pub retired: i64,
    /// VMs still on their way (a task running, a step left for the next pass).
    pub in_progress: i64,
    /// VMs left with a warning.
    pub warnings: i64,
    /// Guests with the provisioning mark that no record claims.
    pub orphans: i64,
}

/// One VM that provisioning looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedVmEntry {
    /// Id of the NetBox virtual machine.
    pub netbox_id: i64,
    /// Its name.
    pub name: String,
    /// Its vmid in Proxmox VE, once reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<i64>,
    /// Where it is: `Reserved`, `Cloning`, `Configured`, `Running`, `Provisioned`,
    /// `Retiring`, `Retired`, `Skipped`.
    pub phase: String,
    /// What was done to it in the last pass, or is next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<String>,
    /// Why it is not done, when something is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<ProvisioningWarning>,
}

/// A problem with one VM; the others go on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningWarning {
    /// Machine-readable code (`NoTemplate`, `CloneFailed`, `Protected`, ...).
    pub code: String,
    /// Detail, naming the field or object at fault.
    pub message: String,
}

/// A guest with the provisioning mark that no NetBox record claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningOrphanEntry {
    /// Its vmid.
    pub vmid: i64,
    /// Its node.
    pub node: String,
    /// Its name.
    pub name: String,
    /// The NetBox VM id its mark names.
    pub netbox_id: i64,
}
