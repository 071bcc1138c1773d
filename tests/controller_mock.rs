//! Reconcile tests against a mocked Kubernetes API server (tower-test): every request the
//! controller makes is asserted (method, path, body).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use proxmox_netbox_operator::conditions::reasons;
use proxmox_netbox_operator::controller::{Clock, ClusterPipeline, Context, FINALIZER, reconcile};
use proxmox_netbox_operator::crd::{NodeSSHCredential, ProxmoxCluster, SyncSummary};
use proxmox_netbox_operator::inventory::{Inventory, Node, ReadOutcome, ReadScope};
use proxmox_netbox_operator::metrics::Metrics;
use proxmox_netbox_operator::secrets::SecretSource;
use proxmox_netbox_operator::status::{NetBoxOutcome, PipelineOutcome, StageError};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct FixedClock(DateTime<Utc>);
impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A pipeline that returns a prepared outcome and records what it was given.
struct FakePipeline {
    outcome: PipelineOutcome,
    runs: Mutex<Vec<Vec<String>>>,
}

impl ClusterPipeline for FakePipeline {
    fn run<'a>(
        &'a self,
        _cluster: &'a ProxmoxCluster,
        credentials: &'a [NodeSSHCredential],
        _secrets: &'a dyn SecretSource,
        _now: DateTime<Utc>,
    ) -> BoxFuture<'a, PipelineOutcome> {
        self.runs.lock().unwrap().push(
            credentials
                .iter()
                .map(|c| c.spec.node_name.clone())
                .collect(),
        );
        Box::pin(async move { self.outcome.clone() })
    }

    fn delete_owned<'a>(
        &'a self,
        _cluster: &'a ProxmoxCluster,
        _secrets: &'a dyn SecretSource,
    ) -> BoxFuture<'a, Result<String, StageError>> {
        Box::pin(async { Ok("deleted 3 objects".to_string()) })
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
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn context(outcome: PipelineOutcome) -> (Arc<Context<FakePipeline>>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let mut ctx = Context::new(
        client,
        FakePipeline {
            outcome,
            runs: Mutex::new(Vec::new()),
        },
        metrics,
        Reporter {
            controller: "proxmox-netbox-operator".into(),
            instance: Some("test".into()),
        },
    );
    ctx.clock = Arc::new(FixedClock(now()));
    (Arc::new(ctx), handle)
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
async fn successful_sync_writes_status_by_server_side_apply_and_an_event() {
    let (ctx, mut handle) = context(synced_outcome(4));
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

    // 2. Status: server-side apply on the status subresource, forced, our field manager.
    let (req, send) = next_request(&mut handle).await;
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
    let status = &req.body()["status"];
    assert_eq!(status["observedGeneration"], 3);
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::SYNCED);
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(status["lastSyncTime"], "2026-11-22T12:00:00Z");
    assert_eq!(status["lastSuccessfulSyncTime"], "2026-11-22T12:00:00Z");
    assert_eq!(status["summary"]["nodes"], 1);
    assert_eq!(status["sync"]["created"], 4);
    assert_eq!(condition(status, "Degraded")["status"], "False");
    respond(
        send,
        serde_json::to_value(cluster(json!({}), true, Some(status.clone()))).unwrap(),
    );

    // 3. A Normal event for the transition to Ready.
    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/infra/events"
    );
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
    // No further request: tower-test would hand it to us; none must be pending.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "an unexpected request was made"
    );
}

#[tokio::test]
async fn secret_problem_becomes_a_condition_naming_the_field_and_a_warning_event() {
    let outcome = PipelineOutcome {
        config_error: Some(StageError {
            reason: reasons::SECRET_KEY_MISSING,
            message: "spec.netbox.tokenSecretRef: Secret \"nb\" has no key \"token\"".into(),
        }),
        ..Default::default()
    };
    let (ctx, mut handle) = context(outcome);
    let obj = Arc::new(cluster(json!({}), true, None));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    let (_, send) = next_request(&mut handle).await;
    respond(send, credential_list());

    let (req, send) = next_request(&mut handle).await;
    let status = req.body()["status"].clone();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::SECRET_KEY_MISSING);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.netbox.tokenSecretRef")
    );
    assert!(status.get("lastSuccessfulSyncTime").is_none());
    respond(
        send,
        serde_json::to_value(cluster(json!({}), true, Some(status))).unwrap(),
    );

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.body()["type"], "Warning");
    assert_eq!(req.body()["reason"], reasons::SECRET_KEY_MISSING);
    respond(send, req.body().clone());

    let action = task.await.unwrap().unwrap();
    // Backoff: 15 s after the first failure, not the 15 min interval.
    assert!(format!("{action:?}").contains("15s"), "{action:?}");
}

#[tokio::test]
async fn suspended_cluster_is_not_synced_and_says_so() {
    let (ctx, mut handle) = context(synced_outcome(1));
    let obj = Arc::new(cluster(json!({"sync": {"suspend": true}}), true, None));
    let task = tokio::spawn(reconcile(obj, ctx.clone()));

    let (req, send) = next_request(&mut handle).await;
    assert_eq!(req.method(), http::Method::PATCH);
    assert!(req.uri().path().ends_with("/proxmoxclusters/lab/status"));
    let ready = condition(&req.body()["status"], "Ready").clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::SUSPENDED);
    respond(
        send,
        serde_json::to_value(cluster(json!({}), true, None)).unwrap(),
    );

    task.await.unwrap().unwrap();
    assert!(ctx.pipeline.runs.lock().unwrap().is_empty());
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
}
