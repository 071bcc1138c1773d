//! The `sync` subcommand end to end, as a user runs it: the fake PVE, a real OpenSSH
//! server for hardware discovery and the real NetBox.

mod common;

use std::path::Path;
use std::process::Command;

use common::harness::{FakePve, HarnessEnv, checking_http_client, topology};
use common::sshd::Sshd;
use serde_json::Value;

/// Tests that write to NetBox, or count its change log, take turns.
static NETBOX: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn write(dir: &Path, secret: &str, key: &str, value: &str) {
    std::fs::create_dir_all(dir.join(secret)).unwrap();
    std::fs::write(dir.join(secret).join(key), value).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    secrets: Vec<String>,
}

/// Writes cluster.yaml (+ NodeSSHCredentials for pve1..pve3 aimed at `sshd`) and the secrets.
fn setup(
    env: &HarnessEnv,
    pve: &FakePve,
    sshd: &Sshd,
    discovery: bool,
    name: &str,
    token_secret: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("secrets");
    write(&s, "pve", "tokenId", &pve.token_id);
    write(&s, "pve", "tokenSecret", token_secret);
    write(
        &s,
        "pve-ca",
        "ca.crt",
        &std::fs::read_to_string(&pve.ca_file).unwrap(),
    );
    write(&s, "nb", "token", &env.netbox_token);
    let key = sshd.file("SSH_KEY_FILE");
    write(&s, "node-ssh", "id_ed25519", &key);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let unique = format!("{name}-{}-{nanos:x}", std::process::id());
    let mut yaml = format!(
        "apiVersion: proxmox-netbox.io/v1alpha1\nkind: ProxmoxCluster\nmetadata: {{name: {unique}, namespace: cli}}\nspec:\n  proxmox: {{endpoints: [\"{}\"], credentialsSecretRef: {{name: pve}}, tls: {{caSecretRef: {{name: pve-ca, key: ca.crt}}}}}}\n  netbox: {{url: \"{}\", allowInsecureHttp: true, tokenSecretRef: {{name: nb, key: token}}, site: {unique}, clusterName: {unique}}}\n  hardwareDiscovery: {{enabled: {discovery}}}\n",
        pve.url, env.netbox_url
    );
    for node in ["pve1", "pve2", "pve3"] {
        yaml.push_str(&format!(
            "---\napiVersion: proxmox-netbox.io/v1alpha1\nkind: NodeSSHCredential\nmetadata: {{name: {unique}-{node}, namespace: cli}}\nspec:\n  clusterRef: {{name: {unique}}}\n  nodeName: {node}\n  address: 127.0.0.1\n  port: {}\n  username: pnbo-key\n  privateKeySecretRef: {{name: node-ssh, key: id_ed25519}}\n  hostKeyFingerprint: \"{}\"\n  sudo: true\n",
            sshd.port(),
            sshd.var("SSH_HOST_FINGERPRINT")
        ));
    }
    std::fs::write(dir.path().join("cluster.yaml"), yaml).unwrap();
    Setup {
        dir,
        secrets: vec![token_secret.to_string(), env.netbox_token.clone(), key],
    }
}

fn sync(setup: &Setup, output: &str) -> (bool, String, String) {
    sync_with(setup, &["--output", output])
}

/// `sync` with `args`, loopback allowed (the harness runs on loopback).
fn sync_with(setup: &Setup, args: &[&str]) -> (bool, String, String) {
    let mut all = args.to_vec();
    all.extend(["--allow-endpoint-cidr", "127.0.0.0/8"]);
    run_cli(setup, &all, &[])
}

/// `sync` with exactly `args` and the environment variables `env`.
fn run_cli(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxmox-netbox-operator"))
        .args(["sync", "-f"])
        .arg(setup.dir.path().join("cluster.yaml"))
        .arg("--secrets-dir")
        .arg(setup.dir.path().join("secrets"))
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("PNO_ALLOW_ENDPOINT_CIDRS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    for secret in &setup.secrets {
        let probe: String = secret
            .lines()
            .nth(1)
            .unwrap_or(secret)
            .chars()
            .take(24)
            .collect();
        assert!(
            !stdout.contains(&probe) && !stderr.contains(&probe),
            "a secret value was printed"
        );
    }
    (out.status.success(), stdout, stderr)
}

/// GET of a NetBox API path (after `/api/`).
async fn netbox_get(env: &HarnessEnv, path: &str) -> Value {
    checking_http_client()
        .get(format!("{}/api/{path}", env.netbox_url))
        .bearer_auth(&env.netbox_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The condition of a type in the `sync --output json` document.
fn condition(out: &Value, type_: &str) -> Value {
    out["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
        .clone()
}

/// The harness, a fresh fake PVE with `topo`, an sshd, and the files of one cluster.
struct Run {
    env: HarnessEnv,
    _pve: FakePve,
    sshd: Sshd,
    setup: Setup,
}

/// Starts a run; `token_secret` replaces the PVE token secret when given.
fn start(topo: &str, discovery: bool, name: &str, token_secret: Option<&str>) -> Run {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology(topo)]);
    let sshd = Sshd::start("normal");
    let secret = token_secret.unwrap_or(&pve.token_secret).to_string();
    let setup = setup(&env, &pve, &sshd, discovery, name, &secret);
    Run {
        env,
        _pve: pve,
        sshd,
        setup,
    }
}

#[tokio::test]
async fn sync_with_discovery_puts_facts_in_status_and_netbox() {
    let _turn = NETBOX.lock().await;
    let Run {
        env,
        _pve,
        sshd,
        setup,
    } = start("demo.json", true, "discovery", None);
    let (ok, stdout, stderr) = sync(&setup, "json");
    assert!(ok, "{stdout}\n{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["schemaVersion"], 1);
    assert_eq!(out["success"], true);
    assert_eq!(out["inventory"]["vms"], 6);
    // NetBox 4.7 assigns a MAC given at an interface's creation: no guest interface is
    // written twice (the version is read through the same client as every request).
    let plan = out["netbox"]["plan"].as_array().unwrap();
    assert!(
        plan.iter()
            .any(|p| p["kind"] == "virtualization.vminterface")
    );
    let patched: Vec<&Value> = plan
        .iter()
        .filter(|p| p["kind"] == "virtualization.vminterface" && p["action"] == "update")
        .collect();
    assert!(patched.is_empty(), "{patched:?}");
    let nodes = out["status"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(
            n["hardware"]["system"]["productName"], "PowerEdge R640",
            "{n}"
        );
        assert!(n["lastDiscoveryTime"].is_string());
        assert!(n.get("warning").is_none());
    }
    let ready = condition(&out, "HardwareDiscovered");
    assert_eq!(ready["status"], "True");
    assert_eq!(
        sshd.log()
            .matches("Accepted publickey for pnbo-key")
            .count(),
        3,
        "one connection per node"
    );

    // In NetBox: serial and chassis facts on the device, link facts on the NIC.
    let cluster = out["cluster"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let devices = netbox_get(
        &env,
        // The owner mark of `sync` (installation id `sync` by default).
        &format!("dcim/devices/?cf_proxmox_owner__isw=sync/cli/{cluster}/&name=pve1"),
    )
    .await;
    let dev = &devices["results"][0];
    let mark = dev["custom_fields"]["proxmox_owner"].as_str().unwrap();
    assert!(mark.starts_with(&format!("sync/cli/{cluster}/")), "{mark}");
    assert_eq!(dev["serial"], "2RJF153");
    assert_eq!(dev["device_type"]["model"], "PowerEdge R640");
    let ifaces = netbox_get(
        &env,
        &format!("dcim/interfaces/?device_id={}&name=enp65s0f0", dev["id"]),
    )
    .await;
    let nic = &ifaces["results"][0];
    assert_eq!(nic["speed"], 10_000_000);
    assert_eq!(nic["custom_fields"]["nic_speed_gbps"], 10);
    assert_eq!(nic["type"]["value"], "10gbase-x-sfpp");
    assert_eq!(
        nic["primary_mac_address"]["mac_address"],
        "B8:59:9F:20:00:01"
    );

    // Unchanged facts: the second sync writes nothing.
    let (ok, stdout, _) = sync(&setup, "json");
    assert!(ok);
    let again: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        again["status"]["sync"]["writeRequests"], 0,
        "{}",
        again["netbox"]["plan"]
    );
}

#[tokio::test]
async fn discovery_disabled_opens_no_ssh_connection() {
    let _turn = NETBOX.lock().await;
    let Run {
        _pve, sshd, setup, ..
    } = start("small.json", false, "nodiscovery", None);
    let (ok, stdout, stderr) = sync(&setup, "text");
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("DiscoveryDisabled"), "{stdout}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!sshd.log().contains("Connection from"), "{}", sshd.log());
}

#[tokio::test]
async fn rejected_pve_token_fails_with_a_clear_reason_and_no_secret() {
    let Run { _pve, setup, .. } = start(
        "small.json",
        false,
        "badtoken",
        Some("00000000-dead-beef-0000-000000000000"),
    );
    let (ok, stdout, _) = sync(&setup, "json");
    assert!(!ok, "a failed sync exits non-zero");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["success"], false);
    let ready = condition(&out, "Ready");
    assert_eq!(ready["reason"], "ProxmoxUnauthorized");
    assert!(ready["message"].as_str().unwrap().contains("401"));
    assert!(
        out.get("netbox").is_none(),
        "NetBox is not touched after a failed read"
    );
}

/// Rows in NetBox's change log.
async fn netbox_changes(env: &HarnessEnv) -> u64 {
    netbox_get(env, "core/object-changes/?limit=1").await["count"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn dry_run_prints_the_inventory_and_the_plan_and_writes_nothing() {
    let _turn = NETBOX.lock().await;
    let Run {
        env, _pve, setup, ..
    } = start("small.json", false, "dryrun", None);
    let before = netbox_changes(&env).await;
    let (ok, stdout, stderr) = sync_with(&setup, &["--dry-run"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(DryRun): OK"), "{stdout}");
    assert!(
        stdout.contains("Proxmox inventory: 1 nodes (1 online), 2 VMs, 1 containers, 0 templates,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 write requests"),
        "dry-run sends no write: {stdout}"
    );
    let plan_line = regex::Regex::new(
        r"(?m)^  create +virtualization\.virtualmachine +vm 100 \(web01\) \[.*name.*\]$",
    )
    .unwrap();
    assert!(plan_line.is_match(&stdout), "{stdout}");
    assert_eq!(netbox_changes(&env).await, before, "nothing written");
    // The JSON form has the same plan in full.
    let (_, json, _) = sync_with(&setup, &["--dry-run", "--output", "json"]);
    let out: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(out["mode"], "DryRun");
    assert_eq!(out["inventory"]["vms"], 2);
    assert!(
        out["netbox"]["plan"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["action"] == "create" && p["object"] == "vm 200 (dns01)"),
        "{}",
        out["netbox"]["plan"]
    );
}

#[tokio::test]
async fn the_file_is_checked_by_the_endpoint_guard_before_anything_is_read() {
    let Run {
        _pve, sshd, setup, ..
    } = start("small.json", true, "guard", None);
    let file = setup.dir.path().join("cluster.yaml");
    // Without the allow flag: the loopback PVE endpoint is refused, naming the field.
    let (ok, stdout, stderr) = run_cli(&setup, &["--output", "json"], &[]);
    assert!(!ok, "{stdout}");
    assert!(stdout.is_empty(), "nothing ran: {stdout}");
    assert!(
        stderr.contains(&format!(
            "error: {}: spec.proxmox.endpoints[0]: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)",
            file.display()
        )),
        "{stderr}"
    );
    // An allow-list that does not cover loopback changes nothing.
    let (ok, _, stderr) = run_cli(&setup, &["--allow-endpoint-cidr", "10.0.0.0/8"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("127.0.0.1 is a loopback address"),
        "{stderr}"
    );
    // Plain http NetBox without allowInsecureHttp is refused too, by the CRD's rule.
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, yaml.replace("allowInsecureHttp: true, ", "")).unwrap();
    let (ok, _, stderr) = sync_with(&setup, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "spec.netbox: Invalid value: spec.netbox.url must use https unless spec.netbox.allowInsecureHttp is true"
        ),
        "{stderr}"
    );
    std::fs::write(&file, &yaml).unwrap();
    // A bad CIDR is a usage error.
    let (ok, _, stderr) = run_cli(&setup, &["--allow-endpoint-cidr", "127.0.0.1/8"], &[]);
    assert!(!ok);
    assert!(stderr.contains("did you mean 127.0.0.0/8"), "{stderr}");
    // The environment variable works like the flag (comma-separated): the dry run passes
    // the guard and reads everything, SSH included.
    let (ok, stdout, stderr) = run_cli(
        &setup,
        &["--dry-run", "--output", "json"],
        &[("PNO_ALLOW_ENDPOINT_CIDRS", "10.0.0.0/8,127.0.0.0/8")],
    );
    assert!(ok, "{stdout}\n{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(condition(&out, "HardwareDiscovered")["status"], "True");
    assert!(sshd.log().contains("Accepted publickey for pnbo-key"));
}
