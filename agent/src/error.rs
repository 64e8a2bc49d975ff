//! The agent's errors, and the one place they become HTTP for containerd and peers.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, cache trouble, or an answer relayed from the mirror: the mirror's own
    /// error type already speaks OCI.
    #[error(transparent)]
    Registry(#[from] mirror::Error),
    #[error("mirror {url} unreachable: {message}")]
    MirrorUnreachable { url: String, message: String },
    #[error("piece {index} of {digest}: {message}")]
    Piece {
        digest: String,
        index: u32,
        message: String,
    },
    /// The request got no answer at all (refused, reset, or a pooled connection the other end
    /// had closed): the parent is paused, and given up only after several in a row
    /// (`NO_ANSWER_LIMIT` in task.rs).
    #[error("piece {index} of {digest}: no answer: {message}")]
    NoAnswer {
        digest: String,
        index: u32,
        message: String,
    },
    #[error("peer request refused: {0}")]
    PeerDenied(String),
    #[error("{0} not held here")]
    NotHeld(String),
    #[error("download of {digest} failed: {message}")]
    Download { digest: String, message: String },
    /// Every upload slot is taken: ask another holder, or again shortly.
    #[error("busy: {0}")]
    Busy(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Registry(e) => e.status_code(),
            Error::PeerDenied(_) => StatusCode::UNAUTHORIZED,
            Error::NotHeld(_) => StatusCode::NOT_FOUND,
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Error::Registry(e) = self {
            return e.error_response();
        }
        let code = match self {
            Error::PeerDenied(_) => "DENIED",
            Error::NotHeld(_) => "BLOB_UNKNOWN",
            Error::Busy(_) => "UNAVAILABLE",
            _ => "UNKNOWN",
        };
        let body = serde_json::json!({ "errors": [{ "code": code, "message": self.to_string() }] });
        let mut resp = HttpResponse::build(self.status_code());
        if let Error::Busy(_) = self {
            resp.insert_header(("Retry-After", "1"));
        }
        resp.content_type("application/json").body(body.to_string())
    }
}
