//! The mirror's one error type, and the one place it becomes HTTP: OCI error JSON.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use storage::OciReply;

pub use storage::UpstreamReply;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, cache trouble, a refusal relayed from upstream or a transfer that broke:
    /// what the agent, serving from the same store, answers alike.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("registry `{0}` is not served by this mirror")]
    RegistryUnknown(String),
    #[error("upstream {url} unreachable: {message}")]
    UpstreamUnreachable { url: String, message: String },
    #[error("upstream sent {what} with digest {actual}, expected {expected}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("upstream sent {got} bytes, expected {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    /// `upstreamCAFile` cannot be used: unreadable, no certificate in it, or bad PEM/DER.
    #[error("upstreamCAFile {path}: {message}")]
    UpstreamCa { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.into())
    }
}

impl Error {
    /// A transfer that broke: upstream's body, a task, a redirect.
    pub fn transfer(message: impl Into<String>) -> Self {
        Error::Storage(storage::Error::Transfer(message.into()))
    }

    /// Upstream's own refusal, relayed to the client.
    pub fn upstream(reply: UpstreamReply) -> Self {
        Error::Storage(storage::Error::Upstream(reply))
    }

    /// A request this read-only mirror does not serve.
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Storage(storage::Error::Unsupported(what.into()))
    }

    fn reply(&self) -> OciReply {
        let code = match self {
            Error::Storage(e) => return e.reply(),
            Error::RegistryUnknown(_) => "NAME_UNKNOWN",
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => "DIGEST_INVALID",
            Error::UpstreamUnreachable { .. } | Error::UpstreamCa { .. } => "UNKNOWN",
        };
        OciReply::new(self.status_code().as_u16(), code, &self.to_string())
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Storage(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Error::RegistryUnknown(_) => StatusCode::NOT_FOUND,
            Error::UpstreamUnreachable { .. }
            | Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamCa { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let reply = self.reply();
        serve::json_error(reply.status, reply.headers, reply.body)
    }
}
