//! NetBox faults at random moments, through the fault proxy (tests/common/fault_proxy.rs):
//! each seeded run makes a few syncs of the demo topology through the operator's NetBox
//! stage (`LiveWriter`: the settle wait, the engine, the lost-answer recovery and the
//! removal of owned duplicates) while a random 5-20% of the writes are faulted, then one
//! sync without faults, and checks NetBox against the topology: no duplicate and no missing
//! object by the operator's identity, and a resync with zero writes.
//!
//! Two more scenarios kill, at a random moment of a first sync, the `sync` process or the
//! NetBox server (SIGKILL; NetBox is started again), then sync until a sync succeeds, and
//! check the same. The NetBox kill runs alone; the other tests of this file share NetBox.
//!
//! `CHAOS_SEEDS` (comma-separated, default `1,2`), `CHAOS_FAULTY_SYNCS` (default 2) and
//! `CHAOS_GUESTS` (guests of the generated 3-node topology, default 20) set the runs;
//! `scripts/chaos.sh` runs many seeds and prints the rows of docs/reliability.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use common::fault_proxy::{Fault, FaultPlan, start};
use common::harness::{FakePve, HarnessEnv, checking_http_client, read_fake_pve};
use proxmox_netbox_operator::config::resolve;
use proxmox_netbox_operator::crd::ProxmoxCluster;
use proxmox_netbox_operator::inventory::Inventory;
use proxmox_netbox_operator::net::guard::EndpointGuard;
use proxmox_netbox_operator::owner::OwnerScope;
use proxmox_netbox_operator::pipeline::live::LiveWriter;
use proxmox_netbox_operator::pipeline::{CallCounter, NetBoxWriter};
use proxmox_netbox_operator::secrets::DirSecrets;

/// Held shared by the tests of this file, exclusively by the one that kills NetBox.
static NETBOX_SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The client's NetBox request timeout in these runs (short, so delays pass it quickly).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fake PVE of 3 nodes and `CHAOS_GUESTS` guests.
fn generated_pve(env: &HarnessEnv) -> FakePve {
    let spec = format!("nodes=3,guests={}", env_number("CHAOS_GUESTS", 20));
    FakePve::start(env, &["--generate", &spec])
}

fn seeds() -> Vec<u64> {
    std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A ProxmoxCluster whose NetBox is `url` with request timeout `timeout`, with names unique
/// to `tag`.
fn cluster(url: &str, tag: &str, timeout: &str) -> ProxmoxCluster {
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
struct Rest {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Rest {
    async fn list(&self, path: &str) -> Vec<Value> {
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
async fn sync_once(
    writer: &LiveWriter,
    cluster: &ProxmoxCluster,
    config: &proxmox_netbox_operator::config::ResolvedCluster,
    inv: &Inventory,
) -> Result<
    proxmox_netbox_operator::pipeline::NetBoxResult,
    proxmox_netbox_operator::status::StageError,
> {
    let calls = CallCounter::default();
    let no_facts = BTreeMap::new();
    let sync = writer.sync(cluster, config, inv, &no_facts, false, Utc::now(), &calls);
    tokio::time::timeout(SYNC_DEADLINE, sync)
        .await
        .unwrap_or_else(|_| panic!("a sync still running after {SYNC_DEADLINE:?}"))
}

/// The harness, a generated fake PVE and its inventory.
struct Scenario {
    env: HarnessEnv,
    pve: FakePve,
    inv: Inventory,
    rest: Rest,
}

impl Scenario {
    async fn start() -> Self {
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
struct Findings {
    duplicates: Vec<String>,
    missing: Vec<String>,
}

async fn check(rest: &Rest, inv: &Inventory, cluster_name: &str) -> Findings {
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

#[tokio::test]
async fn random_netbox_write_faults_leave_no_duplicate_and_nothing_missing() {
    let _shared = NETBOX_SERVER.read().await;
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    // The Secrets `sync` would read; the resource is built per run below.
    let secrets_dir = tempfile::tempdir().unwrap();
    sync_files(&env, &pve, secrets_dir.path(), "unused");
    let secrets = DirSecrets::new(secrets_dir.path().join("secrets"));
    let faulty_syncs = env_number("CHAOS_FAULTY_SYNCS", 2);
    let mut failures = Vec::new();
    for seed in seeds() {
        let started = Instant::now();
        let rate = 0.05 + (seed % 16) as f64 / 100.0;
        let proxy = start(
            env.netbox_url.clone(),
            FaultPlan {
                seed,
                write_fault_rate: rate,
                client_timeout: CLIENT_TIMEOUT,
                scripted: None,
            },
        )
        .await;
        let tag = format!(
            "chaos-{seed}-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        );
        let cluster = cluster(&proxy.url, &tag, "3s");
        let owner = OwnerScope::new("chaos", "chaos", &tag);
        let config = resolve(&cluster, owner.clone(), &secrets).await.unwrap();
        // The clean syncs after the faults: a timeout a loaded NetBox meets.
        let patient = resolve(&cluster, owner, &secrets).await.map(|mut c| {
            c.netbox.timeout = Duration::from_secs(60);
            c
        });
        let patient = patient.unwrap();
        let writer = LiveWriter {
            endpoint_guard: EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
            settle: Default::default(),
        };
        let mut deleted = 0;
        for _ in 0..faulty_syncs {
            if let Ok(r) = sync_once(&writer, &cluster, &config, &inv).await {
                deleted += r.summary.deleted;
            }
        }
        let log = proxy.log();
        proxy.set_enabled(false);
        let clean = sync_once(&writer, &cluster, &patient, &inv).await;
        let converged = started.elapsed();
        let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let resync = sync_once(&writer, &cluster, &patient, &inv)
            .await
            .map(|r| r.summary.write_requests);
        let row = format!(
            "seed {seed}: {:.0}% of {} writes faulted ({} faults: {}), duplicates {}, missing {}, deletions {deleted}, clean sync {}, resync writes {:?}, converged in {:.0} s",
            rate * 100.0,
            log.writes,
            log.faults.len(),
            fault_kinds(&log.faults),
            findings.duplicates.len(),
            findings.missing.len(),
            if clean.is_ok() { "ok" } else { "failed" },
            resync,
            converged.as_secs_f64()
        );
        eprintln!("{row}");
        if !findings.duplicates.is_empty()
            || !findings.missing.is_empty()
            || clean.is_err()
            || resync != Ok(0)
            || deleted != 0
        {
            failures.push(format!("{row}\n  {findings:?}\n  clean: {clean:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "runs that did not converge cleanly:\n{}",
        failures.join("\n")
    );
}

fn fault_kinds(faults: &[(String, common::fault_proxy::Fault)]) -> String {
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for (_, f) in faults {
        let name = format!("{f:?}");
        let name = name.split('(').next().unwrap_or_default().to_string();
        *kinds.entry(name).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the Secrets and the resource file of a `sync` run against `pve` and NetBox.
fn sync_files(env: &HarnessEnv, pve: &FakePve, dir: &std::path::Path, tag: &str) {
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
        "apiVersion: proxmox-netbox.io/v1alpha1\nkind: ProxmoxCluster\nmetadata: {{name: {tag}, namespace: chaos}}\nspec:\n  proxmox: {{endpoints: [\"{}\"], credentialsSecretRef: {{name: pve}}, tls: {{caSecretRef: {{name: pve-ca, key: ca.crt}}}}}}\n  netbox: {{url: \"{}\", allowInsecureHttp: true, tokenSecretRef: {{name: nb, key: token}}, site: site-{tag}, clusterName: cluster-{tag}}}\n",
        pve.url, env.netbox_url
    );
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
}

/// A `sync --output json` of the resource in `dir`, its JSON written to `dir/<out>` (a
/// file, not a pipe: a report larger than a pipe's buffer must never block the process),
/// killed when dropped.
fn sync_command(dir: &std::path::Path, out: &str) -> tokio::process::Command {
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
    .env_remove("ALLOW_ENDPOINT_CIDRS")
    .stdout(std::fs::File::create(dir.join(out)).unwrap())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    c
}

/// The longest a `sync` of these runs may take before the test fails (a sync of 20-30
/// guests takes well under a minute; the stage deadlines are far longer).
const SYNC_DEADLINE: Duration = Duration::from_secs(300);

/// Waits for `child` to end, at most [`SYNC_DEADLINE`]; a sync still running then is
/// killed and the test fails saying so.
async fn wait_for(child: &mut tokio::process::Child, what: &str) -> std::process::ExitStatus {
    match tokio::time::timeout(SYNC_DEADLINE, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{what} still running after {SYNC_DEADLINE:?}");
        }
    }
}

/// Runs one `sync` to its end: whether it succeeded, and its JSON report.
async fn run_sync(dir: &std::path::Path, what: &str) -> (bool, Value) {
    let mut child = sync_command(dir, "report.json").spawn().unwrap();
    let ok = wait_for(&mut child, what).await.success();
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap_or_default();
    (ok, serde_json::from_str(&text).unwrap_or_default())
}

/// What is killed in the middle of a first sync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The `sync` process.
    Operator,
    /// NetBox's server (gunicorn master and workers), started again after a pause.
    NetBox,
}

fn netbox_script(action: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/harness/netbox.sh");
    let ok = std::process::Command::new("bash")
        .arg(script)
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "netbox.sh {action} failed");
}

async fn kill_mid_sync(victim: Victim) {
    use rand::{Rng, SeedableRng};
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    let what = match victim {
        Victim::Operator => "sync process",
        Victim::NetBox => "NetBox server",
    };
    let mut failures = Vec::new();
    for seed in seeds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let tag = format!(
            "kill-{seed}-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        );
        sync_files(&env, &pve, dir.path(), &tag);
        let started = Instant::now();
        // Somewhere in the first sync (a first sync of 20-30 guests takes 10-20 s).
        let kill_after = Duration::from_millis(rng.random_range(1000..12000));
        let mut first = sync_command(dir.path(), "first.json").spawn().unwrap();
        tokio::time::sleep(kill_after).await;
        let killed = first.try_wait().unwrap().is_none();
        match victim {
            Victim::Operator => {
                let _ = first.start_kill();
            }
            Victim::NetBox => {
                netbox_script("kill-gunicorn");
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                netbox_script("restart-gunicorn");
            }
        }
        wait_for(&mut first, "the first sync").await;
        // Then syncs until one succeeds (at most 4).
        let mut syncs = 0;
        let (converged, last) = loop {
            syncs += 1;
            let (ok, report) = run_sync(dir.path(), "a converging sync").await;
            if ok || syncs == 4 {
                let text: String = report.to_string().chars().take(2000).collect();
                break (ok, text);
            }
        };
        let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let (_, resync) = run_sync(dir.path(), "the resync").await;
        let resync_writes = resync["netbox"]["writeRequests"].as_u64();
        let row = format!(
            "seed {seed}: {what} killed after {:.1} s ({}), {syncs} sync(s) to converge, duplicates {}, missing {}, resync writes {:?}, converged in {:.0} s",
            kill_after.as_secs_f64(),
            if killed {
                "mid-sync"
            } else {
                "sync already done"
            },
            findings.duplicates.len(),
            findings.missing.len(),
            resync_writes,
            started.elapsed().as_secs_f64()
        );
        eprintln!("{row}");
        if !converged
            || !findings.duplicates.is_empty()
            || !findings.missing.is_empty()
            || resync_writes != Some(0)
        {
            failures.push(format!("{row}\n  {findings:?}\n  last: {last}"));
        }
    }
    assert!(
        failures.is_empty(),
        "runs that did not converge cleanly:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_sync_killed_at_a_random_moment_is_finished_by_the_next_without_duplicates() {
    let _shared = NETBOX_SERVER.read().await;
    kill_mid_sync(Victim::Operator).await;
}

#[tokio::test]
async fn netbox_killed_at_a_random_moment_of_a_sync_leaves_no_duplicate() {
    let _alone = NETBOX_SERVER.write().await;
    kill_mid_sync(Victim::NetBox).await;
}

#[tokio::test]
async fn a_create_netbox_executes_after_its_client_gave_up_is_waited_for_not_repeated() {
    let _shared = NETBOX_SERVER.read().await;
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    // The first bulk create of VMs: the client gets a reset at once, NetBox gets the
    // request 12 s later (and commits it after that).
    let proxy = start(
        env.netbox_url.clone(),
        FaultPlan {
            seed: 0,
            write_fault_rate: 0.0,
            client_timeout: CLIENT_TIMEOUT,
            scripted: Some((
                "POST /api/virtualization/virtual-machines/",
                Fault::LateExecution(Duration::from_secs(12)),
            )),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    sync_files(&env, &pve, dir.path(), "unused");
    let secrets = DirSecrets::new(dir.path().join("secrets"));
    let tag = format!("late-{}-{}", std::process::id(), Utc::now().timestamp());
    let cluster = cluster(&proxy.url, &tag, "20s");
    let config = resolve(&cluster, OwnerScope::new("chaos", "chaos", &tag), &secrets)
        .await
        .unwrap();
    let writer = LiveWriter {
        endpoint_guard: EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
        settle: Default::default(),
    };
    let first = sync_once(&writer, &cluster, &config, &inv).await.unwrap();
    assert!(first.report.lost_creates > 0, "{:?}", first.report.errors);
    // The next sync right away waits for the settle window (twice the request timeout: 40 s),
    // then finds the VMs.
    let started = Instant::now();
    let second = sync_once(&writer, &cluster, &config, &inv).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(39),
        "{:?}",
        started.elapsed()
    );
    assert!(
        second.report.errors.is_empty(),
        "{:?}",
        second.report.errors
    );
    assert_eq!(
        second.report.kinds["virtualization.virtualmachine"].created, 0,
        "the VMs NetBox created late were found"
    );
    let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
    assert!(
        findings.duplicates.is_empty() && findings.missing.is_empty(),
        "{findings:?}"
    );
    assert_eq!(proxy.log().faults.len(), 1);
}
