//! What agents say about themselves beyond what decisions need, for preheat and the
//! dashboard: where their registry port is, how much they cache, where their bytes came
//! from, and which pool mirror they fetch from (whose `/metrics` the dashboard reads for bytes
//! from origin). It rides in the heartbeat body as extra fields ([`NodeNote`]), which schedulers that
//! predate it ignore, and agents that predate it leave out.
//!
//! The book outlives the registry's peers: a node the registry dropped for silence stays
//! listed (as down) for [`FORGET_AFTER`], so the dashboard can say which node went away.

use crate::api::{HeartbeatRequest, MAX_NAME_LEN};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A node not heard from for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most nodes remembered (as many as the registry holds peers).
pub const MAX_NODES: usize = crate::registry::MAX_PEERS;

/// The extra heartbeat fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeNote {
    /// `host:port` of the agent's registry port (containerd's, the seeds' `p2p.port`), which
    /// preheat asks for blobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Blob bytes taken from peers since the agent started.
    pub bytes_from_peers: u64,
    /// Blob bytes taken from the mirror since the agent started.
    pub bytes_from_mirror: u64,
    /// `http(s)://host[:port]` of the pool mirror the agent fetches from; the dashboard reads
    /// its `/metrics` for the bytes it fetched from origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl NodeNote {
    /// The note in a heartbeat body; a missing or malformed one reads as empty, a registry
    /// address that is not a plain `host:port` is dropped (preheat sends credentials there),
    /// and so is a mirror that is not a plain `http(s)://host[:port]` (the scheduler reads
    /// `/metrics` there); a mirror is kept in its normal form (`http://m:80/` is `http://m`).
    pub fn from_body(body: &[u8]) -> NodeNote {
        let mut note: NodeNote = serde_json::from_slice(body).unwrap_or_default();
        if let Some(addr) = &note.registry {
            if !is_host_port(addr) {
                note.registry = None;
            }
        }
        note.mirror = note.mirror.as_deref().and_then(mirror_base);
        note
    }
}

/// `http(s)://host[:port]` of a mirror URL without credentials, path, query or fragment.
fn mirror_base(text: &str) -> Option<String> {
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return None;
    }
    let url = url::Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    plain.then(|| url.origin().ascii_serialization())
}

/// A heartbeat as an agent that reports a [`NodeNote`] sends it.
#[derive(Serialize)]
pub struct NotedHeartbeat<'a> {
    #[serde(flatten)]
    pub beat: &'a HeartbeatRequest,
    #[serde(flatten)]
    pub note: &'a NodeNote,
}

fn is_host_port(addr: &str) -> bool {
    if addr.is_empty() || addr.len() > MAX_NAME_LEN {
        return false;
    }
    let Ok(url) = url::Url::parse(&format!("http://{addr}/")) else {
        return false;
    };
    let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
    matches!(port, Some(Ok(_)))
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
}

/// One node as last heard.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub pool: String,
    pub addr: String,
    pub registry: Option<String>,
    /// Bytes of the complete blobs it listed.
    pub cache_bytes: u64,
    pub blobs: usize,
    pub bytes_from_peers: u64,
    pub bytes_from_mirror: u64,
    /// The pool mirror it fetches from (`http(s)://host[:port]`).
    pub mirror: Option<String>,
    pub last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct NodeBook {
    nodes: HashMap<String, NodeRecord>,
}

impl NodeBook {
    /// Records a heartbeat the registry accepted.
    pub fn heard(&mut self, beat: &HeartbeatRequest, note: NodeNote, now: Instant) {
        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&beat.peer.id) {
            self.forget_silent(now);
            if self.nodes.len() >= MAX_NODES {
                return;
            }
        }
        let record = NodeRecord {
            pool: beat.peer.pool.clone(),
            addr: beat.peer.addr.clone(),
            registry: note.registry,
            cache_bytes: beat
                .held
                .iter()
                .map(|h| h.size)
                .fold(0, u64::saturating_add),
            blobs: beat.held.len(),
            bytes_from_peers: note.bytes_from_peers,
            bytes_from_mirror: note.bytes_from_mirror,
            mirror: note.mirror,
            last_seen: now,
        };
        self.nodes.insert(beat.peer.id.clone(), record);
    }

    pub fn forget_silent(&mut self, now: Instant) {
        self.nodes
            .retain(|_, n| now.saturating_duration_since(n.last_seen) < FORGET_AFTER);
    }

    pub fn get(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &NodeRecord)> {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HeldTask, PeerRef};

    fn beat() -> HeartbeatRequest {
        HeartbeatRequest {
            peer: PeerRef {
                id: "n1".into(),
                pool: "np-1".into(),
                addr: "10.0.0.1:65002".into(),
            },
            held: vec![HeldTask {
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 1000,
                piece_size: 4 << 20,
            }],
        }
    }

    #[test]
    fn a_noted_heartbeat_reads_as_the_plain_one_and_the_note() {
        let note = NodeNote {
            registry: Some("10.0.0.1:65001".into()),
            bytes_from_peers: 7,
            bytes_from_mirror: 9,
            mirror: Some("http://mirror-np-1.poolcast.svc:5000".into()),
        };
        let body = serde_json::to_vec(&NotedHeartbeat {
            beat: &beat(),
            note: &note,
        })
        .expect("json");
        let plain: HeartbeatRequest = serde_json::from_slice(&body).expect("plain heartbeat");
        assert_eq!(plain, beat());
        assert_eq!(NodeNote::from_body(&body), note);
        let old = serde_json::to_vec(&beat()).expect("json");
        assert_eq!(NodeNote::from_body(&old), NodeNote::default());
    }

    #[test]
    fn mirrors_other_than_plain_http_urls_are_dropped_and_kept_in_normal_form() {
        for bad in [
            "",
            "mirror:5000",
            "ftp://mirror:5000",
            "http://u:p@mirror:5000",
            "http://mirror:5000/v2",
            "http://mirror:5000/?q",
            "http://mirror:5000/#f",
            "http://:5000",
        ] {
            let body = serde_json::json!({ "mirror": bad }).to_string();
            assert_eq!(NodeNote::from_body(body.as_bytes()).mirror, None, "{bad}");
        }
        let long = format!("http://{}.example:5000", "m".repeat(MAX_NAME_LEN));
        let body = serde_json::json!({ "mirror": long }).to_string();
        assert_eq!(NodeNote::from_body(body.as_bytes()).mirror, None);
        for (given, kept) in [
            ("http://10.0.0.9:5000", "http://10.0.0.9:5000"),
            ("http://mirror.ns.svc:5000/", "http://mirror.ns.svc:5000"),
            ("HTTP://Mirror:80/", "http://mirror"),
            ("https://[::1]:8443", "https://[::1]:8443"),
        ] {
            let body = serde_json::json!({ "mirror": given }).to_string();
            assert_eq!(
                NodeNote::from_body(body.as_bytes()).mirror.as_deref(),
                Some(kept),
                "{given}"
            );
        }
    }

    #[test]
    fn registry_addresses_other_than_host_port_are_dropped() {
        for bad in [
            "",
            "10.0.0.1",
            "u:p@10.0.0.1:1",
            "10.0.0.1:1/x",
            "10.0.0.1:1?q",
            "h:99999",
        ] {
            let body = serde_json::json!({ "registry": bad }).to_string();
            assert_eq!(NodeNote::from_body(body.as_bytes()).registry, None, "{bad}");
        }
        for good in ["10.0.0.1:65001", "[::1]:65001", "node-1.local:65001"] {
            let body = serde_json::json!({ "registry": good }).to_string();
            assert_eq!(
                NodeNote::from_body(body.as_bytes()).registry.as_deref(),
                Some(good)
            );
        }
    }
}
