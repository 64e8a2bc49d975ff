//! The P2P scheduler: membership (who takes part in which blob, answered with the members of
//! pools it may pair with, or "go to source" for pools served without P2P) and first holders
//! (which node takes each fresh piece from the pool mirror, about once per group of pools),
//! for agents that push pieces to each other ([`api_v2`]). No per-piece tracking. Its state is
//! soft: after a restart, agents' joins and heartbeats ([`api`]) rebuild it.
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
pub mod preheat;
pub mod registry;
mod server;
mod swarms;
mod waiters;

pub use client::SchedulerClient;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use registry::{PeerRegistry, RegistryConfig};
pub use server::{AppState, SchedulerServer};
