//! Custom resources of the API group `proxmox-netbox.io`, version `v1alpha1`.
//!
//! Doc comments on fields become `kubectl explain` text: keep them user-facing.

mod cluster;
pub mod facts;
mod provisioning;
mod reference;
pub mod schema_check;
mod ssh_credential;

pub use cluster::*;
pub use provisioning::*;
pub use reference::reference_markdown;
pub use ssh_credential::*;

use kube::{CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource of this operator.
pub const API_GROUP: &str = "proxmox-netbox.io";

/// Reference to a whole Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the namespace of this resource (cross-namespace references are not allowed).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Reference to one key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of this resource (cross-namespace references are not allowed).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// TLS settings for an HTTPS endpoint. Verification is on unless `insecureSkipVerify` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.caSecretRef) && has(self.insecureSkipVerify) && self.insecureSkipVerify)").message("caSecretRef and insecureSkipVerify: true exclude each other: trust that CA, or remove caSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// PEM bundle of the CA certificates to trust, from a Secret key. When set, only these CAs are
    /// trusted for this endpoint; otherwise the system trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Skip certificate verification. Dangerous: anyone on the network path can read the
    /// credentials. Defaults to false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// All CRDs of this operator, in a stable order.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![ProxmoxCluster::crd(), NodeSSHCredential::crd()]
}

/// Renders the CRDs as one multi-document YAML stream (what `crdgen` prints).
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
