//! PVE property strings (`virtio=BC:24:11:..,bridge=vmbr0,tag=50`, `local-lvm:vm-100-disk-0,size=32G`,
//! `ip=10.0.0.5/24,gw=10.0.0.1`) and what the reader builds from them: NICs, disks,
//! cloud-init addresses, MACs.
//!
//! Properties: the splitter's output is trimmed and free of separators, and written back as
//! `default,key=value,...` it parses to itself; every MAC that comes out is normalised
//! (`AA:BB:CC:DD:EE:FF`) and normalising it again changes nothing; a disk's size is the
//! `size=` property read by `parse_size`; cloud-init and LXC addresses are the `ip`/`ip6`
//! values that hold a prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::pve::propstr::{
    PropertyString, disk, ipconfig_addresses, lxc_nic, normalize_mac, parse, parse_size, qemu_nic,
};

fn is_normalized_mac(m: &str) -> bool {
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

fn render(p: &PropertyString) -> String {
    let mut items: Vec<String> = p.default.iter().cloned().collect();
    items.extend(p.props.iter().map(|(k, v)| format!("{k}={v}")));
    items.join(",")
}

fn check_splitter(text: &str) -> PropertyString {
    let p = parse(text);
    if let Some(d) = &p.default {
        assert!(!d.is_empty(), "empty default of {text:?}");
        assert_eq!(d.trim(), d, "untrimmed default of {text:?}");
        assert!(!d.contains([',', '=']), "default {d:?} of {text:?}");
        assert!(text.contains(d.as_str()));
    }
    for (k, v) in &p.props {
        assert_eq!(k.trim(), k, "untrimmed key of {text:?}");
        assert_eq!(v.trim(), v, "untrimmed value of {text:?}");
        assert!(!k.contains([',', '=']), "key {k:?} of {text:?}");
        assert!(!v.contains(','), "value {v:?} of {text:?}");
    }
    let again = render(&p);
    assert_eq!(parse(&again), p, "{text:?} written back as {again:?}");
    p
}

fn check_mac(text: &str) {
    if let Some(m) = normalize_mac(text) {
        assert!(is_normalized_mac(&m), "{text:?} -> {m:?}");
        assert_eq!(normalize_mac(&m).as_deref(), Some(m.as_str()));
        let hex = |s: &str| -> String {
            s.chars()
                .filter(char::is_ascii_hexdigit)
                .map(|c| c.to_ascii_uppercase())
                .collect()
        };
        assert_eq!(hex(text), hex(&m), "{text:?} -> {m:?}: other digits");
    }
}

fn check_guest_parts(text: &str, p: &PropertyString) {
    let nic = qemu_nic("net0", text);
    assert_eq!(nic.slot, "net0");
    if let Some(m) = &nic.mac {
        assert!(is_normalized_mac(m), "qemu {text:?} -> mac {m:?}");
    }
    assert_eq!(nic.bridge.as_ref(), p.props.get("bridge"));
    assert_eq!(
        nic.vlan_tag,
        p.props.get("tag").and_then(|t| t.parse::<u16>().ok())
    );

    let (nic, addrs) = lxc_nic("net1", text);
    if let Some(m) = &nic.mac {
        assert!(is_normalized_mac(m), "lxc {text:?} -> mac {m:?}");
    }
    assert!(
        nic.model
            .as_deref()
            .is_some_and(|m| !m.is_empty() || p.props.contains_key("type"))
    );
    for a in addrs.iter().chain(ipconfig_addresses(text).iter()) {
        assert!(a.contains('/'), "{a:?} from {text:?}");
        assert!(
            p.props.get("ip") == Some(a) || p.props.get("ip6") == Some(a),
            "{a:?} is not an ip/ip6 value of {text:?}"
        );
    }

    if let Some(d) = disk("scsi0", text) {
        assert!(
            !d.volume.is_empty() && d.volume != "none",
            "{text:?} -> {d:?}"
        );
        assert!(!d.volume.ends_with("-cloudinit"), "{text:?} -> {d:?}");
        assert_ne!(p.props.get("media").map(String::as_str), Some("cdrom"));
        assert_eq!(
            d.size_bytes,
            p.props.get("size").and_then(|s| parse_size(s)),
            "{text:?}"
        );
        if let Some(storage) = &d.storage {
            assert!(
                d.volume.starts_with(&format!("{storage}:")),
                "{text:?} -> {d:?}"
            );
            assert!(!d.volume.starts_with('/'));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let p = check_splitter(&text);
    check_mac(&text);
    check_guest_parts(&text, &p);
});
