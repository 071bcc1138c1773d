//! HTTP client of the Proxmox VE API: token or ticket auth, endpoint failover, retries for
//! transient errors only, bounded concurrency. Errors carry the path and status, never a
//! credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::inventory::ReadFailure;
use crate::secret::SecretString;
use crate::tls::{TlsSettings, http_client};

/// Largest response body accepted (a 3000-guest /cluster/resources is about 2 MiB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// PVE tickets live two hours; renew well before.
const TICKET_RENEW_AFTER: Duration = Duration::from_secs(90 * 60);

/// How to authenticate.
#[derive(Clone, Debug)]
pub enum PveAuth {
    /// API token: `user@realm!tokenid` and its secret.
    Token {
        /// Token id.
        token_id: String,
        /// Token secret.
        secret: SecretString,
    },
    /// Ticket authentication with user and password.
    Ticket {
        /// User (`user@realm`).
        username: String,
        /// Password.
        password: SecretString,
    },
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct PveConnection {
    /// Endpoints (`https://host:8006`), tried in order.
    pub endpoints: Vec<String>,
    /// Credentials.
    pub auth: PveAuth,
    /// TLS verification.
    pub tls: TlsSettings,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub max_concurrency: usize,
    /// Retries of a transient failure (connect error, 5xx other than PVE's own errors, 429).
    pub retries: u32,
}

/// A failed PVE request. Messages never contain credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PveError {
    /// 401: credentials rejected.
    #[error("PVE rejected the credentials (401) on {path}")]
    Unauthorized {
        /// API path.
        path: String,
    },
    /// 403: a privilege is missing.
    #[error("permission denied (403) on {path}: {message}")]
    Forbidden {
        /// API path.
        path: String,
        /// PVE's message.
        message: String,
    },
    /// 404 or a path PVE does not know.
    #[error("not found (404) on {path}")]
    NotFound {
        /// API path.
        path: String,
    },
    /// Any other error status.
    #[error("PVE answered {status} on {path}: {message}")]
    Status {
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// PVE's message.
        message: String,
    },
    /// The request timed out.
    #[error("request to {path} timed out")]
    Timeout {
        /// API path.
        path: String,
    },
    /// TLS verification failed.
    #[error(
        "TLS certificate verification failed for {endpoint}: {message} (set spec.proxmox.tls.caSecretRef to the PVE CA, /etc/pve/pve-root-ca.pem)"
    )]
    Tls {
        /// Endpoint.
        endpoint: String,
        /// Detail.
        message: String,
    },
    /// No endpoint could be reached.
    #[error("cannot connect to {endpoint}: {message}")]
    Connection {
        /// Endpoint (the last one tried).
        endpoint: String,
        /// Detail.
        message: String,
    },
    /// The answer was not what PVE sends.
    #[error("invalid answer on {path}: {message}")]
    Decode {
        /// API path.
        path: String,
        /// Detail.
        message: String,
    },
    /// The client could not be built (CA bundle).
    #[error("{0}")]
    Config(String),
}

impl PveError {
    /// Stable label for metrics and reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::NotFound { .. } => "NotFound",
            Self::Status { .. } => "ServerError",
            Self::Timeout { .. } => "Timeout",
            Self::Tls { .. } => "TlsVerificationFailed",
            Self::Connection { .. } => "Connection",
            Self::Decode { .. } => "InvalidResponse",
            Self::Config(_) => "InvalidSpec",
        }
    }

    /// The read-failure reason this error means for the part being read.
    pub fn read_failure(&self) -> ReadFailure {
        match self {
            Self::Unauthorized { .. } => ReadFailure::Unauthorized,
            Self::Forbidden { .. } => ReadFailure::Forbidden,
            Self::Status { status: 595, .. } => ReadFailure::NodeOffline,
            Self::Status { message, .. } if is_agent_not_running(message) => {
                ReadFailure::AgentNotRunning
            }
            Self::Status { .. } | Self::NotFound { .. } => ReadFailure::ServerError,
            Self::Timeout { .. } => ReadFailure::Timeout,
            Self::Tls { .. } | Self::Connection { .. } => ReadFailure::Connection,
            Self::Decode { .. } | Self::Config(_) => ReadFailure::InvalidResponse,
        }
    }
}

/// True for PVE's messages when the QEMU guest agent does not answer.
pub fn is_agent_not_running(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("guest agent is not running") || m.contains("qemu guest agent") && m.contains("not")
}

/// The PVE API as the reader uses it: GET a path, get the contents of `data`.
pub trait PveApi: Send + Sync {
    /// GET `path` (relative to `/api2/json`, starting with `/`), returns `data`.
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>>;
}

struct Ticket {
    endpoint: usize,
    cookie: SecretString,
    issued: Instant,
}

/// The reqwest-based client.
pub struct PveClient {
    http: reqwest::Client,
    conn: PveConnection,
    limit: Arc<Semaphore>,
    /// Index of the endpoint that answered last (sticky failover).
    current: Mutex<usize>,
    ticket: Mutex<Option<Ticket>>,
}

impl PveClient {
    /// Builds a client; fails only on an unusable CA bundle.
    pub fn new(conn: PveConnection) -> Result<Self, PveError> {
        let http = http_client(&conn.tls, conn.timeout, "proxmox-netbox-operator")
            .map_err(|e| PveError::Config(format!("spec.proxmox.tls: {e}")))?;
        Ok(Self {
            http,
            limit: Arc::new(Semaphore::new(conn.max_concurrency.max(1))),
            conn,
            current: Mutex::new(0),
            ticket: Mutex::new(None),
        })
    }

    fn url(&self, endpoint: usize, path: &str) -> String {
        format!(
            "{}/api2/json{}",
            self.conn.endpoints[endpoint].trim_end_matches('/'),
            path
        )
    }

    async fn login(&self, endpoint: usize) -> Result<SecretString, PveError> {
        let PveAuth::Ticket { username, password } = &self.conn.auth else {
            return Err(PveError::Config("ticket login without a password".into()));
        };
        {
            let t = self.ticket.lock().await;
            if let Some(t) = t.as_ref()
                && t.endpoint == endpoint
                && t.issued.elapsed() < TICKET_RENEW_AFTER
            {
                return Ok(t.cookie.clone());
            }
        }
        let path = "/access/ticket";
        let resp = self
            .http
            .post(self.url(endpoint, path))
            .form(&[
                ("username", username.as_str()),
                ("password", password.expose()),
            ])
            .send()
            .await
            .map_err(|e| self.transport_error(endpoint, path, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(PveError::Unauthorized { path: path.into() });
        }
        let body = read_body(resp, path).await?;
        if !status.is_success() {
            return Err(status_error(path, status, &body));
        }
        let ticket = body["data"]["ticket"]
            .as_str()
            .ok_or_else(|| PveError::Decode {
                path: path.into(),
                message: "no ticket in the answer".into(),
            })?;
        let cookie = SecretString::new(ticket);
        *self.ticket.lock().await = Some(Ticket {
            endpoint,
            cookie: cookie.clone(),
            issued: Instant::now(),
        });
        Ok(cookie)
    }

    fn transport_error(&self, endpoint: usize, path: &str, e: &reqwest::Error) -> PveError {
        let endpoint_url = self.conn.endpoints[endpoint].clone();
        if e.is_timeout() {
            return PveError::Timeout { path: path.into() };
        }
        let mut detail = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls")
        {
            return PveError::Tls {
                endpoint: endpoint_url,
                message: detail,
            };
        }
        PveError::Connection {
            endpoint: endpoint_url,
            message: detail,
        }
    }

    async fn get_once(&self, endpoint: usize, path: &str) -> Result<Value, PveError> {
        let mut req = self.http.get(self.url(endpoint, path));
        match &self.conn.auth {
            PveAuth::Token { token_id, secret } => {
                req = req.header(
                    reqwest::header::AUTHORIZATION,
                    format!("PVEAPIToken={token_id}={}", secret.expose()),
                );
            }
            PveAuth::Ticket { .. } => {
                let cookie = self.login(endpoint).await?;
                req = req.header(
                    reqwest::header::COOKIE,
                    format!("PVEAuthCookie={}", cookie.expose()),
                );
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(endpoint, path, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            // An expired ticket: drop it so the next attempt logs in again.
            *self.ticket.lock().await = None;
            return Err(PveError::Unauthorized { path: path.into() });
        }
        let body = read_body(resp, path).await?;
        if !status.is_success() {
            return Err(status_error(path, status, &body));
        }
        match body.get("data") {
            Some(data) => Ok(data.clone()),
            None => Err(PveError::Decode {
                path: path.into(),
                message: "no data in the answer".into(),
            }),
        }
    }

    /// Whether a failure is worth another attempt on the same endpoint.
    fn transient(e: &PveError) -> bool {
        match e {
            PveError::Connection { .. } | PveError::Timeout { .. } => true,
            // 595 (node offline) and PVE's own 500s with a message are answers, not glitches.
            PveError::Status {
                status, message, ..
            } => {
                *status == 429
                    || (*status == 502 || *status == 503 || *status == 504)
                    || (*status >= 500 && message.is_empty())
            }
            _ => false,
        }
    }

    /// Whether a failure means this endpoint is down, so the next one should be tried.
    fn endpoint_down(e: &PveError) -> bool {
        matches!(e, PveError::Connection { .. } | PveError::Timeout { .. })
            || matches!(
                e,
                PveError::Status {
                    status: 502..=504,
                    ..
                }
            )
    }

    async fn get_with_failover(&self, path: &str) -> Result<Value, PveError> {
        let n = self.conn.endpoints.len();
        let start = *self.current.lock().await;
        let mut last = None;
        for offset in 0..n {
            let endpoint = (start + offset) % n;
            let mut attempt = 0;
            let mut logged_in_again = false;
            loop {
                match self.get_once(endpoint, path).await {
                    Ok(v) => {
                        if offset > 0 {
                            *self.current.lock().await = endpoint;
                            tracing::warn!(endpoint = %self.conn.endpoints[endpoint], "failed over to another PVE endpoint");
                        }
                        return Ok(v);
                    }
                    Err(e) if Self::transient(&e) && attempt < self.conn.retries => {
                        attempt += 1;
                        let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6)));
                        tracing::debug!(path, error = %e, attempt, "transient PVE error, retrying");
                        tokio::time::sleep(backoff).await;
                    }
                    // A ticket PVE no longer accepts (expired early, or the node restarted):
                    // get_once dropped it, so one more try logs in again.
                    Err(PveError::Unauthorized { .. })
                        if matches!(self.conn.auth, PveAuth::Ticket { .. }) && !logged_in_again =>
                    {
                        logged_in_again = true;
                    }
                    Err(e) if Self::endpoint_down(&e) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| PveError::Connection {
            endpoint: "(none)".into(),
            message: "no endpoint configured".into(),
        }))
    }
}

impl PveApi for PveClient {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(async move {
            let _permit = self
                .limit
                .acquire()
                .await
                .map_err(|_| PveError::Config("client closed".into()))?;
            self.get_with_failover(path).await
        })
    }
}

async fn read_body(resp: reqwest::Response, path: &str) -> Result<Value, PveError> {
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_BODY_BYTES as u64)
    {
        return Err(PveError::Decode {
            path: path.into(),
            message: "answer larger than 64 MiB".into(),
        });
    }
    let bytes = resp.bytes().await.map_err(|e| PveError::Decode {
        path: path.into(),
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(PveError::Decode {
            path: path.into(),
            message: "answer larger than 64 MiB".into(),
        });
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).or_else(|_| {
        // PVE answers some errors with plain text; keep it as the message.
        Ok(serde_json::json!({"message": String::from_utf8_lossy(&bytes[..bytes.len().min(300)])}))
    })
}

fn status_error(path: &str, status: StatusCode, body: &Value) -> PveError {
    let message = body["message"]
        .as_str()
        .map(|m| m.trim().to_string())
        .or_else(|| {
            body["errors"]
                .as_object()
                .map(|e| Value::Object(e.clone()).to_string())
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or_default().to_string());
    match status.as_u16() {
        403 => PveError::Forbidden {
            path: path.into(),
            message,
        },
        404 => PveError::NotFound { path: path.into() },
        s => PveError::Status {
            path: path.into(),
            status: s,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pve_answers_map_to_read_failures() {
        let offline = PveError::Status {
            path: "/nodes/pve2/qemu".into(),
            status: 595,
            message: "No route to host".into(),
        };
        assert_eq!(offline.read_failure(), ReadFailure::NodeOffline);
        let agent = PveError::Status {
            path: "/nodes/pve1/qemu/100/agent/network-get-interfaces".into(),
            status: 500,
            message: "QEMU guest agent is not running".into(),
        };
        assert_eq!(agent.read_failure(), ReadFailure::AgentNotRunning);
        assert!(!PveClient::transient(&agent), "PVE's own 500 is an answer");
        assert!(PveClient::transient(&PveError::Status {
            path: "/x".into(),
            status: 503,
            message: String::new()
        }));
        assert!(PveClient::endpoint_down(&PveError::Connection {
            endpoint: "https://a:8006".into(),
            message: "refused".into()
        }));
    }

    #[test]
    fn error_texts_name_the_path_and_never_the_token() {
        let e = PveError::Unauthorized {
            path: "/cluster/status".into(),
        };
        assert_eq!(
            e.to_string(),
            "PVE rejected the credentials (401) on /cluster/status"
        );
        let tls = PveError::Tls {
            endpoint: "https://pve1:8006".into(),
            message: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(tls.to_string().contains("caSecretRef"));
    }
}
