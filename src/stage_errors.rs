//! Typed failures of the pipeline stages. Each keeps its cause (the Secret, PVE or NetBox
//! client error) as [`std::error::Error::source`] and is classified permanent or transient
//! ([`StageFailure`]): the classification picks the retry (the sync interval or the
//! backoff), the reason names the condition, the Event and the error metric series.
//!
//! The `Display` of an error is the whole message the status and the Event show, its
//! cause's text included; like the causes it never contains a secret value.

use std::time::Duration;

use crate::conditions::reasons;
use crate::netbox::client::NetBoxError;
use crate::pve::client::PveError;
use crate::secrets::SecretError;

/// How a stage failure is reported and retried.
pub trait StageFailure: std::error::Error {
    /// Condition and Event reason (one of [`reasons`]).
    fn reason(&self) -> &'static str;

    /// True when retrying cannot help until something changes (the spec, a Secret, the
    /// credentials or certificate on the other side, the operator's allow-list): such a
    /// failure is retried at the sync interval, not with the fast backoff of a transient
    /// one (a network error, a 5xx, a timeout).
    fn is_permanent(&self) -> bool;

    /// The `reason` label of the error metric: the condition reason, so the metric, the
    /// condition and the Event name a failure alike.
    fn metric_label(&self) -> &'static str {
        self.reason()
    }
}

/// Why the spec and its Secrets could not be resolved into settings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A spec value cannot be used.
    #[error("{field}: {problem}")]
    InvalidSpec {
        /// The spec field at fault (`spec.sync.interval`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A referenced Secret, or a key of it, could not be read.
    #[error("{field}: {source}")]
    Secret {
        /// The spec field referencing the Secret.
        field: String,
        /// Why the read failed.
        #[source]
        source: SecretError,
    },
    /// The Secret was read but lacks a usable value (a key is empty, or neither credential
    /// pair is complete).
    #[error("{field}: {problem}")]
    SecretKeyMissing {
        /// The spec field referencing the Secret.
        field: String,
        /// Which keys are missing or empty.
        problem: String,
    },
}

impl ConfigError {
    /// A spec error on `field`.
    pub fn invalid_spec(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidSpec {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl StageFailure for ConfigError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => reasons::INVALID_SPEC,
            Self::Secret { source, .. } => source.metric_label(),
            Self::SecretKeyMissing { .. } => reasons::SECRET_KEY_MISSING,
        }
    }

    /// Permanent, except a Secret read that failed on the way (the API server could not
    /// be reached or answered an error): that one heals by itself.
    fn is_permanent(&self) -> bool {
        !matches!(
            self,
            Self::Secret {
                source: SecretError::Unreadable { .. },
                ..
            }
        )
    }
}

/// Why the Proxmox read failed as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxmoxReadError {
    /// The PVE API could not be used.
    #[error("{0}")]
    Api(#[source] PveError),
    /// The read ran past its deadline and was stopped.
    #[error(
        "the Proxmox read ran past its deadline of {}s and was stopped",
        .limit.as_secs()
    )]
    TimedOut {
        /// The deadline.
        limit: Duration,
    },
}

impl StageFailure for ProxmoxReadError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Api(e) => match e {
                PveError::Unauthorized { .. } => reasons::PROXMOX_UNAUTHORIZED,
                PveError::Tls { .. } => reasons::TLS_VERIFICATION_FAILED,
                PveError::Config(_) => reasons::INVALID_SPEC,
                PveError::EndpointRefused(_) => reasons::ENDPOINT_REFUSED,
                PveError::Forbidden { .. } => reasons::MISSING_PRIVILEGES,
                PveError::NotFound { .. }
                | PveError::Status { .. }
                | PveError::Timeout { .. }
                | PveError::Connection { .. }
                | PveError::Decode { .. }
                | PveError::OutcomeUnknown { .. }
                | PveError::TransportLimit { .. } => reasons::PROXMOX_UNREACHABLE,
            },
            Self::TimedOut { .. } => reasons::STAGE_TIMED_OUT,
        }
    }

    /// Permanent: refused credentials, a failed certificate check, an unusable client
    /// configuration, a refused endpoint.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Api(
                PveError::Unauthorized { .. }
                    | PveError::Tls { .. }
                    | PveError::Config(_)
                    | PveError::EndpointRefused(_)
            )
        )
    }
}

/// Why the NetBox sync (or the cleanup of a deleted cluster) could not use NetBox at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetBoxSyncError {
    /// The NetBox API could not be used.
    #[error("{0}")]
    Api(#[source] NetBoxError),
    /// The sync ran past its deadline and was stopped.
    #[error(
        "the NetBox sync ran past its deadline of {}s and was stopped",
        .limit.as_secs()
    )]
    TimedOut {
        /// The deadline.
        limit: Duration,
    },
}

impl StageFailure for NetBoxSyncError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Api(NetBoxError::Auth { .. }) => reasons::NETBOX_UNAUTHORIZED,
            Self::Api(NetBoxError::EndpointRefused(_)) => reasons::ENDPOINT_REFUSED,
            Self::Api(_) => reasons::NETBOX_FAILED,
            Self::TimedOut { .. } => reasons::STAGE_TIMED_OUT,
        }
    }

    /// Permanent: a refused token, a refused URL, an unusable client configuration.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Api(
                NetBoxError::Auth { .. } | NetBoxError::EndpointRefused(_) | NetBoxError::Config(_)
            )
        )
    }
}

/// The failure of whichever stage stopped a pass or a cleanup.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Resolving the spec and its Secrets failed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Proxmox read failed.
    #[error(transparent)]
    ProxmoxRead(#[from] ProxmoxReadError),
    /// The NetBox sync failed.
    #[error(transparent)]
    NetBoxSync(#[from] NetBoxSyncError),
}

impl StageError {
    fn stage(&self) -> &dyn StageFailure {
        match self {
            Self::Config(e) => e,
            Self::ProxmoxRead(e) => e,
            Self::NetBoxSync(e) => e,
        }
    }
}

impl StageFailure for StageError {
    fn reason(&self) -> &'static str {
        self.stage().reason()
    }

    fn is_permanent(&self) -> bool {
        self.stage().is_permanent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::guard::{EndpointError, UrlProblem};
    use std::error::Error as _;

    fn classified(e: &dyn StageFailure) -> (&'static str, bool) {
        (e.reason(), e.is_permanent())
    }

    #[test]
    fn config_errors_are_permanent_but_a_failed_secret_read() {
        let secret = |source| ConfigError::Secret {
            field: "spec.netbox.tokenSecretRef".into(),
            source,
        };
        let name = || "nb".to_string();
        for (e, want) in [
            (
                ConfigError::invalid_spec("spec.sync.interval", "too short"),
                (reasons::INVALID_SPEC, true),
            ),
            (
                ConfigError::SecretKeyMissing {
                    field: "f".into(),
                    problem: "empty".into(),
                },
                (reasons::SECRET_KEY_MISSING, true),
            ),
            (
                secret(SecretError::NotFound { name: name() }),
                (reasons::SECRET_NOT_FOUND, true),
            ),
            (
                secret(SecretError::KeyMissing {
                    name: name(),
                    key: "token".into(),
                }),
                (reasons::SECRET_KEY_MISSING, true),
            ),
            (
                secret(SecretError::NotMarked { name: name() }),
                (reasons::SECRET_NOT_MARKED, true),
            ),
            (
                secret(SecretError::Forbidden { name: name() }),
                (reasons::SECRET_UNREADABLE, true),
            ),
            (
                secret(SecretError::Unreadable {
                    name: name(),
                    message: "the API server could not be reached".into(),
                }),
                (reasons::SECRET_UNREADABLE, false),
            ),
        ] {
            assert_eq!(classified(&e), want, "{e}");
            assert_eq!(e.metric_label(), want.0);
            let wrapped = StageError::from(e.clone());
            assert_eq!(classified(&wrapped), want, "{e}");
        }
    }

    #[test]
    fn refused_credentials_are_permanent_network_errors_and_5xx_are_transient() {
        let path = || "/cluster/status".to_string();
        let pve = |e| ProxmoxReadError::Api(e);
        for (e, want) in [
            (
                pve(PveError::Unauthorized { path: path() }),
                (reasons::PROXMOX_UNAUTHORIZED, true),
            ),
            (
                pve(PveError::Tls {
                    endpoint: "pve1".into(),
                    message: "unknown issuer".into(),
                }),
                (reasons::TLS_VERIFICATION_FAILED, true),
            ),
            (
                pve(PveError::Config("bad CA bundle".into())),
                (reasons::INVALID_SPEC, true),
            ),
            (
                pve(PveError::EndpointRefused(EndpointError {
                    field: "spec.proxmox.endpoints[0]".into(),
                    problem: UrlProblem::Unparsable("pve1".into()),
                })),
                (reasons::ENDPOINT_REFUSED, true),
            ),
            (
                pve(PveError::Forbidden {
                    path: path(),
                    message: "Sys.Audit".into(),
                }),
                (reasons::MISSING_PRIVILEGES, false),
            ),
            (
                pve(PveError::Timeout { path: path() }),
                (reasons::PROXMOX_UNREACHABLE, false),
            ),
            (
                pve(PveError::Connection {
                    endpoint: "pve1".into(),
                    message: "refused".into(),
                }),
                (reasons::PROXMOX_UNREACHABLE, false),
            ),
            (
                pve(PveError::Status {
                    path: path(),
                    status: 500,
                    message: "internal".into(),
                }),
                (reasons::PROXMOX_UNREACHABLE, false),
            ),
            (
                ProxmoxReadError::TimedOut {
                    limit: Duration::from_secs(30),
                },
                (reasons::STAGE_TIMED_OUT, false),
            ),
        ] {
            assert_eq!(classified(&e), want, "{e}");
            assert_eq!(classified(&StageError::from(e.clone())), want, "{e}");
        }
        let endpoint = || "dcim/devices".to_string();
        let nb = |e| NetBoxSyncError::Api(e);
        for (e, want) in [
            (
                nb(NetBoxError::Auth {
                    endpoint: endpoint(),
                    status: 403,
                    message: "no permission".into(),
                }),
                (reasons::NETBOX_UNAUTHORIZED, true),
            ),
            (
                nb(NetBoxError::EndpointRefused(EndpointError {
                    field: "spec.netbox.url".into(),
                    problem: UrlProblem::Unparsable("netbox".into()),
                })),
                (reasons::ENDPOINT_REFUSED, true),
            ),
            (
                nb(NetBoxError::Config("bad CA bundle".into())),
                (reasons::NETBOX_FAILED, true),
            ),
            (
                nb(NetBoxError::Status {
                    endpoint: endpoint(),
                    status: 503,
                    message: "unavailable".into(),
                }),
                (reasons::NETBOX_FAILED, false),
            ),
            (
                nb(NetBoxError::Transport {
                    endpoint: endpoint(),
                    message: "connection reset".into(),
                }),
                (reasons::NETBOX_FAILED, false),
            ),
            (
                nb(NetBoxError::TransportLimit { limit: 3 }),
                (reasons::NETBOX_FAILED, false),
            ),
            (
                NetBoxSyncError::TimedOut {
                    limit: Duration::from_secs(120),
                },
                (reasons::STAGE_TIMED_OUT, false),
            ),
        ] {
            assert_eq!(classified(&e), want, "{e}");
            assert_eq!(classified(&StageError::from(e.clone())), want, "{e}");
        }
    }

    #[test]
    fn the_source_chain_leads_to_the_client_error_and_the_message_is_unchanged() {
        let cause = SecretError::KeyMissing {
            name: "nb".into(),
            key: "token".into(),
        };
        let e = StageError::from(ConfigError::Secret {
            field: "spec.netbox.tokenSecretRef".into(),
            source: cause.clone(),
        });
        assert_eq!(
            e.to_string(),
            "spec.netbox.tokenSecretRef: Secret \"nb\" has no key \"token\""
        );
        let source = e.source().expect("the Secret error");
        assert_eq!(source.downcast_ref::<SecretError>(), Some(&cause));

        let cause = PveError::Unauthorized {
            path: "/cluster/status".into(),
        };
        let e = StageError::from(ProxmoxReadError::Api(cause.clone()));
        assert_eq!(e.to_string(), cause.to_string());
        assert_eq!(
            e.source().and_then(|s| s.downcast_ref::<PveError>()),
            Some(&cause)
        );

        let cause = NetBoxError::Transport {
            endpoint: "dcim/devices".into(),
            message: "connection reset".into(),
        };
        let e = StageError::from(NetBoxSyncError::Api(cause.clone()));
        assert_eq!(e.to_string(), cause.to_string());
        assert_eq!(
            e.source().and_then(|s| s.downcast_ref::<NetBoxError>()),
            Some(&cause)
        );
        assert!(
            ConfigError::invalid_spec("spec.proxmox.endpoints", "at least one is required")
                .source()
                .is_none()
        );
    }
}
