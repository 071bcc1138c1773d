//! Pure derivation of the Kubernetes Events a reconcile publishes.

mod provisioning;

use crate::conditions::{reasons, types};
use crate::crd::ProxmoxClusterStatus;
use crate::stage_errors::StageFailure;
use crate::status::{NetBoxOutcome, PipelineOutcome, agent_note_in};
use crate::watch::{ChangeSet, PollRecord};

/// Longest Event note; the API server rejects notes over 1 KiB.
const MAX_NOTE: usize = 1000;

/// An Event to publish about the ProxmoxCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// True for `Warning`, false for `Normal`.
    pub warning: bool,
    /// Reason (a condition reason or warning code).
    pub reason: String,
    /// Detail, free of secrets.
    pub note: String,
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn ready_reason(status: Option<&ProxmoxClusterStatus>) -> Option<(&str, &str)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Events for one reconcile: every failure and warning, plus a `Normal` event when the
/// Ready state changes or NetBox was written to.
pub fn events_for(
    previous: Option<&ProxmoxClusterStatus>,
    new: &ProxmoxClusterStatus,
    outcome: &PipelineOutcome,
) -> Vec<EventSpec> {
    let mut out = Vec::new();
    let mut warn = |reason: &str, note: String| {
        out.push(EventSpec {
            warning: true,
            reason: reason.into(),
            note: truncate(note),
        })
    };
    if let Some(err) = &outcome.config_error {
        warn(err.reason(), err.to_string());
    }
    if let Some(err) = &outcome.proxmox_error {
        warn(err.reason(), err.to_string());
    }
    // A targeted pass carries the last full pass's permission warning and discovery: they
    // were published then.
    let targeted = outcome.poll.is_some();
    if let Some(w) = outcome.permission_warning.as_ref().filter(|_| !targeted) {
        warn(w.reason, w.message.clone());
    }
    if !new.read_failures.is_empty() {
        let list: Vec<String> = new
            .read_failures
            .iter()
            .map(|f| format!("{}: {} ({})", f.scope, f.reason, f.message))
            .collect();
        warn(
            reasons::PARTIAL_READ,
            format!(
                "Proxmox read incomplete, nothing in these scopes was pruned: {}",
                list.join("; ")
            ),
        );
    }
    for node in outcome.discovery.iter().flatten().filter(|_| !targeted) {
        if let Some(w) = &node.warning {
            warn(&w.code, format!("node {}: {}", node.node, w.message));
        }
    }
    match &outcome.netbox {
        NetBoxOutcome::Failed(err) => warn(err.reason(), err.to_string()),
        NetBoxOutcome::Done(s) => {
            if s.failed > 0 {
                warn(
                    reasons::PARTIAL_SYNC,
                    format!(
                        "{} NetBox object(s) failed: {}",
                        s.failed,
                        s.errors.join("; ")
                    ),
                );
            }
            if let Some(why) = &s.prune_blocked {
                warn(reasons::PRUNE_BLOCKED, format!("pruning refused: {why}"));
            }
            if s.collisions > 0 {
                warn(
                    reasons::COLLISIONS,
                    format!(
                        "{} unowned NetBox object(s) are in the way and were left untouched",
                        s.collisions
                    ),
                );
            }
        }
        NetBoxOutcome::NotRun | NetBoxOutcome::InProgress => {}
    }
    if outcome.inventory.is_some() {
        let note = |s: Option<&ProxmoxClusterStatus>| {
            s?.conditions
                .iter()
                .find(|c| c.type_ == types::PROXMOX_REACHABLE)
                .and_then(|c| agent_note_in(&c.message))
                .map(str::to_string)
        };
        match (note(previous), note(Some(new))) {
            (before, Some(after)) if before.as_ref() != Some(&after) => {
                warn(reasons::GUEST_AGENT_NOT_RUNNING, after)
            }
            (Some(_), None) => out.push(EventSpec {
                warning: false,
                reason: reasons::GUEST_AGENTS_RUNNING.into(),
                note: "the QEMU guest agent answers on every running guest that has it enabled"
                    .into(),
            }),
            _ => {}
        }
    }
    if let Some(report) = &outcome.provisioning {
        out.extend(provisioning::provisioning_events(previous, report));
    }
    let before = ready_reason(previous);
    let after = ready_reason(Some(new));
    let wrote = matches!(&outcome.netbox, NetBoxOutcome::Done(s) if !outcome.dry_run && s.created + s.updated + s.deleted + s.stale > 0);
    if let (Some(PollRecord::Changed(changes)), true) = (&outcome.poll, wrote) {
        out.push(EventSpec {
            warning: false,
            reason: reasons::CHANGES_SYNCED.into(),
            note: truncate(changes_note(changes, new)),
        });
        return out;
    }
    if let Some(("True", reason)) = after
        && (before.map(|b| b.0) != Some("True") || wrote)
    {
        let note = new
            .conditions
            .iter()
            .find(|c| c.type_ == types::NETBOX_SYNCED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        out.push(EventSpec {
            warning: false,
            reason: reason.into(),
            note: truncate(note),
        });
    }
    out
}

/// The note of a [`reasons::CHANGES_SYNCED`] Event: the guests and what happened to them,
/// then the NetBox counts.
fn changes_note(changes: &ChangeSet, new: &ProxmoxClusterStatus) -> String {
    let guests: Vec<String> = changes
        .iter()
        .take(20)
        .map(|(vmid, c)| format!("{vmid} {}", c.as_str()))
        .collect();
    let more = changes.len().saturating_sub(guests.len());
    let netbox = new
        .conditions
        .iter()
        .find(|c| c.type_ == types::NETBOX_SYNCED)
        .map(|c| c.message.as_str())
        .unwrap_or_default();
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{} guest(s) changed in Proxmox ({}{more}): {netbox}",
        changes.len(),
        guests.join(", ")
    )
}

/// The Event for a change of `spec.sync.suspend`, judged from the previous `Ready`
/// reason: `Suspended` when the sync becomes suspended, `Resumed` when it no longer is.
/// Nothing while the state stays the same.
pub fn suspend_event(
    previous: Option<&ProxmoxClusterStatus>,
    suspended: bool,
) -> Option<EventSpec> {
    let was_suspended = ready_reason(previous).is_some_and(|(_, r)| r == reasons::SUSPENDED);
    match (was_suspended, suspended) {
        (false, true) => Some(EventSpec {
            warning: false,
            reason: reasons::SUSPENDED.into(),
            note: "sync suspended (spec.sync.suspend=true): nothing is read or written".into(),
        }),
        (true, false) => Some(EventSpec {
            warning: false,
            reason: reasons::RESUMED.into(),
            note: "sync resumed (spec.sync.suspend=false)".into(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::PermissionWarning;
    use crate::crd::SyncSummary;
    use crate::status::build_status;
    use chrono::TimeZone;

    fn done(created: i64, failed: i64) -> PipelineOutcome {
        PipelineOutcome {
            inventory: Some(crate::status::tests_support::complete_inventory()),
            netbox: NetBoxOutcome::Done(SyncSummary {
                mode: "Sync".into(),
                created,
                failed,
                errors: if failed > 0 {
                    vec!["vm 101 (web): name too long".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn first_success_emits_one_normal_event_and_quiet_resync_none() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let first = done(5, 0);
        let s1 = build_status(Some(1), None, &first, now);
        let ev = events_for(None, &s1, &first);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(!ev[0].warning);
        assert_eq!(ev[0].reason, reasons::SYNCED);

        let quiet = done(0, 0);
        let s2 = build_status(Some(1), Some(&s1), &quiet, now);
        assert!(events_for(Some(&s1), &s2, &quiet).is_empty());
    }

    #[test]
    fn failures_become_warning_events_with_their_reason() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut o = done(0, 1);
        o.permission_warning = Some(PermissionWarning {
            reason: reasons::MISSING_PRIVILEGES,
            message: "token lacks VM.Audit on /".into(),
        });
        let s = build_status(Some(1), None, &o, now);
        let events = events_for(None, &s, &o);
        let reasons_seen: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert!(
            reasons_seen.contains(&reasons::MISSING_PRIVILEGES),
            "{reasons_seen:?}"
        );
        assert!(
            reasons_seen.contains(&reasons::PARTIAL_SYNC),
            "{reasons_seen:?}"
        );
    }

    fn with_agent_down(vmids: &[u32]) -> PipelineOutcome {
        use crate::inventory::{ReadFailure, ReadOutcome, ReadScope};
        let mut o = done(0, 0);
        let inv = o.inventory.as_mut().unwrap();
        for id in vmids {
            inv.completeness.record(
                ReadScope::GuestAddresses(*id),
                ReadOutcome::NotApplicable {
                    reason: ReadFailure::AgentNotRunning,
                    message: format!("QEMU guest agent of vm {id} is not running"),
                },
            );
        }
        o
    }

    #[test]
    fn guest_agent_events_only_when_the_set_of_guests_changes() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let o1 = with_agent_down(&[101, 102]);
        let s1 = build_status(Some(1), None, &o1, now);
        let ev = events_for(None, &s1, &o1);
        let agent: Vec<&EventSpec> = ev
            .iter()
            .filter(|e| e.reason == reasons::GUEST_AGENT_NOT_RUNNING)
            .collect();
        assert_eq!(agent.len(), 1, "{ev:?}");
        assert!(agent[0].warning);
        assert!(agent[0].note.contains("on 2 guest(s)"), "{}", agent[0].note);
        assert!(agent[0].note.contains("101, 102"), "{}", agent[0].note);

        // Same guests again: no new Event.
        let s2 = build_status(Some(1), Some(&s1), &o1, now);
        assert!(
            events_for(Some(&s1), &s2, &o1)
                .iter()
                .all(|e| e.reason != reasons::GUEST_AGENT_NOT_RUNNING),
        );

        // One more guest: a new Event with the new count.
        let o3 = with_agent_down(&[101, 102, 103]);
        let s3 = build_status(Some(1), Some(&s2), &o3, now);
        let ev = events_for(Some(&s2), &s3, &o3);
        assert!(
            ev.iter()
                .any(|e| e.reason == reasons::GUEST_AGENT_NOT_RUNNING
                    && e.note.contains("on 3 guest(s)")),
            "{ev:?}"
        );

        // Every agent answers again: one Normal Event.
        let o4 = done(0, 0);
        let s4 = build_status(Some(1), Some(&s3), &o4, now);
        let ev = events_for(Some(&s3), &s4, &o4);
        let back: Vec<&EventSpec> = ev
            .iter()
            .filter(|e| e.reason == reasons::GUEST_AGENTS_RUNNING)
            .collect();
        assert_eq!(back.len(), 1, "{ev:?}");
        assert!(!back[0].warning);
    }

    #[test]
    fn suspend_and_resume_publish_one_event_each_on_change_only() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let running = build_status(Some(1), None, &done(0, 0), now);
        let ev = suspend_event(Some(&running), true).unwrap();
        assert_eq!(ev.reason, reasons::SUSPENDED);
        assert!(!ev.warning);
        assert_eq!(
            suspend_event(None, true).unwrap().reason,
            reasons::SUSPENDED
        );
        let suspended = crate::status::suspended_status(Some(2), Some(&running), now);
        assert_eq!(suspend_event(Some(&suspended), true), None);
        assert_eq!(
            suspend_event(Some(&suspended), false).unwrap().reason,
            reasons::RESUMED
        );
        assert_eq!(suspend_event(Some(&running), false), None);
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(800));
        assert!(s.len() <= MAX_NOTE + '…'.len_utf8());
    }
}
