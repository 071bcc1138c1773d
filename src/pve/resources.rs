//! One cheap read of the whole cluster: `/cluster/resources`, the guests and nodes with
//! what a change shows in (node, name, power state, template, tags, pool, memory, vCPUs,
//! disk size). A poll of it tells which guests changed since the last one.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{PveApi, PveError};
use super::propstr::{as_bool, as_u64};
use crate::inventory::GuestKind;

/// Most entries one answer may hold (nodes, guests and storages together); a longer answer
/// is refused rather than half-used.
pub const MAX_RESOURCES: usize = 200_000;

/// Longest text field kept from an entry (names, tags); longer ones are cut.
const MAX_TEXT: usize = 1024;

/// A guest as `/cluster/resources` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSummary {
    /// The guest's id.
    pub vmid: u32,
    /// QEMU VM or LXC container.
    pub kind: GuestKind,
    /// The node it runs on.
    pub node: String,
    /// Its name.
    pub name: String,
    /// `running`, `stopped`, ... (`unknown` when its node is offline).
    pub status: String,
    /// A template.
    pub template: bool,
    /// Its tags, as PVE lists them.
    pub tags: String,
    /// Its pool.
    pub pool: String,
    /// Configured memory in bytes.
    pub max_memory: u64,
    /// Configured vCPUs.
    pub max_cpu: u64,
    /// Size of its boot disk in bytes.
    pub max_disk: u64,
}

impl GuestSummary {
    /// The entry in the shape of a node's guest list, for reading the guest's config.
    pub fn list_item(&self) -> Value {
        serde_json::json!({
            "vmid": self.vmid,
            "name": self.name,
            "status": self.status,
            "template": u8::from(self.template),
            "tags": self.tags,
            "pool": self.pool,
        })
    }
}

/// The guests and nodes of one `/cluster/resources` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterResources {
    /// Guests by vmid.
    pub guests: BTreeMap<u32, GuestSummary>,
    /// Nodes by name: `true` when online.
    pub nodes: BTreeMap<String, bool>,
}

/// Why an answer of `/cluster/resources` was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourcesError {
    /// The answer is not a list.
    #[error("/cluster/resources: the answer is not a list")]
    NotAList,
    /// More entries than [`MAX_RESOURCES`].
    #[error("/cluster/resources: {0} entries, more than the {MAX_RESOURCES} allowed")]
    TooMany(usize),
    /// Two guests with one vmid (PVE never lists one twice: the answer is not trusted).
    #[error("/cluster/resources: vmid {0} listed twice")]
    DuplicateVmid(u32),
}

/// Reads and parses `/cluster/resources`.
pub async fn read_resources(api: &dyn PveApi) -> Result<ClusterResources, ReadResourcesError> {
    let v = api.get("/cluster/resources").await?;
    Ok(parse_resources(&v)?)
}

/// A failed poll: the request, or an answer not used.
#[derive(Debug, thiserror::Error)]
pub enum ReadResourcesError {
    /// The request failed.
    #[error(transparent)]
    Request(#[from] PveError),
    /// The answer was not used.
    #[error(transparent)]
    Answer(#[from] ResourcesError),
}

/// Parses an answer of `/cluster/resources`; entries of other types (storage, pools, SDN)
/// and malformed ones are skipped.
pub fn parse_resources(v: &Value) -> Result<ClusterResources, ResourcesError> {
    let items = v.as_array().ok_or(ResourcesError::NotAList)?;
    if items.len() > MAX_RESOURCES {
        return Err(ResourcesError::TooMany(items.len()));
    }
    let mut out = ClusterResources::default();
    for item in items {
        match item["type"].as_str() {
            Some("node") => {
                if let Some(name) = text(&item["node"]).filter(|n| !n.is_empty()) {
                    out.nodes.insert(name, item["status"] == "online");
                }
            }
            Some("qemu") => add_guest(&mut out, GuestKind::Qemu, item)?,
            Some("lxc") => add_guest(&mut out, GuestKind::Lxc, item)?,
            _ => {}
        }
    }
    Ok(out)
}

fn add_guest(
    out: &mut ClusterResources,
    kind: GuestKind,
    item: &Value,
) -> Result<(), ResourcesError> {
    let Some(vmid) = as_u64(&item["vmid"]).and_then(|v| u32::try_from(v).ok()) else {
        return Ok(());
    };
    let Some(node) = text(&item["node"]).filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let guest = GuestSummary {
        vmid,
        kind,
        node,
        name: text(&item["name"]).unwrap_or_default(),
        status: text(&item["status"]).unwrap_or_default(),
        template: as_bool(&item["template"]),
        tags: text(&item["tags"]).unwrap_or_default(),
        pool: text(&item["pool"]).unwrap_or_default(),
        max_memory: as_u64(&item["maxmem"]).unwrap_or(0),
        max_cpu: as_u64(&item["maxcpu"]).unwrap_or(0),
        max_disk: as_u64(&item["maxdisk"]).unwrap_or(0),
    };
    if out.guests.insert(vmid, guest).is_some() {
        return Err(ResourcesError::DuplicateVmid(vmid));
    }
    Ok(())
}

/// A text field, cut to [`MAX_TEXT`] bytes at a character boundary.
fn text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn guests_and_nodes_are_read_and_other_entries_skipped() {
        let v = json!([
            {"type": "node", "node": "pve1", "status": "online"},
            {"type": "node", "node": "pve2", "status": "offline"},
            {"type": "qemu", "vmid": 100, "node": "pve1", "name": "web", "status": "running",
             "maxmem": 2147483648u64, "maxcpu": 2, "maxdisk": 34359738368u64, "tags": "a;b",
             "template": 0},
            {"type": "lxc", "vmid": "101", "node": "pve2", "name": "ct", "status": "unknown"},
            {"type": "storage", "storage": "local", "node": "pve1"},
            {"type": "qemu", "vmid": -1, "node": "pve1"},
            {"type": "qemu", "vmid": 102},
        ]);
        let r = parse_resources(&v).unwrap();
        assert_eq!(r.nodes.len(), 2);
        assert!(r.nodes["pve1"] && !r.nodes["pve2"]);
        assert_eq!(r.guests.len(), 2);
        let web = &r.guests[&100];
        assert_eq!(web.kind, GuestKind::Qemu);
        assert_eq!(web.max_memory, 2 << 30);
        assert_eq!(web.tags, "a;b");
        assert_eq!(r.guests[&101].kind, GuestKind::Lxc);
        assert_eq!(r.guests[&101].status, "unknown");
        assert_eq!(web.list_item()["vmid"], 100);
    }

    #[test]
    fn a_hostile_answer_is_refused_not_half_used() {
        assert_eq!(
            parse_resources(&json!({"data": []})),
            Err(ResourcesError::NotAList)
        );
        let twice = json!([
            {"type": "qemu", "vmid": 100, "node": "pve1"},
            {"type": "lxc", "vmid": 100, "node": "pve2"},
        ]);
        assert_eq!(
            parse_resources(&twice),
            Err(ResourcesError::DuplicateVmid(100))
        );
        let many = Value::Array(vec![json!({"type": "pool"}); MAX_RESOURCES + 1]);
        assert_eq!(
            parse_resources(&many),
            Err(ResourcesError::TooMany(MAX_RESOURCES + 1))
        );
        let long = "é".repeat(2000);
        let r = parse_resources(&json!([{"type": "qemu", "vmid": 1, "node": "n", "name": long}]))
            .unwrap();
        assert!(r.guests[&1].name.len() <= MAX_TEXT);
    }
}
