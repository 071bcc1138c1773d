//! The `sync` command checks its input file as the API server checks a created object: every
//! object of the table that the harness's kube-apiserver refuses (`e2e_crd_validation`) is
//! refused by `sync` too, before any Secret is read or any endpoint is contacted, with a
//! message naming the same field; the valid objects load.

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::crd_cases::{cases, valid_cluster, valid_credential, with};
use proxmox_netbox_operator::sync_cmd::load_resources;

/// A file holding `objects`, as JSON documents of a YAML stream.
fn file(objects: &[Value]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let text: Vec<String> = objects.iter().map(Value::to_string).collect();
    std::fs::write(f.path(), text.join("\n---\n")).unwrap();
    f
}

#[test]
fn every_object_the_api_server_refuses_is_refused_by_the_sync_file_check() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for case in &cases {
        // A credential alone would be refused for the missing cluster: add a valid one.
        let objects = match case.object["kind"].as_str() {
            Some("NodeSSHCredential") => vec![valid_cluster(), case.object.clone()],
            _ => vec![case.object.clone()],
        };
        let f = file(&objects);
        match load_resources(f.path()) {
            Ok(_) => wrong.push(format!("{}: accepted", case.what)),
            Err(e) => {
                let message = e.to_string();
                let missing: Vec<&&str> = case
                    .expect
                    .iter()
                    .filter(|w| !message.contains(**w))
                    .collect();
                if missing.is_empty() {
                    eprintln!("refused as expected, {}: {message}", case.what);
                } else {
                    wrong.push(format!("{}: without {missing:?}: {message}", case.what));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} invalid objects were not refused as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let f = file(&[valid_cluster(), valid_credential()]);
    let (cluster, credentials) = load_resources(f.path()).expect("the valid objects load");
    assert_eq!(cluster.metadata.name.as_deref(), Some("valid"));
    assert_eq!(credentials.len(), 1);
}

#[test]
fn the_sync_command_refuses_an_invalid_file_before_reading_a_secret() {
    let invalid = with(valid_cluster(), "spec.sync.interval", json!("721h"));
    let f = file(&[invalid]);
    let secrets = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxmox-netbox-operator"))
        .args(["sync", "-f"])
        .arg(f.path())
        .arg("--secrets-dir")
        .arg(secrets.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.sync.interval must be between 30s and 720h"),
        "{stderr}"
    );
    // Not a missing-Secret error: the file was refused first.
    assert!(!stderr.contains("Secret"), "{stderr}");
}
