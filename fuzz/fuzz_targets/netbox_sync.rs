//! NetBox API answers decoded by the sync engine (`netbox::engine::sync`) and compared by the
//! diff (`netbox::diff`), served by an in-memory NetBox from one JSON document.
//!
//! The document: `{"<endpoint>": [objects], ...}` is what NetBox holds (lists are filtered by
//! the query the engine sends, roughly as NetBox does); instead of a list, a number answers
//! that HTTP status, a string a transport failure, anything else an undecodable page.
//! `"+<endpoint>"`, `"~<endpoint>"`, `"-<endpoint>"` override what a create, update or
//! delete answers (same forms; by default writes are applied and echoed with ids).
//! `"status"` is the answer to `/api/status/` (default: NetBox 4.7.3).
//! `"!write": true` runs a real sync (default: a dry run), `"!inventory"` replaces the
//! built-in Proxmox inventory (its JSON form), `"!hardware"` adds node hardware facts.
//!
//! Properties: the body round-trips through serde_json; syncing never panics, whatever NetBox
//! answers; a dry run sends no write at all; the report says whether it was a dry run and
//! counts the writes that were sent; the diff finds no change between any object NetBox
//! returns and itself, and only ever returns desired fields with their desired values.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::hardware::facts::NodeHardware;
use proxmox_netbox_operator::inventory::{
    AddressSource, Guest, GuestAddress, GuestDisk, GuestKind, GuestNic, GuestState, Inventory,
    Node, NodeInterface, NodeInterfaceKind, ReadOutcome, ReadScope,
};
use proxmox_netbox_operator::netbox::client::{
    NetBoxApi, NetBoxError, NetBoxVersion, parse_version,
};
use proxmox_netbox_operator::netbox::diff::changed_fields;
use proxmox_netbox_operator::netbox::engine::{SyncSettings, sync};
use serde_json::{Map, Value, json};

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Vec<Value>>,
    next_id: u64,
    reads: u64,
    writes: u64,
}

struct FakeNetBox {
    doc: Map<String, Value>,
    state: Mutex<State>,
    trace: bool,
}

fn failure(endpoint: &str, answer: &Value) -> NetBoxError {
    match answer {
        Value::Number(n) => {
            let status = n
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(500);
            match status {
                401 | 403 => NetBoxError::Auth {
                    endpoint: endpoint.into(),
                    status,
                    message: "Invalid token".into(),
                },
                400 => NetBoxError::Invalid {
                    endpoint: endpoint.into(),
                    message: "name: This field is required.".into(),
                },
                s => NetBoxError::Status {
                    endpoint: endpoint.into(),
                    status: s,
                    message: "error".into(),
                },
            }
        }
        Value::String(s) => NetBoxError::Transport {
            endpoint: endpoint.into(),
            message: s.clone(),
        },
        _ => NetBoxError::Decode {
            endpoint: endpoint.into(),
            message: "no results in the page".into(),
        },
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => o
            .get("id")
            .or_else(|| o.get("value"))
            .or_else(|| o.get("slug"))
            .and_then(text_of),
        _ => None,
    }
}

/// Whether `obj` matches one `key=value` filter, roughly as NetBox's filters do. `tags` are
/// the tags NetBox holds, to match a tag given by id (as the engine writes them).
fn matches_filter(obj: &Value, key: &str, value: &str, tags: &[Value]) -> bool {
    if let Some(cf) = key.strip_prefix("cf_") {
        return text_of(&obj["custom_fields"][cf]).as_deref() == Some(value);
    }
    if key == "tag" {
        let slug_of = |t: &Value| match t {
            Value::Number(_) => tags
                .iter()
                .find(|x| x.get("id") == Some(t))
                .and_then(|x| x["slug"].as_str().map(str::to_string)),
            other => other["slug"].as_str().map(str::to_string),
        };
        return obj["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| slug_of(t).as_deref() == Some(value)));
    }
    if let Some(field) = key.strip_suffix("_id")
        && obj.get(key).is_none()
    {
        return text_of(&obj[field]).as_deref() == Some(value);
    }
    match obj.get(key) {
        Some(v) => text_of(v).as_deref() == Some(value),
        None => true,
    }
}

impl FakeNetBox {
    fn new(doc: Map<String, Value>, trace: bool) -> Self {
        let mut state = State {
            next_id: 1_000_000,
            ..Default::default()
        };
        for (k, v) in &doc {
            if let (false, Value::Array(objects)) = (k.starts_with(['+', '~', '-', '!']), v) {
                state.objects.insert(k.clone(), objects.clone());
            }
        }
        Self {
            doc,
            state: Mutex::new(state),
            trace,
        }
    }

    fn log(&self, what: &str, endpoint: &str, detail: &dyn std::fmt::Debug) {
        if self.trace {
            eprintln!("{what} {endpoint} {detail:?}");
        }
    }

    fn do_list(
        &self,
        endpoint: &str,
        query: &[(String, String)],
    ) -> Result<Vec<Value>, NetBoxError> {
        self.log("GET", endpoint, &query);
        let mut state = self.state.lock().unwrap();
        state.reads += 1;
        if let Some(answer) = self.doc.get(endpoint).filter(|a| !a.is_array()) {
            return Err(failure(endpoint, answer));
        }
        let mut filters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in query {
            if !matches!(
                k.as_str(),
                "fields" | "limit" | "offset" | "brief" | "ordering"
            ) {
                filters.entry(k.as_str()).or_default().push(v.as_str());
            }
        }
        let objects = state.objects.get(endpoint).cloned().unwrap_or_default();
        let tags = state
            .objects
            .get("extras/tags")
            .cloned()
            .unwrap_or_default();
        Ok(objects
            .into_iter()
            .filter(|o| {
                filters
                    .iter()
                    .all(|(k, values)| values.iter().any(|v| matches_filter(o, k, v, &tags)))
            })
            .collect())
    }

    fn do_write(
        &self,
        op: char,
        endpoint: &str,
        items: Vec<Value>,
    ) -> Result<Vec<Value>, NetBoxError> {
        self.log(&op.to_string(), endpoint, &items);
        let mut state = self.state.lock().unwrap();
        state.writes += 1;
        if let Some(answer) = self.doc.get(&format!("{op}{endpoint}")) {
            return match answer {
                Value::Array(a) => Ok(a.clone()),
                other => Err(failure(endpoint, other)),
            };
        }
        let mut out = Vec::new();
        for item in items {
            match op {
                '+' => {
                    state.next_id += 1;
                    let mut obj = item;
                    if let Value::Object(o) = &mut obj {
                        o.insert("id".into(), json!(state.next_id));
                    }
                    state
                        .objects
                        .entry(endpoint.into())
                        .or_default()
                        .push(obj.clone());
                    out.push(obj);
                }
                '~' => {
                    let id = item.get("id").and_then(Value::as_u64);
                    let list = state.objects.entry(endpoint.into()).or_default();
                    match list
                        .iter_mut()
                        .find(|o| o.get("id").and_then(Value::as_u64) == id)
                    {
                        Some(Value::Object(o)) => {
                            for (k, v) in item.as_object().into_iter().flatten() {
                                o.insert(k.clone(), v.clone());
                            }
                            out.push(Value::Object(o.clone()));
                        }
                        _ => {
                            return Err(NetBoxError::Status {
                                endpoint: endpoint.into(),
                                status: 404,
                                message: "Not found.".into(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl NetBoxApi for FakeNetBox {
    fn list<'a>(
        &'a self,
        endpoint: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        let r = self.do_list(endpoint, query);
        Box::pin(async move { r })
    }

    fn create<'a>(
        &'a self,
        endpoint: &'a str,
        objects: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        let r = self.do_write('+', endpoint, objects);
        Box::pin(async move { r })
    }

    fn update<'a>(
        &'a self,
        endpoint: &'a str,
        patches: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        let r = self.do_write('~', endpoint, patches);
        Box::pin(async move { r })
    }

    fn delete<'a>(
        &'a self,
        endpoint: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NetBoxError>> {
        self.log("DELETE", endpoint, &ids);
        let r = {
            let mut state = self.state.lock().unwrap();
            state.writes += 1;
            match self.doc.get(&format!("-{endpoint}")) {
                Some(answer) if !answer.is_array() => Err(failure(endpoint, answer)),
                _ => {
                    if let Some(list) = state.objects.get_mut(endpoint) {
                        list.retain(|o| {
                            !o.get("id")
                                .and_then(Value::as_u64)
                                .is_some_and(|i| ids.contains(&i))
                        });
                    }
                    Ok(())
                }
            }
        };
        Box::pin(async move { r })
    }

    fn request_counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.reads, s.writes)
    }

    fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
        // `"status"` as NetBox's `/api/status/` answer (a failure as for lists); without
        // it, a NetBox that assigns primary MACs at interface creation.
        let r = match self.doc.get("status") {
            None => Ok(Some((4, 7, 3))),
            Some(Value::Object(o)) => Ok(o
                .get("netbox-version")
                .and_then(Value::as_str)
                .and_then(parse_version)),
            Some(answer) => Err(failure("status", answer)),
        };
        Box::pin(async move { r })
    }
}

fn settings() -> SyncSettings {
    SyncSettings {
        owner: "infra/lab".into(),
        adopt_previous: None,
        site: "dc1".into(),
        tenant: Some("ops".into()),
        vrf: Some("lab".into()),
        cluster_name: "lab".into(),
        cluster_group: Some("pve".into()),
        cluster_type: "Proxmox VE".into(),
        device_role: "Proxmox Node".into(),
        role_qemu: "VM".into(),
        role_lxc: "CT".into(),
        role_template: "Template".into(),
        extra_tags: vec!["fuzz".into()],
        sync_templates: true,
        nodes: true,
        node_interfaces: true,
        virtual_machines: true,
        vm_interfaces: true,
        virtual_disks: true,
        ip_addresses: true,
        adopt_existing: true,
        description_from_notes: true,
        create_missing_vlans: true,
        prune: true,
        hardware_discovery: false,
        grace_period: Duration::from_secs(3600),
        prune_max_percent: 50,
        batch_size: 2,
        max_in_flight: 2,
        scope: None,
        guests: Default::default(),
    }
}

/// A small cluster: one node with a bridge on a bond, a VM with two NICs, a disk and
/// addresses, a container, a template.
fn inventory() -> Inventory {
    let iface = |name: &str, kind: NodeInterfaceKind| NodeInterface {
        name: name.into(),
        kind,
        active: true,
        autostart: true,
        ..Default::default()
    };
    let nic = |slot: &str, mac: &str, tag: Option<u16>| GuestNic {
        slot: slot.into(),
        model: Some("virtio".into()),
        mac: Some(mac.into()),
        bridge: Some("vmbr0".into()),
        vlan_tag: tag,
        ..Default::default()
    };
    let mut inv = Inventory {
        pve_version: Some("9.1.2".into()),
        nodes: vec![Node {
            name: "pve1".into(),
            online: true,
            address: Some("10.0.0.11".into()),
            interfaces: vec![
                NodeInterface {
                    bond_slaves: vec!["eno1".into()],
                    ..iface("bond0", NodeInterfaceKind::Bond)
                },
                iface("eno1", NodeInterfaceKind::Physical),
                NodeInterface {
                    bridge_ports: vec!["bond0".into()],
                    cidr: Some("10.0.0.11/24".into()),
                    ..iface("vmbr0", NodeInterfaceKind::Bridge)
                },
            ],
            ..Default::default()
        }],
        guests: vec![
            Guest {
                vmid: 100,
                kind: GuestKind::Qemu,
                node: "pve1".into(),
                name: "web01".into(),
                state: GuestState::Running,
                vcpus: Some(2),
                memory_mib: Some(4096),
                disks: vec![GuestDisk {
                    slot: "scsi0".into(),
                    storage: Some("local-lvm".into()),
                    volume: "local-lvm:vm-100-disk-0".into(),
                    size_bytes: Some(32 << 30),
                    mount_point: None,
                }],
                nics: vec![
                    nic("net0", "BC:24:11:00:00:01", None),
                    nic("net1", "BC:24:11:00:00:02", Some(50)),
                ],
                addresses: vec![
                    GuestAddress {
                        cidr: "10.0.0.50/24".into(),
                        nic_slot: Some("net0".into()),
                        mac: Some("BC:24:11:00:00:01".into()),
                        source: AddressSource::Agent,
                    },
                    GuestAddress {
                        cidr: "2001:db8::50/64".into(),
                        nic_slot: Some("net1".into()),
                        mac: Some("BC:24:11:00:00:02".into()),
                        source: AddressSource::CloudInit,
                    },
                ],
                tags: vec!["prod".into()],
                os_type: Some("l26".into()),
                description: Some("web server".into()),
                agent_enabled: true,
                ..Default::default()
            },
            Guest {
                vmid: 200,
                kind: GuestKind::Lxc,
                node: "pve1".into(),
                name: "dns".into(),
                state: GuestState::Stopped,
                nics: vec![nic("net0", "BC:24:11:00:00:03", None)],
                ..Default::default()
            },
            Guest {
                vmid: 9000,
                kind: GuestKind::Qemu,
                node: "pve1".into(),
                name: "tmpl".into(),
                state: GuestState::Stopped,
                template: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut scopes = vec![
        ReadScope::Version,
        ReadScope::ClusterStatus,
        ReadScope::HaResources,
    ];
    for n in ["pve1"] {
        scopes.extend([
            ReadScope::NodeStatus(n.into()),
            ReadScope::NodeNetwork(n.into()),
            ReadScope::NodeDisks(n.into()),
            ReadScope::NodeStorage(n.into()),
            ReadScope::NodeGuests(n.into()),
        ]);
    }
    for g in &inv.guests {
        scopes.push(ReadScope::GuestConfig(g.vmid));
    }
    for s in scopes {
        inv.completeness.record(s, ReadOutcome::Complete);
    }
    inv
}

/// The diff on what NetBox answered: an object equals itself; a change set is a subset of
/// the desired fields with the desired values.
fn check_diff(doc: &Map<String, Value>) {
    let objects: Vec<&Value> = doc
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .take(64)
        .collect();
    for (i, obj) in objects.iter().enumerate() {
        let Some(map) = obj.as_object() else { continue };
        let changed = changed_fields(map, obj);
        assert!(
            changed.is_empty(),
            "{obj} differs from itself in {changed:?}"
        );
        if let Some(next) = objects.get(i + 1) {
            for (k, v) in changed_fields(map, next) {
                assert_eq!(map.get(&k), Some(&v), "{k} is not the desired value");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(value) = common::decode_round_trip(data) else {
        return;
    };
    let Value::Object(doc) = value else {
        return;
    };
    check_diff(&doc);

    let dry_run = doc.get("!write") != Some(&Value::Bool(true));
    let inv = doc
        .get("!inventory")
        .and_then(|v| serde_json::from_value::<Inventory>(v.clone()).ok())
        .unwrap_or_else(inventory);
    let hardware: BTreeMap<String, NodeHardware> = doc
        .get("!hardware")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let trace = std::env::var_os("FUZZ_NETBOX_TRACE").is_some();
    let api = FakeNetBox::new(doc, trace);
    let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("a valid time");
    let result =
        futures::executor::block_on(sync(&api, &settings(), &inv, &hardware, dry_run, now));
    let (_, writes) = api.request_counts();
    if dry_run {
        assert_eq!(writes, 0, "a dry run sent {writes} writes");
    }
    if let Ok(report) = &result {
        assert_eq!(report.dry_run, dry_run);
        assert_eq!(report.write_requests, writes);
        serde_json::to_string(report).expect("the report serialises");
    }
    if trace {
        eprintln!("result: {result:?}");
        if let Ok(path) = std::env::var("FUZZ_NETBOX_DUMP") {
            let state = api.state.lock().unwrap();
            let dump = serde_json::to_string_pretty(&state.objects).expect("serialises");
            std::fs::write(path, dump).expect("dump written");
        }
    }
});
