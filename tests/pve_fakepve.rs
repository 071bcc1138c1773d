//! The PVE client and reader against the harness's fake PVE (third-party `fakepve`, seeded
//! from tests/topologies): the inventory equals the seed, and every failure mode is
//! recorded, not skipped.

mod common;

use std::time::{Duration, Instant};

use common::harness::{FakePve, HarnessEnv, topology};
use proxmox_netbox_operator::inventory::{
    GuestKind, Inventory, ReadFailure, ReadOutcome, ReadScope,
};
use proxmox_netbox_operator::net::guard::EndpointGuard;
use proxmox_netbox_operator::pve::client::{PveAuth, PveClient, PveConnection, PveError};
use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};
use proxmox_netbox_operator::secrets::SecretString;
use serde_json::Value;

/// The fake PVE listens on loopback: the endpoint guard must be told to allow it.
fn loopback_allowed() -> EndpointGuard {
    EndpointGuard::new(["127.0.0.0/8".parse().unwrap()])
}

/// A connection to `pve` verified by its CA bundle: token auth, 10 s timeout, 4 requests in
/// flight, no retries, loopback allowed. Tests change what they need.
fn connection(pve: &FakePve) -> PveConnection {
    PveConnection {
        timeout: Duration::from_secs(10),
        max_concurrency: 4,
        retries: 0,
        ..common::harness::pve_connection(pve)
    }
}

/// The reading client of most tests: with or without the CA bundle, 30 s timeout, 8 in
/// flight, 2 retries.
fn client(pve: &FakePve, ca: bool) -> PveClient {
    let mut conn = connection(pve);
    if !ca {
        conn.tls.ca_pem = None;
    }
    conn.timeout = Duration::from_secs(30);
    conn.max_concurrency = 8;
    conn.retries = 2;
    PveClient::new(conn).unwrap()
}

/// A client with ticket (user and password) authentication and no retries.
fn ticket_client(pve: &FakePve) -> PveClient {
    let mut conn = connection(pve);
    conn.auth = PveAuth::Ticket {
        username: pve.username.clone(),
        password: SecretString::new(pve.password.clone()),
    };
    PveClient::new(conn).unwrap()
}

/// Compares the inventory with the seeded expectation, guest by guest.
fn assert_matches_seed(inv: &Inventory, expected: &Value) {
    let nodes: Vec<&str> = expected["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        inv.nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        nodes
    );
    for (n, e) in inv.nodes.iter().zip(expected["nodes"].as_array().unwrap()) {
        assert_eq!(n.address.as_deref(), e["ip"].as_str());
        if n.online {
            let names: Vec<&str> = n.interfaces.iter().map(|i| i.name.as_str()).collect();
            let want: Vec<&str> = e["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(names, want, "interfaces of {}", n.name);
            assert_eq!(n.disks.len() as u64, e["disks"].as_u64().unwrap());
        }
    }
    let guests = expected["guests"].as_array().unwrap();
    assert_eq!(inv.guests.len(), guests.len());
    for (g, e) in inv.guests.iter().zip(guests) {
        assert_eq!(g.vmid as u64, e["vmid"].as_u64().unwrap());
        assert_eq!(g.name, e["name"].as_str().unwrap(), "vm {}", g.vmid);
        assert_eq!(g.node, e["node"].as_str().unwrap());
        assert_eq!(
            g.kind,
            if e["type"] == "qemu" {
                GuestKind::Qemu
            } else {
                GuestKind::Lxc
            }
        );
        assert_eq!(
            g.template,
            e["template"].as_bool().unwrap(),
            "template flag of {}",
            g.vmid
        );
        let tags: Vec<&str> = e["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(g.tags, tags, "tags of {}", g.vmid);
        let nics = e["nics"].as_array().unwrap();
        assert_eq!(g.nics.len(), nics.len(), "nics of {}", g.vmid);
        for (n, en) in g.nics.iter().zip(nics) {
            assert_eq!(n.slot, en["slot"].as_str().unwrap());
            assert_eq!(n.mac.as_deref(), en["mac"].as_str());
            assert_eq!(n.bridge.as_deref(), en["bridge"].as_str());
            assert_eq!(n.vlan_tag.map(u64::from), en["tag"].as_u64());
            assert_eq!(n.link_down, en["linkDown"].as_bool().unwrap());
        }
        assert_eq!(
            g.vcpus.map(u64::from),
            e["vcpus"].as_u64(),
            "vcpus of {}",
            g.vmid
        );
        assert_eq!(
            g.memory_mib,
            e["memoryMib"].as_u64(),
            "memory of {}",
            g.vmid
        );
        assert_eq!(
            g.ha_state.as_deref(),
            e["haState"].as_str(),
            "HA of {}",
            g.vmid
        );
        let addresses: Vec<&str> = g.addresses.iter().map(|a| a.cidr.as_str()).collect();
        let want: Vec<&str> = e["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(addresses, want, "addresses of {}", g.vmid);
        let disks = e["disks"].as_array().unwrap();
        let got: Vec<(&str, Option<u64>)> = g
            .disks
            .iter()
            .map(|d| (d.slot.as_str(), d.size_bytes))
            .collect();
        let want: Vec<(&str, Option<u64>)> = disks
            .iter()
            .map(|d| (d["slot"].as_str().unwrap(), d["sizeBytes"].as_u64()))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "disks of {}", g.vmid);
    }
}

#[tokio::test]
async fn small_topology_reads_exactly_the_seed() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let inv = read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
    assert_matches_seed(&inv, &pve.expected());
    assert!(
        inv.completeness.all_complete(),
        "{:?}",
        inv.completeness.failures().collect::<Vec<_>>()
    );
    assert!(inv.guest_set_complete());
    assert_eq!(inv.pve_version.as_deref(), Some("9.1.3"));
    // Ceph is absent in this topology: recorded as not applicable, not as a failure.
    assert!(matches!(
        inv.completeness.outcome(&ReadScope::Ceph),
        Some(ReadOutcome::NotApplicable {
            reason: ReadFailure::CephNotInstalled,
            ..
        })
    ));
    // web01: agent addresses on net0 (IPv4 and IPv6), from the seeded agent answer.
    let web = inv.guests.iter().find(|g| g.vmid == 100).unwrap();
    let cidrs: Vec<&str> = web.addresses.iter().map(|a| a.cidr.as_str()).collect();
    assert_eq!(cidrs, vec!["10.100.0.10/24", "2001:db8:100::10/64"]);
    assert_eq!(web.vcpus, Some(2));
    assert_eq!(web.memory_mib, Some(4096));
    assert_eq!(web.description.as_deref(), Some("Public web frontend"));
}

#[tokio::test]
async fn demo_topology_covers_agents_lxc_templates_and_ceph() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("demo.json")]);
    let inv = read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
    assert_matches_seed(&inv, &pve.expected());
    // vm 102 has the agent enabled but none runs: recorded, not a failure of the read.
    assert!(matches!(
        inv.completeness.outcome(&ReadScope::GuestAddresses(102)),
        Some(ReadOutcome::NotApplicable {
            reason: ReadFailure::AgentNotRunning,
            ..
        })
    ));
    assert!(
        inv.completeness.all_complete(),
        "{:?}",
        inv.completeness.failures().collect::<Vec<_>>()
    );
    // LXC runtime addresses from /interfaces, static ip= for the stopped one.
    let proxy = inv.guests.iter().find(|g| g.vmid == 201).unwrap();
    assert!(
        proxy
            .addresses
            .iter()
            .any(|a| a.cidr == "2001:db8:100::80/64")
    );
    assert!(
        proxy
            .disks
            .iter()
            .any(|d| d.slot == "mp0" && d.mount_point.as_deref() == Some("/var/cache/nginx"))
    );
    let win = inv.guests.iter().find(|g| g.vmid == 102).unwrap();
    assert!(
        win.disks.iter().any(|d| d.slot == "efidisk0")
            && win.disks.iter().any(|d| d.slot == "tpmstate0")
    );
    let ceph = inv.ceph.as_ref().expect("ceph is installed in demo");
    assert_eq!(ceph.health, "HEALTH_OK");
    let counts = inv.counts();
    assert_eq!((counts.vms, counts.containers, counts.templates), (6, 4, 2));
    let node = &inv.nodes[0];
    let bond = node.interfaces.iter().find(|i| i.name == "bond0").unwrap();
    assert_eq!(bond.bond_slaves, vec!["eno1", "eno2"]);
    assert_eq!(bond.bond_mode.as_deref(), Some("802.3ad"));
    let vlan = node.interfaces.iter().find(|i| i.name == "vlan60").unwrap();
    assert_eq!(
        (vlan.vlan_parent.as_deref(), vlan.vlan_tag),
        (Some("enp65s0f0"), Some(60))
    );
    assert!(
        node.status
            .as_ref()
            .unwrap()
            .kernel
            .as_deref()
            .unwrap()
            .contains("pve")
    );
}

#[tokio::test]
async fn large_topology_of_1000_guests_reads_completely() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--generate", "nodes=3,guests=1000,seed=11"]);
    let started = Instant::now();
    let inv = read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("read 3 nodes x 1000 guests in {took:?}");
    assert_matches_seed(&inv, &pve.expected());
    assert!(inv.completeness.all_complete());
}

#[tokio::test]
async fn bad_token_is_unauthorized_and_never_echoed() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let mut conn = connection(&pve);
    conn.auth = PveAuth::Token {
        token_id: pve.token_id.clone(),
        secret: SecretString::new("wrong-secret-value"),
    };
    conn.max_concurrency = 2;
    let c = PveClient::new(conn).unwrap();
    let err = read_inventory(&c, &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-secret-value"));
}

#[tokio::test]
async fn unknown_ca_fails_tls_and_the_right_ca_bundle_succeeds() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let err = read_inventory(&client(&pve, false), &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("caSecretRef"));
    read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn ticket_auth_with_user_and_password() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let c = ticket_client(&pve);
    let inv = read_inventory(&c, &ReadOptions::default()).await.unwrap();
    assert_matches_seed(&inv, &pve.expected());
}

#[tokio::test]
async fn every_request_of_a_read_is_timed_under_a_fixed_operation() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxmox_netbox_operator::metrics::Metrics::new(&mut registry);
    let c = ticket_client(&pve).with_recorder(metrics.pve.recorder("infra/lab"));
    read_inventory(&c, &ReadOptions::default()).await.unwrap();
    let text = proxmox_netbox_operator::metrics::render(&registry);
    let series: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("proxmox_netbox_pve_request_duration_seconds_count"))
        .collect();
    for line in [
        r#"{cluster="infra/lab",operation="login",outcome="success"} 1"#,
        r#"{cluster="infra/lab",operation="cluster_status",outcome="success"} 1"#,
    ] {
        assert!(series.contains(&line), "missing {line} in\n{text}");
    }
    let label = regex::Regex::new(r#"operation="([a-z_]+)""#).unwrap();
    let fixed = [
        "login",
        "version",
        "permissions",
        "cluster_status",
        "cluster_resources",
        "ha_resources",
        "ceph_status",
        "nodes",
        "node_status",
        "node_network",
        "node_disks",
        "node_storage",
        "ceph_pools",
        "guests",
        "guest_config",
        "guest_interfaces",
    ];
    for s in &series {
        let op = &label.captures(s).expect(s)[1];
        assert!(fixed.contains(&op), "{s}");
    }
    for node in pve.expected()["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        assert!(!text.contains(name), "node {name} in a label:\n{text}");
    }
    assert!(series.iter().any(|s| s.contains("guest_config")), "{text}");
}

#[tokio::test]
async fn an_expired_ticket_is_renewed_by_logging_in_again() {
    let env = HarnessEnv::load();
    // Tickets valid for 2 s: the second read finds the first ticket refused.
    let pve = FakePve::start(
        &env,
        &["--topology", &topology("small.json"), "--ticket-ttl", "2"],
    );
    let c = ticket_client(&pve);
    read_inventory(&c, &ReadOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let inv = read_inventory(&c, &ReadOptions::default()).await.unwrap();
    assert!(
        inv.completeness.all_complete(),
        "{:?}",
        inv.completeness.failures().collect::<Vec<_>>()
    );
    assert_matches_seed(&inv, &pve.expected());
}

#[tokio::test]
async fn the_endpoint_guard_refuses_the_loopback_fake_pve_unless_allowed() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let mut conn = connection(&pve);
    conn.endpoint_guard = EndpointGuard::default();
    // The IP literal: refused before any connection.
    let err = PveClient::new(conn.clone()).err().unwrap();
    assert!(matches!(err, PveError::EndpointRefused(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "spec.proxmox.endpoints[0]: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
    );
    // By name (the certificate is valid for localhost): refused at connect time, on the
    // address the name resolved to.
    conn.endpoints = vec![pve.url.replace("127.0.0.1", "localhost")];
    let c = PveClient::new(conn.clone()).unwrap();
    let err = read_inventory(&c, &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::EndpointRefused(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "spec.proxmox.endpoints[0]: localhost resolves to 127.0.0.1, a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
    );
    // The same name with loopback allowed: the whole inventory is read.
    conn.endpoint_guard = loopback_allowed();
    let inv = read_inventory(&PveClient::new(conn).unwrap(), &ReadOptions::default())
        .await
        .unwrap();
    assert_matches_seed(&inv, &pve.expected());
}

#[tokio::test]
async fn failover_to_the_second_endpoint_when_the_first_is_down() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(&env, &["--topology", &topology("small.json")]);
    let mut conn = connection(&pve);
    // Port 9 on loopback: nothing listens there, the connection is refused at once.
    conn.endpoints = vec!["https://127.0.0.1:9".into(), pve.url.clone()];
    conn.retries = 1;
    let c = PveClient::new(conn).unwrap();
    let inv = read_inventory(&c, &ReadOptions::default()).await.unwrap();
    assert!(inv.completeness.all_complete());
}

#[tokio::test]
async fn offline_node_is_recorded_and_blocks_pruning() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(
        &env,
        &[
            "--topology",
            &topology("demo.json"),
            "--offline-node",
            "pve2",
        ],
    );
    let inv = read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
    let pve2 = inv.nodes.iter().find(|n| n.name == "pve2").unwrap();
    assert!(!pve2.online);
    assert!(matches!(
        inv.completeness
            .outcome(&ReadScope::NodeGuests("pve2".into())),
        Some(ReadOutcome::Failed {
            reason: ReadFailure::NodeOffline,
            ..
        })
    ));
    assert!(!inv.guest_set_complete());
    // Guests of the other nodes are all there.
    assert!(
        inv.guests.iter().any(|g| g.node == "pve1") && inv.guests.iter().any(|g| g.node == "pve3")
    );
    assert!(inv.guests.iter().all(|g| g.node != "pve2"));
}

#[tokio::test]
async fn forbidden_endpoint_is_recorded_and_the_rest_is_read() {
    let env = HarnessEnv::load();
    let pve = FakePve::start(
        &env,
        &[
            "--topology",
            &topology("demo.json"),
            "--forbid",
            "/nodes/pve1/disks/list",
            "--forbid",
            "/cluster/ha/resources",
        ],
    );
    let inv = read_inventory(&client(&pve, true), &ReadOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        inv.completeness
            .outcome(&ReadScope::NodeDisks("pve1".into())),
        Some(ReadOutcome::Failed {
            reason: ReadFailure::Forbidden,
            ..
        })
    ));
    assert!(matches!(
        inv.completeness.outcome(&ReadScope::HaResources),
        Some(ReadOutcome::Failed {
            reason: ReadFailure::Forbidden,
            ..
        })
    ));
    assert_eq!(inv.completeness.failures().count(), 2);
    assert!(inv.guests.iter().all(|g| g.ha_state.is_none()));
    assert!(
        inv.guest_set_complete(),
        "a forbidden disk list does not make guests uncertain"
    );
    assert_eq!(
        inv.guests.len(),
        pve.expected()["guests"].as_array().unwrap().len()
    );
}
