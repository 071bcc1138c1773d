//! Resolution of a ProxmoxCluster spec and its Secrets into ready-to-use settings.
//!
//! Every conversion of the spec happens here, once: the stages get the resolved value and
//! never read the resource. Every error names the spec field at fault and never contains a
//! secret value.

mod provisioning;

use std::time::Duration;

pub use provisioning::{ResolvedProvisioning, check_ssh_keys, resolve_provisioning};

use crate::conditions::{reasons, types};
use crate::crd::{
    ADOPT_PREVIOUS_OWNER_ANNOTATION, DURATION_MAX_LENGTH, DurationBounds, MIN_WATCH_INTERVAL_SECS,
    MissingVlanPolicy, NETBOX_REQUEST_TIMEOUT_BOUNDS, PRUNE_GRACE_PERIOD_BOUNDS,
    PVE_REQUEST_TIMEOUT_BOUNDS, ProxmoxCluster, SSH_COMMAND_TIMEOUT_BOUNDS,
    SSH_CONNECT_TIMEOUT_BOUNDS, SYNC_INTERVAL_BOUNDS, SecretKeyRef, SyncKind, TemplatePolicy,
    TlsSpec, WATCH_INTERVAL_BOUNDS,
};
use crate::owner::OwnerScope;
use crate::secrets::{SecretSource, SecretString};
use crate::stage_errors::ConfigError;
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
    /// The NetBox side: owner key, token, TLS and timeout.
    pub netbox: ResolvedNetBox,
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
    /// Read the QEMU guest agent of running guests (`spec.proxmox.readGuestAgent`).
    pub pve_read_guest_agent: bool,
    /// Read Ceph when it is installed (`spec.proxmox.readCeph`).
    pub pve_read_ceph: bool,
    /// Run hardware discovery over SSH (`spec.hardwareDiscovery.enabled`).
    pub hardware_discovery: bool,
    /// Prune grace period.
    pub prune_grace_period: Duration,
    /// SSH connect timeout.
    pub ssh_connect_timeout: Duration,
    /// SSH per-command timeout.
    pub ssh_command_timeout: Duration,
    /// Time between two syncs (`spec.sync.interval`, at least [`MIN_SYNC_INTERVAL`]).
    pub sync_interval: Duration,
    /// Time between two polls for changes (`spec.sync.watchInterval`); `None`: no polls.
    pub watch_interval: Option<Duration>,
    /// What the NetBox sync writes.
    pub sync: SyncOptions,
    /// Provisioning (`spec.provisioning`), when it is enabled.
    pub provisioning: Option<ResolvedProvisioning>,
}

/// What the NetBox sync writes and how (`spec.netbox`, `spec.sync`, an annotation and the
/// last status), converted. The owner mark and the NetBox cluster name also depend on the
/// inventory: the NetBox stage completes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOptions {
    /// NetBox site of the nodes and the cluster.
    pub site: String,
    /// NetBox tenant, if any.
    pub tenant: Option<String>,
    /// NetBox VRF of the IP addresses, if any.
    pub vrf: Option<String>,
    /// `spec.netbox.clusterName`; without it the PVE cluster's name, else `resource_name`.
    pub cluster_name: Option<String>,
    /// The ProxmoxCluster's name.
    pub resource_name: String,
    /// NetBox cluster group, if any.
    pub cluster_group: Option<String>,
    /// NetBox cluster type.
    pub cluster_type: String,
    /// Device role of the nodes.
    pub device_role: String,
    /// Role of QEMU virtual machines.
    pub role_qemu: String,
    /// Role of LXC containers.
    pub role_lxc: String,
    /// Role of templates.
    pub role_template: String,
    /// Tags put on every object created.
    pub extra_tags: Vec<String>,
    /// Templates are synced (`spec.sync.templates: Sync`).
    pub sync_templates: bool,
    /// Nodes are synced as devices.
    pub nodes: bool,
    /// Node interfaces are synced (nodes too).
    pub node_interfaces: bool,
    /// Guests are synced as virtual machines.
    pub virtual_machines: bool,
    /// Guest interfaces are synced (guests too).
    pub vm_interfaces: bool,
    /// Guest disks are synced (guests too).
    pub virtual_disks: bool,
    /// IP addresses are synced.
    pub ip_addresses: bool,
    /// Unowned objects of the same identity are taken over.
    pub adopt_existing: bool,
    /// Guest notes become the description.
    pub description_from_notes: bool,
    /// Missing VLANs are created (`spec.netbox.missingVlans: Create`).
    pub create_missing_vlans: bool,
    /// Owned objects gone from Proxmox are deleted.
    pub prune: bool,
    /// Most owned objects of a kind pruned in one sync, in percent (1 to 100).
    pub prune_max_percent: u32,
    /// The resource carries the annotation that adopts the objects of its previous owner
    /// mark.
    pub adopt_previous_owner: bool,
    /// The last status shows a NetBox sync that never finished: its writes may still be
    /// running in NetBox.
    pub netbox_sync_interrupted: bool,
}

/// What talking to NetBox needs, resolved alone by [`resolve_netbox`]: the cleanup of a
/// deleted cluster reads only the NetBox Secrets, so a lost or rotated PVE Secret never
/// blocks it.
#[derive(Clone, Debug)]
pub struct ResolvedNetBox {
    /// NetBox URL.
    pub url: String,
    /// Plain http is allowed (`spec.netbox.allowInsecureHttp`).
    pub allow_insecure_http: bool,
    /// Whose objects these are (the mark is completed by the Proxmox cluster's name).
    pub owner: OwnerScope,
    /// NetBox token.
    pub token: SecretString,
    /// NetBox TLS settings.
    pub tls: TlsSettings,
    /// NetBox request timeout.
    pub timeout: Duration,
    /// NetBox requests in flight (`spec.netbox.maxInFlight`, at least 1).
    pub max_in_flight: usize,
}

/// Shortest `spec.sync.interval` accepted; a shorter one is a spec error naming the field.
pub const MIN_SYNC_INTERVAL: Duration = SYNC_INTERVAL_BOUNDS.min();

/// Longest `spec.sync.interval` accepted (30 days).
pub const MAX_SYNC_INTERVAL: Duration = SYNC_INTERVAL_BOUNDS.max();

/// Why a duration text was refused by [`parse_go_duration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not a sequence of numbers with units (`30s`, `1h30m`, `1.5h`, `250ms`).
    Syntax,
    /// Starts with `-`.
    Negative,
    /// Longer than `u64::MAX` nanoseconds (about 584 years).
    Overflow,
}

/// Nanoseconds per unit of a Go duration, `None` for an unknown unit. Both micro signs
/// (U+00B5 and U+03BC) are accepted, as Go does.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// Fraction digits that count: below 10^18, times a unit below 10^13 ns, stays far within a
/// u128. Later digits are below a nanosecond and ignored.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a Go duration (`30s`, `1h30m`, `1.5h`, `250ms`, `10us`): one or more numbers, each
/// with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); a number may have a decimal fraction.
/// Unlike Go, a sign or a bare `0` is refused, matching the CRD's pattern. Only checked
/// integer arithmetic is used: no input can panic, a too large value is
/// [`DurationError::Overflow`].
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Syntax);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut rest = text;
    // `None` once the sum overflows; the rest is still read, so malformed text is a
    // syntax error even after a too large number.
    let mut total: Option<u64> = Some(0);
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err(DurationError::Syntax);
        }
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(DurationError::Syntax);
                }
                f.split_at(n)
            }
            None => ("", after),
        };
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit = unit_nanos(unit).ok_or(DurationError::Syntax)?;

        let whole = int_digits.bytes().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let whole = whole.and_then(|w| w.checked_mul(nanos_per_unit));
        let mut fraction: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(MAX_FRACTION_DIGITS) {
            fraction = fraction * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        // Below one unit, so below u64::MAX; truncated like Go.
        let fraction_nanos = u64::try_from(fraction * u128::from(nanos_per_unit) / scale).ok();
        total = total
            .zip(whole)
            .and_then(|(t, w)| t.checked_add(w))
            .zip(fraction_nanos)
            .and_then(|(t, f)| t.checked_add(f));
        rest = after;
    }
    total
        .map(Duration::from_nanos)
        .ok_or(DurationError::Overflow)
}

/// The value as error messages quote it: escaped, and cut to 40 characters so a hostile
/// value cannot flood a condition or an Event.
fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    if value.chars().count() <= MAX_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head:?}... ({} characters)", value.chars().count())
    }
}

/// `spec.sync.watchInterval`: `None` for 0 (off), else at least
/// [`MIN_WATCH_INTERVAL_SECS`].
fn watch_interval(value: &str) -> Result<Option<Duration>, ConfigError> {
    let d = bounded_duration(&WATCH_INTERVAL_BOUNDS, value)?;
    if d.is_zero() {
        return Ok(None);
    }
    if d < Duration::from_secs(MIN_WATCH_INTERVAL_SECS) {
        return Err(ConfigError::invalid_spec(
            WATCH_INTERVAL_BOUNDS.field,
            format!(
                "{} is shorter than the minimum of {MIN_WATCH_INTERVAL_SECS}s (0 turns polling off)",
                quoted(value)
            ),
        ));
    }
    Ok(Some(d))
}

/// Parses the duration field `bounds.field` with [`parse_go_duration`] and checks it against
/// its bounds. Errors name the field and the bound, e.g.
/// `spec.sync.interval: "99999999999999999999h" is longer than the maximum of 720h`.
pub fn bounded_duration(bounds: &DurationBounds, value: &str) -> Result<Duration, ConfigError> {
    let invalid = |problem: String| ConfigError::invalid_spec(bounds.field, problem);
    let too_long = || {
        invalid(format!(
            "{} is longer than the maximum of {}",
            quoted(value),
            bounds.max_text()
        ))
    };
    if value.chars().count() > DURATION_MAX_LENGTH {
        return Err(invalid(format!(
            "{} is longer than {DURATION_MAX_LENGTH} characters",
            quoted(value)
        )));
    }
    let d = match parse_go_duration(value) {
        Ok(d) => d,
        Err(DurationError::Overflow) => return Err(too_long()),
        Err(DurationError::Negative) => {
            return Err(invalid(format!("{} must not be negative", quoted(value))));
        }
        Err(DurationError::Syntax) => {
            return Err(invalid(format!(
                "{} is not a duration such as 30s, 15m or 1h",
                quoted(value)
            )));
        }
    };
    if d > bounds.max() {
        return Err(too_long());
    }
    if d < bounds.min() {
        return Err(invalid(format!(
            "{} is shorter than the minimum of {}",
            quoted(value),
            bounds.min_text()
        )));
    }
    Ok(d)
}

async fn read_key(
    secrets: &dyn SecretSource,
    field: &str,
    r: &SecretKeyRef,
) -> Result<SecretString, ConfigError> {
    let value = secrets
        .get(&r.name, &r.key)
        .await
        .map_err(|source| ConfigError::Secret {
            field: field.into(),
            source,
        })?;
    if value.is_empty() {
        return Err(ConfigError::SecretKeyMissing {
            field: field.into(),
            problem: format!("Secret {:?} key {:?} is empty", r.name, r.key),
        });
    }
    Ok(value)
}

async fn tls(
    secrets: &dyn SecretSource,
    field: &str,
    spec: &TlsSpec,
) -> Result<TlsSettings, ConfigError> {
    // The CRD's CEL rule says the same; a file given to `sync` is not checked by an API server.
    if spec.ca_secret_ref.is_some() && spec.insecure_skip_verify {
        return Err(ConfigError::invalid_spec(
            field,
            "caSecretRef and insecureSkipVerify: true exclude each other: trust that CA, or remove caSecretRef",
        ));
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
    field: &str,
    name: &str,
) -> Result<PveCredentials, ConfigError> {
    let get = |key: &'static str| async move {
        secrets
            .get_optional(name, key)
            .await
            .map_err(|source| ConfigError::Secret {
                field: field.into(),
                source,
            })
    };
    let token_id = get("tokenId").await?;
    let token_secret = get("tokenSecret").await?;
    let username = get("username").await?;
    let password = get("password").await?;
    match (token_id, token_secret, username, password) {
        (Some(id), Some(secret), _, _) if !id.is_empty() && !secret.is_empty() => {
            let token_id = id.expose().trim().to_string();
            if !token_id.contains('!') || !token_id.contains('@') {
                return Err(ConfigError::invalid_spec(
                    field,
                    format!("Secret {name:?} key \"tokenId\" must look like user@realm!tokenname"),
                ));
            }
            Ok(PveCredentials::Token { token_id, secret })
        }
        (_, _, Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            Ok(PveCredentials::Ticket {
                username: user.expose().trim().to_string(),
                password,
            })
        }
        _ => Err(ConfigError::SecretKeyMissing {
            field: field.into(),
            problem: format!(
                "Secret {name:?} must hold keys tokenId and tokenSecret, or username and password"
            ),
        }),
    }
}

/// Resolves the spec of `cluster` and reads its Secrets.
pub async fn resolve(
    cluster: &ProxmoxCluster,
    owner: OwnerScope,
    secrets: &dyn SecretSource,
) -> Result<ResolvedCluster, ConfigError> {
    let spec = &cluster.spec;
    if spec.proxmox.endpoints.is_empty() {
        return Err(ConfigError::invalid_spec(
            "spec.proxmox.endpoints",
            "at least one endpoint is required",
        ));
    }
    // Checked before any Secret is read: a spec error is reported as such.
    let sync_interval = bounded_duration(&SYNC_INTERVAL_BOUNDS, &spec.sync.interval)?;
    let watch_interval = watch_interval(&spec.sync.watch_interval)?;
    let pve_timeout = bounded_duration(&PVE_REQUEST_TIMEOUT_BOUNDS, &spec.proxmox.request_timeout)?;
    let prune_grace_period =
        bounded_duration(&PRUNE_GRACE_PERIOD_BOUNDS, &spec.sync.prune.grace_period)?;
    let ssh_connect_timeout = bounded_duration(
        &SSH_CONNECT_TIMEOUT_BOUNDS,
        &spec.hardware_discovery.connect_timeout,
    )?;
    let ssh_command_timeout = bounded_duration(
        &SSH_COMMAND_TIMEOUT_BOUNDS,
        &spec.hardware_discovery.command_timeout,
    )?;
    // The NetBox timeout is checked before any Secret is read too.
    let netbox_timeout =
        bounded_duration(&NETBOX_REQUEST_TIMEOUT_BOUNDS, &spec.netbox.request_timeout)?;
    let pve_credentials = pve_credentials(
        secrets,
        "spec.proxmox.credentialsSecretRef",
        &spec.proxmox.credentials_secret_ref.name,
    )
    .await?;
    let pve_tls = tls(secrets, "spec.proxmox.tls", &spec.proxmox.tls).await?;
    Ok(ResolvedCluster {
        sync_interval,
        watch_interval,
        pve_timeout,
        prune_grace_period,
        ssh_connect_timeout,
        ssh_command_timeout,
        pve_endpoints: spec.proxmox.endpoints.clone(),
        pve_credentials,
        pve_tls,
        pve_concurrency: usize::try_from(spec.proxmox.max_concurrency.clamp(1, 64)).unwrap_or(8),
        pve_read_guest_agent: spec.proxmox.read_guest_agent,
        pve_read_ceph: spec.proxmox.read_ceph,
        hardware_discovery: spec.hardware_discovery.enabled,
        sync: sync_options(cluster),
        netbox: netbox_settings(cluster, owner, netbox_timeout, secrets).await?,
        provisioning: resolve_provisioning(cluster, secrets).await?,
    })
}

fn sync_options(cluster: &ProxmoxCluster) -> SyncOptions {
    let nb = &cluster.spec.netbox;
    let sync = &cluster.spec.sync;
    let kind = |k: SyncKind| sync.kinds.contains(&k);
    let adopt_previous_owner = cluster
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADOPT_PREVIOUS_OWNER_ANNOTATION))
        .is_some_and(|v| v == "true");
    let netbox_sync_interrupted = cluster
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == types::NETBOX_SYNCED)
        })
        .is_some_and(|c| c.reason == reasons::RECONCILING);
    SyncOptions {
        site: nb.site.clone(),
        tenant: nb.tenant.clone(),
        vrf: nb.vrf.clone(),
        cluster_name: nb.cluster_name.clone(),
        resource_name: cluster.metadata.name.clone().unwrap_or_default(),
        cluster_group: nb.cluster_group.clone(),
        cluster_type: nb.cluster_type.clone(),
        device_role: nb.device_role.clone(),
        role_qemu: nb.vm_roles.qemu.clone(),
        role_lxc: nb.vm_roles.lxc.clone(),
        role_template: nb.vm_roles.template.clone(),
        extra_tags: nb.tags.clone(),
        sync_templates: sync.templates == TemplatePolicy::Sync,
        nodes: kind(SyncKind::Nodes),
        node_interfaces: kind(SyncKind::Nodes) && kind(SyncKind::NodeInterfaces),
        virtual_machines: kind(SyncKind::VirtualMachines),
        vm_interfaces: kind(SyncKind::VirtualMachines) && kind(SyncKind::VmInterfaces),
        virtual_disks: kind(SyncKind::VirtualMachines) && kind(SyncKind::VirtualDisks),
        ip_addresses: kind(SyncKind::IpAddresses),
        adopt_existing: nb.adopt_existing,
        description_from_notes: nb.description_from_notes,
        create_missing_vlans: nb.missing_vlans == MissingVlanPolicy::Create,
        prune: sync.prune.enabled,
        prune_max_percent: u32::try_from(sync.prune.max_percent)
            .unwrap_or(10)
            .clamp(1, 100),
        adopt_previous_owner,
        netbox_sync_interrupted,
    }
}

/// Resolves only the NetBox part of the spec and reads only the NetBox Secrets.
pub async fn resolve_netbox(
    cluster: &ProxmoxCluster,
    owner: OwnerScope,
    secrets: &dyn SecretSource,
) -> Result<ResolvedNetBox, ConfigError> {
    let timeout = bounded_duration(
        &NETBOX_REQUEST_TIMEOUT_BOUNDS,
        &cluster.spec.netbox.request_timeout,
    )?;
    netbox_settings(cluster, owner, timeout, secrets).await
}

async fn netbox_settings(
    cluster: &ProxmoxCluster,
    owner: OwnerScope,
    timeout: Duration,
    secrets: &dyn SecretSource,
) -> Result<ResolvedNetBox, ConfigError> {
    let spec = &cluster.spec.netbox;
    Ok(ResolvedNetBox {
        url: spec.url.clone(),
        allow_insecure_http: spec.allow_insecure_http,
        owner,
        token: read_key(
            secrets,
            "spec.netbox.tokenSecretRef",
            &spec.token_secret_ref,
        )
        .await?,
        tls: tls(secrets, "spec.netbox.tls", &spec.tls).await?,
        timeout,
        max_in_flight: usize::try_from(spec.max_in_flight).unwrap_or(4).max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::DirSecrets;
    use crate::stage_errors::StageFailure;

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

    /// Resolves `c` with the owner scope every test here uses.
    async fn resolve_test(
        c: &ProxmoxCluster,
        secrets: &DirSecrets,
    ) -> Result<ResolvedCluster, ConfigError> {
        resolve(c, OwnerScope::new("test", "infra", "lab"), secrets).await
    }

    fn interval(c: &ProxmoxCluster) -> Result<Duration, ConfigError> {
        bounded_duration(&SYNC_INTERVAL_BOUNDS, &c.spec.sync.interval)
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
        let r = resolve_test(&cluster(), &DirSecrets::new(d.path()))
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
        let err = resolve_test(&cluster(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::SECRET_KEY_MISSING);
        assert!(
            err.to_string().starts_with("spec.netbox.tokenSecretRef:"),
            "{}",
            err.to_string()
        );
        assert!(err.to_string().contains("\"token\""));

        let empty = tempfile::tempdir().unwrap();
        let err = resolve_test(&cluster(), &DirSecrets::new(empty.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::SECRET_NOT_FOUND);
        assert!(
            err.to_string()
                .contains("spec.proxmox.credentialsSecretRef"),
            "{}",
            err.to_string()
        );
    }

    #[tokio::test]
    async fn a_ca_bundle_with_skipped_verification_is_a_spec_error() {
        let d = all_secrets();
        let mut c = cluster();
        c.spec.proxmox.tls.insecure_skip_verify = true;
        let err = resolve_test(&c, &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        assert!(
            err.to_string()
                .starts_with("spec.proxmox.tls: caSecretRef and insecureSkipVerify"),
            "{}",
            err.to_string()
        );
    }

    #[tokio::test]
    async fn sync_interval_below_the_minimum_is_a_spec_error_naming_the_field() {
        let d = all_secrets();
        let mut c = cluster();
        c.spec.sync.interval = "10s".into();
        let err = resolve_test(&c, &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        assert_eq!(
            err.to_string(),
            "spec.sync.interval: \"10s\" is shorter than the minimum of 30s"
        );
        c.spec.sync.interval = "30s".into();
        let ok = resolve_test(&c, &DirSecrets::new(d.path())).await.unwrap();
        assert_eq!(ok.sync_interval, Duration::from_secs(30));
        c.spec.sync.interval = "1h30m".into();
        assert_eq!(interval(&c).unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn the_watch_interval_is_off_at_0_and_else_at_least_5s_and_at_most_1h() {
        assert_eq!(
            watch_interval("15s").unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watch_interval("0s").unwrap(), None);
        assert_eq!(
            watch_interval("2s").unwrap_err().to_string(),
            "spec.sync.watchInterval: \"2s\" is shorter than the minimum of 5s (0 turns polling off)"
        );
        assert_eq!(
            watch_interval("2h").unwrap_err().to_string(),
            "spec.sync.watchInterval: \"2h\" is longer than the maximum of 1h"
        );
        assert_eq!(crate::crd::SyncSpec::default().watch_interval, "15s");
    }

    #[tokio::test]
    async fn sync_options_are_converted_once_from_the_spec_the_annotation_and_the_status() {
        let d = all_secrets();
        let mut c = cluster();
        c.spec.sync.kinds = vec![SyncKind::VmInterfaces, SyncKind::IpAddresses];
        c.spec.sync.prune.max_percent = 400;
        c.metadata.annotations = Some(
            [(
                ADOPT_PREVIOUS_OWNER_ANNOTATION.to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        c.status = Some(serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "NetBoxSynced", "status": "Unknown", "reason": "Reconciling",
                            "message": "", "lastTransitionTime": "2026-11-22T12:00:00Z"}]
        })).unwrap());
        let r = resolve_test(&c, &DirSecrets::new(d.path())).await.unwrap();
        let o = &r.sync;
        // Guest interfaces need the guests.
        assert!(!o.virtual_machines && !o.vm_interfaces && !o.nodes);
        assert!(o.ip_addresses);
        assert_eq!(o.prune_max_percent, 100);
        assert!(o.adopt_previous_owner);
        assert!(o.netbox_sync_interrupted);
        assert_eq!((o.site.as_str(), o.resource_name.as_str()), ("dc1", "lab"));
        assert_eq!(r.netbox.url, "https://nb");

        c.metadata.annotations = None;
        c.status = None;
        c.spec.sync.prune.max_percent = 0;
        let o = resolve_test(&c, &DirSecrets::new(d.path()))
            .await
            .unwrap()
            .sync;
        assert_eq!(o.prune_max_percent, 1);
        assert!(!o.adopt_previous_owner && !o.netbox_sync_interrupted);
    }

    #[test]
    fn parses_go_durations_exactly() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("15m"), Duration::from_secs(900));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("0.25s"), Duration::from_millis(250));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10\u{b5}s"), Duration::from_micros(10));
        assert_eq!(ok("10\u{3bc}s"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1h1m1s1ms1us1ns"), Duration::new(3661, 1_001_001));
        assert_eq!(ok("0s"), Duration::ZERO);
        // Fraction digits below a nanosecond are dropped, like Go does.
        assert_eq!(ok("1.0000000009s"), Duration::from_secs(1));
        assert_eq!(
            ok("0.123456789123456789123456789s"),
            Duration::from_nanos(123_456_789)
        );
        // The largest value that fits, and one nanosecond more.
        assert_eq!(ok("18446744073709551615ns"), Duration::from_nanos(u64::MAX));
        assert_eq!(
            parse_go_duration("18446744073709551616ns"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn malformed_text_after_a_too_large_number_is_a_syntax_error() {
        // Found by fuzzing (fuzz/fuzz_targets/duration.rs): the overflow was reported before
        // the rest was read, so a value the CRD pattern refuses was called too long.
        assert_eq!(
            parse_go_duration("18446744073171h."),
            Err(DurationError::Syntax)
        );
        assert_eq!(
            parse_go_duration("99999999999999999999hx"),
            Err(DurationError::Syntax)
        );
        assert_eq!(
            parse_go_duration("99999999999999999999h1s"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn refuses_what_the_crd_pattern_refuses() {
        let pattern = regex::Regex::new(crate::crd::DURATION_PATTERN).unwrap();
        for bad in [
            "", "0", "15", "m", "1d", "1.s", ".5s", "1..5s", "+5s", " 5s", "5s ", "5 s", "5S",
            "1h-30m", "1e3s", "5sec", "NaN", "inf", "٣s",
        ] {
            assert_eq!(
                parse_go_duration(bad),
                Err(DurationError::Syntax),
                "{bad:?}"
            );
            assert!(!pattern.is_match(bad), "the CRD pattern accepts {bad:?}");
        }
        assert_eq!(parse_go_duration("-5m"), Err(DurationError::Negative));
        assert!(!pattern.is_match("-5m"));
        for good in ["30s", "1.5h", "10\u{b5}s", "1h1m1s1ms1us1ns", "0s"] {
            assert!(pattern.is_match(good), "{good:?}");
            assert!(parse_go_duration(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_huge_interval_is_an_error_naming_the_field_and_the_bound() {
        let mut c = cluster();
        c.spec.sync.interval = "99999999999999999999h".into();
        let err = interval(&c).unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        assert_eq!(
            err.to_string(),
            "spec.sync.interval: \"99999999999999999999h\" is longer than the maximum of 720h"
        );
        // In range for Go, above the field's bound.
        c.spec.sync.interval = "721h".into();
        assert_eq!(
            interval(&c).unwrap_err().to_string(),
            "spec.sync.interval: \"721h\" is longer than the maximum of 720h"
        );
        c.spec.sync.interval = "720h".into();
        assert_eq!(interval(&c).unwrap(), Duration::from_secs(720 * 3600));
    }

    #[test]
    fn every_duration_field_has_its_own_bounds() {
        let check = |b: &DurationBounds, value: &str, expected: &str| {
            let err = bounded_duration(b, value).unwrap_err();
            assert_eq!(err.reason(), reasons::INVALID_SPEC);
            assert_eq!(err.to_string(), format!("{}: {expected}", b.field));
        };
        check(
            &PVE_REQUEST_TIMEOUT_BOUNDS,
            "2h",
            "\"2h\" is longer than the maximum of 1h",
        );
        check(
            &NETBOX_REQUEST_TIMEOUT_BOUNDS,
            "500ms",
            "\"500ms\" is shorter than the minimum of 1s",
        );
        check(
            &SSH_CONNECT_TIMEOUT_BOUNDS,
            "11m",
            "\"11m\" is longer than the maximum of 10m",
        );
        check(
            &SSH_COMMAND_TIMEOUT_BOUNDS,
            "0s",
            "\"0s\" is shorter than the minimum of 1s",
        );
        check(
            &PRUNE_GRACE_PERIOD_BOUNDS,
            "-1h",
            "\"-1h\" must not be negative",
        );
        check(
            &PRUNE_GRACE_PERIOD_BOUNDS,
            "1d",
            "\"1d\" is not a duration such as 30s, 15m or 1h",
        );
        check(
            &SYNC_INTERVAL_BOUNDS,
            &"1s".repeat(17),
            "\"1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s\" is longer than 32 characters",
        );
        assert_eq!(
            bounded_duration(&PRUNE_GRACE_PERIOD_BOUNDS, "0s").unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            bounded_duration(&SSH_CONNECT_TIMEOUT_BOUNDS, "10m").unwrap(),
            Duration::from_secs(600)
        );
    }

    #[tokio::test]
    async fn resolve_reports_a_bad_timeout_before_reading_any_secret() {
        let mut c = cluster();
        c.spec.hardware_discovery.command_timeout = "99999999999999999999999999h".into();
        let empty = tempfile::tempdir().unwrap();
        let err = resolve_test(&c, &DirSecrets::new(empty.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        assert_eq!(
            err.to_string(),
            "spec.hardwareDiscovery.commandTimeout: \"99999999999999999999999999h\" is longer than the maximum of 1h"
        );
    }

    /// Hostile values never panic and always get an error naming the field, one line long,
    /// whose quoted value is cut short.
    #[test]
    fn hostile_duration_strings_never_panic_and_get_a_clear_error() {
        let mut hostile: Vec<String> = [
            "",
            " ",
            "h",
            ".",
            "..",
            ".h",
            "1.",
            "-",
            "-0s",
            "--1s",
            "+1s",
            "0x10s",
            "1_000s",
            "1e9h",
            "1E9h",
            "NaN",
            "inf",
            "-inf",
            "1s\n",
            "1s\0",
            "\u{0}",
            "1\u{0}s",
            "🦀",
            "1🦀",
            "1h🦀",
            "\u{202e}1h",
            "1\u{b5}",
            "\u{b5}s",
            "1\u{301}s",
            "١s",
            "1ｓ",
            "1hh",
            "1mm",
            "1ms1",
            "1s.5",
            "1.5.5s",
            "99999999999999999999h",
            "18446744073709551616ns",
            "18446744073709551615ns1ns",
            "2562048h",
            "9223372036854775807ns",
            "340282366920938463463374607431768211456s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        hostile.push("9".repeat(10_000) + "h");
        hostile.push("1h".repeat(100_000));
        hostile.push("0.".to_string() + &"9".repeat(100_000) + "s");
        hostile.push("5124095576030431h".repeat(3));
        hostile.push("\u{10ffff}".repeat(1000));
        // Every digit count from 1 to 40 of every unit: the step from fitting to overflowing.
        for unit in ["ns", "us", "\u{b5}s", "ms", "s", "m", "h"] {
            for digits in 1..=40 {
                hostile.push("9".repeat(digits) + unit);
                hostile.push(format!(
                    "{}.{}{unit}",
                    "9".repeat(digits),
                    "9".repeat(digits)
                ));
            }
        }
        for value in &hostile {
            for bounds in crate::crd::DURATION_FIELDS {
                let outcome = std::panic::catch_unwind(|| bounded_duration(&bounds, value));
                let Ok(result) = outcome else {
                    panic!("{}: {value:?} panicked", bounds.field)
                };
                match result {
                    Ok(d) => assert!(
                        d >= bounds.min() && d <= bounds.max(),
                        "{}: {value:?} accepted as {d:?}",
                        bounds.field
                    ),
                    Err(e) => {
                        assert_eq!(e.reason(), reasons::INVALID_SPEC);
                        assert!(
                            e.to_string().starts_with(&format!("{}: \"", bounds.field)),
                            "{}",
                            e.to_string()
                        );
                        assert!(!e.to_string().contains('\n'), "{}", e.to_string());
                        assert!(e.to_string().len() < 600, "{}", e.to_string());
                        assert!(
                            [
                                "maximum",
                                "minimum",
                                "not a duration",
                                "negative",
                                "characters"
                            ]
                            .iter()
                            .any(|w| e.to_string().contains(w)),
                            "{}",
                            e.to_string()
                        );
                    }
                }
            }
        }
        // Over-long inputs are refused whatever they contain.
        let long = "1h".repeat(100_000);
        let err = bounded_duration(&SYNC_INTERVAL_BOUNDS, &long).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("... (200000 characters) is longer than 32 characters"),
            "{}",
            err.to_string()
        );
    }

    #[tokio::test]
    async fn falls_back_to_ticket_auth_and_rejects_malformed_token_ids() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pve", "username", "root@pam");
        write(d.path(), "pve", "password", "pw-value");
        write(d.path(), "pve-ca", "ca.crt", "pem");
        write(d.path(), "nb", "token", "t");
        let r = resolve_test(&cluster(), &DirSecrets::new(d.path()))
            .await
            .unwrap();
        assert!(matches!(r.pve_credentials, PveCredentials::Ticket { .. }));

        write(d.path(), "pve", "tokenId", "no-separator");
        write(d.path(), "pve", "tokenSecret", "x");
        let err = resolve_test(&cluster(), &DirSecrets::new(d.path()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_SPEC);
        assert!(err.to_string().contains("user@realm!tokenname"));
    }
}
