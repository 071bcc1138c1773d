//! Golden tests of the NetBox plan: each case in `tests/plan/<case>/case.json` takes an
//! inventory, the shared NetBox ids and the owned NetBox objects, and its plan (the
//! ordered changes with their reasons and values, the counts, the collisions and the
//! NetBox state the writes lead to) must equal `expected.json`. The plan runs in dry-run
//! against a NetBox that fails the test on any request: planning does no I/O. Every case
//! is also planned a second time from the state its plan leads to, which must change
//! nothing (one sync converges).
//!
//! `PLAN_GOLDEN_UPDATE=1 cargo test --test plan_golden` rewrites the expected files; read
//! the diff before committing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use proxmox_netbox_operator::inventory::Inventory;
use proxmox_netbox_operator::netbox::apply::Session;
use proxmox_netbox_operator::netbox::client::{NetBoxApi, NetBoxError, NetBoxVersion};
use proxmox_netbox_operator::netbox::engine::converge;
use proxmox_netbox_operator::netbox::kinds::{Kind, OwnedObjects};
use proxmox_netbox_operator::netbox::plan::{Candidates, PlanInput, SharedIds};
use proxmox_netbox_operator::netbox::report::SyncReport;
use proxmox_netbox_operator::netbox::settings::SyncSettings;

/// NetBox that fails the test on any request.
struct NoNetBox;

impl NetBoxApi for NoNetBox {
    fn list<'a>(
        &'a self,
        endpoint: &'a str,
        _: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        panic!("the plan read {endpoint}")
    }
    fn create<'a>(
        &'a self,
        endpoint: &'a str,
        _: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        panic!("the plan created in {endpoint}")
    }
    fn update<'a>(
        &'a self,
        endpoint: &'a str,
        _: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        panic!("the plan updated in {endpoint}")
    }
    fn delete<'a>(
        &'a self,
        endpoint: &'a str,
        _: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NetBoxError>> {
        panic!("the plan deleted in {endpoint}")
    }
    fn request_counts(&self) -> (u64, u64) {
        (0, 0)
    }
    fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
        panic!("the plan read NetBox's version")
    }
}

/// A JSON value set (or removed, with `remove`) at a JSON pointer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    path: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    remove: bool,
}

/// Spec values that differ from the defaults of [`settings`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct SettingsOverrides {
    prune: Option<bool>,
    grace_period_seconds: Option<u64>,
    prune_max_percent: Option<u32>,
    sync_templates: Option<bool>,
    adopt_existing: Option<bool>,
    description_from_notes: Option<bool>,
    hardware_discovery: Option<bool>,
    node_interfaces: Option<bool>,
    virtual_disks: Option<bool>,
    ip_addresses: Option<bool>,
}

/// One golden case.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    /// What the case shows.
    description: String,
    #[serde(default)]
    settings: SettingsOverrides,
    /// Changes to `tests/plan/inventory.json`.
    #[serde(default)]
    inventory_edits: Vec<Edit>,
    /// Changes to `tests/plan/shared.json`.
    #[serde(default)]
    shared_edits: Vec<Edit>,
    /// The owned objects: none, or the state another case's plan leads to.
    #[serde(default)]
    owned_from: Option<String>,
    /// Changes to the owned objects (pointers `/<kind>/<key>/<field>`).
    #[serde(default)]
    owned_edits: Vec<Edit>,
    #[serde(default)]
    candidates: Candidates,
    /// Someone deleted the `proxmox_owner` custom field, which wipes its values: the
    /// owned children become the candidates read by the owner tag of their parents.
    #[serde(default)]
    owner_field_deleted: bool,
    /// Now, RFC 3339.
    now: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn edit(mut doc: Value, edits: &[Edit]) -> Value {
    for e in edits {
        let (parent, last) = e.path.rsplit_once('/').expect("a pointer starts with /");
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent} to edit"));
        match target {
            Value::Object(m) if e.remove => {
                m.remove(&last)
                    .unwrap_or_else(|| panic!("no {} to remove", e.path));
            }
            Value::Object(m) => {
                m.insert(last, e.value.clone());
            }
            Value::Array(a) if e.remove => {
                a.remove(last.parse::<usize>().expect("an index"));
            }
            Value::Array(a) if last == "-" => a.push(e.value.clone()),
            Value::Array(a) => a[last.parse::<usize>().expect("an index")] = e.value.clone(),
            other => panic!("{} is not an object or array: {other}", e.path),
        }
    }
    doc
}

fn settings(o: &SettingsOverrides) -> SyncSettings {
    SyncSettings {
        owner: "infra/lab".into(),
        adopt_previous: None,
        site: "dc1".into(),
        tenant: Some("infra".into()),
        vrf: None,
        cluster_name: "lab".into(),
        cluster_group: None,
        cluster_type: "Proxmox VE".into(),
        device_role: "Proxmox Node".into(),
        role_qemu: "VM".into(),
        role_lxc: "CT".into(),
        role_template: "Template".into(),
        extra_tags: vec!["team-infra".into()],
        sync_templates: o.sync_templates.unwrap_or(false),
        nodes: true,
        node_interfaces: o.node_interfaces.unwrap_or(true),
        virtual_machines: true,
        vm_interfaces: true,
        virtual_disks: o.virtual_disks.unwrap_or(true),
        ip_addresses: o.ip_addresses.unwrap_or(true),
        adopt_existing: o.adopt_existing.unwrap_or(false),
        description_from_notes: o.description_from_notes.unwrap_or(true),
        create_missing_vlans: false,
        prune: o.prune.unwrap_or(true),
        hardware_discovery: o.hardware_discovery.unwrap_or(false),
        grace_period: Duration::from_secs(o.grace_period_seconds.unwrap_or(3600)),
        prune_max_percent: o.prune_max_percent.unwrap_or(50),
        batch_size: 100,
        scope: None,
        guests: Default::default(),
        max_in_flight: 4,
    }
}

/// The plan of a case: the report and the owned objects after it.
fn plan(
    case: &Case,
    owned: OwnedObjects,
    inventory: &Inventory,
    shared: &SharedIds,
) -> (SyncReport, OwnedObjects) {
    let settings = settings(&case.settings);
    let now: DateTime<Utc> = case.now.parse().expect("now is RFC 3339");
    let api = NoNetBox;
    let mut session = Session::new(&api, &settings, true);
    session.set_owned(owned);
    let hardware = BTreeMap::new();
    let input = PlanInput {
        settings: &settings,
        inventory,
        hardware: &hardware,
        shared,
        candidates: &case.candidates,
        now,
    };
    futures::executor::block_on(converge(&mut session, &input));
    (session.report, session.owned)
}

fn load(name: &str) -> Case {
    let value = read_json(&dir().join(name).join("case.json"));
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}/case.json: {e}"))
}

/// The inputs of a case, and the state its plan leads to.
struct Run {
    case: Case,
    inventory: Inventory,
    shared: SharedIds,
    report: SyncReport,
    after: OwnedObjects,
}

fn run(name: &str) -> Run {
    let case = load(name);
    let inventory = edit(
        read_json(&dir().join("inventory.json")),
        &case.inventory_edits,
    );
    let inventory: Inventory = serde_json::from_value(inventory).expect("an inventory");
    let shared = edit(read_json(&dir().join("shared.json")), &case.shared_edits);
    let shared: SharedIds = serde_json::from_value(shared).expect("shared ids");
    let owned = match &case.owned_from {
        Some(other) => serde_json::to_value(run(other).after).unwrap(),
        None => json!({}),
    };
    let mut owned = edit(owned, &case.owned_edits);
    let mut case = case;
    if case.owner_field_deleted {
        let wanted: Vec<String> = settings(&case.settings)
            .synced_guests(&inventory)
            .map(|g| g.vmid.to_string())
            .collect();
        unmark(&mut owned, &mut case.candidates, &wanted);
    }
    let owned: OwnedObjects = serde_json::from_value(owned).expect("owned objects");
    let (report, after) = plan(&case, owned, &inventory, &shared);
    Run {
        case,
        inventory,
        shared,
        report,
        after,
    }
}

/// The owned objects as NetBox holds them after `proxmox_owner` was deleted: no owner
/// value anywhere; devices still found by their tag, VMs by a wanted vmid (the observe
/// step), children (marked by the custom field only) moved to the unmarked candidates.
fn unmark(owned: &mut Value, candidates: &mut Candidates, wanted_vms: &[String]) {
    let Value::Object(kinds) = owned else { return };
    for (kind, objects) in kinds.iter_mut() {
        for obj in objects
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            if let Some(cf) = obj["custom_fields"].as_object_mut() {
                cf.remove("proxmox_owner");
            }
        }
        let kind: Kind = serde_json::from_value(json!(kind)).unwrap();
        if kind == Kind::VirtualMachine {
            if let Some(vms) = objects.as_object_mut() {
                vms.retain(|vmid, _| wanted_vms.contains(vmid));
            }
        } else if !kind.carries_owner_tag() {
            let objects = std::mem::replace(objects, json!({}));
            for (key, obj) in objects.as_object().into_iter().flatten() {
                candidates
                    .unmarked_children
                    .insert(kind, key.clone(), obj.clone());
            }
        }
    }
}

fn golden(name: &str) {
    let r = run(name);
    let actual = json!({
        "plan": r.report.plan,
        "counts": r.report.kinds,
        "collisions": r.report.collisions,
        "pruneBlocked": r.report.prune_blocked,
        "after": r.after,
    });
    let path = dir().join(name).join("expected.json");
    if std::env::var_os("PLAN_GOLDEN_UPDATE").is_some() {
        let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let expected = read_json(&path);
    for field in ["plan", "counts", "collisions", "pruneBlocked", "after"] {
        assert_eq!(
            actual[field],
            expected[field],
            "{name} ({}): {field} differs from expected.json (PLAN_GOLDEN_UPDATE=1 rewrites it)\nactual: {}",
            r.case.description,
            serde_json::to_string_pretty(&actual[field]).unwrap()
        );
    }
    // One sync converges: planned again from the state it leads to, nothing changes.
    let (again, _) = plan(&r.case, r.after.clone(), &r.inventory, &r.shared);
    let writes: Vec<_> = again.plan.iter().map(|p| (&p.action, &p.object)).collect();
    assert!(
        writes.is_empty(),
        "{name}: a second sync would write {writes:?}"
    );
}

macro_rules! golden_cases {
    ($($test:ident => $dir:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                golden($dir);
            }
        )*
    };
}

golden_cases! {
    first_sync_creates_everything_then_references => "first-sync",
    a_synced_cluster_plans_nothing => "no-op",
    drift_updates_only_the_changed_fields_and_keeps_human_tags => "drift",
    a_renamed_guest_keeps_its_identity => "rename",
    gone_guests_are_marked_stale_then_deleted_after_the_grace_period => "stale-and-prune",
    parts_not_read_change_and_prune_nothing => "partial-read",
    unowned_objects_in_the_way_are_collisions_and_left_alone => "collisions",
    unowned_objects_are_adopted_when_allowed => "adoption",
    vlans_are_set_only_when_netbox_has_one_for_the_tag => "vlan-policy",
    templates_are_synced_only_when_asked_and_never_pruned_as_gone => "templates",
    pruning_is_refused_when_too_much_is_gone_at_once => "prune-blocked",
    templates_skipped_later_are_left_as_they_are => "templates-off",
    netbox_before_4_4_2_gets_primary_macs_by_a_second_pass => "netbox-before-4.4.2",
    children_tagged_by_an_earlier_version_keep_the_tag_and_need_no_write => "children-tagged-earlier",
    unassigned_macs_left_by_an_interrupted_sync_are_used_or_deleted => "unassigned-macs-left",
    children_are_taken_back_after_the_owner_field_was_deleted_only_by_identity => "owner-field-deleted",
}

/// The first sync creates each new guest interface with its MAC as primary MAC: the MACs
/// first (unassigned), no PATCH of guest interfaces afterwards.
#[test]
fn new_guest_interfaces_get_their_primary_mac_at_creation() {
    let r = run("first-sync");
    let steps: Vec<(&str, &str)> = r
        .report
        .plan
        .iter()
        .map(|p| (p.kind.as_str(), p.action.as_str()))
        .collect();
    let first_mac = steps.iter().position(|s| s.0 == "dcim.macaddress").unwrap();
    let first_iface = steps
        .iter()
        .position(|s| s.0 == "virtualization.vminterface")
        .unwrap();
    assert!(first_mac < first_iface, "{steps:?}");
    assert!(
        !steps.contains(&("virtualization.vminterface", "update")),
        "{steps:?}"
    );
    for p in r
        .report
        .plan
        .iter()
        .filter(|p| p.kind == "virtualization.vminterface")
    {
        assert!(
            p.fields.contains(&"primary_mac_address".to_string()),
            "{p:?}"
        );
    }
    // Devices carry the owner tag (1) and the owner custom field; every other kind only the
    // custom field.
    for (kind, objects) in serde_json::to_value(&r.after).unwrap().as_object().unwrap() {
        let kind: Kind = serde_json::from_value(json!(kind)).unwrap();
        for obj in objects.as_object().unwrap().values() {
            let tagged = obj["tags"].as_array().unwrap().contains(&json!(1));
            assert_eq!(tagged, kind.carries_owner_tag(), "{kind:?} {obj}");
            assert_eq!(obj["custom_fields"]["proxmox_owner"], "infra/lab");
        }
    }
}

/// Before NetBox 4.4.2 the MACs are made after their interfaces, then set as primary MAC.
#[test]
fn without_primary_mac_at_creation_interfaces_are_patched() {
    let r = run("netbox-before-4.4.2");
    let updates = r
        .report
        .plan
        .iter()
        .filter(|p| p.kind == "virtualization.vminterface" && p.action == "update")
        .count();
    assert_eq!(updates, 4);
}

/// After the owner field was deleted, a hand-made interface on an owned VM is not taken.
#[test]
fn a_hand_made_child_without_a_desired_identity_is_not_taken_back() {
    let r = run("owner-field-deleted");
    assert!(
        r.after
            .get(Kind::VmInterface, "281474976710669/eth9")
            .is_none()
    );
    assert!(r.report.plan.iter().all(|p| !p.object.contains("eth9")));
    let taken = r.report.plan.iter().filter(|p| p.action == "adopt").count();
    assert!(taken > 20, "{taken}");
}

/// The golden cases on disk are exactly the ones above (a new directory without a test
/// would never run).
#[test]
fn every_case_directory_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type()
                .ok()?
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let source = include_str!("plan_golden.rs");
    for name in on_disk {
        assert!(
            source.contains(&format!("=> \"{name}\"")),
            "tests/plan/{name} has no test in plan_golden.rs"
        );
    }
}
