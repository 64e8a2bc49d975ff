//! The P2P v2 API: membership and first holders, no per-piece tracking. Agents push pieces to
//! each other over long-lived connections; the scheduler only says who takes part in a blob
//! (`join`) and which node takes each fresh piece from the mirror first (`fresh`, a long poll
//! over [`swarm::Releases`]).
//!
//! ```text
//!  agent                                   scheduler
//!    | POST /api/v2/join  (download starts, then every intervalMs: pieces held, done)
//!    |-------------------------------------->| members to connect to, goSource
//!    | POST /api/v2/fresh (leased pieces completed, wait)
//!    |-------------------------------------->| held open until a lease is granted (or 2 s)
//!    |<--------------------------------------| pieces to take from the mirror, allReleased
//! ```
//!
//! Heartbeat and leave ([`crate::api`]) keep their `/api/v1` paths: a heartbeat makes the node a
//! complete member of every blob it lists, and leave ends its membership.

pub use crate::api::PeerRef;
use crate::api::{validate_digest, TaskInfo};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Most requests held open for fresh pieces of one blob.
pub const MAX_WAITING_PER_BLOB: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub peer: PeerRef,
    pub task: TaskInfo,
    /// Pieces held, verified.
    pub held: u32,
    /// Holds the whole blob, verified.
    pub done: bool,
}

impl JoinRequest {
    /// Checks everything that does not need the registry; returns the piece count.
    pub fn validate(&self) -> Result<u32> {
        self.peer.validate()?;
        let count = self.task.validate()?;
        if self.held > count {
            return Err(Error::invalid(
                "held",
                format!("{} pieces held of {count}", self.held),
            ));
        }
        Ok(count)
    }
}

/// A node to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: String,
    pub addr: String,
    /// Holds the whole blob.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// At most `maxNeighbors` members of pools the requester can pair with; the same ones on
    /// every call while nobody comes or goes.
    pub members: Vec<MemberInfo>,
    /// Fetch the whole blob from the mirror: this pool does not use P2P.
    pub go_source: bool,
    pub reachable_pools: Vec<String>,
    /// Join again within this while downloading: membership lapses after `peerTTL`.
    pub interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreshRequest {
    pub peer: PeerRef,
    pub digest: String,
    /// Leased pieces taken from the mirror and verified since the last report.
    pub completed: Vec<u32>,
    /// Wait (up to 2 s) for a lease; false: only report `completed`.
    pub wait: bool,
}

impl FreshRequest {
    /// Checks what does not need the blob (`completed` against the piece count is checked
    /// once the blob is found: [`FreshRequest::validate_pieces`]).
    pub fn validate(&self) -> Result<()> {
        self.peer.validate()?;
        validate_digest(&self.digest)
    }

    pub fn validate_pieces(&self, count: u32) -> Result<()> {
        if self.completed.len() > count as usize {
            return Err(Error::invalid(
                "completed",
                format!("{} entries for {count} pieces", self.completed.len()),
            ));
        }
        if let Some(bad) = self.completed.iter().find(|&&i| i >= count) {
            return Err(Error::invalid(
                "completed",
                format!(
                    "piece {bad} is past the last piece ({})",
                    count.saturating_sub(1)
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreshResponse {
    /// Pieces leased to the requester: take them from the mirror, then push them to the pool.
    pub pieces: Vec<u32>,
    /// Every piece is in the pool: stop asking; the mirror may now help with any piece.
    pub all_released: bool,
    /// Every piece is in the pool or leased to a first holder, or all but what the mirror
    /// sends in about half a second (`swarm::Releases::move_on`): the requester may start its
    /// next blob. On the wire `allLeased`, its name from when it meant every piece; absent
    /// from older schedulers.
    #[serde(default, rename = "allLeased")]
    pub move_on: bool,
}

impl From<swarm::Grant> for FreshResponse {
    fn from(g: swarm::Grant) -> Self {
        FreshResponse {
            pieces: g.pieces,
            all_released: g.all_released,
            move_on: g.move_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn peer() -> PeerRef {
        PeerRef {
            id: "n1".into(),
            pool: "p".into(),
            addr: "10.0.0.1:65002".into(),
        }
    }

    #[test]
    fn wire_names_are_camel_case() {
        let join = JoinRequest {
            peer: peer(),
            task: TaskInfo {
                digest: DIGEST.into(),
                size: 10,
                piece_size: 4,
            },
            held: 0,
            done: false,
        };
        let text = serde_json::to_string(&join).unwrap_or_default();
        assert!(
            text.contains("pieceSize") && !text.contains("uploadSlots"),
            "{text}"
        );
        let resp = serde_json::to_string(&JoinResponse::default()).unwrap_or_default();
        for key in ["members", "goSource", "reachablePools", "intervalMs"] {
            assert!(resp.contains(key), "{resp}");
        }
        let fresh = serde_json::to_string(&FreshResponse::default()).unwrap_or_default();
        assert!(fresh.contains("allReleased"), "{fresh}");
        // `move_on` keeps its wire name, and an older scheduler's answer without it is false.
        let fresh = serde_json::to_value(FreshResponse {
            move_on: true,
            ..FreshResponse::default()
        })
        .unwrap_or_default();
        assert_eq!(fresh["allLeased"], serde_json::json!(true), "{fresh}");
        let older: Result<FreshResponse, _> =
            serde_json::from_str(r#"{"pieces": [1], "allReleased": false}"#);
        assert!(older.is_ok_and(|f| !f.move_on && f.pieces == vec![1]));
    }

    #[test]
    fn held_and_completed_stay_within_the_blob() {
        let mut join = JoinRequest {
            peer: peer(),
            task: TaskInfo {
                digest: DIGEST.into(),
                size: 12,
                piece_size: 4,
            },
            held: 3,
            done: true,
        };
        assert_eq!(join.validate().ok(), Some(3));
        join.held = 4;
        assert!(join.validate().is_err());
        let mut fresh = FreshRequest {
            peer: peer(),
            digest: DIGEST.into(),
            completed: vec![0, 2],
            wait: true,
        };
        assert!(fresh.validate().is_ok() && fresh.validate_pieces(3).is_ok());
        fresh.completed = vec![3];
        assert!(fresh.validate_pieces(3).is_err());
        fresh.completed = vec![0; 4];
        assert!(fresh.validate_pieces(3).is_err());
        fresh.digest = "sha256:nope".into();
        assert!(fresh.validate().is_err());
    }
}
