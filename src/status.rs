//! Pure construction of the ProxmoxCluster status from one pipeline run.
//!
//! No I/O and no clock: the caller passes `now`, so every rule here is tested directly.

mod provisioning;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::conditions::{PermissionWarning, reasons, types};
use crate::crd::facts::NodeHardware;
use crate::crd::{
    CephStatusEntry, InventorySummary, LastChangeEntry, NodeStatusEntry, NodeWarning,
    ProxmoxClusterStatus, ReadFailureEntry, StorageStatusEntry, SyncSummary,
};
use crate::inventory::{Inventory, ReadFailure, ReadOutcome, ReadScope};
use crate::netbox::report::KindCounts;
use crate::provision::report::ProvisionReport;
use crate::stage_errors::{ConfigError, NetBoxSyncError, ProxmoxReadError, StageFailure};
use crate::watch::{ChangeSet, GuestChange, PollRecord};
use provisioning::{is_provisioning_condition, provisioning_conditions, provisioning_status};

/// At most this many read failures are listed in the status.
pub const MAX_READ_FAILURES: usize = 50;

/// Without any other change, the status is still rewritten when its `lastSyncTime` is
/// older than this, so `kubectl get` shows that syncs keep happening.
pub const STATUS_HEARTBEAT: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Discovery result of one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeDiscovery {
    /// PVE node name.
    pub node: String,
    /// Address used (or that would have been used).
    pub address: Option<String>,
    /// Facts, when discovery succeeded.
    pub hardware: Option<NodeHardware>,
    /// Warning, when it failed.
    pub warning: Option<NodeWarning>,
}

/// What the NetBox stage did.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NetBoxOutcome {
    /// Not run, because an earlier stage failed.
    #[default]
    NotRun,
    /// Proxmox was read (and hardware discovered) and the sync has not finished yet: the
    /// state of the status written between the two stages (see [`observed_status`]).
    InProgress,
    /// NetBox could not be used at all (bootstrap or reads failed).
    Failed(NetBoxSyncError),
    /// The sync ran (possibly with failed objects, see the summary).
    Done(SyncSummary),
}

/// External systems the pipeline calls (the `system` label of the call metric).
pub mod systems {
    /// The Proxmox VE API.
    pub const PROXMOX: &str = "proxmox";
    /// The NetBox REST API.
    pub const NETBOX: &str = "netbox";
    /// SSH to a node (one per node discovery).
    pub const SSH: &str = "ssh";
}

/// Outcome label of a call that succeeded.
pub const CALL_SUCCESS: &str = "success";

/// Calls made to external systems during one run, by system and outcome (`success` or a
/// stable error kind such as `Timeout`, `Unauthorized`, `NetBoxUnreachable`, or a
/// discovery warning code).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalCalls(pub BTreeMap<(String, String), u64>);

impl ExternalCalls {
    /// Adds `n` calls to `system` with `outcome`.
    pub fn add(&mut self, system: &str, outcome: &str, n: u64) {
        if n > 0 {
            *self
                .0
                .entry((system.to_string(), outcome.to_string()))
                .or_insert(0) += n;
        }
    }

    /// Calls to `system` with `outcome`.
    pub fn get(&self, system: &str, outcome: &str) -> u64 {
        self.0
            .get(&(system.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The status entry of a targeted pass's changes, found at `detected`, synced by `applied`.
pub fn last_change(
    changes: &ChangeSet,
    detected: DateTime<Utc>,
    applied: DateTime<Utc>,
) -> LastChangeEntry {
    let count = |kind: GuestChange| changes.values().filter(|c| **c == kind).count() as i64;
    LastChangeEntry {
        detected_time: rfc3339(detected),
        applied_time: rfc3339(applied),
        created: count(GuestChange::Created),
        destroyed: count(GuestChange::Destroyed),
        migrated: count(GuestChange::Migrated),
        changed: count(GuestChange::Changed),
    }
}

/// Everything one pipeline run produced; the input of [`build_status`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineOutcome {
    /// Spec or Secret resolution failed: nothing else ran.
    pub config_error: Option<ConfigError>,
    /// The resolved `spec.sync.interval`; `None` when the spec could not be resolved.
    pub sync_interval: Option<Duration>,
    /// The resolved `spec.sync.watchInterval`; `None` when polls are off or the spec could
    /// not be resolved.
    pub watch_interval: Option<Duration>,
    /// A targeted pass: what its poll found (`None` on a full pass).
    pub poll: Option<PollRecord>,
    /// The PVE read failed as a whole.
    pub proxmox_error: Option<ProxmoxReadError>,
    /// Missing privileges (an error) or excess write privileges (a warning).
    pub permission_warning: Option<PermissionWarning>,
    /// The inventory, when the PVE read succeeded at least partly.
    pub inventory: Option<Inventory>,
    /// `None` when discovery is disabled; otherwise one entry per node, in order.
    pub discovery: Option<Vec<NodeDiscovery>>,
    /// The NetBox stage.
    pub netbox: NetBoxOutcome,
    /// True when the sync ran in dry-run mode.
    pub dry_run: bool,
    /// NetBox counts per object kind (`dcim.device`, ...), when the sync ran.
    pub netbox_kinds: BTreeMap<String, KindCounts>,
    /// Calls made to Proxmox, NetBox and over SSH, by outcome.
    pub calls: ExternalCalls,
    /// What provisioning did, when it is enabled and ran (full passes only).
    pub provisioning: Option<ProvisionReport>,
}

impl PipelineOutcome {
    /// True when every stage fully succeeded.
    pub fn fully_successful(&self) -> bool {
        self.config_error.is_none()
            && self.proxmox_error.is_none()
            && self
                .inventory
                .as_ref()
                .is_some_and(|inv| inv.completeness.all_complete())
            && matches!(&self.netbox, NetBoxOutcome::Done(s) if s.failed == 0)
    }
}

/// Human-readable name of a read scope, for status and Events.
pub fn scope_name(scope: &ReadScope) -> String {
    match scope {
        ReadScope::Version => "version".into(),
        ReadScope::ClusterStatus => "cluster status".into(),
        ReadScope::Permissions => "permissions".into(),
        ReadScope::NodeStatus(n) => format!("node {n} status"),
        ReadScope::NodeNetwork(n) => format!("node {n} network"),
        ReadScope::NodeDisks(n) => format!("node {n} disks"),
        ReadScope::NodeStorage(n) => format!("node {n} storage"),
        ReadScope::NodeGuests(n) => format!("node {n} guests"),
        ReadScope::GuestConfig(id) => format!("guest {id} config"),
        ReadScope::GuestAddresses(id) => format!("guest {id} addresses"),
        ReadScope::Ceph => "ceph".into(),
        ReadScope::HaResources => "HA resources".into(),
    }
}

/// Guests whose runtime addresses (QEMU guest agent, LXC interfaces) were not read in
/// this pass, by reason: `AgentNotRunning`, `AgentDisabled`, `GuestNotRunning` (stopped
/// guests and templates) or the reason of a failed read. Each guest appears once.
pub fn guest_address_gaps(inv: &Inventory) -> BTreeMap<&'static str, Vec<u32>> {
    let mut out: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    for part in &inv.completeness.parts {
        let ReadScope::GuestAddresses(vmid) = part.scope else {
            continue;
        };
        let reason = match &part.outcome {
            ReadOutcome::Complete => continue,
            ReadOutcome::NotApplicable { reason, .. } | ReadOutcome::Failed { reason, .. } => {
                reason.as_str()
            }
        };
        let ids = out.entry(reason).or_default();
        if !ids.contains(&vmid) {
            ids.push(vmid);
        }
    }
    for ids in out.values_mut() {
        ids.sort_unstable();
    }
    out
}

/// Start of the part of the `ProxmoxReachable` message about guest agents that do not
/// answer; Events compare this part between two passes.
pub const AGENT_NOTE_PREFIX: &str = "QEMU guest agent not running on ";

/// The note about running guests whose agent did not answer, if any: their addresses
/// come from the configuration only.
pub fn agent_note(inv: &Inventory) -> Option<String> {
    let gaps = guest_address_gaps(inv);
    let ids = gaps.get(ReadFailure::AgentNotRunning.as_str())?;
    let shown: Vec<String> = ids.iter().take(10).map(u32::to_string).collect();
    let more = ids.len().saturating_sub(shown.len());
    let mut note = format!(
        "{AGENT_NOTE_PREFIX}{} guest(s), addresses from their configuration only: {}",
        ids.len(),
        shown.join(", ")
    );
    if more > 0 {
        note.push_str(&format!(" and {more} more"));
    }
    Some(note)
}

/// The agent note inside a `ProxmoxReachable` message, if any.
pub fn agent_note_in(message: &str) -> Option<&str> {
    message.find(AGENT_NOTE_PREFIX).map(|i| &message[i..])
}

/// Formats a time as RFC 3339 with second precision, the form used in the status.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Builds the new status from the previous one and a pipeline outcome.
pub fn build_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    outcome: &PipelineOutcome,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let prev = previous.cloned().unwrap_or_default();
    let now_s = rfc3339(now);
    let mut status = ProxmoxClusterStatus {
        observed_generation: generation,
        last_sync_time: Some(now_s.clone()),
        last_successful_sync_time: if outcome.fully_successful() {
            Some(now_s.clone())
        } else {
            prev.last_successful_sync_time.clone()
        },
        last_resync_request: prev.last_resync_request.clone(),
        pve_version: prev.pve_version.clone(),
        pve_cluster_name: prev.pve_cluster_name.clone(),
        summary: prev.summary.clone(),
        sync: match &outcome.netbox {
            NetBoxOutcome::Done(s) => Some(s.clone()),
            _ => prev.sync.clone(),
        },
        read_failures: Vec::new(),
        nodes: prev.nodes.clone(),
        storage: prev.storage.clone(),
        ceph: prev.ceph.clone(),
        last_change: prev.last_change.clone(),
        provisioning: prev.provisioning.clone(),
        conditions: Vec::new(),
    };
    if let Some(inv) = &outcome.inventory {
        apply_inventory(&mut status, inv);
    }
    if outcome.poll.is_some() {
        // A targeted pass ran no discovery: the nodes' facts, their time and warnings stay.
    } else if let Some(discovery) = &outcome.discovery {
        apply_discovery(&mut status.nodes, discovery, &now_s);
    } else {
        for node in &mut status.nodes {
            node.warning = None;
        }
    }
    // A full pass that got past the Proxmox read ran provisioning when it is enabled; any
    // other pass leaves its part of the status as it was.
    let provisioning_ran =
        outcome.config_error.is_none() && outcome.proxmox_error.is_none() && outcome.poll.is_none();
    let mut conditions = compute_conditions(outcome, generation);
    match &outcome.provisioning {
        Some(r) => {
            status.provisioning = Some(provisioning_status(r));
            conditions.extend(
                provisioning_conditions(r)
                    .into_iter()
                    .map(|(t, ok, reason, m)| condition(t, ok, reason, m, generation)),
            );
        }
        None if provisioning_ran => status.provisioning = None,
        None => conditions.extend(
            prev.conditions
                .iter()
                .filter(|c| is_provisioning_condition(c))
                .cloned(),
        ),
    }
    status.conditions = conditions
        .into_iter()
        .map(|c| carry_transition_time(c, &prev.conditions, &now))
        .collect();
    status
}

fn apply_inventory(status: &mut ProxmoxClusterStatus, inv: &Inventory) {
    status.pve_version = inv.pve_version.clone();
    status.pve_cluster_name = inv.cluster.name.clone();
    let c = inv.counts();
    let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    status.summary = Some(InventorySummary {
        nodes: int(c.nodes),
        nodes_online: int(c.nodes_online),
        vms: int(c.vms),
        containers: int(c.containers),
        templates: int(c.templates),
        interfaces: int(c.interfaces),
        ip_addresses: int(c.ip_addresses),
        disks: int(c.disks),
        storage_pools: int(c.storage_pools),
    });
    status.read_failures = inv
        .completeness
        .parts
        .iter()
        .filter_map(|p| match &p.outcome {
            ReadOutcome::Failed { reason, message } => Some(ReadFailureEntry {
                scope: scope_name(&p.scope),
                reason: reason.as_str().into(),
                message: message.clone(),
            }),
            _ => None,
        })
        .take(MAX_READ_FAILURES)
        .collect();
    let previous_nodes = std::mem::take(&mut status.nodes);
    status.nodes = inv
        .nodes
        .iter()
        .map(|n| {
            let prev = previous_nodes.iter().find(|p| p.name == n.name);
            NodeStatusEntry {
                name: n.name.clone(),
                online: n.online,
                address: n.address.clone(),
                hardware: prev.and_then(|p| p.hardware.clone()),
                warning: prev.and_then(|p| p.warning.clone()),
                last_discovery_time: prev.and_then(|p| p.last_discovery_time.clone()),
            }
        })
        .collect();
    let mut storage: Vec<StorageStatusEntry> = Vec::new();
    for pool in &inv.storage {
        if pool.shared && storage.iter().any(|s| s.name == pool.name) {
            continue;
        }
        storage.push(StorageStatusEntry {
            name: pool.name.clone(),
            node: pool.node.clone(),
            storage_type: pool.storage_type.clone(),
            shared: pool.shared,
            total_bytes: pool.total_bytes.and_then(|b| i64::try_from(b).ok()),
            used_bytes: pool.used_bytes.and_then(|b| i64::try_from(b).ok()),
        });
    }
    status.storage = storage;
    status.ceph = inv.ceph.as_ref().map(|c| CephStatusEntry {
        health: c.health.clone(),
        monitors: i64::try_from(c.monitors.len()).unwrap_or(i64::MAX),
        osds_total: i64::from(c.osds_total),
        osds_up: i64::from(c.osds_up),
        pools: i64::try_from(c.pools.len()).unwrap_or(i64::MAX),
    });
}

fn apply_discovery(nodes: &mut Vec<NodeStatusEntry>, discovery: &[NodeDiscovery], now: &str) {
    for d in discovery {
        let entry = match nodes.iter_mut().position(|n| n.name == d.node) {
            Some(i) => &mut nodes[i],
            None => {
                nodes.push(NodeStatusEntry {
                    name: d.node.clone(),
                    ..Default::default()
                });
                let last = nodes.len() - 1;
                &mut nodes[last]
            }
        };
        if d.address.is_some() {
            entry.address = d.address.clone();
        }
        entry.warning = d.warning.clone();
        if let Some(hw) = &d.hardware {
            entry.hardware = Some(hw.clone());
            entry.last_discovery_time = Some(now.to_string());
        }
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    condition_with(
        type_,
        if ok { "True" } else { "False" },
        reason,
        message,
        generation,
    )
}

fn condition_with(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(jiff_epoch()),
    }
}

fn jiff_epoch() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::UNIX_EPOCH
}

fn compute_conditions(outcome: &PipelineOutcome, generation: Option<i64>) -> Vec<Condition> {
    let mut out = Vec::new();
    let cond = |t: &str, ok: bool, r: &str, m: String| condition(t, ok, r, m, generation);

    if let Some(err) = &outcome.config_error {
        out.push(cond(types::READY, false, err.reason(), err.to_string()));
        out.push(cond(
            types::PROXMOX_REACHABLE,
            false,
            reasons::NOT_RUN,
            "configuration is invalid".into(),
        ));
        out.push(condition_with(
            types::HARDWARE_DISCOVERED,
            "Unknown",
            reasons::NOT_RUN,
            "configuration is invalid: hardware discovery did not run".into(),
            generation,
        ));
        out.push(cond(
            types::NETBOX_SYNCED,
            false,
            reasons::NOT_RUN,
            "configuration is invalid".into(),
        ));
        out.push(cond(types::DEGRADED, true, err.reason(), err.to_string()));
        return out;
    }

    // ProxmoxReachable
    let failures: Vec<String> = outcome
        .inventory
        .iter()
        .flat_map(|inv| inv.completeness.failures())
        .map(|p| match &p.outcome {
            ReadOutcome::Failed { reason, .. } => {
                format!("{} ({})", scope_name(&p.scope), reason.as_str())
            }
            _ => String::new(),
        })
        .collect();
    let partial_read_message = (!failures.is_empty()).then(|| {
        let shown: Vec<&str> = failures.iter().take(5).map(String::as_str).collect();
        let more = failures.len().saturating_sub(shown.len());
        let mut m = format!(
            "{} part(s) of the Proxmox read failed, nothing in their scope was pruned: {}",
            failures.len(),
            shown.join(", ")
        );
        if more > 0 {
            m.push_str(&format!(" and {more} more"));
        }
        m
    });
    let with_agent_note = |m: String| match outcome.inventory.as_ref().and_then(agent_note) {
        Some(note) => format!("{m}; {note}"),
        None => m,
    };
    match (&outcome.proxmox_error, &partial_read_message) {
        (Some(err), _) => out.push(cond(
            types::PROXMOX_REACHABLE,
            false,
            err.reason(),
            err.to_string(),
        )),
        (None, Some(m)) => out.push(cond(
            types::PROXMOX_REACHABLE,
            true,
            reasons::PARTIAL_READ,
            with_agent_note(m.clone()),
        )),
        (None, None) => out.push(cond(
            types::PROXMOX_REACHABLE,
            true,
            reasons::READ_COMPLETE,
            with_agent_note("every part of the Proxmox VE API was read".into()),
        )),
    }

    // HardwareDiscovered
    match &outcome.discovery {
        None => out.push(cond(
            types::HARDWARE_DISCOVERED,
            false,
            reasons::DISCOVERY_DISABLED,
            "hardware discovery is disabled (spec.hardwareDiscovery.enabled=false)".into(),
        )),
        Some(nodes) => {
            let warned: Vec<String> = nodes
                .iter()
                .filter_map(|n| {
                    n.warning
                        .as_ref()
                        .map(|w| format!("{}: {}", n.node, w.code))
                })
                .collect();
            if warned.is_empty() {
                out.push(cond(
                    types::HARDWARE_DISCOVERED,
                    true,
                    reasons::DISCOVERED,
                    format!("hardware facts gathered on {} node(s)", nodes.len()),
                ));
            } else {
                out.push(cond(
                    types::HARDWARE_DISCOVERED,
                    false,
                    reasons::DISCOVERY_WARNINGS,
                    format!(
                        "discovery failed on {} of {} node(s): {}",
                        warned.len(),
                        nodes.len(),
                        warned.join(", ")
                    ),
                ));
            }
        }
    }

    // NetBoxSynced
    let in_progress = matches!(outcome.netbox, NetBoxOutcome::InProgress);
    let (synced_ok, synced_reason, synced_message) = match &outcome.netbox {
        NetBoxOutcome::NotRun => (
            false,
            reasons::NOT_RUN,
            "the NetBox sync did not run because the Proxmox read failed".to_string(),
        ),
        NetBoxOutcome::InProgress => (
            false,
            reasons::RECONCILING,
            "Proxmox was read; the NetBox sync is in progress".to_string(),
        ),
        NetBoxOutcome::Failed(err) => (false, err.reason(), err.to_string()),
        NetBoxOutcome::Done(s) => {
            let counts = format!(
                "created {}, updated {}, unchanged {}, deleted {}, stale {}, failed {}, collisions {}; {} write request(s)",
                s.created,
                s.updated,
                s.unchanged,
                s.deleted,
                s.stale,
                s.failed,
                s.collisions,
                s.write_requests
            );
            if s.failed > 0 {
                let first = s.errors.first().cloned().unwrap_or_default();
                (
                    false,
                    reasons::PARTIAL_SYNC,
                    format!("{counts}; first error: {first}"),
                )
            } else if let Some(why) = &s.prune_blocked {
                (
                    false,
                    reasons::PRUNE_BLOCKED,
                    format!("{counts}; pruning refused: {why}"),
                )
            } else if outcome.dry_run {
                (
                    true,
                    reasons::DRY_RUN,
                    format!("dry-run, nothing written; would have {counts}"),
                )
            } else {
                (true, reasons::SYNCED, counts)
            }
        }
    };
    out.push(condition_with(
        types::NETBOX_SYNCED,
        match (in_progress, synced_ok) {
            (true, _) => "Unknown",
            (false, true) => "True",
            (false, false) => "False",
        },
        synced_reason,
        synced_message.clone(),
        generation,
    ));

    // Degraded: anything that worked only partly.
    let mut degraded: Vec<(&'static str, String)> = Vec::new();
    if let Some(err) = &outcome.proxmox_error {
        degraded.push((err.reason(), err.to_string()));
    }
    if let Some(m) = &partial_read_message {
        degraded.push((reasons::PARTIAL_READ, m.clone()));
    }
    if let Some(w) = &outcome.permission_warning {
        degraded.push((w.reason, w.message.clone()));
    }
    if let NetBoxOutcome::Done(s) = &outcome.netbox {
        if s.failed > 0 {
            degraded.push((reasons::PARTIAL_SYNC, synced_message.clone()));
        }
        if s.collisions > 0 {
            degraded.push((
                reasons::COLLISIONS,
                format!(
                    "{} NetBox object(s) in the way were left untouched: objects not owned by this operator (spec.netbox.adoptExisting takes them over) or IP addresses in use in the same IP space (give each Proxmox cluster its own VRF with spec.netbox.vrf)",
                    s.collisions
                ),
            ));
        }
    }
    if let NetBoxOutcome::Failed(err) = &outcome.netbox {
        degraded.push((err.reason(), err.to_string()));
    }
    if let Some(r) = &outcome.provisioning {
        if let Some(why) = &r.failure {
            degraded.push((reasons::PROVISIONING_FAILED, why.clone()));
        } else if r.warnings() > 0 {
            degraded.push((
                reasons::PROVISIONING_WARNINGS,
                format!(
                    "provisioning left {} VM(s) with a warning (see status.provisioning.vms)",
                    r.warnings()
                ),
            ));
        }
    }
    if let Some(nodes) = &outcome.discovery
        && nodes.iter().any(|n| n.warning.is_some())
    {
        degraded.push((
            reasons::DISCOVERY_WARNINGS,
            "hardware discovery failed on some nodes (see status.nodes[].warning)".into(),
        ));
    }
    match degraded.first() {
        Some((reason, message)) => out.push(cond(types::DEGRADED, true, reason, message.clone())),
        None => out.push(cond(
            types::DEGRADED,
            false,
            reasons::HEALTHY,
            "nothing is degraded".into(),
        )),
    }

    // Ready: the kstatus summary. True only when the data in NetBox is complete and right
    // (warnings such as discovery failures or collisions keep it True but set Degraded).
    let ready = if let Some(err) = &outcome.proxmox_error {
        cond(types::READY, false, err.reason(), err.to_string())
    } else if let Some(m) = &partial_read_message {
        cond(types::READY, false, reasons::PARTIAL_READ, m.clone())
    } else if let Some(w) = outcome
        .permission_warning
        .as_ref()
        .filter(|w| w.reason == reasons::MISSING_PRIVILEGES)
    {
        cond(types::READY, false, w.reason, w.message.clone())
    } else if in_progress {
        condition_with(
            types::READY,
            "Unknown",
            reasons::RECONCILING,
            synced_message,
            generation,
        )
    } else {
        cond(types::READY, synced_ok, synced_reason, synced_message)
    };
    out.insert(0, ready);
    out
}

/// Keeps the previous `lastTransitionTime` when a condition's status did not change.
fn carry_transition_time(
    mut c: Condition,
    previous: &[Condition],
    now: &DateTime<Utc>,
) -> Condition {
    let prev = previous.iter().find(|p| p.type_ == c.type_);
    c.last_transition_time = match prev {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => time_from_chrono(now),
    };
    c
}

fn time_from_chrono(t: &DateTime<Utc>) -> Time {
    let ts = k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(ts)
}

/// A status with every timestamp blanked, for comparing what really changed.
fn without_timestamps(s: &ProxmoxClusterStatus) -> ProxmoxClusterStatus {
    let mut s = s.clone();
    s.last_sync_time = None;
    s.last_successful_sync_time = None;
    for c in &mut s.conditions {
        c.last_transition_time = Time(jiff_epoch());
    }
    for n in &mut s.nodes {
        n.last_discovery_time = None;
    }
    s
}

/// Whether anything but timestamps differs between the two statuses (a timestamp that
/// appears or disappears counts as a difference).
pub fn differs(previous: Option<&ProxmoxClusterStatus>, new: &ProxmoxClusterStatus) -> bool {
    let Some(prev) = previous else { return true };
    without_timestamps(prev) != without_timestamps(new)
        || prev.last_successful_sync_time.is_none() != new.last_successful_sync_time.is_none()
        || prev.last_sync_time.is_none() != new.last_sync_time.is_none()
}

/// Whether the new status must be written: anything but timestamps changed, or the
/// previous `lastSyncTime` is older than [`STATUS_HEARTBEAT`].
pub fn needs_write(
    previous: Option<&ProxmoxClusterStatus>,
    new: &ProxmoxClusterStatus,
    now: DateTime<Utc>,
) -> bool {
    let Some(prev) = previous else { return true };
    if differs(Some(prev), new) {
        return true;
    }
    match prev
        .last_sync_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        Some(last) => now.signed_duration_since(last.with_timezone(&Utc)) >= STATUS_HEARTBEAT,
        None => true,
    }
}

/// The status written between the observe stages and the NetBox sync (`outcome.netbox`
/// is [`NetBoxOutcome::InProgress`]): this pass's per-node facts and warnings, inventory
/// summary, read failures, storage, Ceph, `ProxmoxReachable` and `HardwareDiscovered`.
///
/// What describes a *completed* pass is left as it was: `observedGeneration`,
/// `lastSyncTime`, `lastSuccessfulSyncTime`, `sync` and `lastResyncRequest`. For `Ready`,
/// `NetBoxSynced` and `Degraded`:
///
/// - same generation as the last completed pass (periodic resync, Secret change, resync
///   annotation): the three are carried over unchanged, so `Ready` does not flap every
///   interval and a quiet pass writes nothing;
/// - new generation, or no completed pass yet: `NetBoxSynced=Unknown` and, unless the
///   Proxmox read already decides it (`PartialRead`, `MissingPrivileges`: `False`),
///   `Ready=Unknown`, both with reason `Reconciling`; `Degraded` from what is known so far.
///
/// Either way `observedGeneration` still names the previous generation (or is absent),
/// so kstatus, Argo CD and Flux see the resource as in progress until the final write.
pub fn observed_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    outcome: &PipelineOutcome,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let mut outcome = outcome.clone();
    outcome.netbox = NetBoxOutcome::InProgress;
    let mut status = build_status(generation, previous, &outcome, now);
    let Some(prev) = previous else {
        status.observed_generation = None;
        status.last_sync_time = None;
        return status;
    };
    status.observed_generation = prev.observed_generation;
    status.last_sync_time = prev.last_sync_time.clone();
    status.last_successful_sync_time = prev.last_successful_sync_time.clone();
    status.last_resync_request = prev.last_resync_request.clone();
    status.sync = prev.sync.clone();
    if prev.observed_generation.is_some() && prev.observed_generation == generation {
        for t in [types::READY, types::NETBOX_SYNCED, types::DEGRADED] {
            let Some(old) = prev.conditions.iter().find(|c| c.type_ == t) else {
                continue;
            };
            match status.conditions.iter_mut().find(|c| c.type_ == t) {
                Some(c) => *c = old.clone(),
                None => status.conditions.push(old.clone()),
            }
        }
    }
    status
}

/// The status shown while `spec.sync.suspend` is true: every other field is kept.
pub fn suspended_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let ready = condition(
        types::READY,
        false,
        reasons::SUSPENDED,
        "sync is suspended (spec.sync.suspend=true): nothing is read or written".into(),
        generation,
    );
    with_ready(ready, generation, previous, now)
}

/// The status shown while a deletion under `deletionPolicy: Delete` cannot finish: `Ready`
/// is False with the cause and the way out; every other field is kept.
pub fn deletion_blocked_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    reason: &str,
    cause: &str,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    ready_false_status(
        generation,
        previous,
        reason,
        format!(
            "deletion with deletionPolicy Delete cannot remove the owned NetBox objects: {cause}; \
             it is retried with backoff; to let the resource go and keep them, set \
             spec.deletionPolicy to Orphan or annotate it proxmox-netbox.io/skip-cleanup=true"
        ),
        now,
    )
}

/// `previous` with `Ready=False` for `reason` and `message`; every other field is kept.
pub fn ready_false_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let ready = condition(types::READY, false, reason, message, generation);
    with_ready(ready, generation, previous, now)
}

/// `previous` with `ready` in place of its Ready condition, all at `generation`.
fn with_ready(
    ready: Condition,
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let prev_conditions = status.conditions.clone();
    status.conditions.retain(|c| c.type_ != types::READY);
    status
        .conditions
        .insert(0, carry_transition_time(ready, &prev_conditions, &now));
    for c in &mut status.conditions {
        c.observed_generation = generation;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SyncSummary;
    use crate::inventory::Node;
    use crate::netbox::client::NetBoxError;
    use crate::pve::client::PveError;
    use chrono::TimeZone;

    /// The injected clock: a fixed start plus minutes.
    fn at(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap() + chrono::TimeDelta::minutes(minutes)
    }

    fn cond<'a>(s: &'a ProxmoxClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} in {:?}", s.conditions))
    }

    fn synced(created: i64) -> PipelineOutcome {
        PipelineOutcome {
            inventory: Some(tests_support::complete_inventory()),
            netbox: NetBoxOutcome::Done(SyncSummary {
                mode: "Sync".into(),
                created,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn warning(reason: &'static str, message: &str) -> PermissionWarning {
        PermissionWarning {
            reason,
            message: message.into(),
        }
    }

    fn pve_failed(e: PveError) -> ProxmoxReadError {
        ProxmoxReadError::Api(e)
    }

    #[test]
    fn successful_pass_is_ready_with_timestamps_counts_and_generation() {
        let s = build_status(Some(4), None, &synced(3), at(0));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.last_sync_time.as_deref(), Some("2026-11-22T12:00:00Z"));
        assert_eq!(s.last_successful_sync_time, s.last_sync_time);
        let ready = cond(&s, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reasons::SYNCED)
        );
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(ready.last_transition_time, time_from_chrono(&at(0)));
        assert_eq!(cond(&s, types::DEGRADED).status, "False");
        assert_eq!(s.summary.as_ref().unwrap().nodes, 1);
        assert_eq!(s.sync.as_ref().unwrap().created, 3);
        assert_eq!(s.nodes[0].name, "pve1");
        let types_: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types_,
            vec![
                types::READY,
                types::PROXMOX_REACHABLE,
                types::HARDWARE_DISCOVERED,
                types::NETBOX_SYNCED,
                types::DEGRADED
            ]
        );
    }

    #[test]
    fn a_targeted_pass_keeps_the_nodes_discovery_and_records_its_changes() {
        let mut full = synced(0);
        full.discovery = Some(vec![NodeDiscovery {
            node: "pve1".into(),
            address: Some("10.0.0.1".into()),
            hardware: Some(NodeHardware::default()),
            warning: None,
        }]);
        let first = build_status(Some(1), None, &full, at(0));
        let discovered = first.nodes[0].last_discovery_time.clone();
        assert!(discovered.is_some());
        // The targeted pass carries the full pass's discovery; it ran none itself.
        let mut targeted = full.clone();
        let changes: ChangeSet = [
            (100, GuestChange::Changed),
            (101, GuestChange::Created),
            (102, GuestChange::Changed),
        ]
        .into();
        targeted.poll = Some(PollRecord::Changed(changes.clone()));
        let after = build_status(Some(1), Some(&first), &targeted, at(90));
        assert_eq!(after.nodes, first.nodes);
        assert_eq!(after.nodes[0].last_discovery_time, discovered);
        let entry = last_change(&changes, at(80), at(90));
        assert_eq!((entry.created, entry.changed, entry.destroyed), (1, 2, 0));
        assert!(entry.detected_time < entry.applied_time);
    }

    #[test]
    fn needs_write_ignores_timestamps_until_the_heartbeat() {
        let first = build_status(Some(1), None, &synced(0), at(0));
        assert!(needs_write(None, &first, at(0)));
        let again = build_status(Some(1), Some(&first), &synced(0), at(10));
        assert_ne!(first.last_sync_time, again.last_sync_time);
        assert!(!differs(Some(&first), &again));
        assert!(
            !needs_write(Some(&first), &again, at(10)),
            "only timestamps changed"
        );
        // An hour after the last written lastSyncTime it is rewritten anyway.
        let later = build_status(Some(1), Some(&first), &synced(0), at(60));
        assert!(needs_write(Some(&first), &later, at(60)));
        assert!(!needs_write(Some(&first), &later, at(59)));
        // Any real change is written at once.
        let changed = build_status(Some(1), Some(&first), &synced(2), at(1));
        assert!(needs_write(Some(&first), &changed, at(1)));
        let new_gen = build_status(Some(2), Some(&first), &synced(0), at(1));
        assert!(needs_write(Some(&first), &new_gen, at(1)));
    }

    #[test]
    fn transition_time_is_carried_over_while_the_status_stays_and_reset_on_change() {
        let s1 = build_status(Some(1), None, &synced(0), at(0));
        let s2 = build_status(Some(1), Some(&s1), &synced(0), at(30));
        assert_eq!(
            cond(&s2, types::READY).last_transition_time,
            time_from_chrono(&at(0)),
            "True -> True keeps the time"
        );
        let failed = PipelineOutcome {
            proxmox_error: Some(pve_failed(PveError::Connection {
                endpoint: "https://pve1:8006".into(),
                message: "connection refused".into(),
            })),
            ..Default::default()
        };
        let s3 = build_status(Some(1), Some(&s2), &failed, at(45));
        let ready = cond(&s3, types::READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, time_from_chrono(&at(45)));
        // A reason change alone is not a transition.
        let s4 = build_status(
            Some(1),
            Some(&s3),
            &PipelineOutcome {
                proxmox_error: Some(pve_failed(PveError::Unauthorized {
                    path: "/cluster/status".into(),
                })),
                ..Default::default()
            },
            at(50),
        );
        assert_eq!(
            cond(&s4, types::READY).reason,
            reasons::PROXMOX_UNAUTHORIZED
        );
        assert_eq!(
            cond(&s4, types::READY).last_transition_time,
            time_from_chrono(&at(45))
        );
        // The failed pass keeps the last success time and the data of the last read.
        assert_eq!(
            s4.last_successful_sync_time.as_deref(),
            Some("2026-11-22T12:30:00Z")
        );
        assert_eq!(s4.summary, s1.summary);
        assert_eq!(s4.nodes.len(), 1);
    }

    #[test]
    fn reasons_follow_the_first_failed_stage() {
        let ready = |o: &PipelineOutcome| {
            let s = build_status(Some(1), None, o, at(0));
            let r = cond(&s, types::READY);
            (r.status.clone(), r.reason.clone())
        };
        let config = PipelineOutcome {
            config_error: Some(ConfigError::Secret {
                field: "spec.netbox.tokenSecretRef".into(),
                source: crate::secrets::SecretError::Forbidden { name: "nb".into() },
            }),
            ..Default::default()
        };
        assert_eq!(
            ready(&config),
            ("False".into(), reasons::SECRET_UNREADABLE.into())
        );
        let s = build_status(Some(1), None, &config, at(0));
        let hw = cond(&s, types::HARDWARE_DISCOVERED);
        assert_eq!(
            (hw.status.as_str(), hw.reason.as_str()),
            ("Unknown", reasons::NOT_RUN)
        );
        assert_eq!(cond(&s, types::NETBOX_SYNCED).reason, reasons::NOT_RUN);
        assert_eq!(cond(&s, types::DEGRADED).status, "True");
        assert_eq!(
            s.conditions.len(),
            5,
            "no condition is dropped on a config error"
        );

        let mut partial = synced(0);
        partial.inventory.as_mut().unwrap().completeness.record(
            ReadScope::NodeDisks("pve1".into()),
            ReadOutcome::Failed {
                reason: ReadFailure::Forbidden,
                message: "403".into(),
            },
        );
        assert_eq!(
            ready(&partial),
            ("False".into(), reasons::PARTIAL_READ.into())
        );
        let s = build_status(Some(1), None, &partial, at(0));
        assert_eq!(s.read_failures.len(), 1);
        assert_eq!(s.read_failures[0].scope, "node pve1 disks");
        assert!(s.last_successful_sync_time.is_none());

        let mut missing = synced(0);
        missing.permission_warning = Some(warning(reasons::MISSING_PRIVILEGES, "lacks VM.Audit"));
        assert_eq!(
            ready(&missing),
            ("False".into(), reasons::MISSING_PRIVILEGES.into())
        );
        let mut excess = synced(0);
        excess.permission_warning = Some(warning(reasons::EXCESS_PRIVILEGES, "VM.Allocate"));
        assert_eq!(ready(&excess), ("True".into(), reasons::SYNCED.into()));
        let s = build_status(Some(1), None, &excess, at(0));
        assert_eq!(cond(&s, types::DEGRADED).reason, reasons::EXCESS_PRIVILEGES);

        let mut dry = synced(4);
        dry.dry_run = true;
        assert_eq!(ready(&dry), ("True".into(), reasons::DRY_RUN.into()));

        let failed_objects = PipelineOutcome {
            netbox: NetBoxOutcome::Done(SyncSummary {
                failed: 1,
                errors: vec!["vm 101: name too long".into()],
                ..Default::default()
            }),
            ..synced(0)
        };
        assert_eq!(
            ready(&failed_objects),
            ("False".into(), reasons::PARTIAL_SYNC.into())
        );
        let collisions = PipelineOutcome {
            netbox: NetBoxOutcome::Done(SyncSummary {
                collisions: 2,
                ..Default::default()
            }),
            ..synced(0)
        };
        assert_eq!(ready(&collisions), ("True".into(), reasons::SYNCED.into()));
        let s = build_status(Some(1), None, &collisions, at(0));
        assert_eq!(cond(&s, types::DEGRADED).reason, reasons::COLLISIONS);
        let nb_failed = PipelineOutcome {
            netbox: NetBoxOutcome::Failed(NetBoxSyncError::Api(NetBoxError::Transport {
                endpoint: "dcim/devices".into(),
                message: "connection reset".into(),
            })),
            ..synced(0)
        };
        assert_eq!(
            ready(&nb_failed),
            ("False".into(), reasons::NETBOX_FAILED.into())
        );
    }

    #[test]
    fn suspended_status_keeps_everything_but_ready() {
        let s1 = build_status(Some(1), None, &synced(2), at(0));
        let s = suspended_status(Some(2), Some(&s1), at(5));
        let ready = cond(&s, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::SUSPENDED)
        );
        assert_eq!(ready.last_transition_time, time_from_chrono(&at(5)));
        assert_eq!(s.observed_generation, Some(2));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        assert_eq!(s.sync, s1.sync);
        assert_eq!(s.nodes, s1.nodes);
        assert_eq!(s.last_sync_time, s1.last_sync_time);
        assert_eq!(
            cond(&s, types::NETBOX_SYNCED).last_transition_time,
            cond(&s1, types::NETBOX_SYNCED).last_transition_time
        );
        // Suspended again later: only timestamps could change, nothing to write.
        let again = suspended_status(Some(2), Some(&s), at(10));
        assert!(!needs_write(Some(&s), &again, at(10)));
        assert_eq!(suspended_status(Some(1), None, at(0)).conditions.len(), 1);
    }

    fn observed(o: &PipelineOutcome) -> PipelineOutcome {
        PipelineOutcome {
            netbox: NetBoxOutcome::InProgress,
            ..o.clone()
        }
    }

    #[test]
    fn first_intermediate_status_has_facts_and_says_reconciling() {
        let mut o = synced(0);
        o.discovery = Some(vec![NodeDiscovery {
            node: "pve1".into(),
            address: Some("10.0.0.1".into()),
            hardware: None,
            warning: Some(NodeWarning {
                code: "Timeout".into(),
                message: "connect timed out".into(),
            }),
        }]);
        let s = observed_status(Some(1), None, &observed(&o), at(0));
        assert_eq!(s.observed_generation, None, "no pass completed yet");
        assert!(s.last_sync_time.is_none());
        assert!(s.sync.is_none());
        assert_eq!(s.nodes[0].warning.as_ref().unwrap().code, "Timeout");
        assert_eq!(s.summary.as_ref().unwrap().nodes, 1);
        for t in [types::READY, types::NETBOX_SYNCED] {
            let c = cond(&s, t);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("Unknown", reasons::RECONCILING),
                "{t}"
            );
            assert_eq!(c.observed_generation, Some(1));
        }
        assert_eq!(
            cond(&s, types::HARDWARE_DISCOVERED).reason,
            reasons::DISCOVERY_WARNINGS
        );
        assert_eq!(cond(&s, types::PROXMOX_REACHABLE).status, "True");
        // The final status after it: Ready True, generation observed.
        let f = build_status(Some(1), Some(&s), &o, at(1));
        assert_eq!(cond(&f, types::READY).status, "True");
        assert_eq!(f.observed_generation, Some(1));
        assert_eq!(
            cond(&f, types::READY).last_transition_time,
            time_from_chrono(&at(1))
        );
    }

    #[test]
    fn intermediate_status_of_a_resync_keeps_the_last_verdict_and_writes_nothing_when_quiet() {
        let s1 = build_status(Some(3), None, &synced(5), at(0));
        let mid = observed_status(Some(3), Some(&s1), &observed(&synced(0)), at(15));
        assert_eq!(cond(&mid, types::READY), cond(&s1, types::READY));
        assert_eq!(
            cond(&mid, types::NETBOX_SYNCED),
            cond(&s1, types::NETBOX_SYNCED)
        );
        assert_eq!(
            mid.sync, s1.sync,
            "the last sync's counts stay until the sync ends"
        );
        assert_eq!(mid.last_sync_time, s1.last_sync_time);
        assert!(
            !differs(Some(&s1), &mid),
            "a quiet resync writes no intermediate status"
        );

        // A new VM in Proxmox: written, still with the last verdict.
        let mut more = synced(0);
        more.inventory.as_mut().unwrap().nodes.push(Node {
            name: "pve2".into(),
            online: true,
            ..Default::default()
        });
        let mid = observed_status(Some(3), Some(&s1), &observed(&more), at(15));
        assert!(differs(Some(&s1), &mid));
        assert_eq!(mid.summary.as_ref().unwrap().nodes, 2);
        assert_eq!(cond(&mid, types::READY).status, "True");
    }

    #[test]
    fn intermediate_status_of_a_new_generation_is_in_progress_for_kstatus() {
        let s1 = build_status(Some(3), None, &synced(5), at(0));
        let mid = observed_status(Some(4), Some(&s1), &observed(&synced(0)), at(15));
        assert_eq!(
            mid.observed_generation,
            Some(3),
            "generation 4 is not done yet"
        );
        let ready = cond(&mid, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("Unknown", reasons::RECONCILING)
        );
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(ready.last_transition_time, time_from_chrono(&at(15)));
        assert_eq!(cond(&mid, types::NETBOX_SYNCED).status, "Unknown");
        assert_eq!(mid.last_successful_sync_time, s1.last_successful_sync_time);

        // When the read already decides it, Ready is False at once.
        let mut partial = synced(0);
        partial.inventory.as_mut().unwrap().completeness.record(
            ReadScope::NodeGuests("pve2".into()),
            ReadOutcome::Failed {
                reason: ReadFailure::NodeOffline,
                message: "595".into(),
            },
        );
        let mid = observed_status(Some(4), Some(&s1), &observed(&partial), at(15));
        let ready = cond(&mid, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::PARTIAL_READ)
        );
        assert_eq!(cond(&mid, types::DEGRADED).reason, reasons::PARTIAL_READ);
    }

    #[test]
    fn guests_whose_agent_does_not_answer_are_counted_and_named_in_proxmox_reachable() {
        let mut o = synced(0);
        let inv = o.inventory.as_mut().unwrap();
        let mut add = |id: u32, outcome: ReadOutcome| {
            inv.completeness
                .record(ReadScope::GuestAddresses(id), outcome)
        };
        let na = |reason: ReadFailure| ReadOutcome::NotApplicable {
            reason,
            message: String::new(),
        };
        add(103, na(ReadFailure::AgentNotRunning));
        add(101, na(ReadFailure::AgentNotRunning));
        add(102, na(ReadFailure::GuestNotRunning));
        add(104, ReadOutcome::Complete);
        add(105, na(ReadFailure::AgentDisabled));
        let gaps = guest_address_gaps(o.inventory.as_ref().unwrap());
        assert_eq!(gaps["AgentNotRunning"], vec![101, 103]);
        assert_eq!(gaps["GuestNotRunning"], vec![102]);
        assert_eq!(gaps["AgentDisabled"], vec![105]);
        assert_eq!(gaps.len(), 3);
        let s = build_status(Some(1), None, &o, at(0));
        let pr = cond(&s, types::PROXMOX_REACHABLE);
        assert_eq!(pr.reason, reasons::READ_COMPLETE, "not a failed read");
        assert!(
            pr.message.ends_with(
                "; QEMU guest agent not running on 2 guest(s), addresses from their configuration only: 101, 103"
            ),
            "{}",
            pr.message
        );
        assert_eq!(
            agent_note_in(&pr.message).map(|n| n.starts_with(AGENT_NOTE_PREFIX)),
            Some(true)
        );
        assert_eq!(cond(&s, types::READY).status, "True");
        let plain = build_status(Some(1), None, &synced(0), at(0));
        assert_eq!(
            agent_note_in(&cond(&plain, types::PROXMOX_REACHABLE).message),
            None
        );
    }
}

/// Fixtures shared by the unit tests of this crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::inventory::{Inventory, Node, ReadOutcome, ReadScope};

    /// A one-node inventory whose every part was read.
    pub fn complete_inventory() -> Inventory {
        let mut inv = Inventory {
            nodes: vec![Node {
                name: "pve1".into(),
                online: true,
                address: Some("10.0.0.1".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        inv.completeness
            .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        inv.completeness
            .record(ReadScope::NodeGuests("pve1".into()), ReadOutcome::Complete);
        inv
    }
}
