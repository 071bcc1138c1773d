//! PVE sizes (`32G`, `1.5T`, `8589934592`) and the loosely typed numbers PVE sends
//! (`2048`, `"2048"`, `"current=4096"`).
//!
//! Properties: `parse_size` agrees with an exact reference computed here in 128-bit integers
//! (the nearest byte, within the documented 18-fraction-digit precision), is `None` exactly
//! for malformed or too large sizes, and every `u64` written in bytes or in a unit reads
//! back as itself; `as_u64` reads back every `u64` and truncates every non-negative `f64`
//! below 2^64, refusing the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::pve::propstr::{as_u64, memory_mib, parse_size};
use serde_json::Value;

/// Fraction digits the reference keeps (the parser keeps 18).
const REF_DIGITS: u32 = 24;

/// What a size text means, computed independently of the parser.
enum Reference {
    /// Not a size.
    Invalid,
    /// More than 20 significant integer digits: far above `u64::MAX` bytes.
    Huge,
    /// `whole + frac / 10^REF_DIGITS` bytes, exact up to `factor / 10^REF_DIGITS`.
    Value {
        whole: u128,
        frac: u128,
        factor: u128,
    },
}

fn reference(s: &str) -> Reference {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), &t[split..]);
    let mut unit = unit.to_ascii_uppercase();
    while unit.ends_with('B') {
        unit.pop();
    }
    let factor: u128 = match unit.as_str() {
        "" => 1,
        "K" => 1024,
        "M" => 1024 * 1024,
        "G" => 1024 * 1024 * 1024,
        "T" => 1024 * 1024 * 1024 * 1024,
        _ => return Reference::Invalid,
    };
    let mut parts = number.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    let all_digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || int.len() + frac.len() == 0 {
        return Reference::Invalid;
    }
    let significant = int.trim_start_matches('0');
    if significant.len() > 20 {
        return Reference::Huge;
    }
    let int_value: u128 = significant.parse().unwrap_or(0);
    let mut frac_value: u128 = 0;
    for i in 0..REF_DIGITS as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| u128::from(b - b'0'));
        frac_value = frac_value * 10 + d;
    }
    Reference::Value {
        whole: int_value * factor,
        frac: frac_value * factor,
        factor,
    }
}

fn check_size(text: &str) {
    let got = parse_size(text);
    let scale = 10u128.pow(REF_DIGITS);
    match reference(text) {
        Reference::Invalid => assert_eq!(got, None, "{text:?} is not a size"),
        Reference::Huge => assert_eq!(got, None, "{text:?} is above u64::MAX bytes"),
        Reference::Value {
            whole,
            frac,
            factor,
        } => {
            // The parser drops fraction digits after the 18th (< factor / 10^18 bytes), the
            // reference after the 24th (< factor / 10^24 bytes): both below a millionth.
            let slack = factor * 1_000_000 + factor;
            let max = u128::from(u64::MAX);
            match got {
                Some(n) => {
                    let n = u128::from(n);
                    assert!(
                        n >= whole && n <= whole + factor,
                        "{text:?}: {n} outside [{whole}, {whole} + {factor}]"
                    );
                    // |n - (whole + frac/scale)| <= 1/2 (+ slack), in units of 1/scale bytes.
                    let got_scaled = (n - whole) * scale;
                    let diff = got_scaled.abs_diff(frac);
                    assert!(
                        diff <= scale / 2 + slack,
                        "{text:?}: {n} is not the nearest byte (off by {diff}/10^{REF_DIGITS})"
                    );
                }
                None => {
                    // Refused although well-formed: only when the value does not fit.
                    let upper = whole + (frac + slack) / scale + 1;
                    assert!(
                        upper > max,
                        "{text:?}: refused, but about {whole} bytes fits a u64"
                    );
                }
            }
            // And every value comfortably inside u64 is accepted.
            if whole + factor < max {
                assert!(got.is_some(), "{text:?}: a size below u64::MAX was refused");
            }
        }
    }
}

const UNITS: [(&str, u64); 5] = [
    ("", 1),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
];

/// Sizes written from a number: they read back exactly, in any unit spelling.
fn check_written(data: &[u8]) {
    let mut raw = [0u8; 9];
    let n = data.len().min(9);
    raw[..n].copy_from_slice(&data[..n]);
    let value = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
    let (unit, factor) = UNITS[usize::from(raw[8]) % UNITS.len()];
    assert_eq!(parse_size(&value.to_string()), Some(value));
    let expected = value.checked_mul(factor);
    for spelling in [
        format!("{value}{unit}"),
        format!("{value}{}", unit.to_ascii_lowercase()),
        format!(" {value} {unit}B "),
    ] {
        assert_eq!(parse_size(&spelling), expected, "{spelling:?}");
    }
    // Half a unit more rounds half up (2^9 bytes at least, exact).
    if factor > 1 {
        let half = format!("{value}.5{unit}");
        assert_eq!(
            parse_size(&half),
            value
                .checked_mul(factor)
                .and_then(|w| w.checked_add(factor / 2)),
            "{half:?}"
        );
    }

    // Numbers as PVE sends them.
    assert_eq!(as_u64(&Value::from(value)), Some(value));
    assert_eq!(as_u64(&Value::String(value.to_string())), Some(value));
    assert_eq!(
        memory_mib(&Value::String(format!("current={value}"))),
        Some(value)
    );
    let f = f64::from_bits(value);
    if let Some(number) = serde_json::Number::from_f64(f) {
        let got = as_u64(&Value::Number(number));
        if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
            let k = got.unwrap_or_else(|| panic!("{f} in range but refused"));
            // trunc(f) is an f64 itself, so the comparison is exact.
            assert_eq!(k as f64, f.trunc(), "{f}");
        } else {
            assert_eq!(got, None, "{f} is negative or too large");
        }
    }
}

/// `as_u64` on an arbitrary string: a number only when it reads as one.
fn check_number(text: &str) {
    if let Some(k) = as_u64(&Value::String(text.to_string())) {
        let t = text.trim();
        let exact = t.parse::<u64>().ok();
        let float = t.parse::<f64>().ok();
        assert!(
            exact == Some(k) || float.is_some_and(|f| f >= 0.0 && f.trunc() == k as f64),
            "{text:?} read as {k}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_size(&text);
    check_number(&text);
    check_written(data);
});
