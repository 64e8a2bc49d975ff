//! The verified, content-addressed blob store and what the pool mirror and the node agent both
//! serve from it: single-flight ingest readable while it arrives, OCI names and digests, byte
//! ranges and file streams under a rate limit, access grants, piece digests and their wire
//! type, and the checks every registry request gets first. No HTTP server lives here.

pub mod access;
pub mod ahead;
pub mod body;
pub mod error;
pub mod ingest;
pub mod pieces;
#[cfg(test)]
mod props;
pub mod reference;
pub mod request;
pub mod store;

pub use access::Access;
pub use error::{Error, OciReply, Result, UpstreamReply};
pub use reference::Digest;
pub use store::BlobStore;
