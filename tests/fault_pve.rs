//! PVE faults at random moments, through the fault proxy in https mode
//! (tests/common/fault_proxy.rs) in front of the fake PVE: each seeded run makes a clean
//! first sync (prune on, grace period 0) through two proxied endpoints, then two syncs while
//! a random 5-20% of the node-scoped reads (guest configs, agent calls, node network,
//! disks, status) are faulted and, by seed, a node goes down mid-read (595), the first
//! endpoint dies mid-read (the reader fails over) or the token loses `VM.Audit` on a pool
//! (its guests left out of PVE's 200 answers). Pruning is on with grace period 0 and no
//! share limit (`maxPercent: 100`), so only the reader's own account of what it could not
//! see keeps anything from being deleted. The checker then asserts that nothing
//! was deleted or marked stale and nothing is missing; a last sync without faults must
//! succeed and a resync must write nothing.
//!
//! `CHAOS_SEEDS` and `CHAOS_GUESTS` set the runs, as in tests/fault_netbox.rs;
//! `scripts/chaos.sh` runs many seeds.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use common::chaos::{Scenario, check, run_sync, seeds, sync_files_via};
use common::fault_proxy::{FaultPlan, Target, start_pve};

/// The operator's PVE request timeout in these runs (delays are drawn past it).
const PVE_TIMEOUT: Duration = Duration::from_secs(4);

/// Deletions and stale marks in a sync's JSON report, over every kind.
fn removals(report: &Value) -> (u64, u64) {
    let kinds = report["netbox"]["kinds"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    kinds.values().fold((0, 0), |(d, s), k| {
        (
            d + k["deleted"].as_u64().unwrap_or(0),
            s + k["stale"].as_u64().unwrap_or(0),
        )
    })
}

/// What else goes wrong in a run, besides the random faults.
#[derive(Debug)]
enum Extra {
    /// Every request for this node answered 595 (the node went down after the guest list).
    NodeDown(String),
    /// The first endpoint resets every request after this many (failover mid-read).
    EndpointDies(u64),
    /// The token lost `VM.Audit` on a pool holding every guest whose vmid is a multiple of
    /// this: PVE leaves them out of its answers (200), and shows the pool's ACL.
    PoolHidden(u64),
    /// Nothing else.
    None,
}

#[tokio::test]
async fn random_pve_read_faults_never_delete_or_mark_stale_and_converge() {
    use rand::{Rng, SeedableRng};
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    let mut failures = Vec::new();
    for seed in seeds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rate = 0.05 + (seed % 16) as f64 / 100.0;
        let plan = |fault_rate| FaultPlan {
            target: Target::PveNodeReads,
            seed,
            fault_rate,
            client_timeout: PVE_TIMEOUT,
            scripted: None,
        };
        let first = start_pve(&pve, plan(rate)).await;
        let second = start_pve(&pve, plan(0.0)).await;
        first.set_enabled(false);
        let tag = format!(
            "pvefault-{seed}-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        );
        let dir = tempfile::tempdir().unwrap();
        sync_files_via(
            &env,
            &pve,
            &[&first.url, &second.url],
            &format!("{}s", PVE_TIMEOUT.as_secs()),
            dir.path(),
            &tag,
        );
        let started = Instant::now();
        let (ok, report) = run_sync(dir.path(), "the clean first sync").await;
        assert!(ok, "seed {seed}: {report}");

        let extra = match seed % 4 {
            0 => Extra::NodeDown(format!("pve{}", rng.random_range(1..=3))),
            1 => Extra::EndpointDies(rng.random_range(10..120)),
            2 => Extra::PoolHidden(rng.random_range(3..=12)),
            _ => Extra::None,
        };
        first.set_enabled(true);
        match &extra {
            Extra::NodeDown(node) => first.set_node_down(Some(node)),
            Extra::EndpointDies(n) => first.die_after(Some(*n)),
            Extra::PoolHidden(every) => first.hide_pool(Some(*every)),
            Extra::None => {}
        }
        match &extra {
            Extra::NodeDown(node) => second.set_node_down(Some(node)),
            Extra::PoolHidden(every) => second.hide_pool(Some(*every)),
            _ => {}
        }
        let (mut deleted, mut stale, mut succeeded) = (0, 0, 0);
        for _ in 0..2 {
            let (ok, report) = run_sync(dir.path(), "a faulty sync").await;
            let (d, s) = removals(&report);
            deleted += d;
            stale += s;
            succeeded += u32::from(ok);
        }
        let after_faults = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let log = first.log();

        first.set_enabled(false);
        first.set_node_down(None);
        first.die_after(None);
        second.set_node_down(None);
        for proxy in [&first, &second] {
            proxy.hide_pool(None);
        }
        let (clean_ok, clean) = run_sync(dir.path(), "the sync after the faults").await;
        let converged = started.elapsed();
        let after_clean = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let (_, resync) = run_sync(dir.path(), "the resync").await;
        let resync_writes = resync["netbox"]["writeRequests"].as_u64();
        let row = format!(
            "seed {seed}: {:.0}% of {} node reads faulted ({} faults), {extra:?}, faulty syncs reported success {succeeded}/2, deletions {deleted}, stale marks {stale}, duplicates {}, missing {}, clean sync {}, resync writes {resync_writes:?}, converged in {:.0} s",
            rate * 100.0,
            log.targeted,
            log.faults.len(),
            after_faults.duplicates.len() + after_clean.duplicates.len(),
            after_faults.missing.len() + after_clean.missing.len(),
            if clean_ok { "ok" } else { "failed" },
            converged.as_secs_f64()
        );
        eprintln!("{row}");
        if deleted != 0
            || stale != 0
            || !after_faults.clean()
            || !after_clean.clean()
            || !clean_ok
            || resync_writes != Some(0)
        {
            let clean: String = clean.to_string().chars().take(2000).collect();
            failures.push(format!(
                "{row}\n  {after_faults:?}\n  {after_clean:?}\n  {clean}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "runs that did not converge cleanly:\n{}",
        failures.join("\n")
    );
}
