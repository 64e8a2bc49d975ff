//! The mirror's one error type, and the one place it becomes HTTP: OCI error JSON.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// An upstream answer that is not a success, kept so the client sees what upstream said
/// (a 401 with its challenge, a 404, a 429).
#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name `{0}`")]
    NameInvalid(String),
    #[error("invalid digest `{0}` (expected sha256:<64 lowercase hex>)")]
    DigestInvalid(String),
    #[error("invalid tag `{0}`")]
    TagInvalid(String),
    #[error("registry `{0}` is not served by this mirror")]
    RegistryUnknown(String),
    #[error("range `{range}` cannot be served")]
    RangeInvalid { range: String, size: Option<u64> },
    #[error("request headers too large ({0} bytes)")]
    HeadersTooLarge(usize),
    #[error("this mirror is read-only: {0} is not supported")]
    Unsupported(String),
    #[error("upstream {url} unreachable: {message}")]
    UpstreamUnreachable { url: String, message: String },
    #[error("upstream answered {}", .0.status)]
    Upstream(UpstreamReply),
    #[error("upstream sent {what} with digest {actual}, expected {expected}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("upstream sent {got} bytes, expected {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("manifest larger than {0} bytes")]
    ManifestTooLarge(usize),
    #[error("upstream transfer failed: {0}")]
    Transfer(String),
    /// `upstreamCAFile` cannot be used: unreadable, no certificate in it, or bad PEM/DER.
    #[error("upstreamCAFile {path}: {message}")]
    UpstreamCa { path: String, message: String },
    #[error("cache I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index: {0}")]
    Index(#[from] sled::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn code(&self) -> &'static str {
        match self {
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::TagInvalid(_) => "MANIFEST_INVALID",
            Error::RegistryUnknown(_) => "NAME_UNKNOWN",
            Error::RangeInvalid { .. } => "RANGE_INVALID",
            Error::HeadersTooLarge(_) => "SIZE_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => "DIGEST_INVALID",
            Error::ManifestTooLarge(_) => "MANIFEST_INVALID",
            Error::Upstream(r) if r.status == 401 => "UNAUTHORIZED",
            Error::Upstream(r) if r.status == 403 => "DENIED",
            Error::Upstream(r) if r.status == 429 => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::NameInvalid(_) | Error::DigestInvalid(_) | Error::TagInvalid(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::RegistryUnknown(_) => StatusCode::NOT_FOUND,
            Error::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Upstream(r) => StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
            Error::UpstreamUnreachable { .. }
            | Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::ManifestTooLarge(_)
            | Error::Transfer(_) => StatusCode::BAD_GATEWAY,
            Error::Io(_) | Error::Index(_) | Error::UpstreamCa { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Error::Upstream(reply) = self {
            if let Some(challenge) = reply
                .www_authenticate
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                resp.insert_header((WWW_AUTHENTICATE, challenge));
            }
            // Upstream's own OCI error body says the most; pass it on when it is JSON.
            if reply
                .content_type
                .as_deref()
                .is_some_and(|c| c.contains("json"))
                && !reply.body.is_empty()
            {
                return resp
                    .insert_header((CONTENT_TYPE, "application/json"))
                    .body(reply.body.clone());
            }
        }
        if let Error::RangeInvalid {
            size: Some(size), ..
        } = self
        {
            resp.insert_header(("Content-Range", format!("bytes */{size}")));
        }
        let body = serde_json::json!({
            "errors": [{ "code": self.code(), "message": self.to_string(), "detail": null }]
        });
        resp.insert_header((CONTENT_TYPE, "application/json"))
            .body(body.to_string())
    }
}
