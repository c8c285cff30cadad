//! A small client of the agent's HTTP API for the CLI verbs.

use anyhow::{Context, bail};
use serde_json::Value;

/// Client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    base: String,
    http: reqwest::Client,
}

/// A failure the API reported for a request (status + message).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The `error` field of the body, or the body.
    pub message: String,
}

impl AgentClient {
    /// A client for `base` (e.g. `http://127.0.0.1:5051`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        Err(ApiError {
            status: status.as_u16(),
            message,
        }
        .into())
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        self.request_json(reqwest::Method::GET, path).await
    }

    /// POST without a body, expecting JSON back.
    pub async fn post_json(&self, path: &str) -> anyhow::Result<Value> {
        self.request_json(reqwest::Method::POST, path).await
    }

    async fn request_json(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(method, self.url(path))
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.base))?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// GET raw bytes plus the task state header of the logs endpoint.
    pub async fn get_logs(
        &self,
        task: &str,
        stream: &str,
        offset: u64,
    ) -> anyhow::Result<(Vec<u8>, Option<String>)> {
        let path = format!(
            "/api/berth/v1/tasks/{}/logs?stream={stream}&offset={offset}",
            urlencode(task)
        );
        let response = self.http.get(self.url(&path)).send().await?;
        let response = Self::check(response).await?;
        let state = response
            .headers()
            .get("X-Berth-Task-State")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok((response.bytes().await?.to_vec(), state))
    }

    /// POST a scheduler call (JSON body), returning the response.
    pub async fn scheduler_call(
        &self,
        body: Vec<u8>,
        stream_id: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(self.url("/api/v1/scheduler"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body);
        if let Some(id) = stream_id {
            request = request.header("Mesos-Stream-Id", id);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            bail!("scheduler API answered {status}: {text}");
        }
        Ok(response)
    }
}

/// Percent-encodes a path segment.
pub fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
