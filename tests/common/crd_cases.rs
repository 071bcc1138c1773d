//! ProxmoxCluster and NodeSSHCredential objects the API server must refuse, each with the
//! words its refusal must contain: shared by the API-server check (`e2e_crd_validation`) and
//! the `sync` command's own check of its input file (`sync_file_validation`).

use serde_json::{Value, json};

pub const FINGERPRINT: &str = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";

pub fn valid_cluster() -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
        "metadata": {"name": "valid"},
        "spec": {
            "proxmox": {"endpoints": ["https://pve1.example.com:8006", "https://10.0.0.2:8006"],
                        "credentialsSecretRef": {"name": "lab-pve"},
                        "tls": {"caSecretRef": {"name": "lab-pve-ca", "key": "ca.crt"}},
                        "requestTimeout": "1m30s", "maxConcurrency": 64},
            "netbox": {"url": "https://netbox.example.com",
                       "tokenSecretRef": {"name": "netbox", "key": "token"}, "site": "dc1",
                       "maxInFlight": 16, "tags": ["pve"]},
            "sync": {"interval": "720h", "mode": "DryRun", "kinds": ["Nodes", "VirtualMachines"],
                     "prune": {"enabled": true, "gracePeriod": "0s"}},
            "hardwareDiscovery": {"enabled": true, "connectTimeout": "10m", "commandTimeout": "1.25s250000µs"},
            "provisioning": {"enabled": true, "selector": {"tag": "provision"}, "storage": "ceph-vm",
                             "template": "debian-12-cloud", "node": "pve-02.lab", "pool": "provisioned",
                             "cloudInit": {"user": "ops", "nameservers": ["10.0.0.53", "2001:db8::53"],
                                           "sshKeysSecretRef": {"name": "ssh", "key": "keys"}},
                             "taskTimeout": "2h", "shutdownTimeout": "10s", "maxConcurrentTasks": 8,
                             "retire": {"enabled": true, "recordPolicy": "Delete"}}
        }
    })
}

pub fn valid_credential() -> Value {
    json!({
        "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "NodeSSHCredential",
        "metadata": {"name": "valid"},
        "spec": {"clusterRef": {"name": "valid"}, "nodeName": "pve1", "username": "netbox-discovery",
                 "port": 2222, "privateKeySecretRef": {"name": "pve1-ssh", "key": "id_ed25519"},
                 "hostKeyFingerprint": FINGERPRINT}
    })
}

/// `base` with the value at a dotted path (`spec.sync.interval`) replaced, or removed for
/// `Value::Null`.
pub fn with(base: Value, path: &str, value: Value) -> Value {
    let mut obj = base;
    let (parents, last) = path.rsplit_once('.').expect("a dotted path");
    let mut node = &mut obj;
    for p in parents.split('.') {
        node = &mut node[p];
    }
    match value {
        Value::Null => {
            node.as_object_mut().expect("an object").remove(last);
        }
        v => node[last] = v,
    }
    obj
}

/// One object the API server must refuse.
pub struct Case {
    /// What is wrong with it.
    pub what: &'static str,
    /// The object.
    pub object: Value,
    /// Every one of these must be in the API server's message (the first names the field).
    pub expect: &'static [&'static str],
}

pub fn cases() -> Vec<Case> {
    let cluster = valid_cluster;
    let credential = valid_credential;
    let endpoints = |n: usize| {
        json!(
            (0..n)
                .map(|i| format!("https://pve{i}.example.com:8006"))
                .collect::<Vec<_>>()
        )
    };
    vec![
        Case {
            what: "a sync interval too large for any duration",
            object: with(
                cluster(),
                "spec.sync.interval",
                json!("99999999999999999999h"),
            ),
            // CEL's duration() itself fails; the rule's message still names the field.
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a sync interval above its bound",
            object: with(cluster(), "spec.sync.interval", json!("721h")),
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a sync interval below its minimum",
            object: with(cluster(), "spec.sync.interval", json!("10s")),
            expect: &[
                "spec.sync.interval",
                "spec.sync.interval must be between 30s and 720h",
            ],
        },
        Case {
            what: "a PVE request timeout above its bound",
            object: with(cluster(), "spec.proxmox.requestTimeout", json!("2h")),
            expect: &[
                "spec.proxmox.requestTimeout",
                "spec.proxmox.requestTimeout must be between 1s and 1h",
            ],
        },
        Case {
            what: "a negative grace period",
            object: with(cluster(), "spec.sync.prune.gracePeriod", json!("-1h")),
            expect: &["spec.sync.prune.gracePeriod", "should match"],
        },
        Case {
            what: "a grace period in days",
            object: with(cluster(), "spec.sync.prune.gracePeriod", json!("30d")),
            expect: &["spec.sync.prune.gracePeriod", "should match"],
        },
        Case {
            what: "an over-long duration text",
            object: with(
                cluster(),
                "spec.hardwareDiscovery.connectTimeout",
                json!("1s".repeat(17)),
            ),
            expect: &["spec.hardwareDiscovery.connectTimeout", "Too long"],
        },
        Case {
            what: "an SSH command timeout of zero",
            object: with(
                cluster(),
                "spec.hardwareDiscovery.commandTimeout",
                json!("0s"),
            ),
            expect: &[
                "spec.hardwareDiscovery.commandTimeout",
                "must be between 1s and 1h",
            ],
        },
        Case {
            what: "an ftp:// PVE endpoint",
            object: with(
                cluster(),
                "spec.proxmox.endpoints",
                json!(["ftp://pve1.example.com:8006"]),
            ),
            expect: &["spec.proxmox.endpoints[0]", "should match"],
        },
        Case {
            what: "a plain-http PVE endpoint",
            object: with(
                cluster(),
                "spec.proxmox.endpoints",
                json!([
                    "https://pve1.example.com:8006",
                    "http://pve2.example.com:8006"
                ]),
            ),
            expect: &["spec.proxmox.endpoints[1]", "should match"],
        },
        Case {
            what: "no PVE endpoint",
            object: with(cluster(), "spec.proxmox.endpoints", json!([])),
            expect: &["spec.proxmox.endpoints"],
        },
        Case {
            what: "17 PVE endpoints",
            object: with(cluster(), "spec.proxmox.endpoints", endpoints(17)),
            expect: &["spec.proxmox.endpoints", "Too many"],
        },
        Case {
            what: "an ftp:// NetBox URL",
            object: with(
                cluster(),
                "spec.netbox.url",
                json!("ftp://netbox.example.com"),
            ),
            expect: &["spec.netbox.url", "should match"],
        },
        Case {
            what: "maxInFlight 0",
            object: with(cluster(), "spec.netbox.maxInFlight", json!(0)),
            expect: &["spec.netbox.maxInFlight", "greater than or equal to 1"],
        },
        Case {
            what: "maxConcurrency 100000",
            object: with(cluster(), "spec.proxmox.maxConcurrency", json!(100_000)),
            expect: &["spec.proxmox.maxConcurrency", "less than or equal to 64"],
        },
        Case {
            what: "a 101-character site",
            object: with(cluster(), "spec.netbox.site", json!("s".repeat(101))),
            expect: &["spec.netbox.site", "Too long"],
        },
        Case {
            what: "33 tags",
            object: with(
                cluster(),
                "spec.netbox.tags",
                json!((0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            ),
            expect: &["spec.netbox.tags", "Too many"],
        },
        Case {
            what: "an unknown sync mode",
            object: with(cluster(), "spec.sync.mode", json!("Sometimes")),
            expect: &["spec.sync.mode", "Unsupported value"],
        },
        Case {
            what: "an unknown sync kind",
            object: with(cluster(), "spec.sync.kinds", json!(["Nodes", "Printers"])),
            expect: &["spec.sync.kinds[1]", "Unsupported value"],
        },
        Case {
            what: "an unknown deletion policy",
            object: with(cluster(), "spec.deletionPolicy", json!("Purge")),
            expect: &["spec.deletionPolicy", "Unsupported value"],
        },
        Case {
            what: "a CA bundle together with insecureSkipVerify",
            object: with(
                cluster(),
                "spec.proxmox.tls.insecureSkipVerify",
                json!(true),
            ),
            expect: &[
                "spec.proxmox.tls",
                "caSecretRef and insecureSkipVerify: true exclude each other",
            ],
        },
        Case {
            what: "a Secret reference into another namespace",
            object: with(
                cluster(),
                "spec.proxmox.credentialsSecretRef.namespace",
                json!("kube-system"),
            ),
            expect: &["spec.proxmox.credentialsSecretRef.namespace"],
        },
        Case {
            what: "no NetBox site",
            object: with(cluster(), "spec.netbox.site", Value::Null),
            expect: &["spec.netbox.site", "Required value"],
        },
        Case {
            what: "a host-key fingerprint that is not SHA256",
            object: with(
                credential(),
                "spec.hostKeyFingerprint",
                json!("MD5:aa:bb:cc"),
            ),
            expect: &["spec.hostKeyFingerprint", "should match"],
        },
        Case {
            what: "a truncated SHA256 fingerprint",
            object: with(
                credential(),
                "spec.hostKeyFingerprint",
                json!(&FINGERPRINT[..40]),
            ),
            expect: &["spec.hostKeyFingerprint", "should match"],
        },
        Case {
            what: "two SSH authentication methods",
            object: with(
                credential(),
                "spec.passwordSecretRef",
                json!({"name": "pve1-ssh", "key": "password"}),
            ),
            expect: &[
                "spec",
                "exactly one of privateKeySecretRef and passwordSecretRef must be set",
            ],
        },
        Case {
            what: "no SSH authentication method",
            object: with(credential(), "spec.privateKeySecretRef", Value::Null),
            expect: &[
                "spec",
                "exactly one of privateKeySecretRef and passwordSecretRef must be set",
            ],
        },
        Case {
            what: "provisioning on without a storage",
            object: with(cluster(), "spec.provisioning.storage", Value::Null),
            expect: &[
                "spec.provisioning",
                "spec.provisioning.storage is required when spec.provisioning.enabled is true",
            ],
        },
        Case {
            what: "provisioning on without a selector",
            object: with(cluster(), "spec.provisioning.selector", json!({})),
            expect: &[
                "spec.provisioning",
                "spec.provisioning.selector must name a tag or a role when spec.provisioning.enabled is true",
            ],
        },
        Case {
            what: "a provisioning task timeout above its bound",
            object: with(cluster(), "spec.provisioning.taskTimeout", json!("3h")),
            expect: &[
                "spec.provisioning.taskTimeout",
                "spec.provisioning.taskTimeout must be between 10s and 2h",
            ],
        },
        Case {
            what: "a DNS server that is not an IP address",
            object: with(
                cluster(),
                "spec.provisioning.cloudInit.nameservers",
                json!(["dns.example.com"]),
            ),
            expect: &[
                "spec.provisioning.cloudInit.nameservers",
                "spec.provisioning.cloudInit.nameservers must be IP addresses",
            ],
        },
        Case {
            what: "nine provisioning tasks at once",
            object: with(cluster(), "spec.provisioning.maxConcurrentTasks", json!(9)),
            expect: &[
                "spec.provisioning.maxConcurrentTasks",
                "less than or equal to 8",
            ],
        },
        Case {
            what: "a target node name with a space",
            object: with(cluster(), "spec.provisioning.node", json!("pve 1")),
            expect: &["spec.provisioning.node", "should match"],
        },
        Case {
            what: "SSH port 70000",
            object: with(credential(), "spec.port", json!(70_000)),
            expect: &["spec.port", "less than or equal to 65535"],
        },
        Case {
            what: "a user name with a shell metacharacter",
            object: with(credential(), "spec.username", json!("root;id")),
            expect: &["spec.username", "should match"],
        },
        Case {
            what: "a 64-character node name",
            object: with(credential(), "spec.nodeName", json!("n".repeat(64))),
            expect: &["spec.nodeName", "Too long"],
        },
        Case {
            what: "a private-key Secret reference into another namespace",
            object: with(
                credential(),
                "spec.privateKeySecretRef.namespace",
                json!("kube-system"),
            ),
            expect: &["spec.privateKeySecretRef.namespace"],
        },
    ]
}
