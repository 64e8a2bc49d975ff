//! What can go wrong talking to Alibaba Cloud. Messages carry the service's own `Code` and
//! `Message` verbatim, the instance or role they were about, and never a secret.

/// The two ACR actions poolcast calls: what a RAM identity must be granted.
pub const ACTIONS: &str = "cr:GetInstanceVpcEndpoint and cr:ListInstanceEndpoint";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer at the HTTP level: refused, timed out, not HTTP, a body that is not JSON.
    #[error("{what} {url}: {message}")]
    Unreachable {
        what: &'static str,
        url: String,
        message: String,
    },
    /// The service refused the call; `code` and `message` are its own.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// An answer that parsed but lacks what the call is for.
    #[error("{what}: {message}")]
    BadAnswer { what: String, message: String },
    /// No source of credentials gave any; one reason per source tried.
    #[error("no Alibaba Cloud credentials: {0}")]
    NoCredentials(String),
    /// A setting poolcast needs but cannot find or use (the region, a token file, ...).
    #[error("{0}")]
    Setting(String),
    /// The instance answered, but with no domain poolcast can use from here.
    #[error("instance {instance}: {message}")]
    NoDomain { instance: String, message: String },
}

/// A refusal by the OpenAPI or STS, as it came.
#[derive(Debug, thiserror::Error)]
#[error("{action} ({subject}): {code}: {message} [HTTP {status}{request_id}]{hint}")]
pub struct ApiError {
    pub action: &'static str,
    pub subject: String,
    pub status: u16,
    pub code: String,
    pub message: String,
    /// `, RequestId ...` or empty.
    pub request_id: String,
    /// Advice for this code (what to grant, what to check), or empty.
    pub hint: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the service said the caller lacks a permission (RAM), as opposed to a bad
    /// request, a missing instance or an outage.
    pub fn is_permission(&self) -> bool {
        matches!(self, Error::Api(e) if is_permission_code(&e.code))
    }
}

/// `Forbidden.RAM`, `Forbidden.NoPermission`, `NoPermission`, `AccessDenied`, ...
pub fn is_permission_code(code: &str) -> bool {
    let c = code.to_ascii_lowercase();
    c.starts_with("forbidden") || c.contains("nopermission") || c.starts_with("accessdenied")
}
