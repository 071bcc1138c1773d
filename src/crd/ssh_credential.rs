//! The `NodeSSHCredential` resource: how to reach one PVE node over SSH for hardware discovery.

// Several `printcolumn(...)` entries legitimately repeat the same keys.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Pattern of a pinned host-key fingerprint as `ssh-keygen -lf` prints it: `SHA256:` and
/// 43 characters of unpadded base64.
pub const FINGERPRINT_PATTERN: &str = r"^SHA256:[A-Za-z0-9+/]{43}$";

/// SSH access to one Proxmox VE node, used by hardware discovery.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "proxmox-netbox.io",
    version = "v1alpha1",
    kind = "NodeSSHCredential",
    namespaced,
    status = "NodeSSHCredentialStatus",
    shortname = "nsc",
    category = "proxmox-netbox",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.clusterRef.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.privateKeySecretRef) != has(self.passwordSecretRef)").message("exactly one of privateKeySecretRef and passwordSecretRef must be set"))]
#[serde(rename_all = "camelCase")]
pub struct NodeSSHCredentialSpec {
    /// The ProxmoxCluster (same namespace) this node belongs to.
    pub cluster_ref: ClusterRef,
    /// Node name as Proxmox VE knows it.
    #[schemars(length(min = 1, max = 63))]
    pub node_name: String,
    /// Host name or IP address to connect to. Default: the node's address from PVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[A-Za-z0-9.:\-\[\]]+$"))]
    pub address: Option<String>,
    /// SSH port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Remote user.
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z_][a-z0-9_.\-]*$"))]
    pub username: String,
    /// Secret key holding an OpenSSH private key (ed25519 recommended). Exactly one of
    /// `privateKeySecretRef` and `passwordSecretRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret_ref: Option<PrivateKeySecretRef>,
    /// Secret key holding the password. Exactly one of `privateKeySecretRef` and
    /// `passwordSecretRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Pinned SHA-256 fingerprint of the node's host key, as `ssh-keygen -lf` prints it
    /// (`SHA256:...`). Required: the operator never trusts a host key on first use, and sends
    /// no credential to a host whose key does not match.
    #[schemars(length(max = 50), pattern(FINGERPRINT_PATTERN))]
    pub host_key_fingerprint: String,
    /// Run `dmidecode` through `sudo -n` (dmidecode needs root). Default true.
    #[serde(default = "default_true")]
    pub sudo: bool,
}

/// Reference to a ProxmoxCluster in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// Name of the ProxmoxCluster.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Private key from a Secret, with an optional passphrase from the same Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySecretRef {
    /// Name of the Secret, in the namespace of this resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the OpenSSH private key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Key holding the key's passphrase, if the key is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub passphrase_key: Option<String>,
}

/// Observed state of a NodeSSHCredential, written by the ProxmoxCluster controller after
/// each discovery.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSSHCredentialStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the last discovery with this credential succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn default_port() -> i32 {
    22
}
fn default_true() -> bool {
    true
}
