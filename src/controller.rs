//! The Kubernetes controller: watches ProxmoxClusters, their NodeSSHCredentials and the
//! Secrets they reference, runs the pipeline and writes status, Events and metrics.
//!
//! One reconcile: list the cluster's NodeSSHCredentials -> run the pipeline (config,
//! Proxmox read, hardware discovery) -> write the intermediate status and the credential
//! statuses ([`StatusWriter`]) -> NetBox sync -> write the final status, publish Events,
//! record metrics, requeue at the interval; or, when a stage failed, return its typed error
//! to [`error_policy`], which retries by its classification.

pub mod kube_metrics;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::Predicate;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use serde_json::json;

use crate::conditions::{reasons, types};
use crate::crd::{
    API_GROUP, DeletionPolicy, NodeSSHCredential, NodeSSHCredentialStatus, ProxmoxCluster,
    ProxmoxClusterStatus,
};
use crate::events::{EventSpec, events_for, suspend_event};
use crate::inventory::Inventory;
pub use crate::pipeline::ClusterPipeline;
use crate::pipeline::{LastPass, StageObserver};
use crate::provision::report::ProvisionReport;
use crate::secrets::KubeSecrets;
use crate::stage_errors::{StageError, StageFailure};
use crate::status::{
    NetBoxOutcome, PipelineOutcome, build_status, differs, guest_address_gaps, last_change,
    needs_write, observed_status, suspended_status,
};
use crate::watch::PollRecord;
use metrics::{
    CallLabels, ClusterLabels, ErrorLabels, ObjectLabels, PollLabels, ProvisioningActionLabels,
    ProvisioningPhaseLabels, ReconcileMetrics, RequestLabels, StorageLabels,
};

/// Finalizer that lets the operator apply the deletion policy before a ProxmoxCluster goes.
pub const FINALIZER: &str = "proxmox-netbox.io/cleanup";
/// Changing this annotation (any value, e.g. a timestamp) requests an immediate resync.
pub const RESYNC_ANNOTATION: &str = "proxmox-netbox.io/resync";

/// Set to `"true"` on a ProxmoxCluster being deleted to let it go without the cleanup of
/// `deletionPolicy: Delete` (the escape when NetBox is unreachable or the Secrets are
/// gone): its NetBox objects are kept, as with `Orphan`.
pub const SKIP_CLEANUP_ANNOTATION: &str = "proxmox-netbox.io/skip-cleanup";
/// Field manager of the operator's server-side apply patches.
pub const FIELD_MANAGER: &str = "proxmox-netbox-operator";
/// Shortest sync interval accepted (a shorter `spec.sync.interval` is a spec error).
pub const MIN_INTERVAL: Duration = crate::config::MIN_SYNC_INTERVAL;
/// Interval used when no resolved `spec.sync.interval` is known: the spec could not be
/// resolved, or no pass ran yet (the default of the field).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// How soon a full pass comes again while provisioning has a VM on its way.
pub const PROVISIONING_RECHECK: Duration = Duration::from_secs(30);
/// First retry delay after a failed reconcile; doubles per consecutive failure, capped at
/// the cluster's sync interval (and never below this).
pub const BACKOFF_BASE: Duration = Duration::from_secs(15);

/// Source of the current time, injected so tests control it.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Tells running reconciles to stop at once (leadership lost). Cloned into each
/// reconcile; [`AbortSignal::never`] for a controller without leader election.
#[derive(Clone, Debug)]
pub struct AbortSignal(tokio::sync::watch::Receiver<bool>);

/// The sending side of an [`AbortSignal`].
#[derive(Debug)]
pub struct AbortTrigger(tokio::sync::watch::Sender<bool>);

impl AbortTrigger {
    /// Aborts every reconcile that is running or starts from now on.
    pub fn abort(&self) {
        self.0.send_replace(true);
    }
}

impl AbortSignal {
    /// A signal and its trigger.
    pub fn new() -> (AbortTrigger, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (AbortTrigger(tx), Self(rx))
    }

    /// A signal that never fires.
    pub fn never() -> Self {
        Self::new().1
    }

    /// Whether the abort was triggered.
    pub fn is_aborted(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the abort is triggered (never, when the trigger was dropped unused).
    pub async fn aborted(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|a| *a).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a reconcile failed; handed to [`error_policy`], which picks the retry from it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stage of the pass failed; the status and the Events already say so.
    #[error("stage failed ({reason}): {0}", reason = .0.reason())]
    Stage(#[source] StageError),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The resource has no namespace (the CRDs are namespaced, so this is a bug).
    #[error("resource has no namespace")]
    MissingNamespace,
    /// Cleanup under deletion policy `Delete` failed; the finalizer stays.
    #[error("cleanup of NetBox objects failed ({reason}): {0}", reason = .0.reason())]
    Cleanup(#[source] StageError),
    /// The reconcile was abandoned because this replica lost leadership.
    #[error("aborted: this replica is no longer the leader")]
    Aborted,
    /// The reconcile failed as a whole (it panicked, or ran past its deadline); only this
    /// cluster is affected.
    #[error("{message}")]
    Failed {
        /// Condition and Event reason (`ReconcilePanicked`, `ReconcileTimedOut`).
        reason: &'static str,
        /// What happened, one short line.
        message: String,
    },
}

impl Error {
    /// The error inside a finalizer error, if it came from the reconcile itself.
    fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// Stable label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            Self::Stage(e) => e.metric_label(),
            Self::Kube(_) => "KubernetesApi",
            Self::Finalizer(_) => "Finalizer",
            Self::MissingNamespace => "MissingNamespace",
            Self::Cleanup(_) => "CleanupFailed",
            Self::Aborted => "Aborted",
            Self::Failed { reason, .. } => reason,
        }
    }

    /// True when retrying cannot help until something changes: a permanent stage or
    /// cleanup failure ([`StageFailure::is_permanent`]). Everything else (the Kubernetes
    /// API, a panic, the deadline) is transient.
    pub fn is_permanent(&self) -> bool {
        match self.inner() {
            Self::Stage(e) | Self::Cleanup(e) => e.is_permanent(),
            _ => false,
        }
    }

    /// True when the reconcile was abandoned on loss of leadership.
    pub fn is_aborted(&self) -> bool {
        matches!(self.inner(), Self::Aborted)
    }
}

/// Shared state of the reconciles.
pub struct Context<P> {
    /// Kubernetes client.
    pub client: Client,
    /// The pipeline run for each cluster.
    pub pipeline: P,
    /// Reconcile metrics.
    pub metrics: Arc<ReconcileMetrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Consecutive failures per cluster, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// The sync interval each cluster's last pass resolved ([`DEFAULT_INTERVAL`] when its
    /// spec could not be resolved): what [`error_policy`] waits after a permanent failure
    /// and caps the backoff at.
    pub sync_intervals: Mutex<HashMap<String, Duration>>,
    /// Fires when running reconciles must stop at once (leadership lost).
    pub abort: AbortSignal,
    /// Per cluster, the last pass the polls compare with, until the next full sync.
    pub kept_passes: Mutex<HashMap<String, KeptPass>>,
    /// Time between two polls of the referenced Secrets' metadata.
    pub secret_poll_interval: Duration,
    /// Longest time one reconcile's pipeline may run before it is stopped.
    pub reconcile_deadline: Duration,
    /// This operator installation, first part of every owner mark in NetBox
    /// ([`crate::owner`]); `run` sets it from `--installation-id` or the UID of the
    /// `kube-system` namespace.
    pub installation: String,
}

/// Installation id of a [`Context::new`] until `run` sets the real one.
pub const DEFAULT_INSTALLATION: &str = "default";

/// Default of [`Context::reconcile_deadline`].
pub const DEFAULT_RECONCILE_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl<P: ClusterPipeline> Context<P> {
    /// Creates a context with the system clock and no abort signal.
    pub fn new(
        client: Client,
        pipeline: P,
        metrics: Arc<ReconcileMetrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pipeline,
            metrics,
            clock: Arc::new(SystemClock),
            failures: Mutex::new(HashMap::new()),
            sync_intervals: Mutex::new(HashMap::new()),
            abort: AbortSignal::never(),
            kept_passes: Mutex::new(HashMap::new()),
            secret_poll_interval: crate::secret_poll::DEFAULT_SECRET_POLL_INTERVAL,
            reconcile_deadline: DEFAULT_RECONCILE_DEADLINE,
            installation: DEFAULT_INSTALLATION.into(),
        }
    }
}

/// A cluster's last pass kept for its polls, valid for one generation and resync
/// annotation, until the next full sync is due.
#[derive(Clone, Debug)]
pub struct KeptPass {
    /// The spec generation it was run for.
    pub generation: Option<i64>,
    /// The annotations it was run with (resync, adoption of previous marks, ...).
    pub annotations: BTreeMap<String, String>,
    /// When the next full sync is due.
    pub next_full: DateTime<Utc>,
    /// The pass.
    pub pass: Arc<LastPass>,
}

impl<P> Context<P> {
    fn kept_passes(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeptPass>> {
        self.kept_passes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pass a poll of cluster `key` compares with: `None` (a full pass is due) when
    /// none is kept, the spec or an annotation changed, or the interval is over.
    fn kept_pass(
        &self,
        key: &str,
        generation: Option<i64>,
        annotations: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Option<Arc<LastPass>> {
        let mut kept = self.kept_passes();
        let k = kept.get(key)?;
        if k.generation == generation && &k.annotations == annotations && now < k.next_full {
            return Some(k.pass.clone());
        }
        kept.remove(key);
        None
    }

    fn keep_pass(&self, key: &str, pass: KeptPass) {
        self.kept_passes().insert(key.to_string(), pass);
    }

    fn forget_pass(&self, key: &str) {
        self.kept_passes().remove(key);
    }

    /// Drops the kept passes of the clusters `refs`: their next pass is a full one.
    fn forget_passes<'r>(&self, refs: impl IntoIterator<Item = &'r ObjectRef<ProxmoxCluster>>) {
        let mut kept = self.kept_passes();
        for r in refs {
            kept.remove(&format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or_default(),
                r.name
            ));
        }
    }

    fn next_full_sync(&self, key: &str) -> Option<DateTime<Utc>> {
        self.kept_passes().get(key).map(|k| k.next_full)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_intervals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Duration>> {
        self.sync_intervals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The interval of the cluster `key`'s last pass, or [`DEFAULT_INTERVAL`].
    fn sync_interval(&self, key: &str) -> Duration {
        self.sync_intervals()
            .get(key)
            .copied()
            .unwrap_or(DEFAULT_INTERVAL)
    }
}

/// The delay before the next periodic sync: the interval (kept within [`MIN_INTERVAL`] and
/// [`crate::config::MAX_SYNC_INTERVAL`]) plus up to 10% jitter. Never overflows.
pub fn next_sync_delay(interval: Duration) -> Duration {
    let interval = interval.clamp(MIN_INTERVAL, crate::config::MAX_SYNC_INTERVAL);
    let max_jitter_ms = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    let jitter_ms = rand::rng().random_range(0..=max_jitter_ms);
    interval.saturating_add(Duration::from_millis(jitter_ms))
}

/// Exponential backoff after `failures` consecutive failures: [`BACKOFF_BASE`] doubling,
/// capped at the interval (but never below [`BACKOFF_BASE`]).
pub fn backoff_delay(failures: u32, interval: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    BACKOFF_BASE
        .saturating_mul(factor)
        .min(interval.max(BACKOFF_BASE))
}

fn cluster_key(cluster: &ProxmoxCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// `apiVersion` of this operator's resources.
fn api_version<K: Resource<DynamicType = ()>>() -> String {
    format!("{API_GROUP}/{}", K::version(&()))
}

/// Reconciles one ProxmoxCluster (the entry point given to the kube-runtime Controller).
pub async fn reconcile<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<ProxmoxCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let key = cluster_key(&cluster);
    if ctx.abort.is_aborted() {
        return Err(Error::Aborted);
    }
    ctx.metrics
        .reconciles
        .get_or_create(&ClusterLabels {
            cluster: key.clone(),
        })
        .inc();
    let started = Instant::now();
    // A panic (a bug, whatever the input) fails this cluster only: it is caught here,
    // reported in its status and Events, and retried with backoff like any error.
    let reconciled = AssertUnwindSafe(finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply(c, &api, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup(c, &ctx).await,
        }
    }))
    .catch_unwind()
    .await;
    let result = match reconciled {
        Ok(r) => r.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(payload) => {
            Err(report_panic(&cluster, &api, &ctx, panic_message(payload.as_ref())).await)
        }
    };
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ClusterLabels {
            cluster: key.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Err(e) if e.is_aborted() => {
            tracing::warn!(cluster = %key, "reconcile aborted: leadership lost");
        }
        Err(e) => tracing::warn!(
            cluster = %key,
            error = %e,
            permanent = e.is_permanent(),
            "reconcile failed"
        ),
        Ok(_) => {}
    }
    result
}

/// The text of a panic payload (`&str` or `String`), cut to one short line.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let line: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    line
}

/// Records a caught panic on the cluster (Warning Event, `Ready=False`) and returns the
/// error handed to the error policy.
async fn report_panic<P>(
    cluster: &ProxmoxCluster,
    api: &Api<ProxmoxCluster>,
    ctx: &Context<P>,
    message: String,
) -> Error {
    tracing::error!(cluster = %cluster_key(cluster), panic = %message, "reconcile panicked: only this cluster is affected");
    let note = format!("the reconcile panicked (a bug, please report it): {message}");
    report_failure(cluster, api, ctx, reasons::RECONCILE_PANICKED, note).await
}

/// Records a reconcile that failed as a whole (a caught panic, the deadline) on the
/// cluster: a Warning Event and `Ready=False` with `reason`. Returns the error handed to
/// the error policy.
async fn report_failure<P>(
    cluster: &ProxmoxCluster,
    api: &Api<ProxmoxCluster>,
    ctx: &Context<P>,
    reason: &'static str,
    note: String,
) -> Error {
    let key = cluster_key(cluster);
    publish(
        ctx,
        cluster,
        &EventSpec {
            warning: true,
            reason: reason.into(),
            note: note.clone(),
        },
    )
    .await;
    let status = crate::status::ready_false_status(
        cluster.metadata.generation,
        cluster.status.as_ref(),
        reason,
        note.clone(),
        ctx.clock.now(),
    );
    if crate::status::differs(cluster.status.as_ref(), &status)
        && let Err(e) = patch_status(api, &cluster.name_any(), &status).await
    {
        tracing::warn!(cluster = %key, error = %e, "cannot write the failure status");
    }
    Error::Failed {
        reason,
        message: note,
    }
}

/// Writes the intermediate status (per-node facts and warnings, before the NetBox sync)
/// and the NodeSSHCredential statuses; remembers what it wrote.
pub struct StatusWriter<'a> {
    api: &'a Api<ProxmoxCluster>,
    name: &'a str,
    generation: Option<i64>,
    previous: Option<&'a ProxmoxClusterStatus>,
    clock: &'a dyn Clock,
    creds_api: &'a Api<NodeSSHCredential>,
    credentials: &'a [NodeSSHCredential],
    written: Mutex<Option<ProxmoxClusterStatus>>,
}

impl StatusWriter<'_> {
    /// The intermediate status, if it was written.
    fn take_written(&self) -> Option<ProxmoxClusterStatus> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl StageObserver for StatusWriter<'_> {
    fn observed<'a>(&'a self, outcome: &'a PipelineOutcome) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let now = self.clock.now();
            let status = observed_status(self.generation, self.previous, outcome, now);
            // Timestamps alone never cause this write (and there is no heartbeat here).
            if differs(self.previous, &status) {
                match patch_status(self.api, self.name, &status).await {
                    Ok(()) => {
                        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    }
                    // The NetBox sync still runs; the final write tries again.
                    Err(e) => tracing::warn!(
                        cluster = %self.name,
                        error = %e,
                        "cannot write the intermediate status"
                    ),
                }
            }
            if let Some(discovery) = &outcome.discovery {
                update_credential_statuses(self.creds_api, self.credentials, discovery, now).await;
            }
        })
    }
}

async fn apply<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    api: &Api<ProxmoxCluster>,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let name = cluster.name_any();
    let key = cluster_key(&cluster);
    let now = ctx.clock.now();
    let generation = cluster.metadata.generation;
    let previous = cluster.status.as_ref();

    if cluster.spec.sync.suspend {
        let status = suspended_status(generation, previous, now);
        // No heartbeat while suspended: nothing syncs, so lastSyncTime does not move.
        if differs(previous, &status) {
            patch_status(api, &name, &status).await?;
        }
        if let Some(ev) = suspend_event(previous, true) {
            publish(ctx, &cluster, &ev).await;
        }
        ctx.failures().remove(&key);
        tracing::info!(cluster = %key, "sync suspended");
        return Ok(Action::await_change());
    }
    if let Some(ev) = suspend_event(previous, false) {
        publish(ctx, &cluster, &ev).await;
    }

    // A pass is kept until the next full sync is due: then this reconcile only polls, and
    // needs no NodeSSHCredential (hardware facts are the full pass's).
    let annotations = cluster.annotations().clone();
    let kept = ctx.kept_pass(&key, generation, &annotations, now);
    let creds_api: Api<NodeSSHCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let credentials: Vec<NodeSSHCredential> = match kept {
        Some(_) => Vec::new(),
        None => creds_api
            .list(&ListParams::default())
            .await
            .map_err(Error::Kube)?
            .items
            .into_iter()
            .filter(|c| c.spec.cluster_ref.name == name)
            .collect(),
    };
    let secrets = KubeSecrets::new(ctx.client.clone(), &ns);
    let observer = StatusWriter {
        api,
        name: &name,
        generation,
        previous,
        clock: ctx.clock.as_ref(),
        creds_api: &creds_api,
        credentials: &credentials,
        written: Mutex::new(None),
    };
    if kept.is_none() {
        tracing::info!(cluster = %key, credentials = credentials.len(), "sync started");
    }
    // Loss of leadership drops the pipeline at its next await point: no further request
    // to Proxmox, NetBox or the API server is made for this pass.
    let run = tokio::select! {
        biased;
        () = ctx.abort.aborted() => return Err(Error::Aborted),
        run = ctx.pipeline.run(&cluster, &credentials, &secrets, &observer, &ctx.installation, kept.as_deref(), now) => run,
        () = tokio::time::sleep(ctx.reconcile_deadline) => {
            let limit = ctx.reconcile_deadline;
            let note = format!(
                "the sync did not finish within {}s and was stopped; it is retried with backoff",
                limit.as_secs()
            );
            return Err(report_failure(&cluster, api, ctx, reasons::RECONCILE_TIMED_OUT, note).await);
        }
    };

    let outcome = run.outcome;
    if let Some(poll) = &outcome.poll {
        ctx.metrics
            .polls
            .get_or_create(&PollLabels {
                cluster: key.clone(),
                outcome: poll.label().to_string(),
            })
            .inc();
        if let Some(delay) = after_quiet_poll(ctx, &key, poll, outcome.watch_interval) {
            return Ok(Action::requeue(delay));
        }
    }

    // The final status builds on what is on the server now: the intermediate status when
    // it was written, the status the reconcile started from otherwise.
    let intermediate = observer.take_written();
    let base = intermediate.as_ref().or(previous);
    let finished = ctx.clock.now();
    let mut status = build_status(generation, base, &outcome, finished);
    status.last_resync_request = cluster.annotations().get(RESYNC_ANNOTATION).cloned();
    if let Some(PollRecord::Changed(changes)) = &outcome.poll {
        status.last_change = Some(last_change(changes, now, finished));
        // `sync` describes the last full sync: a targeted pass planned only its guests
        // (its failures, if any, replace it, so that they are seen).
        let failed = status.sync.as_ref().is_some_and(|s| s.failed > 0);
        if let Some(full) = base.and_then(|b| b.sync.clone())
            && !failed
        {
            status.sync = Some(full);
        }
    }
    if needs_write(base, &status, finished) {
        patch_status(api, &name, &status).await?;
    } else {
        tracing::debug!(cluster = %key, "status unchanged apart from timestamps: not written");
    }
    // Events describe the change over the whole pass.
    for ev in events_for(previous, &status, &outcome) {
        publish(ctx, &cluster, &ev).await;
    }
    record_metrics(ctx, &key, &outcome, &status, finished);

    let interval = outcome.sync_interval.unwrap_or(DEFAULT_INTERVAL);
    ctx.sync_intervals().insert(key.clone(), interval);
    if let Some(failure) = stage_failure(&outcome) {
        return Err(Error::Stage(failure));
    }
    ctx.failures().remove(&key);
    if let Some(PollRecord::Changed(changes)) = &outcome.poll {
        ctx.metrics
            .change_sync_duration
            .get_or_create(&ClusterLabels {
                cluster: key.clone(),
            })
            .observe((finished - now).num_milliseconds().max(0) as f64 / 1000.0);
        tracing::info!(cluster = %key, guests = changes.len(), "changes synced");
    }
    let mut next_full = match &kept {
        Some(_) => ctx.next_full_sync(&key).unwrap_or(finished),
        None => finished + chrono_delay(next_sync_delay(interval)),
    };
    // A VM on its way (a task running, steps left) is looked at again soon, not at the
    // next full sync.
    let provisioning_soon = outcome
        .provisioning
        .as_ref()
        .is_some_and(ProvisionReport::in_progress);
    if provisioning_soon {
        next_full = next_full.min(finished + chrono_delay(PROVISIONING_RECHECK));
    }
    let delay = match (run.last_pass, outcome.watch_interval) {
        (Some(pass), Some(watch)) => {
            ctx.keep_pass(
                &key,
                KeptPass {
                    generation,
                    annotations,
                    next_full,
                    pass: Arc::new(pass),
                },
            );
            let until_full = (next_full - finished).to_std().unwrap_or_default();
            watch.min(until_full).max(Duration::from_secs(1))
        }
        _ if provisioning_soon => {
            ctx.forget_pass(&key);
            PROVISIONING_RECHECK
        }
        _ => {
            ctx.forget_pass(&key);
            next_sync_delay(interval)
        }
    };
    if kept.is_none() {
        tracing::info!(
            cluster = %key,
            ready = outcome.fully_successful(),
            next_in_seconds = delay.as_secs(),
            "sync finished"
        );
    }
    Ok(Action::requeue(delay))
}

/// After a poll that ran nothing else (idle, partial or failed): when to reconcile again.
/// A partial or failed poll drops the kept pass, so the next pass is a full one.
fn after_quiet_poll<P>(
    ctx: &Context<P>,
    key: &str,
    poll: &PollRecord,
    watch_interval: Option<Duration>,
) -> Option<Duration> {
    let watch = watch_interval.unwrap_or(DEFAULT_INTERVAL);
    match poll {
        PollRecord::Changed(_) => None,
        PollRecord::Idle => {
            let until_full = ctx
                .next_full_sync(key)
                .and_then(|t| (t - ctx.clock.now()).to_std().ok())
                .unwrap_or_default();
            Some(watch.min(until_full).max(Duration::from_secs(1)))
        }
        PollRecord::Provisioning(why) => {
            tracing::info!(cluster = %key, reason = %why, "the next pass is a full sync");
            ctx.forget_pass(key);
            Some(Duration::from_secs(1))
        }
        PollRecord::Partial(why) | PollRecord::Failed(why) => {
            tracing::warn!(cluster = %key, outcome = poll.label(), reason = %why, "poll for changes not used: the next pass is a full sync");
            ctx.forget_pass(key);
            Some(watch)
        }
    }
}

/// A std duration as a chrono one (saturating).
fn chrono_delay(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The stage failure that stopped a pass, if one did.
fn stage_failure(outcome: &PipelineOutcome) -> Option<StageError> {
    if let Some(e) = &outcome.config_error {
        return Some(e.clone().into());
    }
    if let Some(e) = &outcome.proxmox_error {
        return Some(e.clone().into());
    }
    match &outcome.netbox {
        NetBoxOutcome::Failed(e) => Some(e.clone().into()),
        _ => None,
    }
}

/// When to run the next pass after `error`, the `failures`-th failure in a row: the
/// interval after a permanent failure (an invalid spec or refused credentials wait for a
/// change, not for a hot retry; a change of the spec or of a Secret starts a pass anyway),
/// the backoff after a transient one.
pub fn retry_delay(error: &Error, failures: u32, interval: Duration) -> Duration {
    if error.is_permanent() {
        next_sync_delay(interval)
    } else {
        backoff_delay(failures, interval)
    }
}

async fn cleanup<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let key = cluster_key(&cluster);
    let skip = cluster
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    if skip && cluster.spec.deletion_policy == DeletionPolicy::Delete {
        publish(
            ctx,
            &cluster,
            &EventSpec {
                warning: true,
                reason: "CleanupSkipped".into(),
                note: format!(
                    "deleted without cleanup ({SKIP_CLEANUP_ANNOTATION}=true): the owned NetBox objects are kept"
                ),
            },
        )
        .await;
        forget(ctx, &key);
        return Ok(Action::await_change());
    }
    match cluster.spec.deletion_policy {
        DeletionPolicy::Orphan => {
            tracing::info!(cluster = %key, "deleted with deletionPolicy Orphan: NetBox left as is");
            forget(ctx, &key);
            Ok(Action::await_change())
        }
        DeletionPolicy::Delete => {
            let secrets = KubeSecrets::new(ctx.client.clone(), &ns);
            let result = tokio::select! {
                biased;
                () = ctx.abort.aborted() => return Err(Error::Aborted),
                r = ctx.pipeline.delete_owned(&cluster, &secrets, &ctx.installation) => r,
            };
            match result {
                Ok(summary) => {
                    publish(
                        ctx,
                        &cluster,
                        &EventSpec {
                            warning: false,
                            reason: "Deleted".into(),
                            note: summary,
                        },
                    )
                    .await;
                    forget(ctx, &key);
                    Ok(Action::await_change())
                }
                Err(err) => {
                    publish(
                        ctx,
                        &cluster,
                        &EventSpec {
                            warning: true,
                            reason: err.reason().into(),
                            note: err.to_string(),
                        },
                    )
                    .await;
                    let status = crate::status::deletion_blocked_status(
                        cluster.metadata.generation,
                        cluster.status.as_ref(),
                        err.reason(),
                        &err.to_string(),
                        ctx.clock.now(),
                    );
                    if crate::status::differs(cluster.status.as_ref(), &status) {
                        let api: Api<ProxmoxCluster> = Api::namespaced(ctx.client.clone(), &ns);
                        if let Err(e) = patch_status(&api, &cluster.name_any(), &status).await {
                            tracing::warn!(cluster = %key, error = %e, "cannot write the deletion status");
                        }
                    }
                    Err(Error::Cleanup(err))
                }
            }
        }
    }
}

/// Drops what the controller keeps about a cluster that is going away.
fn forget<P>(ctx: &Context<P>, key: &str) {
    ctx.forget_pass(key);
    ctx.failures().remove(key);
    ctx.sync_intervals().remove(key);
    ctx.metrics.forget_cluster(key);
}

async fn patch_status(
    api: &Api<ProxmoxCluster>,
    name: &str,
    status: &ProxmoxClusterStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": api_version::<ProxmoxCluster>(),
        "kind": ProxmoxCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn publish<P>(ctx: &Context<P>, cluster: &ProxmoxCluster, ev: &EventSpec) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.clone(),
        note: Some(ev.note.clone()),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason = %ev.reason, "cannot publish event");
    }
}

/// Ready condition of a credential after a discovery.
fn credential_condition(
    discovery: Option<&crate::status::NodeDiscovery>,
    generation: Option<i64>,
) -> Condition {
    let (status, reason, message) = match discovery {
        Some(d) => match &d.warning {
            None => (
                "True",
                "Discovered".to_string(),
                "hardware discovery succeeded".to_string(),
            ),
            Some(w) => ("False", w.code.clone(), w.message.clone()),
        },
        None => (
            "Unknown",
            "NodeNotFound".to_string(),
            "no node of this name was found in the Proxmox cluster".to_string(),
        ),
    };
    Condition {
        type_: types::READY.into(),
        status: status.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    }
}

async fn update_credential_statuses(
    api: &Api<NodeSSHCredential>,
    credentials: &[NodeSSHCredential],
    discovery: &[crate::status::NodeDiscovery],
    now: DateTime<Utc>,
) {
    for cred in credentials {
        let found = discovery.iter().find(|d| d.node == cred.spec.node_name);
        let mut cond = credential_condition(found, cred.metadata.generation);
        let prev = cred
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == types::READY));
        if let Some(p) = prev {
            if p.status == cond.status
                && p.reason == cond.reason
                && p.message == cond.message
                && p.observed_generation == cond.observed_generation
            {
                continue;
            }
            if p.status == cond.status {
                cond.last_transition_time = p.last_transition_time.clone();
            }
        }
        if prev.is_none() || prev.is_some_and(|p| p.status != cond.status) {
            let ts = k8s_openapi::jiff::Timestamp::from_second(now.timestamp())
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
            cond.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts);
        }
        let status = NodeSSHCredentialStatus {
            observed_generation: cred.metadata.generation,
            conditions: vec![cond],
        };
        let body = json!({
            "apiVersion": api_version::<NodeSSHCredential>(),
            "kind": NodeSSHCredential::kind(&()),
            "status": status,
        });
        if let Err(e) = api
            .patch_status(
                &cred.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            tracing::warn!(credential = %cred.name_any(), error = %e, "cannot write NodeSSHCredential status");
        }
    }
}

/// Ceph health as a number: 0 `HEALTH_OK`, 1 `HEALTH_WARN`, 2 `HEALTH_ERR`.
pub fn ceph_health_value(health: &str) -> Option<i64> {
    match health {
        "HEALTH_OK" => Some(0),
        "HEALTH_WARN" => Some(1),
        "HEALTH_ERR" => Some(2),
        _ => None,
    }
}

fn storage_series(key: &str, inv: &Inventory) -> Vec<(StorageLabels, Option<i64>, Option<i64>)> {
    let mut out: Vec<(StorageLabels, Option<i64>, Option<i64>)> = Vec::new();
    for pool in &inv.storage {
        let labels = StorageLabels {
            cluster: key.into(),
            storage: pool.name.clone(),
            // A shared pool is the same storage on every node: one series.
            node: if pool.shared {
                String::new()
            } else {
                pool.node.clone()
            },
        };
        if out.iter().any(|(l, _, _)| *l == labels) {
            continue;
        }
        let bytes = |b: Option<u64>| b.and_then(|b| i64::try_from(b).ok());
        out.push((labels, bytes(pool.total_bytes), bytes(pool.used_bytes)));
    }
    out
}

fn record_metrics<P>(
    ctx: &Context<P>,
    key: &str,
    outcome: &PipelineOutcome,
    status: &ProxmoxClusterStatus,
    now: DateTime<Utc>,
) {
    let m = &ctx.metrics;
    let mut reasons_seen = BTreeSet::new();
    if let Some(failure) = stage_failure(outcome) {
        reasons_seen.insert(failure.metric_label().to_string());
    }
    if let Some(w) = &outcome.permission_warning {
        reasons_seen.insert(w.reason.to_string());
    }
    for f in &status.read_failures {
        reasons_seen.insert(f.reason.clone());
    }
    for node in outcome.discovery.iter().flatten() {
        if let Some(w) = &node.warning {
            reasons_seen.insert(w.code.clone());
        }
    }
    if let NetBoxOutcome::Done(s) = &outcome.netbox {
        if s.failed > 0 {
            reasons_seen.insert(reasons::PARTIAL_SYNC.into());
        }
        for (kind, n) in [("read", s.read_requests), ("write", s.write_requests)] {
            m.netbox_requests
                .get_or_create(&RequestLabels {
                    cluster: key.into(),
                    kind: kind.into(),
                })
                .inc_by(u64::try_from(n).unwrap_or(0));
        }
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut objects = Vec::new();
        for (kind, c) in &outcome.netbox_kinds {
            for (action, n) in [
                ("created", c.created),
                ("updated", c.updated),
                ("unchanged", c.unchanged),
                ("deleted", c.deleted),
                ("stale", c.stale),
                ("failed", c.failed),
                ("orphaned", c.orphaned),
            ] {
                objects.push((
                    ObjectLabels {
                        cluster: key.into(),
                        kind: kind.clone(),
                        action: action.into(),
                    },
                    int(n),
                ));
            }
        }
        // The object gauges describe the last full sync, not a targeted pass.
        if outcome.poll.is_none() {
            m.set_objects(key, objects);
        }
    }
    for reason in reasons_seen {
        m.errors
            .get_or_create(&ErrorLabels {
                cluster: key.into(),
                reason,
            })
            .inc();
    }
    for ((system, result), n) in &outcome.calls.0 {
        m.external_calls
            .get_or_create(&CallLabels {
                cluster: key.into(),
                system: system.clone(),
                outcome: result.clone(),
            })
            .inc_by(*n);
    }
    if let Some(s) = &status.summary {
        let inventory = [
            ("nodes", s.nodes),
            ("vms", s.vms),
            ("containers", s.containers),
            ("templates", s.templates),
            ("interfaces", s.interfaces),
            ("ipAddresses", s.ip_addresses),
            ("disks", s.disks),
            ("storagePools", s.storage_pools),
        ]
        .into_iter()
        .map(|(kind, n)| {
            (
                ObjectLabels {
                    cluster: key.into(),
                    kind: kind.into(),
                    action: "read".into(),
                },
                n,
            )
        })
        .collect();
        m.set_inventory(key, inventory);
    }
    // Storage, Ceph and guest addresses come from this pass's read; after a failed read
    // the values of the last read stay.
    if let Some(inv) = &outcome.inventory {
        m.set_storage(key, storage_series(key, inv));
        let labels = ClusterLabels {
            cluster: key.into(),
        };
        match inv.ceph.as_ref().and_then(|c| ceph_health_value(&c.health)) {
            Some(v) => {
                m.ceph_health.get_or_create(&labels).set(v);
            }
            None => {
                m.ceph_health.remove(&labels);
            }
        }
        let gaps = guest_address_gaps(inv)
            .into_iter()
            .map(|(reason, ids)| {
                (
                    ErrorLabels {
                        cluster: key.into(),
                        reason: reason.into(),
                    },
                    i64::try_from(ids.len()).unwrap_or(i64::MAX),
                )
            })
            .collect();
        m.set_guest_addresses_unread(key, gaps);
    }
    if let Some(report) = &outcome.provisioning {
        record_provisioning(m, key, report);
    }
    if outcome.fully_successful() {
        m.last_success_timestamp
            .get_or_create(&ClusterLabels {
                cluster: key.into(),
            })
            .set(now.timestamp() as f64);
    }
}

/// The provisioning metrics of a full pass: steps by action and outcome, VMs by phase,
/// orphans; per-VM warnings count as reconcile warnings by their code.
fn record_provisioning(m: &ReconcileMetrics, key: &str, report: &ProvisionReport) {
    for (action, outcome) in report.actions() {
        m.provisioning_actions
            .get_or_create(&ProvisioningActionLabels {
                cluster: key.into(),
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
    let mut phases: BTreeMap<&str, i64> = BTreeMap::new();
    for vm in &report.vms {
        *phases.entry(vm.phase).or_default() += 1;
        if let Some(w) = &vm.warning {
            m.errors
                .get_or_create(&ErrorLabels {
                    cluster: key.into(),
                    reason: w.code.into(),
                })
                .inc();
        }
    }
    let phases = phases
        .into_iter()
        .map(|(phase, n)| {
            (
                ProvisioningPhaseLabels {
                    cluster: key.into(),
                    phase: phase.into(),
                },
                n,
            )
        })
        .collect();
    m.set_provisioning_vms(key, phases);
    m.provisioning_orphans
        .get_or_create(&ClusterLabels {
            cluster: key.into(),
        })
        .set(i64::try_from(report.orphans.len()).unwrap_or(i64::MAX));
    if report.failure.is_some() {
        m.errors
            .get_or_create(&ErrorLabels {
                cluster: key.into(),
                reason: reasons::PROVISIONING_FAILED.into(),
            })
            .inc();
    }
}

/// Requeue policy when `reconcile` fails (a failed stage, a failed `Delete` cleanup, the
/// Kubernetes API, a panic, the deadline): [`retry_delay`] from the error's classification,
/// with the interval the cluster's last pass resolved.
pub fn error_policy<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    error: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    if error.is_aborted() {
        // The controller is shutting down; the next leader picks the cluster up.
        return Action::await_change();
    }
    let key = cluster_key(&cluster);
    // A failed stage was counted with the metrics of its pass.
    if !matches!(error.inner(), Error::Stage(_)) {
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabels {
                cluster: key.clone(),
                reason: error.metric_label().into(),
            })
            .inc();
    }
    let interval = ctx.sync_interval(&key);
    let failures = {
        let mut map = ctx.failures();
        let n = map.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    Action::requeue(retry_delay(error, failures, interval))
}

/// The Secret names a ProxmoxCluster reads directly.
pub fn referenced_secrets(cluster: &ProxmoxCluster) -> Vec<String> {
    let spec = &cluster.spec;
    let mut names = vec![
        spec.proxmox.credentials_secret_ref.name.clone(),
        spec.netbox.token_secret_ref.name.clone(),
    ];
    names.extend(
        spec.proxmox
            .tls
            .ca_secret_ref
            .as_ref()
            .map(|r| r.name.clone()),
    );
    names.extend(
        spec.netbox
            .tls
            .ca_secret_ref
            .as_ref()
            .map(|r| r.name.clone()),
    );
    names
}

/// The Secret names a NodeSSHCredential reads.
pub fn credential_secrets(cred: &NodeSSHCredential) -> Vec<String> {
    let mut names = Vec::new();
    names.extend(
        cred.spec
            .private_key_secret_ref
            .as_ref()
            .map(|r| r.name.clone()),
    );
    names.extend(
        cred.spec
            .password_secret_ref
            .as_ref()
            .map(|r| r.name.clone()),
    );
    names
}

/// The clusters to reconcile when Secret `namespace/name` changes (or is deleted): those
/// that reference it, and those whose NodeSSHCredentials reference it. Only objects in
/// the Secret's namespace count (references never cross namespaces).
pub fn clusters_for_secret<'a>(
    namespace: &str,
    name: &str,
    clusters: impl IntoIterator<Item = &'a ProxmoxCluster>,
    credentials: impl IntoIterator<Item = &'a NodeSSHCredential>,
) -> HashSet<ObjectRef<ProxmoxCluster>> {
    let mut hits = HashSet::new();
    for c in clusters {
        if c.namespace().as_deref() == Some(namespace)
            && referenced_secrets(c).iter().any(|s| s == name)
        {
            hits.insert(ObjectRef::from(c));
        }
    }
    for cred in credentials {
        if cred.namespace().as_deref() == Some(namespace)
            && credential_secrets(cred).iter().any(|s| s == name)
        {
            hits.insert(ObjectRef::new(&cred.spec.cluster_ref.name).within(namespace));
        }
    }
    hits
}

/// Maps NodeSSHCredential watch events to the ProxmoxClusters to reconcile.
///
/// A credential triggers its cluster when it appears, when its spec changes
/// (generation), when it is deleted, and when its `clusterRef` changes (then both the
/// old and the new cluster). Status-only updates (the operator's own writes) trigger
/// nothing. After a re-list, credentials that vanished while the watch was down count
/// as deleted.
#[derive(Debug, Default)]
pub struct CredentialTracker {
    /// (namespace, name) -> (clusterRef name, generation).
    known: HashMap<(String, String), (String, Option<i64>)>,
    /// Credentials seen since the last `Init` (during a re-list).
    relisted: Option<HashSet<(String, String)>>,
}

fn cluster_ref(namespace: &str, name: &str) -> ObjectRef<ProxmoxCluster> {
    ObjectRef::new(name).within(namespace)
}

impl CredentialTracker {
    /// The clusters to reconcile for one watch event.
    pub fn on_event(
        &mut self,
        event: &watcher::Event<NodeSSHCredential>,
    ) -> Vec<ObjectRef<ProxmoxCluster>> {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(cred) => {
                if let (Some(seen), Some(key)) = (self.relisted.as_mut(), Self::key(cred)) {
                    seen.insert(key);
                }
                self.applied(cred)
            }
            watcher::Event::Apply(cred) => self.applied(cred),
            watcher::Event::Delete(cred) => {
                let Some(key) = Self::key(cred) else {
                    return Vec::new();
                };
                let mut out = vec![cluster_ref(&key.0, &cred.spec.cluster_ref.name)];
                if let Some((old, _)) = self.known.remove(&key)
                    && old != cred.spec.cluster_ref.name
                {
                    out.push(cluster_ref(&key.0, &old));
                }
                out
            }
            watcher::Event::InitDone => {
                let Some(seen) = self.relisted.take() else {
                    return Vec::new();
                };
                let gone: Vec<(String, String)> = self
                    .known
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                let mut out = Vec::new();
                for key in gone {
                    if let Some((cluster, _)) = self.known.remove(&key) {
                        let r = cluster_ref(&key.0, &cluster);
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                }
                out
            }
        }
    }

    fn key(cred: &NodeSSHCredential) -> Option<(String, String)> {
        Some((cred.namespace()?, cred.metadata.name.clone()?))
    }

    fn applied(&mut self, cred: &NodeSSHCredential) -> Vec<ObjectRef<ProxmoxCluster>> {
        let Some(key) = Self::key(cred) else {
            return Vec::new();
        };
        let new = (cred.spec.cluster_ref.name.clone(), cred.metadata.generation);
        let target = cluster_ref(&key.0, &new.0);
        match self.known.insert(key.clone(), new.clone()) {
            None => vec![target],
            Some(old) if old == new => Vec::new(),
            Some((old_cluster, _)) if old_cluster != new.0 => {
                vec![target, cluster_ref(&key.0, &old_cluster)]
            }
            Some(_) => vec![target],
        }
    }
}

/// Runs the controller until `shutdown` resolves. `namespace` limits the watch to one
/// namespace. On `shutdown`, no new reconcile starts and running ones finish (or stop at
/// once when the context's [`AbortSignal`] fires).
pub async fn run_controller<P: ClusterPipeline>(
    ctx: Arc<Context<P>>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters: Api<ProxmoxCluster> = scoped_api(&client, namespace.as_deref());
    let creds: Api<NodeSSHCredential> = scoped_api(&client, namespace.as_deref());

    let (cluster_store, cluster_writer) = reflector::store();
    let cluster_stream = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(cluster_writer)
        .applied_objects()
        .predicate_filter(
            (predicates::generation as fn(&ProxmoxCluster) -> Option<u64>)
                .combine(predicates::annotations as fn(&ProxmoxCluster) -> Option<u64>)
                .combine(predicates::finalizers as fn(&ProxmoxCluster) -> Option<u64>),
            Default::default(),
        );

    // Credentials: every event, deletes included, goes through the tracker, which knows
    // the previous clusterRef of each credential.
    let (cred_store, cred_writer) = reflector::store();
    let mut tracker = CredentialTracker::default();
    // A changed NodeSSHCredential or Secret makes the next pass of its clusters a full one
    // (discovery again, everything read with the new settings), not a poll.
    let ctx_for_creds = ctx.clone();
    let ctx_for_secrets = ctx.clone();
    let cred_triggers = watcher(creds, watcher::Config::default())
        .default_backoff()
        .reflect(cred_writer)
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::debug!(error = %e, "NodeSSHCredential watch");
                    None
                }
            })
        })
        .flat_map(move |event| {
            let hits = tracker.on_event(&event);
            ctx_for_creds.forget_passes(&hits);
            futures::stream::iter(hits)
        });

    // Secrets: the operator may only `get` them (no list or watch), so the referenced
    // ones are polled by metadata (never their data) and a change triggers their clusters.
    let referenced = {
        let clusters = cluster_store.clone();
        let creds = cred_store.clone();
        move || {
            let mut keys = HashSet::new();
            for c in clusters.state() {
                let ns = c.namespace().unwrap_or_default();
                keys.extend(referenced_secrets(&c).into_iter().map(|n| (ns.clone(), n)));
            }
            for cred in creds.state() {
                let ns = cred.namespace().unwrap_or_default();
                keys.extend(
                    credential_secrets(&cred)
                        .into_iter()
                        .map(|n| (ns.clone(), n)),
                );
            }
            keys
        }
    };
    let store_for_secrets = cluster_store.clone();
    let creds_for_secrets = cred_store.clone();
    let secret_triggers =
        crate::secret_poll::changed_secrets(client.clone(), ctx.secret_poll_interval, referenced)
            .flat_map(move |(ns, name)| {
                let clusters = store_for_secrets.state();
                let creds = creds_for_secrets.state();
                let hits = clusters_for_secret(
                    &ns,
                    &name,
                    clusters.iter().map(AsRef::as_ref),
                    creds.iter().map(AsRef::as_ref),
                );
                ctx_for_secrets.forget_passes(&hits);
                futures::stream::iter(hits)
            });

    Controller::for_stream(cluster_stream, cluster_store)
        .reconcile_on(cred_triggers)
        .reconcile_on(secret_triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One kind of Kubernetes API call the operator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, with `/status` for the subresource.
    pub resource: &'static str,
    /// RBAC verb.
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
    }
}

/// Every Kubernetes API call the operator makes. The RBAC rules in deploy/ and the Helm
/// chart are checked against this list, and the reconcile tests check every request
/// they see is on it: a new call without its rule fails CI.
pub const KUBERNETES_API_CALLS: &[ApiCall] = &[
    // Controller watches (reflectors list and watch).
    call(API_GROUP, "proxmoxclusters", "list"),
    call(API_GROUP, "proxmoxclusters", "watch"),
    call(API_GROUP, "nodesshcredentials", "list"),
    call(API_GROUP, "nodesshcredentials", "watch"),
    // Secrets: get only (values, and metadata polled for changes), in the namespaces the
    // chart grants; never list or watch.
    call("", "secrets", "get"),
    // Finalizer add/remove (JSON patch), status by server-side apply.
    call(API_GROUP, "proxmoxclusters", "patch"),
    call(API_GROUP, "proxmoxclusters/status", "patch"),
    call(API_GROUP, "nodesshcredentials/status", "patch"),
    // Events (the recorder creates, then patches a series).
    call("events.k8s.io", "events", "create"),
    call("events.k8s.io", "events", "patch"),
    // The UID of namespace kube-system identifies the installation (resourceNames
    // kube-system only; not needed when --installation-id is given).
    call("", "namespaces", "get"),
    // Leader election (namespaced Role).
    call("coordination.k8s.io", "leases", "get"),
    call("coordination.k8s.io", "leases", "create"),
    call("coordination.k8s.io", "leases", "patch"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(ns: &str, name: &str, netbox_secret: &str) -> ProxmoxCluster {
        serde_json::from_value(json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1:8006"], "credentialsSecretRef": {"name": "pve"},
                            "tls": {"caSecretRef": {"name": "pve-ca", "key": "ca.crt"}}},
                "netbox": {"url": "https://nb", "tokenSecretRef": {"name": netbox_secret, "key": "token"}, "site": "dc1"}
            }
        }))
        .unwrap()
    }

    fn credential(
        ns: &str,
        name: &str,
        cluster: &str,
        secret: &str,
        generation: i64,
    ) -> NodeSSHCredential {
        serde_json::from_value(json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
            "metadata": {"name": name, "namespace": ns, "generation": generation},
            "spec": {"clusterRef": {"name": cluster}, "nodeName": "pve1", "username": "u",
                     "privateKeySecretRef": {"name": secret, "key": "id_ed25519"},
                     "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}
        }))
        .unwrap()
    }

    fn refs(ns: &str, names: &[&str]) -> Vec<ObjectRef<ProxmoxCluster>> {
        names.iter().map(|n| cluster_ref(ns, n)).collect()
    }

    #[test]
    fn jitter_stays_within_ten_percent_above_the_interval() {
        let interval = Duration::from_secs(600);
        let delays: Vec<Duration> = (0..500).map(|_| next_sync_delay(interval)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= interval && *d <= Duration::from_secs(660))
        );
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(
            max > min,
            "jitter spreads the clusters out: {min:?}..{max:?}"
        );
        // Below the minimum the interval is raised first.
        assert!(
            (0..100)
                .map(|_| next_sync_delay(Duration::from_secs(5)))
                .all(|d| { d >= MIN_INTERVAL && d <= Duration::from_secs(33) })
        );
    }

    #[test]
    fn backoff_doubles_from_15s_and_is_capped_at_the_interval() {
        let interval = Duration::from_secs(15 * 60);
        let secs: Vec<u64> = (1..=8)
            .map(|n| backoff_delay(n, interval).as_secs())
            .collect();
        assert_eq!(secs, vec![15, 30, 60, 120, 240, 480, 900, 900]);
        assert_eq!(backoff_delay(u32::MAX, interval), interval);
        assert_eq!(
            backoff_delay(3, Duration::from_secs(45)),
            Duration::from_secs(45)
        );
        assert_eq!(
            backoff_delay(1, Duration::from_secs(5)),
            BACKOFF_BASE,
            "never below 15 s"
        );
        assert_eq!(backoff_delay(0, interval), BACKOFF_BASE);
        assert_eq!(
            backoff_delay(u32::MAX, Duration::MAX),
            BACKOFF_BASE * 65536,
            "the doubling stops at 2^16 whatever the interval"
        );
    }

    #[test]
    fn permanent_failures_wait_for_the_interval_transient_ones_back_off() {
        use crate::netbox::client::NetBoxError;
        use crate::pve::client::PveError;
        use crate::secrets::SecretError;
        use crate::stage_errors::{ConfigError, NetBoxSyncError, ProxmoxReadError};

        let interval = Duration::from_secs(600);
        let invalid = Error::Stage(ConfigError::invalid_spec("spec.sync.interval", "5s").into());
        let key_missing = Error::Stage(
            ConfigError::Secret {
                field: "spec.netbox.tokenSecretRef".into(),
                source: SecretError::KeyMissing {
                    name: "nb".into(),
                    key: "token".into(),
                },
            }
            .into(),
        );
        let refused = Error::Stage(
            NetBoxSyncError::Api(NetBoxError::Auth {
                endpoint: "dcim/devices".into(),
                status: 401,
                message: "Invalid token".into(),
            })
            .into(),
        );
        let cleanup_refused = Error::Cleanup(
            ProxmoxReadError::Api(PveError::Unauthorized {
                path: "/version".into(),
            })
            .into(),
        );
        for permanent in [&invalid, &key_missing, &refused, &cleanup_refused] {
            assert!(permanent.is_permanent(), "{permanent}");
            let d = retry_delay(permanent, 1, interval);
            assert!(d >= interval, "{permanent}: {d:?}");
        }
        let unreachable = Error::Stage(
            ProxmoxReadError::Api(PveError::Timeout {
                path: "/nodes".into(),
            })
            .into(),
        );
        let netbox_down = Error::Cleanup(
            NetBoxSyncError::Api(NetBoxError::Status {
                endpoint: "dcim/devices".into(),
                status: 503,
                message: "unavailable".into(),
            })
            .into(),
        );
        for transient in [&unreachable, &netbox_down, &Error::MissingNamespace] {
            assert!(!transient.is_permanent(), "{transient}");
            assert_eq!(retry_delay(transient, 1, interval), BACKOFF_BASE);
            assert_eq!(retry_delay(transient, 3, interval), BACKOFF_BASE * 4);
        }
        // Through the finalizer's wrapper too, with the stage's reason as the label.
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            key_missing,
        )));
        assert!(wrapped.is_permanent());
        assert_eq!(wrapped.metric_label(), reasons::SECRET_KEY_MISSING);
        assert_eq!(
            wrapped.to_string(),
            "finalizer: failed to apply object: stage failed (SecretKeyMissing): spec.netbox.tokenSecretRef: Secret \"nb\" has no key \"token\""
        );
    }

    #[test]
    fn next_sync_delay_stays_bounded_for_huge_intervals() {
        let max = crate::config::MAX_SYNC_INTERVAL;
        for interval in [max, max + Duration::from_secs(1), Duration::MAX] {
            let d = next_sync_delay(interval);
            assert!(d >= max && d <= max + max / 10, "{interval:?} -> {d:?}");
        }
    }

    #[test]
    fn a_secret_maps_to_the_clusters_that_use_it_directly_or_through_credentials() {
        let clusters = [
            cluster("infra", "lab", "nb"),
            cluster("infra", "prod", "nb-prod"),
            cluster("other", "lab", "nb"),
        ];
        let creds = [
            credential("infra", "c1", "prod", "ssh-key", 1),
            credential("other", "c2", "lab", "ssh-key", 1),
        ];
        let hits = |ns: &str, name: &str| {
            let mut v: Vec<String> = clusters_for_secret(ns, name, &clusters, &creds)
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect();
            v.sort();
            v
        };
        assert_eq!(hits("infra", "nb"), vec!["infra/lab"]);
        assert_eq!(hits("infra", "pve"), vec!["infra/lab", "infra/prod"]);
        assert_eq!(hits("infra", "pve-ca"), vec!["infra/lab", "infra/prod"]);
        assert_eq!(hits("infra", "ssh-key"), vec!["infra/prod"]);
        assert_eq!(hits("other", "ssh-key"), vec!["other/lab"]);
        assert!(hits("infra", "unrelated").is_empty());
        assert!(
            hits("third", "nb").is_empty(),
            "no cross-namespace references"
        );
    }

    #[test]
    fn credential_events_trigger_old_and_new_clusters_including_deletes() {
        use watcher::Event as E;
        let mut t = CredentialTracker::default();
        let c1 = credential("infra", "c1", "lab", "k", 1);
        // Initial list: every credential's cluster once.
        assert!(t.on_event(&E::Init).is_empty());
        assert_eq!(
            t.on_event(&E::InitApply(c1.clone())),
            refs("infra", &["lab"])
        );
        assert!(t.on_event(&E::InitDone).is_empty());
        // Status-only update (same generation): nothing.
        assert!(t.on_event(&E::Apply(c1.clone())).is_empty());
        // Spec change: its cluster.
        let c1_g2 = credential("infra", "c1", "lab", "k2", 2);
        assert_eq!(t.on_event(&E::Apply(c1_g2)), refs("infra", &["lab"]));
        // clusterRef change: the new and the old cluster.
        let moved = credential("infra", "c1", "prod", "k2", 3);
        assert_eq!(
            t.on_event(&E::Apply(moved.clone())),
            refs("infra", &["prod", "lab"])
        );
        // Delete: the cluster it belonged to.
        assert_eq!(t.on_event(&E::Delete(moved)), refs("infra", &["prod"]));
        // A delete whose object carries a stale clusterRef still reaches the last known one.
        let c2 = credential("infra", "c2", "lab", "k", 1);
        t.on_event(&E::Apply(c2.clone()));
        t.on_event(&E::Apply(credential("infra", "c2", "prod", "k", 2)));
        assert_eq!(t.on_event(&E::Delete(c2)), refs("infra", &["lab", "prod"]));
    }

    #[test]
    fn credentials_gone_while_the_watch_was_down_count_as_deleted_after_a_relist() {
        use watcher::Event as E;
        let mut t = CredentialTracker::default();
        t.on_event(&E::Apply(credential("infra", "a", "lab", "k", 1)));
        t.on_event(&E::Apply(credential("infra", "b", "prod", "k", 1)));
        t.on_event(&E::Init);
        assert!(
            t.on_event(&E::InitApply(credential("infra", "a", "lab", "k", 1)))
                .is_empty()
        );
        assert_eq!(t.on_event(&E::InitDone), refs("infra", &["prod"]));
        // b is forgotten: a later re-list without it triggers nothing more.
        t.on_event(&E::Init);
        t.on_event(&E::InitApply(credential("infra", "a", "lab", "k", 1)));
        assert!(t.on_event(&E::InitDone).is_empty());
    }

    #[test]
    fn aborted_is_recognised_through_the_finalizer_wrapper() {
        use kube::runtime::finalizer::Error as F;
        let wrapped = Error::Finalizer(Box::new(F::ApplyFailed(Error::Aborted)));
        assert!(wrapped.is_aborted());
        assert_eq!(wrapped.metric_label(), "Aborted");
        let cleanup = Error::Finalizer(Box::new(F::CleanupFailed(Error::Cleanup(
            crate::stage_errors::NetBoxSyncError::Api(crate::netbox::client::NetBoxError::Config(
                "x".into(),
            ))
            .into(),
        ))));
        assert!(!cleanup.is_aborted());
        assert_eq!(cleanup.metric_label(), "CleanupFailed");
        assert_eq!(
            Error::Finalizer(Box::new(F::UnnamedObject)).metric_label(),
            "Finalizer"
        );
    }

    #[tokio::test]
    async fn abort_signal_fires_once_triggered_and_never_without_trigger() {
        let (trigger, signal) = AbortSignal::new();
        let waiting = tokio::spawn({
            let s = signal.clone();
            async move { s.aborted().await }
        });
        assert!(!signal.is_aborted());
        trigger.abort();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        let never = AbortSignal::never();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), never.aborted())
                .await
                .is_err()
        );
    }

    #[test]
    fn api_version_and_rbac_list_use_the_crd_group() {
        assert_eq!(ProxmoxCluster::group(&()), API_GROUP);
        assert_eq!(
            api_version::<ProxmoxCluster>(),
            "proxmox-netbox.io/v1alpha1"
        );
        assert_eq!(
            api_version::<NodeSSHCredential>(),
            "proxmox-netbox.io/v1alpha1"
        );
        assert!(
            KUBERNETES_API_CALLS
                .iter()
                .any(|c| c.group == API_GROUP && c.resource == "proxmoxclusters/status")
        );
    }

    #[test]
    fn ceph_health_and_storage_series() {
        assert_eq!(ceph_health_value("HEALTH_OK"), Some(0));
        assert_eq!(ceph_health_value("HEALTH_WARN"), Some(1));
        assert_eq!(ceph_health_value("HEALTH_ERR"), Some(2));
        assert_eq!(ceph_health_value("weird"), None);
        let pool = |name: &str, node: &str, shared: bool| crate::inventory::StoragePool {
            name: name.into(),
            node: node.into(),
            shared,
            total_bytes: Some(100),
            used_bytes: Some(10),
            ..Default::default()
        };
        let inv = Inventory {
            storage: vec![
                pool("local", "pve1", false),
                pool("local", "pve2", false),
                pool("ceph", "pve1", true),
                pool("ceph", "pve2", true),
            ],
            ..Default::default()
        };
        let s = storage_series("infra/lab", &inv);
        let names: Vec<(String, String)> = s
            .iter()
            .map(|(l, _, _)| (l.storage.clone(), l.node.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("local".into(), "pve1".into()),
                ("local".into(), "pve2".into()),
                ("ceph".into(), String::new())
            ]
        );
    }
}
