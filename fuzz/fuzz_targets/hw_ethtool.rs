//! `ethtool <iface>` as real NICs and drivers print it.
//!
//! Properties: speed is a real Mb/s value (never the `SPEED_UNKNOWN` sentinel), duplex is
//! `full` or `half`, the port is a non-empty name; error lines are kept verbatim (trimmed)
//! and in order, so two outputs one after the other report both sets of errors; a later
//! value of a field wins; CRLF and LF line ends read the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::hardware::parse::ethtool;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (info, problems) = ethtool(&text);
    if let Some(s) = info.speed_mbps {
        assert!((0..i64::from(u32::MAX)).contains(&s), "speed {s}");
    }
    if let Some(d) = &info.duplex {
        assert!(d == "full" || d == "half", "duplex {d:?}");
    }
    if let Some(p) = &info.port {
        assert!(
            !p.is_empty() && p.trim() == p && !p.starts_with("Unknown"),
            "port {p:?}"
        );
    }
    for e in &problems.errors {
        assert_eq!(e.trim(), e, "error line {e:?}");
        assert!(!e.is_empty() && !e.contains('\n'));
    }

    assert_eq!(
        ethtool(&text.replace('\n', "\r\n")),
        (info.clone(), problems.clone())
    );

    // Errors accumulate in order; fields set again are overwritten.
    let tail = "Settings for eth9:\n\tSpeed: 25000Mb/s\n\tDuplex: Half\nCannot get wake-on-lan settings: Operation not permitted\n";
    let (tail_info, tail_problems) = ethtool(tail);
    let (joined_info, joined_problems) = ethtool(&format!("{text}\n{tail}"));
    let mut errors = problems.errors.clone();
    errors.extend(tail_problems.errors.clone());
    assert_eq!(joined_problems.errors, errors);
    assert_eq!(joined_info.speed_mbps, tail_info.speed_mbps);
    assert_eq!(joined_info.duplex, tail_info.duplex);
    assert_eq!(
        joined_info.port, info.port,
        "a field the tail lacks was lost"
    );
    assert_eq!(joined_info.link_detected, info.link_detected);
});
