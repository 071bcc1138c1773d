//! Writes to the Proxmox VE API: the only place that changes PVE. A separate trait from
//! [`PveApi`], so that a stage given a `&dyn PveApi` (every read stage) cannot write.
//!
//! Requests are form-encoded (POST, PUT) or carry a query string (DELETE), authenticated
//! like reads (with ticket auth, the login's `CSRFPreventionToken` is sent too). A write is
//! never repeated once it may have reached PVE: it is retried, or failed over to the next
//! endpoint, only after a failed connect (nothing was sent) and on 429; a timeout, a
//! connection lost after sending, a gateway error or an answer that could not be read is
//! [`PveError::OutcomeUnknown`], and the caller has to look at PVE before trying again.
//! Every attempt is timed into the client's recorder under [`super::metrics::operation`].

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::Value;

use super::client::{PveApi, PveClient, PveError, WriteParams};

/// The PVE API with writes.
pub trait PveWriteApi: PveApi {
    /// POST a form to `path` (relative to `/api2/json`); returns `data` (a UPID string for
    /// a task, else whatever PVE answers, often null).
    fn post<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>>;

    /// PUT a form to `path`; returns `data` as [`PveWriteApi::post`] does.
    fn put<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>>;

    /// DELETE `path` with `query` as its query string; returns `data` (a UPID for a guest).
    fn delete<'a>(
        &'a self,
        path: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>>;
}

impl PveWriteApi for PveClient {
    fn post<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.write(Method::POST, path, WriteParams::Form(form)))
    }

    fn put<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.write(Method::PUT, path, WriteParams::Form(form)))
    }

    fn delete<'a>(
        &'a self,
        path: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.write(Method::DELETE, path, WriteParams::Query(query)))
    }
}

/// A form or query from `(name, value)` pairs.
pub fn form<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// A boolean parameter as PVE takes it: `1` or `0`.
pub fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// `text` percent-encoded once, every byte but `A-Z a-z 0-9 - . _ ~` as `%XX` (what Perl's
/// `uri_escape` produces): the format PVE wants for the `urlencoded` parameters, such as a
/// QEMU guest's `sshkeys`. The form encoding of the request comes on top of it.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys_are_encoded_as_pve_wants_them() {
        let keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG+x/y= ops@example.com\nssh-rsa AAAB3 b@c";
        let encoded = percent_encode(keys);
        assert_eq!(
            encoded,
            "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIG%2Bx%2Fy%3D%20ops%40example.com%0Assh-rsa%20AAAB3%20b%40c"
        );
        // Only characters of PVE's `urlencoded` format are left.
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-%_.!~*'()".contains(c))
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn forms_and_flags() {
        assert_eq!(
            form([("newid", "105".to_string()), ("full", flag(true))]),
            vec![
                ("newid".to_string(), "105".to_string()),
                ("full".to_string(), "1".to_string())
            ]
        );
        assert_eq!(flag(false), "0");
    }
}
