//! The pieces of the fault scenarios (tests/fault_netbox.rs, tests/fault_pve.rs): a
//! generated topology, `sync` runs with their files, and the checker that compares NetBox
//! with the topology by the operator's identity.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::harness::{FakePve, HarnessEnv, checking_http_client, read_fake_pve};
use proxmox_netbox_operator::crd::ProxmoxCluster;
use proxmox_netbox_operator::inventory::Inventory;
use proxmox_netbox_operator::pipeline::live::LiveWriter;
use proxmox_netbox_operator::pipeline::{CallCounter, NetBoxWriter};

/// A number from the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fake PVE of 3 nodes and `CHAOS_GUESTS` guests.
pub fn generated_pve(env: &HarnessEnv) -> FakePve {
    let spec = format!("nodes=3,guests={}", env_number("CHAOS_GUESTS", 20));
    FakePve::start(env, &["--generate", &spec])
}

/// The seeds of the runs: `CHAOS_SEEDS` (comma-separated), default 1 and 2.
pub fn seeds() -> Vec<u64> {
    std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A ProxmoxCluster whose NetBox is `url` with request timeout `timeout`, with names unique
/// to `tag`.
pub fn cluster(url: &str, tag: &str, timeout: &str) -> ProxmoxCluster {
    serde_json::from_value(json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": tag, "namespace": "chaos"},
        "spec": {
            "proxmox": {"endpoints": ["https://127.0.0.1:1"], "credentialsSecretRef": {"name": "pve"}},
            "netbox": {"url": url, "allowInsecureHttp": true, "requestTimeout": timeout,
                       "tokenSecretRef": {"name": "nb", "key": "token"},
                       "site": format!("site-{tag}"), "clusterName": format!("cluster-{tag}")}
        }
    }))
    .unwrap()
}

/// Plain reads of NetBox.
pub struct Rest {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Rest {
    /// The results of a GET of `/api/<path>` (one page of up to 1000).
    pub async fn list(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let v: Value = self
            .http
            .get(format!("{}/api/{path}{sep}limit=1000", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["results"].as_array().cloned().unwrap_or_default()
    }
}

/// One sync through the operator's NetBox stage, without hardware facts, failing the test
/// when it takes longer than [`SYNC_DEADLINE`].
pub async fn sync_once(
    writer: &LiveWriter,
    config: &proxmox_netbox_operator::config::ResolvedCluster,
    inv: &Inventory,
) -> Result<
    proxmox_netbox_operator::pipeline::NetBoxResult,
    proxmox_netbox_operator::stage_errors::NetBoxSyncError,
> {
    let calls = CallCounter::default();
    let no_facts = BTreeMap::new();
    let no_overrides = Default::default();
    let sync = writer.sync(
        config,
        inv,
        &no_facts,
        None,
        &no_overrides,
        false,
        Utc::now(),
        &calls,
    );
    tokio::time::timeout(SYNC_DEADLINE, sync)
        .await
        .unwrap_or_else(|_| panic!("a sync still running after {SYNC_DEADLINE:?}"))
}

/// The harness, a generated fake PVE and its inventory.
pub struct Scenario {
    pub env: HarnessEnv,
    pub pve: FakePve,
    pub inv: Inventory,
    pub rest: Rest,
}

impl Scenario {
    /// The harness and a fake PVE of 3 nodes and `CHAOS_GUESTS` guests.
    pub async fn start() -> Self {
        proxmox_netbox_operator::tls::install_crypto_provider();
        let env = HarnessEnv::load();
        let pve = generated_pve(&env);
        let inv = read_fake_pve(&pve).await;
        let rest = Rest {
            http: checking_http_client(),
            url: env.netbox_url.clone(),
            token: env.netbox_token.clone(),
        };
        Self {
            env,
            pve,
            inv,
            rest,
        }
    }
}

/// What is wrong in NetBox compared with the topology, by the operator's identity.
#[derive(Debug, Default)]
pub struct Findings {
    pub duplicates: Vec<String>,
    pub missing: Vec<String>,
    /// VMs of guests no longer in Proxmox (owned objects of an earlier state).
    pub leftover: Vec<String>,
}

impl Findings {
    /// No duplicate, nothing missing, nothing left over.
    pub fn clean(&self) -> bool {
        self.duplicates.is_empty() && self.missing.is_empty() && self.leftover.is_empty()
    }
}

/// Checks NetBox's cluster `cluster_name` against `inv`.
pub async fn check(rest: &Rest, inv: &Inventory, cluster_name: &str) -> Findings {
    let mut f = Findings::default();
    let clusters = rest
        .list(&format!("virtualization/clusters/?name={cluster_name}"))
        .await;
    let cid = clusters[0]["id"].as_u64().unwrap();
    let vms = rest
        .list(&format!(
            "virtualization/virtual-machines/?cluster_id={cid}"
        ))
        .await;
    let mut by_vmid: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for vm in &vms {
        by_vmid
            .entry(vm["custom_fields"]["proxmox_vmid"].to_string())
            .or_default()
            .push(vm["id"].as_u64().unwrap());
    }
    for guest in inv.guests.iter().filter(|g| !g.template) {
        match by_vmid.get(&guest.vmid.to_string()).map(Vec::len) {
            None => f.missing.push(format!("vm {}", guest.vmid)),
            Some(1) => {}
            Some(n) => f.duplicates.push(format!("vm {} x{n}", guest.vmid)),
        }
    }
    let current: BTreeSet<String> = inv.guests.iter().map(|g| g.vmid.to_string()).collect();
    f.leftover.extend(
        by_vmid
            .keys()
            .filter(|v| !current.contains(*v))
            .map(|v| format!("vm {v}")),
    );
    // Children: by parent and name (interfaces, disks), by interface (MACs, IPs).
    let vm_ids: BTreeSet<u64> = vms.iter().filter_map(|v| v["id"].as_u64()).collect();
    let mut ifaces = BTreeSet::new();
    for (path, what) in [
        ("virtualization/interfaces/", "interface"),
        ("virtualization/virtual-disks/", "disk"),
    ] {
        let mut seen: BTreeMap<(u64, String), u32> = BTreeMap::new();
        for o in rest.list(&format!("{path}?cluster_id={cid}")).await {
            let vm = o["virtual_machine"]["id"].as_u64().unwrap_or(0);
            if vm_ids.contains(&vm) {
                *seen
                    .entry((vm, o["name"].as_str().unwrap_or("").to_string()))
                    .or_default() += 1;
                if what == "interface" {
                    ifaces.extend(o["id"].as_u64());
                }
            }
        }
        for ((vm, name), n) in seen {
            if n > 1 {
                f.duplicates.push(format!("{what} {name} of vm {vm} x{n}"));
            }
        }
    }
    let nics: usize = inv
        .guests
        .iter()
        .filter(|g| !g.template)
        .map(|g| g.nics.len())
        .sum();
    if ifaces.len() < nics {
        f.missing
            .push(format!("{} of {nics} VM interfaces", nics - ifaces.len()));
    }
    for (path, field) in [
        ("dcim/mac-addresses/", "mac_address"),
        ("ipam/ip-addresses/", "address"),
    ] {
        let mut seen: BTreeMap<(u64, String), u32> = BTreeMap::new();
        for chunk in ifaces.iter().collect::<Vec<_>>().chunks(50) {
            let q: Vec<String> = chunk
                .iter()
                .map(|i| format!("vminterface_id={i}"))
                .collect();
            for o in rest.list(&format!("{path}?{}", q.join("&"))).await {
                let owner = o["assigned_object_id"].as_u64().unwrap_or(0);
                let value = o[field].as_str().unwrap_or("").to_ascii_lowercase();
                *seen.entry((owner, value)).or_default() += 1;
            }
        }
        for ((iface, value), n) in seen {
            if n > 1 {
                f.duplicates
                    .push(format!("{field} {value} on interface {iface} x{n}"));
            }
        }
    }
    f
}

/// Writes the Secrets and the resource file of a `sync` run against `pve` and NetBox
/// (prune on, grace 0, and no share limit: what keeps a faulty read from deleting is the
/// read's own completeness, not the `maxPercent` brake).
pub fn sync_files(env: &HarnessEnv, pve: &FakePve, dir: &std::path::Path, tag: &str) {
    sync_files_via(env, pve, &[&pve.url], "30s", dir, tag);
}

/// [`sync_files`] with the PVE endpoints `endpoints` (proxies in front of `pve`) and a PVE
/// request timeout.
pub fn sync_files_via(
    env: &HarnessEnv,
    pve: &FakePve,
    endpoints: &[&str],
    pve_timeout: &str,
    dir: &std::path::Path,
    tag: &str,
) {
    for (secret, key, value) in [
        ("pve", "tokenId", pve.token_id.clone()),
        ("pve", "tokenSecret", pve.token_secret.clone()),
        (
            "pve-ca",
            "ca.crt",
            std::fs::read_to_string(&pve.ca_file).unwrap(),
        ),
        ("nb", "token", env.netbox_token.clone()),
    ] {
        std::fs::create_dir_all(dir.join("secrets").join(secret)).unwrap();
        std::fs::write(dir.join("secrets").join(secret).join(key), value).unwrap();
    }
    let yaml = format!(
        "apiVersion: proxmox-netbox.io/v1alpha1\nkind: ProxmoxCluster\nmetadata: {{name: {tag}, namespace: chaos}}\nspec:\n  proxmox: {{endpoints: {:?}, requestTimeout: {pve_timeout}, credentialsSecretRef: {{name: pve}}, tls: {{caSecretRef: {{name: pve-ca, key: ca.crt}}}}}}\n  netbox: {{url: \"{}\", allowInsecureHttp: true, tokenSecretRef: {{name: nb, key: token}}, site: site-{tag}, clusterName: cluster-{tag}}}\n  sync: {{prune: {{enabled: true, gracePeriod: 0s, maxPercent: 100}}}}\n",
        endpoints, env.netbox_url
    );
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
}

/// A `sync --output json` of the resource in `dir`, its JSON written to `dir/<out>` (a
/// file, not a pipe: a report larger than a pipe's buffer must never block the process),
/// killed when dropped.
pub fn sync_command(dir: &std::path::Path, out: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxmox-netbox-operator"));
    c.args([
        "sync",
        "--output",
        "json",
        "--allow-endpoint-cidr",
        "127.0.0.0/8",
        "-f",
    ])
    .arg(dir.join("cluster.yaml"))
    .arg("--secrets-dir")
    .arg(dir.join("secrets"))
    .env_remove("PNO_ALLOW_ENDPOINT_CIDRS")
    .stdout(std::fs::File::create(dir.join(out)).unwrap())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    c
}

/// The longest a `sync` of these runs may take before the test fails (a sync of 20-30
/// guests takes well under a minute; the stage deadlines are far longer).
pub const SYNC_DEADLINE: Duration = Duration::from_secs(300);

/// Waits for `child` to end, at most [`SYNC_DEADLINE`]; a sync still running then is
/// killed and the test fails saying so.
pub async fn wait_for(child: &mut tokio::process::Child, what: &str) -> std::process::ExitStatus {
    match tokio::time::timeout(SYNC_DEADLINE, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{what} still running after {SYNC_DEADLINE:?}");
        }
    }
}

/// Runs one `sync` to its end: whether it succeeded, and its JSON report.
pub async fn run_sync(dir: &std::path::Path, what: &str) -> (bool, Value) {
    let mut child = sync_command(dir, "report.json").spawn().unwrap();
    let ok = wait_for(&mut child, what).await.success();
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap_or_default();
    (ok, serde_json::from_str(&text).unwrap_or_default())
}
