//! The node agent: a registry for the node's containerd that gets blob pieces pushed by peers
//! of its pool and, for the pieces the scheduler leases to it (or when P2P cannot help), from
//! the pool mirror; verifies every piece against digests the mirror publishes, streams blobs to
//! containerd in order as pieces land, and pushes what it holds to peers that hold the pool
//! secret. Its decisions are the `swarm` crate's; `p2p` carries them out.

mod download;
mod error;
pub mod metrics;
mod note;
pub mod p2p;
mod registry;
mod state;
pub mod trace;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use state::AgentServer;
