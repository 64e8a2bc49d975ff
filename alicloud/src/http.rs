//! The HTTP side shared by every call: one client, short timeouts, bodies read with a cap, and
//! the OpenAPI error body (`Code`, `Message`, `RequestId`) turned into [`Error::Api`].

use crate::error::{Error, Result};
use std::time::Duration;

/// Largest answer read from any endpoint: real ones are a few KiB.
const MAX_BODY: usize = 1 << 20;

/// A client for the OpenAPI and STS (the metadata server gets tighter timeouts per request).
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("poolcast/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Setting(format!("building the HTTP client: {e}")))
}

/// Reads an answer's status and body (at most 1 MiB).
pub async fn read(
    what: &'static str,
    url: &str,
    resp: std::result::Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Vec<u8>)> {
    let unreachable = |e: &dyn std::fmt::Display| Error::Unreachable {
        what,
        url: url.to_string(),
        message: e.to_string(),
    };
    let mut resp = resp.map_err(|e| unreachable(&nodepool::wire::error_chain(&e)))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| unreachable(&nodepool::wire::error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(unreachable(&"answer larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// An OpenAPI answer as JSON: 2xx with `IsSuccess` not false, or else [`Error::Api`] with the
/// service's `Code` and `Message` as they came.
pub fn json_answer(
    action: &'static str,
    subject: &str,
    url: &str,
    status: u16,
    body: &[u8],
    hint: impl Fn(&str) -> String,
) -> Result<serde_json::Value> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(Error::Unreachable {
                what: action,
                url: url.to_string(),
                message: format!(
                    "HTTP {status}, not JSON ({e}): {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            })
        }
    };
    let field = |name: &str| {
        value
            .get(name)
            .or_else(|| value.get(name.to_ascii_lowercase()))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let refused = value.get("IsSuccess").and_then(|v| v.as_bool()) == Some(false);
    if (200..300).contains(&status) && !refused {
        return Ok(value);
    }
    let code = field("Code");
    let request_id = field("RequestId");
    Err(Error::Api(Box::new(crate::error::ApiError {
        action,
        subject: subject.to_string(),
        status,
        hint: hint(&code),
        code: if code.is_empty() {
            "(no Code)".into()
        } else {
            code
        },
        message: field("Message"),
        request_id: if request_id.is_empty() {
            String::new()
        } else {
            format!(", RequestId {request_id}")
        },
    })))
}
