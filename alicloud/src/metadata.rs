//! The ECS metadata server (`http://100.100.100.200`): the node's region and VPC, and the
//! temporary credentials of the RAM role attached to it (the worker RAM role), in IMDSv2
//! style: a session token from `PUT /latest/api/token` goes with every read. As in the
//! official SDKs, a server that gives no token is read without one unless
//! `ALIBABA_CLOUD_IMDSV1_DISABLED=true`.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::http;
use std::time::{Duration, SystemTime};

pub const DEFAULT_ENDPOINT: &str = "http://100.100.100.200";
const TOKEN_TTL_SECONDS: &str = "21600";
const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
const CREDENTIALS_PATH: &str = "/latest/meta-data/ram/security-credentials/";

#[derive(Clone)]
pub struct Metadata {
    http: reqwest::Client,
    base: String,
    imds_v1_disabled: bool,
}

impl Metadata {
    /// `endpoint` empty: the ECS default.
    pub fn new(endpoint: &str, imds_v1_disabled: bool) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Setting(format!("building the HTTP client: {e}")))?;
        let base = if endpoint.is_empty() {
            DEFAULT_ENDPOINT
        } else {
            endpoint
        };
        Ok(Metadata {
            http,
            base: base.trim_end_matches('/').to_string(),
            imds_v1_disabled,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// An IMDSv2 session token; `None` when the server gives none and v1 reads are allowed.
    async fn token(&self) -> Result<Option<String>> {
        let url = format!("{}/latest/api/token", self.base);
        let answer = http::read(
            "ECS metadata token",
            &url,
            self.http
                .put(&url)
                .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)
                .send()
                .await,
        )
        .await;
        match answer {
            Ok((200, body)) => Ok(Some(String::from_utf8_lossy(&body).trim().to_string())),
            Ok((status, _)) if !self.imds_v1_disabled => {
                tracing::debug!(status, "no IMDSv2 token; reading metadata without one");
                Ok(None)
            }
            Ok((status, _)) => Err(Error::Unreachable {
                what: "ECS metadata token",
                url,
                message: format!("HTTP {status} (IMDSv1 is disabled)"),
            }),
            Err(e) if self.imds_v1_disabled => Err(e),
            // Unreachable: the plain read below fails the same way, with its own URL.
            Err(_) => Ok(None),
        }
    }

    /// `GET /latest/meta-data/<path>` as text.
    pub async fn get(&self, path: &str) -> Result<String> {
        let token = self.token().await?;
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(token) = &token {
            req = req.header(TOKEN_HEADER, token);
        }
        match http::read("ECS metadata", &url, req.send().await).await? {
            (200, body) => Ok(String::from_utf8_lossy(&body).trim().to_string()),
            (status, body) => Err(Error::Unreachable {
                what: "ECS metadata",
                url,
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            }),
        }
    }

    pub async fn region(&self) -> Result<String> {
        self.get("region-id").await
    }

    pub async fn vpc_id(&self) -> Result<String> {
        self.get("vpc-id").await
    }

    /// The temporary credentials of RAM role `role`, or of the role attached to the instance
    /// (the first the server lists) when `role` is empty.
    pub async fn role_credentials(&self, role: &str) -> Result<Credentials> {
        let role = if role.is_empty() {
            let listed = self.get("ram/security-credentials/").await?;
            let first = listed.lines().map(str::trim).find(|l| !l.is_empty());
            match first {
                Some(r) => r.to_string(),
                None => {
                    return Err(Error::BadAnswer {
                        what: format!("ECS metadata {}{CREDENTIALS_PATH}", self.base),
                        message: "no RAM role is attached to this instance (the worker RAM role)"
                            .into(),
                    })
                }
            }
        } else {
            role.to_string()
        };
        let text = self
            .get(&format!("ram/security-credentials/{role}"))
            .await?;
        let what = || format!("ECS metadata credentials of RAM role {role}");
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadAnswer {
            what: what(),
            message: format!("not JSON: {e}"),
        })?;
        if v.get("Code").and_then(|c| c.as_str()) != Some("Success") {
            return Err(Error::BadAnswer {
                what: what(),
                message: format!(
                    "Code is {} (expected Success)",
                    v.get("Code").map_or("missing".into(), |c| c.to_string())
                ),
            });
        }
        Credentials::from_sts_json(&v, SystemTime::now()).map_err(|message| Error::BadAnswer {
            what: what(),
            message,
        })
    }
}
