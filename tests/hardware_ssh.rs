//! Hardware discovery against a real OpenSSH server: pinned host keys, every auth method,
//! timeouts that leave nothing running (node side, client side, under sudo), output caps,
//! interface names made of shell code, and the forced-command wrapper of the docs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use proxmox_netbox_operator::hardware::discovery::{collect, collect_node, warning_for};
use proxmox_netbox_operator::hardware::facts::{LinkKind, NodeHardware};
use proxmox_netbox_operator::hardware::ssh::{SshAuth, SshError, SshTarget};
use proxmox_netbox_operator::net::guard::{AddressClass, EndpointGuard};
use proxmox_netbox_operator::secrets::SecretString;

/// The physical NICs of the stub node, by name.
const PHYSICAL: [&str; 4] = ["eno1", "eno2", "enp65s0f0", "enp65s0f1"];

/// The harness's sshd listens on loopback: the endpoint guard must be told to allow it.
fn loopback_allowed() -> EndpointGuard {
    EndpointGuard::new(["127.0.0.0/8".parse().unwrap()])
}

fn target(sshd: &Sshd, auth: SshAuth, user: &str) -> SshTarget {
    SshTarget {
        address: "127.0.0.1".into(),
        port: sshd.port(),
        username: user.into(),
        auth,
        host_key_fingerprint: sshd.var("SSH_HOST_FINGERPRINT"),
        sudo: true,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        max_output_bytes: 1024 * 1024,
        endpoint_guard: loopback_allowed(),
        recorder: Default::default(),
    }
}

fn key_auth(sshd: &Sshd, var: &str, passphrase: Option<String>) -> SshAuth {
    SshAuth::PrivateKey {
        pem: SecretString::new(sshd.file(var)),
        passphrase: passphrase.map(SecretString::new),
    }
}

#[tokio::test]
async fn key_auth_gathers_system_chassis_and_nic_facts() {
    let sshd = Sshd::start("normal");
    let started = Instant::now();
    let hw = collect(&target(
        &sshd,
        key_auth(&sshd, "SSH_KEY_FILE", None),
        "pnbo-key",
    ))
    .await
    .unwrap();
    eprintln!(
        "discovery of one node (4 physical NICs) took {:?}",
        started.elapsed()
    );
    let system = hw.system.as_ref().unwrap();
    assert_eq!(
        system.product_name.as_deref(),
        Some("PowerEdge R640"),
        "dmidecode ran through sudo -n"
    );
    assert_eq!(
        hw.chassis.as_ref().unwrap().chassis_type.as_deref(),
        Some("Rack Mount Chassis")
    );
    let names: Vec<&str> = hw.nics.iter().map(|n| n.link.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "bond0",
            "eno1",
            "eno2",
            "enp65s0f0",
            "enp65s0f1",
            "vlan60",
            "vmbr0",
            "vmbr0.50"
        ],
        "no lo, tap, veth or fwbr"
    );
    let eno1 = hw.nics.iter().find(|n| n.link.name == "eno1").unwrap();
    assert_eq!(eno1.link.kind, LinkKind::Physical);
    assert_eq!(eno1.ethtool.as_ref().unwrap().speed_mbps, Some(1000));
    let fibre = hw.nics.iter().find(|n| n.link.name == "enp65s0f0").unwrap();
    assert_eq!(fibre.ethtool.as_ref().unwrap().speed_mbps, Some(10000));
    // The second SFP+ port has no link: its speed is unknown, not invented.
    let unplugged = hw.nics.iter().find(|n| n.link.name == "enp65s0f1").unwrap();
    assert_eq!(unplugged.link.state.as_deref(), Some("DOWN"));
    let e = unplugged.ethtool.as_ref().unwrap();
    assert_eq!(
        (
            e.speed_mbps,
            e.duplex.as_deref(),
            e.link_detected,
            e.port.as_deref()
        ),
        (None, None, Some(false), Some("FIBRE"))
    );
    assert_eq!(physical_names(&hw), PHYSICAL);
    // ethtool runs only for physical NICs, once each.
    assert!(
        hw.nics
            .iter()
            .filter(|n| n.link.kind != LinkKind::Physical)
            .all(|n| n.ethtool.is_none())
    );
    assert_eq!(
        ethtool_runs(&sshd),
        PHYSICAL.map(|n| format!("ethtool [{n}]"))
    );
    assert!(sshd.log().contains("Accepted publickey for pnbo-key"));
}

fn physical_names(hw: &NodeHardware) -> Vec<&str> {
    hw.nics
        .iter()
        .filter(|n| n.link.kind == LinkKind::Physical)
        .map(|n| n.link.name.as_str())
        .collect()
}

/// The ethtool stub's log lines, sorted.
fn ethtool_runs(sshd: &Sshd) -> Vec<String> {
    let mut runs: Vec<String> = sshd
        .stub_log()
        .lines()
        .filter(|l| l.starts_with("ethtool"))
        .map(str::to_string)
        .collect();
    runs.sort();
    runs
}

#[tokio::test]
async fn the_connection_and_each_command_are_timed_without_names_or_addresses() {
    let sshd = Sshd::start("normal");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxmox_netbox_operator::metrics::Metrics::new(&mut registry);
    let mut target = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    target.recorder = metrics.ssh.recorder("infra/lab");
    collect(&target).await.unwrap();
    let text = proxmox_netbox_operator::metrics::render(&registry);
    let count = |operation: &str| {
        format!(
            r#"proxmox_netbox_ssh_command_duration_seconds_count{{cluster="infra/lab",operation="{operation}",outcome="success"}} "#
        )
    };
    for (operation, n) in [
        ("connect", 1),
        ("dmidecode_system", 1),
        ("dmidecode_chassis", 1),
        ("ip_link", 1),
        ("ethtool", PHYSICAL.len()),
    ] {
        let line = format!("{}{n}", count(operation));
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    for name in PHYSICAL.iter().chain(&["127.0.0.1", "pnbo-key"]) {
        assert!(!text.contains(name), "{name} in a label:\n{text}");
    }
}

#[tokio::test]
async fn passphrase_key_and_password_auth() {
    let sshd = Sshd::start("normal");
    let hw = collect(&target(
        &sshd,
        key_auth(
            &sshd,
            "SSH_PASSPHRASE_KEY_FILE",
            Some(sshd.var("SSH_PASSPHRASE")),
        ),
        "pnbo-key",
    ))
    .await
    .unwrap();
    assert!(hw.system.is_some());
    // The password user has no sudo: dmidecode runs without it (the stub allows that).
    let mut t = target(
        &sshd,
        SshAuth::Password(SecretString::new(sshd.var("SSH_PASSWORD"))),
        "pnbo-pass",
    );
    t.sudo = false;
    let hw = collect(&t).await.unwrap();
    assert_eq!(hw.nics.len(), 8);
    assert_eq!(physical_names(&hw), PHYSICAL);
    assert!(sshd.log().contains("Accepted password for pnbo-pass"));
}

#[tokio::test]
async fn wrong_passphrase_is_credential_invalid_before_connecting() {
    let sshd = Sshd::start("normal");
    let err = collect(&target(
        &sshd,
        key_auth(&sshd, "SSH_PASSPHRASE_KEY_FILE", Some("wrong".into())),
        "pnbo-key",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SshError::CredentialInvalid(_)), "{err}");
    assert_eq!(warning_for(&err).code, "CredentialInvalid");
}

#[tokio::test]
async fn wrong_fingerprint_sends_no_credential() {
    let sshd = Sshd::start("normal");
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.host_key_fingerprint = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".into();
    let err = collect(&t).await.unwrap_err();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    let w = warning_for(&err);
    assert_eq!(w.code, "HostKeyMismatch");
    assert!(w.message.contains("before any credential was sent"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = sshd.log();
    assert!(log.contains("Connection from 127.0.0.1"), "{log}");
    assert!(
        !log.contains("pnbo-key"),
        "no authentication may be attempted: {log}"
    );
}

#[tokio::test]
async fn loopback_node_addresses_are_refused_without_the_allow_flag_before_connecting() {
    let sshd = Sshd::start("normal");
    for address in ["127.0.0.1", "localhost", "::ffff:127.0.0.1"] {
        let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
        t.address = address.into();
        t.endpoint_guard = EndpointGuard::default();
        let err = collect(&t).await.unwrap_err();
        let SshError::EndpointRefused(refusal) = &err else {
            panic!("{address}: {err:?}")
        };
        assert_eq!(refusal.class, AddressClass::Loopback, "{address}");
        let w = warning_for(&err);
        assert_eq!(w.code, "EndpointRefused");
        assert!(
            w.message.contains("a loopback address")
                && w.message
                    .ends_with("; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"),
            "{}",
            w.message
        );
        if address == "localhost" {
            assert!(
                w.message
                    .starts_with("localhost resolves to 127.0.0.1, a loopback address"),
                "{}",
                w.message
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !sshd.log().contains("Connection from"),
        "no connection was made: {}",
        sshd.log()
    );
    // The same node by name, with loopback allowed: resolved, checked, connected.
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.address = "localhost".into();
    let hw = collect(&t).await.unwrap();
    assert_eq!(physical_names(&hw), PHYSICAL);
}

#[tokio::test]
async fn unknown_key_is_auth_failed() {
    let sshd = Sshd::start("normal");
    let err = collect(&target(
        &sshd,
        key_auth(&sshd, "SSH_UNKNOWN_KEY_FILE", None),
        "pnbo-key",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err}");
    assert_eq!(warning_for(&err).code, "AuthFailed");
    let pw = collect(&target(
        &sshd,
        SshAuth::Password(SecretString::new("not-the-password")),
        "pnbo-pass",
    ))
    .await
    .unwrap_err();
    assert!(matches!(pw, SshError::AuthFailed { .. }));
    assert!(!pw.to_string().contains("not-the-password"));
}

/// How many processes of `user` run `command` (`pgrep -f`).
async fn processes(user: &str, command: &str) -> usize {
    let out = tokio::process::Command::new("pgrep")
        .args(["-u", user, "-f", command])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The largest number of `user`'s processes running `command` seen during `window`.
async fn watch(user: &str, command: &str, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut most = 0;
    while Instant::now() < end {
        most = most.max(processes(user, command).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    most
}

/// Waits until no process of `user` runs `command`; fails after `limit`.
async fn assert_none_left(user: &str, command: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let n = processes(user, command).await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} `{command}` of {user} still running on the node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn hanging_command_times_out_and_leaves_no_process() {
    // The stubs ignore SIGTERM: the node's `timeout -k 2` must send SIGKILL.
    let sshd = Sshd::start("hang");
    let hung = sshd.hung_command();
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.sudo = false;
    t.command_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (result, seen) = tokio::join!(
        collect(&t),
        watch("pnbo-key", &hung, Duration::from_millis(1500))
    );
    let err = result.unwrap_err();
    assert_eq!(seen, 3, "dmidecode -t 1, -t 3 and ip were hung at once");
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert_eq!(warning_for(&err).code, "Timeout");
    // SIGTERM at 2 s, SIGKILL at 4 s, well before the client's own limit (7 s).
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert_none_left("pnbo-key", &hung, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn client_side_timeout_kills_the_command_when_the_node_does_not() {
    // `timeout` on this node enforces nothing: only the operator can end the hung commands,
    // by signalling them over the channel, closing it and disconnecting.
    let sshd = Sshd::start("no-remote-timeout");
    let hung = sshd.hung_command();
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.sudo = false;
    t.command_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (result, seen) = tokio::join!(
        collect(&t),
        watch("pnbo-key", &hung, Duration::from_secs(3))
    );
    let elapsed = started.elapsed();
    let err = result.unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert_eq!(warning_for(&err).code, "Timeout");
    assert_eq!(seen, 3, "the three first commands hung");
    assert!(
        sshd.stub_log().contains("timeout (not enforced) -k 2 2"),
        "the node-side timeout was bypassed: {}",
        sshd.stub_log()
    );
    // The client gives up after the command timeout + 5 s of grace, not later.
    assert!(
        elapsed >= Duration::from_secs(7) && elapsed < Duration::from_secs(12),
        "{elapsed:?}"
    );
    // Every one of the three, not only the first to time out.
    assert_none_left("pnbo-key", &hung, Duration::from_secs(5)).await;
    let log = sshd.log();
    assert!(log.contains("Received disconnect"), "{log}");
}

#[tokio::test]
async fn hung_root_command_under_sudo_is_killed_on_the_node() {
    // dmidecode runs as root through `sudo -n` and ignores SIGTERM. A `timeout` running as
    // pnbo-key could only signal sudo (SIGKILL kills sudo, not its root child), so the
    // operator puts `timeout` behind `sudo -n`, where it runs as root.
    let sshd = Sshd::start("hang");
    let hung = sshd.hung_command();
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    assert!(t.sudo);
    t.command_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (result, seen) = tokio::join!(
        collect(&t),
        watch("root", &hung, Duration::from_millis(1500))
    );
    let err = result.unwrap_err();
    assert_eq!(seen, 2, "dmidecode -t 1 and -t 3 hung as root");
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert_none_left("root", &hung, Duration::from_secs(5)).await;
    assert_none_left("pnbo-key", &hung, Duration::from_secs(5)).await;
}

/// Captures what the operator logs at WARN and above on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

#[tokio::test]
async fn interface_names_with_shell_code_never_reach_the_node() {
    let sshd = Sshd::start("metachar");
    // What the two names would create in pnbo-key's home if they reached a shell.
    let home = std::path::PathBuf::from(sshd.var("SSH_KEY_HOME"));
    let side_effects = [home.join("pw"), home.join("p")];
    for f in &side_effects {
        let _ = std::fs::remove_file(f);
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let hw = collect_node(
        "pve-meta",
        &target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key"),
    )
    .await
    .expect("the node is discovered");

    let evil = ["a;touch${IFS}pw", "$(touch${IFS}p)"];
    for name in evil {
        let nic = hw
            .nics
            .iter()
            .find(|n| n.link.name == name)
            .unwrap_or_else(|| panic!("{name} is kept"));
        assert_eq!(nic.link.kind, LinkKind::Physical);
        assert!(nic.ethtool.is_none(), "{name} has no ethtool facts");
    }
    // ethtool ran for the real NICs, never for the two others.
    assert_eq!(
        ethtool_runs(&sshd),
        PHYSICAL.map(|n| format!("ethtool [{n}]"))
    );
    assert!(!sshd.stub_log().contains("touch"), "{}", sshd.stub_log());
    assert!(
        hw.nics
            .iter()
            .filter(|n| PHYSICAL.contains(&n.link.name.as_str()))
            .all(|n| n.ethtool.is_some())
    );
    for f in &side_effects {
        assert!(!f.exists(), "{} was created on the node", f.display());
    }
    let warnings = logs.text();
    for name in evil {
        assert!(
            warnings
                .lines()
                .any(|l| l.contains("WARN") && l.contains("pve-meta") && l.contains(name)),
            "no warning naming the node and {name}: {warnings}"
        );
    }
    assert!(
        !warnings.contains("BEGIN OPENSSH"),
        "no key material in logs"
    );
}

#[tokio::test]
async fn output_over_the_cap_fails_the_node() {
    let sshd = Sshd::start("huge");
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.sudo = false;
    t.max_output_bytes = 64 * 1024;
    let err = collect(&t).await.unwrap_err();
    assert!(matches!(err, SshError::OutputTooLarge { .. }), "{err}");
    assert_eq!(warning_for(&err).code, "Failed");
}

#[tokio::test]
async fn command_refused_by_sudo_is_command_failed_with_status() {
    let sshd = Sshd::start("normal");
    // pnbo-pass may not sudo: `sudo -n` fails with status 1 and says why.
    let t = target(
        &sshd,
        SshAuth::Password(SecretString::new(sshd.var("SSH_PASSWORD"))),
        "pnbo-pass",
    );
    let err = collect(&t).await.unwrap_err();
    match &err {
        SshError::CommandFailed {
            command, status, ..
        } => {
            assert_eq!(command, "dmidecode -t 1");
            assert_eq!(*status, 1);
        }
        other => panic!("{other}"),
    }
    assert_eq!(warning_for(&err).code, "CommandFailed");
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The body of the first fenced block of `lang` after `heading` in a Markdown text.
fn fenced_block_after(markdown: &str, heading: &str, lang: &str) -> String {
    let rest = &markdown[markdown.find(heading).expect("heading") + heading.len()..];
    let open = format!("\n```{lang}\n");
    let start = rest.find(&open).expect("opening fence") + open.len();
    let end = start + rest[start..].find("\n```\n").expect("closing fence") + 1;
    rest[start..end].to_string()
}

#[test]
fn the_documented_wrapper_and_sudoers_rule_are_the_tested_ones() {
    let doc = repo_file("docs/hardware-discovery.md");
    let documented = fenced_block_after(&doc, "## The forced-command wrapper", "sh");
    let tested = repo_file("scripts/harness/stubs/netbox-discovery-wrapper");
    assert!(tested.starts_with("#!/bin/sh\n"));
    assert_eq!(
        documented, tested,
        "docs/hardware-discovery.md and scripts/harness/stubs/netbox-discovery-wrapper differ"
    );
    // The sudoers rule of the docs is the one sshd.sh installs for the harness user.
    let rule = "NOPASSWD: /usr/bin/timeout ^-k 2 [0-9]+ dmidecode -t [13]$";
    assert!(
        doc.contains(&format!("netbox-discovery ALL=(root) {rule}")),
        "the documented sudoers rule changed"
    );
    let _sshd = Sshd::start("wrapper");
    let installed = std::fs::read_to_string("/etc/sudoers.d/pnbo-harness").unwrap();
    assert!(
        installed.contains(&format!("pnbo-key ALL=(root) {rule}")),
        "{installed}"
    );
    // And so is the authorized_keys line (from= aside).
    assert!(doc.contains(
        "restrict,from=\"10.0.0.0/8\",command=\"/usr/local/sbin/netbox-discovery-wrapper\" ssh-ed25519"
    ));
}

/// Runs `command` as pnbo-key with the OpenSSH client; returns (exit status, stderr).
fn ssh_client(sshd: &Sshd, command: &str) -> (i32, String) {
    let out = std::process::Command::new("ssh")
        .args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(sshd.var("SSH_KEY_FILE"))
        .args([
            "-p",
            &sshd.port().to_string(),
            "pnbo-key@127.0.0.1",
            command,
        ])
        .output()
        .expect("run ssh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn discovery_runs_through_the_documented_forced_command_wrapper() {
    let sshd = Sshd::start("wrapper");
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    let hw = collect(&t).await.expect("every command passes the wrapper");
    assert_eq!(
        hw.system.as_ref().unwrap().product_name.as_deref(),
        Some("PowerEdge R640"),
        "sudo -n timeout ... dmidecode passed the wrapper and sudoers"
    );
    assert!(hw.chassis.is_some());
    assert_eq!(physical_names(&hw), PHYSICAL);
    assert!(
        hw.nics
            .iter()
            .filter(|n| n.link.kind == LinkKind::Physical)
            .all(|n| n.ethtool.is_some())
    );
    // sudo: false sends dmidecode without `sudo -n`: allowed too.
    t.sudo = false;
    assert!(collect(&t).await.unwrap().system.is_some());

    // The key can run nothing else: the wrapper is in force.
    for refused in [
        "id",
        "timeout -k 2 30 ethtool eno1;id",
        "timeout -k 2 30 ethtool 'eno1'",
        "timeout -k 2 30 ethtool -i eno1",
        "timeout -k 2 30 sh -c id",
        "sudo -n timeout -k 2 30 ip -o link show",
        "sudo -n timeout -k 2 30 dmidecode -t 2",
        "timeout -k 9 30 dmidecode -t 1",
    ] {
        let (status, stderr) = ssh_client(&sshd, refused);
        assert_eq!(status, 126, "{refused}: {stderr}");
        assert!(
            stderr.contains("netbox-discovery-wrapper: command refused"),
            "{refused}: {stderr}"
        );
    }
    let (status, stderr) = ssh_client(&sshd, "timeout -k 2 30 ip -o link show");
    assert_eq!(status, 0, "{stderr}");
}
