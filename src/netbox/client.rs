//! HTTP client of the NetBox REST API: paginated reads, bulk create/update/delete, bounded
//! requests in flight, backoff on 429/5xx for requests that are safe to repeat, and request
//! counters. Errors name the endpoint and carry NetBox's message, never the token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::secret::SecretString;
use crate::tls::{TlsSettings, http_client};

/// Largest page NetBox serves by default (`MAX_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 1000;
/// Largest response body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

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
        }
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
}

/// The reqwest-based client.
pub struct NetBoxClient {
    http: reqwest::Client,
    base: String,
    auth_header: SecretString,
    limit: Arc<Semaphore>,
    retries: u32,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl NetBoxClient {
    /// Builds the client.
    pub fn new(conn: NetBoxConnection) -> Result<Self, NetBoxError> {
        let http = http_client(&conn.tls, conn.timeout, "proxmox-netbox-operator")
            .map_err(|e| NetBoxError::Config(format!("spec.netbox.tls: {e}")))?;
        let token = conn.token.expose().trim();
        // NetBox picks v1/v2 from the `nbt_` prefix; v1 tokens use the Token keyword.
        let auth_header = if token.starts_with("nbt_") {
            format!("Bearer {token}")
        } else {
            format!("Token {token}")
        };
        Ok(Self {
            http,
            base: format!("{}/api/", conn.url.trim_end_matches('/')),
            auth_header: SecretString::new(auth_header),
            limit: Arc::new(Semaphore::new(conn.max_in_flight.max(1))),
            retries: conn.retries,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
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
        let method_name = method.clone();
        if method == Method::GET {
            self.reads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let mut req = self
            .http
            .request(
                method,
                format!("{}{}/", self.base, endpoint.trim_matches('/')),
            )
            .header(reqwest::header::AUTHORIZATION, self.auth_header.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = std::time::Instant::now();
        let resp = req.send().await.map_err(|e| NetBoxError::Transport {
            endpoint: endpoint.into(),
            message: error_chain(&e),
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
        let bytes = resp.bytes().await.map_err(|e| NetBoxError::Transport {
            endpoint: endpoint.into(),
            message: error_chain(&e),
        })?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(NetBoxError::Decode {
                endpoint: endpoint.into(),
                message: "answer larger than 256 MiB".into(),
            });
        }
        if status.is_success() {
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| NetBoxError::Decode {
                endpoint: endpoint.into(),
                message: e.to_string(),
            });
        }
        let message = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => match (v.get("detail").and_then(Value::as_str), v.get("errors")) {
                // Bulk writes: the per-object field errors say what is wrong.
                (Some(_), Some(errors)) => field_errors(errors),
                (Some(detail), None) => detail.to_string(),
                _ => v.to_string(),
            },
            Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        };
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
        Box::pin(async move {
            let mut out = Vec::new();
            let mut offset = 0usize;
            loop {
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
        })
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
}
