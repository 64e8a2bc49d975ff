//! The shared model of poolcast: node pools and which pools reach which, and the configuration
//! schema every component reads. Keys are the Helm values keys users already know from the ACK
//! add-on (`cacheTTL`, `cacheHostPath`, `ratelimit`, ...), so one YAML serves the chart and the
//! binary. It also names the `distributed` registry hosts the admission webhook writes into
//! pods and the agent maps back. This crate knows nothing of HTTP or storage.

pub mod acr_config;
mod agent_config;
mod config;
pub mod defaults;
pub mod distributed;
pub mod keys;
pub mod layout;
pub mod pools;
pub mod secret;
pub mod signed;
mod units;
mod webhook_config;
pub mod wire;

pub use acr_config::AcrConfig;
pub use agent_config::{AgentConfig, CacheConfig, CacheMode, DownloadPattern};
pub use config::{MirrorConfig, SchedulerConfig, UpstreamSpec};
pub use defaults::default_text;
pub use distributed::DistributedNames;
pub use keys::PoolKeys;
pub use layout::{
    auto_piece_size, check_piece_size, LayoutError, PieceLayout, MAX_PIECE, MIN_PIECE,
};
pub use pools::{PoolGraph, PoolSpec};
pub use secret::{unix_now, unix_secs, AuthError, PoolSecret, AUTH_HEADER, MAX_SKEW_SECS};
pub use units::{BlockSize, ByteSize, HumanDuration, Rate};
pub use webhook_config::WebhookConfig;

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
