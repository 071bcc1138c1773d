//! NetBox faults at random moments, through the fault proxy (tests/common/fault_proxy.rs):
//! each seeded run makes a few syncs of the demo topology through the operator's NetBox
//! stage (`LiveWriter`: the settle wait, the engine, the lost-answer recovery and the
//! removal of owned duplicates) while a random 5-20% of the writes are faulted, then one
//! sync without faults, and checks NetBox against the topology: no duplicate and no missing
//! object by the operator's identity, and a resync with zero writes.
//!
//! Two more scenarios kill, at a random moment of a first sync, the `sync` process or the
//! NetBox server (SIGKILL; NetBox is started again), then sync until a sync succeeds, and
//! check the same. The NetBox kill runs alone; the other tests of this file share NetBox.
//!
//! `CHAOS_SEEDS` (comma-separated, default `1,2`), `CHAOS_FAULTY_SYNCS` (default 2) and
//! `CHAOS_GUESTS` (guests of the generated 3-node topology, default 20) set the runs;
//! `scripts/chaos.sh` runs many seeds and prints the rows of docs/reliability.md.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;

use common::chaos::{
    Rest, Scenario, check, cluster, env_number, run_sync, seeds, sync_command, sync_files,
    sync_once, wait_for,
};
use common::fault_proxy::{Fault, FaultPlan, Target, start};
use common::harness::{FakePve, HarnessEnv, checking_http_client, read_fake_pve};
use proxmox_netbox_operator::config::resolve;
use proxmox_netbox_operator::crd::ProxmoxCluster;
use proxmox_netbox_operator::inventory::Inventory;
use proxmox_netbox_operator::net::guard::EndpointGuard;
use proxmox_netbox_operator::owner::OwnerScope;
use proxmox_netbox_operator::pipeline::live::LiveWriter;
use proxmox_netbox_operator::secrets::DirSecrets;

/// Held shared by the tests of this file, exclusively by the one that kills NetBox.
static NETBOX_SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The client's NetBox request timeout in these runs (short, so delays pass it quickly).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn random_netbox_write_faults_leave_no_duplicate_and_nothing_missing() {
    let _shared = NETBOX_SERVER.read().await;
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    // The Secrets `sync` would read; the resource is built per run below.
    let secrets_dir = tempfile::tempdir().unwrap();
    sync_files(&env, &pve, secrets_dir.path(), "unused");
    let secrets = DirSecrets::new(secrets_dir.path().join("secrets"));
    let faulty_syncs = env_number("CHAOS_FAULTY_SYNCS", 2);
    let mut failures = Vec::new();
    for seed in seeds() {
        let started = Instant::now();
        let rate = 0.05 + (seed % 16) as f64 / 100.0;
        let proxy = start(
            env.netbox_url.clone(),
            FaultPlan {
                seed,
                target: Target::NetBoxWrites,
                fault_rate: rate,
                client_timeout: CLIENT_TIMEOUT,
                scripted: None,
            },
        )
        .await;
        let tag = format!(
            "chaos-{seed}-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        );
        let cluster = cluster(&proxy.url, &tag, "3s");
        let owner = OwnerScope::new("chaos", "chaos", &tag);
        let config = resolve(&cluster, owner.clone(), &secrets).await.unwrap();
        // The clean syncs after the faults: a timeout a loaded NetBox meets.
        let patient = resolve(&cluster, owner, &secrets).await.map(|mut c| {
            c.netbox.timeout = Duration::from_secs(60);
            c
        });
        let patient = patient.unwrap();
        let writer = LiveWriter {
            endpoint_guard: EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
            settle: Default::default(),
            metrics: None,
        };
        let mut deleted = 0;
        for _ in 0..faulty_syncs {
            if let Ok(r) = sync_once(&writer, &config, &inv).await {
                deleted += r.summary.deleted;
            }
        }
        let log = proxy.log();
        proxy.set_enabled(false);
        let clean = sync_once(&writer, &patient, &inv).await;
        let converged = started.elapsed();
        let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let resync = sync_once(&writer, &patient, &inv)
            .await
            .map(|r| r.summary.write_requests);
        let row = format!(
            "seed {seed}: {:.0}% of {} writes faulted ({} faults: {}), duplicates {}, missing {}, deletions {deleted}, clean sync {}, resync writes {:?}, converged in {:.0} s",
            rate * 100.0,
            log.targeted,
            log.faults.len(),
            fault_kinds(&log.faults),
            findings.duplicates.len(),
            findings.missing.len(),
            if clean.is_ok() { "ok" } else { "failed" },
            resync,
            converged.as_secs_f64()
        );
        eprintln!("{row}");
        if !findings.clean() || clean.is_err() || resync != Ok(0) || deleted != 0 {
            failures.push(format!("{row}\n  {findings:?}\n  clean: {clean:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "runs that did not converge cleanly:\n{}",
        failures.join("\n")
    );
}

fn fault_kinds(faults: &[(String, common::fault_proxy::Fault)]) -> String {
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for (_, f) in faults {
        let name = format!("{f:?}");
        let name = name.split('(').next().unwrap_or_default().to_string();
        *kinds.entry(name).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What is killed in the middle of a sync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The `sync` process.
    Operator,
    /// NetBox's server (gunicorn master and workers), started again after a pause.
    NetBox,
}

/// Which sync is interrupted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// The first sync of a new resource.
    FirstSync,
    /// A resync after Proxmox changed: guests added, changed and removed (prune on,
    /// grace 0).
    ResyncWithChanges,
}

/// Runs `scripts/harness/netbox.sh` with `args`; the test fails when it fails.
fn netbox_script(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/harness/netbox.sh");
    let ok = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "netbox.sh {args:?} failed");
}

async fn kill_mid_sync(victim: Victim, moment: Moment) {
    use rand::{Rng, SeedableRng};
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    // The same Proxmox cluster after a change: 4 more guests, the memory of a quarter
    // changed, 2 of 24 gone.
    let changed = (moment == Moment::ResyncWithChanges).then(|| {
        let guests = env_number("CHAOS_GUESTS", 20);
        let spec = format!(
            "nodes=3,guests={},name={}",
            guests + 4,
            inv.pve_identity().unwrap()
        );
        FakePve::start(
            &env,
            &[
                "--generate",
                &spec,
                "--mutate-percent",
                "25",
                "--remove-percent",
                "8",
            ],
        )
    });
    let (pve, inv) = match changed {
        Some(after) => {
            let inv_after = read_fake_pve(&after).await;
            assert_eq!(inv_after.pve_identity(), inv.pve_identity());
            ((pve, Some(after)), inv_after)
        }
        None => ((pve, None), inv),
    };
    let what = match (victim, moment) {
        (Victim::Operator, Moment::FirstSync) => "sync process",
        (Victim::Operator, Moment::ResyncWithChanges) => "resync process",
        (Victim::NetBox, _) => "NetBox server",
    };
    let mut failures = Vec::new();
    for seed in seeds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let tag = format!(
            "kill-{seed}-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        );
        sync_files(&env, &pve.0, dir.path(), &tag);
        if let Some(after) = &pve.1 {
            let (ok, report) = run_sync(dir.path(), "the sync before the change").await;
            assert!(ok, "{report}");
            sync_files(&env, after, dir.path(), &tag);
        }
        let started = Instant::now();
        // Somewhere in the sync (a first sync of 20-30 guests takes 10-20 s, a resync with
        // these changes 3-5 s).
        let kill_after = Duration::from_millis(match moment {
            Moment::FirstSync => rng.random_range(1000..12000),
            Moment::ResyncWithChanges => rng.random_range(200..4000),
        });
        let mut first = sync_command(dir.path(), "first.json").spawn().unwrap();
        tokio::time::sleep(kill_after).await;
        let killed = first.try_wait().unwrap().is_none();
        match victim {
            Victim::Operator => {
                let _ = first.start_kill();
            }
            Victim::NetBox => {
                netbox_script(&["kill-gunicorn"]);
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                netbox_script(&["restart-gunicorn"]);
            }
        }
        wait_for(&mut first, "the first sync").await;
        // Then syncs until one succeeds (at most 4).
        let mut syncs = 0;
        let (converged, last) = loop {
            syncs += 1;
            let (ok, report) = run_sync(dir.path(), "a converging sync").await;
            if ok || syncs == 4 {
                let text: String = report.to_string().chars().take(2000).collect();
                break (ok, text);
            }
        };
        let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
        let (_, resync) = run_sync(dir.path(), "the resync").await;
        let resync_writes = resync["netbox"]["writeRequests"].as_u64();
        let row = format!(
            "seed {seed}: {what} killed after {:.1} s ({}), {syncs} sync(s) to converge, duplicates {}, missing {}, resync writes {:?}, converged in {:.0} s",
            kill_after.as_secs_f64(),
            if killed {
                "mid-sync"
            } else {
                "sync already done"
            },
            findings.duplicates.len(),
            findings.missing.len(),
            resync_writes,
            started.elapsed().as_secs_f64()
        );
        eprintln!("{row}");
        if !converged || !findings.clean() || resync_writes != Some(0) {
            failures.push(format!("{row}\n  {findings:?}\n  last: {last}"));
        }
    }
    assert!(
        failures.is_empty(),
        "runs that did not converge cleanly:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_sync_killed_at_a_random_moment_is_finished_by_the_next_without_duplicates() {
    let _shared = NETBOX_SERVER.read().await;
    kill_mid_sync(Victim::Operator, Moment::FirstSync).await;
}

#[tokio::test]
async fn a_resync_with_changes_killed_at_a_random_moment_is_finished_by_the_next() {
    let _shared = NETBOX_SERVER.read().await;
    kill_mid_sync(Victim::Operator, Moment::ResyncWithChanges).await;
}

#[tokio::test]
async fn netbox_killed_at_a_random_moment_of_a_sync_leaves_no_duplicate() {
    let _alone = NETBOX_SERVER.write().await;
    kill_mid_sync(Victim::NetBox, Moment::FirstSync).await;
}

#[tokio::test]
async fn a_create_netbox_executes_after_its_client_gave_up_is_waited_for_not_repeated() {
    let _shared = NETBOX_SERVER.read().await;
    let Scenario {
        env,
        pve,
        inv,
        rest,
    } = Scenario::start().await;
    // The first bulk create of VMs: the client gets a reset at once, NetBox gets the
    // request 12 s later (and commits it after that).
    let proxy = start(
        env.netbox_url.clone(),
        FaultPlan {
            seed: 0,
            target: Target::NetBoxWrites,
            fault_rate: 0.0,
            client_timeout: CLIENT_TIMEOUT,
            scripted: Some((
                "POST /api/virtualization/virtual-machines/",
                Fault::LateExecution(Duration::from_secs(12)),
            )),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    sync_files(&env, &pve, dir.path(), "unused");
    let secrets = DirSecrets::new(dir.path().join("secrets"));
    let tag = format!("late-{}-{}", std::process::id(), Utc::now().timestamp());
    let cluster = cluster(&proxy.url, &tag, "20s");
    let config = resolve(&cluster, OwnerScope::new("chaos", "chaos", &tag), &secrets)
        .await
        .unwrap();
    let writer = LiveWriter {
        endpoint_guard: EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
        settle: Default::default(),
        metrics: None,
    };
    let first = sync_once(&writer, &config, &inv).await.unwrap();
    assert!(first.report.lost_creates > 0, "{:?}", first.report.errors);
    // The next sync right away waits for the settle window (twice the request timeout: 40 s),
    // then finds the VMs.
    let started = Instant::now();
    let second = sync_once(&writer, &config, &inv).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(39),
        "{:?}",
        started.elapsed()
    );
    assert!(
        second.report.errors.is_empty(),
        "{:?}",
        second.report.errors
    );
    assert_eq!(
        second.report.kinds["virtualization.virtualmachine"].created, 0,
        "the VMs NetBox created late were found"
    );
    let findings = check(&rest, &inv, &format!("cluster-{tag}")).await;
    assert!(findings.clean(), "{findings:?}");
    assert_eq!(proxy.log().faults.len(), 1);
}

/// NetBox's `ENFORCE_GLOBAL_UNIQUE` switched on for as long as this lives (the harness runs
/// with it off).
struct GlobalUniqueAddresses;

impl GlobalUniqueAddresses {
    fn on() -> Self {
        netbox_script(&["global-unique", "on"]);
        Self
    }
}

impl Drop for GlobalUniqueAddresses {
    fn drop(&mut self) {
        netbox_script(&["global-unique", "off"]);
    }
}

/// The IP addresses on the VM interfaces of the NetBox cluster `cluster_name`, by id:
/// address, interface and VRF.
async fn cluster_addresses(
    rest: &Rest,
    cluster_name: &str,
) -> BTreeMap<u64, (String, u64, Option<u64>)> {
    let clusters = rest
        .list(&format!("virtualization/clusters/?name={cluster_name}"))
        .await;
    let cid = clusters[0]["id"].as_u64().unwrap();
    let ifaces: Vec<u64> = rest
        .list(&format!("virtualization/interfaces/?cluster_id={cid}"))
        .await
        .iter()
        .filter_map(|i| i["id"].as_u64())
        .collect();
    let mut out = BTreeMap::new();
    for chunk in ifaces.chunks(50) {
        let q: Vec<String> = chunk
            .iter()
            .map(|i| format!("vminterface_id={i}"))
            .collect();
        for ip in rest
            .list(&format!("ipam/ip-addresses/?{}", q.join("&")))
            .await
        {
            out.insert(
                ip["id"].as_u64().unwrap(),
                (
                    ip["address"].as_str().unwrap_or_default().to_string(),
                    ip["assigned_object_id"].as_u64().unwrap_or_default(),
                    ip["vrf"]["id"].as_u64(),
                ),
            );
        }
    }
    out
}

fn addresses_of(ips: &BTreeMap<u64, (String, u64, Option<u64>)>) -> Vec<String> {
    let mut v: Vec<String> = ips.values().map(|(a, _, _)| a.clone()).collect();
    v.sort();
    v
}

/// One sync of `resource` (prune on, grace 0, owner `chaos/chaos/<name>`) through the
/// operator's NetBox stage.
async fn sync_resource(
    writer: &LiveWriter,
    secrets: &DirSecrets,
    resource: &ProxmoxCluster,
    inv: &Inventory,
) -> proxmox_netbox_operator::pipeline::NetBoxResult {
    let name = resource.metadata.name.clone().unwrap_or_default();
    let config = resolve(resource, OwnerScope::new("chaos", "chaos", &name), secrets)
        .await
        .unwrap();
    sync_once(writer, &config, inv).await.unwrap()
}

#[tokio::test]
async fn overlapping_address_ranges_of_two_proxmox_clusters_lose_and_move_nothing() {
    let _alone = NETBOX_SERVER.write().await;
    proxmox_netbox_operator::tls::install_crypto_provider();
    let env = HarnessEnv::load();
    let stamp = format!("{}-{}", std::process::id(), Utc::now().timestamp());
    let rest = Rest {
        http: checking_http_client(),
        url: env.netbox_url.clone(),
        token: env.netbox_token.clone(),
    };
    // Three Proxmox clusters with the same vmids and the same private addresses, in an
    // address range no earlier test left anything in (they would collide too).
    let mut octet = None;
    for k in 11..=126 {
        let taken = rest
            .list(&format!("ipam/ip-addresses/?parent={k}.0.0.0/8"))
            .await;
        if taken.is_empty() {
            octet = Some(k);
            break;
        }
    }
    let octet = octet.expect("a free /8 for the overlapping clusters");
    let guests = env_number("CHAOS_GUESTS", 20);
    let pve = |seed: u32, name: &str| {
        let spec = format!("nodes=3,guests={guests},seed={seed},name={name}-{stamp},octet={octet}");
        FakePve::start(&env, &["--generate", &spec])
    };
    let (pve_a, pve_b, pve_c) = (pve(7, "ovl-a"), pve(8, "ovl-b"), pve(9, "ovl-c"));
    let (inv_a, inv_b, inv_c) = (
        read_fake_pve(&pve_a).await,
        read_fake_pve(&pve_b).await,
        read_fake_pve(&pve_c).await,
    );
    let dir = tempfile::tempdir().unwrap();
    sync_files(&env, &pve_a, dir.path(), "unused");
    let secrets = DirSecrets::new(dir.path().join("secrets"));
    let writer = LiveWriter {
        endpoint_guard: EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]),
        settle: Default::default(),
        metrics: None,
    };
    let resource = |name: &str, vrf: Option<&str>| {
        let mut c = cluster(&env.netbox_url, &format!("{name}-{stamp}"), "60s");
        // A site each: node names repeat too (pve1..3), and a device name is unique per
        // site.
        c.spec.netbox.site = format!("site-{name}-{stamp}");
        c.spec.netbox.vrf = vrf.map(Into::into);
        c.spec.sync.prune.enabled = true;
        c.spec.sync.prune.grace_period = "0s".into();
        c
    };
    let name_of = |c: &ProxmoxCluster| c.spec.netbox.cluster_name.clone().unwrap();

    // Global uniqueness on: A in the global table.
    let unique = GlobalUniqueAddresses::on();
    let a = resource("ovl-a", None);
    let first = sync_resource(&writer, &secrets, &a, &inv_a).await;
    assert!(first.report.errors.is_empty(), "{:?}", first.report.errors);
    let a_addresses = cluster_addresses(&rest, &name_of(&a)).await;
    assert!(!a_addresses.is_empty());
    // B with the same addresses in the global table: each address is refused and reported
    // with the remedy; nothing of A changes.
    let b = resource("ovl-b", None);
    let refused = sync_resource(&writer, &secrets, &b, &inv_b).await;
    let ip_collisions: Vec<_> = refused
        .report
        .collisions
        .iter()
        .filter(|c| c.kind == "ipam.ipaddress")
        .collect();
    assert!(!ip_collisions.is_empty(), "{:?}", refused.report.collisions);
    assert!(
        ip_collisions
            .iter()
            .all(|c| c.message.contains("spec.netbox.vrf")),
        "{ip_collisions:?}"
    );
    assert_eq!(refused.summary.deleted, 0);
    assert_eq!(cluster_addresses(&rest, &name_of(&a)).await, a_addresses);
    // B in a VRF of its own: every address created there; A still untouched.
    let vrf = format!("vrf-ovl-b-{stamp}");
    let b = resource("ovl-b", Some(&vrf));
    let in_vrf = sync_resource(&writer, &secrets, &b, &inv_b).await;
    assert!(
        in_vrf.report.errors.is_empty(),
        "{:?}",
        in_vrf.report.errors
    );
    assert!(
        in_vrf.report.collisions.is_empty(),
        "{:?}",
        in_vrf.report.collisions
    );
    let b_addresses = cluster_addresses(&rest, &name_of(&b)).await;
    assert_eq!(addresses_of(&b_addresses), addresses_of(&a_addresses));
    let vrf_id = rest.list(&format!("ipam/vrfs/?name={vrf}")).await[0]["id"].as_u64();
    assert!(vrf_id.is_some());
    assert!(b_addresses.values().all(|(_, _, v)| *v == vrf_id));
    assert!(a_addresses.values().all(|(_, _, v)| v.is_none()));
    for (resource, inv) in [(&a, &inv_a), (&b, &inv_b)] {
        let f = check(&rest, inv, &name_of(resource)).await;
        assert!(f.clean(), "{f:?}");
        let resync = sync_resource(&writer, &secrets, resource, inv).await;
        assert_eq!(resync.summary.write_requests, 0, "{:?}", resync.report.plan);
    }
    assert_eq!(cluster_addresses(&rest, &name_of(&a)).await, a_addresses);

    // Global uniqueness off: C in the global table beside A; both keep their own addresses.
    drop(unique);
    let c = resource("ovl-c", None);
    let beside = sync_resource(&writer, &secrets, &c, &inv_c).await;
    assert!(
        beside.report.errors.is_empty(),
        "{:?}",
        beside.report.errors
    );
    let c_addresses = cluster_addresses(&rest, &name_of(&c)).await;
    assert_eq!(addresses_of(&c_addresses), addresses_of(&a_addresses));
    assert_eq!(cluster_addresses(&rest, &name_of(&a)).await, a_addresses);
    let resync = sync_resource(&writer, &secrets, &c, &inv_c).await;
    assert_eq!(resync.summary.write_requests, 0);

    // A moved into a VRF of its own later: the same address objects, updated in place.
    let vrf_a = format!("vrf-ovl-a-{stamp}");
    let a = resource("ovl-a", Some(&vrf_a));
    let moved = sync_resource(&writer, &secrets, &a, &inv_a).await;
    assert!(moved.report.errors.is_empty(), "{:?}", moved.report.errors);
    assert_eq!(moved.summary.deleted, 0);
    let a_moved = cluster_addresses(&rest, &name_of(&a)).await;
    let vrf_a_id = rest.list(&format!("ipam/vrfs/?name={vrf_a}")).await[0]["id"].as_u64();
    assert_eq!(
        a_moved.keys().collect::<Vec<_>>(),
        a_addresses.keys().collect::<Vec<_>>()
    );
    assert!(
        a_moved
            .values()
            .all(|(_, _, v)| *v == vrf_a_id && v.is_some())
    );
}
