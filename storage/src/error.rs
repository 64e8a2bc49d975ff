//! What can go wrong reading a request, the store or a blob's source, and how a registry says
//! so: a status, OCI error JSON (`{"errors":[{"code":...,"message":...}]}`) and, for a refusal
//! relayed from upstream, its challenge. The mirror and the agent turn an [`OciReply`] into
//! their HTTP response, so both answer the same failure the same way.

use bytes::Bytes;

/// An upstream answer that is not a success, kept so the client sees what upstream said
/// (a 401 with its challenge, a 404, a 429).
#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name `{0}`")]
    NameInvalid(String),
    #[error("invalid digest `{0}` (expected sha256:<64 lowercase hex>)")]
    DigestInvalid(String),
    #[error("invalid tag `{0}`")]
    TagInvalid(String),
    #[error("range `{range}` cannot be served")]
    RangeInvalid { range: String, size: Option<u64> },
    #[error("request headers too large ({0} bytes)")]
    HeadersTooLarge(usize),
    #[error("this mirror is read-only: {0} is not supported")]
    Unsupported(String),
    #[error("upstream answered {}", .0.status)]
    Upstream(UpstreamReply),
    #[error("manifest larger than {0} bytes")]
    ManifestTooLarge(usize),
    #[error("upstream transfer failed: {0}")]
    Transfer(String),
    /// Every response buffer is taken (`sendBuffers`) and none came free in time.
    #[error("every response buffer of this server is taken; retry shortly")]
    Busy,
    /// A blob that would not fit the cache's `capacity` even with everything else evicted.
    #[error("a blob of {size} bytes does not fit the cache capacity of {capacity} bytes")]
    TooLarge { size: u64, capacity: u64 },
    #[error("cache I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index: {0}")]
    Index(#[from] sled::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error as a registry answers it. The body is JSON.
#[derive(Debug, Clone)]
pub struct OciReply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl OciReply {
    /// `{"errors":[{"code":CODE,"message":MESSAGE,"detail":null}]}` with `status`.
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": null }]
        });
        OciReply {
            status,
            headers: Vec::new(),
            body: body.to_string().into(),
        }
    }
}

impl Error {
    /// The OCI error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::TagInvalid(_) => "MANIFEST_INVALID",
            Error::RangeInvalid { .. } => "RANGE_INVALID",
            Error::HeadersTooLarge(_) => "SIZE_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::ManifestTooLarge(_) => "MANIFEST_INVALID",
            Error::Upstream(r) if r.status == 401 => "UNAUTHORIZED",
            Error::Upstream(r) if r.status == 403 => "DENIED",
            Error::Upstream(r) if r.status == 429 => "TOOMANYREQUESTS",
            Error::Busy => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        }
    }

    /// The HTTP status clients see.
    pub fn status(&self) -> u16 {
        match self {
            Error::NameInvalid(_) | Error::DigestInvalid(_) | Error::TagInvalid(_) => 400,
            Error::RangeInvalid { .. } => 416,
            Error::HeadersTooLarge(_) => 431,
            Error::Unsupported(_) => 405,
            Error::Upstream(r) if (100..1000).contains(&r.status) => r.status,
            Error::Upstream(_)
            | Error::ManifestTooLarge(_)
            | Error::Transfer(_)
            | Error::TooLarge { .. } => 502,
            Error::Io(_) | Error::Index(_) => 500,
            Error::Busy => 503,
        }
    }

    /// The whole answer: upstream's own JSON error body and challenge for a relayed refusal,
    /// `Content-Range: bytes */SIZE` for a range past the end, OCI error JSON otherwise.
    pub fn reply(&self) -> OciReply {
        if let Error::Upstream(reply) = self {
            let mut headers = Vec::new();
            if let Some(challenge) = &reply.www_authenticate {
                headers.push(("WWW-Authenticate", challenge.clone()));
            }
            // Upstream's own OCI error body says the most; pass it on when it is JSON.
            let json = reply
                .content_type
                .as_deref()
                .is_some_and(|c| c.contains("json"));
            let mut out = if json && !reply.body.is_empty() {
                OciReply {
                    status: self.status(),
                    headers: Vec::new(),
                    body: reply.body.clone(),
                }
            } else {
                OciReply::new(self.status(), self.code(), &self.to_string())
            };
            out.headers = headers;
            return out;
        }
        let mut out = OciReply::new(self.status(), self.code(), &self.to_string());
        if let Error::RangeInvalid {
            size: Some(size), ..
        } = self
        {
            out.headers
                .push(("Content-Range", format!("bytes */{size}")));
        }
        if let Error::Busy = self {
            out.headers.push(("Retry-After", "1".to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, content_type: Option<&str>, body: &'static [u8]) -> Error {
        Error::Upstream(UpstreamReply {
            status,
            www_authenticate: Some("Bearer realm=\"https://auth\"".into()),
            content_type: content_type.map(str::to_string),
            body: Bytes::from_static(body),
        })
    }

    #[test]
    fn a_relayed_refusal_keeps_upstreams_status_challenge_and_json_body() {
        let reply = refusal(401, Some("application/json"), b"{\"errors\":[]}").reply();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            vec![(
                "WWW-Authenticate",
                "Bearer realm=\"https://auth\"".to_string()
            )]
        );
        assert_eq!(reply.body.as_ref(), b"{\"errors\":[]}");
        // A body that is not JSON is replaced by our own OCI error.
        let reply = refusal(403, Some("text/html"), b"<html>").reply();
        assert!(String::from_utf8_lossy(&reply.body).contains("\"DENIED\""));
        // A status no HTTP client could read becomes a bad gateway.
        assert_eq!(refusal(7, None, b"").status(), 502);
    }

    #[test]
    fn a_range_past_the_end_names_the_size() {
        let e = Error::RangeInvalid {
            range: "bytes=9-".into(),
            size: Some(5),
        };
        let reply = e.reply();
        assert_eq!(reply.status, 416);
        assert_eq!(
            reply.headers,
            vec![("Content-Range", "bytes */5".to_string())]
        );
        assert!(String::from_utf8_lossy(&reply.body).contains("RANGE_INVALID"));
    }
}
