//! Where Secret values come from: the Kubernetes API (controller) or a directory laid out
//! like a mounted Secret, `DIR/<secret-name>/<key>` (the one-shot `sync` command).

use std::path::PathBuf;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

mod value;

pub use value::{SecretString, sensitive_header};

/// The label a Secret must carry, with the value `"true"`, before the operator uses it.
/// Without it a person who may create a ProxmoxCluster, but not read Secrets, could make
/// the operator send any Secret of the namespace to a server of their choosing.
pub const SECRET_ACCESS_LABEL: &str = "proxmox-netbox.io/credentials";

/// Largest Secret value read from a file (Kubernetes caps a Secret at 1 MiB).
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Why a Secret value could not be read. Messages name the Secret and key, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The Secret does not exist.
    #[error("Secret {name:?} not found")]
    NotFound {
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key.
    #[error("Secret {name:?} has no key {key:?}")]
    KeyMissing {
        /// Secret name.
        name: String,
        /// Missing key.
        key: String,
    },
    /// The value is not UTF-8 text.
    #[error("Secret {name:?} key {key:?} is not UTF-8 text")]
    NotText {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// The API server refused to hand the Secret out (403): the operator's RBAC does not
    /// allow reading it. Whether it exists is unknown.
    #[error(
        "the operator is not allowed to read Secret {name:?} (403 Forbidden): check its RBAC (get on secrets in this namespace)"
    )]
    Forbidden {
        /// Secret name.
        name: String,
    },
    /// The Secret exists but is not marked for this operator ([`SECRET_ACCESS_LABEL`]).
    #[error(
        "Secret {name:?} is not marked for proxmox-netbox-operator: label it {label}=true to let the operator use it",
        label = SECRET_ACCESS_LABEL
    )]
    NotMarked {
        /// Secret name.
        name: String,
    },
    /// Reading failed for another reason.
    #[error("cannot read Secret {name:?}: {message}")]
    Unreadable {
        /// Secret name.
        name: String,
        /// Cause.
        message: String,
    },
}

impl SecretError {
    /// Stable label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => crate::conditions::reasons::SECRET_NOT_FOUND,
            Self::KeyMissing { .. } | Self::NotText { .. } => {
                crate::conditions::reasons::SECRET_KEY_MISSING
            }
            Self::NotMarked { .. } => crate::conditions::reasons::SECRET_NOT_MARKED,
            Self::Forbidden { .. } | Self::Unreadable { .. } => {
                crate::conditions::reasons::SECRET_UNREADABLE
            }
        }
    }
}

/// A source of Secret values in one namespace.
pub trait SecretSource: Send + Sync {
    /// Returns the value of `key` in Secret `name`.
    fn get<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, SecretError>>;

    /// Returns the value of `key` in Secret `name`, or `None` when the key is absent.
    fn get_optional<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        Box::pin(async move {
            match self.get(name, key).await {
                Ok(v) => Ok(Some(v)),
                Err(SecretError::KeyMissing { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

/// Secrets read from the Kubernetes API in one namespace.
pub struct KubeSecrets {
    api: Api<Secret>,
}

impl KubeSecrets {
    /// Reads Secrets in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }
}

impl SecretSource for KubeSecrets {
    fn get<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(async move {
            let secret = self
                .api
                .get_opt(name)
                .await
                .map_err(|e| secret_read_error(name, &e))?
                .ok_or_else(|| SecretError::NotFound { name: name.into() })?;
            if !is_marked(&secret.metadata) {
                return Err(SecretError::NotMarked { name: name.into() });
            }
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|s| s.clone().into_bytes())
                })
                .ok_or_else(|| SecretError::KeyMissing {
                    name: name.into(),
                    key: key.into(),
                })?;
            String::from_utf8(bytes)
                .map(SecretString::new)
                .map_err(|_| SecretError::NotText {
                    name: name.into(),
                    key: key.into(),
                })
        })
    }
}

/// Whether a Secret carries [`SECRET_ACCESS_LABEL`]`=true`.
pub fn is_marked(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(SECRET_ACCESS_LABEL))
        .is_some_and(|v| v == "true")
}

/// The error for a failed Secret read. Only the status reason and code, or a fixed
/// category, are kept: a decode error could quote the response, which holds the data.
fn secret_read_error(name: &str, e: &kube::Error) -> SecretError {
    let message = match e {
        kube::Error::Api(s) if s.code == 403 => {
            return SecretError::Forbidden { name: name.into() };
        }
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        kube::Error::SerdeError(_) => "the API server's answer could not be decoded".into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "the API server could not be reached".into()
        }
        _ => "the request to the API server failed".into(),
    };
    SecretError::Unreadable {
        name: name.into(),
        message,
    }
}

/// Secrets read from files laid out like mounted Secrets: `DIR/<secret-name>/<key>`.
pub struct DirSecrets {
    dir: PathBuf,
}

impl DirSecrets {
    /// Reads Secrets below `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

/// Secret names and keys are single path components: no traversal out of the directory.
fn is_plain_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

impl SecretSource for DirSecrets {
    fn get<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(async move {
            if !is_plain_component(name) {
                return Err(SecretError::NotFound { name: name.into() });
            }
            if !is_plain_component(key) {
                return Err(SecretError::KeyMissing {
                    name: name.into(),
                    key: key.into(),
                });
            }
            let secret_dir = self.dir.join(name);
            if !tokio::fs::try_exists(&secret_dir).await.unwrap_or(false) {
                return Err(SecretError::NotFound { name: name.into() });
            }
            let path = secret_dir.join(key);
            let meta = match tokio::fs::metadata(&path).await {
                Ok(m) => m,
                Err(_) => {
                    return Err(SecretError::KeyMissing {
                        name: name.into(),
                        key: key.into(),
                    });
                }
            };
            if meta.len() > MAX_SECRET_FILE_BYTES {
                return Err(SecretError::Unreadable {
                    name: name.into(),
                    message: format!("key {key:?} is larger than 1 MiB"),
                });
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| SecretError::Unreadable {
                    name: name.into(),
                    message: e.kind().to_string(),
                })?;
            let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
                name: name.into(),
                key: key.into(),
            })?;
            // Files written by hand often end with a newline; tokens and passwords never do.
            Ok(SecretString::new(text.trim_end_matches(['\n', '\r'])))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dir_secrets_read_values_and_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pve")).unwrap();
        std::fs::write(dir.path().join("pve/tokenSecret"), "abc-123\n").unwrap();
        let s = DirSecrets::new(dir.path());
        assert_eq!(
            s.get("pve", "tokenSecret").await.unwrap().expose(),
            "abc-123"
        );
        assert_eq!(
            s.get("pve", "password").await.unwrap_err(),
            SecretError::KeyMissing {
                name: "pve".into(),
                key: "password".into()
            }
        );
        assert_eq!(s.get_optional("pve", "password").await.unwrap(), None);
        assert_eq!(
            s.get("nope", "x").await.unwrap_err(),
            SecretError::NotFound {
                name: "nope".into()
            }
        );
    }

    #[test]
    fn forbidden_and_other_read_errors_are_not_reported_as_not_found() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "secrets \"nb\" is forbidden: User cannot get resource".into(),
                ..Default::default()
            }))
        };
        let forbidden = secret_read_error("nb", &status(403, "Forbidden"));
        assert_eq!(forbidden, SecretError::Forbidden { name: "nb".into() });
        assert_eq!(
            forbidden.metric_label(),
            crate::conditions::reasons::SECRET_UNREADABLE
        );
        assert!(forbidden.to_string().contains("403"), "{forbidden}");
        let other = secret_read_error("nb", &status(500, "InternalError"));
        assert_eq!(
            other.metric_label(),
            crate::conditions::reasons::SECRET_UNREADABLE
        );
        assert_eq!(
            other.to_string(),
            "cannot read Secret \"nb\": InternalError (500)"
        );
        let decode = secret_read_error(
            "nb",
            &kube::Error::SerdeError(
                serde_json::from_str::<u8>("\"hunter2-secret-value\"").unwrap_err(),
            ),
        );
        assert!(!decode.to_string().contains("hunter2"), "{decode}");
        assert_eq!(
            SecretError::NotFound { name: "nb".into() }.metric_label(),
            crate::conditions::reasons::SECRET_NOT_FOUND
        );
    }

    #[tokio::test]
    async fn dir_secrets_refuse_path_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirSecrets::new(dir.path().join("sub"));
        assert!(s.get("..", "etc").await.is_err());
        assert!(s.get("a", "../../etc/passwd").await.is_err());
    }
}
