//! The sync engine against the harness's real NetBox, with inventories read from the
//! seeded fake PVE. Each test uses its own owner, site and cluster, so tests run in
//! parallel without seeing each other's objects.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::harness::{FakePve, HarnessEnv, topology};
use proxmox_netbox_operator::inventory::Inventory;
use proxmox_netbox_operator::netbox::client::{NetBoxApi, NetBoxClient, NetBoxConnection};
use proxmox_netbox_operator::netbox::engine::{SyncSettings, sync};
use proxmox_netbox_operator::netbox::report::SyncReport;
use proxmox_netbox_operator::pve::client::{PveAuth, PveClient, PveConnection};
use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};
use proxmox_netbox_operator::secret::SecretString;
use proxmox_netbox_operator::tls::{TlsSettings, install_crypto_provider};
use serde_json::Value;

async fn inventory(pve: &FakePve) -> Inventory {
    install_crypto_provider();
    let c = PveClient::new(PveConnection {
        endpoints: vec![pve.url.clone()],
        auth: PveAuth::Token {
            token_id: pve.token_id.clone(),
            secret: SecretString::new(pve.token_secret.clone()),
        },
        tls: TlsSettings {
            ca_pem: Some(std::fs::read_to_string(&pve.ca_file).unwrap()),
            insecure_skip_verify: false,
        },
        timeout: Duration::from_secs(30),
        max_concurrency: 8,
        retries: 1,
    })
    .unwrap();
    read_inventory(&c, &ReadOptions::default()).await.unwrap()
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
    })
    .unwrap()
}

/// Names unique to this test run, so reruns against the same NetBox never collide.
fn settings(test: &str) -> SyncSettings {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let test = format!("{test}-{}-{nanos:x}", std::process::id());
    let test = test.as_str();
    SyncSettings {
        owner: format!("tests/{test}"),
        site: format!("site-{test}"),
        tenant: None,
        cluster_name: format!("cluster-{test}"),
        cluster_group: None,
        cluster_type: "Proxmox VE".into(),
        device_role: "Proxmox Node".into(),
        role_qemu: "Virtual Machine".into(),
        role_lxc: "Container".into(),
        role_template: "Template".into(),
        extra_tags: vec![],
        sync_templates: false,
        nodes: true,
        node_interfaces: true,
        virtual_machines: true,
        vm_interfaces: true,
        virtual_disks: true,
        ip_addresses: true,
        adopt_existing: false,
        prune: false,
        grace_period: Duration::from_secs(3600),
        batch_size: 100,
        max_in_flight: 4,
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

async fn run(nb: &NetBoxClient, s: &SyncSettings, inv: &Inventory, dry_run: bool) -> SyncReport {
    let before = nb.request_counts();
    let mut r = sync(nb, s, inv, &BTreeMap::new(), dry_run, now())
        .await
        .unwrap();
    r.read_requests -= before.0;
    r.write_requests -= before.1;
    r
}

#[tokio::test]
async fn first_sync_creates_everything_and_second_writes_nothing() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("demo.json")]);
    let inv = inventory(&pve).await;
    let nb = netbox(&env);
    let s = settings("firstsync");
    let first = run(&nb, &s, &inv, false).await;
    eprintln!("{}", serde_json::to_string_pretty(&first.kinds).unwrap());
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let vms = &first.kinds["virtualization.virtualmachine"];
    assert_eq!(vms.created, 10, "6 VMs + 4 containers, templates skipped");
    for p in first
        .plan
        .iter()
        .filter(|p| p.kind == "ipam.ipaddress" || p.kind == "virtualization.vminterface")
    {
        eprintln!("FIRST {} {} {:?}", p.object, p.action, p.fields);
    }
    let second = run(&nb, &s, &inv, false).await;
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
            .all(|k| k.created == 0 && k.updated == 0)
    );
    let _: Value = Value::Null;
}
