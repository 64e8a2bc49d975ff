//! The pool mirror: an OCI distribution pull-through cache that fetches each blob from
//! upstream once per node pool and serves it, and ranges of it, while it is still arriving.
//! Cached content is served only to requesters that upstream accepts for the repository.
//!
//! The blob store, ingest, references, ranges and access grants it serves from are the
//! `storage` crate's, shared with the node agent; this crate keeps the HTTP server, the
//! upstream client and OSS transfer acceleration.

mod ahead;
mod blobs;
pub mod error;
pub mod manifests;
pub mod metrics;
pub mod pieces;
pub mod redirect;
mod server;
pub mod upstream;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use server::{DynamicUpstreams, MirrorServer};
