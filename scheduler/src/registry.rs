//! `PeerRegistry`: the scheduler's whole state and its decisions, with no HTTP, taking the
//! time as an argument so tests and the benchmark drive it directly.
//!
//! State is soft: peers, the tasks they take part in and the pieces they hold, all rebuilt
//! from announces and heartbeats after a restart. Before every request, peers silent for
//! `peerTTL` are dropped (found through an expiry queue, not a scan), so decisions only ever
//! see live peers.

use crate::api::{
    piece_count, AnnounceRequest, AnnounceResponse, HeartbeatRequest, HeartbeatResponse, HeldTask,
    LeaveRequest, PeerInfo,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::pieces::PieceSet;
use crate::select::{assign_source_pieces, choose_parents, Requester};
pub use crate::swarms::Delivery;
use crate::swarms::{GroupKey, Swarms};
use crate::task::{PeerKey, PoolKey, Task};
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
    pub source_assign_timeout: Duration,
    pub max_parents: usize,
    pub announce_interval: Duration,
    /// Most live mirror reservations per blob and pool.
    pub source_in_flight: usize,
    /// Most members in one v2 join answer.
    pub max_neighbors: usize,
}

impl RegistryConfig {
    /// How long a peer with a mirror reservation may go without announcing before the
    /// reservation lapses: four announce intervals, at least 2 s.
    pub fn quiet(&self) -> Duration {
        (self.announce_interval * 4).max(Duration::from_secs(2))
    }
}

impl From<&SchedulerConfig> for RegistryConfig {
    fn from(c: &SchedulerConfig) -> Self {
        RegistryConfig {
            peer_ttl: c.peer_ttl.0,
            source_assign_timeout: c.source_assign_timeout.0,
            max_parents: c.max_parents as usize,
            announce_interval: c.announce_interval.0,
            source_in_flight: c.source_pieces_in_flight as usize,
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
    /// Its group of pools that can pair (v2 leases are kept per group), and that group's
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

/// Peers, tasks and the decisions over them.
pub struct PeerRegistry {
    config: RegistryConfig,
    pools: PoolTable,
    peers: Peers,
    tasks: HashMap<String, Task>,
    /// P2P v2 membership and first-holder leases.
    swarms: Swarms,
    /// v2 grants made and not yet handed to their requests ([`PeerRegistry::take_deliveries`]).
    outbox: Vec<Delivery>,
    metrics: Arc<Metrics>,
    /// Start of the one-second windows in which offers to be a parent count as load, and
    /// the zero of v2's lease times.
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
            tasks: HashMap::new(),
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

    /// Blobs taken part in, through v1 or v2.
    pub fn task_count(&self) -> usize {
        let v2_only = self
            .swarms
            .digests()
            .filter(|d| !self.tasks.contains_key(*d))
            .count();
        self.tasks.len() + v2_only
    }

    /// Whether peer `id` is registered and holds at least one piece of `digest`.
    pub fn holds(&self, id: &str, digest: &str) -> bool {
        self.peers.key_of(id).is_some_and(|key| {
            self.tasks
                .get(digest)
                .and_then(|t| t.members.get(&key))
                .is_some_and(|m| m.have.count() > 0)
        })
    }

    fn interval_ms(&self) -> u64 {
        self.config
            .announce_interval
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Drops peers not heard from for `peerTTL`, and tasks left without peers. Returns how
    /// many peers went.
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

    /// The peers gauge. The tasks gauge costs a walk over v2's blobs, so it is set where it
    /// is read: on the sweep and on `/metrics`.
    fn update_gauges(&self) {
        self.metrics.peers.set(self.peers.len() as i64);
    }

    fn remove_peer(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.remove(key) else {
            return;
        };
        for digest in &peer.tasks {
            self.leave_task(key, digest);
        }
        let freed = self.swarms.remove_peer(key, self.since(now));
        self.post(freed);
    }

    fn leave_task(&mut self, key: PeerKey, digest: &str) {
        if let Some(task) = self.tasks.get_mut(digest) {
            task.remove_member(key);
            if task.is_empty() {
                self.tasks.remove(digest);
            }
        }
    }

    /// Registers or refreshes a peer; a peer that moved to another pool starts over.
    fn touch_peer(&mut self, info: &PeerInfo, pool: PoolKey, now: Instant) -> Result<PeerKey> {
        self.touch(&info.id, &info.addr, Some(info.upload_slots), pool, now)
    }

    /// [`PeerRegistry::touch_peer`] for v1 and v2 (`upload_slots`: None leaves it as it is).
    fn touch(
        &mut self,
        id: &str,
        addr: &str,
        upload_slots: Option<u32>,
        pool: PoolKey,
        now: Instant,
    ) -> Result<PeerKey> {
        if let Some(key) = self.peers.key_of(id) {
            match self.peers.get_mut(key) {
                Some(peer) if peer.pool == pool => {
                    peer.last_seen = now;
                    if let Some(slots) = upload_slots {
                        peer.upload_slots = slots;
                    }
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
        let key = self
            .peers
            .insert(id, addr, upload_slots.unwrap_or(0), pool, now);
        self.update_gauges();
        Ok(key)
    }

    /// The task for `digest`, created when new; a known task with another layout is refused.
    fn task_for(
        &mut self,
        digest: &str,
        size: u64,
        piece_size: u64,
        pieces: u32,
    ) -> Result<&mut Task> {
        if !self.tasks.contains_key(digest) {
            if self.tasks.len() >= MAX_TASKS {
                return Err(Error::Capacity("too many tasks"));
            }
            self.tasks
                .insert(digest.to_string(), Task::new(size, piece_size, pieces));
        }
        match self.tasks.get_mut(digest) {
            Some(task) if task.matches(size, piece_size) => Ok(task),
            Some(task) => Err(Error::TaskConflict {
                digest: digest.to_string(),
                known_size: task.size,
                known_piece_size: task.piece_size,
                size,
                piece_size,
            }),
            None => Err(Error::Capacity("task vanished")),
        }
    }

    /// Records that `key` takes part in `digest` (call right after `task_for`).
    fn join_task(&mut self, key: PeerKey, digest: &str) -> Result<()> {
        let Some(peer) = self.peers.get_mut(key) else {
            return Ok(());
        };
        if !peer.tasks.contains(digest) {
            if peer.tasks.len() >= MAX_TASKS_PER_PEER {
                // Do not leave behind a task this call created and nobody joined.
                if self.tasks.get(digest).is_some_and(Task::is_empty) {
                    self.tasks.remove(digest);
                }
                return Err(Error::Capacity("too many tasks for one peer"));
            }
            peer.tasks.insert(digest.to_string());
        }
        Ok(())
    }

    /// A peer downloading (or holding) a blob reports its pieces and gets parents, pieces to
    /// fetch from the mirror, or `go_source`.
    pub fn announce(&mut self, req: &AnnounceRequest, now: Instant) -> Result<AnnounceResponse> {
        let pieces = req.validate()?;
        self.expire(now);
        let pool = self.pools.resolve(&req.peer.pool)?;
        let key = self.touch_peer(&req.peer, pool, now)?;
        let (p2p, reach, names) = match self.pools.reach(pool) {
            Some(r) => (r.p2p, r.keys.clone(), r.names.clone()),
            None => (false, Vec::new(), Vec::new()),
        };
        let mut resp = AnnounceResponse {
            interval_ms: self.interval_ms(),
            reachable_pools: names,
            ..AnnounceResponse::default()
        };
        if !p2p {
            self.metrics.decisions.inc();
            self.metrics.go_source.inc();
            resp.go_source = true;
            return Ok(resp);
        }
        let t = &req.task;
        self.task_for(&t.digest, t.size, t.piece_size, pieces)?;
        self.join_task(key, &t.digest)?;
        let have = if req.done {
            PieceSet::full(pieces)
        } else {
            PieceSet::from_indices(pieces, &req.have)
        };
        let complete = have.is_full();
        let Some(task) = self.tasks.get_mut(&t.digest) else {
            return Ok(resp);
        };
        task.set_have(key, pool, have);
        self.metrics.decisions.inc();
        for parent in req.failed_parents.iter().filter(|p| **p != req.peer.id) {
            if task.block(key, parent) {
                self.metrics.parent_reports.inc();
                if let Some(p) = self
                    .peers
                    .key_of(parent)
                    .and_then(|k| self.peers.get_mut(k))
                {
                    p.reports = p.reports.saturating_add(1);
                }
            }
        }
        if complete {
            return Ok(resp);
        }
        let who = Requester {
            key,
            pool,
            reach: &reach,
        };
        let window = now.saturating_duration_since(self.epoch).as_secs();
        resp.parents = choose_parents(task, &mut self.peers, &who, self.config.max_parents, window);
        let (pieces, added) = assign_source_pieces(
            task,
            &self.peers,
            &who,
            now,
            (self.config.source_assign_timeout, self.config.quiet()),
            self.config.source_in_flight,
        );
        resp.source_pieces = pieces;
        self.metrics.source_pieces.inc_by(added as u64);
        Ok(resp)
    }

    /// Refreshes a peer and its load, and records it as a complete holder of each blob it
    /// lists, so a restarted scheduler learns every holder within one heartbeat interval.
    ///
    /// The list is authoritative for complete blobs: a task the peer holds whole but no
    /// longer lists (its cache evicted it, or it restarted with an empty cache) is dropped,
    /// so requesters stop being sent to a holder that answers 404. Tasks it holds only part
    /// of are downloads in progress, which announces (not heartbeats) describe: left alone.
    pub fn heartbeat(&mut self, req: &HeartbeatRequest, now: Instant) -> Result<HeartbeatResponse> {
        req.validate()?;
        self.expire(now);
        let pool = self.pools.resolve(&req.peer.pool)?;
        let key = self.touch_peer(&req.peer, pool, now)?;
        if let Some(peer) = self.peers.get_mut(key) {
            peer.load = req.load;
        }
        let (p2p, names) = match self.pools.reach(pool) {
            Some(r) => (r.p2p, r.names.clone()),
            None => (false, Vec::new()),
        };
        if p2p {
            self.forget_unlisted(key, &req.held, now);
            self.hold_v2(key, &req.peer.id, &req.held, now)?;
            for held in &req.held {
                let pieces = piece_count(held.size, held.piece_size)?;
                match self.task_for(&held.digest, held.size, held.piece_size, pieces) {
                    Ok(_) => {}
                    Err(e @ Error::TaskConflict { .. }) => {
                        tracing::warn!(peer = %req.peer.id, error = %e, "held blob ignored");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                self.join_task(key, &held.digest)?;
                if let Some(task) = self.tasks.get_mut(&held.digest) {
                    task.set_have(key, pool, PieceSet::full(pieces));
                }
            }
        }
        Ok(HeartbeatResponse {
            interval_ms: (self.config.peer_ttl / 3)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            reachable_pools: names,
        })
    }

    /// Drops `key` from the tasks it holds whole but `held` does not list. A download whose
    /// last pieces arrived after the agent took its list is dropped too, and is back with its
    /// next announce or heartbeat (the agent commits a blob before announcing it done).
    fn forget_unlisted(&mut self, key: PeerKey, held: &[HeldTask], now: Instant) {
        let listed: HashSet<&str> = held.iter().map(|h| h.digest.as_str()).collect();
        for digest in self.swarms.unlisted_done(key, &listed) {
            let freed = self.swarms.leave(key, &digest, self.since(now));
            self.post(freed);
        }
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let gone: Vec<String> = peer
            .tasks
            .iter()
            .filter(|d| !listed.contains(d.as_str()))
            .filter(|d| {
                self.tasks
                    .get(d.as_str())
                    .and_then(|t| t.members.get(&key))
                    .is_none_or(|m| m.have.is_full())
            })
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Some(peer) = self.peers.get(key) {
            tracing::info!(peer = %peer.id, blobs = gone.len(), "held blobs no longer listed; dropped");
        }
        for digest in &gone {
            if let Some(peer) = self.peers.get_mut(key) {
                peer.tasks.remove(digest);
            }
            self.leave_task(key, digest);
        }
        self.update_gauges();
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
                if let Some(peer) = self.peers.get_mut(key) {
                    peer.tasks.remove(digest);
                }
                self.leave_task(key, digest);
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
