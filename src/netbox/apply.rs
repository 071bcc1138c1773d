//! Apply: the writes a plan calls for, as bulk requests in batches with bounded requests
//! in flight; a batch NetBox rejects is split until the bad objects fail alone, and
//! creates whose answer was lost are looked up before anything is retried. In dry-run
//! nothing is written: the owned objects are changed in memory as the writes would change
//! them (objects to be created get placeholder ids), so the later stages plan what the
//! live sync would, references to new objects included.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use serde_json::{Map, Value, json};

use super::client::{NetBoxApi, NetBoxError};
use super::kinds::{CF_OWNER, CF_STALE_SINCE, Kind, OwnedObjects, UNASSIGNED_MAC, id_of};
use super::plan::{Adoption, Desired, KindChanges, REASON_CHANGED, REASON_NEW, StagePlan, diff};
use super::prune::{Deletion, PrunePlan, REASON_GONE, StaleMark};
use super::report::{Collision, PlannedChange, SyncReport, actions};
use super::settings::SyncSettings;

/// What NetBox says when an address is taken in the same IP space (the global table with
/// `ENFORCE_GLOBAL_UNIQUE`, or a VRF enforcing unique addresses).
const DUPLICATE_IP: &str = "Duplicate IP address";
/// The remedy given with an address taken in the same IP space.
pub const IP_SPACE_REMEDY: &str = "the address is in use in the same IP space by another Proxmox cluster or a hand-made object; give each Proxmox cluster its own VRF with spec.netbox.vrf";
/// The remedy given with an unowned object in the way.
const OWNER_REMEDY: &str = "an object not managed by this operator is in the way; spec.netbox.adoptExisting takes such objects over";

/// First id handed out for objects a dry-run would create.
const PLACEHOLDER_BASE: u64 = 1 << 48;

/// True for ids of objects that a dry-run would create (they do not exist in NetBox).
pub fn is_placeholder(id: u64) -> bool {
    id > PLACEHOLDER_BASE
}

/// (key, label, body) of one object to write.
pub type WriteItem = (String, String, Value);
/// Per key: the written object, or (label, reason).
type WriteResult = (String, Result<Value, (String, String)>);

/// One sync's writer: the NetBox API, the report, and the owned objects as read and
/// written since.
pub struct Session<'a> {
    /// NetBox.
    pub api: &'a dyn NetBoxApi,
    /// The settings.
    pub settings: &'a SyncSettings,
    /// Nothing is written.
    pub dry_run: bool,
    /// What was done.
    pub report: SyncReport,
    /// Owned objects by kind and key.
    pub owned: OwnedObjects,
    placeholder: u64,
    /// Keys of objects counted in the report under another key this sync (MACs created
    /// unassigned, then assigned by their interface's create), not counted again.
    counted: BTreeMap<Kind, BTreeSet<String>>,
}

impl<'a> Session<'a> {
    /// A session with no owned objects known yet.
    pub fn new(api: &'a dyn NetBoxApi, settings: &'a SyncSettings, dry_run: bool) -> Self {
        Session {
            api,
            settings,
            dry_run,
            report: SyncReport {
                dry_run,
                ..Default::default()
            },
            owned: OwnedObjects::default(),
            placeholder: PLACEHOLDER_BASE,
            counted: BTreeMap::new(),
        }
    }

    /// Starts from known owned objects (placeholders are handed out above their ids).
    pub fn set_owned(&mut self, owned: OwnedObjects) {
        self.placeholder = self.placeholder.max(owned.max_id());
        self.owned = owned;
    }

    /// The id of an object a dry-run would create.
    pub fn next_placeholder(&mut self) -> u64 {
        self.placeholder += 1;
        self.placeholder
    }

    /// Records a change in the report's plan of `values` (in dry-run with the values).
    pub fn record(
        &mut self,
        kind: &str,
        object: &str,
        action: &str,
        reason: &str,
        values: &Map<String, Value>,
    ) {
        let fields = values.keys().cloned().collect();
        self.record_fields(kind, object, action, reason, fields, Some(values));
    }

    /// Records a change of the named fields; in dry-run with `values` when given.
    pub fn record_fields(
        &mut self,
        kind: &str,
        object: &str,
        action: &str,
        reason: &str,
        fields: Vec<String>,
        values: Option<&Map<String, Value>>,
    ) {
        let mut change = PlannedChange::new(kind, object, action, reason, fields);
        if self.dry_run {
            change.values = values.cloned();
        }
        self.report.plan(change);
    }

    /// Takes over the stage's adoptions, reports its collisions, and applies its
    /// desired objects. Returns ids by key.
    pub async fn apply_stage(&mut self, kind: Kind, stage: StagePlan) -> BTreeMap<String, u64> {
        self.take_over(kind, stage.adoptions);
        self.report.collisions.extend(stage.collisions);
        self.apply(kind, stage.desired).await
    }

    /// Counts unowned objects as owned from now on (their marks are written by the
    /// update that follows).
    pub fn take_over(&mut self, kind: Kind, adoptions: Vec<Adoption>) {
        for a in adoptions {
            let mut marks = vec![CF_OWNER.to_string()];
            if kind.carries_owner_tag() {
                marks.push("tags".to_string());
            }
            self.record_fields(kind.name(), &a.label, actions::ADOPT, a.reason, marks, None);
            self.owned.insert(kind, a.key, a.object);
        }
    }

    /// NetBox assigns an unassigned MAC address given as primary MAC in an interface's
    /// create to that interface: the owned MACs are keyed as NetBox now holds them. Those
    /// among `made_earlier` (left unassigned by an earlier sync) count as updated; the
    /// others were counted as created.
    pub fn note_primary_macs_assigned(&mut self, iface_kind: Kind, made_earlier: &BTreeSet<u64>) {
        let unassigned: BTreeMap<u64, String> = self
            .owned
            .of(Kind::MacAddress)
            .iter()
            .filter(|(key, _)| key.starts_with(UNASSIGNED_MAC))
            .filter_map(|(key, mac)| Some((id_of(mac)?, key.clone())))
            .collect();
        if unassigned.is_empty() {
            return;
        }
        let assigned: Vec<(u64, u64)> = self
            .owned
            .of(iface_kind)
            .values()
            .filter_map(|i| Some((id_of(i)?, id_of(&i["primary_mac_address"])?)))
            .filter(|(_, mac)| unassigned.contains_key(mac))
            .collect();
        for (iface, mac) in assigned {
            let Some(old_key) = unassigned.get(&mac) else {
                continue;
            };
            let Some(Value::Object(mut obj)) = self.owned.take(Kind::MacAddress, old_key) else {
                continue;
            };
            obj.insert("assigned_object_type".into(), json!(iface_kind.name()));
            obj.insert("assigned_object_id".into(), json!(iface));
            let obj = Value::Object(obj);
            if let Some(key) = Kind::MacAddress.key_of(&obj) {
                if made_earlier.contains(&mac) {
                    self.report.counts(Kind::MacAddress.name()).updated += 1;
                }
                self.counted
                    .entry(Kind::MacAddress)
                    .or_default()
                    .insert(key.clone());
                self.owned.insert(Kind::MacAddress, key, obj);
            }
        }
    }

    /// Creates or updates `desired` objects of `kind`; returns ids by key. Objects that
    /// failed are reported and missing from the result.
    pub async fn apply(&mut self, kind: Kind, desired: Vec<Desired>) -> BTreeMap<String, u64> {
        let changes = diff(kind, desired, &self.owned);
        let counted = self.counted.get(&kind).map_or(0, |counted| {
            let updated: BTreeSet<&String> =
                changes.updates.iter().map(|u| &u.desired.key).collect();
            changes
                .ids
                .keys()
                .filter(|k| !updated.contains(k) && counted.contains(*k))
                .count() as u64
        });
        self.report.counts(kind.name()).unchanged += changes.unchanged.saturating_sub(counted);
        self.apply_changes(kind, changes).await
    }

    async fn apply_changes(&mut self, kind: Kind, changes: KindChanges) -> BTreeMap<String, u64> {
        let KindChanges {
            creates,
            updates,
            mut ids,
            ..
        } = changes;
        for u in &updates {
            self.record(
                kind.name(),
                &u.desired.label,
                actions::UPDATE,
                REASON_CHANGED,
                &u.changed,
            );
        }
        for d in &creates {
            self.record(
                kind.name(),
                &d.label,
                actions::CREATE,
                REASON_NEW,
                &d.fields,
            );
        }
        if self.dry_run {
            self.report.counts(kind.name()).updated += updates.len() as u64;
            self.report.counts(kind.name()).created += creates.len() as u64;
            for u in updates {
                self.owned.merge(kind, &u.desired.key, u.changed);
            }
            for d in creates {
                let id = self.next_placeholder();
                ids.insert(d.key.clone(), id);
                let mut obj = d.fields;
                obj.insert("id".into(), json!(id));
                self.owned.insert(kind, d.key, Value::Object(obj));
            }
            return ids;
        }
        // Updates: bulk PATCH of changed fields only.
        let patches: Vec<WriteItem> = updates
            .into_iter()
            .map(|u| {
                let mut changed = u.changed;
                changed.insert("id".into(), json!(u.id));
                (u.desired.key, u.desired.label, Value::Object(changed))
            })
            .collect();
        for (key, result) in self.write_batches(kind, patches, false).await {
            match result {
                Ok(obj) => {
                    self.report.counts(kind.name()).updated += 1;
                    self.owned.insert(kind, key, obj);
                }
                Err((label, message)) => {
                    ids.remove(&key);
                    self.report.error(kind.name(), &label, message);
                }
            }
        }
        let bodies: Vec<WriteItem> = creates
            .into_iter()
            .map(|d| (d.key, d.label, Value::Object(d.fields)))
            .collect();
        for (key, result) in self.write_batches(kind, bodies, true).await {
            match result {
                Ok(obj) => {
                    self.report.counts(kind.name()).created += 1;
                    if let Some(id) = id_of(&obj) {
                        ids.insert(key.clone(), id);
                    }
                    self.owned.insert(kind, key, obj);
                }
                Err((label, message)) => self.create_failed(kind, label, message),
            }
        }
        ids
    }

    /// Reports a failed create; an identity taken by an unowned object is a collision too.
    fn create_failed(&mut self, kind: Kind, label: String, message: String) {
        if message.contains(DUPLICATE_IP) || message.contains("already exists") {
            let remedy = if message.contains(DUPLICATE_IP) {
                IP_SPACE_REMEDY
            } else {
                OWNER_REMEDY
            };
            self.report.collisions.push(Collision {
                kind: kind.name().into(),
                object: label.clone(),
                existing_id: None,
                message: format!("{message} ({remedy})"),
            });
        }
        self.report.error(kind.name(), &label, message);
    }

    /// Like [`Session::apply`] for a second pass over objects that already exist (their
    /// references): only updates, and each object counted once over both passes.
    pub async fn apply_refs(&mut self, kind: Kind, desired: Vec<Desired>) {
        let before = self.report.counts(kind.name()).clone();
        let existing: Vec<Desired> = desired
            .into_iter()
            .filter(|d| self.owned.contains(kind, &d.key))
            .collect();
        self.apply(kind, existing).await;
        let after = self.report.counts(kind.name());
        let extra_updates = after.updated - before.updated;
        after.unchanged = before.unchanged;
        // An object updated here that was unchanged in the first pass moves to updated.
        let moved = extra_updates.min(before.unchanged);
        after.updated = before.updated + moved;
        after.unchanged = before.unchanged - moved;
    }

    /// Sends bulk creates or updates in batches, several in flight; a batch NetBox rejects
    /// (400) is split until the bad objects fail alone. Returns per key the written object
    /// or (label, reason).
    pub async fn write_batches(
        &mut self,
        kind: Kind,
        items: Vec<WriteItem>,
        create: bool,
    ) -> Vec<WriteResult> {
        let mut out = Vec::new();
        if items.is_empty() {
            return out;
        }
        let chunks = batches(kind, items, self.settings.batch_size.max(1));
        let api = self.api;
        let send = |chunk: Vec<WriteItem>| async move {
            let bodies: Vec<Value> = chunk.iter().map(|c| c.2.clone()).collect();
            let r = if create {
                api.create(kind.endpoint(), bodies).await
            } else {
                api.update(kind.endpoint(), bodies).await
            };
            (chunk, r)
        };
        let first: Vec<_> = stream::iter(chunks)
            .map(send)
            .buffer_unordered(self.settings.max_in_flight.max(1))
            .collect()
            .await;
        let mut retry: Vec<Vec<WriteItem>> = Vec::new();
        for (chunk, r) in first {
            self.settle(kind, chunk, r, create, &mut out, &mut retry)
                .await;
        }
        while let Some(chunk) = retry.pop() {
            let (chunk, r) = send(chunk).await;
            self.settle(kind, chunk, r, create, &mut out, &mut retry)
                .await;
        }
        out
    }

    /// Sorts one batch's answer into per-object results; a rejected batch is split for
    /// retry, and a lost answer to creates is looked up by identity.
    async fn settle(
        &mut self,
        kind: Kind,
        chunk: Vec<WriteItem>,
        result: Result<Vec<Value>, NetBoxError>,
        create: bool,
        out: &mut Vec<WriteResult>,
        retry: &mut Vec<Vec<WriteItem>>,
    ) {
        match result {
            Ok(objs) if objs.len() == chunk.len() => match_answer(kind, chunk, objs, create, out),
            Ok(_) => {
                for (key, label, _) in chunk {
                    let message = "NetBox answered with a different number of objects";
                    out.push((key, Err((label, message.into()))));
                }
            }
            Err(NetBoxError::Invalid { .. }) if chunk.len() > 1 => {
                let mut a = chunk;
                let b = a.split_off(a.len() / 2);
                retry.push(a);
                retry.push(b);
            }
            Err(NetBoxError::Invalid { message, .. }) => {
                for (key, label, _) in chunk {
                    out.push((key, Err((label, message.clone()))));
                }
            }
            Err(NetBoxError::Transport { message, .. }) if create => {
                self.recover_lost_creates(kind, chunk, &message, out).await;
            }
            Err(e) => {
                for (key, label, _) in chunk {
                    out.push((key, Err((label, e.to_string()))));
                }
            }
        }
    }

    /// The answer to creates was lost: the objects may exist now. They are looked up by
    /// identity before anything is retried, so nothing is created twice.
    async fn recover_lost_creates(
        &mut self,
        kind: Kind,
        chunk: Vec<WriteItem>,
        message: &str,
        out: &mut Vec<WriteResult>,
    ) {
        let q = vec![("cf_proxmox_owner".to_string(), self.settings.owner.clone())];
        let found: BTreeMap<String, Value> = match self.api.list(kind.endpoint(), &q).await {
            Ok(objs) => objs
                .into_iter()
                .filter_map(|o| kind.key_of(&o).map(|k| (k, o)))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let mut missing = Vec::new();
        for item in chunk {
            match found.get(&item.0) {
                Some(obj) => out.push((item.0.clone(), Ok(obj.clone()))),
                None => missing.push(item),
            }
        }
        self.report.lost_creates += missing.len() as u64;
        for (key, label, _) in missing {
            let reason = format!(
                "no answer from NetBox ({message}); not created, will be retried next sync"
            );
            out.push((key, Err((label, reason))));
        }
    }

    /// Deletes objects in bulk, kind by kind in the order given; a bulk delete NetBox
    /// refuses is retried one object at a time so each failure names its object.
    pub async fn delete_many(&mut self, items: Vec<Deletion>) {
        let mut by_kind: Vec<(Kind, Vec<(u64, String)>)> = Vec::new();
        for d in items {
            self.record_fields(
                d.kind.name(),
                &d.label,
                actions::DELETE,
                d.reason,
                Vec::new(),
                None,
            );
            match by_kind.iter_mut().find(|(k, _)| *k == d.kind) {
                Some((_, v)) => v.push((d.id, d.label)),
                None => by_kind.push((d.kind, vec![(d.id, d.label)])),
            }
        }
        for (kind, objs) in by_kind {
            if self.dry_run {
                self.report.counts(kind.name()).deleted += objs.len() as u64;
                self.owned
                    .remove_ids(kind, objs.iter().map(|(id, _)| *id).collect());
                continue;
            }
            for chunk in objs.chunks(self.settings.batch_size.max(1)) {
                let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
                if self.api.delete(kind.endpoint(), ids).await.is_ok() {
                    self.report.counts(kind.name()).deleted += chunk.len() as u64;
                    continue;
                }
                for (id, label) in chunk {
                    match self.api.delete(kind.endpoint(), vec![*id]).await {
                        Ok(()) => self.report.counts(kind.name()).deleted += 1,
                        Err(e) => self.report.error(kind.name(), label, e.to_string()),
                    }
                }
            }
        }
    }

    /// Carries out a prune plan: children deleted, stale marks written, expired devices
    /// and VMs deleted.
    pub async fn apply_prune(&mut self, plan: PrunePlan) {
        for (kind, n) in plan.orphaned {
            self.report.counts(kind.name()).orphaned += n;
        }
        for (kind, n) in plan.still_stale {
            self.report.counts(kind.name()).stale += n;
        }
        if !plan.blocked.is_empty() {
            let mut all: Vec<String> = self.report.prune_blocked.take().into_iter().collect();
            all.extend(plan.blocked);
            self.report.prune_blocked = Some(all.join("; "));
        }
        self.delete_many(plan.child_deletes).await;
        for (kind, marks) in plan.stale_marks {
            self.mark_stale(kind, marks).await;
        }
        self.delete_many(plan.expired).await;
    }

    async fn mark_stale(&mut self, kind: Kind, marks: Vec<StaleMark>) {
        for m in &marks {
            let fields = ["status", "tags", CF_STALE_SINCE]
                .map(String::from)
                .to_vec();
            let values = m.patch.as_object();
            self.record_fields(
                kind.name(),
                &m.label,
                actions::MARK_STALE,
                REASON_GONE,
                fields,
                values,
            );
        }
        if self.dry_run {
            self.report.counts(kind.name()).stale += marks.len() as u64;
            for m in marks {
                self.owned
                    .merge(kind, &m.key, super::kinds::fields(m.patch));
            }
            return;
        }
        let patches = marks
            .into_iter()
            .map(|m| (m.key, m.label, m.patch))
            .collect();
        for (_, result) in self.write_batches(kind, patches, false).await {
            match result {
                Ok(_) => self.report.counts(kind.name()).stale += 1,
                Err((label, message)) => self.report.error(kind.name(), &label, message),
            }
        }
    }
}

/// Matches a bulk answer to the objects sent. NetBox answers bulk updates in its own order
/// (by id), creates in request order: match by id, or by identity, never by position.
fn match_answer(
    kind: Kind,
    chunk: Vec<WriteItem>,
    objs: Vec<Value>,
    create: bool,
    out: &mut Vec<WriteResult>,
) {
    let mut by_match: BTreeMap<String, Value> = BTreeMap::new();
    for obj in objs {
        let m = if create {
            kind.key_of(&obj)
        } else {
            id_of(&obj).map(|id| id.to_string())
        };
        if let Some(m) = m {
            by_match.insert(m, obj);
        }
    }
    for (key, label, body) in chunk {
        let m = if create {
            Some(key.clone())
        } else {
            id_of(&body).map(|id| id.to_string())
        };
        match m.and_then(|m| by_match.remove(&m)) {
            Some(obj) => out.push((key, Ok(obj))),
            None => {
                let message = "NetBox's answer did not include this object";
                out.push((key, Err((label, message.into()))));
            }
        }
    }
}

/// Splits writes into batches of about `size`. The virtual disks of one VM always go in
/// the same batch: NetBox recomputes the VM's total disk size on each disk save, and two
/// batches in flight for one VM would race and leave a total that later fails validation
/// ("must match the aggregate size of assigned virtual disks").
fn batches(kind: Kind, items: Vec<WriteItem>, size: usize) -> Vec<Vec<WriteItem>> {
    let group = |key: &str| -> Option<String> {
        (kind == Kind::VirtualDisk).then(|| key.split('/').next().unwrap_or_default().to_string())
    };
    let mut out: Vec<Vec<WriteItem>> = Vec::new();
    for item in items {
        let same_group = out
            .last()
            .and_then(|b| b.last())
            .is_some_and(|last| group(&last.0).is_some() && group(&last.0) == group(&item.0));
        match out.last_mut() {
            Some(b) if b.len() < size || same_group => b.push(item),
            _ => out.push(vec![item]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vms_disks_never_straddle_two_batches() {
        let item = |key: &str| (key.to_string(), key.to_string(), json!({}));
        let disks: Vec<WriteItem> = [
            "1/scsi0",
            "1/scsi1",
            "2/scsi0",
            "2/scsi1",
            "2/virtio0",
            "3/scsi0",
        ]
        .into_iter()
        .map(item)
        .collect();
        let keys = |b: Vec<Vec<WriteItem>>| -> Vec<Vec<String>> {
            b.into_iter()
                .map(|c| c.into_iter().map(|i| i.0).collect())
                .collect()
        };
        assert_eq!(
            keys(batches(Kind::VirtualDisk, disks.clone(), 3)),
            vec![
                vec!["1/scsi0", "1/scsi1", "2/scsi0", "2/scsi1", "2/virtio0"],
                vec!["3/scsi0"]
            ]
        );
        // Other kinds are cut at the size.
        assert_eq!(
            keys(batches(Kind::VmInterface, disks, 3)),
            vec![
                vec!["1/scsi0", "1/scsi1", "2/scsi0"],
                vec!["2/scsi1", "2/virtio0", "3/scsi0"]
            ]
        );
    }
}
