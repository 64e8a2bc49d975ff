//! One agent's P2P decisions for every blob it takes part in: which piece its uplink offers
//! next and to whom, which offers it accepts, what it takes from the mirror, and when it asks
//! the scheduler for fresh pieces.
//!
//! ```text
//!   events (peers' notices, loads and offers, pieces done, pushes done, grants)
//!       │  Node::handle, any number
//!       v
//!   state ──Node::decide / Node::tick(now)──> actions (offer, accept, push, notify, fetch, ask)
//! ```
//!
//! **Holders decide.** Each upload lane offers pieces to one peer and, once one is accepted,
//! pushes it, with `lookahead` more offered behind it. A free lane picks the peer first (a
//! blob with a piece held here alone first, then the blob opened first, then the member
//! holding least, skipping peers that answered busy within `busy_backoff`), then the rarest
//! piece this node holds that the peer lacks (fewest members holding or receiving it; ties
//! broken per node), so every node keeps pace with the mirror and a fresh piece is the first
//! thing its holder sends. A thin uplink uses fewer lanes (`lane_rate`).
//!
//! **Receivers reserve.** No byte of a piece moves before the receiver accepted it: an offer of
//! a piece it holds or is receiving is refused (a tail-help range from the mirror gives way to
//! a peer that would be sooner), and so is one past its limits (`max_incoming` pushes in all,
//! `lookahead` + 1 from one peer), as busy; the lane offers something else. Two holders can
//! never send one piece to one node.
//!
//! **The mirror.** In `p2p` mode a node takes from the mirror only the runs of pieces the
//! scheduler leased to it ([`crate::release`]: each piece leaves the mirror once) until every
//! piece is in the pool; from then on the mirror's idle uplink helps the tail with the rarest
//! missing pieces, one range per piece: one at first, one more for each that arrives, half as
//! many (and a pause of one piece's push time) when a peer overtakes one, at most
//! `assist_parallel`, and fewer in a large pool (its members together keep at most
//! [`crate::release::MAX_IN_FLIGHT`] help ranges on the mirror's uplink, as its leases do).
//! Where peers are as fast as the mirror, help stays at one piece at a time and the mirror
//! sends little beyond its one copy; where uplinks are thin, it grows. In `source` mode (no
//! scheduler, `goSource`, or the scheduler failing) the lowest missing pieces come from the
//! mirror, a few at a time.

mod mirror;
mod receive;
mod send;
mod task;

use crate::pieces::PieceSet;
use std::collections::HashMap;
use std::time::Duration;
use task::{Peer, State, Task};

/// The caller's handle for a peer connection.
pub type PeerId = u64;
/// The caller's handle for a blob.
pub type TaskId = u64;

/// How a blob's pieces are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Fresh pieces leased by the scheduler, the rest pushed by peers.
    P2p,
    /// Everything missing from the mirror (peers' offers are still taken).
    Source,
}

/// Where a piece came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    Peer(PeerId),
    Mirror,
}

/// Why a receiver refused an offer, or stopped taking a push.
/// Why a node takes pieces from the mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorWhy {
    /// Fresh pieces the scheduler leased to this node: each leaves the mirror once.
    Lease,
    /// Every piece is in the pool and the mirror's uplink is free: help with the tail.
    Assist,
    /// No piece for `stall` in p2p mode: one piece so a quiet pool still moves.
    Rescue,
    /// Source mode: no P2P for this blob.
    Source,
}

impl MirrorWhy {
    /// The metric label: `lease`, `assist`, `rescue`, `source`.
    pub fn label(self) -> &'static str {
        match self {
            MirrorWhy::Lease => "lease",
            MirrorWhy::Assist => "assist",
            MirrorWhy::Rescue => "rescue",
            MirrorWhy::Source => "source",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It holds the piece.
    Have,
    /// It is receiving the piece from another holder or the mirror.
    Receiving,
    /// Too many pushes incoming.
    Busy,
    /// It takes nothing more of this blob from the sender (a bad or stalled piece), or does not
    /// take part in the blob.
    Unwanted,
}

/// What a node tells the members of a blob about one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Verified and held.
    Have,
    /// Being received: do not offer it here.
    Receiving,
    /// The transfer ended without the piece.
    NotReceiving,
}

/// Settings of the decisions. The defaults are the measured best (docs/benchmarks.md).
#[derive(Clone, Debug)]
pub struct Tunables {
    /// Peers this node uploads to at once: one push each, with the next pieces offered while
    /// it runs.
    pub upload_slots: u32,
    /// Pieces offered (or accepted) ahead of the push under way on a lane: enough to cover a
    /// round trip, so the lane never waits for an answer.
    pub lookahead: u32,
    /// Pushes accepted at once; offers past it are refused as busy, and the sender leaves
    /// that peer alone for `busy_backoff`. A safety cap: receivers are chosen evenly, so it
    /// rarely binds.
    pub max_incoming: u32,
    pub busy_backoff: Duration,
    /// Mirror ranges at once per blob in source mode.
    pub source_parallel: u32,
    /// Mirror transfers at once per blob once every piece is in the pool.
    pub assist_parallel: u32,
    /// A transfer that makes no progress for this long is abandoned (`transferTimeout`).
    pub stall: Duration,
    /// Mirror failures in a row that fail a download.
    pub mirror_retries: u32,
    /// The wait after a mirror failure, doubled for each further one in a row (at most 5 s).
    pub mirror_backoff: Duration,
    /// Rarest held pieces looked at per offer before a full search.
    pub scan: usize,
    /// The slowest a lane should push, in bytes per second. Lanes share this node's uplink,
    /// and what this node tells a peer (its answers to the peer's offers, its notices) waits
    /// on their connection behind the piece data queued there: where the uplink, split
    /// among `upload_slots` lanes, gives each less than this, the node uses fewer lanes at
    /// once (as many as its measured upload rate gives this each, at least one), so a thin
    /// uplink does not answer every peer late and starve its own downloads
    /// (docs/benchmarks.md, "Lanes that fit the uplink"). 0 keeps `upload_slots`.
    pub lane_rate: u64,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            upload_slots: 16,
            lookahead: 2,
            max_incoming: 128,
            busy_backoff: Duration::from_millis(200),
            source_parallel: 4,
            assist_parallel: 4,
            stall: Duration::from_secs(15),
            mirror_retries: 6,
            mirror_backoff: Duration::from_millis(300),
            scan: 64,
            lane_rate: 64_000,
        }
    }
}

/// What happened, as the runtime (or the simulator) saw it.
#[derive(Clone, Debug)]
pub enum Event {
    /// Take part in a blob of `pieces` pieces of `piece_len` bytes: a download (some
    /// missing) or a held blob.
    Open {
        task: TaskId,
        pieces: u32,
        piece_len: u64,
        have: PieceSet,
        mode: Mode,
    },
    /// Forget a blob (complete and of no more use, or failed).
    Close { task: TaskId },
    /// The scheduler failed (`Source`) or answers again (`P2p`).
    SetMode { task: TaskId, mode: Mode },
    /// The scheduler's answer to [`Action::AskFresh`].
    Fresh {
        task: TaskId,
        pieces: Vec<u32>,
        all_released: bool,
        /// Nearly every piece is leased to a first holder: the node may start its
        /// next blob (see [`crate::Releases::move_on`]).
        move_on: bool,
    },
    /// A peer takes part in a blob and holds, or is receiving, these pieces.
    Joined {
        peer: PeerId,
        task: TaskId,
        have: PieceSet,
        receiving: PieceSet,
    },
    /// A peer no longer takes part in a blob.
    Left { peer: PeerId, task: TaskId },
    /// The connection to a peer is gone.
    Gone { peer: PeerId },
    Notice {
        peer: PeerId,
        task: TaskId,
        piece: u32,
        notice: Notice,
    },
    /// A peer offers to push a piece here.
    Offered {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// A peer accepted this node's offer: the push may start.
    Accepted {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// This node's offer was refused (with why), or its push ended early (`None`: the
    /// connection failed).
    Refused {
        peer: PeerId,
        task: TaskId,
        piece: u32,
        why: Option<Refusal>,
    },
    /// A peer will not push a piece it offered and this node accepted.
    Withdrawn {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// This node's push went out whole.
    Pushed {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// Bytes of a piece arrived: `bytes` of it so far (reported at most every few hundred
    /// milliseconds, and when the first bytes come).
    Progress {
        task: TaskId,
        piece: u32,
        bytes: u64,
    },
    /// A piece arrived whole and matched its digest.
    Done {
        task: TaskId,
        piece: u32,
        from: From,
    },
    /// A transfer ended without the piece; `corrupt`: it did not match its digest.
    Failed {
        task: TaskId,
        piece: u32,
        from: From,
        corrupt: bool,
    },
}

/// What the runtime should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Offer a piece to a peer.
    Offer {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// Take a peer's offer.
    Accept {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// Refuse a peer's offer, or stop taking a push already accepted.
    Refuse {
        peer: PeerId,
        task: TaskId,
        piece: u32,
        why: Refusal,
    },
    /// Tell a peer that a piece it accepted will not come.
    Withdraw {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// Send an accepted piece.
    Push {
        peer: PeerId,
        task: TaskId,
        piece: u32,
    },
    /// Tell every member of the blob.
    Notify {
        task: TaskId,
        piece: u32,
        notice: Notice,
    },
    /// Fetch pieces `first..first + count` from the mirror in one range.
    FetchMirror {
        task: TaskId,
        first: u32,
        count: u32,
        why: MirrorWhy,
    },
    /// Stop a mirror range (a peer is sending its piece instead).
    CancelMirror { task: TaskId, first: u32 },
    /// Report leased pieces completed and (`wait`) wait for more.
    AskFresh {
        task: TaskId,
        completed: Vec<u32>,
        wait: bool,
    },
    /// Take nothing more of this blob from this peer.
    Block { peer: PeerId, task: TaskId },
    /// The download cannot complete.
    Fail { task: TaskId, reason: String },
}

/// One agent's decisions. See the module doc.
#[derive(Debug)]
pub struct Node {
    cfg: Tunables,
    seed: u64,
    tasks: HashMap<TaskId, Task>,
    peers: HashMap<PeerId, Peer>,
    /// Lanes in use (a push, or a piece offered or accepted next).
    uploading: u32,
    /// Lanes that may be in use at once: `upload_slots`, fewer on a thin uplink (see
    /// [`Tunables::lane_rate`]).
    lanes: u32,
    /// When this node last had no lane in use (or began to use one after), and its pushes
    /// within the last `send::UPLOAD_SPAN` (when, bytes): its upload rate.
    idle_at: Duration,
    pushed_bytes: std::collections::VecDeque<(Duration, u64)>,
    /// Pushes accepted here and not yet done.
    incoming: u32,
    /// Something changed that may open an offer.
    dirty: bool,
    /// How fast pushes have been arriving here, bytes per second (a moving average).
    peer_rate: Option<f64>,
    /// Every p2p download here has all its pieces in the pool: the mirror's uplink is free of
    /// fresh pieces (for the blobs this node pulls), so it may help the tail.
    released: bool,
    /// The client will ask for blobs not opened here yet (an image pulled blob by blob, its
    /// next blobs started ahead one at a time): their fresh pieces still wait on the
    /// mirror's uplink, so it does not help a tail yet ([`Node::set_more`]).
    more: bool,
    /// Blobs opened here so far: each task's place in the order this node opened them (the
    /// order its client asks for an image's blobs, which the agent opens ahead in that order).
    opened: u64,
}

impl Node {
    /// `seed` spreads tie-breaks: give every node its own (a hash of its name).
    pub fn new(cfg: Tunables, seed: u64) -> Node {
        Node {
            lanes: cfg.upload_slots,
            cfg,
            seed,
            tasks: HashMap::new(),
            peers: HashMap::new(),
            uploading: 0,
            idle_at: Duration::ZERO,
            pushed_bytes: std::collections::VecDeque::new(),
            incoming: 0,
            dirty: true,
            peer_rate: None,
            released: false,
            more: false,
            opened: 0,
        }
    }

    pub fn tunables(&self) -> &Tunables {
        &self.cfg
    }

    /// The pieces held of a blob.
    pub fn have(&self, task: TaskId) -> Option<&PieceSet> {
        self.tasks.get(&task).map(|t| &t.have)
    }

    /// Whether a blob is held whole.
    pub fn is_complete(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_some_and(|t| t.have.is_full())
    }

    /// Whether a blob taken part in is held whole and of no more use to any member: the
    /// runtime may close it.
    pub fn is_idle(&self, task: TaskId) -> bool {
        self.tasks
            .get(&task)
            .is_none_or(|t| t.have.is_full() && t.backlog() == 0)
    }

    /// The pieces of a blob this node is receiving, for a join message.
    pub fn receiving(&self, task: TaskId) -> PieceSet {
        self.tasks
            .get(&task)
            .map_or_else(|| PieceSet::empty(0), Task::receiving)
    }

    /// Every blob this node pulls in p2p mode has all its pieces in the pool: the mirror's
    /// uplink has nothing fresh left to send for them. (True with nothing pulled.)
    pub fn released(&self) -> bool {
        self.tasks
            .values()
            .all(|t| !t.wants() || t.mode != Mode::P2p || t.all_released)
    }

    /// Whether the client will ask for blobs this node has not opened yet (the agent knows
    /// the image it pulls blob by blob): until it has opened the last, the mirror's uplink
    /// still has fresh pieces to send the pool and helps no tail. An image of many small
    /// layers is all released blob by blob, and help with each blob's tail took a quarter
    /// of the mirror's uplink from the next ones' fresh pieces (docs/benchmarks.md, "One
    /// window for a pool's blobs").
    pub fn set_more(&mut self, more: bool) {
        if self.more != more {
            self.more = more;
            self.dirty = true;
        }
    }

    /// Every blob this node pulls in p2p mode is released, or leased to first holders but for
    /// what the mirror sends in about half a second ([`crate::Releases::move_on`]): the
    /// mirror's uplink has little fresh of them left to send, and a node that knows its
    /// client's next blob may start it (the agent's `ahead`).
    pub fn may_move_on(&self) -> bool {
        self.tasks
            .values()
            .all(|t| !t.wants() || t.mode != Mode::P2p || t.all_released || t.move_on)
    }

    /// Peers this node is uploading to (or has offered to).
    pub fn uploading(&self) -> u32 {
        self.uploading
    }

    /// Lanes that may be in use at once (see [`Tunables::lane_rate`]).
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// The pushes this node could still make for a blob, in pieces.
    pub fn backlog(&self, task: TaskId) -> u64 {
        self.tasks.get(&task).map_or(0, Task::backlog)
    }

    /// When [`Node::tick`] next has something to do.
    pub fn next_wakeup(&self) -> Option<Duration> {
        let stall = self.cfg.stall;
        self.tasks
            .values()
            .flat_map(|t| {
                let rescue = t.rescuable().then_some(t.last_progress + stall);
                let retry = (t.mirror_failures > 0).then_some(t.mirror_retry_at);
                let help = t.assist_waiting.then_some(t.assist_at);
                t.transfers
                    .values()
                    .map(move |t| t.last + stall)
                    .chain(rescue)
                    .chain(retry)
                    .chain(help)
            })
            .min()
    }

    /// Takes in one event. Call [`Node::decide`] after a batch of them: deciding costs the same
    /// after one event or many.
    pub fn handle(&mut self, now: Duration, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Open {
                task,
                pieces,
                piece_len,
                have,
                mode,
            } => self.open(task, (pieces, piece_len), have, mode, now),
            Event::Close { task } => self.close(task),
            Event::SetMode { task, mode } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.mode = mode;
                    t.mirror_dirty = true;
                    if mode == Mode::Source {
                        t.asking = false;
                    }
                }
            }
            Event::Fresh {
                task,
                pieces,
                all_released,
                move_on,
            } => self.fresh(task, pieces, all_released, move_on),
            Event::Joined {
                peer,
                task,
                have,
                receiving,
            } => self.join(peer, task, have, receiving),
            Event::Left { peer, task } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.tasks.remove(&task);
                }
                self.drop_member(peer, task, out);
            }
            Event::Gone { peer } => {
                if let Some(p) = self.peers.remove(&peer) {
                    if p.lane.in_use() {
                        self.uploading = self.uploading.saturating_sub(1);
                    }
                    for task in p.tasks {
                        self.drop_member(peer, task, out);
                    }
                }
                // Pushes accepted from it in blobs it had not joined here yet (its offer came
                // first, on a connection then dropped for the other end's): lost with it too.
                let from_it: Vec<(TaskId, u32)> = self
                    .tasks
                    .iter()
                    .flat_map(|(&id, t)| {
                        t.transfers
                            .keys()
                            .filter(|&&p| t.state[p as usize] == State::Incoming(peer))
                            .map(move |&p| (id, p))
                    })
                    .collect();
                for (task, piece) in from_it {
                    self.end_incoming(task, piece, out);
                }
            }
            Event::Notice {
                peer,
                task,
                piece,
                notice,
            } => self.notice(peer, task, piece, notice),
            Event::Offered { peer, task, piece } => self.offered(peer, task, piece, now, out),
            Event::Accepted { peer, task, piece } => self.accepted(peer, task, piece, out),
            Event::Refused {
                peer,
                task,
                piece,
                why,
            } => self.refused(peer, task, piece, why, now, out),
            Event::Pushed { peer, task, piece } => self.pushed(peer, task, piece, now, out),
            Event::Withdrawn { peer, task, piece } => {
                let from_it = self
                    .tasks
                    .get(&task)
                    .is_some_and(|t| t.state.get(piece as usize) == Some(&State::Incoming(peer)));
                if from_it {
                    self.end_incoming(task, piece, out);
                }
            }
            Event::Progress { task, piece, bytes } => {
                let Some(t) = self.tasks.get_mut(&task) else {
                    return;
                };
                if let Some(tr) = t.transfers.get_mut(&piece) {
                    tr.last = now;
                    tr.bytes = bytes;
                }
                if let Some(State::Incoming(peer)) = t.state.get(piece as usize) {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.last_data = now;
                    }
                }
            }
            Event::Done { task, piece, from } => self.done(task, piece, from, now, out),
            Event::Failed {
                task,
                piece,
                from,
                corrupt,
            } => self.failed(task, piece, from, corrupt, now, out),
        }
    }

    /// Abandons stalled transfers and rescues stalled downloads, then decides.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        // A busy peer's back-off may have passed.
        self.dirty = true;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.abandon_stalled(id, now, out);
            self.rescue(id, now, out);
        }
        self.expire_offers(now, out);
        self.decide(now, out);
    }

    /// Everything that follows from the state: mirror fetches, scheduler asks, offers.
    pub fn decide(&mut self, now: Duration, out: &mut Vec<Action>) {
        // The mirror helps a blob's tail only once no blob pulled here waits on it for fresh
        // pieces: an image's small layers are all released long before its large ones, and
        // their help would take the mirror's uplink from fresh pieces the pool has nowhere else.
        let released = self.released() && !self.more;
        if released && !self.released {
            for t in self.tasks.values_mut() {
                t.mirror_dirty = true;
            }
        }
        self.released = released;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.decide_mirror(id, now, out);
            self.decide_ask(id, out);
        }
        let was_idle = self.uploading == 0;
        if self.dirty {
            self.dirty = false;
            while let Some((peer, task, piece)) = self.pick_offer(now) {
                self.offer(peer, task, piece, now, out);
            }
        }
        // Idle, or busy from now on: a span measures the uplink from here.
        if was_idle || self.uploading == 0 {
            self.idle_at = now;
        }
    }

    fn open(&mut self, id: TaskId, size: (u32, u64), have: PieceSet, mode: Mode, now: Duration) {
        let (pieces, piece_len) = size;
        if self.tasks.contains_key(&id) {
            return;
        }
        let mut task = Task::new(pieces, piece_len, mode, now);
        task.order = self.opened;
        self.opened += 1;
        if have.len() == pieces {
            for piece in have.iter() {
                task.gain(self.seed, piece);
            }
        }
        self.tasks.insert(id, task);
        self.dirty = true;
    }

    fn close(&mut self, id: TaskId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        for peer in task.members.keys() {
            if let Some(p) = self.peers.get_mut(peer) {
                p.tasks.remove(&id);
            }
        }
        for s in &task.state {
            if let task::State::Incoming(peer) = s {
                self.incoming = self.incoming.saturating_sub(1);
                if let Some(p) = self.peers.get_mut(peer) {
                    p.incoming = p.incoming.saturating_sub(1);
                }
            }
        }
        // Its pieces offered or queued on a lane are not pushed (the runtime has no blob to
        // push them from, and a push that never starts would hold the lane for good); a push
        // under way ends as pushes do.
        for p in self.peers.values_mut() {
            let was = p.lane.in_use();
            p.lane.next.retain(|n| n.task != id);
            if was && !p.lane.in_use() {
                self.uploading = self.uploading.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
