//! Reads and writes of the harness's NetBox from tests, as a person or a script would make
//! them (the objects the operator is meant to find).

use serde_json::Value;

use super::harness::{HarnessEnv, checking_http_client};

/// NetBox's REST API with the harness's token.
pub struct NetBoxRest {
    /// A client that opens a fresh connection per request.
    pub http: reqwest::Client,
    /// NetBox's base URL.
    pub url: String,
    /// The token.
    pub token: String,
}

impl NetBoxRest {
    /// The harness's NetBox.
    pub fn new(env: &HarnessEnv) -> Self {
        Self {
            http: checking_http_client(),
            url: env.netbox_url.clone(),
            token: env.netbox_token.clone(),
        }
    }

    /// GET `/api/<path>`.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/api/{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Every result of `/api/<path>` (one page of up to 1000).
    pub async fn list(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.get(&format!("{path}{sep}limit=1000")).await["results"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The one result of `/api/<path>`.
    pub async fn one(&self, path: &str) -> Value {
        let all = self.list(path).await;
        assert_eq!(all.len(), 1, "{path}: {all:?}");
        all[0].clone()
    }

    /// A write (`POST`, `PATCH`, `DELETE`) of `body` to `/api/<path>`, which must succeed.
    pub async fn write(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method.clone(), format!("{}/api/{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates one object at `/api/<path>/`; its id.
    pub async fn create(&self, path: &str, body: Value) -> u64 {
        self.write(reqwest::Method::POST, &format!("{path}/"), body)
            .await["id"]
            .as_u64()
            .unwrap()
    }

    /// Changes object `id` of `/api/<path>/`.
    pub async fn patch(&self, path: &str, id: u64, body: Value) -> Value {
        self.write(reqwest::Method::PATCH, &format!("{path}/{id}/"), body)
            .await
    }

    /// The number of change-log entries (every write NetBox recorded).
    pub async fn change_count(&self) -> u64 {
        self.get("core/object-changes/?limit=1").await["count"]
            .as_u64()
            .unwrap()
    }
}
