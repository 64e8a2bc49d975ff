//! The P2P scheduler: it knows which peer holds which pieces of which blob, and answers each
//! agent's announce with parents from pools it may pair with, the few pieces nobody it reaches
//! holds yet (to fetch from the pool mirror, about once per pool), or "go to source" for pools
//! served without P2P. Its state is soft: after a restart, agents' heartbeats rebuild it.
//!
//! P2P v2 ([`api_v2`]) shrinks that to membership (who takes part in which blob, in pools that
//! can pair) and first holders (which node takes each fresh piece from the mirror), for agents
//! that push pieces to each other; v1 stays until the agent speaks v2.
//!
//! [`PeerRegistry`] holds the state and makes the decisions without HTTP; [`SchedulerServer`]
//! serves it; [`SchedulerClient`] is what agents use.

pub mod api;
pub mod api_v2;
pub mod client;
mod dashboard;
pub mod error;
pub mod metrics;
pub mod nodes;
mod peers;
mod pieces;
pub mod preheat;
pub mod registry;
mod select;
mod server;
mod swarms;
mod task;
mod waiters;

pub use client::SchedulerClient;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use registry::{PeerRegistry, RegistryConfig};
pub use server::{AppState, SchedulerServer};
