//! Joins and fresh asks per second, and their latency, with 10,000 peers on one blob.
//!
//! `cargo bench -p scheduler --bench decisions`. 10,000 peers in four pools (pool-0 and pool-1
//! connected, pool-2 and pool-3 on their own) take part in a 2 GiB blob of 256 KiB pieces
//! (8,192). Requests go straight into the in-process registry on one thread; building them is
//! outside the timing, and JSON and HTTP are not included.
//!
//! - first joins: every peer joins once (a new peer and a new member).
//! - joins: 200,000 joins again from random peers (the refresh every `intervalMs`), each
//!   answered with up to 40 members.
//! - fresh: 200,000 asks from random members, each reporting the pieces it was granted since
//!   its last ask (at once, or later for its waiting request) and waiting for more. The floor
//!   of pieces leased is 8,192 per group of pools that pair.

use nodepool::PoolSpec;
use scheduler::api::{PeerRef, TaskInfo};
use scheduler::api_v2::{FreshRequest, JoinRequest};
use scheduler::{Metrics, PeerRegistry, RegistryConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEERS: usize = 10_000;
const POOLS: usize = 4;
/// pool-0 with pool-1, pool-2, pool-3.
const POOL_GROUPS: u64 = 3;
const DECISIONS: usize = 200_000;
const SIZE: u64 = 2 << 30;
const DIGEST: &str = "sha256:7777777777777777777777777777777777777777777777777777777777777777";
const PIECE: u64 = 256 << 10;
const PIECES: u32 = (SIZE / PIECE) as u32;

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
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        held: 0,
        done: false,
    }
}

fn joins(r: &mut PeerRegistry, rng: &mut Rng, t0: Instant) {
    let mut latencies = Vec::with_capacity(DECISIONS);
    let mut members = 0;
    for id in 0..PEERS {
        let req = join_request(id);
        timed(&mut latencies, || r.join(&req, t0).expect("join"));
    }
    report(
        "first joins",
        "joins",
        std::mem::take(&mut latencies),
        "each a new peer and member",
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
    report("joins", "joins", latencies, &extra);
}

fn fresh(r: &mut PeerRegistry, metrics: &Metrics, rng: &mut Rng, t0: Instant) {
    let before = metrics.fresh_leases.get();
    // Per peer, the pieces granted and not yet reported; holder keys to peers.
    let mut pending: Vec<Vec<u32>> = vec![Vec::new(); PEERS];
    let mut peer_of: HashMap<u64, usize> = HashMap::new();
    let mut latencies = Vec::with_capacity(DECISIONS);
    let mut released = 0;
    // Per group of pools that pair (pool-0 with pool-1, pool-2, pool-3), pieces leased.
    let mut leased = vec![vec![0u32; PIECES as usize]; 3];
    let group = |id: usize| (id % POOLS).saturating_sub(1);
    for n in 0..DECISIONS {
        let id = rng.below(PEERS);
        let req = FreshRequest {
            peer: peer_ref(id),
            digest: DIGEST.into(),
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
    report("fresh", "asks", latencies, &extra);
    let twice: usize = leased.iter().flatten().filter(|&&n| n > 1).count();
    println!(
        "fresh: pieces leased {} (all {} = {PIECES} x {POOL_GROUPS} pool groups), {twice} of them more than once",
        metrics.fresh_leases.get() - before,
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
        max_neighbors: 40,
    };
    let graph = nodepool::PoolGraph::new(&pools).expect("pools");
    let metrics = Arc::new(Metrics::new());
    let t0 = Instant::now();
    let mut registry = PeerRegistry::new(config, graph, metrics.clone(), t0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!(
        "{PEERS} peers in {POOLS} pools; a 2 GiB blob of {PIECES} x {} KiB pieces; {DECISIONS} requests per run, one thread",
        PIECE >> 10
    );
    joins(&mut registry, &mut rng, t0);
    fresh(
        &mut registry,
        &metrics,
        &mut rng,
        t0 + Duration::from_secs(2),
    );
}
