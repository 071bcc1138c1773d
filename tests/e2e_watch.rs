//! Near-real-time sync end to end: the operator (`run`, on the harness's kube-apiserver)
//! polls a fake PVE of its own every 5 s between full syncs 30 minutes apart; changes made
//! through the PVE API (memory, create, stop, migrate, destroy) reach the real NetBox within
//! seconds, polls that find nothing write nothing, a failed poll changes nothing and hands
//! over to a full sync, and `watchInterval: 0s` polls nothing.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::fault_proxy::{FaultPlan, Target, start_pve};
use common::harness::{FakePve, HarnessEnv, PveRest, checking_http_client, topology};
use common::kube::*;
use proxmox_netbox_operator::crd::ProxmoxCluster;

/// The read privileges plus what the test's changes need.
const PRIVILEGES: &str = "Sys.Audit,VM.Audit,Datastore.Audit,VM.GuestAgent.Audit,VM.Monitor,VM.Allocate,VM.Config.Memory,VM.Config.CPU,VM.Config.Options,VM.PowerMgmt,VM.Migrate";

/// NetBox's VM `name` in `cluster`.
async fn netbox_vm(env: &HarnessEnv, cluster: &str, name: &str) -> Option<Value> {
    netbox_vms(env, cluster, &format!("&name={name}"))
        .await
        .first()
        .cloned()
}

/// NetBox's VMs in `cluster`, with a further `filter` (`&name=x`, or empty).
async fn netbox_vms(env: &HarnessEnv, cluster: &str, filter: &str) -> Vec<Value> {
    let v: Value = checking_http_client()
        .get(format!(
            "{}/api/virtualization/virtual-machines/?cluster={cluster}&limit=1000{filter}",
            env.netbox_url
        ))
        .bearer_auth(&env.netbox_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"].as_array().cloned().unwrap_or_default()
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

/// A namespace with the fake PVE's and NetBox's Secrets, and the fake PVE.
struct Lab {
    env: HarnessEnv,
    client: kube::Client,
    ns: TestNamespace,
    pve: FakePve,
    clusters: Api<ProxmoxCluster>,
}

impl Lab {
    async fn new(prefix: &str) -> Self {
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
        let ns = TestNamespace::create(&env, &client, prefix).await;
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
        let clusters = Api::namespaced(client.clone(), &ns.name);
        Self {
            env,
            client,
            ns,
            pve,
            clusters,
        }
    }

    /// Creates ProxmoxCluster `name` on endpoint `url`, synced to NetBox cluster
    /// `e2e-<tag>`; returns that NetBox cluster's name.
    async fn cluster(&self, name: &str, tag: &str, url: &str, sync: Value) -> String {
        self.clusters
            .create(
                &PostParams::default(),
                &harness_cluster(
                    &self.env,
                    name,
                    tag,
                    json!({"proxmox": {"endpoints": [url]}, "sync": sync}),
                ),
            )
            .await
            .unwrap();
        format!("e2e-{tag}")
    }

    fn operator(&self, dir: &tempfile::TempDir) -> OperatorProcess {
        OperatorProcess::start(
            &kubeconfig_path(&self.env),
            dir.path().join("operator.log"),
            &["--namespace", &self.ns.name],
        )
    }

    async fn wait_ready(&self, name: &str, operator: &OperatorProcess) -> ProxmoxCluster {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let c = self.clusters.get(name).await.unwrap();
            if ready_is(&c, "True", None) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not Ready within 180 s: {:?}\noperator log:\n{}",
                c.status,
                operator.log_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The name the fake PVE gave guest `vmid`.
    fn guest_name(&self, vmid: u64) -> String {
        self.pve.expected()["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["vmid"] == vmid)
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The operator's log lines about cluster `key` (`namespace/name`) saying `message`.
fn log_count(operator: &OperatorProcess, key: &str, message: &str) -> usize {
    operator
        .log_text()
        .lines()
        .filter(|l| l.contains(&format!("\"{message}\"")) && l.contains(&format!("\"{key}\"")))
        .count()
}

#[tokio::test]
async fn changes_in_proxmox_reach_netbox_between_full_syncs() {
    let lab = Lab::new("pno-e2e-watch").await;
    let tag = format!("watch-{}", std::process::id());
    // Pruning on without grace: a destroyed guest's VM goes in the pass that finds it gone.
    let netbox_cluster = lab
        .cluster(
            "lab",
            &tag,
            &lab.pve.url,
            json!({"interval": "30m", "watchInterval": "5s",
                   "prune": {"enabled": true, "gracePeriod": "0s"}}),
        )
        .await;
    let env = &lab.env;
    let clusters = &lab.clusters;
    let dir = tempfile::tempdir().unwrap();
    let operator = lab.operator(&dir);
    let synced = lab.wait_ready("lab", &operator).await;
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
    let api = PveRest::new(&lab.pve, &lab.pve.token_id, &lab.pve.token_secret);
    api.send(
        reqwest::Method::PUT,
        "/nodes/pve2/qemu/103/config",
        &[("memory", "6144")],
    )
    .await;
    let seconds = wait_vm(env, &netbox_cluster, "app01", "at 6144 MiB", |vm| {
        vm.is_some_and(|v| v["memory"] == 6144)
    })
    .await;
    eprintln!("the memory change reached NetBox after {seconds:.1} s (polls every 5 s)");
    assert!(seconds < 30.0, "{seconds} s");
    // The pass writes its status after NetBox: it may land a moment after the change shows.
    let changed = wait_cluster(
        clusters,
        "lab",
        Duration::from_secs(15),
        "showing the change in status.lastChange",
        |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.last_change.as_ref().is_some_and(|l| l.changed >= 1))
        },
    )
    .await;
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
    wait_vm(env, &netbox_cluster, "watch-new", "created", |vm| {
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
    wait_vm(
        env,
        &netbox_cluster,
        &lab.guest_name(100),
        "offline",
        |vm| vm.is_some_and(|v| v["status"]["value"] == "offline"),
    )
    .await;

    // A container migrated (201 on pve2, running): its VM's device follows.
    api.send(
        reqwest::Method::POST,
        "/nodes/pve2/lxc/201/migrate",
        &[("target", "pve3"), ("restart", "1")],
    )
    .await;
    wait_vm(
        env,
        &netbox_cluster,
        &lab.guest_name(201),
        "on pve3",
        |vm| vm.is_some_and(|v| v["device"]["name"] == "pve3"),
    )
    .await;

    // The new VM destroyed: pruned (grace 0s) by the targeted pass, nothing else gone.
    let before = netbox_vms(env, &netbox_cluster, "").await.len();
    api.send(reqwest::Method::DELETE, "/nodes/pve1/qemu/777", &[])
        .await;
    wait_vm(env, &netbox_cluster, "watch-new", "deleted", |vm| {
        vm.is_none()
    })
    .await;
    assert_eq!(netbox_vms(env, &netbox_cluster, "").await.len(), before - 1);
    wait_cluster(
        clusters,
        "lab",
        Duration::from_secs(15),
        "showing the destroyed guest in status.lastChange",
        |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.last_change.as_ref().is_some_and(|l| l.destroyed == 1))
        },
    )
    .await;

    // Each targeted sync that wrote is an Event; the kept full pass was not redone.
    let events: Api<Event> = Api::namespaced(lab.client.clone(), &lab.ns.name);
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
    let key = format!("{}/lab", lab.ns.name);
    assert_eq!(log_count(&operator, &key, "sync started"), 1);
    assert!(log_count(&operator, &key, "changes synced") >= 5);

    // The resync annotation drops the kept pass: a full sync runs, and finds nothing the
    // targeted passes left undone.
    clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"proxmox-netbox.io/resync": "after-changes"}}}),
            ),
        )
        .await
        .unwrap();
    let resynced = wait_cluster(clusters, "lab", Duration::from_secs(60), "resynced", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.last_resync_request.as_deref() == Some("after-changes"))
    })
    .await;
    assert_eq!(log_count(&operator, &key, "sync started"), 2);
    let sync = resynced.status.unwrap().sync.unwrap();
    assert_eq!(
        (
            sync.created,
            sync.updated,
            sync.deleted,
            sync.write_requests
        ),
        (0, 0, 0, 0),
        "{sync:?}"
    );
}

#[tokio::test]
async fn a_failed_poll_changes_nothing_and_hands_over_to_a_full_sync_and_polls_can_be_off() {
    let lab = Lab::new("pno-e2e-watch-fail").await;
    let pid = std::process::id();
    // The polled cluster reads PVE through a proxy that can fail every request.
    let proxy = start_pve(
        &lab.pve,
        FaultPlan {
            target: Target::PveNodeReads,
            seed: 1,
            fault_rate: 0.0,
            client_timeout: Duration::from_secs(30),
            scripted: None,
        },
    )
    .await;
    let polled = lab
        .cluster(
            "polled",
            &format!("polled-{pid}"),
            &proxy.url,
            json!({"interval": "30m", "watchInterval": "5s",
                   "prune": {"enabled": true, "gracePeriod": "0s"}}),
        )
        .await;
    let unpolled = lab
        .cluster(
            "unpolled",
            &format!("unpolled-{pid}"),
            &lab.pve.url,
            json!({"interval": "30m", "watchInterval": "0s"}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let operator = lab.operator(&dir);
    lab.wait_ready("polled", &operator).await;
    lab.wait_ready("unpolled", &operator).await;
    let polled_key = format!("{}/polled", lab.ns.name);
    let unpolled_key = format!("{}/unpolled", lab.ns.name);
    let vms = netbox_vms(&lab.env, &polled, "").await;
    assert!(vms.len() >= 10, "{vms:?}");

    // Every PVE request fails: the poll fails, changes nothing, and the next pass is a
    // full one (which fails too, and deletes or marks nothing).
    proxy.die_after(Some(0));
    let failed = format!(r#"watch_polls_total{{cluster="{polled_key}",outcome="failed"}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !operator.metrics_text().await.contains(&failed) {
        assert!(
            Instant::now() < deadline,
            "no failed poll within 30 s:\n{}",
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_cluster(
        &lab.clusters,
        "polled",
        Duration::from_secs(60),
        "not Ready",
        |c| ready_is(c, "False", None),
    )
    .await;
    assert!(log_count(&operator, &polled_key, "sync started") >= 2);
    let after = netbox_vms(&lab.env, &polled, "").await;
    assert_eq!(after.len(), vms.len());
    assert!(
        after
            .iter()
            .all(|v| v["custom_fields"]["proxmox_stale_since"].is_null()),
        "{after:?}"
    );

    // PVE back: the full sync after the backoff, then polls again.
    proxy.die_after(None);
    lab.wait_ready("polled", &operator).await;
    let api = PveRest::new(&lab.pve, &lab.pve.token_id, &lab.pve.token_secret);
    api.send(
        reqwest::Method::PUT,
        "/nodes/pve2/qemu/103/config",
        &[("memory", "3072")],
    )
    .await;
    wait_vm(&lab.env, &polled, "app01", "at 3072 MiB", |vm| {
        vm.is_some_and(|v| v["memory"] == 3072)
    })
    .await;

    // With polls off the same change waits for the next full sync (30 minutes away), and
    // the cluster has no poll at all.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let vm = netbox_vm(&lab.env, &unpolled, "app01").await.unwrap();
    assert_ne!(vm["memory"], 3072, "{vm}");
    let metrics = operator.metrics_text().await;
    assert!(
        !metrics.contains(&format!(r#"watch_polls_total{{cluster="{unpolled_key}""#)),
        "{metrics}"
    );
    assert_eq!(log_count(&operator, &unpolled_key, "sync started"), 1);
}
