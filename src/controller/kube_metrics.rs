//! Metrics of the Kubernetes API calls: [`KubeMetrics`] is a tower layer of the kube client
//! that times every request (watches, lists, status patches, Events, Secret reads, leases)
//! by resource, verb and outcome. Resource and verb come from [`KUBERNETES_API_CALLS`]; a
//! request that is not on that list is labelled `other`, so no name or namespace becomes a
//! label.

use std::error::Error as StdError;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use super::KUBERNETES_API_CALLS;
use crate::net::call_metrics::{SUCCESS, duration_histogram};

/// Label value of a request that is not one of [`KUBERNETES_API_CALLS`].
const OTHER: &str = "other";

/// Labels of one Kubernetes API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// Resource, with `/status` for the subresource (`proxmoxclusters/status`), or `other`.
    pub resource: &'static str,
    /// RBAC verb (`get`, `list`, `watch`, `create`, `patch`), or `other`.
    pub verb: &'static str,
    /// `success`, `Unauthorized`, `Forbidden`, `NotFound`, `Conflict`, `ClientError`,
    /// `ServerError`, `Timeout` or `Connection`.
    pub outcome: &'static str,
}

/// The metrics of the Kubernetes API calls; as a [`Layer`] of the kube client it records
/// them.
#[derive(Clone, Debug)]
pub struct KubeMetrics {
    request_duration: Family<KubeRequestLabels, Histogram>,
}

impl KubeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let request_duration =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "kubernetes_request_duration_seconds",
            "Duration of each request to the Kubernetes API server until its answer started (for a watch: until the watch started), by resource, verb and outcome",
            request_duration.clone(),
        );
        Self { request_duration }
    }
}

impl<S> Layer<S> for KubeMetrics {
    type Service = TimedKube<S>;

    fn layer(&self, inner: S) -> TimedKube<S> {
        TimedKube {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A Kubernetes API service whose requests are timed into [`KubeMetrics`].
#[derive(Clone, Debug)]
pub struct TimedKube<S> {
    inner: S,
    metrics: KubeMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TimedKube<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: AsRef<dyn StdError + Send + Sync> + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (resource, verb) = classify(request.method(), request.uri());
        let family = self.metrics.request_duration.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let outcome = match &result {
                Ok(response) => status_outcome(response.status()),
                Err(e) => error_outcome(e.as_ref()),
            };
            family
                .get_or_create(&KubeRequestLabels {
                    resource,
                    verb,
                    outcome,
                })
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The (resource, verb) of a request, as named in [`KUBERNETES_API_CALLS`], or `other`.
fn classify(method: &Method, uri: &Uri) -> (&'static str, &'static str) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return (OTHER, OTHER),
    };
    let (resource, name, subresource) = match rest {
        ["namespaces", _namespace, resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [] => return (OTHER, OTHER),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match (method, name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::DELETE, _) => "delete",
        _ => OTHER,
    };
    let full = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    KUBERNETES_API_CALLS
        .iter()
        .find(|c| c.group == group && c.resource == full && c.verb == verb)
        .map_or((OTHER, OTHER), |c| (c.resource, c.verb))
}

fn status_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        ..400 => SUCCESS,
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        400..500 => "ClientError",
        _ => "ServerError",
    }
}

fn error_outcome(error: &(dyn StdError + Send + Sync + 'static)) -> &'static str {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return "Timeout";
        }
        source = e.source();
    }
    "Connection"
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::client::Body;

    #[test]
    fn requests_map_to_the_calls_on_the_rbac_list_or_other() {
        let group = "/apis/proxmox-netbox.io/v1alpha1";
        for (method, uri, expected) in [
            (
                Method::GET,
                "/api/v1/namespaces/infra/secrets/nb".to_string(),
                ("secrets", "get"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/kube-system".into(),
                ("namespaces", "get"),
            ),
            (
                Method::GET,
                format!("{group}/proxmoxclusters?limit=500"),
                ("proxmoxclusters", "list"),
            ),
            (
                Method::GET,
                format!(
                    "{group}/namespaces/infra/nodesshcredentials?watch=true&timeoutSeconds=290"
                ),
                ("nodesshcredentials", "watch"),
            ),
            (
                Method::PATCH,
                format!("{group}/namespaces/infra/proxmoxclusters/lab/status?fieldManager=x"),
                ("proxmoxclusters/status", "patch"),
            ),
            (
                Method::PATCH,
                format!("{group}/namespaces/infra/proxmoxclusters/lab"),
                ("proxmoxclusters", "patch"),
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/infra/events".into(),
                ("events", "create"),
            ),
            (
                Method::PATCH,
                "/apis/coordination.k8s.io/v1/namespaces/op/leases/pno".into(),
                ("leases", "patch"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/infra/secrets".into(),
                (OTHER, OTHER),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/infra/secrets/nb".into(),
                (OTHER, OTHER),
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/infra/deployments/x".into(),
                (OTHER, OTHER),
            ),
            (Method::GET, "/version".into(), (OTHER, OTHER)),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(classify(&method, &uri), expected, "{method} {uri}");
        }
    }

    #[test]
    fn statuses_map_to_stable_outcomes() {
        for (status, outcome) in [
            (200, SUCCESS),
            (201, SUCCESS),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "NotFound"),
            (409, "Conflict"),
            (422, "ClientError"),
            (500, "ServerError"),
            (503, "ServerError"),
        ] {
            assert_eq!(
                status_outcome(StatusCode::from_u16(status).unwrap()),
                outcome
            );
        }
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline");
        assert_eq!(error_outcome(&timeout), "Timeout");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_outcome(&refused), "Connection");
    }

    #[tokio::test]
    async fn a_request_through_the_client_is_timed_once_without_its_names() {
        let mut registry = Registry::default();
        let metrics = KubeMetrics::register(&mut registry);
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(metrics.layer(service), "default");
        let api: kube::Api<Secret> = kube::Api::namespaced(client, "infra");
        let read = tokio::spawn(async move { api.get("nb-token").await });
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/infra/secrets/nb-token"
        );
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "secrets \"nb-token\" not found"
        });
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        read.await.unwrap().unwrap_err();
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(r#"kubernetes_request_duration_seconds_count{resource="secrets",verb="get",outcome="NotFound"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("nb-token") && !text.contains("infra"),
            "{text}"
        );
    }
}
