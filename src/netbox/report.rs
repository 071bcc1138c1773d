//! The sync report: per kind counts, request counts, errors, collisions and the plan. It is
//! part of the stable `sync --output json` contract (docs/sync-json.md).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::crd::SyncSummary;

/// At most this many plan entries are kept (the counts are always complete).
pub const MAX_PLAN_ENTRIES: usize = 20_000;

/// Counts for one kind of NetBox object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindCounts {
    /// Created (or to be created, in dry-run).
    pub created: u64,
    /// Updated (only changed fields sent).
    pub updated: u64,
    /// Already right: nothing sent.
    pub unchanged: u64,
    /// Deleted.
    pub deleted: u64,
    /// Marked stale (pruning grace period running).
    pub stale: u64,
    /// Failed.
    pub failed: u64,
    /// Owned but gone from Proxmox, kept because pruning is off or the read was incomplete.
    pub orphaned: u64,
}

/// One object that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectError {
    /// NetBox kind (`virtualization.virtualmachine`).
    pub kind: String,
    /// The object (`vm 101 (web01)`).
    pub object: String,
    /// Why (NetBox's message for a 400).
    pub message: String,
}

/// An unowned NetBox object in the way, left untouched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collision {
    /// NetBox kind.
    pub kind: String,
    /// The object the operator wanted to write.
    pub object: String,
    /// NetBox id of the object in the way, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_id: Option<u64>,
    /// Detail.
    pub message: String,
}

/// One planned (or, outside dry-run, performed) change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// NetBox kind.
    pub kind: String,
    /// The object.
    pub object: String,
    /// `create`, `update`, `markStale`, `delete`, `adopt`.
    pub action: String,
    /// Fields set or changed.
    pub fields: Vec<String>,
    /// Why the change is made (`not in NetBox`, `changed in Proxmox`, `gone from Proxmox`...).
    pub reason: String,
    /// In dry-run, the values that would be sent (ids of objects to be created are
    /// placeholders from 2^48 up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Map<String, serde_json::Value>>,
}

impl PlannedChange {
    /// A change of `object` of `kind`, made for `reason`.
    pub fn new(kind: &str, object: &str, action: &str, reason: &str, fields: Vec<String>) -> Self {
        PlannedChange {
            kind: kind.into(),
            object: object.into(),
            action: action.into(),
            fields,
            reason: reason.into(),
            values: None,
        }
    }
}

/// The actions of a [`PlannedChange`].
pub mod actions {
    /// A new object.
    pub const CREATE: &str = "create";
    /// Changed fields of an owned object.
    pub const UPDATE: &str = "update";
    /// An unowned object taken over (`adoptExisting`).
    pub const ADOPT: &str = "adopt";
    /// An owned object gone from Proxmox, marked stale for the grace period.
    pub const MARK_STALE: &str = "markStale";
    /// An owned object deleted.
    pub const DELETE: &str = "delete";
}

/// Everything one sync did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// True when nothing was written.
    pub dry_run: bool,
    /// Counts per NetBox kind.
    pub kinds: BTreeMap<String, KindCounts>,
    /// NetBox read requests.
    pub read_requests: u64,
    /// NetBox write requests.
    pub write_requests: u64,
    /// Objects that failed, with the reason.
    pub errors: Vec<ObjectError>,
    /// Unowned objects in the way.
    pub collisions: Vec<Collision>,
    /// Changes, in the order they were (or would be) made.
    pub plan: Vec<PlannedChange>,
    /// True when `plan` was cut at [`MAX_PLAN_ENTRIES`].
    pub plan_truncated: bool,
    /// Why pruning was refused (too many owned objects gone at once), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_blocked: Option<String>,
    /// Creates whose answer was lost and whose objects were not found right after: NetBox
    /// may still be executing them (the next sync waits before it reads).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_creates: u64,
    /// Owned objects deleted because another owned object had the same identity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates_removed: u64,
}

impl SyncReport {
    /// The counts of one kind, created on first use.
    pub fn counts(&mut self, kind: &str) -> &mut KindCounts {
        self.kinds.entry(kind.to_string()).or_default()
    }

    /// Records a change in the plan.
    pub fn plan(&mut self, change: PlannedChange) {
        if self.plan.len() >= MAX_PLAN_ENTRIES {
            self.plan_truncated = true;
            return;
        }
        self.plan.push(change);
    }

    /// Records a failed object.
    pub fn error(&mut self, kind: &str, object: &str, message: impl Into<String>) {
        self.counts(kind).failed += 1;
        self.errors.push(ObjectError {
            kind: kind.into(),
            object: object.into(),
            message: message.into(),
        });
    }

    /// Totals for the ProxmoxCluster status.
    pub fn summary(&self) -> SyncSummary {
        let mut s = SyncSummary {
            mode: if self.dry_run { "DryRun" } else { "Sync" }.into(),
            ..Default::default()
        };
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for c in self.kinds.values() {
            s.created += int(c.created);
            s.updated += int(c.updated);
            s.unchanged += int(c.unchanged);
            s.deleted += int(c.deleted);
            s.stale += int(c.stale);
            s.failed += int(c.failed);
        }
        s.collisions = int(self.collisions.len() as u64);
        s.prune_blocked = self.prune_blocked.clone();
        s.read_requests = int(self.read_requests);
        s.write_requests = int(self.write_requests);
        s.errors = self
            .errors
            .iter()
            .take(20)
            .map(|e| format!("{} {}: {}", e.kind, e.object, e.message))
            .collect();
        s
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
