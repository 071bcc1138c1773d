//! What provisioning does and how, resolved once from `spec.provisioning`.

use std::time::Duration;

use crate::crd::RetiredRecordPolicy;

/// Which staged NetBox records are provisioned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Slug or name of a tag the record must carry.
    pub tag: Option<String>,
    /// Slug or name of the role the record must have.
    pub role: Option<String>,
}

/// Cloud-init settings of new VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudInit {
    /// `ciuser`.
    pub user: Option<String>,
    /// SSH public keys, one per line, checked at resolve time.
    pub ssh_keys: Option<String>,
    /// DNS servers.
    pub nameservers: Vec<String>,
    /// DNS search domain.
    pub search_domain: Option<String>,
}

/// The resolved `spec.provisioning`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionSettings {
    /// Plan only: nothing is written to PVE or NetBox.
    pub dry_run: bool,
    /// Which staged records are provisioned.
    pub selector: Selector,
    /// Default template (name or vmid).
    pub template: Option<String>,
    /// Default target node; `None`: the template's node.
    pub node: Option<String>,
    /// Storage of the cloned disks.
    pub storage: String,
    /// Pool the new VMs join.
    pub pool: Option<String>,
    /// Cloud-init settings.
    pub cloud_init: CloudInit,
    /// Bridge of NICs added for NetBox interfaces the template lacks.
    pub nic_bridge: String,
    /// Model of those NICs.
    pub nic_model: &'static str,
    /// Start VMs once configured (unless the record says otherwise).
    pub start: bool,
    /// Longest wait for one PVE task.
    pub task_timeout: Duration,
    /// How long a retired VM may take to shut down before it is stopped.
    pub shutdown_timeout: Duration,
    /// PVE tasks at once.
    pub max_concurrent_tasks: usize,
    /// Most VMs created in one pass.
    pub max_creates_per_pass: usize,
    /// Retirement, when enabled, and what becomes of the record.
    pub retire: Option<RetiredRecordPolicy>,
    /// vCPUs, memory and disk sizes of provisioned VMs follow NetBox.
    pub follow_resources: bool,
}

impl ProvisionSettings {
    /// `Provision` or `DryRun`, as the status shows the mode.
    pub fn mode(&self) -> &'static str {
        if self.dry_run { "DryRun" } else { "Provision" }
    }
}
