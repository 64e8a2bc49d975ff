//! One blob being spread: who holds which of its pieces, per pool, and which pieces were handed
//! to which peer to fetch from the mirror.
//!
//! Per pool the task keeps a dense list of holders (peers with at least one piece) to sample
//! parents from, per-piece holder counts, and the set of pieces anyone there holds, so a
//! decision never walks the whole swarm: "who can serve me" is a window over a list, and
//! "which pieces nobody I reach has" is an OR of a few bitmaps.

use crate::pieces::PieceSet;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Index of a live peer in the registry's table.
pub(crate) type PeerKey = u32;
/// Index of a pool in the registry's table.
pub(crate) type PoolKey = u32;

/// Most peers one requester may block for one task.
const MAX_BLOCKED: usize = 1024;

/// A peer taking part in a task: downloading, or holding it whole.
#[derive(Debug)]
pub(crate) struct Member {
    pub have: PieceSet,
    pub pool: PoolKey,
    /// Position in its pool's holder list, while it holds at least one piece.
    slot: Option<usize>,
    /// Parents this peer reported as failed for this task: never offered to it again.
    pub blocked: HashSet<String>,
    /// Pieces handed to this peer to fetch from the mirror, and when.
    pub assigned: Vec<(u32, Instant)>,
    /// How many pieces of this task it was ever sent to the mirror for.
    pub sourced: u32,
}

/// The holders of a task inside one pool.
#[derive(Debug)]
pub(crate) struct PoolHolders {
    pub holders: Vec<PeerKey>,
    /// Per piece, how many holders of this pool have it.
    pub counts: Vec<u32>,
    /// Pieces at least one holder of this pool has.
    pub held: PieceSet,
    /// Where the next parent window starts, so successive answers spread over the holders.
    pub cursor: usize,
}

/// A piece handed to a peer to fetch from the mirror.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation {
    pub peer: PeerKey,
    pub pool: PoolKey,
    pub at: Instant,
}

#[derive(Debug)]
pub(crate) struct Task {
    pub size: u64,
    pub piece_size: u64,
    pub piece_count: u32,
    pub members: HashMap<PeerKey, Member>,
    pub pools: HashMap<PoolKey, PoolHolders>,
    /// Per piece, who was sent to the mirror for it. Entries go when the peer has the piece,
    /// gives up the task, or leaves; expired ones are ignored and pruned as they are met.
    pub reserved: HashMap<u32, Vec<Reservation>>,
}

impl Task {
    pub fn new(size: u64, piece_size: u64, piece_count: u32) -> Self {
        Task {
            size,
            piece_size,
            piece_count,
            members: HashMap::new(),
            pools: HashMap::new(),
            reserved: HashMap::new(),
        }
    }

    pub fn matches(&self, size: u64, piece_size: u64) -> bool {
        self.size == size && self.piece_size == piece_size
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Records what `peer` now holds, replacing what it held before.
    pub fn set_have(&mut self, peer: PeerKey, pool: PoolKey, have: PieceSet) {
        if self.members.get(&peer).is_some_and(|m| m.pool != pool) {
            self.remove_member(peer);
        }
        let piece_count = self.piece_count;
        let member = self.members.entry(peer).or_insert_with(|| Member {
            have: PieceSet::empty(piece_count),
            pool,
            slot: None,
            blocked: HashSet::new(),
            assigned: Vec::new(),
            sourced: 0,
        });
        if member.have == have {
            return;
        }
        let holders = self.pools.entry(pool).or_insert_with(|| PoolHolders {
            holders: Vec::new(),
            counts: vec![0; piece_count as usize],
            held: PieceSet::empty(piece_count),
            cursor: 0,
        });
        update_counts(holders, &member.have, &have);
        member.have = have;
        let holds_any = member.have.count() > 0;
        match (member.slot, holds_any) {
            (None, true) => {
                member.slot = Some(holders.holders.len());
                holders.holders.push(peer);
            }
            (Some(slot), false) => {
                member.slot = None;
                let moved = remove_holder(holders, slot);
                if let Some(moved) = moved.and_then(|k| self.members.get_mut(&k)) {
                    moved.slot = Some(slot);
                }
            }
            _ => {}
        }
        if self.pools.get(&pool).is_some_and(|h| h.holders.is_empty()) {
            self.pools.remove(&pool);
        }
        self.settle_assignments(peer);
    }

    /// Drops `peer` from the task: its pieces, its place among holders, its reservations.
    pub fn remove_member(&mut self, peer: PeerKey) {
        let Some(pool) = self.members.get(&peer).map(|m| m.pool) else {
            return;
        };
        let empty = PieceSet::empty(self.piece_count);
        self.set_have(peer, pool, empty);
        if let Some(member) = self.members.remove(&peer) {
            for (piece, _) in member.assigned {
                self.unreserve(piece, peer);
            }
        }
    }

    /// Never offers `parent_id` to `requester` again for this task. True when newly blocked.
    pub fn block(&mut self, requester: PeerKey, parent_id: &str) -> bool {
        match self.members.get_mut(&requester) {
            Some(m) if m.blocked.len() < MAX_BLOCKED && !m.blocked.contains(parent_id) => {
                m.blocked.insert(parent_id.to_string())
            }
            _ => false,
        }
    }

    /// Forgets assignments the peer has fulfilled.
    fn settle_assignments(&mut self, peer: PeerKey) {
        let Some(member) = self.members.get_mut(&peer) else {
            return;
        };
        if member.assigned.is_empty() {
            return;
        }
        let have = &member.have;
        let mut done = Vec::new();
        member.assigned.retain(|&(piece, _)| {
            let keep = !have.contains(piece);
            if !keep {
                done.push(piece);
            }
            keep
        });
        for piece in done {
            self.unreserve(piece, peer);
        }
    }

    /// The requester's assignments still open (within `timeout` and not yet held), dropping
    /// the expired ones.
    pub fn open_assignments(&mut self, peer: PeerKey, now: Instant, timeout: Duration) -> Vec<u32> {
        let Some(member) = self.members.get_mut(&peer) else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        member.assigned.retain(|&(piece, at)| {
            let keep = now.saturating_duration_since(at) < timeout;
            if !keep {
                expired.push(piece);
            }
            keep
        });
        let open = member.assigned.iter().map(|&(p, _)| p).collect();
        for piece in expired {
            self.unreserve(piece, peer);
        }
        open
    }

    /// Hands `piece` to `peer` to fetch from the mirror.
    pub fn reserve(
        &mut self,
        piece: u32,
        peer: PeerKey,
        pool: PoolKey,
        now: Instant,
        timeout: Duration,
    ) {
        let Some(member) = self.members.get_mut(&peer) else {
            return;
        };
        member.assigned.push((piece, now));
        member.sourced = member.sourced.saturating_add(1);
        let list = self.reserved.entry(piece).or_default();
        list.retain(|r| r.peer != peer && now.saturating_duration_since(r.at) < timeout);
        list.push(Reservation {
            peer,
            pool,
            at: now,
        });
    }

    fn unreserve(&mut self, piece: u32, peer: PeerKey) {
        if let Some(list) = self.reserved.get_mut(&piece) {
            list.retain(|r| r.peer != peer);
            if list.is_empty() {
                self.reserved.remove(&piece);
            }
        }
    }
}

/// Applies the change from `old` to `new` to a pool's per-piece counts.
fn update_counts(holders: &mut PoolHolders, old: &PieceSet, new: &PieceSet) {
    for (wi, (&o, &n)) in old.words().iter().zip(new.words()).enumerate() {
        let base = wi as u32 * 64;
        let mut added = n & !o;
        while added != 0 {
            let piece = base + added.trailing_zeros();
            added &= added - 1;
            let count = &mut holders.counts[piece as usize];
            *count += 1;
            if *count == 1 {
                holders.held.insert(piece);
            }
        }
        let mut removed = o & !n;
        while removed != 0 {
            let piece = base + removed.trailing_zeros();
            removed &= removed - 1;
            let count = &mut holders.counts[piece as usize];
            *count = count.saturating_sub(1);
            if *count == 0 {
                holders.held.remove(piece);
            }
        }
    }
}

/// Removes the holder at `slot`; returns the peer moved into that slot, if any.
fn remove_holder(holders: &mut PoolHolders, slot: usize) -> Option<PeerKey> {
    if slot >= holders.holders.len() {
        return None;
    }
    holders.holders.swap_remove(slot);
    holders.holders.get(slot).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(task: &Task, pool: PoolKey) -> Vec<u32> {
        task.pools
            .get(&pool)
            .map(|h| h.counts.clone())
            .unwrap_or_default()
    }

    #[test]
    fn counts_follow_what_each_holder_reports() {
        let mut t = Task::new(40, 10, 4);
        t.set_have(1, 0, PieceSet::from_indices(4, &[0, 1]));
        t.set_have(2, 0, PieceSet::from_indices(4, &[1, 2]));
        assert_eq!(counts(&t, 0), vec![1, 2, 1, 0]);
        t.set_have(1, 0, PieceSet::from_indices(4, &[3]));
        assert_eq!(counts(&t, 0), vec![0, 1, 1, 1]);
        assert_eq!(t.pools[&0].held.to_vec(), vec![1, 2, 3]);
        t.remove_member(2);
        assert_eq!(counts(&t, 0), vec![0, 0, 0, 1]);
        assert_eq!(t.pools[&0].holders, vec![1]);
        t.remove_member(1);
        assert!(t.pools.is_empty() && t.is_empty());
    }

    #[test]
    fn holder_slots_stay_right_after_swap_removal() {
        let mut t = Task::new(10, 10, 1);
        for peer in 0..5 {
            t.set_have(peer, 7, PieceSet::full(1));
        }
        t.remove_member(1);
        t.set_have(4, 7, PieceSet::empty(1));
        t.remove_member(0);
        let list = &t.pools[&7].holders;
        for (slot, peer) in list.iter().enumerate() {
            assert_eq!(t.members[peer].slot, Some(slot));
        }
        let mut left = list.clone();
        left.sort();
        assert_eq!(left, vec![2, 3]);
    }

    #[test]
    fn reservations_go_when_the_piece_arrives_or_the_peer_leaves() {
        let now = Instant::now();
        let timeout = Duration::from_secs(15);
        let mut t = Task::new(30, 10, 3);
        t.set_have(1, 0, PieceSet::empty(3));
        t.set_have(2, 0, PieceSet::empty(3));
        t.reserve(0, 1, 0, now, timeout);
        t.reserve(1, 2, 0, now, timeout);
        assert_eq!(t.open_assignments(1, now, timeout), vec![0]);
        t.set_have(1, 0, PieceSet::from_indices(3, &[0]));
        assert!(t.open_assignments(1, now, timeout).is_empty());
        assert!(!t.reserved.contains_key(&0));
        t.remove_member(2);
        assert!(t.reserved.is_empty());
    }
}
