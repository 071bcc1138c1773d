//! The endpoint guard: which URLs and addresses the PVE client, the NetBox client and SSH
//! discovery may connect to.
//!
//! A person allowed to create a ProxmoxCluster chooses where the operator connects. The
//! guard keeps that from reaching what only the operator's pod can reach:
//!
//! - **URLs** (`spec.proxmox.endpoints[]`, `spec.netbox.url`) must be `https` (NetBox may be
//!   plain `http` when `spec.netbox.allowInsecureHttp` is true; the Proxmox VE API is served
//!   over https only) and carry no user name, password, query or fragment.
//! - **Addresses** are checked where the connection is made: on every address a host name
//!   resolves to, at connect time (the reqwest clients get [`GuardedResolver`]; SSH resolves
//!   through [`EndpointGuard::resolve`] and connects to the checked addresses only), so a
//!   DNS answer that changes after a check (DNS rebinding) cannot get around it. IP literals,
//!   which reqwest never hands to a resolver, are checked before any connection
//!   ([`EndpointGuard::check_url`]).
//! - **Refused by default**: loopback (`127.0.0.0/8`, `::1`), link-local (`169.254.0.0/16`,
//!   `fe80::/10`), unspecified (`0.0.0.0/8`, `::`), and the cloud metadata addresses
//!   (`169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`). An IPv6 address that embeds an
//!   IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, 6to4
//!   `2002:AABB:CCDD::/48`, NAT64 `64:ff9b::/96`) is judged as that IPv4 address. Private
//!   ranges (RFC 1918, unique local `fc00::/7`, CGNAT `100.64.0.0/10`) are allowed: that is
//!   where Proxmox VE and NetBox normally live.
//! - **Allowing** (`--allow-endpoint-cidr CIDR`, repeatable): an address inside a listed
//!   CIDR is allowed. A metadata address is allowed only when it is listed exactly (as
//!   `169.254.169.254/32` or `169.254.169.254`): `169.254.0.0/16` or `0.0.0.0/0` do not
//!   open it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::Url;

/// The cloud metadata addresses (AWS/GCP/Azure/OpenStack, Alibaba Cloud): allowed only when
/// listed exactly.
pub const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// The AWS IPv6 metadata address (`fd00:ec2::254`): allowed only when listed exactly.
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// The field of the NetBox URL, as errors name it.
pub const NETBOX_URL_FIELD: &str = "spec.netbox.url";

/// The spec field that lets the NetBox URL be plain `http`.
pub const NETBOX_INSECURE_HTTP_FIELD: &str = "spec.netbox.allowInsecureHttp";

/// The field of the `index`-th PVE endpoint, as errors name it (`spec.proxmox.endpoints[0]`).
pub fn pve_endpoint_field(index: usize) -> String {
    format!("spec.proxmox.endpoints[{index}]")
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`); a bare address is a single-address
/// network (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `ip` with every bit after the first `prefix` bits cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl Cidr {
    /// The network with `prefix` leading bits; `None` when the prefix is too long for the
    /// address family or host bits are set.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(network) && masked(network, prefix) == network)
            .then_some(Self { network, prefix })
    }

    /// Whether `ip` is inside the network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }

    /// Whether the network is exactly the single address `ip`.
    pub fn is_exactly(&self, ip: IpAddr) -> bool {
        self.network == ip && self.prefix == max_prefix(ip)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            CidrError(format!(
                "{text:?} is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address"
            ))
        })?;
        let prefix = match prefix {
            None => max_prefix(network),
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max_prefix(network))
                .ok_or_else(|| {
                    CidrError(format!(
                        "{text:?}: the prefix length must be 0 to {}",
                        max_prefix(network)
                    ))
                })?,
        };
        Self::new(network, prefix).ok_or_else(|| {
            CidrError(format!(
                "{text:?} has host bits set (did you mean {}/{prefix}?)",
                masked(network, prefix)
            ))
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A kind of address refused unless allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// A cloud metadata service ([`METADATA_V4`], [`METADATA_V6`]).
    Metadata,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address",
            Self::Unspecified => "an unspecified address",
            Self::Metadata => "a cloud metadata address",
        }
    }

    /// The CIDR to suggest for allowing `ip` of this class.
    fn allow_hint(self, ip: IpAddr) -> String {
        let whole = |v4: &str, v6: &str| if ip.is_ipv4() { v4 } else { v6 }.to_string();
        match self {
            Self::Loopback => whole("127.0.0.0/8", "::1/128"),
            Self::LinkLocal => whole("169.254.0.0/16", "fe80::/10"),
            Self::Unspecified => whole("0.0.0.0/8", "::/128"),
            Self::Metadata => format!("{ip}/{}", max_prefix(ip)),
        }
    }
}

/// How an IPv6 address embeds an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`.
    Ipv4Mapped,
    /// `::a.b.c.d` (deprecated, still routed by some stacks).
    Ipv4Compatible,
    /// `2002:AABB:CCDD::/48`.
    SixToFour,
    /// `64:ff9b::a.b.c.d`, the well-known NAT64 prefix.
    Nat64,
}

impl Embedding {
    fn name(self) -> &'static str {
        match self {
            Self::Ipv4Mapped => "IPv4-mapped",
            Self::Ipv4Compatible => "IPv4-compatible",
            Self::SixToFour => "6to4",
            Self::Nat64 => "NAT64",
        }
    }
}

/// The IPv4 address an IPv6 address embeds, and how.
pub fn embedded_ipv4(a: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let s = a.segments();
    let o = a.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        Some((Embedding::Ipv4Mapped, tail))
    } else if s[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
        Some((Embedding::Ipv4Compatible, tail))
    } else if s[0] == 0x2002 {
        Some((Embedding::SixToFour, Ipv4Addr::new(o[2], o[3], o[4], o[5])))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((Embedding::Nat64, tail))
    } else {
        None
    }
}

fn class_v4(a: Ipv4Addr) -> Option<AddressClass> {
    if METADATA_V4.contains(&a) {
        Some(AddressClass::Metadata)
    } else if a.is_loopback() {
        Some(AddressClass::Loopback)
    } else if a.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if a.octets()[0] == 0 {
        Some(AddressClass::Unspecified)
    } else {
        None
    }
}

/// The refused class of `ip` (with the IPv4 address it was judged as, when embedded), or
/// `None` for an address allowed by default.
fn classify(ip: IpAddr) -> Option<(AddressClass, Option<(Embedding, Ipv4Addr)>)> {
    let a = match ip {
        IpAddr::V4(a) => return class_v4(a).map(|c| (c, None)),
        IpAddr::V6(a) => a,
    };
    if a == METADATA_V6 {
        Some((AddressClass::Metadata, None))
    } else if a.is_loopback() {
        Some((AddressClass::Loopback, None))
    } else if a.is_unspecified() {
        Some((AddressClass::Unspecified, None))
    } else if a.segments()[0] & 0xffc0 == 0xfe80 {
        Some((AddressClass::LinkLocal, None))
    } else {
        let (how, v4) = embedded_ipv4(a)?;
        class_v4(v4).map(|c| (c, Some((how, v4))))
    }
}

/// An address the guard refused. Its text says what the address is and how to allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The host name that resolved to the address; `None` for an IP literal.
    pub host: Option<String>,
    /// The refused address.
    pub address: IpAddr,
    /// Why.
    pub class: AddressClass,
    /// The IPv4 address it embeds and was judged as, if any.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let judged = self.embedded.map_or(self.address, |(_, v4)| IpAddr::V4(v4));
        let what = match self.embedded {
            Some((how, v4)) => format!("{} ({} form of {v4})", self.class.describe(), how.name()),
            None => self.class.describe().to_string(),
        };
        match &self.host {
            Some(host) => write!(f, "{host} resolves to {}, {what}", self.address)?,
            None => write!(f, "{} is {what}", self.address)?,
        }
        let cidr = self.class.allow_hint(judged);
        if self.class == AddressClass::Metadata {
            write!(
                f,
                "; refused (allow it only by listing it exactly: --allow-endpoint-cidr {cidr})"
            )
        } else {
            write!(f, "; refused (allow it with --allow-endpoint-cidr {cidr})")
        }
    }
}

impl std::error::Error for Refusal {}

/// Which schemes a URL field accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemePolicy {
    /// `https` only (the Proxmox VE API is served over https only).
    HttpsOnly,
    /// `https`, or `http` when the spec field `flag` is true.
    HttpsUnless {
        /// The spec field that allows plain http (`spec.netbox.allowInsecureHttp`).
        flag: &'static str,
        /// Its value.
        allow_http: bool,
    },
}

/// What is wrong with an endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlProblem {
    /// Not a URL at all.
    Unparsable(String),
    /// A scheme other than https (or an http not allowed).
    Scheme {
        /// The scheme.
        scheme: String,
        /// The field that would allow plain http, if one does.
        flag: Option<&'static str>,
    },
    /// A user name or password in the URL.
    UserInfo,
    /// A query string.
    Query,
    /// A fragment.
    Fragment,
    /// No host.
    NoHost,
    /// The host is a refused IP literal.
    Refused(Refusal),
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparsable(e) => write!(f, "not a valid URL ({e})"),
            Self::Scheme {
                scheme,
                flag: Some(flag),
            } if scheme == "http" => {
                write!(f, "plain http is refused: use https, or set {flag}: true")
            }
            Self::Scheme { scheme, .. } => {
                write!(f, "the scheme {scheme:?} is refused: use https")
            }
            Self::UserInfo => f.write_str(
                "a user name or password in the URL is refused (credentials come from Secrets)",
            ),
            Self::Query => f.write_str("a query string (`?...`) is refused"),
            Self::Fragment => f.write_str("a fragment (`#...`) is refused"),
            Self::NoHost => f.write_str("the URL has no host"),
            Self::Refused(r) => r.fmt(f),
        }
    }
}

/// An endpoint the guard refused, naming the spec field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct EndpointError {
    /// The field (`spec.netbox.url`, `spec.proxmox.endpoints[1]`, `spec.address`).
    pub field: String,
    /// What is wrong.
    pub problem: UrlProblem,
}

/// Why a host could not be resolved to an allowed address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Every address of the host was refused (the first refusal is kept).
    #[error("{0}")]
    Refused(Refusal),
    /// The lookup itself failed.
    #[error("cannot resolve {host}: {message}")]
    Lookup {
        /// The host.
        host: String,
        /// The resolver's error.
        message: String,
    },
}

/// The operator-wide allow-list and the checks made with it. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointGuard {
    allowed: Arc<[Cidr]>,
}

impl EndpointGuard {
    /// A guard that also allows the addresses inside `allowed` (metadata addresses only when
    /// listed exactly).
    pub fn new(allowed: impl IntoIterator<Item = Cidr>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }

    /// The allowed CIDRs.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// Checks one address: `Ok` when it is allowed by default or by the allow-list.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some((class, embedded)) = classify(ip) else {
            return Ok(());
        };
        let judged = embedded.map_or(ip, |(_, v4)| IpAddr::V4(v4));
        let allowed = if class == AddressClass::Metadata {
            self.allowed.iter().any(|c| c.is_exactly(judged))
        } else {
            self.allowed.iter().any(|c| c.contains(judged))
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal {
                host: None,
                address: ip,
                class,
                embedded,
            })
        }
    }

    /// Checks an endpoint URL before any connection: the scheme, no user name, password,
    /// query or fragment, and an IP-literal host against the address rules. A host name is
    /// checked when it is resolved ([`GuardedResolver`], [`EndpointGuard::resolve`]).
    pub fn check_url(
        &self,
        field: &str,
        raw: &str,
        scheme: SchemePolicy,
    ) -> Result<Url, EndpointError> {
        let fail = |problem| EndpointError {
            field: field.to_string(),
            problem,
        };
        let url =
            Url::parse(raw.trim()).map_err(|e| fail(UrlProblem::Unparsable(e.to_string())))?;
        let flag = match scheme {
            SchemePolicy::HttpsOnly => None,
            SchemePolicy::HttpsUnless { flag, .. } => Some(flag),
        };
        let http_ok = matches!(
            scheme,
            SchemePolicy::HttpsUnless {
                allow_http: true,
                ..
            }
        );
        if !(url.scheme() == "https" || url.scheme() == "http" && http_ok) {
            return Err(fail(UrlProblem::Scheme {
                scheme: url.scheme().to_string(),
                flag,
            }));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail(UrlProblem::UserInfo));
        }
        if url.query().is_some() {
            return Err(fail(UrlProblem::Query));
        }
        if url.fragment().is_some() {
            return Err(fail(UrlProblem::Fragment));
        }
        let host = url.host_str().ok_or_else(|| fail(UrlProblem::NoHost))?;
        // The URL parser has normalised IPv4 forms (`2130706433`, `0x7f.1`) to dotted quads.
        if let Some(ip) = parse_ip_literal(host) {
            self.check_ip(ip)
                .map_err(|r| fail(UrlProblem::Refused(r)))?;
        }
        Ok(url)
    }

    /// Checks every PVE endpoint URL (https only), naming `spec.proxmox.endpoints[i]`.
    pub fn check_pve_endpoints(&self, endpoints: &[String]) -> Result<(), EndpointError> {
        for (i, endpoint) in endpoints.iter().enumerate() {
            self.check_url(&pve_endpoint_field(i), endpoint, SchemePolicy::HttpsOnly)?;
        }
        Ok(())
    }

    /// Checks the NetBox URL (plain http only with `allow_insecure_http`), naming
    /// `spec.netbox.url`.
    pub fn check_netbox_url(
        &self,
        url: &str,
        allow_insecure_http: bool,
    ) -> Result<Url, EndpointError> {
        self.check_url(
            NETBOX_URL_FIELD,
            url,
            SchemePolicy::HttpsUnless {
                flag: NETBOX_INSECURE_HTTP_FIELD,
                allow_http: allow_insecure_http,
            },
        )
    }

    /// Checks a host that is an IP literal (`10.0.0.5`, `::1`, `[::1]`) before any
    /// connection; a host name passes here and is checked when it is resolved.
    pub fn check_host(&self, field: &str, host: &str) -> Result<(), EndpointError> {
        match parse_ip_literal(host) {
            Some(ip) => self.check_ip(ip).map_err(|r| EndpointError {
                field: field.to_string(),
                problem: UrlProblem::Refused(r),
            }),
            None => Ok(()),
        }
    }

    /// Resolves `host` (a name or an IP literal) and returns the allowed addresses with
    /// `port`; the caller connects to these only. Refused addresses are left out (and
    /// logged); when none is left, the first refusal is the error.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(ip) = parse_ip_literal(host) {
            self.check_ip(ip).map_err(ResolveError::Refused)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found =
            tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ResolveError::Lookup {
                    host: host.to_string(),
                    message: e.to_string(),
                })?;
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for addr in found {
            match self.check_ip(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(r) => refused.push(Refusal {
                    host: Some(host.to_string()),
                    ..r
                }),
            }
        }
        if let Some(first) = refused.first() {
            if allowed.is_empty() {
                return Err(ResolveError::Refused(first.clone()));
            }
            tracing::debug!(
                host,
                refused = ?refused.iter().map(|r| r.address).collect::<Vec<_>>(),
                "endpoint guard: left out refused addresses of a host"
            );
        }
        if allowed.is_empty() {
            return Err(ResolveError::Lookup {
                host: host.to_string(),
                message: "no address found".into(),
            });
        }
        Ok(allowed)
    }

    /// The DNS resolver for reqwest clients (`ClientBuilder::dns_resolver`).
    pub fn resolver(&self) -> GuardedResolver {
        GuardedResolver {
            guard: self.clone(),
        }
    }
}

/// `host` as an IP address when it is one (IPv6 with or without brackets).
fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// A reqwest DNS resolver that resolves with the system resolver and hands reqwest only
/// the addresses the guard allows: every new connection is checked on the addresses it
/// really connects to.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: EndpointGuard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addrs = guard.resolve(&host, 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The guard's refusal somewhere in an error's source chain (a reqwest error from a
/// connection the [`GuardedResolver`] refused).
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(ResolveError::Refused(r)) = e.downcast_ref::<ResolveError>() {
            return Some(r);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> EndpointGuard {
        EndpointGuard::new(list.iter().map(|c| c.parse::<Cidr>().unwrap()))
    }

    #[test]
    fn cidrs_parse_contain_and_refuse_host_bits() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::ffff:10.0.0.1")), "never across families");
        let one: Cidr = "169.254.169.254".parse().unwrap();
        assert_eq!(one.to_string(), "169.254.169.254/32");
        assert!(one.is_exactly(ip("169.254.169.254")));
        let v6: Cidr = "fe80::/10".parse().unwrap();
        assert!(v6.contains(ip("febf::1")));
        assert!(!v6.contains(ip("fec0::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!(!all.is_exactly(ip("0.0.0.0")));
        let err = "127.0.0.1/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(err.contains("did you mean 127.0.0.0/8"), "{err}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("pve1".parse::<Cidr>().is_err());
        assert!("".parse::<Cidr>().is_err());
    }

    #[test]
    fn every_refused_class_is_refused_by_default_and_named() {
        let guard = EndpointGuard::default();
        for (addr, class, hint) in [
            ("127.0.0.1", "a loopback address", "127.0.0.0/8"),
            ("127.8.9.10", "a loopback address", "127.0.0.0/8"),
            ("::1", "a loopback address", "::1/128"),
            ("169.254.1.1", "a link-local address", "169.254.0.0/16"),
            ("fe80::1", "a link-local address", "fe80::/10"),
            ("0.0.0.0", "an unspecified address", "0.0.0.0/8"),
            ("::", "an unspecified address", "::/128"),
            (
                "169.254.169.254",
                "a cloud metadata address",
                "169.254.169.254/32",
            ),
            (
                "100.100.100.200",
                "a cloud metadata address",
                "100.100.100.200/32",
            ),
            (
                "fd00:ec2::254",
                "a cloud metadata address",
                "fd00:ec2::254/128",
            ),
        ] {
            let r = guard.check_ip(ip(addr)).unwrap_err();
            let text = r.to_string();
            assert!(
                text.starts_with(&format!("{addr} is {class}; refused")),
                "{text}"
            );
            assert!(
                text.contains(&format!("--allow-endpoint-cidr {hint})")),
                "{text}"
            );
        }
    }

    #[test]
    fn private_and_public_addresses_are_allowed() {
        let guard = EndpointGuard::default();
        for addr in [
            "10.0.0.5",
            "172.16.1.1",
            "192.168.1.10",
            "100.64.0.1",
            "100.100.100.201",
            "8.8.8.8",
            "fd00::5",
            "fd00:ec2::253",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "2002:0a00:0001::1",
            "64:ff9b::c0a8:0101",
        ] {
            assert_eq!(guard.check_ip(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn embedded_forms_of_refused_ipv4_are_refused() {
        let guard = EndpointGuard::default();
        for (addr, class, form) in [
            (
                "::ffff:127.0.0.1",
                AddressClass::Loopback,
                Embedding::Ipv4Mapped,
            ),
            (
                "::127.0.0.1",
                AddressClass::Loopback,
                Embedding::Ipv4Compatible,
            ),
            (
                "::ffff:169.254.169.254",
                AddressClass::Metadata,
                Embedding::Ipv4Mapped,
            ),
            (
                "::169.254.169.254",
                AddressClass::Metadata,
                Embedding::Ipv4Compatible,
            ),
            (
                "2002:a9fe:a9fe::1",
                AddressClass::Metadata,
                Embedding::SixToFour,
            ),
            (
                "64:ff9b::a9fe:a9fe",
                AddressClass::Metadata,
                Embedding::Nat64,
            ),
            (
                "64:ff9b::100.100.100.200",
                AddressClass::Metadata,
                Embedding::Nat64,
            ),
            (
                "2002:7f00:0001::",
                AddressClass::Loopback,
                Embedding::SixToFour,
            ),
            (
                "::ffff:169.254.3.4",
                AddressClass::LinkLocal,
                Embedding::Ipv4Mapped,
            ),
            (
                "64:ff9b::0.0.0.0",
                AddressClass::Unspecified,
                Embedding::Nat64,
            ),
        ] {
            let r = guard.check_ip(ip(addr)).unwrap_err();
            assert_eq!(r.class, class, "{addr}");
            assert_eq!(r.embedded.map(|e| e.0), Some(form), "{addr}");
        }
        let text = guard
            .check_ip(ip("::ffff:169.254.169.254"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "::ffff:169.254.169.254 is a cloud metadata address (IPv4-mapped form of \
             169.254.169.254); refused (allow it only by listing it exactly: \
             --allow-endpoint-cidr 169.254.169.254/32)"
        );
    }

    #[test]
    fn allowed_cidrs_open_their_range_but_metadata_only_when_listed_exactly() {
        let guard = cidrs(&["127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/0", "fe80::/10"]);
        assert_eq!(guard.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(guard.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(guard.check_ip(ip("2002:7f00:1::")), Ok(()));
        assert_eq!(guard.check_ip(ip("169.254.1.1")), Ok(()));
        assert_eq!(guard.check_ip(ip("fe80::1")), Ok(()));
        assert!(
            guard.check_ip(ip("::1")).is_err(),
            "127.0.0.0/8 is IPv4 only"
        );
        for metadata in [
            "169.254.169.254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
            "2002:a9fe:a9fe::",
            "64:ff9b::a9fe:a9fe",
        ] {
            let r = guard.check_ip(ip(metadata)).unwrap_err();
            assert_eq!(r.class, AddressClass::Metadata, "{metadata}");
        }
        let exact = cidrs(&["169.254.169.254/32", "fd00:ec2::254"]);
        assert_eq!(exact.check_ip(ip("169.254.169.254")), Ok(()));
        assert_eq!(exact.check_ip(ip("::ffff:169.254.169.254")), Ok(()));
        assert_eq!(exact.check_ip(ip("fd00:ec2::254")), Ok(()));
        assert!(exact.check_ip(ip("100.100.100.200")).is_err());
        assert!(exact.check_ip(ip("169.254.169.253")).is_err());
    }

    #[test]
    fn urls_must_be_https_without_userinfo_query_or_fragment() {
        let guard = EndpointGuard::default();
        let netbox = |allow_http| SchemePolicy::HttpsUnless {
            flag: NETBOX_INSECURE_HTTP_FIELD,
            allow_http,
        };
        let ok = guard
            .check_url(
                NETBOX_URL_FIELD,
                "https://netbox.example.com/",
                netbox(false),
            )
            .unwrap();
        assert_eq!(ok.host_str(), Some("netbox.example.com"));
        guard
            .check_url(NETBOX_URL_FIELD, "http://10.0.0.9:8000", netbox(true))
            .unwrap();
        let cases = [
            (
                "http://netbox.example.com",
                netbox(false),
                "spec.netbox.url: plain http is refused: use https, or set spec.netbox.allowInsecureHttp: true",
            ),
            (
                "http://pve1:8006",
                SchemePolicy::HttpsOnly,
                "spec.netbox.url: the scheme \"http\" is refused: use https",
            ),
            (
                "ftp://netbox.example.com",
                netbox(true),
                "spec.netbox.url: the scheme \"ftp\" is refused: use https",
            ),
            (
                "https://admin:hunter2@netbox.example.com",
                netbox(false),
                "spec.netbox.url: a user name or password in the URL is refused (credentials come from Secrets)",
            ),
            (
                "https://admin@netbox.example.com",
                netbox(false),
                "spec.netbox.url: a user name or password in the URL is refused (credentials come from Secrets)",
            ),
            (
                "https://netbox.example.com/?next=/evil",
                netbox(false),
                "spec.netbox.url: a query string (`?...`) is refused",
            ),
            (
                "https://netbox.example.com/?",
                netbox(false),
                "spec.netbox.url: a query string (`?...`) is refused",
            ),
            (
                "https://netbox.example.com/#x",
                netbox(false),
                "spec.netbox.url: a fragment (`#...`) is refused",
            ),
            (
                "https://127.0.0.1:8000",
                netbox(false),
                "spec.netbox.url: 127.0.0.1 is a loopback address; refused (allow it with --allow-endpoint-cidr 127.0.0.0/8)",
            ),
            (
                "http://[::ffff:a9fe:a9fe]/",
                netbox(true),
                "spec.netbox.url: ::ffff:169.254.169.254 is a cloud metadata address",
            ),
            (
                // WHATWG URL parsing turns the number into 127.0.0.1.
                "https://2130706433/",
                netbox(false),
                "spec.netbox.url: 127.0.0.1 is a loopback address",
            ),
            (
                "not a url",
                netbox(false),
                "spec.netbox.url: not a valid URL",
            ),
        ];
        for (url, policy, expected) in cases {
            let err = guard
                .check_url(NETBOX_URL_FIELD, url, policy)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let allowed = cidrs(&["127.0.0.0/8"]);
        allowed
            .check_url(
                &pve_endpoint_field(0),
                "https://127.0.0.1:8006",
                SchemePolicy::HttpsOnly,
            )
            .unwrap();
        let err = guard
            .check_url(
                &pve_endpoint_field(2),
                "https://[fe80::1]:8006",
                SchemePolicy::HttpsOnly,
            )
            .unwrap_err();
        assert_eq!(err.field, "spec.proxmox.endpoints[2]");
    }

    #[test]
    fn ssh_hosts_are_checked_when_they_are_literals() {
        let guard = EndpointGuard::default();
        assert!(guard.check_host("spec.address", "pve1.example.com").is_ok());
        assert!(guard.check_host("spec.address", "10.0.0.5").is_ok());
        let err = guard.check_host("spec.address", "[::1]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.address: ::1 is a loopback address; refused (allow it with --allow-endpoint-cidr ::1/128)"
        );
    }

    #[tokio::test]
    async fn names_are_checked_on_every_resolved_address() {
        let guard = EndpointGuard::default();
        let err = guard.resolve("localhost", 22).await.unwrap_err();
        let ResolveError::Refused(r) = &err else {
            panic!("{err}")
        };
        assert_eq!(r.class, AddressClass::Loopback);
        assert!(
            err.to_string().starts_with("localhost resolves to "),
            "{err}"
        );
        assert!(matches!(
            guard.resolve("169.254.169.254", 80).await,
            Err(ResolveError::Refused(_))
        ));
        let allowed = cidrs(&["127.0.0.0/8", "::1/128"]);
        let addrs = allowed.resolve("localhost", 2222).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 2222 && a.ip().is_loopback())
        );
        // Only the IPv4 loopback allowed: an IPv6 answer is left out, never connected to.
        let v4_only = cidrs(&["127.0.0.0/8"]);
        let addrs = v4_only.resolve("localhost", 1).await.unwrap();
        assert!(addrs.iter().all(|a| a.is_ipv4()), "{addrs:?}");
        assert!(matches!(
            guard.resolve("no-such-host.invalid", 1).await,
            Err(ResolveError::Lookup { .. })
        ));
    }

    #[tokio::test]
    async fn a_reqwest_client_with_the_resolver_refuses_localhost_at_connect_time() {
        // A listener on 127.0.0.1 that would answer: the request fails before connecting.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .dns_resolver(EndpointGuard::default().resolver())
            .build()
            .unwrap();
        let err = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let refusal = refusal_in(&err).expect("the guard's refusal is in the chain");
        assert_eq!(refusal.class, AddressClass::Loopback);
        assert_eq!(refusal.host.as_deref(), Some("localhost"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!accepted.is_finished(), "no connection was made");
        accepted.abort();
    }
}
