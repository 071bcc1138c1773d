//! Parsers for PVE's property strings (`virtio=BC:24:11:..,bridge=vmbr0,tag=50`,
//! `local-lvm:vm-100-disk-0,size=32G`, `ip=10.0.0.5/24,gw=10.0.0.1`) and loosely typed
//! values (numbers sent as strings, sizes with units).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::inventory::{GuestDisk, GuestNic};

/// A parsed property string: the leading value without a key (if any) and the key=value pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PropertyString {
    /// The first item when it has no `=` (a volume, a path, `dhcp`...).
    pub default: Option<String>,
    /// Every `key=value` item, keys as written.
    pub props: BTreeMap<String, String>,
}

/// Splits `a,b=c,d=e` into its default value and properties. Never fails.
pub fn parse(s: &str) -> PropertyString {
    let mut out = PropertyString::default();
    for (i, item) in s.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((k, v)) => {
                out.props.insert(k.trim().to_string(), v.trim().to_string());
            }
            None if i == 0 => out.default = Some(item.to_string()),
            None => {
                out.props.insert(item.to_string(), String::new());
            }
        }
    }
    out
}

/// Fraction digits of a size that count: 10^18 times the largest unit (2^40) fits a u128.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a PVE size (`32G`, `512M`, `4T`, `1.5G`, `8589934592` in bytes) into bytes, rounded
/// to the nearest byte. Integer arithmetic only: `None` for anything malformed, negative or
/// above `u64::MAX` bytes, never a panic or a wrapped value.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (s[..i].trim(), s[i..].trim()),
        None => (s, ""),
    };
    let factor: u64 = match unit.to_ascii_uppercase().trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let whole = int
        .bytes()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?
        .checked_mul(factor)?;
    let (mut fraction, mut scale) = (0u128, 1u128);
    for d in frac.bytes().take(MAX_FRACTION_DIGITS) {
        fraction = fraction * 10 + u128::from(d - b'0');
        scale *= 10;
    }
    // At most one unit (2^40): always fits a u64.
    let fraction_bytes = u64::try_from((fraction * u128::from(factor) + scale / 2) / scale).ok()?;
    whole.checked_add(fraction_bytes)
}

/// Largest f64 below 2^64: an f64 at or above it does not fit a u64.
const U64_LIMIT_F64: f64 = 18_446_744_073_709_551_616.0;

/// A JSON value that PVE sends as a number or as a numeric string (`"2048"`, `2048`, `"4"`).
/// Fractions are truncated; negative, non-finite or too large values are `None`.
pub fn as_u64(v: &Value) -> Option<u64> {
    // The range check makes the cast exact (truncation only), never saturating.
    let from_f64 = |f: f64| (0.0..U64_LIMIT_F64).contains(&f).then_some(f as u64);
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(from_f64)),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .or_else(|| s.trim().parse::<f64>().ok().and_then(from_f64)),
        _ => None,
    }
}

/// A PVE boolean: `1`, `"1"`, `true`.
pub fn as_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64().unwrap_or(0) != 0,
        Value::String(s) => matches!(s.trim(), "1" | "true" | "yes" | "on"),
        _ => false,
    }
}

/// QEMU `memory`: a number, a numeric string, or (PVE >= 8.1) `current=N`.
pub fn memory_mib(v: &Value) -> Option<u64> {
    as_u64(v).or_else(|| {
        let s = v.as_str()?;
        let p = parse(s);
        p.props
            .get("current")
            .and_then(|c| c.parse().ok())
            .or_else(|| p.default.as_deref().and_then(|d| d.parse().ok()))
    })
}

/// Normalises a MAC to upper case with colons; `None` when it is not a MAC.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let separators_ok = s
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '-');
    if hex.len() != 12 || !separators_ok {
        return None;
    }
    let bytes: Vec<String> = (0..6)
        .map(|i| hex[i * 2..i * 2 + 2].to_ascii_uppercase())
        .collect();
    Some(bytes.join(":"))
}

/// QEMU NIC models PVE accepts as the key of the MAC.
const QEMU_NIC_MODELS: &[&str] = &[
    "virtio",
    "e1000",
    "e1000e",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "rtl8139",
    "vmxnet3",
    "ne2k_pci",
    "ne2k_isa",
    "pcnet",
    "i82551",
    "i82557b",
    "i82559er",
];

/// Parses a QEMU `netN` value.
pub fn qemu_nic(slot: &str, s: &str) -> GuestNic {
    let p = parse(s);
    let (model, mac) = p
        .props
        .iter()
        .find(|(k, _)| QEMU_NIC_MODELS.contains(&k.as_str()))
        .map(|(k, v)| (Some(k.clone()), normalize_mac(v)))
        .unwrap_or_else(|| {
            (
                p.props.get("model").cloned(),
                p.props.get("macaddr").and_then(|m| normalize_mac(m)),
            )
        });
    GuestNic {
        slot: slot.into(),
        model,
        guest_name: None,
        mac,
        bridge: p.props.get("bridge").cloned(),
        vlan_tag: p.props.get("tag").and_then(|t| t.parse().ok()),
        firewall: p.props.get("firewall").is_some_and(|v| v == "1"),
        link_down: p.props.get("link_down").is_some_and(|v| v == "1"),
        mtu: p.props.get("mtu").and_then(|t| t.parse().ok()),
    }
}

/// Parses an LXC `netN` value; also returns the static `ip=`/`ip6=` addresses.
pub fn lxc_nic(slot: &str, s: &str) -> (GuestNic, Vec<String>) {
    let p = parse(s);
    let nic = GuestNic {
        slot: slot.into(),
        model: Some(
            p.props
                .get("type")
                .cloned()
                .unwrap_or_else(|| "veth".into()),
        ),
        guest_name: p.props.get("name").cloned(),
        mac: p.props.get("hwaddr").and_then(|m| normalize_mac(m)),
        bridge: p.props.get("bridge").cloned(),
        vlan_tag: p.props.get("tag").and_then(|t| t.parse().ok()),
        firewall: p.props.get("firewall").is_some_and(|v| v == "1"),
        link_down: p.props.get("link_down").is_some_and(|v| v == "1"),
        mtu: p.props.get("mtu").and_then(|t| t.parse().ok()),
    };
    let addrs = ["ip", "ip6"]
        .iter()
        .filter_map(|k| p.props.get(*k))
        .filter(|v| v.contains('/'))
        .cloned()
        .collect();
    (nic, addrs)
}

/// Static addresses of a cloud-init `ipconfigN` value (`dhcp`, `auto` and `manual` skipped).
pub fn ipconfig_addresses(s: &str) -> Vec<String> {
    let p = parse(s);
    ["ip", "ip6"]
        .iter()
        .filter_map(|k| p.props.get(*k))
        .filter(|v| v.contains('/'))
        .cloned()
        .collect()
}

/// True when a config key names a QEMU disk slot.
pub fn is_qemu_disk_key(key: &str) -> bool {
    let slot = |prefix: &str, max: u32| {
        key.strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n <= max)
    };
    slot("scsi", 30)
        || slot("virtio", 15)
        || slot("sata", 5)
        || slot("ide", 3)
        || key == "efidisk0"
        || key == "tpmstate0"
}

/// True when a config key names an LXC volume (`rootfs`, `mpN`).
pub fn is_lxc_disk_key(key: &str) -> bool {
    key == "rootfs"
        || key
            .strip_prefix("mp")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Parses a disk value; `None` for CD-ROMs and empty drives.
pub fn disk(slot: &str, s: &str) -> Option<GuestDisk> {
    let p = parse(s);
    if p.props.get("media").is_some_and(|m| m == "cdrom") {
        return None;
    }
    let volume = p
        .default
        .clone()
        .or_else(|| p.props.get("file").cloned())
        .or_else(|| p.props.get("volume").cloned())?;
    if volume.is_empty() || volume == "none" || volume.ends_with("-cloudinit") {
        return None;
    }
    let storage = match volume.split_once(':') {
        Some((store, _)) if !volume.starts_with('/') => Some(store.to_string()),
        _ => None,
    };
    Some(GuestDisk {
        slot: slot.into(),
        storage,
        volume,
        size_bytes: p.props.get("size").and_then(|v| parse_size(v)),
        mount_point: p.props.get("mp").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn property_strings_split_into_default_and_props() {
        let p = parse("local-lvm:vm-100-disk-0,size=32G,iothread=1");
        assert_eq!(p.default.as_deref(), Some("local-lvm:vm-100-disk-0"));
        assert_eq!(p.props["size"], "32G");
        assert_eq!(parse("").props.len(), 0);
        assert_eq!(parse(",,=,a=").props.get("a").map(String::as_str), Some(""));
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_size("32G"), Some(32 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("4M"), Some(4 * 1024 * 1024));
        assert_eq!(parse_size("512K"), Some(512 * 1024));
        assert_eq!(parse_size("2T"), Some(2 * 1024u64.pow(4)));
        assert_eq!(parse_size("1.5G"), Some(1_610_612_736));
        assert_eq!(parse_size("8589934592"), Some(8_589_934_592));
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("0.5K"), Some(512));
        assert_eq!(
            parse_size("1.0000000001K"),
            Some(1024),
            "rounded to the byte"
        );
        assert_eq!(parse_size("100GB"), Some(100 << 30));
    }

    #[test]
    fn hostile_sizes_are_none_never_a_panic_or_a_wrapped_value() {
        // The largest size that fits, exactly (an f64 would round it up to 2^64).
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(
            parse_size("16777215.999999999T"),
            Some(18_446_744_073_709_550_516)
        );
        for bad in [
            "18446744073709551616",
            "16777216T",
            "99999999999999999999T",
            "1e400G",
            "NaN",
            "inf",
            "+1G",
            ".",
            "1.2.3G",
            "1 2G",
            "١G",
            "🦀G",
            "G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        let long = "9".repeat(100_000) + "G";
        assert_eq!(parse_size(&long), None);
        let long_fraction = "1.".to_string() + &"9".repeat(100_000) + "K";
        assert_eq!(parse_size(&long_fraction), Some(2048));
    }

    #[test]
    fn numbers_outside_u64_are_none_not_saturated() {
        assert_eq!(as_u64(&json!(1e30)), None);
        assert_eq!(as_u64(&json!("1e30")), None);
        assert_eq!(as_u64(&json!("inf")), None);
        assert_eq!(as_u64(&json!("NaN")), None);
        assert_eq!(as_u64(&json!(-1)), None);
        assert_eq!(as_u64(&json!("-0.5")), None);
        assert_eq!(as_u64(&json!(u64::MAX)), Some(u64::MAX));
        assert_eq!(as_u64(&json!("18446744073709551615")), Some(u64::MAX));
        assert_eq!(as_u64(&json!(3.9)), Some(3));
    }

    #[test]
    fn numbers_as_strings_or_numbers() {
        assert_eq!(as_u64(&json!("2048")), Some(2048));
        assert_eq!(as_u64(&json!(2048)), Some(2048));
        assert_eq!(as_u64(&json!("4")), Some(4));
        assert_eq!(as_u64(&json!(0.5)), Some(0));
        assert_eq!(as_u64(&json!("x")), None);
        assert_eq!(memory_mib(&json!("current=4096")), Some(4096));
        assert_eq!(memory_mib(&json!(3072)), Some(3072));
        assert!(
            as_bool(&json!("1"))
                && as_bool(&json!(1))
                && !as_bool(&json!(""))
                && !as_bool(&json!(null))
        );
    }

    #[test]
    fn qemu_nic_with_tag_firewall_and_link_down() {
        let n = qemu_nic(
            "net0",
            "virtio=bc:24:11:5e:7a:01,bridge=vmbr0,firewall=1,tag=50,link_down=1",
        );
        assert_eq!(n.model.as_deref(), Some("virtio"));
        assert_eq!(n.mac.as_deref(), Some("BC:24:11:5E:7A:01"));
        assert_eq!(n.bridge.as_deref(), Some("vmbr0"));
        assert_eq!(n.vlan_tag, Some(50));
        assert!(n.firewall && n.link_down);
        let e = qemu_nic("net1", "e1000=BC:24:11:00:00:02,bridge=vmbr1");
        assert_eq!(e.model.as_deref(), Some("e1000"));
        assert!(!e.firewall && e.vlan_tag.is_none());
    }

    #[test]
    fn lxc_nic_and_static_addresses() {
        let (n, ips) = lxc_nic(
            "net0",
            "name=eth0,bridge=vmbr0,gw=10.1.1.1,hwaddr=FF:FF:FF:FF:FF:FF,ip=10.1.1.3/24,ip6=dhcp,type=veth",
        );
        assert_eq!(n.guest_name.as_deref(), Some("eth0"));
        assert_eq!(n.mac.as_deref(), Some("FF:FF:FF:FF:FF:FF"));
        assert_eq!(ips, vec!["10.1.1.3/24".to_string()]);
        let (_, none) = lxc_nic("net1", "name=eth1,bridge=vmbr0,ip=dhcp");
        assert!(none.is_empty());
    }

    #[test]
    fn disks_skip_cdroms_and_cloudinit() {
        let d = disk("scsi0", "local-lvm:vm-101-disk-0,size=8G").unwrap();
        assert_eq!(d.storage.as_deref(), Some("local-lvm"));
        assert_eq!(d.size_bytes, Some(8 * 1024 * 1024 * 1024));
        assert!(disk("ide2", "local:iso/debian.iso,media=cdrom").is_none());
        assert!(disk("ide0", "local-lvm:vm-101-cloudinit,media=cdrom").is_none());
        assert!(disk("ide2", "none,media=cdrom").is_none());
        let bind = disk("mp0", "/srv/data,mp=/data").unwrap();
        assert_eq!(bind.storage, None);
        assert_eq!(bind.mount_point.as_deref(), Some("/data"));
        assert!(
            is_qemu_disk_key("scsi30")
                && !is_qemu_disk_key("scsi31")
                && is_qemu_disk_key("efidisk0")
        );
        assert!(!is_qemu_disk_key("scsihw") && !is_qemu_disk_key("unused0"));
        assert!(is_lxc_disk_key("mp0") && is_lxc_disk_key("rootfs") && !is_lxc_disk_key("mpx"));
    }

    #[test]
    fn a_disk_without_a_volume_is_absent() {
        // Found by fuzzing (fuzz/fuzz_targets/pve_propstr.rs): `file=` (or a bare `file`
        // flag) gave a disk whose volume is the empty string.
        assert!(disk("scsi0", ",file,size=8G").is_none());
        assert!(disk("scsi0", "file=,size=8G").is_none());
        assert!(disk("virtio0", "volume= ,size=8G").is_none());
        assert_eq!(
            disk("scsi0", "file=local:vm-1-disk-0").map(|d| d.volume),
            Some("local:vm-1-disk-0".to_string())
        );
    }

    #[test]
    fn ipconfig_keeps_static_addresses_only() {
        assert_eq!(
            ipconfig_addresses("ip=10.0.0.5/24,gw=10.0.0.1,ip6=2001:db8::5/64"),
            vec!["10.0.0.5/24".to_string(), "2001:db8::5/64".to_string()]
        );
        assert!(ipconfig_addresses("ip=dhcp,ip6=auto").is_empty());
    }

    #[test]
    fn macs_are_normalised() {
        assert_eq!(
            normalize_mac("bc-24-11-aa-bb-cc").as_deref(),
            Some("BC:24:11:AA:BB:CC")
        );
        assert_eq!(normalize_mac("zz:24:11:aa:bb:cc"), None);
        assert_eq!(normalize_mac("bc:24:11"), None);
    }
}
