//! A wrapper for secret values that never prints them.

use std::fmt;

/// A secret value (token, password, private key). `Debug` and `Display` print
/// `<redacted>`; the value is only reachable through [`SecretString::expose`]; its memory
/// is overwritten with zeros when it is dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl zeroize::Zeroize for SecretString {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret value; call only where it is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An HTTP header value carrying a secret, marked sensitive: hyper and reqwest print it as
/// `Sensitive` and HTTP/2 never indexes it. `None` when the value holds characters a header
/// cannot carry (the caller reports that without quoting the value).
pub fn sensitive_header(value: &str) -> Option<reqwest::header::HeaderValue> {
    let mut header = reqwest::header::HeaderValue::from_str(value).ok()?;
    header.set_sensitive(true);
    Some(header)
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = SecretString::new("hunter2-token");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn secret_headers_are_sensitive_and_never_printed() {
        let h = sensitive_header("Bearer nbt_abc.def").unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("nbt_abc"), "{h:?}");
        assert!(sensitive_header("line\nbreak").is_none());
    }

    #[test]
    fn zeroize_wipes_the_value() {
        let mut s = SecretString::new("hunter2-token");
        zeroize::Zeroize::zeroize(&mut s);
        assert!(s.is_empty());
        assert_eq!(s.expose(), "");
    }
}
