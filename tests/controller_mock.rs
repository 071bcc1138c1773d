//! Reconcile tests against a mocked Kubernetes API server (tower-test): every request the
//! controller makes is asserted (method, path, body).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::Layer;

use proxmox_netbox_operator::conditions::reasons;
use proxmox_netbox_operator::controller::{
    AbortSignal, Clock, ClusterPipeline, Context, Error, FINALIZER, KeptPass, RESYNC_ANNOTATION,
    error_policy, reconcile,
};
use proxmox_netbox_operator::crd::{NodeSSHCredential, NodeWarning, ProxmoxCluster, SyncSummary};
use proxmox_netbox_operator::inventory::{
    CephInfo, Inventory, Node, ReadFailure, ReadOutcome, ReadScope, StoragePool,
};
use proxmox_netbox_operator::metrics::Metrics;
use proxmox_netbox_operator::netbox::client::NetBoxError;
use proxmox_netbox_operator::netbox::report::KindCounts;
use proxmox_netbox_operator::pipeline::{LastPass, PipelineRun, StageObserver};
use proxmox_netbox_operator::pve::client::PveError;
use proxmox_netbox_operator::secrets::{SecretError, SecretSource};
use proxmox_netbox_operator::stage_errors::{
    ConfigError, NetBoxSyncError, ProxmoxReadError, StageError,
};
use proxmox_netbox_operator::status::{
    ExternalCalls, NetBoxOutcome, NodeDiscovery, PipelineOutcome,
};
use proxmox_netbox_operator::watch::{PollRecord, WatchMemory};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct FixedClock(DateTime<Utc>);
impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A pipeline that returns a prepared outcome and records what it was given. Like the
/// real one, it tells the observer what it found before the NetBox stage (unless the
/// config or the Proxmox read failed); `hang` makes it never finish after that.
struct FakePipeline {
    outcome: PipelineOutcome,
    runs: Mutex<Vec<Vec<String>>>,
    hang: bool,
    /// Panics in `run`, as a bug on some input would.
    panic: bool,
    delete_result: Result<String, StageError>,
    deletes: Mutex<usize>,
    /// Passes run with a kept pass (polls).
    targeted: Mutex<usize>,
}

impl ClusterPipeline for FakePipeline {
    fn run<'a>(
        &'a self,
        _cluster: &'a ProxmoxCluster,
        credentials: &'a [NodeSSHCredential],
        _secrets: &'a dyn SecretSource,
        observer: &'a dyn StageObserver,
        _installation: &'a str,
        last: Option<&'a LastPass>,
        _now: DateTime<Utc>,
    ) -> BoxFuture<'a, PipelineRun> {
        if last.is_some() {
            *self.targeted.lock().unwrap() += 1;
        }
        self.runs.lock().unwrap().push(
            credentials
                .iter()
                .map(|c| c.spec.node_name.clone())
                .collect(),
        );
        Box::pin(async move {
            assert!(
                !self.panic,
                "index out of bounds: the len is 0 but the index is 7"
            );
            // A targeted pass, like the real one, reports nothing before its end.
            if last.is_none()
                && self.outcome.config_error.is_none()
                && self.outcome.proxmox_error.is_none()
            {
                let observed = PipelineOutcome {
                    netbox: NetBoxOutcome::InProgress,
                    ..self.outcome.clone()
                };
                observer.observed(&observed).await;
            }
            if self.hang {
                std::future::pending::<()>().await;
            }
            PipelineRun {
                outcome: self.outcome.clone(),
                ..Default::default()
            }
        })
    }

    fn delete_owned<'a>(
        &'a self,
        _cluster: &'a ProxmoxCluster,
        _secrets: &'a dyn SecretSource,
        _installation: &'a str,
    ) -> BoxFuture<'a, Result<String, StageError>> {
        *self.deletes.lock().unwrap() += 1;
        Box::pin(async move { self.delete_result.clone() })
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn cluster(extra_spec: Value, finalizers: bool, status: Option<Value>) -> ProxmoxCluster {
    let mut spec = json!({
        "proxmox": {"endpoints": ["https://pve1.example.com:8006"], "credentialsSecretRef": {"name": "pve"}},
        "netbox": {"url": "https://netbox.example.com", "tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let mut obj = json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1",
        "kind": "ProxmoxCluster",
        "metadata": {"name": "lab", "namespace": "infra", "generation": 3, "uid": "u-1", "resourceVersion": "7"},
        "spec": spec,
    });
    if finalizers {
        obj["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if let Some(s) = status {
        obj["status"] = s;
    }
    serde_json::from_value(obj).unwrap()
}

fn complete_inventory() -> Inventory {
    let mut inv = Inventory {
        pve_version: Some("9.1.3".into()),
        nodes: vec![Node {
            name: "pve1".into(),
            online: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    inv.completeness
        .record(ReadScope::ClusterStatus, ReadOutcome::Complete);
    inv.completeness
        .record(ReadScope::NodeGuests("pve1".into()), ReadOutcome::Complete);
    inv
}

fn synced_outcome(created: i64) -> PipelineOutcome {
    PipelineOutcome {
        inventory: Some(complete_inventory()),
        netbox: NetBoxOutcome::Done(SyncSummary {
            mode: "Sync".into(),
            created,
            read_requests: 12,
            write_requests: 2,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn context(outcome: PipelineOutcome) -> (Arc<Context<FakePipeline>>, Handle) {
    let (ctx, handle, _registry) = context_with_registry(outcome);
    (ctx, handle)
}

fn context_with_registry(
    outcome: PipelineOutcome,
) -> (Arc<Context<FakePipeline>>, Handle, Registry) {
    let (ctx, handle, registry) = build_context(pipeline(outcome));
    (Arc::new(ctx), handle, registry)
}

fn pipeline(outcome: PipelineOutcome) -> FakePipeline {
    FakePipeline {
        outcome,
        runs: Mutex::new(Vec::new()),
        hang: false,
        panic: false,
        delete_result: Ok("deleted 3 objects".to_string()),
        deletes: Mutex::new(0),
        targeted: Mutex::new(0),
    }
}

fn build_context(pipeline: FakePipeline) -> (Context<FakePipeline>, Handle, Registry) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let client = Client::new(metrics.kubernetes.layer(service), "default");
    let mut ctx = Context::new(
        client,
        pipeline,
        metrics.reconcile,
        Reporter {
            controller: "proxmox-netbox-operator".into(),
            instance: Some("test".into()),
        },
    );
    ctx.clock = Arc::new(FixedClock(now()));
    (ctx, handle, registry)
}

async fn next_request(
    handle: &mut Handle,
) -> (
    Request<Value>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) =
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
            .await
            .expect("the controller made no further request")
            .expect("service dropped");
    assert_listed(&req);
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (Request::from_parts(parts, value), send)
}

/// Every request must be one of the calls the RBAC rules are checked against.
fn assert_listed<B>(req: &Request<B>) {
    use proxmox_netbox_operator::controller::KUBERNETES_API_CALLS;
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => panic!("unexpected path {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        other => other,
    };
    let (resource, has_name) = match rest {
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        _ => panic!("unexpected path {path}"),
    };
    let watching = req.uri().query().unwrap_or_default().contains("watch=true");
    let verb = match (req.method().as_str(), has_name, watching) {
        ("GET", _, true) => "watch",
        ("GET", true, _) => "get",
        ("GET", false, _) => "list",
        ("POST", _, _) => "create",
        ("PATCH", _, _) => "patch",
        ("PUT", _, _) => "update",
        ("DELETE", _, _) => "delete",
        (m, _, _) => panic!("unexpected method {m}"),
    };
    assert!(
        KUBERNETES_API_CALLS
            .iter()
            .any(|c| c.group == group && c.resource == resource && c.verb == verb),
        "{verb} {group}/{resource} is not in KUBERNETES_API_CALLS (and so not in the RBAC rules)"
    );
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn credential_list() -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredentialList", "metadata": {},
        "items": [
            {"apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
             "metadata": {"name": "lab-pve1", "namespace": "infra"},
             "spec": {"clusterRef": {"name": "lab"}, "nodeName": "pve1", "username": "d",
                      "passwordSecretRef": {"name": "s", "key": "p"},
                      "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}},
            {"apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
             "metadata": {"name": "other-pve9", "namespace": "infra"},
             "spec": {"clusterRef": {"name": "other"}, "nodeName": "pve9", "username": "d",
                      "passwordSecretRef": {"name": "s", "key": "p"},
                      "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}}
        ]
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The status the body of a status patch carries.
fn patched_status(req: &Request<Value>) -> Value {
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/proxmoxclusters/lab/status"
    );
    let query = req.uri().query().unwrap();
    assert!(
        query.contains("fieldManager=proxmox-netbox-operator"),
        "{query}"
    );
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        req.headers()["content-type"],
        "application/apply-patch+yaml"
    );
    assert_eq!(req.body()["apiVersion"], "proxmox-netbox.io/v1alpha1");
    assert_eq!(req.body()["kind"], "ProxmoxCluster");
    req.body()["status"].clone()
}

fn echo_status(send: tower_test::mock::SendResponse<Response<Body>>, status: &Value) {
    respond(
        send,
        serde_json::to_value(cluster(json!({}), true, Some(status.clone()))).unwrap(),
    );
}

/// Answers every request like the API server would until `task` ends; returns them as
/// (method, path, body) in order.
async fn serve_all<T>(
    handle: &mut Handle,
    task: &tokio::task::JoinHandle<T>,
) -> Vec<(http::Method, String, Value)> {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        let Ok(Some((req, send))) = next else {
            if task.is_finished() {
                return seen;
            }
            continue;
        };
        assert_listed(&req);
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let path = parts.uri.path().to_string();
        match (&parts.method, path.as_str()) {
            (&http::Method::GET, p) if p.ends_with("/nodesshcredentials") => {
                respond(send, credential_list())
            }
            (&http::Method::PATCH, p) if p.ends_with("/proxmoxclusters/lab/status") => {
                echo_status(send, &body["status"])
            }
            (&http::Method::PATCH, p) if p.contains("/nodesshcredentials/") => {
                let mut cred = credential_list()["items"][0].clone();
                cred["status"] = body["status"].clone();
                respond(send, cred)
            }
            (&http::Method::POST, p) if p.ends_with("/events") => respond(send, body.clone()),
            (m, p) => panic!("unexpected request {m} {p}"),
        }
        seen.push((parts.method, path, body));
    }
}

async fn assert_no_more_requests(handle: &mut Handle) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "an unexpected request was made"
    );
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_and_nothing_else() {
    let (ctx, mut handle) = context(synced_outcome(1));
    let obj = Arc::new(cluster(json!({}), false, None));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/proxmoxclusters/lab"
    );
    let ops = req.body().as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["op"] == "add" && op["value"] == json!([FINALIZER])),
        "{ops:?}"
    );
    respond(
        send,
        serde_json::to_value(cluster(json!({}), true, None)).unwrap(),
    );

    task.await.unwrap().unwrap();
    assert!(
        ctx.pipeline.runs.lock().unwrap().is_empty(),
        "no sync before the finalizer is in place"
    );
}

#[tokio::test]
async fn successful_sync_writes_the_intermediate_then_the_final_status_and_an_event() {
    let mut outcome = synced_outcome(4);
    outcome.discovery = Some(vec![NodeDiscovery {
        node: "pve1".into(),
        address: Some("10.0.0.1".into()),
        hardware: None,
        warning: Some(NodeWarning {
            code: "AuthFailed".into(),
            message: "the node refused the key".into(),
        }),
    }]);
    let (ctx, mut handle) = context(outcome);
    let obj = Arc::new(cluster(json!({}), true, None));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    // 1. NodeSSHCredentials are listed in the cluster's namespace.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/nodesshcredentials"
    );
    respond(send, credential_list());

    // 2. Intermediate status, before the NetBox sync: per-node facts and warnings, the
    //    inventory, Ready/NetBoxSynced Unknown (Reconciling), no observedGeneration yet.
    let (req, send) = next_request(&mut handle).await;
    let mid = patched_status(&req);
    assert!(mid.get("observedGeneration").is_none(), "{mid}");
    assert!(mid.get("lastSyncTime").is_none(), "{mid}");
    assert!(
        mid.get("sync").is_none(),
        "no sync summary before the sync: {mid}"
    );
    assert_eq!(mid["nodes"][0]["name"], "pve1");
    assert_eq!(mid["nodes"][0]["warning"]["code"], "AuthFailed");
    assert_eq!(mid["summary"]["nodes"], 1);
    for t in ["Ready", "NetBoxSynced"] {
        let c = condition(&mid, t);
        assert_eq!(c["status"], "Unknown", "{t}");
        assert_eq!(c["reason"], reasons::RECONCILING, "{t}");
        assert_eq!(c["observedGeneration"], 3, "{t}");
    }
    assert_eq!(condition(&mid, "ProxmoxReachable")["status"], "True");
    assert_eq!(
        condition(&mid, "HardwareDiscovered")["reason"],
        reasons::DISCOVERY_WARNINGS
    );
    echo_status(send, &mid);

    // 3. The credential's status, right after discovery.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/nodesshcredentials/lab-pve1/status"
    );
    assert_eq!(req.body()["apiVersion"], "proxmox-netbox.io/v1alpha1");
    assert_eq!(req.body()["kind"], "NodeSSHCredential");
    let ready = &req.body()["status"]["conditions"][0];
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "AuthFailed");
    respond(send, req.body().clone());

    // 4. Final status after the sync: same field manager, forced, Ready True.
    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    assert_eq!(status["observedGeneration"], 3);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::SYNCED);
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(condition(&status, "NetBoxSynced")["status"], "True");
    assert_eq!(status["lastSyncTime"], "2026-11-22T12:00:00Z");
    assert_eq!(status["lastSuccessfulSyncTime"], "2026-11-22T12:00:00Z");
    assert_eq!(status["summary"]["nodes"], 1);
    assert_eq!(status["sync"]["created"], 4);
    assert_eq!(status["nodes"][0]["warning"]["code"], "AuthFailed");
    assert_eq!(condition(&status, "Degraded")["status"], "True");
    echo_status(send, &status);

    // 5. Events: the discovery warning, then a Normal event for the transition to Ready.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/infra/events"
    );
    assert_eq!(req.body()["type"], "Warning");
    assert_eq!(req.body()["reason"], "AuthFailed");
    respond(send, req.body().clone());
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.body()["type"], "Normal");
    assert_eq!(req.body()["reason"], reasons::SYNCED);
    assert_eq!(req.body()["regarding"]["name"], "lab");
    respond(send, req.body().clone());

    let action = task.await.unwrap().unwrap();
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
    assert_eq!(
        *ctx.pipeline.runs.lock().unwrap(),
        vec![vec!["pve1".to_string()]],
        "only this cluster's credentials are passed"
    );
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn spec_change_keeps_the_old_observed_generation_until_the_sync_is_done() {
    let outcome = synced_outcome(0);
    // Status of generation 2, Ready True; the object is now at generation 3.
    let prev = proxmox_netbox_operator::status::build_status(
        Some(2),
        None,
        &outcome,
        now() - chrono::TimeDelta::minutes(5),
    );
    let (ctx, mut handle) = context(outcome);
    let obj = Arc::new(cluster(
        json!({}),
        true,
        Some(serde_json::to_value(&prev).unwrap()),
    ));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));
    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());

    let (req, send) = next_request(&mut handle).await;
    let mid = patched_status(&req);
    assert_eq!(mid["observedGeneration"], 2, "generation 3 is not done yet");
    let ready = condition(&mid, "Ready");
    assert_eq!(ready["status"], "Unknown");
    assert_eq!(ready["reason"], reasons::RECONCILING);
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(mid["lastSyncTime"], "2026-11-22T11:55:00Z");
    echo_status(send, &mid);

    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["observedGeneration"], 3);
    assert_eq!(status["lastSyncTime"], "2026-11-22T12:00:00Z");
    echo_status(send, &status);

    task.await.unwrap().unwrap();
    // Ready was True before and after the pass and nothing was written: no Event.
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn resync_with_nothing_changed_writes_no_status_and_no_event() {
    let outcome = synced_outcome(0);
    let (ctx, mut handle) = context(outcome.clone());
    // The previous status is what this very outcome produces, written a minute ago.
    let prev = proxmox_netbox_operator::status::build_status(
        Some(3),
        None,
        &outcome,
        now() - chrono::TimeDelta::minutes(1),
    );
    let obj = Arc::new(cluster(
        json!({}),
        true,
        Some(serde_json::to_value(&prev).unwrap()),
    ));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::GET);
    respond(send, credential_list());

    task.await.unwrap().unwrap();
    // Neither the intermediate nor the final status is written, and no Event.
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn resync_annotation_is_echoed_in_last_resync_request() {
    let outcome = synced_outcome(0);
    let prev = proxmox_netbox_operator::status::build_status(
        Some(3),
        None,
        &outcome,
        now() - chrono::TimeDelta::minutes(1),
    );
    let (ctx, mut handle) = context(outcome);
    let mut obj = cluster(json!({}), true, Some(serde_json::to_value(&prev).unwrap()));
    obj.metadata.annotations = Some(BTreeMap::from([(
        RESYNC_ANNOTATION.to_string(),
        "1764000000".to_string(),
    )]));
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());

    // Nothing else changed: no intermediate write; the final one carries the value.
    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    assert_eq!(status["lastResyncRequest"], "1764000000");
    assert_eq!(status["lastSyncTime"], "2026-11-22T12:00:00Z");
    echo_status(send, &status);
    task.await.unwrap().unwrap();
    assert_eq!(
        ctx.pipeline.runs.lock().unwrap().len(),
        1,
        "a full sync ran"
    );
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn secret_problem_becomes_a_condition_naming_the_field_and_a_warning_event() {
    let outcome = PipelineOutcome {
        config_error: Some(ConfigError::Secret {
            field: "spec.netbox.tokenSecretRef".into(),
            source: SecretError::KeyMissing {
                name: "nb".into(),
                key: "token".into(),
            },
        }),
        ..Default::default()
    };
    let (ctx, mut handle) = context(outcome);
    let obj = Arc::new(cluster(json!({}), true, None));
    let task = tokio::spawn(reconcile(obj.clone(), ctx.clone()));

    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());

    // Nothing was observed: only the final status is written.
    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::SECRET_KEY_MISSING);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.netbox.tokenSecretRef")
    );
    let hw = condition(&status, "HardwareDiscovered");
    assert_eq!(
        hw["status"], "Unknown",
        "kept in the patch on a config error"
    );
    assert_eq!(hw["reason"], reasons::NOT_RUN);
    assert!(status.get("lastSuccessfulSyncTime").is_none());
    echo_status(send, &status);

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.body()["type"], "Warning");
    assert_eq!(req.body()["reason"], reasons::SECRET_KEY_MISSING);
    respond(send, req.body().clone());

    // The typed failure reaches the error policy, with its cause.
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.metric_label(), reasons::SECRET_KEY_MISSING);
    assert!(err.is_permanent(), "{err}");
    let cause = std::iter::successors(std::error::Error::source(&err), |e| e.source())
        .find_map(|e| e.downcast_ref::<SecretError>());
    assert!(
        matches!(cause, Some(SecretError::KeyMissing { key, .. }) if key == "token"),
        "{err:?}"
    );
    // A missing key cannot heal by retrying: the next pass comes at the 15 min interval
    // (the default: the spec was not resolved), or when the Secret changes, not after the
    // 15 s backoff of a transient failure.
    let action = error_policy(obj, &err, ctx.clone());
    let after = requeue_after(&action);
    assert!(
        after >= Duration::from_secs(15 * 60) && after <= Duration::from_secs(990),
        "{action:?}"
    );
    assert_eq!(ctx.failures.lock().unwrap().get("infra/lab"), Some(&1));
}

/// The delay of a requeue action, read from its debug form (`requeue_after: Some(…s)`).
fn requeue_after(action: &impl std::fmt::Debug) -> Duration {
    let text = format!("{action:?}");
    let secs = text
        .split("Some(")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no requeue delay in {text}"));
    Duration::from_secs_f64(secs)
}

#[tokio::test]
async fn suspended_cluster_is_not_synced_says_so_and_publishes_one_event() {
    let (ctx, mut handle) = context(synced_outcome(1));
    let obj = Arc::new(cluster(json!({"sync": {"suspend": true}}), true, None));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    let ready = condition(&status, "Ready").clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::SUSPENDED);
    echo_status(send, &status);

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.body()["type"], "Normal");
    assert_eq!(req.body()["reason"], reasons::SUSPENDED);
    respond(send, req.body().clone());

    task.await.unwrap().unwrap();
    assert!(ctx.pipeline.runs.lock().unwrap().is_empty());

    // Reconciled again while still suspended: nothing is written, no second Event.
    let suspended: proxmox_netbox_operator::crd::ProxmoxClusterStatus =
        serde_json::from_value(status).unwrap();
    let mut obj = cluster(json!({"sync": {"suspend": true}}), true, None);
    obj.status = Some(suspended.clone());
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    let seen = serve_all(&mut handle, &task).await;
    assert!(seen.is_empty(), "{seen:?}");
    task.await.unwrap().unwrap();

    // Resumed: a Resumed Event first, then the sync runs.
    let mut obj = cluster(json!({}), true, None);
    obj.status = Some(suspended);
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    let seen = serve_all(&mut handle, &task).await;
    task.await.unwrap().unwrap();
    assert_eq!(seen[0].0, http::Method::POST);
    assert_eq!(seen[0].2["reason"], reasons::RESUMED, "{seen:?}");
    assert_eq!(seen[1].0, http::Method::GET);
    assert_eq!(
        seen.iter()
            .filter(|(_, _, b)| b["reason"] == reasons::RESUMED)
            .count(),
        1
    );
    assert_eq!(ctx.pipeline.runs.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn deletion_with_delete_policy_cleans_up_then_removes_the_finalizer() {
    let (ctx, mut handle) = context(synced_outcome(0));
    let mut obj = cluster(json!({"deletionPolicy": "Delete"}), true, None);
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.body()["reason"], "Deleted");
    assert_eq!(req.body()["note"], "deleted 3 objects");
    respond(send, req.body().clone());

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    let ops = req.body().as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{ops:?}"
    );
    respond(
        send,
        serde_json::to_value(cluster(json!({}), false, None)).unwrap(),
    );

    task.await.unwrap().unwrap();
    assert_eq!(*ctx.pipeline.deletes.lock().unwrap(), 1);
}

fn deleting(policy: &str) -> ProxmoxCluster {
    let mut obj = cluster(json!({"deletionPolicy": policy}), true, None);
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    obj
}

#[tokio::test]
async fn deletion_with_orphan_policy_deletes_nothing_and_removes_the_finalizer() {
    let (ctx, mut handle, registry) = context_with_registry(synced_outcome(0));
    // What the controller kept about the cluster is dropped with it.
    ctx.failures.lock().unwrap().insert("infra/lab".into(), 3);
    ctx.metrics
        .last_success_timestamp
        .get_or_create(
            &proxmox_netbox_operator::controller::metrics::ClusterLabels {
                cluster: "infra/lab".into(),
            },
        )
        .set(1.0);
    let task = tokio::spawn(reconcile(Arc::new(deleting("Orphan")), ctx.clone()));

    // The first and only request removes the finalizer: no Event, no NetBox deletion.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/proxmoxclusters/lab"
    );
    let ops = req.body().as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{ops:?}"
    );
    respond(
        send,
        serde_json::to_value(cluster(json!({}), false, None)).unwrap(),
    );
    task.await.unwrap().unwrap();
    assert_eq!(
        *ctx.pipeline.deletes.lock().unwrap(),
        0,
        "NetBox left as is"
    );
    assert!(ctx.pipeline.runs.lock().unwrap().is_empty());
    assert!(
        ctx.failures.lock().unwrap().is_empty(),
        "failures forgotten"
    );
    let metrics = proxmox_netbox_operator::metrics::render(&registry);
    assert!(
        !metrics.contains("proxmox_netbox_last_success_timestamp_seconds{"),
        "{metrics}"
    );
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn failed_delete_cleanup_keeps_the_finalizer_and_says_why() {
    let mut p = pipeline(synced_outcome(0));
    p.delete_result = Err(StageError::NetBoxSync(NetBoxSyncError::Api(
        NetBoxError::Transport {
            endpoint: "dcim/devices".into(),
            message: "connection refused".into(),
        },
    )));
    let (ctx, mut handle, _registry) = build_context(p);
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(reconcile(Arc::new(deleting("Delete")), ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.body()["type"], "Warning");
    assert_eq!(req.body()["reason"], reasons::NETBOX_FAILED);
    assert_eq!(
        req.body()["note"],
        "no answer from NetBox on dcim/devices: connection refused"
    );
    respond(send, req.body().clone());

    // The status says why and how to let the resource go.
    let (req, send) = next_request(&mut handle).await;
    let status = patched_status(&req);
    let ready = condition(&status, "Ready").clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::NETBOX_FAILED);
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("no answer from NetBox on dcim/devices"),
        "{message}"
    );
    assert!(
        message.contains("spec.deletionPolicy to Orphan"),
        "{message}"
    );
    echo_status(send, &status);

    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.metric_label(), "CleanupFailed");
    assert!(err.to_string().contains("NetBoxFailed"), "{err}");
    // No finalizer patch: the resource stays until cleanup succeeds.
    assert_no_more_requests(&mut handle).await;
    // error_policy retries with backoff.
    let action = error_policy(Arc::new(deleting("Delete")), &err, ctx.clone());
    assert!(format!("{action:?}").contains("15s"), "{action:?}");
}

#[tokio::test]
async fn a_panicking_reconcile_fails_only_its_cluster_and_says_so() {
    let mut p = pipeline(synced_outcome(0));
    p.panic = true;
    let (ctx, mut handle, _registry) = build_context(p);
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));
    let seen = serve_all(&mut handle, &task).await;
    // The task itself did not panic: the reconcile returned an error.
    let err = task.await.expect("the panic is caught").unwrap_err();
    assert_eq!(err.metric_label(), reasons::RECONCILE_PANICKED);
    assert!(err.to_string().contains("index out of bounds"), "{err}");
    let event = seen
        .iter()
        .find(|(m, _, b)| *m == http::Method::POST && b["reason"] == reasons::RECONCILE_PANICKED)
        .unwrap_or_else(|| panic!("no ReconcilePanicked Event: {seen:?}"));
    assert_eq!(event.2["type"], "Warning");
    let status = seen
        .iter()
        .find(|(m, _, b)| *m == http::Method::PATCH && b.get("status").is_some())
        .map(|(_, _, b)| b["status"].clone())
        .unwrap_or_else(|| panic!("no status write: {seen:?}"));
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::RECONCILE_PANICKED);
    // Retried with backoff like any other failure.
    let action = error_policy(Arc::new(cluster(json!({}), true, None)), &err, ctx.clone());
    assert!(format!("{action:?}").contains("15s"), "{action:?}");
}

#[tokio::test]
async fn the_skip_cleanup_annotation_lets_a_delete_policy_cluster_go_without_cleanup() {
    let mut p = pipeline(synced_outcome(0));
    p.delete_result = Err(StageError::NetBoxSync(NetBoxSyncError::Api(
        NetBoxError::Transport {
            endpoint: "dcim/devices".into(),
            message: "connection refused".into(),
        },
    )));
    let (ctx, mut handle, _registry) = build_context(p);
    let ctx = Arc::new(ctx);
    let mut obj = deleting("Delete");
    obj.metadata.annotations = Some(
        [(
            proxmox_netbox_operator::controller::SKIP_CLEANUP_ANNOTATION.to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    // A Warning Event says the objects are kept, then the finalizer goes.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.body()["reason"], "CleanupSkipped");
    assert_eq!(req.body()["type"], "Warning");
    respond(send, req.body().clone());
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    let ops = req.body().as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{ops:?}"
    );
    respond(
        send,
        serde_json::to_value(cluster(json!({}), false, None)).unwrap(),
    );
    task.await.unwrap().unwrap();
    assert_eq!(
        *ctx.pipeline.deletes.lock().unwrap(),
        0,
        "no cleanup attempted"
    );
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn a_reconcile_past_its_deadline_is_stopped_and_says_so() {
    let mut p = pipeline(synced_outcome(0));
    p.hang = true;
    let (mut ctx, mut handle, _registry) = build_context(p);
    ctx.reconcile_deadline = Duration::from_millis(500);
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));
    let seen = serve_all(&mut handle, &task).await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.metric_label(), reasons::RECONCILE_TIMED_OUT);
    let event = seen
        .iter()
        .find(|(m, _, b)| *m == http::Method::POST && b["reason"] == reasons::RECONCILE_TIMED_OUT)
        .unwrap_or_else(|| panic!("no ReconcileTimedOut Event: {seen:?}"));
    assert_eq!(event.2["type"], "Warning");
    let last_status = seen
        .iter()
        .rev()
        .find(|(m, _, b)| *m == http::Method::PATCH && b.get("status").is_some())
        .map(|(_, _, b)| b["status"].clone())
        .unwrap();
    let ready = condition(&last_status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::RECONCILE_TIMED_OUT);
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("did not finish within"), "{message}");
}

#[tokio::test]
async fn error_policy_backs_off_up_to_the_cluster_interval() {
    let (ctx, _handle) = context(synced_outcome(0));
    let obj = Arc::new(cluster(json!({"sync": {"interval": "1m"}}), true, None));
    // Before any pass the interval is not known: the default of 15 min caps the backoff.
    let err = Error::MissingNamespace;
    let before: Vec<Duration> = (0..7)
        .map(|_| requeue_after(&error_policy(obj.clone(), &err, ctx.clone())))
        .collect();
    assert_eq!(before[0], Duration::from_secs(15));
    assert_eq!(before[6], Duration::from_secs(900), "{before:?}");
    ctx.failures.lock().unwrap().clear();
    // The interval the last pass resolved.
    ctx.sync_intervals
        .lock()
        .unwrap()
        .insert("infra/lab".into(), Duration::from_secs(60));
    let delays: Vec<String> = (0..4)
        .map(|_| format!("{:?}", error_policy(obj.clone(), &err, ctx.clone())))
        .collect();
    for (d, want) in delays.iter().zip(["15s", "30s", "60s", "60s"]) {
        assert!(d.contains(want), "{delays:?}");
    }
    // A leadership abort is not a failure: no backoff, no error count.
    let aborted = error_policy(obj, &Error::Aborted, ctx.clone());
    assert!(
        format!("{aborted:?}").contains("requeue_after: None"),
        "{aborted:?}"
    );
    assert_eq!(ctx.failures.lock().unwrap().get("infra/lab"), Some(&4));
}

#[tokio::test]
async fn loss_of_leadership_aborts_a_sync_that_never_finishes() {
    let mut p = pipeline(synced_outcome(0));
    p.hang = true;
    let (mut ctx, mut handle, _registry) = build_context(p);
    let (trigger, signal) = AbortSignal::new();
    ctx.abort = signal;
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));

    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());
    // The intermediate status is written, then the NetBox stage hangs.
    let (req, send) = next_request(&mut handle).await;
    let mid = patched_status(&req);
    echo_status(send, &mid);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !task.is_finished(),
        "the fake sync never finishes by itself"
    );

    trigger.abort();
    let result = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the reconcile stops promptly on loss of leadership")
        .unwrap();
    let err = result.unwrap_err();
    assert!(err.is_aborted(), "{err}");
    // Nothing after the abort: no final status, no Event.
    assert_no_more_requests(&mut handle).await;
    // A reconcile started after the abort does nothing at all.
    let err = reconcile(Arc::new(cluster(json!({}), true, None)), ctx.clone())
        .await
        .unwrap_err();
    assert!(err.is_aborted());
    assert_no_more_requests(&mut handle).await;
}

fn rich_outcome() -> PipelineOutcome {
    let mut inv = complete_inventory();
    inv.storage = vec![
        StoragePool {
            name: "local-lvm".into(),
            node: "pve1".into(),
            storage_type: "lvmthin".into(),
            total_bytes: Some(1000),
            used_bytes: Some(250),
            ..Default::default()
        },
        StoragePool {
            name: "ceph-vm".into(),
            node: "pve1".into(),
            storage_type: "rbd".into(),
            shared: true,
            total_bytes: Some(9000),
            used_bytes: Some(3000),
            ..Default::default()
        },
    ];
    inv.ceph = Some(CephInfo {
        health: "HEALTH_WARN".into(),
        ..Default::default()
    });
    for (vmid, reason) in [
        (101, ReadFailure::AgentNotRunning),
        (102, ReadFailure::AgentNotRunning),
        (103, ReadFailure::GuestNotRunning),
    ] {
        inv.completeness.record(
            ReadScope::GuestAddresses(vmid),
            ReadOutcome::NotApplicable {
                reason,
                message: format!("guest {vmid}"),
            },
        );
    }
    let mut calls = ExternalCalls::default();
    calls.add("proxmox", "success", 40);
    calls.add("proxmox", "Timeout", 2);
    calls.add("netbox", "success", 9);
    calls.add("netbox", "NetBoxRejected", 1);
    calls.add("ssh", "success", 1);
    calls.add("ssh", "HostKeyMismatch", 1);
    let mut kinds = BTreeMap::new();
    kinds.insert(
        "dcim.device".to_string(),
        KindCounts {
            created: 1,
            unchanged: 2,
            ..Default::default()
        },
    );
    kinds.insert(
        "virtualization.virtualmachine".to_string(),
        KindCounts {
            created: 3,
            updated: 1,
            failed: 1,
            ..Default::default()
        },
    );
    PipelineOutcome {
        inventory: Some(inv),
        netbox: NetBoxOutcome::Done(SyncSummary {
            mode: "Sync".into(),
            created: 4,
            updated: 1,
            unchanged: 2,
            failed: 1,
            read_requests: 12,
            write_requests: 2,
            errors: vec!["virtualization.virtualmachine vm 104: name too long".into()],
            ..Default::default()
        }),
        netbox_kinds: kinds,
        calls,
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_cover_objects_per_kind_calls_storage_ceph_and_guest_addresses() {
    let (ctx, mut handle, registry) = context_with_registry(rich_outcome());
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));
    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());

    // The agent state is in the ProxmoxReachable message of both status writes.
    let note = "QEMU guest agent not running on 2 guest(s), addresses from their configuration only: 101, 102";
    let seen = serve_all(&mut handle, &task).await;
    task.await.unwrap().unwrap();
    let events: Vec<(String, String, String)> = seen
        .iter()
        .filter(|(m, _, _)| *m == http::Method::POST)
        .map(|(_, _, b)| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["reason"].as_str().unwrap().to_string(),
                b["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let statuses: Vec<Value> = seen
        .iter()
        .filter(|(m, p, _)| *m == http::Method::PATCH && p.ends_with("/status"))
        .map(|(_, _, b)| b["status"].clone())
        .collect();
    assert_eq!(statuses.len(), 2, "intermediate and final status");
    for s in &statuses {
        let msg = condition(s, "ProxmoxReachable")["message"]
            .as_str()
            .unwrap();
        assert!(msg.contains(note), "{msg}");
    }
    assert!(
        events
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == reasons::GUEST_AGENT_NOT_RUNNING && n == note),
        "{events:?}"
    );

    let metrics = proxmox_netbox_operator::metrics::render(&registry);
    for line in [
        r#"proxmox_netbox_reconciles_total{cluster="infra/lab"} 1"#,
        r#"proxmox_netbox_netbox_objects{cluster="infra/lab",kind="dcim.device",action="created"} 1"#,
        r#"proxmox_netbox_netbox_objects{cluster="infra/lab",kind="dcim.device",action="unchanged"} 2"#,
        r#"proxmox_netbox_netbox_objects{cluster="infra/lab",kind="virtualization.virtualmachine",action="created"} 3"#,
        r#"proxmox_netbox_netbox_objects{cluster="infra/lab",kind="virtualization.virtualmachine",action="updated"} 1"#,
        r#"proxmox_netbox_netbox_objects{cluster="infra/lab",kind="virtualization.virtualmachine",action="failed"} 1"#,
        r#"proxmox_netbox_netbox_requests_total{cluster="infra/lab",kind="read"} 12"#,
        r#"proxmox_netbox_netbox_requests_total{cluster="infra/lab",kind="write"} 2"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="proxmox",outcome="success"} 40"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="proxmox",outcome="Timeout"} 2"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="netbox",outcome="success"} 9"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="netbox",outcome="NetBoxRejected"} 1"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="ssh",outcome="success"} 1"#,
        r#"proxmox_netbox_external_calls_total{cluster="infra/lab",system="ssh",outcome="HostKeyMismatch"} 1"#,
        r#"proxmox_netbox_storage_capacity_bytes{cluster="infra/lab",storage="local-lvm",node="pve1"} 1000"#,
        r#"proxmox_netbox_storage_used_bytes{cluster="infra/lab",storage="local-lvm",node="pve1"} 250"#,
        r#"proxmox_netbox_storage_capacity_bytes{cluster="infra/lab",storage="ceph-vm",node=""} 9000"#,
        r#"proxmox_netbox_storage_used_bytes{cluster="infra/lab",storage="ceph-vm",node=""} 3000"#,
        r#"proxmox_netbox_ceph_health{cluster="infra/lab"} 1"#,
        r#"proxmox_netbox_guest_addresses_unread{cluster="infra/lab",reason="AgentNotRunning"} 2"#,
        r#"proxmox_netbox_guest_addresses_unread{cluster="infra/lab",reason="GuestNotRunning"} 1"#,
        r#"proxmox_netbox_inventory_objects{cluster="infra/lab",kind="nodes",action="read"} 1"#,
        r#"proxmox_netbox_inventory_objects{cluster="infra/lab",kind="storagePools",action="read"} 2"#,
        r#"proxmox_netbox_reconcile_errors_total{cluster="infra/lab",reason="PartialSync"} 1"#,
        // Every request to the API server, timed by resource, verb and outcome only.
        r#"proxmox_netbox_kubernetes_request_duration_seconds_count{resource="nodesshcredentials",verb="list",outcome="success"} 1"#,
        r#"proxmox_netbox_kubernetes_request_duration_seconds_count{resource="proxmoxclusters/status",verb="patch",outcome="success"} 2"#,
        r#"proxmox_netbox_kubernetes_request_duration_seconds_count{resource="events",verb="create",outcome="success"} "#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"resource="other""#),
        "every request is one of KUBERNETES_API_CALLS:\n{metrics}"
    );
    assert!(
        !metrics.contains(r#"kind="all""#),
        "objects are per kind, not one 'all' series:\n{metrics}"
    );
    assert!(
        !metrics.contains("proxmox_netbox_last_success_timestamp_seconds{"),
        "a partial sync is not a success:\n{metrics}"
    );
}

#[tokio::test]
async fn metrics_of_a_quiet_success_record_the_last_success_time() {
    let (ctx, mut handle, registry) = context_with_registry(synced_outcome(4));
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));
    serve_all(&mut handle, &task).await;
    task.await.unwrap().unwrap();
    let metrics = proxmox_netbox_operator::metrics::render(&registry);
    assert!(
        metrics.contains(&format!(
            r#"proxmox_netbox_last_success_timestamp_seconds{{cluster="infra/lab"}} {}"#,
            now().timestamp()
        )),
        "{metrics}"
    );
}

/// Runs one reconcile of a cluster whose pass ends with `outcome`, answering every request,
/// and returns its error.
async fn failed_pass(ctx: &Arc<Context<FakePipeline>>, handle: &mut Handle) -> Error {
    let task = tokio::spawn(reconcile(
        Arc::new(cluster(json!({}), true, None)),
        ctx.clone(),
    ));
    serve_all(handle, &task).await;
    task.await.unwrap().unwrap_err()
}

#[tokio::test]
async fn a_failed_stage_reaches_the_error_policy_which_retries_by_its_classification() {
    // Transient: the PVE API timed out. Backoff from 15 s, capped at the resolved interval.
    let outcome = PipelineOutcome {
        sync_interval: Some(Duration::from_secs(60)),
        proxmox_error: Some(ProxmoxReadError::Api(PveError::Timeout {
            path: "/cluster/status".into(),
        })),
        ..Default::default()
    };
    let (ctx, mut handle) = context(outcome);
    let obj = Arc::new(cluster(json!({}), true, None));
    let err = failed_pass(&ctx, &mut handle).await;
    assert_eq!(err.metric_label(), reasons::PROXMOX_UNREACHABLE);
    assert!(!err.is_permanent());
    let cause = std::iter::successors(std::error::Error::source(&err), |e| e.source())
        .find_map(|e| e.downcast_ref::<PveError>());
    assert!(matches!(cause, Some(PveError::Timeout { .. })), "{err:?}");
    // The same failure four times in a row.
    let delays: Vec<Duration> = (0..4)
        .map(|_| requeue_after(&error_policy(obj.clone(), &err, ctx.clone())))
        .collect();
    assert_eq!(
        delays,
        [15, 30, 60, 60].map(Duration::from_secs),
        "capped at the 1 min interval the pass resolved"
    );

    // Permanent: NetBox refused the token. The next pass comes at the resolved interval
    // (plus jitter), whatever the failures before.
    let outcome = PipelineOutcome {
        sync_interval: Some(Duration::from_secs(120)),
        inventory: Some(complete_inventory()),
        netbox: NetBoxOutcome::Failed(NetBoxSyncError::Api(NetBoxError::Auth {
            endpoint: "status".into(),
            status: 403,
            message: "Invalid token".into(),
        })),
        ..Default::default()
    };
    let (ctx, mut handle) = context(outcome);
    let err = failed_pass(&ctx, &mut handle).await;
    assert_eq!(err.metric_label(), reasons::NETBOX_UNAUTHORIZED);
    assert!(err.is_permanent());
    let after = requeue_after(&error_policy(obj, &err, ctx.clone()));
    assert!(
        after >= Duration::from_secs(120) && after <= Duration::from_secs(132),
        "{after:?}"
    );
}

/// A pass kept for cluster `infra/lab` at generation 3, the next full sync in 10 minutes.
async fn keep_a_pass(ctx: &Context<FakePipeline>) {
    let d = tempfile::tempdir().unwrap();
    for (secret, key, value) in [
        ("pve", "tokenId", "a@pve!b"),
        ("pve", "tokenSecret", "x"),
        ("nb", "token", "y"),
    ] {
        std::fs::create_dir_all(d.path().join(secret)).unwrap();
        std::fs::write(d.path().join(secret).join(key), value).unwrap();
    }
    let c = cluster(json!({}), true, None);
    let config = proxmox_netbox_operator::config::resolve(
        &c,
        proxmox_netbox_operator::pipeline::owner_scope(&c, "test"),
        &proxmox_netbox_operator::secrets::DirSecrets::new(d.path()),
    )
    .await
    .unwrap();
    ctx.kept_passes.lock().unwrap().insert(
        "infra/lab".into(),
        KeptPass {
            generation: Some(3),
            annotations: Default::default(),
            next_full: now() + chrono::Duration::minutes(10),
            pass: Arc::new(LastPass {
                config: Arc::new(config),
                client: None,
                memory: WatchMemory {
                    resources: Default::default(),
                    inventory: complete_inventory(),
                    hardware: BTreeMap::new(),
                },
                discovery: None,
                permission_warning: None,
                overrides: Default::default(),
                provisioning: None,
            }),
        },
    );
}

fn poll_outcome(poll: PollRecord) -> PipelineOutcome {
    PipelineOutcome {
        poll: Some(poll),
        sync_interval: Some(Duration::from_secs(900)),
        watch_interval: Some(Duration::from_secs(15)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_poll_that_finds_nothing_makes_no_kubernetes_request_and_comes_back_at_the_watch_interval()
 {
    let (ctx, mut handle) = context(poll_outcome(PollRecord::Idle));
    keep_a_pass(&ctx).await;
    let obj = Arc::new(cluster(json!({}), true, None));
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile(obj, ctx.clone()))
        .await
        .expect("a poll waits for no Kubernetes request")
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(15))
    );
    assert_eq!(*ctx.pipeline.targeted.lock().unwrap(), 1);
    // No credential list, no status, no Event.
    let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(next.is_err(), "a request was made");
    // The pass is still kept: the next reconcile polls again.
    assert!(ctx.kept_passes.lock().unwrap().contains_key("infra/lab"));
}

#[tokio::test]
async fn a_partial_poll_drops_the_kept_pass_so_the_next_pass_is_a_full_sync() {
    let (ctx, _handle) = context(poll_outcome(PollRecord::Partial(
        "node pve2 is offline".into(),
    )));
    keep_a_pass(&ctx).await;
    let reconciled = reconcile(Arc::new(cluster(json!({}), true, None)), ctx.clone());
    let action = tokio::time::timeout(Duration::from_secs(5), reconciled)
        .await
        .expect("a poll waits for no Kubernetes request")
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(15))
    );
    assert!(ctx.kept_passes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_spec_change_runs_a_full_pass_whatever_pass_is_kept() {
    let (ctx, mut handle) = context(synced_outcome(0));
    keep_a_pass(&ctx).await;
    let mut obj = cluster(json!({}), true, None);
    obj.metadata.generation = Some(4);
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    // A full pass lists the NodeSSHCredentials first.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/nodesshcredentials"
    );
    respond(send, credential_list());
    drop(handle);
    let _ = task.await;
    assert_eq!(*ctx.pipeline.targeted.lock().unwrap(), 0);
}

#[tokio::test]
async fn an_annotation_change_such_as_a_resync_request_runs_a_full_pass() {
    let (ctx, mut handle) = context(synced_outcome(0));
    keep_a_pass(&ctx).await;
    let mut obj = cluster(json!({}), true, None);
    // The kept pass's generation; only the annotations differ.
    obj.metadata.generation = Some(3);
    obj.metadata.annotations = Some([(RESYNC_ANNOTATION.to_string(), "now".to_string())].into());
    let task = tokio::spawn(reconcile(Arc::new(obj), ctx.clone()));
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(
        req.uri().path(),
        "/apis/proxmox-netbox.io/v1alpha1/namespaces/infra/nodesshcredentials"
    );
    respond(send, credential_list());
    drop(handle);
    let _ = task.await;
    assert_eq!(*ctx.pipeline.targeted.lock().unwrap(), 0);
}
