//! A fault-injecting HTTP proxy on loopback, placed between the operator and NetBox
//! (plain http) or between the operator and PVE (https, with the fake PVE's own
//! certificate). Each request of the plan's [`Target`] is faulted with a probability, with
//! a fault drawn from a seeded generator, so a run is reproduced by its seed:
//! - NetBox: writes (POST, PATCH, DELETE) of the synced objects (devices, VMs, interfaces,
//!   disks, MAC and IP addresses; not the bootstrap objects such as tags and roles, whose
//!   failure only stops a sync early); reads pass through;
//! - PVE: reads of one node's or one guest's data (`/api2/json/nodes/...`); the cluster-wide
//!   reads pass through.
//!
//! Besides the random faults, a proxy can take a node down (every request for it answered
//! 595, as a PVE node answers for a peer it cannot reach) or die itself after a number of
//! requests (every later one reset: an endpoint failing mid-read), or hide a share of the
//! guests as an ACL on a pool does (left out of the node's guest lists, 200 all the same,
//! with the pool shown without `VM.Audit` in `/access/permissions`).
//!
//! Faults:
//! - `DropAnswer`: forwarded, NetBox does the work, the client gets a reset connection;
//! - `LateExecution`: the client gets a reset at once, the request reaches NetBox later
//!   (a NetBox still executing a request whose client gave up);
//! - `ResetBefore`: the connection is reset and nothing is forwarded;
//! - `DelayPastTimeout`: forwarded after the client's timeout has passed;
//! - `ServerError(status)`: answered 500/502/503/504 without forwarding;
//! - `Truncate`: forwarded, the answer's body cut in half;
//! - `StallMidBody`: forwarded, half the body sent, then nothing until the client gives up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::http::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded; the answer is replaced by a reset connection.
    DropAnswer,
    /// Reset at once; forwarded after the delay.
    LateExecution(Duration),
    /// Reset; never forwarded.
    ResetBefore,
    /// Forwarded after the delay (longer than the client's timeout).
    DelayPastTimeout(Duration),
    /// Answered with this status; never forwarded.
    ServerError(u16),
    /// Forwarded; half the answer's body, then the end.
    Truncate,
    /// Forwarded; half the answer's body, then a stall of the delay.
    StallMidBody(Duration),
}

/// What the proxy did, for the report of a run.
#[derive(Clone, Debug, Default)]
pub struct FaultLog {
    /// Requests of the plan's target seen.
    pub targeted: u64,
    /// Faults injected, in order, with the request line.
    pub faults: Vec<(String, Fault)>,
}

/// Which requests a proxy faults at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Writes of the objects a NetBox sync writes in bulk.
    NetBoxWrites,
    /// PVE reads of one node's or one guest's data.
    PveNodeReads,
}

impl Target {
    fn matches(self, method: &axum::http::Method, path: &str) -> bool {
        match self {
            Target::NetBoxWrites => {
                method != axum::http::Method::GET && SYNCED_OBJECTS.contains(&path)
            }
            Target::PveNodeReads => {
                method == axum::http::Method::GET && path.starts_with(PVE_NODES)
            }
        }
    }
}

/// The rules of a proxy.
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    /// Which requests are faulted.
    pub target: Target,
    /// Seed of the generator (the run is reproduced by it).
    pub seed: u64,
    /// Share of the target's requests faulted, 0.0 to 1.0.
    pub fault_rate: f64,
    /// The client's request timeout (delays are drawn past it).
    pub client_timeout: Duration,
    /// A fault for the first request whose request line (`POST /api/...`) is this one,
    /// besides the random ones.
    pub scripted: Option<(&'static str, Fault)>,
}

/// What a running proxy does besides its random faults; changed while it runs.
#[derive(Clone, Debug, Default)]
struct Controls {
    /// Random faults off.
    disabled: bool,
    /// A PVE node whose every request is answered 595.
    node_down: Option<String>,
    /// After this many more requests, every request is reset.
    dies_after: Option<u64>,
    /// Every guest whose vmid is a multiple of this is hidden by a pool ACL.
    hidden_every: Option<u64>,
}

/// A running proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, or `https://` for a PVE proxy.
    pub url: String,
    log: Arc<Mutex<FaultLog>>,
    controls: Arc<Mutex<Controls>>,
}

impl FaultProxy {
    /// What was injected so far.
    pub fn log(&self) -> FaultLog {
        self.log.lock().unwrap().clone()
    }

    /// Stops (false) or resumes (true) injecting faults; everything passes when stopped
    /// (a node taken down or a proxy that died stays so).
    pub fn set_enabled(&self, on: bool) {
        self.controls.lock().unwrap().disabled = !on;
    }

    /// Answers every request for PVE node `node` with 595 (`None`: the node is back).
    pub fn set_node_down(&self, node: Option<&str>) {
        self.controls.lock().unwrap().node_down = node.map(str::to_string);
    }

    /// Resets every request after the next `n` (`None`: alive again).
    pub fn die_after(&self, n: Option<u64>) {
        self.controls.lock().unwrap().dies_after = n;
    }

    /// Hides every guest whose vmid is a multiple of `every` behind a pool ACL the token
    /// lost `VM.Audit` on (`None`: the ACL is gone).
    pub fn hide_pool(&self, every: Option<u64>) {
        self.controls.lock().unwrap().hidden_every = every;
    }
}

/// The pool whose ACL hides guests.
pub const HIDDEN_POOL: &str = "/pool/fault-proxy";

/// `bytes`, a PVE answer to GET `path`, as a token without `VM.Audit` on the pool of the
/// guests whose vmid is a multiple of `every` sees it.
fn hide_pool_guests(path: &str, bytes: Bytes, every: u64) -> Bytes {
    let guest_list = path.strip_prefix(PVE_NODES).is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('/').collect();
        parts.len() == 2 && matches!(parts[1], "qemu" | "lxc")
    });
    let permissions = path == "/api2/json/access/permissions";
    if !guest_list && !permissions {
        return bytes;
    }
    let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    if let Some(guests) = answer["data"].as_array_mut().filter(|_| guest_list) {
        guests.retain(|g| g["vmid"].as_u64().is_none_or(|vmid| vmid % every != 0));
    } else if let Some(paths) = answer["data"].as_object_mut() {
        paths.insert(HIDDEN_POOL.into(), serde_json::json!({}));
    }
    Bytes::from(serde_json::to_vec(&answer).unwrap())
}

/// Prefix of PVE's node-scoped paths.
const PVE_NODES: &str = "/api2/json/nodes/";

/// Endpoints of the objects a sync writes in bulk.
const SYNCED_OBJECTS: [&str; 7] = [
    "/api/dcim/devices/",
    "/api/dcim/interfaces/",
    "/api/dcim/mac-addresses/",
    "/api/ipam/ip-addresses/",
    "/api/virtualization/virtual-machines/",
    "/api/virtualization/interfaces/",
    "/api/virtualization/virtual-disks/",
];

fn draw(rng: &mut StdRng, timeout: Duration) -> Fault {
    let past = timeout + Duration::from_millis(rng.random_range(500..2500));
    match rng.random_range(0..7) {
        0 => Fault::DropAnswer,
        1 => Fault::LateExecution(Duration::from_millis(rng.random_range(500..4000))),
        2 => Fault::ResetBefore,
        3 => Fault::DelayPastTimeout(past),
        4 => Fault::ServerError([500, 502, 503, 504][rng.random_range(0..4)]),
        5 => Fault::Truncate,
        _ => Fault::StallMidBody(past),
    }
}

/// A body that fails at once: hyper aborts the connection (the client sees a reset).
fn reset() -> Response<Body> {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected reset"))
    });
    Response::new(Body::from_stream(failing))
}

/// Starts a plain-http proxy to `upstream` (NetBox) with `plan`.
pub async fn start(upstream: String, plan: FaultPlan) -> FaultProxy {
    let http = super::harness::checking_http_client();
    let (app, proxy) = router(upstream, http, plan);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FaultProxy {
        url: format!("http://{addr}"),
        ..proxy
    }
}

/// Starts an https proxy to the fake PVE `pve` with `plan`. It serves the fake PVE's own
/// certificate, so clients verify it with the same CA file.
pub async fn start_pve(pve: &super::harness::FakePve, plan: FaultPlan) -> FaultProxy {
    use proxmox_netbox_operator::net::guard::EndpointGuard;
    use proxmox_netbox_operator::tls::{TlsSettings, http_client, install_crypto_provider};
    install_crypto_provider();
    let ca = std::fs::read_to_string(&pve.ca_file).unwrap();
    let http = http_client(
        &TlsSettings {
            ca_pem: Some(ca),
            insecure_skip_verify: false,
        },
        Duration::from_secs(120),
        "fault-proxy",
        &EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
    )
    .unwrap();
    let (app, proxy) = router(pve.url.trim_end_matches('/').to_string(), http, plan);
    let key_file = std::path::Path::new(&pve.ca_file).with_extension("key");
    let listener = tls::TlsListener::bind(&pve.ca_file, &key_file).await;
    let addr = listener.addr;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FaultProxy {
        url: format!("https://{addr}"),
        ..proxy
    }
}

/// The proxy's handler, and the proxy's handle without its URL.
fn router(upstream: String, http: reqwest::Client, plan: FaultPlan) -> (axum::Router, FaultProxy) {
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(plan.seed)));
    let log = Arc::new(Mutex::new(FaultLog::default()));
    let controls = Arc::new(Mutex::new(Controls::default()));
    let scripted = Arc::new(Mutex::new(plan.scripted));
    let state = (http, rng, log.clone(), controls.clone(), upstream, scripted);
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (http, rng, log, controls, upstream, scripted) = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, 64 << 20).await.unwrap_or_default();
            let path = parts.uri.path();
            let targeted = plan.target.matches(&parts.method, path);
            let line = format!("{} {}", parts.method, path);
            let (enabled, node_down, dead, hidden_every) = {
                let mut c = controls.lock().unwrap();
                let dead = match &mut c.dies_after {
                    Some(0) => true,
                    Some(n) => {
                        *n -= 1;
                        false
                    }
                    None => false,
                };
                let down = c.node_down.as_ref().is_some_and(|node| {
                    path.strip_prefix(PVE_NODES)
                        .is_some_and(|rest| rest.split('/').next() == Some(node.as_str()))
                });
                (!c.disabled, down, dead, c.hidden_every)
            };
            if dead {
                return reset();
            }
            if node_down {
                return Response::builder()
                    .status(595)
                    .body(Body::from("No route to host"))
                    .unwrap();
            }
            let script = {
                let mut s = scripted.lock().unwrap();
                match *s {
                    Some((l, f)) if l == line => {
                        *s = None;
                        Some(f)
                    }
                    _ => None,
                }
            };
            let fault = if script.is_some() {
                script
            } else if targeted && enabled {
                let mut rng = rng.lock().unwrap();
                let hit = rng.random_bool(plan.fault_rate.clamp(0.0, 1.0));
                hit.then(|| draw(&mut rng, plan.client_timeout))
            } else {
                None
            };
            {
                let mut log = log.lock().unwrap();
                log.targeted += u64::from(targeted);
                if let Some(f) = fault {
                    log.faults.push((line, f));
                }
            }
            let forward = {
                let (http, parts, body) = (http.clone(), parts.clone(), body.clone());
                move || async move {
                    let mut fwd = http
                        .request(parts.method.clone(), format!("{upstream}{}", parts.uri))
                        .body(body);
                    for (k, v) in &parts.headers {
                        if k != "host" {
                            fwd = fwd.header(k, v);
                        }
                    }
                    let answer = fwd.send().await.ok()?;
                    let status = answer.status().as_u16();
                    let mut bytes = answer.bytes().await.ok()?;
                    if let Some(every) = hidden_every {
                        bytes = hide_pool_guests(parts.uri.path(), bytes, every);
                    }
                    Some((status, bytes))
                }
            };
            let respond = |status: u16, bytes: Bytes| {
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(bytes))
                    .unwrap()
            };
            match fault {
                None => match forward().await {
                    Some((status, bytes)) => respond(status, bytes),
                    None => reset(),
                },
                Some(Fault::DropAnswer) => {
                    let _ = forward().await;
                    reset()
                }
                Some(Fault::LateExecution(after)) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = forward().await;
                    });
                    reset()
                }
                Some(Fault::ResetBefore) => reset(),
                Some(Fault::DelayPastTimeout(after)) => {
                    tokio::time::sleep(after).await;
                    match forward().await {
                        Some((status, bytes)) => respond(status, bytes),
                        None => reset(),
                    }
                }
                Some(Fault::ServerError(status)) => {
                    respond(status, Bytes::from("{\"detail\": \"injected\"}"))
                }
                Some(Fault::Truncate) => match forward().await {
                    Some((status, bytes)) => respond(status, bytes.slice(..bytes.len() / 2)),
                    None => reset(),
                },
                Some(Fault::StallMidBody(after)) => match forward().await {
                    Some((status, bytes)) => {
                        let head = bytes.slice(..bytes.len() / 2);
                        let chunks = futures::stream::unfold(0u8, move |step| {
                            let head = head.clone();
                            async move {
                                match step {
                                    0 => Some((Ok::<Bytes, std::io::Error>(head), 1)),
                                    1 => {
                                        tokio::time::sleep(after).await;
                                        Some((Err(std::io::Error::other("stalled")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from_stream(chunks))
                            .unwrap()
                    }
                    None => reset(),
                },
            }
        }
    });
    let proxy = FaultProxy {
        url: String::new(),
        log,
        controls,
    };
    (app, proxy)
}

/// A TLS listener for `axum::serve`: TCP on loopback, then a rustls handshake.
mod tls {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;

    pub struct TlsListener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        pub addr: std::net::SocketAddr,
    }

    impl TlsListener {
        /// Binds 127.0.0.1 on a free port, serving the PEM certificate and key.
        pub async fn bind(
            cert: impl AsRef<std::path::Path>,
            key: impl AsRef<std::path::Path>,
        ) -> Self {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            let config = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            Self {
                tcp,
                acceptor: TlsAcceptor::from(Arc::new(config)),
                addr,
            }
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((stream, peer)) = self.tcp.accept().await else {
                    continue;
                };
                let handshake = self.acceptor.accept(stream);
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await
                {
                    return (tls, peer);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.addr)
        }
    }
}
