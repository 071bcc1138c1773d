//! The one-shot `sync` command: the controller's pipeline, once, without Kubernetes.
//!
//! The ProxmoxCluster (and any NodeSSHCredentials for it) come from a YAML file; Secret
//! values from `DIR/<secret-name>/<key>`. The file's endpoints are checked against the
//! endpoint guard before anything is read. The JSON output is a stable contract
//! (docs/sync-json.md).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::crd::schema_check::check_document;
use crate::crd::{NodeSSHCredential, ProxmoxCluster, ProxmoxClusterStatus};
use crate::inventory::InventoryCounts;
use crate::net::guard::{EndpointError, EndpointGuard};
use crate::netbox::report::SyncReport;
use crate::pipeline::{RunOptions, StageLimits, Stages, run_pipeline};
use crate::secrets::DirSecrets;
use crate::status::{NetBoxOutcome, build_status};

/// Largest resource file accepted.
const MAX_RESOURCE_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Output format of `sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A human-readable summary.
    Text,
    /// The JSON document described in docs/sync-json.md.
    Json,
}

/// Options of `sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// YAML file with one ProxmoxCluster and optionally NodeSSHCredentials for it.
    #[arg(short = 'f', long = "file", env = "PNO_FILE")]
    pub file: PathBuf,
    /// Directory with Secret values as `DIR/<secret-name>/<key>` (the layout of a mounted Secret).
    #[arg(
        long,
        default_value = "/var/run/secrets/proxmox-netbox",
        env = "PNO_SECRETS_DIR"
    )]
    pub secrets_dir: PathBuf,
    /// Compute and print the plan; write nothing (overrides spec.sync.mode).
    #[arg(long, env = "PNO_DRY_RUN")]
    pub dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", env = "PNO_OUTPUT")]
    pub output: OutputFormat,
    /// First part of the owner mark on every NetBox object this run writes (see
    /// docs/operations.md, "Ownership"). Runs that share a NetBox and must not touch each
    /// other's objects need different ids; to hand a cluster over to the operator, use the
    /// operator's id.
    #[arg(
        long,
        default_value = "sync",
        env = "PNO_INSTALLATION_ID",
        value_parser = crate::args::installation_id_arg
    )]
    pub installation_id: String,
    /// The endpoint guard's allow-list.
    #[command(flatten)]
    pub endpoints: crate::args::EndpointArgs,
}

/// Why the resource file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SyncFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// The YAML is invalid or a document does not match its kind.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// Cause, naming the document.
        message: String,
    },
    /// The endpoint guard refused an endpoint of the file.
    #[error("{path}: {error}")]
    EndpointRefused {
        /// File.
        path: String,
        /// The refusal, naming the field.
        error: EndpointError,
    },
}

impl SyncFileError {
    /// Stable label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "FileUnreadable",
            Self::Invalid { .. } => "FileInvalid",
            Self::EndpointRefused { .. } => "EndpointRefused",
        }
    }
}

/// Reads the ProxmoxCluster and the NodeSSHCredentials that reference it from a YAML file.
pub fn load_resources(
    path: &Path,
) -> Result<(ProxmoxCluster, Vec<NodeSSHCredential>), SyncFileError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| SyncFileError::Read {
        path: p.clone(),
        message: e.to_string(),
    })?;
    if meta.len() > MAX_RESOURCE_FILE_BYTES {
        return Err(SyncFileError::Invalid {
            path: p,
            message: "file is larger than 4 MiB".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| SyncFileError::Read {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| SyncFileError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
    let mut clusters = Vec::new();
    let mut credentials = Vec::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        // A file written for `kubectl apply` may omit the namespace.
        if doc["metadata"].get("namespace").is_none() && doc["metadata"].is_object() {
            doc["metadata"]["namespace"] = Value::String("default".into());
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let invalid = |e: serde_json::Error| SyncFileError::Invalid {
            path: p.clone(),
            message: format!("document {} ({kind}): {e}", i + 1),
        };
        if matches!(kind.as_str(), "ProxmoxCluster" | "NodeSSHCredential") {
            // What the API server would refuse is refused here too.
            check_document(&doc).map_err(|errors| SyncFileError::Invalid {
                path: p.clone(),
                message: format!(
                    "document {} ({kind} {:?}): {}",
                    i + 1,
                    doc["metadata"]["name"].as_str().unwrap_or_default(),
                    errors.join("; ")
                ),
            })?;
        }
        match kind.as_str() {
            "ProxmoxCluster" => {
                clusters.push(serde_json::from_value::<ProxmoxCluster>(doc).map_err(invalid)?)
            }
            "NodeSSHCredential" => {
                credentials.push(serde_json::from_value::<NodeSSHCredential>(doc).map_err(invalid)?)
            }
            _ => {}
        }
    }
    let cluster = match clusters.len() {
        1 => clusters.remove(0),
        n => {
            return Err(SyncFileError::Invalid {
                path: p,
                message: format!("expected exactly one ProxmoxCluster, found {n}"),
            });
        }
    };
    let name = cluster.metadata.name.clone().unwrap_or_default();
    credentials.retain(|c| c.spec.cluster_ref.name == name);
    Ok((cluster, credentials))
}

/// Checks the endpoints of the resources before anything is read, as the clients will: the
/// PVE endpoints and the NetBox URL (scheme, user info, query, fragment, IP literals), and
/// the `spec.address` of each NodeSSHCredential when it is an IP literal. Host names are
/// checked on their resolved addresses when connecting.
pub fn check_endpoints(
    cluster: &ProxmoxCluster,
    credentials: &[NodeSSHCredential],
    guard: &EndpointGuard,
) -> Result<(), EndpointError> {
    guard.check_pve_endpoints(&cluster.spec.proxmox.endpoints)?;
    guard.check_netbox_url(
        &cluster.spec.netbox.url,
        cluster.spec.netbox.allow_insecure_http,
    )?;
    for c in credentials {
        if let Some(address) = &c.spec.address {
            let name = c.metadata.name.as_deref().unwrap_or_default();
            guard.check_host(&format!("NodeSSHCredential {name}: spec.address"), address)?;
        }
    }
    Ok(())
}

/// The JSON document printed by `sync --output json` (docs/sync-json.md).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutput {
    /// Version of this document's shape.
    pub schema_version: u32,
    /// `namespace/name` of the ProxmoxCluster.
    pub cluster: String,
    /// `Sync` or `DryRun`.
    pub mode: &'static str,
    /// True when every stage fully succeeded.
    pub success: bool,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// Inventory counts, when Proxmox was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryCounts>,
    /// The status the controller would write (conditions, per-node facts, read failures).
    pub status: ProxmoxClusterStatus,
    /// The NetBox report (per kind counts, request counts, errors, plan), when the sync ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netbox: Option<SyncReport>,
}

/// Runs `sync` with the given stages; returns the document and whether it succeeded.
pub async fn run_sync(
    args: &SyncArgs,
    stages: &Stages<'_>,
    now: DateTime<Utc>,
) -> Result<SyncOutput, SyncFileError> {
    let (cluster, credentials) = load_resources(&args.file)?;
    check_endpoints(&cluster, &credentials, &args.endpoints.guard()).map_err(|error| {
        SyncFileError::EndpointRefused {
            path: args.file.display().to_string(),
            error,
        }
    })?;
    let secrets = DirSecrets::new(&args.secrets_dir);
    let run = run_pipeline(
        stages,
        &cluster,
        &credentials,
        &secrets,
        RunOptions {
            force_dry_run: args.dry_run,
            limits: StageLimits::default(),
            installation: args.installation_id.clone(),
        },
        now,
    )
    .await;
    let status = build_status(cluster.metadata.generation, None, &run.outcome, now);
    Ok(SyncOutput {
        schema_version: 1,
        cluster: crate::pipeline::owner_key(&cluster),
        mode: if run.outcome.dry_run {
            "DryRun"
        } else {
            "Sync"
        },
        success: run.outcome.fully_successful(),
        started_at: crate::status::rfc3339(now),
        inventory: run.outcome.inventory.as_ref().map(|i| i.counts()),
        status,
        netbox: match &run.outcome.netbox {
            NetBoxOutcome::Done(_) => run.report,
            _ => None,
        },
    })
}

/// Renders the human-readable summary.
pub fn render_text(out: &SyncOutput) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "ProxmoxCluster {} ({}): {}\n",
        out.cluster,
        out.mode,
        if out.success { "OK" } else { "NOT OK" }
    ));
    if let Some(c) = &out.inventory {
        s.push_str(&format!(
            "Proxmox inventory: {} nodes ({} online), {} VMs, {} containers, {} templates, {} interfaces, {} IP addresses, {} disks, {} storage pools\n",
            c.nodes, c.nodes_online, c.vms, c.containers, c.templates, c.interfaces, c.ip_addresses, c.disks, c.storage_pools
        ));
    }
    for cond in &out.status.conditions {
        s.push_str(&format!(
            "  {:<18} {:<5} {:<20} {}\n",
            cond.type_, cond.status, cond.reason, cond.message
        ));
    }
    for f in &out.status.read_failures {
        s.push_str(&format!(
            "  read failed: {}: {} ({})\n",
            f.scope, f.reason, f.message
        ));
    }
    for n in &out.status.nodes {
        if let Some(w) = &n.warning {
            s.push_str(&format!("  node {}: {}: {}\n", n.name, w.code, w.message));
        }
    }
    if let Some(sync) = &out.status.sync {
        s.push_str(&format!(
            "NetBox: created {}, updated {}, unchanged {}, deleted {}, stale {}, failed {}, collisions {}; {} read and {} write requests\n",
            sync.created, sync.updated, sync.unchanged, sync.deleted, sync.stale, sync.failed, sync.collisions, sync.read_requests, sync.write_requests
        ));
        for e in &sync.errors {
            s.push_str(&format!("  error: {e}\n"));
        }
    }
    if let Some(report) = &out.netbox {
        s.push_str("Per kind (created/updated/unchanged/deleted/failed):\n");
        let width = report.kinds.keys().map(|k| k.len()).max().unwrap_or(0);
        for (kind, c) in &report.kinds {
            s.push_str(&format!(
                "  {kind:<width$} {}/{}/{}/{}/{}\n",
                c.created, c.updated, c.unchanged, c.deleted, c.failed
            ));
        }
    }
    if out.mode == "DryRun"
        && let Some(plan) = out.netbox.as_ref().map(|r| &r.plan)
    {
        s.push_str(&format!(
            "Plan ({} changes, nothing written):\n",
            plan.len()
        ));
        for p in plan.iter().take(TEXT_PLAN_LINES) {
            s.push_str(&format!(
                "  {:<10} {:<30} {} [{}]\n",
                p.action,
                p.kind,
                p.object,
                p.fields.join(", ")
            ));
        }
        if plan.len() > TEXT_PLAN_LINES {
            s.push_str(&format!(
                "  ... and {} more (--output json has the whole plan)\n",
                plan.len() - TEXT_PLAN_LINES
            ));
        }
    }
    s
}

/// Plan entries shown by the text output of a dry-run.
const TEXT_PLAN_LINES: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const CLUSTER: &str = r#"
apiVersion: proxmox-netbox.io/v1alpha1
kind: ProxmoxCluster
metadata: {name: lab}
spec:
  proxmox: {endpoints: ["https://pve1:8006"], credentialsSecretRef: {name: pve}}
  netbox: {url: "http://127.0.0.1:8000", allowInsecureHttp: true, tokenSecretRef: {name: nb, key: token}, site: dc1}
"#;

    #[test]
    fn loads_the_cluster_and_only_its_credentials() {
        let f = write(&format!(
            "{CLUSTER}---\n{}---\n{}",
            "apiVersion: proxmox-netbox.io/v1alpha1\nkind: NodeSSHCredential\nmetadata: {name: a}\nspec: {clusterRef: {name: lab}, nodeName: pve1, username: u, passwordSecretRef: {name: s, key: p}, hostKeyFingerprint: \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"}\n",
            "apiVersion: proxmox-netbox.io/v1alpha1\nkind: NodeSSHCredential\nmetadata: {name: b}\nspec: {clusterRef: {name: other}, nodeName: pve9, username: u, passwordSecretRef: {name: s, key: p}, hostKeyFingerprint: \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"}\n",
        ));
        let (cluster, creds) = load_resources(f.path()).unwrap();
        assert_eq!(cluster.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].spec.node_name, "pve1");
    }

    #[test]
    fn the_file_is_checked_against_the_endpoint_guard() {
        let f = write(CLUSTER);
        let (mut cluster, creds) = load_resources(f.path()).unwrap();
        // The guard refuses plain http on its own too (the schema's rule aside).
        cluster.spec.netbox.allow_insecure_http = false;
        let guard = EndpointGuard::default();
        assert_eq!(
            check_endpoints(&cluster, &creds, &guard)
                .unwrap_err()
                .to_string(),
            "spec.netbox.url: plain http is refused: use https, or set spec.netbox.allowInsecureHttp: true"
        );
        cluster.spec.netbox.allow_insecure_http = true;
        assert_eq!(
            check_endpoints(&cluster, &creds, &guard)
                .unwrap_err()
                .to_string(),
            "spec.netbox.url: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)"
        );
        let loopback = EndpointGuard::new(["127.0.0.0/8".parse().unwrap()]);
        check_endpoints(&cluster, &creds, &loopback).unwrap();
        cluster.spec.proxmox.endpoints = vec![
            "https://pve1:8006".into(),
            "https://root:secret@pve2:8006".into(),
        ];
        let err = check_endpoints(&cluster, &creds, &loopback)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec.proxmox.endpoints[1]: a user name or password"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        cluster.spec.proxmox.endpoints.truncate(1);
        let f = write(&format!(
            "{CLUSTER}---\n{}",
            "apiVersion: proxmox-netbox.io/v1alpha1\nkind: NodeSSHCredential\nmetadata: {name: lab-pve1}\nspec: {clusterRef: {name: lab}, nodeName: pve1, address: 169.254.169.254, username: u, passwordSecretRef: {name: s, key: p}, hostKeyFingerprint: \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"}\n",
        ));
        let (_, creds) = load_resources(f.path()).unwrap();
        let err = check_endpoints(&cluster, &creds, &loopback)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("NodeSSHCredential lab-pve1: spec.address: 169.254.169.254 is a cloud metadata address; refused"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_document() {
        let f = write("kind: ConfigMap\n");
        let err = load_resources(f.path()).unwrap_err().to_string();
        assert!(
            err.contains("expected exactly one ProxmoxCluster, found 0"),
            "{err}"
        );
        let f = write(
            "apiVersion: proxmox-netbox.io/v1alpha1\nkind: ProxmoxCluster\nmetadata: {name: x}\nspec: {proxmox: {}}\n",
        );
        let err = load_resources(f.path()).unwrap_err().to_string();
        assert!(err.contains("document 1 (ProxmoxCluster \"x\")"), "{err}");
        assert!(err.contains("spec.netbox: Required value"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        // What the CRD's CEL rules refuse is refused before anything is contacted.
        let f = write(&CLUSTER.replace("allowInsecureHttp: true", "allowInsecureHttp: false"));
        let err = load_resources(f.path()).unwrap_err().to_string();
        assert!(
            err.contains(
                "spec.netbox.url must use https unless spec.netbox.allowInsecureHttp is true"
            ),
            "{err}"
        );
    }
}
