//! Hardware discovery against a real OpenSSH server: pinned host keys, every auth method,
//! timeouts that leave nothing running, output caps.

mod common;

use std::time::{Duration, Instant};

use common::sshd::Sshd;
use proxmox_netbox_operator::hardware::discovery::{collect, warning_for};
use proxmox_netbox_operator::hardware::facts::LinkKind;
use proxmox_netbox_operator::hardware::ssh::{SshAuth, SshError, SshTarget};
use proxmox_netbox_operator::secret::SecretString;

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
        "discovery of one node (3 physical NICs) took {:?}",
        started.elapsed()
    );
    let system = hw.system.unwrap();
    assert_eq!(
        system.product_name.as_deref(),
        Some("PowerEdge R640"),
        "dmidecode ran through sudo -n"
    );
    assert_eq!(
        hw.chassis.unwrap().chassis_type.as_deref(),
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
    // ethtool runs only for physical NICs.
    assert!(
        hw.nics
            .iter()
            .filter(|n| n.link.kind != LinkKind::Physical)
            .all(|n| n.ethtool.is_none())
    );
    assert!(sshd.log().contains("Accepted publickey for pnbo-key"));
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
    assert!(hw.nics.len() > 3);
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

fn stub_processes() -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-u", "pnbo-key", "-f", "sleep 3600"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn hanging_command_times_out_and_leaves_no_process() {
    let sshd = Sshd::start("hang");
    let mut t = target(&sshd, key_auth(&sshd, "SSH_KEY_FILE", None), "pnbo-key");
    t.sudo = false;
    t.command_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = collect(&t).await.unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert_eq!(warning_for(&err).code, "Timeout");
    assert!(started.elapsed() < Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stub_processes() > 0 {
        assert!(
            Instant::now() < deadline,
            "the hung command is still running on the node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
