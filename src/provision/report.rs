//! What one provisioning pass did, for the status, the Events and the metrics; and what it
//! tells the NetBox sync (pure).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::model::{GuestView, NbVm, Phase, Power};
use super::plan::{Intent, Warning};
use crate::netbox::settings::GuestOverrides;

/// Most VMs, orphans and plan lines listed in the status.
pub const MAX_LISTED: usize = 50;

/// One VM provisioning looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmReport {
    /// NetBox id.
    pub netbox_id: u64,
    /// Name.
    pub name: String,
    /// vmid, once reserved.
    pub vmid: Option<u32>,
    /// Why it was looked at.
    pub intent: Intent,
    /// Where it is now (`Reserved`, `Cloning`, `Configured`, `Running`, `Provisioned`,
    /// `Retiring`, `Retired`, `Skipped`).
    pub phase: &'static str,
    /// Steps done this pass (planned ones in dry-run), in order.
    pub steps: Vec<String>,
    /// Why it stopped, if it did on a problem.
    pub warning: Option<Warning>,
    /// What the record asks that is not done (a disk that cannot be had).
    pub notes: Vec<Warning>,
    /// What it waits for, if something is under way.
    pub waiting: Option<String>,
    /// Handed over to the sync in this pass.
    pub provisioned: bool,
    /// Destroyed in this pass.
    pub retired: bool,
    /// vCPU or memory changes wait for the VM's next start.
    pub reboot_required: bool,
    /// Addresses allocated from prefixes in this pass.
    pub allocated: Vec<String>,
    /// (action, outcome) of every step run, for the metrics.
    #[serde(skip)]
    pub actions: Vec<(&'static str, &'static str)>,
}

impl VmReport {
    /// True when more steps follow in a later pass.
    pub fn in_progress(&self) -> bool {
        self.waiting.is_some()
            || (self.warning.is_some()
                && matches!(
                    self.phase,
                    "Reserved" | "Cloning" | "Configured" | "Running" | "Retiring"
                ))
    }
}

/// A guest with the provisioning mark of this owner that no record claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    /// vmid.
    pub vmid: u32,
    /// Node.
    pub node: String,
    /// Name.
    pub name: String,
    /// The NetBox id its mark names.
    pub netbox_id: u64,
}

/// One provisioning pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProvisionReport {
    /// Dry-run: the steps are planned, not done.
    pub dry_run: bool,
    /// Records selected for creation or retirement.
    pub selected: usize,
    /// The VMs looked at (done ones without a step this pass are left out).
    pub vms: Vec<VmReport>,
    /// Guests nobody claims.
    pub orphans: Vec<Orphan>,
    /// Problems with the provisioning custom fields in NetBox.
    pub field_problems: Vec<String>,
    /// Why provisioning could not run at all, if it could not.
    pub failure: Option<String>,
}

impl ProvisionReport {
    /// True when a VM is still on its way: the next full pass should come soon.
    pub fn in_progress(&self) -> bool {
        self.vms.iter().any(VmReport::in_progress)
    }

    /// VMs with a warning.
    pub fn warnings(&self) -> usize {
        self.vms.iter().filter(|v| v.warning.is_some()).count()
    }

    /// (action, outcome) of every step run, for the metrics.
    pub fn actions(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.vms.iter().flat_map(|v| v.actions.iter().copied())
    }

    /// The vmids of running VMs with changes waiting for their next start.
    pub fn reboot_required(&self) -> Vec<u32> {
        self.vms
            .iter()
            .filter(|v| v.reboot_required)
            .filter_map(|v| v.vmid)
            .collect()
    }
}

/// The phase label of a record and its guest, as the status shows it.
pub fn phase_label(record: &NbVm, guest: Option<&GuestView>, acted: bool) -> &'static str {
    match (record.phase, guest) {
        (Some(Phase::Provisioned), _) => "Provisioned",
        (Some(Phase::Retiring), Some(_)) => "Retiring",
        (Some(Phase::Retiring) | Some(Phase::Retired), None) => "Retired",
        (Some(Phase::Reserved), None) => "Reserved",
        (Some(Phase::Reserved), Some(g)) if g.lock.as_deref() == Some("clone") => "Cloning",
        (Some(Phase::Reserved), Some(g)) if g.power == Power::Running => "Running",
        (Some(Phase::Reserved), Some(_)) => "Configured",
        _ if acted => "Reserved",
        _ => "Skipped",
    }
}

/// Guests with this owner's mark that no record this owner provisioned claims.
pub fn orphans(records: &[NbVm], guests: &BTreeMap<u32, GuestView>, mark: &str) -> Vec<Orphan> {
    let claimed: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.provisioned_by.as_deref() == Some(mark))
        .map(|r| r.id)
        .collect();
    guests
        .values()
        .filter_map(|g| {
            let m = g.mark.as_ref()?;
            (m.owner == mark && !claimed.contains(&m.netbox_vm)).then(|| Orphan {
                vmid: g.vmid,
                node: g.node.clone(),
                name: g.name.clone(),
                netbox_id: m.netbox_vm,
            })
        })
        .collect()
}

/// What the sync is told: guests not handed over yet are left out of it (the vmid a
/// record reserved, and every guest with this owner's mark whose record does not name it as
/// provisioned), VMs being retired are never pruned by it, provisioned VMs keep their role
/// (and with `follow_resources` their resources), and `decommissioning` stays.
pub fn sync_overrides(
    records: &[NbVm],
    guests: &BTreeMap<u32, GuestView>,
    mark: &str,
    follow_resources: bool,
) -> GuestOverrides {
    let ours: Vec<&NbVm> = records
        .iter()
        .filter(|r| r.provisioned_by.as_deref() == Some(mark))
        .collect();
    let handed_over = |vmid: u32| {
        ours.iter().any(|r| {
            matches!(r.phase, Some(Phase::Provisioned | Phase::Retiring)) && r.vmid == Some(vmid)
        })
    };
    let claimed: BTreeSet<u64> = ours.iter().map(|r| r.id).collect();
    let mut out = GuestOverrides {
        keep_decommissioning: true,
        ..Default::default()
    };
    for r in &ours {
        match (r.phase, r.vmid, r.reserved_vmid) {
            (Some(Phase::Provisioned), Some(vmid), _) => {
                out.provisioned.insert(vmid, follow_resources);
            }
            (Some(Phase::Retiring), Some(vmid), _) => {
                out.retiring.insert(vmid);
            }
            (Some(Phase::Reserved), _, Some(vmid)) => {
                out.excluded.insert(vmid);
            }
            _ => {}
        }
    }
    for g in guests.values() {
        if let Some(m) = &g.mark
            && m.owner == mark
            && claimed.contains(&m.netbox_vm)
            && !handed_over(g.vmid)
        {
            out.excluded.insert(g.vmid);
        }
    }
    out
}

/// What the sync is told when provisioning could not look: every guest with this owner's
/// mark is left out for this pass (it may be half-provisioned), and none is pruned.
pub fn overrides_without_records(guests: &BTreeMap<u32, GuestView>, mark: &str) -> GuestOverrides {
    let marked: BTreeSet<u32> = guests
        .values()
        .filter(|g| g.mark.as_ref().is_some_and(|m| m.owner == mark))
        .map(|g| g.vmid)
        .collect();
    GuestOverrides {
        excluded: marked.clone(),
        keep_decommissioning: true,
        provisioned: BTreeMap::new(),
        retiring: marked,
    }
}
