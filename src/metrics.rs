//! Prometheus metrics served on `/metrics`.
//!
//! Labels never carry secrets: only cluster keys (`namespace/name`), kinds, actions and
//! fixed reason names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
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

/// Label set of calls to external systems.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `proxmox`, `netbox` or `ssh`.
    pub system: String,
    /// `success` or a failure reason.
    pub outcome: String,
}

/// All metrics of the operator.
pub struct Metrics {
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
    /// Calls to external systems by outcome.
    pub external_calls: Family<CallLabels, Counter>,
    /// Inventory counts from the last read, per cluster and kind.
    pub inventory: Family<ObjectLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0])
            }),
            last_success_timestamp: Family::default(),
            objects: Family::default(),
            external_calls: Family::default(),
            inventory: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("proxmox_netbox");
        r.register(
            "reconciles",
            "Reconciles started",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile failures and warnings by reason",
            metrics.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            metrics.reconcile_duration.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last fully successful sync",
            metrics.last_success_timestamp.clone(),
        );
        r.register(
            "netbox_objects",
            "NetBox objects by kind and action in the last sync",
            metrics.objects.clone(),
        );
        r.register(
            "external_calls",
            "Calls to Proxmox, NetBox and SSH by outcome",
            metrics.external_calls.clone(),
        );
        r.register(
            "inventory_objects",
            "Inventory counts from the last Proxmox read (action label is 'read')",
            metrics.inventory.clone(),
        );
        metrics
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render_with_their_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
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
}
