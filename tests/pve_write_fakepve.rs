//! PVE writes and tasks against the fake PVE (third-party `fakepve`, seeded from
//! tests/topologies/provision.json by scripts/harness/fakepve/serve.py): clone from the
//! template, configure with a digest, resize, power, destroy, failing and slow tasks,
//! privileges, ticket auth with its CSRF token, lost answers, failover and metrics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness::{FakePve, HarnessEnv, provision_connection, pve_connection, topology};
use proxmox_netbox_operator::pve::client::{PveApi, PveAuth, PveClient, PveConnection, PveError};
use proxmox_netbox_operator::pve::metrics::{PveMetrics, TaskRecorder};
use proxmox_netbox_operator::pve::permissions::{
    PROVISIONING_EXTRA_PRIVILEGES, PROVISIONING_PRIVILEGES, evaluate, evaluate_allowing,
    missing_provisioning,
};
use proxmox_netbox_operator::pve::reader::{ReadOptions, read_inventory};
use proxmox_netbox_operator::pve::task::{TaskDone, TaskError, TaskWait, Upid, task_of, wait_task};
use proxmox_netbox_operator::pve::write::{PveWriteApi, flag, form, percent_encode};
use proxmox_netbox_operator::secrets::SecretString;
use serde_json::Value;

/// The fake PVE of these tests, with launcher arguments besides the topology.
fn start(env: &HarnessEnv, extra: &[&str]) -> FakePve {
    let topo = topology("provision.json");
    let mut args = vec!["--topology", topo.as_str()];
    args.extend_from_slice(extra);
    FakePve::start(env, &args)
}

/// A client with the provisioning token: no retries, 10 s timeout.
fn writer(pve: &FakePve) -> PveClient {
    PveClient::new(PveConnection {
        retries: 0,
        timeout: Duration::from_secs(10),
        ..provision_connection(pve)
    })
    .unwrap()
}

/// A client with the read-only token.
fn reader(pve: &FakePve) -> PveClient {
    PveClient::new(pve_connection(pve)).unwrap()
}

/// Quick polls: the fake's tasks are fast.
fn quick(timeout: Duration) -> TaskWait {
    TaskWait {
        first_poll: Duration::from_millis(50),
        max_poll: Duration::from_millis(400),
        timeout,
        poll_errors: 3,
    }
}

/// The task a write answered with.
fn upid_of(answer: &Value) -> Upid {
    task_of(answer)
        .unwrap()
        .unwrap_or_else(|| panic!("a task, got {answer}"))
}

/// Waits for the task a write answered with.
async fn run(api: &dyn PveApi, answer: Value) -> Result<TaskDone, TaskError> {
    wait_task(
        api,
        &upid_of(&answer),
        &quick(Duration::from_secs(30)),
        &TaskRecorder::default(),
    )
    .await
}

/// `/cluster/nextid` as a number (PVE answers it as a string).
async fn next_id(api: &dyn PveApi) -> u32 {
    let id = api.get("/cluster/nextid").await.unwrap();
    id.as_str()
        .map(|s| s.parse().unwrap())
        .or_else(|| id.as_u64().map(|n| u32::try_from(n).unwrap()))
        .unwrap()
}

/// Full clone of the template 9000 to the next free vmid on ceph-vm (with `target`, on
/// that node); returns the vmid once the task is done.
async fn clone_template(api: &PveClient, name: &str, target: Option<&str>) -> u32 {
    let vmid = next_id(api).await;
    let mut params = form([
        ("newid", vmid.to_string()),
        ("name", name.to_string()),
        ("full", flag(true)),
        ("storage", "ceph-vm".to_string()),
        (
            "description",
            format!("{name}\nproxmox-netbox-operator: provisioned netbox-vm=7 owner=test"),
        ),
    ]);
    if let Some(node) = target {
        params.push(("target".into(), node.into()));
    }
    let answer = api
        .post("/nodes/pve1/qemu/9000/clone", &params)
        .await
        .unwrap();
    let upid = upid_of(&answer);
    // The clone's task runs on the template's node and names the template.
    assert_eq!(
        (upid.node(), upid.task_type(), upid.id()),
        ("pve1", "qmclone", "9000")
    );
    assert_eq!(upid.user(), "netbox-sync@pve!provision");
    let done = run(api, answer).await.unwrap();
    assert_eq!(done.warnings, 0);
    vmid
}

/// The `/cluster/resources` entry of a guest.
async fn resource(api: &dyn PveApi, vmid: u32) -> Option<Value> {
    api.get("/cluster/resources")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["vmid"].as_u64() == Some(u64::from(vmid)))
        .cloned()
}

async fn status(api: &dyn PveApi, node: &str, vmid: u32) -> String {
    api.get(&format!("/nodes/{node}/qemu/{vmid}/status/current"))
        .await
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn failed(result: Result<TaskDone, TaskError>) -> (String, String, Vec<String>) {
    match result {
        Err(TaskError::Failed {
            task_type,
            exit_status,
            log_tail,
        }) => (task_type, exit_status, log_tail),
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[tokio::test]
async fn clone_from_nextid_is_a_new_vm_in_resources_and_config() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let api = writer(&pve);
    assert_eq!(next_id(&api).await, 105, "the first free id");
    let vmid = clone_template(&api, "vm-a", None).await;
    assert_eq!(vmid, 105);

    let r = resource(&api, vmid).await.expect("listed");
    assert_eq!(r["node"], "pve1");
    assert_eq!(r["name"], "vm-a");
    assert_eq!(r["template"], 0);
    assert!(
        r.get("lock").is_none(),
        "unlocked once the task is done: {r}"
    );
    let config = api
        .get(&format!("/nodes/pve1/qemu/{vmid}/config"))
        .await
        .unwrap();
    assert_eq!(
        config["scsi0"], "ceph-vm:vm-105-disk-0,discard=on,size=8G",
        "{config}"
    );
    assert_eq!(config["ide2"], "ceph-vm:vm-9000-cloudinit,media=cdrom");
    assert!(config["net0"].as_str().unwrap().ends_with(",bridge=vmbr0"));
    assert_ne!(
        config["net0"], "virtio=BC:24:11:90:00:00,bridge=vmbr0",
        "a fresh MAC"
    );
    assert!(config.get("template").is_none());
    assert!(
        config["description"]
            .as_str()
            .unwrap()
            .contains("provisioned netbox-vm=7 owner=test")
    );
    assert_eq!(config["digest"].as_str().unwrap().len(), 40);

    // nextid reserves nothing; it moves on once the VM exists, and a taken id is refused.
    assert_eq!(next_id(&api).await, 106);
    let err = api.get("/cluster/nextid?vmid=105").await.unwrap_err();
    assert!(
        matches!(&err, PveError::Status { status: 400, .. }),
        "{err:?}"
    );

    // A clone onto the other node (shared storage) lives there once done.
    let other = clone_template(&api, "vm-b", Some("pve2")).await;
    assert_eq!(resource(&api, other).await.unwrap()["node"], "pve2");
    // The id is taken now: a second clone onto it is refused before any task.
    let err = api
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([("newid", other.to_string()), ("full", flag(true))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PveError::Status {
            path: "/nodes/pve1/qemu/9000/clone".into(),
            status: 500,
            message: format!("unable to create VM {other}: config file already exists"),
        }
    );

    // The reader sees both, unlocked and unprotected.
    let inv = read_inventory(&api, &ReadOptions::default()).await.unwrap();
    for id in [vmid, other] {
        let g = inv.guests.iter().find(|g| g.vmid == id).unwrap();
        assert_eq!(
            (g.lock.as_deref(), g.protection, g.template),
            (None, false, false)
        );
        assert_eq!(g.disks[0].size_bytes, Some(8 << 30));
    }
}

#[tokio::test]
async fn config_is_written_with_its_digest_and_a_stale_digest_is_refused() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let api = writer(&pve);
    let vmid = clone_template(&api, "vm-config", None).await;
    let path = format!("/nodes/pve1/qemu/{vmid}/config");
    let digest = api.get(&path).await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyOne+/= ops@example.com\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyTwo ci@example.com";
    let answer = api
        .post(
            &path,
            &form([
                ("cores", "4"),
                ("sockets", "1"),
                ("memory", "4096"),
                ("net1", "virtio,bridge=vmbr0,tag=200"),
                ("ipconfig0", "ip=10.100.0.50/24,gw=10.100.0.1"),
                ("ipconfig1", "ip=10.200.0.50/24"),
                ("ciuser", "ops"),
                ("sshkeys", &percent_encode(keys)),
                ("nameserver", "10.100.0.53"),
                ("searchdomain", "example.com"),
                ("onboot", "1"),
                ("tags", "pno-provisioned"),
                ("digest", &digest),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(upid_of(&answer).task_type(), "qmconfig");
    run(&api, answer).await.unwrap();
    let config = api.get(&path).await.unwrap();
    assert_eq!(config["cores"], "4", "{config}");
    assert_eq!(config["memory"], "4096");
    assert_eq!(config["net1"], "virtio,bridge=vmbr0,tag=200");
    assert_eq!(config["ipconfig0"], "ip=10.100.0.50/24,gw=10.100.0.1");
    assert_eq!(config["ciuser"], "ops");
    assert_eq!(config["sshkeys"], percent_encode(keys).as_str());
    assert_eq!(config["tags"], "pno-provisioned");
    assert_ne!(config["digest"], digest.as_str());

    // The old digest no longer matches: POST fails in its task, PUT at once; nothing changes.
    let answer = api
        .post(&path, &form([("cores", "8"), ("digest", &digest)]))
        .await
        .unwrap();
    let (task_type, exit, _) = failed(run(&api, answer).await);
    assert_eq!(task_type, "qmconfig");
    assert_eq!(exit, "checksum mismatch (file change by other user?)");
    let err = api
        .put(&path, &form([("cores", "8"), ("digest", &digest)]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PveError::Status {
            path: path.clone(),
            status: 500,
            message: "checksum mismatch (file change by other user?)".into()
        }
    );
    assert_eq!(api.get(&path).await.unwrap()["cores"], "4");
    // PUT with the fresh digest is done before PVE answers: null, no task.
    let fresh = api.get(&path).await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = api
        .put(&path, &form([("delete", "net1"), ("digest", &fresh)]))
        .await
        .unwrap();
    assert_eq!(task_of(&answer), Ok(None));
    assert!(api.get(&path).await.unwrap().get("net1").is_none());
    // sshkeys not percent-encoded are refused by the schema.
    let err = api
        .put(&path, &form([("sshkeys", keys)]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PveError::Status { status: 400, message, .. } if message.contains("sshkeys")),
        "{err:?}"
    );
}

#[tokio::test]
async fn resize_grows_a_disk_and_shrinking_is_a_failed_task() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let api = writer(&pve);
    let vmid = clone_template(&api, "vm-resize", None).await;
    let config_path = format!("/nodes/pve1/qemu/{vmid}/config");
    let resize = format!("/nodes/pve1/qemu/{vmid}/resize");
    let size_of = |config: &Value| config["scsi0"].as_str().unwrap().to_string();

    let answer = api
        .put(&resize, &form([("disk", "scsi0"), ("size", "+2G")]))
        .await
        .unwrap();
    assert_eq!(upid_of(&answer).task_type(), "resize");
    run(&api, answer).await.unwrap();
    assert_eq!(
        size_of(&api.get(&config_path).await.unwrap()),
        "ceph-vm:vm-105-disk-0,discard=on,size=10G"
    );
    // Absolute, in MiB, as the provisioning writes it.
    let answer = api
        .put(&resize, &form([("disk", "scsi0"), ("size", "12800M")]))
        .await
        .unwrap();
    run(&api, answer).await.unwrap();
    assert_eq!(
        size_of(&api.get(&config_path).await.unwrap()),
        "ceph-vm:vm-105-disk-0,discard=on,size=12800M"
    );
    // The same size again is no change and no error (as PVE).
    let answer = api
        .put(&resize, &form([("disk", "scsi0"), ("size", "12800M")]))
        .await
        .unwrap();
    run(&api, answer).await.unwrap();

    let answer = api
        .put(&resize, &form([("disk", "scsi0"), ("size", "4G")]))
        .await
        .unwrap();
    let (task_type, exit, log) = failed(run(&api, answer).await);
    assert_eq!(task_type, "resize");
    assert_eq!(exit, "shrinking disks is not supported");
    assert_eq!(
        log.last().map(String::as_str),
        Some("TASK ERROR: shrinking disks is not supported")
    );
    let answer = api
        .put(&resize, &form([("disk", "scsi3"), ("size", "+1G")]))
        .await
        .unwrap();
    assert_eq!(
        failed(run(&api, answer).await).1,
        "disk 'scsi3' does not exist"
    );
    let answer = api
        .put(&resize, &form([("disk", "ide2"), ("size", "+1G")]))
        .await
        .unwrap();
    assert_eq!(
        failed(run(&api, answer).await).1,
        "you can't resize a cdrom"
    );
    assert_eq!(
        size_of(&api.get(&config_path).await.unwrap()),
        "ceph-vm:vm-105-disk-0,discard=on,size=12800M",
        "unchanged by the refused ones"
    );
    // A size PVE's pattern does not take is refused before any task.
    let err = api
        .put(&resize, &form([("disk", "scsi0"), ("size", "-1G")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PveError::Status { status: 400, .. }),
        "{err:?}"
    );
    // The volume grew too.
    let content = api
        .get("/nodes/pve1/storage/ceph-vm/content")
        .await
        .unwrap();
    let volume = content
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volid"] == "ceph-vm:vm-105-disk-0")
        .unwrap()
        .clone();
    assert_eq!(volume["size"], 12800u64 << 20);
}

#[tokio::test]
async fn start_shutdown_and_stop_are_tasks_on_the_guest_node() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let api = writer(&pve);
    let vmid = clone_template(&api, "vm-power", Some("pve2")).await;
    let base = format!("/nodes/pve2/qemu/{vmid}/status");
    assert_eq!(status(&api, "pve2", vmid).await, "stopped");
    let answer = api.post(&format!("{base}/start"), &[]).await.unwrap();
    let upid = upid_of(&answer);
    assert_eq!((upid.node(), upid.task_type()), ("pve2", "qmstart"));
    run(&api, answer).await.unwrap();
    assert_eq!(status(&api, "pve2", vmid).await, "running");
    let answer = api
        .post(&format!("{base}/shutdown"), &form([("timeout", "30")]))
        .await
        .unwrap();
    assert_eq!(upid_of(&answer).task_type(), "qmshutdown");
    run(&api, answer).await.unwrap();
    assert_eq!(status(&api, "pve2", vmid).await, "stopped");
    let answer = api.post(&format!("{base}/start"), &[]).await.unwrap();
    run(&api, answer).await.unwrap();
    let answer = api
        .post(&format!("{base}/stop"), &form([("overrule-shutdown", "1")]))
        .await
        .unwrap();
    assert_eq!(upid_of(&answer).task_type(), "qmstop");
    run(&api, answer).await.unwrap();
    assert_eq!(status(&api, "pve2", vmid).await, "stopped");
    // Shutting down a stopped VM is refused before any task.
    let err = api
        .post(&format!("{base}/shutdown"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PveError::Status {
            path: format!("{base}/shutdown"),
            status: 500,
            message: format!("VM {vmid} not running"),
        }
    );
    // A guest that ignores ACPI: the shutdown task fails at its timeout; stop ends it.
    let answer = api
        .post(
            "/nodes/pve1/qemu/102/status/shutdown",
            &form([("timeout", "10")]),
        )
        .await
        .unwrap();
    let (task_type, exit, _) = failed(run(&api, answer).await);
    assert_eq!(
        (task_type.as_str(), exit.as_str()),
        ("qmshutdown", "VM quit/powerdown failed - got timeout")
    );
    let answer = api
        .post("/nodes/pve1/qemu/102/status/stop", &[])
        .await
        .unwrap();
    run(&api, answer).await.unwrap();
    assert_eq!(status(&api, "pve1", 102).await, "stopped");
}

#[tokio::test]
async fn destroy_purges_the_vm_and_frees_its_disks() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let api = writer(&pve);
    let vmid = clone_template(&api, "vm-destroy", None).await;
    let path = format!("/nodes/pve1/qemu/{vmid}");
    let answer = api
        .delete(
            &path,
            &form([("purge", "1"), ("destroy-unreferenced-disks", "1")]),
        )
        .await
        .unwrap();
    assert_eq!(upid_of(&answer).task_type(), "qmdestroy");
    run(&api, answer).await.unwrap();
    assert!(resource(&api, vmid).await.is_none());
    let content = api
        .get("/nodes/pve1/storage/ceph-vm/content")
        .await
        .unwrap();
    assert!(
        !content.to_string().contains(&format!("vm-{vmid}-disk")),
        "{content}"
    );
    // Again: PVE no longer knows it (what a replayed destroy meets).
    let err = api.delete(&path, &[]).await.unwrap_err();
    assert_eq!(
        err,
        PveError::Status {
            path: path.clone(),
            status: 500,
            message: format!(
                "Configuration file 'nodes/pve1/qemu-server/{vmid}.conf' does not exist"
            ),
        }
    );
    // Protected, running: refused before any task.
    let err = api
        .delete("/nodes/pve1/qemu/100", &form([("purge", "1")]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("can't remove VM 100 - protection mode enabled"),
        "{err}"
    );
    let err = api.delete("/nodes/pve2/qemu/101", &[]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("VM 101 is running - destroy failed"),
        "{err}"
    );
    assert!(resource(&api, 100).await.is_some() && resource(&api, 101).await.is_some());
}

#[tokio::test]
async fn a_failing_task_is_failed_with_its_exit_status_and_log() {
    let env = HarnessEnv::load();
    // An in-task error of fakepve's catalogue on one guest's start, through the launcher.
    let rule = r#"{"method": "POST", "path": "/nodes/pve2/qemu/103/status/start", "error": "qemu_exited_code"}"#;
    let pve = start(&env, &["--fail", rule]);
    let api = writer(&pve);

    // Starting a running VM: PVE fails the task, not the request.
    let answer = api
        .post("/nodes/pve2/qemu/101/status/start", &[])
        .await
        .unwrap();
    let err = run(&api, answer).await.unwrap_err();
    assert_eq!(err.metric_label(), "TaskFailed");
    assert_eq!(
        err.to_string(),
        "PVE task qmstart failed: VM 101 already running (the end of its log is in the node's task list)"
    );
    let (_, _, log) = failed(Err(err));
    assert_eq!(
        log.last().map(String::as_str),
        Some("TASK ERROR: VM 101 already running")
    );

    // A full clone onto a storage without room: the task fails and the VM is gone again.
    let vmid = next_id(&api).await;
    let answer = api
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([
                ("newid", vmid.to_string()),
                ("full", flag(true)),
                ("storage", "nearly-full".into()),
            ]),
        )
        .await
        .unwrap();
    let (task_type, exit, _) = failed(run(&api, answer).await);
    assert_eq!(task_type, "qmclone");
    assert_eq!(
        exit,
        "clone failed: unable to write to storage 'nearly-full': No space left on device"
    );
    assert!(resource(&api, vmid).await.is_none());

    // The injected failure.
    let answer = api
        .post("/nodes/pve2/qemu/103/status/start", &[])
        .await
        .unwrap();
    let (task_type, exit, _) = failed(run(&api, answer).await);
    assert_eq!(task_type, "qmstart");
    assert!(exit.starts_with("QEMU exited with code"), "{exit}");
    assert_eq!(status(&api, "pve2", 103).await, "stopped");
}

#[tokio::test]
async fn the_read_token_is_refused_every_write_and_fails_the_preflight() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let read = reader(&pve);
    let write = writer(&pve);
    let err = read
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([("newid", "105"), ("full", "1")]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PveError::Forbidden {
            path: "/nodes/pve1/qemu/9000/clone".into(),
            message: "Permission check failed (/vms/9000, VM.Clone)".into()
        }
    );
    for result in [
        read.post("/nodes/pve2/qemu/101/config", &form([("cores", "2")]))
            .await,
        read.put(
            "/nodes/pve2/qemu/101/resize",
            &form([("disk", "scsi0"), ("size", "+1G")]),
        )
        .await,
        read.post("/nodes/pve2/qemu/101/status/stop", &[]).await,
        read.delete("/nodes/pve2/qemu/101", &[]).await,
    ] {
        assert!(
            matches!(result, Err(PveError::Forbidden { .. })),
            "{result:?}"
        );
    }
    assert!(resource(&read, 101).await.is_some());
    assert_eq!(status(&read, "pve2", 101).await, "running");

    // The preflight tells the two tokens apart.
    let read_perms = read.get("/access/permissions").await.unwrap();
    assert_eq!(
        missing_provisioning(&read_perms, &[]),
        PROVISIONING_PRIVILEGES
    );
    assert_eq!(evaluate(&read_perms).excess_write, Vec::<String>::new());
    let perms = write.get("/access/permissions").await.unwrap();
    assert_eq!(missing_provisioning(&perms, &[]), Vec::<String>::new());
    assert!(missing_provisioning(&perms, &["/vms/9000", "/storage/ceph-vm"]).is_empty());
    let allowed: Vec<&str> = PROVISIONING_PRIVILEGES
        .iter()
        .chain(PROVISIONING_EXTRA_PRIVILEGES)
        .copied()
        .collect();
    let report = evaluate_allowing(&perms, &allowed);
    assert!(
        report.is_clean() && report.excess_write.is_empty(),
        "{report:?}"
    );
    assert!(
        evaluate(&perms)
            .excess_write
            .contains(&"VM.Clone".to_string())
    );
}

#[tokio::test]
async fn ticket_auth_writes_carry_the_csrf_token() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let username = pve.provision_username.clone().unwrap();
    let password = pve.provision_password.clone().unwrap();
    let api = PveClient::new(PveConnection {
        auth: PveAuth::Ticket {
            username: username.clone(),
            password: SecretString::new(password.clone()),
        },
        retries: 0,
        ..pve_connection(&pve)
    })
    .unwrap();
    let vmid = next_id(&api).await;
    let answer = api
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([("newid", vmid.to_string()), ("name", "vm-ticket".into())]),
        )
        .await
        .unwrap();
    let upid = upid_of(&answer);
    assert_eq!(upid.user(), username, "the task belongs to the user");
    run(&api, answer).await.unwrap();
    assert_eq!(resource(&api, vmid).await.unwrap()["name"], "vm-ticket");
    let answer = api
        .delete(&format!("/nodes/pve1/qemu/{vmid}"), &[])
        .await
        .unwrap();
    run(&api, answer).await.unwrap();

    // Without the token PVE refuses a write made with the same kind of ticket.
    proxmox_netbox_operator::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(&pve.ca_file).unwrap()).unwrap(),
        ])
        .build()
        .unwrap();
    let login: Value = http
        .post(format!("{}/api2/json/access/ticket", pve.url))
        .form(&[
            ("username", username.as_str()),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = login["data"]["ticket"].as_str().unwrap();
    let refused = http
        .post(format!(
            "{}/api2/json/nodes/pve2/qemu/101/status/stop",
            pve.url
        ))
        .header("Cookie", format!("PVEAuthCookie={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("invalid csrf token"));
    assert_eq!(status(&api, "pve2", 101).await, "running");
}

/// What a stand-in server does with each request it reads.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answer this status with an empty body (keep the connection).
    Status(u16),
    /// Never answer (keep the connection open).
    Hang,
    /// Close the connection without answering.
    Close,
}

/// A TLS server with the fake PVE's certificate that reads whole requests, records their
/// request lines, and acts on the n-th one as `script[n]` says (the last act repeats).
async fn stand_in(pve: &FakePve, script: Vec<Act>) -> (String, Arc<Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pve.ca_file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pve.key_file()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, script) = (acceptor.clone(), seen.clone(), script.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then content-length bytes of body.
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(head.lines().next().unwrap_or_default().to_string());
                        seen.len() - 1
                    };
                    match script[n.min(script.len() - 1)] {
                        Act::Status(code) => {
                            let answer =
                                format!("HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\n\r\n");
                            if tls.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Act::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Act::Close => return,
                    }
                }
            });
        }
    });
    (url, log)
}

/// A provisioning client of `endpoints` with `retries` and a 2 s timeout.
fn client_of(pve: &FakePve, endpoints: Vec<String>, retries: u32) -> PveClient {
    PveClient::new(PveConnection {
        endpoints,
        retries,
        timeout: Duration::from_secs(2),
        ..provision_connection(pve)
    })
    .unwrap()
}

#[tokio::test]
async fn a_write_whose_answer_never_comes_is_outcome_unknown_and_sent_once() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let clone = "/nodes/pve1/qemu/9000/clone";
    let params = form([("newid", "105"), ("full", "1")]);

    // No answer: OutcomeUnknown after the timeout, one request, although retries are allowed.
    let (url, seen) = stand_in(&pve, vec![Act::Hang]).await;
    let api = client_of(&pve, vec![url, pve.url.clone()], 3);
    let started = Instant::now();
    let err = api.post(clone, &params).await.unwrap_err();
    assert!(
        matches!(&err, PveError::OutcomeUnknown { path, .. } if path == clone),
        "{err:?}"
    );
    assert!(err.is_transport());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retry, no failover"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        seen.lock().unwrap().clone(),
        [format!("POST /api2/json{clone} HTTP/1.1")]
    );
    assert!(
        resource(&writer(&pve), 105).await.is_none(),
        "the next endpoint was not tried"
    );

    // The connection closed after the request was read: the same, for each method.
    let (url, seen) = stand_in(&pve, vec![Act::Close]).await;
    let api = client_of(&pve, vec![url], 3);
    for err in [
        api.post(clone, &params).await.unwrap_err(),
        api.put("/nodes/pve1/qemu/100/resize", &params)
            .await
            .unwrap_err(),
        api.delete("/nodes/pve1/qemu/100", &params)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, PveError::OutcomeUnknown { .. }), "{err:?}");
    }
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());

    // A gateway error is no answer of PVE's either; 429 is retried (PVE did nothing).
    let (url, seen) = stand_in(&pve, vec![Act::Status(429), Act::Status(504)]).await;
    let api = client_of(&pve, vec![url], 3);
    let err = api.post(clone, &params).await.unwrap_err();
    assert!(matches!(err, PveError::OutcomeUnknown { .. }), "{err:?}");
    assert!(err.to_string().contains("504"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A GET the same server does not answer is retried as before (reads are idempotent).
    let (url, seen) = stand_in(&pve, vec![Act::Close]).await;
    let api = client_of(&pve, vec![url], 2);
    assert!(api.get("/version").await.unwrap_err().is_transport());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_write_fails_over_when_nothing_was_sent() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    // A port nobody listens on: the connect is refused, nothing is sent.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = client_of(
        &pve,
        vec![format!("https://127.0.0.1:{closed}"), pve.url.clone()],
        1,
    );
    // The write first: a read before it would already have failed over.
    let answer = api
        .post("/nodes/pve1/qemu/9000/clone", &form([("newid", "105")]))
        .await
        .unwrap();
    run(&api, answer).await.unwrap();
    assert!(resource(&api, 105).await.is_some());
    assert_eq!(next_id(&api).await, 106);
}

#[tokio::test]
async fn a_task_past_its_timeout_is_timed_out_and_keeps_running() {
    let env = HarnessEnv::load();
    // VM 103 takes 30 PVE seconds to start: 3 s here.
    let pve = start(&env, &["--time-scale", "0.1"]);
    let api = writer(&pve);
    let answer = api
        .post("/nodes/pve2/qemu/103/status/start", &[])
        .await
        .unwrap();
    let upid = upid_of(&answer);
    let started = Instant::now();
    let err = wait_task(
        &api,
        &upid,
        &quick(Duration::from_millis(400)),
        &TaskRecorder::default(),
    )
    .await
    .unwrap_err();
    let TaskError::TimedOut { upid: late, waited } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(late, &upid);
    assert!(*waited >= Duration::from_millis(400), "{waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up at the timeout"
    );
    assert_eq!(err.metric_label(), "TaskTimedOut");
    assert!(
        err.to_string().contains("left running on node pve2"),
        "{err}"
    );
    let tasks = api.get("/nodes/pve2/tasks").await.unwrap();
    assert!(
        tasks
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["upid"] == upid.as_str() && t.get("status").is_none()),
        "still running: {tasks}"
    );
    assert_eq!(status(&api, "pve2", 103).await, "stopped");
    // Waiting again, long enough, sees it end.
    let done = wait_task(
        &api,
        &upid,
        &quick(Duration::from_secs(20)),
        &TaskRecorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(done.upid, upid);
    assert_eq!(status(&api, "pve2", 103).await, "running");
}

#[tokio::test]
async fn a_slow_clone_is_listed_locked_until_its_task_ends() {
    let env = HarnessEnv::load();
    // RBD operations take 20 PVE seconds: a clone onto ceph-vm runs for 2 s here.
    let pve = start(&env, &["--time-scale", "0.1", "--ceph-slow", "20"]);
    let api = writer(&pve);
    let answer = api
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([
                ("newid", "105"),
                ("full", "1"),
                ("storage", "ceph-vm"),
                ("target", "pve2"),
            ]),
        )
        .await
        .unwrap();
    let upid = upid_of(&answer);
    // Listed at once, locked, on the template's node until the task ends.
    let r = resource(&api, 105).await.expect("listed while cloning");
    assert_eq!(
        (r["lock"].as_str(), r["node"].as_str()),
        (Some("clone"), Some("pve1"))
    );
    let inv = read_inventory(&reader(&pve), &ReadOptions::default())
        .await
        .unwrap();
    let g = inv.guests.iter().find(|g| g.vmid == 105).unwrap();
    assert_eq!(
        (g.lock.as_deref(), g.node.as_str()),
        (Some("clone"), "pve1")
    );
    // A config write meanwhile is refused: PVE's lock.
    let err = api
        .put("/nodes/pve1/qemu/105/config", &form([("cores", "2")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("VM is locked (clone)"), "{err}");
    let done = wait_task(
        &api,
        &upid,
        &quick(Duration::from_secs(30)),
        &TaskRecorder::default(),
    )
    .await
    .unwrap();
    assert!(done.waited >= Duration::from_millis(500), "{done:?}");
    let r = resource(&api, 105).await.unwrap();
    assert!(r.get("lock").is_none(), "{r}");
    assert_eq!(r["node"], "pve2");
}

#[tokio::test]
async fn writes_and_tasks_are_timed_under_fixed_labels() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = PveMetrics::register(&mut registry);
    let api = writer(&pve).with_recorder(metrics.recorder("infra/lab"));
    let tasks = metrics.task_recorder("infra/lab");
    let wait = quick(Duration::from_secs(30));
    let vmid = next_id(&api).await;
    let answer = api
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &form([("newid", vmid.to_string())]),
        )
        .await
        .unwrap();
    wait_task(&api, &upid_of(&answer), &wait, &tasks)
        .await
        .unwrap();
    let answer = api
        .put(
            &format!("/nodes/pve1/qemu/{vmid}/resize"),
            &form([("disk", "scsi0"), ("size", "1G")]),
        )
        .await
        .unwrap();
    wait_task(&api, &upid_of(&answer), &wait, &tasks)
        .await
        .unwrap_err();
    let answer = api
        .post(&format!("/nodes/pve1/qemu/{vmid}/status/start"), &[])
        .await
        .unwrap();
    wait_task(&api, &upid_of(&answer), &wait, &tasks)
        .await
        .unwrap();
    let answer = api
        .post(&format!("/nodes/pve1/qemu/{vmid}/status/stop"), &[])
        .await
        .unwrap();
    wait_task(&api, &upid_of(&answer), &wait, &tasks)
        .await
        .unwrap();
    api.put(
        &format!("/nodes/pve1/qemu/{vmid}/config"),
        &form([("cores", "2")]),
    )
    .await
    .unwrap();
    let answer = api
        .delete(&format!("/nodes/pve1/qemu/{vmid}"), &[])
        .await
        .unwrap();
    wait_task(&api, &upid_of(&answer), &wait, &tasks)
        .await
        .unwrap();
    let read = reader(&pve).with_recorder(metrics.recorder("infra/lab"));
    read.post("/nodes/pve2/qemu/101/config", &form([("cores", "1")]))
        .await
        .unwrap_err();

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for (operation, outcome) in [
        ("nextid", "success"),
        ("clone", "success"),
        ("resize", "success"),
        ("power", "success"),
        ("config_write", "success"),
        ("config_write", "Forbidden"),
        ("destroy", "success"),
        ("task_status", "success"),
        ("task_log", "success"),
    ] {
        let series = format!(
            r#"pve_request_duration_seconds_count{{cluster="infra/lab",operation="{operation}",outcome="{outcome}"}}"#
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    for (kind, outcome) in [
        ("qmclone", "success"),
        ("resize", "TaskFailed"),
        ("qmstart", "success"),
        ("qmstop", "success"),
        ("qmdestroy", "success"),
    ] {
        let series = format!(
            r#"pve_task_duration_seconds_count{{cluster="infra/lab",type="{kind}",outcome="{outcome}"}} 1"#
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    assert!(!text.contains("operation=\"other\""), "{text}");
    // No label value comes from a path: no node, vmid or UPID.
    for labels in text
        .lines()
        .filter_map(|l| Some(l.split_once('{')?.1.split_once('}')?.0))
    {
        for leak in [
            "pve1",
            "pve2",
            "UPID",
            &vmid.to_string(),
            "9000",
            "provision",
        ] {
            assert!(!labels.contains(leak), "{leak} in {labels}");
        }
    }
}

#[tokio::test]
async fn the_reader_sees_locks_and_protection_and_the_seed_is_written() {
    let env = HarnessEnv::load();
    let pve = start(&env, &[]);
    let expected = pve.expected();
    let guests = expected["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 7);
    let inv = read_inventory(&reader(&pve), &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        inv.completeness.failures().count(),
        0,
        "{:?}",
        inv.completeness
    );
    assert_eq!(inv.guests.len(), 7);
    for (g, e) in inv.guests.iter().zip(guests) {
        assert_eq!(u64::from(g.vmid), e["vmid"].as_u64().unwrap());
        assert_eq!(g.lock.as_deref(), e["lock"].as_str(), "{}", g.vmid);
        assert_eq!(
            g.protection,
            e["protection"].as_bool().unwrap(),
            "{}",
            g.vmid
        );
        assert_eq!(g.template, e["template"].as_bool().unwrap(), "{}", g.vmid);
    }
    let by_id = |id: u32| inv.guests.iter().find(|g| g.vmid == id).unwrap();
    assert!(by_id(100).protection);
    assert_eq!(by_id(104).lock.as_deref(), Some("backup"));
    assert!(by_id(9000).template);
    // Unset, the fields stay out of the serialized inventory.
    let json = serde_json::to_value(by_id(101)).unwrap();
    assert!(
        json.get("lock").is_none() && json.get("protection").is_none(),
        "{json}"
    );
    let json = serde_json::to_value(by_id(104)).unwrap();
    assert_eq!(json["lock"], "backup");
    assert_eq!(
        serde_json::to_value(by_id(100)).unwrap()["protection"],
        true
    );
    // A locked guest refuses changes.
    let err = writer(&pve)
        .post("/nodes/pve2/qemu/104/status/stop", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("VM is locked (backup)"), "{err}");
}
