//! The PVE configuration a NetBox record asks for, compared with a VM's configuration
//! (pure): which keys to set, which to delete, which disks to grow.
//!
//! The config is compared as PVE shows it, with the values waiting for the next start
//! (`pending`) laid over it, so a change sent once is never sent again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::model::{NbInterface, NbIp, NbVm};
use super::settings::ProvisionSettings;
use crate::pve::propstr::{self, normalize_mac, parse_size};
use crate::pve::write::percent_encode;

/// Most interfaces a VM has (`net0` to `net31`).
pub const MAX_NICS: u32 = 32;
/// The NIC models PVE knows (the key of a `netN` value that holds the MAC).
const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "vmxnet3", "rtl8139"];

/// Keys to set and delete in one config write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// `key=value` to set, by key.
    pub set: BTreeMap<String, String>,
    /// Keys to delete.
    pub delete: BTreeSet<String>,
}

impl ConfigChange {
    /// True when nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }
}

/// A disk to grow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskGrowth {
    /// Slot (`scsi0`).
    pub disk: String,
    /// New size in MiB.
    pub size_mib: u64,
}

/// Something the record asks for that is not done, and why (a note, not a failure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigNote {
    /// `DiskShrinkRefused`, `DiskNotInTemplate`, `ExtraAddresses`.
    pub code: &'static str,
    /// Detail naming the disk or interface.
    pub message: String,
}

/// Which parts of the config follow the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A VM being created: everything.
    Create,
    /// A provisioned VM with `followResources`: vCPUs, memory, disk growth.
    Resources,
}

/// The config with the pending values laid over it.
pub fn effective(
    config: &BTreeMap<String, String>,
    pending: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = config.clone();
    for (k, v) in pending {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Whether `name` is a NIC slot (`net0` .. `net31`); its number.
pub fn nic_index(name: &str) -> Option<u32> {
    let n = name.strip_prefix("net")?;
    if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: u32 = n.parse().ok()?;
    (i < MAX_NICS && (n == "0" || !n.starts_with('0'))).then_some(i)
}

/// The vCPUs of a record as a whole number, if they are one (NetBox keeps a decimal).
pub fn whole_vcpus(text: &str) -> Option<u32> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() || !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    int.parse::<u32>().ok().filter(|v| (1..=512).contains(v))
}

/// The config change a record asks of a VM whose (effective) config is `current`.
pub fn change(
    record: &NbVm,
    current: &BTreeMap<String, String>,
    settings: &ProvisionSettings,
    scope: Scope,
) -> ConfigChange {
    let mut out = ConfigChange::default();
    resources(record, current, &mut out);
    if scope == Scope::Resources {
        return out;
    }
    let wanted: BTreeSet<u32> = record
        .interfaces
        .iter()
        .filter_map(|i| nic_index(&i.name))
        .collect();
    let mut done = BTreeSet::new();
    for iface in &record.interfaces {
        // One NIC per slot: a second interface of the same name (NetBox refuses them; a
        // hostile answer may not) is left out.
        let Some(i) = nic_index(&iface.name).filter(|i| done.insert(*i)) else {
            continue;
        };
        let net = format!("net{i}");
        let want = nic_value(iface, current.get(&net).map(String::as_str), settings);
        if current
            .get(&net)
            .is_none_or(|have| !same_props(have, &want))
        {
            out.set.insert(net, want);
        }
        let ipc = format!("ipconfig{i}");
        let want = ipconfig_value(&iface.ips);
        if current
            .get(&ipc)
            .is_none_or(|have| !same_props(have, &want))
        {
            out.set.insert(ipc, want);
        }
    }
    for key in current.keys() {
        let index = key
            .strip_prefix("ipconfig")
            .map(|n| format!("net{n}"))
            .unwrap_or_else(|| key.clone());
        if nic_index(&index).is_some_and(|i| !wanted.contains(&i)) {
            out.delete.insert(key.clone());
        }
    }
    cloud_init(current, settings, &mut out);
    out
}

/// `cores`/`sockets` and `memory`.
fn resources(record: &NbVm, current: &BTreeMap<String, String>, out: &mut ConfigChange) {
    if let Some(vcpus) = record.vcpus.as_deref().and_then(whole_vcpus) {
        let num = |k: &str| current.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let have = num("cores")
            .unwrap_or(1)
            .saturating_mul(num("sockets").unwrap_or(1));
        if have != vcpus || current.contains_key("vcpus") {
            out.set.insert("cores".into(), vcpus.to_string());
            out.set.insert("sockets".into(), "1".into());
            if current.contains_key("vcpus") {
                out.delete.insert("vcpus".into());
            }
        }
    }
    if let Some(mb) = record.memory_mb {
        let have = current
            .get("memory")
            .and_then(|m| propstr::memory_mib(&serde_json::Value::String(m.clone())));
        if have != Some(mb) {
            out.set.insert("memory".into(), mb.to_string());
        }
    }
}

/// `ciuser`, `sshkeys`, `nameserver`, `searchdomain` from the spec.
fn cloud_init(
    current: &BTreeMap<String, String>,
    settings: &ProvisionSettings,
    out: &mut ConfigChange,
) {
    let ci = &settings.cloud_init;
    let mut want = |key: &str, value: Option<String>, same: &dyn Fn(&str, &str) -> bool| {
        if let Some(v) = value
            && current.get(key).is_none_or(|have| !same(have, &v))
        {
            out.set.insert(key.into(), v);
        }
    };
    let exact = |a: &str, b: &str| a == b;
    want("ciuser", ci.user.clone(), &exact);
    want("searchdomain", ci.search_domain.clone(), &exact);
    want(
        "nameserver",
        (!ci.nameservers.is_empty()).then(|| ci.nameservers.join(" ")),
        &exact,
    );
    want(
        "sshkeys",
        ci.ssh_keys.as_deref().map(percent_encode),
        &|have, want| percent_decode(have).trim_end() == percent_decode(want).trim_end(),
    );
}

/// The `netN` value for an interface: the current NIC's model, MAC, bridge and other
/// properties kept, with the record's MAC, VLAN, MTU and link state.
fn nic_value(iface: &NbInterface, current: Option<&str>, settings: &ProvisionSettings) -> String {
    let parsed = current.map(propstr::parse).unwrap_or_default();
    // What PVE shows is kept but for the model and MAC (one of each is written back),
    // and nothing malformed goes back: no empty value, no odd key, no control character.
    let mut found_model = parsed
        .default
        .clone()
        .filter(|d| NIC_MODELS.contains(&d.as_str()));
    let mut found_mac = None;
    let mut props: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in parsed.props {
        if NIC_MODELS.contains(&k.as_str()) {
            if found_mac.is_none() {
                found_mac = normalize_mac(&v);
            }
            found_model.get_or_insert(k);
            continue;
        }
        match k.as_str() {
            "model" if NIC_MODELS.contains(&v.as_str()) => {
                found_model.get_or_insert(v);
            }
            "macaddr" => found_mac = found_mac.or_else(|| normalize_mac(&v)),
            "model" => {}
            _ if !v.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !v.chars().any(|c| c.is_control() || c == ',') =>
            {
                props.insert(k, v);
            }
            _ => {}
        }
    }
    let model = found_model.unwrap_or_else(|| settings.nic_model.to_string());
    let mac = iface.mac.clone().or(found_mac);
    props
        .entry("bridge".into())
        .or_insert_with(|| settings.nic_bridge.clone());
    match iface.untagged_vid {
        Some(vid) => props.insert("tag".into(), vid.to_string()),
        None => props.remove("tag"),
    };
    if let Some(mtu) = iface.mtu {
        props.insert("mtu".into(), mtu.to_string());
    }
    if iface.enabled {
        props.remove("link_down");
    } else {
        props.insert("link_down".into(), "1".into());
    }
    let mut parts = vec![match mac {
        Some(m) => format!("{model}={m}"),
        None => model,
    }];
    parts.extend(props.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(",")
}

/// The `ipconfigN` value: the first IPv4 and the first IPv6 address with their gateways,
/// DHCP when the interface has none.
pub fn ipconfig_value(ips: &[NbIp]) -> String {
    let v4 = ips.iter().find(|ip| !ip.is_v6());
    let v6 = ips.iter().find(|ip| ip.is_v6());
    let mut parts = Vec::new();
    match v4 {
        Some(ip) => {
            parts.push(format!("ip={}", ip.address));
            if let Some(gw) = &ip.gateway {
                parts.push(format!("gw={gw}"));
            }
        }
        None if v6.is_none() => parts.push("ip=dhcp".into()),
        None => {}
    }
    if let Some(ip) = v6 {
        parts.push(format!("ip6={}", ip.address));
        if let Some(gw) = &ip.gateway {
            parts.push(format!("gw6={gw}"));
        }
    }
    parts.join(",")
}

/// Two property strings with the same items (MACs compared without case, order ignored).
fn same_props(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let p = propstr::parse(s);
        let mut items: BTreeMap<String, String> = p
            .props
            .into_iter()
            .map(|(k, v)| match normalize_mac(&v) {
                Some(m) if NIC_MODELS.contains(&k.as_str()) || k == "macaddr" => (k, m),
                _ => (k, v),
            })
            .collect();
        if let Some(d) = p.default {
            items.insert(String::new(), d);
        }
        items
    };
    norm(a) == norm(b)
}

/// Disks the record asks to grow, and notes on those it cannot have.
pub fn disk_changes(
    record: &NbVm,
    current: &BTreeMap<String, String>,
) -> (Vec<DiskGrowth>, Vec<ConfigNote>) {
    let mut grow = Vec::new();
    let mut notes = Vec::new();
    for disk in &record.disks {
        let Some(value) = current
            .get(&disk.name)
            .filter(|_| propstr::is_qemu_disk_key(&disk.name))
        else {
            notes.push(ConfigNote {
                code: super::plan::warnings::DISK_NOT_IN_TEMPLATE,
                message: format!(
                    "virtual disk {:?} is not a disk slot of the VM (scsi0, virtio1, ...): it was not created",
                    disk.name
                ),
            });
            continue;
        };
        let have_mib = propstr::parse(value)
            .props
            .get("size")
            .and_then(|s| parse_size(s))
            .map(|b| b.div_ceil(1024 * 1024));
        match have_mib {
            Some(have) if disk.size_mb > have => grow.push(DiskGrowth {
                disk: disk.name.clone(),
                size_mib: disk.size_mb,
            }),
            Some(have) if disk.size_mb < have => notes.push(ConfigNote {
                code: super::plan::warnings::DISK_SHRINK_REFUSED,
                message: format!(
                    "virtual disk {} is {} MB in NetBox and {have} MiB in Proxmox VE: disks are never shrunk",
                    disk.name, disk.size_mb
                ),
            }),
            _ => {}
        }
    }
    (grow, notes)
}

/// Decodes `%XX` escapes; anything malformed is kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::provision::settings::{CloudInit, Selector};

    fn settings() -> ProvisionSettings {
        ProvisionSettings {
            dry_run: false,
            selector: Selector::default(),
            template: None,
            node: None,
            storage: "s".into(),
            pool: None,
            cloud_init: CloudInit::default(),
            nic_bridge: "vmbr0".into(),
            nic_model: "virtio",
            start: true,
            task_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(60),
            max_concurrent_tasks: 1,
            max_creates_per_pass: 1,
            retire: None,
            follow_resources: false,
        }
    }

    fn iface(id: u64, name: &str, enabled: bool) -> NbInterface {
        NbInterface {
            id,
            name: name.into(),
            enabled,
            mtu: None,
            mac: None,
            untagged_vid: None,
            prefix: None,
            prefix_problem: None,
            ips: Vec::new(),
            owner: None,
        }
    }

    fn record(interfaces: Vec<NbInterface>) -> NbVm {
        NbVm {
            id: 1,
            name: "vm".into(),
            status: "staged".into(),
            description: String::new(),
            vcpus: None,
            memory_mb: None,
            tags: Vec::new(),
            role: Vec::new(),
            phase: None,
            reserved_vmid: None,
            provisioned_by: None,
            owner: None,
            vmid: None,
            template: None,
            target_node: None,
            start: None,
            interfaces,
            disks: Vec::new(),
        }
    }

    /// Written as asked, the config asks for nothing more.
    fn stable(r: &NbVm, config: &BTreeMap<String, String>) -> ConfigChange {
        let s = settings();
        let c = change(r, config, &s, Scope::Create);
        let mut written = config.clone();
        written.extend(c.set.clone());
        for k in &c.delete {
            written.remove(k);
        }
        assert!(change(r, &written, &s, Scope::Create).is_empty(), "{c:?}");
        c
    }

    #[test]
    fn two_interfaces_of_one_slot_configure_the_first_and_stay_stable() {
        // Found by fuzzing (provision_plan): the second `net0` undid the first every pass.
        let r = record(vec![iface(1, "net0", true), iface(2, "net0", false)]);
        let c = stable(&r, &BTreeMap::new());
        assert!(!c.set["net0"].contains("link_down"), "{c:?}");
    }

    #[test]
    fn a_hostile_nic_value_is_written_back_with_one_model_and_nothing_malformed() {
        // Found by fuzzing: two models, a bare model item, a control character.
        let r = record(vec![iface(1, "net0", true), iface(2, "net1", true)]);
        let config: BTreeMap<String, String> = [
            ("net0", "virtio=BC:24:11:00:90:00,bridge=vm\r0,firewall=1"),
            ("net1", "e1000,virtio=vmbr1,e1000=,model=rtl8139,queues=2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = stable(&r, &config);
        assert_eq!(
            c.set["net0"],
            "virtio=BC:24:11:00:90:00,bridge=vmbr0,firewall=1"
        );
        assert_eq!(c.set["net1"], "e1000,bridge=vmbr0,queues=2");
    }
}
