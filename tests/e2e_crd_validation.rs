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

use common::crd_cases::{cases, valid_cluster, valid_credential, with};
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
