//! The RPC-style OpenAPI call (`POST /?Action-params`), signed ACS3-HMAC-SHA256 as the official
//! SDKs sign it by default, with `x-acs-security-token` for temporary credentials.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::http;
use crate::sign::{self, Acs3Request};
use std::collections::BTreeMap;
use std::time::SystemTime;
use url::Url;

#[derive(Clone)]
pub struct OpenApi {
    http: reqwest::Client,
    base: Url,
    /// `host[:port]` exactly as reqwest sends it in `Host`, which is signed.
    host: String,
    version: &'static str,
}

impl OpenApi {
    /// `endpoint`: a base URL (`https://cr.cn-hangzhou.aliyuncs.com`); `version` the API's.
    pub fn new(endpoint: &str, version: &'static str) -> Result<Self> {
        let base = Url::parse(endpoint)
            .map_err(|e| Error::Setting(format!("OpenAPI endpoint `{endpoint}`: {e}")))?;
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(Error::Setting(format!(
                    "OpenAPI endpoint `{endpoint}` has no host"
                )))
            }
        };
        Ok(OpenApi {
            http: http::client()?,
            base,
            host,
            version,
        })
    }

    pub fn endpoint(&self) -> &str {
        self.base.as_str()
    }

    /// Calls `action` with `params`; `subject` names what it is about in errors, `hint` adds
    /// advice for an error `Code`.
    pub async fn call(
        &self,
        action: &'static str,
        params: &BTreeMap<String, String>,
        creds: &Credentials,
        subject: &str,
        hint: impl Fn(&str) -> String,
    ) -> Result<serde_json::Value> {
        let query = sign::canonical_query(params);
        let mut url = self.base.clone();
        url.set_path("/");
        url.set_query(Some(&query));
        let hash = sign::payload_hash(b"");
        let mut headers: BTreeMap<String, String> = [
            ("host", self.host.clone()),
            ("x-acs-action", action.to_string()),
            ("x-acs-version", self.version.to_string()),
            ("x-acs-date", sign::iso8601(SystemTime::now())),
            ("x-acs-signature-nonce", sign::nonce()),
            ("x-acs-content-sha256", hash.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(token) = &creds.security_token {
            headers.insert("x-acs-accesskey-id".into(), creds.access_key_id.clone());
            headers.insert("x-acs-security-token".into(), token.clone());
        }
        let authorization = Acs3Request {
            method: "POST",
            path: "/",
            query: params,
            headers: &headers,
            payload_hash: &hash,
        }
        .authorization(&creds.access_key_id, &creds.access_key_secret);
        let mut req = self
            .http
            .post(url.clone())
            .header("authorization", authorization);
        for (k, v) in headers.iter().filter(|(k, _)| k.as_str() != "host") {
            req = req.header(k.as_str(), v.as_str());
        }
        let shown = format!(
            "{}?Action={action}",
            self.base.as_str().trim_end_matches('/')
        );
        let (status, body) =
            http::read(action, &shown, req.send().await)
                .await
                .map_err(|e| match e {
                    // Say what the call was about: one process resolves several instances.
                    Error::Unreachable { what, url, message } => Error::Unreachable {
                        what,
                        url,
                        message: format!("{message} ({subject})"),
                    },
                    other => other,
                })?;
        http::json_answer(action, subject, &shown, status, &body, hint)
    }
}
