//! The typed client agents use to talk to the scheduler. Each request is signed v2 with the
//! key of the agent's pool (`nodepool::signed`: method, host, path, body, pool, time, nonce);
//! any failure comes back as an [`Error`] the agent answers by going to the mirror, never by
//! failing a pull.

use crate::api::{HeartbeatRequest, HeartbeatResponse, LeaveRequest};
use crate::api_v2::{FreshRequest, FreshResponse, JoinRequest, JoinResponse};
use crate::error::{Error, Result};
use crate::nodes::{NodeNote, NotedHeartbeat};
use crate::preheat::{JobView, PreheatRequest};
use crate::server::LONG_POLL;
use nodepool::{PoolSecret, AUTH_HEADER};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// How much of an error body is read to explain a refusal.
const MAX_ERROR_BODY: usize = 4096;

#[derive(Debug, Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    base: Url,
    secret: PoolSecret,
    pool: String,
    timeout: Duration,
}

impl SchedulerClient {
    /// `base_url` like `http://10.0.0.2:65003`; `key` is the key of `pool`, the pool this
    /// agent signs for (`PoolKeys::own`); `timeout` bounds each whole request.
    pub fn new(
        base_url: &str,
        secret: PoolSecret,
        pool: String,
        timeout: Duration,
    ) -> Result<Self> {
        let bad = |message: &str| Error::Url {
            url: base_url.chars().take(200).collect(),
            message: message.to_string(),
        };
        let base = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("expected http://HOST:PORT or https://HOST:PORT"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(nodepool::wire::CLIENT_POOL_IDLE)
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(SchedulerClient {
            http,
            base,
            secret,
            pool,
            timeout,
        })
    }

    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.post("/api/v1/heartbeat", req).await?.decode().await
    }

    /// A heartbeat with what this node says about itself (registry port, bytes by source);
    /// schedulers that predate the note ignore it.
    pub async fn heartbeat_noted(
        &self,
        req: &HeartbeatRequest,
        note: &NodeNote,
    ) -> Result<HeartbeatResponse> {
        let body = NotedHeartbeat { beat: req, note };
        self.post("/api/v1/heartbeat", &body).await?.decode().await
    }

    /// Creates a preheat job for this client's pool (`req.pool` must be it).
    pub async fn preheat(&self, req: &PreheatRequest) -> Result<JobView> {
        self.post("/api/v2/preheat", req).await?.decode().await
    }

    /// A preheat job's progress.
    pub async fn preheat_status(&self, id: &str) -> Result<JobView> {
        let path = format!("/api/v2/preheat/{id}");
        self.send("GET", &path, Vec::new(), self.timeout)
            .await?
            .decode()
            .await
    }

    pub async fn leave(&self, req: &LeaveRequest) -> Result<()> {
        self.post("/api/v1/leave", req).await.map(drop)
    }

    /// P2P v2: takes part in a blob; the members to connect to.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResponse> {
        self.post("/api/v2/join", req).await?.decode().await
    }

    /// P2P v2: reports completed leases and, with `wait`, waits for the next (the scheduler
    /// holds the request up to 2 s, on top of this client's timeout).
    pub async fn fresh(&self, req: &FreshRequest) -> Result<FreshResponse> {
        let timeout = if req.wait {
            self.timeout + LONG_POLL
        } else {
            self.timeout
        };
        self.post_within("/api/v2/fresh", req, timeout)
            .await?
            .decode()
            .await
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// Sends a signed POST; a non-2xx answer becomes [`Error::Status`] with the server's message.
    async fn post<T: Serialize>(&self, path: &str, body: &T) -> Result<Reply> {
        self.post_within(path, body, self.timeout).await
    }

    async fn post_within<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<Reply> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Client(e.to_string()))?;
        self.send("POST", path, body, timeout).await
    }

    /// Sends a signed request; a non-2xx answer becomes [`Error::Status`] with the server's
    /// message.
    async fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reply> {
        let url = self.url(path);
        // As hyper writes it: the port only when the URL names one.
        let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let parts = nodepool::signed::RequestParts {
            method,
            host,
            path_and_query: url.path(),
            body: &body,
        };
        let signature = nodepool::signed::sign_now(&self.secret, &parts, &self.pool);
        let mut req = if method == "GET" {
            self.http.get(url.clone())
        } else {
            self.http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        };
        req = req.timeout(timeout).header(AUTH_HEADER, signature);
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            message: nodepool::wire::error_chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Reply { url, resp });
        }
        Err(Error::Status {
            status: status.as_u16(),
            message: refusal_message(resp).await,
        })
    }
}

struct Reply {
    url: Url,
    resp: reqwest::Response,
}

impl Reply {
    async fn decode<T: DeserializeOwned>(self) -> Result<T> {
        let url = self.url;
        self.resp.json().await.map_err(|e| Error::Decode {
            url: url.to_string(),
            message: nodepool::wire::error_chain(&e),
        })
    }
}

/// The message of the server's `{"errors":[{"message":..}]}`, or the start of its body.
async fn refusal_message(resp: reqwest::Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/errors/0/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_onto_the_base_url() {
        let t = Duration::from_secs(1);
        let c = SchedulerClient::new(
            "http://127.0.0.1:65003",
            PoolSecret::default(),
            "p".into(),
            t,
        )
        .expect("client");
        assert_eq!(
            c.url("/api/v2/join").as_str(),
            "http://127.0.0.1:65003/api/v2/join"
        );
        let c = SchedulerClient::new("http://h:1/sched/", PoolSecret::default(), "p".into(), t)
            .expect("client");
        assert_eq!(
            c.url("/api/v1/leave").as_str(),
            "http://h:1/sched/api/v1/leave"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        let t = Duration::from_secs(1);
        for bad in ["", "nowhere", "ftp://h:1", "http://h:1/?x=1", "unix:/tmp/s"] {
            assert!(
                SchedulerClient::new(bad, PoolSecret::default(), "p".into(), t).is_err(),
                "{bad}"
            );
        }
    }
}
