//! P2P v2 state with no HTTP and time as an argument: who takes part in which blob, and the
//! first-holder leases ([`swarm::Releases`]) of each blob in each group of pools that can pair.
//! No per-piece tracking: peers push pieces to each other and tell each other what they hold.
//!
//! ```text
//!   join ──> Blob.members (pool, done, held, last seen) ──> up to maxNeighbors members to connect
//!   heartbeat's held blobs ──> complete members            to, the same ones while nobody comes
//!                                                           or goes
//!   fresh ──> Blob.groups[group of the requester's pool].releases.ask ──> grants to deliver
//!   leave, a lapsed member, a silent peer ──> Releases::leave; the sweep ──> Releases::expire
//!   any of these freed room in the group's window ──> its blobs' waiters, the first blob first
//! ```
//!
//! A group's blobs share one window of leases (what one blob may lease, less what the others
//! hold leased: [`swarm::Releases::share`]): the mirror's uplink is one link, and an image's
//! blobs started ahead of the client leave it one after another instead of side by side.
//!
//! Functions that may end a wait return the grants to deliver as [`Delivery`]s; the server
//! hands each to the request that waits for it.

use crate::error::{Error, Result};
use crate::peers::{PeerKey, PoolKey};
use crate::registry::{MAX_TASKS, MAX_TASKS_PER_PEER};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use swarm::{Grant, Holder, ReleaseConfig, Releases};

/// A group of pools that can pair with each other (a requester's pool and those it reaches),
/// as the registry numbers them.
pub type GroupKey = u32;

/// A grant for the request waiting under (`digest`, `group`, `holder`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub digest: String,
    pub group: GroupKey,
    pub holder: Holder,
    pub grant: Grant,
}

/// A stable 64-bit hash of a node name (FNV-1a), so neighbour choices survive a restart.
pub(crate) fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A peer taking part, as the registry knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who {
    pub key: PeerKey,
    pub pool: PoolKey,
    /// Its key in [`Releases`]: never reused, unlike `key`.
    pub holder: Holder,
    /// [`id_hash`] of its node name.
    pub rank: u64,
}

/// The blob a join names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobShape<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub piece_size: u64,
    pub pieces: u32,
}

/// A group's requester: the group's key and its pools.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupRef<'a> {
    pub key: GroupKey,
    pub pools: &'a [PoolKey],
}

/// A fresh request's report and wish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    /// Leased pieces completed.
    pub completed: &'a [u32],
    pub wait: bool,
}

/// What a fresh request gets at once.
#[derive(Debug, Default)]
pub(crate) struct FreshOutcome {
    /// The requester's own grant, when one was made now.
    pub mine: Option<Grant>,
    /// Grants for other waiting requests.
    pub others: Vec<Delivery>,
    pub all_released: bool,
    /// Nearly every piece is leased: nodes may start their next blob (see
    /// `swarm::Releases::move_on`).
    pub move_on: bool,
    /// `move_on` is news to the requester: it was never told so for this blob, so a request
    /// that would wait is answered at once.
    pub news: bool,
}

#[derive(Debug)]
struct Member {
    pool: PoolKey,
    holder: Holder,
    rank: u64,
    done: bool,
    held: u32,
    seen: Duration,
}

#[derive(Debug)]
struct Group {
    pools: Vec<PoolKey>,
    releases: Releases,
    /// Its place among the group's blobs, in the order their leases were first asked for.
    seq: u64,
    /// Holders told `move_on` (in a grant, an answer or a long poll's end).
    told: HashSet<Holder>,
}

#[derive(Debug)]
struct Blob {
    size: u64,
    piece_size: u64,
    pieces: u32,
    members: HashMap<PeerKey, Member>,
    /// Members per pool, so a group's size costs a few lookups.
    per_pool: HashMap<PoolKey, u32>,
    groups: HashMap<GroupKey, Group>,
}

impl Blob {
    /// The leases of the group of `pools`: sized for its members in this blob, and for the
    /// live nodes of those pools (`nodes`), so a pool's first member to reach a blob is not
    /// taken for a pool of one.
    fn release_config(
        &self,
        pools: &[PoolKey],
        nodes: &HashMap<PoolKey, u32>,
        lease: Duration,
    ) -> ReleaseConfig {
        let count = |of: &HashMap<PoolKey, u32>| {
            pools
                .iter()
                .filter_map(|p| of.get(p))
                .fold(0u32, |a, &n| a.saturating_add(n)) as usize
        };
        ReleaseConfig::for_pool(count(&self.per_pool), count(nodes), self.piece_size, lease)
    }

    fn remove_member(&mut self, key: PeerKey) -> Option<Member> {
        let m = self.members.remove(&key)?;
        if let Some(n) = self.per_pool.get_mut(&m.pool) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_pool.remove(&m.pool);
            }
        }
        Some(m)
    }
}

/// Grants made in `group`'s leases of `digest`, to deliver.
fn deliveries(
    digest: &str,
    group: GroupKey,
    grants: Vec<(Holder, Grant)>,
) -> impl Iterator<Item = Delivery> + '_ {
    grants.into_iter().map(move |(holder, grant)| Delivery {
        digest: digest.to_string(),
        group,
        holder,
        grant,
    })
}

/// `seq` no longer waits in `group`.
fn unlist(waiting: &mut HashMap<GroupKey, BTreeMap<u64, String>>, group: GroupKey, seq: u64) {
    if let Some(a) = waiting.get_mut(&group) {
        a.remove(&seq);
        if a.is_empty() {
            waiting.remove(&group);
        }
    }
}

/// Every blob taken part in through v2 (or held, by heartbeat), its members and leases.
#[derive(Debug)]
pub(crate) struct Swarms {
    /// A member not heard from (join, fresh or heartbeat) for this long leaves.
    ttl: Duration,
    /// A lease not completed within this is handed out again (`sourceAssignTimeout`).
    lease: Duration,
    blobs: HashMap<String, Blob>,
    by_peer: HashMap<PeerKey, HashSet<String>>,
    /// Live nodes per pool (the registry's peers), whatever blobs they take part in.
    nodes: HashMap<PoolKey, u32>,
    /// Per group of pools, its blobs with nodes waiting for a lease, by `Group::seq`. A
    /// group's blobs share one window of leases on the mirror's uplink
    /// ([`Releases::share`]): room one frees goes to these, the blob first asked for first.
    waiting: HashMap<GroupKey, BTreeMap<u64, String>>,
    /// Per group, the bytes its blobs have leased and not completed.
    leased: HashMap<GroupKey, u64>,
    seq: u64,
}

impl Swarms {
    pub fn new(ttl: Duration, lease: Duration) -> Swarms {
        Swarms {
            ttl,
            lease,
            blobs: HashMap::new(),
            by_peer: HashMap::new(),
            nodes: HashMap::new(),
            waiting: HashMap::new(),
            leased: HashMap::new(),
            seq: 0,
        }
    }

    /// Runs `f` on `group`'s leases of `digest` with what the group's other blobs hold leased
    /// as their share of the window, and keeps the group's sum and its blobs waiting. None
    /// when the blob or its group is unknown.
    fn with_releases<R>(
        &mut self,
        group: GroupKey,
        digest: &str,
        f: impl FnOnce(&mut Releases, &ReleaseConfig) -> R,
    ) -> Option<R> {
        let lease = self.lease;
        let b = self.blobs.get_mut(digest)?;
        let cfg = b
            .groups
            .get(&group)
            .map(|g| b.release_config(&g.pools, &self.nodes, lease))?;
        let piece_size = b.piece_size.max(1);
        let g = b.groups.get_mut(&group)?;
        let total = self.leased.get(&group).copied().unwrap_or(0);
        let others = total.saturating_sub(g.releases.leased() * piece_size);
        g.releases.share(others.div_ceil(piece_size));
        let r = f(&mut g.releases, &cfg);
        let total = others + g.releases.leased() * piece_size;
        if total == 0 {
            self.leased.remove(&group);
        } else {
            self.leased.insert(group, total);
        }
        let waits = g.releases.has_waiting() && !g.releases.all_released();
        let seq = g.seq;
        if waits {
            self.waiting
                .entry(group)
                .or_default()
                .insert(seq, digest.to_string());
        } else {
            unlist(&mut self.waiting, group, seq);
        }
        Some(r)
    }

    /// Room freed in `group`'s window goes to the nodes waiting on its blobs, the blob first
    /// asked for first, until the window is full.
    fn regrant(&mut self, group: GroupKey, now: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut from = 0;
        // One blob at a time, from the map as it is now (a pass may unlist what it served).
        while let Some((seq, digest)) = self
            .waiting
            .get(&group)
            .and_then(|a| a.range(from..).next())
            .map(|(&k, d)| (k, d.clone()))
        {
            from = seq + 1;
            let grants = self.with_releases(group, &digest, |r, cfg| {
                let grants = r.grant(cfg, now);
                (grants, r.room(cfg) == 0)
            });
            let Some((grants, full)) = grants else {
                unlist(&mut self.waiting, group, seq);
                continue;
            };
            if let Some(g) = self
                .blobs
                .get_mut(&digest)
                .and_then(|b| b.groups.get_mut(&group))
            {
                for (holder, grant) in &grants {
                    if grant.move_on || grant.all_released {
                        g.told.insert(*holder);
                    }
                }
            }
            out.extend(deliveries(&digest, group, grants));
            if full {
                break;
            }
        }
        out
    }

    /// A blob nobody takes part in any more: out of its groups' windows.
    fn forget(&mut self, b: &Blob) {
        for (&key, g) in &b.groups {
            unlist(&mut self.waiting, key, g.seq);
            if let Some(total) = self.leased.get_mut(&key) {
                *total = total.saturating_sub(g.releases.leased() * b.piece_size.max(1));
                if *total == 0 {
                    self.leased.remove(&key);
                }
            }
        }
    }

    /// A node of `pool` registered.
    pub fn node_came(&mut self, pool: PoolKey) {
        *self.nodes.entry(pool).or_default() += 1;
    }

    /// A node of `pool` is gone.
    pub fn node_left(&mut self, pool: PoolKey) {
        if let Some(n) = self.nodes.get_mut(&pool) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.nodes.remove(&pool);
            }
        }
    }

    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.blobs.keys().map(String::as_str)
    }

    /// Whether `key` takes part in `digest`, and whether it holds it whole.
    pub fn membership(&self, key: PeerKey, digest: &str) -> Option<bool> {
        self.blobs
            .get(digest)
            .and_then(|b| b.members.get(&key))
            .map(|m| m.done)
    }

    /// `who` takes part in `blob` (downloading it, or holding it whole with `done`), or
    /// refreshes its membership and progress.
    pub fn join(
        &mut self,
        who: Who,
        blob: BlobShape<'_>,
        held: u32,
        done: bool,
        now: Duration,
    ) -> Result<()> {
        match self.blobs.get(blob.digest) {
            Some(b) if b.size != blob.size || b.piece_size != blob.piece_size => {
                return Err(Error::TaskConflict {
                    digest: blob.digest.to_string(),
                    known_size: b.size,
                    known_piece_size: b.piece_size,
                    size: blob.size,
                    piece_size: blob.piece_size,
                });
            }
            Some(_) => {}
            None if self.blobs.len() >= MAX_TASKS => return Err(Error::Capacity("too many tasks")),
            None => {}
        }
        let mine = self.by_peer.entry(who.key).or_default();
        if !mine.contains(blob.digest) {
            if mine.len() >= MAX_TASKS_PER_PEER {
                return Err(Error::Capacity("too many tasks for one peer"));
            }
            mine.insert(blob.digest.to_string());
        }
        let b = self
            .blobs
            .entry(blob.digest.to_string())
            .or_insert_with(|| Blob {
                size: blob.size,
                piece_size: blob.piece_size,
                pieces: blob.pieces,
                members: HashMap::new(),
                per_pool: HashMap::new(),
                groups: HashMap::new(),
            });
        let m = b.members.entry(who.key).or_insert_with(|| {
            *b.per_pool.entry(who.pool).or_default() += 1;
            Member {
                pool: who.pool,
                holder: who.holder,
                rank: who.rank,
                done,
                held,
                seen: now,
            }
        });
        m.done = done;
        m.held = if done { blob.pieces } else { held };
        m.seen = now;
        Ok(())
    }

    /// Up to `max` live members of `digest` in the `reach` pools, other than `who`, with
    /// whether each holds the blob whole. Candidates rank by `mix(who, member)`, lowest
    /// first, so one node's choice changes only when members come or go, and different nodes
    /// choose differently. While downloading members would fill the rest, complete holders
    /// take at most half (rounded up): a downloader gains most from peers that are
    /// downloading too, as each passes on what the mirror gave it.
    pub fn neighbours(
        &self,
        digest: &str,
        who: Who,
        reach: &[PoolKey],
        max: usize,
        now: Duration,
    ) -> Vec<(PeerKey, bool)> {
        let Some(b) = self.blobs.get(digest) else {
            return Vec::new();
        };
        let mut down = Vec::new();
        let mut done = Vec::new();
        for (&key, m) in &b.members {
            if key == who.key || !reach.contains(&m.pool) || self.lapsed(m, now) {
                continue;
            }
            let rank = (swarm::mix(who.rank, m.rank), key);
            if m.done {
                done.push(rank);
            } else {
                down.push(rank);
            }
        }
        let done_n = done
            .len()
            .min(max.div_ceil(2).max(max.saturating_sub(down.len())));
        let down_n = down.len().min(max - done_n);
        let mut chosen: Vec<(u64, PeerKey, bool)> = Vec::with_capacity(done_n + down_n);
        for (list, n, is_done) in [(&mut done, done_n, true), (&mut down, down_n, false)] {
            if n < list.len() {
                list.select_nth_unstable(n);
            }
            chosen.extend(list[..n].iter().map(|&(r, k)| (r, k, is_done)));
        }
        chosen.sort_unstable();
        chosen.into_iter().map(|(_, k, d)| (k, d)).collect()
    }

    fn lapsed(&self, m: &Member, now: Duration) -> bool {
        now.saturating_sub(m.seen) >= self.ttl
    }

    /// The piece count of `digest`, when anyone takes part in it.
    pub fn pieces(&self, digest: &str) -> Option<u32> {
        self.blobs.get(digest).map(|b| b.pieces)
    }

    /// `who` reports leased pieces it completed and (`wait`) waits for a lease of its
    /// `group`. None when `who` does not take part in `digest`; else its membership is
    /// refreshed.
    pub fn fresh(
        &mut self,
        who: Who,
        digest: &str,
        group: GroupRef<'_>,
        ask: Ask<'_>,
        now: Duration,
    ) -> Option<FreshOutcome> {
        let b = self.blobs.get_mut(digest)?;
        let m = b
            .members
            .get_mut(&who.key)
            .filter(|m| m.holder == who.holder)?;
        m.seen = now;
        let pieces = b.pieces;
        if let std::collections::hash_map::Entry::Vacant(slot) = b.groups.entry(group.key) {
            self.seq += 1;
            slot.insert(Group {
                pools: group.pools.to_vec(),
                releases: Releases::new(pieces),
                seq: self.seq,
                told: HashSet::new(),
            });
        }
        let (grants, all_released, move_on) = self.with_releases(group.key, digest, |r, cfg| {
            let mut grants = r.expire(cfg, now);
            grants.extend(r.ask(cfg, who.holder, ask.completed, ask.wait, now));
            (grants, r.all_released(), r.move_on(cfg, now))
        })?;
        // What the asker's completions freed goes to the group's oldest blob first.
        let mut freed = self.regrant(group.key, now);
        let g = self.blobs.get_mut(digest)?.groups.get_mut(&group.key)?;
        for (holder, grant) in &grants {
            if grant.move_on || grant.all_released {
                g.told.insert(*holder);
            }
        }
        let mut out = FreshOutcome {
            all_released,
            move_on,
            news: move_on && g.told.insert(who.holder),
            ..FreshOutcome::default()
        };
        for (holder, grant) in grants {
            // A report alone (no `wait`) answers at once; a grant it frees for its own peer
            // goes to that peer's waiting request (or is kept for its next one).
            if holder == who.holder && ask.wait {
                out.mine = Some(grant);
            } else {
                out.others.push(Delivery {
                    digest: digest.to_string(),
                    group: group.key,
                    holder,
                    grant,
                });
            }
        }
        if ask.wait && out.mine.is_none() {
            let mine = freed
                .iter()
                .position(|d| d.digest == digest && d.group == group.key && d.holder == who.holder);
            if let Some(k) = mine {
                out.mine = Some(freed.swap_remove(k).grant);
            }
        }
        out.others.extend(freed);
        Some(out)
    }

    /// The request of `holder` waiting in `group` ended without a grant.
    pub fn cancel(&mut self, digest: &str, group: GroupKey, holder: Holder) {
        if let Some(g) = self
            .blobs
            .get_mut(digest)
            .and_then(|b| b.groups.get_mut(&group))
        {
            g.releases.cancel(holder);
        }
    }

    /// Where `group`'s leases of `digest` stand for `holder`, whose long poll ended without a
    /// grant: (every piece released, nodes may move on). `holder` counts as told.
    pub fn standing(
        &mut self,
        digest: &str,
        group: GroupKey,
        holder: Holder,
        now: Duration,
    ) -> (bool, bool) {
        let lease = self.lease;
        let Some(b) = self.blobs.get_mut(digest) else {
            return (false, false);
        };
        let Some(cfg) = b
            .groups
            .get(&group)
            .map(|g| b.release_config(&g.pools, &self.nodes, lease))
        else {
            return (false, false);
        };
        let Some(g) = b.groups.get_mut(&group) else {
            return (false, false);
        };
        let move_on = g.releases.move_on(&cfg, now);
        if move_on {
            g.told.insert(holder);
        }
        (g.releases.all_released(), move_on)
    }

    /// `key` no longer takes part in `digest`: its leases go back. Returns the grants that
    /// frees.
    pub fn leave(&mut self, key: PeerKey, digest: &str, now: Duration) -> Vec<Delivery> {
        if let Some(mine) = self.by_peer.get_mut(&key) {
            mine.remove(digest);
            if mine.is_empty() {
                self.by_peer.remove(&key);
            }
        }
        let Some(b) = self.blobs.get_mut(digest) else {
            return Vec::new();
        };
        let Some(m) = b.remove_member(key) else {
            return Vec::new();
        };
        let groups: Vec<GroupKey> = b.groups.keys().copied().collect();
        let mut out = Vec::new();
        if b.members.is_empty() {
            if let Some(b) = self.blobs.remove(digest) {
                self.forget(&b);
            }
        } else {
            for &group in &groups {
                let grants =
                    self.with_releases(group, digest, |r, cfg| r.leave(cfg, m.holder, now));
                out.extend(deliveries(digest, group, grants.unwrap_or_default()));
            }
        }
        // Leases it held went back, or the blob is gone with its leases: room for the rest.
        for group in groups {
            out.extend(self.regrant(group, now));
        }
        out
    }

    /// `key` is gone: it leaves every blob.
    pub fn remove_peer(&mut self, key: PeerKey, now: Duration) -> Vec<Delivery> {
        let digests: Vec<String> = self
            .by_peer
            .get(&key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        digests
            .iter()
            .flat_map(|d| self.leave(key, d, now))
            .collect()
    }

    /// The blobs `key` holds whole but a heartbeat no longer lists (evicted, or a restart with
    /// an empty cache).
    pub fn unlisted_done(&self, key: PeerKey, listed: &HashSet<&str>) -> Vec<String> {
        let Some(mine) = self.by_peer.get(&key) else {
            return Vec::new();
        };
        mine.iter()
            .filter(|d| !listed.contains(d.as_str()))
            .filter(|d| self.membership(key, d) == Some(true))
            .cloned()
            .collect()
    }

    /// Members silent for the TTL leave; leases older than `sourceAssignTimeout` go back.
    /// Returns the grants that frees.
    pub fn expire(&mut self, now: Duration) -> Vec<Delivery> {
        let lapsed: Vec<(PeerKey, String)> = self
            .blobs
            .iter()
            .flat_map(|(d, b)| {
                b.members
                    .iter()
                    .filter(|(_, m)| self.lapsed(m, now))
                    .map(move |(&k, _)| (k, d.clone()))
            })
            .collect();
        let mut out: Vec<Delivery> = Vec::new();
        for (key, digest) in lapsed {
            out.extend(self.leave(key, &digest, now));
        }
        let leased: Vec<(String, GroupKey)> = self
            .blobs
            .iter()
            .flat_map(|(d, b)| {
                b.groups
                    .iter()
                    .filter(|(_, g)| g.releases.leased() > 0)
                    .map(move |(&k, _)| (d.clone(), k))
            })
            .collect();
        let mut groups = HashSet::new();
        for (digest, group) in leased {
            let grants = self.with_releases(group, &digest, |r, cfg| r.expire(cfg, now));
            out.extend(deliveries(&digest, group, grants.unwrap_or_default()));
            groups.insert(group);
        }
        for group in groups {
            out.extend(self.regrant(group, now));
        }
        out
    }
}

mod status;
#[cfg(test)]
mod tests;
