//! The scheduler's JSON API shared by every request, for the server and the agents' client, and
//! the bounds every request is checked against before it touches the registry. The requests of
//! a download are in [`crate::api_v2`]; these two keep a node's membership whole:
//!
//! ```text
//!  agent                                   scheduler
//!    | POST /api/v1/heartbeat (complete blobs it serves)
//!    |-------------------------------------->| intervalMs, reachablePools
//!    | POST /api/v1/leave     (one blob evicted, or the whole peer going away)
//! ```

use crate::error::{Error, Result};
use nodepool::PieceLayout;
use serde::{Deserialize, Serialize};

/// Longest peer id, pool id or address accepted.
pub const MAX_NAME_LEN: usize = 256;
/// Most complete blobs one heartbeat may list.
pub const MAX_HELD: usize = 10_000;
/// Most pieces one blob may have (256 GiB at 4 MiB pieces); keeps piece maps bounded.
pub const MAX_PIECES: u64 = 1 << 16;
/// Largest request body accepted: a heartbeat listing [`MAX_HELD`] blobs (~105 bytes each)
/// fits, with room.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// A node as requests name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRef {
    /// The node name.
    pub id: String,
    /// The node pool id.
    pub pool: String,
    /// `host:port` of its peer server.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// `sha256:<64 lowercase hex>`.
    pub digest: String,
    pub size: u64,
    pub piece_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldTask {
    pub digest: String,
    pub size: u64,
    pub piece_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    pub peer: PeerRef,
    /// Complete blobs it can serve: it is a complete member of each, and of no other.
    pub held: Vec<HeldTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    pub interval_ms: u64,
    pub reachable_pools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveRequest {
    pub peer_id: String,
    pub pool: String,
    /// `None`: the peer leaves entirely.
    pub digest: Option<String>,
}

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            what,
            format!(
                "must be 1 to {MAX_NAME_LEN} bytes without control characters (got {} bytes)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// `sha256:` and 64 lowercase hex digits.
pub fn validate_digest(digest: &str) -> Result<()> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::DigestInvalid(digest.chars().take(80).collect()))
    }
}

/// How many pieces a blob of `size` bytes has at `piece_size` ([`PieceLayout`]), within
/// [`MAX_PIECES`]. A 0-byte blob has no pieces, so nothing for peers to share: refused.
pub fn piece_count(size: u64, piece_size: u64) -> Result<u32> {
    let layout =
        PieceLayout::new(size, piece_size).map_err(|e| Error::invalid("task", e.to_string()))?;
    let count = layout.count();
    if count == 0 {
        return Err(Error::invalid(
            "task",
            format!("a {size}-byte blob has no pieces to share"),
        ));
    }
    if u64::from(count) > MAX_PIECES {
        return Err(Error::invalid(
            "task",
            format!("{count} pieces is more than {MAX_PIECES}; use larger pieces"),
        ));
    }
    Ok(count)
}

/// A peer's node name, pool and `host:port`.
fn check_peer(id: &str, pool: &str, addr: &str) -> Result<()> {
    check_name("peer.id", id)?;
    check_name("peer.pool", pool)?;
    check_name("peer.addr", addr)?;
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(Error::invalid(
            "peer.addr",
            format!(
                "`{}` is not host:port",
                addr.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

impl PeerRef {
    pub fn validate(&self) -> Result<()> {
        check_peer(&self.id, &self.pool, &self.addr)
    }
}

impl TaskInfo {
    /// Checks the digest and layout; returns the piece count.
    pub fn validate(&self) -> Result<u32> {
        validate_digest(&self.digest)?;
        piece_count(self.size, self.piece_size)
    }
}

impl HeartbeatRequest {
    pub fn validate(&self) -> Result<()> {
        self.peer.validate()?;
        if self.held.len() > MAX_HELD {
            return Err(Error::invalid(
                "held",
                format!("{} entries (at most {MAX_HELD})", self.held.len()),
            ));
        }
        for held in &self.held {
            validate_digest(&held.digest)?;
            piece_count(held.size, held.piece_size)?;
        }
        Ok(())
    }
}

impl LeaveRequest {
    pub fn validate(&self) -> Result<()> {
        check_name("peerId", &self.peer_id)?;
        check_name("pool", &self.pool)?;
        if let Some(d) = &self.digest {
            validate_digest(d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn wire_names_are_camel_case() {
        let beat = serde_json::to_string(&HeartbeatRequest {
            peer: PeerRef {
                id: "n1".into(),
                pool: "p".into(),
                addr: "10.0.0.1:65002".into(),
            },
            held: vec![HeldTask {
                digest: DIGEST.into(),
                size: 10,
                piece_size: 4,
            }],
        })
        .unwrap_or_default();
        assert!(beat.contains("pieceSize"), "{beat}");
        let resp = serde_json::to_string(&HeartbeatResponse {
            interval_ms: 1,
            reachable_pools: Vec::new(),
        })
        .unwrap_or_default();
        for key in ["reachablePools", "intervalMs"] {
            assert!(resp.contains(key), "{resp}");
        }
        let leave = serde_json::to_string(&LeaveRequest {
            peer_id: "n".into(),
            pool: "p".into(),
            digest: None,
        })
        .unwrap_or_default();
        assert!(leave.contains("peerId"), "{leave}");
        // An agent of before v1's removal also sent its upload slots and load.
        let old =
            r#"{"peer":{"id":"n","pool":"p","addr":"h:1","uploadSlots":4},"held":[],"load":2}"#;
        assert!(serde_json::from_str::<HeartbeatRequest>(old).is_ok());
    }

    #[test]
    fn digests_must_be_sha256_lowercase_hex() {
        assert!(validate_digest(DIGEST).is_ok());
        assert!(validate_digest(&DIGEST.to_uppercase()).is_err());
        assert!(validate_digest("sha512:00").is_err());
        assert!(validate_digest(&DIGEST[..70]).is_err());
        assert!(validate_digest("").is_err());
    }

    #[test]
    fn piece_count_rounds_up_and_is_bounded() {
        assert_eq!(piece_count(10, 4).ok(), Some(3));
        assert_eq!(piece_count(8, 4).ok(), Some(2));
        assert_eq!(piece_count(2 << 30, 4 << 20).ok(), Some(512));
        assert!(piece_count(0, 4).is_err());
        assert!(piece_count(4, 0).is_err());
        assert!(piece_count(u64::MAX, 1).is_err());
    }

    #[test]
    fn peer_addresses_need_a_port() {
        let mut p = PeerRef {
            id: "n".into(),
            pool: "p".into(),
            addr: "[::1]:65002".into(),
        };
        assert!(p.validate().is_ok());
        for bad in ["host", ":80", "host:0", "host:99999", ""] {
            p.addr = bad.into();
            assert!(p.validate().is_err(), "{bad}");
        }
        p.addr = "h:1".into();
        p.id = "x".repeat(MAX_NAME_LEN + 1);
        assert!(p.validate().is_err());
        p.id = "a\nb".into();
        assert!(p.validate().is_err());
    }
}
