//! HTTP endpoints of the controller: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// State shared with the HTTP handlers.
pub struct ServerState {
    /// Metrics registry.
    pub registry: Registry,
    /// Set once the controller runs (and, with leader election, once this replica leads
    /// or stands by ready to take over).
    pub ready: AtomicBool,
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// The router serving the three endpoints.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_render() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::new(&mut registry);
        m.reconcile
            .reconciles
            .get_or_create(&crate::controller::metrics::ClusterLabels {
                cluster: "infra/lab".into(),
            })
            .inc();
        m.pve.recorder("infra/lab").observe(
            "nodes",
            crate::net::call_metrics::SUCCESS,
            std::time::Duration::from_millis(12),
        );
        let state = Arc::new(ServerState {
            registry,
            ready: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::new();
        let get = |p: &str| http.get(format!("http://{addr}{p}")).send();
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            body.contains(r#"proxmox_netbox_reconciles_total{cluster="infra/lab"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"proxmox_netbox_pve_request_duration_seconds_count{cluster="infra/lab",operation="nodes",outcome="success"} 1"#),
            "{body}"
        );
    }
}
