//! Command-line interface: `run`, `crdgen`, `sync`, `facts parse`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;

use crate::args::{EndpointArgs, installation_id_arg};
use crate::controller::{AbortSignal, AbortTrigger, ClusterPipeline, Context, run_controller};
use crate::hardware::discovery::SshProber;
use crate::metrics::Metrics;
use crate::net::guard::{Cidr, EndpointGuard};
use crate::pipeline::live::{LiveProvisioner, LiveReader, LiveWriter};
use crate::pipeline::{StageLimits, StagedPipeline};
use crate::server::{ServerState, serve};
use crate::telemetry::LogFormat;

/// Keeps NetBox true to what Proxmox VE actually runs.
#[derive(Debug, Parser)]
#[command(name = "proxmox-netbox-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PNO_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `proxmox_netbox_operator=debug`); `RUST_LOG` wins.
    #[arg(long, global = true, default_value = "info", env = "PNO_LOG_LEVEL")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller in a Kubernetes cluster.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crdgen(CrdgenArgs),
    /// Run one sync from a ProxmoxCluster YAML file, without Kubernetes.
    Sync(crate::sync_cmd::SyncArgs),
    /// Work with hardware facts.
    Facts {
        /// What to do.
        #[command(subcommand)]
        command: FactsCommand,
    },
}

/// Subcommands of `facts`.
#[derive(Debug, Subcommand)]
pub enum FactsCommand {
    /// Print what the operator extracts from a command's output, as JSON.
    Parse {
        /// Which command produced the file.
        #[arg(long, value_enum)]
        kind: FactsKind,
        /// The output file (`-` for standard input).
        file: std::path::PathBuf,
    },
}

/// Kinds of command output `facts parse` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FactsKind {
    /// `dmidecode`, `dmidecode -t 1` or `dmidecode -t 3`.
    Dmidecode,
    /// `ip -o link show` (or `ip link show`, `ip -d link`, `ip -j link`).
    Iplink,
    /// `ethtool <iface>`.
    Ethtool,
}

/// Parses a command output into the facts JSON printed by `facts parse`.
pub fn parse_facts(kind: FactsKind, text: &str) -> serde_json::Value {
    use crate::hardware::parse;
    match kind {
        FactsKind::Dmidecode => {
            let (system, chassis) = parse::dmidecode(text);
            let mut out = serde_json::Map::new();
            if let Some(s) = system {
                out.insert("system".into(), serde_json::to_value(s).unwrap_or_default());
            }
            if let Some(c) = chassis {
                out.insert(
                    "chassis".into(),
                    serde_json::to_value(c).unwrap_or_default(),
                );
            }
            serde_json::Value::Object(out)
        }
        FactsKind::Iplink => serde_json::to_value(parse::ip_link(text)).unwrap_or_default(),
        FactsKind::Ethtool => {
            let (info, problems) = parse::ethtool(text);
            let mut out = serde_json::to_value(info).unwrap_or_default();
            if !problems.errors.is_empty() {
                out["errors"] = serde_json::json!(problems.errors);
            }
            out
        }
    }
}

/// Options of `crdgen`.
#[derive(Debug, clap::Args)]
pub struct CrdgenArgs {
    /// Print the Markdown field reference instead of the YAML.
    #[arg(long)]
    pub reference: bool,
}

/// The live stages (PVE over HTTPS, SSH, NetBox), all checked by `guard`, timing their
/// calls into `metrics` when given.
pub fn live_pipeline(
    guard: EndpointGuard,
    metrics: Option<&Metrics>,
) -> StagedPipeline<LiveReader, SshProber, LiveProvisioner, LiveWriter> {
    StagedPipeline {
        reader: LiveReader {
            endpoint_guard: guard.clone(),
            metrics: metrics.map(|m| m.pve.clone()),
        },
        provisioner: LiveProvisioner {
            endpoint_guard: guard.clone(),
            pve: metrics.map(|m| m.pve.clone()),
            netbox: metrics.map(|m| m.netbox.clone()),
        },
        prober: SshProber {
            endpoint_guard: guard.clone(),
            metrics: metrics.map(|m| m.ssh.clone()),
        },
        writer: LiveWriter {
            endpoint_guard: guard,
            settle: Default::default(),
            metrics: metrics.map(|m| m.netbox.clone()),
        },
        limits: StageLimits::default(),
    }
}

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "PNO_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "PNO_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a coordination.k8s.io Lease, so replicas never sync the same
    /// cluster at once.
    #[arg(long, env = "PNO_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        default_value = "proxmox-netbox-operator",
        env = "PNO_LEASE_NAME"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the chart sets the pod's namespace; default: the namespace of
    /// the kubeconfig or service account).
    #[arg(long, env = "PNO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity of this replica (the chart sets the pod's name; default: the host name).
    #[arg(long, env = "PNO_IDENTITY")]
    pub identity: Option<String>,
    /// First part of the owner mark on every NetBox object (see docs/operations.md,
    /// "Ownership"); default: the UID of the `kube-system` namespace, which tells this
    /// Kubernetes cluster from any other writing to the same NetBox.
    #[arg(long, env = "PNO_INSTALLATION_ID", value_parser = installation_id_arg)]
    pub installation_id: Option<String>,
    /// The endpoint guard's allow-list.
    #[command(flatten)]
    pub endpoints: EndpointArgs,
}

/// The installation id of this Kubernetes cluster: the UID of namespace `kube-system`.
async fn cluster_installation_id(client: &kube::Client) -> Result<String, CliError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = api.get("kube-system").await.map_err(|e| {
        CliError::InstallationId(format!(
            "cannot read the UID of namespace kube-system ({e}); grant get on it or set --installation-id (chart value installationId)"
        ))
    })?;
    ns.metadata
        .uid
        .ok_or_else(|| CliError::InstallationId("namespace kube-system has no UID".into()))
}

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No Kubernetes configuration could be loaded.
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The metrics server failed.
    #[error("metrics server: {0}")]
    Server(#[from] std::io::Error),
    /// Leader election failed.
    #[error("leader election: {0}")]
    LeaderElection(String),
    /// The installation id could not be determined.
    #[error("installation id: {0}")]
    InstallationId(String),
    /// Rendering the CRDs failed.
    #[error("cannot render CRDs: {0}")]
    Crdgen(String),
    /// The `sync` input could not be used.
    #[error("{0}")]
    SyncFile(#[from] crate::sync_cmd::SyncFileError),
    /// The sync ran but did not fully succeed (details were printed).
    #[error("the sync did not fully succeed")]
    SyncIncomplete,
    /// The facts file could not be read.
    #[error("cannot read {path}: {message}")]
    FactsFile {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
}

impl CliError {
    /// Stable label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Server(_) => "MetricsServer",
            Self::LeaderElection(_) => "LeaderElection",
            Self::InstallationId(_) => "InstallationId",
            Self::Crdgen(_) => "Crdgen",
            Self::SyncFile(e) => e.metric_label(),
            Self::SyncIncomplete => "SyncIncomplete",
            Self::FactsFile { .. } => "FactsFile",
        }
    }
}

/// Prints the CRDs (or their Markdown reference).
pub fn crdgen(args: &CrdgenArgs) -> Result<(), CliError> {
    if args.reference {
        print!("{}", crate::crd::reference_markdown());
        return Ok(());
    }
    let yaml = crate::crd::crds_yaml().map_err(|e| CliError::Crdgen(e.to_string()))?;
    print!("{yaml}");
    Ok(())
}

/// Runs `sync` with the live stages and prints the result.
pub async fn sync(args: crate::sync_cmd::SyncArgs) -> Result<(), CliError> {
    use crate::sync_cmd::{OutputFormat, render_text, run_sync};
    let live = live_pipeline(args.endpoints.guard(), None);
    let out = run_sync(&args, &live.stages(), chrono::Utc::now()).await?;
    match args.output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default())
        }
        OutputFormat::Text => print!("{}", render_text(&out)),
    }
    if out.success {
        Ok(())
    } else {
        Err(CliError::SyncIncomplete)
    }
}

/// Runs `facts parse`.
pub fn facts(command: FactsCommand) -> Result<(), CliError> {
    let FactsCommand::Parse { kind, file } = command;
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), 16 * 1024 * 1024),
            &mut buf,
        )
        .map(|_| buf)
    } else {
        std::fs::read(&file)
    }
    .map_err(|e| CliError::FactsFile {
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    println!(
        "{}",
        serde_json::to_string_pretty(&parse_facts(kind, &text)).unwrap_or_default()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Lease duration: another replica may take the Lease this long after its last renewal.
const LEASE_SECONDS: u64 = 15;
/// The holder renews this long before the Lease would expire (every 5 s).
const LEASE_GRACE_SECONDS: u64 = 10;
/// The fence stops a leader this long before its Lease could be taken.
const FENCE_MARGIN: Duration = Duration::from_secs(4);

/// Resolves when the controller must stop, and says why: `false` on `stop` (SIGTERM:
/// running reconciles may finish), `true` when `leader` turns false or its watcher ends,
/// or `fenced` resolves (leadership lost or unproven: `abort` fires first, so running
/// reconciles stop at once and no sync of this replica overlaps with the new leader's).
pub async fn stop_or_lose_leadership(
    mut stop: tokio::sync::watch::Receiver<bool>,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    fenced: impl std::future::Future<Output = ()>,
    abort: AbortTrigger,
) -> bool {
    let Some(mut leader) = leader else {
        let _ = stop.wait_for(|s| *s).await;
        return false;
    };
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        _ = leader.wait_for(|l| !*l) => {
            abort.abort();
            tracing::error!("lost leadership: aborting running reconciles and stopping");
            true
        }
        () = fenced => {
            abort.abort();
            tracing::error!("fenced: aborting running reconciles and stopping");
            true
        }
    }
}

/// How long a stopping leader waits for its Lease to be released after SIGTERM (a standby
/// then takes over at once instead of after the Lease duration).
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How long a fenced leader (or one that lost its Lease) waits for the release: it could
/// not reach the API server or no longer holds the Lease, so it stops almost at once.
const LEASE_RELEASE_WAIT_LOST: Duration = Duration::from_millis(500);

/// Waits, bounded, for the Lease manager's task to release the Lease and end. The task
/// notices the closed channel only between its retries (it may sleep up to 30 s in its
/// backoff while the API server is unreachable), so it is aborted past the bound.
async fn release_lease<T>(task: tokio::task::JoinHandle<T>, lost: bool) {
    let wait = if lost {
        LEASE_RELEASE_WAIT_LOST
    } else {
        LEASE_RELEASE_WAIT
    };
    let abort = task.abort_handle();
    if tokio::time::timeout(wait, task).await.is_err() {
        abort.abort();
        tracing::warn!(
            waited_ms = wait.as_millis() as u64,
            "the Lease was not released in time: stopping without releasing it"
        );
    }
}

/// Runs the controller until SIGTERM (or loss of leadership), with the pipeline `pipeline`
/// builds from the metrics.
pub async fn run<P: ClusterPipeline>(
    args: RunArgs,
    pipeline: impl FnOnce(&Metrics) -> P,
) -> Result<(), CliError> {
    let allowed: Vec<String> = args
        .endpoints
        .allow_endpoint_cidr
        .iter()
        .map(Cidr::to_string)
        .collect();
    tracing::info!(allowed = ?allowed, "endpoint guard: loopback, link-local, unspecified and metadata addresses refused unless allowed");
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&metrics.kubernetes)
        .build();
    let installation = match &args.installation_id {
        Some(id) => id.clone(),
        None => cluster_installation_id(&client).await?,
    };
    tracing::info!(installation = %installation, "NetBox owner marks start with this installation id");
    let pipeline = pipeline(&metrics);
    let state = Arc::new(ServerState {
        registry,
        ready: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(serve(
        args.metrics_addr,
        state.clone(),
        stopped(stop_rx.clone()),
    ));
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "proxmox-netbox-operator".into());
    let reporter = Reporter {
        controller: "proxmox-netbox-operator".into(),
        instance: Some(identity.clone()),
    };
    let (abort, abort_signal) = AbortSignal::new();
    let mut ctx = Context::new(client.clone(), pipeline, metrics.reconcile, reporter);
    ctx.abort = abort_signal;
    ctx.installation = installation;
    let ctx = Arc::new(ctx);

    let mut leadership = None;
    let mut fence_lease = None;
    if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        fence_lease = Some((
            kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                client.clone(),
                &namespace,
            ),
            identity.clone(),
        ));
        // Renewed every LEASE_SECONDS - LEASE_GRACE_SECONDS (5 s): the fence (below) has
        // room to see a renewal well inside its deadline.
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(namespace)
                .with_identity(identity)
                .with_duration(LEASE_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                .build()
                .await
                .map_err(|e| CliError::LeaderElection(e.to_string()))?;
        let (mut rx, task) = manager.watch().await;
        // A standby replica is ready: it serves metrics and takes over when the leader goes.
        state.ready.store(true, Ordering::Relaxed);
        tracing::info!(lease = %args.lease_name, "waiting for leadership");
        let mut stop = stop_rx.clone();
        loop {
            if *rx.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(CliError::LeaderElection("lease watcher stopped".into()));
                    }
                }
                _ = stop.wait_for(|s| *s) => {
                    let _ = server.await;
                    return Ok(());
                }
            }
        }
        tracing::info!("became leader");
        leadership = Some((rx, task));
    }
    state.ready.store(true, Ordering::Relaxed);

    let lost_leadership = Arc::new(AtomicBool::new(false));
    let controller_stop = {
        let stop = stop_rx.clone();
        let lost = lost_leadership.clone();
        let leader_rx = leadership.as_ref().map(|(rx, _)| rx.clone());
        let lease_name = args.lease_name.clone();
        async move {
            // The fence runs as its own task (its API reads are not Sync): it resolves
            // `fenced` by dropping the sender.
            let fence_rx = fence_lease.map(|(api, identity)| {
                let (fence_tx, fence_rx) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(async move {
                    crate::fence::fenced(
                        api,
                        lease_name,
                        identity,
                        Duration::from_secs(LEASE_SECONDS),
                        FENCE_MARGIN,
                    )
                    .await;
                    drop(fence_tx);
                });
                fence_rx
            });
            let fenced = async move {
                match fence_rx {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            if stop_or_lose_leadership(stop, leader_rx, fenced, abort).await {
                lost.store(true, Ordering::Relaxed);
            }
        }
    };
    run_controller(ctx, args.namespace.clone(), controller_stop).await;
    let _ = stop_tx.send(true);
    let lost = lost_leadership.load(Ordering::Relaxed);
    if let Some((rx, task)) = leadership {
        drop(rx);
        release_lease(task, lost).await;
    }
    let _ = server.await;
    if lost {
        return Err(CliError::LeaderElection("leadership lost".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_task_stuck_in_its_backoff_does_not_hold_up_the_stop() {
        // The Lease manager's task sleeping between retries (the API server is cut off).
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let _ = ended_tx.send(());
        });
        let started = tokio::time::Instant::now();
        release_lease(stuck, true).await;
        assert_eq!(started.elapsed(), LEASE_RELEASE_WAIT_LOST);
        // Aborted: it never runs to its end.
        assert!(ended_rx.await.is_err());

        // After SIGTERM the release gets longer, and a task that ends in time is awaited.
        let releasing = tokio::spawn(tokio::time::sleep(Duration::from_secs(2)));
        let started = tokio::time::Instant::now();
        release_lease(releasing, false).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let stuck = tokio::spawn(tokio::time::sleep(Duration::from_secs(30)));
        let started = tokio::time::Instant::now();
        release_lease(stuck, false).await;
        assert_eq!(started.elapsed(), LEASE_RELEASE_WAIT);
    }

    #[tokio::test]
    async fn losing_leadership_fires_the_abort_and_sigterm_does_not() {
        // Leadership lost: the abort fires, the stop future says so.
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
        let (trigger, signal) = AbortSignal::new();
        let guard = tokio::spawn(stop_or_lose_leadership(
            stop_rx,
            Some(leader_rx),
            std::future::pending(),
            trigger,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!guard.is_finished(), "still leader: keeps running");
        assert!(!signal.is_aborted());
        leader_tx.send_replace(false);
        let lost = tokio::time::timeout(Duration::from_secs(2), guard)
            .await
            .expect("stops promptly")
            .unwrap();
        assert!(lost);
        assert!(signal.is_aborted());
        tokio::time::timeout(Duration::from_secs(1), signal.aborted())
            .await
            .expect("running reconciles see the abort");

        // SIGTERM: a graceful stop, no abort.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
        let (trigger, signal) = AbortSignal::new();
        let guard = tokio::spawn(stop_or_lose_leadership(
            stop_rx,
            Some(leader_rx),
            std::future::pending(),
            trigger,
        ));
        stop_tx.send_replace(true);
        assert!(!guard.await.unwrap());
        assert!(!signal.is_aborted());

        // The lease watcher dying counts as lost leadership.
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
        let (trigger, signal) = AbortSignal::new();
        drop(leader_tx);
        assert!(
            stop_or_lose_leadership(stop_rx, Some(leader_rx), std::future::pending(), trigger)
                .await
        );
        assert!(signal.is_aborted());

        // The fence fires: leadership counts as lost, the abort fires.
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
        let (trigger, signal) = AbortSignal::new();
        assert!(stop_or_lose_leadership(stop_rx, Some(leader_rx), async {}, trigger).await);
        assert!(signal.is_aborted());
    }
}
