//! Condition types and reasons written to the status of the resources.
//!
//! kstatus reads `Ready` (with `observedGeneration`); the others give detail.

/// Condition types.
pub mod types {
    /// Summary condition for kstatus, Argo CD and Flux.
    pub const READY: &str = "Ready";
    /// The Proxmox VE API could be read (fully or partly).
    pub const PROXMOX_REACHABLE: &str = "ProxmoxReachable";
    /// Hardware discovery ran on every node without warning.
    pub const HARDWARE_DISCOVERED: &str = "HardwareDiscovered";
    /// NetBox holds what Proxmox runs.
    pub const NETBOX_SYNCED: &str = "NetBoxSynced";
    /// Something worked only partly: see the reason and message.
    pub const DEGRADED: &str = "Degraded";
    /// Provisioning (`spec.provisioning`) has nothing pending and no VM with a warning.
    pub const PROVISIONED: &str = "Provisioned";
    /// A provisioned VM has vCPU or memory changes waiting for its next start.
    pub const REBOOT_REQUIRED: &str = "RebootRequired";
}

/// Condition reasons. Each names the cause, so it can be used as an Event reason and a
/// metric label too.
pub mod reasons {
    /// Everything succeeded.
    pub const SYNCED: &str = "Synced";
    /// Dry-run: the plan was computed and nothing was written.
    pub const DRY_RUN: &str = "DryRun";
    /// `spec.sync.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// A pass over a new generation (or the first pass) is under way: Proxmox was read,
    /// the NetBox sync has not finished. Used with status `Unknown` on `Ready` and
    /// `NetBoxSynced` in the status written between the two stages.
    pub const RECONCILING: &str = "Reconciling";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret exists (or may exist) but cannot be read, e.g. the operator's
    /// RBAC does not allow it (403).
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
    /// A referenced Secret lacks the key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// A referenced Secret lacks the label that lets this operator use it.
    pub const SECRET_NOT_MARKED: &str = "SecretNotMarked";
    /// The reconcile of this cluster panicked (a bug); only this cluster is affected.
    pub const RECONCILE_PANICKED: &str = "ReconcilePanicked";
    /// The reconcile ran past its deadline and was stopped.
    pub const RECONCILE_TIMED_OUT: &str = "ReconcileTimedOut";
    /// A stage (the Proxmox read, the NetBox sync) ran past its deadline and was stopped.
    pub const STAGE_TIMED_OUT: &str = "StageTimedOut";
    /// A spec value cannot be used (the message names the field).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The PVE API rejected the credentials.
    pub const PROXMOX_UNAUTHORIZED: &str = "ProxmoxUnauthorized";
    /// No PVE endpoint could be reached.
    pub const PROXMOX_UNREACHABLE: &str = "ProxmoxUnreachable";
    /// TLS verification of an endpoint failed.
    pub const TLS_VERIFICATION_FAILED: &str = "TlsVerificationFailed";
    /// The endpoint guard refused a PVE endpoint or the NetBox URL (not https, user info,
    /// query or fragment, or an address such as loopback or a cloud metadata address that
    /// the operator's `--allow-endpoint-cidr` does not allow); the message names the field.
    pub const ENDPOINT_REFUSED: &str = "EndpointRefused";
    /// The PVE token lacks read privileges.
    pub const MISSING_PRIVILEGES: &str = "MissingPrivileges";
    /// Part of the PVE read failed: nothing in that scope was pruned.
    pub const PARTIAL_READ: &str = "PartialRead";
    /// The PVE read succeeded.
    pub const READ_COMPLETE: &str = "ReadComplete";
    /// Some objects failed to sync; the rest was synced.
    pub const PARTIAL_SYNC: &str = "PartialSync";
    /// NetBox refused the token (401/403): wrong, expired or lacking a permission.
    pub const NETBOX_UNAUTHORIZED: &str = "NetBoxUnauthorized";
    /// Pruning was refused: too many owned objects gone from Proxmox at once.
    pub const PRUNE_BLOCKED: &str = "PruneBlocked";
    /// NetBox could not be used at all.
    pub const NETBOX_FAILED: &str = "NetBoxFailed";
    /// Unowned NetBox objects are in the way and were left untouched.
    pub const COLLISIONS: &str = "Collisions";
    /// Hardware discovery is switched off.
    pub const DISCOVERY_DISABLED: &str = "DiscoveryDisabled";
    /// Hardware discovery succeeded on every node.
    pub const DISCOVERED: &str = "Discovered";
    /// Hardware discovery failed on some nodes.
    pub const DISCOVERY_WARNINGS: &str = "DiscoveryWarnings";
    /// The previous stage failed, so this one did not run.
    pub const NOT_RUN: &str = "NotRun";
    /// Nothing is degraded.
    pub const HEALTHY: &str = "Healthy";
    /// The token holds write privileges an inventory reader does not need.
    pub const EXCESS_PRIVILEGES: &str = "ExcessPrivileges";
    /// The QEMU guest agent did not answer on some running guests: their addresses come
    /// from the configuration only (Event reason; the count is in the `ProxmoxReachable`
    /// message).
    pub const GUEST_AGENT_NOT_RUNNING: &str = "GuestAgentNotRunning";
    /// The guest agent answers again on every running guest that has it enabled.
    pub const GUEST_AGENTS_RUNNING: &str = "GuestAgentsRunning";
    /// `spec.sync.suspend` became false again (Event reason).
    pub const RESUMED: &str = "Resumed";
    /// A poll found guests changed in Proxmox and their NetBox objects were written
    /// (Event reason).
    pub const CHANGES_SYNCED: &str = "ChangesSynced";
    /// Provisioning has nothing pending and no VM with a warning.
    pub const PROVISIONED: &str = "Provisioned";
    /// VMs are on their way (a task running, steps left for the next pass).
    pub const PROVISIONING_IN_PROGRESS: &str = "ProvisioningInProgress";
    /// Some VMs stopped on a problem (each named in `status.provisioning.vms`); the others
    /// went on. Also the Event reason of a VM's new warning.
    pub const PROVISIONING_WARNINGS: &str = "ProvisioningWarnings";
    /// Provisioning could not run at all (NetBox could not be read, no PVE client).
    pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
    /// No provisioned VM waits for a reboot.
    pub const NO_PENDING_CHANGES: &str = "NoPendingChanges";
    /// Running provisioned VMs have vCPU or memory changes waiting for their next start.
    pub const PENDING_CHANGES: &str = "PendingChanges";
    /// A VM was created in Proxmox VE from its NetBox record (Event reason).
    pub const VM_PROVISIONED: &str = "VmProvisioned";
    /// A VM was destroyed and its NetBox record released or deleted (Event reason).
    pub const VM_RETIRED: &str = "VmRetired";
    /// A guest carries this operator's provisioning mark but no record claims it (Event
    /// reason).
    pub const PROVISIONING_ORPHAN: &str = "ProvisioningOrphan";
}

/// What the permission preflight found wrong with the PVE token without failing the read:
/// privileges it lacks ([`reasons::MISSING_PRIVILEGES`]) or write privileges it does not
/// need ([`reasons::EXCESS_PRIVILEGES`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionWarning {
    /// Condition and Event reason.
    pub reason: &'static str,
    /// Which privileges, and what follows from it.
    pub message: String,
}
