//! A discrete-time simulator of one blob spreading through a pool, driving the agents' own
//! decision code ([`swarm::Node`]) and the scheduler's own first-holder leases
//! ([`swarm::Releases`]) over modelled links, so pools of hundreds or thousands of nodes can be
//! measured against the Kumar-Ross bound on one machine.
//!
//! ```text
//!   origin ──(cold: arrives at the origin's rate)──> mirror ──fresh pieces, leased──> nodes
//!   node ──push──> node       every transfer a flow; flows share each host's uplink and
//!                             downlink max-min fairly, at the link's payload share (MTU)
//!   notices, refusals, loads: delivered after `latency`; the scheduler after `sched_latency`
//! ```
//!
//! Time moves in steps of `dt`: messages due in a step are delivered, each node touched decides
//! once, rates are recomputed when flows changed, and every flow moves on by `dt`.

use std::collections::HashMap;
use std::time::Duration;

mod links;

use links::Flow;
use swarm::{Action, Event, From, Mode, Node, PieceSet, ReleaseConfig, Releases, Tunables};

/// One simulated pull of one blob by every node at once.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub size: u64,
    pub piece_size: u64,
    /// Per node, bytes per second.
    pub node_up: Vec<f64>,
    pub node_down: Vec<f64>,
    pub mirror_up: f64,
    /// Cold mirror: the origin's rate into the mirror; `None`: the mirror holds the blob.
    pub origin: Option<f64>,
    /// Before the origin's first byte reaches the mirror (manifest, connection set-up).
    pub first_byte: Duration,
    /// One-way delay of control messages and of a transfer's first byte between hosts.
    pub latency: Duration,
    /// One-way delay to the scheduler.
    pub sched_latency: Duration,
    /// Payload bytes per link byte (headers: about 0.956 at MTU 1500, 0.993 at 9000).
    pub efficiency: f64,
    /// Frame bytes added to each pushed piece: OFFER, ACCEPT, DATA heads and the PROOF ahead
    /// of it (81 bytes).
    pub piece_overhead: u64,
    /// Bytes the mirror's uplink carries per piece it sends beside the piece: the piece's
    /// first holder asks `/pieces` for its digest and proof (an answer of about 400 bytes with
    /// its HTTP and TCP heads; docs/benchmarks.md), and nobody else does, whatever the pool's
    /// size.
    pub mirror_piece_overhead: u64,
    /// Neighbours per node; every node knows every other when `nodes <= degree + 1`.
    pub degree: usize,
    pub tunables: Tunables,
    pub release: ReleaseConfig,
    pub seed: u64,
    pub dt: Duration,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Seconds until each node held the blob, sorted.
    pub finish: Vec<f64>,
    /// The Kumar-Ross bound in seconds, at the nominal link rates.
    pub bound: f64,
    /// Payload bytes the mirror sent, and peers sent (including pushes refused or cut).
    pub mirror_sent: f64,
    pub peer_sent: f64,
    /// Payload bytes of pushes that were refused or cut before completing.
    pub wasted: f64,
    pub refusals: u64,
    /// Nodes that never completed (within the time limit).
    pub unfinished: usize,
    /// When the last piece was first completed from the mirror, seconds.
    pub released_at: f64,
}

impl Spec {
    /// `nodes` nodes with `up`/`down` each (bytes/s), a mirror at `mirror_up`, defaults for the
    /// rest (cold mirror fed at the mirror's rate, the agents' default tunables).
    pub fn new(
        nodes: usize,
        size: u64,
        piece_size: u64,
        up: f64,
        down: f64,
        mirror_up: f64,
    ) -> Spec {
        Spec {
            nodes,
            size,
            piece_size,
            node_up: vec![up; nodes],
            node_down: vec![down; nodes],
            mirror_up,
            origin: Some(mirror_up),
            first_byte: Duration::from_millis(300),
            latency: Duration::from_millis(10),
            sched_latency: Duration::from_millis(10),
            efficiency: 0.993,
            piece_overhead: 145,
            mirror_piece_overhead: 400,
            degree: 40,
            tunables: Tunables::default(),
            release: ReleaseConfig::for_pool(nodes, nodes, piece_size, Duration::from_secs(15)),
            seed: 1,
            dt: Duration::from_micros(1000),
        }
    }

    /// `max(S/u_mirror, S/min d, N*S/(u_mirror + sum u))`, seconds.
    pub fn bound(&self) -> f64 {
        let s = self.size as f64;
        let min_down = self.node_down.iter().copied().fold(f64::INFINITY, f64::min);
        let sum_up: f64 = self.node_up.iter().sum();
        (s / self.mirror_up)
            .max(s / min_down)
            .max(self.nodes as f64 * s / (self.mirror_up + sum_up))
    }

    fn pieces(&self) -> u32 {
        self.size.div_ceil(self.piece_size) as u32
    }

    fn piece_len(&self, piece: u32) -> u64 {
        let start = u64::from(piece) * self.piece_size;
        (start + self.piece_size).min(self.size) - start
    }
}

const TASK: u64 = 1;

enum Msg {
    Node(usize, Event),
    /// A node's ask reaches the scheduler.
    Ask {
        node: usize,
        completed: Vec<u32>,
        wait: bool,
    },
    /// A mirror request reaches the mirror: the transfer starts.
    MirrorStart {
        node: usize,
        first: u32,
        count: u32,
    },
    /// A receiver's refusal reaches the sender: a push under way stops.
    Refused {
        src: usize,
        dst: usize,
        piece: u32,
        why: swarm::Refusal,
    },
}

struct Sim<'a> {
    spec: &'a Spec,
    step: u64,
    dt: f64,
    nodes: Vec<Node>,
    neighbours: Vec<Vec<usize>>,
    releases: Releases,
    wheel: HashMap<u64, Vec<Msg>>,
    flows: Vec<Flow>,
    flows_changed: bool,
    finish: Vec<Option<f64>>,
    touched: Vec<bool>,
    touched_list: Vec<usize>,
    out: Outcome,
}

/// Runs one pull to the end (or `limit` simulated seconds).
pub fn run(spec: &Spec, limit: f64) -> Outcome {
    let n = spec.nodes;
    let mut rng = spec.seed.max(1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut neighbours = vec![Vec::new(); n];
    if n <= spec.degree + 1 {
        for (i, list) in neighbours.iter_mut().enumerate() {
            *list = (0..n).filter(|&j| j != i).collect();
        }
    } else {
        // Each node dials `degree / 2` random others; links are both ways.
        let mut edges = std::collections::HashSet::new();
        for i in 0..n {
            let mut dialled = 0;
            while dialled < spec.degree / 2 {
                let j = (next() % n as u64) as usize;
                if j != i && edges.insert((i.min(j), i.max(j))) {
                    dialled += 1;
                }
            }
        }
        for (a, b) in edges {
            neighbours[a].push(b);
            neighbours[b].push(a);
        }
    }
    let nodes = (0..n)
        .map(|i| Node::new(spec.tunables.clone(), swarm::mix(spec.seed, i as u64 + 1)))
        .collect();
    let mut sim = Sim {
        spec,
        step: 0,
        dt: spec.dt.as_secs_f64(),
        nodes,
        neighbours,
        releases: Releases::new(spec.pieces()),
        wheel: HashMap::new(),
        flows: Vec::new(),
        flows_changed: true,
        finish: vec![None; n],
        touched: vec![false; n],
        touched_list: Vec::new(),
        out: Outcome {
            finish: Vec::new(),
            bound: spec.bound(),
            mirror_sent: 0.0,
            peer_sent: 0.0,
            wasted: 0.0,
            refusals: 0,
            unfinished: 0,
            released_at: 0.0,
        },
    };
    sim.start();
    let max_steps = (limit / sim.dt) as u64;
    while sim.finish.iter().any(Option::is_none) && sim.step < max_steps {
        sim.tick();
    }
    let mut finish: Vec<f64> = sim.finish.iter().flatten().copied().collect();
    finish.sort_by(f64::total_cmp);
    sim.out.unfinished = n - finish.len();
    sim.out.finish = finish;
    sim.out
}

impl Sim<'_> {
    fn now(&self) -> Duration {
        Duration::from_secs_f64(self.step as f64 * self.dt)
    }

    fn steps(&self, d: Duration) -> u64 {
        ((d.as_secs_f64() / self.dt).round() as u64).max(1)
    }

    fn send(&mut self, after: Duration, msg: Msg) {
        let at = self.step + self.steps(after);
        self.wheel.entry(at).or_default().push(msg);
    }

    fn touch(&mut self, node: usize) {
        if !self.touched[node] {
            self.touched[node] = true;
            self.touched_list.push(node);
        }
    }

    fn start(&mut self) {
        let pieces = self.spec.pieces();
        let now = self.now();
        let mut out = Vec::new();
        for i in 0..self.spec.nodes {
            self.nodes[i].handle(
                now,
                Event::Open {
                    task: TASK,
                    pieces,
                    piece_len: self.spec.piece_size,
                    have: PieceSet::empty(pieces),
                    mode: Mode::P2p,
                },
                &mut out,
            );
            for k in 0..self.neighbours[i].len() {
                let j = self.neighbours[i][k];
                self.nodes[i].handle(
                    now,
                    Event::Joined {
                        peer: j as u64,
                        task: TASK,
                        have: PieceSet::empty(pieces),
                        receiving: PieceSet::empty(pieces),
                    },
                    &mut out,
                );
            }
            self.touch(i);
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        let due = self.wheel.remove(&self.step).unwrap_or_default();
        let mut out = Vec::new();
        for msg in due {
            match msg {
                Msg::Node(i, ev) => {
                    if let Event::Done { .. } = ev {
                        self.nodes[i].handle(now, ev, &mut out);
                        if self.finish[i].is_none() && self.nodes[i].is_complete(TASK) {
                            self.finish[i] = Some(now.as_secs_f64());
                        }
                    } else {
                        self.nodes[i].handle(now, ev, &mut out);
                    }
                    self.act(i, std::mem::take(&mut out));
                    self.touch(i);
                }
                Msg::Ask {
                    node,
                    completed,
                    wait,
                } => {
                    let grants =
                        self.releases
                            .ask(&self.spec.release, node as u64, &completed, wait, now);
                    if self.out.released_at == 0.0 && self.releases.all_released() {
                        self.out.released_at = now.as_secs_f64();
                    }
                    for (holder, grant) in grants {
                        let ev = Event::Fresh {
                            task: TASK,
                            pieces: grant.pieces,
                            all_released: grant.all_released,
                            move_on: grant.move_on,
                        };
                        self.send(self.spec.sched_latency, Msg::Node(holder as usize, ev));
                    }
                }
                Msg::MirrorStart { node, first, count } => {
                    let len = (first..first + count)
                        .map(|p| self.spec.piece_len(p) as f64)
                        .sum();
                    self.flows.push(Flow {
                        src: self.spec.nodes,
                        dst: node,
                        piece: first,
                        count,
                        delivered: 0,
                        mirror: true,
                        sent: 0.0,
                        len,
                        rate: 0.0,
                    });
                    self.flows_changed = true;
                }
                Msg::Refused {
                    src,
                    dst,
                    piece,
                    why,
                } => {
                    if let Some(k) = self
                        .flows
                        .iter()
                        .position(|f| !f.mirror && f.src == src && f.dst == dst && f.piece == piece)
                    {
                        let f = self.flows.swap_remove(k);
                        self.out.wasted += f.sent;
                        self.flows_changed = true;
                    }
                    self.nodes[src].handle(
                        now,
                        Event::Refused {
                            peer: dst as u64,
                            task: TASK,
                            piece,
                            why: Some(why),
                        },
                        &mut out,
                    );
                    self.act(src, std::mem::take(&mut out));
                    self.touch(src);
                }
            }
        }
        if self
            .step
            .is_multiple_of(self.steps(Duration::from_millis(50)))
        {
            for i in 0..self.spec.nodes {
                self.nodes[i].tick(now, &mut out);
                let actions = std::mem::take(&mut out);
                self.act(i, actions);
            }
        }
        let touched = std::mem::take(&mut self.touched_list);
        for &i in &touched {
            self.touched[i] = false;
            self.nodes[i].decide(now, &mut out);
            let actions = std::mem::take(&mut out);
            self.act(i, actions);
        }
        self.advance();
        self.step += 1;
        if std::env::var_os("SIM_TRACE").is_some()
            && self.step.is_multiple_of(self.steps(Duration::from_secs(1)))
        {
            let pieces = f64::from(self.spec.pieces());
            let have: Vec<f64> = self
                .nodes
                .iter()
                .map(|n| n.have(TASK).map_or(0.0, |h| f64::from(h.count()) / pieces))
                .collect();
            let min = have.iter().copied().fold(1.0, f64::min);
            let avg = have.iter().sum::<f64>() / have.len() as f64;
            let up: f64 = self
                .flows
                .iter()
                .filter(|f| !f.mirror)
                .map(|f| f.rate)
                .sum();
            let mirror: f64 = self.flows.iter().filter(|f| f.mirror).map(|f| f.rate).sum();
            let cap: f64 = self.spec.node_up.iter().sum();
            let down: f64 = self.flows.iter().map(|f| f.rate).sum::<f64>()
                / self.spec.node_down.iter().sum::<f64>();
            let mut inc = vec![0u32; self.spec.nodes];
            let mut outc = vec![0u32; self.spec.nodes + 1];
            let mut inrate = vec![0f64; self.spec.nodes];
            for f in &self.flows {
                inc[f.dst] += 1;
                outc[f.src] += 1;
                inrate[f.dst] += f.rate;
            }
            let under = inrate
                .iter()
                .zip(&self.spec.node_down)
                .filter(|(r, d)| **r < 0.9 * **d * self.spec.efficiency)
                .count();
            eprintln!(
                "        incoming flows min {} max {}; outgoing min {} max {}; receivers under 90%: {}",
                inc.iter().min().unwrap_or(&0),
                inc.iter().max().unwrap_or(&0),
                outc[..self.spec.nodes].iter().min().unwrap_or(&0),
                outc[..self.spec.nodes].iter().max().unwrap_or(&0),
                under
            );
            eprintln!(
                "t={:5.1}s released {:5.1}% held avg {:5.1}% min {:5.1}% peer uplinks {:4.0}% downlinks {:4.0}% mirror {:4.0}% flows {}",
                self.now().as_secs_f64(),
                100.0 * f64::from(self.releases.released()) / pieces,
                100.0 * avg,
                100.0 * min,
                100.0 * up / cap,
                100.0 * down,
                100.0 * mirror / self.spec.mirror_up,
                self.flows.len()
            );
        }
    }

    fn act(&mut self, i: usize, actions: Vec<Action>) {
        let l = self.spec.latency;
        for a in actions {
            match a {
                Action::Offer { peer, piece, .. } => {
                    let ev = Event::Offered {
                        peer: i as u64,
                        task: TASK,
                        piece,
                    };
                    self.send(l, Msg::Node(peer as usize, ev));
                }
                Action::Accept { peer, piece, .. } => {
                    let ev = Event::Accepted {
                        peer: i as u64,
                        task: TASK,
                        piece,
                    };
                    self.send(l, Msg::Node(peer as usize, ev));
                }
                Action::Withdraw { peer, piece, .. } => {
                    let ev = Event::Withdrawn {
                        peer: i as u64,
                        task: TASK,
                        piece,
                    };
                    self.send(l, Msg::Node(peer as usize, ev));
                }
                Action::Push { peer, piece, .. } => {
                    let len = self.spec.piece_len(piece) as f64;
                    self.flows.push(Flow {
                        src: i,
                        dst: peer as usize,
                        piece,
                        count: 1,
                        delivered: 0,
                        mirror: false,
                        sent: 0.0,
                        len: len + self.spec.piece_overhead as f64,
                        rate: 0.0,
                    });
                    self.flows_changed = true;
                }
                Action::Refuse {
                    peer, piece, why, ..
                } => {
                    self.out.refusals += 1;
                    self.send(
                        l,
                        Msg::Refused {
                            src: peer as usize,
                            dst: i,
                            piece,
                            why,
                        },
                    );
                }
                Action::Notify { piece, notice, .. } => {
                    for k in 0..self.neighbours[i].len() {
                        let j = self.neighbours[i][k];
                        let ev = Event::Notice {
                            peer: i as u64,
                            task: TASK,
                            piece,
                            notice,
                        };
                        self.send(l, Msg::Node(j, ev));
                    }
                }
                Action::CancelMirror { first, .. } => {
                    if let Some(k) = self
                        .flows
                        .iter()
                        .position(|f| f.mirror && f.dst == i && f.piece == first)
                    {
                        let f = self.flows.swap_remove(k);
                        self.out.wasted += f.sent;
                        self.flows_changed = true;
                    }
                }
                Action::FetchMirror { first, count, .. } => {
                    self.send(
                        l,
                        Msg::MirrorStart {
                            node: i,
                            first,
                            count,
                        },
                    );
                }
                Action::AskFresh {
                    completed, wait, ..
                } => {
                    self.send(
                        self.spec.sched_latency,
                        Msg::Ask {
                            node: i,
                            completed,
                            wait,
                        },
                    );
                }
                Action::Block { .. } | Action::Fail { .. } => {}
            }
        }
    }

    /// Bytes of the blob at the mirror by now.
    fn frontier(&self) -> f64 {
        match self.spec.origin {
            None => f64::INFINITY,
            Some(rate) => {
                let t = self.now().as_secs_f64() - self.spec.first_byte.as_secs_f64();
                (t.max(0.0) * rate * self.spec.efficiency).min(self.spec.size as f64)
            }
        }
    }

    /// Payload a mirror flow may have sent by now: what has reached the mirror of its piece.
    fn available(&self, f: &Flow) -> f64 {
        let start = f64::from(f.piece) * self.spec.piece_size as f64;
        (self.frontier() - start).clamp(0.0, f.len)
    }

    fn advance(&mut self) {
        // While the origin is still sending, mirror transfers waiting on it start as it arrives.
        if self.frontier() < self.spec.size as f64 && self.flows.iter().any(|f| f.mirror) {
            self.flows_changed = true;
        }
        if self.flows_changed {
            let frontier = self.frontier();
            links::share(self.spec, &mut self.flows, frontier);
            self.flows_changed = false;
        }
        let l = self.spec.latency;
        let progress_every = self.steps(Duration::from_millis(250));
        let mut k = 0;
        while k < self.flows.len() {
            let cap = if self.flows[k].mirror {
                self.available(&self.flows[k])
            } else {
                self.flows[k].len
            };
            let f = &mut self.flows[k];
            let before = f.sent;
            f.sent = (f.sent + f.rate * self.dt).min(cap);
            let moved = f.sent - before;
            if f.mirror {
                self.out.mirror_sent += moved;
            } else {
                self.out.peer_sent += moved;
            }
            // The runtime reports progress a few times a second; the stall timer needs it.
            if moved > 0.0 && self.step.is_multiple_of(progress_every) {
                let (dst, piece) = (f.dst, f.piece + f.delivered);
                let start = f64::from(f.delivered) * self.spec.piece_size as f64;
                let bytes = (f.sent - start).max(0.0) as u64;
                self.wheel.entry(self.step + 1).or_default().push(Msg::Node(
                    dst,
                    Event::Progress {
                        task: TASK,
                        piece,
                        bytes,
                    },
                ));
            }
            if f.mirror {
                // Each piece of a range lands as its last byte arrives.
                let start = f64::from(f.piece) * self.spec.piece_size as f64;
                while f.delivered < f.count {
                    let p = f.piece + f.delivered;
                    let end = (f64::from(p + 1) * self.spec.piece_size as f64)
                        .min(self.spec.size as f64)
                        - start;
                    if f.sent + 1e-6 < end {
                        break;
                    }
                    f.delivered += 1;
                    let ev = Event::Done {
                        task: TASK,
                        piece: p,
                        from: From::Mirror,
                    };
                    let (dst, at) = (f.dst, self.step + 1);
                    self.wheel.entry(at).or_default().push(Msg::Node(dst, ev));
                }
            }
            let f = &self.flows[k];
            if f.sent + 1e-6 < f.len {
                k += 1;
                continue;
            }
            let f = self.flows.swap_remove(k);
            self.flows_changed = true;
            if f.mirror {
                continue;
            }
            let pushed = Event::Pushed {
                peer: f.dst as u64,
                task: TASK,
                piece: f.piece,
            };
            self.wheel
                .entry(self.step + 1)
                .or_default()
                .push(Msg::Node(f.src, pushed));
            let done = Event::Done {
                task: TASK,
                piece: f.piece,
                from: From::Peer(f.src as u64),
            };
            self.send(l, Msg::Node(f.dst, done));
        }
    }
}
