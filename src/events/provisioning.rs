//! The Events of a provisioning pass (pure): one per VM created or retired, one per new
//! warning of a VM, one per new orphan.

use super::{EventSpec, truncate};
use crate::conditions::reasons;
use crate::crd::ProxmoxClusterStatus;
use crate::provision::report::ProvisionReport;

/// The provisioning Events of a pass, compared with the status it started from: warnings
/// and orphans only when they are new, so a VM that stays stuck is one Event, not one per
/// pass.
pub fn provisioning_events(
    previous: Option<&ProxmoxClusterStatus>,
    report: &ProvisionReport,
) -> Vec<EventSpec> {
    let before = previous.and_then(|p| p.provisioning.as_ref());
    let mut out = Vec::new();
    if report.dry_run {
        return out;
    }
    for vm in &report.vms {
        if vm.provisioned {
            let ips = if vm.allocated.is_empty() {
                String::new()
            } else {
                format!(", allocated {}", vm.allocated.join(", "))
            };
            out.push(EventSpec {
                warning: false,
                reason: reasons::VM_PROVISIONED.into(),
                note: truncate(format!(
                    "{} (NetBox {}) created as vm {}{ips}: handed over to the sync",
                    vm.name,
                    vm.netbox_id,
                    vm.vmid.map(|v| v.to_string()).unwrap_or_default()
                )),
            });
        }
        if vm.retired {
            out.push(EventSpec {
                warning: false,
                reason: reasons::VM_RETIRED.into(),
                note: truncate(format!(
                    "vm {} ({}, NetBox {}) destroyed with its disks",
                    vm.vmid.map(|v| v.to_string()).unwrap_or_default(),
                    vm.name,
                    vm.netbox_id
                )),
            });
        }
        let Some(w) = &vm.warning else { continue };
        let seen = before.is_some_and(|b| {
            b.vms.iter().any(|e| {
                i64::try_from(vm.netbox_id).ok() == Some(e.netbox_id)
                    && e.warning.as_ref().is_some_and(|x| x.code == w.code)
            })
        });
        if !seen {
            out.push(EventSpec {
                warning: true,
                reason: reasons::PROVISIONING_WARNINGS.into(),
                note: truncate(format!(
                    "{} (NetBox {}): {}: {}",
                    vm.name, vm.netbox_id, w.code, w.message
                )),
            });
        }
    }
    for o in &report.orphans {
        let seen = before.is_some_and(|b| b.orphans.iter().any(|e| e.vmid == i64::from(o.vmid)));
        if !seen {
            out.push(EventSpec {
                warning: true,
                reason: reasons::PROVISIONING_ORPHAN.into(),
                note: truncate(format!(
                    "vm {} ({}) on {} carries this operator's provisioning mark for NetBox VM {}, which no longer claims it: it is left running and never destroyed; delete it or remove the mark from its notes",
                    o.vmid, o.name, o.node, o.netbox_id
                )),
            });
        }
    }
    if let Some(why) = &report.failure {
        out.push(EventSpec {
            warning: true,
            reason: reasons::PROVISIONING_FAILED.into(),
            note: truncate(why.clone()),
        });
    }
    out
}
