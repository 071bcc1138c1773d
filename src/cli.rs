//! Command-line interface: `run`, `crdgen`, `sync`, `facts parse`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;

use crate::controller::{ClusterPipeline, Context, run_controller};
use crate::metrics::Metrics;
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
        env = "LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `proxmox_netbox_operator=debug`); `RUST_LOG` wins.
    #[arg(long, global = true, default_value = "info", env = "LOG_LEVEL")]
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
}

/// Options of `crdgen`.
#[derive(Debug, clap::Args)]
pub struct CrdgenArgs {
    /// Print the Markdown field reference instead of the YAML.
    #[arg(long)]
    pub reference: bool,
}

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a coordination.k8s.io Lease, so replicas never sync the same
    /// cluster at once.
    #[arg(long, env = "LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "proxmox-netbox-operator", env = "LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity of this replica (default: POD_NAME or the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
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
    /// Rendering the CRDs failed.
    #[error("cannot render CRDs: {0}")]
    Crdgen(String),
}

impl CliError {
    /// Stable label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Server(_) => "MetricsServer",
            Self::LeaderElection(_) => "LeaderElection",
            Self::Crdgen(_) => "Crdgen",
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

/// Runs the controller with the given pipeline until SIGTERM (or loss of leadership).
pub async fn run<P: ClusterPipeline>(args: RunArgs, pipeline: P) -> Result<(), CliError> {
    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
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
    let ctx = Arc::new(Context::new(client.clone(), pipeline, metrics, reporter));

    let mut leadership = None;
    if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(namespace)
                .with_identity(identity)
                .with_duration(15)
                .with_grace(5)
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
        let mut stop = stop_rx.clone();
        let lost = lost_leadership.clone();
        let leader_rx = leadership.as_ref().map(|(rx, _)| rx.clone());
        async move {
            match leader_rx {
                Some(mut rx) => {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {},
                        _ = rx.wait_for(|leader| !*leader) => {
                            lost.store(true, Ordering::Relaxed);
                            tracing::error!("lost leadership: stopping");
                        },
                    }
                }
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                }
            }
        }
    };
    run_controller(ctx, args.namespace.clone(), controller_stop).await;
    let _ = stop_tx.send(true);
    if let Some((rx, task)) = leadership {
        drop(rx);
        let _ = task.await;
    }
    let _ = server.await;
    if lost_leadership.load(Ordering::Relaxed) {
        return Err(CliError::LeaderElection("leadership lost".into()));
    }
    Ok(())
}
