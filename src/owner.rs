//! Which NetBox objects belong to whom: the owner mark the operator writes in the custom
//! field `proxmox_owner` of every object it creates or adopts.
//!
//! A mark is `<installation>/<namespace>/<name>/<pve-cluster>`: the operator installation
//! (by default the UID of the Kubernetes cluster's `kube-system` namespace, so staging and
//! production never share one), the ProxmoxCluster, and the Proxmox cluster it read (its
//! corosync name, or the node's name for a standalone node), because vmids repeat across
//! Proxmox clusters. Two resources, installations or `sync` runs with different marks never
//! read, change or prune each other's objects; an object with another mark that is in the
//! way is reported as a collision.

/// Longest installation id accepted.
pub const MAX_INSTALLATION_ID_LENGTH: usize = 64;

/// The owner of the objects of one ProxmoxCluster in one operator installation, across the
/// Proxmox clusters it may be pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerScope {
    installation: String,
    namespace: String,
    name: String,
}

/// Why an installation id cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "installation id {0:?}: use 1 to {MAX_INSTALLATION_ID_LENGTH} letters, digits, '.', '_' or '-'"
)]
pub struct InvalidInstallationId(pub String);

/// Checks an installation id (`--installation-id`): it becomes part of every mark.
pub fn check_installation_id(id: &str) -> Result<(), InvalidInstallationId> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTALLATION_ID_LENGTH
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(MAX_INSTALLATION_ID_LENGTH).collect();
        Err(InvalidInstallationId(shown))
    }
}

impl OwnerScope {
    /// The scope of the ProxmoxCluster `namespace/name` in `installation`.
    pub fn new(installation: &str, namespace: &str, name: &str) -> Self {
        Self {
            installation: installation.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The mark of the objects synced from the Proxmox cluster `pve_cluster`.
    pub fn mark(&self, pve_cluster: &str) -> String {
        // PVE names have no '/'; a hostile one must not reach into another scope.
        let pve: String = pve_cluster
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        format!("{}{pve}", self.prefix())
    }

    /// What every mark of this scope starts with (for a NetBox `__isw` query).
    pub fn prefix(&self) -> String {
        format!("{}/{}/{}/", self.installation, self.namespace, self.name)
    }

    /// True when `mark` is a mark of this scope, whatever the Proxmox cluster.
    pub fn owns(&self, mark: &str) -> bool {
        mark.strip_prefix(&self.prefix())
            .is_some_and(|pve| !pve.is_empty() && !pve.contains('/'))
    }

    /// The mark written by versions before 0.2 (`namespace/name`), taken over only when
    /// the resource asks for it (`proxmox-netbox.io/adopt-legacy-owner`).
    pub fn legacy_mark(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `namespace/name` of the ProxmoxCluster.
    pub fn resource(&self) -> String {
        self.legacy_mark()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_differ_by_installation_resource_and_proxmox_cluster() {
        let prod = OwnerScope::new("8b1c0e6a", "infra", "lab");
        let staging = OwnerScope::new("f00dcafe", "infra", "lab");
        assert_eq!(prod.mark("pve-a"), "8b1c0e6a/infra/lab/pve-a");
        assert_ne!(prod.mark("pve-a"), staging.mark("pve-a"));
        assert_ne!(prod.mark("pve-a"), prod.mark("pve-b"));
        assert!(prod.owns(&prod.mark("pve-b")));
        assert!(!prod.owns(&staging.mark("pve-a")));
        // A resource whose name extends another's does not own its objects.
        let lab2 = OwnerScope::new("8b1c0e6a", "infra", "lab2");
        assert!(!prod.owns(&lab2.mark("pve-a")));
        assert!(!lab2.owns(&prod.mark("pve-a")));
        // Nor does a mark with more segments, or none after the prefix.
        assert!(!prod.owns("8b1c0e6a/infra/lab/"));
        assert!(!prod.owns("8b1c0e6a/infra/lab/a/b"));
        assert_eq!(prod.mark("evil/../x"), "8b1c0e6a/infra/lab/evil_.._x");
        assert!(prod.owns(&prod.mark("evil/../x")));
        assert_eq!(prod.legacy_mark(), "infra/lab");
        assert!(!prod.owns("infra/lab"));
    }

    #[test]
    fn installation_ids_are_checked() {
        assert!(check_installation_id("3f2a9c1e-6b7d-4e0f-9a8b-1c2d3e4f5a6b").is_ok());
        assert!(check_installation_id("staging.eu-1").is_ok());
        for bad in ["", "a/b", "with space", &"x".repeat(65), "ünïcode"] {
            assert!(check_installation_id(bad).is_err(), "{bad}");
        }
    }
}
