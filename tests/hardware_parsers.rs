//! The hardware parsers over every real output in shared/fixtures/hardware, and a property
//! test that no input makes them panic.

use std::path::PathBuf;

use proptest::prelude::*;
use proxmox_netbox_operator::hardware::facts::LinkKind;
use proxmox_netbox_operator::hardware::parse::{dmidecode, ethtool, ip_link};

fn dir(kind: &str) -> PathBuf {
    std::env::var("PNBO_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
        .join("fixtures/hardware")
        .join(kind)
}

fn files(kind: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("txt"))
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

#[test]
fn every_ethtool_fixture_parses_and_drvinfo_files_are_kept_apart() {
    let all = files("ethtool");
    for (name, text) in all.iter().filter(|(n, _)| !n.contains("drvinfo")) {
        let (info, problems) = ethtool(text);
        if text.contains("Link detected: yes") {
            assert_eq!(info.link_detected, Some(true), "{name}");
        }
        if let Some(speed) = info.speed_mbps {
            assert!(text.contains(&format!("{speed}Mb/s")), "{name}");
        }
        if text.contains("No such device") || text.contains("Operation not permitted") {
            assert!(!problems.errors.is_empty(), "{name}");
        }
    }
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
