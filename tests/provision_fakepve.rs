//! Provisioning end to end through `sync`, against the fake PVE (clone, config, resize,
//! power, destroy and tasks are stateful there) and the real NetBox: a staged VM becomes a
//! running PVE VM handed over to the sync with no duplicate; a crash after the clone and
//! before NetBox knows ends with one VM; retirement destroys only what the operator
//! provisioned; dry-run changes nothing on either side.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::chaos::{run_sync, sync_command, wait_for};
use common::fault_proxy::{self, Fault, FaultPlan, Target};
use common::harness::{FakePve, HarnessEnv, PveRest, topology};
use common::netbox::NetBoxRest;

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example";

/// The QEMU guests named `name` in `/cluster/resources`.
async fn named(api: &PveRest, name: &str) -> Vec<Value> {
    api.get("/cluster/resources?type=vm")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == name && r["type"] == "qemu")
        .cloned()
        .collect()
}

/// The tests of this file one at a time: each counts NetBox's change log.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The guests of `/cluster/resources` as (vmid, name, node, status), in order.
async fn guests(api: &PveRest) -> Vec<(u64, String, String, String)> {
    let mut out: Vec<(u64, String, String, String)> = api
        .get("/cluster/resources?type=vm")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                r["vmid"].as_u64().unwrap(),
                s("name"),
                s("node"),
                s("status"),
            )
        })
        .collect();
    out.sort();
    out
}

/// One test's world: its own fake PVE, the shared NetBox, the files of its `sync` runs,
/// and names and addresses of its own.
struct Lab {
    env: HarnessEnv,
    pve: FakePve,
    api: PveRest,
    nb: NetBoxRest,
    dir: tempfile::TempDir,
    tag: String,
    /// Second octet of the test's addresses (10.N.x.y): tests run side by side.
    net: u8,
}

impl Lab {
    fn new(name: &str, net: u8) -> Self {
        proxmox_netbox_operator::tls::install_crypto_provider();
        let env = HarnessEnv::load();
        let pve = FakePve::start(&env, &["--topology", &topology("provision.json")]);
        Self::with_pve(name, net, env, pve)
    }

    /// A lab on a fake PVE started by the test.
    fn with_pve(name: &str, net: u8, env: HarnessEnv, pve: FakePve) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in [
            ("pve", "tokenId", pve.token_id.clone()),
            ("pve", "tokenSecret", pve.token_secret.clone()),
            (
                "pve-provision",
                "tokenId",
                pve.provision_token_id.clone().unwrap(),
            ),
            (
                "pve-provision",
                "tokenSecret",
                pve.provision_token_secret.clone().unwrap(),
            ),
            (
                "pve-ca",
                "ca.crt",
                std::fs::read_to_string(&pve.ca_file).unwrap(),
            ),
            ("nb", "token", env.netbox_token.clone()),
            ("ssh", "keys", format!("{SSH_KEY}\n")),
        ] {
            std::fs::create_dir_all(dir.path().join("secrets").join(secret)).unwrap();
            std::fs::write(dir.path().join("secrets").join(secret).join(key), value).unwrap();
        }
        let tag = format!("{name}-{}", std::process::id());
        Self {
            api: PveRest::new(
                &pve,
                pve.provision_token_id.as_deref().unwrap(),
                pve.provision_token_secret.as_deref().unwrap(),
            ),
            nb: NetBoxRest::new(&env),
            env,
            pve,
            dir,
            tag,
            net,
        }
    }

    fn cluster_name(&self) -> String {
        format!("cluster-{}", self.tag)
    }

    fn selector_tag(&self) -> String {
        format!("provision-{}", self.tag)
    }

    /// Writes the ProxmoxCluster of the next `sync` runs, with `provisioning` merged into
    /// the defaults of these tests, NetBox at `netbox_url` (a proxy) or the harness's.
    fn write_cluster(&self, provisioning: Value, netbox_url: Option<&str>) {
        let mut p = json!({
            "enabled": true,
            "credentialsSecretRef": {"name": "pve-provision"},
            "selector": {"tag": self.selector_tag()},
            "template": "debian-12-cloud",
            "storage": "ceph-vm",
            "cloudInit": {"user": "ops", "sshKeysSecretRef": {"name": "ssh", "key": "keys"},
                          "nameservers": ["10.0.0.53"]},
            "retire": {"enabled": true},
            "taskTimeout": "60s",
            "shutdownTimeout": "10s",
        });
        for (k, v) in provisioning.as_object().unwrap() {
            p[k] = v.clone();
        }
        let cluster = json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": self.tag, "namespace": "provision"},
            "spec": {
                "proxmox": {"endpoints": [self.pve.url], "credentialsSecretRef": {"name": "pve"},
                            "tls": {"caSecretRef": {"name": "pve-ca", "key": "ca.crt"}}},
                "netbox": {"url": netbox_url.unwrap_or(&self.env.netbox_url), "allowInsecureHttp": true,
                           "tokenSecretRef": {"name": "nb", "key": "token"},
                           "site": format!("site-{}", self.tag), "clusterName": self.cluster_name()},
                "sync": {"prune": {"enabled": true, "gracePeriod": "0s", "maxPercent": 100}},
                "provisioning": p,
            }
        });
        std::fs::write(
            self.dir.path().join("cluster.yaml"),
            serde_json::to_string_pretty(&cluster).unwrap(),
        )
        .unwrap();
    }

    /// One `sync` run that must succeed; its JSON report.
    async fn sync(&self, what: &str) -> Value {
        let (ok, report) = run_sync(self.dir.path(), what).await;
        assert!(
            ok,
            "{what}: {}",
            serde_json::to_string_pretty(&report).unwrap()
        );
        report
    }

    /// The NetBox cluster's id (after a first sync).
    async fn netbox_cluster(&self) -> u64 {
        self.nb
            .one(&format!(
                "virtualization/clusters/?name={}",
                self.cluster_name()
            ))
            .await["id"]
            .as_u64()
            .unwrap()
    }

    /// A prefix with a `proxmox_gateway`; its id.
    async fn prefix(&self, third: u8) -> u64 {
        let net = self.net;
        self.nb
            .create(
                "ipam/prefixes",
                json!({"prefix": format!("10.{net}.{third}.0/24"),
                       "custom_fields": {"proxmox_gateway": format!("10.{net}.{third}.1")}}),
            )
            .await
    }

    /// A staged record selected for provisioning: 2 vCPUs, 2 GiB, a 10 GiB `scsi0`,
    /// `net0` with the fixed address 10.N.10.10/24 and `net1` with none but the prefix
    /// 10.N.11.0/24 named on it. `extra` is merged into the VM. Its id.
    async fn staged(&self, name: &str, extra: Value) -> u64 {
        let cluster = self.netbox_cluster().await;
        let tag = self.selector_tag();
        if self
            .nb
            .list(&format!("extras/tags/?slug={tag}"))
            .await
            .is_empty()
        {
            self.nb
                .create("extras/tags", json!({"name": tag, "slug": tag}))
                .await;
        }
        let mut body = json!({"name": name, "status": "staged", "cluster": cluster,
                              "vcpus": 2, "memory": 2048, "description": "provisioned by the tests",
                              "tags": [{"slug": tag}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let vm = self
            .nb
            .create("virtualization/virtual-machines", body)
            .await;
        // The fixed address's prefix names its gateway; the pool's names its own.
        self.prefix(10).await;
        let pool = self.prefix(11).await;
        let net0 = self
            .nb
            .create(
                "virtualization/interfaces",
                json!({"virtual_machine": vm, "name": "net0"}),
            )
            .await;
        self.nb
            .create(
                "virtualization/interfaces",
                json!({"virtual_machine": vm, "name": "net1", "mtu": 1450,
                       "custom_fields": {"proxmox_prefix": pool}}),
            )
            .await;
        self.nb
            .create(
                "ipam/ip-addresses",
                json!({"address": format!("10.{}.10.10/24", self.net), "status": "active",
                       "assigned_object_type": "virtualization.vminterface",
                       "assigned_object_id": net0}),
            )
            .await;
        self.nb
            .create(
                "virtualization/virtual-disks",
                json!({"virtual_machine": vm, "name": "scsi0", "size": 10240}),
            )
            .await;
        vm
    }

    async fn vm(&self, id: u64) -> Value {
        self.nb
            .get(&format!("virtualization/virtual-machines/{id}/"))
            .await
    }

    /// The NetBox VMs named `name` in this test's cluster.
    async fn netbox_named(&self, name: &str) -> Vec<Value> {
        self.nb
            .list(&format!(
                "virtualization/virtual-machines/?cluster={}&name={name}",
                self.cluster_name()
            ))
            .await
    }
}

/// The provisioning entry of NetBox VM `id` in a sync report.
fn entry(report: &Value, id: u64) -> Value {
    report["status"]["provisioning"]["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["netboxId"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("VM {id} not in {}", report["status"]["provisioning"]))
}

/// A condition of a sync report's status.
fn condition(report: &Value, kind: &str) -> Value {
    report["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} in {}", report["status"]["conditions"]))
}

/// A size in a PVE drive string, in MiB.
fn size_mib(drive: &str) -> u64 {
    let size = drive
        .split(',')
        .find_map(|p| p.strip_prefix("size="))
        .unwrap();
    let (n, unit) = size.split_at(size.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "G" => n * 1024,
        "M" => n,
        "T" => n * 1024 * 1024,
        _ => panic!("{drive}"),
    }
}

#[tokio::test]
async fn a_staged_vm_becomes_a_running_vm_handed_over_to_the_sync_with_no_duplicate() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-create", 61);
    lab.write_cluster(json!({}), None);
    let first = lab.sync("the first sync (nothing staged yet)").await;
    assert_eq!(
        first["status"]["provisioning"]["counts"]["selected"], 0,
        "{first}"
    );
    let name = format!("web-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;
    // A second record that cannot be provisioned: the first one goes on.
    let bad = lab
        .staged(
            &format!("bad-{}", std::process::id()),
            json!({"custom_fields": {"proxmox_template": "no-such-template"}}),
        )
        .await;

    let report = lab.sync("the sync that provisions").await;
    let done = entry(&report, id);
    assert_eq!(done["phase"], "Provisioned", "{done}");
    let vmid = done["vmid"].as_u64().unwrap();
    assert_eq!(entry(&report, bad)["warning"]["code"], "TemplateNotFound");
    assert_eq!(report["status"]["provisioning"]["counts"]["provisioned"], 1);
    assert_eq!(condition(&report, "Ready")["status"], "True", "{report}");
    assert_eq!(
        condition(&report, "Degraded")["reason"],
        "ProvisioningWarnings"
    );
    assert_eq!(condition(&report, "Provisioned")["status"], "False");

    // PVE: one running VM with the record's resources and addresses.
    let guests = named(&lab.api, &name).await;
    assert_eq!(guests.len(), 1, "{guests:?}");
    assert_eq!(guests[0]["vmid"], vmid);
    let node = guests[0]["node"].as_str().unwrap().to_string();
    let config = lab
        .api
        .get(&format!("/nodes/{node}/qemu/{vmid}/config"))
        .await;
    assert_eq!(
        config["cores"].to_string().trim_matches('"'),
        "2",
        "{config}"
    );
    assert_eq!(
        config["memory"].to_string().trim_matches('"'),
        "2048",
        "{config}"
    );
    assert!(
        config["net1"].as_str().unwrap().contains("mtu=1450"),
        "{config}"
    );
    assert_eq!(
        config["ipconfig0"],
        format!("ip=10.61.10.10/24,gw=10.61.10.1"),
        "{config}"
    );
    let ipconfig1 = config["ipconfig1"].as_str().unwrap();
    assert!(ipconfig1.starts_with("ip=10.61.11."), "{config}");
    assert!(ipconfig1.ends_with("/24,gw=10.61.11.1"), "{config}");
    assert_eq!(config["ciuser"], "ops");
    assert!(
        config["sshkeys"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519%20"),
        "{config}"
    );
    assert_eq!(
        size_mib(config["scsi0"].as_str().unwrap()),
        10240,
        "{config}"
    );
    let notes = config["description"].as_str().unwrap();
    assert!(notes.contains(&format!("netbox-vm={id} ")), "{notes}");
    let status = lab
        .api
        .get(&format!("/nodes/{node}/qemu/{vmid}/status/current"))
        .await;
    assert_eq!(status["status"], "running");

    // NetBox: the record itself is the synced VM now, active and owned, with the address
    // allocated from the prefix on net1, and nothing twice.
    let vm = lab.vm(id).await;
    assert_eq!(vm["status"]["value"], "active", "{vm}");
    assert_eq!(vm["custom_fields"]["proxmox_vmid"], vmid);
    assert_eq!(vm["custom_fields"]["proxmox_provision"], "provisioned");
    assert!(vm["custom_fields"]["proxmox_owner"].is_string());
    assert_eq!(vm["description"], "provisioned by the tests");
    assert_eq!(lab.netbox_named(&name).await.len(), 1);
    let ifaces = lab
        .nb
        .list(&format!(
            "virtualization/interfaces/?virtual_machine_id={id}"
        ))
        .await;
    assert_eq!(ifaces.len(), 2, "{ifaces:?}");
    let allocated = ipconfig1
        .trim_start_matches("ip=")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let ips = lab
        .nb
        .list(&format!("ipam/ip-addresses/?virtual_machine_id={id}"))
        .await;
    let mut addresses: Vec<&str> = ips
        .iter()
        .map(|ip| ip["address"].as_str().unwrap())
        .collect();
    addresses.sort();
    assert_eq!(
        addresses,
        vec!["10.61.10.10/24", allocated.as_str()],
        "{ips:?}"
    );
    let disks = lab
        .nb
        .list(&format!(
            "virtualization/virtual-disks/?virtual_machine_id={id}"
        ))
        .await;
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0]["size"], 10240);

    // The next sync finds everything as it should be: nothing written on either side.
    let changes = lab.nb.change_count().await;
    let again = lab.sync("the sync after").await;
    assert_eq!(
        again["status"]["sync"]["writeRequests"], 0,
        "{}",
        again["netbox"]
    );
    assert_eq!(lab.nb.change_count().await, changes);
    assert_eq!(named(&lab.api, &name).await.len(), 1);
}

#[tokio::test]
async fn a_crash_after_the_clone_and_before_netbox_knows_finishes_with_one_vm() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-crash", 62);
    lab.write_cluster(json!({}), None);
    lab.sync("the first sync").await;
    let name = format!("crash-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;

    // NetBox never answers the hand-over (its first interface PATCH): the process is
    // killed while it waits, with the VM cloned, configured and started in PVE.
    let proxy = fault_proxy::start(
        lab.env.netbox_url.clone(),
        FaultPlan {
            target: Target::NetBoxWrites,
            seed: 1,
            fault_rate: 0.0,
            client_timeout: Duration::from_secs(60),
            scripted: Some((
                "PATCH /api/virtualization/interfaces/",
                Fault::DelayPastTimeout(Duration::from_secs(3600)),
            )),
        },
    )
    .await;
    lab.write_cluster(json!({}), Some(&proxy.url));
    let mut child = sync_command(lab.dir.path(), "killed.json").spawn().unwrap();
    let started = Instant::now();
    while proxy.log().faults.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the hand-over never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let cloned = named(&lab.api, &name).await;
    assert_eq!(cloned.len(), 1, "cloned before the crash: {cloned:?}");
    let vmid = cloned[0]["vmid"].as_u64().unwrap();
    let record = lab.vm(id).await;
    assert_eq!(record["custom_fields"]["proxmox_provision"], "reserved");
    assert_eq!(record["custom_fields"]["proxmox_provision_vmid"], vmid);
    assert!(record["custom_fields"]["proxmox_owner"].is_null());

    // The restart finds its own clone by the reserved vmid and the mark: no second clone.
    lab.write_cluster(json!({}), None);
    let report = lab.sync("the sync after the crash").await;
    assert_eq!(entry(&report, id)["phase"], "Provisioned");
    assert_eq!(named(&lab.api, &name).await.len(), 1);
    let tasks = lab.api.get("/nodes/pve1/tasks?vmid=9000&limit=500").await;
    let clones = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "qmclone")
        .count();
    assert_eq!(clones, 1, "{tasks}");
    let record = lab.vm(id).await;
    assert_eq!(record["status"]["value"], "active");
    assert_eq!(record["custom_fields"]["proxmox_vmid"], vmid);
    assert_eq!(lab.netbox_named(&name).await.len(), 1);
}

#[tokio::test]
async fn a_decommissioned_vm_is_destroyed_and_its_record_released_or_deleted() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-retire", 63);
    lab.write_cluster(json!({}), None);
    lab.sync("the first sync").await;
    let kept = format!("kept-{}", std::process::id());
    let kept_id = lab.staged(&kept, json!({})).await;
    lab.sync("the sync that provisions").await;
    let vmid = named(&lab.api, &kept).await[0]["vmid"].as_u64().unwrap();

    // Offline (the default): the VM goes, the record stays, released to people.
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            kept_id,
            json!({"status": "decommissioning"}),
        )
        .await;
    let report = lab.sync("the sync that retires").await;
    let e = entry(&report, kept_id);
    assert_eq!(e["phase"], "Retired", "{e}");
    assert!(named(&lab.api, &kept).await.is_empty(), "destroyed in PVE");
    let record = lab.vm(kept_id).await;
    assert_eq!(record["status"]["value"], "offline", "{record}");
    assert_eq!(record["custom_fields"]["proxmox_provision"], "retired");
    assert!(record["custom_fields"]["proxmox_owner"].is_null());
    assert!(record["custom_fields"]["proxmox_vmid"].is_null());
    let owned_children = lab
        .nb
        .list(&format!(
            "virtualization/interfaces/?virtual_machine_id={kept_id}"
        ))
        .await
        .into_iter()
        .filter(|i| !i["custom_fields"]["proxmox_owner"].is_null())
        .count();
    assert_eq!(owned_children, 0);
    assert!(
        lab.api
            .get("/cluster/resources?type=vm")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["vmid"] != vmid),
        "vm {vmid} is gone"
    );

    // Delete: the record goes with its interfaces and addresses.
    lab.write_cluster(
        json!({"retire": {"enabled": true, "recordPolicy": "Delete"}}),
        None,
    );
    let gone = format!("gone-{}", std::process::id());
    let gone_id = lab.staged(&gone, json!({})).await;
    lab.sync("the sync that provisions the second").await;
    assert_eq!(named(&lab.api, &gone).await.len(), 1);
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            gone_id,
            json!({"status": "decommissioning"}),
        )
        .await;
    let r = lab.sync("the sync that retires the second").await;
    assert!(named(&lab.api, &gone).await.is_empty());
    // Gone from the inventory of the same pass: the sync does not document it again.
    assert!(
        lab.netbox_named(&gone).await.is_empty(),
        "{}",
        r["status"]["provisioning"]
    );
    assert!(
        r["status"]["provisioning"]["orphans"].is_null(),
        "{}",
        r["status"]["provisioning"]
    );

    // Nothing comes back, nothing else is written.
    let changes = lab.nb.change_count().await;
    let again = lab.sync("the sync after").await;
    assert_eq!(again["status"]["sync"]["writeRequests"], 0);
    assert_eq!(lab.nb.change_count().await, changes);
    assert!(lab.netbox_named(&gone).await.is_empty());
    assert_eq!(lab.netbox_named(&kept).await.len(), 1);
}

#[tokio::test]
async fn unmarked_foreign_and_protected_vms_in_decommissioning_are_left_alone() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-alone", 64);
    lab.write_cluster(json!({}), None);
    lab.sync("the first sync").await;
    let cluster = lab.netbox_cluster().await;
    let by_vmid = |vmid: u64| {
        let nb = &lab.nb;
        async move {
            nb.one(&format!(
                "virtualization/virtual-machines/?cluster_id={cluster}&cf_proxmox_vmid={vmid}"
            ))
            .await
        }
    };
    // app01 (101): synced, never provisioned.
    let app = by_vmid(101).await;
    let app_id = app["id"].as_u64().unwrap();
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            app_id,
            json!({"status": "decommissioning"}),
        )
        .await;
    // batch01 (103): a record that claims to be provisioned by this operator, but the
    // guest has no provisioning mark (a hand-edited record).
    let batch = by_vmid(103).await;
    let batch_id = batch["id"].as_u64().unwrap();
    let owner = batch["custom_fields"]["proxmox_owner"].clone();
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            batch_id,
            json!({"status": "decommissioning", "custom_fields": {
                "proxmox_provision": "provisioned", "proxmox_provisioned_by": owner,
                "proxmox_provision_vmid": 103}}),
        )
        .await;
    // A VM the operator did provision, protected in PVE since.
    let name = format!("guarded-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;
    lab.sync("the sync that provisions").await;
    let guest = named(&lab.api, &name).await.remove(0);
    let vmid = guest["vmid"].as_u64().unwrap();
    let node = guest["node"].as_str().unwrap().to_string();
    lab.api
        .send(
            reqwest::Method::PUT,
            &format!("/nodes/{node}/qemu/{vmid}/config"),
            &[("protection", "1")],
        )
        .await;
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            id,
            json!({"status": "decommissioning"}),
        )
        .await;

    let report = lab.sync("the sync with three VMs in decommissioning").await;
    assert_eq!(
        entry(&report, app_id)["warning"]["code"],
        "NotProvisionedByOperator"
    );
    assert_eq!(entry(&report, batch_id)["warning"]["code"], "ForeignVm");
    assert_eq!(entry(&report, id)["warning"]["code"], "Protected");
    for (vm, n) in [("app01", 1), ("batch01", 1), (name.as_str(), 1)] {
        assert_eq!(named(&lab.api, vm).await.len(), n, "{vm} is still in PVE");
    }
    // Their NetBox status stays what people set.
    for nb_id in [app_id, batch_id, id] {
        assert_eq!(lab.vm(nb_id).await["status"]["value"], "decommissioning");
    }
}

#[tokio::test]
async fn dry_run_plans_and_changes_nothing_on_either_side() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-dry", 65);
    lab.write_cluster(json!({}), None);
    lab.sync("the first sync").await;
    let name = format!("dry-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;
    lab.write_cluster(json!({"mode": "DryRun"}), None);
    let resources = guests(&lab.api).await;
    let changes = lab.nb.change_count().await;

    let report = lab.sync("the dry run").await;
    let plan: Vec<String> = report["status"]["provisioning"]["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let steps = plan.join("\n");
    for step in [
        "reserve the next free vmid",
        "allocate the next free IP address of 10.65.11.0/24",
        "clone template 9000",
        "configure vm",
        "grow disk scsi0",
        "start vm",
        "hand vm",
    ] {
        assert!(steps.contains(step), "{step} missing from:\n{steps}");
    }
    assert_eq!(condition(&report, "Provisioned")["reason"], "DryRun");
    assert_eq!(guests(&lab.api).await, resources);
    assert_eq!(lab.nb.change_count().await, changes);
    let record = lab.vm(id).await;
    assert_eq!(record["status"]["value"], "staged");
    assert!(record["custom_fields"]["proxmox_provision"].is_null());
    // The sync's own dry-run (`sync --dry-run`) is a dry run of provisioning too.
    lab.write_cluster(json!({}), None);
    let mut c = sync_command(lab.dir.path(), "forced.json");
    c.arg("--dry-run");
    let mut child = c.spawn().unwrap();
    assert!(wait_for(&mut child, "sync --dry-run").await.success());
    let forced: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.path().join("forced.json")).unwrap())
            .unwrap();
    assert_eq!(forced["status"]["provisioning"]["mode"], "DryRun");
    assert_eq!(guests(&lab.api).await, resources);
    assert_eq!(lab.nb.change_count().await, changes);
}

/// The tasks of `type_` on `node` for `vmid`.
async fn tasks(api: &PveRest, node: &str, vmid: u64, type_: &str) -> Vec<Value> {
    api.get(&format!("/nodes/{node}/tasks?vmid={vmid}&limit=500"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == type_)
        .cloned()
        .collect()
}

#[tokio::test]
async fn resources_follow_netbox_and_a_running_vm_waits_for_its_reboot() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-follow", 66);
    lab.write_cluster(json!({"followResources": true}), None);
    lab.sync("the first sync").await;
    let name = format!("follow-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;
    lab.sync("the sync that provisions").await;
    let guest = named(&lab.api, &name).await.remove(0);
    let vmid = guest["vmid"].as_u64().unwrap();
    let node = guest["node"].as_str().unwrap().to_string();
    assert_eq!(guest["status"], "running");

    // More vCPUs, memory and disk in NetBox.
    lab.nb
        .patch(
            "virtualization/virtual-machines",
            id,
            json!({"vcpus": 4, "memory": 4096}),
        )
        .await;
    let disk = lab
        .nb
        .one(&format!(
            "virtualization/virtual-disks/?virtual_machine_id={id}"
        ))
        .await;
    lab.nb
        .patch(
            "virtualization/virtual-disks",
            disk["id"].as_u64().unwrap(),
            json!({"size": 12288}),
        )
        .await;
    let report = lab.sync("the sync that follows NetBox").await;
    let config = lab
        .api
        .get(&format!("/nodes/{node}/qemu/{vmid}/config"))
        .await;
    assert_eq!(
        size_mib(config["scsi0"].as_str().unwrap()),
        12288,
        "{config}"
    );
    let pending = lab
        .api
        .get(&format!("/nodes/{node}/qemu/{vmid}/pending"))
        .await;
    let waiting = |key: &str| {
        pending
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key)
            .map(|p| p["pending"].to_string().trim_matches('"').to_string())
    };
    assert_eq!(waiting("cores").as_deref(), Some("4"), "{pending}");
    assert_eq!(waiting("memory").as_deref(), Some("4096"), "{pending}");
    let reboot = condition(&report, "RebootRequired");
    assert_eq!(reboot["status"], "True", "{reboot}");
    assert!(
        reboot["message"]
            .as_str()
            .unwrap()
            .contains(&vmid.to_string())
    );
    // NetBox keeps what was asked for: the sync does not put PVE's current values back.
    let vm = lab.vm(id).await;
    assert_eq!(
        (vm["vcpus"].as_f64(), vm["memory"].as_u64()),
        (Some(4.0), Some(4096))
    );
    let writes = tasks(&lab.api, &node, vmid, "qmconfig").await.len();

    // Nothing is sent again while the change waits for the reboot.
    let again = lab.sync("the sync while the reboot is due").await;
    assert_eq!(tasks(&lab.api, &node, vmid, "qmconfig").await.len(), writes);
    assert_eq!(condition(&again, "RebootRequired")["status"], "True");
    assert_eq!(again["status"]["sync"]["writeRequests"], 0);

    // After a stop and start the changes are applied: nothing pending any more.
    for action in ["stop", "start"] {
        lab.api
            .send(
                reqwest::Method::POST,
                &format!("/nodes/{node}/qemu/{vmid}/status/{action}"),
                &[],
            )
            .await;
    }
    let after = lab.sync("the sync after the reboot").await;
    assert_eq!(condition(&after, "RebootRequired")["status"], "False");
    assert_eq!(tasks(&lab.api, &node, vmid, "qmconfig").await.len(), writes);
}

#[tokio::test]
async fn a_failed_clone_task_is_a_warning_on_its_vm_and_leaves_nothing_behind() {
    let _turn = SERIAL.lock().await;
    let lab = Lab::new("prov-full", 67);
    // A storage with 2 GiB free: the clone of an 8 GiB disk fails in its task.
    lab.write_cluster(json!({"storage": "nearly-full"}), None);
    lab.sync("the first sync").await;
    let name = format!("full-{}", std::process::id());
    let id = lab.staged(&name, json!({})).await;
    let report = lab.sync("the sync whose clone fails").await;
    let e = entry(&report, id);
    assert_eq!(e["warning"]["code"], "TaskFailed", "{e}");
    assert!(
        e["warning"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{e}"
    );
    assert!(named(&lab.api, &name).await.is_empty(), "no half-cloned VM");
    assert_eq!(condition(&report, "Ready")["status"], "True");
    assert_eq!(
        condition(&report, "Provisioned")["reason"],
        "ProvisioningWarnings"
    );
    // The record keeps its reservation: the next pass tries the same vmid again.
    let record = lab.vm(id).await;
    assert_eq!(record["status"]["value"], "staged");
    assert_eq!(record["custom_fields"]["proxmox_provision"], "reserved");
    assert!(lab.netbox_named(&name).await.len() == 1, "no second record");
}

#[tokio::test]
async fn at_most_max_concurrent_tasks_vms_are_worked_on_at_once() {
    let _turn = SERIAL.lock().await;
    proxmox_netbox_operator::tls::install_crypto_provider();
    let env = HarnessEnv::load();
    // Clones take about 3 s here (RBD operations 6 PVE seconds slower, at half speed).
    let pve = FakePve::start(
        &env,
        &[
            "--topology",
            &topology("provision.json"),
            "--time-scale",
            "0.5",
            "--ceph-slow",
            "6",
        ],
    );
    let lab = Lab::with_pve("prov-limit", 68, env, pve);
    lab.write_cluster(json!({"maxConcurrentTasks": 1}), None);
    lab.sync("the first sync").await;
    let first = format!("one-{}", std::process::id());
    let second = format!("two-{}", std::process::id());
    lab.staged(&first, json!({})).await;
    lab.staged(&second, json!({})).await;
    lab.sync("the sync that provisions both").await;
    let clones: Vec<Value> = lab
        .api
        .get("/nodes/pve1/tasks?vmid=9000&limit=500")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "qmclone")
        .cloned()
        .collect();
    assert_eq!(clones.len(), 2, "{clones:?}");
    let mut spans: Vec<(u64, u64)> = clones
        .iter()
        .map(|t| {
            (
                t["starttime"].as_u64().unwrap(),
                t["endtime"].as_u64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    assert!(spans[0].1 > spans[0].0, "the clone took time: {spans:?}");
    assert!(
        spans[1].0 >= spans[0].1,
        "the second clone started before the first VM was done: {spans:?}"
    );
    assert_eq!(named(&lab.api, &first).await.len(), 1);
    assert_eq!(named(&lab.api, &second).await.len(), 1);
}
