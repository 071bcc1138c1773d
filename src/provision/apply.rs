//! Apply: each VM's steps run one at a time, each decided by [`plan::next_step`] from what
//! was last seen, and followed by a fresh look at what it changed. VMs run side by side, at
//! most `maxConcurrentTasks` at once. A failed step stops that VM only and becomes its
//! warning. In dry-run nothing is written: each step is assumed done ([`plan::assume`]) and
//! the steps make the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use futures::StreamExt;
use serde_json::{Value, json};

use super::model::{ClusterView, GuestView, NbIp, Phase, Power};
use super::observe::VIRTUAL_MACHINES;
use super::plan::{self, Decision, Step, VmWork, Warning, warnings};
use super::report::{VmReport, phase_label};
use super::settings::ProvisionSettings;
use crate::crd::RetiredRecordPolicy;
use crate::netbox::client::{NetBoxApi, NetBoxError};
use crate::netbox::kinds::{
    CF_GUEST_TYPE, CF_OWNER, CF_PROVISION, CF_PROVISION_VMID, CF_PROVISIONED_BY, CF_STALE_SINCE,
    CF_VMID, id_of,
};
use crate::pve::client::PveError;
use crate::pve::metrics::TaskRecorder;
use crate::pve::task::{TaskError, TaskWait, is_node_name, task_of_at, wait_task};
use crate::pve::write::{PveWriteApi, flag};

/// Most steps one VM takes in one pass (a create is about eight).
const MAX_STEPS: usize = 24;
/// Most config keys, and longest value, read of a guest (hostile answers are bounded).
const MAX_CONFIG_KEYS: usize = 512;
const MAX_CONFIG_VALUE: usize = 16 * 1024;
/// Most vmids tried after `/cluster/nextid` before giving up.
const MAX_VMID_TRIES: u32 = 64;

/// What a pass's steps need.
pub struct ApplyContext<'a> {
    /// PVE, with writes.
    pub pve: &'a dyn PveWriteApi,
    /// NetBox.
    pub netbox: &'a dyn NetBoxApi,
    /// The resolved settings.
    pub settings: &'a ProvisionSettings,
    /// What the planner knows of the cluster.
    pub cluster: &'a ClusterView,
    /// Where task durations are recorded.
    pub tasks: &'a TaskRecorder,
    /// vmids in use or reserved (new ones are taken from `/cluster/nextid` past them).
    pub vmids: VmidAllocator,
}

/// The vmids a pass must not reserve: every guest's, every record's reservation, and the
/// ones reserved in this pass.
#[derive(Debug, Default)]
pub struct VmidAllocator {
    taken: Mutex<BTreeSet<u32>>,
}

impl VmidAllocator {
    /// An allocator that never hands out one of `taken`.
    pub fn new(taken: impl IntoIterator<Item = u32>) -> Self {
        Self {
            taken: Mutex::new(taken.into_iter().collect()),
        }
    }

    fn claim(&self, vmid: u32) -> bool {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vmid)
    }

    fn release(&self, vmid: u32) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vmid);
    }

    fn is_taken(&self, vmid: u32) -> bool {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&vmid)
    }

    /// The next free vmid: PVE's `/cluster/nextid`, then the first one after it that is
    /// neither taken here nor refused by `nextid?vmid=` (PVE reserves nothing: two passes
    /// could be told the same id, which the record's reservation settles).
    async fn next(&self, pve: &dyn PveWriteApi, check: bool) -> Result<u32, PveError> {
        let first = as_vmid("/cluster/nextid", &pve.get("/cluster/nextid").await?)?;
        for candidate in (first..).take(MAX_VMID_TRIES as usize) {
            if self.is_taken(candidate) {
                continue;
            }
            if check && candidate != first {
                let path = format!("/cluster/nextid?vmid={candidate}");
                match pve.get(&path).await {
                    Ok(_) => {}
                    Err(PveError::Status { status: 400, .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.claim(candidate) {
                return Ok(candidate);
            }
        }
        Err(PveError::Decode {
            path: "/cluster/nextid".into(),
            message: format!("no free vmid in the {MAX_VMID_TRIES} after {first}"),
        })
    }
}

fn as_vmid(path: &str, v: &Value) -> Result<u32, PveError> {
    let n = match v {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .filter(|n| (100..=999_999_999).contains(n))
        .ok_or_else(|| PveError::Decode {
            path: path.into(),
            message: "not a vmid".into(),
        })
}

/// Runs the work, VMs side by side (at most `maxConcurrentTasks` at once).
pub async fn apply(ctx: &ApplyContext<'_>, works: Vec<VmWork>) -> Vec<(VmReport, VmWork)> {
    futures::stream::iter(works)
        .map(|w| run_vm(ctx, w))
        .buffer_unordered(ctx.settings.max_concurrent_tasks.max(1))
        .collect()
        .await
}

/// Why a step failed, as the VM's warning.
fn pve_warning(step: &Step, e: &PveError) -> Warning {
    match e {
        PveError::OutcomeUnknown { .. } => Warning::new(
            warnings::OUTCOME_UNKNOWN,
            format!(
                "{}: {e}; the next pass looks at what happened",
                step.describe()
            ),
        ),
        _ => Warning::new(
            warnings::REQUEST_FAILED,
            format!("{}: {e}", step.describe()),
        ),
    }
}

fn netbox_warning(step: &Step, e: &NetBoxError) -> Warning {
    let code = if e.is_transport() {
        warnings::OUTCOME_UNKNOWN
    } else {
        warnings::REQUEST_FAILED
    };
    Warning::new(code, format!("{}: {e}", step.describe()))
}

fn task_warning(step: &Step, e: &TaskError) -> Warning {
    let code = match e {
        TaskError::Failed { .. } => warnings::TASK_FAILED,
        TaskError::TimedOut { .. } => warnings::TASK_TIMED_OUT,
        TaskError::Api(_) => warnings::REQUEST_FAILED,
    };
    let mut message = format!("{}: {e}", step.describe());
    if let TaskError::Failed { log_tail, .. } = e
        && let Some(last) = log_tail.iter().rev().find(|l| !l.trim().is_empty())
    {
        message.push_str(&format!(" (log: {last})"));
    }
    Warning::new(code, message)
}

/// How a step ended when it did not succeed.
enum StepError {
    /// A problem: the VM stops here for this pass.
    Warn(Warning),
    /// Still running (a task past the timeout): the next pass goes on.
    Running(Warning),
}

/// One VM's steps for this pass.
async fn run_vm(ctx: &ApplyContext<'_>, mut work: VmWork) -> (VmReport, VmWork) {
    let mut report = VmReport {
        netbox_id: work.record.id,
        name: work.record.name.clone(),
        vmid: work.vmid(),
        intent: work.intent,
        phase: "Skipped",
        steps: Vec::new(),
        warning: None,
        notes: Vec::new(),
        waiting: None,
        provisioned: false,
        retired: false,
        reboot_required: false,
        allocated: Vec::new(),
        actions: Vec::new(),
    };
    let mut template_config: Option<BTreeMap<String, String>> = None;
    for _ in 0..MAX_STEPS {
        match plan::next_step(&work, ctx.cluster, ctx.settings) {
            Decision::Done => break,
            Decision::Wait { why } => {
                report.waiting = Some(why);
                break;
            }
            Decision::Blocked { warning } => {
                report.warning = Some(warning);
                break;
            }
            Decision::ReadConfig { vmid } => {
                let node = work
                    .guest
                    .as_ref()
                    .map(|g| g.node.clone())
                    .unwrap_or_default();
                match read_guest(ctx.pve, &node, vmid).await {
                    Ok(Some(g)) => work.guest = Some(g),
                    Ok(None) => {
                        report.waiting = Some(format!("vm {vmid} could not be found on {node}"));
                        break;
                    }
                    Err(e) => {
                        report.warning = Some(Warning::new(
                            warnings::REQUEST_FAILED,
                            format!("reading the config of vm {vmid}: {e}"),
                        ));
                        break;
                    }
                }
            }
            Decision::Act { step } => {
                if ctx.settings.dry_run {
                    if let Step::Clone {
                        template,
                        template_node,
                        ..
                    } = &step
                        && template_config.is_none()
                    {
                        template_config = read_config(ctx.pve, template_node, *template)
                            .await
                            .ok()
                            .flatten();
                    }
                    let placeholder = match &step {
                        Step::Reserve => ctx.vmids.next(ctx.pve, false).await.unwrap_or(0),
                        _ => 0,
                    };
                    report.steps.push(step.describe());
                    plan::assume(
                        &step,
                        &mut work,
                        ctx.cluster,
                        template_config.as_ref(),
                        placeholder,
                    );
                    continue;
                }
                let result = execute(ctx, &step, &mut work, &mut report).await;
                let outcome = match &result {
                    Ok(()) => "success",
                    Err(StepError::Running(_)) => "running",
                    Err(StepError::Warn(w)) => w.code,
                };
                report.actions.push((step.action(), outcome));
                report.steps.push(step.describe());
                match result {
                    Ok(()) => {}
                    Err(StepError::Running(w)) => {
                        report.waiting = Some(w.message);
                        break;
                    }
                    Err(StepError::Warn(w)) => {
                        report.warning = Some(w);
                        break;
                    }
                }
            }
        }
    }
    // A released record names no vmid any more: the report keeps the one it had.
    report.vmid = work.vmid().or(report.vmid);
    report.notes = plan::config_notes(&work);
    report.reboot_required = work.guest.as_ref().is_some_and(plan::reboot_required);
    report.phase = phase_label(&work.record, work.guest.as_ref(), !report.steps.is_empty());
    (report, work)
}

/// Runs one step and brings `work` up to date with what it changed.
async fn execute(
    ctx: &ApplyContext<'_>,
    step: &Step,
    work: &mut VmWork,
    report: &mut VmReport,
) -> Result<(), StepError> {
    let warn_pve = |e: PveError| StepError::Warn(pve_warning(step, &e));
    let warn_netbox = |e: NetBoxError| StepError::Warn(netbox_warning(step, &e));
    let mark = ctx.cluster.mark.as_str();
    match step {
        Step::Reserve => {
            let vmid = ctx.vmids.next(ctx.pve, true).await.map_err(warn_pve)?;
            let patch = json!({"id": work.record.id, "custom_fields": {
                CF_PROVISION_VMID: vmid, CF_PROVISION: Phase::Reserved.as_str(), CF_PROVISIONED_BY: mark,
            }});
            if let Err(e) = ctx.netbox.update(VIRTUAL_MACHINES, vec![patch]).await {
                ctx.vmids.release(vmid);
                return Err(warn_netbox(e));
            }
            plan::assume(step, work, ctx.cluster, None, vmid);
        }
        Step::ReleaseVmid { vmid } => {
            let patch = json!({"id": work.record.id, "custom_fields": {
                CF_PROVISION_VMID: null, CF_PROVISION: null,
            }});
            ctx.netbox
                .update(VIRTUAL_MACHINES, vec![patch])
                .await
                .map_err(warn_netbox)?;
            report.notes.push(Warning::new(
                warnings::VMID_TAKEN,
                format!("vm {vmid} exists without this record's provisioning mark: another vmid is reserved"),
            ));
            plan::assume(step, work, ctx.cluster, None, 0);
        }
        Step::AllocateIp {
            interface_id,
            prefix_id,
            prefix,
            ..
        } => {
            let ip = allocate_ip(ctx.netbox, *interface_id, *prefix_id, prefix)
                .await
                .map_err(StepError::Warn)?;
            report.allocated.push(ip.address.clone());
            if let Some(i) = work
                .record
                .interfaces
                .iter_mut()
                .find(|i| i.id == *interface_id)
            {
                let gateway = i.prefix.as_ref().and_then(|p| p.gateway.clone());
                i.ips.push(NbIp { gateway, ..ip });
            }
        }
        Step::Clone {
            template,
            template_node,
            vmid,
            name,
            target,
            storage,
            pool,
            notes,
        } => {
            node_ok(template_node)?;
            let mut form = vec![
                ("newid".to_string(), vmid.to_string()),
                ("name".to_string(), name.clone()),
                ("full".to_string(), flag(true)),
                ("storage".to_string(), storage.clone()),
                ("description".to_string(), notes.clone()),
            ];
            if let Some(t) = target {
                form.push(("target".into(), t.clone()));
            }
            if let Some(p) = pool {
                form.push(("pool".into(), p.clone()));
            }
            let path = format!("/nodes/{template_node}/qemu/{template}/clone");
            let node = target.clone().unwrap_or_else(|| template_node.clone());
            task_then_refresh(ctx, step, work, Write::Post(&path, &form), (&node, *vmid)).await?;
        }
        Step::Configure {
            vmid,
            node,
            change,
            digest,
        } => {
            node_ok(node)?;
            let mut form: Vec<(String, String)> = change
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !change.delete.is_empty() {
                let keys: Vec<&str> = change.delete.iter().map(String::as_str).collect();
                form.push(("delete".into(), keys.join(",")));
            }
            if let Some(d) = digest {
                form.push(("digest".into(), d.clone()));
            }
            let path = format!("/nodes/{node}/qemu/{vmid}/config");
            task_then_refresh(ctx, step, work, Write::Post(&path, &form), (node, *vmid)).await?;
        }
        Step::Resize {
            vmid,
            node,
            disk,
            size_mib,
        } => {
            node_ok(node)?;
            let form = vec![
                ("disk".to_string(), disk.clone()),
                ("size".to_string(), format!("{size_mib}M")),
            ];
            let path = format!("/nodes/{node}/qemu/{vmid}/resize");
            task_then_refresh(ctx, step, work, Write::Put(&path, &form), (node, *vmid)).await?;
        }
        Step::Start { vmid, node } => {
            node_ok(node)?;
            let path = format!("/nodes/{node}/qemu/{vmid}/status/start");
            task_then_refresh(ctx, step, work, Write::Post(&path, &[]), (node, *vmid)).await?;
        }
        Step::HandOver {
            vmid,
            status,
            record,
            children,
        } => {
            let mut by_endpoint: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for (endpoint, id) in children {
                by_endpoint
                    .entry(endpoint)
                    .or_default()
                    .push(json!({"id": id, "custom_fields": {CF_OWNER: mark}}));
            }
            for (endpoint, patches) in by_endpoint {
                ctx.netbox
                    .update(endpoint, patches)
                    .await
                    .map_err(warn_netbox)?;
            }
            if *record {
                let patch = json!({"id": work.record.id, "status": status, "custom_fields": {
                    CF_OWNER: mark, CF_VMID: vmid, CF_GUEST_TYPE: "qemu",
                    CF_PROVISION: Phase::Provisioned.as_str(), CF_STALE_SINCE: null,
                }});
                ctx.netbox
                    .update(VIRTUAL_MACHINES, vec![patch])
                    .await
                    .map_err(warn_netbox)?;
                report.provisioned = true;
            }
            plan::assume(step, work, ctx.cluster, None, 0);
        }
        Step::MarkRetiring { .. } => {
            let patch = json!({"id": work.record.id, "custom_fields": {CF_PROVISION: Phase::Retiring.as_str()}});
            ctx.netbox
                .update(VIRTUAL_MACHINES, vec![patch])
                .await
                .map_err(warn_netbox)?;
            plan::assume(step, work, ctx.cluster, None, 0);
        }
        Step::Shutdown { vmid, node } => {
            node_ok(node)?;
            shut_down(ctx, step, node, *vmid).await?;
            refresh(ctx, step, work, node, *vmid).await?;
        }
        Step::Destroy { vmid, node } => {
            node_ok(node)?;
            // Looked at again just before: a protection flag or a lock set since the read,
            // or notes that no longer carry this record's mark, stop it.
            match read_guest(ctx.pve, node, *vmid).await.map_err(warn_pve)? {
                None => {
                    work.guest = None;
                    return Ok(());
                }
                Some(fresh) => {
                    let still_ours = fresh
                        .mark
                        .as_ref()
                        .is_some_and(|m| m.netbox_vm == work.record.id && m.owner == mark);
                    if !still_ours
                        || fresh.protected
                        || fresh.lock.is_some()
                        || fresh.power != Power::Stopped
                    {
                        work.guest = Some(fresh);
                        return Err(StepError::Running(Warning::new(
                            warnings::FOREIGN_VM,
                            format!(
                                "vm {vmid} changed since it was read: looked at again in the next pass"
                            ),
                        )));
                    }
                }
            }
            let query = vec![
                ("purge".to_string(), flag(true)),
                ("destroy-unreferenced-disks".to_string(), flag(true)),
            ];
            let path = format!("/nodes/{node}/qemu/{vmid}");
            run_task(
                ctx,
                step,
                &path,
                ctx.pve.delete(&path, &query).await,
                ctx.settings.task_timeout,
            )
            .await?;
            report.retired = true;
            work.guest = None;
        }
        Step::Release { policy, .. } => {
            release(ctx.netbox, &work.record, *policy)
                .await
                .map_err(warn_netbox)?;
            plan::assume(step, work, ctx.cluster, None, 0);
        }
    }
    Ok(())
}

/// A node name from PVE goes into a path only when it is one.
fn node_ok(node: &str) -> Result<(), StepError> {
    if is_node_name(node) {
        Ok(())
    } else {
        Err(StepError::Warn(Warning::new(
            warnings::NODE_UNAVAILABLE,
            format!(
                "{:?} is not a valid node name",
                crate::netbox::mapping::truncate(node, 70)
            ),
        )))
    }
}

/// Waits for the task a write started (none: done already).
async fn run_task(
    ctx: &ApplyContext<'_>,
    step: &Step,
    path: &str,
    answer: Result<Value, PveError>,
    timeout: std::time::Duration,
) -> Result<(), StepError> {
    let answer = answer.map_err(|e| StepError::Warn(pve_warning(step, &e)))?;
    let Some(upid) =
        task_of_at(path, &answer).map_err(|e| StepError::Warn(pve_warning(step, &e)))?
    else {
        return Ok(());
    };
    match wait_task(ctx.pve, &upid, &TaskWait::with_timeout(timeout), ctx.tasks).await {
        Ok(_) => Ok(()),
        Err(e @ TaskError::TimedOut { .. }) => Err(StepError::Running(task_warning(step, &e))),
        Err(e) => Err(StepError::Warn(task_warning(step, &e))),
    }
}

/// A write that starts a task: its path and form.
enum Write<'a> {
    Post(&'a str, &'a [(String, String)]),
    Put(&'a str, &'a [(String, String)]),
}

/// Sends `write`, waits for its task (`taskTimeout`), then reads the guest `at` (node,
/// vmid) again.
async fn task_then_refresh(
    ctx: &ApplyContext<'_>,
    step: &Step,
    work: &mut VmWork,
    write: Write<'_>,
    at: (&str, u32),
) -> Result<(), StepError> {
    let (path, answer) = match write {
        Write::Post(path, form) => (path, ctx.pve.post(path, form).await),
        Write::Put(path, form) => (path, ctx.pve.put(path, form).await),
    };
    run_task(ctx, step, path, answer, ctx.settings.task_timeout).await?;
    refresh(ctx, step, work, at.0, at.1).await
}

/// Reads the guest again after a step.
async fn refresh(
    ctx: &ApplyContext<'_>,
    step: &Step,
    work: &mut VmWork,
    node: &str,
    vmid: u32,
) -> Result<(), StepError> {
    match read_guest(ctx.pve, node, vmid).await {
        Ok(g) => {
            work.guest = g;
            Ok(())
        }
        Err(e) => Err(StepError::Warn(pve_warning(step, &e))),
    }
}

/// Shutdown within `shutdownTimeout`; a stop when it does not end in time or fails.
async fn shut_down(
    ctx: &ApplyContext<'_>,
    step: &Step,
    node: &str,
    vmid: u32,
) -> Result<(), StepError> {
    let timeout = ctx.settings.shutdown_timeout;
    let path = format!("/nodes/{node}/qemu/{vmid}/status/shutdown");
    let form = vec![("timeout".to_string(), timeout.as_secs().to_string())];
    let wait = timeout + std::time::Duration::from_secs(30);
    let shutdown = run_task(ctx, step, &path, ctx.pve.post(&path, &form).await, wait).await;
    if shutdown.is_ok() {
        return Ok(());
    }
    tracing::warn!(
        vmid,
        node,
        "shutdown did not end in time or failed: stopping the VM"
    );
    let path = format!("/nodes/{node}/qemu/{vmid}/status/stop");
    run_task(
        ctx,
        step,
        &path,
        ctx.pve.post(&path, &[]).await,
        ctx.settings.task_timeout,
    )
    .await
}

/// A guest's config, `None` when PVE has no such VM.
async fn read_config(
    pve: &dyn PveWriteApi,
    node: &str,
    vmid: u32,
) -> Result<Option<BTreeMap<String, String>>, PveError> {
    if !is_node_name(node) {
        return Ok(None);
    }
    match pve.get(&format!("/nodes/{node}/qemu/{vmid}/config")).await {
        Ok(v) => Ok(Some(config_map(&v))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// True for PVE's answers about a VM that does not exist.
fn gone(e: &PveError) -> bool {
    match e {
        PveError::NotFound { .. } => true,
        PveError::Status {
            status: 500,
            message,
            ..
        } => message.contains("does not exist"),
        _ => false,
    }
}

/// A config answer as text values, bounded.
fn config_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .take(MAX_CONFIG_KEYS)
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => flag(*b),
                _ => return None,
            };
            (text.len() <= MAX_CONFIG_VALUE).then(|| (k.clone(), text))
        })
        .collect()
}

/// The guest as PVE shows it now: config, pending values and power state.
async fn read_guest(
    pve: &dyn PveWriteApi,
    node: &str,
    vmid: u32,
) -> Result<Option<GuestView>, PveError> {
    let Some(config) = read_config(pve, node, vmid).await? else {
        return Ok(None);
    };
    let status = pve
        .get(&format!("/nodes/{node}/qemu/{vmid}/status/current"))
        .await?;
    let pending: BTreeMap<String, String> =
        match pve.get(&format!("/nodes/{node}/qemu/{vmid}/pending")).await {
            Ok(list) => list
                .as_array()
                .into_iter()
                .flatten()
                .take(MAX_CONFIG_KEYS)
                .filter_map(|p| {
                    let key = p["key"].as_str()?;
                    let value = match &p["pending"] {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((key.to_string(), value))
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        };
    let power = match status["status"].as_str() {
        Some("running") => Power::Running,
        Some("stopped") => Power::Stopped,
        _ => Power::Unknown,
    };
    let lock = config
        .get("lock")
        .cloned()
        .or_else(|| status["lock"].as_str().map(str::to_string));
    Ok(Some(GuestView {
        vmid,
        node: node.to_string(),
        qemu: true,
        name: config.get("name").cloned().unwrap_or_default(),
        power,
        lock,
        protected: config.get("protection").is_some_and(|p| p == "1"),
        mark: config
            .get("description")
            .and_then(|d| super::mark::ProvisionMark::find(d)),
        config: Some(config),
        pending,
    }))
}

/// Takes the next free address of a prefix for an interface. NetBox allocates it under a
/// lock; a lost answer is looked up on the interface before anything else happens.
async fn allocate_ip(
    netbox: &dyn NetBoxApi,
    interface: u64,
    prefix_id: u64,
    prefix: &str,
) -> Result<NbIp, Warning> {
    let endpoint = format!("ipam/prefixes/{prefix_id}/available-ips");
    let body = json!({
        "assigned_object_type": "virtualization.vminterface",
        "assigned_object_id": interface,
        "status": "active",
        "description": "allocated by proxmox-netbox-operator",
    });
    let created = match netbox.create(&endpoint, vec![body]).await {
        Ok(v) => v,
        Err(NetBoxError::Status { status: 409, .. }) => {
            return Err(Warning::new(
                warnings::PREFIX_EXHAUSTED,
                format!("prefix {prefix} has no free address"),
            ));
        }
        Err(e) if e.is_transport() => {
            // NetBox may have allocated it: look on the interface.
            let query = vec![("vminterface_id".to_string(), interface.to_string())];
            match netbox.list("ipam/ip-addresses", &query).await {
                Ok(found) => found,
                Err(_) => {
                    return Err(Warning::new(
                        warnings::OUTCOME_UNKNOWN,
                        format!(
                            "allocating an address of {prefix}: {e}; the next pass looks at the interface"
                        ),
                    ));
                }
            }
        }
        Err(e) => {
            return Err(Warning::new(
                warnings::REQUEST_FAILED,
                format!("allocating an address of {prefix}: {e}"),
            ));
        }
    };
    created
        .iter()
        .find_map(|ip| {
            Some(NbIp {
                id: id_of(ip)?,
                address: ip["address"].as_str()?.chars().take(64).collect(),
                owner: None,
                gateway: None,
            })
        })
        .ok_or_else(|| {
            Warning::new(
                warnings::OUTCOME_UNKNOWN,
                format!("allocating an address of {prefix}: NetBox's answer named none; the next pass looks at the interface"),
            )
        })
}

/// The record of a destroyed VM: kept `offline` and released (no owner mark on it or its
/// interfaces, addresses, MACs and disks: it is people's again), or deleted (NetBox deletes
/// its interfaces, addresses, MACs and disks with it).
async fn release(
    netbox: &dyn NetBoxApi,
    record: &super::model::NbVm,
    policy: RetiredRecordPolicy,
) -> Result<(), NetBoxError> {
    if policy == RetiredRecordPolicy::Delete {
        return netbox.delete(VIRTUAL_MACHINES, vec![record.id]).await;
    }
    let unmark = |id: u64| json!({"id": id, "custom_fields": {CF_OWNER: null}});
    let iface_ids: Vec<u64> = record.interfaces.iter().map(|i| i.id).collect();
    let mut macs = Vec::new();
    for chunk in iface_ids.chunks(50) {
        let query: Vec<(String, String)> = chunk
            .iter()
            .map(|id| ("vminterface_id".to_string(), id.to_string()))
            .collect();
        macs.extend(netbox.list("dcim/mac-addresses", &query).await?);
    }
    let ips: Vec<Value> = record
        .interfaces
        .iter()
        .flat_map(|i| i.ips.iter().map(|ip| unmark(ip.id)))
        .collect();
    let children: [(&str, Vec<Value>); 4] = [
        ("ipam/ip-addresses", ips),
        (
            "dcim/mac-addresses",
            macs.iter().filter_map(id_of).map(unmark).collect(),
        ),
        (
            "virtualization/virtual-disks",
            record.disks.iter().map(|d| unmark(d.id)).collect(),
        ),
        (
            "virtualization/interfaces",
            iface_ids.iter().map(|id| unmark(*id)).collect(),
        ),
    ];
    for (endpoint, patches) in children {
        if !patches.is_empty() {
            netbox.update(endpoint, patches).await?;
        }
    }
    let patch = json!({"id": record.id, "status": "offline", "custom_fields": {
        CF_OWNER: null, CF_VMID: null, CF_GUEST_TYPE: null, CF_STALE_SINCE: null,
        CF_PROVISION: Phase::Retired.as_str(), CF_PROVISION_VMID: null,
    }});
    netbox
        .update(VIRTUAL_MACHINES, vec![patch])
        .await
        .map(|_| ())
}
