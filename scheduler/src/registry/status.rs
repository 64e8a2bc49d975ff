//! A read-only view of the registry for the dashboard: live peers and the blobs being spread
//! (the swarms), with how far each node got. Bounded, so a large pool costs
//! the dashboard a few hundred rows, not the whole state.

use super::PeerRegistry;
use crate::peers::{PeerKey, PoolKey};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Most transfers in one view, and most nodes listed per transfer.
pub const MAX_TRANSFERS: usize = 200;
pub const MAX_NODES_PER_TRANSFER: usize = 100;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub id: String,
    pub pool: String,
    /// `host:port` of its peer port.
    pub addr: String,
    /// Milliseconds since it was last heard from.
    pub seen_ago_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgress {
    pub id: String,
    pub pool: String,
    pub held: u32,
    pub done: bool,
}

/// A blob some node is still downloading.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferView {
    pub digest: String,
    pub size: u64,
    pub pieces: u32,
    /// Nodes taking part (holders first), at most [`MAX_NODES_PER_TRANSFER`].
    pub nodes: Vec<NodeProgress>,
    /// Nodes taking part, listed or not.
    pub node_count: usize,
}

impl PeerRegistry {
    /// Live peers, by pool then name.
    pub fn peer_views(&self, now: Instant) -> Vec<PeerView> {
        let names = self.pool_names();
        let mut out: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(_, p)| PeerView {
                id: p.id.clone(),
                pool: name_of(&names, p.pool),
                addr: p.addr.clone(),
                seen_ago_ms: now.saturating_duration_since(p.last_seen).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| (&a.pool, &a.id).cmp(&(&b.pool, &b.id)));
        out
    }

    /// Blobs at least one live node is still downloading, largest first.
    pub fn transfer_views(&self) -> Vec<TransferView> {
        let names = self.pool_names();
        let node = |key: PeerKey, pool: PoolKey, held: u32, done: bool| {
            self.peers.get(key).map(|p| NodeProgress {
                id: p.id.clone(),
                pool: name_of(&names, pool),
                held,
                done,
            })
        };
        let mut out = Vec::new();
        for b in self.swarms.view() {
            if b.members.iter().all(|m| m.done) {
                continue;
            }
            let nodes = b
                .members
                .iter()
                .filter_map(|m| node(m.key, m.pool, m.held, m.done))
                .collect();
            out.push(transfer(b.digest, b.size, b.pieces, nodes));
        }
        out.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.digest.cmp(&b.digest)));
        out.truncate(MAX_TRANSFERS);
        out
    }

    fn pool_names(&self) -> HashMap<PoolKey, &str> {
        self.pools
            .keys
            .iter()
            .map(|(name, &key)| (key, name.as_str()))
            .collect()
    }
}

fn name_of(names: &HashMap<PoolKey, &str>, key: PoolKey) -> String {
    names.get(&key).copied().unwrap_or("?").to_string()
}

fn transfer(digest: &str, size: u64, pieces: u32, mut nodes: Vec<NodeProgress>) -> TransferView {
    let node_count = nodes.len();
    nodes.sort_by(|a, b| b.held.cmp(&a.held).then_with(|| a.id.cmp(&b.id)));
    nodes.truncate(MAX_NODES_PER_TRANSFER);
    TransferView {
        digest: digest.to_string(),
        size,
        pieces,
        nodes,
        node_count,
    }
}
