//! The provisioning mark: the line this operator adds to the notes (description) of every
//! VM it clones, in the clone request itself, so the VM carries it from its first moment.
//! It names the NetBox record and the owner, and is how a VM the operator created is told
//! from every other: nothing without it is ever configured or destroyed.

/// Start of the mark line.
pub const MARK_PREFIX: &str = "proxmox-netbox-operator: provisioned";

/// Longest notes text read for a mark (PVE allows 8 KiB of notes).
const MAX_NOTES: usize = 64 * 1024;

/// What a mark says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionMark {
    /// Id of the NetBox virtual machine the VM was created for.
    pub netbox_vm: u64,
    /// The owner mark of the ProxmoxCluster that created it ([`crate::owner`]).
    pub owner: String,
}

impl ProvisionMark {
    /// The mark line.
    pub fn line(&self) -> String {
        format!(
            "{MARK_PREFIX} netbox-vm={} owner={}",
            self.netbox_vm, self.owner
        )
    }

    /// The notes of a new VM: the NetBox description (its first line is what the sync
    /// writes back to NetBox), a blank line, the mark.
    pub fn notes(&self, description: &str) -> String {
        let first = description.lines().next().unwrap_or_default().trim();
        if first.is_empty() {
            format!("\n\n{}", self.line())
        } else {
            format!("{first}\n\n{}", self.line())
        }
    }

    /// The mark in `notes`, if they hold exactly one well-formed mark line. Several mark
    /// lines (someone copied a VM's notes) count as none: such a VM is nobody's.
    pub fn find(notes: &str) -> Option<ProvisionMark> {
        let mut end = notes.len().min(MAX_NOTES);
        while !notes.is_char_boundary(end) {
            end -= 1;
        }
        let notes = &notes[..end];
        let mut found = None;
        for line in notes.lines() {
            let Some(rest) = line.trim().strip_prefix(MARK_PREFIX) else {
                continue;
            };
            if found.is_some() {
                return None;
            }
            found = Some(parse_fields(rest)?);
        }
        found
    }
}

fn parse_fields(rest: &str) -> Option<ProvisionMark> {
    let mut netbox_vm = None;
    let mut owner = None;
    for token in rest.split_whitespace() {
        match token.split_once('=') {
            Some(("netbox-vm", v)) => netbox_vm = v.parse::<u64>().ok(),
            Some(("owner", v)) if !v.is_empty() && v.len() <= 512 => owner = Some(v.to_string()),
            _ => return None,
        }
    }
    Some(ProvisionMark {
        netbox_vm: netbox_vm?,
        owner: owner?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_found_again_in_the_notes_it_makes() {
        let mark = ProvisionMark {
            netbox_vm: 42,
            owner: "uid-1/infra/lab/pve-prod".into(),
        };
        let notes = mark.notes("web frontend\nsecond line ignored");
        assert_eq!(
            notes,
            "web frontend\n\nproxmox-netbox-operator: provisioned netbox-vm=42 owner=uid-1/infra/lab/pve-prod"
        );
        assert_eq!(ProvisionMark::find(&notes), Some(mark.clone()));
        // PVE keeps notes as given; people may add lines around it.
        let edited = format!("changed by hand\n{}\nmore notes", mark.line());
        assert_eq!(ProvisionMark::find(&edited), Some(mark.clone()));
        assert!(mark.notes("").starts_with("\n\n"));
    }

    #[test]
    fn malformed_or_repeated_marks_are_no_mark() {
        let line = "proxmox-netbox-operator: provisioned netbox-vm=7 owner=a/b/c/d";
        for bad in [
            "proxmox-netbox-operator: provisioned netbox-vm=x owner=a/b/c/d",
            "proxmox-netbox-operator: provisioned netbox-vm=7",
            "proxmox-netbox-operator: provisioned owner=a/b/c/d",
            "proxmox-netbox-operator: provisioned netbox-vm=7 owner=a/b/c/d extra=1",
            "proxmox-netbox-operator: provisioned netbox-vm=-1 owner=a",
            "no mark at all",
            "",
        ] {
            assert_eq!(ProvisionMark::find(bad), None, "{bad}");
        }
        assert_eq!(ProvisionMark::find(&format!("{line}\n{line}")), None);
        let huge = "x".repeat(1_000_000) + line;
        assert_eq!(ProvisionMark::find(&huge), None);
    }
}
