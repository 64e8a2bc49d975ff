//! The agent's errors, and the one place they become HTTP for containerd and peers.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use storage::OciReply;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, cache trouble, or a refusal relayed from the mirror: answered exactly as the
    /// mirror answers it, since both serve from the same store.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The configured `mirror` is not a URL.
    #[error("mirror URL `{url}`: {message}")]
    MirrorUrl { url: String, message: String },
    /// The HTTP client for the mirror and peers could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(String),
    /// The configured `scheduler` cannot be used.
    #[error("scheduler client: {0}")]
    SchedulerClient(#[source] scheduler::Error),
    /// The cache folder (or memory-mode folder) could not be made.
    #[error("cache folder {path}: {source}")]
    CacheDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror {url} unreachable: {message}")]
    MirrorUnreachable { url: String, message: String },
    /// The mirror's piece digests for a blob could not be had, or did not fit the blob.
    #[error("piece layout of {digest} from the mirror: {message}")]
    Layout { digest: String, message: String },
    #[error("download of {digest} failed: {message}")]
    Download { digest: String, message: String },
    /// Every piece matched, yet the whole blob did not: the mirror's piece digests were wrong.
    #[error("blob is {actual}, expected {expected}")]
    BlobMismatch { expected: String, actual: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Storage(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            Error::Storage(e) => {
                let reply = e.reply();
                return serve::json_error(reply.status, reply.headers, reply.body);
            }
            _ => "UNKNOWN",
        };
        let reply = OciReply::new(self.status_code().as_u16(), code, &self.to_string());
        serve::json_error(reply.status, reply.headers, reply.body)
    }
}
