//! The Kubernetes controller: watches ProxmoxClusters, their NodeSSHCredentials and the
//! Secrets they reference, runs the pipeline and writes status, Events and metrics.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
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
    DeletionPolicy, NodeSSHCredential, NodeSSHCredentialStatus, ProxmoxCluster,
    ProxmoxClusterStatus,
};
use crate::events::{EventSpec, events_for};
use crate::metrics::{ClusterLabels, ErrorLabels, Metrics, ObjectLabels};
use crate::secrets::{KubeSecrets, SecretSource};
use crate::status::{
    NetBoxOutcome, PipelineOutcome, StageError, build_status, needs_write, suspended_status,
};

/// Finalizer that lets the operator apply the deletion policy before a ProxmoxCluster goes.
pub const FINALIZER: &str = "proxmox-netbox.io/cleanup";
/// Changing this annotation (any value, e.g. a timestamp) requests an immediate resync.
pub const RESYNC_ANNOTATION: &str = "proxmox-netbox.io/resync";
/// Field manager of the operator's server-side apply patches.
pub const FIELD_MANAGER: &str = "proxmox-netbox-operator";
/// Shortest sync interval accepted; shorter values are raised to it.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// First retry delay after a failed reconcile; doubles per consecutive failure.
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

/// The work done for one ProxmoxCluster: read Proxmox, discover hardware, sync NetBox.
pub trait ClusterPipeline: Send + Sync + 'static {
    /// Runs one full pass and reports what happened; never fails as a whole.
    fn run<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        credentials: &'a [NodeSSHCredential],
        secrets: &'a dyn SecretSource,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, PipelineOutcome>;

    /// Removes the NetBox objects owned for this cluster (deletion policy `Delete`) and
    /// returns a summary.
    fn delete_owned<'a>(
        &'a self,
        cluster: &'a ProxmoxCluster,
        secrets: &'a dyn SecretSource,
    ) -> BoxFuture<'a, Result<String, StageError>>;
}

/// Errors of the controller itself (the pipeline reports its own in the status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("cleanup of NetBox objects failed ({reason}): {message}")]
    Cleanup {
        /// Condition reason.
        reason: &'static str,
        /// Detail.
        message: String,
    },
}

impl Error {
    /// Stable label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Finalizer(_) => "Finalizer",
            Self::MissingNamespace => "MissingNamespace",
            Self::Cleanup { .. } => "CleanupFailed",
        }
    }
}

/// Shared state of the reconciles.
pub struct Context<P> {
    /// Kubernetes client.
    pub client: Client,
    /// The pipeline run for each cluster.
    pub pipeline: P,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Consecutive failures per cluster, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl<P: ClusterPipeline> Context<P> {
    /// Creates a context with the system clock.
    pub fn new(client: Client, pipeline: P, metrics: Arc<Metrics>, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pipeline,
            metrics,
            clock: Arc::new(SystemClock),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// The delay before the next periodic sync: the interval plus up to 10% jitter.
pub fn next_sync_delay(interval: Duration) -> Duration {
    let interval = interval.max(MIN_INTERVAL);
    let jitter_ms = rand::rng().random_range(0..=interval.as_millis() as u64 / 10);
    interval + Duration::from_millis(jitter_ms)
}

/// Exponential backoff after `failures` consecutive failures, capped at the interval.
pub fn backoff_delay(failures: u32, interval: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    (BACKOFF_BASE * factor).min(interval.max(MIN_INTERVAL))
}

fn cluster_key(cluster: &ProxmoxCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Reconciles one ProxmoxCluster (the entry point given to the kube-runtime Controller).
pub async fn reconcile<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<ProxmoxCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let key = cluster_key(&cluster);
    ctx.metrics
        .reconciles
        .get_or_create(&ClusterLabels {
            cluster: key.clone(),
        })
        .inc();
    let started = Instant::now();
    let result = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply(c, &api, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup(c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ClusterLabels {
            cluster: key.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::warn!(cluster = %key, error = %e, "reconcile failed");
    }
    result
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
        if needs_write(previous, &status, now) {
            patch_status(api, &name, &status).await?;
        }
        tracing::info!(cluster = %key, "sync suspended");
        return Ok(Action::await_change());
    }

    let creds_api: Api<NodeSSHCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let credentials: Vec<NodeSSHCredential> = creds_api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items
        .into_iter()
        .filter(|c| c.spec.cluster_ref.name == name)
        .collect();
    let secrets = KubeSecrets::new(ctx.client.clone(), &ns);
    tracing::info!(cluster = %key, credentials = credentials.len(), "sync started");
    let outcome = ctx
        .pipeline
        .run(&cluster, &credentials, &secrets, now)
        .await;

    let mut status = build_status(generation, previous, &outcome, now);
    status.last_resync_request = cluster.annotations().get(RESYNC_ANNOTATION).cloned();
    if needs_write(previous, &status, now) {
        patch_status(api, &name, &status).await?;
    } else {
        tracing::debug!(cluster = %key, "status unchanged apart from timestamps: not written");
    }
    for ev in events_for(previous, &status, &outcome) {
        publish(ctx, &cluster, &ev).await;
    }
    if let Some(discovery) = &outcome.discovery {
        update_credential_statuses(&creds_api, &credentials, discovery, now).await;
    }
    record_metrics(ctx, &key, &outcome, &status, now);

    let interval = crate::config::duration("spec.sync.interval", &cluster.spec.sync.interval)
        .unwrap_or(Duration::from_secs(15 * 60));
    let stage_failed = outcome.config_error.is_some()
        || outcome.proxmox_error.is_some()
        || matches!(outcome.netbox, NetBoxOutcome::Failed(_));
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        if stage_failed {
            let n = map.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        } else {
            map.remove(&key);
            0
        }
    };
    let delay = if failures > 0 {
        backoff_delay(failures, interval)
    } else {
        next_sync_delay(interval)
    };
    tracing::info!(
        cluster = %key,
        ready = outcome.fully_successful(),
        next_in_seconds = delay.as_secs(),
        "sync finished"
    );
    Ok(Action::requeue(delay))
}

async fn cleanup<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let key = cluster_key(&cluster);
    match cluster.spec.deletion_policy {
        DeletionPolicy::Orphan => {
            tracing::info!(cluster = %key, "deleted with deletionPolicy Orphan: NetBox left as is");
            Ok(Action::await_change())
        }
        DeletionPolicy::Delete => {
            let secrets = KubeSecrets::new(ctx.client.clone(), &ns);
            match ctx.pipeline.delete_owned(&cluster, &secrets).await {
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
                    Ok(Action::await_change())
                }
                Err(err) => {
                    publish(
                        ctx,
                        &cluster,
                        &EventSpec {
                            warning: true,
                            reason: err.reason.into(),
                            note: err.message.clone(),
                        },
                    )
                    .await;
                    Err(Error::Cleanup {
                        reason: err.reason,
                        message: err.message,
                    })
                }
            }
        }
    }
}

async fn patch_status(
    api: &Api<ProxmoxCluster>,
    name: &str,
    status: &ProxmoxClusterStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1",
        "kind": "ProxmoxCluster",
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
            "apiVersion": "proxmox-netbox.io/v1alpha1",
            "kind": "NodeSSHCredential",
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

fn record_metrics<P>(
    ctx: &Context<P>,
    key: &str,
    outcome: &PipelineOutcome,
    status: &ProxmoxClusterStatus,
    now: DateTime<Utc>,
) {
    let m = &ctx.metrics;
    let mut reasons_seen = BTreeSet::new();
    for err in [
        &outcome.config_error,
        &outcome.proxmox_error,
        &outcome.permission_warning,
    ]
    .into_iter()
    .flatten()
    {
        reasons_seen.insert(err.reason.to_string());
    }
    for f in &status.read_failures {
        reasons_seen.insert(f.reason.clone());
    }
    for node in outcome.discovery.iter().flatten() {
        if let Some(w) = &node.warning {
            reasons_seen.insert(w.code.clone());
        }
    }
    if let NetBoxOutcome::Failed(err) = &outcome.netbox {
        reasons_seen.insert(err.reason.to_string());
    }
    if let NetBoxOutcome::Done(s) = &outcome.netbox {
        if s.failed > 0 {
            reasons_seen.insert(reasons::PARTIAL_SYNC.into());
        }
        let summary = [
            ("created", s.created),
            ("updated", s.updated),
            ("unchanged", s.unchanged),
            ("deleted", s.deleted),
            ("stale", s.stale),
            ("failed", s.failed),
        ];
        for (action, n) in summary {
            m.objects
                .get_or_create(&ObjectLabels {
                    cluster: key.into(),
                    kind: "all".into(),
                    action: action.into(),
                })
                .set(n);
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
    if let Some(s) = &status.summary {
        for (kind, n) in [
            ("nodes", s.nodes),
            ("vms", s.vms),
            ("containers", s.containers),
            ("templates", s.templates),
            ("interfaces", s.interfaces),
            ("ipAddresses", s.ip_addresses),
            ("disks", s.disks),
            ("storagePools", s.storage_pools),
        ] {
            m.inventory
                .get_or_create(&ObjectLabels {
                    cluster: key.into(),
                    kind: kind.into(),
                    action: "read".into(),
                })
                .set(n);
        }
    }
    if outcome.fully_successful() {
        m.last_success_timestamp
            .get_or_create(&ClusterLabels {
                cluster: key.into(),
            })
            .set(now.timestamp() as f64);
    }
}

/// Requeue policy when `reconcile` itself fails (Kubernetes API errors).
pub fn error_policy<P: ClusterPipeline>(
    cluster: Arc<ProxmoxCluster>,
    error: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    let key = cluster_key(&cluster);
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            cluster: key.clone(),
            reason: error.metric_label().into(),
        })
        .inc();
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    Action::requeue(backoff_delay(failures, Duration::from_secs(15 * 60)))
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

/// Runs the controller until shutdown. `namespace` limits the watch to one namespace.
pub async fn run_controller<P: ClusterPipeline>(
    ctx: Arc<Context<P>>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters: Api<ProxmoxCluster> = scoped_api(&client, namespace.as_deref());
    let creds: Api<NodeSSHCredential> = scoped_api(&client, namespace.as_deref());
    let secrets: Api<PartialObjectMeta<Secret>> = scoped_api(&client, namespace.as_deref());

    let (cluster_store, cluster_writer) = reflector::store();
    let cluster_stream = reflector(
        cluster_writer,
        watcher(clusters, watcher::Config::default()),
    )
    .applied_objects()
    .predicate_filter(
        (predicates::generation as fn(&ProxmoxCluster) -> Option<u64>)
            .combine(predicates::annotations as fn(&ProxmoxCluster) -> Option<u64>)
            .combine(predicates::finalizers as fn(&ProxmoxCluster) -> Option<u64>),
        Default::default(),
    );

    let (cred_store, cred_writer) = reflector::store();
    let cred_stream = reflector(cred_writer, watcher(creds, watcher::Config::default()))
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    // Secrets are watched by metadata only: the controller never caches Secret data.
    let secret_stream = watcher(secrets, watcher::Config::default())
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());

    let store_for_secrets = cluster_store.clone();
    let creds_for_secrets = cred_store.clone();
    Controller::for_stream(cluster_stream, cluster_store)
        .watches_stream(cred_stream, |cred: NodeSSHCredential| {
            let ns = cred.namespace()?;
            Some(ObjectRef::<ProxmoxCluster>::new(&cred.spec.cluster_ref.name).within(&ns))
        })
        .watches_stream(secret_stream, move |secret| {
            let ns = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            let mut hits: HashSet<ObjectRef<ProxmoxCluster>> = HashSet::new();
            for c in store_for_secrets.state() {
                if c.namespace().as_deref() == Some(ns.as_str())
                    && referenced_secrets(&c).contains(&name)
                {
                    hits.insert(ObjectRef::from(c.as_ref()));
                }
            }
            for cred in creds_for_secrets.state() {
                if cred.namespace().as_deref() == Some(ns.as_str())
                    && credential_secrets(&cred).contains(&name)
                {
                    hits.insert(
                        ObjectRef::<ProxmoxCluster>::new(&cred.spec.cluster_ref.name).within(&ns),
                    );
                }
            }
            hits
        })
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
    call("proxmox-netbox.io", "proxmoxclusters", "list"),
    call("proxmox-netbox.io", "proxmoxclusters", "watch"),
    call("proxmox-netbox.io", "nodesshcredentials", "list"),
    call("proxmox-netbox.io", "nodesshcredentials", "watch"),
    // Secrets: metadata-only watch to trigger reconciles, and get to read values.
    call("", "secrets", "list"),
    call("", "secrets", "watch"),
    call("", "secrets", "get"),
    // Finalizer add/remove (JSON patch), status by server-side apply.
    call("proxmox-netbox.io", "proxmoxclusters", "patch"),
    call("proxmox-netbox.io", "proxmoxclusters/status", "patch"),
    call("proxmox-netbox.io", "nodesshcredentials/status", "patch"),
    // Events (the recorder creates, then patches a series).
    call("events.k8s.io", "events", "create"),
    call("events.k8s.io", "events", "patch"),
    // Leader election (namespaced Role).
    call("coordination.k8s.io", "leases", "get"),
    call("coordination.k8s.io", "leases", "create"),
    call("coordination.k8s.io", "leases", "patch"),
];
