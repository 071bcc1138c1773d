//! The plain manifests under deploy/ stay true to the code: RBAC grants exactly the calls in
//! `KUBERNETES_API_CALLS`, and deploy/crds.yaml equals the generated CRDs.

use std::collections::BTreeSet;

use proxmox_netbox_operator::controller::KUBERNETES_API_CALLS;
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// (group, resource, verb) triples granted by the Roles and ClusterRoles of a manifest.
pub fn granted(yaml: &str) -> BTreeSet<(String, String, String)> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    let mut out = BTreeSet::new();
    for doc in docs {
        if !matches!(doc["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        for rule in doc["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().into_iter().flatten() {
                    for v in rule["verbs"].as_array().into_iter().flatten() {
                        out.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_the_calls_the_code_makes() {
    let granted = granted(&read("deploy/rbac.yaml"));
    let needed: BTreeSet<(String, String, String)> = KUBERNETES_API_CALLS
        .iter()
        .map(|c| {
            (
                c.group.to_string(),
                c.resource.to_string(),
                c.verb.to_string(),
            )
        })
        .collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "RBAC lacks rules for {missing:?}");
    assert!(
        extra.is_empty(),
        "RBAC grants calls the code never makes: {extra:?}"
    );
}

#[test]
fn deploy_crds_equal_the_generated_crds() {
    assert_eq!(
        read("deploy/crds.yaml"),
        proxmox_netbox_operator::crd::crds_yaml().unwrap(),
        "deploy/crds.yaml is stale: run `cargo run -- crdgen > deploy/crds.yaml`"
    );
}

#[test]
fn deployment_runs_locked_down() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read("deploy/deployment.yaml")).unwrap();
    let spec = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &spec["containers"][0]["securityContext"];
    assert_eq!(c["allowPrivilegeEscalation"], false);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["capabilities"]["drop"][0], "ALL");
}

#[test]
fn dockerfile_pins_every_base_image_by_digest() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "{froms:?}");
    for from in froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let digest = image
            .split_once("@sha256:")
            .map(|(_, d)| d)
            .unwrap_or_default();
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "not pinned by digest: {from}"
        );
    }
}
