//! `PeerRegistry`: the scheduler's whole state and its decisions, with no HTTP, taking the
//! time as an argument so tests and the benchmark drive it directly.
//!
//! State is soft: peers and the blobs they take part in ([`crate::swarms`]), all rebuilt from
//! joins and heartbeats after a restart. Before every request, peers silent for `peerTTL` are
//! dropped (found through an expiry queue, not a scan), so decisions only ever see live peers.
//! The requests of a download (join, fresh) are in `v2.rs`.

use crate::api::{HeartbeatRequest, HeartbeatResponse, LeaveRequest};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::peers::{PeerKey, Peers, PoolKey};
pub use crate::swarms::Delivery;
use crate::swarms::{GroupKey, Swarms};
use nodepool::{PoolGraph, SchedulerConfig};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use v2::{Fresh, WaitKey};

/// Most peers registered at once.
pub const MAX_PEERS: usize = 100_000;
/// Most tasks (blobs) tracked at once.
pub const MAX_TASKS: usize = 100_000;
/// Most tasks one peer may take part in.
pub const MAX_TASKS_PER_PEER: usize = 20_000;
/// Most distinct pool ids seen.
pub const MAX_POOLS: usize = 10_000;

/// The settings decisions depend on.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub peer_ttl: Duration,
    /// How long a first-holder lease lasts.
    pub source_assign_timeout: Duration,
    /// Most members in one join answer.
    pub max_neighbors: usize,
}

impl From<&SchedulerConfig> for RegistryConfig {
    fn from(c: &SchedulerConfig) -> Self {
        RegistryConfig {
            peer_ttl: c.peer_ttl.0,
            source_assign_timeout: c.source_assign_timeout.0,
            max_neighbors: c.max_neighbors as usize,
        }
    }
}

/// What a pool may reach, resolved once per pool id.
#[derive(Debug)]
struct Reach {
    p2p: bool,
    /// Pairable pools, this pool first.
    keys: Vec<PoolKey>,
    /// Pairable pool ids, sorted, as answers carry them.
    names: Vec<String>,
    /// Its group of pools that can pair (leases are kept per group), and that group's
    /// pools, sorted.
    group: GroupKey,
    group_pools: Vec<PoolKey>,
}

/// Pool ids as small keys, each with what it reaches.
#[derive(Debug)]
struct PoolTable {
    graph: PoolGraph,
    keys: HashMap<String, PoolKey>,
    reach: Vec<Option<Reach>>,
    groups: HashMap<Vec<PoolKey>, GroupKey>,
}

impl PoolTable {
    fn key(&mut self, name: &str) -> Result<PoolKey> {
        if let Some(&key) = self.keys.get(name) {
            return Ok(key);
        }
        if self.reach.len() >= MAX_POOLS {
            return Err(Error::Capacity("too many pools"));
        }
        let key = self.reach.len() as PoolKey;
        self.reach.push(None);
        self.keys.insert(name.to_string(), key);
        Ok(key)
    }

    /// The key of a requester's pool, with its reach resolved.
    fn resolve(&mut self, name: &str) -> Result<PoolKey> {
        let key = self.key(name)?;
        if self.reach[key as usize].is_none() {
            let names = self.graph.reachable(name);
            let mut keys = vec![key];
            for other in names.iter().filter(|n| *n != name) {
                keys.push(self.key(other)?);
            }
            let mut group_pools = keys.clone();
            group_pools.sort_unstable();
            let next = self.groups.len() as GroupKey;
            let group = *self.groups.entry(group_pools.clone()).or_insert(next);
            self.reach[key as usize] = Some(Reach {
                p2p: self.graph.p2p_allowed(name),
                keys: if names.is_empty() { Vec::new() } else { keys },
                names,
                group,
                group_pools,
            });
        }
        Ok(key)
    }

    fn reach(&self, key: PoolKey) -> Option<&Reach> {
        self.reach.get(key as usize).and_then(Option::as_ref)
    }
}

/// Peers, the blobs they take part in and the decisions over them.
pub struct PeerRegistry {
    config: RegistryConfig,
    pools: PoolTable,
    peers: Peers,
    /// Membership and first-holder leases.
    swarms: Swarms,
    /// Grants made and not yet handed to their requests ([`PeerRegistry::take_deliveries`]).
    outbox: Vec<Delivery>,
    metrics: Arc<Metrics>,
    /// The zero of membership and lease times.
    epoch: Instant,
}

impl PeerRegistry {
    pub fn new(
        config: RegistryConfig,
        graph: PoolGraph,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Self {
        PeerRegistry {
            swarms: Swarms::new(config.peer_ttl, config.source_assign_timeout),
            config,
            pools: PoolTable {
                graph,
                keys: HashMap::new(),
                reach: Vec::new(),
                groups: HashMap::new(),
            },
            peers: Peers::default(),
            outbox: Vec::new(),
            metrics,
            epoch: now,
        }
    }

    pub fn from_config(
        config: &SchedulerConfig,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Self> {
        Ok(Self::new(config.into(), config.pool_graph()?, metrics, now))
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Blobs somebody takes part in.
    pub fn task_count(&self) -> usize {
        self.swarms.digests().count()
    }

    /// Drops peers not heard from for `peerTTL`, and their memberships. Returns how many
    /// peers went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let silent = self.peers.silent(now, self.config.peer_ttl);
        for &key in &silent {
            if let Some(peer) = self.peers.get(key) {
                tracing::info!(peer = %peer.id, "peer silent past peerTTL; dropped");
            }
            self.remove_peer(key, now);
        }
        if !silent.is_empty() {
            self.update_gauges();
        }
        silent.len()
    }

    /// The peers gauge. The tasks gauge costs a walk over the blobs, so it is set where it
    /// is read: on the sweep and on `/metrics`.
    fn update_gauges(&self) {
        self.metrics.peers.set(self.peers.len() as i64);
    }

    fn remove_peer(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.remove(key) else {
            return;
        };
        self.swarms.node_left(peer.pool);
        let freed = self.swarms.remove_peer(key, self.since(now));
        self.post(freed);
    }

    /// Registers or refreshes a peer; a peer that moved to another pool starts over.
    fn touch(&mut self, id: &str, addr: &str, pool: PoolKey, now: Instant) -> Result<PeerKey> {
        if let Some(key) = self.peers.key_of(id) {
            match self.peers.get_mut(key) {
                Some(peer) if peer.pool == pool => {
                    peer.last_seen = now;
                    if peer.addr != addr {
                        peer.addr = addr.to_string();
                    }
                    return Ok(key);
                }
                _ => self.remove_peer(key, now),
            }
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(Error::Capacity("too many peers"));
        }
        let key = self.peers.insert(id, addr, pool, now);
        self.swarms.node_came(pool);
        self.update_gauges();
        Ok(key)
    }

    /// Refreshes a peer and makes it a complete member of each blob it lists, so a restarted
    /// scheduler learns every holder within one heartbeat interval.
    ///
    /// The list is authoritative for complete blobs: a blob the peer holds whole but no longer
    /// lists (its cache evicted it, or it restarted with an empty cache) it leaves, so joiners
    /// stop being sent to a holder that has nothing. Blobs it is still downloading are joins'
    /// business: left alone.
    pub fn heartbeat(&mut self, req: &HeartbeatRequest, now: Instant) -> Result<HeartbeatResponse> {
        req.validate()?;
        self.expire(now);
        let pool = self.pools.resolve(&req.peer.pool)?;
        let key = self.touch(&req.peer.id, &req.peer.addr, pool, now)?;
        let (p2p, names) = match self.pools.reach(pool) {
            Some(r) => (r.p2p, r.names.clone()),
            None => (false, Vec::new()),
        };
        if p2p {
            let listed: HashSet<&str> = req.held.iter().map(|h| h.digest.as_str()).collect();
            for digest in self.swarms.unlisted_done(key, &listed) {
                let freed = self.swarms.leave(key, &digest, self.since(now));
                self.post(freed);
            }
            self.hold_v2(key, &req.peer.id, &req.held, now)?;
        }
        Ok(HeartbeatResponse {
            interval_ms: (self.config.peer_ttl / 3)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            reachable_pools: names,
        })
    }

    /// A peer gives up one blob (evicted, failed) or leaves entirely. Unknown peers, and a
    /// peer of another pool than the request's, are left alone.
    pub fn leave(&mut self, req: &LeaveRequest, now: Instant) -> Result<()> {
        req.validate()?;
        self.expire(now);
        let Some(key) = self.peers.key_of(&req.peer_id) else {
            return Ok(());
        };
        let same_pool = self
            .peers
            .get(key)
            .is_some_and(|p| self.pools.keys.get(&req.pool) == Some(&p.pool));
        if !same_pool {
            return Ok(());
        }
        match &req.digest {
            Some(digest) => {
                let freed = self.swarms.leave(key, digest, self.since(now));
                self.post(freed);
            }
            None => self.remove_peer(key, now),
        }
        self.update_gauges();
        Ok(())
    }
}

pub mod status;
#[cfg(test)]
pub(crate) mod tests;
mod v2;
