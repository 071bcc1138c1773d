//! Go durations of the spec (`30s`, `1h30m`, `1.5h`, `250ms`) and their bounds.
//!
//! Properties: the parser accepts exactly what the CRD's `pattern` accepts (too large values
//! being refused as such, never as a syntax error); a parsed duration written in Go's
//! canonical form (and in nanoseconds) parses to itself; two valid durations written one
//! after the other parse to their sum; `bounded_duration` returns the parsed value when it
//! is within the field's bounds and an `InvalidSpec` error naming the field, of bounded
//! length, otherwise.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::config::{DurationError, bounded_duration, parse_go_duration};
use proxmox_netbox_operator::crd::{DURATION_FIELDS, DURATION_MAX_LENGTH, DURATION_PATTERN};
use proxmox_netbox_operator::stage_errors::StageFailure;

fn pattern() -> &'static regex::Regex {
    static P: OnceLock<regex::Regex> = OnceLock::new();
    P.get_or_init(|| regex::Regex::new(DURATION_PATTERN).expect("the CRD pattern compiles"))
}

/// Go's `Duration.String()` form: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_text(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let frac = |value: u128, digits: u32| -> String {
        let unit = 10u128.pow(digits);
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            whole.to_string()
        } else {
            let rest = format!("{rest:0width$}", width = digits as usize);
            format!("{whole}.{}", rest.trim_end_matches('0'))
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}us", frac(nanos, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 6));
    }
    let secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let seconds = frac(s * 1_000_000_000 + sub, 9);
    match (h, m) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

fn check_text(text: &str) {
    let parsed = parse_go_duration(text);
    let pattern_ok = pattern().is_match(text);
    match &parsed {
        Ok(_) | Err(DurationError::Overflow) => {
            assert!(
                pattern_ok,
                "{text:?} parsed ({parsed:?}) but the CRD refuses it"
            )
        }
        Err(DurationError::Syntax) => {
            assert!(
                !pattern_ok,
                "{text:?}: syntax error, but the CRD accepts it"
            );
            assert!(!text.starts_with('-'));
        }
        Err(DurationError::Negative) => {
            assert!(!pattern_ok);
            assert!(text.starts_with('-'), "{text:?} is not negative");
        }
    }

    if let Ok(d) = parsed {
        for again in [go_text(d), format!("{}ns", d.as_nanos())] {
            assert_eq!(
                parse_go_duration(&again),
                Ok(d),
                "{text:?} written as {again:?}"
            );
        }
        assert_eq!(parse_go_duration(&format!("{text}0s")), Ok(d));
    }

    // Any split into two valid durations: the whole is their sum.
    for (i, _) in text.char_indices().skip(1) {
        let (a, b) = text.split_at(i);
        if let (Ok(x), Ok(y)) = (parse_go_duration(a), parse_go_duration(b)) {
            match x.checked_add(y) {
                Some(sum) if sum.as_nanos() <= u128::from(u64::MAX) => {
                    assert_eq!(parsed, Ok(sum), "{a:?} + {b:?}")
                }
                _ => assert_eq!(parsed, Err(DurationError::Overflow), "{a:?} + {b:?}"),
            }
        }
    }

    for bounds in &DURATION_FIELDS {
        let got = bounded_duration(bounds, text);
        match (&got, &parsed) {
            (Ok(d), Ok(p)) => {
                assert_eq!(d, p);
                assert!(
                    bounds.min() <= *d && *d <= bounds.max(),
                    "{text:?} {bounds:?}"
                );
                assert!(text.chars().count() <= DURATION_MAX_LENGTH);
            }
            (Ok(d), Err(e)) => panic!("{text:?}: bounded {d:?} but the parser says {e:?}"),
            (Err(e), _) => {
                assert_eq!(e.reason(), "InvalidSpec", "{text:?}");
                let message = e.to_string();
                assert!(
                    message.starts_with(&format!("{}: ", bounds.field)),
                    "{message:?}"
                );
                // The value is quoted cut to 40 characters (each escaped to at most
                // `\u{10ffff}`): a hostile value cannot flood a condition.
                assert!(
                    message.chars().count() <= 600,
                    "{} chars",
                    message.len()
                );
                if let Ok(p) = parsed
                    && text.chars().count() <= DURATION_MAX_LENGTH
                {
                    assert!(p < bounds.min() || p > bounds.max(), "{text:?}: {e:?}");
                }
            }
        }
    }
}

/// Every duration a `u64` of nanoseconds can hold, in Go's form: parses to itself.
fn check_nanos(data: &[u8]) {
    let mut raw = [0u8; 8];
    let n = data.len().min(8);
    raw[..n].copy_from_slice(&data[..n]);
    let d = Duration::from_nanos(u64::from_le_bytes(raw));
    let text = go_text(d);
    assert_eq!(parse_go_duration(&text), Ok(d), "{text:?}");
    assert!(pattern().is_match(&text), "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    check_nanos(data);
});
