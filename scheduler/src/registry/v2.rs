//! The P2P v2 requests on the registry: `join` and `fresh` over [`crate::swarms::Swarms`],
//! heartbeats' held blobs, and the sweep of lapsed members and leases.
//! Grants that end other requests' waits collect in the registry's outbox; the server takes
//! them after every call ([`PeerRegistry::take_deliveries`]) and hands each to its request.

use super::PeerRegistry;
use crate::api::{piece_count, HeldTask};
use crate::api_v2::{FreshRequest, JoinRequest, JoinResponse, MemberInfo};
use crate::error::{Error, Result};
use crate::peers::{PeerKey, PoolKey};
use crate::swarms::{id_hash, Ask, BlobShape, Delivery, GroupKey, GroupRef, Who};
use std::time::{Duration, Instant};
use swarm::{Grant, Holder};

/// Where a fresh request waits: one request per peer, blob and group of pools.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaitKey {
    pub digest: String,
    pub group: GroupKey,
    pub holder: Holder,
}

impl From<&Delivery> for WaitKey {
    fn from(d: &Delivery) -> Self {
        WaitKey {
            digest: d.digest.clone(),
            group: d.group,
            holder: d.holder,
        }
    }
}

/// What a fresh request gets at once.
#[derive(Debug)]
pub struct Fresh {
    /// Where it waits when `grant` is None and it asked to wait.
    pub key: WaitKey,
    pub grant: Option<Grant>,
    pub all_released: bool,
    pub move_on: bool,
    /// `move_on` is news to the requester: answer at once rather than wait.
    pub news: bool,
}

/// The longest interval between joins, so a node with few neighbours learns of newcomers
/// soon (they learn of it from their own joins at once).
const MAX_JOIN_INTERVAL: Duration = Duration::from_secs(5);

impl PeerRegistry {
    /// `now` on the clock of leases and membership, which starts with the registry.
    pub(super) fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// Queues grants for their waiting requests.
    pub(super) fn post(&mut self, grants: Vec<Delivery>) {
        for d in &grants {
            self.metrics
                .fresh_leases
                .inc_by(d.grant.pieces.len() as u64);
        }
        self.outbox.extend(grants);
    }

    /// Grants made since the last call, for the requests waiting under their keys.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.outbox)
    }

    fn who(&self, key: PeerKey, pool: PoolKey, id: &str) -> Result<Who> {
        let holder = self
            .peers
            .generation(key)
            .ok_or(Error::Capacity("peer vanished"))?;
        Ok(Who {
            key,
            pool,
            holder,
            rank: id_hash(id),
        })
    }

    fn join_interval_ms(&self) -> u64 {
        (self.config.peer_ttl / 3)
            .min(MAX_JOIN_INTERVAL)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// A node takes part in a blob (downloading or holding it) and learns whom to connect to.
    pub fn join(&mut self, req: &JoinRequest, now: Instant) -> Result<JoinResponse> {
        let pieces = req.validate()?;
        self.expire(now);
        let pool = self.pools.resolve(&req.peer.pool)?;
        let key = self.touch(&req.peer.id, &req.peer.addr, pool, now)?;
        self.metrics.joins.inc();
        let Some(reach) = self.pools.reach(pool) else {
            return Err(Error::Capacity("pool vanished"));
        };
        let (p2p, keys) = (reach.p2p, reach.keys.clone());
        let mut resp = JoinResponse {
            interval_ms: self.join_interval_ms(),
            reachable_pools: reach.names.clone(),
            ..JoinResponse::default()
        };
        if !p2p {
            self.metrics.go_source.inc();
            resp.go_source = true;
            return Ok(resp);
        }
        let who = self.who(key, pool, &req.peer.id)?;
        let t = &req.task;
        let shape = BlobShape {
            digest: &t.digest,
            size: t.size,
            piece_size: t.piece_size,
            pieces,
        };
        self.swarms
            .join(who, shape, req.held, req.done, self.since(now))?;
        let chosen = self.swarms.neighbours(
            &t.digest,
            who,
            &keys,
            self.config.max_neighbors,
            self.since(now),
        );
        resp.members = chosen
            .into_iter()
            .filter_map(|(k, done)| {
                self.peers.get(k).map(|p| MemberInfo {
                    id: p.id.clone(),
                    addr: p.addr.clone(),
                    done,
                })
            })
            .collect();
        Ok(resp)
    }

    /// A member reports the leased pieces it completed and, with `wait`, asks for more. The
    /// grant, when one is made at once, is in the answer; grants for others are in the outbox.
    pub fn fresh(&mut self, req: &FreshRequest, now: Instant) -> Result<Fresh> {
        req.validate()?;
        self.expire(now);
        let not_joined = || Error::NotJoined {
            peer: req.peer.id.chars().take(80).collect(),
            digest: req.digest.clone(),
        };
        let key = self.peers.key_of(&req.peer.id).ok_or_else(not_joined)?;
        let pool = match (self.peers.get(key), self.pools.keys.get(&req.peer.pool)) {
            (Some(p), Some(&pool)) if p.pool == pool => pool,
            _ => return Err(not_joined()),
        };
        let pieces = self.swarms.pieces(&req.digest).ok_or_else(not_joined)?;
        req.validate_pieces(pieces)?;
        let (group, group_pools) = match self.pools.reach(pool) {
            Some(r) if r.p2p => (r.group, r.group_pools.clone()),
            _ => return Err(not_joined()),
        };
        let who = self.who(key, pool, &req.peer.id)?;
        let ask = Ask {
            completed: &req.completed,
            wait: req.wait,
        };
        let group_ref = GroupRef {
            key: group,
            pools: &group_pools,
        };
        let since = self.since(now);
        let out = self
            .swarms
            .fresh(who, &req.digest, group_ref, ask, since)
            .ok_or_else(not_joined)?;
        if let Some(p) = self.peers.get_mut(key) {
            p.last_seen = now;
        }
        self.post(out.others);
        if let Some(g) = &out.mine {
            self.metrics.fresh_leases.inc_by(g.pieces.len() as u64);
        }
        Ok(Fresh {
            key: WaitKey {
                digest: req.digest.clone(),
                group,
                holder: who.holder,
            },
            grant: out.mine,
            all_released: out.all_released,
            move_on: out.move_on,
            news: out.news,
        })
    }

    /// Where the leases stand for a request under `key` whose long poll ran out: (every
    /// piece released, nodes may move on), so its empty answer still says so.
    pub fn fresh_standing(&mut self, key: &WaitKey, now: Instant) -> (bool, bool) {
        let since = self.since(now);
        self.swarms
            .standing(&key.digest, key.group, key.holder, since)
    }

    /// The request waiting under `key` ended without a grant (its long poll ran out, or it
    /// went away).
    pub fn cancel_fresh(&mut self, key: &WaitKey) {
        self.swarms.cancel(&key.digest, key.group, key.holder);
    }

    /// The background sweep: peers silent for `peerTTL` go, so do v2 members not heard from
    /// for as long, and v2 leases past `sourceAssignTimeout` are handed out again. Returns
    /// how many peers went.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let dropped = self.expire(now);
        let freed = self.swarms.expire(self.since(now));
        self.post(freed);
        dropped
    }

    /// A heartbeat's held blobs make the node a complete v2 member of each, so joiners learn
    /// of warm holders.
    pub(super) fn hold_v2(
        &mut self,
        key: PeerKey,
        id: &str,
        held: &[HeldTask],
        now: Instant,
    ) -> Result<()> {
        let Some(pool) = self.peers.get(key).map(|p| p.pool) else {
            return Ok(());
        };
        let who = self.who(key, pool, id)?;
        let since = self.since(now);
        for h in held {
            let pieces = piece_count(h.size, h.piece_size)?;
            let shape = BlobShape {
                digest: &h.digest,
                size: h.size,
                piece_size: h.piece_size,
                pieces,
            };
            match self.swarms.join(who, shape, pieces, true, since) {
                Ok(()) => {}
                Err(e @ Error::TaskConflict { .. }) => {
                    tracing::warn!(peer = %id, error = %e, "held blob ignored (v2)");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
