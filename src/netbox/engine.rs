//! The sync engine: observe (read NetBox once per kind, owned objects only) -> plan (pure,
//! [`super::plan`] and [`super::prune`]) -> apply (bulk writes of changed fields only,
//! [`super::apply`]), stage by stage, since each kind refers to the ids of the one before.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::apply::Session;
use super::bootstrap::bootstrap;
use super::client::{NetBoxApi, NetBoxError};
use super::kinds::{CF_OWNER, Kind, OWNER_TAG, custom_field, id_of};
use super::observe::observe;
use super::plan::{self, Desired, PlanInput, addresses, guests, nodes};
use super::prune;
use super::report::SyncReport;
use crate::crd::facts::NodeHardware;
use crate::inventory::Inventory;
use crate::owner::OwnerScope;

pub use super::settings::SyncSettings;

/// Syncs the inventory to NetBox. `Err` only when NetBox cannot be used at all (token,
/// bootstrap objects, reads); failures of single objects are in the report.
pub async fn sync(
    api: &dyn NetBoxApi,
    settings: &SyncSettings,
    inventory: &Inventory,
    hardware: &BTreeMap<String, NodeHardware>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<SyncReport, NetBoxError> {
    // Without `proxmox_owner` a targeted pass does what a full sync does: the objects are
    // found again by the cluster, not by the scope.
    let unscoped = SyncSettings {
        scope: None,
        ..settings.clone()
    };
    let mut session = Session::new(api, settings, dry_run);
    let shared = bootstrap(&mut session, inventory, hardware).await?;
    if !shared.owner_field_existed {
        session.settings = &unscoped;
    }
    let candidates = observe(&mut session, &shared, inventory).await?;
    let input = PlanInput {
        settings: session.settings,
        inventory,
        hardware,
        shared: &shared,
        candidates: &candidates,
        now,
    };
    converge(&mut session, &input).await;
    let (reads, writes) = api.request_counts();
    session.report.read_requests = reads;
    session.report.write_requests = writes;
    Ok(session.report)
}

/// Plans and applies every kind in order, then pruning. Each stage's plan is pure and
/// takes the ids the stages before it wrote (placeholders in dry-run, where nothing here
/// does I/O).
pub async fn converge(s: &mut Session<'_>, input: &PlanInput<'_>) {
    // A targeted pass plans its guests only: the devices are as read, and no node
    // interface, MAC or address is read or planned.
    let nodes_planned = input.settings.scope.is_none();
    let (devices, interfaces) = if nodes_planned {
        let devices = s
            .apply_stage(Kind::Device, nodes::devices(input, &s.owned))
            .await;
        let interfaces = nodes::interfaces(input, &s.owned, &devices);
        let interfaces = children(s, input, Kind::Interface, interfaces).await;
        (devices, interfaces)
    } else {
        (s.owned.ids(Kind::Device), BTreeMap::new())
    };
    let vms = s
        .apply_stage(Kind::VirtualMachine, guests::vms(input, &s.owned))
        .await;
    let vm_ifaces = guests::interfaces(input, &s.owned, &vms);
    let vm_ifaces = guest_interfaces(s, input, vm_ifaces).await;
    let disks = guests::disks(input, &s.owned, &vms);
    children(s, input, Kind::VirtualDisk, disks).await;
    let macs = addresses::macs(input, &s.owned, &interfaces, &vm_ifaces);
    let macs = children(s, input, Kind::MacAddress, macs).await;
    let mac_of = |object_type: Kind| {
        let macs = &macs;
        move |id: u64| {
            let prefix = format!("{}/{id}/", object_type.name());
            macs.iter()
                .find(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| *v)
        }
    };
    if nodes_planned {
        let refs = nodes::interface_refs(input, &s.owned, &interfaces, &mac_of(Kind::Interface));
        s.apply_refs(Kind::Interface, refs).await;
    }
    let refs = guests::interface_refs(input, &vm_ifaces, &mac_of(Kind::VmInterface));
    s.apply_refs(Kind::VmInterface, refs).await;
    let ips = addresses::ips(input, &s.owned, &interfaces, &vm_ifaces);
    let ips = children(s, input, Kind::IpAddress, ips).await;
    let ip_id = |object_type: Kind| {
        let ips = &ips;
        move |iface: u64, cidr: &str| {
            ips.get(&format!("{}/{iface}/{cidr}", object_type.name()))
                .copied()
        }
    };
    if nodes_planned {
        let primary =
            nodes::primary_ips_of_devices(input, &s.owned, &devices, &ip_id(Kind::Interface));
        s.apply_refs(Kind::Device, primary).await;
    }
    let primary = guests::primary_ips_of_vms(input, &s.owned, &vms, &ip_id(Kind::VmInterface));
    s.apply_refs(Kind::VirtualMachine, primary).await;
    let prune_plan = prune::plan(input, &s.owned, &devices, &vms);
    s.apply_prune(prune_plan).await;
}

/// Applies the desired children of one kind, unmarked ones with their identity taken
/// back first (after `proxmox_owner` was deleted).
async fn children(
    s: &mut Session<'_>,
    input: &PlanInput<'_>,
    kind: Kind,
    desired: Vec<Desired>,
) -> BTreeMap<String, u64> {
    let stage = plan::children_stage(input, &s.owned, kind, desired);
    s.apply_stage(kind, stage).await
}

/// Applies the desired guest interfaces like [`children`]; new ones get their primary
/// MAC at creation where NetBox allows it (the MACs are created just before).
async fn guest_interfaces(
    s: &mut Session<'_>,
    input: &PlanInput<'_>,
    desired: Vec<Desired>,
) -> BTreeMap<String, u64> {
    let kind = Kind::VmInterface;
    let mut stage = plan::children_stage(input, &s.owned, kind, desired);
    // Interfaces taken back exist: only the new ones get a MAC made first.
    s.take_over(kind, std::mem::take(&mut stage.adoptions));
    let made_earlier: BTreeSet<u64> = s.owned.ids(Kind::MacAddress).into_values().collect();
    let macs = addresses::macs_before_interfaces(input, &s.owned, &stage.desired);
    s.apply(Kind::MacAddress, macs).await;
    stage.desired = addresses::with_primary_macs(input, &s.owned, stage.desired);
    let ids = s.apply_stage(kind, stage).await;
    s.note_primary_macs_assigned(kind, &made_earlier);
    ids
}

/// Deletes every object owned by `owner` (deletion policy `Delete`), children first.
/// Returns how many were deleted.
pub async fn delete_owned(api: &dyn NetBoxApi, owner: &OwnerScope) -> Result<u64, NetBoxError> {
    let mut deleted = 0;
    for kind in Kind::OWNED {
        // Every mark of this scope, whatever Proxmox cluster it was synced from.
        let mut q = vec![("cf_proxmox_owner__isw".to_string(), owner.prefix())];
        if kind.carries_owner_tag() {
            q.push(("tag".to_string(), OWNER_TAG.to_string()));
        }
        let ids: Vec<u64> = api
            .list(kind.endpoint(), &q)
            .await?
            .iter()
            .filter(|o| custom_field(o, CF_OWNER).is_some_and(|m| owner.owns(&m)))
            .filter_map(id_of)
            .collect();
        for chunk in ids.chunks(200) {
            api.delete(kind.endpoint(), chunk.to_vec()).await?;
            deleted += chunk.len() as u64;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netbox::client::NetBoxVersion;
    use crate::netbox::kinds::CF_GROUP;
    use serde_json::{Value, json};
    use std::time::Duration;

    /// NetBox with every lookup answering one object, and `proxmox_owner` being purged.
    struct PurgingNetBox;

    impl NetBoxApi for PurgingNetBox {
        fn list<'a>(
            &'a self,
            endpoint: &'a str,
            _query: &'a [(String, String)],
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            Box::pin(async move {
                Ok(match endpoint {
                    "extras/custom-fields" => vec![json!({
                        "id": 7, "name": CF_OWNER, "group_name": CF_GROUP,
                        "type": {"value": "text"}, "object_types": [],
                        "status": {"value": "deleting", "label": "Deleting"},
                    })],
                    _ => vec![json!({"id": 1})],
                })
            })
        }
        fn create<'a>(
            &'a self,
            _: &'a str,
            _: Vec<Value>,
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("nothing is created while a field is not live")
        }
        fn update<'a>(
            &'a self,
            _: &'a str,
            _: Vec<Value>,
        ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("nothing is updated while a field is not live")
        }
        fn delete<'a>(
            &'a self,
            _: &'a str,
            _: Vec<u64>,
        ) -> futures::future::BoxFuture<'a, Result<(), NetBoxError>> {
            unreachable!("nothing is deleted while a field is not live")
        }
        fn request_counts(&self) -> (u64, u64) {
            (0, 0)
        }
        fn version(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
            Box::pin(async { Ok(Some((4, 7, 3))) })
        }
    }

    #[tokio::test]
    async fn a_custom_field_being_purged_stops_the_sync_with_a_clear_reason() {
        let settings = SyncSettings {
            owner: "infra/lab".into(),
            adopt_previous: None,
            site: "dc1".into(),
            tenant: None,
            vrf: None,
            cluster_name: "lab".into(),
            cluster_group: None,
            cluster_type: "Proxmox VE".into(),
            device_role: "Proxmox Node".into(),
            role_qemu: "VM".into(),
            role_lxc: "CT".into(),
            role_template: "Template".into(),
            extra_tags: Vec::new(),
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
            prune: true,
            hardware_discovery: false,
            grace_period: Duration::from_secs(60),
            prune_max_percent: 10,
            batch_size: 100,
            scope: None,
            guests: Default::default(),
            max_in_flight: 4,
        };
        let err = sync(
            &PurgingNetBox,
            &settings,
            &Inventory::default(),
            &BTreeMap::new(),
            false,
            Utc::now(),
        )
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(
                "custom field \"proxmox_owner\" is being deleted by a NetBox background job"
            ),
            "{message}"
        );
        assert!(message.contains("netbox-rqworker"), "{message}");
    }
}
