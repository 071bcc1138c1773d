//! Resolution of a ProxmoxCluster spec and its Secrets into ready-to-use settings.
//!
//! Every error names the spec field at fault and never contains a secret value.

use std::time::Duration;

use crate::conditions::reasons;
use crate::crd::{ProxmoxCluster, SecretKeyRef, TlsSpec};
use crate::secret::SecretString;
use crate::secrets::{SecretError, SecretSource};
use crate::status::StageError;
use crate::tls::TlsSettings;

/// How to authenticate to the PVE API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PveCredentials {
    /// API token (`user@realm!name` and its secret).
    Token {
        /// Token id.
        token_id: String,
        /// Token secret.
        secret: SecretString,
    },
    /// User and password (ticket authentication).
    Ticket {
        /// User (`user@realm`).
        username: String,
        /// Password.
        password: SecretString,
    },
}

/// Everything the pipeline needs from the spec and its Secrets.
#[derive(Clone, Debug)]
pub struct ResolvedCluster {
    /// `namespace/name` of the ProxmoxCluster: the owner key in NetBox.
    pub owner: String,
    /// PVE endpoints in order.
    pub pve_endpoints: Vec<String>,
    /// PVE credentials.
    pub pve_credentials: PveCredentials,
    /// PVE TLS settings.
    pub pve_tls: TlsSettings,
    /// PVE request timeout.
    pub pve_timeout: Duration,
    /// PVE requests in flight.
    pub pve_concurrency: usize,
    /// NetBox token.
    pub netbox_token: SecretString,
    /// NetBox TLS settings.
    pub netbox_tls: TlsSettings,
    /// NetBox request timeout.
    pub netbox_timeout: Duration,
    /// Prune grace period.
    pub prune_grace_period: Duration,
    /// SSH connect timeout.
    pub ssh_connect_timeout: Duration,
    /// SSH per-command timeout.
    pub ssh_command_timeout: Duration,
    /// Time between two syncs (`spec.sync.interval`, at least [`MIN_SYNC_INTERVAL`]).
    pub sync_interval: Duration,
}

/// Shortest `spec.sync.interval` accepted; a shorter one is a spec error naming the field.
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// `spec.sync.interval` of a cluster, validated: a Go duration of at least
/// [`MIN_SYNC_INTERVAL`].
pub fn sync_interval(cluster: &ProxmoxCluster) -> Result<Duration, StageError> {
    let field = "spec.sync.interval";
    let value = &cluster.spec.sync.interval;
    let d = duration(field, value)?;
    if d < MIN_SYNC_INTERVAL {
        return Err(StageError {
            reason: reasons::INVALID_SPEC,
            message: format!(
                "{field}: {value:?} is shorter than the minimum of {}s",
                MIN_SYNC_INTERVAL.as_secs()
            ),
        });
    }
    Ok(d)
}

fn secret_error(field: &str, e: SecretError) -> StageError {
    StageError {
        reason: e.metric_label(),
        message: format!("{field}: {e}"),
    }
}

/// Parses a Go-style duration from a spec field.
pub fn duration(field: &str, value: &str) -> Result<Duration, StageError> {
    value
        .parse::<kube::core::Duration>()
        .ok()
        .filter(|d| !d.is_negative())
        .map(Duration::from)
        .ok_or_else(|| StageError {
            reason: reasons::INVALID_SPEC,
            message: format!("{field}: {value:?} is not a duration such as 30s, 15m or 1h"),
        })
}

async fn read_key(
    secrets: &dyn SecretSource,
    field: &str,
    r: &SecretKeyRef,
) -> Result<SecretString, StageError> {
    let value = secrets
        .get(&r.name, &r.key)
        .await
        .map_err(|e| secret_error(field, e))?;
    if value.is_empty() {
        return Err(StageError {
            reason: reasons::SECRET_KEY_MISSING,
            message: format!("{field}: Secret {:?} key {:?} is empty", r.name, r.key),
        });
    }
    Ok(value)
}

async fn tls(
    secrets: &dyn SecretSource,
    field: &str,
    spec: &TlsSpec,
) -> Result<TlsSettings, StageError> {
    // The CRD's CEL rule says the same; a file given to `sync` is not checked by an API server.
    if spec.ca_secret_ref.is_some() && spec.insecure_skip_verify {
        return Err(StageError {
            reason: reasons::INVALID_SPEC,
            message: format!(
                "{field}: caSecretRef and insecureSkipVerify: true exclude each other: trust that CA, or remove caSecretRef"
            ),
        });
    }
    let ca_pem = match &spec.ca_secret_ref {
        Some(r) => Some(
            read_key(secrets, &format!("{field}.caSecretRef"), r)
                .await?
                .expose()
                .to_string(),
        ),
        None => None,
    };
    Ok(TlsSettings {
        ca_pem,
        insecure_skip_verify: spec.insecure_skip_verify,
    })
}

async fn pve_credentials(
    secrets: &dyn SecretSource,
    name: &str,
) -> Result<PveCredentials, StageError> {
    let field = "spec.proxmox.credentialsSecretRef";
    let get = |key: &'static str| {
        let field = field.to_string();
        async move {
            secrets
                .get_optional(name, key)
                .await
                .map_err(|e| secret_error(&field, e))
        }
    };
    let token_id = get("tokenId").await?;
    let token_secret = get("tokenSecret").await?;
    let username = get("username").await?;
    let password = get("password").await?;
    match (token_id, token_secret, username, password) {
        (Some(id), Some(secret), _, _) if !id.is_empty() && !secret.is_empty() => {
            let token_id = id.expose().trim().to_string();
            if !token_id.contains('!') || !token_id.contains('@') {
                return Err(StageError {
                    reason: reasons::INVALID_SPEC,
                    message: format!(
                        "{field}: Secret {name:?} key \"tokenId\" must look like user@realm!tokenname"
                    ),
                });
            }
            Ok(PveCredentials::Token { token_id, secret })
        }
        (_, _, Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            Ok(PveCredentials::Ticket {
                username: user.expose().trim().to_string(),
                password,
            })
        }
        _ => Err(StageError {
            reason: reasons::SECRET_KEY_MISSING,
            message: format!(
                "{field}: Secret {name:?} must hold keys tokenId and tokenSecret, or username and password"
            ),
        }),
    }
}

/// Resolves the spec of `cluster` and reads its Secrets.
pub async fn resolve(
    cluster: &ProxmoxCluster,
    owner: String,
    secrets: &dyn SecretSource,
) -> Result<ResolvedCluster, StageError> {
    let spec = &cluster.spec;
    if spec.proxmox.endpoints.is_empty() {
        return Err(StageError {
            reason: reasons::INVALID_SPEC,
            message: "spec.proxmox.endpoints: at least one endpoint is required".into(),
        });
    }
    // Checked before any Secret is read: a spec error is reported as such.
    let sync_interval = sync_interval(cluster)?;
    Ok(ResolvedCluster {
        sync_interval,
        owner,
        pve_endpoints: spec.proxmox.endpoints.clone(),
        pve_credentials: pve_credentials(secrets, &spec.proxmox.credentials_secret_ref.name)
            .await?,
        pve_tls: tls(secrets, "spec.proxmox.tls", &spec.proxmox.tls).await?,
        pve_timeout: duration("spec.proxmox.requestTimeout", &spec.proxmox.request_timeout)?,
        pve_concurrency: usize::try_from(spec.proxmox.max_concurrency.clamp(1, 64)).unwrap_or(8),
        netbox_token: read_key(
            secrets,
            "spec.netbox.tokenSecretRef",
            &spec.netbox.token_secret_ref,
        )
        .await?,
        netbox_tls: tls(secrets, "spec.netbox.tls", &spec.netbox.tls).await?,
        netbox_timeout: duration("spec.netbox.requestTimeout", &spec.netbox.request_timeout)?,
        prune_grace_period: duration("spec.sync.prune.gracePeriod", &spec.sync.prune.grace_period)?,
        ssh_connect_timeout: duration(
            "spec.hardwareDiscovery.connectTimeout",
            &spec.hardware_discovery.connect_timeout,
        )?,
        ssh_command_timeout: duration(
            "spec.hardwareDiscovery.commandTimeout",
            &spec.hardware_discovery.command_timeout,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::DirSecrets;

    fn cluster() -> ProxmoxCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab", "namespace": "infra"},
            "spec": {
                "proxmox": {"endpoints": ["https://pve1:8006"], "credentialsSecretRef": {"name": "pve"},
                            "tls": {"caSecretRef": {"name": "pve-ca", "key": "ca.crt"}}},
                "netbox": {"url": "https://nb", "tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"}
            }
        }))
        .unwrap()
    }

    fn write(dir: &std::path::Path, secret: &str, key: &str, value: &str) {
        std::fs::create_dir_all(dir.join(secret)).unwrap();
        std::fs::write(dir.join(secret).join(key), value).unwrap();
    }

    /// Every Secret key `cluster()` references, with placeholder values.
    fn all_secrets() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pve", "tokenId", "sync@pve!op");
        write(d.path(), "pve", "tokenSecret", "x");
        write(d.path(), "pve-ca", "ca.crt", "pem");
        write(d.path(), "nb", "token", "t");
        d
    }

    #[tokio::test]
    async fn resolves_token_credentials_ca_and_defaults() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pve", "tokenId", "sync@pve!op");
        write(d.path(), "pve", "tokenSecret", "s3cr3t-value");
        write(d.path(), "pve-ca", "ca.crt", "-----BEGIN CERTIFICATE-----");
        write(d.path(), "nb", "token", "nbt_abc.def");
        let r = resolve(&cluster(), "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap();
        assert!(
            matches!(&r.pve_credentials, PveCredentials::Token { token_id, .. } if token_id == "sync@pve!op")
        );
        assert_eq!(
            r.pve_tls.ca_pem.as_deref(),
            Some("-----BEGIN CERTIFICATE-----")
        );
        assert!(!r.pve_tls.insecure_skip_verify);
        assert_eq!(r.pve_timeout, Duration::from_secs(30));
        assert_eq!(r.prune_grace_period, Duration::from_secs(24 * 3600));
        assert!(
            !format!("{r:?}").contains("s3cr3t-value"),
            "Debug must not show secrets"
        );
    }

    #[tokio::test]
    async fn errors_name_the_field_and_never_the_value() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pve", "tokenId", "sync@pve!op");
        write(d.path(), "pve", "tokenSecret", "s3cr3t-value");
        write(d.path(), "pve-ca", "ca.crt", "pem");
        // NetBox Secret exists but lacks the key.
        write(d.path(), "nb", "other", "x");
        let err = resolve(&cluster(), "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason, reasons::SECRET_KEY_MISSING);
        assert!(
            err.message.starts_with("spec.netbox.tokenSecretRef:"),
            "{}",
            err.message
        );
        assert!(err.message.contains("\"token\""));

        let empty = tempfile::tempdir().unwrap();
        let err = resolve(
            &cluster(),
            "infra/lab".into(),
            &DirSecrets::new(empty.path()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason, reasons::SECRET_NOT_FOUND);
        assert!(
            err.message.contains("spec.proxmox.credentialsSecretRef"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_ca_bundle_with_skipped_verification_is_a_spec_error() {
        let d = all_secrets();
        let mut c = cluster();
        c.spec.proxmox.tls.insecure_skip_verify = true;
        let err = resolve(&c, "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason, reasons::INVALID_SPEC);
        assert!(
            err.message
                .starts_with("spec.proxmox.tls: caSecretRef and insecureSkipVerify"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn sync_interval_below_the_minimum_is_a_spec_error_naming_the_field() {
        let d = all_secrets();
        let mut c = cluster();
        c.spec.sync.interval = "10s".into();
        let err = resolve(&c, "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason, reasons::INVALID_SPEC);
        assert_eq!(
            err.message,
            "spec.sync.interval: \"10s\" is shorter than the minimum of 30s"
        );
        c.spec.sync.interval = "30s".into();
        let ok = resolve(&c, "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap();
        assert_eq!(ok.sync_interval, Duration::from_secs(30));
        c.spec.sync.interval = "1h30m".into();
        assert_eq!(sync_interval(&c).unwrap(), Duration::from_secs(5400));
    }

    #[tokio::test]
    async fn falls_back_to_ticket_auth_and_rejects_malformed_token_ids() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pve", "username", "root@pam");
        write(d.path(), "pve", "password", "pw-value");
        write(d.path(), "pve-ca", "ca.crt", "pem");
        write(d.path(), "nb", "token", "t");
        let r = resolve(&cluster(), "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap();
        assert!(matches!(r.pve_credentials, PveCredentials::Ticket { .. }));

        write(d.path(), "pve", "tokenId", "no-separator");
        write(d.path(), "pve", "tokenSecret", "x");
        let err = resolve(&cluster(), "infra/lab".into(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason, reasons::INVALID_SPEC);
        assert!(err.message.contains("user@realm!tokenname"));
    }
}
