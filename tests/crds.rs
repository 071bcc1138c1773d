//! The checked-in CRD YAML equals what the types generate, and the schema's validation
//! (patterns, enums, CEL rules) accepts and rejects what it should.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use proxmox_netbox_operator::crd::{NodeSSHCredential, ProxmoxCluster, crds_yaml};
use serde_json::{Value, json};

fn crate_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let generated = crds_yaml().unwrap();
    let committed = std::fs::read_to_string(crate_path("crds/crds.yaml")).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/crds.yaml is stale: run `cargo run -- crdgen > crds/crds.yaml`"
    );
}

#[test]
fn crd_reference_doc_is_current() {
    let committed =
        std::fs::read_to_string(crate_path("docs/crd-reference.md")).unwrap_or_default();
    assert!(
        committed == proxmox_netbox_operator::crd::reference_markdown(),
        "docs/crd-reference.md is stale: run `cargo run -- crdgen --reference > docs/crd-reference.md`"
    );
}

#[test]
fn integer_formats_are_ones_the_api_server_knows() {
    // Kubernetes knows int32 and int64; `uint32` from a Rust u32 is not a valid format.
    let generated = crds_yaml().unwrap();
    let formats: std::collections::BTreeSet<&str> = generated
        .lines()
        .filter_map(|l| l.trim().strip_prefix("format: "))
        .collect();
    let known = ["int32", "int64", "date-time", "double", "byte"];
    assert!(
        formats.iter().all(|f| known.contains(f)),
        "unknown formats in the CRDs: {formats:?}"
    );
}

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn credential(spec: Value) -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
        "metadata": {"name": "lab-pve1", "namespace": "infra"},
        "spec": spec,
    })
}

fn base_credential() -> Value {
    json!({
        "clusterRef": {"name": "lab"},
        "nodeName": "pve1",
        "username": "netbox-discovery",
        "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    })
}

#[test]
fn cel_requires_exactly_one_ssh_auth_method() {
    let schema = schema_of::<NodeSSHCredential>();
    let v = Validator::new();

    let mut key_only = base_credential();
    key_only["privateKeySecretRef"] = json!({"name": "pve1-ssh", "key": "id_ed25519"});
    assert!(
        v.validate(&schema, &credential(key_only.clone()), None)
            .is_ok()
    );

    let mut password_only = base_credential();
    password_only["passwordSecretRef"] = json!({"name": "pve1-ssh", "key": "password"});
    assert!(
        v.validate(&schema, &credential(password_only), None)
            .is_ok()
    );

    let mut both = key_only;
    both["passwordSecretRef"] = json!({"name": "pve1-ssh", "key": "password"});
    let err = v.validate(&schema, &credential(both), None).unwrap_err();
    assert!(
        format!("{err:?}").contains("exactly one of privateKeySecretRef and passwordSecretRef"),
        "{err:?}"
    );

    let neither = base_credential();
    assert!(v.validate(&schema, &credential(neither), None).is_err());
}

#[test]
fn cel_rejects_a_ca_bundle_together_with_skipped_verification() {
    let schema = schema_of::<ProxmoxCluster>();
    let v = Validator::new();
    let cluster = |tls: Value| {
        json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab", "namespace": "infra"},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1.example.com:8006"],
                            "credentialsSecretRef": {"name": "lab-pve"}, "tls": tls},
                "netbox": {"url": "https://netbox.example.com",
                           "tokenSecretRef": {"name": "netbox", "key": "token"}, "site": "dc1"}
            }
        })
    };
    let ca = json!({"name": "lab-pve-ca", "key": "ca.crt"});
    for ok in [
        json!({"caSecretRef": ca}),
        json!({"caSecretRef": ca, "insecureSkipVerify": false}),
        json!({"insecureSkipVerify": true}),
        json!({}),
    ] {
        assert!(
            v.validate(&schema, &cluster(ok.clone()), None).is_ok(),
            "{ok}"
        );
    }
    let err = v
        .validate(
            &schema,
            &cluster(json!({"caSecretRef": ca, "insecureSkipVerify": true})),
            None,
        )
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("caSecretRef and insecureSkipVerify: true exclude each other"),
        "{err:?}"
    );
}

/// Looks up the schema of a property path like `spec.hostKeyFingerprint`.
fn property<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(schema, |s, p| &s["properties"][p])
}

#[test]
fn schema_patterns_and_enums_are_declared() {
    let cred = schema_of::<NodeSSHCredential>();
    let fp = property(&cred, "spec.hostKeyFingerprint");
    assert_eq!(fp["pattern"], "^SHA256:[A-Za-z0-9+/]{43}$");
    let required = cred["properties"]["spec"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("hostKeyFingerprint")));
    assert_eq!(property(&cred, "spec.port")["maximum"], 65535.0);

    let cluster = schema_of::<ProxmoxCluster>();
    assert_eq!(
        property(&cluster, "spec.sync.mode")["enum"],
        json!(["Sync", "DryRun"])
    );
    assert_eq!(
        property(&cluster, "spec.deletionPolicy")["default"],
        "Orphan"
    );
    assert_eq!(
        property(&cluster, "spec.hardwareDiscovery.enabled")["default"],
        false
    );
    assert_eq!(
        property(&cluster, "spec.proxmox.tls.insecureSkipVerify")["default"],
        false
    );
    let endpoints = property(&cluster, "spec.proxmox.endpoints");
    assert_eq!(endpoints["minItems"], 1);
    assert!(
        endpoints["items"]["pattern"]
            .as_str()
            .unwrap()
            .starts_with("^https://")
    );
}

/// The documented patterns really accept good values and reject bad ones (checked with the
/// same regular-expression semantics the API server applies to these simple patterns).
#[test]
fn fingerprint_and_duration_patterns_accept_and_reject() {
    use proxmox_netbox_operator::crd::{DURATION_PATTERN, FINGERPRINT_PATTERN};
    let fp = regex::Regex::new(FINGERPRINT_PATTERN).unwrap();
    assert!(fp.is_match("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"));
    assert!(!fp.is_match("MD5:aa:bb"));
    assert!(!fp.is_match("SHA256:short"));
    assert!(!fp.is_match("uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"));
    let d = regex::Regex::new(DURATION_PATTERN).unwrap();
    for ok in ["30s", "15m", "1h30m", "24h", "1.5h", "500ms"] {
        assert!(d.is_match(ok), "{ok}");
    }
    for bad in ["", "15", "-5m", "1d", "m"] {
        assert!(!d.is_match(bad), "{bad}");
    }
}

#[test]
fn examples_parse_as_the_crd_types() {
    let dir = crate_path("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs {
            match doc["kind"].as_str() {
                Some("ProxmoxCluster") => {
                    serde_json::from_value::<ProxmoxCluster>(doc.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    Validator::new()
                        .validate(&schema_of::<ProxmoxCluster>(), &doc, None)
                        .unwrap();
                    seen += 1;
                }
                Some("NodeSSHCredential") => {
                    serde_json::from_value::<NodeSSHCredential>(doc.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    Validator::new()
                        .validate(&schema_of::<NodeSSHCredential>(), &doc, None)
                        .unwrap();
                    seen += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        seen >= 2,
        "examples/ must hold a ProxmoxCluster and a NodeSSHCredential"
    );
}

/// Every duration field of the spec has the pattern, a length limit and a CEL rule whose
/// bounds are the ones the operator's own parser enforces.
#[test]
fn duration_fields_are_bounded_in_the_schema_like_in_the_parser() {
    use proxmox_netbox_operator::crd::{DURATION_FIELDS, DURATION_MAX_LENGTH, DURATION_PATTERN};
    let schema = schema_of::<ProxmoxCluster>();
    for bounds in DURATION_FIELDS {
        let field = property(&schema, bounds.field);
        assert_eq!(field["type"], "string", "{}", bounds.field);
        assert_eq!(field["pattern"], DURATION_PATTERN, "{}", bounds.field);
        assert_eq!(field["maxLength"], DURATION_MAX_LENGTH, "{}", bounds.field);
        let rules = field["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "{}", bounds.field);
        let rule = rules[0]["rule"].as_str().unwrap();
        assert!(
            rule.contains(&format!(
                "duration(self) <= duration('{}')",
                bounds.max_text()
            )),
            "{}: {rule}",
            bounds.field
        );
        assert_eq!(
            rule.contains(&format!(
                "duration(self) >= duration('{}')",
                bounds.min_text()
            )),
            bounds.min_secs > 0,
            "{}: {rule}",
            bounds.field
        );
        let message = rules[0]["message"].as_str().unwrap();
        assert!(message.starts_with(bounds.field), "{message}");
    }
    // Every string field of the spec whose name ends like a duration is in the list.
    let mut found = Vec::new();
    collect(&schema["properties"]["spec"], "spec", &mut |path, s| {
        if s["pattern"] == DURATION_PATTERN {
            found.push(path.to_string());
        }
    });
    let listed: Vec<&str> = DURATION_FIELDS.iter().map(|b| b.field).collect();
    found.sort();
    let mut expected: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected);
}

/// Calls `f` on every schema node under `schema` (objects' properties and lists' items),
/// with its path (`spec.proxmox.endpoints[]`).
fn collect(schema: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, schema);
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            collect(prop, &format!("{path}.{name}"), f);
        }
    }
    if schema["type"] == "array" {
        collect(&schema["items"], &format!("{path}[]"), f);
    }
}

/// What a client can send is bounded everywhere: every string has a maxLength (or an enum),
/// every list a maxItems, every integer a minimum and a maximum.
#[test]
fn every_spec_field_is_bounded() {
    for (kind, schema) in [
        ("ProxmoxCluster", schema_of::<ProxmoxCluster>()),
        ("NodeSSHCredential", schema_of::<NodeSSHCredential>()),
    ] {
        let mut unbounded = Vec::new();
        let mut seen = 0;
        collect(&schema["properties"]["spec"], "spec", &mut |path, s| {
            seen += 1;
            let ok = match s["type"].as_str() {
                Some("string") => s["maxLength"].is_number() || s["enum"].is_array(),
                Some("array") => s["maxItems"].is_number(),
                Some("integer") | Some("number") => {
                    s["minimum"].is_number() && s["maximum"].is_number()
                }
                _ => true,
            };
            if !ok {
                unbounded.push(path.to_string());
            }
        });
        assert!(seen > 10, "{kind}: the walk found only {seen} nodes");
        assert!(
            unbounded.is_empty(),
            "{kind}: unbounded fields {unbounded:?}"
        );
    }
}

fn cluster_with(path: &str, value: Value) -> Value {
    let mut c = json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": "lab", "namespace": "infra"},
        "spec": {
            "proxmox": {"endpoints": ["https://pve1.example.com:8006"],
                        "credentialsSecretRef": {"name": "lab-pve"}},
            "netbox": {"url": "https://netbox.example.com",
                       "tokenSecretRef": {"name": "netbox", "key": "token"}, "site": "dc1"},
            "sync": {"prune": {}},
            "hardwareDiscovery": {}
        }
    });
    let mut node = &mut c;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        node = &mut node[*p];
    }
    node[parts[parts.len() - 1]] = value;
    c
}

/// The CEL rules of the duration fields, evaluated locally: the bounds hold, the message names
/// the field, and a value CEL itself cannot represent is refused too.
#[test]
fn cel_bounds_every_duration_field() {
    use proxmox_netbox_operator::crd::DURATION_FIELDS;
    let schema = schema_of::<ProxmoxCluster>();
    let v = Validator::new();
    for bounds in DURATION_FIELDS {
        for ok in [bounds.min_text(), bounds.max_text()] {
            let obj = cluster_with(bounds.field, json!(ok));
            assert!(
                v.validate(&schema, &obj, None).is_ok(),
                "{} = {ok}",
                bounds.field
            );
        }
        let above = format!("{}s", bounds.max_secs + 1);
        let err = v
            .validate(&schema, &cluster_with(bounds.field, json!(above)), None)
            .unwrap_err();
        assert!(format!("{err:?}").contains(bounds.field), "{err:?}");
        if bounds.min_secs > 0 {
            let below = format!("{}ms", bounds.min_secs * 1000 - 1);
            let err = v
                .validate(&schema, &cluster_with(bounds.field, json!(below)), None)
                .unwrap_err();
            assert!(format!("{err:?}").contains(bounds.field), "{err:?}");
        }
        let huge = cluster_with(bounds.field, json!("99999999999999999999h"));
        assert!(
            v.validate(&schema, &huge, None).is_err(),
            "{}",
            bounds.field
        );
    }
}
