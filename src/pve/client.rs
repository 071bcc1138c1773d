//! HTTP client of the Proxmox VE API: token or ticket auth, endpoint failover, retries for
//! transient errors only, bounded concurrency, endpoints checked by the endpoint guard and
//! answers read against a size cap. Errors carry the path and status, never a credential.
//! Each HTTP request sent is timed into the client's [`CallRecorder`].
//!
//! Reads go through [`PveApi`]. Writes (POST, PUT, DELETE; the trait is in
//! [`super::write`]) share the same connection, limits and recorder, but are never repeated
//! once they may have reached PVE: they are retried, or failed over to the next endpoint,
//! only when nothing was sent (a failed connect) and on 429; a timeout or a connection lost
//! after sending is [`PveError::OutcomeUnknown`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use super::metrics::operation;
use crate::inventory::ReadFailure;
use crate::net::body::{BodyError, ERROR_BODY_READ_BYTES, excerpt, read_capped, read_prefix};
use crate::net::call_metrics::{CallRecorder, SUCCESS};
use crate::net::guard::{EndpointError, EndpointGuard, UrlProblem, pve_endpoint_field, refusal_in};
use crate::secrets::SecretString;
use crate::tls::{TlsSettings, http_client};

/// Largest PVE answer read (a 3000-guest `/cluster/resources` is about 2 MiB; the pod's
/// memory limit is 256 MiB). A longer answer is refused as soon as it passes the cap.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
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
    /// Retries of a transient failure: for reads a connect error, a timeout, a 5xx other
    /// than PVE's own errors, 429; for writes only a connect error and 429 (nothing done).
    pub retries: u32,
    /// Which addresses the endpoints may reach (checked on the URLs here and on every
    /// resolved address at connect time).
    pub endpoint_guard: EndpointGuard,
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
    /// The endpoint guard refused an endpoint (its URL, or an address it resolved to).
    #[error("{0}")]
    EndpointRefused(EndpointError),
    /// A write got no answer after it may have reached PVE (a timeout, a connection lost
    /// after sending, a gateway error, an answer that could not be read): PVE may have
    /// carried it out. It is never repeated by the client; look at PVE before trying again.
    #[error(
        "no answer to the write on {path} ({message}): the request may have been carried out; check PVE before repeating it"
    )]
    OutcomeUnknown {
        /// API path.
        path: String,
        /// What happened (no credential, no answer body).
        message: String,
    },
    /// The stage's transport-error limit is spent: this request was not made.
    #[error(
        "gave up on the Proxmox read after {limit} requests without an answer (timeouts, refused or reset connections)"
    )]
    TransportLimit {
        /// The limit that was reached.
        limit: u32,
    },
}

impl PveError {
    /// True when no answer came (a timeout, a failed connection, a write whose outcome is
    /// unknown): what the stage's transport-error limit counts.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Connection { .. } | Self::OutcomeUnknown { .. }
        )
    }

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
            Self::EndpointRefused(_) => "EndpointRefused",
            Self::OutcomeUnknown { .. } => "OutcomeUnknown",
            Self::TransportLimit { .. } => "TransportErrorLimit",
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
            Self::Tls { .. }
            | Self::Connection { .. }
            | Self::EndpointRefused(_)
            | Self::OutcomeUnknown { .. }
            | Self::TransportLimit { .. } => ReadFailure::Connection,
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

/// When a request is tried again on the same endpoint, or on the next one.
#[derive(Clone, Copy)]
struct Failover {
    /// Worth another attempt on the same endpoint.
    retry: fn(&PveError) -> bool,
    /// The endpoint is down (or nothing was sent): the next one is tried.
    next_endpoint: fn(&PveError) -> bool,
    /// What the debug log says of a retry.
    what: &'static str,
}

struct Ticket {
    endpoint: usize,
    cookie: SecretString,
    /// The login answer's `CSRFPreventionToken`, sent on every non-GET request.
    csrf: SecretString,
    issued: Instant,
}

/// What a ticket login gives: the cookie and the CSRF token that goes with it.
struct Session {
    cookie: SecretString,
    csrf: SecretString,
}

/// The parameters of a write: a form body (POST, PUT) or a query string (DELETE).
#[derive(Clone, Copy)]
pub(super) enum WriteParams<'a> {
    /// Form-encoded body.
    Form(&'a [(String, String)]),
    /// Query string.
    Query(&'a [(String, String)]),
}

/// The reqwest-based client.
pub struct PveClient {
    http: reqwest::Client,
    conn: PveConnection,
    limit: Arc<Semaphore>,
    /// Index of the endpoint that answered last (sticky failover).
    current: Mutex<usize>,
    ticket: Mutex<Option<Ticket>>,
    recorder: CallRecorder,
}

/// A credential as a sensitive header value; a value no header can carry counts as refused
/// credentials (without quoting it).
fn header_value(
    value: &SecretString,
    path: &str,
) -> Result<reqwest::header::HeaderValue, PveError> {
    crate::secrets::sensitive_header(value.expose())
        .ok_or_else(|| PveError::Unauthorized { path: path.into() })
}

impl PveClient {
    /// Builds a client; fails on an endpoint the guard refuses (not https, user info,
    /// query, fragment, a refused IP literal) and on an unusable CA bundle.
    pub fn new(conn: PveConnection) -> Result<Self, PveError> {
        conn.endpoint_guard
            .check_pve_endpoints(&conn.endpoints)
            .map_err(PveError::EndpointRefused)?;
        let http = http_client(
            &conn.tls,
            conn.timeout,
            "proxmox-netbox-operator",
            &conn.endpoint_guard,
        )
        .map_err(|e| PveError::Config(format!("spec.proxmox.tls: {e}")))?;
        Ok(Self {
            http,
            limit: Arc::new(Semaphore::new(conn.max_concurrency.max(1))),
            conn,
            current: Mutex::new(0),
            ticket: Mutex::new(None),
            recorder: CallRecorder::default(),
        })
    }

    /// The client, timing each request it sends into `recorder`.
    pub fn with_recorder(self, recorder: CallRecorder) -> Self {
        Self { recorder, ..self }
    }

    /// Runs one HTTP exchange of `method` on `path` and records its duration and outcome.
    async fn timed<T>(
        &self,
        method: &Method,
        path: &str,
        exchange: impl Future<Output = Result<T, PveError>>,
    ) -> Result<T, PveError> {
        let started = Instant::now();
        let result = exchange.await;
        let outcome = match &result {
            Ok(_) => SUCCESS,
            Err(e) => e.metric_label(),
        };
        self.recorder
            .observe(operation(method, path), outcome, started.elapsed());
        result
    }

    fn url(&self, endpoint: usize, path: &str) -> String {
        format!(
            "{}/api2/json{}",
            self.conn.endpoints[endpoint].trim_end_matches('/'),
            path
        )
    }

    async fn login(&self, endpoint: usize) -> Result<Session, PveError> {
        let PveAuth::Ticket { username, password } = &self.conn.auth else {
            return Err(PveError::Config("ticket login without a password".into()));
        };
        {
            let t = self.ticket.lock().await;
            if let Some(t) = t.as_ref()
                && t.endpoint == endpoint
                && t.issued.elapsed() < TICKET_RENEW_AFTER
            {
                return Ok(Session {
                    cookie: t.cookie.clone(),
                    csrf: t.csrf.clone(),
                });
            }
        }
        let path = "/access/ticket";
        let exchange = async {
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
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(PveError::Unauthorized { path: path.into() });
            }
            self.read_answer(endpoint, path, resp).await
        };
        let body = self.timed(&Method::POST, path, exchange).await?;
        let ticket = body["data"]["ticket"]
            .as_str()
            .ok_or_else(|| PveError::Decode {
                path: path.into(),
                message: "no ticket in the answer".into(),
            })?;
        let cookie = SecretString::new(ticket);
        // Without it PVE refuses every write made with this ticket ("invalid csrf token");
        // reads work, so a missing one is kept as empty rather than failing the login.
        let csrf = SecretString::new(
            body["data"]["CSRFPreventionToken"]
                .as_str()
                .unwrap_or_default(),
        );
        *self.ticket.lock().await = Some(Ticket {
            endpoint,
            cookie: cookie.clone(),
            csrf: csrf.clone(),
            issued: Instant::now(),
        });
        Ok(Session { cookie, csrf })
    }

    fn transport_error(&self, endpoint: usize, path: &str, e: &reqwest::Error) -> PveError {
        let endpoint_url = self.conn.endpoints[endpoint].clone();
        if let Some(refusal) = refusal_in(e) {
            return PveError::EndpointRefused(EndpointError {
                field: pve_endpoint_field(endpoint),
                problem: UrlProblem::Refused(refusal.clone()),
            });
        }
        if e.is_timeout() {
            return PveError::Timeout { path: path.into() };
        }
        let mut detail = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        if certificate_rejected(e) {
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

    /// `req` with the credentials: the token header, or the ticket's cookie (logging in
    /// first when needed) and, for a write, its CSRF token.
    async fn authenticated(
        &self,
        req: reqwest::RequestBuilder,
        endpoint: usize,
        path: &str,
        write: bool,
    ) -> Result<reqwest::RequestBuilder, PveError> {
        Ok(match &self.conn.auth {
            PveAuth::Token { token_id, secret } => {
                let value =
                    SecretString::new(format!("PVEAPIToken={token_id}={}", secret.expose()));
                req.header(reqwest::header::AUTHORIZATION, header_value(&value, path)?)
            }
            PveAuth::Ticket { .. } => {
                let session = self.login(endpoint).await?;
                let value = SecretString::new(format!("PVEAuthCookie={}", session.cookie.expose()));
                let req = req.header(reqwest::header::COOKIE, header_value(&value, path)?);
                if write {
                    req.header("CSRFPreventionToken", header_value(&session.csrf, path)?)
                } else {
                    req
                }
            }
        })
    }

    async fn get_once(&self, endpoint: usize, path: &str) -> Result<Value, PveError> {
        let req = self
            .authenticated(
                self.http.get(self.url(endpoint, path)),
                endpoint,
                path,
                false,
            )
            .await?;
        let exchange = async {
            let resp = req
                .send()
                .await
                .map_err(|e| self.transport_error(endpoint, path, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                // An expired ticket: drop it so the next attempt logs in again.
                *self.ticket.lock().await = None;
                return Err(PveError::Unauthorized { path: path.into() });
            }
            let body = self.read_answer(endpoint, path, resp).await?;
            match body.get("data") {
                Some(data) => Ok(data.clone()),
                None => Err(PveError::Decode {
                    path: path.into(),
                    message: "no data in the answer".into(),
                }),
            }
        };
        self.timed(&Method::GET, path, exchange).await
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

    /// Reads an answer: a success as JSON (at most [`MAX_ANSWER_BYTES`]), an error status
    /// as a [`PveError`] with a short excerpt of its body.
    async fn read_answer(
        &self,
        endpoint: usize,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<Value, PveError> {
        let status = resp.status();
        let body_error = |e: BodyError| match e {
            BodyError::Read(e) => self.transport_error(endpoint, path, &e),
            too_large @ BodyError::TooLarge { .. } => PveError::Decode {
                path: path.into(),
                message: format!("{too_large} (endpoint {})", self.conn.endpoints[endpoint]),
            },
        };
        if !status.is_success() {
            let start = read_prefix(resp, ERROR_BODY_READ_BYTES)
                .await
                .map_err(body_error)?;
            return Err(status_error(path, status, &start));
        }
        let bytes = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(body_error)?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| PveError::Decode {
            path: path.into(),
            message: format!("not JSON ({e})"),
        })
    }

    /// Whether a failure means this endpoint is down (or refused), so the next one should
    /// be tried.
    fn endpoint_down(e: &PveError) -> bool {
        matches!(
            e,
            PveError::Connection { .. } | PveError::Timeout { .. } | PveError::EndpointRefused(_)
        ) || matches!(
            e,
            PveError::Status {
                status: 502..=504,
                ..
            }
        )
    }

    async fn get_with_failover(&self, path: &str) -> Result<Value, PveError> {
        let policy = Failover {
            retry: Self::transient,
            next_endpoint: Self::endpoint_down,
            what: "transient PVE error, retrying",
        };
        self.with_failover(path, policy, |endpoint| self.get_once(endpoint, path))
            .await
    }

    /// Runs `attempt` on each endpoint in turn from the one that answered last: again on
    /// the same endpoint while `policy.retry` allows (with backoff, at most `retries`
    /// times), once more after an expired ticket, on the next endpoint when
    /// `policy.next_endpoint` says so; any other error is returned at once.
    async fn with_failover<F, Fut>(
        &self,
        path: &str,
        policy: Failover,
        attempt: F,
    ) -> Result<Value, PveError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<Value, PveError>>,
    {
        let n = self.conn.endpoints.len();
        let start = *self.current.lock().await;
        let mut last = None;
        for offset in 0..n {
            let endpoint = (start + offset) % n;
            let mut tries = 0;
            let mut logged_in_again = false;
            loop {
                match attempt(endpoint).await {
                    Ok(v) => {
                        if offset > 0 {
                            *self.current.lock().await = endpoint;
                            tracing::warn!(endpoint = %self.conn.endpoints[endpoint], "failed over to another PVE endpoint");
                        }
                        return Ok(v);
                    }
                    Err(e) if (policy.retry)(&e) && tries < self.conn.retries => {
                        tries += 1;
                        let backoff = Duration::from_millis(200 * 2u64.pow(tries.min(6)));
                        tracing::debug!(path, error = %e, attempt = tries, "{}", policy.what);
                        tokio::time::sleep(backoff).await;
                    }
                    // A ticket PVE no longer accepts (expired early, or the node restarted):
                    // the attempt dropped it, so one more try logs in again.
                    Err(PveError::Unauthorized { .. })
                        if matches!(self.conn.auth, PveAuth::Ticket { .. }) && !logged_in_again =>
                    {
                        logged_in_again = true;
                    }
                    Err(e) if (policy.next_endpoint)(&e) => {
                        // A refusal says more than another endpoint's timeout: keep it.
                        if !matches!(last, Some(PveError::EndpointRefused(_))) {
                            last = Some(e);
                        }
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

/// Statuses of a write answered by something between the client and the PVE node that
/// did the work: a gateway (502, 503, 504), or pveproxy forwarding to another node (596:
/// sending or reading the headers failed, 597: reading the body failed, 598/599 other).
/// The node may have carried the request out. 595 (the connection to the node could not
/// be made) is not among them: nothing reached the node.
const WRITE_OUTCOME_UNKNOWN_STATUSES: &[u16] = &[502, 503, 504, 596, 597, 598, 599];

impl PveClient {
    /// A transport error of a write: a failed connect (nothing sent; a connect timeout
    /// included) as for reads, anything after the connection was made as
    /// [`PveError::OutcomeUnknown`].
    fn write_transport_error(&self, endpoint: usize, path: &str, e: &reqwest::Error) -> PveError {
        if e.is_connect() || refusal_in(e).is_some() {
            return match self.transport_error(endpoint, path, e) {
                PveError::Timeout { .. } => PveError::Connection {
                    endpoint: self.conn.endpoints[endpoint].clone(),
                    message: "connect timed out".into(),
                },
                other => other,
            };
        }
        let message = if e.is_timeout() {
            format!("no answer within {}s", self.conn.timeout.as_secs_f64())
        } else {
            let mut detail = String::from("the connection failed after the request was sent");
            let mut source: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = source {
                detail = s.to_string();
                source = s.source();
            }
            excerpt(&detail)
        };
        PveError::OutcomeUnknown {
            path: path.into(),
            message,
        }
    }

    /// One attempt of a write on one endpoint.
    async fn write_once(
        &self,
        endpoint: usize,
        method: &Method,
        path: &str,
        params: WriteParams<'_>,
    ) -> Result<Value, PveError> {
        let req = self.http.request(method.clone(), self.url(endpoint, path));
        let req = match params {
            WriteParams::Form(form) => req.form(form),
            WriteParams::Query([]) => req,
            WriteParams::Query(query) => req.query(query),
        };
        let req = self.authenticated(req, endpoint, path, true).await?;
        let exchange = async {
            let resp = req
                .send()
                .await
                .map_err(|e| self.write_transport_error(endpoint, path, &e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                // PVE checks the credentials (and the CSRF token) before anything else:
                // nothing was done. An expired ticket is dropped so the next attempt logs in.
                *self.ticket.lock().await = None;
                return Err(PveError::Unauthorized { path: path.into() });
            }
            if WRITE_OUTCOME_UNKNOWN_STATUSES.contains(&status.as_u16()) {
                return Err(PveError::OutcomeUnknown {
                    path: path.into(),
                    message: format!("answered {status} by a proxy or gateway"),
                });
            }
            let body = self
                .read_answer(endpoint, path, resp)
                .await
                .map_err(|e| match e {
                    // PVE's verdict: the write was refused.
                    e @ (PveError::Status { .. }
                    | PveError::Forbidden { .. }
                    | PveError::NotFound { .. }) => e,
                    // The answer was lost or unreadable: the write may have been done.
                    other => PveError::OutcomeUnknown {
                        path: path.into(),
                        message: format!("answered {status}, but the answer was lost: {other}"),
                    },
                })?;
            match body.get("data") {
                Some(data) => Ok(data.clone()),
                None => Err(PveError::OutcomeUnknown {
                    path: path.into(),
                    message: format!("answered {status} without data"),
                }),
            }
        };
        self.timed(method, path, exchange).await
    }

    /// Whether a failed write may be sent again on the same endpoint: nothing reached PVE
    /// (the connect failed) or PVE's proxy asked to slow down (429, sent before the request
    /// is handled).
    fn write_retryable(e: &PveError) -> bool {
        matches!(
            e,
            PveError::Connection { .. } | PveError::Status { status: 429, .. }
        )
    }

    /// Whether a failed write may go to the next endpoint: nothing reached PVE.
    fn write_not_sent(e: &PveError) -> bool {
        matches!(
            e,
            PveError::Connection { .. } | PveError::EndpointRefused(_)
        )
    }

    async fn write_with_failover(
        &self,
        method: &Method,
        path: &str,
        params: WriteParams<'_>,
    ) -> Result<Value, PveError> {
        let policy = Failover {
            retry: Self::write_retryable,
            next_endpoint: Self::write_not_sent,
            what: "PVE write not sent, retrying",
        };
        self.with_failover(path, policy, |endpoint| {
            self.write_once(endpoint, method, path, params)
        })
        .await
    }

    /// Sends a write (`POST`, `PUT` or `DELETE`) within the client's concurrency limit;
    /// returns the answer's `data`. See [`super::write::PveWriteApi`].
    pub(super) async fn write(
        &self,
        method: Method,
        path: &str,
        params: WriteParams<'_>,
    ) -> Result<Value, PveError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| PveError::Config("client closed".into()))?;
        self.write_with_failover(&method, path, params).await
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

/// The error of a non-success answer; `start` is the beginning of its body. PVE's message
/// (JSON `message` or `errors`, or plain text) is cut to a short single-line excerpt.
/// Whether a request failed because the TLS handshake rejected a certificate (the CA is
/// wrong or missing), found by type in the error's causes. A reset or closed connection
/// during the handshake is not: that is a connection problem, retried with backoff.
fn certificate_rejected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        // An io::Error's source skips the error it wraps, which may be another io::Error.
        let mut wrapped: &(dyn std::error::Error + 'static) = s;
        while let Some(inner) = wrapped
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            wrapped = inner;
        }
        if let Some(tls) = wrapped.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        source = s.source();
    }
    false
}

fn status_error(path: &str, status: StatusCode, start: &[u8]) -> PveError {
    let text = match serde_json::from_slice::<Value>(start) {
        _ if start.is_empty() => None,
        Ok(body) => {
            // PVE's 400 says "Parameter verification failed." and names the fields in
            // `errors`: keep both, the fields are what can be acted on.
            let fields = body["errors"]
                .as_object()
                .filter(|e| !e.is_empty())
                .map(|e| {
                    e.iter()
                        .map(|(field, why)| match why.as_str() {
                            Some(why) => format!("{field}: {why}"),
                            None => format!("{field}: {why}"),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                });
            match (body["message"].as_str(), fields) {
                (Some(m), Some(f)) => Some(format!("{} ({f})", m.trim())),
                (Some(m), None) => Some(m.to_string()),
                (None, f) => f,
            }
        }
        // PVE answers some errors with plain text.
        Err(_) => Some(String::from_utf8_lossy(start).into_owned()),
    };
    // Without a message, the reason phrase (none for PVE's own 595/596: those stay empty).
    let message = match text {
        Some(t) => excerpt(&t),
        None => status.canonical_reason().unwrap_or_default().to_string(),
    };
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
    use std::time::Duration;

    use super::*;
    use crate::net::body::test_server::{Body, serve};
    use crate::net::guard::Cidr;

    fn client(endpoints: &[&str], allowed: &[&str]) -> Result<PveClient, PveError> {
        crate::tls::install_crypto_provider();
        PveClient::new(PveConnection {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            auth: PveAuth::Token {
                token_id: "u@pve!t".into(),
                secret: SecretString::new("s3cr3t"),
            },
            tls: TlsSettings::default(),
            timeout: Duration::from_secs(10),
            max_concurrency: 1,
            retries: 0,
            endpoint_guard: EndpointGuard::new(allowed.iter().map(|c| c.parse::<Cidr>().unwrap())),
        })
    }

    /// A plain-HTTP answer from a local test server, as `read_answer` gets it.
    async fn answer(head: &str, body: Body) -> reqwest::Response {
        let addr = serve(head.to_string(), body).await;
        reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
    }

    #[test]
    fn endpoints_are_checked_when_the_client_is_built() {
        let err = client(&["http://pve1:8006"], &[]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "spec.proxmox.endpoints[0]: the scheme \"http\" is refused: use https"
        );
        assert_eq!(err.metric_label(), "EndpointRefused");
        let err = client(&["https://pve1:8006", "https://127.0.0.1:8006"], &[])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "spec.proxmox.endpoints[1]: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
        );
        assert!(
            client(
                &["https://pve1:8006", "https://127.0.0.1:8006"],
                &["127.0.0.0/8"]
            )
            .is_ok()
        );
        let err = client(
            &["https://[::ffff:169.254.169.254]:8006"],
            &["0.0.0.0/0", "::/0"],
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("a cloud metadata address"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let c = client(&["https://localhost:9"], &[]).unwrap();
        let err = c.get("/version").await.unwrap_err();
        assert!(matches!(err, PveError::EndpointRefused(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "spec.proxmox.endpoints[0]: localhost resolves to 127.0.0.1, a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
        );
        // Allowed: the connection is attempted (nothing listens on port 9).
        let c = client(&["https://localhost:9"], &["127.0.0.0/8", "::1"]).unwrap();
        let err = c.get("/version").await.unwrap_err();
        assert!(matches!(err, PveError::Connection { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn each_request_sent_is_timed_under_a_fixed_operation_with_its_outcome() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::pve::metrics::PveMetrics::register(&mut registry);
        let c = client(&["https://localhost:9"], &["127.0.0.0/8", "::1"])
            .unwrap()
            .with_recorder(metrics.recorder("infra/lab"));
        let err = c.get("/nodes/pve7/qemu/4242/config").await.unwrap_err();
        assert_eq!(err.metric_label(), "Connection");
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(r#"pve_request_duration_seconds_count{cluster="infra/lab",operation="guest_config",outcome="Connection"} 1"#),
            "{text}"
        );
        assert!(!text.contains("pve7") && !text.contains("4242"), "{text}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap() {
        let c = client(&["https://pve1.example.com:8006"], &[]).unwrap();
        let resp = answer("HTTP/1.1 200 OK\r\nconnection: close", Body::Endless).await;
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            c.read_answer(0, "/cluster/resources", resp),
        )
        .await
        .expect("reading stops at the cap")
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid answer on /cluster/resources: the answer is larger than the 16 MiB cap; reading stopped (endpoint https://pve1.example.com:8006)"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        // A declared length over the cap is refused before reading.
        let resp = answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\nconnection: close",
            Body::Endless,
        )
        .await;
        let err = c.read_answer(0, "/nodes", resp).await.unwrap_err();
        assert!(err.to_string().contains("16 MiB cap"), "{err}");
    }

    #[tokio::test]
    async fn error_bodies_become_short_single_line_messages() {
        let c = client(&["https://pve1.example.com:8006"], &[]).unwrap();
        let mut text = b"proxy error\n\nupstream said:\r\n".to_vec();
        text.extend(std::iter::repeat_n(b"garbage\n".as_slice(), 200_000).flatten());
        let resp = answer(
            "HTTP/1.1 500 Internal Server Error\r\nconnection: close",
            Body::Bytes(text),
        )
        .await;
        let err = c.read_answer(0, "/nodes", resp).await.unwrap_err();
        let PveError::Status {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 500);
        assert!(
            message.starts_with("proxy error upstream said: garbage garbage"),
            "{message}"
        );
        assert!(!message.contains('\n') && !message.contains('\r'));
        assert!(message.chars().count() <= crate::net::body::ERROR_EXCERPT_CHARS + 1);
        let resp = answer(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nconnection: close",
            Body::Bytes(
                br#"{"message": "Permission check failed\n(/nodes, Sys.Audit)\n"}"#.to_vec(),
            ),
        )
        .await;
        let err = c.read_answer(0, "/nodes", resp).await.unwrap_err();
        assert_eq!(
            err,
            PveError::Forbidden {
                path: "/nodes".into(),
                message: "Permission check failed (/nodes, Sys.Audit)".into()
            }
        );
        let resp = answer(
            "HTTP/1.1 400 Parameter verification failed.\r\ncontent-type: application/json\r\nconnection: close",
            Body::Bytes(
                br#"{"data": null, "message": "Parameter verification failed.\n", "errors": {"sshkeys": "invalid urlencoded string: a b", "cores": "value must have a minimum value of 1"}}"#.to_vec(),
            ),
        )
        .await;
        let err = c
            .read_answer(0, "/nodes/pve1/qemu/105/config", resp)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PVE answered 400 on /nodes/pve1/qemu/105/config: Parameter verification failed. (cores: value must have a minimum value of 1; sshkeys: invalid urlencoded string: a b)"
        );
    }

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
    fn writes_are_repeated_only_when_nothing_was_sent() {
        let connect = PveError::Connection {
            endpoint: "https://a:8006".into(),
            message: "connect timed out".into(),
        };
        let slow_down = PveError::Status {
            path: "/x".into(),
            status: 429,
            message: "Too Many Requests".into(),
        };
        let unknown = PveError::OutcomeUnknown {
            path: "/nodes/pve1/qemu/9000/clone".into(),
            message: "no answer within 30s".into(),
        };
        assert!(PveClient::write_retryable(&connect));
        assert!(PveClient::write_retryable(&slow_down));
        assert!(PveClient::write_not_sent(&connect));
        assert!(!PveClient::write_not_sent(&slow_down));
        for sent in [
            unknown.clone(),
            PveError::Timeout { path: "/x".into() },
            PveError::Status {
                path: "/x".into(),
                status: 503,
                message: String::new(),
            },
        ] {
            assert!(!PveClient::write_retryable(&sent), "{sent:?}");
            assert!(!PveClient::write_not_sent(&sent), "{sent:?}");
        }
        assert!(unknown.is_transport());
        assert_eq!(unknown.metric_label(), "OutcomeUnknown");
        assert_eq!(
            unknown.to_string(),
            "no answer to the write on /nodes/pve1/qemu/9000/clone (no answer within 30s): the request may have been carried out; check PVE before repeating it"
        );
    }

    #[tokio::test]
    async fn a_write_that_cannot_connect_was_not_sent() {
        let c = client(&["https://localhost:9"], &["127.0.0.0/8", "::1"]).unwrap();
        let form = vec![("newid".to_string(), "105".to_string())];
        let err = c
            .write(
                Method::POST,
                "/nodes/pve1/qemu/9000/clone",
                WriteParams::Form(&form),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PveError::Connection { .. }), "{err:?}");
        let c = client(&["https://localhost:9"], &[]).unwrap();
        let err = c
            .write(
                Method::DELETE,
                "/nodes/pve1/qemu/105",
                WriteParams::Query(&[]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PveError::EndpointRefused(_)), "{err:?}");
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
        // As hyper-util gives it: an io::Error around rustls's io::Error around the cause.
        let rejected = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(certificate_rejected(&rejected));
        let closed = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        );
        assert!(!certificate_rejected(&closed));
        let tls = PveError::Tls {
            endpoint: "https://pve1:8006".into(),
            message: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(tls.to_string().contains("caSecretRef"));
    }
}
