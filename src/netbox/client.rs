//! HTTP client of the NetBox REST API: paginated reads, bulk create/update/delete, bounded
//! requests in flight, backoff on 429/5xx for requests that are safe to repeat, and request
//! counters. The URL and every address it resolves to pass the endpoint guard; answers are
//! read against a size cap and lists against a page cap. Errors name the endpoint and carry
//! a short excerpt of NetBox's message, never the token. Each HTTP request sent is timed
//! into the client's [`CallRecorder`] ([`NetBoxMetrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::net::body::{BodyError, ERROR_BODY_READ_BYTES, excerpt, read_capped, read_prefix};
use crate::net::call_metrics::{CallDurations, CallRecorder, SUCCESS};
use crate::net::guard::{EndpointError, EndpointGuard, NETBOX_URL_FIELD, UrlProblem, refusal_in};
use crate::secrets::SecretString;
use crate::tls::{TlsSettings, http_client};

/// Largest page NetBox serves by default (`MAX_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 1000;
/// Largest NetBox answer read (a page of 1000 VMs with custom fields is a few MiB; the
/// pod's memory limit is 256 MiB). A longer answer is refused as soon as it passes the cap.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Most pages read for one list (10 million objects at [`PAGE_SIZE`]): a server that keeps
/// announcing a next page cannot keep a sync reading forever.
pub const MAX_LIST_PAGES: usize = 10_000;

/// A failed NetBox request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetBoxError {
    /// 401/403: the token is wrong or lacks a permission.
    #[error("NetBox refused the token ({status}) on {endpoint}: {message}")]
    Auth {
        /// Endpoint.
        endpoint: String,
        /// Status.
        status: u16,
        /// NetBox's message.
        message: String,
    },
    /// 400: NetBox rejected the data.
    #[error("NetBox rejected the request (400) on {endpoint}: {message}")]
    Invalid {
        /// Endpoint.
        endpoint: String,
        /// NetBox's message (field errors).
        message: String,
    },
    /// Another error status.
    #[error("NetBox answered {status} on {endpoint}: {message}")]
    Status {
        /// Endpoint.
        endpoint: String,
        /// Status.
        status: u16,
        /// Message.
        message: String,
    },
    /// No answer (connection refused, reset, timeout): for a create, the objects may or
    /// may not exist now.
    #[error("no answer from NetBox on {endpoint}: {message}")]
    Transport {
        /// Endpoint.
        endpoint: String,
        /// Detail.
        message: String,
    },
    /// The answer was not what NetBox sends.
    #[error("invalid answer from NetBox on {endpoint}: {message}")]
    Decode {
        /// Endpoint.
        endpoint: String,
        /// Detail.
        message: String,
    },
    /// The client could not be built.
    #[error("{0}")]
    Config(String),
    /// The endpoint guard refused the URL, or an address it resolved to.
    #[error("{0}")]
    EndpointRefused(EndpointError),
    /// The stage's transport-error limit is spent: this request was not made.
    #[error(
        "gave up on NetBox after {limit} requests without an answer (timeouts, refused or reset connections, 502/503/504)"
    )]
    TransportLimit {
        /// The limit that was reached.
        limit: u32,
    },
}

impl NetBoxError {
    /// Stable label for metrics and reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "NetBoxUnauthorized",
            Self::Invalid { .. } => "NetBoxRejected",
            Self::Status { .. } => "NetBoxError",
            Self::Transport { .. } => "NetBoxUnreachable",
            Self::Decode { .. } => "NetBoxInvalidResponse",
            Self::Config(_) => "InvalidSpec",
            Self::EndpointRefused(_) => "EndpointRefused",
            Self::TransportLimit { .. } => "TransportErrorLimit",
        }
    }

    /// True when no answer came from NetBox itself (no connection, a timeout, or a
    /// gateway's 502/503/504): what the stage's transport-error limit counts.
    pub fn is_transport(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }
}

/// The NetBox client's metrics.
#[derive(Clone, Debug)]
pub struct NetBoxMetrics {
    /// `netbox_request_duration_seconds{cluster, operation, outcome}`.
    request_duration: CallDurations,
}

impl NetBoxMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            request_duration: CallDurations::register(
                registry,
                "netbox_request_duration_seconds",
                "Duration of each HTTP request sent to the NetBox API (each page and each retry is one), by operation (list, create, update, delete) and outcome",
            ),
        }
    }

    /// The recorder a client of `cluster` is given.
    pub fn recorder(&self, cluster: &str) -> CallRecorder {
        self.request_duration.recorder(cluster)
    }
}

/// The operation label of a request method.
fn operation(method: &Method) -> &'static str {
    match *method {
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The NetBox API as the sync engine uses it. Endpoints are relative to `/api/`
/// (`virtualization/virtual-machines`).
pub trait NetBoxApi: Send + Sync {
    /// Every object matching the query, all pages.
    fn list<'a>(
        &'a self,
        endpoint: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>>;
    /// Bulk create; returns the created objects in order.
    fn create<'a>(
        &'a self,
        endpoint: &'a str,
        objects: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>>;
    /// Bulk update; each object has an `id` and only the fields to change.
    fn update<'a>(
        &'a self,
        endpoint: &'a str,
        patches: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>>;
    /// Bulk delete by id.
    fn delete<'a>(
        &'a self,
        endpoint: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NetBoxError>>;
    /// (read requests, write requests) made so far.
    fn request_counts(&self) -> (u64, u64);
    /// NetBox's version (`major.minor.patch` from `/api/status/`); `None` when unknown,
    /// and then no feature of a newer version is used.
    fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>>;
}

/// A NetBox release, `(major, minor, patch)`.
pub type NetBoxVersion = (u32, u32, u32);

/// The release in a `netbox-version` string (`4.7.3`, `v4.4.2-Docker-3.3.0`).
pub fn parse_version(text: &str) -> Option<NetBoxVersion> {
    let text = text.trim().trim_start_matches('v');
    let numbers = text
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?;
    let mut parts = numbers.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct NetBoxConnection {
    /// Base URL without `/api`.
    pub url: String,
    /// API token (`nbt_...` v2, or a 40-character v1 token).
    pub token: SecretString,
    /// TLS verification.
    pub tls: TlsSettings,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Retries of a failed read, update or delete (429, 502-504, no answer).
    pub retries: u32,
    /// Accept a plain `http` URL (`spec.netbox.allowInsecureHttp`); otherwise only https.
    pub allow_insecure_http: bool,
    /// Which addresses the URL may reach (checked on the URL here and on every resolved
    /// address at connect time).
    pub endpoint_guard: EndpointGuard,
}

/// The reqwest-based client.
pub struct NetBoxClient {
    http: reqwest::Client,
    base: String,
    auth_header: reqwest::header::HeaderValue,
    limit: Arc<Semaphore>,
    retries: u32,
    reads: AtomicU64,
    writes: AtomicU64,
    recorder: CallRecorder,
}

impl NetBoxClient {
    /// Builds the client; fails on a URL the guard refuses (plain http without
    /// `allow_insecure_http`, user info, query, fragment, a refused IP literal) and on an
    /// unusable CA bundle.
    pub fn new(conn: NetBoxConnection) -> Result<Self, NetBoxError> {
        conn.endpoint_guard
            .check_netbox_url(&conn.url, conn.allow_insecure_http)
            .map_err(NetBoxError::EndpointRefused)?;
        let http = http_client(
            &conn.tls,
            conn.timeout,
            "proxmox-netbox-operator",
            &conn.endpoint_guard,
        )
        .map_err(|e| NetBoxError::Config(format!("spec.netbox.tls: {e}")))?;
        let token = conn.token.expose().trim();
        // NetBox picks v1/v2 from the `nbt_` prefix; v1 tokens use the Token keyword.
        let auth_header = SecretString::new(if token.starts_with("nbt_") {
            format!("Bearer {token}")
        } else {
            format!("Token {token}")
        });
        let auth_header =
            crate::secrets::sensitive_header(auth_header.expose()).ok_or_else(|| {
                NetBoxError::Config(
                "spec.netbox.tokenSecretRef: the token holds characters an HTTP header cannot carry"
                    .into(),
            )
            })?;
        Ok(Self {
            http,
            base: format!("{}/api/", conn.url.trim_end_matches('/')),
            auth_header,
            limit: Arc::new(Semaphore::new(conn.max_in_flight.max(1))),
            retries: conn.retries,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            recorder: CallRecorder::default(),
        })
    }

    /// The client, timing each request it sends into `recorder`.
    pub fn with_recorder(self, recorder: CallRecorder) -> Self {
        Self { recorder, ..self }
    }

    async fn send(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, NetBoxError> {
        let idempotent = method != Method::POST;
        let mut attempt = 0;
        loop {
            let mut result = self.send_once(method.clone(), endpoint, query, body).await;
            let retry = match &result {
                Err(NetBoxError::Transport { .. }) => idempotent,
                // 429 is answered before any work; a 502-504 from a proxy can come after
                // NetBox did the work, so a create is never repeated blindly.
                Err(NetBoxError::Status { status, .. }) => {
                    *status == 429 || (idempotent && (502..=504).contains(status))
                }
                _ => false,
            };
            if !idempotent
                && let Err(NetBoxError::Status {
                    status: status @ 502..=504,
                    message,
                    ..
                }) = &result
            {
                result = Err(NetBoxError::Transport {
                    endpoint: endpoint.into(),
                    message: format!(
                        "answered {status} ({message}); the create may have been done"
                    ),
                });
            }
            if retry && attempt < self.retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt.min(5)))).await;
                continue;
            }
            return result;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, NetBoxError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| NetBoxError::Config("client closed".into()))?;
        if method == Method::GET {
            self.reads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let operation = operation(&method);
        let started = std::time::Instant::now();
        let result = self.exchange(method, endpoint, query, body).await;
        let outcome = match &result {
            Ok(_) => SUCCESS,
            Err(e) => e.metric_label(),
        };
        self.recorder.observe(operation, outcome, started.elapsed());
        result
    }

    /// Sends one request and reads its answer.
    async fn exchange(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, NetBoxError> {
        let method_name = method.clone();
        let mut req = self
            .http
            .request(
                method,
                format!("{}{}/", self.base, endpoint.trim_matches('/')),
            )
            .header(reqwest::header::AUTHORIZATION, self.auth_header.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = std::time::Instant::now();
        let resp = req.send().await.map_err(|e| match refusal_in(&e) {
            Some(refusal) => NetBoxError::EndpointRefused(EndpointError {
                field: NETBOX_URL_FIELD.into(),
                problem: UrlProblem::Refused(refusal.clone()),
            }),
            None => NetBoxError::Transport {
                endpoint: endpoint.into(),
                message: error_chain(&e),
            },
        })?;
        let status = resp.status();
        tracing::debug!(
            %method_name,
            endpoint,
            objects = body.map_or(0, |b| b.as_array().map_or(1, Vec::len)),
            status = status.as_u16(),
            millis = started.elapsed().as_millis() as u64,
            "netbox request"
        );
        let body_error = |e: BodyError| match e {
            BodyError::Read(e) => NetBoxError::Transport {
                endpoint: endpoint.into(),
                message: error_chain(&e),
            },
            too_large @ BodyError::TooLarge { .. } => NetBoxError::Decode {
                endpoint: endpoint.into(),
                message: too_large.to_string(),
            },
        };
        if status.is_success() {
            let bytes = read_capped(resp, MAX_ANSWER_BYTES)
                .await
                .map_err(body_error)?;
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| NetBoxError::Decode {
                endpoint: endpoint.into(),
                message: e.to_string(),
            });
        }
        let start = read_prefix(resp, ERROR_BODY_READ_BYTES)
            .await
            .map_err(body_error)?;
        let message = excerpt(&match serde_json::from_slice::<Value>(&start) {
            Ok(v) => match (v.get("detail").and_then(Value::as_str), v.get("errors")) {
                // Bulk writes: the per-object field errors say what is wrong.
                (Some(_), Some(errors)) => field_errors(errors),
                (Some(detail), None) => detail.to_string(),
                _ => v.to_string(),
            },
            // An HTML error page or plain text (possibly cut at the read limit).
            Err(_) => String::from_utf8_lossy(&start).into_owned(),
        });
        Err(match status.as_u16() {
            401 | 403 => NetBoxError::Auth {
                endpoint: endpoint.into(),
                status: status.as_u16(),
                message,
            },
            400 => NetBoxError::Invalid {
                endpoint: endpoint.into(),
                message,
            },
            s => NetBoxError::Status {
                endpoint: endpoint.into(),
                status: s,
                message,
            },
        })
    }

    /// Every object matching the query, reading at most `max_pages` pages.
    async fn list_pages(
        &self,
        endpoint: &str,
        query: &[(String, String)],
        max_pages: usize,
    ) -> Result<Vec<Value>, NetBoxError> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        for _ in 0..max_pages {
            let mut q = query.to_vec();
            q.push(("limit".into(), PAGE_SIZE.to_string()));
            q.push(("offset".into(), offset.to_string()));
            let page = self.send(Method::GET, endpoint, &q, None).await?;
            let results =
                page["results"]
                    .as_array()
                    .cloned()
                    .ok_or_else(|| NetBoxError::Decode {
                        endpoint: endpoint.into(),
                        message: "no results in the page".into(),
                    })?;
            let n = results.len();
            out.extend(results);
            let total = page["count"].as_u64().unwrap_or(0) as usize;
            offset += n;
            if n == 0 || offset >= total || page["next"].is_null() {
                return Ok(out);
            }
        }
        Err(NetBoxError::Decode {
            endpoint: endpoint.into(),
            message: format!(
                "more than {max_pages} pages of up to {PAGE_SIZE} objects; reading stopped"
            ),
        })
    }
}

/// `field: message` pairs of a bulk error answer (`[{"index": 0, "errors": {...}}]`).
fn field_errors(errors: &Value) -> String {
    let mut parts = Vec::new();
    for item in errors.as_array().into_iter().flatten() {
        for (field, msgs) in item["errors"].as_object().into_iter().flatten() {
            let text: Vec<String> = match msgs {
                Value::Array(a) => a
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| m.to_string())
                    })
                    .collect(),
                other => vec![other.to_string()],
            };
            parts.push(format!("{field}: {}", text.join(" ")));
        }
    }
    if parts.is_empty() {
        errors.to_string()
    } else {
        parts.join("; ")
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

fn as_list(v: Value, endpoint: &str) -> Result<Vec<Value>, NetBoxError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(_) => Ok(vec![v]),
        other => Err(NetBoxError::Decode {
            endpoint: endpoint.into(),
            message: format!("expected a list, got {other}"),
        }),
    }
}

impl NetBoxApi for NetBoxClient {
    fn list<'a>(
        &'a self,
        endpoint: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(self.list_pages(endpoint, query, MAX_LIST_PAGES))
    }

    fn create<'a>(
        &'a self,
        endpoint: &'a str,
        objects: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(async move {
            let body = Value::Array(objects);
            let v = self.send(Method::POST, endpoint, &[], Some(&body)).await?;
            as_list(v, endpoint)
        })
    }

    fn update<'a>(
        &'a self,
        endpoint: &'a str,
        patches: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(async move {
            let body = Value::Array(patches);
            let v = self.send(Method::PATCH, endpoint, &[], Some(&body)).await?;
            as_list(v, endpoint)
        })
    }

    fn delete<'a>(
        &'a self,
        endpoint: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NetBoxError>> {
        Box::pin(async move {
            let body = Value::Array(
                ids.into_iter()
                    .map(|id| serde_json::json!({"id": id}))
                    .collect(),
            );
            match self.send(Method::DELETE, endpoint, &[], Some(&body)).await {
                Ok(_) => Ok(()),
                // Already gone (a retry after a lost answer): nothing left to do.
                Err(NetBoxError::Status { status: 404, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn request_counts(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }

    fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
        Box::pin(async move {
            let status = self.send(Method::GET, "status", &[], None).await?;
            Ok(status["netbox-version"].as_str().and_then(parse_version))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::net::body::ERROR_EXCERPT_CHARS;
    use crate::net::body::test_server::{Body, serve};
    use crate::net::guard::Cidr;

    fn client(url: &str, allow_http: bool, allowed: &[&str]) -> Result<NetBoxClient, NetBoxError> {
        crate::tls::install_crypto_provider();
        NetBoxClient::new(NetBoxConnection {
            url: url.into(),
            token: SecretString::new("nbt_abc.def"),
            tls: TlsSettings::default(),
            timeout: Duration::from_secs(30),
            max_in_flight: 2,
            retries: 0,
            allow_insecure_http: allow_http,
            endpoint_guard: EndpointGuard::new(allowed.iter().map(|c| c.parse::<Cidr>().unwrap())),
        })
    }

    /// A client of a local test server answering `head` and `body` (loopback allowed).
    async fn served(head: &str, body: Body) -> NetBoxClient {
        let addr = serve(head.to_string(), body).await;
        client(&format!("http://{addr}"), true, &["127.0.0.0/8"]).unwrap()
    }

    #[test]
    fn the_url_is_checked_when_the_client_is_built() {
        let err = client("http://netbox.example.com", false, &[])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "spec.netbox.url: plain http is refused: use https, or set spec.netbox.allowInsecureHttp: true"
        );
        assert_eq!(err.metric_label(), "EndpointRefused");
        assert!(client("http://netbox.example.com", true, &[]).is_ok());
        assert!(client("https://netbox.example.com", false, &[]).is_ok());
        let err = client("http://127.0.0.1:8000", true, &[]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "spec.netbox.url: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
        );
        assert!(client("http://127.0.0.1:8000", true, &["127.0.0.0/8"]).is_ok());
        for bad in [
            "https://user:pw@netbox.example.com",
            "https://netbox.example.com/?x=1",
            "https://netbox.example.com/#top",
            "https://169.254.169.254",
        ] {
            let err = client(bad, false, &["169.254.0.0/16"]).err().unwrap();
            assert!(
                matches!(err, NetBoxError::EndpointRefused(_)),
                "{bad}: {err}"
            );
            assert!(err.to_string().starts_with("spec.netbox.url: "), "{err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let addr = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 2".into(),
            Body::Bytes(b"{}".to_vec()),
        )
        .await;
        let url = format!("http://localhost:{}", addr.port());
        let refused = client(&url, true, &[]).unwrap();
        let err = refused.list("dcim/sites", &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.netbox.url: localhost resolves to 127.0.0.1, a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
        );
        // With loopback allowed, the same server is reached (and its page is read).
        let allowed = client(&url, true, &["127.0.0.0/8", "::1"]).unwrap();
        let err = allowed.list("dcim/sites", &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid answer from NetBox on dcim/sites: no results in the page"
        );
    }

    #[tokio::test]
    async fn each_request_sent_is_timed_by_operation_and_outcome() {
        let mut registry = Registry::default();
        let metrics = NetBoxMetrics::register(&mut registry);
        let page = br#"{"count": 1, "next": null, "results": [{"id": 1}]}"#;
        let ok = served(
            &format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close",
                page.len()
            ),
            Body::Bytes(page.to_vec()),
        )
        .await
        .with_recorder(metrics.recorder("infra/lab"));
        ok.list("dcim/devices", &[]).await.unwrap();
        let refused = served(
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close",
            Body::Bytes(Vec::new()),
        )
        .await
        .with_recorder(metrics.recorder("infra/lab"));
        refused
            .update("dcim/devices", vec![serde_json::json!({"id": 1})])
            .await
            .unwrap_err();
        let text = crate::metrics::render(&registry);
        for line in [
            r#"netbox_request_duration_seconds_count{cluster="infra/lab",operation="list",outcome="success"} 1"#,
            r#"netbox_request_duration_seconds_count{cluster="infra/lab",operation="update",outcome="NetBoxUnauthorized"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains("dcim") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }

    #[test]
    fn versions_are_read_from_release_strings() {
        assert_eq!(parse_version("4.7.3"), Some((4, 7, 3)));
        assert_eq!(parse_version("v4.4.2-Docker-3.3.0"), Some((4, 4, 2)));
        assert_eq!(parse_version("4.5"), Some((4, 5, 0)));
        assert_eq!(parse_version("4.10.0-beta1"), Some((4, 10, 0)));
        for junk in ["", "x", "4", "99999999999.1.1", "..", "-1.2.3"] {
            assert_eq!(parse_version(junk), None, "{junk}");
        }
        assert!(parse_version("4.4.1") < Some((4, 4, 2)));
        assert!(parse_version("4.10.0") > Some((4, 4, 2)));
    }

    #[tokio::test]
    async fn an_endless_page_is_cut_at_the_cap() {
        let nb = served("HTTP/1.1 200 OK\r\nconnection: close", Body::Endless).await;
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), nb.list("dcim/devices", &[]))
            .await
            .expect("reading stops at the cap")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid answer from NetBox on dcim/devices: the answer is larger than the 32 MiB cap; reading stopped"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        let nb = served(
            "HTTP/1.1 200 OK\r\ncontent-length: 4294967296\r\nconnection: close",
            Body::Endless,
        )
        .await;
        let err = nb.list("dcim/devices", &[]).await.unwrap_err();
        assert!(err.to_string().contains("32 MiB cap"), "{err}");
    }

    #[tokio::test]
    async fn a_list_stops_at_the_page_cap() {
        // Every page announces a next one.
        let page =
            br#"{"count": 1000000000, "next": "http://x/?offset=1", "results": [{"id": 1}]}"#;
        let nb = served(
            &format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close",
                page.len()
            ),
            Body::Bytes(page.to_vec()),
        )
        .await;
        let err = nb.list_pages("dcim/devices", &[], 3).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid answer from NetBox on dcim/devices: more than 3 pages of up to 1000 objects; reading stopped"
        );
        assert_eq!(nb.request_counts(), (3, 0));
    }

    #[tokio::test]
    async fn error_bodies_become_short_single_line_messages() {
        let mut html = b"<html>\n<title>Server Error</title>\r\n\t<body>\n".to_vec();
        html.extend(std::iter::repeat_n(b"<p>trace line</p>\n".as_slice(), 100_000).flatten());
        let nb = served(
            "HTTP/1.1 500 Internal Server Error\r\nconnection: close",
            Body::Bytes(html),
        )
        .await;
        let err = nb.list("dcim/devices", &[]).await.unwrap_err();
        let NetBoxError::Status {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 500);
        assert!(
            message.starts_with("<html> <title>Server Error</title> <body> <p>trace line</p>"),
            "{message}"
        );
        assert!(!message.contains(['\n', '\r', '\t']), "{message}");
        assert!(
            message.chars().count() <= ERROR_EXCERPT_CHARS + 1,
            "{message}"
        );
        let detail = br#"{"detail": "Invalid token\nplease check\u0007"}"#;
        let nb = served(
            &format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}",
                detail.len()
            ),
            Body::Bytes(detail.to_vec()),
        )
        .await;
        let err = nb.list("dcim/devices", &[]).await.unwrap_err();
        assert_eq!(
            err,
            NetBoxError::Auth {
                endpoint: "dcim/devices".into(),
                status: 403,
                message: "Invalid token please check".into()
            }
        );
    }
}
