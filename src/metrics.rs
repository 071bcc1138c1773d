//! Prometheus metrics served on `/metrics`. Each component owns and registers its own
//! metrics; [`Metrics::new`] registers them all under the `proxmox_netbox_` prefix.
//!
//! Labels never carry secrets: only cluster keys (`namespace/name`), kinds, actions,
//! operations and outcomes from fixed sets, and fixed reason names.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::controller::kube_metrics::KubeMetrics;
use crate::controller::metrics::ReconcileMetrics;
use crate::hardware::ssh::SshMetrics;
use crate::netbox::client::NetBoxMetrics;
use crate::pve::metrics::PveMetrics;

/// The metrics of every component.
pub struct Metrics {
    /// Reconciles and what the last pass found (the controller).
    pub reconcile: Arc<ReconcileMetrics>,
    /// Requests to the Kubernetes API server (a layer of the kube client).
    pub kubernetes: KubeMetrics,
    /// Requests to the PVE API (the PVE client).
    pub pve: PveMetrics,
    /// Requests to the NetBox API (the NetBox client).
    pub netbox: NetBoxMetrics,
    /// SSH connections and commands (hardware discovery).
    pub ssh: SshMetrics,
}

impl Metrics {
    /// Creates every component's metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("proxmox_netbox");
        Self {
            reconcile: Arc::new(ReconcileMetrics::register(registry)),
            kubernetes: KubeMetrics::register(registry),
            pve: PveMetrics::register(registry),
            netbox: NetBoxMetrics::register(registry),
            ssh: SshMetrics::register(registry),
        }
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
    use std::time::Duration;

    use super::*;
    use crate::net::call_metrics::SUCCESS;

    #[test]
    fn the_call_histograms_of_the_clients_are_exposed_under_the_prefix() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let took = Duration::from_millis(30);
        let op = crate::pve::metrics::operation(&http::Method::GET, "/nodes/pve1/qemu/100/config");
        m.pve.recorder("infra/lab").observe(op, SUCCESS, took);
        m.netbox
            .recorder("infra/lab")
            .observe("list", SUCCESS, took);
        m.ssh
            .recorder("infra/lab")
            .observe("connect", "Timeout", took);
        let text = render(&registry);
        for line in [
            r#"proxmox_netbox_pve_request_duration_seconds_bucket{le="0.05",cluster="infra/lab",operation="guest_config",outcome="success"} 1"#,
            r#"proxmox_netbox_netbox_request_duration_seconds_count{cluster="infra/lab",operation="list",outcome="success"} 1"#,
            r#"proxmox_netbox_ssh_command_duration_seconds_count{cluster="infra/lab",operation="connect",outcome="Timeout"} 1"#,
            "# TYPE proxmox_netbox_pve_request_duration_seconds histogram",
            "# TYPE proxmox_netbox_netbox_request_duration_seconds histogram",
            "# TYPE proxmox_netbox_ssh_command_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
