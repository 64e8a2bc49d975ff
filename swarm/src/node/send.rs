//! The sending side: which piece to offer to whom, and what follows the answer. Each peer has
//! one lane: a push under way and the next piece offered while it runs.

use super::task::{Lane, Next, Task};
use super::{Action, Node, PeerId, Refusal, TaskId};
use crate::mix;
use std::time::Duration;

impl Node {
    /// A peer whose lane can take an offer, with a piece held here that it lacks: a blob with a
    /// piece only this node holds first (fresh from the mirror: held back, it would leave the
    /// pool a tail only this uplink can serve), then the blob opened first (the client waits
    /// for it; blobs fetched ahead of it come after); in it the member holding least (keeping
    /// every node in step with the mirror leaves no node a long tail), and for it the rarest
    /// such piece.
    pub(super) fn pick_offer(&self, now: Duration) -> Option<(PeerId, TaskId, u32)> {
        // Past its lanes (the uplink measured thinner since they opened), a lane in use takes
        // no more offers until enough of them are idle.
        let room = self.uploading < self.lanes;
        let over = self.uploading > self.lanes;
        // (a piece held here alone?, blob's order, member's holding, tie-break), blob, member.
        type Candidate = ((bool, u64, u32, u64), TaskId, PeerId);
        let mut candidates: Vec<Candidate> = Vec::new();
        for (&id, task) in &self.tasks {
            if task.backlog() == 0 {
                continue;
            }
            // `rank` leads with the held piece fewest members hold or receive: none, it is
            // held here alone.
            let shared = task.rank.first().is_none_or(|k| k.0 != 0);
            for (&peer, m) in &task.members {
                let Some(p) = self.peers.get(&peer) else {
                    continue;
                };
                let open = (p.lane.next.len() as u32) < self.cfg.lookahead.max(1)
                    && if p.lane.in_use() { !over } else { room };
                if !open || p.busy_until.is_some_and(|t| now < t) {
                    continue;
                }
                candidates.push((
                    (shared, task.order, m.holding(), mix(self.seed ^ peer, id)),
                    id,
                    peer,
                ));
            }
        }
        candidates.sort_unstable();
        candidates.into_iter().find_map(|(_, id, peer)| {
            self.rarest_for(&self.tasks[&id], peer)
                .map(|piece| (peer, id, piece))
        })
    }

    /// The rarest piece held here that `peer` lacks.
    fn rarest_for(&self, task: &Task, peer: PeerId) -> Option<u32> {
        let m = task.members.get(&peer)?;
        task.rank
            .iter()
            .take(self.cfg.scan)
            .find(|k| m.lacks(k.2))
            .map(|k| k.2)
            .or_else(|| {
                task.have
                    .without(&m.have, &m.receiving)
                    .min_by_key(|&p| (task.counts[p as usize], mix(self.seed, u64::from(p))))
            })
    }

    pub(super) fn offer(
        &mut self,
        peer: PeerId,
        id: TaskId,
        piece: u32,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let seed = self.seed;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.lane.in_use() {
            self.uploading += 1;
        }
        p.lane.next.push_back(Next {
            task: id,
            piece,
            accepted: false,
            at: now,
        });
        // Not offered to it again, nor counted as lacking it, until it answers.
        if let Some(task) = self.tasks.get_mut(&id) {
            task.member_news(seed, peer, piece, |m| {
                m.receiving.insert(piece);
            });
        }
        out.push(Action::Offer {
            peer,
            task: id,
            piece,
        });
    }

    /// The receiver took the offer: push it now, or when the pushes before it end.
    pub(super) fn accepted(&mut self, peer: PeerId, id: TaskId, piece: u32, out: &mut Vec<Action>) {
        let lane = self.peers.get_mut(&peer).map(|p| &mut p.lane);
        let next = lane.and_then(|l| {
            let k = l
                .next
                .iter()
                .position(|n| n.task == id && n.piece == piece && !n.accepted)?;
            l.next[k].accepted = true;
            Some(l)
        });
        match next {
            Some(lane) => Self::advance(lane, peer, out),
            None => out.push(Action::Withdraw {
                peer,
                task: id,
                piece,
            }),
        }
    }

    /// The push went out whole (the receiver's `Have` follows once it verified the piece);
    /// the accepted next piece starts.
    pub(super) fn pushed(
        &mut self,
        peer: PeerId,
        id: TaskId,
        piece: u32,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let ended = match self.peers.get_mut(&peer) {
            Some(p) if p.lane.push == Some((id, piece)) => {
                p.lane.push = None;
                true
            }
            _ => false,
        };
        if ended {
            if let Some(len) = self.tasks.get(&id).map(|t| t.piece_len) {
                self.measure_upload(len, now);
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                Self::advance(&mut p.lane, peer, out);
                if !p.lane.in_use() {
                    self.uploading = self.uploading.saturating_sub(1);
                }
            }
        }
        self.dirty = true;
    }

    /// Starts the first accepted piece of an idle lane, in the order offered (an accepted
    /// piece does not wait behind one whose answer is still on its way).
    fn advance(lane: &mut Lane, peer: PeerId, out: &mut Vec<Action>) {
        if lane.push.is_some() {
            return;
        }
        if let Some(k) = lane.next.iter().position(|n| n.accepted) {
            let Some(next) = lane.next.remove(k) else {
                return;
            };
            lane.push = Some((next.task, next.piece));
            out.push(Action::Push {
                peer,
                task: next.task,
                piece: next.piece,
            });
        }
    }

    /// The offer was refused, or the push ended early (`None`: the connection failed).
    pub(super) fn refused(
        &mut self,
        peer: PeerId,
        id: TaskId,
        piece: u32,
        why: Option<Refusal>,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let seed = self.seed;
        let backoff = self.cfg.busy_backoff;
        if let Some(p) = self.peers.get_mut(&peer) {
            let was = p.lane.in_use();
            p.lane.next.retain(|n| !(n.task == id && n.piece == piece));
            if p.lane.push == Some((id, piece)) {
                p.lane.push = None;
                Self::advance(&mut p.lane, peer, out);
            }
            if was && !p.lane.in_use() {
                self.uploading = self.uploading.saturating_sub(1);
            }
            if why == Some(Refusal::Busy) {
                p.busy_until = Some(now + backoff);
            }
        }
        self.dirty = true;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        match why {
            Some(Refusal::Unwanted) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.tasks.remove(&id);
                }
                task.remove_member(seed, peer);
            }
            Some(Refusal::Have) => {
                task.member_news(seed, peer, piece, |m| {
                    m.receiving.remove(piece);
                    m.have.insert(piece);
                });
            }
            // Coming from elsewhere: its notices say when that ends.
            Some(Refusal::Receiving) => {}
            Some(Refusal::Busy) | None => {
                task.member_news(seed, peer, piece, |m| {
                    m.receiving.remove(piece);
                });
            }
        }
    }

    /// Offers a peer has left unanswered for `stall` end as if refused (an answer that comes
    /// later is told the piece is withdrawn), and that peer is offered nothing for as long
    /// again: a peer that never answers holds a lane no longer than that, which matters where
    /// the uplink leaves a node one or two.
    pub(super) fn expire_offers(&mut self, now: Duration, out: &mut Vec<Action>) {
        let stall = self.cfg.stall;
        let late: Vec<(PeerId, TaskId, u32)> = self
            .peers
            .iter()
            .flat_map(|(&peer, p)| {
                p.lane
                    .next
                    .iter()
                    .filter(move |n| !n.accepted && n.at + stall <= now)
                    .map(move |n| (peer, n.task, n.piece))
            })
            .collect();
        for (peer, id, piece) in late {
            self.refused(peer, id, piece, None, now, out);
            // Offered nothing for as long again: it would take the lane back at once.
            if let Some(p) = self.peers.get_mut(&peer) {
                p.busy_until = Some(now + stall);
            }
        }
    }

    /// A push of `len` bytes went out. The node's upload rate is what its pushes sent over the
    /// last [`UPLOAD_SPAN`]; while more lanes are in use than that rate gives
    /// [`Tunables::lane_rate`] each, the uplink is what holds them back, and lanes open only
    /// as many at once as it gives (at least one). With fewer in use the rate may be what
    /// this node had to send, not what its uplink can: lanes then only grow.
    fn measure_upload(&mut self, len: u64, now: Duration) {
        if self.cfg.lane_rate == 0 {
            return;
        }
        self.pushed_bytes.push_back((now, len));
        while self
            .pushed_bytes
            .front()
            .is_some_and(|&(t, _)| t + UPLOAD_SPAN <= now)
        {
            self.pushed_bytes.pop_front();
        }
        // Only a span with some lane in use throughout measures the uplink.
        if now < self.idle_at + UPLOAD_SPAN {
            return;
        }
        let sent: u64 = self.pushed_bytes.iter().map(|&(_, n)| n).sum();
        let rate = sent as f64 / UPLOAD_SPAN.as_secs_f64();
        let fits = ((rate / self.cfg.lane_rate as f64).floor() as u32)
            .clamp(1, self.cfg.upload_slots.max(1));
        if fits > self.lanes || self.uploading > fits {
            self.lanes = fits;
        }
    }
}

/// The span over which a node's pushes measure its upload rate ([`Tunables::lane_rate`]).
const UPLOAD_SPAN: Duration = Duration::from_secs(2);
