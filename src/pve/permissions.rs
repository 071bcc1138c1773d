//! Permission preflight: which read privileges the token lacks, which write privileges it
//! holds that an inventory reader does not need, and which provisioning privileges a
//! provisioning token lacks. Pure logic over `/access/permissions`.

use std::collections::BTreeSet;

use serde_json::Value;

/// Privileges the reader needs on `/`. `VM.GuestAgent.Audit` (PVE 9) and `VM.Monitor`
/// (PVE 8) are alternatives for reading guest-agent addresses.
pub const REQUIRED: &[&str] = &["Sys.Audit", "VM.Audit", "Datastore.Audit"];
/// Either of these lets the reader query the guest agent.
pub const AGENT_ALTERNATIVES: &[&str] = &["VM.GuestAgent.Audit", "VM.Monitor"];

/// Privileges provisioning needs (PVE 9.1 schema): `VM.Clone` on the template and
/// `VM.Allocate` on the new vmid or its pool (clone), `VM.Config.*` per key written
/// (config: `CPU` for cores/sockets, `Memory`, `Network` for netN, `Cloudinit` (or
/// `Network`) for ipconfigN/ciuser/sshkeys/nameserver/searchdomain, `Options` for
/// tags/onboot/description; resize: `Disk`), `Datastore.AllocateSpace` on every storage a
/// disk is allocated or grown on, `VM.PowerMgmt` (start, shutdown, stop) and `VM.Allocate`
/// again for destroy. `/cluster/nextid` needs none; a task's status and log are open to
/// the token that started it.
pub const PROVISIONING_PRIVILEGES: &[&str] = &[
    "VM.Allocate",
    "VM.Clone",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Cloudinit",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
];

/// Privileges a provisioning role may also hold that are not checked on `/`:
/// `SDN.Use` (PVE 8+ checks it on `/sdn/zones/localnetwork/<bridge>` for every bridge a
/// clone or a `netN` uses; check it there with [`missing_on`]) and `VM.Config.HWType`
/// (real PVE does not need it for cloud-init keys; the fake PVE of the tests does).
/// [`evaluate_allowing`] with these and [`PROVISIONING_PRIVILEGES`] reports none of them
/// as excess.
pub const PROVISIONING_EXTRA_PRIVILEGES: &[&str] = &["SDN.Use", "VM.Config.HWType"];

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
    evaluate_allowing(permissions, &[])
}

/// [`evaluate`], with the write privileges in `allowed` not counted as excess (a token
/// that also provisions: [`PROVISIONING_PRIVILEGES`] and
/// [`PROVISIONING_EXTRA_PRIVILEGES`]).
pub fn evaluate_allowing(permissions: &Value, allowed: &[&str]) -> PermissionReport {
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
            if v.as_i64().unwrap_or(1) != 0 && is_write(p) && !allowed.contains(&p.as_str()) {
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

/// Whether the answer of `/access/permissions` grants `privilege` on `path`. PVE lists
/// the effective privileges of every path that has an ACL entry for the token or user,
/// each with its propagate flag: the entry of `path` itself decides when there is one
/// (flag 0 or 1: a deeper ACL may take privileges away); else the nearest listed parent,
/// whose privilege must propagate (flag not 0).
pub fn holds(permissions: &Value, path: &str, privilege: &str) -> bool {
    holds_at(permissions, path, privilege, false)
}

/// [`holds`]; with `propagated`, the privilege must also reach the paths below `path`.
fn holds_at(permissions: &Value, path: &str, privilege: &str, propagated: bool) -> bool {
    let path = normalise(path);
    let Some(listed) = permissions.as_object() else {
        return false;
    };
    let mut current = path.as_str();
    let mut exact = true;
    loop {
        if let Some(privs) = listed.get(current).and_then(Value::as_object) {
            return match privs.get(privilege) {
                None => false,
                Some(flag) => (exact && !propagated) || flag.as_i64().unwrap_or(1) != 0,
            };
        }
        if current == "/" {
            return false;
        }
        current = match current.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &current[..i],
        };
        exact = false;
    }
}

/// `path` with one leading `/` and no trailing one (`/` stays `/`).
fn normalise(path: &str) -> String {
    let inner: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", inner.join("/"))
}

/// A privilege not held where it is needed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingPrivilege {
    /// ACL path (`/`, `/vms/9000`, `/storage/ceph-vm`).
    pub path: String,
    /// Privilege (`VM.Clone`).
    pub privilege: String,
}

impl std::fmt::Display for MissingPrivilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.privilege, self.path)
    }
}

/// Which of the `(path, privilege)` pairs the answer of `/access/permissions` does not
/// grant, in the order given, without repeats.
pub fn missing_on(permissions: &Value, required: &[(&str, &str)]) -> Vec<MissingPrivilege> {
    let mut out: Vec<MissingPrivilege> = Vec::new();
    for (path, privilege) in required {
        let m = MissingPrivilege {
            path: normalise(path),
            privilege: (*privilege).to_string(),
        };
        if !holds(permissions, path, privilege) && !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// The [`PROVISIONING_PRIVILEGES`] not granted on every one of `paths`, in the order of
/// the constant. With no paths: those not granted on `/` and propagated to everything
/// below it (what a single role on `/` gives). For a least-privilege setup (privileges on
/// `/vms/...`, `/pool/...`, `/storage/...` only), name where each is needed with
/// [`missing_on`].
pub fn missing_provisioning(permissions: &Value, paths: &[&str]) -> Vec<String> {
    PROVISIONING_PRIVILEGES
        .iter()
        .filter(|p| {
            if paths.is_empty() {
                !holds_at(permissions, "/", p, true)
            } else {
                paths.iter().any(|path| !holds(permissions, path, p))
            }
        })
        .map(|p| p.to_string())
        .collect()
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

    fn provisioner() -> Value {
        let mut privs = serde_json::Map::new();
        for p in [
            "Sys.Audit",
            "VM.Audit",
            "Datastore.Audit",
            "VM.GuestAgent.Audit",
        ]
        .iter()
        .chain(PROVISIONING_PRIVILEGES)
        .chain(PROVISIONING_EXTRA_PRIVILEGES)
        {
            privs.insert(p.to_string(), json!(1));
        }
        json!({ "/": privs })
    }

    #[test]
    fn a_provisioning_token_misses_nothing_and_is_not_excess_when_allowed() {
        let perms = provisioner();
        assert!(missing_provisioning(&perms, &[]).is_empty());
        assert!(missing_provisioning(&perms, &["/vms/9000", "/storage/ceph-vm"]).is_empty());
        let allowed: Vec<&str> = PROVISIONING_PRIVILEGES
            .iter()
            .chain(PROVISIONING_EXTRA_PRIVILEGES)
            .copied()
            .collect();
        assert_eq!(
            evaluate_allowing(&perms, &allowed),
            PermissionReport::default()
        );
        // The existing evaluation still calls them excess.
        assert_eq!(evaluate(&perms).excess_write.len(), 12);
        // Only the allowed ones are forgiven.
        let mut more = perms.clone();
        more["/"]["Sys.Modify"] = json!(1);
        assert_eq!(
            evaluate_allowing(&more, &allowed).excess_write,
            vec!["Sys.Modify"]
        );
    }

    #[test]
    fn a_read_token_misses_every_provisioning_privilege() {
        let perms = json!({"/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "VM.GuestAgent.Audit": 1}});
        assert_eq!(missing_provisioning(&perms, &[]), PROVISIONING_PRIVILEGES);
        let perms = json!({"/": {"VM.Clone": 1, "VM.PowerMgmt": 1, "VM.Allocate": 0}});
        let missing = missing_provisioning(&perms, &[]);
        assert!(
            missing.contains(&"VM.Allocate".to_string()),
            "not propagated"
        );
        assert!(!missing.contains(&"VM.Clone".to_string()));
        assert_eq!(missing_provisioning(&json!([]), &[]).len(), 10);
    }

    #[test]
    fn privileges_are_looked_up_on_the_path_or_the_nearest_listed_parent() {
        let perms = json!({
            "/": {"VM.Audit": 1},
            "/vms/9000": {"VM.Audit": 1, "VM.Clone": 0},
            "/vms": {"VM.Audit": 1, "VM.Allocate": 1},
            "/vms/105": {},
            "/storage/ceph-vm": {"Datastore.AllocateSpace": 1},
        });
        assert!(
            holds(&perms, "/vms/9000", "VM.Clone"),
            "non-propagating, exact path"
        );
        assert!(!holds(&perms, "/vms/9000/x", "VM.Clone"));
        assert!(holds(&perms, "/vms/123", "VM.Allocate"), "from /vms");
        assert!(holds(&perms, "vms/123/", "VM.Allocate"), "path normalised");
        assert!(
            !holds(&perms, "/vms/9000", "VM.Allocate"),
            "/vms/9000 decides"
        );
        assert!(!holds(&perms, "/vms/105", "VM.Audit"), "taken away deeper");
        assert!(holds(&perms, "/storage/ceph-vm", "Datastore.AllocateSpace"));
        assert!(!holds(
            &perms,
            "/storage/local-lvm",
            "Datastore.AllocateSpace"
        ));
        assert!(!holds(&perms, "/", "VM.Allocate"));
        let missing = missing_on(
            &perms,
            &[
                ("/vms/9000", "VM.Clone"),
                ("/vms/130", "VM.Allocate"),
                ("/storage/ceph-vm", "Datastore.AllocateSpace"),
                ("/storage/local-lvm/", "Datastore.AllocateSpace"),
                ("/sdn/zones/localnetwork/vmbr0", "SDN.Use"),
                ("/storage/local-lvm", "Datastore.AllocateSpace"),
            ],
        );
        assert_eq!(
            missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "Datastore.AllocateSpace on /storage/local-lvm",
                "SDN.Use on /sdn/zones/localnetwork/vmbr0"
            ]
        );
        let on_123 = missing_provisioning(&perms, &["/vms/123"]);
        assert_eq!(on_123.len(), 9);
        assert!(!on_123.contains(&"VM.Allocate".to_string()));
        // Missing on one of the paths is missing.
        let on_both = missing_provisioning(&perms, &["/vms/9000", "/vms/123"]);
        assert_eq!(on_both, PROVISIONING_PRIVILEGES);
    }
}
