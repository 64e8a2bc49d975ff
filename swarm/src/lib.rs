//! poolcast's P2P decisions, with no I/O: what an agent's uplink sends next and to whom
//! ([`node`]), what it takes from the mirror, and which node of a pool takes each fresh piece
//! from the mirror first ([`release`]). Time is an argument everywhere, so the agent's runtime,
//! the scheduler, unit tests and the simulator (`edge-tests`' `simulate`) drive the same code.
//!
//! ```text
//!   mirror ──each piece once, to the node with the least upload queued (Releases)──> first holder
//!   first holder ──push──> node ──push──> node ...   every holder pushes its rarest piece to the
//!                                                  peer that lacks it and has the most room;
//!                                                  receivers refuse what they have or get elsewhere
//!   once every piece is in the pool, the mirror's idle uplink serves the rarest missing pieces
//! ```

pub mod node;
pub mod pieces;
pub mod release;

pub use node::{
    Action, Event, From, MirrorWhy, Mode, Node, Notice, PeerId, Refusal, TaskId, Tunables,
};
pub use pieces::PieceSet;
pub use release::{Grant, Holder, ReleaseConfig, Releases};

/// A stable, well-mixed 64-bit value for tie-breaks (the murmur3 finaliser): nodes facing the
/// same choice choose differently, and one node's choices do not come out in index order.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut h = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
