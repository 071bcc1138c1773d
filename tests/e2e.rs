//! End-to-end test against a real Kubernetes cluster (any cluster given by `KUBECONFIG`).
//!
//! Not run in CI (no API server can run there). Run it with the harness up:
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test --release --test e2e -- --ignored --nocapture
//! ```
//!
//! The test starts the harness itself (`scripts/harness/harness.sh up`) when
//! `$PNBO_HARNESS_DIR/env.json` is missing, and leaves it running (`harness.sh down`
//! stops it). It waits for the CRDs to be `Established`, and deletes its namespace on
//! success and failure alike (a drop guard, which first clears the operator's finalizers
//! so the namespace cannot hang in `Terminating` once the operator is gone).
//!
//! It applies the CRDs, creates a namespace with Secrets and a ProxmoxCluster aimed at the
//! harness's fake PVE and real NetBox, runs the operator binary outside the cluster with
//! that kubeconfig, and waits for `Ready=True` with `observedGeneration` equal to
//! `metadata.generation`. It also checks that the API server rejects invalid resources
//! with a clear message. The operator must reach the harness on 127.0.0.1, so run it on
//! the machine where the harness runs (kind, k3d, minikube with host networking, or a
//! remote cluster reached through the kubeconfig all work: only the operator talks to PVE
//! and NetBox).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;

use proxmox_netbox_operator::crd::{NodeSSHCredential, ProxmoxCluster, all_crds};

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes the test namespace when dropped, whether the test passed or panicked. Runs on
/// its own thread and runtime (the test's runtime may be unwinding), with a fresh client.
struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let ns = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the namespace cleanup");
            rt.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    eprintln!("cannot clean up namespace {ns}: no client");
                    return;
                };
                // Without the operator nobody removes its finalizer: drop it first.
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
                match namespaces.delete(&ns, &DeleteParams::default()).await {
                    Ok(_) => eprintln!("namespace {ns} deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => eprintln!("cannot delete namespace {ns}: {e}"),
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs a real Kubernetes cluster via KUBECONFIG and the harness (see the module docs)"]
async fn operator_reconciles_a_cluster_to_ready() {
    proxmox_netbox_operator::tls::install_crypto_provider();
    let env = common::harness::ensure_up();
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster");
    let ns_name = format!("pno-e2e-{}", std::process::id());

    // CRDs, applied and then waited for until the API server serves them.
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

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns_name}})).unwrap(),
        )
        .await
        .unwrap();
    // From here on the namespace goes away however the test ends.
    let _namespace = NamespaceGuard(ns_name.clone());

    // Invalid resources are rejected by the API server with a clear message.
    let creds: Api<NodeSSHCredential> = Api::namespaced(client.clone(), &ns_name);
    let both: NodeSSHCredential = serde_json::from_value(json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
        "metadata": {"name": "both"},
        "spec": {"clusterRef": {"name": "lab"}, "nodeName": "pve1", "username": "u",
                 "privateKeySecretRef": {"name": "k", "key": "id"},
                 "passwordSecretRef": {"name": "p", "key": "pw"},
                 "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}
    }))
    .unwrap();
    let err = creds
        .create(&PostParams::default(), &both)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("exactly one of privateKeySecretRef and passwordSecretRef"),
        "{err}"
    );
    let mut bad_fp = both.clone();
    bad_fp.metadata.name = Some("bad-fp".into());
    bad_fp.spec.password_secret_ref = None;
    bad_fp.spec.host_key_fingerprint = "aa:bb:cc".into();
    let err = creds
        .create(&PostParams::default(), &bad_fp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hostKeyFingerprint"), "{err}");

    // Secrets and the cluster, aimed at the harness.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_name);
    let ca = std::fs::read_to_string(&env.pve_ca_file).unwrap();
    for s in [
        secret(
            "pve",
            &[
                ("tokenId", &env.pve_token_id),
                ("tokenSecret", &env.pve_token_secret),
            ],
        ),
        secret("pve-ca", &[("ca.crt", &ca)]),
        secret("netbox", &[("token", &env.netbox_token)]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let clusters: Api<ProxmoxCluster> = Api::namespaced(client.clone(), &ns_name);
    let cluster: ProxmoxCluster = serde_json::from_value(json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": "lab"},
        "spec": {
            "proxmox": {"endpoints": [env.pve_url], "credentialsSecretRef": {"name": "pve"},
                        "tls": {"caSecretRef": {"name": "pve-ca", "key": "ca.crt"}}},
            "netbox": {"url": env.netbox_url, "tokenSecretRef": {"name": "netbox", "key": "token"},
                       "site": format!("e2e-{ns_name}")},
            "sync": {"interval": "1m"}
        }
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();

    let _operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_proxmox-netbox-operator"))
            .args([
                "run",
                "--namespace",
                &ns_name,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(300);
    let ready = loop {
        let c = clusters.get("lab").await.unwrap();
        let generation = c.metadata.generation;
        let ready = c.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|x| x.type_ == "Ready")
                .filter(|x| x.status == "True" && x.observed_generation == generation)
                .cloned()
        });
        if let Some(r) = ready {
            break (c, r);
        }
        assert!(
            Instant::now() < deadline,
            "not Ready in time: {:?}",
            c.status
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let status = ready.0.status.unwrap();
    assert_eq!(status.observed_generation, ready.0.metadata.generation);
    assert!(status.summary.unwrap().nodes > 0);
    assert!(
        ready
            .0
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&proxmox_netbox_operator::controller::FINALIZER.to_string())
    );

    // Deleting with the default Orphan policy lets the resource go.
    clusters
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while clusters.get_opt("lab").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "finalizer was not removed");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The namespace is deleted by the guard.
}
