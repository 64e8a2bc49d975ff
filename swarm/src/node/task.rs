//! What a node knows of one blob: its own pieces, each member's, and the counts that rank
//! its pieces by rarity.

use super::{Mode, PeerId, TaskId};
use crate::mix;
use crate::pieces::PieceSet;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Missing,
    /// Accepted from a peer.
    Incoming(PeerId),
    Mirror,
    /// From the mirror once every piece is in the pool, helping the tail: not announced, and
    /// given up for a peer's offer when the peer should finish it sooner.
    Assist,
    Have,
}

/// A piece coming in: when it started, its last progress, and bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    pub since: Duration,
    pub last: Duration,
    pub bytes: u64,
}

impl Transfer {
    pub fn new(now: Duration) -> Transfer {
        Transfer {
            since: now,
            last: now,
            bytes: 0,
        }
    }
}

/// What a member of a blob holds, and is receiving, as it told.
#[derive(Debug)]
pub(super) struct Member {
    pub have: PieceSet,
    pub receiving: PieceSet,
}

impl Member {
    pub fn lacks(&self, piece: u32) -> bool {
        !self.have.contains(piece) && !self.receiving.contains(piece)
    }

    /// Pieces it holds or will soon.
    pub fn holding(&self) -> u32 {
        self.have.count() + self.receiving.count()
    }
}

/// The next piece on a lane: offered and waiting for the answer, or accepted and waiting
/// for the push before it to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Next {
    pub task: TaskId,
    pub piece: u32,
    pub accepted: bool,
    /// When it was offered.
    pub at: Duration,
}

/// This node's uploads to one peer: one push at a time, and the next pieces offered while it
/// runs, so the lane does not idle for a round trip between pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Lane {
    pub push: Option<(TaskId, u32)>,
    pub next: VecDeque<Next>,
}

impl Lane {
    pub fn in_use(&self) -> bool {
        self.push.is_some() || !self.next.is_empty()
    }
}

#[derive(Debug, Default)]
pub(super) struct Peer {
    /// It answered busy: no offers before then.
    pub busy_until: Option<Duration>,
    /// Its pushes accepted here and not yet done.
    pub incoming: u32,
    /// When bytes of a push it sends here last arrived (or a push was last accepted from it).
    /// Its pushes come one at a time, so a piece accepted behind another is not stalled while
    /// this moves.
    pub last_data: Duration,
    pub lane: Lane,
    pub tasks: HashSet<TaskId>,
}

#[derive(Debug)]
pub(super) struct Task {
    pub mode: Mode,
    /// Its place among the node's blobs, in the order they were opened: after pieces held
    /// here alone, a lane moves the earliest first (a client such as skopeo waits for the
    /// first of an image's layers).
    pub order: u64,
    /// Bytes of a whole piece (the last one may be shorter).
    pub piece_len: u64,
    pub state: Vec<State>,
    pub have: PieceSet,
    /// Each transfer coming in (from peers or the mirror).
    pub transfers: HashMap<u32, Transfer>,
    pub members: HashMap<PeerId, Member>,
    pub blocked: HashSet<PeerId>,
    /// Per piece: members holding or receiving it.
    pub counts: Vec<u32>,
    /// Held pieces by (members holding or receiving, tie-break).
    pub rank: BTreeSet<(u32, u64, u32)>,
    /// The sum of `counts` over held pieces: with the member count it gives the backlog.
    held_sum: u64,
    /// Pieces leased to this node and not yet fetched, in order.
    pub leases: VecDeque<u32>,
    /// Every piece leased to this node and not yet done.
    pub leased: HashSet<u32>,
    /// Leased pieces done since the last report to the scheduler.
    pub completed: Vec<u32>,
    pub asking: bool,
    pub all_released: bool,
    /// The scheduler said the node may start its next blob (`crate::Releases::move_on`).
    pub move_on: bool,
    /// Mirror ranges under way, `first..end`.
    pub runs: Vec<(u32, u32)>,
    pub mirror_failures: u32,
    /// After a mirror failure, no mirror transfer starts before this.
    pub mirror_retry_at: Duration,
    pub last_progress: Duration,
    /// After a peer overtook a tail-help range, no new one starts before this.
    pub assist_at: Duration,
    /// Tail help waits for `assist_at`.
    pub assist_waiting: bool,
    /// Help ranges allowed at once: one more for each that completed, half as many after a
    /// peer overtook one (within 1 and `assist_parallel`).
    pub assist_window: u32,
    pub failed: bool,
    /// Something changed that may start a mirror transfer.
    pub mirror_dirty: bool,
}

impl Task {
    pub fn new(pieces: u32, piece_len: u64, mode: Mode, now: Duration) -> Task {
        Task {
            mode,
            order: 0,
            piece_len,
            state: vec![State::Missing; pieces as usize],
            have: PieceSet::empty(pieces),
            transfers: HashMap::new(),
            members: HashMap::new(),
            blocked: HashSet::new(),
            counts: vec![0; pieces as usize],
            rank: BTreeSet::new(),
            held_sum: 0,
            leases: VecDeque::new(),
            leased: HashSet::new(),
            completed: Vec::new(),
            asking: false,
            all_released: false,
            move_on: false,
            runs: Vec::new(),
            mirror_failures: 0,
            mirror_retry_at: Duration::ZERO,
            last_progress: now,
            assist_at: Duration::ZERO,
            assist_waiting: false,
            assist_window: 1,
            failed: false,
            mirror_dirty: true,
        }
    }

    pub fn pieces(&self) -> u32 {
        self.state.len() as u32
    }

    pub fn wants(&self) -> bool {
        !self.have.is_full() && !self.failed
    }

    /// A p2p download with nothing coming from the mirror: if no piece lands for a while,
    /// one is fetched from the mirror so the blob still moves.
    pub fn rescuable(&self) -> bool {
        self.wants() && self.mode == Mode::P2p && self.runs.is_empty()
    }

    /// (held piece, member lacking it) pairs: the pushes this node could still make.
    pub fn backlog(&self) -> u64 {
        (self.members.len() as u64 * u64::from(self.have.count())).saturating_sub(self.held_sum)
    }

    pub fn mirror_transfers(&self) -> u32 {
        self.runs.len() as u32
    }

    pub fn receiving(&self) -> PieceSet {
        let mut set = PieceSet::empty(self.pieces());
        for (i, s) in self.state.iter().enumerate() {
            if matches!(s, State::Incoming(_) | State::Mirror) {
                set.insert(i as u32);
            }
        }
        set
    }

    fn rank_key(&self, seed: u64, piece: u32) -> (u32, u64, u32) {
        (
            self.counts[piece as usize],
            mix(seed, u64::from(piece)),
            piece,
        )
    }

    /// Changes how many members hold or receive `piece`, keeping rank and backlog in step.
    pub fn bump(&mut self, seed: u64, piece: u32, up: bool) {
        let i = piece as usize;
        let held = self.have.contains(piece);
        if held {
            let key = self.rank_key(seed, piece);
            self.rank.remove(&key);
        }
        if up {
            self.counts[i] += 1;
            if held {
                self.held_sum += 1;
            }
        } else if self.counts[i] > 0 {
            self.counts[i] -= 1;
            if held {
                self.held_sum -= 1;
            }
        }
        if held {
            let key = self.rank_key(seed, piece);
            self.rank.insert(key);
        }
    }

    /// This node now holds `piece`.
    pub fn gain(&mut self, seed: u64, piece: u32) {
        if self.have.insert(piece) {
            self.state[piece as usize] = State::Have;
            self.held_sum += u64::from(self.counts[piece as usize]);
            let key = self.rank_key(seed, piece);
            self.rank.insert(key);
        }
    }

    /// Records a member's news of one piece; true when it lacks the piece again (something
    /// to offer it).
    pub fn member_news(
        &mut self,
        seed: u64,
        peer: PeerId,
        piece: u32,
        f: impl FnOnce(&mut Member),
    ) -> bool {
        let Some(m) = self.members.get_mut(&peer) else {
            return false;
        };
        if piece >= m.have.len() {
            return false;
        }
        let before = !m.lacks(piece);
        f(m);
        let after = !m.lacks(piece);
        if before != after {
            self.bump(seed, piece, after);
        }
        before && !after
    }

    /// Forgets a member and what it held or was receiving.
    pub fn remove_member(&mut self, seed: u64, peer: PeerId) {
        if let Some(m) = self.members.remove(&peer) {
            for piece in m.have.iter().chain(m.receiving.iter()) {
                self.bump(seed, piece, false);
            }
        }
    }

    /// Drops finished mirror ranges (no piece of them still coming from the mirror).
    pub fn prune_runs(&mut self) {
        let state = &self.state;
        self.runs.retain(|&(first, end)| {
            (first..end).any(|p| matches!(state[p as usize], State::Mirror | State::Assist))
        });
    }
}
