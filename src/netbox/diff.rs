//! Pure comparison of desired field values (in NetBox's write format) with an object as
//! NetBox returns it (nested objects, `{value, label}` choices, decimal strings), so that
//! only fields that really differ are sent.

use serde_json::{Map, Value};

/// Fields of `desired` whose value differs from `current`.
pub fn changed_fields(desired: &Map<String, Value>, current: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        let have = current.get(key).unwrap_or(&Value::Null);
        let same = match key.as_str() {
            "tags" => same_id_set(want, have),
            "custom_fields" => same_custom_fields(want, have),
            "mac_address" => same_case_insensitive(want, have),
            _ => same_value(want, have),
        };
        if !same {
            out.insert(key.clone(), want.clone());
        }
    }
    out
}

/// True when a desired value equals NetBox's representation of it.
pub fn same_value(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Null, Value::Null) => true,
        // A foreign key: NetBox returns the nested object.
        (Value::Number(_), Value::Object(o)) if o.contains_key("id") => {
            numbers_equal(want, &o["id"])
        }
        // A choice: NetBox returns {value, label}.
        (Value::String(_), Value::Object(o)) if o.contains_key("value") => want == &o["value"],
        (Value::Null, Value::Object(o)) if o.contains_key("value") => o["value"].is_null(),
        (Value::Number(_), Value::Number(_) | Value::String(_)) => numbers_equal(want, have),
        (Value::String(s), Value::Null) => s.is_empty(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| same_value(v, b.get(k).unwrap_or(&Value::Null))),
        _ => want == have,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (as_f64(a), as_f64(b)) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => false,
    }
}

fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::Object(o) => o.get("id").and_then(Value::as_u64),
        _ => None,
    }
}

fn same_id_set(want: &Value, have: &Value) -> bool {
    let ids = |v: &Value| {
        let mut ids: Vec<u64> = v
            .as_array()
            .map(|a| a.iter().filter_map(id_of).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    ids(want) == ids(have)
}

fn same_custom_fields(want: &Value, have: &Value) -> bool {
    let Some(want) = want.as_object() else {
        return true;
    };
    want.iter().all(|(k, v)| {
        let h = have.get(k).unwrap_or(&Value::Null);
        same_value(v, h) || (v.is_number() && id_of(h).is_some() && id_of(v) == id_of(h))
    })
}

fn same_case_insensitive(want: &Value, have: &Value) -> bool {
    match (want.as_str(), have.as_str()) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn netbox_shapes_compare_equal_to_write_values() {
        let current = json!({
            "id": 7, "name": "web01", "status": {"value": "active", "label": "Active"},
            "cluster": {"id": 3, "name": "lab", "url": "x"}, "vcpus": "2.00", "memory": 4096,
            "tags": [{"id": 9, "slug": "b"}, {"id": 4, "slug": "a"}],
            "custom_fields": {"proxmox_vmid": 100, "proxmox_owner": "infra/lab", "other": "human"},
            "description": "", "platform": null, "primary_mac_address": {"id": 12, "mac_address": "BC:24:11:00:00:01"},
            "mac_address": "BC:24:11:00:00:01"
        });
        let want = desired(json!({
            "name": "web01", "status": "active", "cluster": 3, "vcpus": 2, "memory": 4096,
            "tags": [4, 9], "custom_fields": {"proxmox_vmid": 100, "proxmox_owner": "infra/lab"},
            "description": "", "platform": null, "primary_mac_address": 12, "mac_address": "bc:24:11:00:00:01"
        }));
        assert!(
            changed_fields(&want, &current).is_empty(),
            "{:?}",
            changed_fields(&want, &current)
        );
    }

    #[test]
    fn only_changed_fields_are_returned() {
        let current = json!({"name": "web01", "status": {"value": "active", "label": "Active"}, "vcpus": "2.00",
                             "tags": [{"id": 4}], "custom_fields": {"proxmox_vmid": 100}});
        let want = desired(
            json!({"name": "web01", "status": "offline", "vcpus": 4, "tags": [4, 5],
                                  "custom_fields": {"proxmox_vmid": 100}}),
        );
        let changed = changed_fields(&want, &current);
        let keys: Vec<&String> = changed.keys().collect();
        assert_eq!(keys, vec!["status", "tags", "vcpus"]);
        assert_eq!(changed["status"], "offline");
    }

    #[test]
    fn nulls_and_missing_fields() {
        assert!(changed_fields(&desired(json!({"mtu": null})), &json!({})).is_empty());
        assert!(!changed_fields(&desired(json!({"mtu": 9000})), &json!({"mtu": null})).is_empty());
        assert!(
            !changed_fields(
                &desired(json!({"parent": null})),
                &json!({"parent": {"id": 3}})
            )
            .is_empty()
        );
        assert!(
            changed_fields(&desired(json!({"duplex": null})), &json!({"duplex": null})).is_empty()
        );
        assert!(
            changed_fields(
                &desired(json!({"description": ""})),
                &json!({"description": null})
            )
            .is_empty()
        );
    }
}
