//! The provisioning part of the status (pure): `status.provisioning` and the conditions
//! `Provisioned` and `RebootRequired`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::conditions::{reasons, types};
use crate::crd::{
    ProvisionedVmEntry, ProvisioningCounts, ProvisioningOrphanEntry, ProvisioningStatus,
    ProvisioningWarning,
};
use crate::provision::report::{MAX_LISTED, ProvisionReport};

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `status.provisioning` of a pass's report.
pub fn provisioning_status(r: &ProvisionReport) -> ProvisioningStatus {
    let plan: Vec<String> = if r.dry_run {
        r.vms
            .iter()
            .flat_map(|v| {
                v.steps
                    .iter()
                    .map(move |s| format!("{} (NetBox {}): {s}", v.name, v.netbox_id))
            })
            .take(MAX_LISTED)
            .collect()
    } else {
        Vec::new()
    };
    ProvisioningStatus {
        mode: if r.dry_run { "DryRun" } else { "Provision" }.into(),
        counts: ProvisioningCounts {
            selected: count(r.selected),
            provisioned: count(r.vms.iter().filter(|v| v.provisioned).count()),
            retired: count(r.vms.iter().filter(|v| v.retired).count()),
            in_progress: count(r.vms.iter().filter(|v| v.in_progress()).count()),
            warnings: count(r.warnings()),
            orphans: count(r.orphans.len()),
        },
        vms: r
            .vms
            .iter()
            .take(MAX_LISTED)
            .map(|v| ProvisionedVmEntry {
                netbox_id: i64::try_from(v.netbox_id).unwrap_or(i64::MAX),
                name: v.name.clone(),
                vmid: v.vmid.map(i64::from),
                phase: v.phase.into(),
                last_step: v
                    .waiting
                    .clone()
                    .map(|w| format!("waiting: {w}"))
                    .or_else(|| v.steps.last().cloned()),
                warning: v
                    .warning
                    .as_ref()
                    .or(v.notes.first())
                    .map(|w| ProvisioningWarning {
                        code: w.code.into(),
                        message: w.message.clone(),
                    }),
            })
            .collect(),
        orphans: r
            .orphans
            .iter()
            .take(MAX_LISTED)
            .map(|o| ProvisioningOrphanEntry {
                vmid: i64::from(o.vmid),
                node: o.node.clone(),
                name: o.name.clone(),
                netbox_id: i64::try_from(o.netbox_id).unwrap_or(i64::MAX),
            })
            .collect(),
        plan,
    }
}

/// The `Provisioned` and `RebootRequired` conditions of a pass's report, as
/// `(type, status, reason, message)`.
pub fn provisioning_conditions(
    r: &ProvisionReport,
) -> Vec<(&'static str, bool, &'static str, String)> {
    let in_progress = r.vms.iter().filter(|v| v.in_progress()).count();
    let warned: Vec<String> = r
        .vms
        .iter()
        .filter_map(|v| {
            v.warning
                .as_ref()
                .map(|w| format!("{} ({})", v.name, w.code))
        })
        .collect();
    let provisioned = if let Some(why) = &r.failure {
        (false, reasons::PROVISIONING_FAILED, why.clone())
    } else if r.dry_run {
        let steps: usize = r.vms.iter().map(|v| v.steps.len()).sum();
        (
            true,
            reasons::DRY_RUN,
            format!(
                "dry-run: {steps} step(s) planned for {} VM(s), nothing changed (status.provisioning.plan)",
                r.vms.len()
            ),
        )
    } else if !warned.is_empty() {
        let shown: Vec<&str> = warned.iter().take(5).map(String::as_str).collect();
        (
            false,
            reasons::PROVISIONING_WARNINGS,
            format!(
                "{} VM(s) with a warning (status.provisioning.vms): {}",
                warned.len(),
                shown.join(", ")
            ),
        )
    } else if in_progress > 0 {
        (
            false,
            reasons::PROVISIONING_IN_PROGRESS,
            format!("{in_progress} VM(s) on their way; looked at again shortly"),
        )
    } else {
        (
            true,
            reasons::PROVISIONED,
            format!(
                "{} selected, {} provisioned and {} retired in the last pass",
                r.selected,
                r.vms.iter().filter(|v| v.provisioned).count(),
                r.vms.iter().filter(|v| v.retired).count()
            ),
        )
    };
    let pending = r.reboot_required();
    let reboot = if pending.is_empty() {
        (
            false,
            reasons::NO_PENDING_CHANGES,
            "no provisioned VM waits for a reboot".to_string(),
        )
    } else {
        let ids: Vec<String> = pending.iter().take(20).map(u32::to_string).collect();
        (
            true,
            reasons::PENDING_CHANGES,
            format!(
                "vCPU or memory changes of {} running VM(s) wait for their next start: {}",
                pending.len(),
                ids.join(", ")
            ),
        )
    };
    vec![
        (
            types::PROVISIONED,
            provisioned.0,
            provisioned.1,
            provisioned.2,
        ),
        (types::REBOOT_REQUIRED, reboot.0, reboot.1, reboot.2),
    ]
}

/// True for the condition types this part owns.
pub fn is_provisioning_condition(c: &Condition) -> bool {
    c.type_ == types::PROVISIONED || c.type_ == types::REBOOT_REQUIRED
}
