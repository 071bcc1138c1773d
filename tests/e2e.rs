//! End-to-end tests against a real Kubernetes API server: the harness's kube-apiserver
//! (scripts/harness/kube.sh, started by `harness.sh up` and so by `scripts/test.sh` in
//! CI), or any cluster given by `KUBECONFIG` (admin rights; the operator runs on this
//! machine and must reach the harness's NetBox, fake PVE and sshd on 127.0.0.1).
//!
//! ```text
//! cargo test --test e2e -- --nocapture                     # the harness API server
//! KUBECONFIG=~/.kube/config cargo test --test e2e          # your own cluster
//! ```
//!
//! The operator binary runs outside the cluster **as the chart's ServiceAccount**: the
//! chart is rendered with `helm template`, applied server-side, and the operator gets a
//! token for the rendered ServiceAccount from the TokenRequest API, so the RBAC tested is
//! exactly what the chart grants (never the admin token). Each test uses its own
//! namespaces, NetBox site and cluster name; they run one at a time ([`SERIAL`]).

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use common::harness::HarnessEnv;
use common::kube::*;
use common::sshd::Sshd;
use proxmox_netbox_operator::crd::{NodeSSHCredential, ProxmoxCluster};

/// Harness env, admin client, the CRDs applied; the caller holds [`SERIAL`].
async fn setup() -> (HarnessEnv, Client) {
    proxmox_netbox_operator::tls::install_crypto_provider();
    let env = common::harness::ensure_up();
    let client = admin_client(&env).await;
    apply_crds(&client).await;
    (env, client)
}

/// Renders the chart for `release` in `namespace`, applies it, and returns the
/// ServiceAccount's user name and a kubeconfig with its token.
async fn install_chart(
    env: &HarnessEnv,
    client: &Client,
    release: &str,
    namespace: &str,
    sets: &[&str],
    dir: &std::path::Path,
) -> (String, std::path::PathBuf) {
    let rendered = helm_template(release, namespace, sets);
    apply_yaml(env, &rendered);
    let sa = format!("{release}-proxmox-netbox-operator");
    let kubeconfig = dir.join(format!("{release}.kubeconfig"));
    service_account_kubeconfig(env, client, namespace, &sa, &kubeconfig).await;
    (
        format!("system:serviceaccount:{namespace}:{sa}"),
        kubeconfig,
    )
}

/// Removes the cluster-scoped objects a chart release created.
fn uninstall_cluster_scoped(env: &HarnessEnv, release: &str) {
    let selector = format!("app.kubernetes.io/instance={release}");
    let _ = kubectl(
        env,
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &selector,
            "--wait=false",
        ],
        None,
    );
}

/// NetBox REST reads with the harness token.
struct NetBox {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl NetBox {
    fn new(env: &HarnessEnv) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: env.netbox_url.clone(),
            token: env.netbox_token.clone(),
        }
    }

    async fn list(&self, path: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/api/{path}&limit=1000", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        v["results"].as_array().cloned().unwrap_or_default()
    }

    /// Virtual machines of NetBox cluster `name`.
    async fn vms(&self, cluster: &str) -> Vec<Value> {
        self.list(&format!(
            "virtualization/virtual-machines/?cluster={cluster}"
        ))
        .await
    }
}

/// Guests the seeded PVE holds (the harness's expected.json).
fn seeded(env: &HarnessEnv) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&env.pve_expected_file).unwrap()).unwrap()
}

/// Asserts NetBox cluster `name` holds each VM name at most once and at least `min` VMs.
async fn assert_no_duplicates(nb: &NetBox, cluster: &str, min: usize) {
    let vms = nb.vms(cluster).await;
    let mut names: Vec<&str> = vms.iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(
        vms.len() >= min,
        "{cluster}: {} VMs, expected at least {min}",
        vms.len()
    );
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate VMs in {cluster}: {vms:?}");
}

/// A namespace watched by a chart release of its own (`watchNamespace`, leader election),
/// holding the harness Secrets and a cluster `lab`.
struct WatchedRelease {
    ns: TestNamespace,
    user: String,
    kubeconfig: std::path::PathBuf,
    clusters: Api<ProxmoxCluster>,
    leases: Api<Lease>,
    tag: String,
}

async fn watched_release(
    env: &HarnessEnv,
    client: &Client,
    prefix: &str,
    release: &str,
    dir: &std::path::Path,
) -> WatchedRelease {
    let ns = TestNamespace::create(env, client, prefix).await;
    let watch = format!("watchNamespace={}", ns.name);
    let (user, kubeconfig) = install_chart(
        env,
        client,
        release,
        &ns.name,
        &[&watch, "leaderElection.enabled=true"],
        dir,
    )
    .await;
    harness_secrets(env, client, &ns.name).await;
    let tag = format!("{prefix}-{}", std::process::id());
    let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &ns.name);
    clusters
        .create(
            &PostParams::default(),
            &harness_cluster(env, "lab", &tag, json!({})),
        )
        .await
        .unwrap();
    let leases = Api::namespaced(client.clone(), &ns.name);
    WatchedRelease {
        ns,
        user,
        kubeconfig,
        clusters,
        leases,
        tag,
    }
}

impl WatchedRelease {
    /// Starts a replica `id` with leader election on Lease `lease`, through `kubeconfig`.
    fn replica(
        &self,
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        lease: &str,
        id: &str,
    ) -> OperatorProcess {
        let ns = self.ns.name.as_str();
        OperatorProcess::start(
            kubeconfig,
            dir.join(format!("{id}.log")),
            &[
                "--namespace",
                ns,
                "--leader-election",
                "--lease-namespace",
                ns,
                "--lease-name",
                lease,
                "--identity",
                id,
            ],
        )
    }

    /// The holder of Lease `lease`.
    async fn holder(&self, lease: &str) -> Option<String> {
        self.leases
            .get_opt(lease)
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }
}

#[tokio::test]
async fn chart_deploy_and_examples_are_accepted_by_the_api_server() {
    let _turn = SERIAL.lock().await;
    let (env, client) = setup().await;
    let ns = TestNamespace::create(&env, &client, "pno-e2e-chart").await;
    let watched = TestNamespace::create(&env, &client, "pno-e2e-chart-watched").await;

    // Default values, then leader election + one watched namespace, then Secrets granted
    // in listed namespaces: every object accepted by the real API server.
    for (release, sets) in [
        ("e2e-default", vec![]),
        (
            "e2e-watch",
            vec![
                "leaderElection.enabled=true".to_string(),
                format!("watchNamespace={}", watched.name),
            ],
        ),
        (
            "e2e-secretns",
            vec![format!("secretNamespaces={{{},{}}}", ns.name, watched.name)],
        ),
    ] {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let rendered = helm_template(release, &ns.name, &sets);
        let out = apply_yaml(&env, &rendered);
        assert!(out.contains("serverside-applied"), "{out}");
        uninstall_cluster_scoped(&env, release);
    }

    // deploy/ (kustomize: namespace, CRDs, RBAC, Deployment, Service).
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let (ok, out) = kubectl(
        &env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=pno-e2e",
            "-k",
            deploy,
        ],
        None,
    );
    assert!(ok, "kubectl apply -k deploy/: {out}");
    assert!(
        out.contains("deployment.apps/proxmox-netbox-operator serverside-applied"),
        "{out}"
    );

    // examples/ in their namespace `infra`.
    let (ok, out) = kubectl(&env, &["create", "namespace", "infra"], None);
    assert!(ok || out.contains("AlreadyExists"), "{out}");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let (ok, out) = kubectl(
        &env,
        &[
            "apply",
            "--server-side",
            "--field-manager=pno-e2e",
            "-f",
            examples,
        ],
        None,
    );
    assert!(ok, "kubectl apply -f examples/: {out}");
    for kind in [
        "proxmoxcluster.proxmox-netbox.io",
        "nodesshcredential.proxmox-netbox.io",
        "secret/",
    ] {
        assert!(out.contains(kind), "{kind} not applied: {out}");
    }
    let _ = kubectl(
        &env,
        &["delete", "namespace", "infra", "--wait=false"],
        None,
    );
}

#[tokio::test]
async fn operator_as_the_charts_service_account_syncs_and_follows_changes() {
    let _turn = SERIAL.lock().await;
    let (env, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let op_ns = TestNamespace::create(&env, &client, "pno-e2e-op").await;
    let team = TestNamespace::create(&env, &client, "pno-e2e-team").await;
    let hostile = TestNamespace::create(&env, &client, "pno-e2e-hostile").await;
    let release = "e2e-op";
    let secret_namespaces = format!("secretNamespaces={{{},{}}}", team.name, hostile.name);
    let (user, kubeconfig) = install_chart(
        &env,
        &client,
        release,
        &op_ns.name,
        &[&secret_namespaces],
        dir.path(),
    )
    .await;

    // What the chart's ServiceAccount may not do (checked by the API server itself).
    assert!(can_i(&client, &user, "get", "", "secrets", Some(&team.name)).await);
    assert!(
        !can_i(&client, &user, "list", "", "secrets", None).await,
        "list secrets -A"
    );
    assert!(!can_i(&client, &user, "list", "", "secrets", Some(&team.name)).await);
    assert!(!can_i(&client, &user, "watch", "", "secrets", Some(&team.name)).await);
    assert!(!can_i(&client, &user, "get", "", "secrets", Some("kube-system")).await);
    assert!(!can_i(&client, &user, "get", "", "secrets", Some("default")).await);
    // Namespaces: get on kube-system only (its UID is the installation id).
    assert!(!can_i(&client, &user, "list", "", "namespaces", None).await);
    assert!(!can_i(&client, &user, "get", "", "namespaces", None).await);
    assert!(!can_i(&client, &user, "create", "", "pods", Some(&team.name)).await);
    assert!(
        !can_i(
            &client,
            &user,
            "delete",
            "proxmox-netbox.io",
            "proxmoxclusters",
            Some(&team.name)
        )
        .await
    );

    // The team's cluster, with hardware discovery: pve1 has a credential for the harness
    // sshd, pve2 gets one later, pve3 never.
    harness_secrets(&env, &client, &team.name).await;
    let sshd = Sshd::start("normal");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &team.name);
    let key = std::fs::read_to_string(sshd.var("SSH_KEY_FILE")).unwrap();
    secrets
        .create(
            &PostParams::default(),
            &marked_secret("ssh", &[("id_ed25519", &key)]),
        )
        .await
        .unwrap();
    let credential = |node: &str| -> NodeSSHCredential {
        serde_json::from_value(json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
            "metadata": {"name": node},
            "spec": {"clusterRef": {"name": "lab"}, "nodeName": node, "address": "127.0.0.1",
                     "port": sshd.var("SSH_PORT").parse::<i32>().unwrap(),
                     "username": sshd.var("SSH_KEY_USER"),
                     "privateKeySecretRef": {"name": "ssh", "key": "id_ed25519"},
                     "hostKeyFingerprint": sshd.var("SSH_HOST_FINGERPRINT")}
        }))
        .unwrap()
    };
    let creds: Api<NodeSSHCredential> = Api::namespaced(client.clone(), &team.name);
    creds
        .create(&PostParams::default(), &credential("pve1"))
        .await
        .unwrap();
    let tag = format!("team-{}", std::process::id());
    let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &team.name);
    clusters
        .create(
            &PostParams::default(),
            &harness_cluster(
                &env,
                "lab",
                &tag,
                json!({"hardwareDiscovery": {"enabled": true}}),
            ),
        )
        .await
        .unwrap();

    // Hostile neighbours in another namespace: endpoints that never answer, and one that
    // names a Secret not marked for the operator.
    harness_secrets(&env, &client, &hostile.name).await;
    let hostile_secrets: Api<Secret> = Api::namespaced(client.clone(), &hostile.name);
    hostile_secrets
        .create(
            &PostParams::default(),
            &unmarked_secret("other-teams-token", &[("token", "do-not-send")]),
        )
        .await
        .unwrap();
    let hostile_clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &hostile.name);
    let blackhole: Vec<String> = (1..=8)
        .map(|i| format!("https://10.255.255.{i}:8006"))
        .collect();
    hostile_clusters
        .create(
            &PostParams::default(),
            &harness_cluster(
                &env,
                "blackhole",
                &format!("hostile-{}", std::process::id()),
                json!({"proxmox": {"endpoints": blackhole, "requestTimeout": "5m"},
                       "netbox": {"url": "https://10.255.255.9"},
                       "sync": {"interval": "720h"}}),
            ),
        )
        .await
        .unwrap();
    hostile_clusters
        .create(
            &PostParams::default(),
            &harness_cluster(
                &env,
                "thief",
                &format!("thief-{}", std::process::id()),
                json!({"netbox": {"tokenSecretRef": {"name": "other-teams-token", "key": "token"}}}),
            ),
        )
        .await
        .unwrap();

    let mut operator = OperatorProcess::start(
        &kubeconfig,
        dir.path().join("operator.log"),
        &[
            "--leader-election",
            "--lease-namespace",
            &op_ns.name,
            "--identity",
            "e2e-op",
        ],
    );

    // Ready at the current generation, the summary matching the seeded PVE.
    let lab = wait_cluster(&clusters, "lab", Duration::from_secs(300), "Ready", |c| {
        ready_is(c, "True", None)
    })
    .await;
    let status = lab.status.clone().unwrap();
    assert_eq!(status.observed_generation, lab.metadata.generation);
    let seed = seeded(&env);
    let summary = status.summary.clone().unwrap();
    assert_eq!(
        summary.nodes as usize,
        seed["nodes"].as_array().unwrap().len()
    );
    assert_eq!(
        (summary.vms + summary.containers + summary.templates) as usize,
        seed["guests"].as_array().unwrap().len()
    );
    // Facts of pve1 from the sshd; the nodes without a credential carry a warning.
    let nodes = serde_json::to_value(&status.nodes).unwrap();
    let node = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in status.nodes: {nodes}"))
    };
    assert!(node("pve1")["hardware"].is_object(), "{nodes}");
    assert!(node("pve1")["lastDiscoveryTime"].is_string(), "{nodes}");
    assert_eq!(node("pve3")["warning"]["code"], "NoCredential", "{nodes}");
    assert!(
        lab.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|f| f.contains("proxmox-netbox.io"))
    );
    let nb = NetBox::new(&env);
    let cluster_name = format!("e2e-{tag}");
    assert_no_duplicates(&nb, &cluster_name, 1).await;

    // Events about the cluster, and /metrics.
    let events: Api<Event> = Api::namespaced(client.clone(), &team.name);
    let about_lab = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("lab"))
        .count();
    assert!(about_lab > 0, "no Event about lab");
    let metrics = operator.metrics_text().await;
    assert!(
        metrics.contains(&format!("cluster=\"{}/lab\"", team.name)),
        "{metrics}"
    );

    // The hostile neighbours fail on their own, each saying why.
    let thief = wait_cluster(
        &hostile_clusters,
        "thief",
        Duration::from_secs(60),
        "refused",
        |c| ready_is(c, "False", Some("SecretNotMarked")),
    )
    .await;
    let message = ready(&thief).unwrap().message;
    assert!(
        message.contains("other-teams-token") && message.contains("proxmox-netbox.io/credentials"),
        "{message}"
    );

    // A spec edit is reconciled promptly although the blackhole cluster is still stuck.
    let edited = clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"netbox": {"tags": ["e2e-edited"]}}})),
        )
        .await
        .unwrap();
    let generation = edited.metadata.generation;
    let started = Instant::now();
    wait_cluster(
        &clusters,
        "lab",
        Duration::from_secs(90),
        "Ready at the new generation",
        |c| ready_is(c, "True", None) && c.metadata.generation == generation,
    )
    .await;
    eprintln!("spec edit reconciled in {:?}", started.elapsed());

    // A NodeSSHCredential added later: its node gets discovered.
    creds
        .create(&PostParams::default(), &credential("pve2"))
        .await
        .unwrap();
    wait_cluster(
        &clusters,
        "lab",
        Duration::from_secs(120),
        "pve2 discovered",
        |c| {
            c.status.as_ref().is_some_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == "pve2" && n.hardware.is_some() && n.warning.is_none())
            })
        },
    )
    .await;

    // The NetBox token rotated to a wrong one: Ready=False saying so; fixed: True again.
    let rotate = |token: &str| json!({"stringData": {"token": token}});
    secrets
        .patch(
            "netbox",
            &PatchParams::default(),
            &Patch::Merge(rotate("nbt_wrong.0000000000000000")),
        )
        .await
        .unwrap();
    // The periodic sync is 1m; the Secret poll notices sooner.
    wait_cluster(
        &clusters,
        "lab",
        Duration::from_secs(120),
        "NetBoxUnauthorized",
        |c| ready_is(c, "False", Some("NetBoxUnauthorized")),
    )
    .await;
    secrets
        .patch(
            "netbox",
            &PatchParams::default(),
            &Patch::Merge(rotate(&env.netbox_token)),
        )
        .await
        .unwrap();
    wait_cluster(
        &clusters,
        "lab",
        Duration::from_secs(120),
        "Ready again",
        |c| ready_is(c, "True", None),
    )
    .await;
    assert!(operator.running(), "the operator kept running throughout");

    // deletionPolicy Delete: the owned NetBox objects go, then the finalizer. The PVE
    // Secret is deleted first: the cleanup needs only the NetBox one.
    secrets
        .delete("pve", &DeleteParams::default())
        .await
        .unwrap();
    clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete"}})),
        )
        .await
        .unwrap();
    clusters
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while clusters.get_opt("lab").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "lab not deleted: {}",
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        nb.vms(&cluster_name).await.is_empty(),
        "owned VMs left in NetBox"
    );

    // No request of the operator was refused by the API server.
    let granted = [
        op_ns.name.as_str(),
        team.name.as_str(),
        hostile.name.as_str(),
    ];
    if let Some(refused) = refused_requests(&env, &user, &granted) {
        assert!(refused.is_empty(), "requests refused (403): {refused:?}");
    }
    let log = operator.log_text();
    assert!(
        !log.contains("do-not-send"),
        "a Secret value reached the log"
    );
    drop(operator);
    uninstall_cluster_scoped(&env, release);
}

#[tokio::test]
async fn leader_election_hands_over_in_a_watched_namespace() {
    let _turn = SERIAL.lock().await;
    let (env, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let w = watched_release(&env, &client, "pno-e2e-leader", "e2e-leader", dir.path()).await;
    let (ns, user, clusters, tag) = (&w.ns, &w.user, &w.clusters, &w.tag);
    // Namespaced Roles only: nothing cluster-wide.
    assert!(
        !can_i(
            &client,
            user,
            "list",
            "proxmox-netbox.io",
            "proxmoxclusters",
            None
        )
        .await
    );
    assert!(
        can_i(
            &client,
            user,
            "list",
            "proxmox-netbox.io",
            "proxmoxclusters",
            Some(&ns.name)
        )
        .await
    );
    assert!(!can_i(&client, user, "get", "", "secrets", Some("default")).await);

    let lease_name = "pno-e2e";
    let start = |id: &str| w.replica(&w.kubeconfig, dir.path(), lease_name, id);
    let mut a = start("replica-a");
    wait_cluster(clusters, "lab", Duration::from_secs(300), "Ready", |c| {
        ready_is(c, "True", None)
    })
    .await;
    let mut b = start("replica-b");
    let holder = || w.holder(lease_name);
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !b.log_text().contains("sync finished"),
        "the standby synced: {}",
        b.log_text()
    );

    // A new generation, and the leader killed while it syncs it.
    let edited = clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"netbox": {"tags": ["e2e-handover"]}}})),
        )
        .await
        .unwrap();
    let generation = edited.metadata.generation;
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill();
    let killed = Instant::now();
    // The standby takes over within the lease duration (15 s) and a few seconds of renew.
    while holder().await.as_deref() != Some("replica-b") {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no takeover: {}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("takeover after {:?}", killed.elapsed());
    wait_cluster(
        clusters,
        "lab",
        Duration::from_secs(180),
        "Ready at the new generation",
        |c| ready_is(c, "True", None) && c.metadata.generation == generation,
    )
    .await;
    let nb = NetBox::new(&env);
    assert_no_duplicates(&nb, &format!("e2e-{tag}"), 1).await;

    // Deletion while NetBox is unreachable: status and Events say why; switching to
    // Orphan lets the resource go.
    clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete", "netbox": {"url": "http://127.0.0.1:9"}}})),
        )
        .await
        .unwrap();
    clusters
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();
    let stuck = wait_cluster(
        clusters,
        "lab",
        Duration::from_secs(120),
        "blocked deletion reported",
        |c| {
            ready(c).is_some_and(|r| {
                r.status == "False" && r.message.contains("deletionPolicy to Orphan")
            })
        },
    )
    .await;
    assert!(stuck.metadata.deletion_timestamp.is_some());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let warnings = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .count();
    assert!(warnings > 0, "no Warning Event for the blocked deletion");
    clusters
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while clusters.get_opt("lab").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "Orphan did not let the resource go: {}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !nb.vms(&format!("e2e-{tag}")).await.is_empty(),
        "Orphan keeps the NetBox objects"
    );
    if let Some(refused) = refused_requests(&env, user, &[ns.name.as_str()]) {
        assert!(refused.is_empty(), "requests refused (403): {refused:?}");
    }
    assert!(b.running());
    uninstall_cluster_scoped(&env, "e2e-leader");
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_its_lease_can_be_taken() {
    let _turn = SERIAL.lock().await;
    let (env, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let w = watched_release(&env, &client, "pno-e2e-fence", "e2e-fence", dir.path()).await;

    // The leader reaches the API server through a proxy that the test cuts.
    let proxy = TcpCut::start(api_server_addr(&env)).await;
    let via = dir.path().join("via-proxy.kubeconfig");
    kubeconfig_via(&w.kubeconfig, &via, proxy.addr);
    let lease_name = "pno-e2e-fence";
    let mut leader = w.replica(&via, dir.path(), lease_name, "cut-off");
    wait_cluster(&w.clusters, "lab", Duration::from_secs(300), "Ready", |c| {
        ready_is(c, "True", None)
    })
    .await;
    let standby = w.replica(&w.kubeconfig, dir.path(), lease_name, "standby");
    let holder = || w.holder(lease_name);
    assert_eq!(holder().await.as_deref(), Some("cut-off"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.cut();
    let cut = Instant::now();
    while leader.running() {
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the cut-off leader kept running: {}",
            leader.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = cut.elapsed();
    assert!(
        leader.log_text().contains("fenced"),
        "{}",
        leader.log_text()
    );
    while holder().await.as_deref() != Some("standby") {
        assert!(
            cut.elapsed() < Duration::from_secs(45),
            "no takeover: {}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let taken = cut.elapsed();
    eprintln!(
        "cut-off leader stopped after {stopped:?}; the standby took the Lease after {taken:?}"
    );
    assert!(
        stopped < taken,
        "the old leader was still running when the Lease was taken"
    );
    uninstall_cluster_scoped(&env, "e2e-fence");
}

/// Waits until `pred` holds for the NetBox object at `path`; returns it.
async fn wait_netbox(
    nb: &common::netbox::NetBoxRest,
    path: &str,
    what: &str,
    operator: &OperatorProcess,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = nb.get(path).await;
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: not {what} within 180 s: {v}\noperator log:\n{}",
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reasons of the Events in `namespace`.
async fn event_reasons(client: &Client, namespace: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn a_vm_staged_in_netbox_is_provisioned_and_retired_through_the_controller() {
    let _turn = SERIAL.lock().await;
    let (env, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = TestNamespace::create(&env, &client, "pno-e2e-prov").await;
    let release = "e2e-prov";
    let watch = format!("watchNamespace={}", ns.name);
    let (user, kubeconfig) =
        install_chart(&env, &client, release, &ns.name, &[&watch], dir.path()).await;
    let pve = common::harness::FakePve::start(
        &env,
        &["--topology", &common::harness::topology("provision.json")],
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let ca = std::fs::read_to_string(&pve.ca_file).unwrap();
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@e2e";
    for s in [
        marked_secret(
            "pve",
            &[
                ("tokenId", &pve.token_id),
                ("tokenSecret", &pve.token_secret),
            ],
        ),
        marked_secret(
            "pve-provision",
            &[
                ("tokenId", pve.provision_token_id.as_deref().unwrap()),
                (
                    "tokenSecret",
                    pve.provision_token_secret.as_deref().unwrap(),
                ),
            ],
        ),
        marked_secret("pve-ca", &[("ca.crt", &ca)]),
        marked_secret("netbox", &[("token", &env.netbox_token)]),
        marked_secret("ssh", &[("keys", key)]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let tag = format!("prov-{}", std::process::id());
    let selector = format!("e2e-{tag}");
    let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &ns.name);
    clusters
        .create(
            &PostParams::default(),
            &harness_cluster(
                &env,
                "lab",
                &tag,
                json!({
                    "proxmox": {"endpoints": [pve.url]},
                    "provisioning": {
                        "enabled": true, "credentialsSecretRef": {"name": "pve-provision"},
                        "selector": {"tag": selector}, "template": "debian-12-cloud",
                        "storage": "ceph-vm",
                        "cloudInit": {"user": "ops", "sshKeysSecretRef": {"name": "ssh", "key": "keys"}},
                        "retire": {"enabled": true}, "taskTimeout": "60s", "shutdownTimeout": "10s"
                    }
                }),
            ),
        )
        .await
        .unwrap();
    let operator = OperatorProcess::start(
        &kubeconfig,
        dir.path().join("operator.log"),
        &["--namespace", &ns.name],
    );
    wait_cluster(&clusters, "lab", Duration::from_secs(180), "Ready", |c| {
        ready_is(c, "True", None)
    })
    .await;

    // A VM documented in NetBox, staged and tagged.
    let nb = common::netbox::NetBoxRest::new(&env);
    let cluster_id = nb
        .one(&format!("virtualization/clusters/?name=e2e-{tag}"))
        .await["id"]
        .as_u64()
        .unwrap();
    nb.create("extras/tags", json!({"name": selector, "slug": selector}))
        .await;
    let name = format!("e2e-vm-{}", std::process::id());
    let id = nb
        .create(
            "virtualization/virtual-machines",
            json!({"name": name, "status": "staged", "cluster": cluster_id, "vcpus": 2,
                   "memory": 1024, "tags": [{"slug": selector}]}),
        )
        .await;
    let net0 = nb
        .create(
            "virtualization/interfaces",
            json!({"virtual_machine": id, "name": "net0"}),
        )
        .await;
    nb.create(
        "ipam/ip-addresses",
        json!({"address": "10.66.0.20/24", "status": "active",
               "assigned_object_type": "virtualization.vminterface", "assigned_object_id": net0}),
    )
    .await;
    // No resync asked for: the next poll sees the staged record and starts a full pass.
    let staged_at = Instant::now();
    let path = format!("virtualization/virtual-machines/{id}/");
    let vm = wait_netbox(&nb, &path, "provisioned", &operator, |v| {
        v["custom_fields"]["proxmox_provision"] == "provisioned"
    })
    .await;
    assert_eq!(vm["status"]["value"], "active", "{vm}");
    eprintln!(
        "the staged VM was provisioned {:?} after it was staged",
        staged_at.elapsed()
    );
    let vmid = vm["custom_fields"]["proxmox_vmid"].as_u64().unwrap();
    let synced = wait_cluster(
        &clusters,
        "lab",
        Duration::from_secs(60),
        "showing the provisioned VM",
        |c| {
            c.status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .is_some_and(|p| p.counts.provisioned == 1)
        },
    )
    .await;
    let entry = &synced
        .status
        .as_ref()
        .unwrap()
        .provisioning
        .as_ref()
        .unwrap()
        .vms[0];
    assert_eq!(entry.vmid, Some(vmid as i64));
    assert_eq!(entry.phase, "Provisioned");
    assert!(ready_is(&synced, "True", None));
    assert!(
        event_reasons(&client, &ns.name)
            .await
            .iter()
            .any(|r| r == "VmProvisioned")
    );
    assert_eq!(
        nb.list(&format!(
            "virtualization/virtual-machines/?cluster_id={cluster_id}&name={name}"
        ))
        .await
        .len(),
        1,
        "no duplicate"
    );

    // Retired: destroyed in PVE, the record kept offline and released.
    nb.patch(
        "virtualization/virtual-machines",
        id,
        json!({"status": "decommissioning"}),
    )
    .await;
    let vm = wait_netbox(&nb, &path, "retired", &operator, |v| {
        v["custom_fields"]["proxmox_provision"] == "retired"
    })
    .await;
    assert_eq!(vm["status"]["value"], "offline");
    assert!(vm["custom_fields"]["proxmox_owner"].is_null());
    let resources = common::harness::read_fake_pve(&pve).await;
    assert!(
        resources.guests.iter().all(|g| u64::from(g.vmid) != vmid),
        "vm {vmid} still in PVE"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !event_reasons(&client, &ns.name)
        .await
        .iter()
        .any(|r| r == "VmRetired")
    {
        assert!(Instant::now() < deadline, "no VmRetired Event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(refused) = refused_requests(&env, &user, &[ns.name.as_str()]) {
        assert!(refused.is_empty(), "requests refused (403): {refused:?}");
    }
    drop(operator);
    uninstall_cluster_scoped(&env, release);
}
