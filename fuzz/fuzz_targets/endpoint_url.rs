//! Endpoint URLs: `spec.proxmox.endpoints[]` and `spec.netbox.url` as the endpoint guard
//! checks them (`net::guard::EndpointGuard::check_url`, which parses with `reqwest::Url`)
//! and as the HTTP clients then turn the same text into request URLs (the string building
//! of `PveClient::url` and `NetBoxClient`'s `<url>/api/<endpoint>/`).
//!
//! Properties: a parsed URL written out parses to the same URL (what is logged is what is
//! requested); whatever the guard accepts has the allowed scheme and no user info, query or
//! fragment; and a request URL built from an accepted endpoint that parses goes to the very
//! scheme, host and port the guard checked (an IP-literal host being one the guard allows),
//! with the API path the client meant and no query or fragment, so no text that passes the
//! guard can send the request (and its credentials) anywhere else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxmox_netbox_operator::net::guard::{EndpointGuard, SchemePolicy};
use reqwest::Url;

fn reparses(u: &Url) {
    let again = Url::parse(u.as_str()).unwrap_or_else(|e| panic!("{u} does not re-parse: {e}"));
    assert_eq!(&again, u, "{u} re-parses as {again}");
}

/// The checked URL has what the guard promises.
fn accepted(url: &Url, allow_http: bool) {
    reparses(url);
    assert!(
        url.scheme() == "https" || (allow_http && url.scheme() == "http"),
        "{url}: scheme"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{url}: user info"
    );
    assert_eq!(url.query(), None, "{url}: query");
    assert_eq!(url.fragment(), None, "{url}: fragment");
    assert!(url.host_str().is_some(), "{url}: no host");
}

/// A request URL built from the raw text of an accepted endpoint.
fn same_target(guard: &EndpointGuard, raw: &str, checked: &Url, built: &str, api_path: &str) {
    let Ok(url) = Url::parse(built) else {
        // The request fails before any connection.
        return;
    };
    reparses(&url);
    assert_eq!(url.scheme(), checked.scheme(), "{raw:?} -> {url}");
    assert_eq!(
        url.host(),
        checked.host(),
        "{raw:?} checked as {checked}, requests {url}"
    );
    assert_eq!(
        url.port_or_known_default(),
        checked.port_or_known_default(),
        "{raw:?} -> {url}"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{raw:?} -> {url}"
    );
    assert_eq!(url.query(), None, "{raw:?} -> {url}");
    assert_eq!(url.fragment(), None, "{raw:?} -> {url}");
    assert!(
        url.path().ends_with(api_path),
        "{raw:?} sends {api_path} to {url}"
    );
    if let Some(host) = url.host_str() {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
            assert!(
                guard.check_ip(ip).is_ok(),
                "{raw:?} reaches the refused {ip}"
            );
        }
    }
}

fn check(guard: &EndpointGuard, raw: &str) {
    if let Ok(u) = Url::parse(raw) {
        reparses(&u);
    }

    if let Ok(checked) = guard.check_url("spec.proxmox.endpoints[0]", raw, SchemePolicy::HttpsOnly)
    {
        accepted(&checked, false);
        for path in ["/nodes/pve1/qemu/100/config"] {
            let built = format!("{}/api2/json{}", raw.trim_end_matches('/'), path);
            same_target(guard, raw, &checked, &built, &format!("/api2/json{path}"));
        }
    }

    let policy = |allow_http| SchemePolicy::HttpsUnless {
        flag: "spec.netbox.allowInsecureHttp",
        allow_http,
    };
    let strict = guard.check_url("spec.netbox.url", raw, policy(false));
    let relaxed = guard.check_url("spec.netbox.url", raw, policy(true));
    if let Ok(u) = &strict {
        assert_eq!(
            relaxed.as_ref().ok(),
            Some(u),
            "{raw:?}: allowing http refused https"
        );
    }
    if let (Err(_), Ok(u)) = (&strict, &relaxed) {
        assert_eq!(u.scheme(), "http", "{raw:?}: only http may need the flag");
    }
    for (allow_http, checked) in [(true, relaxed)] {
        let Ok(checked) = checked else {
            continue;
        };
        accepted(&checked, allow_http);
        let base = format!("{}/api/", raw.trim_end_matches('/'));
        for endpoint in ["virtualization/virtual-machines"] {
            let built = format!("{base}{}/", endpoint.trim_matches('/'));
            let api_path = format!("/api/{endpoint}/");
            same_target(guard, raw, &checked, &built, &api_path);
            // What `.query(...)` then appends stays a query of that path.
            if let Ok(mut url) = Url::parse(&built) {
                url.query_pairs_mut()
                    .append_pair("limit", "1000")
                    .append_pair("name", raw);
                reparses(&url);
                assert!(url.path().ends_with(&api_path), "{raw:?} -> {url}");
                assert_eq!(url.host(), checked.host());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let guard = EndpointGuard::default();
    check(&guard, text);
    // The same text after a scheme, so that most inputs reach the checks.
    if !text.contains("://") {
        check(&guard, &format!("https://{text}"));
    }
});
