//! Metrics of the PVE client: the duration of every HTTP request it sends, by cluster,
//! operation (a fixed classification of the method and API path) and outcome; and the
//! duration of every PVE task awaited, by cluster, task type (a fixed set) and outcome.

use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::net::call_metrics::{CallDurations, CallRecorder};

/// Upper bounds of the task duration buckets, in seconds: 0.25 s to 1 h (a full clone of a
/// large disk takes minutes).
pub const TASK_DURATION_BUCKETS: [f64; 14] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// The task types the task histogram names; any other is `other`.
pub const TASK_TYPES: &[&str] = &[
    "qmclone",
    "qmconfig",
    "resize",
    "qmstart",
    "qmshutdown",
    "qmstop",
    "qmdestroy",
];

/// Labels of one task's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskDurationLabels {
    /// `namespace/name` of the ProxmoxCluster the task was started for.
    pub cluster: String,
    /// The task type, from [`TASK_TYPES`] or `other`.
    pub r#type: &'static str,
    /// `success` or [`crate::pve::task::TaskError::metric_label`].
    pub outcome: &'static str,
}

/// The PVE client's metrics.
#[derive(Clone, Debug)]
pub struct PveMetrics {
    /// `pve_request_duration_seconds{cluster, operation, outcome}`.
    request_duration: CallDurations,
    /// `pve_task_duration_seconds{cluster, type, outcome}`.
    task_duration: Family<TaskDurationLabels, Histogram>,
}

fn task_histogram() -> Histogram {
    Histogram::new(TASK_DURATION_BUCKETS)
}

impl PveMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let task_duration = Family::new_with_constructor(task_histogram as fn() -> Histogram);
        registry.register(
            "pve_task_duration_seconds",
            "Time spent waiting for each PVE task the operator started (clone, config, resize, power, destroy) until it stopped or the wait gave up, by task type and outcome",
            task_duration.clone(),
        );
        Self {
            request_duration: CallDurations::register(
                registry,
                "pve_request_duration_seconds",
                "Duration of each HTTP request sent to the Proxmox VE API (each retry and ticket login is one), by operation and outcome",
            ),
            task_duration,
        }
    }

    /// The recorder a client of `cluster` is given.
    pub fn recorder(&self, cluster: &str) -> CallRecorder {
        self.request_duration.recorder(cluster)
    }

    /// The recorder of the tasks awaited for `cluster` ([`crate::pve::task::wait_task`]).
    pub fn task_recorder(&self, cluster: &str) -> TaskRecorder {
        TaskRecorder {
            target: Some((self.task_duration.clone(), cluster.to_string())),
        }
    }
}

/// Records the tasks awaited for one cluster. The default records nothing.
#[derive(Clone, Debug, Default)]
pub struct TaskRecorder {
    target: Option<(Family<TaskDurationLabels, Histogram>, String)>,
}

impl TaskRecorder {
    /// Records one task of `task_type` (as the UPID names it; mapped to [`TASK_TYPES`] or
    /// `other`) that ended with `outcome` after `elapsed`.
    pub fn observe(&self, task_type: &str, outcome: &'static str, elapsed: Duration) {
        if let Some((family, cluster)) = &self.target {
            family
                .get_or_create(&TaskDurationLabels {
                    cluster: cluster.clone(),
                    r#type: task_type_label(task_type),
                    outcome,
                })
                .observe(elapsed.as_secs_f64());
        }
    }
}

/// The label of a task type: itself when it is one of [`TASK_TYPES`], else `other`.
pub fn task_type_label(task_type: &str) -> &'static str {
    TASK_TYPES
        .iter()
        .find(|t| **t == task_type)
        .copied()
        .unwrap_or("other")
}

/// The operation label of a request (path relative to `/api2/json`): what is read or
/// written, never a node name, a VMID, a UPID or anything else taken from the path.
pub fn operation(method: &Method, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = *method == Method::GET;
    match segments.as_slice() {
        ["access", "ticket"] => "login",
        ["version"] if get => "version",
        ["access", "permissions"] if get => "permissions",
        ["cluster", "status"] if get => "cluster_status",
        ["cluster", "resources"] if get => "cluster_resources",
        ["cluster", "ha", "resources"] if get => "ha_resources",
        ["cluster", "ceph", "status"] if get => "ceph_status",
        ["cluster", "nextid"] if get => "nextid",
        ["nodes"] if get => "nodes",
        ["nodes", _, "status"] if get => "node_status",
        ["nodes", _, "network"] if get => "node_network",
        ["nodes", _, "disks", "list"] if get => "node_disks",
        ["nodes", _, "storage"] if get => "node_storage",
        ["nodes", _, "ceph", "pool"] if get => "ceph_pools",
        ["nodes", _, "tasks", _, "status"] if get => "task_status",
        ["nodes", _, "tasks", _, "log"] if get => "task_log",
        ["nodes", _, "qemu" | "lxc"] if get => "guests",
        ["nodes", _, "qemu" | "lxc", _, "config"] if get => "guest_config",
        ["nodes", _, "qemu" | "lxc", _, "config"]
            if *method == Method::POST || *method == Method::PUT =>
        {
            "config_write"
        }
        ["nodes", _, "qemu" | "lxc", _, "clone"] if *method == Method::POST => "clone",
        ["nodes", _, "qemu" | "lxc", _, "resize"] if *method == Method::PUT => "resize",
        [
            "nodes",
            _,
            "qemu" | "lxc",
            _,
            "status",
            "start" | "shutdown" | "stop" | "reboot",
        ] if *method == Method::POST => "power",
        ["nodes", _, "qemu" | "lxc", _] if *method == Method::DELETE => "destroy",
        ["nodes", _, "qemu", _, "agent", "network-get-interfaces"]
        | ["nodes", _, "lxc", _, "interfaces"]
            if get =>
        {
            "guest_interfaces"
        }
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_a_fixed_set_of_operations() {
        let get = Method::GET;
        for (path, op) in [
            ("/version", "version"),
            ("/access/permissions", "permissions"),
            ("/cluster/status", "cluster_status"),
            ("/cluster/ha/resources", "ha_resources"),
            ("/cluster/ceph/status", "ceph_status"),
            ("/cluster/nextid", "nextid"),
            ("/cluster/nextid?vmid=105", "nextid"),
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
            (
                "/nodes/pve1/tasks/UPID%3Apve1%3A000003E8%3A00001B58%3A6756A1B2%3Aqmclone%3A9000%3Aroot%40pam%3A/status",
                "task_status",
            ),
            (
                "/nodes/pve1/tasks/UPID%3Apve1%3A000003E8%3A00001B58%3A6756A1B2%3Aqmclone%3A9000%3Aroot%40pam%3A/log?start=0&limit=500",
                "task_log",
            ),
        ] {
            assert_eq!(operation(&get, path), op, "{path}");
        }
        assert_eq!(operation(&Method::POST, "/access/ticket"), "login");
    }

    #[test]
    fn writes_are_classified_by_method_and_path() {
        for (method, path, op) in [
            (Method::POST, "/nodes/pve1/qemu/9000/clone", "clone"),
            (Method::POST, "/nodes/pve1/qemu/101/config", "config_write"),
            (Method::PUT, "/nodes/pve1/qemu/101/config", "config_write"),
            (Method::PUT, "/nodes/pve1/lxc/200/config", "config_write"),
            (Method::PUT, "/nodes/pve1/qemu/101/resize", "resize"),
            (Method::POST, "/nodes/pve1/qemu/101/status/start", "power"),
            (
                Method::POST,
                "/nodes/pve1/qemu/101/status/shutdown",
                "power",
            ),
            (Method::POST, "/nodes/pve1/qemu/101/status/stop", "power"),
            (Method::POST, "/nodes/pve1/qemu/101/status/reboot", "power"),
            (
                Method::DELETE,
                "/nodes/pve1/qemu/101?purge=1&destroy-unreferenced-disks=1",
                "destroy",
            ),
            (Method::DELETE, "/nodes/pve1/lxc/200", "destroy"),
            // The same paths with another method are not what the label says.
            (Method::GET, "/nodes/pve1/qemu/101", "other"),
            (Method::GET, "/nodes/pve1/qemu/9000/clone", "other"),
            (Method::POST, "/nodes/pve1/qemu/101/status/suspend", "other"),
            (Method::DELETE, "/nodes/pve1/qemu/101/config", "other"),
            (Method::POST, "/cluster/nextid", "other"),
            (Method::POST, "/nodes/pve1/tasks/x/status", "other"),
            (Method::DELETE, "/nodes/pve1/tasks/x", "other"),
        ] {
            assert_eq!(operation(&method, path), op, "{method} {path}");
        }
    }

    #[test]
    fn node_names_and_vmids_never_reach_the_label() {
        let mut seen = std::collections::BTreeSet::new();
        for node in ["pve1", "node-with-a-long-name", "10.0.0.7", "x\"y"] {
            for vmid in [100, 4242, 999_999_999] {
                for (method, path) in [
                    (Method::GET, format!("/nodes/{node}/qemu/{vmid}/config")),
                    (Method::GET, format!("/nodes/{node}/lxc/{vmid}/interfaces")),
                    (Method::GET, format!("/nodes/{node}/{vmid}/unknown/{node}")),
                    (Method::GET, format!("/{node}")),
                    (Method::POST, format!("/nodes/{node}/qemu/{vmid}/clone")),
                    (Method::DELETE, format!("/nodes/{node}/qemu/{vmid}")),
                    (Method::GET, format!("/nodes/{node}/tasks/{vmid}/status")),
                ] {
                    let op = operation(&method, &path);
                    assert!(!op.contains(node) && !op.contains(&vmid.to_string()));
                    seen.insert(op);
                }
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [
                "clone",
                "destroy",
                "guest_config",
                "guest_interfaces",
                "other",
                "task_status"
            ]
        );
    }

    #[test]
    fn task_types_come_from_a_fixed_set() {
        for t in TASK_TYPES {
            assert_eq!(task_type_label(t), *t);
        }
        for t in ["qmreboot", "vzdump", "pve1", "100", "", "qmclone\n"] {
            assert_eq!(task_type_label(t), "other", "{t:?}");
        }
    }

    #[test]
    fn the_task_histogram_has_cluster_type_and_outcome() {
        let mut registry = Registry::default();
        let metrics = PveMetrics::register(&mut registry);
        TaskRecorder::default().observe("qmclone", "success", Duration::from_secs(1));
        let recorder = metrics.task_recorder("infra/lab");
        recorder.observe("qmclone", "success", Duration::from_secs(42));
        recorder.observe("qmreboot", "TaskFailed", Duration::from_millis(300));
        let text = crate::metrics::render(&registry);
        for line in [
            r#"pve_task_duration_seconds_count{cluster="infra/lab",type="qmclone",outcome="success"} 1"#,
            r#"pve_task_duration_seconds_bucket{le="60.0",cluster="infra/lab",type="qmclone",outcome="success"} 1"#,
            r#"pve_task_duration_seconds_bucket{le="30.0",cluster="infra/lab",type="qmclone",outcome="success"} 0"#,
            r#"pve_task_duration_seconds_count{cluster="infra/lab",type="other",outcome="TaskFailed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(text.matches("_count{").count(), 2, "{text}");
    }
}
