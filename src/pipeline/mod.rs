//! One reconcile pass for a ProxmoxCluster, as a pipeline:
//! resolve config and Secrets -> read Proxmox -> discover hardware (sequentially, when
//! enabled) -> [`StageObserver::observed`] (the controller writes the per-node status
//! here) -> sync NetBox. The spec is resolved once, first: the stages get the resolved
//! settings ([`ResolvedCluster`]), never the resource, and fail with their typed error
//! ([`crate::stage_errors`]). Each stage sits behind a small trait so the orchestration is
//! tested with fakes; the live implementations are in [`live`].

pub mod live;
pub mod write_settle;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::conditions::PermissionWarning;
use crate::config::{ResolvedCluster, ResolvedNetBox, resolve, resolve_netbox};
use crate::crd::{NodeSSHCredential, NodeWarning, ProxmoxCluster, SyncMode, SyncSummary};
pub use crate::hardware::discovery::HardwareProber;
use crate::hardware::discovery::codes;
use crate::hardware::facts::NodeHardware;
use crate::inventory::Inventory;
use crate::net::budget::{DEFAULT_TRANSPORT_ERROR_LIMIT, TransportBudget};
use crate::netbox::report::{KindCounts, SyncReport};
use crate::netbox::settings::GuestOverrides;
use crate::owner::OwnerScope;
use crate::provision::ProvisionOutcome;
use crate::provision::observe::Fingerprint;
use crate::pve::client::PveApi;
use crate::pve::resources::ClusterResources;
use crate::secrets::SecretSource;
use crate::stage_errors::{NetBoxSyncError, ProxmoxReadError, StageError};
use crate::status::{
    CALL_SUCCESS, ExternalCalls, NetBoxOutcome, NodeDiscovery, PipelineOutcome, systems,
};
use crate::watch::{PollOutcome, PollRecord, WatchMemory};

/// Counts the calls the stages of one run make to external systems, by outcome, and holds
/// each stage's transport-error budget. Shared by the stages of a run (they may record
/// concurrently).
#[derive(Debug, Default)]
pub struct CallCounter {
    calls: Mutex<ExternalCalls>,
    /// Transport errors the Proxmox stage may still meet before it gives up.
    pub proxmox_budget: TransportBudget,
    /// Transport errors the NetBox stage may still meet before it gives up.
    pub netbox_budget: TransportBudget,
}

impl CallCounter {
    /// A counter whose stages each give up after `limit` transport errors.
    pub fn with_transport_limit(limit: u32) -> Self {
        Self {
            calls: Mutex::default(),
            proxmox_budget: TransportBudget::new(limit),
            netbox_budget: TransportBudget::new(limit),
        }
    }

    /// Records `n` calls to `system` with `outcome` (`success` or an error kind).
    pub fn record(&self, system: &str, outcome: &str, n: u64) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(system, outcome, n);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ExternalCalls {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Told what the observe stages found, before the NetBox sync starts. The controller
/// writes the intermediate status (per-node facts and warnings) here.
pub trait StageObserver: Send + Sync {
    /// Called once per run, after the Proxmox read and hardware discovery succeeded, with
    /// `outcome.netbox` set to [`NetBoxOutcome::InProgress`]. Not called when the config
    /// or the Proxmox read failed (nothing new is known then).
    fn observed<'a>(&'a self, outcome: &'a PipelineOutcome) -> BoxFuture<'a, ()>;
}

/// An observer that does nothing (the `sync` command).
pub struct NoObserver;

impl StageObserver for NoObserver {
    fn observed<'a>(&'a self, _outcome: &'a PipelineOutcome) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// What the Proxmox stage produced.
#[derive(Clone, Debug, Default)]
pub struct ProxmoxRead {
    /// The inventory, with completeness of every part.
    pub inventory: Inventory,
    /// Missing privileges or excess write privileges of the PVE token.
    pub permission_warning: Option<PermissionWarning>,
    /// `/cluster/resources`, read before the rest: the first poll's reference (`None` when
    /// it could not be read; the next pass is then a full one again).
    pub resources: Option<ClusterResources>,
    /// The PVE client of the read, for the polls after it (a ticket login is not repeated).
    pub client: Option<SharedPve>,
}

/// A PVE client kept between passes.
#[derive(Clone)]
pub struct SharedPve(pub Arc<dyn PveApi>);

impl std::fmt::Debug for SharedPve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedPve")
    }
}

/// Reads a Proxmox VE cluster.
pub trait ProxmoxReader: Send + Sync {
    /// Reads everything; `Err` only when nothing could be read. Every API request is
    /// recorded in `calls` (system `proxmox`), also when the read fails.
    fn read<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Result<ProxmoxRead, ProxmoxReadError>>;

    /// Polls for the guests changed since `memory` and reads only those again
    /// ([`crate::watch::poll`]), with `client` when the last read left one. Every API
    /// request is recorded in `calls`.
    fn poll<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        memory: &'a WatchMemory,
        client: Option<&'a dyn PveApi>,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, PollOutcome>;
}

/// What a full pass leaves for the polls after it: their reference, and what a targeted
/// sync reuses of the pass (hardware facts, discovery, the permission warning).
#[derive(Clone, Debug)]
pub struct LastPass {
    /// The settings the pass resolved: the polls after it use them, so an idle poll reads
    /// no Secret (a changed Secret or spec drops the kept pass).
    pub config: Arc<ResolvedCluster>,
    /// The last poll, inventory and hardware facts.
    pub memory: WatchMemory,
    /// The PVE client of the full pass.
    pub client: Option<SharedPve>,
    /// The discovery of the last full pass.
    pub discovery: Option<Vec<NodeDiscovery>>,
    /// The permission warning of the last full pass.
    pub permission_warning: Option<PermissionWarning>,
    /// What provisioning told the sync of the last full pass (the polls' syncs use it).
    pub overrides: GuestOverrides,
    /// The records provisioning looked at, as the last full pass left them: a poll that
    /// finds them changed hands over to a full pass.
    pub provisioning: Option<Fingerprint>,
}

/// The work done for one ProxmoxCluster: read Proxmox, discover hardware, sync NetBox.
pub trait ClusterPipeline: Send + Sync + 'static {
    /// Resolves the spec of `cluster`, runs one pass with the resolved settings and
    /// reports what happened; never fails as a whole. Without `last`, a full pass
    /// ([`run_pipeline_observed`]), which calls `observer` once Proxmox was read and
    /// hardware discovered, before the NetBox sync; with it, a targeted pass
    /// ([`run_targeted`]).
    #[allow(clippy::too_many_arguments)]
    fn run<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        credentials: &'a [NodeSSHCredential],
        secrets: &'a dyn SecretSource,
        observer: &'a dyn StageObserver,
        installation: &'a str,
        last: Option<&'a LastPass>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, PipelineRun>;

    /// Resolves the NetBox part of the spec of `cluster`, removes the NetBox objects owned
    /// for this cluster (deletion policy `Delete`) and returns a summary.
    fn delete_owned<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        secrets: &'a dyn SecretSource,
        installation: &'a str,
    ) -> BoxFuture<'a, Result<String, StageError>>;
}

/// What the NetBox stage produced.
#[derive(Clone, Debug, Default)]
pub struct NetBoxResult {
    /// Counts for the status.
    pub summary: SyncSummary,
    /// Counts per NetBox object kind (for the metrics).
    pub kinds: BTreeMap<String, KindCounts>,
    /// The full report (per kind, per object, plan) for the `sync` command's output.
    pub report: SyncReport,
}

/// Writes the inventory to NetBox.
pub trait NetBoxWriter: Send + Sync {
    /// Syncs; `Err` only when NetBox could not be used at all. Every request is recorded
    /// in `calls` (system `netbox`), also when the sync fails. `scope`: the guests of a
    /// targeted pass, whose objects alone are read, planned and written; `guests`: what
    /// provisioning says about some guests.
    #[allow(clippy::too_many_arguments)]
    fn sync<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        hardware: &'a BTreeMap<String, NodeHardware>,
        scope: Option<&'a BTreeSet<u32>>,
        guests: &'a GuestOverrides,
        dry_run: bool,
        now: DateTime<Utc>,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Result<NetBoxResult, NetBoxSyncError>>;

    /// Deletes every object owned for this cluster (deletion policy `Delete`).
    fn delete_owned<'a>(
        &'a self,
        config: &'a ResolvedNetBox,
    ) -> BoxFuture<'a, Result<String, NetBoxSyncError>>;
}

/// Provisioning (`spec.provisioning`): NetBox records created in and retired from PVE.
pub trait Provisioner: Send + Sync {
    /// Runs provisioning of `config` (only called when it is enabled) against the
    /// inventory just read; never fails as a whole. `dry_run`: plan only. Returns the
    /// outcome and, when guests were created or destroyed, the inventory with them read
    /// again (so the sync of the same pass documents them). Every request is recorded in
    /// `calls`.
    fn provision<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        dry_run: bool,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, (ProvisionOutcome, Option<Inventory>)>;

    /// The records provisioning looks at as they are now, to compare with `last` (a poll
    /// between full passes); `None` when NetBox could not be read.
    fn fingerprint<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        last: &'a Fingerprint,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Option<Fingerprint>>;
}

/// A provisioner for pipelines that never provision (test fakes): an empty outcome.
pub struct NoProvisioner;

impl Provisioner for NoProvisioner {
    fn provision<'a>(
        &'a self,
        _config: &'a ResolvedCluster,
        _inventory: &'a Inventory,
        _dry_run: bool,
        _calls: &'a CallCounter,
    ) -> BoxFuture<'a, (ProvisionOutcome, Option<Inventory>)> {
        Box::pin(async { (ProvisionOutcome::default(), None) })
    }

    fn fingerprint<'a>(
        &'a self,
        _config: &'a ResolvedCluster,
        _inventory: &'a Inventory,
        last: &'a Fingerprint,
        _calls: &'a CallCounter,
    ) -> BoxFuture<'a, Option<Fingerprint>> {
        Box::pin(async move { Some(*last) })
    }
}

/// The stages of one pass.
#[derive(Clone, Copy)]
pub struct Stages<'a> {
    /// Proxmox.
    pub reader: &'a dyn ProxmoxReader,
    /// Hardware discovery.
    pub prober: &'a dyn HardwareProber,
    /// Provisioning.
    pub provisioner: &'a dyn Provisioner,
    /// NetBox.
    pub writer: &'a dyn NetBoxWriter,
}

impl<'a> Stages<'a> {
    /// The stages of a pipeline that does not provision.
    pub fn new(
        reader: &'a dyn ProxmoxReader,
        prober: &'a dyn HardwareProber,
        writer: &'a dyn NetBoxWriter,
    ) -> Self {
        Self {
            reader,
            prober,
            provisioner: &NoProvisioner,
            writer,
        }
    }
}

/// A pipeline run with its detailed NetBox report.
#[derive(Clone, Debug, Default)]
pub struct PipelineRun {
    /// What the status is built from.
    pub outcome: PipelineOutcome,
    /// The NetBox report, when the sync ran.
    pub report: Option<SyncReport>,
    /// What the polls after this run compare with: set when this run wrote NetBox
    /// successfully (not in dry-run) and the cluster's resources could be read.
    pub last_pass: Option<LastPass>,
}

/// Options of one run: the operator installation, overrides of the spec (the `sync`
/// command) and the stage limits.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Force dry-run whatever the spec says.
    pub force_dry_run: bool,
    /// Deadlines and the transport-error limit of the stages.
    pub limits: StageLimits,
    /// The operator installation: first part of the owner mark (see [`crate::owner`]).
    pub installation: String,
}

/// Deadlines of the stages of one run and the transport errors each stage tolerates. A
/// stage past its deadline fails (the Proxmox read, the NetBox sync) or leaves the rest of
/// its nodes with a warning (hardware discovery); the reconcile deadline bounds the whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageLimits {
    /// The Proxmox read, permission preflight included.
    pub proxmox_read: Duration,
    /// Hardware discovery of one node.
    pub node_discovery: Duration,
    /// Hardware discovery of all nodes together.
    pub discovery: Duration,
    /// The NetBox sync.
    pub netbox_sync: Duration,
    /// Provisioning (a task still running then is left running and looked at again).
    pub provisioning: Duration,
    /// Transport errors (no answer) a stage meets before it stops calling and fails.
    pub transport_errors: u32,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            proxmox_read: Duration::from_secs(10 * 60),
            node_discovery: Duration::from_secs(3 * 60),
            discovery: Duration::from_secs(15 * 60),
            netbox_sync: Duration::from_secs(20 * 60),
            provisioning: Duration::from_secs(15 * 60),
            transport_errors: DEFAULT_TRANSPORT_ERROR_LIMIT,
        }
    }
}

/// The pipeline made of its stages; with the live stages it is what the controller and
/// the `sync` command run.
pub struct StagedPipeline<R, H, P, W> {
    /// Proxmox stage.
    pub reader: R,
    /// Hardware discovery stage.
    pub prober: H,
    /// Provisioning stage.
    pub provisioner: P,
    /// NetBox stage.
    pub writer: W,
    /// Deadlines and transport-error limit of each run.
    pub limits: StageLimits,
}

impl<R, H, P, W> StagedPipeline<R, H, P, W>
where
    R: ProxmoxReader,
    H: HardwareProber,
    P: Provisioner,
    W: NetBoxWriter,
{
    /// The stages as a pass takes them.
    pub fn stages(&self) -> Stages<'_> {
        Stages {
            reader: &self.reader,
            prober: &self.prober,
            provisioner: &self.provisioner,
            writer: &self.writer,
        }
    }
}

impl<R, H, P, W> ClusterPipeline for StagedPipeline<R, H, P, W>
where
    R: ProxmoxReader + 'static,
    H: HardwareProber + 'static,
    P: Provisioner + 'static,
    W: NetBoxWriter + 'static,
{
    fn run<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        credentials: &'a [NodeSSHCredential],
        secrets: &'a dyn SecretSource,
        observer: &'a dyn StageObserver,
        installation: &'a str,
        last: Option<&'a LastPass>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, PipelineRun> {
        Box::pin(async move {
            let options = RunOptions {
                force_dry_run: false,
                limits: self.limits,
                installation: installation.to_string(),
            };
            match last {
                Some(last) => run_targeted(&self.stages(), cluster, options, last, now).await,
                None => {
                    run_pipeline_observed(
                        &self.stages(),
                        cluster,
                        credentials,
                        secrets,
                        options,
                        observer,
                        now,
                    )
                    .await
                }
            }
        })
    }

    fn delete_owned<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        secrets: &'a dyn SecretSource,
        installation: &'a str,
    ) -> BoxFuture<'a, Result<String, StageError>> {
        Box::pin(async move {
            // Only the NetBox Secrets: the PVE ones may be gone already.
            let config =
                resolve_netbox(cluster, owner_scope(cluster, installation), secrets).await?;
            Ok(self.writer.delete_owned(&config).await?)
        })
    }
}

/// The owner scope of a cluster's NetBox objects in `installation`.
pub fn owner_scope(cluster: &ProxmoxCluster, installation: &str) -> OwnerScope {
    OwnerScope::new(
        installation,
        cluster.metadata.namespace.as_deref().unwrap_or("default"),
        cluster.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// `namespace/name` of a cluster.
pub fn owner_key(cluster: &ProxmoxCluster) -> String {
    format!(
        "{}/{}",
        cluster.metadata.namespace.as_deref().unwrap_or("default"),
        cluster.metadata.name.as_deref().unwrap_or_default()
    )
}

fn warning(code: &str, message: String) -> NodeWarning {
    NodeWarning {
        code: code.into(),
        message,
    }
}

/// Runs hardware discovery on every node, one after another. A node's failure becomes a
/// warning on that node and the next node still runs. Each node that was probed counts
/// as one `ssh` call in `calls` (outcome `success` or the warning code); a node without
/// credential or address is never contacted and not counted.
#[allow(clippy::too_many_arguments)]
pub async fn discover_nodes(
    prober: &dyn HardwareProber,
    inventory: &Inventory,
    credentials: &[NodeSSHCredential],
    config: &ResolvedCluster,
    secrets: &dyn SecretSource,
    calls: &CallCounter,
    limits: &StageLimits,
) -> Vec<NodeDiscovery> {
    let mut out = Vec::with_capacity(inventory.nodes.len());
    let stage_end = Instant::now() + limits.discovery;
    for node in &inventory.nodes {
        let credential = credentials.iter().find(|c| c.spec.node_name == node.name);
        let address = credential
            .and_then(|c| c.spec.address.clone())
            .or_else(|| node.address.clone());
        let result = match (credential, &address) {
            (None, _) => Err(warning(
                codes::NO_CREDENTIAL,
                format!(
                    "no NodeSSHCredential with nodeName {:?} for this cluster",
                    node.name
                ),
            )),
            (Some(_), None) => Err(warning(
                codes::NO_ADDRESS,
                "no address is known for this node: set spec.address in its NodeSSHCredential"
                    .into(),
            )),
            (Some(_), Some(_)) if Instant::now() >= stage_end => Err(warning(
                codes::STAGE_DEADLINE,
                format!(
                    "not probed: hardware discovery of all nodes ran past its deadline of {}s",
                    limits.discovery.as_secs()
                ),
            )),
            (Some(cred), Some(addr)) => {
                let deadline = limits
                    .node_discovery
                    .min(stage_end.saturating_duration_since(Instant::now()));
                let probe = prober.probe(&node.name, addr, cred, config, secrets);
                let r = match tokio::time::timeout(deadline, probe).await {
                    Ok(r) => r,
                    Err(_) => Err(warning(
                        codes::NODE_DEADLINE,
                        format!(
                            "hardware discovery of this node ran past its deadline of {}s and was stopped",
                            deadline.as_secs()
                        ),
                    )),
                };
                let outcome = match &r {
                    Ok(_) => CALL_SUCCESS,
                    Err(w) => w.code.as_str(),
                };
                calls.record(systems::SSH, outcome, 1);
                r
            }
        };
        if let Err(w) = &result {
            tracing::warn!(node = %node.name, code = %w.code, message = %w.message, "hardware discovery failed");
        }
        let (hardware, warning) = match result {
            Ok(hw) => (Some(hw), None),
            Err(w) => (None, Some(w)),
        };
        out.push(NodeDiscovery {
            node: node.name.clone(),
            address,
            hardware,
            warning,
        });
    }
    out
}

/// Runs one full pass for `cluster` (the `sync` command: nobody observes the stages).
#[allow(clippy::too_many_arguments)]
pub async fn run_pipeline(
    stages: &Stages<'_>,
    cluster: &ProxmoxCluster,
    credentials: &[NodeSSHCredential],
    secrets: &dyn SecretSource,
    options: RunOptions,
    now: DateTime<Utc>,
) -> PipelineRun {
    run_pipeline_observed(
        stages,
        cluster,
        credentials,
        secrets,
        options,
        &NoObserver,
        now,
    )
    .await
}

/// Runs one full pass for `cluster`, telling `observer` what the observe stages found
/// before the NetBox sync starts. The spec is resolved once, first; the stages get only the
/// resolved settings.
#[allow(clippy::too_many_arguments)]
pub async fn run_pipeline_observed(
    stages: &Stages<'_>,
    cluster: &ProxmoxCluster,
    credentials: &[NodeSSHCredential],
    secrets: &dyn SecretSource,
    options: RunOptions,
    observer: &dyn StageObserver,
    now: DateTime<Utc>,
) -> PipelineRun {
    let limits = options.limits;
    let calls = CallCounter::with_transport_limit(limits.transport_errors);
    let (config, mut outcome) = match resolved(cluster, secrets, &options).await {
        Ok(r) => r,
        Err(outcome) => return failed_run(outcome),
    };
    let read = tokio::time::timeout(limits.proxmox_read, stages.reader.read(&config, &calls))
        .await
        .unwrap_or(Err(ProxmoxReadError::TimedOut {
            limit: limits.proxmox_read,
        }));
    outcome.calls = calls.snapshot();
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            outcome.proxmox_error = Some(e);
            return failed_run(outcome);
        }
    };
    outcome.permission_warning = read.permission_warning;
    let inventory = read.inventory;

    let mut hardware = BTreeMap::new();
    if config.hardware_discovery {
        let discovered = discover_nodes(
            stages.prober,
            &inventory,
            credentials,
            &config,
            secrets,
            &calls,
            &limits,
        )
        .await;
        for d in &discovered {
            if let Some(hw) = &d.hardware {
                hardware.insert(d.node.clone(), hw.clone());
            }
        }
        outcome.discovery = Some(discovered);
    }
    outcome.inventory = Some(inventory);
    outcome.netbox = NetBoxOutcome::InProgress;
    outcome.calls = calls.snapshot();
    observer.observed(&outcome).await;
    let (overrides, fingerprint) =
        provision(stages.provisioner, &config, &limits, &calls, &mut outcome).await;
    let report = sync_netbox(
        stages.writer,
        &config,
        &hardware,
        &overrides,
        &limits,
        &calls,
        &mut outcome,
        now,
    )
    .await;
    let discovery = outcome.discovery.clone();
    let client = read.client;
    let last_pass = read.resources.and_then(|resources| {
        last_pass(&outcome, Arc::new(config), resources, hardware, discovery).map(|pass| LastPass {
            client,
            overrides,
            provisioning: fingerprint,
            ..pass
        })
    });
    PipelineRun {
        outcome,
        report,
        last_pass,
    }
}

/// Runs one targeted pass for `cluster`: a poll of Proxmox against `last`, and when guests
/// changed, the NetBox sync of the last inventory with them read again (hardware facts,
/// discovery and the permission warning are the last full pass's). An idle, partial or
/// failed poll runs nothing else: its outcome has only [`PipelineOutcome::poll`] set.
pub async fn run_targeted(
    stages: &Stages<'_>,
    cluster: &ProxmoxCluster,
    options: RunOptions,
    last: &LastPass,
    now: DateTime<Utc>,
) -> PipelineRun {
    let (reader, writer) = (stages.reader, stages.writer);
    let limits = options.limits;
    let calls = CallCounter::with_transport_limit(limits.transport_errors);
    let config = &*last.config;
    let mut outcome = new_outcome(cluster, &options, config);
    // With provisioning on, a record staged or decommissioned since the full pass makes
    // the next pass a full one (two NetBox reads per poll).
    if let Some(before) = &last.provisioning {
        let inventory = &last.memory.inventory;
        let now_seen = tokio::time::timeout(
            limits.proxmox_read,
            stages
                .provisioner
                .fingerprint(config, inventory, before, &calls),
        )
        .await
        .ok()
        .flatten();
        if now_seen.as_ref().is_none_or(|f| f.digest != before.digest) {
            outcome.calls = calls.snapshot();
            outcome.poll = Some(PollRecord::Provisioning(match now_seen {
                Some(_) => "NetBox records provisioning looks at changed".into(),
                None => "the NetBox records provisioning looks at could not be read".into(),
            }));
            return failed_run(outcome);
        }
    }
    let polled = tokio::time::timeout(
        limits.proxmox_read,
        reader.poll(
            config,
            &last.memory,
            last.client.as_ref().map(|c| c.0.as_ref()),
            &calls,
        ),
    )
    .await
    .unwrap_or(PollOutcome::TimedOut(limits.proxmox_read));
    outcome.calls = calls.snapshot();
    let (changes, inventory, resources) = match polled {
        PollOutcome::Changed {
            changes,
            inventory,
            resources,
        } => (changes, *inventory, resources),
        other => {
            outcome.poll = Some(PollRecord::from_outcome(&other));
            return failed_run(outcome);
        }
    };
    outcome.poll = Some(PollRecord::Changed(changes));
    outcome.permission_warning = last.permission_warning.clone();
    outcome.discovery = last.discovery.clone();
    outcome.inventory = Some(inventory);
    let hardware = last.memory.hardware.clone();
    let report = sync_netbox(
        writer,
        config,
        &hardware,
        &last.overrides,
        &limits,
        &calls,
        &mut outcome,
        now,
    )
    .await;
    let discovery = outcome.discovery.clone();
    let last_pass = last_pass(
        &outcome,
        last.config.clone(),
        resources,
        hardware,
        discovery,
    )
    .map(|pass| LastPass {
        client: last.client.clone(),
        overrides: last.overrides.clone(),
        provisioning: last.provisioning,
        ..pass
    });
    PipelineRun {
        outcome,
        report,
        last_pass,
    }
}

/// Resolves the spec once, first; the outcome to fill, or the one to report when the spec
/// could not be resolved.
async fn resolved(
    cluster: &ProxmoxCluster,
    secrets: &dyn SecretSource,
    options: &RunOptions,
) -> Result<(ResolvedCluster, PipelineOutcome), PipelineOutcome> {
    let owner = owner_scope(cluster, &options.installation);
    match resolve(cluster, owner, secrets).await {
        Ok(config) => {
            let outcome = new_outcome(cluster, options, &config);
            Ok((config, outcome))
        }
        Err(e) => Err(PipelineOutcome {
            dry_run: dry_run(cluster, options),
            config_error: Some(e),
            ..Default::default()
        }),
    }
}

/// True when this run writes nothing.
fn dry_run(cluster: &ProxmoxCluster, options: &RunOptions) -> bool {
    options.force_dry_run || cluster.spec.sync.mode == SyncMode::DryRun
}

/// The outcome a run with `config` starts from.
fn new_outcome(
    cluster: &ProxmoxCluster,
    options: &RunOptions,
    config: &ResolvedCluster,
) -> PipelineOutcome {
    PipelineOutcome {
        dry_run: dry_run(cluster, options),
        sync_interval: Some(config.sync_interval),
        watch_interval: config.watch_interval,
        ..Default::default()
    }
}

/// A run that stopped before NetBox.
fn failed_run(outcome: PipelineOutcome) -> PipelineRun {
    PipelineRun {
        outcome,
        report: None,
        last_pass: None,
    }
}

/// The provisioning stage, when it is enabled: runs it against `outcome.inventory` (always
/// set here), puts the inventory with the guests it created or destroyed read again back,
/// records its report in `outcome` and returns what the sync is told, and the records'
/// fingerprint for the polls. Past its deadline the sync is told to leave every guest with
/// this owner's mark alone.
async fn provision(
    provisioner: &dyn Provisioner,
    config: &ResolvedCluster,
    limits: &StageLimits,
    calls: &CallCounter,
    outcome: &mut PipelineOutcome,
) -> (GuestOverrides, Option<Fingerprint>) {
    let Some(p) = &config.provisioning else {
        return (GuestOverrides::default(), None);
    };
    let dry_run = outcome.dry_run || p.settings.dry_run;
    let inventory = outcome.inventory.take().unwrap_or_default();
    let run = provisioner.provision(config, &inventory, dry_run, calls);
    let (result, refreshed) = match tokio::time::timeout(limits.provisioning, run).await {
        Ok(r) => r,
        Err(_) => {
            let mark = live::sync_settings(config, &inventory).owner;
            let why = format!(
                "provisioning ran past its deadline of {}s and was stopped; every step is looked at again in the next pass",
                limits.provisioning.as_secs()
            );
            (
                crate::provision::not_run(dry_run, why, &inventory, &mark),
                None,
            )
        }
    };
    outcome.inventory = Some(refreshed.unwrap_or(inventory));
    outcome.calls = calls.snapshot();
    outcome.provisioning = Some(result.report);
    (result.overrides, result.fingerprint)
}

/// The NetBox stage: syncs `outcome.inventory` (always set here) and records the result
/// in `outcome`; returns the detailed report.
#[allow(clippy::too_many_arguments)]
async fn sync_netbox(
    writer: &dyn NetBoxWriter,
    config: &ResolvedCluster,
    hardware: &BTreeMap<String, NodeHardware>,
    guests: &GuestOverrides,
    limits: &StageLimits,
    calls: &CallCounter,
    outcome: &mut PipelineOutcome,
    now: DateTime<Utc>,
) -> Option<SyncReport> {
    // A targeted pass plans the guests its poll found changed, unless there are so many
    // that a full plan costs less than reading them one filter at a time.
    let scope: Option<BTreeSet<u32>> = match &outcome.poll {
        Some(PollRecord::Changed(changes)) if changes.len() <= MAX_SCOPED_GUESTS => {
            Some(changes.keys().copied().collect())
        }
        _ => None,
    };
    // Moved out for the sync and back in after it.
    let inventory = outcome.inventory.take().unwrap_or_default();
    let sync = writer.sync(
        config,
        &inventory,
        hardware,
        scope.as_ref(),
        guests,
        outcome.dry_run,
        now,
        calls,
    );
    let result = tokio::time::timeout(limits.netbox_sync, sync)
        .await
        .unwrap_or(Err(NetBoxSyncError::TimedOut {
            limit: limits.netbox_sync,
        }));
    outcome.inventory = Some(inventory);
    outcome.calls = calls.snapshot();
    match result {
        Ok(result) => {
            outcome.netbox_kinds = result.kinds;
            outcome.netbox = NetBoxOutcome::Done(result.summary);
            Some(result.report)
        }
        Err(e) => {
            outcome.netbox = NetBoxOutcome::Failed(e);
            None
        }
    }
}

/// Most guests a targeted pass reads and plans one by one; above, it plans everything.
const MAX_SCOPED_GUESTS: usize = 500;

/// What the polls after a run compare with: only after NetBox was written successfully
/// (not in dry-run), so that a change a failed sync did not write is found again.
fn last_pass(
    outcome: &PipelineOutcome,
    config: Arc<ResolvedCluster>,
    resources: ClusterResources,
    hardware: BTreeMap<String, NodeHardware>,
    discovery: Option<Vec<NodeDiscovery>>,
) -> Option<LastPass> {
    let written = matches!(&outcome.netbox, NetBoxOutcome::Done(s) if s.failed == 0);
    if outcome.dry_run || !written {
        return None;
    }
    Some(LastPass {
        config,
        client: None,
        memory: WatchMemory {
            resources,
            inventory: outcome.inventory.clone()?,
            hardware,
        },
        discovery,
        permission_warning: outcome.permission_warning.clone(),
        overrides: GuestOverrides::default(),
        provisioning: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::reasons;
    use crate::inventory::{Node, ReadOutcome, ReadScope};
    use crate::pve::client::PveError;
    use crate::secrets::DirSecrets;
    use crate::stage_errors::StageFailure;
    use std::sync::Mutex;

    struct FakeReader(Result<ProxmoxRead, ProxmoxReadError>);
    impl ProxmoxReader for FakeReader {
        fn read<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            calls: &'a CallCounter,
        ) -> BoxFuture<'a, Result<ProxmoxRead, ProxmoxReadError>> {
            Box::pin(async move {
                match &self.0 {
                    Ok(_) => calls.record(systems::PROXMOX, CALL_SUCCESS, 7),
                    Err(e) => calls.record(systems::PROXMOX, e.reason(), 1),
                }
                self.0.clone()
            })
        }
        /// Nothing changes in this cluster.
        fn poll<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _memory: &'a WatchMemory,
            _client: Option<&'a dyn PveApi>,
            calls: &'a CallCounter,
        ) -> BoxFuture<'a, PollOutcome> {
            calls.record(systems::PROXMOX, CALL_SUCCESS, 1);
            Box::pin(async { PollOutcome::Idle })
        }
    }

    /// A PVE API that is never called (the fake readers answer by themselves).
    struct FixedPve;
    impl PveApi for FixedPve {
        fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<serde_json::Value, PveError>> {
            Box::pin(async move { Err(PveError::NotFound { path: path.into() }) })
        }
    }

    /// Finds guest 100 changed in each poll: its inventory has 2 GiB more memory. Records
    /// whether each poll was given a client.
    #[derive(Default)]
    struct ChangingReader {
        given_client: Mutex<Vec<bool>>,
    }
    impl ProxmoxReader for ChangingReader {
        fn read<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _calls: &'a CallCounter,
        ) -> BoxFuture<'a, Result<ProxmoxRead, ProxmoxReadError>> {
            Box::pin(async { Ok(three_nodes()) })
        }
        fn poll<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            memory: &'a WatchMemory,
            client: Option<&'a dyn PveApi>,
            calls: &'a CallCounter,
        ) -> BoxFuture<'a, PollOutcome> {
            self.given_client.lock().unwrap().push(client.is_some());
            calls.record(systems::PROXMOX, CALL_SUCCESS, 2);
            let mut inventory = memory.inventory.clone();
            for g in inventory.guests.iter_mut().filter(|g| g.vmid == 100) {
                g.memory_mib = g.memory_mib.map(|m| m + 2048);
            }
            let mut resources = memory.resources.clone();
            resources.nodes.insert("polled".into(), true);
            Box::pin(async move {
                PollOutcome::Changed {
                    changes: [(100, crate::watch::GuestChange::Changed)].into(),
                    inventory: Box::new(inventory),
                    resources,
                }
            })
        }
    }

    /// Fails on nodes named in `fail`, records the order of the nodes it was asked for.
    #[derive(Default)]
    struct FakeProber {
        fail: Vec<String>,
        /// Nodes whose probe never ends.
        hang: Vec<String>,
        seen: Mutex<Vec<String>>,
    }
    impl HardwareProber for FakeProber {
        fn probe<'a>(
            &'a self,
            node: &'a str,
            _address: &'a str,
            _c: &'a NodeSSHCredential,
            _cfg: &'a ResolvedCluster,
            _s: &'a dyn SecretSource,
        ) -> BoxFuture<'a, Result<NodeHardware, NodeWarning>> {
            self.seen.lock().unwrap().push(node.to_string());
            let fail = self.fail.iter().any(|n| n == node);
            let hang = self.hang.iter().any(|n| n == node);
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                if fail {
                    Err(warning("Timeout", "connect timed out after 10s".into()))
                } else {
                    Ok(NodeHardware::default())
                }
            })
        }
    }

    #[derive(Default)]
    struct FakeWriter {
        calls: Mutex<Vec<(usize, bool)>>,
        scopes: Mutex<Vec<Option<BTreeSet<u32>>>>,
        deleted: Mutex<Vec<String>>,
    }
    impl NetBoxWriter for FakeWriter {
        fn sync<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _inv: &'a Inventory,
            hardware: &'a BTreeMap<String, NodeHardware>,
            scope: Option<&'a BTreeSet<u32>>,
            _guests: &'a GuestOverrides,
            dry_run: bool,
            _now: DateTime<Utc>,
            calls: &'a CallCounter,
        ) -> BoxFuture<'a, Result<NetBoxResult, NetBoxSyncError>> {
            self.calls.lock().unwrap().push((hardware.len(), dry_run));
            self.scopes.lock().unwrap().push(scope.cloned());
            calls.record(systems::NETBOX, CALL_SUCCESS, 3);
            calls.record(systems::NETBOX, "NetBoxRejected", 1);
            let mut kinds = BTreeMap::new();
            kinds.insert(
                "dcim.device".to_string(),
                KindCounts {
                    created: 2,
                    ..Default::default()
                },
            );
            Box::pin(async move {
                Ok(NetBoxResult {
                    kinds,
                    ..Default::default()
                })
            })
        }
        fn delete_owned<'a>(
            &'a self,
            cfg: &'a ResolvedNetBox,
        ) -> BoxFuture<'a, Result<String, NetBoxSyncError>> {
            self.deleted.lock().unwrap().push(cfg.owner.prefix());
            Box::pin(async { Ok(String::new()) })
        }
    }

    fn cluster(discovery: bool, mode: &str) -> ProxmoxCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab", "namespace": "infra"},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1:8006"], "credentialsSecretRef": {"name": "pve"}},
                "netbox": {"url": "https://nb", "tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"},
                "sync": {"mode": mode},
                "hardwareDiscovery": {"enabled": discovery}
            }
        }))
        .unwrap()
    }

    fn credential(node: &str) -> NodeSSHCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
            "metadata": {"name": format!("c-{node}"), "namespace": "infra"},
            "spec": {"clusterRef": {"name": "lab"}, "nodeName": node, "username": "u",
                     "passwordSecretRef": {"name": "s", "key": "p"},
                     "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}
        }))
        .unwrap()
    }

    fn secrets_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (s, k, v) in [
            ("pve", "tokenId", "a@pve!b"),
            ("pve", "tokenSecret", "x"),
            ("nb", "token", "y"),
        ] {
            std::fs::create_dir_all(d.path().join(s)).unwrap();
            std::fs::write(d.path().join(s).join(k), v).unwrap();
        }
        d
    }

    fn three_nodes() -> ProxmoxRead {
        let node = |n: &str, addr: Option<&str>| Node {
            name: n.into(),
            online: true,
            address: addr.map(Into::into),
            ..Default::default()
        };
        let mut inventory = Inventory {
            nodes: vec![
                node("pve1", Some("10.0.0.1")),
                node("pve2", Some("10.0.0.2")),
                node("pve3", None),
            ],
            ..Default::default()
        };
        inventory
            .completeness
            .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
        ProxmoxRead {
            inventory,
            permission_warning: None,
            resources: Some(ClusterResources::default()),
            client: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[tokio::test]
    async fn discovery_disabled_never_probes_a_node() {
        let d = secrets_dir();
        let prober = FakeProber::default();
        let writer = FakeWriter::default();
        let run = run_pipeline(
            &Stages::new(&FakeReader(Ok(three_nodes())), &prober, &writer),
            &cluster(false, "Sync"),
            &[credential("pve1")],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        assert!(prober.seen.lock().unwrap().is_empty());
        assert!(run.outcome.discovery.is_none());
        // The resolved interval (the default of the field) travels with the outcome.
        assert_eq!(
            run.outcome.sync_interval,
            Some(Duration::from_secs(15 * 60))
        );
        assert_eq!(*writer.calls.lock().unwrap(), vec![(0, false)]);
    }

    #[tokio::test]
    async fn one_failing_node_does_not_stop_the_next_and_each_gets_its_warning() {
        let d = secrets_dir();
        let prober = FakeProber {
            fail: vec!["pve1".into()],
            ..Default::default()
        };
        let writer = FakeWriter::default();
        let run = run_pipeline(
            &Stages::new(&FakeReader(Ok(three_nodes())), &prober, &writer),
            &cluster(true, "DryRun"),
            &[credential("pve1"), credential("pve2"), credential("pve3")],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        // Sequential, in node order; pve3 has no address so it is never probed.
        assert_eq!(*prober.seen.lock().unwrap(), vec!["pve1", "pve2"]);
        let discovery = run.outcome.discovery.unwrap();
        let codes: Vec<Option<&str>> = discovery
            .iter()
            .map(|d| d.warning.as_ref().map(|w| w.code.as_str()))
            .collect();
        assert_eq!(codes, vec![Some("Timeout"), None, Some("NoAddress")]);
        // Facts of the node that worked reach NetBox; dry-run from the spec.
        assert_eq!(*writer.calls.lock().unwrap(), vec![(1, true)]);
    }

    #[tokio::test]
    async fn node_without_credential_gets_no_credential_warning() {
        let d = secrets_dir();
        let prober = FakeProber::default();
        let run = run_pipeline(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &prober,
                &FakeWriter::default(),
            ),
            &cluster(true, "Sync"),
            &[credential("pve2")],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        let discovery = run.outcome.discovery.unwrap();
        assert_eq!(discovery[0].warning.as_ref().unwrap().code, "NoCredential");
        assert!(discovery[1].warning.is_none());
        assert_eq!(*prober.seen.lock().unwrap(), vec!["pve2"]);
    }

    /// Records what it was shown and whether the writer had run by then.
    #[derive(Default)]
    struct RecordingObserver {
        seen: Mutex<Vec<PipelineOutcome>>,
    }
    impl StageObserver for RecordingObserver {
        fn observed<'a>(&'a self, outcome: &'a PipelineOutcome) -> BoxFuture<'a, ()> {
            self.seen.lock().unwrap().push(outcome.clone());
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn observer_sees_inventory_and_discovery_before_the_netbox_sync() {
        let d = secrets_dir();
        let prober = FakeProber {
            fail: vec!["pve1".into()],
            ..Default::default()
        };
        let writer = FakeWriter::default();
        let observer = RecordingObserver::default();
        let run = run_pipeline_observed(
            &Stages::new(&FakeReader(Ok(three_nodes())), &prober, &writer),
            &cluster(true, "Sync"),
            &[credential("pve1"), credential("pve2")],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            &observer,
            now(),
        )
        .await;
        let seen = observer.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "observed exactly once");
        let o = &seen[0];
        assert_eq!(o.netbox, NetBoxOutcome::InProgress);
        assert_eq!(o.inventory.as_ref().unwrap().nodes.len(), 3);
        let codes: Vec<Option<&str>> = o
            .discovery
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.warning.as_ref().map(|w| w.code.as_str()))
            .collect();
        assert_eq!(codes, vec![Some("Timeout"), None, Some("NoCredential")]);
        // Calls so far: Proxmox and two SSH probes; NetBox not yet.
        assert_eq!(o.calls.get(systems::PROXMOX, CALL_SUCCESS), 7);
        assert_eq!(o.calls.get(systems::SSH, "Timeout"), 1);
        assert_eq!(o.calls.get(systems::SSH, CALL_SUCCESS), 1);
        assert_eq!(
            o.calls.get(systems::SSH, "NoCredential"),
            0,
            "no SSH call made"
        );
        assert_eq!(o.calls.get(systems::NETBOX, CALL_SUCCESS), 0);
        // The final outcome has everything, per-kind counts included.
        let f = &run.outcome;
        assert!(matches!(f.netbox, NetBoxOutcome::Done(_)));
        assert_eq!(f.calls.get(systems::NETBOX, CALL_SUCCESS), 3);
        assert_eq!(f.calls.get(systems::NETBOX, "NetBoxRejected"), 1);
        assert_eq!(f.calls.get(systems::SSH, "Timeout"), 1);
        assert_eq!(f.netbox_kinds["dcim.device"].created, 2);
        assert_eq!(f.inventory, o.inventory);
    }

    #[tokio::test]
    async fn observer_is_not_called_when_the_proxmox_read_fails_but_calls_are_counted() {
        let d = secrets_dir();
        let observer = RecordingObserver::default();
        let run = run_pipeline_observed(
            &Stages::new(
                &FakeReader(Err(ProxmoxReadError::Api(PveError::Unauthorized {
                    path: "/cluster/status".into(),
                }))),
                &FakeProber::default(),
                &FakeWriter::default(),
            ),
            &cluster(false, "Sync"),
            &[],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            &observer,
            now(),
        )
        .await;
        assert!(observer.seen.lock().unwrap().is_empty());
        assert_eq!(
            run.outcome
                .calls
                .get(systems::PROXMOX, reasons::PROXMOX_UNAUTHORIZED),
            1
        );
    }

    #[tokio::test]
    async fn failed_proxmox_read_never_reaches_netbox() {
        let d = secrets_dir();
        let writer = FakeWriter::default();
        let run = run_pipeline(
            &Stages::new(
                &FakeReader(Err(ProxmoxReadError::Api(PveError::Unauthorized {
                    path: "/cluster/status".into(),
                }))),
                &FakeProber::default(),
                &writer,
            ),
            &cluster(true, "Sync"),
            &[],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        assert!(writer.calls.lock().unwrap().is_empty());
        assert_eq!(run.outcome.netbox, NetBoxOutcome::NotRun);
        assert_eq!(
            run.outcome.proxmox_error.unwrap().reason(),
            reasons::PROXMOX_UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn missing_secret_stops_before_any_io() {
        let empty = tempfile::tempdir().unwrap();
        let writer = FakeWriter::default();
        let run = run_pipeline(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &FakeProber::default(),
                &writer,
            ),
            &cluster(false, "Sync"),
            &[],
            &DirSecrets::new(empty.path()),
            RunOptions {
                force_dry_run: true,
                ..Default::default()
            },
            now(),
        )
        .await;
        assert_eq!(
            run.outcome.config_error.unwrap().reason(),
            reasons::SECRET_NOT_FOUND
        );
        assert_eq!(run.outcome.sync_interval, None);
        assert!(writer.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn cleanup_reads_only_the_netbox_secrets() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("nb")).unwrap();
        std::fs::write(d.path().join("nb/token"), "y").unwrap();
        let pipeline = StagedPipeline {
            reader: FakeReader(Ok(three_nodes())),
            prober: FakeProber::default(),
            provisioner: NoProvisioner,
            writer: FakeWriter::default(),
            limits: StageLimits::default(),
        };
        let secrets = DirSecrets::new(d.path());
        // The PVE Secret is gone: a sync cannot even start ...
        let run = run_pipeline(
            &pipeline.stages(),
            &cluster(false, "Sync"),
            &[],
            &secrets,
            RunOptions::default(),
            now(),
        )
        .await;
        assert_eq!(
            run.outcome.config_error.unwrap().reason(),
            reasons::SECRET_NOT_FOUND
        );
        // ... but the cleanup of the owned NetBox objects still runs.
        pipeline
            .delete_owned(&cluster(false, "Sync"), &secrets, "inst-1")
            .await
            .unwrap();
        assert_eq!(
            *pipeline.writer.deleted.lock().unwrap(),
            ["inst-1/infra/lab/"]
        );
        // Without the NetBox token it is refused, naming the field.
        let none = tempfile::tempdir().unwrap();
        let err = pipeline
            .delete_owned(
                &cluster(false, "Sync"),
                &DirSecrets::new(none.path()),
                "inst-1",
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("spec.netbox.tokenSecretRef"),
            "{err}"
        );
        assert_eq!(err.reason(), reasons::SECRET_NOT_FOUND);
        assert_eq!(pipeline.writer.deleted.lock().unwrap().len(), 1);
    }

    /// A stage that never ends.
    struct HangingReader;
    impl ProxmoxReader for HangingReader {
        fn read<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _calls: &'a CallCounter,
        ) -> BoxFuture<'a, Result<ProxmoxRead, ProxmoxReadError>> {
            Box::pin(std::future::pending())
        }
        fn poll<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _memory: &'a WatchMemory,
            _client: Option<&'a dyn PveApi>,
            _calls: &'a CallCounter,
        ) -> BoxFuture<'a, PollOutcome> {
            Box::pin(std::future::pending())
        }
    }
    struct HangingWriter;
    impl NetBoxWriter for HangingWriter {
        fn sync<'a>(
            &'a self,
            _cfg: &'a ResolvedCluster,
            _inv: &'a Inventory,
            _hw: &'a BTreeMap<String, NodeHardware>,
            _scope: Option<&'a BTreeSet<u32>>,
            _guests: &'a GuestOverrides,
            _dry_run: bool,
            _now: DateTime<Utc>,
            _calls: &'a CallCounter,
        ) -> BoxFuture<'a, Result<NetBoxResult, NetBoxSyncError>> {
            Box::pin(std::future::pending())
        }
        fn delete_owned<'a>(
            &'a self,
            _cfg: &'a ResolvedNetBox,
        ) -> BoxFuture<'a, Result<String, NetBoxSyncError>> {
            Box::pin(std::future::pending())
        }
    }

    fn short_limits() -> RunOptions {
        RunOptions {
            force_dry_run: false,
            limits: StageLimits {
                proxmox_read: Duration::from_secs(30),
                node_discovery: Duration::from_secs(60),
                discovery: Duration::from_secs(90),
                netbox_sync: Duration::from_secs(120),
                provisioning: Duration::from_secs(120),
                transport_errors: 5,
            },
            installation: "inst-1".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxmox_read_past_its_deadline_fails_the_stage_and_netbox_is_not_touched() {
        let d = secrets_dir();
        let writer = FakeWriter::default();
        let started = Instant::now();
        let run = run_pipeline(
            &Stages::new(&HangingReader, &FakeProber::default(), &writer),
            &cluster(false, "Sync"),
            &[],
            &DirSecrets::new(d.path()),
            short_limits(),
            now(),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        let err = run.outcome.proxmox_error.unwrap();
        assert_eq!(err.reason(), reasons::STAGE_TIMED_OUT);
        assert_eq!(
            err.to_string(),
            "the Proxmox read ran past its deadline of 30s and was stopped"
        );
        assert!(writer.calls.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_netbox_sync_past_its_deadline_fails_the_stage() {
        let d = secrets_dir();
        let started = Instant::now();
        let run = run_pipeline(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &FakeProber::default(),
                &HangingWriter,
            ),
            &cluster(false, "Sync"),
            &[],
            &DirSecrets::new(d.path()),
            short_limits(),
            now(),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(120));
        let NetBoxOutcome::Failed(err) = run.outcome.netbox else {
            panic!("{:?}", run.outcome.netbox)
        };
        assert_eq!(err.reason(), reasons::STAGE_TIMED_OUT);
        assert!(err.to_string().contains("NetBox sync"), "{err}");
        // What the Proxmox stage found is kept.
        assert_eq!(run.outcome.inventory.unwrap().nodes.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_node_is_cut_at_its_deadline_and_the_stage_deadline_leaves_the_rest_unprobed() {
        let d = secrets_dir();
        let mut read = three_nodes();
        read.inventory.nodes[2].address = Some("10.0.0.3".into());
        let prober = FakeProber {
            hang: vec!["pve1".into(), "pve2".into()],
            ..Default::default()
        };
        let writer = FakeWriter::default();
        let started = Instant::now();
        let run = run_pipeline(
            &Stages::new(&FakeReader(Ok(read)), &prober, &writer),
            &cluster(true, "Sync"),
            &[credential("pve1"), credential("pve2"), credential("pve3")],
            &DirSecrets::new(d.path()),
            short_limits(),
            now(),
        )
        .await;
        // pve1 gets its 60 s, pve2 the 30 s left of the stage's 90 s, pve3 none.
        assert_eq!(started.elapsed(), Duration::from_secs(90));
        assert_eq!(*prober.seen.lock().unwrap(), ["pve1", "pve2"]);
        let warnings: Vec<(String, String)> = run
            .outcome
            .discovery
            .unwrap()
            .into_iter()
            .map(|d| {
                let w = d.warning.unwrap();
                (w.code, w.message)
            })
            .collect();
        assert_eq!(
            warnings,
            [
                (
                    codes::NODE_DEADLINE.to_string(),
                    "hardware discovery of this node ran past its deadline of 60s and was stopped"
                        .to_string()
                ),
                (
                    codes::NODE_DEADLINE.to_string(),
                    "hardware discovery of this node ran past its deadline of 30s and was stopped"
                        .to_string()
                ),
                (
                    codes::STAGE_DEADLINE.to_string(),
                    "not probed: hardware discovery of all nodes ran past its deadline of 90s"
                        .to_string()
                ),
            ]
        );
        // The NetBox sync still runs, without facts.
        assert_eq!(*writer.calls.lock().unwrap(), [(0, false)]);
        assert_eq!(run.outcome.calls.get(systems::SSH, codes::NODE_DEADLINE), 2);
    }

    async fn last_pass_of_three_nodes(d: &tempfile::TempDir) -> LastPass {
        let c = cluster(false, "Sync");
        let config = resolve(&c, owner_scope(&c, "test"), &DirSecrets::new(d.path()))
            .await
            .unwrap();
        let mut inventory = three_nodes().inventory;
        inventory.guests.push(crate::inventory::Guest {
            vmid: 100,
            memory_mib: Some(1024),
            ..Default::default()
        });
        let mut hardware = BTreeMap::new();
        hardware.insert("pve1".to_string(), NodeHardware::default());
        LastPass {
            config: Arc::new(config),
            client: None,
            memory: WatchMemory {
                resources: ClusterResources::default(),
                inventory,
                hardware,
            },
            discovery: Some(Vec::new()),
            permission_warning: None,
            overrides: GuestOverrides::default(),
            provisioning: None,
        }
    }

    #[tokio::test]
    async fn a_full_pass_that_wrote_netbox_leaves_the_polls_their_reference() {
        let d = secrets_dir();
        let run = run_pipeline(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &FakeProber::default(),
                &FakeWriter::default(),
            ),
            &cluster(false, "Sync"),
            &[],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        let last = run.last_pass.expect("a reference for the polls");
        assert_eq!(last.memory.inventory.nodes.len(), 3);
        assert_eq!(run.outcome.watch_interval, Some(Duration::from_secs(15)));
        assert_eq!(run.outcome.poll, None);
        // Nothing written in dry-run: the polls would compare with what NetBox lacks.
        let dry = run_pipeline(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &FakeProber::default(),
                &FakeWriter::default(),
            ),
            &cluster(false, "DryRun"),
            &[],
            &DirSecrets::new(d.path()),
            RunOptions::default(),
            now(),
        )
        .await;
        assert!(dry.last_pass.is_none());
    }

    /// A provisioner whose records show `digest` (or cannot be read).
    struct Records(Option<u64>);
    impl Provisioner for Records {
        fn provision<'a>(
            &'a self,
            _config: &'a ResolvedCluster,
            _inventory: &'a Inventory,
            _dry_run: bool,
            _calls: &'a CallCounter,
        ) -> BoxFuture<'a, (ProvisionOutcome, Option<Inventory>)> {
            Box::pin(async { (ProvisionOutcome::default(), None) })
        }
        fn fingerprint<'a>(
            &'a self,
            _config: &'a ResolvedCluster,
            _inventory: &'a Inventory,
            last: &'a Fingerprint,
            calls: &'a CallCounter,
        ) -> BoxFuture<'a, Option<Fingerprint>> {
            calls.record(systems::NETBOX, CALL_SUCCESS, 2);
            let digest = self.0;
            Box::pin(async move {
                digest.map(|digest| Fingerprint {
                    cluster: last.cluster,
                    digest,
                })
            })
        }
    }

    #[tokio::test]
    async fn a_poll_hands_over_to_a_full_pass_when_provisioning_s_records_changed() {
        let d = secrets_dir();
        let mut last = last_pass_of_three_nodes(&d).await;
        last.provisioning = Some(Fingerprint {
            cluster: Some(7),
            digest: 1,
        });
        let reader = ChangingReader::default();
        let writer = FakeWriter::default();
        for (now_seen, expect_poll) in [(Some(2), true), (None, true), (Some(1), false)] {
            let stages = Stages {
                reader: &reader,
                prober: &FakeProber::default(),
                provisioner: &Records(now_seen),
                writer: &writer,
            };
            let run = run_targeted(
                &stages,
                &cluster(false, "Sync"),
                RunOptions::default(),
                &last,
                now(),
            )
            .await;
            let handed_over = matches!(run.outcome.poll, Some(PollRecord::Provisioning(_)));
            assert_eq!(
                handed_over, expect_poll,
                "{now_seen:?}: {:?}",
                run.outcome.poll
            );
            assert!(run.outcome.calls.get(systems::NETBOX, CALL_SUCCESS) >= 2);
            if handed_over {
                assert!(run.last_pass.is_none(), "the next pass is a full one");
            }
        }
        // Only the unchanged records let the poll run (and sync its changed guest).
        assert_eq!(reader.given_client.lock().unwrap().len(), 1);
        assert_eq!(writer.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_idle_poll_runs_nothing_else() {
        let d = secrets_dir();
        let writer = FakeWriter::default();
        let run = run_targeted(
            &Stages::new(
                &FakeReader(Ok(three_nodes())),
                &FakeProber::default(),
                &writer,
            ),
            &cluster(false, "Sync"),
            RunOptions::default(),
            &last_pass_of_three_nodes(&d).await,
            now(),
        )
        .await;
        assert_eq!(run.outcome.poll, Some(PollRecord::Idle));
        assert!(writer.calls.lock().unwrap().is_empty());
        assert!(run.outcome.inventory.is_none());
        assert!(run.last_pass.is_none());
        assert!(
            run.outcome
                .calls
                .0
                .keys()
                .all(|(system, _)| system != systems::NETBOX)
        );
        assert_eq!(run.outcome.calls.get(systems::PROXMOX, CALL_SUCCESS), 1);
    }

    #[tokio::test]
    async fn a_poll_with_changes_syncs_the_last_inventory_with_them_read_again() {
        let d = secrets_dir();
        let writer = FakeWriter::default();
        let mut last = last_pass_of_three_nodes(&d).await;
        last.client = Some(SharedPve(Arc::new(FixedPve)));
        let reader = ChangingReader::default();
        let run = run_targeted(
            &Stages::new(&reader, &FakeProber::default(), &writer),
            &cluster(false, "Sync"),
            RunOptions::default(),
            &last,
            now(),
        )
        .await;
        assert_eq!(
            run.outcome.poll,
            Some(PollRecord::Changed(
                [(100, crate::watch::GuestChange::Changed)].into()
            ))
        );
        // One NetBox sync of the changed guest only, with the last full pass's hardware facts.
        assert_eq!(*writer.calls.lock().unwrap(), [(1, false)]);
        assert_eq!(*writer.scopes.lock().unwrap(), [Some([100].into())]);
        let inventory = run.outcome.inventory.as_ref().unwrap();
        assert_eq!(inventory.guests[0].memory_mib, Some(3072));
        assert_eq!(run.outcome.discovery, last.discovery);
        assert!(matches!(run.outcome.netbox, NetBoxOutcome::Done(_)));
        // The next poll compares with this one.
        // The poll used the full pass's client, and the next one will too.
        assert_eq!(*reader.given_client.lock().unwrap(), [true]);
        let next = run.last_pass.unwrap();
        assert!(next.client.is_some());
        assert!(next.memory.resources.nodes.contains_key("polled"));
        assert_eq!(next.memory.inventory.guests[0].memory_mib, Some(3072));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_past_its_deadline_fails_and_runs_nothing_else() {
        let d = secrets_dir();
        let writer = FakeWriter::default();
        let run = run_targeted(
            &Stages::new(&HangingReader, &FakeProber::default(), &writer),
            &cluster(false, "Sync"),
            RunOptions::default(),
            &last_pass_of_three_nodes(&d).await,
            now(),
        )
        .await;
        assert!(
            matches!(&run.outcome.poll, Some(PollRecord::Failed(m)) if m.contains("deadline")),
            "{:?}",
            run.outcome.poll
        );
        assert!(writer.calls.lock().unwrap().is_empty());
    }
}
