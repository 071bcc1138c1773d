//! HTTP clients with TLS verification on by default, shared by the PVE and NetBox clients.

use std::time::Duration;

use crate::net::guard::EndpointGuard;

/// How to verify the server certificate of an HTTPS endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM bundle of CA certificates. When set, only these CAs are trusted;
    /// otherwise the system trust store is used.
    pub ca_pem: Option<String>,
    /// Skip certificate verification entirely. Only ever set from an explicit
    /// `insecureSkipVerify: true` in the spec.
    pub insecure_skip_verify: bool,
}

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle is not valid PEM or holds no certificate.
    #[error("CA bundle is not a valid PEM certificate bundle: {0}")]
    InvalidCaBundle(String),
    /// reqwest refused the configuration.
    #[error("cannot build HTTP client: {0}")]
    Client(String),
}

/// Builds a reqwest client with the given TLS settings and request timeout, resolving
/// host names through `guard` (every connection is checked on the addresses it uses).
///
/// Redirects are not followed: a redirect from an API endpoint could send the
/// credentials to another host.
pub fn http_client(
    tls: &TlsSettings,
    timeout: Duration,
    user_agent: &str,
    guard: &EndpointGuard,
) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(guard.resolver())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent);
    if let Some(pem) = &tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| TlsError::InvalidCaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::InvalidCaBundle("no certificate found".into()));
        }
        builder = builder.tls_certs_only(certs);
    }
    if tls.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| TlsError::Client(e.to_string()))
}

/// Installs the ring crypto provider for rustls; call once at the top of `main`
/// (and in tests that build clients). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_bundle_is_rejected() {
        install_crypto_provider();
        let tls = TlsSettings {
            ca_pem: Some("not a certificate".into()),
            insecure_skip_verify: false,
        };
        let err = http_client(
            &tls,
            Duration::from_secs(5),
            "test",
            &EndpointGuard::default(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::InvalidCaBundle(_)), "{err}");
    }

    #[test]
    fn default_settings_build_a_verifying_client() {
        install_crypto_provider();
        http_client(
            &TlsSettings::default(),
            Duration::from_secs(5),
            "test",
            &EndpointGuard::default(),
        )
        .unwrap();
    }
}
