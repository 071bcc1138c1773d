//! The provisioning plan, pure: which records are acted on, each VM's next step from what
//! both sides show, every crash point resumed without a second clone, the config a record
//! asks for, and what the sync is told.

use std::collections::BTreeMap;
use std::time::Duration;

use proxmox_netbox_operator::crd::RetiredRecordPolicy;
use proxmox_netbox_operator::provision::mark::ProvisionMark;
use proxmox_netbox_operator::provision::model::{
    ClusterView, GuestView, NbDisk, NbInterface, NbIp, NbPrefix, NbVm, Phase, Power, TemplateView,
};
use proxmox_netbox_operator::provision::plan::{
    Decision, Intent, Step, VmWork, assume, next_step, select, warnings,
};
use proxmox_netbox_operator::provision::report::{orphans, sync_overrides};
use proxmox_netbox_operator::provision::settings::{CloudInit, ProvisionSettings, Selector};
use proxmox_netbox_operator::provision::vm_config::{Scope, change, percent_decode};

const MARK: &str = "inst/infra/lab/pve-lab";

fn settings() -> ProvisionSettings {
    ProvisionSettings {
        dry_run: false,
        selector: Selector {
            tag: Some("provision-me".into()),
            role: None,
        },
        template: Some("debian-12-cloud".into()),
        node: None,
        storage: "ceph-vm".into(),
        pool: None,
        cloud_init: CloudInit {
            user: Some("ops".into()),
            ssh_keys: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example".into()),
            nameservers: vec!["10.0.0.53".into()],
            search_domain: Some("lab.example".into()),
        },
        nic_bridge: "vmbr0".into(),
        nic_model: "virtio",
        start: true,
        task_timeout: Duration::from_secs(600),
        shutdown_timeout: Duration::from_secs(180),
        max_concurrent_tasks: 2,
        max_creates_per_pass: 5,
        retire: Some(RetiredRecordPolicy::Offline),
        follow_resources: false,
    }
}

fn cluster() -> ClusterView {
    let storages = vec!["ceph-vm".to_string(), "local-lvm".to_string()];
    ClusterView {
        mark: MARK.into(),
        templates: vec![TemplateView {
            vmid: 9000,
            name: "debian-12-cloud".into(),
            node: "pve1".into(),
        }],
        nodes_online: vec!["pve1".into(), "pve2".into()],
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        shared_image_storages: vec!["ceph-vm".into()],
        image_storages: [
            ("pve1".to_string(), storages.clone()),
            ("pve2".to_string(), storages),
        ]
        .into(),
        guests_complete: true,
    }
}

/// The template's config as PVE shows it.
fn template_config() -> BTreeMap<String, String> {
    [
        ("name", "debian-12-cloud"),
        ("cores", "1"),
        ("sockets", "1"),
        ("memory", "1024"),
        ("scsi0", "ceph-vm:base-9000-disk-0,size=8G"),
        ("ide2", "ceph-vm:vm-9000-cloudinit,media=cdrom"),
        ("net0", "virtio=BC:24:11:00:90:00,bridge=vmbr0"),
        ("net2", "e1000=BC:24:11:00:90:02,bridge=vmbr1"),
        ("template", "1"),
        ("digest", "d1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A staged record: 2 vCPUs, 2 GiB, net0 with a fixed address, net1 with a prefix, a
/// 10 GiB scsi0.
fn record() -> NbVm {
    NbVm {
        id: 42,
        name: "web01".into(),
        status: "staged".into(),
        description: "frontend".into(),
        vcpus: Some("2.00".into()),
        memory_mb: Some(2048),
        tags: vec!["provision-me".into(), "Provision me".into()],
        role: vec![],
        phase: None,
        reserved_vmid: None,
        provisioned_by: None,
        owner: None,
        vmid: None,
        template: None,
        target_node: None,
        start: None,
        interfaces: vec![
            NbInterface {
                id: 501,
                name: "net0".into(),
                enabled: true,
                mtu: None,
                mac: None,
                untagged_vid: Some(120),
                prefix: None,
                prefix_problem: None,
                ips: vec![NbIp {
                    id: 901,
                    address: "10.99.0.10/24".into(),
                    owner: None,
                    gateway: Some("10.99.0.1".into()),
                }],
                owner: None,
            },
            NbInterface {
                id: 502,
                name: "net1".into(),
                enabled: true,
                mtu: Some(9000),
                mac: None,
                untagged_vid: None,
                prefix: Some(NbPrefix {
                    id: 77,
                    prefix: "10.98.0.0/24".into(),
                    gateway: Some("10.98.0.1".into()),
                }),
                prefix_problem: None,
                ips: vec![],
                owner: None,
            },
        ],
        disks: vec![NbDisk {
            id: 601,
            name: "scsi0".into(),
            size_mb: 10240,
            owner: None,
        }],
    }
}

fn work(intent: Intent, record: NbVm, guest: Option<GuestView>) -> VmWork {
    VmWork {
        intent,
        record,
        guest,
    }
}

/// Runs the plan to its end, assuming every step succeeds: the steps, and where it ended.
fn run(w: &mut VmWork, s: &ProvisionSettings) -> (Vec<Step>, Decision) {
    let c = cluster();
    let mut steps = Vec::new();
    for _ in 0..30 {
        match next_step(w, &c, s) {
            Decision::Act { step } => {
                assume(&step, w, &c, Some(&template_config()), 4242);
                steps.push(step);
            }
            other => return (steps, other),
        }
    }
    panic!("no end after 30 steps: {steps:?}");
}

fn kind(s: &Step) -> &'static str {
    s.action()
}

#[test]
fn a_staged_record_is_reserved_allocated_cloned_configured_grown_started_and_handed_over() {
    let mut w = work(Intent::Create, record(), None);
    let (steps, end) = run(&mut w, &settings());
    assert_eq!(end, Decision::Done);
    assert_eq!(
        steps.iter().map(kind).collect::<Vec<_>>(),
        [
            "reserve",
            "ip_allocated",
            "cloned",
            "configured",
            "resized",
            "started",
            "handed_over"
        ]
    );
    let Step::Clone {
        template,
        template_node,
        vmid,
        name,
        target,
        storage,
        notes,
        ..
    } = &steps[2]
    else {
        panic!("{:?}", steps[2])
    };
    assert_eq!(
        (*template, template_node.as_str(), *vmid),
        (9000, "pve1", 4242)
    );
    assert_eq!(
        (name.as_str(), target, storage.as_str()),
        ("web01", &None, "ceph-vm")
    );
    assert_eq!(
        ProvisionMark::find(notes),
        Some(ProvisionMark {
            netbox_vm: 42,
            owner: MARK.into()
        })
    );
    assert!(notes.starts_with("frontend\n"), "{notes}");
    let Step::Configure { change, digest, .. } = &steps[3] else {
        panic!("{:?}", steps[3])
    };
    assert_eq!(digest.as_deref(), Some("d1"));
    assert_eq!(change.set["cores"], "2");
    assert_eq!(change.set["sockets"], "1");
    assert_eq!(change.set["memory"], "2048");
    // The template's NIC keeps its MAC and bridge, gets the VLAN; net1 is new.
    assert_eq!(
        change.set["net0"],
        "virtio=BC:24:11:00:90:00,bridge=vmbr0,tag=120"
    );
    assert_eq!(change.set["net1"], "virtio,bridge=vmbr0,mtu=9000");
    assert_eq!(change.set["ipconfig0"], "ip=10.99.0.10/24,gw=10.99.0.1");
    assert!(
        change.set["ipconfig1"].starts_with("ip=<next free in 10.98.0.0/24>/24,gw=10.98.0.1"),
        "{}",
        change.set["ipconfig1"]
    );
    assert_eq!(change.set["ciuser"], "ops");
    assert_eq!(change.set["nameserver"], "10.0.0.53");
    assert!(
        change.set["sshkeys"].starts_with("ssh-ed25519%20AAAA"),
        "{}",
        change.set["sshkeys"]
    );
    // A NIC of the template with no NetBox interface goes.
    assert!(change.delete.contains("net2"), "{change:?}");
    let Step::Resize { disk, size_mib, .. } = &steps[4] else {
        panic!("{:?}", steps[4])
    };
    assert_eq!((disk.as_str(), *size_mib), ("scsi0", 10240));
    let Step::HandOver {
        status, children, ..
    } = &steps[6]
    else {
        panic!("{:?}", steps[6])
    };
    assert_eq!(*status, "active");
    // Both interfaces, both addresses and the disk get the owner mark.
    assert_eq!(children.len(), 5, "{children:?}");
    assert_eq!(w.record.phase, Some(Phase::Provisioned));
    assert_eq!(w.record.vmid, Some(4242));
}

#[test]
fn a_pass_cut_off_after_any_step_is_resumed_without_a_second_clone() {
    let mut full = work(Intent::Create, record(), None);
    let (all, _) = run(&mut full, &settings());
    for cut in 0..=all.len() {
        // What the next pass observes after a crash right after step `cut`.
        let mut w = work(Intent::Create, record(), None);
        let c = cluster();
        for step in &all[..cut] {
            assume(step, &mut w, &c, Some(&template_config()), 4242);
        }
        let (rest, end) = run(&mut w, &settings());
        assert_eq!(end, Decision::Done, "cut after {cut}");
        let kinds: Vec<&str> = all[..cut].iter().chain(&rest).map(kind).collect();
        assert_eq!(
            kinds,
            all.iter().map(kind).collect::<Vec<_>>(),
            "cut after {cut}: the steps left are exactly the ones not done"
        );
        assert_eq!(kinds.iter().filter(|k| **k == "cloned").count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == "reserve").count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == "ip_allocated").count(), 1);
    }
}

/// The guest of the record's reserved vmid as PVE shows it.
fn guest(mark: Option<ProvisionMark>, lock: Option<&str>, power: Power) -> GuestView {
    GuestView {
        vmid: 4242,
        node: "pve1".into(),
        qemu: true,
        name: "web01".into(),
        power,
        lock: lock.map(Into::into),
        protected: false,
        mark,
        config: None,
        pending: BTreeMap::new(),
    }
}

fn our_mark() -> Option<ProvisionMark> {
    Some(ProvisionMark {
        netbox_vm: 42,
        owner: MARK.into(),
    })
}

fn reserved() -> NbVm {
    NbVm {
        reserved_vmid: Some(4242),
        phase: Some(Phase::Reserved),
        provisioned_by: Some(MARK.into()),
        ..record()
    }
}

#[test]
fn a_vmid_another_guest_took_is_given_up_and_a_running_clone_is_waited_for() {
    let s = settings();
    let c = cluster();
    // Someone else created 4242 between the reservation and the clone.
    let foreign = ProvisionMark {
        netbox_vm: 7,
        owner: MARK.into(),
    };
    for other in [None, Some(foreign)] {
        let w = work(
            Intent::Create,
            reserved(),
            Some(guest(other, None, Power::Stopped)),
        );
        assert_eq!(
            next_step(&w, &c, &s),
            Decision::Act {
                step: Step::ReleaseVmid { vmid: 4242 }
            }
        );
    }
    // Our clone, still locked by its task: no second clone, no config write.
    let w = work(
        Intent::Create,
        reserved(),
        Some(guest(our_mark(), Some("clone"), Power::Stopped)),
    );
    assert!(matches!(next_step(&w, &c, &s), Decision::Wait { .. }));
    // Ours and unlocked: its config is read before anything is decided.
    let w = work(
        Intent::Create,
        reserved(),
        Some(guest(our_mark(), None, Power::Stopped)),
    );
    assert_eq!(next_step(&w, &c, &s), Decision::ReadConfig { vmid: 4242 });
    // The guest lists were not read completely: whether 4242 exists is unknown.
    let partial = ClusterView {
        guests_complete: false,
        ..cluster()
    };
    let w = work(Intent::Create, reserved(), None);
    assert!(matches!(next_step(&w, &partial, &s), Decision::Wait { .. }));
}

fn blocked_code(w: &VmWork, c: &ClusterView, s: &ProvisionSettings) -> &'static str {
    match next_step(w, c, s) {
        Decision::Blocked { warning } => warning.code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn records_that_cannot_be_provisioned_are_stopped_before_anything_is_done() {
    let s = settings();
    let c = cluster();
    let with = |f: &dyn Fn(&mut NbVm)| {
        let mut r = record();
        f(&mut r);
        work(Intent::Create, r, None)
    };
    let cases: Vec<(&str, VmWork, ClusterView, ProvisionSettings)> = vec![
        (
            warnings::INVALID_NAME,
            with(&|r| r.name = "web 01; rm".into()),
            cluster(),
            settings(),
        ),
        (
            warnings::INVALID_VCPUS,
            with(&|r| r.vcpus = Some("1.50".into())),
            cluster(),
            settings(),
        ),
        (
            warnings::INVALID_MEMORY,
            with(&|r| r.memory_mb = Some(8)),
            cluster(),
            settings(),
        ),
        (
            warnings::INVALID_INTERFACE_NAME,
            with(&|r| r.interfaces[0].name = "eth0".into()),
            cluster(),
            settings(),
        ),
        (
            warnings::PREFIX_AMBIGUOUS,
            with(&|r| {
                r.interfaces[1].prefix = None;
                r.interfaces[1].prefix_problem = Some("its untagged VLAN has 2 prefixes".into());
            }),
            cluster(),
            settings(),
        ),
        (
            warnings::NO_TEMPLATE,
            with(&|_| {}),
            cluster(),
            ProvisionSettings {
                template: None,
                ..settings()
            },
        ),
        (
            warnings::TEMPLATE_NOT_FOUND,
            with(&|r| r.template = Some("windows-2025".into())),
            cluster(),
            settings(),
        ),
        (
            warnings::NODE_UNAVAILABLE,
            with(&|r| r.target_node = Some("pve3".into())),
            cluster(),
            settings(),
        ),
        (
            warnings::STORAGE_NOT_SHARED,
            with(&|r| r.target_node = Some("pve2".into())),
            cluster(),
            ProvisionSettings {
                storage: "local-lvm".into(),
                ..settings()
            },
        ),
        (
            warnings::STORAGE_NOT_FOUND,
            with(&|_| {}),
            cluster(),
            ProvisionSettings {
                storage: "nfs-backup".into(),
                ..settings()
            },
        ),
    ];
    for (code, w, c, s) in &cases {
        assert_eq!(blocked_code(w, c, s), *code, "{code}");
    }
    // By vmid, and to another node on shared storage: fine.
    let w = with(&|r| {
        r.template = Some("9000".into());
        r.target_node = Some("pve2".into());
    });
    assert_eq!(
        next_step(&w, &c, &s),
        Decision::Act {
            step: Step::Reserve
        }
    );
}

#[test]
fn selection_counts_new_records_against_the_limit_and_reports_what_it_leaves_alone() {
    let s = ProvisionSettings {
        max_creates_per_pass: 2,
        ..settings()
    };
    let staged = |id: u64| NbVm { id, ..record() };
    // Three new ones: over the limit, none is created.
    let sel = select(vec![staged(1), staged(2), staged(3)], &s, MARK);
    assert!(sel.work.is_empty());
    assert_eq!(sel.reported.len(), 3);
    assert!(
        sel.reported
            .iter()
            .all(|(_, w)| w.code == warnings::LIMIT_REACHED)
    );
    // Two new ones and one already reserved: the reserved one goes on whatever the limit.
    let sel = select(
        vec![
            staged(1),
            staged(2),
            NbVm {
                id: 3,
                ..reserved()
            },
        ],
        &s,
        MARK,
    );
    assert_eq!(sel.work.len(), 3);
    // Not selected (no tag), another owner's, somebody's VM in decommissioning.
    let untagged = NbVm {
        tags: vec!["web".into()],
        ..record()
    };
    let other = NbVm {
        provisioned_by: Some("other/ns/name/pve".into()),
        ..reserved()
    };
    let decommissioning = NbVm {
        id: 9,
        status: "decommissioning".into(),
        owner: Some(MARK.into()),
        vmid: Some(101),
        ..record()
    };
    let sel = select(vec![untagged, other, decommissioning], &s, MARK);
    assert!(sel.work.is_empty());
    let codes: Vec<&str> = sel.reported.iter().map(|(_, w)| w.code).collect();
    assert_eq!(
        codes,
        [warnings::OTHER_OWNER, warnings::NOT_PROVISIONED_BY_OPERATOR]
    );
    // A provisioned one in decommissioning with retirement off: only reported.
    let provisioned = NbVm {
        status: "decommissioning".into(),
        phase: Some(Phase::Provisioned),
        provisioned_by: Some(MARK.into()),
        owner: Some(MARK.into()),
        vmid: Some(4242),
        ..record()
    };
    let off = ProvisionSettings {
        retire: None,
        ..settings()
    };
    let sel = select(vec![provisioned.clone()], &off, MARK);
    assert_eq!(sel.reported[0].1.code, warnings::RETIRE_DISABLED);
    let sel = select(vec![provisioned], &settings(), MARK);
    assert_eq!(sel.work[0].0, Intent::Retire);
}

/// A record handed over: it and its children carry the owner mark.
fn provisioned(status: &str) -> NbVm {
    let mut r = NbVm {
        status: status.into(),
        phase: Some(Phase::Provisioned),
        provisioned_by: Some(MARK.into()),
        owner: Some(MARK.into()),
        vmid: Some(4242),
        reserved_vmid: Some(4242),
        ..record()
    };
    for i in &mut r.interfaces {
        i.owner = Some(MARK.into());
        for ip in &mut i.ips {
            ip.owner = Some(MARK.into());
        }
    }
    for d in &mut r.disks {
        d.owner = Some(MARK.into());
    }
    r
}

#[test]
fn a_provisioned_vm_in_decommissioning_is_shut_down_destroyed_and_released() {
    let s = settings();
    let c = cluster();
    let mut w = work(
        Intent::Retire,
        provisioned("decommissioning"),
        Some(guest(our_mark(), None, Power::Running)),
    );
    let (steps, end) = run(&mut w, &s);
    assert_eq!(end, Decision::Done);
    assert_eq!(
        steps.iter().map(kind).collect::<Vec<_>>(),
        ["retiring", "shut_down", "destroyed", "retired"]
    );
    assert_eq!(
        steps[3],
        Step::Release {
            vmid: 4242,
            policy: RetiredRecordPolicy::Offline
        }
    );
    assert_eq!(w.record.phase, Some(Phase::Retired));
    // Never destroyed: another record's mark, no mark, the protection flag.
    for (mark, protected, code) in [
        (
            Some(ProvisionMark {
                netbox_vm: 43,
                owner: MARK.into(),
            }),
            false,
            warnings::FOREIGN_VM,
        ),
        (None, false, warnings::FOREIGN_VM),
        (our_mark(), true, warnings::PROTECTED),
    ] {
        let mut g = guest(mark, None, Power::Running);
        g.protected = protected;
        let w = work(Intent::Retire, provisioned("decommissioning"), Some(g));
        assert_eq!(blocked_code(&w, &c, &s), code);
    }
    // Gone, but the guest lists were not read completely: not released yet.
    let partial = ClusterView {
        guests_complete: false,
        ..cluster()
    };
    let w = work(Intent::Retire, provisioned("decommissioning"), None);
    assert!(matches!(next_step(&w, &partial, &s), Decision::Wait { .. }));
}

#[test]
fn follow_resources_grows_and_resizes_and_waits_for_a_reboot_without_sending_twice() {
    let s = ProvisionSettings {
        follow_resources: true,
        ..settings()
    };
    let c = cluster();
    let mut current = template_config();
    current.remove("template");
    current.insert("cores".into(), "2".into());
    current.insert("memory".into(), "2048".into());
    current.insert("scsi0".into(), "ceph-vm:vm-4242-disk-0,size=10G".into());
    let mut r = provisioned("active");
    r.vcpus = Some("4".into());
    let mut g = guest(our_mark(), None, Power::Running);
    g.config = Some(current.clone());
    let w = work(Intent::Follow, r.clone(), Some(g.clone()));
    let Decision::Act {
        step: Step::Configure { change, .. },
    } = next_step(&w, &c, &s)
    else {
        panic!("{:?}", next_step(&w, &c, &s))
    };
    assert_eq!(change.set.keys().collect::<Vec<_>>(), ["cores", "sockets"]);
    // PVE keeps it pending on the running VM: nothing more is sent, a reboot is due.
    g.pending.insert("cores".into(), "4".into());
    let w = work(Intent::Follow, r.clone(), Some(g.clone()));
    assert_eq!(next_step(&w, &c, &s), Decision::Done);
    assert!(proxmox_netbox_operator::provision::plan::reboot_required(
        &g
    ));
    // A bigger disk in NetBox: grown; a smaller one: never shrunk, only noted.
    let mut bigger = r.clone();
    bigger.disks[0].size_mb = 20480;
    let w = work(Intent::Follow, bigger, Some(g.clone()));
    assert!(matches!(
        next_step(&w, &c, &s),
        Decision::Act {
            step: Step::Resize {
                size_mib: 20480,
                ..
            }
        }
    ));
    let mut smaller = r;
    smaller.disks[0].size_mb = 4096;
    let w = work(Intent::Follow, smaller, Some(g));
    assert_eq!(next_step(&w, &c, &s), Decision::Done);
    let notes = proxmox_netbox_operator::provision::plan::config_notes(&w);
    assert_eq!(notes[0].code, warnings::DISK_SHRINK_REFUSED);
    // A record provisioned earlier whose children a cut-off hand-over left unmarked.
    let mut half = provisioned("active");
    half.interfaces[1].owner = None;
    let w = work(
        Intent::Check,
        half,
        Some(guest(our_mark(), None, Power::Running)),
    );
    assert_eq!(
        next_step(&w, &c, &settings()),
        Decision::Act {
            step: Step::HandOver {
                vmid: 4242,
                status: "active",
                record: false,
                children: vec![("virtualization/interfaces", 502)],
            }
        }
    );
}

#[test]
fn the_config_asked_for_is_stable_once_written() {
    let s = settings();
    let mut w = work(Intent::Create, record(), None);
    run(&mut w, &s);
    let config = w.guest.as_ref().unwrap().config.clone().unwrap();
    // Written as PVE keeps it (sshkeys encoded once): nothing more to change.
    assert!(change(&w.record, &config, &s, Scope::Create).is_empty());
    assert_eq!(
        percent_decode(&config["sshkeys"]),
        s.cloud_init.ssh_keys.clone().unwrap()
    );
    // MACs compare without case; a MAC set in NetBox is written.
    let mut lower = config.clone();
    lower.insert("net0".into(), config["net0"].to_lowercase());
    assert!(change(&w.record, &lower, &s, Scope::Create).is_empty());
    let mut r = w.record.clone();
    r.interfaces[0].mac = Some("02:00:00:00:00:01".into());
    let c = change(&r, &config, &s, Scope::Create);
    assert!(
        c.set["net0"].starts_with("virtio=02:00:00:00:00:01,"),
        "{c:?}"
    );
}

#[test]
fn the_sync_leaves_guests_being_provisioned_alone_and_knows_provisioned_ones() {
    let mut guests = BTreeMap::new();
    let view = |vmid: u32, mark: Option<ProvisionMark>| GuestView {
        vmid,
        mark,
        ..guest(None, None, Power::Running)
    };
    guests.insert(4242, view(4242, our_mark()));
    guests.insert(
        4300,
        view(
            4300,
            Some(ProvisionMark {
                netbox_vm: 99,
                owner: MARK.into(),
            }),
        ),
    );
    guests.insert(101, view(101, None));
    let records = vec![
        reserved(),
        NbVm {
            id: 43,
            ..provisioned("active")
        },
    ];
    let mut records = records;
    records[1].vmid = Some(5000);
    let o = sync_overrides(&records, &guests, MARK, true);
    assert!(
        o.excluded.contains(&4242),
        "reserved and cloned: not synced yet"
    );
    assert!(!o.excluded.contains(&101) && !o.excluded.contains(&4300));
    assert_eq!(o.provisioned.get(&5000), Some(&true));
    assert!(o.keep_decommissioning);
    // 4300 carries our mark for a record that is gone: an orphan, reported.
    let found = orphans(&records, &guests, MARK);
    assert_eq!(found.iter().map(|o| o.vmid).collect::<Vec<_>>(), [4300]);
}
