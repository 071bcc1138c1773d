//! `ip -o link show`, `ip link show`, `ip -d link` and `ip -j link` as real machines print them.
//!
//! Properties: every link has a non-empty name without whitespace; a MAC is a MAC
//! (`AA:BB:CC:DD:EE:FF`, the documented form); index and MTU are non-negative; the one-line
//! form (`\` between parts) reads like the multi-line form; CRLF and LF read the same;
//! what the parser returns serialises and deserialises to itself (the facts are stored in
//! the ProxmoxCluster status).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::hardware::facts::LinkInfo;
use proxmox_netbox_operator::hardware::parse::ip_link;

fn is_mac(m: &str) -> bool {
    let b = m.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == b':'
            } else {
                c.is_ascii_digit() || (b'A'..=b'F').contains(c)
            }
        })
}

fn check_link(text: &str, l: &LinkInfo) {
    assert!(!l.name.is_empty(), "empty name from {text:?}");
    assert!(!l.name.contains(char::is_whitespace), "name {:?}", l.name);
    if let Some(m) = &l.mac {
        assert!(is_mac(m), "mac {m:?} of {}", l.name);
    }
    assert!(l.index.is_none_or(|i| i >= 0), "index {:?}", l.index);
    assert!(l.mtu.is_none_or(|m| m >= 0), "mtu {:?}", l.mtu);
    let json = serde_json::to_string(l).expect("serialises");
    let back: LinkInfo = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(&back, l, "{json}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let links = ip_link(&text);
    for l in &links {
        check_link(&text, l);
    }
    if text.trim_start().starts_with('[') {
        return;
    }
    assert_eq!(
        ip_link(&text.replace('\n', "\r\n")),
        links,
        "CRLF reads differently"
    );
    let multi_line = text.replace('\\', "\n");
    if !multi_line.trim_start().starts_with('[') {
        assert_eq!(
            ip_link(&multi_line),
            links,
            "one-line form reads differently"
        );
    }
});
