//! The actor: the one task that owns `swarm::Node` and the runtime's view of blobs and peers,
//! turns what happens into events and the decisions into frames, ranges and requests.

use super::conn::{self, ConnHandle, Out, Sinks};
use super::wire::{self, Frame, Join};
use super::{fetch, peers, schedule, Input, PeerId};
use crate::download::Download;
use crate::state::AgentState;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::reference::Digest;
use swarm::{Action, Event, From, Mode, Node, Notice, PieceSet};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the actor looks at time: stalled transfers, back-offs, idle blobs.
const TICK: Duration = Duration::from_millis(100);
/// A held blob nobody has wanted a piece of for this long is closed.
const IDLE_HELD: Duration = Duration::from_secs(10);
/// Most inputs taken in before deciding.
const BATCH: usize = 4096;

/// A blob opened from the cache to serve a peer.
pub struct HeldBlob {
    pub digest: Digest,
    pub layout: nodepool::PieceLayout,
    pub file: Arc<File>,
}

struct TaskRt {
    digest: Digest,
    layout: nodepool::PieceLayout,
    file: Arc<File>,
    /// `None`: a held blob served to peers.
    download: Option<Arc<Download>>,
    /// Peers told this node takes part (JOIN sent), and peers that told it.
    told: HashSet<PeerId>,
    members: HashSet<PeerId>,
    /// Members the scheduler named: connected to and told.
    named: HashSet<String>,
    /// Mirror ranges under way: first piece -> (the request, its piece count).
    ranges: HashMap<u32, (JoinHandle<()>, u32)>,
    /// The long-poll for the next lease, and the report of completed leases, under way.
    poll: Option<JoinHandle<()>>,
    report: Option<JoinHandle<()>>,
    joiner: Option<JoinHandle<()>>,
    /// The scheduler answered a join: fresh pieces may be asked for (an ask sent before the
    /// scheduler knows the node takes part would be refused).
    joined: bool,
    /// The decisions want the next lease.
    wants_lease: bool,
    /// Completed leases not yet reported.
    unreported: Vec<u32>,
    /// Arrivals waiting for their digest.
    parked: HashMap<u32, (Option<PeerId>, [u8; 32])>,
    /// The mirror's proofs of this node's pieces (the download's, kept once it ends), sent to
    /// peers ahead of a piece. `None` for a blob opened from the cache.
    proofs: Option<crate::download::Proofs>,
    idle_since: Option<Instant>,
}

impl TaskRt {
    /// A blob's runtime record with nothing under way yet: a download (`joiner`: its
    /// scheduler join loop, in p2p mode), or a held blob served to peers (`download: None`).
    fn new(
        digest: Digest,
        layout: nodepool::PieceLayout,
        file: Arc<File>,
        download: Option<Arc<Download>>,
        joiner: Option<JoinHandle<()>>,
    ) -> TaskRt {
        TaskRt {
            joined: download.is_none(),
            proofs: download.as_ref().map(|d| d.proofs.clone()),
            digest,
            layout,
            file,
            download,
            told: HashSet::new(),
            members: HashSet::new(),
            named: HashSet::new(),
            ranges: HashMap::new(),
            poll: None,
            report: None,
            joiner,
            wants_lease: false,
            unreported: Vec::new(),
            parked: HashMap::new(),
            idle_since: None,
        }
    }

    fn join_frame(&self, node: &Node, key: u64) -> Frame {
        let pieces = self.layout.count();
        Frame::Join(Join {
            digest: self.digest.sha256(),
            size: self.layout.size(),
            piece_size: self.layout.piece_size(),
            have: node
                .have(key)
                .cloned()
                .unwrap_or_else(|| PieceSet::empty(pieces)),
            receiving: node.receiving(key),
        })
    }

    fn stop(&mut self) {
        for (_, (h, _)) in self.ranges.drain() {
            h.abort();
        }
        for h in [self.poll.take(), self.report.take(), self.joiner.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
    }
}

struct PeerRt {
    conn: ConnHandle,
    node: String,
}

pub(super) struct Actor {
    pub state: Arc<AgentState>,
    node: Node,
    tasks: HashMap<u64, TaskRt>,
    peers: HashMap<PeerId, PeerRt>,
    by_name: HashMap<String, PeerId>,
    pub dialing: HashSet<String>,
    /// JOINs for blobs being opened from the cache.
    waiting_held: HashMap<u64, Vec<(PeerId, Join)>>,
    sinks: Arc<Sinks>,
    pub tx: mpsc::UnboundedSender<Input>,
    next_peer: PeerId,
    epoch: Instant,
    out: Vec<Action>,
    /// The node could move on to its next blob when last looked at (`Node::may_move_on`).
    move_on: bool,
    /// A client asked for a blob since the last look at working ahead.
    ahead_due: bool,
}

/// Starts the actor and the peer listener; returns the handle downloads use.
pub fn start(
    state: Arc<AgentState>,
    rx: mpsc::UnboundedReceiver<Input>,
    swarm: super::Swarm,
    listener: tokio::net::TcpListener,
) -> Vec<JoinHandle<()>> {
    let tx = swarm.tx;
    let seed = swarm::mix(0x706f_6f6c, fnv(&state.node));
    let actor = Actor {
        node: Node::new(super::tunables(&state.cfg), seed),
        tasks: HashMap::new(),
        peers: HashMap::new(),
        by_name: HashMap::new(),
        dialing: HashSet::new(),
        waiting_held: HashMap::new(),
        sinks: Arc::new(Sinks::default()),
        tx: tx.clone(),
        next_peer: 1,
        epoch: Instant::now(),
        out: Vec::new(),
        move_on: false,
        ahead_due: false,
        state: state.clone(),
    };
    vec![
        tokio::spawn(actor.run(rx)),
        tokio::spawn(peers::listen(state, listener, tx)),
    ]
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Actor {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(input);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(input) => self.input(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = self.now();
                    self.tell_more();
                    self.node.tick(now, &mut self.out);
                    self.close_idle();
                }
            }
            let now = self.now();
            self.node.decide(now, &mut self.out);
            self.execute();
            self.work_ahead();
        }
    }

    /// Tells the decisions, once a tick, whether the client will still ask for blobs of an
    /// image not opened here yet (`swarm::Node::set_more`): the mirror helps no tail until then.
    fn tell_more(&mut self) {
        let at = Instant::now();
        let more = (self.state.ahead.lock()).pending(at, |c| {
            at.saturating_duration_since(c.asked) < crate::registry::PULLING
        });
        self.node.set_more(more);
    }

    /// Once what this node pulls is leased to first holders but for what the mirror sends in
    /// about half a second (`swarm::Releases::move_on`), or when a client asks for a blob
    /// while that holds, starts the next blob of an image the client is pulling blob by blob
    /// (`storage::ahead`), so the origin's and the mirror's links move on to it at once.
    fn work_ahead(&mut self) {
        let leased = self.node.may_move_on();
        let due = std::mem::take(&mut self.ahead_due) || (leased && !self.move_on);
        self.move_on = leased;
        if !(leased && due) {
            return;
        }
        let next = self.state.ahead.lock().next(Instant::now());
        if let Some(next) = next {
            tracing::debug!(digest = %next.digest, repo = next.repo, "blob started ahead of the client");
            tokio::spawn(crate::registry::work_ahead(self.state.clone(), next));
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        self.node.handle(now, event, &mut self.out);
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Start(d) => self.start_download(d),
            Input::Layout { task } => self.unpark(task),
            Input::Ended { task, stored } => self.ended(task, stored),
            Input::Connected {
                greeted,
                pending,
                dialed,
            } => self.connected(greeted, pending, dialed),
            Input::DialFailed { node, why } => {
                tracing::debug!(peer = %node, %why, "could not reach a member");
                self.dialing.remove(&node);
            }
            Input::Frame { peer, frame } => self.frame(peer, frame),
            Input::Gone { peer, why } => self.gone(peer, &why),
            Input::Arrived {
                peer,
                task,
                piece,
                hash,
                proof,
            } => self.arrived(peer, task, piece, hash, proof),
            Input::Progress { task, piece, bytes } => {
                self.handle(Event::Progress { task, piece, bytes })
            }
            Input::Pushed {
                peer,
                task,
                piece,
                ok,
            } => {
                let lanes = self.node.lanes();
                self.handle(if ok {
                    Event::Pushed { peer, task, piece }
                } else {
                    Event::Refused {
                        peer,
                        task,
                        piece,
                        why: None,
                    }
                });
                if self.node.lanes() != lanes {
                    tracing::debug!(
                        lanes = self.node.lanes(),
                        uploading = self.node.uploading(),
                        "upload lanes fit the uplink"
                    );
                }
            }
            Input::MirrorFailed {
                task,
                first,
                piece,
                why,
            } => self.mirror_failed(task, first, piece, &why),
            Input::Held { task, held } => self.held(task, held),
            Input::Members { task, answer } => self.members(task, answer),
            Input::Fresh { task, answer } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.poll = None;
                }
                match answer {
                    Ok(f) => {
                        let held = self.node.have(task).map_or(0, |h| h.count());
                        tracing::debug!(task, pieces = ?f.pieces, all_released = f.all_released, move_on = f.move_on, held, "fresh pieces leased");
                        self.handle(Event::Fresh {
                            task,
                            pieces: f.pieces,
                            all_released: f.all_released,
                            move_on: f.move_on,
                        })
                    }
                    Err(e) => {
                        tracing::debug!(task, error = %e, "scheduler unreachable; pieces come from the mirror");
                        self.state.metrics.scheduler_errors.inc();
                        self.handle(Event::SetMode {
                            task,
                            mode: Mode::Source,
                        });
                    }
                }
            }
            Input::WorkAhead => self.ahead_due = true,
            Input::Reported { task, completed } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.report = None;
                    // Failed: reported again with the next completion (or the lease lapses).
                    if let Some(mut again) = completed {
                        again.append(&mut t.unreported);
                        t.unreported = again;
                    }
                }
                self.send_report(task);
            }
        }
    }

    fn start_download(&mut self, d: Arc<Download>) {
        let key = d.key();
        if self.tasks.contains_key(&key) {
            return;
        }
        let p2p = self.state.p2p();
        let pieces = d.layout.count();
        self.tasks.insert(
            key,
            TaskRt::new(
                d.spec.digest.clone(),
                d.layout,
                d.file.clone(),
                Some(d.clone()),
                p2p.then(|| schedule::join_loop(self.state.clone(), d.clone(), self.tx.clone())),
            ),
        );
        self.handle(Event::Open {
            task: key,
            pieces,
            piece_len: d.layout.piece_size(),
            have: PieceSet::empty(pieces),
            mode: if p2p { Mode::P2p } else { Mode::Source },
        });
    }

    fn ended(&mut self, key: u64, stored: bool) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if let Some(h) = t.joiner.take() {
            h.abort();
        }
        if stored {
            // Now a held blob: kept open while members still want pieces of it.
            t.download = None;
            return;
        }
        self.close(key);
    }

    fn close(&mut self, key: u64) {
        let Some(mut t) = self.tasks.remove(&key) else {
            return;
        };
        t.stop();
        for peer in t.told.iter().chain(t.members.iter()) {
            if let Some(p) = self.peers.get(peer) {
                p.conn.send(Out::Frame(Frame::Leave { task: key }));
            }
        }
        self.handle(Event::Close { task: key });
    }

    /// Held blobs of no more use to anyone are closed after a while.
    fn close_idle(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (&key, t) in self.tasks.iter_mut() {
            let idle = t.download.is_none() && self.node.is_idle(key);
            match (idle, t.idle_since) {
                (false, _) => t.idle_since = None,
                (true, None) => t.idle_since = Some(now),
                (true, Some(since)) if now - since >= IDLE_HELD => gone.push(key),
                (true, Some(_)) => {}
            }
        }
        for key in gone {
            self.close(key);
        }
    }

    fn connected(&mut self, greeted: conn::Greeted, pending: bytes::BytesMut, dialed: bool) {
        let hello = greeted.hello.clone();
        self.dialing.remove(&hello.node);
        if !self.state.reachable.read().contains(&hello.pool) {
            tracing::info!(peer = %hello.node, pool = %hello.pool, "refused a peer of a pool that does not reach this one");
            return;
        }
        // One connection per pair: when both dialled, the one the lower name dialled stays.
        if let Some(&old) = self.by_name.get(&hello.node) {
            let me = &self.state.node;
            let keep_new = if dialed {
                me < &hello.node
            } else {
                &hello.node < me
            };
            if !keep_new {
                return;
            }
            self.gone(old, "replaced by the other end's connection");
        }
        let peer = self.next_peer;
        self.next_peer += 1;
        let conn = conn::run(
            self.state.clone(),
            peer,
            greeted,
            pending,
            self.sinks.clone(),
            self.tx.clone(),
        );
        tracing::debug!(peer = %hello.node, id = peer, "peer connected");
        self.by_name.insert(hello.node.clone(), peer);
        self.peers.insert(
            peer,
            PeerRt {
                conn,
                node: hello.node,
            },
        );
        // Tell it of every blob the scheduler named it for.
        let name = self.peers[&peer].node.clone();
        let keys: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.named.contains(&name))
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.tell(key, peer);
        }
    }

    /// Sends this node's JOIN for a blob to a peer, once.
    fn tell(&mut self, key: u64, peer: PeerId) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if !t.told.insert(peer) {
            return;
        }
        let frame = t.join_frame(&self.node, key);
        if let Some(p) = self.peers.get(&peer) {
            p.conn.send(Out::Frame(frame));
        }
    }

    fn gone(&mut self, peer: PeerId, why: &str) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        tracing::debug!(peer = %p.node, id = peer, %why, "peer connection gone");
        if self.by_name.get(&p.node) == Some(&peer) {
            self.by_name.remove(&p.node);
        }
        // Pieces it was sending here are lost with it.
        let lost = self.sinks.close_peer(peer);
        self.state.metrics.piece_failures.inc_by(lost as u64);
        for t in self.tasks.values_mut() {
            t.told.remove(&peer);
            t.members.remove(&peer);
        }
        self.handle(Event::Gone { peer });
    }

    fn frame(&mut self, peer: PeerId, frame: Frame) {
        // Its connection is gone (closed, or replaced by the other end's), but frames its
        // reader had already passed on still arrive: an offer taken from it now would be
        // accepted where nothing answers, and its piece wait `transferTimeout` here while
        // every peer takes it for coming.
        if !self.peers.contains_key(&peer) {
            tracing::debug!(id = peer, "frame from a connection already gone: dropped");
            return;
        }
        match frame {
            Frame::Join(j) => self.joined(peer, j),
            Frame::Leave { task } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.members.remove(&peer);
                }
                self.handle(Event::Left { peer, task });
            }
            Frame::Notices { task, notices } => {
                for (piece, notice) in notices {
                    self.handle(Event::Notice {
                        peer,
                        task,
                        piece,
                        notice,
                    });
                }
            }
            Frame::Offer { task, piece } => self.handle(Event::Offered { peer, task, piece }),
            Frame::Accept { task, piece } => self.handle(Event::Accepted { peer, task, piece }),
            Frame::Refuse { task, piece, why } => {
                // A refusal of a push under way stops it; of an offer, frees the lane.
                self.handle(Event::Refused {
                    peer,
                    task,
                    piece,
                    why: Some(why),
                });
            }
            Frame::Withdraw { task, piece } => {
                self.sinks.close((peer, task, piece), "withdrawn");
                self.handle(Event::Withdrawn { peer, task, piece });
            }
            // The reader gives proofs to the piece they precede.
            Frame::Proof { .. } => {}
            Frame::Hello(_) | Frame::Auth(_) | Frame::Data { .. } => {
                self.gone(peer, "a handshake frame after the handshake");
            }
        }
    }

    fn joined(&mut self, peer: PeerId, j: Join) {
        let key = wire::task_key(&j.digest);
        let Some(t) = self.tasks.get_mut(&key) else {
            // Not taking part: held in the cache, perhaps.
            let digest = Digest::from_sha256(&j.digest);
            let waiting = self.waiting_held.entry(key).or_default();
            waiting.push((peer, j));
            if waiting.len() == 1 {
                let (state, tx) = (self.state.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let held = open_held(&state, &digest).await;
                    let _ = tx.send(Input::Held { task: key, held });
                });
            }
            return;
        };
        if t.digest.sha256() != j.digest
            || t.layout.size() != j.size
            || t.layout.piece_size() != j.piece_size
        {
            tracing::info!(
                task = key,
                "a peer's blob does not match ours (digest, size or piece size)"
            );
            if let Some(p) = self.peers.get(&peer) {
                p.conn.send(Out::Frame(Frame::Leave { task: key }));
            }
            return;
        }
        t.members.insert(peer);
        self.handle(Event::Joined {
            peer,
            task: key,
            have: j.have,
            receiving: j.receiving,
        });
        self.tell(key, peer);
    }

    fn held(&mut self, key: u64, held: Option<HeldBlob>) {
        let joins = self.waiting_held.remove(&key).unwrap_or_default();
        let Some(h) = held else {
            for (peer, _) in joins {
                if let Some(p) = self.peers.get(&peer) {
                    p.conn.send(Out::Frame(Frame::Leave { task: key }));
                }
            }
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.tasks.entry(key) {
            let pieces = h.layout.count();
            slot.insert(TaskRt::new(h.digest, h.layout, h.file, None, None));
            self.handle(Event::Open {
                task: key,
                pieces,
                piece_len: h.layout.piece_size(),
                have: PieceSet::full(pieces),
                mode: Mode::P2p,
            });
        }
        for (peer, j) in joins {
            self.joined(peer, j);
        }
    }

    fn members(&mut self, key: u64, answer: Result<schedule::Members, String>) {
        let m = match answer {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(task = key, error = %e, "scheduler unreachable; pieces come from the mirror");
                self.state.metrics.scheduler_errors.inc();
                self.handle(Event::SetMode {
                    task: key,
                    mode: Mode::Source,
                });
                return;
            }
        };
        self.state.set_reachable(m.reachable_pools);
        self.handle(Event::SetMode {
            task: key,
            mode: if m.go_source { Mode::Source } else { Mode::P2p },
        });
        if m.go_source {
            return;
        }
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        for member in &m.members {
            t.named.insert(member.id.clone());
        }
        t.joined = true;
        self.send_poll(key);
        self.send_report(key);
        for member in m.members {
            match self.by_name.get(&member.id) {
                Some(&peer) => self.tell(key, peer),
                None if member.id != self.state.node && self.dialing.insert(member.id.clone()) => {
                    peers::dial(self.state.clone(), member.id, member.addr, self.tx.clone());
                }
                None => {}
            }
        }
    }

    fn arrived(
        &mut self,
        peer: Option<PeerId>,
        key: u64,
        piece: u32,
        hash: Result<[u8; 32], String>,
        proof: Option<[u8; 64]>,
    ) {
        let from = peer.map_or(From::Mirror, From::Peer);
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        let hash = match hash {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(task = key, piece, error = %e, "a piece could not be written");
                self.handle(Event::Failed {
                    task: key,
                    piece,
                    from,
                    corrupt: false,
                });
                return;
            }
        };
        let Some(d) = t.download.clone() else {
            return;
        };
        if let Some(want) = d.digest_of(piece) {
            self.verified(&d, key, piece, from, want == hash);
            return;
        }
        if let Some(sig) = proof {
            let key_now = *self.state.piece_key.read();
            let holds = key_now.is_some_and(|k| {
                storage::pieces::proof_holds(
                    &k,
                    &t.digest.sha256(),
                    t.layout.piece_size(),
                    u64::from(piece),
                    &hash,
                    &sig,
                )
            });
            if holds {
                if peer.is_some() {
                    self.state.metrics.proofs_held.inc();
                }
                d.set_proven(piece, hash, sig);
                self.verified(&d, key, piece, from, true);
                return;
            }
            if key_now.is_some() {
                // Bad bytes, or a proof by a key this node does not know (a mirror that
                // started with a new one): the mirror's digest decides.
                self.state.metrics.proofs_failed.inc();
                tracing::debug!(task = key, piece, "a peer's proof does not hold");
            }
        }
        tracing::debug!(
            task = key,
            piece,
            from_peer = peer.is_some(),
            "piece waits for its digest"
        );
        t.parked.insert(piece, (peer, hash));
        d.want_digest(piece);
    }

    fn verified(&mut self, d: &Download, key: u64, piece: u32, from: From, ok: bool) {
        tracing::trace!(task = key, piece, ?from, ok, "piece arrived");
        if ok {
            d.mark_done(piece);
            self.handle(Event::Done {
                task: key,
                piece,
                from,
            });
        } else {
            self.state.metrics.digest_mismatches.inc();
            tracing::warn!(digest = %d.spec.digest, piece, ?from, "piece does not match its digest");
            self.handle(Event::Failed {
                task: key,
                piece,
                from,
                corrupt: true,
            });
        }
    }

    /// Checks arrivals that waited for their digest.
    fn unpark(&mut self, key: u64) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        let Some(d) = t.download.clone() else {
            return;
        };
        let ready: Vec<u32> = t
            .parked
            .keys()
            .copied()
            .filter(|&p| d.digest_of(p).is_some())
            .collect();
        for piece in ready {
            let Some((peer, hash)) = self
                .tasks
                .get_mut(&key)
                .and_then(|t| t.parked.remove(&piece))
            else {
                continue;
            };
            let ok = d.digest_of(piece) == Some(hash);
            self.verified(&d, key, piece, peer.map_or(From::Mirror, From::Peer), ok);
        }
    }

    fn mirror_failed(&mut self, key: u64, first: u32, piece: u32, why: &str) {
        let Some((h, count)) = self
            .tasks
            .get_mut(&key)
            .and_then(|t| t.ranges.remove(&first))
        else {
            return;
        };
        h.abort();
        tracing::info!(task = key, piece, %why, "mirror range failed");
        // The pieces of the range from `piece` on did not arrive.
        for p in piece..first + count {
            self.handle(Event::Failed {
                task: key,
                piece: p,
                from: From::Mirror,
                corrupt: false,
            });
        }
    }

    fn execute(&mut self) {
        let actions = std::mem::take(&mut self.out);
        for a in actions {
            match a {
                Action::Offer { peer, task, piece } => {
                    self.send(peer, Frame::Offer { task, piece })
                }
                Action::Accept { peer, task, piece } => {
                    if let Some(t) = self.tasks.get(&task) {
                        if let Some(bytes) = t.layout.span(piece) {
                            // The piece's span, in the pull's trace, until the piece ends.
                            let traced = crate::trace::piece_span(
                                t.download
                                    .as_ref()
                                    .map_or(&tracing::Span::none(), |d| &d.span),
                                crate::trace::Source::Peer {
                                    node: self.peers.get(&peer).map_or("", |p| p.node.as_str()),
                                },
                                &t.digest,
                                piece,
                                1,
                            );
                            self.sinks.open(
                                (peer, task, piece),
                                t.file.clone(),
                                bytes.start,
                                bytes.end - bytes.start,
                                traced,
                            );
                        }
                    }
                    self.send(peer, Frame::Accept { task, piece });
                }
                Action::Refuse {
                    peer,
                    task,
                    piece,
                    why,
                } => {
                    if why == swarm::Refusal::Unwanted {
                        tracing::debug!(task, piece, "a push from a peer is ended here");
                    }
                    self.sinks.close((peer, task, piece), "refused");
                    self.send(peer, Frame::Refuse { task, piece, why });
                }
                Action::Withdraw { peer, task, piece } => {
                    self.send(peer, Frame::Withdraw { task, piece })
                }
                Action::Push { peer, task, piece } => self.push(peer, task, piece),
                Action::Notify {
                    task,
                    piece,
                    notice,
                } => self.notify(task, piece, notice),
                Action::FetchMirror {
                    task,
                    first,
                    count,
                    why,
                } => self.fetch(task, first, count, why),
                Action::CancelMirror { task, first } => {
                    let range = self
                        .tasks
                        .get_mut(&task)
                        .and_then(|t| t.ranges.remove(&first));
                    if let Some((h, _)) = range {
                        h.abort();
                        tracing::debug!(
                            task,
                            piece = first,
                            "mirror help given up: a peer sends it"
                        );
                    }
                }
                Action::AskFresh {
                    task,
                    completed,
                    wait,
                } => self.ask(task, completed, wait),
                Action::Block { peer, task } => {
                    let name = self.peers.get(&peer).map(|p| p.node.clone());
                    tracing::info!(task, peer = ?name, "peer blocked for the blob (bad or stalled piece)");
                    self.state.metrics.piece_failures.inc();
                    // It stops offering: this node no longer takes part with it.
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.members.remove(&peer);
                    }
                    self.send(peer, Frame::Leave { task });
                }
                Action::Fail { task, reason } => {
                    if let Some(d) = self.tasks.get(&task).and_then(|t| t.download.clone()) {
                        d.fail(reason);
                    }
                }
            }
        }
    }

    fn send(&self, peer: PeerId, frame: Frame) {
        if let Some(p) = self.peers.get(&peer) {
            p.conn.send(Out::Frame(frame));
        }
    }

    fn push(&mut self, peer: PeerId, key: u64, piece: u32) {
        let what = self
            .tasks
            .get(&key)
            .and_then(|t| Some((t, t.layout.span(piece)?, self.peers.get(&peer)?)));
        let Some((t, span, p)) = what else {
            // The blob closed here or the peer went since the push was decided: the lane must
            // not wait for a push that never starts.
            tracing::debug!(task = key, piece, "push not started: blob or peer gone");
            self.handle(Event::Refused {
                peer,
                task: key,
                piece,
                why: None,
            });
            return;
        };
        let proof = t
            .proofs
            .as_ref()
            .and_then(|p| p.read().get(piece as usize).copied().flatten());
        if let Some(sig) = proof {
            // Ahead of the piece's bytes on the same connection.
            p.conn.send(Out::Frame(Frame::Proof {
                task: key,
                piece,
                sig,
            }));
        }
        p.conn.send(Out::Push {
            task: key,
            piece,
            file: t.file.clone(),
            start: span.start,
            len: span.end - span.start,
        });
    }

    fn notify(&self, key: u64, piece: u32, notice: Notice) {
        let Some(t) = self.tasks.get(&key) else {
            return;
        };
        for peer in t.told.iter() {
            self.send(
                *peer,
                Frame::Notices {
                    task: key,
                    notices: vec![(piece, notice)],
                },
            );
        }
    }

    fn fetch(&mut self, key: u64, first: u32, count: u32, why: swarm::MirrorWhy) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        let Some(d) = t.download.clone() else {
            return;
        };
        let handle = fetch::range(self.state.clone(), d, first, count, why, self.tx.clone());
        if let Some((old, _)) = t.ranges.insert(first, (handle, count)) {
            old.abort();
        }
    }

    /// Completed leases are reported at once, on their own; a wait for the next lease runs
    /// beside them and is never cut short (a grant on its way back would be lost).
    fn ask(&mut self, key: u64, completed: Vec<u32>, wait: bool) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        t.unreported.extend(completed);
        t.wants_lease |= wait;
        self.send_poll(key);
        self.send_report(key);
    }

    fn send_poll(&mut self, key: u64) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if t.joined && t.wants_lease && t.poll.is_none() {
            t.wants_lease = false;
            let digest = t.digest.to_string();
            t.poll = Some(schedule::poll(
                self.state.clone(),
                key,
                digest,
                self.tx.clone(),
            ));
        }
    }

    fn send_report(&mut self, key: u64) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if t.joined && t.report.is_none() && !t.unreported.is_empty() {
            let completed = std::mem::take(&mut t.unreported);
            let digest = t.digest.to_string();
            t.report = Some(schedule::report(
                self.state.clone(),
                key,
                digest,
                completed,
                self.tx.clone(),
            ));
        }
    }
}

/// Opens a blob held whole in the cache, to serve peers.
async fn open_held(state: &AgentState, digest: &Digest) -> Option<HeldBlob> {
    let (file, entry) = state
        .store
        .open_verified(digest, std::time::SystemTime::now())
        .await
        .ok()
        .flatten()?;
    if entry.media_type.is_some() {
        return None;
    }
    let layout = state.cfg.layout_for(entry.size).ok()?;
    Some(HeldBlob {
        digest: digest.clone(),
        layout,
        file: Arc::new(file),
    })
}
