//! Checks a ProxmoxCluster or NodeSSHCredential document against the OpenAPI schema of its
//! CRD as the API server does: types, required fields, unknown fields, enums, patterns,
//! lengths, item counts, numeric bounds, and the CEL rules (`x-kubernetes-validations`,
//! evaluated client-side by kube's CEL validator). The `sync` command uses it: its input
//! file never passes an API server. Messages name the field in the API server's words
//! (`spec.netbox.site: Required value`).

use kube::CustomResourceExt;
use serde_json::Value;

use super::{NodeSSHCredential, ProxmoxCluster};

/// At most this many errors are reported for one document.
const MAX_ERRORS: usize = 10;

/// Longest value quoted in a message.
const MAX_QUOTED_CHARS: usize = 40;

/// The OpenAPI schema of the CRD for `kind`, or `None` for a kind of another operator.
fn schema_of(kind: &str) -> Option<Value> {
    let crd = match kind {
        "ProxmoxCluster" => ProxmoxCluster::crd(),
        "NodeSSHCredential" => NodeSSHCredential::crd(),
        _ => return None,
    };
    let schema = crd
        .spec
        .versions
        .first()?
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?;
    serde_json::to_value(schema).ok()
}

/// Checks `doc` (a whole object: apiVersion, kind, metadata, spec) against its CRD. Only
/// `spec` is checked (metadata is the API server's, status the operator's). Returns the
/// errors, each naming its field, at most [`MAX_ERRORS`].
pub fn check_document(doc: &Value) -> Result<(), Vec<String>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let Some(schema) = schema_of(kind) else {
        return Err(vec![format!(
            "kind: Unsupported value: {}",
            quoted(&doc["kind"])
        )]);
    };
    let mut errors = Vec::new();
    match (doc.get("spec"), schema.pointer("/properties/spec")) {
        (Some(spec), Some(spec_schema)) => check(spec_schema, spec, "spec", &mut errors),
        (None, _) => errors.push("spec: Required value".into()),
        (Some(_), None) => {}
    }
    // CEL rules only on a structurally valid object: the API server does the same, and a
    // rule may assume the types the schema declares.
    if errors.is_empty() {
        cel_errors(&schema, doc, &mut errors);
    }
    errors.truncate(MAX_ERRORS);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn cel_errors(schema: &Value, doc: &Value, errors: &mut Vec<String>) {
    // A rule the evaluator cannot handle must not take the process down: it fails closed.
    let validated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kube::core::cel::Validator::new().validate(schema, doc, None)
    }));
    match validated {
        Ok(Ok(())) => {}
        Ok(Err(failed)) => {
            for e in failed.iter() {
                // An evaluation error (a duration too large for CEL) reports the rule's own
                // message, as the API server does.
                let field = if e.field_path.is_empty() {
                    "spec".to_string()
                } else {
                    e.field_path.clone()
                };
                let message =
                    rule_message(schema, &field, &e.rule).unwrap_or_else(|| e.message.clone());
                errors.push(format!("{field}: Invalid value: {message}"));
            }
        }
        Err(_) => {
            errors.push("spec: Invalid value: a validation rule could not be evaluated".into())
        }
    }
}

/// The `message` of the rule `rule` declared on the field at `path` (`spec.sync.interval`,
/// `spec.proxmox.endpoints[0]`): the same expression may sit on several fields.
fn rule_message(schema: &Value, path: &str, rule: &str) -> Option<String> {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (part, false),
        };
        node = node.get("properties")?.get(name)?;
        if indexed {
            node = node.get("items")?;
        }
    }
    node.get("x-kubernetes-validations")?
        .as_array()?
        .iter()
        .find(|r| r["rule"].as_str() == Some(rule))?
        .get("message")?
        .as_str()
        .map(str::to_string)
}

fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > MAX_QUOTED_CHARS => {
            let head: String = s.chars().take(MAX_QUOTED_CHARS).collect();
            format!("{head:?}...")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if errors.len() >= MAX_ERRORS {
        return;
    }
    if v.is_null() {
        // An explicit null is dropped like an absent field, unless the field is required
        // (checked by the parent).
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!(
                "{path}: Invalid value: {}: must be an integer or a string",
                quoted(v)
            ));
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str()
        && !type_matches(ty, v)
    {
        errors.push(format!(
            "{path}: Invalid value: {}: {path} in body must be of type {ty}",
            quoted(v)
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(quoted).collect();
        errors.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            quoted(v),
            list.join(", ")
        ));
        return;
    }
    match v {
        Value::Object(map) => check_object(schema, map, path, errors),
        Value::Array(items) => check_array(schema, items, path, errors),
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => check_number(schema, n, path, errors),
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    if let Some(required) = schema["required"].as_array() {
        for name in required.iter().filter_map(Value::as_str) {
            if map.get(name).is_none_or(Value::is_null) {
                errors.push(format!("{path}.{name}: Required value"));
            }
        }
    }
    let properties = schema["properties"].as_object();
    let additional = schema.get("additionalProperties");
    let open = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    for (name, value) in map {
        let child = format!("{path}.{name}");
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(s), _) => check(s, value, &child, errors),
            (None, Some(s)) if s.is_object() => check(s, value, &child, errors),
            (None, Some(Value::Bool(true))) => {}
            _ if open => {}
            _ => errors.push(format!("{child}: field not declared in schema")),
        }
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<String>) {
    let n = items.len() as u64;
    if let Some(max) = schema["maxItems"].as_u64()
        && n > max
    {
        errors.push(format!(
            "{path}: Too many: {n}: must have at most {max} items"
        ));
        return;
    }
    if let Some(min) = schema["minItems"].as_u64()
        && n < min
    {
        errors.push(format!(
            "{path}: Invalid value: {n}: {path} in body should have at least {min} items"
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<String>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && chars > max
    {
        errors.push(format!(
            "{path}: Too long: may not be more than {max} characters"
        ));
        return;
    }
    if let Some(min) = schema["minLength"].as_u64()
        && chars < min
    {
        errors.push(format!(
            "{path}: Invalid value: {}: {path} in body should be at least {min} chars long",
            quoted(&Value::String(s.into()))
        ));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        // The CRD's own patterns: they compile (a test checks every one).
        let matches = regex::Regex::new(pattern).map(|re| re.is_match(s));
        if matches != Ok(true) {
            errors.push(format!(
                "{path}: Invalid value: {}: {path} in body should match '{pattern}'",
                quoted(&Value::String(s.into()))
            ));
        }
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, path: &str, errors: &mut Vec<String>) {
    let Some(x) = n.as_f64() else { return };
    if let Some(min) = schema["minimum"].as_f64()
        && x < min
    {
        errors.push(format!(
            "{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"
        ));
    }
    if let Some(max) = schema["maximum"].as_f64()
        && x > max
    {
        errors.push(format!(
            "{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster() -> Value {
        json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab"},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1:8006"], "credentialsSecretRef": {"name": "pve"}},
                "netbox": {"url": "https://nb", "tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"}
            }
        })
    }

    #[test]
    fn every_pattern_of_the_crds_compiles() {
        fn patterns(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(p)) = m.get("pattern") {
                        out.push(p.clone());
                    }
                    m.values().for_each(|v| patterns(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| patterns(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        patterns(&schema_of("ProxmoxCluster").unwrap(), &mut all);
        patterns(&schema_of("NodeSSHCredential").unwrap(), &mut all);
        assert!(all.len() >= 8, "{all:?}");
        for p in all {
            assert!(regex::Regex::new(&p).is_ok(), "{p}");
        }
    }

    #[test]
    fn a_valid_cluster_passes_and_each_kind_of_error_names_its_field() {
        assert_eq!(check_document(&cluster()), Ok(()));
        let mut c = cluster();
        c["spec"]["netbox"]["maxInFlight"] = json!("many");
        c["spec"]["sync"] = json!({"mode": "Sometimes", "interval": "1 hour"});
        c["spec"]["netbox"]["tokenSecretRef"]["namespace"] = json!("kube-system");
        c["spec"]["netbox"].as_object_mut().unwrap().remove("site");
        let errors = check_document(&c).unwrap_err();
        assert_eq!(
            errors,
            [
                "spec.netbox.site: Required value",
                "spec.netbox.maxInFlight: Invalid value: \"many\": spec.netbox.maxInFlight in body must be of type integer",
                "spec.netbox.tokenSecretRef.namespace: field not declared in schema",
                "spec.sync.interval: Invalid value: \"1 hour\": spec.sync.interval in body should match '^([0-9]+(\\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$'",
                "spec.sync.mode: Unsupported value: \"Sometimes\": supported values: \"Sync\", \"DryRun\"",
            ]
        );
    }

    #[test]
    fn cel_rules_are_evaluated_with_their_messages() {
        let mut c = cluster();
        c["spec"]["sync"] = json!({"interval": "99999999999999999999h"});
        let errors = check_document(&c).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("spec.sync.interval must be between 30s and 720h"),
            "{errors:?}"
        );
        let mut c = cluster();
        c["spec"]["proxmox"]["tls"] =
            json!({"caSecretRef": {"name": "ca", "key": "ca.crt"}, "insecureSkipVerify": true});
        let errors = check_document(&c).unwrap_err();
        assert!(
            errors[0].contains("caSecretRef and insecureSkipVerify: true exclude each other"),
            "{errors:?}"
        );
    }

    #[test]
    fn hostile_documents_give_errors_not_panics() {
        for doc in [
            json!(null),
            json!([]),
            json!({"kind": "Pod"}),
            json!({"kind": "ProxmoxCluster"}),
            json!({"kind": "ProxmoxCluster", "spec": []}),
            json!({"kind": "ProxmoxCluster", "spec": {"proxmox": {"endpoints": [1, null, {}]}}}),
            json!({"kind": "NodeSSHCredential", "spec": {"port": 1e300}}),
        ] {
            assert!(check_document(&doc).is_err(), "{doc}");
        }
        // Errors are capped.
        let mut c = cluster();
        for i in 0..50 {
            c["spec"][format!("unknown{i}")] = json!(1);
        }
        assert_eq!(check_document(&c).unwrap_err().len(), MAX_ERRORS);
    }
}
