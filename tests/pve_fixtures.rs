//! The inventory reader on real captured PVE responses (shared/fixtures/pve), served by an
//! in-memory implementation of the `PveApi` edge.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use serde_json::Value;

use proxmox_netbox_operator::inventory::{
    AddressSource, GuestKind, NodeInterfaceKind, ReadFailure, ReadOutcome, ReadScope,
};
use proxmox_netbox_operator::pve::client::{PveApi, PveError};
use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};

fn fixtures() -> PathBuf {
    std::env::var("PNBO_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
        .join("fixtures/pve")
}

fn load(rel: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
}

/// Answers from a path -> data map; any other path answers like PVE for a missing route.
struct FixtureApi(BTreeMap<String, Result<Value, PveError>>);

impl PveApi for FixtureApi {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
        let answer = self.0.get(path).cloned().unwrap_or_else(|| {
            Err(PveError::Status {
                path: path.into(),
                status: 501,
                message: format!("Method 'GET {path}' not implemented"),
            })
        });
        Box::pin(async move { answer })
    }
}

/// The community.proxmox capture (PVE 6.2, one node offline) with its guests.
fn community_api() -> FixtureApi {
    let c = "community-proxmox";
    let mut m = BTreeMap::new();
    m.insert(
        "/version".into(),
        Ok(serde_json::json!({"version": "6.2-4"})),
    );
    m.insert(
        "/cluster/status".into(),
        Ok(load(&format!("{c}/cluster-status.json"))),
    );
    m.insert(
        "/nodes/testnode/network".into(),
        Ok(load(&format!("{c}/node-network-ovs.json"))),
    );
    m.insert(
        "/nodes/testnode/qemu".into(),
        Ok(load(&format!("{c}/node-qemu-list.json"))),
    );
    m.insert(
        "/nodes/testnode/lxc".into(),
        Ok(load(&format!("{c}/node-lxc-list.json"))),
    );
    for id in [101, 102, 103] {
        m.insert(
            format!("/nodes/testnode/qemu/{id}/config"),
            Ok(load(&format!("{c}/qemu-{id}-config.json"))),
        );
    }
    m.insert(
        "/nodes/testnode/lxc/100/config".into(),
        Ok(load(&format!("{c}/lxc-100-config.json"))),
    );
    m.insert(
        "/nodes/testnode/qemu/101/agent/network-get-interfaces".into(),
        Ok(load(&format!(
            "{c}/qemu-101-agent-network-get-interfaces.json"
        ))),
    );
    m.insert(
        "/nodes/testnode/qemu/103/agent/network-get-interfaces".into(),
        Ok(load(&format!(
            "{c}/qemu-103-agent-network-get-interfaces.json"
        ))),
    );
    FixtureApi(m)
}

#[tokio::test]
async fn reads_the_pve6_capture_with_string_numbers_and_an_offline_node() {
    let api = community_api();
    let inv = read_inventory(&api, &ReadOptions::default()).await.unwrap();
    let status = load("community-proxmox/cluster-status.json");
    let listed: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["type"] == "node")
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(inv.nodes.len(), listed.len());
    let offline: Vec<&str> = inv
        .nodes
        .iter()
        .filter(|n| !n.online)
        .map(|n| n.name.as_str())
        .collect();
    assert!(!offline.is_empty(), "the capture has an offline node");
    for n in &offline {
        assert!(matches!(
            inv.completeness
                .outcome(&ReadScope::NodeGuests(n.to_string())),
            Some(ReadOutcome::Failed {
                reason: ReadFailure::NodeOffline,
                ..
            })
        ));
    }
    assert!(
        !inv.guest_set_complete(),
        "an offline node makes every absence uncertain"
    );

    // QEMU guests with their disks and NICs as the configs say.
    let vm101 = inv.guests.iter().find(|g| g.vmid == 101).expect("vm 101");
    assert_eq!(vm101.kind, GuestKind::Qemu);
    let cfg = load("community-proxmox/qemu-101-config.json");
    assert_eq!(vm101.name, cfg["name"].as_str().unwrap());
    assert!(
        vm101
            .disks
            .iter()
            .any(|d| d.slot == "scsi0" && d.size_bytes == Some(8 * 1024 * 1024 * 1024))
    );
    assert!(
        vm101
            .disks
            .iter()
            .all(|d| d.slot != "ide0" && d.slot != "ide2"),
        "cloud-init and cdrom are not disks: {:?}",
        vm101.disks
    );
    assert_eq!(vm101.nics[0].bridge.as_deref(), Some("vmbr0"));
    assert!(vm101.nics[0].firewall);
    // Agent addresses matched to net0 by MAC; loopback and link-local dropped.
    assert!(
        vm101
            .addresses
            .iter()
            .any(|a| a.source == AddressSource::Agent && a.nic_slot.as_deref() == Some("net0"))
    );
    assert!(
        vm101
            .addresses
            .iter()
            .all(|a| !a.cidr.starts_with("127.") && !a.cidr.starts_with("fe80"))
    );

    let vm102 = inv.guests.iter().find(|g| g.vmid == 102).unwrap();
    assert!(
        vm102
            .disks
            .iter()
            .any(|d| d.slot == "sata0" && d.size_bytes == Some(100 * 1024 * 1024 * 1024))
    );
    let vm103 = inv.guests.iter().find(|g| g.vmid == 103).unwrap();
    assert_eq!(
        vm103
            .nics
            .iter()
            .map(|n| n.slot.as_str())
            .collect::<Vec<_>>(),
        vec!["net0", "net1"]
    );
    assert!(vm103.disks.len() >= 3);

    // LXC with ip= in its config.
    let ct = inv.guests.iter().find(|g| g.vmid == 100).expect("ct 100");
    assert_eq!(ct.kind, GuestKind::Lxc);
    assert!(
        ct.addresses
            .iter()
            .any(|a| a.cidr == "10.1.1.3/24" && a.source == AddressSource::LxcConfig)
    );
    assert_eq!(ct.nics[0].guest_name.as_deref(), Some("eth0"));

    // OVS interfaces are typed.
    let node = inv.nodes.iter().find(|n| n.name == "testnode").unwrap();
    assert!(
        node.interfaces
            .iter()
            .any(|i| i.kind == NodeInterfaceKind::OvsBridge)
    );
}

#[tokio::test]
async fn reads_the_pve9_network_with_string_vlan_ids() {
    let mut m = BTreeMap::new();
    m.insert(
        "/version".into(),
        Ok(serde_json::json!({"version": "9.0.3"})),
    );
    m.insert(
        "/cluster/status".into(),
        Ok(load("go-proxmox/cluster-status.json")),
    );
    let status = load("go-proxmox/cluster-status.json");
    let nodes: Vec<String> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["type"] == "node")
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    for n in &nodes {
        m.insert(
            format!("/nodes/{n}/network"),
            Ok(load("go-proxmox/node-network.json")),
        );
        m.insert(format!("/nodes/{n}/qemu"), Ok(serde_json::json!([])));
        m.insert(format!("/nodes/{n}/lxc"), Ok(serde_json::json!([])));
    }
    m.insert(
        "/cluster/ceph/status".into(),
        Ok(load("go-proxmox/cluster-ceph-status.json")),
    );
    let inv = read_inventory(&FixtureApi(m), &ReadOptions::default())
        .await
        .unwrap();
    let node = inv.nodes.iter().find(|n| n.online).unwrap();
    let vlan = node.interfaces.iter().find(|i| i.name == "eno1.2").unwrap();
    assert_eq!(vlan.kind, NodeInterfaceKind::Vlan);
    assert_eq!(
        vlan.vlan_tag,
        Some(2),
        "\"vlan-id\": \"2\" is a string in the capture"
    );
    assert_eq!(vlan.vlan_parent.as_deref(), Some("eno1"));
    assert_eq!(vlan.cidr.as_deref(), Some("192.168.2.50/32"));
    let bridge = node.interfaces.iter().find(|i| i.name == "vmbr1").unwrap();
    assert!(bridge.bridge_vlan_aware);
    assert_eq!(bridge.bridge_ports, vec!["eno1.2", "vmbr2.10"]);
    let ceph = inv
        .ceph
        .clone()
        .expect("ceph read from the real status document");
    assert!(ceph.health.starts_with("HEALTH_"));
    assert!(ceph.osds_total > 0);
    // Missing disks/status/storage routes are recorded as failures, not silently skipped.
    assert!(
        inv.completeness
            .failures()
            .any(|p| matches!(p.scope, ReadScope::NodeDisks(_)))
    );
    // The guest set is complete exactly when every node was online and its lists were read.
    assert_eq!(inv.guest_set_complete(), inv.nodes.iter().all(|n| n.online));
}

#[tokio::test]
async fn unauthorized_cluster_status_fails_the_whole_read() {
    let mut m = BTreeMap::new();
    m.insert(
        "/version".into(),
        Err(PveError::Unauthorized {
            path: "/version".into(),
        }),
    );
    let err = read_inventory(&FixtureApi(m), &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Unauthorized { .. }));
}

#[tokio::test]
async fn forbidden_cluster_status_falls_back_to_nodes_but_marks_membership_unknown() {
    let mut m = BTreeMap::new();
    m.insert(
        "/version".into(),
        Ok(serde_json::json!({"version": "9.1.3"})),
    );
    m.insert(
        "/cluster/status".into(),
        Err(PveError::Forbidden {
            path: "/cluster/status".into(),
            message: "Permission check failed (/, Sys.Audit)".into(),
        }),
    );
    m.insert("/nodes".into(), Ok(load("go-proxmox/nodes.json")));
    let inv = read_inventory(
        &FixtureApi(m),
        &ReadOptions {
            ceph: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!inv.nodes.is_empty());
    assert!(!inv.node_set_complete());
    assert!(!inv.guest_set_complete());
}

#[tokio::test]
async fn reads_lxc_runtime_addresses_in_the_pve8_inet_form() {
    // PVE 7/8 answer /lxc/{vmid}/interfaces with `inet`/`inet6` strings, not `ip-addresses`.
    let interfaces = load("go-proxmox/lxc-interfaces.pve8.json");
    let mac = interfaces[1]["hwaddr"]
        .as_str()
        .unwrap()
        .to_ascii_uppercase();
    let mut config = load("go-proxmox/lxc-config.pve7.json");
    config["net0"] = Value::String(format!(
        "name=eth0,bridge=vmbr0,firewall=1,hwaddr={mac},ip=dhcp,type=veth"
    ));
    let mut m = BTreeMap::new();
    m.insert(
        "/version".into(),
        Ok(serde_json::json!({"version": "8.2.4"})),
    );
    m.insert(
        "/cluster/status".into(),
        Ok(serde_json::json!([
            {"type": "cluster", "name": "c", "quorate": 1, "nodes": 1},
            {"type": "node", "name": "n1", "online": 1, "ip": "10.0.0.1", "nodeid": 1}
        ])),
    );
    m.insert("/nodes/n1/network".into(), Ok(serde_json::json!([])));
    m.insert("/nodes/n1/qemu".into(), Ok(serde_json::json!([])));
    m.insert(
        "/nodes/n1/lxc".into(),
        Ok(serde_json::json!([{"vmid": "101", "name": "test-container", "status": "running"}])),
    );
    m.insert("/nodes/n1/lxc/101/config".into(), Ok(config));
    m.insert("/nodes/n1/lxc/101/interfaces".into(), Ok(interfaces));
    let inv = read_inventory(&FixtureApi(m), &ReadOptions::default())
        .await
        .unwrap();
    let guest = &inv.guests[0];
    assert_eq!(guest.kind, GuestKind::Lxc);
    let addrs: Vec<(&str, AddressSource)> = guest
        .addresses
        .iter()
        .map(|a| (a.cidr.as_str(), a.source))
        .collect();
    assert_eq!(
        addrs,
        vec![("192.168.3.95/22", AddressSource::LxcRuntime)],
        "the DHCP address from `inet`; loopback and link-local left out"
    );
    assert_eq!(guest.addresses[0].nic_slot.as_deref(), Some("net0"));
    assert_eq!(
        inv.completeness.outcome(&ReadScope::GuestAddresses(101)),
        Some(&ReadOutcome::Complete)
    );
}
