//! A fault-injecting HTTP proxy on loopback, placed between the operator and NetBox. Each
//! write (POST, PATCH, DELETE) of the synced objects (devices, VMs, interfaces, disks, MAC
//! and IP addresses; not the bootstrap objects such as tags and roles, whose failure only
//! stops a sync early) is faulted with a probability, with a fault drawn from a seeded
//! generator, so a run is reproduced by its seed. Reads pass through.
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
    /// Writes of synced objects seen.
    pub writes: u64,
    /// Faults injected, in order, with the request line.
    pub faults: Vec<(String, Fault)>,
}

/// The rules of a proxy.
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    /// Seed of the generator (the run is reproduced by it).
    pub seed: u64,
    /// Share of writes faulted, 0.0 to 1.0.
    pub write_fault_rate: f64,
    /// The client's request timeout (delays are drawn past it).
    pub client_timeout: Duration,
    /// A fault for the first write whose request line (`POST /api/...`) is this one,
    /// besides the random ones.
    pub scripted: Option<(&'static str, Fault)>,
}

/// A running proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<FaultLog>>,
    enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    /// What was injected so far.
    pub fn log(&self) -> FaultLog {
        self.log.lock().unwrap().clone()
    }

    /// Stops (false) or resumes (true) injecting faults; everything passes when stopped.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

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

/// Starts a proxy to `upstream` (plain http) with `plan`.
pub async fn start(upstream: String, plan: FaultPlan) -> FaultProxy {
    let http = super::harness::checking_http_client();
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(plan.seed)));
    let log = Arc::new(Mutex::new(FaultLog::default()));
    let enabled = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scripted = Arc::new(Mutex::new(plan.scripted));
    let state = (http, rng, log.clone(), enabled.clone(), upstream, scripted);
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (http, rng, log, enabled, upstream, scripted) = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, 64 << 20).await.unwrap_or_default();
            let write = parts.method != axum::http::Method::GET
                && SYNCED_OBJECTS.contains(&parts.uri.path());
            let line = format!("{} {}", parts.method, parts.uri.path());
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
            } else if write && enabled.load(std::sync::atomic::Ordering::SeqCst) {
                let mut rng = rng.lock().unwrap();
                let hit = rng.random_bool(plan.write_fault_rate.clamp(0.0, 1.0));
                hit.then(|| draw(&mut rng, plan.client_timeout))
            } else {
                None
            };
            {
                let mut log = log.lock().unwrap();
                log.writes += u64::from(write);
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
                    let bytes = answer.bytes().await.ok()?;
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FaultProxy {
        url: format!("http://{addr}"),
        log,
        enabled,
    }
}
