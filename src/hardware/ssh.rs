//! SSH to a node: the only module that uses the SSH library.
//!
//! The node address is resolved through the endpoint guard and only addresses it allows are
//! connected to. The server's host key must match the pinned SHA-256 fingerprint before any
//! credential is sent. Commands come from an allowlist, are built as argv and quoted for the
//! remote shell, run with a timeout (enforced on the node too, with coreutils `timeout`, which
//! runs as root under `sudo -n` so it can kill a root command) and an output cap. Every path
//! ends with a disconnect. The connection and every command are timed into the target's
//! [`CallRecorder`] ([`SshMetrics`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate, decode_secret_key};
use russh::{ChannelMsg, Disconnect, Sig};

use crate::net::call_metrics::{CallDurations, CallRecorder, SUCCESS};
use crate::net::guard::{EndpointGuard, Refusal, ResolveError};
use crate::secrets::SecretString;

/// The metrics of SSH discovery.
#[derive(Clone, Debug)]
pub struct SshMetrics {
    /// `ssh_command_duration_seconds{cluster, operation, outcome}`.
    command_duration: CallDurations,
}

impl SshMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            command_duration: CallDurations::register(
                registry,
                "ssh_command_duration_seconds",
                "Duration of each SSH connection (operation connect: resolve, handshake, authentication) and each command run on a node, by outcome",
            ),
        }
    }

    /// The recorder of the connections made for `cluster`.
    pub fn recorder(&self, cluster: &str) -> CallRecorder {
        self.command_duration.recorder(cluster)
    }
}

/// How to authenticate.
#[derive(Clone, Debug)]
pub enum SshAuth {
    /// An OpenSSH private key (ed25519 recommended), optionally encrypted.
    PrivateKey {
        /// The key in OpenSSH/PEM format.
        pem: SecretString,
        /// Its passphrase.
        passphrase: Option<SecretString>,
    },
    /// A password.
    Password(SecretString),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// Host name or address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Remote user.
    pub username: String,
    /// Credentials.
    pub auth: SshAuth,
    /// Pinned host-key fingerprint, `SHA256:...`.
    pub host_key_fingerprint: String,
    /// Run dmidecode through `sudo -n`.
    pub sudo: bool,
    /// Timeout of connection and authentication.
    pub connect_timeout: Duration,
    /// Timeout of each command.
    pub command_timeout: Duration,
    /// Largest output accepted from one command.
    pub max_output_bytes: usize,
    /// Which addresses `address` may resolve to (every resolved address is checked; only
    /// allowed ones are connected to).
    pub endpoint_guard: EndpointGuard,
    /// Where the durations of the connection and its commands go.
    pub recorder: CallRecorder,
}

/// Why SSH work failed. Messages never contain key material or passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The credential cannot be used (key unparsable, wrong passphrase).
    #[error("the credential cannot be used: {0}")]
    CredentialInvalid(String),
    /// The endpoint guard refused the node address (or every address it resolved to): no
    /// connection was made.
    #[error("{0}")]
    EndpointRefused(Refusal),
    /// TCP connection or SSH handshake failed.
    #[error("cannot connect to {address}: {message}")]
    Connect {
        /// Address.
        address: String,
        /// Detail.
        message: String,
    },
    /// Connecting or a command took too long.
    #[error("{stage} timed out after {seconds}s")]
    Timeout {
        /// What timed out.
        stage: String,
        /// Limit.
        seconds: u64,
    },
    /// The host key does not match the pinned fingerprint: no credential was sent.
    #[error(
        "host key {actual} does not match the pinned fingerprint {expected}; the connection was closed before any credential was sent"
    )]
    HostKeyMismatch {
        /// Pinned.
        expected: String,
        /// Presented by the server.
        actual: String,
    },
    /// The server refused the credential.
    #[error("authentication as {user} was refused")]
    AuthFailed {
        /// User.
        user: String,
    },
    /// A command exited non-zero.
    #[error("`{command}` exited with status {status}{detail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status.
        status: u32,
        /// First line of stderr, prefixed with `: ` when present.
        detail: String,
    },
    /// A command printed more than the cap.
    #[error("`{command}` printed more than {limit} bytes")]
    OutputTooLarge {
        /// The command line.
        command: String,
        /// Cap.
        limit: usize,
    },
    /// Anything else in the SSH session.
    #[error("SSH session failed: {0}")]
    Protocol(String),
}

impl SshError {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::CredentialInvalid(_) => "CredentialInvalid",
            Self::EndpointRefused(_) => "EndpointRefused",
            Self::Connect { .. } => "Connection",
            Self::Timeout { .. } => "Timeout",
            Self::HostKeyMismatch { .. } => "HostKeyMismatch",
            Self::AuthFailed { .. } => "AuthFailed",
            Self::CommandFailed { .. } => "CommandFailed",
            Self::OutputTooLarge { .. } => "OutputTooLarge",
            Self::Protocol(_) => "Protocol",
        }
    }
}

fn outcome<T>(result: &Result<T, SshError>) -> &'static str {
    match result {
        Ok(_) => SUCCESS,
        Err(e) => e.metric_label(),
    }
}

/// A validated network interface name (what `ethtool` may be given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Accepts Linux interface names: 1-15 characters of `[A-Za-z0-9_.:-]`, not starting
    /// with `-` (so it cannot be read as an option). Anything else, shell metacharacters
    /// included, is refused.
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 15
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        ok.then(|| Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The only commands the operator runs on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteCommand {
    /// `dmidecode -t 1` (needs root).
    DmidecodeSystem,
    /// `dmidecode -t 3` (needs root).
    DmidecodeChassis,
    /// `ip -o link show`.
    IpLink,
    /// `ethtool <iface>`.
    Ethtool(InterfaceName),
}

impl RemoteCommand {
    /// The argv.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::DmidecodeSystem => vec!["dmidecode".into(), "-t".into(), "1".into()],
            Self::DmidecodeChassis => vec!["dmidecode".into(), "-t".into(), "3".into()],
            Self::IpLink => vec!["ip".into(), "-o".into(), "link".into(), "show".into()],
            Self::Ethtool(i) => vec!["ethtool".into(), i.as_str().into()],
        }
    }

    /// The operation label: the command without its argument.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::DmidecodeSystem => "dmidecode_system",
            Self::DmidecodeChassis => "dmidecode_chassis",
            Self::IpLink => "ip_link",
            Self::Ethtool(_) => "ethtool",
        }
    }

    fn needs_root(&self) -> bool {
        matches!(self, Self::DmidecodeSystem | Self::DmidecodeChassis)
    }

    /// The command line sent to the remote shell: argv quoted, a remote `timeout` so a hung
    /// command is killed on the node even if the session is lost, and `sudo -n` in front when
    /// the credential asks for it and the command needs root:
    ///
    /// - `sudo -n timeout -k 2 N dmidecode -t 1` (and `-t 3`): `timeout` runs as root, so it
    ///   can kill a root `dmidecode` (a non-root `timeout` in front of `sudo` could only
    ///   signal `sudo`, and a root command that ignores SIGTERM would outlive it);
    /// - `timeout -k 2 N ip -o link show`, `timeout -k 2 N ethtool IFACE`, and the
    ///   `dmidecode` lines without `sudo -n` when the credential says `sudo: false`.
    ///
    /// N is the command timeout in whole seconds (at least 1); `-k 2` sends SIGKILL 2 s after
    /// SIGTERM. docs/hardware-discovery.md has a forced-command wrapper allowing exactly these.
    pub fn command_line(&self, sudo: bool, timeout: Duration) -> String {
        let mut argv: Vec<String> = Vec::with_capacity(9);
        if sudo && self.needs_root() {
            argv.extend(["sudo".into(), "-n".into()]);
        }
        argv.extend([
            "timeout".into(),
            "-k".into(),
            KILL_AFTER_SECS.to_string(),
            format!("{}", timeout.as_secs().max(1)),
        ]);
        argv.extend(self.argv());
        argv.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The plain command, for messages.
    pub fn display(&self) -> String {
        self.argv().join(" ")
    }
}

/// Seconds between the remote `timeout`'s SIGTERM and its SIGKILL (`timeout -k`).
pub const KILL_AFTER_SECS: u64 = 2;

/// Extra time the client waits beyond the command timeout before it gives up on a command
/// itself (the remote `timeout` should have ended it by then, SIGKILL included).
const CLIENT_GRACE: Duration = Duration::from_secs(KILL_AFTER_SECS + 3);

/// Quotes one argument for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '=' | '@')
        })
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// Checks that a private key can be used, without connecting.
pub fn check_private_key(
    pem: &SecretString,
    passphrase: Option<&SecretString>,
) -> Result<(), SshError> {
    decode_secret_key(pem.expose(), passphrase.map(|p| p.expose()))
        .map(|_| ())
        .map_err(|e| {
            SshError::CredentialInvalid(format!(
                "cannot read the private key ({})",
                key_error_kind(&e.to_string())
            ))
        })
}

/// A short, secret-free description of a key parsing error.
fn key_error_kind(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("passphrase")
        || m.contains("decrypt")
        || m.contains("encrypted")
        || m.contains("crypto")
    {
        "wrong or missing passphrase"
    } else {
        "not an OpenSSH or PEM private key"
    }
}

/// Host-key check: compares the server's key with the pinned fingerprint.
struct PinnedHostKey {
    expected: String,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                cert.public_key().fingerprint(HashAlg::Sha256).to_string()
            }
        };
        let matches = fingerprint == self.expected;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        Ok(matches)
    }
}

/// An authenticated SSH connection to one node.
pub struct SshSession {
    handle: Handle<PinnedHostKey>,
    sudo: bool,
    command_timeout: Duration,
    max_output_bytes: usize,
    recorder: CallRecorder,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl SshSession {
    /// Connects, verifies the host key, authenticates. Nothing is sent before the host key
    /// matched.
    pub async fn connect(target: &SshTarget) -> Result<Self, SshError> {
        let started = Instant::now();
        let result = Self::open(target).await;
        target
            .recorder
            .observe("connect", outcome(&result), started.elapsed());
        result
    }

    async fn open(target: &SshTarget) -> Result<Self, SshError> {
        let seen = Arc::new(Mutex::new(None));
        let handler = PinnedHostKey {
            expected: target.host_key_fingerprint.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(target.command_timeout + Duration::from_secs(10)),
            ..Default::default()
        });
        let shown = format!("{}:{}", target.address, target.port);
        let connect = async {
            // Resolved here, at connect time, and connected to the checked addresses only.
            let addrs = target
                .endpoint_guard
                .resolve(&target.address, target.port)
                .await
                .map_err(|e| match e {
                    ResolveError::Refused(r) => SshError::EndpointRefused(r),
                    lookup @ ResolveError::Lookup { .. } => SshError::Connect {
                        address: shown.clone(),
                        message: lookup.to_string(),
                    },
                })?;
            match client::connect(config, &addrs[..], handler).await {
                Ok(h) => Ok(h),
                Err(russh::Error::UnknownKey) => {
                    let actual = seen
                        .lock()
                        .ok()
                        .and_then(|s| s.clone())
                        .unwrap_or_else(|| "(none)".into());
                    Err(SshError::HostKeyMismatch {
                        expected: target.host_key_fingerprint.clone(),
                        actual,
                    })
                }
                Err(e) => Err(SshError::Connect {
                    address: shown.clone(),
                    message: e.to_string(),
                }),
            }
        };
        let mut handle = match tokio::time::timeout(target.connect_timeout, connect).await {
            Err(_) => {
                return Err(SshError::Timeout {
                    stage: "connecting".into(),
                    seconds: secs(target.connect_timeout),
                });
            }
            Ok(r) => r?,
        };
        let auth = async {
            match &target.auth {
                SshAuth::PrivateKey { pem, passphrase } => {
                    let key =
                        decode_secret_key(pem.expose(), passphrase.as_ref().map(|p| p.expose()))
                            .map_err(|e| {
                                SshError::CredentialInvalid(format!(
                                    "cannot read the private key ({})",
                                    key_error_kind(&e.to_string())
                                ))
                            })?;
                    let hash = handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| SshError::Protocol(e.to_string()))?
                        .flatten();
                    handle
                        .authenticate_publickey(
                            &target.username,
                            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                        )
                        .await
                        .map_err(|e| SshError::Protocol(e.to_string()))
                }
                SshAuth::Password(p) => handle
                    .authenticate_password(&target.username, p.expose())
                    .await
                    .map_err(|e| SshError::Protocol(e.to_string())),
            }
        };
        let result = match tokio::time::timeout(target.connect_timeout, auth).await {
            Err(_) => Err(SshError::Timeout {
                stage: "authentication".into(),
                seconds: secs(target.connect_timeout),
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(r)) if r.success() => Ok(()),
            Ok(Ok(_)) => Err(SshError::AuthFailed {
                user: target.username.clone(),
            }),
        };
        let session = Self {
            handle,
            sudo: target.sudo,
            command_timeout: target.command_timeout,
            max_output_bytes: target.max_output_bytes,
            recorder: target.recorder.clone(),
        };
        match result {
            Ok(()) => Ok(session),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    /// Runs one allowlisted command on its own channel; returns its stdout. Several may
    /// run at once on one session.
    pub async fn run(&self, command: &RemoteCommand) -> Result<String, SshError> {
        let started = Instant::now();
        let result = self.execute(command).await;
        self.recorder
            .observe(command.metric_name(), outcome(&result), started.elapsed());
        result
    }

    async fn execute(&self, command: &RemoteCommand) -> Result<String, SshError> {
        let line = command.command_line(self.sudo, self.command_timeout);
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        channel
            .exec(true, line.as_bytes())
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        let limit = self.max_output_bytes;
        let mut stdout: Vec<u8> = Vec::new();
        let mut stderr: Vec<u8> = Vec::new();
        let mut status = None;
        let mut signal = None;
        let read = async {
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if stdout.len() + data.len() > limit {
                            return Err(SshError::OutputTooLarge {
                                command: command.display(),
                                limit,
                            });
                        }
                        stdout.extend_from_slice(&data);
                    }
                    ChannelMsg::ExtendedData { data, .. } if stderr.len() < 4096 => {
                        stderr.extend_from_slice(&data[..data.len().min(4096 - stderr.len())]);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(signal_name),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok(())
        };
        // Longer than the remote `timeout` and its SIGKILL grace: normally the node ends a
        // hung command itself. This client-side limit covers a node where that did not
        // happen (no coreutils `timeout`, a process holding the channel open).
        let limit_time = self.command_timeout + CLIENT_GRACE;
        let outcome = match tokio::time::timeout(limit_time, read).await {
            Err(_) => Err(SshError::Timeout {
                stage: format!("`{}`", command.display()),
                seconds: secs(self.command_timeout),
            }),
            Ok(r) => r,
        };
        if let Err(e) = outcome {
            // Stop the command on the node: SIGKILL to its process group (OpenSSH delivers
            // it as the login user, and refuses it for forced-command sessions; the remote
            // `timeout` covers those), then close the channel. The caller disconnects.
            let _ = channel.signal(Sig::KILL).await;
            let _ = channel.close().await;
            return Err(e);
        }
        let timed_out = || SshError::Timeout {
            stage: format!("`{}`", command.display()),
            seconds: secs(self.command_timeout),
        };
        match (status, signal) {
            (Some(0), _) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
            // `timeout` exits 124 after SIGTERM worked, 137 (or dies of SIGKILL, which the
            // server reports as an exit signal) after `-k`.
            (Some(124) | Some(137), _) | (None, Some(Sig::KILL)) => Err(timed_out()),
            (None, Some(sig)) => Err(SshError::Protocol(format!(
                "`{}` was killed by signal {sig:?}",
                command.display()
            ))),
            (Some(s), _) => {
                let err = String::from_utf8_lossy(&stderr);
                let first = err
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .trim();
                Err(SshError::CommandFailed {
                    command: command.display(),
                    status: s,
                    detail: if first.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", first.chars().take(200).collect::<String>())
                    },
                })
            }
            (None, None) => Err(SshError::Protocol(format!(
                "`{}` ended without an exit status",
                command.display()
            ))),
        }
    }

    /// Disconnects (bounded in time); closing the session also ends remote commands.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.handle
                .disconnect(Disconnect::ByApplication, "done", "en"),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_validated() {
        assert!(InterfaceName::new("eno1").is_some());
        assert!(InterfaceName::new("enp65s0f0").is_some());
        assert!(InterfaceName::new("vmbr0.50").is_some());
        for bad in [
            "",
            "-i",
            "eth0;reboot",
            "eth0 $(id)",
            "a`b`",
            "x|y",
            "verylonginterfacename0",
            "eth0\n",
        ] {
            assert!(InterfaceName::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn command_lines_are_quoted_and_sudo_only_for_dmidecode() {
        let t = Duration::from_secs(30);
        assert_eq!(
            RemoteCommand::DmidecodeSystem.command_line(true, t),
            "sudo -n timeout -k 2 30 dmidecode -t 1"
        );
        assert_eq!(
            RemoteCommand::DmidecodeChassis.command_line(true, Duration::from_millis(1500)),
            "sudo -n timeout -k 2 1 dmidecode -t 3"
        );
        assert_eq!(
            RemoteCommand::DmidecodeChassis.command_line(false, t),
            "timeout -k 2 30 dmidecode -t 3"
        );
        assert_eq!(
            RemoteCommand::IpLink.command_line(true, t),
            "timeout -k 2 30 ip -o link show"
        );
        let e = RemoteCommand::Ethtool(InterfaceName::new("eno1").unwrap());
        assert_eq!(e.command_line(true, t), "timeout -k 2 30 ethtool eno1");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
    }

    #[tokio::test]
    async fn a_refused_connection_is_timed_with_its_outcome_and_no_address() {
        let mut registry = Registry::default();
        let metrics = SshMetrics::register(&mut registry);
        let target = SshTarget {
            address: "127.0.0.1".into(),
            port: 22,
            username: "root".into(),
            auth: SshAuth::Password(SecretString::new("pw")),
            host_key_fingerprint: "SHA256:x".into(),
            sudo: false,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            max_output_bytes: 1024,
            endpoint_guard: EndpointGuard::default(),
            recorder: metrics.recorder("infra/lab"),
        };
        let err = SshSession::connect(&target).await.err().unwrap();
        assert!(matches!(err, SshError::EndpointRefused(_)), "{err:?}");
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(r#"ssh_command_duration_seconds_count{cluster="infra/lab",operation="connect",outcome="EndpointRefused"} 1"#),
            "{text}"
        );
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert_eq!(
            RemoteCommand::Ethtool(InterfaceName::new("eno1").unwrap()).metric_name(),
            "ethtool"
        );
    }

    #[test]
    fn unusable_keys_are_credential_errors_without_the_key() {
        let err = check_private_key(
            &SecretString::new("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key\n"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, SshError::CredentialInvalid(_)));
        assert!(!err.to_string().contains("not-a-key"));
    }
}
