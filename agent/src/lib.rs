//! The node agent: a registry for the node's containerd that gets blob pieces from peers of its
//! pool (as the scheduler directs) and from the pool mirror for the rest, verifies every piece
//! against digests the mirror publishes, streams blobs to containerd in order as pieces land,
//! and serves the pieces it holds to peers that carry the pool secret.

mod error;
pub mod metrics;
mod peer;
mod registry;
mod state;
mod task;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use state::AgentServer;
