//! The webhook's one error type, and the one place it becomes HTTP. Only a request that is not
//! an AdmissionReview at all gets an error status; anything that goes wrong while mutating a pod
//! is answered `allowed: true` without a patch, never as an error (pods must not be blocked).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an AdmissionReview: {0}")]
    BadReview(String),
    #[error("Kubernetes API: {action} Secret {namespace}/{name}: {message}")]
    Kube {
        action: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("Kubernetes API client: {0}")]
    KubeClient(String),
    #[error("Secret {namespace}/{name} already exists")]
    AlreadyExists { namespace: String, name: String },
    #[error("Kubernetes API calls took longer than {0:?}")]
    ApiTimeout(std::time::Duration),
    #[error("TLS: {0}")]
    Tls(String),
    /// `clientCAFile` is set and the connection carried no certificate it signed.
    #[error(
        "a review must come from the API server (a client certificate signed by clientCAFile)"
    )]
    NotFromApiServer,
    #[error("bad configuration: {0}")]
    Config(#[from] nodepool::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::BadReview(_) => StatusCode::BAD_REQUEST,
            Error::NotFromApiServer => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "message": self.to_string() }))
    }
}
