//! Parent decisions (v1), joins and fresh asks (v2) per second, and their latency, with
//! 10,000 peers on one task.
//!
//! `cargo bench -p scheduler --bench decisions`. 10,000 peers in four pools (pool-0 and pool-1
//! connected, pool-2 and pool-3 on their own) take part in 2 GiB blobs of 4 MiB pieces (512
//! pieces). Announces go straight into the in-process registry on one thread; building the
//! requests is outside the timing, and JSON and HTTP are not included.
//!
//! - warm: 10% of the peers hold the whole blob, the rest random parts of it. 200,000
//!   announces, each from a random downloading peer that gained one piece since it last
//!   announced (a peer that completes starts over).
//! - cold: a second blob that nobody holds. 200,000 announces from random peers, each having
//!   fetched what its previous answer assigned it from the mirror plus one piece from a parent.
//!   Also counts the pieces sent to the mirror: the floor is 512 per group of pools that pair.
//! - v2 joins: the 10,000 peers join a third blob (2 GiB of 256 KiB pieces, 8,192), then
//!   200,000 joins again from random peers (the refresh every `intervalMs`), each answered with
//!   up to 40 members.
//! - v2 fresh: 200,000 asks from random members, each reporting the pieces it was granted
//!   since its last ask (at once, or later for its waiting request) and waiting for more. The
//!   floor of pieces leased is 8,192 per group of pools that pair.

use nodepool::PoolSpec;
use scheduler::api::{AnnounceRequest, AnnounceResponse, PeerInfo, TaskInfo};
use scheduler::api_v2::{FreshRequest, JoinRequest, PeerRef};
use scheduler::{Metrics, PeerRegistry, RegistryConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEERS: usize = 10_000;
/// Peers holding the whole warm blob; they never announce it again.
const COMPLETE: usize = PEERS / 10;
const POOLS: usize = 4;
/// pool-0 with pool-1, pool-2, pool-3.
const POOL_GROUPS: u64 = 3;
const DECISIONS: usize = 200_000;
const PIECE: u64 = 4 << 20;
const SIZE: u64 = 2 << 30;
const PIECES: u32 = (SIZE / PIECE) as u32;
const WARM: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const COLD: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const V2: &str = "sha256:7777777777777777777777777777777777777777777777777777777777777777";
const V2_PIECE: u64 = 256 << 10;
const V2_PIECES: u32 = (SIZE / V2_PIECE) as u32;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn peer_ref(id: usize) -> PeerRef {
    PeerRef {
        id: format!("node-{id:05}"),
        pool: format!("pool-{}", id % POOLS),
        addr: format!("10.{}.{}.{}:65002", id % POOLS, id / 256 % 256, id % 256),
    }
}

fn request(id: usize, digest: &str, have: &[bool]) -> AnnounceRequest {
    AnnounceRequest {
        peer: PeerInfo {
            id: format!("node-{id:05}"),
            pool: format!("pool-{}", id % POOLS),
            addr: format!("10.{}.{}.{}:65002", id % POOLS, id / 256 % 256, id % 256),
            upload_slots: 8,
        },
        task: TaskInfo {
            digest: digest.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        have: (0..PIECES).filter(|&i| have[i as usize]).collect(),
        done: have.iter().all(|&h| h),
        failed_parents: Vec::new(),
    }
}

/// Times announces and sums what they answered.
struct Timings {
    latencies: Vec<Duration>,
    parents: usize,
    source: usize,
}

impl Timings {
    fn new() -> Self {
        Timings {
            latencies: Vec::with_capacity(DECISIONS),
            parents: 0,
            source: 0,
        }
    }

    fn announce(
        &mut self,
        r: &mut PeerRegistry,
        req: &AnnounceRequest,
        n: usize,
        t0: Instant,
    ) -> AnnounceResponse {
        // Simulated time moves 5 us per decision: 1 s per run, inside every timeout.
        let now = t0 + Duration::from_micros(5 * n as u64);
        let start = Instant::now();
        let answer = r.announce(req, now).expect("decision");
        self.latencies.push(start.elapsed());
        self.parents += answer.parents.len();
        self.source += answer.source_pieces.len();
        answer
    }

    fn report(self, name: &str) {
        let per_answer = format!(
            "per answer {:.1} parents, {:.2} source pieces",
            self.parents as f64 / self.latencies.len() as f64,
            self.source as f64 / self.latencies.len() as f64
        );
        report(name, "decisions", self.latencies, &per_answer);
    }
}

/// Prints the rate and latency percentiles of one run.
fn report(name: &str, what: &str, mut latencies: Vec<Duration>, extra: &str) {
    latencies.sort_unstable();
    let l = &latencies;
    let total: Duration = l.iter().sum();
    let us = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "{name}: {:.0} {what}/s; latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us; {extra}",
        l.len() as f64 / total.as_secs_f64(),
        us(0.50),
        us(0.99),
        us(0.999),
        us(1.0),
    );
}

/// Times `f`, recording its latency.
fn timed<T>(latencies: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    latencies.push(start.elapsed());
    out
}

fn join_request(id: usize) -> JoinRequest {
    JoinRequest {
        peer: peer_ref(id),
        task: TaskInfo {
            digest: V2.into(),
            size: SIZE,
            piece_size: V2_PIECE,
        },
        held: 0,
        done: false,
    }
}

fn v2_joins(r: &mut PeerRegistry, rng: &mut Rng, t0: Instant) {
    let mut latencies = Vec::with_capacity(DECISIONS);
    let mut members = 0;
    for id in 0..PEERS {
        let req = join_request(id);
        timed(&mut latencies, || r.join(&req, t0).expect("join"));
    }
    report(
        "v2 first joins",
        "joins",
        std::mem::take(&mut latencies),
        "each a new member",
    );
    for n in 0..DECISIONS {
        let req = join_request(rng.below(PEERS));
        let now = t0 + Duration::from_micros(5 * n as u64);
        let answer = timed(&mut latencies, || r.join(&req, now).expect("join"));
        members += answer.members.len();
        std::hint::black_box(answer);
    }
    let extra = format!(
        "per answer {:.1} members",
        members as f64 / latencies.len() as f64
    );
    report("v2 joins", "joins", latencies, &extra);
}

fn v2_fresh(r: &mut PeerRegistry, metrics: &Metrics, rng: &mut Rng, t0: Instant) {
    let before = metrics.fresh_leases.get();
    // Per peer, the pieces granted and not yet reported; holder keys to peers.
    let mut pending: Vec<Vec<u32>> = vec![Vec::new(); PEERS];
    let mut peer_of: HashMap<u64, usize> = HashMap::new();
    let mut latencies = Vec::with_capacity(DECISIONS);
    let mut released = 0;
    // Per group of pools that pair (pool-0 with pool-1, pool-2, pool-3), pieces leased.
    let mut leased = vec![vec![0u32; V2_PIECES as usize]; 3];
    let group = |id: usize| (id % POOLS).saturating_sub(1);
    for n in 0..DECISIONS {
        let id = rng.below(PEERS);
        let req = FreshRequest {
            peer: peer_ref(id),
            digest: V2.into(),
            completed: std::mem::take(&mut pending[id]),
            wait: true,
        };
        let now = t0 + Duration::from_micros(5 * n as u64);
        let fresh = timed(&mut latencies, || r.fresh(&req, now).expect("fresh"));
        peer_of.insert(fresh.key.holder, id);
        if let Some(g) = fresh.grant {
            for &p in &g.pieces {
                leased[group(id)][p as usize] += 1;
            }
            pending[id].extend(g.pieces);
            released += usize::from(g.all_released);
        }
        for d in r.take_deliveries() {
            if let Some(&other) = peer_of.get(&d.holder) {
                for &p in &d.grant.pieces {
                    leased[group(other)][p as usize] += 1;
                }
                pending[other].extend(d.grant.pieces);
            }
        }
    }
    let extra = format!("{released} answers said every piece was released");
    report("v2 fresh", "asks", latencies, &extra);
    let twice: usize = leased.iter().flatten().filter(|&&n| n > 1).count();
    println!(
        "v2 fresh: pieces leased {} (all {} = {V2_PIECES} x {POOL_GROUPS} pool groups), {twice} of them more than once",
        metrics.fresh_leases.get() - before,
        u64::from(V2_PIECES) * POOL_GROUPS
    );
}

fn warm(r: &mut PeerRegistry, rng: &mut Rng, t0: Instant) {
    let mut haves: Vec<Vec<bool>> = (0..PEERS)
        .map(|i| {
            let fill = if i < COMPLETE {
                100
            } else {
                rng.below(90) as u64
            };
            (0..PIECES).map(|_| rng.next() % 100 < fill).collect()
        })
        .collect();
    for (i, have) in haves.iter().enumerate() {
        r.announce(&request(i, WARM, have), t0).expect("register");
    }
    assert_eq!(r.peer_count(), PEERS);
    let mut timings = Timings::new();
    for n in 0..DECISIONS {
        let id = COMPLETE + rng.below(PEERS - COMPLETE);
        let have = &mut haves[id];
        if have.iter().all(|&h| h) {
            have.iter_mut().for_each(|h| *h = false);
        }
        let missing: Vec<usize> = (0..have.len()).filter(|&i| !have[i]).collect();
        have[missing[rng.below(missing.len())]] = true;
        let answer = timings.announce(r, &request(id, WARM, have), n, t0);
        std::hint::black_box(answer);
    }
    timings.report("warm");
}

fn cold(r: &mut PeerRegistry, metrics: &Metrics, rng: &mut Rng, t0: Instant) {
    let before = metrics.source_pieces.get();
    let mut haves = vec![vec![false; PIECES as usize]; PEERS];
    let mut pending: Vec<Vec<u32>> = vec![Vec::new(); PEERS];
    let mut timings = Timings::new();
    for n in 0..DECISIONS {
        let id = rng.below(PEERS);
        for piece in pending[id].drain(..) {
            haves[id][piece as usize] = true;
        }
        let answer = timings.announce(r, &request(id, COLD, &haves[id]), n, t0);
        pending[id] = answer.source_pieces.clone();
        if !answer.parents.is_empty() {
            let parent = &answer.parents[rng.below(answer.parents.len())];
            if let Some(&piece) = parent.have.iter().find(|&&p| !haves[id][p as usize]) {
                pending[id].push(piece);
            }
        }
    }
    timings.report("cold");
    let held: usize = haves.iter().map(|h| h.iter().filter(|&&x| x).count()).sum();
    println!(
        "cold: pieces sent to the mirror {} (floor {} = {PIECES} x {POOL_GROUPS} pool groups); \
         pieces held across peers {held}",
        metrics.source_pieces.get() - before,
        u64::from(PIECES) * POOL_GROUPS
    );
}

fn main() {
    let pools = vec![PoolSpec {
        id: "pool-0".into(),
        connected_pools: vec!["pool-1".into()],
        ..PoolSpec::default()
    }];
    let config = RegistryConfig {
        peer_ttl: Duration::from_secs(3600),
        source_assign_timeout: Duration::from_secs(15),
        max_parents: 16,
        announce_interval: Duration::from_millis(500),
        source_in_flight: 2,
        max_neighbors: 40,
    };
    let graph = nodepool::PoolGraph::new(&pools).expect("pools");
    let metrics = Arc::new(Metrics::new());
    let t0 = Instant::now();
    let mut registry = PeerRegistry::new(config, graph, metrics.clone(), t0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!(
        "{PEERS} peers in {POOLS} pools; 2 GiB blobs of {PIECES} x {} MiB pieces; {DECISIONS} announces per run, one thread",
        PIECE >> 20
    );
    warm(&mut registry, &mut rng, t0);
    cold(
        &mut registry,
        &metrics,
        &mut rng,
        t0 + Duration::from_secs(2),
    );
    let t4 = t0 + Duration::from_secs(4);
    v2_joins(&mut registry, &mut rng, t4);
    v2_fresh(
        &mut registry,
        &metrics,
        &mut rng,
        t0 + Duration::from_secs(6),
    );
}
