//! The pool mirror: an OCI distribution pull-through cache that fetches each blob from
//! upstream once per node pool and serves it, and ranges of it, while it is still arriving.
//! Cached content is served only to requesters that upstream accepts for the repository.

mod blobs;
pub mod body;
pub mod error;
pub mod ingest;
pub mod manifests;
pub mod metrics;
pub mod pieces;
pub mod reference;
mod server;
pub mod store;
pub mod upstream;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use server::{access_key, preflight, MirrorServer};
