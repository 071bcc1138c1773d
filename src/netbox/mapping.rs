//! Pure mappings from Proxmox and hardware facts to NetBox values: interface types, status
//! choices, platform names, slugs, guest names.

use std::collections::BTreeMap;

use crate::crd::facts::EthtoolInfo;
use crate::inventory::{Guest, GuestKind, GuestState, NodeInterfaceKind};

/// NetBox slug of a name: lower case, `[a-z0-9_-]`, at most 100 characters.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    let trimmed = out.trim_end_matches('-');
    let s: String = trimmed.chars().take(100).collect();
    if s.is_empty() { "x".into() } else { s }
}

/// NetBox `dcim.interface` type of a node interface.
pub fn interface_type(kind: &NodeInterfaceKind, ethtool: Option<&EthtoolInfo>) -> &'static str {
    match kind {
        NodeInterfaceKind::Bridge | NodeInterfaceKind::OvsBridge => "bridge",
        NodeInterfaceKind::Bond | NodeInterfaceKind::OvsBond => "lag",
        NodeInterfaceKind::Vlan
        | NodeInterfaceKind::OvsIntPort
        | NodeInterfaceKind::OvsPort
        | NodeInterfaceKind::Alias => "virtual",
        NodeInterfaceKind::Physical | NodeInterfaceKind::Unknown => physical_type(ethtool),
    }
}

fn physical_type(ethtool: Option<&EthtoolInfo>) -> &'static str {
    let Some(e) = ethtool else { return "other" };
    let fibre = e
        .port
        .as_deref()
        .is_some_and(|p| p.contains("FIBRE") || p.contains("Direct Attach") || p.contains("DA"));
    match (e.speed_mbps, fibre) {
        (Some(100), _) => "100base-tx",
        (Some(1000), false) => "1000base-t",
        (Some(1000), true) => "1000base-x-sfp",
        (Some(2500), _) => "2.5gbase-t",
        (Some(5000), _) => "5gbase-t",
        (Some(10000), false) => "10gbase-t",
        (Some(10000), true) => "10gbase-x-sfpp",
        (Some(25000), _) => "25gbase-x-sfp28",
        (Some(40000), _) => "40gbase-x-qsfpp",
        (Some(100000), _) => "100gbase-x-qsfp28",
        _ => "other",
    }
}

/// NetBox VM status of a guest.
pub fn vm_status(guest: &Guest) -> &'static str {
    match guest.state {
        GuestState::Running => "active",
        GuestState::Paused => "paused",
        GuestState::Stopped | GuestState::Unknown => "offline",
    }
}

/// Platform name for a PVE OS type (QEMU `ostype` or LXC `ostype`).
pub fn platform_name(os_type: &str) -> String {
    match os_type {
        "l24" | "l26" => "Linux".into(),
        "wxp" => "Windows XP".into(),
        "w2k" => "Windows 2000".into(),
        "w2k3" => "Windows Server 2003".into(),
        "w2k8" => "Windows Server 2008".into(),
        "wvista" => "Windows Vista".into(),
        "win7" => "Windows 7".into(),
        "win8" => "Windows 8".into(),
        "win10" => "Windows 10".into(),
        "win11" => "Windows 11".into(),
        "solaris" => "Solaris".into(),
        "other" | "unmanaged" => "Other".into(),
        other => {
            let mut c = other.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => "Other".into(),
            }
        }
    }
}

/// NetBox names of guests: unique per cluster (case-insensitive). The guest with the lowest
/// vmid keeps a clashing name; the others get `name (vmid)`. A guest without a name gets
/// `vm-<vmid>` or `ct-<vmid>`. Names are cut to NetBox's 64 characters.
pub fn guest_names<'a>(guests: impl IntoIterator<Item = &'a Guest>) -> BTreeMap<u32, String> {
    let mut by_name: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut base: BTreeMap<u32, String> = BTreeMap::new();
    for g in guests {
        let name = if g.name.trim().is_empty() {
            match g.kind {
                GuestKind::Qemu => format!("vm-{}", g.vmid),
                GuestKind::Lxc => format!("ct-{}", g.vmid),
            }
        } else {
            g.name.trim().to_string()
        };
        by_name.entry(name.to_lowercase()).or_default().push(g.vmid);
        base.insert(g.vmid, name);
    }
    let mut out = BTreeMap::new();
    for (_, mut ids) in by_name {
        ids.sort_unstable();
        for (i, id) in ids.iter().enumerate() {
            let name = &base[id];
            let full = if i == 0 {
                name.clone()
            } else {
                format!("{} ({id})", truncate(name, 50))
            };
            out.insert(*id, truncate(&full, 64));
        }
    }
    out
}

/// Cuts a string to at most `max` characters.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// MiB for NetBox's MB fields, rounded up.
pub fn bytes_to_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

/// Total size of disks in MiB (each rounded up, absent sizes as 0), saturating at `u64::MAX`
/// instead of overflowing on a hostile config with many huge disks.
pub fn total_mib(sizes: impl IntoIterator<Item = Option<u64>>) -> u64 {
    sizes
        .into_iter()
        .map(|b| bytes_to_mib(b.unwrap_or(0)))
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slugify("Proxmox VE"), "proxmox-ve");
        assert_eq!(slugify("  Dell Inc. "), "dell-inc");
        assert_eq!(slugify("web_01!!"), "web_01");
        assert_eq!(slugify("!!!"), "x");
    }

    #[test]
    fn duplicate_guest_names_are_deterministic() {
        let g = |vmid, name: &str| Guest {
            vmid,
            name: name.into(),
            ..Default::default()
        };
        let guests = [
            g(105, "k8s-node-1"),
            g(104, "K8S-node-1"),
            g(106, ""),
            g(107, "db"),
        ];
        let names = guest_names(&guests);
        assert_eq!(names[&104], "K8S-node-1");
        assert_eq!(names[&105], "k8s-node-1 (105)");
        assert_eq!(names[&106], "vm-106");
        assert_eq!(names[&107], "db");
        // Order of input does not matter.
        let mut rev = guests.clone();
        rev.reverse();
        assert_eq!(guest_names(&rev), names);
    }

    #[test]
    fn interface_types_from_kind_and_link_facts() {
        let e = |speed, port: &str| EthtoolInfo {
            speed_mbps: Some(speed),
            port: Some(port.into()),
            ..Default::default()
        };
        assert_eq!(interface_type(&NodeInterfaceKind::Bond, None), "lag");
        assert_eq!(interface_type(&NodeInterfaceKind::Vlan, None), "virtual");
        assert_eq!(interface_type(&NodeInterfaceKind::Physical, None), "other");
        assert_eq!(
            interface_type(&NodeInterfaceKind::Physical, Some(&e(1000, "Twisted Pair"))),
            "1000base-t"
        );
        assert_eq!(
            interface_type(&NodeInterfaceKind::Physical, Some(&e(10000, "FIBRE"))),
            "10gbase-x-sfpp"
        );
        assert_eq!(
            interface_type(
                &NodeInterfaceKind::Physical,
                Some(&e(25000, "Direct Attach Copper"))
            ),
            "25gbase-x-sfp28"
        );
    }

    #[test]
    fn platforms_and_sizes() {
        assert_eq!(platform_name("l26"), "Linux");
        assert_eq!(platform_name("win11"), "Windows 11");
        assert_eq!(platform_name("debian"), "Debian");
        assert_eq!(bytes_to_mib(32 * 1024 * 1024 * 1024), 32768);
        assert_eq!(bytes_to_mib(4 * 1024 * 1024 + 1), 5);
        assert_eq!(bytes_to_mib(u64::MAX), 1 << 44);
    }

    #[test]
    fn disk_totals_saturate_instead_of_overflowing() {
        assert_eq!(total_mib([Some(1 << 30), None, Some(1)]), 1025);
        assert_eq!(total_mib([]), 0);
        // 2^20 disks of 2^44 MiB each: 2^64 MiB, one more than a u64 holds.
        assert_eq!(
            total_mib(std::iter::repeat_n(Some(u64::MAX), 1 << 20)),
            u64::MAX
        );
    }
}
