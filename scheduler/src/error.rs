//! The scheduler's one error type, for the server and the client alike, and the one place it
//! becomes HTTP: OCI-style error JSON `{"errors":[{"code":..,"message":..}]}`.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("invalid digest `{0}` (expected sha256:<64 lowercase hex>)")]
    DigestInvalid(String),
    #[error("request body: {0}")]
    BodyInvalid(String),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error(
        "task {digest} is known with size {known_size} and piece size {known_piece_size}, \
         not {size} and {piece_size}"
    )]
    TaskConflict {
        digest: String,
        known_size: u64,
        known_piece_size: u64,
        size: u64,
        piece_size: u64,
    },
    #[error("peer `{peer}` has not joined blob {digest}: POST /api/v2/join first")]
    NotJoined { peer: String, digest: String },
    #[error("scheduler full: {0}")]
    Capacity(&'static str),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method {0} not allowed here (use POST)")]
    MethodNotAllowed(String),
    #[error("bad configuration: {0}")]
    Config(#[from] nodepool::Error),
    #[error("scheduler URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("scheduler {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("scheduler answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("scheduler {url} sent an unreadable answer: {message}")]
    Decode { url: String, message: String },
    #[error("image `{image}`: {message}")]
    ImageRef { image: String, message: String },
    #[error("{image}: unknown tag or digest (the registry has no such manifest)")]
    ManifestUnknown { image: String },
    #[error("{url}: credentials refused ({status}); preheat warms only what its user may pull")]
    Refused { url: String, status: u16 },
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } | Error::BodyInvalid(_) | Error::ImageRef { .. } => {
                "INVALID_REQUEST"
            }
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::BodyTooLarge(_) => "SIZE_INVALID",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::TaskConflict { .. } => "TASK_CONFLICT",
            Error::NotJoined { .. } => "NOT_JOINED",
            Error::Capacity(_) => "TOOMANYREQUESTS",
            Error::NotFound(_) => "NOT_FOUND",
            Error::MethodNotAllowed(_) => "UNSUPPORTED",
            _ => "UNKNOWN",
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Invalid { .. }
            | Error::DigestInvalid(_)
            | Error::BodyInvalid(_)
            | Error::ImageRef { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::TaskConflict { .. } => StatusCode::CONFLICT,
            Error::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound(_) | Error::NotJoined { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Config(_)
            | Error::Url { .. }
            | Error::Client(_)
            | Error::Unreachable { .. }
            | Error::Status { .. }
            | Error::Decode { .. }
            | Error::ManifestUnknown { .. }
            | Error::Refused { .. }
            | Error::Fetch { .. }
            | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = serde_json::json!({
            "errors": [{ "code": self.code(), "message": self.to_string() }]
        });
        HttpResponse::build(self.status_code())
            .insert_header((CONTENT_TYPE, "application/json"))
            .body(body.to_string())
    }
}
