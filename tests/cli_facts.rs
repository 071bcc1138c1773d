//! `proxmox-netbox-operator facts parse --kind dmidecode|iplink|ethtool FILE`, run as a
//! user runs it, on real outputs from shared/fixtures/hardware.

use std::path::PathBuf;

use serde_json::Value;

fn fixture(kind: &str, name: &str) -> PathBuf {
    std::env::var("PNBO_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
        .join("fixtures/hardware")
        .join(kind)
        .join(name)
}

fn command() -> assert_cmd::Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("proxmox-netbox-operator");
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `facts parse` on a fixture file; returns its JSON.
fn parse(kind: &str, dir: &str, name: &str) -> Value {
    let out = command()
        .args(["facts", "parse", "--kind", kind])
        .arg(fixture(dir, name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{kind} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// Every object key in the document; fails on a `null`.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!v.is_null(), "{k} is null: absent values must be omitted");
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// camelCase keys only, and no `null` anywhere (absent values are omitted).
fn assert_camel_case_without_nulls(v: &Value) {
    let mut all = Vec::new();
    keys(v, &mut all);
    assert!(!all.is_empty());
    for k in &all {
        assert!(
            k.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && k.chars().all(|c| c.is_ascii_alphanumeric()),
            "key {k:?} is not camelCase"
        );
    }
}

#[test]
fn dmidecode_facts_are_camel_case_and_placeholders_are_absent() {
    let r640 = parse("dmidecode", "dmidecode", "glpi-agent-05.txt");
    assert_camel_case_without_nulls(&r640);
    let system = &r640["system"];
    assert_eq!(system["manufacturer"], "Dell Inc.");
    assert_eq!(system["productName"], "PowerEdge R640");
    assert_eq!(system["serialNumber"], "2RJF153");
    assert_eq!(system["uuid"], "4c4c4544-0052-4a10-8046-b2c04f313533");
    assert_eq!(system["family"], "PowerEdge");
    assert_eq!(
        system["skuNumber"],
        "SKU=NotProvided;ModelName=PowerEdge R640"
    );
    // Version: Not Specified.
    assert!(system.get("version").is_none(), "{system}");
    let chassis = &r640["chassis"];
    assert_eq!(chassis["chassisType"], "Rack Mount Chassis");
    assert_eq!(chassis["serialNumber"], "2RJF153");
    // Asset Tag: Not Specified.
    assert!(chassis.get("assetTag").is_none(), "{chassis}");

    // Serial Number: "........." is absent, the real values around it are there.
    let intel = parse("dmidecode", "dmidecode", "glpi-agent-02.txt");
    assert_camel_case_without_nulls(&intel);
    assert_eq!(intel["system"]["productName"], "MP Server");
    assert!(intel["system"].get("serialNumber").is_none(), "{intel}");
    assert!(intel["system"].get("skuNumber").is_none(), "{intel}");
    // Asset Tag: To be filled by O.E.M.
    let smc = parse("dmidecode", "dmidecode", "netbox-agent-12.txt");
    assert_eq!(smc["chassis"]["serialNumber"], "C9390AF40A20098");
    assert!(smc["chassis"].get("assetTag").is_none(), "{smc}");
    // No chassis section: no chassis key.
    let vbox = parse("dmidecode", "dmidecode", "glpi-agent-17.txt");
    assert_eq!(vbox["system"]["productName"], "VirtualBox");
    assert!(vbox.get("chassis").is_none(), "{vbox}");
}

#[test]
fn iplink_facts_list_every_link_with_its_kind() {
    let links = parse("iplink", "iplink", "home-server-01.txt");
    assert_camel_case_without_nulls(&links);
    let links = links.as_array().expect("an array of links");
    let by_name = |n: &str| {
        links
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let nic = by_name("enp6s0");
    assert_eq!(nic["kind"], "physical");
    assert_eq!(nic["master"], "vmbr0");
    assert_eq!(nic["mac"], "9C:6B:00:58:0A:AC");
    assert!(nic["index"].is_u64() && nic["mtu"].is_u64(), "{nic}");
    assert_eq!(by_name("vmbr0")["kind"], "bridge");
    assert_eq!(by_name("lo")["kind"], "loopback");
    // No parent, no altnames, no master: no key.
    let bridge = by_name("vmbr0");
    for absent in ["parent", "altnames", "master"] {
        assert!(bridge.get(absent).is_none(), "{absent}: {bridge}");
    }

    let pve_guest = parse("iplink", "iplink", "capmox-01.txt");
    assert_camel_case_without_nulls(&pve_guest);
    assert!(
        pve_guest
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["altnames"] == serde_json::json!(["enp0s19"])),
        "{pve_guest}"
    );
}

#[test]
fn ethtool_facts_omit_what_is_unknown_and_list_errors() {
    let ixgbe = parse("ethtool", "ethtool", "adamxiao-01.txt");
    assert_camel_case_without_nulls(&ixgbe);
    assert_eq!(ixgbe["speedMbps"], 10000);
    assert_eq!(ixgbe["duplex"], "full");
    assert_eq!(ixgbe["port"], "FIBRE");
    assert_eq!(ixgbe["linkDetected"], true);
    assert!(ixgbe.get("errors").is_none());

    // Speed: Unknown!, Duplex: Unknown! (255): absent, not zero or "unknown".
    let down = parse("ethtool", "ethtool", "issue-openwrt-02.txt");
    assert_camel_case_without_nulls(&down);
    assert!(down.get("speedMbps").is_none(), "{down}");
    assert!(down.get("duplex").is_none(), "{down}");
    assert_eq!(down["linkDetected"], false);

    let missing = parse("ethtool", "ethtool", "issue-netnoob-01.txt");
    assert!(
        missing["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("No such device")),
        "{missing}"
    );
    // `ethtool -i` output has no link facts.
    assert_eq!(
        parse("ethtool", "ethtool", "issue-rr-drvinfo-01.txt"),
        serde_json::json!({})
    );
}

#[test]
fn standard_input_is_read_for_dash() {
    let text = std::fs::read(fixture("ethtool", "issue-rr-01.txt")).unwrap();
    let out = command()
        .args(["facts", "parse", "--kind", "ethtool", "-"])
        .write_stdin(text)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["speedMbps"], 1000);
}

#[test]
fn a_missing_file_fails_with_its_path_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-output.txt");
    let out = command()
        .args(["facts", "parse", "--kind", "dmidecode"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: cannot read {}", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn an_unknown_kind_fails_and_names_the_valid_ones() {
    let out = command()
        .args(["facts", "parse", "--kind", "lspci"])
        .arg(fixture("ethtool", "issue-rr-01.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'lspci'"), "{stderr}");
    for kind in ["dmidecode", "iplink", "ethtool"] {
        assert!(stderr.contains(kind), "{kind} not offered: {stderr}");
    }
}
