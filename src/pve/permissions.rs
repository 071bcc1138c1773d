//! Permission preflight: which read privileges the token lacks, and which write privileges
//! it holds that an inventory reader does not need. Pure logic over `/access/permissions`.

use std::collections::BTreeSet;

use serde_json::Value;

/// Privileges the reader needs on `/`. `VM.GuestAgent.Audit` (PVE 9) and `VM.Monitor`
/// (PVE 8) are alternatives for reading guest-agent addresses.
pub const REQUIRED: &[&str] = &["Sys.Audit", "VM.Audit", "Datastore.Audit"];
/// Either of these lets the reader query the guest agent.
pub const AGENT_ALTERNATIVES: &[&str] = &["VM.GuestAgent.Audit", "VM.Monitor"];

/// Result of the preflight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionReport {
    /// Needed privileges the token does not hold on `/`.
    pub missing: Vec<String>,
    /// Privileges the token holds that an inventory reader never needs.
    pub excess_write: Vec<String>,
    /// Paths below `/` where an ACL takes away what reading them needs (`/vms/105`
    /// without `VM.Audit`, `/pool/x` without `VM.Audit`, `/nodes/pve2` without
    /// `Sys.Audit`): PVE silently leaves those guests or nodes out of its answers.
    pub restricted: Vec<String>,
}

impl PermissionReport {
    /// True when the token can see everything an inventory needs, so an absence in its
    /// answers means the object is gone (pruning may act on it).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.restricted.is_empty()
    }
}

/// True for privileges beyond reading: changing something (`Datastore.AllocateSpace`
/// allocates disk space), or access an inventory reader must not have (`VM.Console`,
/// `Sys.Console` are interactive shells, `Sys.Syslog` reads logs).
fn is_write(privilege: &str) -> bool {
    !(privilege.ends_with(".Audit") || privilege == "VM.Monitor")
}

/// Evaluates the answer of `GET /access/permissions` (`{path: {privilege: 1}}`).
pub fn evaluate(permissions: &Value) -> PermissionReport {
    let root: BTreeSet<String> = permissions["/"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_i64().unwrap_or(1) != 0)
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|p| !root.contains(**p))
        .map(|p| p.to_string())
        .collect();
    if !AGENT_ALTERNATIVES.iter().any(|p| root.contains(*p)) {
        missing.push(AGENT_ALTERNATIVES.join(" or "));
    }
    let mut excess: BTreeSet<String> = BTreeSet::new();
    for privs in permissions.as_object().into_iter().flat_map(|m| m.values()) {
        for (p, v) in privs.as_object().into_iter().flatten() {
            if v.as_i64().unwrap_or(1) != 0 && is_write(p) {
                excess.insert(p.clone());
            }
        }
    }
    let restricted = permissions
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(path, privs)| {
            let needed = if path.starts_with("/vms/") || path.starts_with("/pool/") {
                "VM.Audit"
            } else if path.starts_with("/nodes/") {
                "Sys.Audit"
            } else {
                return false;
            };
            privs[needed].as_i64().unwrap_or(0) == 0
        })
        .map(|(path, _)| path.clone())
        .collect();
    PermissionReport {
        missing,
        excess_write: excess.into_iter().collect(),
        restricted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn least_privilege_token_passes_clean() {
        let r = evaluate(
            &json!({"/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.GuestAgent.Audit": 1}}),
        );
        assert_eq!(r, PermissionReport::default());
    }

    #[test]
    fn missing_privileges_are_named() {
        let r = evaluate(&json!({"/": {"VM.Audit": 1}}));
        assert_eq!(
            r.missing,
            vec![
                "Sys.Audit",
                "Datastore.Audit",
                "VM.GuestAgent.Audit or VM.Monitor"
            ]
        );
        // PVE 8 names: VM.Monitor is enough for the agent.
        let r = evaluate(
            &json!({"/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.Monitor": 1}}),
        );
        assert!(r.missing.is_empty());
    }

    #[test]
    fn acls_hiding_guests_or_nodes_make_the_preflight_unclean() {
        let full =
            json!({"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.GuestAgent.Audit": 1});
        let r = evaluate(&json!({
            "/": full,
            "/vms/105": {"Sys.Audit": 1},
            "/pool/secret": {},
            "/nodes/pve2": {"VM.Audit": 1},
            "/vms/100": full,
            "/storage/local": {"Datastore.Audit": 1}
        }));
        assert!(r.missing.is_empty());
        assert_eq!(
            r.restricted,
            vec!["/nodes/pve2", "/pool/secret", "/vms/105"]
        );
        assert!(!r.is_clean());
        assert!(evaluate(&json!({"/": full, "/vms/100": full})).is_clean());
    }

    #[test]
    fn write_privileges_anywhere_are_reported_as_excess() {
        let r = evaluate(&json!({
            "/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.GuestAgent.Audit": 1, "Sys.Modify": 1},
            "/vms/100": {"VM.PowerMgmt": 1, "VM.Config.Disk": 1}
        }));
        assert_eq!(
            r.excess_write,
            vec!["Sys.Modify", "VM.Config.Disk", "VM.PowerMgmt"]
        );
    }

    #[test]
    fn space_allocation_and_consoles_are_not_reading() {
        let r = evaluate(&json!({
            "/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.Monitor": 1,
                  "Pool.Audit": 1, "SDN.Audit": 1, "Mapping.Audit": 1},
            "/storage/local": {"Datastore.AllocateSpace": 1},
            "/vms/100": {"VM.Console": 1, "Sys.Console": 0}
        }));
        assert!(r.missing.is_empty());
        assert_eq!(
            r.excess_write,
            vec!["Datastore.AllocateSpace", "VM.Console"]
        );
    }
}
