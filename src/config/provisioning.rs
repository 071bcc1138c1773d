//! Resolution of `spec.provisioning`: durations parsed and bounded, the SSH keys read and
//! checked, the provisioning credentials read. Every error names the field.

use crate::crd::{
    MAX_NAMESERVERS, ProvisioningMode, ProxmoxCluster, SHUTDOWN_TIMEOUT_BOUNDS, SyncMode,
    TASK_TIMEOUT_BOUNDS,
};
use crate::provision::settings::{CloudInit, ProvisionSettings, Selector};
use crate::secrets::SecretSource;
use crate::stage_errors::ConfigError;

use super::{PveCredentials, bounded_duration, pve_credentials, read_key};

/// Longest SSH key text accepted.
pub const MAX_SSH_KEYS_BYTES: usize = 64 * 1024;
/// Most SSH keys accepted.
pub const MAX_SSH_KEYS: usize = 100;

/// Key types an OpenSSH public key line may start with.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The resolved `spec.provisioning`, when it is enabled.
#[derive(Clone, Debug)]
pub struct ResolvedProvisioning {
    /// What provisioning does.
    pub settings: ProvisionSettings,
    /// Its own PVE credentials (`spec.provisioning.credentialsSecretRef`); `None`: the
    /// credentials of the read.
    pub credentials: Option<PveCredentials>,
}

/// Resolves `spec.provisioning`; `None` when it is off.
pub async fn resolve_provisioning(
    cluster: &ProxmoxCluster,
    secrets: &dyn SecretSource,
) -> Result<Option<ResolvedProvisioning>, ConfigError> {
    let spec = &cluster.spec.provisioning;
    if !spec.enabled {
        return Ok(None);
    }
    let field = |f: &str| format!("spec.provisioning.{f}");
    let task_timeout = bounded_duration(&TASK_TIMEOUT_BOUNDS, &spec.task_timeout)?;
    let shutdown_timeout = bounded_duration(&SHUTDOWN_TIMEOUT_BOUNDS, &spec.shutdown_timeout)?;
    // The CRD's CEL rules say the same; a file given to `sync` is not checked by an API
    // server.
    let Some(storage) = spec.storage.clone() else {
        return Err(ConfigError::invalid_spec(
            field("storage"),
            "is required when spec.provisioning.enabled is true",
        ));
    };
    if spec.selector.tag.is_none() && spec.selector.role.is_none() {
        return Err(ConfigError::invalid_spec(
            field("selector"),
            "must name a tag or a role when spec.provisioning.enabled is true",
        ));
    }
    if spec.cloud_init.nameservers.len() > MAX_NAMESERVERS {
        return Err(ConfigError::invalid_spec(
            field("cloudInit.nameservers"),
            format!("at most {MAX_NAMESERVERS} DNS servers"),
        ));
    }
    for (i, ns) in spec.cloud_init.nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid_spec(
                format!("spec.provisioning.cloudInit.nameservers[{i}]"),
                "must be an IP address",
            ));
        }
    }
    let ssh_keys = match &spec.cloud_init.ssh_keys_secret_ref {
        Some(r) => {
            let f = field("cloudInit.sshKeysSecretRef");
            let keys = read_key(secrets, &f, r).await?;
            Some(check_ssh_keys(&f, keys.expose())?)
        }
        None => None,
    };
    let credentials = match &spec.credentials_secret_ref {
        Some(r) => {
            Some(pve_credentials(secrets, "spec.provisioning.credentialsSecretRef", &r.name).await?)
        }
        None => None,
    };
    Ok(Some(ResolvedProvisioning {
        settings: ProvisionSettings {
            dry_run: spec.mode == ProvisioningMode::DryRun
                || cluster.spec.sync.mode == SyncMode::DryRun,
            selector: Selector {
                tag: spec.selector.tag.clone(),
                role: spec.selector.role.clone(),
            },
            template: spec.template.clone(),
            node: spec.node.clone(),
            storage,
            pool: spec.pool.clone(),
            cloud_init: CloudInit {
                user: spec.cloud_init.user.clone(),
                ssh_keys,
                nameservers: spec.cloud_init.nameservers.clone(),
                search_domain: spec.cloud_init.search_domain.clone(),
            },
            nic_bridge: spec.network.bridge.clone(),
            nic_model: spec.network.model.as_str(),
            start: spec.start,
            task_timeout,
            shutdown_timeout,
            max_concurrent_tasks: usize::try_from(spec.max_concurrent_tasks.clamp(1, 8))
                .unwrap_or(2),
            max_creates_per_pass: usize::try_from(spec.max_creates_per_pass.clamp(1, 100))
                .unwrap_or(5),
            retire: spec.retire.enabled.then_some(spec.retire.record_policy),
            follow_resources: spec.follow_resources,
        },
        credentials,
    }))
}

/// The SSH public keys of a Secret: one OpenSSH key per non-empty line, joined with
/// newlines. The error names the line, never quotes it.
pub fn check_ssh_keys(field: &str, text: &str) -> Result<String, ConfigError> {
    if text.len() > MAX_SSH_KEYS_BYTES {
        return Err(ConfigError::invalid_spec(
            field,
            format!("the keys are longer than {} KiB", MAX_SSH_KEYS_BYTES / 1024),
        ));
    }
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default();
        let blob_ok = blob.len() >= 16
            && blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        let clean = !line.chars().any(char::is_control);
        if !SSH_KEY_TYPES.contains(&kind) || !blob_ok || !clean {
            return Err(ConfigError::invalid_spec(
                field,
                format!(
                    "line {} is not an OpenSSH public key (type {}, then its base64 data)",
                    i + 1,
                    SSH_KEY_TYPES.join(", ")
                ),
            ));
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err(ConfigError::invalid_spec(
            field,
            "the Secret key holds no SSH public key",
        ));
    }
    if keys.len() > MAX_SSH_KEYS {
        return Err(ConfigError::invalid_spec(
            field,
            format!("more than {MAX_SSH_KEYS} keys"),
        ));
    }
    Ok(keys.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "spec.provisioning.cloudInit.sshKeysSecretRef";

    #[test]
    fn ssh_keys_are_checked_line_by_line_and_never_quoted() {
        let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example\n\n# a comment\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 b@c\n";
        let keys = check_ssh_keys(FIELD, ok).unwrap();
        assert_eq!(keys.lines().count(), 2);
        let err = check_ssh_keys(
            FIELD,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq\nhunter2-the-password",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.provisioning.cloudInit.sshKeysSecretRef: line 2 is not an OpenSSH public key (type ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, then its base64 data)"
        );
        assert!(!err.to_string().contains("hunter2"));
        assert!(check_ssh_keys(FIELD, "").is_err());
        assert!(check_ssh_keys(FIELD, &"ssh-ed25519 AAAAAAAAAAAAAAAAAAAA\n".repeat(5000)).is_err());
        assert!(check_ssh_keys(FIELD, "ssh-ed25519 AAAAAAAAAAAAAAAAAAAA\u{7}bell").is_err());
    }
}
