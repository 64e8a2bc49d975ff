//! The two answers of an announce: which parents to fetch from, and which pieces to fetch from
//! the mirror because nobody the requester can reach holds them.
//!
//! Parents are sampled, not ranked across the swarm: each reachable pool's holder list is read
//! from a cursor that moves on with every answer, eligible holders are collected up to twice
//! `maxParents` (or a scan budget), and the least busy of those are offered. Successive
//! requesters thus see different windows, and one answer costs the same with 100 or 100,000
//! holders.

use crate::api::ParentInfo;
use crate::peers::Peers;
use crate::pieces::PieceSet;
use crate::task::{PeerKey, PoolKey, Task};
use std::time::{Duration, Instant};

/// Most holders looked at for one answer (raised to 8 x maxParents when that is larger).
const SCAN_BUDGET: usize = 256;
/// Most pieces one answer sends to the mirror, counting those already assigned.
pub(crate) const SOURCE_PIECES_PER_ANSWER: usize = 4;

/// Who is asking: the requester and the pools it can pair with (its own first).
pub(crate) struct Requester<'a> {
    pub key: PeerKey,
    pub pool: PoolKey,
    pub reach: &'a [PoolKey],
}

/// Up to `max_parents` live holders the requester can pair with, that hold a piece it lacks
/// and that it has not reported, least busy first. `window` is the current one-second window
/// in which offers count as load.
pub(crate) fn choose_parents(
    task: &mut Task,
    peers: &mut Peers,
    who: &Requester<'_>,
    max_parents: usize,
    window: u64,
) -> Vec<ParentInfo> {
    let Task { members, pools, .. } = task;
    let Some(me) = members.get(&who.key) else {
        return Vec::new();
    };
    let target = max_parents.saturating_mul(2).max(1);
    let mut budget = SCAN_BUDGET.max(max_parents.saturating_mul(8));
    // (score, order found, peer): ties go to the one found first in the rotating window.
    let mut found: Vec<(u64, usize, PeerKey)> = Vec::with_capacity(target);
    for pool in who.reach {
        if budget == 0 || found.len() >= target {
            break;
        }
        let Some(list) = pools.get_mut(pool) else {
            continue;
        };
        let n = list.holders.len();
        if n == 0 {
            continue;
        }
        let start = list.cursor % n;
        let mut scanned = 0;
        while scanned < n && scanned < budget && found.len() < target {
            let key = list.holders[(start + scanned) % n];
            scanned += 1;
            if key == who.key {
                continue;
            }
            let Some(member) = members.get(&key) else {
                continue;
            };
            if !member.have.has_any_missing_from(&me.have) {
                continue;
            }
            let Some(peer) = peers.get(key) else {
                continue;
            };
            if !me.blocked.is_empty() && me.blocked.contains(&peer.id) {
                continue;
            }
            found.push((peer.score(window), found.len(), key));
        }
        budget -= scanned;
        list.cursor = (start + scanned) % n;
    }
    found.sort_unstable();
    found.truncate(max_parents);
    found
        .iter()
        .filter_map(|&(_, _, key)| {
            let member = members.get(&key)?;
            let peer = peers.get_mut(key)?;
            peer.note_handed(window);
            Some(ParentInfo {
                id: peer.id.clone(),
                addr: peer.addr.clone(),
                // Only what the requester lacks: the answer stays small as it fills up.
                have: member.have.missing_from_vec(&me.have),
            })
        })
        .collect()
}

/// Pieces for the requester to fetch from the mirror: first those it was already given and
/// still lacks, then the lowest pieces that no live peer it can pair with holds (its own
/// holdings count) and that are not reserved for another such peer within `timeout`. At
/// most [`SOURCE_PIECES_PER_ANSWER`], and new ones only while the requester's pool has fewer
/// than `pool_limit` live reservations for this blob: the pool's mirror then sends a few
/// pieces at a time at full speed, and peers spread each while the next comes, instead of
/// every piece arriving at once at the end. New ones are reserved for the requester. Also
/// returns how many are new.
///
/// A reservation also lapses when its peer has gone quiet for `quiet`: a downloading agent
/// announces every `announceInterval`, so one that stopped is dead or stuck, and waiting for
/// `peerTTL` or `sourceAssignTimeout` would hold the piece hostage for the whole pool.
pub(crate) fn assign_source_pieces(
    task: &mut Task,
    peers: &Peers,
    who: &Requester<'_>,
    now: Instant,
    (timeout, quiet): (Duration, Duration),
    pool_limit: usize,
) -> (Vec<u32>, usize) {
    let mut out = task.open_assignments(who.key, now, timeout);
    out.truncate(SOURCE_PIECES_PER_ANSWER);
    let mut added = 0;
    let mut room = SOURCE_PIECES_PER_ANSWER
        .saturating_sub(out.len())
        .min(pool_limit.saturating_sub(live_in_pool(task, peers, who.pool, now, (timeout, quiet))));
    if room > 0 {
        // Peers of a pool take turns: new pieces only for a peer that has fetched no more
        // from the mirror than any other downloading peer of its pool. Each piece's first
        // holder is then another node, and every node's uplink helps spread the blob
        // instead of one node's uplink feeding the whole pool.
        let mine = task.members.get(&who.key).map_or(0, |m| m.sourced);
        let fewest = task
            .members
            .iter()
            .filter(|(key, m)| {
                **key != who.key
                    && m.pool == who.pool
                    && !m.have.is_full()
                    && peers
                        .get(**key)
                        .is_some_and(|p| now.saturating_duration_since(p.last_seen) < quiet)
            })
            .map(|(_, m)| m.sourced)
            .min();
        if fewest.is_some_and(|fewest| mine > fewest) {
            room = 0;
        }
    }
    if room > 0 {
        let held = held_for(task, peers, who);
        let mut new = Vec::new();
        for piece in held.iter_missing() {
            if new.len() >= room {
                break;
            }
            if out.contains(&piece)
                || reserved_by_other(task, peers, piece, who, (now, timeout, quiet))
            {
                continue;
            }
            new.push(piece);
        }
        for &piece in &new {
            task.reserve(piece, who.key, who.pool, now, timeout);
        }
        added = new.len();
        out.extend(new);
    }
    out.sort_unstable();
    (out, added)
}

/// Live reservations (not lapsed, peer still announcing) held by peers of `pool`.
fn live_in_pool(
    task: &Task,
    peers: &Peers,
    pool: PoolKey,
    now: Instant,
    (timeout, quiet): (Duration, Duration),
) -> usize {
    task.reserved
        .values()
        .flatten()
        .filter(|r| {
            r.pool == pool
                && now.saturating_duration_since(r.at) < timeout
                && peers
                    .get(r.peer)
                    .is_some_and(|p| now.saturating_duration_since(p.last_seen) < quiet)
        })
        .count()
}

/// Pieces the requester holds or can get from a peer it may pair with and has not blocked.
fn held_for(task: &Task, peers: &Peers, who: &Requester<'_>) -> PieceSet {
    let Some(me) = task.members.get(&who.key) else {
        return PieceSet::empty(task.piece_count);
    };
    let mut held = me.have.clone();
    for pool in who.reach {
        if let Some(list) = task.pools.get(pool) {
            held.union_with(&list.held);
        }
    }
    if me.blocked.is_empty() {
        return held;
    }
    // A piece only blocked parents hold is, for this requester, held by nobody.
    let blocked: Vec<&PieceSet> = me
        .blocked
        .iter()
        .filter_map(|id| peers.key_of(id))
        .filter_map(|key| task.members.get(&key))
        .filter(|m| who.reach.contains(&m.pool))
        .map(|m| &m.have)
        .collect();
    let mut candidates: Vec<u32> = blocked
        .iter()
        .flat_map(|have| have.iter())
        .filter(|&piece| !me.have.contains(piece))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    for piece in candidates {
        let holders: u32 = who
            .reach
            .iter()
            .filter_map(|pool| task.pools.get(pool))
            .map(|list| list.counts[piece as usize])
            .sum();
        let blocked_holders = blocked.iter().filter(|h| h.contains(piece)).count() as u32;
        if holders <= blocked_holders {
            held.remove(piece);
        }
    }
    held
}

/// Whether another peer the requester can pair with was sent to the mirror for `piece`
/// within `timeout` and is still announcing.
fn reserved_by_other(
    task: &Task,
    peers: &Peers,
    piece: u32,
    who: &Requester<'_>,
    (now, timeout, quiet): (Instant, Duration, Duration),
) -> bool {
    task.reserved.get(&piece).is_some_and(|list| {
        list.iter().any(|r| {
            r.peer != who.key
                && now.saturating_duration_since(r.at) < timeout
                && who.reach.contains(&r.pool)
                && peers
                    .get(r.peer)
                    .is_some_and(|p| now.saturating_duration_since(p.last_seen) < quiet)
        })
    })
}
