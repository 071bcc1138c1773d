//! Markdown reference of the CRDs, generated from their OpenAPI schemas (the same text
//! `kubectl explain` shows). `docs/crd-reference.md` is checked against it in tests.

use kube::CustomResourceExt;
use serde_json::Value;

use super::{NodeSSHCredential, ProxmoxCluster};

fn type_of(schema: &Value) -> String {
    let t = schema["type"].as_str().unwrap_or("object");
    match t {
        "array" => format!("[]{}", type_of(&schema["items"])),
        "integer" | "number" => match schema["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => t.to_string(),
        },
        _ => t.to_string(),
    }
}

/// The validation of one schema node, unescaped: enum, pattern, bounds, default, CEL rules,
/// and for a list the validation of its items.
fn constraint_parts(schema: &Value) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(e) = schema["enum"].as_array() {
        let values: Vec<String> = e
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    if let Some(p) = schema["pattern"].as_str() {
        parts.push(format!("pattern `{p}`"));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(n) = schema[key].as_f64() {
            parts.push(format!("{label} {n}"));
        }
    }
    if !schema["default"].is_null() && !schema["default"].is_object() {
        parts.push(format!("default `{}`", schema["default"]));
    }
    for r in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        parts.push(format!(
            "CEL `{}`: {}",
            r["rule"].as_str().unwrap_or_default(),
            r["message"].as_str().unwrap_or_default()
        ));
    }
    if schema["type"] == "array" {
        let items = constraint_parts(&schema["items"]);
        if !items.is_empty() {
            parts.push(format!("each item: {}", items.join(", ")));
        }
    }
    parts
}

fn constraints(schema: &Value) -> String {
    constraint_parts(schema).join("; ").replace('|', "\\|")
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn walk(out: &mut String, path: &str, schema: &Value) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    let req: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let field = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        out.push_str(&format!(
            "| `{field}` | {} | {} | {} | {} |\n",
            type_of(prop),
            if req.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            one_line(prop["description"].as_str().unwrap_or_default()),
            constraints(prop),
        ));
        let nested = if prop["type"] == "array" {
            &prop["items"]
        } else {
            prop
        };
        walk(out, &field, nested);
    }
}

fn section<K: CustomResourceExt>(out: &mut String) {
    let crd = K::crd();
    let version = &crd.spec.versions[0];
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref()),
    )
    .unwrap_or_default();
    let names = &crd.spec.names;
    out.push_str(&format!("## {}\n\n", names.kind));
    out.push_str(&format!(
        "`{}/{}`, namespaced. Short names: {}. Categories: {}.\n\n",
        crd.spec.group,
        version.name,
        names.short_names.clone().unwrap_or_default().join(", "),
        names.categories.clone().unwrap_or_default().join(", "),
    ));
    if let Some(d) = schema["properties"]["spec"]["description"].as_str() {
        out.push_str(&format!("{}\n\n", one_line(d)));
    }
    for part in ["spec", "status"] {
        out.push_str(&format!("### {part}\n\n| Field | Type | Required | Description | Validation |\n|---|---|---|---|---|\n"));
        walk(out, part, &schema["properties"][part]);
        out.push('\n');
    }
    if let Some(rules) = schema["properties"]["spec"]["x-kubernetes-validations"].as_array() {
        out.push_str("CEL rules on `spec`:\n\n");
        for r in rules {
            out.push_str(&format!(
                "- `{}`: {}\n",
                r["rule"].as_str().unwrap_or_default(),
                r["message"].as_str().unwrap_or_default()
            ));
        }
        out.push('\n');
    }
}

/// The CRD reference as Markdown.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# CRD reference\n\nGenerated from the types in `src/crd/` (the text `kubectl explain` shows). Do not edit by hand: run `cargo run -- crdgen --reference > docs/crd-reference.md`.\n\n",
    );
    section::<ProxmoxCluster>(&mut out);
    section::<NodeSSHCredential>(&mut out);
    out
}
