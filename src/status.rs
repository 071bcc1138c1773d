//! Pure construction of the ProxmoxCluster status from one pipeline run.
//!
//! No I/O and no clock: the caller passes `now`, so every rule here is tested directly.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::conditions::{reasons, types};
use crate::crd::{
    CephStatusEntry, InventorySummary, NodeStatusEntry, NodeWarning, ProxmoxClusterStatus,
    ReadFailureEntry, StorageStatusEntry, SyncSummary,
};
use crate::hardware::facts::NodeHardware;
use crate::inventory::{Inventory, ReadOutcome, ReadScope};

/// At most this many read failures are listed in the status.
pub const MAX_READ_FAILURES: usize = 50;

/// Without any other change, the status is still rewritten when its `lastSyncTime` is
/// older than this, so `kubectl get` shows that syncs keep happening.
pub const STATUS_HEARTBEAT: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A failed stage, with a condition reason (see [`reasons`]) and a message free of secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageError {
    /// Condition and Event reason.
    pub reason: &'static str,
    /// Human-readable detail naming the field or object at fault.
    pub message: String,
}

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
    /// NetBox could not be used at all (bootstrap or reads failed).
    Failed(StageError),
    /// The sync ran (possibly with failed objects, see the summary).
    Done(SyncSummary),
}

/// Everything one pipeline run produced; the input of [`build_status`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineOutcome {
    /// Spec or Secret resolution failed: nothing else ran.
    pub config_error: Option<StageError>,
    /// The PVE read failed as a whole.
    pub proxmox_error: Option<StageError>,
    /// Missing privileges (an error) or excess write privileges (a warning).
    pub permission_warning: Option<StageError>,
    /// The inventory, when the PVE read succeeded at least partly.
    pub inventory: Option<Inventory>,
    /// `None` when discovery is disabled; otherwise one entry per node, in order.
    pub discovery: Option<Vec<NodeDiscovery>>,
    /// The NetBox stage.
    pub netbox: NetBoxOutcome,
    /// True when the sync ran in dry-run mode.
    pub dry_run: bool,
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
    }
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
        conditions: Vec::new(),
    };
    if let Some(inv) = &outcome.inventory {
        apply_inventory(&mut status, inv);
    }
    if let Some(discovery) = &outcome.discovery {
        apply_discovery(&mut status.nodes, discovery, &now_s);
    } else {
        for node in &mut status.nodes {
            node.warning = None;
        }
    }
    let conditions = compute_conditions(outcome, generation);
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
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
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
        out.push(cond(types::READY, false, err.reason, err.message.clone()));
        out.push(cond(
            types::PROXMOX_REACHABLE,
            false,
            reasons::NOT_RUN,
            "configuration is invalid".into(),
        ));
        out.push(cond(
            types::NETBOX_SYNCED,
            false,
            reasons::NOT_RUN,
            "configuration is invalid".into(),
        ));
        out.push(cond(types::DEGRADED, true, err.reason, err.message.clone()));
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
    match (&outcome.proxmox_error, &partial_read_message) {
        (Some(err), _) => out.push(cond(
            types::PROXMOX_REACHABLE,
            false,
            err.reason,
            err.message.clone(),
        )),
        (None, Some(m)) => out.push(cond(
            types::PROXMOX_REACHABLE,
            true,
            reasons::PARTIAL_READ,
            m.clone(),
        )),
        (None, None) => out.push(cond(
            types::PROXMOX_REACHABLE,
            true,
            reasons::READ_COMPLETE,
            "every part of the Proxmox VE API was read".into(),
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
    let (synced_ok, synced_reason, synced_message) = match &outcome.netbox {
        NetBoxOutcome::NotRun => (
            false,
            reasons::NOT_RUN,
            "the NetBox sync did not run because the Proxmox read failed".to_string(),
        ),
        NetBoxOutcome::Failed(err) => (false, err.reason, err.message.clone()),
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
    out.push(cond(
        types::NETBOX_SYNCED,
        synced_ok,
        synced_reason,
        synced_message.clone(),
    ));

    // Degraded: anything that worked only partly.
    let mut degraded: Vec<(&'static str, String)> = Vec::new();
    if let Some(err) = &outcome.proxmox_error {
        degraded.push((err.reason, err.message.clone()));
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
                    "{} NetBox object(s) not owned by this operator are in the way and were left untouched (set spec.netbox.adoptExisting to take them over)",
                    s.collisions
                ),
            ));
        }
    }
    if let NetBoxOutcome::Failed(err) = &outcome.netbox {
        degraded.push((err.reason, err.message.clone()));
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
        cond(types::READY, false, err.reason, err.message.clone())
    } else if let Some(m) = &partial_read_message {
        cond(types::READY, false, reasons::PARTIAL_READ, m.clone())
    } else if let Some(w) = outcome
        .permission_warning
        .as_ref()
        .filter(|w| w.reason == reasons::MISSING_PRIVILEGES)
    {
        cond(types::READY, false, w.reason, w.message.clone())
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

/// Whether the new status must be written: anything but timestamps changed, or the
/// previous `lastSyncTime` is older than [`STATUS_HEARTBEAT`].
pub fn needs_write(
    previous: Option<&ProxmoxClusterStatus>,
    new: &ProxmoxClusterStatus,
    now: DateTime<Utc>,
) -> bool {
    let Some(prev) = previous else { return true };
    if without_timestamps(prev) != without_timestamps(new) {
        return true;
    }
    if prev.last_successful_sync_time.is_none() != new.last_successful_sync_time.is_none() {
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

/// The status shown while `spec.sync.suspend` is true: every other field is kept.
pub fn suspended_status(
    generation: Option<i64>,
    previous: Option<&ProxmoxClusterStatus>,
    now: DateTime<Utc>,
) -> ProxmoxClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let ready = condition(
        types::READY,
        false,
        reasons::SUSPENDED,
        "sync is suspended (spec.sync.suspend=true): nothing is read or written".into(),
        generation,
    );
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
