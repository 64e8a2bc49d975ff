//! The shared model of poolcast: node pools and which pools reach which, and the configuration
//! schema every component reads. Keys are the Helm values keys users already know from the ACK
//! add-on (`cacheTTL`, `cacheHostPath`, `ratelimit`, ...), so one YAML serves the chart and the
//! binary. This crate knows nothing of HTTP or storage.

mod config;
mod units;

pub use config::{MirrorConfig, UpstreamSpec};
pub use units::{ByteSize, HumanDuration, Rate};

/// What went wrong reading or validating configuration. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
