//! `dmidecode -t 1` / `-t 3` (and full dumps) as real machines print them.
//!
//! Properties: every value that comes out is one trimmed, non-empty line and none of the
//! vendor placeholders; the UUID is lower case; the first `System Information` /
//! `Chassis Information` section wins and ends at a blank line, so text appended after
//! one never changes it; CRLF and LF line ends read the same.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::hardware::facts::{ChassisInfo, SystemInfo};
use proxmox_netbox_operator::hardware::parse::dmidecode;

const OTHER: &str = "Handle 0x0001, DMI type 1, 27 bytes\nSystem Information\n\tManufacturer: Fuzz Inc.\n\tSerial Number: F123\n\nHandle 0x0003, DMI type 3, 22 bytes\nChassis Information\n\tManufacturer: Fuzz Inc.\n\tType: Rack Mount Chassis\n\n";

fn check_value(what: &str, v: &Option<String>) {
    let Some(v) = v else { return };
    assert!(!v.is_empty(), "{what} is empty");
    assert_eq!(v.trim(), v, "{what} {v:?} untrimmed");
    assert!(!v.contains('\n'), "{what} {v:?} spans lines");
    let lower = v.to_ascii_lowercase();
    for placeholder in [
        "to be filled by o.e.m.",
        "not specified",
        "default string",
        "system serial number",
        "none",
        "n/a",
    ] {
        assert_ne!(lower, placeholder, "{what} is a placeholder");
    }
    assert!(
        !v.chars().all(|c| matches!(c, '.' | ' ' | '-' | '0')),
        "{what} {v:?} is a placeholder"
    );
}

fn check_system(s: &SystemInfo) {
    check_value("manufacturer", &s.manufacturer);
    check_value("product name", &s.product_name);
    check_value("version", &s.version);
    check_value("serial", &s.serial_number);
    check_value("uuid", &s.uuid);
    check_value("sku", &s.sku_number);
    check_value("family", &s.family);
    if let Some(u) = &s.uuid {
        assert!(!u.chars().any(|c| c.is_ascii_uppercase()), "uuid {u:?}");
    }
}

fn check_chassis(c: &ChassisInfo) {
    check_value("chassis manufacturer", &c.manufacturer);
    check_value("chassis type", &c.chassis_type);
    check_value("chassis serial", &c.serial_number);
    check_value("asset tag", &c.asset_tag);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (system, chassis) = dmidecode(&text);
    if let Some(s) = &system {
        check_system(s);
    }
    if let Some(c) = &chassis {
        check_chassis(c);
    }

    let crlf = text.replace('\n', "\r\n");
    assert_eq!(
        dmidecode(&crlf),
        (system.clone(), chassis.clone()),
        "CRLF reads differently"
    );

    static OTHER_PARSED: OnceLock<(Option<SystemInfo>, Option<ChassisInfo>)> = OnceLock::new();
    let (other_system, other_chassis) = OTHER_PARSED.get_or_init(|| dmidecode(OTHER)).clone();
    let (joined_system, joined_chassis) = dmidecode(&format!("{text}\n\n{OTHER}"));
    assert_eq!(
        joined_system,
        system.or(other_system),
        "appended text changed the system"
    );
    assert_eq!(
        joined_chassis,
        chassis.or(other_chassis),
        "appended text changed the chassis"
    );
});
