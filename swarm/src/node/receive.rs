//! The receiving side: members joining and their notices, offers accepted or refused, pieces
//! landing or failing, transfers that stall.

use super::task::{Member, State, Task, Transfer};
use super::{Action, From, Node, Notice, PeerId, Refusal, TaskId};
use crate::pieces::PieceSet;
use std::time::Duration;

impl Node {
    pub(super) fn join(&mut self, peer: PeerId, id: TaskId, have: PieceSet, receiving: PieceSet) {
        let seed = self.seed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let pieces = task.pieces();
        if task.blocked.contains(&peer) || have.len() != pieces || receiving.len() != pieces {
            return;
        }
        task.remove_member(seed, peer);
        let mut receiving = receiving;
        for piece in have.iter() {
            receiving.remove(piece);
        }
        for piece in have.iter().chain(receiving.iter()) {
            task.bump(seed, piece, true);
        }
        task.members.insert(peer, Member { have, receiving });
        self.peers.entry(peer).or_default().tasks.insert(id);
        self.dirty = true;
    }

    /// Forgets what `peer` held of a blob; a push it was sending here is over.
    pub(super) fn drop_member(&mut self, peer: PeerId, id: TaskId, out: &mut Vec<Action>) {
        let seed = self.seed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.remove_member(seed, peer);
        let from_it: Vec<u32> = (0..task.pieces())
            .filter(|&p| task.state[p as usize] == State::Incoming(peer))
            .collect();
        for piece in from_it {
            // Its bytes must stop landing here (the piece may go to another sender).
            out.push(Action::Refuse {
                peer,
                task: id,
                piece,
                why: Refusal::Unwanted,
            });
            self.end_incoming(id, piece, out);
        }
        self.dirty = true;
    }

    pub(super) fn notice(&mut self, peer: PeerId, id: TaskId, piece: u32, notice: Notice) {
        let seed = self.seed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let lacks_again = task.member_news(seed, peer, piece, |m| match notice {
            Notice::Have => {
                m.receiving.remove(piece);
                m.have.insert(piece);
            }
            Notice::Receiving => {
                if !m.have.contains(piece) {
                    m.receiving.insert(piece);
                }
            }
            Notice::NotReceiving => {
                m.receiving.remove(piece);
            }
        });
        self.dirty |= lacks_again;
    }

    /// A peer offers a piece: take it if it is missing here and there is room.
    pub(super) fn offered(
        &mut self,
        peer: PeerId,
        id: TaskId,
        piece: u32,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        // A sender has one push under way per lane and `lookahead` pieces offered behind it:
        // more accepted from one peer at once is a peer not playing by the protocol.
        let per_peer = self.cfg.lookahead + 1;
        let full = self.incoming >= self.cfg.max_incoming
            || self
                .peers
                .get(&peer)
                .is_some_and(|p| p.incoming >= per_peer);
        let refuse = |why| Action::Refuse {
            peer,
            task: id,
            piece,
            why,
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            out.push(refuse(Refusal::Unwanted));
            return;
        };
        if piece >= task.pieces() || task.blocked.contains(&peer) || task.failed {
            out.push(refuse(Refusal::Unwanted));
            return;
        }
        match task.state[piece as usize] {
            State::Have => out.push(refuse(Refusal::Have)),
            State::Incoming(_) | State::Mirror => out.push(refuse(Refusal::Receiving)),
            State::Assist if !peer_sooner(task, piece, now, self.peer_rate) => {
                out.push(refuse(Refusal::Receiving))
            }
            State::Missing if full => out.push(refuse(Refusal::Busy)),
            State::Missing | State::Assist => {
                if task.state[piece as usize] == State::Assist {
                    task.runs
                        .retain(|&(first, end)| !(first..end).contains(&piece));
                    task.mirror_dirty = true;
                    task.assist_at = now + overtaken_pause(task.piece_len, self.peer_rate);
                    task.assist_window = (task.assist_window / 2).max(1);
                    out.push(Action::CancelMirror {
                        task: id,
                        first: piece,
                    });
                }
                task.state[piece as usize] = State::Incoming(peer);
                task.transfers.insert(piece, Transfer::new(now));
                self.incoming += 1;
                let p = self.peers.entry(peer).or_default();
                p.last_data = p.last_data.max(now);
                p.incoming += 1;
                out.push(Action::Accept {
                    peer,
                    task: id,
                    piece,
                });
                out.push(Action::Notify {
                    task: id,
                    piece,
                    notice: Notice::Receiving,
                });
            }
        }
    }

    /// A transfer coming in ended without the piece.
    pub(super) fn end_incoming(&mut self, id: TaskId, piece: u32, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let announced = match task.state[piece as usize] {
            State::Incoming(peer) => {
                self.incoming = self.incoming.saturating_sub(1);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.incoming = p.incoming.saturating_sub(1);
                }
                true
            }
            State::Mirror => true,
            State::Assist => false,
            State::Missing | State::Have => return,
        };
        task.state[piece as usize] = State::Missing;
        task.transfers.remove(&piece);
        task.prune_runs();
        task.mirror_dirty = true;
        // A piece leased here that a peer was sending: the pool still waits on this node for
        // it, so it goes back to the mirror.
        if task.leased.contains(&piece) && !task.leases.contains(&piece) {
            task.leases.push_front(piece);
        }
        if announced {
            out.push(Action::Notify {
                task: id,
                piece,
                notice: Notice::NotReceiving,
            });
        }
        self.dirty = true;
    }

    pub(super) fn done(
        &mut self,
        id: TaskId,
        piece: u32,
        from: From,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let seed = self.seed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if piece >= task.pieces() {
            return;
        }
        match task.state[piece as usize] {
            State::Have => return,
            State::Incoming(peer) => {
                self.incoming = self.incoming.saturating_sub(1);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.incoming = p.incoming.saturating_sub(1);
                }
                if from != From::Peer(peer) {
                    // It came another way first: stop the push.
                    out.push(Action::Refuse {
                        peer,
                        task: id,
                        piece,
                        why: Refusal::Have,
                    });
                }
            }
            State::Mirror | State::Assist | State::Missing => {}
        }
        if from == From::Mirror {
            task.mirror_failures = 0;
            if task.state[piece as usize] == State::Assist {
                task.assist_window = (task.assist_window + 1).min(self.cfg.assist_parallel);
            }
        }
        if let From::Peer(p) = from {
            if let Some(p) = self.peers.get_mut(&p) {
                p.last_data = now;
            }
        }
        if let (Some(t), From::Peer(_)) = (task.transfers.remove(&piece), from) {
            // How fast pushes arrive here, to weigh a peer's offer against the mirror.
            let secs = now.saturating_sub(t.since).as_secs_f64().max(1e-3);
            let rate = task.piece_len as f64 / secs;
            self.peer_rate = Some(self.peer_rate.map_or(rate, |r| 0.8 * r + 0.2 * rate));
        }
        task.last_progress = now;
        task.mirror_dirty = true;
        task.gain(seed, piece);
        task.prune_runs();
        if task.leased.remove(&piece) {
            task.completed.push(piece);
        }
        out.push(Action::Notify {
            task: id,
            piece,
            notice: Notice::Have,
        });
        self.dirty = true;
    }

    pub(super) fn failed(
        &mut self,
        id: TaskId,
        piece: u32,
        from: From,
        corrupt: bool,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let (retries, backoff) = (self.cfg.mirror_retries, self.cfg.mirror_backoff);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if piece >= task.pieces() {
            return;
        }
        // Only the transfer that holds the piece now can fail it.
        let current = match (task.state[piece as usize], from) {
            (State::Incoming(p), From::Peer(q)) => p == q,
            (State::Mirror | State::Assist, From::Mirror) => true,
            _ => false,
        };
        if !current {
            return;
        }
        match from {
            From::Peer(peer) => {
                if corrupt {
                    self.block(id, peer, out);
                }
            }
            From::Mirror => {
                task.mirror_failures += 1;
                let wait = backoff.saturating_mul(1 << (task.mirror_failures - 1).min(5));
                task.mirror_retry_at = now + wait.min(Duration::from_secs(5));
                if task.mirror_failures > retries && !task.failed {
                    task.failed = true;
                    out.push(Action::Fail {
                        task: id,
                        reason: format!("the mirror failed {retries} times in a row"),
                    });
                }
            }
        }
        self.end_incoming(id, piece, out);
    }

    /// Takes nothing more of a blob from `peer`.
    pub(super) fn block(&mut self, id: TaskId, peer: PeerId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.blocked.insert(peer) {
            out.push(Action::Block { peer, task: id });
            if let Some(p) = self.peers.get_mut(&peer) {
                p.tasks.remove(&id);
            }
            self.drop_member(peer, id, out);
        }
    }

    /// Pushes accepted here that made no progress for `stall`: refused, and their sender
    /// blocked for the blob. (Mirror transfers time out in the runtime, which reports them.)
    pub(super) fn abandon_stalled(&mut self, id: TaskId, now: Duration, out: &mut Vec<Action>) {
        let stall = self.cfg.stall;
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let peers = &self.peers;
        let stalled: Vec<(u32, PeerId)> = task
            .transfers
            .iter()
            .filter_map(|(&p, t)| match task.state[p as usize] {
                State::Incoming(peer) => {
                    let moved = peers.get(&peer).map_or(t.last, |q| q.last_data.max(t.last));
                    (now.saturating_sub(moved) >= stall).then_some((p, peer))
                }
                _ => None,
            })
            .collect();
        for (piece, peer) in stalled {
            out.push(Action::Refuse {
                peer,
                task: id,
                piece,
                why: Refusal::Unwanted,
            });
            self.block(id, peer, out);
            self.end_incoming(id, piece, out);
        }
    }
}

/// How long tail help waits after a peer overtook one of its ranges: the time a push of one
/// piece has been taking (50 ms before any was measured), within 5 to 500 ms.
fn overtaken_pause(piece_len: u64, peer_rate: Option<f64>) -> Duration {
    let secs = peer_rate
        .filter(|r| *r > 0.0)
        .map_or(0.05, |r| piece_len as f64 / r);
    Duration::from_secs_f64(secs.clamp(0.005, 0.5))
}

/// How many times sooner than the mirror's help a peer must be expected to deliver a piece to
/// take it over. Taking over throws away what the mirror's uplink already carried of the piece,
/// and help matters where that uplink is what the pool waits on (nodes uploading a fifth of
/// their download): at 1, an image on such links had 414-424 help ranges overtaken per run and
/// the mirror sent 3.22 copies; at 4, 339-353 and 3.19-3.21, last node 1.10 against 1.11-1.12
/// (docs/benchmarks.md). A help range that crawls (a stalled connection) still gives way.
const OVERTAKE_MARGIN: f64 = 4.0;

/// Whether a peer should deliver a piece much sooner ([`OVERTAKE_MARGIN`]) than the mirror
/// transfer helping with it: the mirror's bytes so far at its rate so far against a whole piece
/// at the rate pushes have been arriving. A transfer that has not moved yet, or with no pushes
/// measured, gives way.
fn peer_sooner(task: &Task, piece: u32, now: Duration, peer_rate: Option<f64>) -> bool {
    let (Some(t), Some(peer_rate)) = (task.transfers.get(&piece), peer_rate) else {
        return true;
    };
    let elapsed = now.saturating_sub(t.since).as_secs_f64();
    if t.bytes == 0 || elapsed <= 0.0 {
        return true;
    }

    let mirror_rate = t.bytes as f64 / elapsed;
    let left = task.piece_len.saturating_sub(t.bytes) as f64;
    OVERTAKE_MARGIN * task.piece_len as f64 / peer_rate < left / mirror_rate
}
