//! Command-line arguments shared by `run` and `sync`.

use crate::net::guard::{Cidr, EndpointGuard};

/// The operator-wide allow-list of the endpoint guard, shared by `run` and `sync`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EndpointArgs {
    /// Also allow PVE endpoints, the NetBox URL and SSH node addresses inside this CIDR
    /// (`127.0.0.0/8`, `fe80::/10`, or one address), which the endpoint guard refuses by
    /// default (loopback, link-local, unspecified, cloud metadata). Repeatable, or
    /// comma-separated. A cloud metadata address (169.254.169.254, fd00:ec2::254,
    /// 100.100.100.200) is allowed only when listed exactly, never by a wider CIDR.
    #[arg(
        long = "allow-endpoint-cidr",
        value_name = "CIDR",
        env = "PNO_ALLOW_ENDPOINT_CIDRS",
        value_delimiter = ','
    )]
    pub allow_endpoint_cidr: Vec<Cidr>,
}

impl EndpointArgs {
    /// The endpoint guard with these CIDRs allowed.
    pub fn guard(&self) -> EndpointGuard {
        EndpointGuard::new(self.allow_endpoint_cidr.iter().copied())
    }
}

/// Parses `--installation-id`.
pub fn installation_id_arg(value: &str) -> Result<String, String> {
    crate::owner::check_installation_id(value)
        .map(|()| value.to_string())
        .map_err(|e| e.to_string())
}
