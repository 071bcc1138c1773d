//! Near-real-time sync end to end: the operator (`run`, on the harness's kube-apiserver)
//! polls a fake PVE of its own every 5 s between full syncs 30 minutes apart; changes made
//! through the PVE API reach the real NetBox within seconds, and polls that find nothing
//! write nothing.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

use common::harness::{FakePve, HarnessEnv, checking_http_client, topology};
use common::kube::*;
use proxmox_netbox_operator::crd::ProxmoxCluster;

/// The read privileges plus what the test's changes need.
const PRIVILEGES: &str = "Sys.Audit,VM.Audit,Datastore.Audit,VM.GuestAgent.Audit,VM.Monitor,VM.Allocate,VM.Config.Memory,VM.Config.CPU,VM.Config.Options,VM.PowerMgmt";

/// The PVE API as the test uses it to make changes.
struct Pve {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl Pve {
    fn new(pve: &FakePve) -> Self {
        let ca = std::fs::read(&pve.ca_file).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        Self {
            http,
            url: pve.url.clone(),
            auth: format!("PVEAPIToken={}={}", pve.token_id, pve.token_secret),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .request(method, format!("{}/api2/json{path}", self.url))
            .header("Authorization", &self.auth)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body["data"].clone()
    }
}

/// NetBox's VMs of a cluster, by name.
async fn netbox_vm(env: &HarnessEnv, cluster: &str, name: &str) -> Option<Value> {
    let v: Value = checking_http_client()
        .get(format!(
            "{}/api/virtualization/virtual-machines/?cluster={cluster}&name={name}",
            env.netbox_url
        ))
        .bearer_auth(&env.netbox_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"].as_array()?.first().cloned()
}

/// Waits until `pred` holds for VM `name`; returns the seconds it took.
async fn wait_vm(
    env: &HarnessEnv,
    cluster: &str,
    name: &str,
    what: &str,
    pred: impl Fn(Option<&Value>) -> bool,
) -> f64 {
    let started = Instant::now();
    loop {
        let vm = netbox_vm(env, cluster, name).await;
        if pred(vm.as_ref()) {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name}: not {what} in NetBox within 60 s: {vm:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn changes_in_proxmox_reach_netbox_between_full_syncs() {
    proxmox_netbox_operator::tls::install_crypto_provider();
    let env = common::harness::ensure_up();
    let client = admin_client(&env).await;
    apply_crds(&client).await;
    let pve = FakePve::start(
        &env,
        &[
            "--topology",
            &topology("demo.json"),
            "--privileges",
            PRIVILEGES,
        ],
    );
    let ns = TestNamespace::create(&env, &client, "pno-e2e-watch").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let ca = std::fs::read_to_string(&pve.ca_file).unwrap();
    for s in [
        marked_secret(
            "pve",
            &[
                ("tokenId", &pve.token_id),
                ("tokenSecret", &pve.token_secret),
            ],
        ),
        marked_secret("pve-ca", &[("ca.crt", &ca)]),
        marked_secret("netbox", &[("token", &env.netbox_token)]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let tag = format!("watch-{}", std::process::id());
    let netbox_cluster = format!("e2e-{tag}");
    let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &ns.name);
    clusters
        .create(
            &PostParams::default(),
            &harness_cluster(
                &env,
                "lab",
                &tag,
                json!({"proxmox": {"endpoints": [pve.url]},
                       "sync": {"interval": "30m", "watchInterval": "5s"}}),
            ),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let operator = OperatorProcess::start(
        &kubeconfig_path(&env),
        dir.path().join("operator.log"),
        &["--namespace", &ns.name],
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let synced = loop {
        let c = clusters.get("lab").await.unwrap();
        if ready_is(&c, "True", None) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready within 180 s: {:?}\noperator log:\n{}",
            c.status,
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let version_after_full = synced.metadata.resource_version.clone();

    // Two polls later nothing changed: no status write (the resource did not move).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let idle = clusters.get("lab").await.unwrap();
    assert_eq!(idle.metadata.resource_version, version_after_full);
    let metrics = operator.metrics_text().await;
    assert!(
        metrics.contains(r#"watch_polls_total{cluster="#) && metrics.contains(r#"outcome="idle"}"#),
        "{metrics}\noperator log:\n{}",
        operator.log_text()
    );

    // A memory change of a stopped VM (103, app01 in the demo topology).
    let api = Pve::new(&pve);
    api.send(
        reqwest::Method::PUT,
        "/nodes/pve2/qemu/103/config",
        &[("memory", "6144")],
    )
    .await;
    let seconds = wait_vm(&env, &netbox_cluster, "app01", "at 6144 MiB", |vm| {
        vm.is_some_and(|v| v["memory"] == 6144)
    })
    .await;
    eprintln!("the memory change reached NetBox after {seconds:.1} s (polls every 5 s)");
    assert!(seconds < 30.0, "{seconds} s");
    let changed = clusters.get("lab").await.unwrap();
    let last = changed
        .status
        .unwrap()
        .last_change
        .expect("status.lastChange");
    assert!(last.changed >= 1, "{last:?}");
    assert!(last.detected_time <= last.applied_time, "{last:?}");

    // A new VM.
    api.send(
        reqwest::Method::POST,
        "/nodes/pve1/qemu",
        &[("vmid", "777"), ("name", "watch-new"), ("memory", "512")],
    )
    .await;
    wait_vm(&env, &netbox_cluster, "watch-new", "created", |vm| {
        vm.is_some()
    })
    .await;

    // A VM stopped: its NetBox status follows.
    api.send(
        reqwest::Method::POST,
        "/nodes/pve1/qemu/100/status/stop",
        &[],
    )
    .await;
    let name = pve.expected()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 100)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    wait_vm(&env, &netbox_cluster, &name, "offline", |vm| {
        vm.is_some_and(|v| v["status"]["value"] == "offline")
    })
    .await;

    // Each targeted sync that wrote is an Event; the kept full pass was not redone.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        if list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ChangesSynced"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ChangesSynced Event: {:?}",
            list.items
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = operator.log_text();
    assert_eq!(log.matches("\"sync started\"").count(), 1, "{log}");
    assert!(log.contains("changes synced"), "{log}");
}
