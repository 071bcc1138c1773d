//! PVE API answers decoded by the inventory reader (`pve::reader::read_inventory`), served by
//! an in-memory `PveApi` from one JSON document: `{"<api path>": <answer>, ...}`, where an
//! answer is the body PVE sends (`{"data": ...}`), `{"status": 403, "message": "..."}` for an
//! error status, or `"timeout"` / `"connection"` / `"tls"` for a transport failure. A path
//! that is not in the document is a 404.
//!
//! Properties: the body round-trips through serde_json; reading never panics; a read part is
//! reported complete only when every request of that part was answered with data (the rule
//! that keeps anything unread from being treated as deleted); every online node has each of
//! its parts reported exactly once; nodes and guests come out sorted, MACs normalised,
//! addresses as `ip/prefix`; reading the same answers twice gives the same inventory; the
//! inventory serialises and deserialises to itself.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::inventory::{GuestKind, Inventory, ReadOutcome, ReadScope};
use proxmox_netbox_operator::pve::client::{PveApi, PveError};
use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};
use serde_json::{Map, Value};

struct Answers {
    doc: Map<String, Value>,
    /// Paths answered with data.
    served: Mutex<BTreeSet<String>>,
}

impl Answers {
    fn answer(&self, path: &str) -> Result<Value, PveError> {
        let Some(answer) = self.doc.get(path) else {
            return Err(PveError::NotFound { path: path.into() });
        };
        match answer {
            Value::Object(body) if body.contains_key("data") => {
                self.served.lock().unwrap().insert(path.to_string());
                Ok(body["data"].clone())
            }
            Value::Object(body) if body.get("status").is_some_and(Value::is_u64) => {
                let status = body["status"].as_u64().unwrap_or(500);
                let message = body
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Err(match status {
                    401 => PveError::Unauthorized { path: path.into() },
                    403 => PveError::Forbidden {
                        path: path.into(),
                        message,
                    },
                    404 => PveError::NotFound { path: path.into() },
                    s => PveError::Status {
                        path: path.into(),
                        status: u16::try_from(s).unwrap_or(500),
                        message,
                    },
                })
            }
            Value::String(s) if s == "timeout" => Err(PveError::Timeout { path: path.into() }),
            Value::String(s) if s == "connection" || s == "tls" => {
                let (endpoint, message) = ("https://pve1:8006".to_string(), s.clone());
                Err(if s == "tls" {
                    PveError::Tls { endpoint, message }
                } else {
                    PveError::Connection { endpoint, message }
                })
            }
            _ => Err(PveError::Decode {
                path: path.into(),
                message: "no data in the answer".into(),
            }),
        }
    }
}

impl PveApi for Answers {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
        let result = self.answer(path);
        Box::pin(async move { result })
    }
}

/// The requests behind a read part; `None` for parts whose paths depend on the answers.
fn paths_of(scope: &ReadScope, inv: &Inventory) -> Option<Vec<String>> {
    Some(match scope {
        ReadScope::Version => vec!["/version".into()],
        ReadScope::ClusterStatus => vec!["/cluster/status".into()],
        ReadScope::HaResources => vec!["/cluster/ha/resources".into()],
        ReadScope::NodeStatus(n) => vec![format!("/nodes/{n}/status")],
        ReadScope::NodeNetwork(n) => vec![format!("/nodes/{n}/network")],
        ReadScope::NodeDisks(n) => vec![format!("/nodes/{n}/disks/list")],
        ReadScope::NodeStorage(n) => vec![format!("/nodes/{n}/storage")],
        ReadScope::NodeGuests(n) => vec![format!("/nodes/{n}/qemu"), format!("/nodes/{n}/lxc")],
        ReadScope::GuestConfig(id) => {
            // A vmid may be listed more than once (by two nodes): any of them counts.
            let guest = inv.guests.iter().find(|g| g.vmid == *id)?;
            let kind = match guest.kind {
                GuestKind::Qemu => "qemu",
                GuestKind::Lxc => "lxc",
            };
            vec![format!("/nodes/{}/{kind}/{id}/config", guest.node)]
        }
        _ => return None,
    })
}

fn check(inv: &Inventory, api: &Answers) {
    let served = api.served.lock().unwrap().clone();
    for part in &inv.completeness.parts {
        if part.outcome != ReadOutcome::Complete {
            continue;
        }
        let Some(paths) = paths_of(&part.scope, inv) else {
            continue;
        };
        // Duplicated vmids: one of the guests' configs answered is enough.
        let any_guest = matches!(part.scope, ReadScope::GuestConfig(_));
        let answered = |p: &String| served.contains(p);
        let ok = if any_guest {
            let id = match part.scope {
                ReadScope::GuestConfig(id) => id,
                _ => unreachable!(),
            };
            inv.guests.iter().filter(|g| g.vmid == id).any(|g| {
                let kind = if g.kind == GuestKind::Qemu {
                    "qemu"
                } else {
                    "lxc"
                };
                served.contains(&format!("/nodes/{}/{kind}/{id}/config", g.node))
            })
        } else {
            paths.iter().all(answered)
        };
        assert!(
            ok,
            "{:?} reported complete, but {paths:?} were not all answered",
            part.scope
        );
    }

    assert!(!inv.nodes.is_empty(), "an inventory without nodes");
    assert!(
        inv.nodes.windows(2).all(|w| w[0].name < w[1].name),
        "nodes not sorted and unique"
    );
    for node in inv.nodes.iter().filter(|n| n.online) {
        for scope in [
            ReadScope::NodeStatus(node.name.clone()),
            ReadScope::NodeNetwork(node.name.clone()),
            ReadScope::NodeDisks(node.name.clone()),
            ReadScope::NodeStorage(node.name.clone()),
            ReadScope::NodeGuests(node.name.clone()),
        ] {
            let n = inv
                .completeness
                .parts
                .iter()
                .filter(|p| p.scope == scope)
                .count();
            assert_eq!(n, 1, "{scope:?} reported {n} times");
        }
    }
    assert!(
        inv.guests.windows(2).all(|w| w[0].vmid <= w[1].vmid),
        "guests not sorted"
    );
    for g in &inv.guests {
        assert!(
            inv.nodes.iter().any(|n| n.name == g.node && n.online),
            "guest on {:?}",
            g.node
        );
        for nic in &g.nics {
            if let Some(m) = &nic.mac {
                assert!(m.len() == 17 && m == &m.to_ascii_uppercase(), "mac {m:?}");
            }
        }
        for a in &g.addresses {
            let (ip, prefix) = a.cidr.split_once('/').expect("ip/prefix");
            assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{:?}", a.cidr);
            assert!(prefix.parse::<u8>().is_ok(), "{:?}", a.cidr);
        }
    }

    let json = serde_json::to_string(inv).expect("serialises");
    let back: Inventory = serde_json::from_str(&json).expect("deserialises");
    let (a, b) = (
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(inv).unwrap(),
    );
    assert!(common::same_json(&a, &b), "{json}");
    // Exactly, without the text: every field has a serde form that reads back.
    let exact: Inventory = serde_json::from_value(b).expect("deserialises");
    assert_eq!(&exact, inv);
}

fn read(doc: &Map<String, Value>) -> (Result<Inventory, PveError>, Answers) {
    let api = Answers {
        doc: doc.clone(),
        served: Mutex::new(BTreeSet::new()),
    };
    let opts = ReadOptions {
        guest_agent: !doc.contains_key("!no_agent"),
        ceph: !doc.contains_key("!no_ceph"),
        concurrency: 4,
    };
    let result = futures::executor::block_on(read_inventory(&api, &opts));
    (result, api)
}

fuzz_target!(|data: &[u8]| {
    let Some(value) = common::decode_round_trip(data) else {
        return;
    };
    let Value::Object(doc) = value else {
        return;
    };
    let (first, api) = read(&doc);
    match &first {
        Ok(inv) => check(inv, &api),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let (second, _) = read(&doc);
    assert_eq!(first, second, "two reads of the same answers differ");
});
