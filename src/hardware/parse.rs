//! Parsers for `dmidecode -t 1` / `-t 3`, `ip -o link show` (and its multi-line, `-d` and
//! `-j` forms) and `ethtool <iface>`, as real machines print them. They never panic and
//! never fail: what cannot be read is absent.

use serde_json::Value;

use super::facts::{ChassisInfo, EthtoolInfo, LinkInfo, LinkKind, SystemInfo};

/// Values vendors leave in DMI fields instead of real data.
fn is_placeholder(v: &str) -> bool {
    let t = v.trim();
    if t.is_empty()
        || t.chars()
            .all(|c| c == '.' || c == ' ' || c == '-' || c == '0')
    {
        return true;
    }
    let lower = t.to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "to be filled by o.e.m.",
        "to be filled by o.e.m",
        "not specified",
        "not applicable",
        "not present",
        "default string",
        "system serial number",
        "system product name",
        "system manufacturer",
        "system version",
        "chassis serial number",
        "chassis manufacturer",
        "chassis version",
        "0123456789",
        "none",
        "n/a",
        "na",
        "unknown",
        "oem",
        "o.e.m.",
        "invalid",
        "type1productconfigid",
        "sku",
        "default",
        "123456789",
        "03000200-0400-0500-0006-000700080009",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "not settable",
    ];
    PLACEHOLDERS.contains(&lower.as_str())
}

fn clean(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|v| !is_placeholder(v))
        .map(str::to_string)
}

/// The `Key: Value` lines of the first DMI section with this title.
fn dmi_section(text: &str, title: &str) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut inside = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if !inside {
            if trimmed == title {
                inside = true;
            }
            continue;
        }
        if trimmed.is_empty() || line.starts_with("Handle ") {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    inside.then_some(fields)
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// System (`dmidecode -t 1`) and chassis (`dmidecode -t 3`) information; either may be
/// absent. Works on full dumps too.
pub fn dmidecode(text: &str) -> (Option<SystemInfo>, Option<ChassisInfo>) {
    let system = dmi_section(text, "System Information").map(|f| SystemInfo {
        manufacturer: clean(field(&f, "Manufacturer")),
        product_name: clean(field(&f, "Product Name")),
        version: clean(field(&f, "Version")),
        serial_number: clean(field(&f, "Serial Number")),
        uuid: clean(field(&f, "UUID")).map(|u| u.to_ascii_lowercase()),
        sku_number: clean(field(&f, "SKU Number")),
        family: clean(field(&f, "Family")),
    });
    let chassis = dmi_section(text, "Chassis Information").map(|f| ChassisInfo {
        manufacturer: clean(field(&f, "Manufacturer")),
        chassis_type: clean(field(&f, "Type")),
        serial_number: clean(field(&f, "Serial Number")),
        asset_tag: clean(field(&f, "Asset Tag")),
    });
    (system, chassis)
}

fn kind_of(
    name: &str,
    parent: Option<&str>,
    link_type: Option<&str>,
    detail: Option<&str>,
) -> LinkKind {
    if link_type == Some("loopback") || name == "lo" {
        return LinkKind::Loopback;
    }
    if ["fwbr", "fwpr", "fwln"].iter().any(|p| name.starts_with(p)) {
        return LinkKind::FirewallBridge;
    }
    match detail {
        Some("vlan") => return LinkKind::Vlan,
        Some("bridge") => return LinkKind::Bridge,
        Some("bond") => return LinkKind::Bond,
        Some("veth") => return LinkKind::Veth,
        Some("tun") => return LinkKind::Tap,
        _ => {}
    }
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.chars().next().is_some_and(|c| c.is_ascii_digit()))
    };
    if numbered("tap") {
        return LinkKind::Tap;
    }
    if name.starts_with("veth") || parent.is_some_and(|p| p.starts_with("if")) {
        return LinkKind::Veth;
    }
    if parent.is_some() {
        return LinkKind::Vlan;
    }
    if numbered("vmbr")
        || numbered("br")
        || name.starts_with("br-")
        || name == "virbr0"
        || name.starts_with("docker")
    {
        return LinkKind::Bridge;
    }
    if numbered("bond") {
        return LinkKind::Bond;
    }
    match link_type {
        Some("ether") => LinkKind::Physical,
        _ => LinkKind::Other,
    }
}

/// Links from `ip -o link show` (one line each, `\` between parts), `ip link show`
/// (several lines each), `ip -s -d link` (with kind details) or `ip -j link` (JSON).
pub fn ip_link(text: &str) -> Vec<LinkInfo> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return ip_link_json(trimmed);
    }
    let normalized = text
        .replace('\r', "")
        .replace("\\ ", "\n ")
        .replace('\\', "\n");
    let mut out: Vec<LinkInfo> = Vec::new();
    let mut link_type: Option<String> = None;
    let mut detail: Option<String> = None;
    let finish = |out: &mut Vec<LinkInfo>, link_type: &Option<String>, detail: &Option<String>| {
        if let Some(last) = out.last_mut() {
            last.kind = kind_of(
                &last.name,
                last.parent.as_deref(),
                link_type.as_deref(),
                detail.as_deref(),
            );
        }
    };
    for line in normalized.lines() {
        if let Some(header) = parse_header(line) {
            finish(&mut out, &link_type, &detail);
            link_type = None;
            detail = None;
            out.push(header);
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some(w) if w.starts_with("link/") => {
                link_type = Some(w.trim_start_matches("link/").to_string());
                if let Some(mac) = words.get(1).and_then(|m| ether_mac(m)) {
                    current.mac = Some(mac);
                }
            }
            Some("altname") => current.altnames.extend(words.get(1).map(|s| s.to_string())),
            Some(k @ ("vlan" | "bridge" | "bond" | "veth" | "tun")) if detail.is_none() => {
                detail = Some(k.to_string());
            }
            _ => {}
        }
    }
    finish(&mut out, &link_type, &detail);
    out
}

/// A name Linux can give a link: not empty, no whitespace.
fn is_link_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace)
}

/// An Ethernet address as `ip` prints it (`3c:ec:ef:01:02:03`), upper-cased; `None` for
/// anything else, which cannot be read as a MAC.
fn ether_mac(text: &str) -> Option<String> {
    let ok = text.len() == 17
        && text.bytes().enumerate().all(|(i, b)| {
            if i % 3 == 2 {
                b == b':'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then(|| text.to_ascii_uppercase())
}

/// `2: eno1: <FLAGS> mtu 1500 ... master vmbr0 state UP ...`
fn parse_header(line: &str) -> Option<LinkInfo> {
    let (idx, rest) = line.split_once(':')?;
    let index: u32 = idx.trim().parse().ok()?;
    if idx.starts_with(' ') || idx.starts_with('\t') {
        return None;
    }
    let (name_part, rest) = rest.trim_start().split_once(':')?;
    let (name, parent) = match name_part.split_once('@') {
        Some((n, p)) => (n.trim().to_string(), Some(p.trim().to_string())),
        None => (name_part.trim().to_string(), None),
    };
    if !is_link_name(&name) {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let value_after = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .map(|w| w[1].to_string())
    };
    Some(LinkInfo {
        name,
        index: Some(i64::from(index)),
        parent: parent.filter(|p| p != "NONE"),
        master: value_after("master"),
        state: value_after("state"),
        mtu: value_after("mtu")
            .and_then(|m| m.parse::<u32>().ok())
            .map(i64::from),
        mac: None,
        altnames: Vec::new(),
        kind: LinkKind::Other,
    })
}

fn ip_link_json(text: &str) -> Vec<LinkInfo> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| {
            let name = i["ifname"]
                .as_str()
                .filter(|n| is_link_name(n))?
                .to_string();
            let parent = i["link"].as_str().map(str::to_string);
            let link_type = i["link_type"].as_str();
            let detail = i["linkinfo"]["info_kind"].as_str();
            Some(LinkInfo {
                kind: kind_of(&name, parent.as_deref(), link_type, detail),
                index: i["ifindex"].as_u64().and_then(|n| i64::try_from(n).ok()),
                master: i["master"].as_str().map(str::to_string),
                state: i["operstate"].as_str().map(str::to_string),
                mtu: i["mtu"].as_u64().and_then(|n| i64::try_from(n).ok()),
                mac: i["address"]
                    .as_str()
                    .filter(|_| link_type == Some("ether"))
                    .and_then(ether_mac),
                altnames: i["altnames"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                name,
                parent,
            })
        })
        .collect()
}

/// What `ethtool <iface>` could not tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EthtoolProblems {
    /// Error lines (`Cannot get device settings: No such device`, `Operation not permitted`).
    pub errors: Vec<String>,
}

/// Link facts from `ethtool <iface>`, plus the error lines it printed.
pub fn ethtool(text: &str) -> (EthtoolInfo, EthtoolProblems) {
    let mut info = EthtoolInfo::default();
    let mut problems = EthtoolProblems::default();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim();
        if line.starts_with("Cannot ")
            || line.contains("Operation not permitted")
            || line.contains("No such device")
            || line == "No data available"
        {
            problems.errors.push(line.to_string());
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Speed" => {
                // Some drivers print SPEED_UNKNOWN (-1 as u32) instead of `Unknown!`.
                info.speed_mbps = value
                    .strip_suffix("Mb/s")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|s| *s != u32::MAX)
                    .map(i64::from);
            }
            "Duplex" => {
                let d = value
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                info.duplex = matches!(d.as_str(), "full" | "half").then_some(d);
            }
            "Port" => {
                info.port =
                    Some(value.to_string()).filter(|p| !p.is_empty() && !p.starts_with("Unknown"))
            }
            "Auto-negotiation" => info.auto_negotiation = parse_on_off(value),
            "Link detected" => info.link_detected = parse_on_off(value),
            _ => {}
        }
    }
    (info, problems)
}

fn parse_on_off(v: &str) -> Option<bool> {
    match v.split_whitespace().next()? {
        "yes" | "on" => Some(true),
        "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_absent() {
        for p in [
            "To Be Filled By O.E.M.",
            "Not Specified",
            "Default string",
            "System Serial Number",
            "0123456789",
            "",
            "   ",
            ".........",
            "--",
        ] {
            assert!(is_placeholder(p), "{p:?}");
        }
        assert!(!is_placeholder("CZJ1234ABC"));
    }

    #[test]
    fn dmidecode_t1_and_t3() {
        let text = "# dmidecode 3.4\nGetting SMBIOS data from sysfs.\nSMBIOS 3.2.0 present.\r\n\r\nHandle 0x0100, DMI type 1, 27 bytes\r\nSystem Information\r\n\tManufacturer: Dell Inc.\r\n\tProduct Name: PowerEdge R640\r\n\tVersion: Not Specified\r\n\tSerial Number: 4XYZ123\r\n\tUUID: 4C4C4544-0042-5810-8059-B4C04F4A3132\r\n\tWake-up Type: Power Switch\r\n\tSKU Number: SKU=NotProvided;ModelName=PowerEdge R640\r\n\tFamily: PowerEdge\r\n\r\nHandle 0x0300, DMI type 3, 22 bytes\nChassis Information\n\tManufacturer: Dell Inc.\n\tType: Rack Mount Chassis\n\tSerial Number: 4XYZ123\n\tAsset Tag: To Be Filled By O.E.M.\n";
        let (s, c) = dmidecode(text);
        let s = s.unwrap();
        assert_eq!(s.product_name.as_deref(), Some("PowerEdge R640"));
        assert_eq!(s.version, None);
        assert_eq!(
            s.uuid.as_deref(),
            Some("4c4c4544-0042-5810-8059-b4c04f4a3132")
        );
        let c = c.unwrap();
        assert_eq!(c.chassis_type.as_deref(), Some("Rack Mount Chassis"));
        assert_eq!(c.asset_tag, None);
    }

    #[test]
    fn one_line_ip_link_with_vlan_bridge_bond_and_pve_plumbing() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n2: eno1: <BROADCAST,MULTICAST,SLAVE,UP,LOWER_UP> mtu 1500 qdisc mq master bond0 state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\\    altname enp1s0f0\n3: bond0: <BROADCAST,MULTICAST,MASTER,UP,LOWER_UP> mtu 1500 qdisc noqueue master vmbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\n4: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\n5: vmbr0.50@vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\n6: tap100i0: <BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast master fwbr100i0 state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether 5a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff\n7: fwbr100i0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 12:34:56:78:9a:bc brd ff:ff:ff:ff:ff:ff\n8: veth200i0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master vmbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether fe:aa:bb:cc:dd:ee brd ff:ff:ff:ff:ff:ff link-netnsid 0\n";
        let links = ip_link(text);
        let kinds: Vec<(&str, LinkKind)> =
            links.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("lo", LinkKind::Loopback),
                ("eno1", LinkKind::Physical),
                ("bond0", LinkKind::Bond),
                ("vmbr0", LinkKind::Bridge),
                ("vmbr0.50", LinkKind::Vlan),
                ("tap100i0", LinkKind::Tap),
                ("fwbr100i0", LinkKind::FirewallBridge),
                ("veth200i0", LinkKind::Veth),
            ]
        );
        let eno1 = &links[1];
        assert_eq!(eno1.master.as_deref(), Some("bond0"));
        assert_eq!(eno1.mac.as_deref(), Some("3C:EC:EF:01:02:03"));
        assert_eq!(eno1.altnames, vec!["enp1s0f0"]);
        assert_eq!(eno1.mtu, Some(1500));
        assert_eq!(eno1.state.as_deref(), Some("UP"));
        assert_eq!(links[4].parent.as_deref(), Some("vmbr0"));
    }

    #[test]
    fn a_mac_that_is_not_one_is_absent() {
        // Found by fuzzing (fuzz/fuzz_targets/hw_ip_link.rs): 17 characters with 5 colons,
        // or any `address` of `ip -j`, passed as the NIC's MAC.
        let json = r#"[{"ifindex":2,"ifname":"eno1","link_type":"ether","address":"3c:ec:ef:01:02: :03"},
            {"ifindex":3,"ifname":"eno2","link_type":"ether","address":"3c:ec:ef:01:02:04"}]"#;
        let links = ip_link(json);
        assert_eq!(links[0].mac, None);
        assert_eq!(links[1].mac.as_deref(), Some("3C:EC:EF:01:02:04"));
        let text = "2: eno1: <UP> mtu 1500 state UP\\    link/ether zz:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\n3: eno2: <UP> mtu 1500\\    link/ether 3c:ec:ef:01:02:03 brd ff:ff:ff:ff:ff:ff\n";
        let links = ip_link(text);
        assert_eq!(links[0].mac, None);
        assert_eq!(links[1].mac.as_deref(), Some("3C:EC:EF:01:02:03"));
    }

    #[test]
    fn a_link_without_a_usable_name_is_absent() {
        // Found by fuzzing (fuzz/fuzz_targets/hw_ip_link.rs): an empty `ifname` or a name
        // with a tab became a link.
        assert!(ip_link(r#"[{"ifname":""},{"ifname":"a b"}]"#).is_empty());
        assert!(ip_link("2: a\tb: <UP> mtu 1500\n").is_empty());
        assert_eq!(ip_link(r#"[{"ifname":"eno1"}]"#)[0].name, "eno1");
    }

    #[test]
    fn ethtool_speed_duplex_link_and_errors() {
        let (i, p) = ethtool(
            "Settings for eno2:\n\tSpeed: 1000Mb/s\n\tDuplex: Full\n\tPort: Twisted Pair\n\tAuto-negotiation: on\n\tLink detected: yes\n",
        );
        assert_eq!(i.speed_mbps, Some(1000));
        assert_eq!(i.duplex.as_deref(), Some("full"));
        assert_eq!(i.port.as_deref(), Some("Twisted Pair"));
        assert_eq!(
            (i.auto_negotiation, i.link_detected),
            (Some(true), Some(true))
        );
        assert!(p.errors.is_empty());
        let (i, _) = ethtool("\tSpeed: Unknown!\n\tDuplex: Unknown! (255)\n\tLink detected: no\n");
        assert_eq!(
            (i.speed_mbps, i.duplex, i.link_detected),
            (None, None, Some(false))
        );
        let (i, p) = ethtool("Cannot get device settings: No such device\nNo data available\n");
        assert_eq!(i, EthtoolInfo::default());
        assert_eq!(p.errors.len(), 2);
        assert_eq!(ethtool("").0, EthtoolInfo::default());
    }
}
