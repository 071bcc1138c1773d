//! Provisioning's view of hostile NetBox records and PVE configs: a record, its interfaces
//! and addresses as NetBox may answer them (`observe::parse_vm`, `parse_interface`), and a
//! guest config as PVE may answer it, planned by `plan::next_step` and diffed by
//! `vm_config::change`, from one JSON document:
//! `{"vm": {...}, "interfaces": [{...}], "ips": ["10.0.0.5/24", ...], "config": {...},
//!   "pending": {...}}`.
//!
//! Properties: nothing panics; a config write only sets keys of a fixed set (cores,
//! sockets, memory, `netN`, `ipconfigN`, the cloud-init keys) with values free of newlines
//! and, for `ipconfigN`, of anything but `ip`/`gw`/`ip6`/`gw6` items; written as asked, the
//! config asks for nothing more (a change is never sent twice).
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::crd::RetiredRecordPolicy;
use proxmox_netbox_operator::provision::mark::ProvisionMark;
use proxmox_netbox_operator::provision::model::{
    ClusterView, GuestView, NbIp, NbPrefix, Power, TemplateView,
};
use proxmox_netbox_operator::provision::observe::{is_cidr, parse_interface_json, parse_vm};
use proxmox_netbox_operator::provision::plan::{Decision, Intent, Step, VmWork, next_step};
use proxmox_netbox_operator::provision::settings::{CloudInit, ProvisionSettings, Selector};
use proxmox_netbox_operator::provision::vm_config::{Scope, change, nic_index};
use serde_json::Value;

const MARK: &str = "inst/ns/name/pve";

fn settings() -> ProvisionSettings {
    ProvisionSettings {
        dry_run: false,
        selector: Selector {
            tag: Some("p".into()),
            role: None,
        },
        template: Some("tpl".into()),
        node: None,
        storage: "ceph".into(),
        pool: None,
        cloud_init: CloudInit {
            user: Some("ops".into()),
            ssh_keys: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq ops".into()),
            nameservers: vec!["10.0.0.53".into()],
            search_domain: Some("lab".into()),
        },
        nic_bridge: "vmbr0".into(),
        nic_model: "virtio",
        start: true,
        task_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(60),
        max_concurrent_tasks: 1,
        max_creates_per_pass: 5,
        retire: Some(RetiredRecordPolicy::Offline),
        follow_resources: true,
    }
}

fn text_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .take(64)
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn allowed_key(key: &str) -> bool {
    matches!(
        key,
        "cores" | "sockets" | "memory" | "ciuser" | "sshkeys" | "nameserver" | "searchdomain"
    ) || nic_index(key).is_some()
        || key
            .strip_prefix("ipconfig")
            .is_some_and(|n| nic_index(&format!("net{n}")).is_some())
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(mut record) = parse_vm(&doc["vm"]) else {
        return;
    };
    let ips: Vec<NbIp> = doc["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|a| is_cidr(a))
        .take(4)
        .enumerate()
        .map(|(i, a)| NbIp {
            id: i as u64 + 1,
            address: a.to_string(),
            owner: None,
            gateway: Some("10.0.0.1".into()),
        })
        .collect();
    for (i, v) in doc["interfaces"].as_array().into_iter().flatten().take(8).enumerate() {
        if let Some(mut iface) = parse_interface_json(v) {
            if i == 0 {
                iface.ips = ips.clone();
            } else if iface.ips.is_empty() && i % 2 == 0 {
                iface.prefix = Some(NbPrefix {
                    id: 9,
                    prefix: "10.9.0.0/24".into(),
                    gateway: None,
                });
            }
            record.interfaces.push(iface);
        }
    }
    let s = settings();
    let config = text_map(&doc["config"]);
    let pending = text_map(&doc["pending"]);
    for scope in [Scope::Create, Scope::Resources] {
        let c = change(&record, &config, &s, scope);
        for (k, v) in &c.set {
            assert!(allowed_key(k), "key {k:?} set");
            assert!(!v.contains(['\n', '\r']), "{k}: {v:?}");
            if k.starts_with("ipconfig") {
                for item in v.split(',') {
                    let key = item.split('=').next().unwrap_or_default();
                    assert!(matches!(key, "ip" | "gw" | "ip6" | "gw6"), "{k}: {v:?}");
                }
            }
        }
        let mut written = config.clone();
        for (k, v) in &c.set {
            written.insert(k.clone(), v.clone());
        }
        for k in &c.delete {
            written.remove(k);
        }
        let again = change(&record, &written, &s, scope);
        assert!(again.is_empty(), "asked again after writing {c:?}: {again:?}");
    }
    let cluster = ClusterView {
        mark: MARK.into(),
        templates: vec![TemplateView {
            vmid: 9000,
            name: "tpl".into(),
            node: "pve1".into(),
        }],
        nodes_online: vec!["pve1".into()],
        nodes: vec!["pve1".into()],
        shared_image_storages: vec!["ceph".into()],
        image_storages: [("pve1".to_string(), vec!["ceph".to_string()])].into(),
        guests_complete: true,
    };
    let guest = GuestView {
        vmid: 4242,
        node: "pve1".into(),
        qemu: true,
        name: record.name.clone(),
        power: Power::Stopped,
        lock: None,
        protected: false,
        mark: Some(ProvisionMark {
            netbox_vm: record.id,
            owner: MARK.into(),
        }),
        config: Some(config),
        pending,
    };
    for intent in [Intent::Create, Intent::Retire, Intent::Follow, Intent::Check] {
        let work = VmWork {
            intent,
            record: record.clone(),
            guest: Some(guest.clone()),
        };
        if let Decision::Act { step } = next_step(&work, &cluster, &s) {
            let _ = step.describe();
            if let Step::Resize { disk, .. } = &step {
                assert!(record.disks.iter().any(|d| &d.name == disk));
            }
        }
    }
});
