//! A read-only view of the v2 swarms for the dashboard: each blob and how far each member got.

use super::Swarms;
use crate::peers::{PeerKey, PoolKey};

/// One member of a blob, as the dashboard shows it.
pub(crate) struct MemberView {
    pub key: PeerKey,
    pub pool: PoolKey,
    /// Pieces held, from its last join (all of them when `done`).
    pub held: u32,
    pub done: bool,
}

/// One blob taken part in through v2.
pub(crate) struct BlobView<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub pieces: u32,
    pub members: Vec<MemberView>,
}

impl Swarms {
    /// Every blob with its members; the caller decides which count as transfers in progress.
    pub fn view(&self) -> Vec<BlobView<'_>> {
        self.blobs
            .iter()
            .map(|(digest, b)| BlobView {
                digest,
                size: b.size,
                pieces: b.pieces,
                members: b
                    .members
                    .iter()
                    .map(|(&key, m)| MemberView {
                        key,
                        pool: m.pool,
                        held: if m.done {
                            b.pieces
                        } else {
                            m.held.min(b.pieces)
                        },
                        done: m.done,
                    })
                    .collect(),
            })
            .collect()
    }
}
