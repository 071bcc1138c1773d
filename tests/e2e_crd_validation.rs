//! The CRDs' validation, checked by a real kube-apiserver (the harness's: run
//! `scripts/harness/harness.sh up` first).
//!
//! The CRDs are applied by server-side apply and must become `Established`; then a table of
//! invalid ProxmoxCluster and NodeSSHCredential objects is sent, each of which the API server
//! must reject with a message naming the field at fault, and valid objects must be accepted.
//! Objects are created as `kubectl create` sends them (strict field validation: an unknown
//! field such as a Secret reference's `namespace` is an error), in a namespace of their own
//! that is deleted at the end.
//!
//! The kubeconfig comes from `KUBECONFIG` when set, else from the harness
//! (`$PNBO_KUBECONFIG`, started when it is not up).

mod common;

use std::time::{Duration, Instant};

use kube::{Client, Resource};

use common::kube::{TestNamespace, admin_client, apply_crds};
use serde_json::{Value, json};

use proxmox_netbox_operator::config::bounded_duration;
use proxmox_netbox_operator::crd::{
    NETBOX_REQUEST_TIMEOUT_BOUNDS, NodeSSHCredential, PRUNE_GRACE_PERIOD_BOUNDS,
    PVE_REQUEST_TIMEOUT_BOUNDS, ProxmoxCluster, SSH_COMMAND_TIMEOUT_BOUNDS,
    SSH_CONNECT_TIMEOUT_BOUNDS, SYNC_INTERVAL_BOUNDS,
};

/// Field manager of everything this test applies.
const MANAGER: &str = "pno-e2e-crd-validation";

const FINGERPRINT: &str = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";

fn valid_cluster() -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": "valid"},
        "spec": {
            "proxmox": {"endpoints": ["https://pve1.example.com:8006", "https://10.0.0.2:8006"],
                        "credentialsSecretRef": {"name": "lab-pve"},
                        "tls": {"caSecretRef": {"name": "lab-pve-ca", "key": "ca.crt"}},
                        "requestTimeout": "1m30s", "maxConcurrency": 64},
            "netbox": {"url": "https://netbox.example.com",
                       "tokenSecretRef": {"name": "netbox", "key": "token"}, "site": "dc1",
                       "maxInFlight": 16, "tags": ["pve"]},
            "sync": {"interval": "720h", "mode": "DryRun", "kinds": ["Nodes", "VirtualMachines"],
                     "prune": {"enabled": true, "gracePeriod": "0s"}},
            "hardwareDiscovery": {"enabled": true, "connectTimeout": "10m", "commandTimeout": "1.25s250000µs"}
        }
    })
}

fn valid_credential() -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
        "metadata": {"name": "valid"},
        "spec": {"clusterRef": {"name": "valid"}, "nodeName": "pve1", "username": "netbox-discovery",
                 "port": 2222, "privateKeySecretRef": {"name": "pve1-ssh", "key": "id_ed25519"},
                 "hostKeyFingerprint": FINGERPRINT}
    })
}

/// `base` with the value at a dotted path (`spec.sync.interval`) replaced, or removed for
/// `Value::Null`.
fn with(base: Value, path: &str, value: Value) -> Value {
    let mut obj = base;
    let (parents, last) = path.rsplit_once('.').expect("a dotted path");
    let mut node = &mut obj;
    for p in parents.split('.') {
        node = &mut node[p];
    }
    match value {
        Value::Null => {
            node.as_object_mut().expect("an object").remove(last);
        }
        v => node[last] = v,
    }
    obj
}

/// One object the API server must refuse.
struct Case {
    /// What is wrong with it.
    what: &'static str,
    /// The object.
    object: Value,
    /// Every one of these must be in the API server's message (the first names the field).
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let cluster = valid_cluster;
    let credential = valid_credential;
    let endpoints = |n: usize| {
        json!(
            (0..n)
                .map(|i| format!("https://pve{i}.example.com:8006"))
                .collect::<Vec<_>>()
        )
    };
    vec![
        Case {
            what: "a sync interval too large for any duration",
            object: with(
                cluster(),
                "spec.sync.interval",
                json!("99999999999999999999h"),
            ),
            // CEL's duration() itself fails; the rule's message still names the field.
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a sync interval above its bound",
            object: with(cluster(), "spec.sync.interval", json!("721h")),
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a sync interval below its minimum",
            object: with(cluster(), "spec.sync.interval", json!("10s")),
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a PVE request timeout above its bound",
            object: with(cluster(), "spec.proxmox.requestTimeout", json!("2h")),
            expect: &[
                "spec.proxmox.requestTimeout",
                "spec.proxmox.requestTimeout must be between 1s and 1h",
            ],
        },
        Case {
            what: "a negative grace period",
            object: with(cluster(), "spec.sync.prune.gracePeriod", json!("-1h")),
            expect: &["spec.sync.prune.gracePeriod", "should match"],
        },
        Case {
            what: "a grace period in days",
            object: with(cluster(), "spec.sync.prune.gracePeriod", json!("30d")),
            expect: &["spec.sync.prune.gracePeriod", "should match"],
        },
        Case {
            what: "an over-long duration text",
            object: with(
                cluster(),
                "spec.hardwareDiscovery.connectTimeout",
                json!("1s".repeat(17)),
            ),
            expect: &["spec.hardwareDiscovery.connectTimeout", "Too long"],
        },
        Case {
            what: "an SSH command timeout of zero",
            object: with(
                cluster(),
                "spec.hardwareDiscovery.commandTimeout",
                json!("0s"),
            ),
            expect: &[
                "spec.hardwareDiscovery.commandTimeout",
                "must be between 1s and 1h",
            ],
        },
        Case {
            what: "an ftp:// PVE endpoint",
            object: with(
                cluster(),
                "spec.proxmox.endpoints",
                json!(["ftp://pve1.example.com:8006"]),
            ),
            expect: &["spec.proxmox.endpoints[0]", "should match"],
        },
        Case {
            what: "a plain-http PVE endpoint",
            object: with(
                cluster(),
                "spec.proxmox.endpoints",
                json!([
                    "https://pve1.example.com:8006",
                    "http://pve2.example.com:8006"
                ]),
            ),
            expect: &["spec.proxmox.endpoints[1]", "should match"],
        },
        Case {
            what: "no PVE endpoint",
            object: with(cluster(), "spec.proxmox.endpoints", json!([])),
            expect: &["spec.proxmox.endpoints"],
        },
        Case {
            what: "17 PVE endpoints",
            object: with(cluster(), "spec.proxmox.endpoints", endpoints(17)),
            expect: &["spec.proxmox.endpoints", "Too many"],
        },
        Case {
            what: "an ftp:// NetBox URL",
            object: with(
                cluster(),
                "spec.netbox.url",
                json!("ftp://netbox.example.com"),
            ),
            expect: &["spec.netbox.url", "should match"],
        },
        Case {
            what: "maxInFlight 0",
            object: with(cluster(), "spec.netbox.maxInFlight", json!(0)),
            expect: &["spec.netbox.maxInFlight", "greater than or equal to 1"],
        },
        Case {
            what: "maxConcurrency 100000",
            object: with(cluster(), "spec.proxmox.maxConcurrency", json!(100_000)),
            expect: &["spec.proxmox.maxConcurrency", "less than or equal to 64"],
        },
        Case {
            what: "a 101-character site",
            object: with(cluster(), "spec.netbox.site", json!("s".repeat(101))),
            expect: &["spec.netbox.site", "Too long"],
        },
        Case {
            what: "33 tags",
            object: with(
                cluster(),
                "spec.netbox.tags",
                json!((0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            ),
            expect: &["spec.netbox.tags", "Too many"],
        },
        Case {
            what: "an unknown sync mode",
            object: with(cluster(), "spec.sync.mode", json!("Sometimes")),
            expect: &["spec.sync.mode", "Unsupported value"],
        },
        Case {
            what: "an unknown sync kind",
            object: with(cluster(), "spec.sync.kinds", json!(["Nodes", "Printers"])),
            expect: &["spec.sync.kinds[1]", "Unsupported value"],
        },
        Case {
            what: "an unknown deletion policy",
            object: with(cluster(), "spec.deletionPolicy", json!("Purge")),
            expect: &["spec.deletionPolicy", "Unsupported value"],
        },
        Case {
            what: "a CA bundle together with insecureSkipVerify",
            object: with(
                cluster(),
                "spec.proxmox.tls.insecureSkipVerify",
                json!(true),
            ),
            expect: &[
                "spec.proxmox.tls",
                "caSecretRef and insecureSkipVerify: true exclude each other",
            ],
        },
        Case {
            what: "a Secret reference into another namespace",
            object: with(
                cluster(),
                "spec.proxmox.credentialsSecretRef.namespace",
                json!("kube-system"),
            ),
            expect: &["spec.proxmox.credentialsSecretRef.namespace"],
        },
        Case {
            what: "no NetBox site",
            object: with(cluster(), "spec.netbox.site", Value::Null),
            expect: &["spec.netbox.site", "Required value"],
        },
        Case {
            what: "a host-key fingerprint that is not SHA256",
            object: with(
                credential(),
                "spec.hostKeyFingerprint",
                json!("MD5:aa:bb:cc"),
            ),
            expect: &["spec.hostKeyFingerprint", "should match"],
        },
        Case {
            what: "a truncated SHA256 fingerprint",
            object: with(
                credential(),
                "spec.hostKeyFingerprint",
                json!(&FINGERPRINT[..40]),
            ),
            expect: &["spec.hostKeyFingerprint", "should match"],
        },
        Case {
            what: "two SSH authentication methods",
            object: with(
                credential(),
                "spec.passwordSecretRef",
                json!({"name": "pve1-ssh", "key": "password"}),
            ),
            expect: &[
                "spec",
                "exactly one of privateKeySecretRef and passwordSecretRef must be set",
            ],
        },
        Case {
            what: "no SSH authentication method",
            object: with(credential(), "spec.privateKeySecretRef", Value::Null),
            expect: &[
                "spec",
                "exactly one of privateKeySecretRef and passwordSecretRef must be set",
            ],
        },
        Case {
            what: "SSH port 70000",
            object: with(credential(), "spec.port", json!(70_000)),
            expect: &["spec.port", "less than or equal to 65535"],
        },
        Case {
            what: "a user name with a shell metacharacter",
            object: with(credential(), "spec.username", json!("root;id")),
            expect: &["spec.username", "should match"],
        },
        Case {
            what: "a 64-character node name",
            object: with(credential(), "spec.nodeName", json!("n".repeat(64))),
            expect: &["spec.nodeName", "Too long"],
        },
        Case {
            what: "a private-key Secret reference into another namespace",
            object: with(
                credential(),
                "spec.privateKeySecretRef.namespace",
                json!("kube-system"),
            ),
            expect: &["spec.privateKeySecretRef.namespace"],
        },
    ]
}

/// Creates `object` (of its own kind) with strict field validation, as `kubectl create` and
/// `kubectl apply` send it (an unknown field is an error, not a warning), and returns the
/// stored object. `dry_run` stores nothing.
async fn create(
    client: &Client,
    ns: &str,
    object: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let path = match object["kind"].as_str() {
        Some("ProxmoxCluster") => ProxmoxCluster::url_path(&(), Some(ns)),
        Some("NodeSSHCredential") => NodeSSHCredential::url_path(&(), Some(ns)),
        other => panic!("unexpected kind {other:?}"),
    };
    let dry_run = if dry_run { "&dryRun=All" } else { "" };
    let request = http::Request::post(format!(
        "{path}?fieldValidation=Strict&fieldManager={MANAGER}{dry_run}"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(object).expect("serializable"))
    .expect("a valid request");
    client.request::<Value>(request).await
}

/// Applies the CRDs, waits until they are `Established` and the API server enforces this
/// build's schema (an update of an existing CRD takes effect shortly after it is stored).
async fn install_crds(client: &Client, ns: &str) {
    apply_crds(client).await;
    // A rule of this build (the sync interval's upper bound) is enforced once the new schema
    // is live; a dry run leaves nothing behind.
    let probe = with(
        with(valid_cluster(), "metadata.name", json!("schema-probe")),
        "spec.sync.interval",
        json!("721h"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match create(client, ns, &probe, true).await {
            Err(kube::Error::Api(s)) if s.message.contains("spec.sync.interval") => return,
            other if Instant::now() > deadline => panic!(
                "the API server does not enforce the CRD's sync-interval bound 20 s after the \
                 CRDs were applied: {other:?}"
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn api_server_rejects_invalid_resources_naming_the_field() {
    proxmox_netbox_operator::tls::install_crypto_provider();
    let started = Instant::now();
    let env = common::harness::ensure_up();
    let client = admin_client(&env).await;
    let namespace = TestNamespace::create(&env, &client, "pno-crd-validation").await;
    let ns = namespace.name.clone();

    install_crds(&client, &ns).await;

    let cases = cases();
    assert!(cases.len() >= 14);
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let object = with(
            case.object.clone(),
            "metadata.name",
            json!(format!("invalid-{i}")),
        );
        match create(&client, &ns, &object, false).await {
            Ok(_) => wrong.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(s)) => {
                let missing: Vec<&str> = case
                    .expect
                    .iter()
                    .copied()
                    .filter(|e| !s.message.contains(e))
                    .collect();
                // 422 Invalid for the schema and CEL rules, 400 BadRequest for unknown fields.
                if !(s.code == 422 || s.code == 400) || !missing.is_empty() {
                    wrong.push(format!(
                        "{}: HTTP {} without {missing:?}: {}",
                        case.what, s.code, s.message
                    ));
                } else {
                    eprintln!("rejected as expected, {}: {}", case.what, s.message);
                }
            }
            Err(e) => wrong.push(format!("{}: {e}", case.what)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} invalid objects were not rejected as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Valid objects are accepted, with the schema's defaults filled in.
    let cluster = create(&client, &ns, &valid_cluster(), false)
        .await
        .unwrap_or_else(|e| panic!("the valid ProxmoxCluster was refused: {e}"));
    assert_eq!(cluster["spec"]["sync"]["interval"], "720h");
    assert_eq!(cluster["spec"]["netbox"]["requestTimeout"], "60s");
    assert_eq!(cluster["spec"]["deletionPolicy"], "Orphan");
    // What the API server accepts, the operator's own parser accepts too.
    let typed: ProxmoxCluster = serde_json::from_value(cluster).expect("a ProxmoxCluster");
    let spec = &typed.spec;
    for (bounds, value) in [
        (PVE_REQUEST_TIMEOUT_BOUNDS, &spec.proxmox.request_timeout),
        (NETBOX_REQUEST_TIMEOUT_BOUNDS, &spec.netbox.request_timeout),
        (SYNC_INTERVAL_BOUNDS, &spec.sync.interval),
        (PRUNE_GRACE_PERIOD_BOUNDS, &spec.sync.prune.grace_period),
        (
            SSH_CONNECT_TIMEOUT_BOUNDS,
            &spec.hardware_discovery.connect_timeout,
        ),
        (
            SSH_COMMAND_TIMEOUT_BOUNDS,
            &spec.hardware_discovery.command_timeout,
        ),
    ] {
        bounded_duration(&bounds, value)
            .unwrap_or_else(|e| panic!("accepted by the API server, not by the operator: {e:?}"));
    }
    assert_eq!(
        bounded_duration(
            &SSH_COMMAND_TIMEOUT_BOUNDS,
            &spec.hardware_discovery.command_timeout
        ),
        Ok(Duration::from_millis(1500))
    );
    let minimal = with(
        with(
            with(valid_cluster(), "metadata.name", json!("minimal")),
            "spec.sync",
            Value::Null,
        ),
        "spec.hardwareDiscovery",
        Value::Null,
    );
    let minimal = create(&client, &ns, &minimal, false)
        .await
        .unwrap_or_else(|e| panic!("a ProxmoxCluster with defaults only was refused: {e}"));
    assert_eq!(minimal["spec"]["sync"]["interval"], "15m");
    assert_eq!(
        minimal["spec"]["hardwareDiscovery"]["commandTimeout"],
        "30s"
    );
    let credential = create(&client, &ns, &valid_credential(), false)
        .await
        .unwrap_or_else(|e| panic!("the valid NodeSSHCredential was refused: {e}"));
    assert_eq!(credential["spec"]["sudo"], true);
    let with_password = with(
        with(valid_credential(), "metadata.name", json!("password")),
        "spec.privateKeySecretRef",
        Value::Null,
    );
    let with_password = with(
        with_password,
        "spec.passwordSecretRef",
        json!({"name": "pve1-ssh", "key": "password"}),
    );
    create(&client, &ns, &with_password, false)
        .await
        .unwrap_or_else(|e| panic!("a NodeSSHCredential with a password was refused: {e}"));

    eprintln!(
        "{} invalid objects rejected, 4 valid ones accepted in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
}
