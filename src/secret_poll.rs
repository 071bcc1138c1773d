//! Notices changes of referenced Secrets without `list` or `watch` on Secrets.
//!
//! The operator's RBAC grants only `get` on Secrets (and only in the namespaces it may
//! use), so it cannot watch them. Instead, every poll period, it reads the metadata of
//! each Secret that a resource references (`get` of `PartialObjectMetadata`, never the
//! data) and reports those whose `resourceVersion` changed, appeared or disappeared since
//! the previous poll. A failed read reports nothing: an unknown version is not a change.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// Default time between two polls.
pub const DEFAULT_SECRET_POLL_INTERVAL: Duration = Duration::from_secs(20);

/// Longest wait for one metadata read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A Secret, by namespace and name.
pub type SecretKey = (String, String);

/// What a poll saw of one Secret: its resourceVersion, or `None` when it does not exist.
type Seen = Option<String>;

/// Compares one poll with the previous one: the Secrets whose version is known in both
/// and differs. Secrets seen for the first time are not changes (the reconcile that made
/// them referenced has read them already); a failed read (absent from `now`) keeps its
/// previous version.
fn changed(
    previous: &mut HashMap<SecretKey, Seen>,
    now: HashMap<SecretKey, Seen>,
) -> Vec<SecretKey> {
    let mut out = Vec::new();
    for (key, version) in now {
        match previous.insert(key.clone(), version.clone()) {
            Some(old) if old != version => out.push(key),
            _ => {}
        }
    }
    out
}

/// A stream of Secrets that changed, polled every `every`. `referenced` gives the Secrets
/// to look at on each poll; Secrets no longer referenced are forgotten.
pub fn changed_secrets(
    client: Client,
    every: Duration,
    referenced: impl Fn() -> HashSet<SecretKey> + Send + 'static,
) -> impl Stream<Item = SecretKey> + Send {
    let state = (client, HashMap::<SecretKey, Seen>::new(), referenced);
    let batches = futures::stream::unfold(
        state,
        move |(client, mut previous, referenced)| async move {
            tokio::time::sleep(every).await;
            let wanted = referenced();
            previous.retain(|k, _| wanted.contains(k));
            let mut now = HashMap::new();
            for key in wanted {
                if let Some(seen) = read_version(&client, &key).await {
                    now.insert(key, seen);
                }
            }
            let out = changed(&mut previous, now);
            if !out.is_empty() {
                tracing::debug!(count = out.len(), "referenced Secrets changed");
            }
            Some((out, (client, previous, referenced)))
        },
    );
    futures::StreamExt::flat_map(batches, futures::stream::iter)
}

/// The resourceVersion of one Secret (`Some(None)`: it does not exist), or `None` when
/// the read failed or timed out.
async fn read_version(client: &Client, (namespace, name): &SecretKey) -> Option<Seen> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(READ_TIMEOUT, api.get_metadata_opt(name)).await {
        Ok(Ok(found)) => Some(found.map(|m| m.metadata.resource_version.unwrap_or_default())),
        Ok(Err(e)) => {
            tracing::debug!(namespace = %namespace, secret = %name, error = %e, "Secret metadata read failed");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        ("ns".into(), name.into())
    }

    #[test]
    fn only_known_versions_that_differ_are_changes() {
        let mut previous = HashMap::new();
        // First sight: no change.
        let first = HashMap::from([(key("a"), Some("1".to_string())), (key("b"), None)]);
        assert!(changed(&mut previous, first).is_empty());
        // a rotated, b created.
        let second = HashMap::from([
            (key("a"), Some("2".to_string())),
            (key("b"), Some("7".into())),
        ]);
        let mut out = changed(&mut previous, second);
        out.sort();
        assert_eq!(out, vec![key("a"), key("b")]);
        // A failed read of a (absent) is not a change; b deleted is.
        let third = HashMap::from([(key("b"), None)]);
        assert_eq!(changed(&mut previous, third), vec![key("b")]);
        assert_eq!(
            previous[&key("a")],
            Some("2".into()),
            "a keeps its last known version"
        );
        // Nothing moved: nothing reported.
        let same = HashMap::from([(key("a"), Some("2".to_string())), (key("b"), None)]);
        assert!(changed(&mut previous, same).is_empty());
    }
}
