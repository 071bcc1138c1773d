//! The hardware parsers over every real output in shared/fixtures/hardware, and a property
//! test that no input makes them panic.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proxmox_netbox_operator::hardware::facts::{EthtoolInfo, LinkKind};
use proxmox_netbox_operator::hardware::parse::{dmidecode, ethtool, ip_link};
use regex::Regex;

fn dir(kind: &str) -> PathBuf {
    std::env::var("PNBO_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
        .join("fixtures/hardware")
        .join(kind)
}

/// Every file of a fixture directory (none left out, whatever its name), sorted.
fn files(kind: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                String::from_utf8_lossy(&bytes).to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn read(kind: &str, name: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(dir(kind).join(name)).unwrap()).to_string()
}

#[test]
fn every_dmidecode_fixture_parses_and_system_info_is_found_where_present() {
    let all = files("dmidecode");
    assert!(
        all.len() >= 90,
        "the corpus has 96 dmidecode outputs, found {}",
        all.len()
    );
    let mut with_system = 0;
    for (name, text) in &all {
        let (system, chassis) = dmidecode(text);
        if text.contains("System Information") {
            assert!(system.is_some(), "{name}: System Information not found");
            with_system += 1;
        }
        if !text.contains("Chassis Information") {
            assert!(chassis.is_none(), "{name}");
        }
        // No placeholder survives.
        for v in [
            system.as_ref().and_then(|s| s.serial_number.clone()),
            chassis.as_ref().and_then(|c| c.serial_number.clone()),
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                !v.eq_ignore_ascii_case("Not Specified")
                    && !v.contains("O.E.M")
                    && !v.trim().is_empty(),
                "{name}: {v:?}"
            );
        }
    }
    assert!(with_system >= 90, "{with_system}");
}

/// The placeholders the issue names (and their relatives in the corpus).
fn is_placeholder(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    v.is_empty()
        || v.chars().all(|c| matches!(c, '.' | ' ' | '-' | '0'))
        || [
            "to be filled by o.e.m.",
            "not specified",
            "default string",
            "system serial number",
            "system product name",
            "system manufacturer",
            "system version",
            "chassis serial number",
            "chassis manufacturer",
            "0123456789",
            "123456789",
            "none",
            "n/a",
            "unknown",
            "not applicable",
            "not present",
            "invalid",
            "type1productconfigid",
            "sku",
            "default",
            "oem",
            "o.e.m.",
            "03000200-0400-0500-0006-000700080009",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ]
        .contains(&v.as_str())
}

/// `Key: value` of the first section titled `title`, as printed (trimmed).
fn dmi_raw(text: &str, title: &str, key: &str) -> Option<String> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    lines.find(|l| l.trim() == title)?;
    lines
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Handle "))
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

#[test]
fn every_dmidecode_value_is_the_printed_one_or_absent_for_a_placeholder() {
    let mut checked = 0;
    for (name, text) in files("dmidecode") {
        let (system, chassis) = dmidecode(&text);
        let system = system.unwrap_or_default();
        let chassis = chassis.unwrap_or_default();
        for (title, key, parsed) in [
            ("System Information", "Manufacturer", &system.manufacturer),
            ("System Information", "Product Name", &system.product_name),
            ("System Information", "Version", &system.version),
            ("System Information", "Serial Number", &system.serial_number),
            ("System Information", "SKU Number", &system.sku_number),
            ("System Information", "Family", &system.family),
            ("Chassis Information", "Manufacturer", &chassis.manufacturer),
            ("Chassis Information", "Type", &chassis.chassis_type),
            (
                "Chassis Information",
                "Serial Number",
                &chassis.serial_number,
            ),
            ("Chassis Information", "Asset Tag", &chassis.asset_tag),
        ] {
            let raw = dmi_raw(&text, title, key);
            match (raw.as_deref(), parsed.as_deref()) {
                (Some(r), Some(p)) => {
                    assert_eq!(p, r, "{name}: {title} / {key}");
                    assert!(!is_placeholder(p), "{name}: {title} / {key}: {p:?}");
                    checked += 1;
                }
                (Some(r), None) => {
                    assert!(
                        is_placeholder(r),
                        "{name}: {title} / {key}: {r:?} was dropped"
                    )
                }
                (None, Some(p)) => panic!("{name}: {title} / {key}: {p:?} invented"),
                (None, None) => {}
            }
        }
        if let (Some(raw), Some(uuid)) =
            (dmi_raw(&text, "System Information", "UUID"), &system.uuid)
        {
            assert_eq!(uuid, &raw.to_ascii_lowercase(), "{name}");
        }
    }
    assert!(checked > 500, "{checked} values checked");
}

#[test]
fn dmidecode_values_from_real_machines() {
    let (s, c) = dmidecode(&read("dmidecode", "glpi-agent-04.txt"));
    let s = s.unwrap();
    assert_eq!(
        (s.manufacturer.as_deref(), s.product_name.as_deref()),
        (Some("Dell Inc."), Some("PowerEdge R630"))
    );
    assert_eq!(s.serial_number.as_deref(), Some("2WF88P2"));
    assert_eq!(s.version, None, "Not Specified is absent");
    assert_eq!(
        c.unwrap().chassis_type.as_deref(),
        Some("Rack Mount Chassis")
    );

    // Dots as serial.
    assert_eq!(
        dmidecode(&read("dmidecode", "glpi-agent-02.txt"))
            .0
            .unwrap()
            .serial_number,
        None
    );
    // Old dmidecode 2.2 format, serial with trailing spaces.
    let old = dmidecode(&read("dmidecode", "glpi-agent-16.txt"))
        .0
        .unwrap();
    assert_eq!(old.product_name.as_deref(), Some("ProLiant ML350 G5"));
    assert_eq!(old.serial_number.as_deref(), Some("GB8814HE7S"));
    // Indented with spaces, no chassis section.
    let (vbox, no_chassis) = dmidecode(&read("dmidecode", "glpi-agent-17.txt"));
    assert_eq!(vbox.unwrap().product_name.as_deref(), Some("VirtualBox"));
    assert!(no_chassis.is_none());
    // CRLF line endings.
    let crlf = dmidecode(&read("dmidecode", "glpi-agent-23.txt"))
        .0
        .unwrap();
    assert_eq!(crlf.product_name.as_deref(), Some("KVM"));
    assert_eq!(crlf.serial_number, None);
    // Spaces instead of tabs, lowercase UUID.
    let hv = dmidecode(&read("dmidecode", "glpi-agent-22.txt"))
        .0
        .unwrap();
    assert_eq!(hv.manufacturer.as_deref(), Some("Microsoft Corporation"));
    assert_eq!(hv.sku_number, None, "SKU None is a placeholder");
}

#[test]
fn every_ip_link_fixture_parses() {
    for (name, text) in files("iplink") {
        let links = ip_link(&text);
        assert!(!links.is_empty(), "{name}: no link parsed");
        assert!(
            links
                .iter()
                .all(|l| !l.name.is_empty() && !l.name.contains(' ')),
            "{name}"
        );
        if text.contains(" lo: ") || text.contains("\"lo\"") {
            assert!(
                links
                    .iter()
                    .any(|l| l.name == "lo" && l.kind == LinkKind::Loopback),
                "{name}"
            );
        }
    }
}

#[test]
fn ip_link_of_a_proxmox_host() {
    let links = ip_link(&read("iplink", "home-server-01.txt"));
    let nic = links.iter().find(|l| l.name == "enp6s0").unwrap();
    assert_eq!(nic.master.as_deref(), Some("vmbr0"));
    assert_eq!(nic.kind, LinkKind::Physical);
    assert_eq!(nic.mac.as_deref(), Some("9C:6B:00:58:0A:AC"));
    let down = links.iter().find(|l| l.name == "enp3s0").unwrap();
    assert_eq!(down.state.as_deref(), Some("DOWN"));
    assert_eq!(
        links.iter().find(|l| l.name == "vmbr0").unwrap().kind,
        LinkKind::Bridge
    );
    assert_eq!(
        links.iter().find(|l| l.name == "tailscale0").unwrap().kind,
        LinkKind::Other
    );

    let json = ip_link(&read("iplink", "linux-admin-json-01.txt"));
    assert!(
        json.iter()
            .any(|l| l.name == "eth0" && l.kind == LinkKind::Physical && l.mac.is_some())
    );
}

/// Every regular file below `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_fixture_file_goes_through_every_parser_without_panic() {
    let mut all = Vec::new();
    walk(&dir(""), &mut all);
    all.sort();
    // 96 dmidecode, 14 ip link, 28 ethtool (7 of them `ethtool -i`), SOURCES.md.
    assert!(all.len() >= 139, "{} files", all.len());
    for path in &all {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).to_string();
        let parsed = std::panic::catch_unwind(|| {
            let _ = dmidecode(&text);
            let _ = ip_link(&text);
            let _ = ethtool(&text);
        });
        assert!(parsed.is_ok(), "a parser panicked on {}", path.display());
    }
}

/// The value of the last `Key: value` line of an ethtool output, as printed.
fn ethtool_value(text: &str, key: &str) -> Option<String> {
    Regex::new(&format!(
        r"(?m)^[ \t]*{}:[ \t]*([^\r\n]*?)[ \t\r]*$",
        regex::escape(key)
    ))
    .unwrap()
    .captures_iter(text)
    .last()
    .map(|c| c[1].to_string())
}

#[test]
fn every_ethtool_fixture_gives_exactly_the_values_it_shows() {
    let all = files("ethtool");
    assert_eq!(all.len(), 28, "the corpus has 28 ethtool outputs");
    let (drvinfo, settings): (Vec<_>, Vec<_>) =
        all.iter().partition(|(n, _)| n.contains("-drvinfo-"));
    assert_eq!(drvinfo.len(), 7);
    // `ethtool -i` output (driver, firmware, bus) has no link facts: none may be invented.
    for (name, text) in &drvinfo {
        assert!(text.contains("driver: "), "{name}");
        let (info, problems) = ethtool(text);
        assert_eq!(info, EthtoolInfo::default(), "{name}");
        assert!(problems.errors.is_empty(), "{name}");
    }
    let mut with_speed = 0;
    for (name, text) in &settings {
        let (info, problems) = ethtool(text);
        // Speed: a number of Mb/s, or absent (`Unknown!`, or no line at all).
        let speed = ethtool_value(text, "Speed")
            .and_then(|v| v.strip_suffix("Mb/s").and_then(|n| n.parse::<u32>().ok()))
            .map(i64::from);
        assert_eq!(info.speed_mbps, speed, "{name}: speed");
        with_speed += usize::from(speed.is_some());
        let duplex = ethtool_value(text, "Duplex")
            .map(|v| v.to_ascii_lowercase())
            .filter(|v| v == "full" || v == "half");
        assert_eq!(info.duplex, duplex, "{name}: duplex");
        let link = ethtool_value(text, "Link detected").and_then(|v| match v.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        });
        assert_eq!(info.link_detected, link, "{name}: link");
        let autoneg = ethtool_value(text, "Auto-negotiation").and_then(|v| match v.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        });
        assert_eq!(info.auto_negotiation, autoneg, "{name}: auto-negotiation");
        let port =
            ethtool_value(text, "Port").filter(|p| !p.is_empty() && !p.starts_with("Unknown"));
        assert_eq!(info.port, port, "{name}: port");
        if text.contains("No such device") || text.contains("Operation not permitted") {
            assert!(!problems.errors.is_empty(), "{name}");
        }
    }
    assert!(with_speed >= 10, "{with_speed} outputs with a speed");

    let (ixgbe, _) = ethtool(&read("ethtool", "adamxiao-01.txt"));
    assert_eq!(
        (
            ixgbe.speed_mbps,
            ixgbe.duplex.as_deref(),
            ixgbe.port.as_deref()
        ),
        (Some(10000), Some("full"), Some("FIBRE"))
    );
    let (pve, _) = ethtool(&read("ethtool", "issue-rr-01.txt"));
    assert_eq!(
        (pve.speed_mbps, pve.duplex.as_deref()),
        (Some(1000), Some("full"))
    );
    let (mellanox, _) = ethtool(&read("ethtool", "jc-02.txt"));
    assert_eq!(mellanox.speed_mbps, Some(40000));
    let (unknown, _) = ethtool(&read("ethtool", "issue-openwrt-02.txt"));
    assert_eq!(
        (unknown.speed_mbps, unknown.duplex, unknown.link_detected),
        (None, None, Some(false))
    );
    let (empty, problems) = ethtool(&read("ethtool", "coreos-sosreport-01.txt"));
    assert_eq!(empty, Default::default());
    assert!(problems.errors.is_empty());
    let (_, missing) = ethtool(&read("ethtool", "issue-netnoob-01.txt"));
    assert!(missing.errors.iter().any(|e| e.contains("No such device")));
    let (wsl, _) = ethtool(&read("ethtool", "issue-wsl-01.txt"));
    assert_eq!(wsl, EthtoolInfo::default(), "every query failed on WSL1");
}

#[test]
fn every_ip_link_record_is_parsed() {
    let header = Regex::new(r"(?m)^[0-9]+: [^ :]+").unwrap();
    for (name, text) in files("iplink") {
        let expected = if text.trim_start().starts_with('[') {
            text.matches("\"ifname\"").count()
        } else {
            header.find_iter(&text).count()
        };
        let links = ip_link(&text);
        assert!(expected > 0, "{name}");
        assert_eq!(links.len(), expected, "{name}: {links:?}");
        for l in &links {
            assert!(l.index.is_some(), "{name}: {}", l.name);
            if let Some(mac) = &l.mac {
                assert!(
                    text.to_ascii_uppercase().contains(mac.as_str()),
                    "{name}: {mac} not in the output"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn parsers_never_panic(s in "\\PC{0,400}") {
        let _ = dmidecode(&s);
        let _ = ip_link(&s);
        let _ = ethtool(&s);
    }

    #[test]
    fn parsers_never_panic_on_near_miss_lines(lines in proptest::collection::vec(prop_oneof![
        Just("System Information".to_string()), Just("Chassis Information".to_string()),
        Just("\tSerial Number: ".to_string()), Just("Handle 0x0001, DMI type 1, 27 bytes".to_string()),
        Just("2: eth0@: <UP> mtu".to_string()), Just("3: : <>".to_string()), Just("\\".to_string()),
        Just("    link/ether zz".to_string()), Just("\tSpeed: Mb/s".to_string()), Just("Duplex:".to_string()),
        "\\PC{0,40}",
    ], 0..30)) {
        let s = lines.join("\n");
        let _ = dmidecode(&s);
        let _ = ip_link(&s);
        let _ = ethtool(&s);
    }
}
