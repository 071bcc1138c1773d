//! Discovery of one node: resolve its NodeSSHCredential, open one SSH connection, run the
//! allowlisted commands, parse their output. Failures become warning codes.

use futures::future::BoxFuture;

use super::facts::{EthtoolInfo, LinkInfo, LinkKind, NicFacts, NodeHardware};
use super::parse;
use super::ssh::{
    InterfaceName, RemoteCommand, SshAuth, SshError, SshMetrics, SshSession, SshTarget,
    check_private_key,
};
use crate::config::ResolvedCluster;
use crate::crd::{NodeSSHCredential, NodeWarning};
use crate::net::call_metrics::CallRecorder;
use crate::net::guard::EndpointGuard;
use crate::secrets::SecretSource;

/// Largest output accepted from one command (a full `dmidecode` is about 40 KiB).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// At most this many `ethtool` commands per node: a node reporting more physical NICs gets
/// link facts for the first ones (by `ip link` order) and none for the rest.
pub const MAX_ETHTOOL_COMMANDS: usize = 64;

/// Warning codes of hardware discovery (condition reasons, Event reasons, metric labels).
pub mod codes {
    /// No address is known for the node.
    pub const NO_ADDRESS: &str = "NoAddress";
    /// No NodeSSHCredential for the node.
    pub const NO_CREDENTIAL: &str = "NoCredential";
    /// The Secret or key is unusable.
    pub const CREDENTIAL_INVALID: &str = "CredentialInvalid";
    /// Connecting or a command timed out.
    pub const TIMEOUT: &str = "Timeout";
    /// The node refused the credential.
    pub const AUTH_FAILED: &str = "AuthFailed";
    /// The host key did not match: no credential was sent.
    pub const HOST_KEY_MISMATCH: &str = "HostKeyMismatch";
    /// A command exited non-zero.
    pub const COMMAND_FAILED: &str = "CommandFailed";
    /// The endpoint guard refused the node address: no connection was made.
    pub const ENDPOINT_REFUSED: &str = "EndpointRefused";
    /// Discovery of the node ran past its deadline (all commands together).
    pub const NODE_DEADLINE: &str = "NodeDeadline";
    /// The node was not probed: the discovery of all nodes ran past its deadline.
    pub const STAGE_DEADLINE: &str = "StageDeadline";
    /// Anything else.
    pub const FAILED: &str = "Failed";
}

/// Gathers the hardware facts of one node over SSH.
pub trait HardwareProber: Send + Sync {
    /// Discovers one node with its credential; the warning says why it failed.
    fn probe<'a>(
        &'a self,
        node: &'a str,
        address: &'a str,
        credential: &'a NodeSSHCredential,
        config: &'a ResolvedCluster,
        secrets: &'a dyn SecretSource,
    ) -> BoxFuture<'a, Result<NodeHardware, NodeWarning>>;
}

/// The warning for an SSH failure.
pub fn warning_for(e: &SshError) -> NodeWarning {
    let code = match e {
        SshError::CredentialInvalid(_) => codes::CREDENTIAL_INVALID,
        SshError::Timeout { .. } => codes::TIMEOUT,
        SshError::AuthFailed { .. } => codes::AUTH_FAILED,
        SshError::HostKeyMismatch { .. } => codes::HOST_KEY_MISMATCH,
        SshError::CommandFailed { .. } => codes::COMMAND_FAILED,
        SshError::EndpointRefused(_) => codes::ENDPOINT_REFUSED,
        SshError::Connect { .. } | SshError::OutputTooLarge { .. } | SshError::Protocol(_) => {
            codes::FAILED
        }
    };
    NodeWarning {
        code: code.into(),
        message: e.to_string(),
    }
}

/// `ethtool` facts of a physical NIC; `None` for other kinds, when `ethtool` failed on it,
/// or when its name is not a safe interface name (then `ethtool` is not run at all, and a
/// warning naming the node is logged: the node may have been tampered with).
async fn ethtool_facts(
    session: &SshSession,
    node: &str,
    link: &LinkInfo,
) -> Result<Option<EthtoolInfo>, SshError> {
    if link.kind != LinkKind::Physical {
        return Ok(None);
    }
    let Some(name) = InterfaceName::new(&link.name) else {
        tracing::warn!(
            node,
            interface = ?link.name,
            "hardware discovery: not running ethtool on a NIC whose name is not a safe interface \
             name; the NIC is kept without link facts"
        );
        return Ok(None);
    };
    match session.run(&RemoteCommand::Ethtool(name)).await {
        Ok(out) => Ok(Some(parse::ethtool(&out).0)),
        Err(e @ (SshError::Timeout { .. } | SshError::Protocol(_))) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Commands run at once on one connection (OpenSSH allows 10 sessions per connection by
/// default, `MaxSessions`).
const PARALLEL_CHANNELS: usize = 4;

/// [`collect_node`] with the target's address as the node's name in logs.
pub async fn collect(target: &SshTarget) -> Result<NodeHardware, SshError> {
    collect_node(&target.address, target).await
}

/// Runs every command on one connection and parses the facts: the two `dmidecode` and
/// `ip link` at once, then `ethtool` for the physical NICs, a few at once (one channel each).
/// `ethtool` runs only for physical NICs, and its failure on a NIC leaves that NIC without
/// link facts. `node` names the node in logs.
///
/// Commands running at once are all awaited to the end even when one fails: each one stops
/// its own remote process on a timeout, which a dropped (cancelled) command would not do.
pub async fn collect_node(node: &str, target: &SshTarget) -> Result<NodeHardware, SshError> {
    let session = SshSession::connect(target).await?;
    let result = async {
        let (system, chassis, links) = tokio::join!(
            session.run(&RemoteCommand::DmidecodeSystem),
            session.run(&RemoteCommand::DmidecodeChassis),
            session.run(&RemoteCommand::IpLink),
        );
        let (system, chassis, links) = (system?, chassis?, links?);
        let links: Vec<_> = parse::ip_link(&links)
            .into_iter()
            .filter(|l| {
                !matches!(
                    l.kind,
                    LinkKind::Loopback | LinkKind::Tap | LinkKind::Veth | LinkKind::FirewallBridge
                )
            })
            .collect();
        let mut ethtools = Vec::with_capacity(links.len());
        let probed = links.len().min(MAX_ETHTOOL_COMMANDS);
        if probed < links.len() {
            tracing::warn!(
                node,
                nics = links.len(),
                limit = MAX_ETHTOOL_COMMANDS,
                "hardware discovery: too many NICs, ethtool runs on the first ones only"
            );
        }
        for chunk in links[..probed].chunks(PARALLEL_CHANNELS) {
            let runs: Vec<_> = chunk
                .iter()
                .map(|l| ethtool_facts(&session, node, l))
                .collect();
            for r in futures::future::join_all(runs).await {
                ethtools.push(r?);
            }
        }
        ethtools.resize(links.len(), None);
        let mut nics: Vec<NicFacts> = links
            .into_iter()
            .zip(ethtools)
            .map(|(link, ethtool)| NicFacts { link, ethtool })
            .collect();
        nics.sort_by(|a, b| a.link.name.cmp(&b.link.name));
        Ok(NodeHardware {
            system: parse::dmidecode(&system).0,
            chassis: parse::dmidecode(&chassis).1,
            nics,
        })
    }
    .await;
    session.close().await;
    result
}

/// Hardware discovery over SSH with NodeSSHCredentials and their Secrets.
#[derive(Clone, Debug, Default)]
pub struct SshProber {
    /// What node addresses may reach (`--allow-endpoint-cidr`).
    pub endpoint_guard: EndpointGuard,
    /// Where connections and commands are timed; `None` records nothing.
    pub metrics: Option<SshMetrics>,
}

impl SshProber {
    /// The recorder of the connections made for the cluster `credential` belongs to.
    fn recorder(&self, credential: &NodeSSHCredential) -> CallRecorder {
        let Some(metrics) = &self.metrics else {
            return CallRecorder::default();
        };
        metrics.recorder(&format!(
            "{}/{}",
            credential
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default"),
            credential.spec.cluster_ref.name
        ))
    }
}

fn invalid(message: String) -> NodeWarning {
    NodeWarning {
        code: codes::CREDENTIAL_INVALID.into(),
        message,
    }
}

async fn resolve_target(
    address: &str,
    cred: &NodeSSHCredential,
    config: &ResolvedCluster,
    secrets: &dyn SecretSource,
    endpoint_guard: &EndpointGuard,
    recorder: CallRecorder,
) -> Result<SshTarget, NodeWarning> {
    let spec = &cred.spec;
    let auth =
        match (&spec.private_key_secret_ref, &spec.password_secret_ref) {
            (Some(k), None) => {
                let pem = secrets
                    .get(&k.name, &k.key)
                    .await
                    .map_err(|e| invalid(format!("spec.privateKeySecretRef: {e}")))?;
                let passphrase = match &k.passphrase_key {
                    Some(pk) => Some(secrets.get(&k.name, pk).await.map_err(|e| {
                        invalid(format!("spec.privateKeySecretRef.passphraseKey: {e}"))
                    })?),
                    None => None,
                };
                check_private_key(&pem, passphrase.as_ref())
                    .map_err(|e| invalid(format!("spec.privateKeySecretRef: {e}")))?;
                SshAuth::PrivateKey { pem, passphrase }
            }
            (None, Some(p)) => SshAuth::Password(
                secrets
                    .get(&p.name, &p.key)
                    .await
                    .map_err(|e| invalid(format!("spec.passwordSecretRef: {e}")))?,
            ),
            _ => return Err(invalid(
                "exactly one of spec.privateKeySecretRef and spec.passwordSecretRef must be set"
                    .into(),
            )),
        };
    Ok(SshTarget {
        address: address.to_string(),
        port: u16::try_from(spec.port)
            .map_err(|_| invalid(format!("spec.port: {} is not a port", spec.port)))?,
        username: spec.username.clone(),
        auth,
        host_key_fingerprint: spec.host_key_fingerprint.clone(),
        sudo: spec.sudo,
        connect_timeout: config.ssh_connect_timeout,
        command_timeout: config.ssh_command_timeout,
        max_output_bytes: MAX_OUTPUT_BYTES,
        endpoint_guard: endpoint_guard.clone(),
        recorder,
    })
}

impl HardwareProber for SshProber {
    fn probe<'a>(
        &'a self,
        node: &'a str,
        address: &'a str,
        credential: &'a NodeSSHCredential,
        config: &'a ResolvedCluster,
        secrets: &'a dyn SecretSource,
    ) -> BoxFuture<'a, Result<NodeHardware, NodeWarning>> {
        Box::pin(async move {
            let target = resolve_target(
                address,
                credential,
                config,
                secrets,
                &self.endpoint_guard,
                self.recorder(credential),
            )
            .await?;
            let started = std::time::Instant::now();
            let result = collect_node(node, &target).await.map_err(|e| {
                let mut warning = warning_for(&e);
                if let SshError::EndpointRefused(_) = e {
                    // Name where the address came from.
                    let field = if credential.spec.address.as_deref() == Some(address) {
                        "spec.address of its NodeSSHCredential"
                    } else {
                        "the node's address from Proxmox VE"
                    };
                    warning.message = format!("{field}: {}", warning.message);
                }
                warning
            });
            tracing::info!(
                node,
                ok = result.is_ok(),
                millis = started.elapsed().as_millis() as u64,
                "hardware discovery"
            );
            result
        })
    }
}
