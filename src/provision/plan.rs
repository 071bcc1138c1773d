//! The provisioning plan (pure): which NetBox records are acted on, and for each the next
//! step from what both sides show now. The apply stage runs a step, looks again, and asks
//! for the next one, so every step is decided from observation, never from memory: a pass
//! cut off anywhere is resumed by the next one without a second clone or an orphan.

use serde::Serialize;

use super::mark::ProvisionMark;
use super::model::{ClusterView, GuestView, NbIp, NbVm, Phase, Power, TemplateView};
use super::settings::ProvisionSettings;
use super::vm_config::{self, ConfigChange, ConfigNote, Scope, nic_index, whole_vcpus};
use crate::crd::RetiredRecordPolicy;

/// Warning codes of a VM (status `provisioning.vms[].warning.code`, Event messages).
pub mod warnings {
    /// No template is named (spec or `proxmox_template`).
    pub const NO_TEMPLATE: &str = "NoTemplate";
    /// The named template is not a QEMU template of this cluster, or several match.
    pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
    /// The target node is unknown or offline.
    pub const NODE_UNAVAILABLE: &str = "NodeUnavailable";
    /// A clone to another node than the template's needs shared storage.
    pub const STORAGE_NOT_SHARED: &str = "StorageNotShared";
    /// The storage does not hold VM images on the target node.
    pub const STORAGE_NOT_FOUND: &str = "StorageNotFound";
    /// The record's name cannot be a PVE VM name.
    pub const INVALID_NAME: &str = "InvalidName";
    /// vCPUs are not a whole number from 1 to 512.
    pub const INVALID_VCPUS: &str = "InvalidVcpus";
    /// Memory is below 16 MB or above 4 TiB.
    pub const INVALID_MEMORY: &str = "InvalidMemory";
    /// An interface is not named `net0` .. `net31`.
    pub const INVALID_INTERFACE_NAME: &str = "InvalidInterfaceName";
    /// No single prefix could be chosen for an interface without an address.
    pub const PREFIX_AMBIGUOUS: &str = "PrefixAmbiguous";
    /// The prefix has no free address.
    pub const PREFIX_EXHAUSTED: &str = "PrefixExhausted";
    /// The reserved vmid belongs to a guest this operator did not create for this record.
    pub const VMID_TAKEN: &str = "VmidTaken";
    /// More records were selected than `maxCreatesPerPass`.
    pub const LIMIT_REACHED: &str = "LimitReached";
    /// A PVE task failed.
    pub const TASK_FAILED: &str = "TaskFailed";
    /// A PVE task did not end within `taskTimeout` (it keeps running).
    pub const TASK_TIMED_OUT: &str = "TaskTimedOut";
    /// A PVE or NetBox request failed.
    pub const REQUEST_FAILED: &str = "RequestFailed";
    /// A request's answer was lost: the next pass looks at what happened.
    pub const OUTCOME_UNKNOWN: &str = "OutcomeUnknown";
    /// A NetBox disk is not a disk slot of the VM.
    pub const DISK_NOT_IN_TEMPLATE: &str = "DiskNotInTemplate";
    /// A NetBox disk is smaller than in PVE.
    pub const DISK_SHRINK_REFUSED: &str = "DiskShrinkRefused";
    /// In `decommissioning`, but not provisioned by this operator: only reported.
    pub const NOT_PROVISIONED_BY_OPERATOR: &str = "NotProvisionedByOperator";
    /// In `decommissioning`, but retirement is off (`spec.provisioning.retire.enabled`).
    pub const RETIRE_DISABLED: &str = "RetireDisabled";
    /// The guest does not carry this record's provisioning mark.
    pub const FOREIGN_VM: &str = "ForeignVm";
    /// The guest has PVE's protection flag.
    pub const PROTECTED: &str = "Protected";
    /// Another ProxmoxCluster or installation provisions this record.
    pub const OTHER_OWNER: &str = "OtherOwner";
    /// The record left `staged` while it was being provisioned.
    pub const NOT_STAGED: &str = "NotStaged";
}

/// A warning on one VM: the others go on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Code from [`warnings`].
    pub code: &'static str,
    /// Detail naming the field or object at fault.
    pub message: String,
}

impl Warning {
    /// A warning with `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigNote> for Warning {
    fn from(n: ConfigNote) -> Self {
        Self::new(n.code, n.message)
    }
}

/// Why a record is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Intent {
    /// Staged and selected: create it.
    Create,
    /// Provisioned and in `decommissioning`: retire it.
    Retire,
    /// Provisioned, with `followResources`: keep its resources following NetBox.
    Follow,
    /// Provisioned: its children may still need their owner mark.
    Check,
}

/// One step: what is sent, to which side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub enum Step {
    /// Reserve the next free vmid and record it on the NetBox record, before any clone.
    Reserve,
    /// Forget a reserved vmid another guest took, so a new one is reserved.
    ReleaseVmid {
        /// The vmid given up.
        vmid: u32,
    },
    /// Take the next free address of a prefix for an interface (NetBox's `available-ips`).
    AllocateIp {
        /// NetBox interface id.
        interface_id: u64,
        /// Its name.
        interface: String,
        /// NetBox prefix id.
        prefix_id: u64,
        /// The prefix.
        prefix: String,
    },
    /// Full clone of the template, with the provisioning mark in the notes.
    Clone {
        /// Template vmid.
        template: u32,
        /// Template node (where the clone runs).
        template_node: String,
        /// New vmid.
        vmid: u32,
        /// New VM's name.
        name: String,
        /// Target node when not the template's.
        target: Option<String>,
        /// Storage of the disks.
        storage: String,
        /// Pool to join.
        pool: Option<String>,
        /// Notes of the new VM (description and mark).
        notes: String,
    },
    /// Config write (cores, memory, NICs, cloud-init), with the config's digest.
    Configure {
        /// vmid.
        vmid: u32,
        /// Node.
        node: String,
        /// The change.
        change: ConfigChange,
        /// The config digest the change is based on.
        digest: Option<String>,
    },
    /// Grow one disk.
    Resize {
        /// vmid.
        vmid: u32,
        /// Node.
        node: String,
        /// Slot.
        disk: String,
        /// New size in MiB.
        size_mib: u64,
    },
    /// Start the VM.
    Start {
        /// vmid.
        vmid: u32,
        /// Node.
        node: String,
    },
    /// Hand the VM over to the sync: owner marks on the record and its children, status.
    HandOver {
        /// vmid.
        vmid: u32,
        /// NetBox status (`active` when running, else `offline`).
        status: &'static str,
        /// Whether the record itself still needs the owner mark.
        record: bool,
        /// Children to mark: (endpoint, id).
        children: Vec<(&'static str, u64)>,
    },
    /// Record that retirement started.
    MarkRetiring {
        /// vmid.
        vmid: u32,
    },
    /// Shut the VM down (a stop follows when it does not end in `shutdownTimeout`).
    Shutdown {
        /// vmid.
        vmid: u32,
        /// Node.
        node: String,
    },
    /// Destroy the VM with its disks.
    Destroy {
        /// vmid.
        vmid: u32,
        /// Node.
        node: String,
    },
    /// The VM is gone: keep the record `offline` and release it, or delete it.
    Release {
        /// vmid.
        vmid: u32,
        /// What becomes of the record.
        policy: RetiredRecordPolicy,
    },
}

impl Step {
    /// One line for the status and `sync --dry-run`.
    pub fn describe(&self) -> String {
        match self {
            Step::Reserve => "reserve the next free vmid and record it in NetBox".into(),
            Step::ReleaseVmid { vmid } => format!("give up vmid {vmid} (taken by another guest)"),
            Step::AllocateIp {
                interface, prefix, ..
            } => format!("allocate the next free IP address of {prefix} to {interface}"),
            Step::Clone {
                template,
                template_node,
                vmid,
                name,
                target,
                storage,
                ..
            } => format!(
                "clone template {template} on {template_node} to vm {vmid} {name:?} (full clone to {storage}{})",
                target
                    .as_deref()
                    .map(|t| format!(", on node {t}"))
                    .unwrap_or_default()
            ),
            Step::Configure { vmid, change, .. } => {
                let mut keys: Vec<String> = change.set.keys().cloned().collect();
                keys.extend(change.delete.iter().map(|k| format!("-{k}")));
                format!("configure vm {vmid}: {}", keys.join(", "))
            }
            Step::Resize {
                vmid,
                disk,
                size_mib,
                ..
            } => format!("grow disk {disk} of vm {vmid} to {size_mib} MiB"),
            Step::Start { vmid, .. } => format!("start vm {vmid}"),
            Step::HandOver {
                vmid,
                status,
                children,
                ..
            } => format!(
                "hand vm {vmid} over to the sync (status {status}, {} child object(s) marked)",
                children.len()
            ),
            Step::MarkRetiring { vmid } => format!("record that vm {vmid} is being retired"),
            Step::Shutdown { vmid, .. } => format!("shut vm {vmid} down"),
            Step::Destroy { vmid, .. } => format!("destroy vm {vmid} with its disks"),
            Step::Release { vmid, policy } => match policy {
                RetiredRecordPolicy::Offline => {
                    format!("set the record of vm {vmid} offline and release it")
                }
                RetiredRecordPolicy::Delete => format!("delete the record of vm {vmid}"),
            },
        }
    }

    /// The action label of the metrics (a fixed set).
    pub fn action(&self) -> &'static str {
        match self {
            Step::Reserve => "reserve",
            Step::ReleaseVmid { .. } => "release_vmid",
            Step::AllocateIp { .. } => "ip_allocated",
            Step::Clone { .. } => "cloned",
            Step::Configure { .. } => "configured",
            Step::Resize { .. } => "resized",
            Step::Start { .. } => "started",
            Step::HandOver { .. } => "handed_over",
            Step::MarkRetiring { .. } => "retiring",
            Step::Shutdown { .. } => "shut_down",
            Step::Destroy { .. } => "destroyed",
            Step::Release { .. } => "retired",
        }
    }
}

/// What to do with a VM now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    /// Run this step.
    Act {
        /// The step.
        step: Step,
    },
    /// The guest's config (and pending values) must be read first.
    ReadConfig {
        /// vmid.
        vmid: u32,
    },
    /// Nothing to do in this pass: something is under way (a task, a lock) or unknown.
    Wait {
        /// Why.
        why: String,
    },
    /// Stopped on a problem with this VM; it is reported, the others go on.
    Blocked {
        /// The problem.
        warning: Warning,
    },
    /// Nothing (more) to do.
    Done,
}

/// A record with the guest it names, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmWork {
    /// Why it is looked at.
    pub intent: Intent,
    /// The NetBox record.
    pub record: NbVm,
    /// The guest of its vmid, when PVE has one.
    pub guest: Option<GuestView>,
}

impl VmWork {
    /// The vmid the record names: its `proxmox_vmid` once handed over, else the reserved one.
    pub fn vmid(&self) -> Option<u32> {
        self.record.vmid.or(self.record.reserved_vmid)
    }
}

/// The records selected this pass, and those only reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Records acted on.
    pub work: Vec<(Intent, NbVm)>,
    /// Records left alone, with why.
    pub reported: Vec<(NbVm, Warning)>,
}

/// True when the record matches the selector (tag and role, each by slug or name).
pub fn selected(record: &NbVm, settings: &ProvisionSettings) -> bool {
    let matches = |want: &Option<String>, have: &[String]| {
        want.as_ref()
            .is_none_or(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w)))
    };
    let s = &settings.selector;
    (s.tag.is_some() || s.role.is_some())
        && matches(&s.tag, &record.tags)
        && matches(&s.role, &record.role)
}

/// Sorts the records read into work and reports. `maxCreatesPerPass` counts the records
/// that would get a new vmid: above it, none does (a tag put on many records by mistake
/// creates nothing).
pub fn select(records: Vec<NbVm>, settings: &ProvisionSettings, mark: &str) -> Selection {
    let mut out = Selection::default();
    let mut new = Vec::new();
    for record in records {
        if record
            .provisioned_by
            .as_deref()
            .is_some_and(|by| by != mark)
        {
            let by = record.provisioned_by.clone().unwrap_or_default();
            out.reported.push((
                record,
                Warning::new(
                    warnings::OTHER_OWNER,
                    format!(
                        "provisioned by another ProxmoxCluster or installation ({by}): left alone"
                    ),
                ),
            ));
            continue;
        }
        let ours = record.provisioned_by.as_deref() == Some(mark);
        let staged = record.status == "staged";
        let decommissioning = record.status == "decommissioning";
        match record.phase.filter(|_| ours) {
            Some(Phase::Reserved) if staged => out.work.push((Intent::Create, record)),
            Some(Phase::Reserved) => {
                let status = record.status.clone();
                out.reported.push((
                    record,
                    Warning::new(
                        warnings::NOT_STAGED,
                        format!("the record's status became {status:?} while it was being provisioned: the VM is left as it is until it is staged again"),
                    ),
                ));
            }
            Some(Phase::Provisioned | Phase::Retiring) if decommissioning => {
                match settings.retire {
                    Some(_) => out.work.push((Intent::Retire, record)),
                    None => out.reported.push((
                        record,
                        Warning::new(
                            warnings::RETIRE_DISABLED,
                            "in decommissioning, but spec.provisioning.retire.enabled is false: only reported",
                        ),
                    )),
                }
            }
            Some(Phase::Provisioned) if settings.follow_resources => {
                out.work.push((Intent::Follow, record))
            }
            Some(Phase::Provisioned | Phase::Retiring) => out.work.push((Intent::Check, record)),
            None | Some(Phase::Retired) if staged && selected(&record, settings) => {
                new.push(record)
            }
            _ if decommissioning => out.reported.push((
                record,
                Warning::new(
                    warnings::NOT_PROVISIONED_BY_OPERATOR,
                    "in decommissioning, but not provisioned by this operator: only reported, never destroyed",
                ),
            )),
            _ => {}
        }
    }
    if new.len() > settings.max_creates_per_pass {
        let n = new.len();
        for record in new {
            out.reported.push((
                record,
                Warning::new(
                    warnings::LIMIT_REACHED,
                    format!(
                        "{n} staged records are selected, more than spec.provisioning.maxCreatesPerPass ({}): none is created",
                        settings.max_creates_per_pass
                    ),
                ),
            ));
        }
    } else {
        out.work
            .extend(new.into_iter().map(|r| (Intent::Create, r)));
    }
    out
}

/// The guest of `vmid` for the planner: QEMU only.
fn guest_of(work: &VmWork) -> Option<&GuestView> {
    work.guest.as_ref()
}

/// The next step for one VM.
pub fn next_step(work: &VmWork, cluster: &ClusterView, settings: &ProvisionSettings) -> Decision {
    match work.intent {
        Intent::Create => create(work, cluster, settings),
        Intent::Retire => retire(work, cluster, settings),
        Intent::Follow => follow(work, cluster, settings),
        Intent::Check => check(work, cluster),
    }
}

fn blocked(code: &'static str, message: impl Into<String>) -> Decision {
    Decision::Blocked {
        warning: Warning::new(code, message),
    }
}

fn act(step: Step) -> Decision {
    Decision::Act { step }
}

/// The record's problems that stop a create before anything is done.
fn check_record(record: &NbVm) -> Option<Decision> {
    let name_ok = !record.name.is_empty()
        && record.name.len() <= 63
        && record
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !record.name.starts_with(['-', '.'])
        && !record.name.ends_with(['-', '.']);
    if !name_ok {
        return Some(blocked(
            warnings::INVALID_NAME,
            format!(
                "the name {:?} cannot be a Proxmox VE VM name (letters, digits, '-' and '.', at most 63)",
                crate::netbox::mapping::truncate(&record.name, 80)
            ),
        ));
    }
    if let Some(v) = &record.vcpus
        && whole_vcpus(v).is_none()
    {
        return Some(blocked(
            warnings::INVALID_VCPUS,
            format!("vcpus {v:?} is not a whole number from 1 to 512"),
        ));
    }
    if let Some(m) = record.memory_mb
        && !(16..=4 * 1024 * 1024).contains(&m)
    {
        return Some(blocked(
            warnings::INVALID_MEMORY,
            format!("memory {m} MB is not between 16 MB and 4 TiB"),
        ));
    }
    if let Some(i) = record
        .interfaces
        .iter()
        .find(|i| nic_index(&i.name).is_none())
    {
        return Some(blocked(
            warnings::INVALID_INTERFACE_NAME,
            format!(
                "interface {:?} must be named net0 to net31 (the Proxmox VE NIC it becomes)",
                crate::netbox::mapping::truncate(&i.name, 80)
            ),
        ));
    }
    let mut slots = std::collections::BTreeSet::new();
    if let Some(i) = record.interfaces.iter().find(|i| !slots.insert(&i.name)) {
        return Some(blocked(
            warnings::INVALID_INTERFACE_NAME,
            format!("two interfaces are named {:?}: each names one NIC", i.name),
        ));
    }
    if let Some((i, why)) = record.interfaces.iter().find_map(|i| {
        i.prefix_problem
            .as_ref()
            .filter(|_| i.ips.is_empty())
            .map(|p| (i, p))
    }) {
        return Some(blocked(
            warnings::PREFIX_AMBIGUOUS,
            format!("interface {}: {why}", i.name),
        ));
    }
    None
}

/// Where a record is cloned from and to.
struct Placement<'a> {
    template: &'a TemplateView,
    node: String,
}

fn placement<'a>(
    record: &NbVm,
    cluster: &'a ClusterView,
    settings: &ProvisionSettings,
) -> Result<Placement<'a>, Warning> {
    let Some(name) = record.template.as_ref().or(settings.template.as_ref()) else {
        return Err(Warning::new(
            warnings::NO_TEMPLATE,
            "no template: set spec.provisioning.template or the VM's custom field proxmox_template",
        ));
    };
    let matching: Vec<&TemplateView> = cluster
        .templates
        .iter()
        .filter(|t| t.vmid.to_string() == *name || t.name == *name)
        .collect();
    let template = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(Warning::new(
                warnings::TEMPLATE_NOT_FOUND,
                format!("no QEMU template named or numbered {name:?} in this Proxmox VE cluster"),
            ));
        }
        _ => {
            return Err(Warning::new(
                warnings::TEMPLATE_NOT_FOUND,
                format!(
                    "{} templates are named {name:?}: name it by vmid",
                    matching.len()
                ),
            ));
        }
    };
    let node = record
        .target_node
        .clone()
        .or_else(|| settings.node.clone())
        .unwrap_or_else(|| template.node.clone());
    if !cluster.nodes_online.contains(&node) {
        return Err(Warning::new(
            warnings::NODE_UNAVAILABLE,
            format!("node {node:?} is not an online node of this cluster"),
        ));
    }
    let storage = &settings.storage;
    if node != template.node && !cluster.shared_image_storages.contains(storage) {
        return Err(Warning::new(
            warnings::STORAGE_NOT_SHARED,
            format!(
                "a clone from {} to {node} needs shared storage; {storage:?} is not shared (spec.provisioning.storage)",
                template.node
            ),
        ));
    }
    if !cluster
        .image_storages
        .get(&node)
        .is_some_and(|s| s.contains(storage))
    {
        return Err(Warning::new(
            warnings::STORAGE_NOT_FOUND,
            format!(
                "storage {storage:?} does not hold VM images on node {node} (spec.provisioning.storage)"
            ),
        ));
    }
    Ok(Placement { template, node })
}

/// True when the guest carries this record's mark for this owner.
fn ours(guest: &GuestView, record: &NbVm, cluster: &ClusterView) -> bool {
    guest
        .mark
        .as_ref()
        .is_some_and(|m| m.netbox_vm == record.id && m.owner == cluster.mark)
}

fn create(work: &VmWork, cluster: &ClusterView, settings: &ProvisionSettings) -> Decision {
    let record = &work.record;
    if record.phase == Some(Phase::Provisioned) {
        // Handed over (in this pass or a crashed one): only children left unmarked remain.
        return check(work, cluster);
    }
    let Some(vmid) = record.reserved_vmid else {
        if let Some(problem) = check_record(record) {
            return problem;
        }
        if let Err(warning) = placement(record, cluster, settings) {
            return Decision::Blocked { warning };
        }
        return act(Step::Reserve);
    };
    let Some(guest) = guest_of(work) else {
        if !cluster.guests_complete {
            return Decision::Wait {
                why: format!(
                    "the guest lists were not read completely: whether vm {vmid} exists is unknown"
                ),
            };
        }
        if let Some(problem) = check_record(record) {
            return problem;
        }
        if let Some(iface) = record
            .interfaces
            .iter()
            .find(|i| i.ips.is_empty() && i.prefix.is_some())
        {
            let prefix = iface.prefix.as_ref().map(|p| (p.id, p.prefix.clone()));
            if let Some((prefix_id, prefix)) = prefix {
                return act(Step::AllocateIp {
                    interface_id: iface.id,
                    interface: iface.name.clone(),
                    prefix_id,
                    prefix,
                });
            }
        }
        let place = match placement(record, cluster, settings) {
            Ok(p) => p,
            Err(warning) => return Decision::Blocked { warning },
        };
        let mark = ProvisionMark {
            netbox_vm: record.id,
            owner: cluster.mark.clone(),
        };
        return act(Step::Clone {
            template: place.template.vmid,
            template_node: place.template.node.clone(),
            vmid,
            name: record.name.clone(),
            target: (place.node != place.template.node).then_some(place.node),
            storage: settings.storage.clone(),
            pool: settings.pool.clone(),
            notes: mark.notes(&record.description),
        });
    };
    if !ours(guest, record, cluster) {
        return act(Step::ReleaseVmid { vmid });
    }
    if let Some(lock) = &guest.lock {
        return Decision::Wait {
            why: format!("vm {vmid} is locked ({lock}): a task is running on it"),
        };
    }
    if let Some(step) = converge_config(record, guest, vmid, settings, Scope::Create) {
        return step;
    }
    let start = record.start.unwrap_or(settings.start);
    match guest.power {
        Power::Stopped if start => act(Step::Start {
            vmid,
            node: guest.node.clone(),
        }),
        Power::Unknown => Decision::Wait {
            why: format!("the power state of vm {vmid} is unknown"),
        },
        power => hand_over(work, cluster, vmid, power, true),
    }
}

/// The next config write or disk growth that brings the guest to its record (`scope`),
/// or its config to read first; `None` when it is as the record asks.
fn converge_config(
    record: &NbVm,
    guest: &GuestView,
    vmid: u32,
    settings: &ProvisionSettings,
    scope: Scope,
) -> Option<Decision> {
    let Some(config) = &guest.config else {
        return Some(Decision::ReadConfig { vmid });
    };
    let current = vm_config::effective(config, &guest.pending);
    let change = vm_config::change(record, &current, settings, scope);
    if !change.is_empty() {
        return Some(act(Step::Configure {
            vmid,
            node: guest.node.clone(),
            change,
            digest: config.get("digest").cloned(),
        }));
    }
    let grow = vm_config::disk_changes(record, &current)
        .0
        .into_iter()
        .next()?;
    Some(act(Step::Resize {
        vmid,
        node: guest.node.clone(),
        disk: grow.disk,
        size_mib: grow.size_mib,
    }))
}

/// The hand-over: the record marked owned with the sync's identity, and its children that
/// the sync will keep (interfaces named like the VM's NICs, their addresses, disks named
/// like its disk slots).
fn hand_over(
    work: &VmWork,
    cluster: &ClusterView,
    vmid: u32,
    power: Power,
    record: bool,
) -> Decision {
    let mark = &cluster.mark;
    let config = work.guest.as_ref().and_then(|g| g.config.as_ref());
    let unmarked = |owner: &Option<String>| owner.as_deref() != Some(mark.as_str());
    let mut children: Vec<(&'static str, u64)> = Vec::new();
    for iface in &work.record.interfaces {
        let in_vm = config.is_none_or(|c| c.contains_key(&iface.name));
        if !in_vm {
            continue;
        }
        if unmarked(&iface.owner) {
            children.push((INTERFACES, iface.id));
        }
        children.extend(
            iface
                .ips
                .iter()
                .filter(|ip| unmarked(&ip.owner))
                .map(|ip| (IP_ADDRESSES, ip.id)),
        );
    }
    for disk in &work.record.disks {
        if config.is_none_or(|c| c.contains_key(&disk.name)) && unmarked(&disk.owner) {
            children.push((VIRTUAL_DISKS, disk.id));
        }
    }
    if !record && children.is_empty() {
        return Decision::Done;
    }
    act(Step::HandOver {
        vmid,
        status: if power == Power::Running {
            "active"
        } else {
            "offline"
        },
        record,
        children,
    })
}

/// NetBox endpoint of VM interfaces.
pub const INTERFACES: &str = "virtualization/interfaces";
/// NetBox endpoint of IP addresses.
pub const IP_ADDRESSES: &str = "ipam/ip-addresses";
/// NetBox endpoint of virtual disks.
pub const VIRTUAL_DISKS: &str = "virtualization/virtual-disks";

fn retire(work: &VmWork, cluster: &ClusterView, settings: &ProvisionSettings) -> Decision {
    let record = &work.record;
    let Some(vmid) = work.vmid() else {
        return Decision::Done;
    };
    let policy = settings.retire.unwrap_or_default();
    let Some(guest) = guest_of(work) else {
        if !cluster.guests_complete {
            return Decision::Wait {
                why: format!(
                    "the guest lists were not read completely: whether vm {vmid} still exists is unknown"
                ),
            };
        }
        return act(Step::Release { vmid, policy });
    };
    if !ours(guest, record, cluster) {
        return blocked(
            warnings::FOREIGN_VM,
            format!(
                "vm {vmid} does not carry this record's provisioning mark in its notes: it is never destroyed"
            ),
        );
    }
    if guest.protected {
        return blocked(
            warnings::PROTECTED,
            format!("vm {vmid} has Proxmox VE's protection flag: it is not destroyed"),
        );
    }
    if let Some(lock) = &guest.lock {
        return Decision::Wait {
            why: format!("vm {vmid} is locked ({lock})"),
        };
    }
    if record.phase != Some(Phase::Retiring) {
        return act(Step::MarkRetiring { vmid });
    }
    match guest.power {
        Power::Running => act(Step::Shutdown {
            vmid,
            node: guest.node.clone(),
        }),
        Power::Stopped => act(Step::Destroy {
            vmid,
            node: guest.node.clone(),
        }),
        Power::Unknown => Decision::Wait {
            why: format!("the power state of vm {vmid} is unknown"),
        },
    }
}

fn follow(work: &VmWork, cluster: &ClusterView, settings: &ProvisionSettings) -> Decision {
    let Some(vmid) = work.vmid() else {
        return Decision::Done;
    };
    let Some(guest) = guest_of(work).filter(|g| ours(g, &work.record, cluster)) else {
        return check(work, cluster);
    };
    if guest.lock.is_some() {
        return Decision::Done;
    }
    if let Some(step) = converge_config(&work.record, guest, vmid, settings, Scope::Resources) {
        return step;
    }
    check(work, cluster)
}

/// A provisioned VM: its children get the owner mark if a hand-over was cut short.
fn check(work: &VmWork, cluster: &ClusterView) -> Decision {
    let (Some(vmid), Some(guest)) = (work.vmid(), guest_of(work)) else {
        return Decision::Done;
    };
    if !ours(guest, &work.record, cluster) {
        return Decision::Done;
    }
    hand_over(work, cluster, vmid, guest.power, false)
}

/// True when a running VM has vCPU or memory changes waiting for its next start.
pub fn reboot_required(guest: &GuestView) -> bool {
    guest.power == Power::Running
        && ["cores", "sockets", "memory", "vcpus"]
            .iter()
            .any(|k| guest.pending.contains_key(*k))
}

/// Notes (not failures) on a VM's config: disks that cannot be had.
pub fn config_notes(work: &VmWork) -> Vec<Warning> {
    let Some(config) = work.guest.as_ref().and_then(|g| g.config.as_ref()) else {
        return Vec::new();
    };
    vm_config::disk_changes(&work.record, config)
        .1
        .into_iter()
        .map(Warning::from)
        .collect()
}

/// What a step does to the state, assumed to succeed (the dry-run plan, and the apply
/// stage's view between two reads). `template_config`: the config a clone starts from.
pub fn assume(
    step: &Step,
    work: &mut VmWork,
    cluster: &ClusterView,
    template_config: Option<&std::collections::BTreeMap<String, String>>,
    placeholder_vmid: u32,
) {
    let record = &mut work.record;
    match step {
        Step::Reserve => {
            record.reserved_vmid = Some(placeholder_vmid);
            record.phase = Some(Phase::Reserved);
            record.provisioned_by = Some(cluster.mark.clone());
        }
        Step::ReleaseVmid { .. } => {
            record.reserved_vmid = None;
            work.guest = None;
        }
        Step::AllocateIp {
            interface_id,
            prefix,
            ..
        } => {
            if let Some(i) = record.interfaces.iter_mut().find(|i| i.id == *interface_id) {
                let len = prefix.split('/').nth(1).unwrap_or("32");
                let gateway = i.prefix.as_ref().and_then(|p| p.gateway.clone());
                i.ips.push(NbIp {
                    id: 0,
                    address: format!("<next free in {prefix}>/{len}"),
                    owner: None,
                    gateway,
                });
            }
        }
        Step::Clone {
            vmid,
            name,
            target,
            template_node,
            notes,
            ..
        } => {
            let mut config = template_config.cloned().unwrap_or_default();
            config.remove("template");
            config.insert("name".into(), name.clone());
            config.insert("description".into(), notes.clone());
            work.guest = Some(GuestView {
                vmid: *vmid,
                node: target.clone().unwrap_or_else(|| template_node.clone()),
                qemu: true,
                name: name.clone(),
                power: Power::Stopped,
                lock: None,
                protected: false,
                mark: ProvisionMark::find(notes),
                config: Some(config),
                pending: Default::default(),
            });
        }
        Step::Configure { change, .. } => {
            if let Some(c) = work.guest.as_mut().and_then(|g| g.config.as_mut()) {
                for (k, v) in &change.set {
                    c.insert(k.clone(), v.clone());
                }
                for k in &change.delete {
                    c.remove(k);
                }
            }
        }
        Step::Resize { disk, size_mib, .. } => {
            if let Some(c) = work.guest.as_mut().and_then(|g| g.config.as_mut())
                && let Some(v) = c.get_mut(disk)
            {
                let mut p = crate::pve::propstr::parse(v);
                p.props.insert("size".into(), format!("{size_mib}M"));
                let mut parts: Vec<String> = p.default.into_iter().collect();
                parts.extend(p.props.iter().map(|(k, v)| format!("{k}={v}")));
                *v = parts.join(",");
            }
        }
        Step::Start { .. } => {
            if let Some(g) = work.guest.as_mut() {
                g.power = Power::Running;
            }
        }
        Step::HandOver { vmid, .. } => {
            record.phase = Some(Phase::Provisioned);
            record.vmid = Some(*vmid);
            let mark = Some(cluster.mark.clone());
            record.owner = mark.clone();
            for i in &mut record.interfaces {
                i.owner = mark.clone();
                for ip in &mut i.ips {
                    ip.owner = mark.clone();
                }
            }
            for d in &mut record.disks {
                d.owner = mark.clone();
            }
        }
        Step::MarkRetiring { .. } => record.phase = Some(Phase::Retiring),
        Step::Shutdown { .. } => {
            if let Some(g) = work.guest.as_mut() {
                g.power = Power::Stopped;
            }
        }
        Step::Destroy { .. } => work.guest = None,
        Step::Release { .. } => {
            record.phase = Some(Phase::Retired);
            record.reserved_vmid = None;
            record.vmid = None;
            record.owner = None;
        }
    }
}

/// Where provisioning needs which PVE privilege with these settings (the provisioning
/// credentials' preflight): `VM.Clone` on the default template, `VM.Allocate`, the
/// `VM.Config.*` it writes and `VM.PowerMgmt` where new VMs go (their pool, else
/// `/vms`), `Datastore.AllocateSpace` on the storage.
pub fn required_privileges(
    settings: &ProvisionSettings,
    cluster: &ClusterView,
) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if let Some(t) = settings.template.as_ref().and_then(|name| {
        cluster
            .templates
            .iter()
            .find(|t| t.vmid.to_string() == *name || t.name == *name)
    }) {
        out.push((format!("/vms/{}", t.vmid), "VM.Clone"));
    }
    // A vmid no ACL names: the privileges it inherits from its pool or from `/vms`.
    let new_vms = match &settings.pool {
        Some(pool) => format!("/pool/{pool}"),
        None => "/vms/999999999".to_string(),
    };
    for privilege in [
        "VM.Allocate",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.Config.Network",
        "VM.Config.Cloudinit",
        "VM.Config.Disk",
        "VM.PowerMgmt",
    ] {
        out.push((new_vms.clone(), privilege));
    }
    out.push((
        format!("/storage/{}", settings.storage),
        "Datastore.AllocateSpace",
    ));
    out
}
