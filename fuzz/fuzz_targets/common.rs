//! Shared by the JSON targets (included with `#[path]`, not a target itself).

use serde_json::Value;

/// Equal JSON values, floats allowed to differ in their last bits: serde_json as the operator
/// builds it (without the `float_roundtrip` feature) may read a float one ulp off, e.g.
/// `1e-28` as `9.999999999999999e-29` (docs/fuzzing.md, "Findings"). Everything else, the
/// integers included, must be exact.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => {
                        x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                    }
                    _ => false,
                }
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Decodes a body the way the clients do and checks that it survives being written and read
/// again. `None` when the bytes are not JSON.
pub fn decode_round_trip(data: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&value).expect("a decoded value serialises");
    let again: Value = serde_json::from_slice(&text).expect("what serde_json wrote decodes");
    assert!(
        same_json(&again, &value),
        "JSON did not round-trip: {value} became {again}"
    );
    Some(value)
}
