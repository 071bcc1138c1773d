//! Metrics of the reconciles: their count, duration and errors, and what the last pass
//! found (objects per kind and action, inventory, storage, Ceph, calls by outcome).
//!
//! Labels never carry secrets: only cluster keys (`namespace/name`), kinds, actions and
//! fixed reason names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Label set naming one ProxmoxCluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `namespace/name`.
    pub cluster: String,
}

/// Label set of an error or warning.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// Stable reason (a condition reason or warning code).
    pub reason: String,
}

/// Label set of a poll for changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// `idle`, `changed`, `partial`, `failed` or `provisioning`.
    pub outcome: String,
}

/// Label set of synced objects.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// NetBox object kind.
    pub kind: String,
    /// `created`, `updated`, `unchanged`, `deleted`, `stale`, `failed`.
    pub action: String,
}

/// Label set of NetBox requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// `read` or `write`.
    pub kind: String,
}

/// Label set of calls to external systems.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// `proxmox`, `netbox` or `ssh`.
    pub system: String,
    /// `success` or a stable error kind (`Timeout`, `Unauthorized`, `NetBoxUnreachable`,
    /// a discovery warning code, ...).
    pub outcome: String,
}

/// Label set of a provisioning step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvisioningActionLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// The step (`reserve`, `ip_allocated`, `cloned`, `configured`, `resized`, `started`,
    /// `handed_over`, `retiring`, `shut_down`, `destroyed`, `retired`, `release_vmid`).
    pub action: String,
    /// `success`, `running` (a task still running at its timeout) or a warning code.
    pub outcome: String,
}

/// Label set of VMs by provisioning phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvisioningPhaseLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// `Reserved`, `Cloning`, `Configured`, `Running`, `Provisioned`, `Retiring`,
    /// `Retired`, `Skipped`.
    pub phase: String,
}

/// Label set of a storage pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// `namespace/name`.
    pub cluster: String,
    /// Storage id (`local-lvm`, `ceph-pool`).
    pub storage: String,
    /// Node that reported it; empty for a shared pool (reported once).
    pub node: String,
}

/// Gauge series set for each cluster, so a series that disappears (a pool removed, a
/// kind no longer synced, a deleted cluster) is removed instead of going stale.
#[derive(Default)]
struct Tracked {
    objects: HashMap<String, Vec<ObjectLabels>>,
    inventory: HashMap<String, Vec<ObjectLabels>>,
    storage_capacity: HashMap<String, Vec<StorageLabels>>,
    storage_used: HashMap<String, Vec<StorageLabels>>,
    guest_addresses: HashMap<String, Vec<ErrorLabels>>,
    provisioning_vms: HashMap<String, Vec<ProvisioningPhaseLabels>>,
}

fn replace_series<L>(
    family: &Family<L, Gauge>,
    tracked: &mut HashMap<String, Vec<L>>,
    cluster: &str,
    values: Vec<(L, i64)>,
) where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let old = tracked.remove(cluster).unwrap_or_default();
    for l in old {
        if !values.iter().any(|(n, _)| *n == l) {
            family.remove(&l);
        }
    }
    let labels = values.iter().map(|(l, _)| l.clone()).collect();
    for (l, v) in values {
        family.get_or_create(&l).set(v);
    }
    tracked.insert(cluster.to_string(), labels);
}

/// The reconcile metrics.
pub struct ReconcileMetrics {
    /// Reconciles started, per cluster.
    pub reconciles: Family<ClusterLabels, Counter>,
    /// Reconcile failures and warnings, per cluster and reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Family<ClusterLabels, Histogram>,
    /// Unix time of the last fully successful sync, per cluster.
    pub last_success_timestamp: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    /// NetBox objects by kind and action in the last sync.
    pub objects: Family<ObjectLabels, Gauge>,
    /// NetBox requests made by syncs, per cluster, reads and writes apart.
    pub netbox_requests: Family<RequestLabels, Counter>,
    /// Inventory counts from the last read, per cluster and kind.
    pub inventory: Family<ObjectLabels, Gauge>,
    /// Calls to Proxmox, NetBox and SSH by outcome.
    pub external_calls: Family<CallLabels, Counter>,
    /// Capacity of each storage pool in bytes, from the last read.
    pub storage_capacity: Family<StorageLabels, Gauge>,
    /// Used bytes of each storage pool, from the last read.
    pub storage_used: Family<StorageLabels, Gauge>,
    /// Ceph health from the last read: 0 `HEALTH_OK`, 1 `HEALTH_WARN`, 2 `HEALTH_ERR`.
    pub ceph_health: Family<ClusterLabels, Gauge>,
    /// Guests whose runtime addresses were not read in the last pass, by reason.
    pub guest_addresses_unread: Family<ErrorLabels, Gauge>,
    /// Polls for changes by outcome.
    pub polls: Family<PollLabels, Counter>,
    /// Time from a poll that found changes to the end of their NetBox write.
    pub change_sync_duration: Family<ClusterLabels, Histogram>,
    /// Provisioning steps run, by action and outcome.
    pub provisioning_actions: Family<ProvisioningActionLabels, Counter>,
    /// VMs provisioning looked at in the last pass, by phase.
    pub provisioning_vms: Family<ProvisioningPhaseLabels, Gauge>,
    /// Guests with the provisioning mark that no record claims, from the last pass.
    pub provisioning_orphans: Family<ClusterLabels, Gauge>,
    tracked: Mutex<Tracked>,
}

impl ReconcileMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0])
            }),
            last_success_timestamp: Family::default(),
            objects: Family::default(),
            netbox_requests: Family::default(),
            inventory: Family::default(),
            external_calls: Family::default(),
            storage_capacity: Family::default(),
            storage_used: Family::default(),
            ceph_health: Family::default(),
            guest_addresses_unread: Family::default(),
            polls: Family::default(),
            change_sync_duration: Family::new_with_constructor(|| {
                Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0])
            }),
            provisioning_actions: Family::default(),
            provisioning_vms: Family::default(),
            provisioning_orphans: Family::default(),
            tracked: Mutex::new(Tracked::default()),
        };
        registry.register(
            "reconciles",
            "Reconciles started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile failures and warnings by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last fully successful sync",
            metrics.last_success_timestamp.clone(),
        );
        registry.register(
            "netbox_objects",
            "NetBox objects by kind and action in the last sync",
            metrics.objects.clone(),
        );
        registry.register(
            "netbox_requests",
            "NetBox requests made by syncs (kind is 'read' or 'write')",
            metrics.netbox_requests.clone(),
        );
        registry.register(
            "inventory_objects",
            "Inventory counts from the last Proxmox read (action label is 'read')",
            metrics.inventory.clone(),
        );
        registry.register(
            "external_calls",
            "Calls to Proxmox (API requests), NetBox (API operations) and SSH (node discoveries) by outcome",
            metrics.external_calls.clone(),
        );
        registry.register(
            "storage_capacity_bytes",
            "Capacity of each Proxmox storage pool from the last read",
            metrics.storage_capacity.clone(),
        );
        registry.register(
            "storage_used_bytes",
            "Used bytes of each Proxmox storage pool from the last read",
            metrics.storage_used.clone(),
        );
        registry.register(
            "ceph_health",
            "Ceph health from the last read: 0 HEALTH_OK, 1 HEALTH_WARN, 2 HEALTH_ERR",
            metrics.ceph_health.clone(),
        );
        registry.register(
            "guest_addresses_unread",
            "Guests whose runtime addresses were not read in the last pass, by reason",
            metrics.guest_addresses_unread.clone(),
        );
        registry.register(
            "watch_polls",
            "Polls of Proxmox for changes between full syncs, by outcome",
            metrics.polls.clone(),
        );
        registry.register(
            "watch_change_sync_duration_seconds",
            "Time from a poll that found changed guests to the end of their NetBox write",
            metrics.change_sync_duration.clone(),
        );
        registry.register(
            "provisioning_actions",
            "Provisioning steps run (spec.provisioning), by action and outcome",
            metrics.provisioning_actions.clone(),
        );
        registry.register(
            "provisioning_vms",
            "VMs provisioning looked at in the last full pass, by phase",
            metrics.provisioning_vms.clone(),
        );
        registry.register(
            "provisioning_orphans",
            "Proxmox VE guests with this operator's provisioning mark that no NetBox record claims",
            metrics.provisioning_orphans.clone(),
        );
        metrics
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the NetBox object gauges of `cluster`, removing series not in `values`.
    pub fn set_objects(&self, cluster: &str, values: Vec<(ObjectLabels, i64)>) {
        replace_series(&self.objects, &mut self.tracked().objects, cluster, values);
    }

    /// Sets the inventory gauges of `cluster`, removing series not in `values`.
    pub fn set_inventory(&self, cluster: &str, values: Vec<(ObjectLabels, i64)>) {
        replace_series(
            &self.inventory,
            &mut self.tracked().inventory,
            cluster,
            values,
        );
    }

    /// Sets the storage gauges of `cluster`: (labels, capacity, used) per pool.
    pub fn set_storage(
        &self,
        cluster: &str,
        pools: Vec<(StorageLabels, Option<i64>, Option<i64>)>,
    ) {
        let mut t = self.tracked();
        let capacity = pools
            .iter()
            .filter_map(|(l, c, _)| c.map(|c| (l.clone(), c)))
            .collect();
        let used = pools
            .iter()
            .filter_map(|(l, _, u)| u.map(|u| (l.clone(), u)))
            .collect();
        replace_series(
            &self.storage_capacity,
            &mut t.storage_capacity,
            cluster,
            capacity,
        );
        replace_series(&self.storage_used, &mut t.storage_used, cluster, used);
    }

    /// Sets the guest-address gauges of `cluster`, removing series not in `values`.
    pub fn set_guest_addresses_unread(&self, cluster: &str, values: Vec<(ErrorLabels, i64)>) {
        replace_series(
            &self.guest_addresses_unread,
            &mut self.tracked().guest_addresses,
            cluster,
            values,
        );
    }

    /// Sets the provisioning phase gauges of `cluster`, removing series not in `values`.
    pub fn set_provisioning_vms(&self, cluster: &str, values: Vec<(ProvisioningPhaseLabels, i64)>) {
        replace_series(
            &self.provisioning_vms,
            &mut self.tracked().provisioning_vms,
            cluster,
            values,
        );
    }

    /// Removes every gauge series of a cluster that is gone (counters stay: they are
    /// cumulative and Prometheus handles their end).
    pub fn forget_cluster(&self, cluster: &str) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.last_success_timestamp.remove(&labels);
        self.ceph_health.remove(&labels);
        self.change_sync_duration.remove(&labels);
        self.provisioning_orphans.remove(&labels);
        for outcome in ["idle", "changed", "partial", "failed", "provisioning"] {
            self.polls.remove(&PollLabels {
                cluster: cluster.to_string(),
                outcome: outcome.to_string(),
            });
        }
        self.set_objects(cluster, Vec::new());
        self.set_inventory(cluster, Vec::new());
        self.set_storage(cluster, Vec::new());
        self.set_guest_addresses_unread(cluster, Vec::new());
        self.set_provisioning_vms(cluster, Vec::new());
        let mut t = self.tracked();
        t.objects.remove(cluster);
        t.inventory.remove(cluster);
        t.storage_capacity.remove(cluster);
        t.storage_used.remove(cluster);
        t.guest_addresses.remove(cluster);
        t.provisioning_vms.remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;

    #[test]
    fn registered_metrics_render_with_their_labels() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::new(&mut registry).reconcile;
        m.errors
            .get_or_create(&ErrorLabels {
                cluster: "infra/lab".into(),
                reason: "PartialRead".into(),
            })
            .inc();
        let text = render(&registry);
        assert!(
            text.contains(r#"proxmox_netbox_reconcile_errors_total{cluster="infra/lab",reason="PartialRead"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn gauge_series_that_disappear_are_removed_and_forget_clears_a_cluster() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::new(&mut registry).reconcile;
        let pool = |name: &str| StorageLabels {
            cluster: "infra/lab".into(),
            storage: name.into(),
            node: "pve1".into(),
        };
        m.set_storage(
            "infra/lab",
            vec![
                (pool("local"), Some(100), Some(40)),
                (pool("old"), Some(10), None),
            ],
        );
        m.set_storage("other/x", vec![(pool("keep"), Some(1), Some(1))]);
        let text = render(&registry);
        assert!(text.contains(r#"proxmox_netbox_storage_capacity_bytes{cluster="infra/lab",storage="old",node="pve1"} 10"#), "{text}");
        assert!(
            !text.contains(r#"storage_used_bytes{cluster="infra/lab",storage="old""#),
            "{text}"
        );
        m.set_storage("infra/lab", vec![(pool("local"), Some(100), Some(50))]);
        let text = render(&registry);
        assert!(!text.contains(r#"storage="old""#), "{text}");
        assert!(text.contains(r#"proxmox_netbox_storage_used_bytes{cluster="infra/lab",storage="local",node="pve1"} 50"#), "{text}");
        m.ceph_health
            .get_or_create(&ClusterLabels {
                cluster: "infra/lab".into(),
            })
            .set(1);
        m.forget_cluster("infra/lab");
        let text = render(&registry);
        assert!(!text.contains(r#"storage="local""#), "{text}");
        assert!(!text.contains(r#"proxmox_netbox_ceph_health{"#), "{text}");
        assert!(
            text.contains(r#"storage="keep""#),
            "another cluster's series stay: {text}"
        );
    }
}
