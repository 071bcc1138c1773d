//! Provisioning (`spec.provisioning`, docs/provisioning.md): NetBox virtual machines with
//! status `staged` cloned from a template in Proxmox VE, configured from their record and
//! handed over to the sync; those set to `decommissioning` retired. The same pipeline as
//! the NetBox side: [`observe`] (read NetBox and PVE) -> [`plan`] (pure: the next step of
//! each VM) -> [`apply`] (run it, look again), with [`report`] for the status.

pub mod apply;
pub mod mark;
pub mod model;
pub mod observe;
pub mod plan;
pub mod report;
pub mod settings;
pub mod vm_config;

use std::collections::BTreeMap;

use crate::crd::RetiredRecordPolicy;
use crate::inventory::Inventory;
use crate::netbox::client::NetBoxApi;
use crate::netbox::settings::GuestOverrides;
use crate::pve::metrics::TaskRecorder;
use crate::pve::write::PveWriteApi;
use apply::{ApplyContext, VmidAllocator};
use model::{NbVm, Phase, Power};
use plan::{VmWork, Warning};
use report::{ProvisionReport, VmReport};
use settings::ProvisionSettings;

/// A guest provisioning created and handed over in this pass: the inventory is read
/// again for it, so that the sync of the same pass documents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedGuest {
    /// vmid.
    pub vmid: u32,
    /// Node.
    pub node: String,
    /// Name.
    pub name: String,
    /// Running.
    pub running: bool,
}

/// What one provisioning pass did and tells the rest of the pass.
#[derive(Clone, Debug, Default)]
pub struct ProvisionOutcome {
    /// For the status, Events and metrics.
    pub report: ProvisionReport,
    /// For the NetBox sync of this pass (and the polls until the next full pass).
    pub overrides: GuestOverrides,
    /// Guests created and handed over.
    pub created: Vec<CreatedGuest>,
    /// Guests destroyed.
    pub destroyed: Vec<u32>,
    /// The records as they are after the pass: the polls until the next full pass compare
    /// with it ([`observe::fingerprint`]).
    pub fingerprint: Option<observe::Fingerprint>,
}

/// Where provisioning writes and what it knows of its cluster.
pub struct Target<'a> {
    /// PVE (the provisioning credentials).
    pub pve: &'a dyn PveWriteApi,
    /// NetBox.
    pub netbox: &'a dyn NetBoxApi,
    /// Task durations.
    pub tasks: &'a TaskRecorder,
    /// This owner's mark ([`crate::owner`]).
    pub mark: &'a str,
    /// The NetBox cluster of the sync.
    pub cluster_name: &'a str,
}

/// One provisioning pass: observe, plan and apply, VM by VM. Never fails as a whole: when
/// NetBox cannot be read, the report says why and the sync is told to leave every guest
/// with this owner's mark alone for this pass.
pub async fn provision(
    target: &Target<'_>,
    settings: &ProvisionSettings,
    inventory: &Inventory,
) -> ProvisionOutcome {
    let observed = match observe::observe(
        target.netbox,
        settings,
        target.mark,
        target.cluster_name,
        inventory,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            return not_run(
                settings.dry_run,
                format!("provisioning did not run: {e}"),
                inventory,
                target.mark,
            );
        }
    };
    let taken = inventory
        .guests
        .iter()
        .map(|g| g.vmid)
        .chain(observed.records.iter().filter_map(|r| r.reserved_vmid));
    let mut selection = plan::select(observed.records.clone(), settings, target.mark);
    let mut acted: Vec<NbVm> = selection.work.iter().map(|(_, r)| r.clone()).collect();
    if let Err(e) = observe::add_children(target.netbox, &mut acted).await {
        let why = format!("provisioning did not run: {e}");
        return not_run(settings.dry_run, why, inventory, target.mark);
    }
    for ((_, record), full) in selection.work.iter_mut().zip(acted) {
        *record = full;
    }
    let works: Vec<VmWork> = selection
        .work
        .iter()
        .map(|(intent, record)| VmWork {
            intent: *intent,
            guest: record
                .vmid
                .or(record.reserved_vmid)
                .and_then(|v| observed.guests.get(&v).cloned()),
            record: record.clone(),
        })
        .collect();
    let ctx = ApplyContext {
        pve: target.pve,
        netbox: target.netbox,
        settings,
        cluster: &observed.cluster,
        tasks: target.tasks,
        vmids: VmidAllocator::new(taken),
    };
    let done = apply::apply(&ctx, works).await;
    let cluster = observed.netbox_cluster;
    let mut out = outcome(settings, target.mark, observed, selection.reported, done);
    out.fingerprint = observe::fingerprint(
        target.netbox,
        cluster,
        target.cluster_name,
        target.mark,
        settings.follow_resources,
    )
    .await
    .ok();
    out
}

/// The outcome of a pass that could not run (`why`), with the sync told to leave every
/// guest with this owner's mark alone.
pub fn not_run(dry_run: bool, why: String, inventory: &Inventory, mark: &str) -> ProvisionOutcome {
    ProvisionOutcome {
        report: ProvisionReport {
            dry_run,
            failure: Some(why),
            ..Default::default()
        },
        overrides: report::overrides_without_records(&observe::guest_views(inventory), mark),
        ..Default::default()
    }
}

/// The outcome from what the apply left.
fn outcome(
    settings: &ProvisionSettings,
    mark: &str,
    observed: observe::Observed,
    reported: Vec<(NbVm, Warning)>,
    done: Vec<(VmReport, VmWork)>,
) -> ProvisionOutcome {
    let mut records: BTreeMap<u64, NbVm> =
        observed.records.iter().map(|r| (r.id, r.clone())).collect();
    let mut guests = observed.guests.clone();
    let mut created = Vec::new();
    let mut destroyed = Vec::new();
    let mut vms = Vec::new();
    let selected = done.len();
    for (report, work) in done {
        let deleted = work.record.phase == Some(Phase::Retired)
            && settings.retire == Some(RetiredRecordPolicy::Delete);
        if deleted {
            records.remove(&work.record.id);
        } else {
            records.insert(work.record.id, work.record.clone());
        }
        if let Some(vmid) = work.vmid().or(report.vmid) {
            match &work.guest {
                Some(g) => {
                    guests.insert(vmid, g.clone());
                }
                None if report.retired => {
                    guests.remove(&vmid);
                }
                None => {}
            }
        }
        if report.provisioned
            && let Some(g) = &work.guest
        {
            created.push(CreatedGuest {
                vmid: g.vmid,
                node: g.node.clone(),
                name: g.name.clone(),
                running: g.power == Power::Running,
            });
        }
        if report.retired
            && let Some(vmid) = report.vmid
        {
            destroyed.push(vmid);
        }
        let listed = !report.steps.is_empty()
            || report.warning.is_some()
            || report.waiting.is_some()
            || !report.notes.is_empty()
            || report.reboot_required;
        if listed {
            vms.push(report);
        }
    }
    for (record, warning) in reported {
        vms.push(VmReport {
            netbox_id: record.id,
            name: record.name.clone(),
            vmid: record.vmid.or(record.reserved_vmid),
            intent: plan::Intent::Check,
            phase: "Skipped",
            steps: Vec::new(),
            warning: Some(warning),
            notes: Vec::new(),
            waiting: None,
            provisioned: false,
            retired: false,
            reboot_required: false,
            allocated: Vec::new(),
            actions: Vec::new(),
        });
    }
    vms.sort_by_key(|v| v.netbox_id);
    let records: Vec<NbVm> = records.into_values().collect();
    let overrides = if settings.dry_run {
        report::sync_overrides(
            &observed.records,
            &observed.guests,
            mark,
            settings.follow_resources,
        )
    } else {
        report::sync_overrides(&records, &guests, mark, settings.follow_resources)
    };
    ProvisionOutcome {
        report: ProvisionReport {
            dry_run: settings.dry_run,
            selected,
            vms,
            orphans: report::orphans(&records, &guests, mark),
            field_problems: observed.field_problems,
            failure: None,
        },
        overrides,
        created,
        destroyed,
        fingerprint: None,
    }
}
