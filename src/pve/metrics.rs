//! Metrics of the PVE client: the duration of every HTTP request it sends, by cluster,
//! operation (a fixed classification of the API path) and outcome.

use prometheus_client::registry::Registry;

use crate::net::call_metrics::{CallDurations, CallRecorder};

/// The PVE client's metrics.
#[derive(Clone, Debug)]
pub struct PveMetrics {
    /// `pve_request_duration_seconds{cluster, operation, outcome}`.
    request_duration: CallDurations,
}

impl PveMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            request_duration: CallDurations::register(
                registry,
                "pve_request_duration_seconds",
                "Duration of each HTTP request sent to the Proxmox VE API (each retry and ticket login is one), by operation and outcome",
            ),
        }
    }

    /// The recorder a client of `cluster` is given.
    pub fn recorder(&self, cluster: &str) -> CallRecorder {
        self.request_duration.recorder(cluster)
    }
}

/// The operation label of an API path (relative to `/api2/json`): what is read, never a
/// node name, a VMID or anything else taken from the path.
pub fn operation(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => "version",
        ["access", "ticket"] => "login",
        ["access", "permissions"] => "permissions",
        ["cluster", "status"] => "cluster_status",
        ["cluster", "resources"] => "cluster_resources",
        ["cluster", "ha", "resources"] => "ha_resources",
        ["cluster", "ceph", "status"] => "ceph_status",
        ["nodes"] => "nodes",
        ["nodes", _, "status"] => "node_status",
        ["nodes", _, "network"] => "node_network",
        ["nodes", _, "disks", "list"] => "node_disks",
        ["nodes", _, "storage"] => "node_storage",
        ["nodes", _, "ceph", "pool"] => "ceph_pools",
        ["nodes", _, "qemu" | "lxc"] => "guests",
        ["nodes", _, "qemu" | "lxc", _, "config"] => "guest_config",
        ["nodes", _, "qemu", _, "agent", "network-get-interfaces"]
        | ["nodes", _, "lxc", _, "interfaces"] => "guest_interfaces",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_a_fixed_set_of_operations() {
        for (path, op) in [
            ("/version", "version"),
            ("/access/ticket", "login"),
            ("/access/permissions", "permissions"),
            ("/cluster/status", "cluster_status"),
            ("/cluster/ha/resources", "ha_resources"),
            ("/cluster/ceph/status", "ceph_status"),
            ("/nodes", "nodes"),
            ("/nodes/pve1/status", "node_status"),
            ("/nodes/pve1/network", "node_network"),
            ("/nodes/pve1/disks/list", "node_disks"),
            ("/nodes/pve1/storage", "node_storage"),
            ("/nodes/pve1/ceph/pool", "ceph_pools"),
            ("/nodes/pve1/qemu", "guests"),
            ("/nodes/pve1/lxc", "guests"),
            ("/nodes/pve1/qemu/100/config", "guest_config"),
            ("/nodes/pve1/lxc/200/config", "guest_config"),
            (
                "/nodes/pve1/qemu/100/agent/network-get-interfaces",
                "guest_interfaces",
            ),
            ("/nodes/pve1/lxc/200/interfaces", "guest_interfaces"),
            ("/nodes/pve1/qemu/100/status/current", "other"),
            ("/nodes/pve1/qemu/100/config?current=1", "guest_config"),
        ] {
            assert_eq!(operation(path), op, "{path}");
        }
    }

    #[test]
    fn node_names_and_vmids_never_reach_the_label() {
        let mut seen = std::collections::BTreeSet::new();
        for node in ["pve1", "node-with-a-long-name", "10.0.0.7", "x\"y"] {
            for vmid in [100, 4242, 999_999_999] {
                for path in [
                    format!("/nodes/{node}/qemu/{vmid}/config"),
                    format!("/nodes/{node}/lxc/{vmid}/interfaces"),
                    format!("/nodes/{node}/{vmid}/unknown/{node}"),
                    format!("/{node}"),
                ] {
                    let op = operation(&path);
                    assert!(!op.contains(node) && !op.contains(&vmid.to_string()));
                    seen.insert(op);
                }
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["guest_config", "guest_interfaces", "other"]
        );
    }
}
