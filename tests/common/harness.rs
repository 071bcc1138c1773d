//! Access to the real-component harness (`scripts/harness/harness.sh up`): the NetBox,
//! fake PVE and OpenSSH it started, and extra fake PVE instances with their own topology
//! and faults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment written by `harness.sh up` to `$PNBO_HARNESS_DIR/env.json`.
pub struct HarnessEnv {
    vars: BTreeMap<String, String>,
    /// NetBox base URL.
    pub netbox_url: String,
    /// NetBox API token (v2, write-enabled).
    pub netbox_token: String,
    /// Fake PVE URL.
    pub pve_url: String,
    /// PVE token id.
    pub pve_token_id: String,
    /// PVE token secret.
    pub pve_token_secret: String,
    /// CA bundle that verifies the fake PVE.
    pub pve_ca_file: String,
    /// The seeded inventory.
    pub pve_expected_file: String,
}

/// Directory of the harness state.
pub fn harness_dir() -> PathBuf {
    PathBuf::from(std::env::var("PNBO_HARNESS_DIR").unwrap_or_else(|_| "/tmp/pnbo-harness".into()))
}

/// The shared fixtures directory (`../shared` next to the clone, or `$PNBO_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    std::env::var("PNBO_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

impl HarnessEnv {
    /// Reads env.json; panics with instructions when the harness is not up.
    pub fn load() -> Self {
        let path = harness_dir().join("env.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the test harness is not up ({}: {e}): run `scripts/harness/harness.sh up` or `scripts/test.sh`",
                path.display()
            )
        });
        let vars: BTreeMap<String, String> =
            serde_json::from_str(&text).expect("env.json is valid JSON");
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("env.json has no {k}"))
        };
        Self {
            netbox_url: get("NETBOX_URL"),
            netbox_token: get("NETBOX_TOKEN"),
            pve_url: get("PVE_URL"),
            pve_token_id: get("PVE_TOKEN_ID"),
            pve_token_secret: get("PVE_TOKEN_SECRET"),
            pve_ca_file: get("PVE_CA_FILE"),
            pve_expected_file: get("PVE_EXPECTED_FILE"),
            vars,
        }
    }

    /// Any other variable (`SSH_PORT`, `NETBOX_VENV`, ...).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// A fake PVE started for one test, stopped on drop.
pub struct FakePve {
    child: Child,
    _dir: tempfile::TempDir,
    /// Base URL.
    pub url: String,
    /// Token id.
    pub token_id: String,
    /// Token secret.
    pub token_secret: String,
    /// User for ticket authentication.
    pub username: String,
    /// Its password.
    pub password: String,
    /// CA bundle path.
    pub ca_file: String,
    /// Expected inventory (JSON) path.
    pub expected_file: String,
    /// Token with the read and the provisioning privileges (launchers before it had none).
    pub provision_token_id: Option<String>,
    /// Its secret.
    pub provision_token_secret: Option<String>,
    /// User with the provisioning token's privileges, for ticket authentication.
    pub provision_username: Option<String>,
    /// Its password.
    pub provision_password: Option<String>,
}

impl FakePve {
    /// Starts a fake PVE with launcher arguments, e.g. `["--topology", path]`,
    /// `["--generate", "nodes=3,guests=1000"]`, `["--offline-node", "pve2"]`,
    /// `["--forbid", "/nodes/pve1/disks/list"]`, `["--privileges", "VM.Audit"]`, `["--no-ceph"]`.
    pub fn start(env: &HarnessEnv, args: &[&str]) -> Self {
        let python = env
            .get("FAKEPVE_PYTHON")
            .expect("FAKEPVE_PYTHON in env.json")
            .to_string();
        let launcher = env
            .get("FAKEPVE_LAUNCHER")
            .expect("FAKEPVE_LAUNCHER in env.json")
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(python)
            .arg(launcher)
            .arg("--state-dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fakepve");
        let env_file = dir.path().join("env.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !env_file.exists() {
            assert!(
                Instant::now() < deadline,
                "fakepve did not start: {}",
                std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let vars: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&env_file).unwrap()).unwrap();
        let s = |k: &str| vars[k].as_str().unwrap().to_string();
        let optional = |k: &str| vars.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Self {
            provision_token_id: optional("PVE_PROVISION_TOKEN_ID"),
            provision_token_secret: optional("PVE_PROVISION_TOKEN_SECRET"),
            provision_username: optional("PVE_PROVISION_USERNAME"),
            provision_password: optional("PVE_PROVISION_PASSWORD"),
            url: s("PVE_URL"),
            token_id: s("PVE_TOKEN_ID"),
            token_secret: s("PVE_TOKEN_SECRET"),
            username: s("PVE_USERNAME"),
            password: s("PVE_PASSWORD"),
            ca_file: s("PVE_CA_FILE"),
            expected_file: s("PVE_EXPECTED_FILE"),
            child,
            _dir: dir,
        }
    }

    /// The seeded inventory.
    pub fn expected(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.expected_file).unwrap()).unwrap()
    }

    /// The private key of its certificate (next to the CA file), for a test server that
    /// stands in for it.
    pub fn key_file(&self) -> PathBuf {
        std::path::Path::new(&self.ca_file).with_extension("key")
    }

    /// The launcher's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a topology file under tests/topologies.
pub fn topology(name: &str) -> String {
    format!("{}/tests/topologies/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Brings the harness up when its env.json is missing (`scripts/harness/harness.sh up`,
/// idempotent; a cold start takes about 10 minutes, later ones seconds), then loads it.
pub fn ensure_up() -> HarnessEnv {
    if !harness_dir().join("env.json").exists() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/harness/harness.sh");
        eprintln!("starting the test harness: bash {script} up");
        let status = Command::new("bash")
            .arg(script)
            .arg("up")
            .env("PNBO_HARNESS_DIR", harness_dir())
            .status()
            .expect("run scripts/harness/harness.sh up");
        assert!(
            status.success(),
            "scripts/harness/harness.sh up failed: {status}"
        );
    }
    HarnessEnv::load()
}

/// An HTTP client for checking NetBox from tests: a fresh connection per request, so a
/// keep-alive connection the server is just closing is never reused.
pub fn checking_http_client() -> reqwest::Client {
    proxmox_netbox_operator::tls::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// A connection to `pve` as the operator makes one: its CA bundle, token auth, 30 s
/// timeout, 8 requests in flight, one retry, loopback allowed. Tests change what they need.
pub fn pve_connection(pve: &FakePve) -> proxmox_netbox_operator::pve::client::PveConnection {
    use proxmox_netbox_operator::pve::client::{PveAuth, PveConnection};
    use proxmox_netbox_operator::secrets::SecretString;
    use proxmox_netbox_operator::tls::{TlsSettings, install_crypto_provider};
    install_crypto_provider();
    PveConnection {
        endpoints: vec![pve.url.clone()],
        auth: PveAuth::Token {
            token_id: pve.token_id.clone(),
            secret: SecretString::new(pve.token_secret.clone()),
        },
        tls: TlsSettings {
            ca_pem: Some(std::fs::read_to_string(&pve.ca_file).unwrap()),
            insecure_skip_verify: false,
        },
        timeout: Duration::from_secs(30),
        max_concurrency: 8,
        retries: 1,
        endpoint_guard: proxmox_netbox_operator::net::guard::EndpointGuard::new(["127.0.0.0/8"
            .parse()
            .unwrap()]),
    }
}

/// [`pve_connection`] with the provisioning token (read and provisioning privileges).
pub fn provision_connection(pve: &FakePve) -> proxmox_netbox_operator::pve::client::PveConnection {
    use proxmox_netbox_operator::pve::client::{PveAuth, PveConnection};
    use proxmox_netbox_operator::secrets::SecretString;
    PveConnection {
        auth: PveAuth::Token {
            token_id: pve
                .provision_token_id
                .clone()
                .expect("the launcher writes PVE_PROVISION_TOKEN_ID"),
            secret: SecretString::new(
                pve.provision_token_secret
                    .clone()
                    .expect("the launcher writes PVE_PROVISION_TOKEN_SECRET"),
            ),
        },
        ..pve_connection(pve)
    }
}

/// The inventory of a fake PVE, read as the operator reads it.
pub async fn read_fake_pve(pve: &FakePve) -> proxmox_netbox_operator::inventory::Inventory {
    use proxmox_netbox_operator::pve::client::PveClient;
    use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};
    let c = PveClient::new(pve_connection(pve)).unwrap();
    read_inventory(&c, &ReadOptions::default()).await.unwrap()
}

/// A fake PVE's API as a person with `pvesh` uses it, with one of its tokens.
pub struct PveRest {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl PveRest {
    /// `pve`'s API with the token `token_id` and `secret`.
    pub fn new(pve: &FakePve, token_id: &str, secret: &str) -> Self {
        let ca = std::fs::read(&pve.ca_file).unwrap();
        Self {
            http: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .build()
                .unwrap(),
            url: pve.url.clone(),
            auth: format!("PVEAPIToken={token_id}={secret}"),
        }
    }

    /// Sends `form` with `method` to `path`, which must succeed; returns `data`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> serde_json::Value {
        let r = self
            .http
            .request(method, format!("{}/api2/json{path}", self.url))
            .header("Authorization", &self.auth)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body["data"].clone()
    }

    /// GET `path`; returns `data`.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        self.send(reqwest::Method::GET, path, &[]).await
    }
}
