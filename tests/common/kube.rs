//! A real Kubernetes API server for the end-to-end tests: the harness's (scripts/harness/
//! kube.sh, admin kubeconfig in `$PNBO_KUBECONFIG`) or any cluster given by `KUBECONFIG`.
//! Helpers to render the chart, run the operator as a ServiceAccount, and wait for status.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;

use proxmox_netbox_operator::crd::{ProxmoxCluster, all_crds};

use super::harness::{HarnessEnv, harness_dir};

/// The e2e tests share one API server and NetBox: they run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The admin kubeconfig: `KUBECONFIG` when set, else the harness's.
pub fn kubeconfig_path(env: &HarnessEnv) -> PathBuf {
    if let Ok(k) = std::env::var("KUBECONFIG")
        && let Some(first) = k.split(':').find(|p| !p.is_empty())
    {
        return PathBuf::from(first);
    }
    let path = env
        .get("PNBO_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness_dir().join("kube/kubeconfig"));
    assert!(
        path.exists(),
        "no Kubernetes API server: {} is missing; run `scripts/harness/harness.sh up` or set KUBECONFIG",
        path.display()
    );
    path
}

/// A client with the admin kubeconfig.
pub async fn admin_client(env: &HarnessEnv) -> Client {
    client_from(&kubeconfig_path(env)).await
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Client::try_from(config).expect("client")
}

/// The directory of helm and kubectl (scripts/tools.sh installs them once).
pub fn tools_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tools.sh"))
            .output()
            .expect("run scripts/tools.sh");
        assert!(
            out.status.success(),
            "scripts/tools.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let paths = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(paths.trim().split(':').next().unwrap())
    })
    .clone()
}

/// Runs kubectl with the admin kubeconfig; returns (success, stdout + stderr).
pub fn kubectl(env: &HarnessEnv, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tools_bin().join("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path(env))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let input = stdin.unwrap_or_default().to_string();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `helm template` of the chart with `--set` values.
pub fn helm_template(release: &str, namespace: &str, sets: &[&str]) -> String {
    let mut cmd = Command::new(tools_bin().join("helm"));
    cmd.args(["template", release])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/proxmox-netbox-operator"
        ))
        .args(["--namespace", namespace]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Applies the CRDs by server-side apply and waits until they are Established.
pub async fn apply_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in all_crds() {
        crds.patch(
            crd.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("pno-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    for crd in all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 60 s"))
        .unwrap();
    }
}

/// A namespace deleted when dropped (after the operator's finalizers are cleared, so it
/// cannot hang once the operator is gone), whether the test passed or not.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates `prefix-<pid>`.
    pub async fn create(env: &HarnessEnv, client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        Self {
            name,
            kubeconfig: kubeconfig_path(env),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let ns = self.name.clone();
        let path = self.kubeconfig.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the namespace cleanup");
            rt.block_on(async move {
                let client = client_from(&path).await;
                let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &ns);
                if let Ok(list) = clusters.list(&ListParams::default()).await {
                    for c in list.items {
                        let name = c.metadata.name.unwrap_or_default();
                        let _ = clusters
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            )
                            .await;
                    }
                }
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A Secret marked for the operator (the `proxmox-netbox.io/credentials` label).
pub fn marked_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = unmarked_secret(name, data);
    s.metadata.labels = Some(BTreeMap::from([(
        proxmox_netbox_operator::secrets::SECRET_ACCESS_LABEL.to_string(),
        "true".to_string(),
    )]));
    s
}

/// A Secret without the operator's mark.
pub fn unmarked_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The PVE and NetBox Secrets of the harness in `namespace`, marked.
pub async fn harness_secrets(env: &HarnessEnv, client: &Client, namespace: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let ca = std::fs::read_to_string(&env.pve_ca_file).unwrap();
    for s in [
        marked_secret(
            "pve",
            &[
                ("tokenId", &env.pve_token_id),
                ("tokenSecret", &env.pve_token_secret),
            ],
        ),
        marked_secret("pve-ca", &[("ca.crt", &ca)]),
        marked_secret("netbox", &[("token", &env.netbox_token)]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
}

/// A ProxmoxCluster aimed at the harness (own NetBox site and cluster name per `tag`),
/// with `extra` merged into its spec.
pub fn harness_cluster(
    env: &HarnessEnv,
    name: &str,
    tag: &str,
    extra: serde_json::Value,
) -> ProxmoxCluster {
    let mut spec = json!({
        "proxmox": {"endpoints": [env.pve_url], "credentialsSecretRef": {"name": "pve"},
                    "tls": {"caSecretRef": {"name": "pve-ca", "key": "ca.crt"}}},
        // The harness's NetBox is plain http on loopback. A request timeout of 20 s makes
        // the settle wait after an interrupted sync 40 s (docs/reliability.md).
        "netbox": {"url": env.netbox_url, "allowInsecureHttp": true, "requestTimeout": "20s",
                   "tokenSecretRef": {"name": "netbox", "key": "token"},
                   "site": format!("e2e-{tag}"), "clusterName": format!("e2e-{tag}")},
        "sync": {"interval": "1m"}
    });
    merge(&mut spec, &extra);
    serde_json::from_value(json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Merges `extra` into `base`, objects key by key.
pub fn merge(base: &mut serde_json::Value, extra: &serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// Applies YAML documents with `kubectl apply --server-side`; panics with kubectl's output
/// on failure.
pub fn apply_yaml(env: &HarnessEnv, yaml: &str) -> String {
    let (ok, out) = kubectl(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=pno-e2e",
            "-f",
            "-",
        ],
        Some(yaml),
    );
    assert!(ok, "kubectl apply --server-side failed:\n{out}");
    out
}

/// A kubeconfig for ServiceAccount `namespace/name`, with a token from the TokenRequest
/// API and the admin kubeconfig's server and CA. Written to `path`.
pub async fn service_account_kubeconfig(
    env: &HarnessEnv,
    client: &Client,
    namespace: &str,
    name: &str,
    path: &Path,
) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("token in the TokenRequest status")
        .token;
    let admin = Kubeconfig::read_from(kubeconfig_path(env)).unwrap();
    let context = admin.current_context.clone().unwrap();
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap();
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .unwrap();
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => format!("certificate-authority-data: {data}"),
        (None, Some(file)) => format!("certificate-authority: {file}"),
        (None, None) => String::new(),
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: c, user: {name}, namespace: {namespace}}}\ncurrent-context: sa\n",
        cluster.server.unwrap()
    );
    std::fs::write(path, yaml).unwrap();
}

/// Whether the API server allows `user` the verb on the resource (SubjectAccessReview).
pub async fn can_i(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let groups = user.strip_prefix("system:serviceaccount:").map(|rest| {
        let ns = rest.split(':').next().unwrap();
        vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ]
    });
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups,
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .map(|s| s.allowed)
        .unwrap_or(false)
}

/// A free TCP port on loopback.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The operator binary running `run` outside the cluster; killed on drop.
pub struct OperatorProcess {
    child: Option<Child>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its /metrics address.
    pub metrics: SocketAddr,
}

impl OperatorProcess {
    /// Starts `proxmox-netbox-operator run` with `kubeconfig`, loopback allowed by the
    /// endpoint guard (the harness runs there), and extra arguments.
    pub fn start(kubeconfig: &Path, log: PathBuf, args: &[&str]) -> Self {
        let metrics = free_addr();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_proxmox-netbox-operator"))
            .arg("run")
            .args(["--metrics-addr", &metrics.to_string()])
            // The harness (fake PVE, NetBox, sshd) runs on loopback.
            .args(["--allow-endpoint-cidr", "127.0.0.0/8"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("PNO_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self {
            child: Some(child),
            log,
            metrics,
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL (no cleanup, no lease release).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET of /metrics.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `Ready` condition of a cluster.
pub fn ready(c: &ProxmoxCluster) -> Option<Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == "Ready")
        .cloned()
}

/// Polls cluster `name` until `pred` holds; panics with the last status after `timeout`.
pub async fn wait_cluster(
    api: &Api<ProxmoxCluster>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ProxmoxCluster) -> bool,
) -> ProxmoxCluster {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = api.get_opt(name).await.unwrap()
            && pred(&c)
        {
            return c;
        }
        if Instant::now() > deadline {
            let c = api.get_opt(name).await.unwrap();
            panic!(
                "{name}: not {what} within {timeout:?}; status: {}",
                serde_json::to_string_pretty(&c.and_then(|c| c.status)).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// True when Ready is `status` with `observedGeneration == generation` (and, when given,
/// the reason).
pub fn ready_is(c: &ProxmoxCluster, status: &str, reason: Option<&str>) -> bool {
    ready(c).is_some_and(|r| {
        r.status == status
            && r.observed_generation == c.metadata.generation
            && reason.is_none_or(|want| r.reason == want)
    })
}

/// Requests of `user` that the API server refused with 403, from the audit log: those
/// in `namespaces` and the cluster-scoped ones (other tests' namespaces, which the user
/// was never granted, do not count).
pub fn refused_requests(env: &HarnessEnv, user: &str, namespaces: &[&str]) -> Option<Vec<String>> {
    let path = env.get("PNBO_KUBE_AUDIT_LOG")?;
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == 403)
            .filter(|e| match e["objectRef"]["namespace"].as_str() {
                Some(ns) => namespaces.contains(&ns),
                None => true,
            })
            .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
            .collect(),
    )
}

/// A TCP proxy on loopback in front of `target` that can be cut: after [`TcpCut::cut`]
/// every connection is closed and new ones are refused, as when a replica loses its
/// network path to the API server.
pub struct TcpCut {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl TcpCut {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut stop_accept = stopped.clone();
            loop {
                tokio::select! {
                    _ = stop_accept.wait_for(|s| *s) => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let mut stop_conn = stopped.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                                return;
                            };
                            tokio::select! {
                                _ = stop_conn.wait_for(|s| *s) => {}
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        });
                    }
                }
            }
        });
        Self { addr, stop }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.stop.send(true);
    }
}

/// The API server's address (host:port of the admin kubeconfig's server URL).
pub fn api_server_addr(env: &HarnessEnv) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig_path(env)).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server: in the kubeconfig");
    let hostport = server.trim_start_matches("https://").trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap()
}

/// A copy of kubeconfig `from` at `to` whose server is `addr` (same CA and token).
pub fn kubeconfig_via(from: &Path, to: &Path, addr: SocketAddr) {
    let text = std::fs::read_to_string(from).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim().strip_prefix("server: ") {
            Some(_) => format!("    server: https://{addr}"),
            None => l.to_string(),
        })
        .collect();
    std::fs::write(to, out.join("\n") + "\n").unwrap();
}
