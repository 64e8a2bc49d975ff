//! The live peers: a slot table indexed by small keys (what swarms and decisions store), a map
//! from node name to key, and a queue that finds silent peers without scanning them all.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Index of a live peer in the registry's table.
pub(crate) type PeerKey = u32;
/// Index of a pool in the registry's table.
pub(crate) type PoolKey = u32;

#[derive(Debug)]
pub(crate) struct Peer {
    pub id: String,
    pub pool: PoolKey,
    pub addr: String,
    pub last_seen: Instant,
    /// Distinguishes this peer from an earlier one that had the same key.
    generation: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Peers {
    slots: Vec<Option<Peer>>,
    free: Vec<PeerKey>,
    by_id: HashMap<String, PeerKey>,
    /// (last seen when queued, key, generation), earliest first. Each live peer has exactly
    /// one entry; a popped entry whose peer was heard from since is queued again.
    expiry: BinaryHeap<Reverse<(Instant, PeerKey, u64)>>,
    next_generation: u64,
}

impl Peers {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every live peer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (PeerKey, &Peer)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, p)| p.as_ref().map(|p| (k as PeerKey, p)))
    }

    pub fn key_of(&self, id: &str) -> Option<PeerKey> {
        self.by_id.get(id).copied()
    }

    pub fn get(&self, key: PeerKey) -> Option<&Peer> {
        self.slots.get(key as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        self.slots.get_mut(key as usize).and_then(Option::as_mut)
    }

    /// A number that names this peer and no earlier or later one with the same key.
    pub fn generation(&self, key: PeerKey) -> Option<u64> {
        self.get(key).map(|p| p.generation)
    }

    /// Adds a peer not yet known by id.
    pub fn insert(&mut self, id: &str, addr: &str, pool: PoolKey, now: Instant) -> PeerKey {
        self.next_generation += 1;
        let peer = Peer {
            id: id.to_string(),
            pool,
            addr: addr.to_string(),
            last_seen: now,
            generation: self.next_generation,
        };
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key as usize] = Some(peer);
                key
            }
            None => {
                // The registry caps peers far below u32::MAX.
                let key = self.slots.len() as PeerKey;
                self.slots.push(Some(peer));
                key
            }
        };
        self.by_id.insert(id.to_string(), key);
        self.expiry.push(Reverse((now, key, self.next_generation)));
        key
    }

    pub fn remove(&mut self, key: PeerKey) -> Option<Peer> {
        let peer = self.slots.get_mut(key as usize)?.take()?;
        self.by_id.remove(&peer.id);
        self.free.push(key);
        Some(peer)
    }

    /// Peers not heard from for `ttl` at `now`. Costs nothing when none is due.
    pub fn silent(&mut self, now: Instant, ttl: Duration) -> Vec<PeerKey> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, key, generation))) = self.expiry.peek() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.expiry.pop();
            let Some(peer) = self.get(key).filter(|p| p.generation == generation) else {
                continue;
            };
            if now.saturating_duration_since(peer.last_seen) >= ttl {
                out.push(key);
            } else {
                let last_seen = peer.last_seen;
                self.expiry.push(Reverse((last_seen, key, generation)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_peers_silent_for_the_ttl_are_due() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut peers = Peers::default();
        let a = peers.insert("a", "h:1", 0, t0);
        let b = peers.insert("b", "h:1", 0, t0);
        assert!(peers.silent(t0 + Duration::from_secs(29), ttl).is_empty());
        if let Some(p) = peers.get_mut(b) {
            p.last_seen = t0 + Duration::from_secs(20);
        }
        assert_eq!(peers.silent(t0 + Duration::from_secs(30), ttl), vec![a]);
        peers.remove(a);
        assert!(peers.silent(t0 + Duration::from_secs(49), ttl).is_empty());
        assert_eq!(peers.silent(t0 + Duration::from_secs(50), ttl), vec![b]);
    }

    #[test]
    fn a_reused_key_does_not_inherit_the_old_expiry() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut peers = Peers::default();
        let a = peers.insert("a", "h:1", 0, t0);
        peers.remove(a);
        let b = peers.insert("b", "h:1", 0, t0 + Duration::from_secs(5));
        assert_eq!(a, b, "slot reused");
        assert!(peers.silent(t0 + Duration::from_secs(12), ttl).is_empty());
        assert_eq!(peers.silent(t0 + Duration::from_secs(15), ttl), vec![b]);
        assert_eq!(peers.key_of("b"), Some(b));
        assert_eq!(peers.key_of("a"), None);
    }
}
