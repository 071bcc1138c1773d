//! The sync engine against the harness's real NetBox, with inventories read from the
//! seeded fake PVE. Tests in this file take turns (a shared lock), so NetBox's change log
//! counts only their own writes; each uses its own owner, site and cluster.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::harness::{FakePve, HarnessEnv, checking_http_client, read_fake_pve, topology};
use common::netbox::NetBoxRest;
use proxmox_netbox_operator::hardware::facts::{
    ChassisInfo, EthtoolInfo, LinkInfo, LinkKind, NicFacts, NodeHardware, SystemInfo,
};
use proxmox_netbox_operator::inventory::{Inventory, ReadFailure, ReadOutcome, ReadScope};
use proxmox_netbox_operator::net::guard::EndpointGuard;
use proxmox_netbox_operator::netbox::client::{NetBoxApi, NetBoxClient, NetBoxConnection};
use proxmox_netbox_operator::netbox::engine::{SyncSettings, sync};
use proxmox_netbox_operator::netbox::report::SyncReport;
use proxmox_netbox_operator::secrets::SecretString;
use proxmox_netbox_operator::tls::{TlsSettings, install_crypto_provider};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One NetBox-writing test at a time.
static NETBOX: Mutex<()> = Mutex::const_new(());

/// The harness (fake PVE, NetBox, test proxies) listens on loopback: the endpoint guard must
/// be told to allow it.
fn loopback_allowed() -> EndpointGuard {
    EndpointGuard::new(["127.0.0.0/8".parse().unwrap()])
}

async fn demo_inventory(env: &HarnessEnv) -> Inventory {
    let pve = FakePve::start(env, &["--topology", &topology("demo.json")]);
    read_fake_pve(&pve).await
}

fn netbox(env: &HarnessEnv) -> NetBoxClient {
    install_crypto_provider();
    NetBoxClient::new(NetBoxConnection {
        url: env.netbox_url.clone(),
        token: SecretString::new(env.netbox_token.clone()),
        tls: TlsSettings::default(),
        timeout: Duration::from_secs(120),
        max_in_flight: 4,
        retries: 2,
        // The harness's NetBox is plain http on loopback.
        allow_insecure_http: true,
        endpoint_guard: loopback_allowed(),
    })
    .unwrap()
}

/// Settings with names unique to this test run, so reruns against the same NetBox never collide.
fn settings(test: &str) -> SyncSettings {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let test = format!("{test}-{}-{nanos:x}", std::process::id());
    SyncSettings {
        owner: format!("tests/{test}"),
        adopt_previous: None,
        site: format!("site-{test}"),
        tenant: None,
        vrf: None,
        cluster_name: format!("cluster-{test}"),
        cluster_group: None,
        cluster_type: "Proxmox VE".into(),
        device_role: "Proxmox Node".into(),
        role_qemu: "Virtual Machine".into(),
        role_lxc: "Container".into(),
        role_template: "Template".into(),
        extra_tags: vec!["proxmox".into()],
        sync_templates: false,
        nodes: true,
        node_interfaces: true,
        virtual_machines: true,
        vm_interfaces: true,
        virtual_disks: true,
        ip_addresses: true,
        adopt_existing: false,
        description_from_notes: true,
        create_missing_vlans: false,
        prune: false,
        hardware_discovery: false,
        grace_period: Duration::from_secs(3600),
        prune_max_percent: 100,
        batch_size: 100,
        scope: None,
        guests: Default::default(),
        max_in_flight: 4,
    }
}

async fn run_at(
    nb: &NetBoxClient,
    s: &SyncSettings,
    inv: &Inventory,
    hw: &BTreeMap<String, NodeHardware>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> SyncReport {
    let before = nb.request_counts();
    let mut r = sync(nb, s, inv, hw, dry_run, now).await.unwrap();
    r.read_requests -= before.0;
    r.write_requests -= before.1;
    r
}

async fn run(nb: &NetBoxClient, s: &SyncSettings, inv: &Inventory, dry_run: bool) -> SyncReport {
    run_at(nb, s, inv, &BTreeMap::new(), dry_run, Utc::now()).await
}

/// Plain REST reads and writes for checking NetBox itself, with the lookups these tests
/// repeat.
struct Rest(NetBoxRest);

impl std::ops::Deref for Rest {
    type Target = NetBoxRest;
    fn deref(&self) -> &NetBoxRest {
        &self.0
    }
}

impl Rest {
    fn new(env: &HarnessEnv) -> Self {
        Self(NetBoxRest::new(env))
    }
    /// The VM of a vmid in a NetBox cluster.
    async fn vm(&self, cluster: u64, vmid: u32) -> Value {
        self.one(&format!(
            "virtualization/virtual-machines/?cluster_id={cluster}&cf_proxmox_vmid={vmid}"
        ))
        .await
    }
    /// The interface `name` of a VM.
    async fn vm_interface(&self, vm: &Value, name: &str) -> Value {
        self.one(&format!(
            "virtualization/interfaces/?virtual_machine_id={}&name={name}",
            vm["id"]
        ))
        .await
    }
    /// Id of the NetBox cluster a sync with these settings writes to.
    async fn cluster_id(&self, s: &SyncSettings) -> u64 {
        self.one(&format!("virtualization/clusters/?name={}", s.cluster_name))
            .await["id"]
            .as_u64()
            .unwrap()
    }
    async fn changes(&self) -> u64 {
        self.change_count().await
    }
}

/// The ids of an object's tags, plus the tag `tag`.
fn tags_with(obj: &Value, tag: &Value) -> Vec<Value> {
    let mut ids: Vec<Value> = obj["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    ids.push(tag["id"].clone());
    ids
}

fn tag_slugs(obj: &Value) -> Vec<String> {
    obj["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap().to_string())
        .collect()
}

fn hardware() -> BTreeMap<String, NodeHardware> {
    let nic = |name: &str, mac: &str, kind: LinkKind, speed: Option<i64>| NicFacts {
        link: LinkInfo {
            name: name.into(),
            mac: Some(mac.into()),
            kind,
            state: Some("UP".into()),
            ..Default::default()
        },
        ethtool: speed.map(|s| EthtoolInfo {
            speed_mbps: Some(s),
            duplex: Some("full".into()),
            link_detected: Some(true),
            port: Some("Twisted Pair".into()),
            ..Default::default()
        }),
    };
    let hw = NodeHardware {
        system: Some(SystemInfo {
            manufacturer: Some("Dell Inc.".into()),
            product_name: Some("PowerEdge R640".into()),
            serial_number: Some("2RJF153".into()),
            ..Default::default()
        }),
        chassis: Some(ChassisInfo {
            manufacturer: Some("Dell Inc.".into()),
            serial_number: Some("CHS-2RJF153".into()),
            chassis_type: Some("Rack Mount Chassis".into()),
            ..Default::default()
        }),
        nics: vec![
            nic("eno1", "3C:EC:EF:10:00:01", LinkKind::Physical, Some(1000)),
            nic("vmbr0", "3C:EC:EF:10:00:01", LinkKind::Bridge, None),
        ],
    };
    BTreeMap::from([("pve1".to_string(), hw)])
}

#[tokio::test]
async fn each_request_to_netbox_is_timed_by_operation_and_outcome() {
    let env = HarnessEnv::load();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxmox_netbox_operator::metrics::Metrics::new(&mut registry);
    let nb = netbox(&env).with_recorder(metrics.netbox.recorder("infra/lab"));
    nb.list("dcim/sites", &[]).await.unwrap();
    // Refused by NetBox's validation: nothing is written.
    nb.create("dcim/sites", vec![json!({})]).await.unwrap_err();
    let text = proxmox_netbox_operator::metrics::render(&registry);
    for line in [
        r#"proxmox_netbox_netbox_request_duration_seconds_count{cluster="infra/lab",operation="list",outcome="success"} 1"#,
        r#"proxmox_netbox_netbox_request_duration_seconds_count{cluster="infra/lab",operation="create",outcome="NetBoxRejected"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains(&env.netbox_url) && !text.contains(&env.netbox_token),
        "{text}"
    );
}

#[tokio::test]
async fn full_sync_maps_every_kind_then_resync_writes_nothing() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("full");
    let hw = hardware();

    let first = run_at(&nb, &s, &inv, &hw, false, Utc::now()).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(first.collisions.is_empty());
    assert_eq!(
        first.kinds["virtualization.virtualmachine"].created, 10,
        "6 VMs + 4 containers, templates skipped"
    );

    let cid = rest.cluster_id(&s).await;
    // Nodes -> devices with hardware facts.
    let pve1 = rest
        .one(&format!("dcim/devices/?cluster_id={cid}&name=pve1"))
        .await;
    assert_eq!(pve1["serial"], "2RJF153");
    assert_eq!(pve1["device_type"]["model"], "PowerEdge R640");
    assert_eq!(pve1["role"]["name"], "Proxmox Node");
    assert_eq!(
        pve1["custom_fields"]["hardware_chassis_serial"],
        "CHS-2RJF153"
    );
    assert_eq!(pve1["custom_fields"]["proxmox_owner"], s.owner.as_str());
    assert_eq!(
        pve1["primary_ip4"]["address"], "10.10.0.11/24",
        "the interface with the gateway"
    );
    assert!(tag_slugs(&pve1).contains(&"proxmox-netbox-operator".to_string()));
    assert!(
        tag_slugs(&pve1).contains(&"proxmox".to_string()),
        "extra tags from the spec"
    );
    let dev = pve1["id"].as_u64().unwrap();
    let ifaces = rest
        .list(&format!("dcim/interfaces/?device_id={dev}"))
        .await;
    let by_name = |n: &str| {
        ifaces
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("interface {n}"))
            .clone()
    };
    assert_eq!(by_name("bond0")["type"]["value"], "lag");
    assert_eq!(by_name("eno1")["lag"]["id"], by_name("bond0")["id"]);
    assert_eq!(
        by_name("eno1")["type"]["value"],
        "1000base-t",
        "from ethtool"
    );
    assert_eq!(by_name("eno1")["speed"], 1_000_000);
    assert_eq!(by_name("eno1")["custom_fields"]["nic_speed_gbps"], 1);
    assert_eq!(by_name("eno1")["custom_fields"]["nic_link"], true);
    assert_eq!(
        by_name("eno1")["primary_mac_address"]["mac_address"],
        "3C:EC:EF:10:00:01"
    );
    assert_eq!(by_name("bond0")["bridge"]["id"], by_name("vmbr0")["id"]);
    assert_eq!(by_name("vmbr0")["type"]["value"], "bridge");
    assert_eq!(
        by_name("vmbr0")["mode"]["value"],
        "tagged-all",
        "a VLAN-aware bridge"
    );
    assert!(by_name("eno1")["mode"].is_null());
    assert_eq!(by_name("vmbr0.50")["type"]["value"], "virtual");
    assert_eq!(by_name("vmbr0.50")["parent"]["id"], by_name("vmbr0")["id"]);
    assert_eq!(by_name("enp65s0f0")["mtu"], 9000);
    assert_eq!(by_name("enp65s0f0")["description"], "storage network");

    // Guests -> VMs.
    let web = rest.vm(cid, 100).await;
    assert_eq!(web["name"], "web01");
    assert_eq!(web["status"]["value"], "active");
    assert_eq!(web["device"]["id"].as_u64(), Some(dev));
    assert_eq!(web["role"]["name"], "Virtual Machine");
    assert_eq!(web["platform"]["name"], "Linux");
    let vcpus = web["vcpus"]
        .as_f64()
        .or_else(|| web["vcpus"].as_str().and_then(|v| v.parse().ok()));
    assert_eq!(vcpus, Some(2.0));
    assert_eq!(web["memory"], 4096);
    assert_eq!(web["disk"], 32768, "sum of its virtual disks, MiB");
    assert_eq!(web["description"], "Public web frontend");
    assert_eq!(web["custom_fields"]["proxmox_guest_type"], "qemu");
    assert_eq!(web["primary_ip4"]["address"], "10.100.0.10/24");
    assert_eq!(web["primary_ip6"]["address"], "2001:db8:100::10/64");
    let tags = tag_slugs(&web);
    assert!(
        tags.contains(&"pve-prod".to_string()) && tags.contains(&"pve-web".to_string()),
        "{tags:?}"
    );
    let wid = web["id"].as_u64().unwrap();
    let net0 = rest
        .one(&format!(
            "virtualization/interfaces/?virtual_machine_id={wid}&name=net0"
        ))
        .await;
    assert_eq!(
        net0["primary_mac_address"]["mac_address"],
        "BC:24:11:A0:00:64"
    );
    assert_eq!(net0["enabled"], true);
    let disk = rest
        .one(&format!(
            "virtualization/virtual-disks/?virtual_machine_id={wid}&name=scsi0"
        ))
        .await;
    assert_eq!(disk["size"], 32768);
    assert_eq!(disk["custom_fields"]["proxmox_disk_storage"], "ceph-vm");
    let ips = rest
        .list(&format!("ipam/ip-addresses/?vminterface_id={}", net0["id"]))
        .await;
    assert_eq!(ips.len(), 2);
    // link_down=1 -> disabled interface.
    let app = rest.vm(cid, 103).await;
    assert_eq!(app["status"]["value"], "offline");
    let app_net0 = rest.vm_interface(&app, "net0").await;
    assert_eq!(app_net0["enabled"], false);
    // Same name twice: deterministic suffix on the higher vmid.
    let k8s = rest.vm(cid, 105).await;
    assert_eq!(k8s["name"], "k8s-node-1 (105)");
    // LXC with a mount point.
    let proxy = rest.vm(cid, 201).await;
    assert_eq!(proxy["role"]["name"], "Container");
    let mp = rest
        .one(&format!(
            "virtualization/virtual-disks/?virtual_machine_id={}&name=mp0",
            proxy["id"]
        ))
        .await;
    assert_eq!(mp["size"], 16384);
    // Templates skipped by default.
    assert!(
        rest.list(&format!(
            "virtualization/virtual-machines/?cluster_id={cid}&cf_proxmox_vmid=9000"
        ))
        .await
        .is_empty()
    );

    // Second sync: no write request, no change-log row.
    let changes = rest.changes().await;
    let second = run_at(&nb, &s, &inv, &hw, false, Utc::now()).await;
    assert_eq!(
        second.write_requests,
        0,
        "{}",
        serde_json::to_string_pretty(&second.plan).unwrap()
    );
    assert!(
        second
            .kinds
            .values()
            .all(|k| k.created == 0 && k.updated == 0 && k.deleted == 0)
    );
    assert_eq!(
        rest.changes().await,
        changes,
        "a no-op resync wrote ObjectChange rows"
    );

    // A managed field changed by hand is put back; a human tag on the object stays.
    let human = rest.write(reqwest::Method::POST, "extras/tags/", json!({"name": format!("human-{}", s.cluster_name), "slug": format!("human-{}", s.cluster_name)})).await;
    rest.write(
        reqwest::Method::PATCH,
        &format!("virtualization/virtual-machines/{wid}/"),
        json!({"memory": 1, "tags": tags_with(&web, &human)}),
    )
    .await;
    let third = run_at(&nb, &s, &inv, &hw, false, Utc::now()).await;
    assert_eq!(third.kinds["virtualization.virtualmachine"].updated, 1);
    let fix = third
        .plan
        .iter()
        .find(|p| p.kind == "virtualization.virtualmachine" && p.action == "update")
        .unwrap();
    assert_eq!(
        fix.fields,
        vec!["memory".to_string()],
        "only the drifted field is sent"
    );
    let web_after = rest
        .get(&format!("virtualization/virtual-machines/{wid}/"))
        .await;
    assert_eq!(web_after["memory"], 4096);
    assert!(tag_slugs(&web_after).contains(&format!("human-{}", s.cluster_name)));
}

#[tokio::test]
async fn dry_run_plans_everything_and_writes_nothing() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("dryrun");
    let changes = rest.changes().await;
    let r = run(&nb, &s, &inv, true).await;
    assert!(r.dry_run);
    assert_eq!(r.write_requests, 0);
    assert_eq!(rest.changes().await, changes);
    assert_eq!(r.kinds["virtualization.virtualmachine"].created, 10);
    assert!(
        r.plan
            .iter()
            .any(|p| p.action == "create" && p.object == "vm 100 (web01)")
    );
    assert!(
        rest.list(&format!("virtualization/clusters/?name={}", s.cluster_name))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn unowned_device_with_a_node_name_is_left_alone_unless_adoption_is_allowed() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("collide");
    // A node documented by hand before the operator came.
    let site = rest
        .write(
            reqwest::Method::POST,
            "dcim/sites/",
            json!({"name": s.site, "slug": s.site}),
        )
        .await;
    let mfr = rest
        .write(
            reqwest::Method::POST,
            "dcim/manufacturers/",
            json!({"name": format!("m-{}", s.site), "slug": format!("m-{}", s.site)}),
        )
        .await;
    let dt = rest.write(reqwest::Method::POST, "dcim/device-types/", json!({"manufacturer": mfr["id"], "model": format!("t-{}", s.site), "slug": format!("t-{}", s.site)})).await;
    let role = rest.write(reqwest::Method::POST, "dcim/device-roles/", json!({"name": format!("r-{}", s.site), "slug": format!("r-{}", s.site), "color": "ff0000"})).await;
    let manual = rest
        .write(reqwest::Method::POST, "dcim/devices/", json!({"name": "pve2", "site": site["id"], "device_type": dt["id"], "role": role["id"], "serial": "HAND-WRITTEN", "comments": "documented by hand"}))
        .await;
    let r = run(&nb, &s, &inv, false).await;
    assert_eq!(r.collisions.len(), 1, "{:?}", r.collisions);
    assert_eq!(r.collisions[0].existing_id, manual["id"].as_u64());
    assert!(r.collisions[0].message.contains("adoptExisting"));
    let untouched = rest.get(&format!("dcim/devices/{}/", manual["id"])).await;
    assert_eq!(untouched["serial"], "HAND-WRITTEN");
    assert_eq!(
        untouched["last_updated"], manual["last_updated"],
        "not written at all"
    );
    assert!(untouched["custom_fields"]["proxmox_owner"].is_null());
    // The other nodes are synced.
    assert_eq!(r.kinds["dcim.device"].created, 2);

    let mut adopt = s.clone();
    adopt.adopt_existing = true;
    let r = run(&nb, &adopt, &inv, false).await;
    assert!(r.collisions.is_empty());
    assert!(
        r.plan
            .iter()
            .any(|p| p.action == "adopt" && p.object == "node pve2")
    );
    let adopted = rest.get(&format!("dcim/devices/{}/", manual["id"])).await;
    assert_eq!(adopted["custom_fields"]["proxmox_owner"], s.owner.as_str());
    assert_eq!(
        adopted["comments"], "documented by hand",
        "fields the operator does not manage are kept"
    );
}

#[tokio::test]
async fn deleted_guest_is_kept_then_marked_stale_then_deleted_after_the_grace_period() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("prune");
    let t0 = Utc::now();
    run_at(&nb, &s, &inv, &BTreeMap::new(), false, t0).await;
    let cid = rest.cluster_id(&s).await;
    let vm103 = format!("virtualization/virtual-machines/?cluster_id={cid}&cf_proxmox_vmid=103");

    let mut gone = inv.clone();
    gone.guests.retain(|g| g.vmid != 103);

    // Pruning off (the default): kept as it is, reported as orphaned.
    let r = run_at(&nb, &s, &gone, &BTreeMap::new(), false, t0).await;
    assert_eq!(r.kinds["virtualization.virtualmachine"].orphaned, 1);
    assert_eq!(rest.one(&vm103).await["status"]["value"], "offline");
    assert!(!tag_slugs(&rest.one(&vm103).await).contains(&"proxmox-stale".to_string()));

    // A failed read of one node's guests: nothing is pruned even with pruning on.
    s.prune = true;
    let mut partial = gone.clone();
    partial
        .completeness
        .parts
        .retain(|p| p.scope != ReadScope::NodeGuests("pve2".into()));
    partial.completeness.record(
        ReadScope::NodeGuests("pve2".into()),
        ReadOutcome::Failed {
            reason: ReadFailure::NodeOffline,
            message: "node pve2 is offline".into(),
        },
    );
    partial.guests.retain(|g| g.node != "pve2");
    let r = run_at(&nb, &s, &partial, &BTreeMap::new(), false, t0).await;
    assert_eq!(r.kinds["virtualization.virtualmachine"].stale, 0);
    assert_eq!(r.kinds["virtualization.virtualmachine"].deleted, 0);
    assert!(!tag_slugs(&rest.one(&vm103).await).contains(&"proxmox-stale".to_string()));

    // A complete read without vm 103: marked stale, not deleted.
    let r = run_at(&nb, &s, &gone, &BTreeMap::new(), false, t0).await;
    assert_eq!(r.kinds["virtualization.virtualmachine"].stale, 1);
    let stale = rest.one(&vm103).await;
    assert!(tag_slugs(&stale).contains(&"proxmox-stale".to_string()));
    assert!(stale["custom_fields"]["proxmox_stale_since"].is_string());

    // Within the grace period: still there.
    let r = run_at(
        &nb,
        &s,
        &gone,
        &BTreeMap::new(),
        false,
        t0 + chrono::TimeDelta::minutes(30),
    )
    .await;
    assert_eq!(r.kinds["virtualization.virtualmachine"].deleted, 0);
    assert_eq!(
        r.write_requests, 0,
        "waiting out the grace period writes nothing"
    );

    // After it: deleted.
    let r = run_at(
        &nb,
        &s,
        &gone,
        &BTreeMap::new(),
        false,
        t0 + chrono::TimeDelta::hours(2),
    )
    .await;
    assert_eq!(r.kinds["virtualization.virtualmachine"].deleted, 1);
    assert!(rest.list(&vm103).await.is_empty());
}

#[tokio::test]
async fn a_targeted_pass_reads_plans_and_writes_only_its_guests() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("scope");
    s.prune = true;
    s.grace_period = Duration::ZERO;
    let full = run(&nb, &s, &inv, false).await;
    let cid = rest.cluster_id(&s).await;
    let before = vms_by_vmid(&rest, &s).await;
    let interfaces = format!("virtualization/interfaces/?cluster_id={cid}");
    let interfaces_before = rest.list(&interfaces).await.len();
    let of_101 = rest
        .list(&format!(
            "{interfaces}&virtual_machine_id={}",
            before["101"].0
        ))
        .await
        .len();

    // In Proxmox 103's memory changed, 101 and 100 were destroyed; the poll saw 103 and 101.
    let mut now = inv.clone();
    now.guests
        .iter_mut()
        .find(|g| g.vmid == 103)
        .unwrap()
        .memory_mib = Some(12288);
    now.guests.retain(|g| g.vmid != 101 && g.vmid != 100);
    let scoped = SyncSettings {
        scope: Some([101, 103].into()),
        ..s.clone()
    };
    let r = run(&nb, &scoped, &now, false).await;
    eprintln!(
        "full sync {} reads; targeted pass {} reads, {} writes",
        full.read_requests, r.read_requests, r.write_requests
    );
    let vms = &r.kinds["virtualization.virtualmachine"];
    assert_eq!((vms.updated, vms.deleted, vms.created), (1, 1, 0), "{r:?}");
    // One PATCH of 103, one DELETE of 101 (NetBox deletes its children with it).
    assert_eq!(r.write_requests, 2, "{r:?}");
    assert!(r.read_requests < full.read_requests, "{r:?}");
    let after = vms_by_vmid(&rest, &s).await;
    assert!(!after.contains_key("101"));
    // 100 is gone too, but it was not in the pass's scope: left for a full sync.
    assert_eq!(after["100"], before["100"]);
    assert_eq!(after.len(), before.len() - 1);
    let vm103 = rest
        .one(&format!(
            "virtualization/virtual-machines/?cluster_id={cid}&cf_proxmox_vmid=103"
        ))
        .await;
    assert_eq!(vm103["memory"], 12288);
    assert_eq!(
        rest.list(&interfaces).await.len(),
        interfaces_before - of_101,
        "only 101's interfaces went"
    );

    // A poll after a full sync that already wrote a change (one made while that sync
    // read Proxmox) finds it again: its targeted pass writes nothing twice.
    let r = run(&nb, &scoped, &now, false).await;
    assert_eq!(r.write_requests, 0, "{r:?}");

    // The full sync after it has only 100 left to do.
    let r = run(&nb, &s, &now, false).await;
    let vms = &r.kinds["virtualization.virtualmachine"];
    assert_eq!((vms.updated, vms.deleted, vms.created), (0, 1, 0), "{r:?}");
    assert_eq!(r.write_requests, 1, "{r:?}");
}

#[tokio::test]
async fn one_object_netbox_rejects_fails_alone() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let mut inv = demo_inventory(&env).await;
    // A disk larger than NetBox's size field allows (2^31 - 1 MB).
    let db = inv.guests.iter_mut().find(|g| g.vmid == 101).unwrap();
    db.disks[0].size_bytes = Some(1 << 62);
    let nb = netbox(&env);
    let s = settings("reject");
    let r = run(&nb, &s, &inv, false).await;
    assert_eq!(
        r.kinds["virtualization.virtualdisk"].failed, 1,
        "{:?}",
        r.errors
    );
    let err = &r.errors[0];
    assert_eq!(err.kind, "virtualization.virtualdisk");
    assert_eq!(err.object, "vm 101 disk scsi0");
    assert!(
        err.message.contains("size"),
        "NetBox's message: {}",
        err.message
    );
    // Every other disk made it, in the same batch as the bad one.
    assert_eq!(r.kinds["virtualization.virtualdisk"].created, 14);
    assert_eq!(r.summary().failed, 1);
}

/// Sets the outcome of one part of the read.
fn mark(inv: &mut Inventory, scope: ReadScope, outcome: ReadOutcome) {
    inv.completeness.parts.retain(|p| p.scope != scope);
    inv.completeness.record(scope, outcome);
}

fn failure(message: &str) -> ReadOutcome {
    ReadOutcome::Failed {
        reason: ReadFailure::Forbidden,
        message: message.into(),
    }
}

#[tokio::test]
async fn parts_that_could_not_be_read_change_nothing_in_netbox() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("unknown");
    s.prune = true;
    s.hardware_discovery = true;
    let hw = hardware();
    let t0 = Utc::now();
    let first = run_at(&nb, &s, &inv, &hw, false, t0).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let cid = rest.cluster_id(&s).await;
    let vm = |vmid: u32| {
        format!("virtualization/virtual-machines/?cluster_id={cid}&cf_proxmox_vmid={vmid}")
    };
    let web_before = rest.one(&vm(100)).await;
    let db_before = rest.one(&vm(101)).await;
    let pve1_before = rest
        .one(&format!("dcim/devices/?cluster_id={cid}&name=pve1"))
        .await;
    let pve2_before = rest
        .one(&format!("dcim/devices/?cluster_id={cid}&name=pve2"))
        .await;
    let pve2_ips = format!("ipam/ip-addresses/?device_id={}", pve2_before["id"]);
    let pve2_ip_count = rest.list(&pve2_ips).await.len();
    assert!(pve2_ip_count > 0);

    // The same cluster read with holes, the way the reader leaves them:
    let mut holes = inv.clone();
    // pve1's hardware discovery failed (no facts),
    let no_facts = BTreeMap::new();
    // pve2's network answered 403,
    holes
        .nodes
        .iter_mut()
        .find(|n| n.name == "pve2")
        .unwrap()
        .interfaces
        .clear();
    mark(
        &mut holes,
        ReadScope::NodeNetwork("pve2".into()),
        failure("403"),
    );
    // db01's config could not be read (only the guest list's fields are known),
    let db = holes.guests.iter_mut().find(|g| g.vmid == 101).unwrap();
    db.vcpus = None;
    db.memory_mib = None;
    db.os_type = None;
    db.description = None;
    db.disks.clear();
    db.nics.clear();
    db.addresses.clear();
    mark(&mut holes, ReadScope::GuestConfig(101), failure("500"));
    mark(
        &mut holes,
        ReadScope::GuestAddresses(101),
        ReadOutcome::NotApplicable {
            reason: ReadFailure::AgentDisabled,
            message: "config unknown".into(),
        },
    );
    // and web01's guest agent stopped answering (its agent-reported addresses are unknown).
    let web = holes.guests.iter_mut().find(|g| g.vmid == 100).unwrap();
    web.addresses
        .retain(|a| a.source != proxmox_netbox_operator::inventory::AddressSource::Agent);
    mark(
        &mut holes,
        ReadScope::GuestAddresses(100),
        ReadOutcome::NotApplicable {
            reason: ReadFailure::AgentNotRunning,
            message: "agent not running".into(),
        },
    );

    let changes = rest.changes().await;
    let r = run_at(&nb, &s, &holes, &no_facts, false, t0).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.write_requests,
        0,
        "unknown is not empty: nothing is cleared, reset or pruned: {}",
        serde_json::to_string_pretty(&r.plan).unwrap()
    );
    assert_eq!(rest.changes().await, changes);
    assert!(r.kinds.values().all(|k| k.deleted == 0 && k.stale == 0));
    assert_eq!(rest.list(&pve2_ips).await.len(), pve2_ip_count);
    let db_after = rest.one(&vm(101)).await;
    for field in [
        "vcpus",
        "memory",
        "disk",
        "platform",
        "description",
        "primary_ip4",
    ] {
        assert_eq!(db_after[field], db_before[field], "db01 {field}");
    }
    assert_eq!(
        rest.one(&vm(100)).await["primary_ip4"],
        web_before["primary_ip4"]
    );
    let pve1_after = rest
        .one(&format!("dcim/devices/?cluster_id={cid}&name=pve1"))
        .await;
    assert_eq!(pve1_after["device_type"], pve1_before["device_type"]);
    assert_eq!(pve1_after["serial"], pve1_before["serial"]);
    let eno1 = rest
        .one(&format!(
            "dcim/interfaces/?device_id={}&name=eno1",
            pve1_after["id"]
        ))
        .await;
    assert_eq!(eno1["type"]["value"], "1000base-t");
    assert_eq!(
        eno1["primary_mac_address"]["mac_address"],
        "3C:EC:EF:10:00:01"
    );

    // With everything readable again, still nothing to write: nothing was lost.
    let r = run_at(&nb, &s, &inv, &hw, false, t0).await;
    assert_eq!(r.write_requests, 0, "{:?}", r.plan);
}

#[tokio::test]
async fn kinds_taken_out_of_the_sync_and_human_tags_are_never_pruned() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("kinds");
    s.prune = true;
    let t0 = Utc::now();
    run_at(&nb, &s, &inv, &BTreeMap::new(), false, t0).await;
    let cid = rest.cluster_id(&s).await;
    let web = rest.vm(cid, 100).await;
    let disks = format!(
        "virtualization/virtual-disks/?virtual_machine_id={}",
        web["id"]
    );
    let disk_count = rest.list(&disks).await.len();
    assert!(disk_count > 0);
    // A human tag whose slug looks like one of the operator's Proxmox tags.
    let slug = format!("pve-human-{}", s.cluster_name);
    let human = rest
        .write(
            reqwest::Method::POST,
            "extras/tags/",
            json!({"name": slug, "slug": slug}),
        )
        .await;
    rest.write(
        reqwest::Method::PATCH,
        &format!("virtualization/virtual-machines/{}/", web["id"]),
        json!({"tags": tags_with(&web, &human)}),
    )
    .await;

    // Disks, nodes and IPs taken out of sync.kinds, pruning on, a complete read.
    let mut fewer = s.clone();
    fewer.virtual_disks = false;
    fewer.nodes = false;
    fewer.node_interfaces = false;
    fewer.ip_addresses = false;
    let r = run_at(&nb, &fewer, &inv, &BTreeMap::new(), false, t0).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(
        r.kinds.values().all(|k| k.deleted == 0 && k.stale == 0),
        "{:?}",
        r.kinds
    );
    assert_eq!(rest.list(&disks).await.len(), disk_count);
    assert_eq!(
        rest.list(&format!("dcim/devices/?cluster_id={cid}"))
            .await
            .len(),
        3
    );
    let web_after = rest
        .get(&format!("virtualization/virtual-machines/{}/", web["id"]))
        .await;
    assert!(
        tag_slugs(&web_after).contains(&slug),
        "{:?}",
        tag_slugs(&web_after)
    );
    assert!(
        !tag_slugs(&web_after).contains(&"proxmox-stale".to_string()),
        "nodes not synced is not nodes deleted"
    );
}

#[tokio::test]
async fn a_deleted_owner_field_is_recreated_and_owned_objects_are_taken_back() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("recover");
    let first = run(&nb, &s, &inv, false).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let cid = rest.cluster_id(&s).await;
    let before = rest.vm(cid, 100).await;
    // VMs carry the owner custom field, not the owner tag.
    assert!(!tag_slugs(&before).contains(&"proxmox-netbox-operator".to_string()));
    // A hand-made VM in the cluster for a vmid Proxmox does not run.
    let hand_made = rest
        .write(
            reqwest::Method::POST,
            "virtualization/virtual-machines/",
            json!({"name": "hand-made", "cluster": cid, "custom_fields": {"proxmox_vmid": 999999}}),
        )
        .await;

    // Someone deletes the custom field (NetBox drops its values from every object).
    let cf = rest.one("extras/custom-fields/?name=proxmox_owner").await;
    let r = rest
        .http
        .delete(format!(
            "{}/api/extras/custom-fields/{}/",
            rest.url, cf["id"]
        ))
        .bearer_auth(&rest.token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // With many objects NetBox purges the field's data in a background job first.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !rest
        .list("extras/custom-fields/?name=proxmox_owner")
        .await
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "custom field not purged"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let r = run(&nb, &s, &inv, false).await;
    assert!(r.errors.is_empty(), "no duplicate creates: {:?}", r.errors);
    assert!(r.collisions.is_empty(), "{:?}", r.collisions);
    assert!(
        r.kinds
            .iter()
            .all(|(kind, k)| k.created == 0 || kind == "extras.customfield"),
        "{:?}",
        r.kinds
    );
    let after = rest.vm(cid, 100).await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["custom_fields"]["proxmox_owner"], s.owner.as_str());
    // The hand-made VM was not taken: unmarked, still there.
    let hand_made = rest
        .get(&format!(
            "virtualization/virtual-machines/{}/",
            hand_made["id"]
        ))
        .await;
    assert!(hand_made["custom_fields"]["proxmox_owner"].is_null());
    let cf = rest.one("extras/custom-fields/?name=proxmox_owner").await;
    assert_eq!(cf["group_name"], "Proxmox");
    // And the sync after that is a no-op again, the hand-made VM still left alone.
    assert_eq!(run(&nb, &s, &inv, false).await.write_requests, 0);
    rest.get(&format!(
        "virtualization/virtual-machines/{}/",
        hand_made["id"]
    ))
    .await;
}

#[tokio::test]
async fn a_mac_left_by_an_interrupted_interface_create_is_used_and_earlier_tags_stay() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("macfirst");
    let first = run(&nb, &s, &inv, false).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    // Guest interfaces got their primary MAC in their create: none was patched.
    assert_eq!(first.kinds["virtualization.vminterface"].updated, 0);
    let cid = rest.cluster_id(&s).await;
    let web = rest.vm(cid, 100).await;
    let net0 = rest.vm_interface(&web, "net0").await;
    let mac = net0["primary_mac_address"]["mac_address"]
        .as_str()
        .unwrap()
        .to_string();
    // Children carry the owner custom field, not the owner tag.
    assert!(!tag_slugs(&net0).contains(&"proxmox-netbox-operator".to_string()));
    assert_eq!(net0["custom_fields"]["proxmox_owner"], s.owner.as_str());

    // The sync stopped after a MAC's create, before its interface's: the interface is
    // gone (its MAC with it) and an owned unassigned MAC of that value is left, with a
    // second one nothing wants.
    let r = rest
        .http
        .delete(format!(
            "{}/api/virtualization/interfaces/{}/",
            rest.url, net0["id"]
        ))
        .bearer_auth(&rest.token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let owned_mac =
        |value: &str| json!({"mac_address": value, "custom_fields": {"proxmox_owner": s.owner}});
    let left = rest
        .write(
            reqwest::Method::POST,
            "dcim/mac-addresses/",
            owned_mac(&mac),
        )
        .await;
    let stray = rest
        .write(
            reqwest::Method::POST,
            "dcim/mac-addresses/",
            owned_mac("02:00:5E:00:00:99"),
        )
        .await;
    // An earlier version tagged every child with the owner tag: it stays, unwritten.
    let disk = rest
        .one(&format!(
            "virtualization/virtual-disks/?virtual_machine_id={}&name=scsi0",
            web["id"]
        ))
        .await;
    let owner_tag = rest.one("extras/tags/?slug=proxmox-netbox-operator").await;
    rest.write(
        reqwest::Method::PATCH,
        &format!("virtualization/virtual-disks/{}/", disk["id"]),
        json!({"tags": tags_with(&disk, &owner_tag)}),
    )
    .await;

    let second = run(&nb, &s, &inv, false).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.kinds["virtualization.vminterface"].created, 1);
    assert_eq!(
        second.kinds["dcim.macaddress"].created, 0,
        "the left MAC is used"
    );
    assert_eq!(
        second.kinds["dcim.macaddress"].deleted, 1,
        "the stray one goes"
    );
    let net0 = rest.vm_interface(&web, "net0").await;
    assert_eq!(net0["primary_mac_address"]["id"], left["id"]);
    let same_value = rest
        .list(&format!(
            "dcim/mac-addresses/?mac_address={mac}&cf_proxmox_owner={}",
            s.owner
        ))
        .await;
    assert_eq!(same_value.len(), 1, "{same_value:?}");
    assert_eq!(same_value[0]["assigned_object_id"], net0["id"]);
    assert!(
        rest.list(&format!("dcim/mac-addresses/?id={}", stray["id"]))
            .await
            .is_empty()
    );
    let third = run(&nb, &s, &inv, false).await;
    assert_eq!(third.write_requests, 0, "{:?}", third.plan);
    let disk = rest
        .get(&format!("virtualization/virtual-disks/{}/", disk["id"]))
        .await;
    assert!(tag_slugs(&disk).contains(&"proxmox-netbox-operator".to_string()));
}

/// A proxy in front of NetBox that passes every request on, but answers the first bulk
/// create of VMs with 502 after NetBox did it (a gateway that lost the answer).
async fn lossy_proxy(netbox_url: String) -> String {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, Response, StatusCode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let lost = Arc::new(AtomicBool::new(false));
    let http = checking_http_client();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (http, lost, netbox_url) = (http.clone(), lost.clone(), netbox_url.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, 64 << 20).await.unwrap();
            let url = format!("{netbox_url}{}", parts.uri);
            let mut fwd = http.request(parts.method.clone(), url).body(body);
            for (k, v) in &parts.headers {
                if k != "host" {
                    fwd = fwd.header(k, v);
                }
            }
            let answer = fwd.send().await.unwrap();
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap();
            let vm_create = parts.method == reqwest::Method::POST
                && parts.uri.path() == "/api/virtualization/virtual-machines/";
            if vm_create && status.is_success() && !lost.swap(true, Ordering::SeqCst) {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from("upstream timed out"))
                    .unwrap();
            }
            Response::builder()
                .status(status.as_u16())
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_found_not_repeated() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let rest = Rest::new(&env);
    let nb = NetBoxClient::new(NetBoxConnection {
        url: lossy_proxy(env.netbox_url.clone()).await,
        token: SecretString::new(env.netbox_token.clone()),
        tls: TlsSettings::default(),
        timeout: Duration::from_secs(120),
        max_in_flight: 4,
        retries: 2,
        // The harness's NetBox is plain http on loopback.
        allow_insecure_http: true,
        endpoint_guard: loopback_allowed(),
    })
    .unwrap();
    let s = settings("lost");
    let r = run(&nb, &s, &inv, false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.kinds["virtualization.virtualmachine"].created, 10);
    let cid = rest.cluster_id(&s).await;
    let vms = rest
        .list(&format!(
            "virtualization/virtual-machines/?cluster_id={cid}"
        ))
        .await;
    assert_eq!(vms.len(), 10, "no VM created twice");
    // Everything else was written on top of the VMs found again.
    assert!(r.kinds["virtualization.vminterface"].created > 0);
    assert_eq!(run(&nb, &s, &inv, false).await.write_requests, 0);
}

#[tokio::test]
async fn a_vm_disk_total_left_wrong_by_a_concurrent_writer_is_put_back() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let s = settings("disktotal");
    assert!(run(&nb, &s, &inv, false).await.errors.is_empty());
    let cid = rest.cluster_id(&s).await;
    let db = rest.vm(cid, 101).await;
    let total = db["disk"].as_u64().unwrap();
    // What two clients writing disks of one VM at once leave behind: a total that is not
    // the sum of the disks. NetBox's API refuses to store that, so write the row directly.
    let out = std::process::Command::new(format!("{}/bin/netbox", env.get("NETBOX_VENV").unwrap()))
        .env("NETBOX_ROOT", env.get("NETBOX_ROOT").unwrap())
        .args([
            "shell",
            "-c",
            &format!(
                "from virtualization.models import VirtualMachine; VirtualMachine.objects.filter(pk={}).update(disk=1)",
                db["id"]
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = run(&nb, &s, &inv, false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fix = r
        .plan
        .iter()
        .find(|p| p.kind == "virtualization.virtualmachine" && p.action == "update")
        .expect("the VM is updated");
    assert_eq!(fix.fields, vec!["disk".to_string()]);
    let after = rest
        .get(&format!("virtualization/virtual-machines/{}/", db["id"]))
        .await;
    assert_eq!(after["disk"].as_u64(), Some(total));
    assert_eq!(run(&nb, &s, &inv, false).await.write_requests, 0);
}

#[tokio::test]
async fn missing_vlans_are_created_by_policy_and_notes_can_be_left_to_people() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("vlans");
    s.create_missing_vlans = true;
    s.description_from_notes = false;
    let r = run(&nb, &s, &inv, false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let site = rest.one(&format!("dcim/sites/?slug={}", s.site)).await;
    let vlans = rest
        .list(&format!("ipam/vlans/?site_id={}", site["id"]))
        .await;
    let mut vids: Vec<u64> = vlans.iter().map(|v| v["vid"].as_u64().unwrap()).collect();
    vids.sort_unstable();
    let mut tags: Vec<u64> = inv
        .guests
        .iter()
        .filter(|g| !g.template)
        .flat_map(|g| g.nics.iter().filter_map(|n| n.vlan_tag.map(u64::from)))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(vids, tags, "one VLAN per guest NIC tag, in the site");
    assert!(tag_slugs(&vlans[0]).contains(&"proxmox-netbox-operator".to_string()));
    let cid = rest.cluster_id(&s).await;
    let web = rest.vm(cid, 100).await;
    let net0 = rest.vm_interface(&web, "net0").await;
    assert_eq!(net0["untagged_vlan"]["vid"], 100, "net0 has tag=100");
    assert_eq!(net0["mode"]["value"], "access");
    assert_eq!(web["description"], "", "notes are not copied");
    // A description written by a person stays, and the VLANs are not created twice.
    rest.write(
        reqwest::Method::PATCH,
        &format!("virtualization/virtual-machines/{}/", web["id"]),
        json!({"description": "owned by the web team"}),
    )
    .await;
    let again = run(&nb, &s, &inv, false).await;
    assert_eq!(again.write_requests, 0, "{:?}", again.plan);
    assert_eq!(
        rest.list(&format!("ipam/vlans/?site_id={}", site["id"]))
            .await
            .len(),
        vlans.len()
    );
}

/// `inv` with the permission preflight recorded as `outcome`.
fn with_preflight(inv: &Inventory, outcome: ReadOutcome) -> Inventory {
    let mut out = inv.clone();
    out.completeness
        .parts
        .retain(|p| p.scope != ReadScope::Permissions);
    out.completeness.record(ReadScope::Permissions, outcome);
    out
}

#[tokio::test]
async fn guests_hidden_by_acls_or_vanished_en_masse_are_never_pruned() {
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = with_preflight(&demo_inventory(&env).await, ReadOutcome::Complete);
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let mut s = settings("guard");
    s.prune = true;
    s.grace_period = Duration::ZERO;
    s.prune_max_percent = 10;
    let t0 = Utc::now();
    run_at(&nb, &s, &inv, &BTreeMap::new(), false, t0).await;
    let cid = rest.cluster_id(&s).await;
    let vms = format!("virtualization/virtual-machines/?cluster_id={cid}");
    let owned = rest.list(&vms).await.len();
    assert!(owned >= 6, "{owned}");
    let mut half = inv.clone();
    half.guests.truncate(inv.guests.len() / 2);

    // PVE answered 200 with half the guests because ACLs hide the rest: the preflight says
    // so, and nothing is marked stale or deleted, grace period 0 or not.
    let hidden = with_preflight(
        &half,
        ReadOutcome::NotApplicable {
            reason: ReadFailure::Forbidden,
            message: "ACL on /pool/secret".into(),
        },
    );
    for minutes in [0, 5] {
        let r = run_at(
            &nb,
            &s,
            &hidden,
            &BTreeMap::new(),
            false,
            t0 + chrono::TimeDelta::minutes(minutes),
        )
        .await;
        let vm = &r.kinds["virtualization.virtualmachine"];
        assert_eq!((vm.stale, vm.deleted), (0, 0), "{vm:?}");
        assert!(vm.orphaned > 0);
    }
    assert_eq!(rest.list(&vms).await.len(), owned);

    // A clean preflight, but half the owned guests gone at once: more than maxPercent,
    // refused and said so.
    let r = run_at(&nb, &s, &half, &BTreeMap::new(), false, t0).await;
    let vm = &r.kinds["virtualization.virtualmachine"];
    assert_eq!((vm.stale, vm.deleted), (0, 0), "{vm:?}");
    let why = r.prune_blocked.clone().expect("the refusal is reported");
    assert!(why.contains("spec.sync.prune.maxPercent (10%)"), "{why}");
    assert_eq!(r.summary().prune_blocked, Some(why));
    assert_eq!(rest.list(&vms).await.len(), owned);
    let stale: Vec<Value> = rest
        .list(&vms)
        .await
        .into_iter()
        .filter(|v| tag_slugs(v).contains(&"proxmox-stale".to_string()))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");

    // One guest gone: within the limit, pruned as usual (at grace 0: deleted in the same
    // sync, without a stale mark first).
    let mut one_gone = inv.clone();
    let last = one_gone.guests.iter().rposition(|g| !g.template).unwrap();
    one_gone.guests.remove(last);
    let r = run_at(&nb, &s, &one_gone, &BTreeMap::new(), false, t0).await;
    assert!(r.prune_blocked.is_none());
    let vm = &r.kinds["virtualization.virtualmachine"];
    assert_eq!((vm.stale, vm.deleted), (0, 1), "{vm:?}");
    assert_eq!(rest.list(&vms).await.len(), owned - 1);
}

/// Ids and owner marks of the VMs of a NetBox cluster, by vmid.
async fn vms_by_vmid(rest: &Rest, s: &SyncSettings) -> BTreeMap<String, (u64, String)> {
    let cid = rest.cluster_id(s).await;
    rest.list(&format!(
        "virtualization/virtual-machines/?cluster_id={cid}"
    ))
    .await
    .iter()
    .map(|v| {
        (
            v["custom_fields"]["proxmox_vmid"].to_string(),
            (
                v["id"].as_u64().unwrap(),
                v["custom_fields"]["proxmox_owner"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        )
    })
    .collect()
}

#[tokio::test]
async fn same_named_resources_of_two_installations_never_touch_each_others_objects() {
    use proxmox_netbox_operator::netbox::engine::delete_owned;
    use proxmox_netbox_operator::owner::OwnerScope;
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    // Two Proxmox clusters with the same vmids, guest names and node names.
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let base = settings("owners");
    let unique = base.site.trim_start_matches("site-").to_string();
    // The same ProxmoxCluster infra/lab in two Kubernetes clusters (staging, production),
    // pointed at Proxmox clusters pve-a and pve-b; one NetBox site; prune on, grace 0.
    let prod = OwnerScope::new(&format!("prod-{unique}"), "infra", "lab");
    let staging = OwnerScope::new(&format!("staging-{unique}"), "infra", "lab");
    let with = |scope: &OwnerScope, pve: &str| {
        let mut s = base.clone();
        s.owner = scope.mark(pve);
        s.cluster_name = format!("{pve}-{unique}");
        s.prune = true;
        s.grace_period = Duration::ZERO;
        s
    };
    let a = with(&prod, "pve-a");
    let b = with(&staging, "pve-b");
    let r = run(&nb, &a, &inv, false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let a_vms = vms_by_vmid(&rest, &a).await;
    assert_eq!(
        a_vms.len(),
        inv.guests.iter().filter(|g| !g.template).count()
    );
    assert!(a_vms.values().all(|(_, mark)| *mark == a.owner));

    // B's first sync: its nodes collide with A's devices by name in the site and are
    // reported, never adopted; its VMs go to its own cluster; nothing of A changes.
    let before = rest.changes().await;
    let r = run(&nb, &b, &inv, false).await;
    assert!(
        r.collisions
            .iter()
            .all(|c| c.kind == "dcim.device" && c.message.contains(&a.owner)),
        "{:?}",
        r.collisions
    );
    assert_eq!(r.collisions.len(), inv.nodes.len());
    for kind in r.kinds.values() {
        assert_eq!((kind.deleted, kind.stale), (0, 0));
    }
    assert_eq!(vms_by_vmid(&rest, &a).await, a_vms, "A's VMs unchanged");
    let b_vms = vms_by_vmid(&rest, &b).await;
    assert_eq!(b_vms.len(), a_vms.len());
    assert!(b_vms.values().all(|(_, mark)| *mark == b.owner));
    assert!(rest.changes().await > before);

    // Resyncs of both, in turn: A writes nothing, B writes nothing, nothing is pruned.
    for s in [&a, &b, &a] {
        let r = run(&nb, s, &inv, false).await;
        assert_eq!(r.write_requests, 0, "{}: {:?}", s.owner, r.plan);
    }
    // A third owner writing to A's NetBox cluster: its VMs would take A's names; each is
    // reported, none is adopted or changed.
    let third = OwnerScope::new(&format!("third-{unique}"), "infra", "lab");
    let mut c = with(&third, "pve-c");
    c.cluster_name = a.cluster_name.clone();
    let r = run(&nb, &c, &inv, false).await;
    assert!(
        r.collisions
            .iter()
            .any(|c| c.kind == "virtualization.virtualmachine" && c.message.contains(&a.owner)),
        "{:?}",
        r.collisions
    );
    assert_eq!(vms_by_vmid(&rest, &a).await, a_vms, "A's VMs unchanged");
    delete_owned(&nb, &third).await.unwrap();

    // Deleting staging's resource removes its objects (all its marks), none of A's.
    let deleted = delete_owned(&nb, &staging).await.unwrap();
    assert!(deleted >= b_vms.len() as u64);
    assert_eq!(vms_by_vmid(&rest, &a).await, a_vms);
    assert!(vms_by_vmid(&rest, &b).await.is_empty());
    let r = run(&nb, &a, &inv, false).await;
    assert_eq!(r.write_requests, 0);
}

#[tokio::test]
async fn a_resource_takes_over_its_previous_marks_only_when_asked() {
    use proxmox_netbox_operator::owner::OwnerScope;
    let _turn = NETBOX.lock().await;
    let env = HarnessEnv::load();
    let inv = demo_inventory(&env).await;
    let nb = netbox(&env);
    let rest = Rest::new(&env);
    let base = settings("previous");
    let unique = base.site.trim_start_matches("site-").to_string();
    let scope = OwnerScope::new("inst", "team", &unique);
    // Written by a version before 0.2, with the mark `namespace/name`.
    let mut legacy = base.clone();
    legacy.owner = scope.legacy_mark();
    run(&nb, &legacy, &inv, false).await;
    let old = vms_by_vmid(&rest, &legacy).await;
    assert!(old.values().all(|(_, m)| *m == scope.legacy_mark()));

    // Upgraded, without the annotation: the old objects are someone else's.
    let mut current = base.clone();
    current.owner = scope.mark("pve-demo");
    let r = run(&nb, &current, &inv, false).await;
    assert!(!r.collisions.is_empty());
    assert!(
        r.collisions
            .iter()
            .all(|c| c.message.contains(&scope.legacy_mark())),
        "{:?}",
        r.collisions
    );
    assert_eq!(vms_by_vmid(&rest, &legacy).await, old, "left as they are");

    // With it: taken over in place (same ids), re-marked; then a resync writes nothing.
    current.adopt_previous = Some(scope.clone());
    let r = run(&nb, &current, &inv, false).await;
    assert!(r.collisions.is_empty(), "{:?}", r.collisions);
    let now = vms_by_vmid(&rest, &current).await;
    assert_eq!(
        now.iter()
            .map(|(k, (id, _))| (k.clone(), *id))
            .collect::<Vec<_>>(),
        old.iter()
            .map(|(k, (id, _))| (k.clone(), *id))
            .collect::<Vec<_>>()
    );
    assert!(now.values().all(|(_, m)| *m == current.owner));
    let r = run(&nb, &current, &inv, false).await;
    assert_eq!(r.write_requests, 0, "{:?}", r.plan);
}
