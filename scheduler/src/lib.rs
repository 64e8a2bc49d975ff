//! The P2P scheduler: it knows which peer holds which pieces of which blob, and answers each
//! agent's announce with parents from pools it may pair with, the few pieces nobody it reaches
//! holds yet (to fetch from the pool mirror, about once per pool), or "go to source" for pools
//! served without P2P. Its state is soft: after a restart, agents' heartbeats rebuild it.
//!
//! [`PeerRegistry`] holds the state and makes the decisions without HTTP; [`SchedulerServer`]
//! serves it; [`SchedulerClient`] is what agents use.

pub mod api;
pub mod client;
pub mod error;
pub mod metrics;
mod peers;
mod pieces;
pub mod registry;
mod select;
mod server;
mod task;

pub use client::SchedulerClient;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use registry::{PeerRegistry, RegistryConfig};
pub use server::{AppState, SchedulerServer};
