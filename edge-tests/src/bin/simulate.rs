//! The pool simulator: one blob from a cold mirror to N nodes over modelled links, driven by
//! the agents' own decision code, against the Kumar-Ross bound. See `edge_tests::sim`.
//!
//! ```text
//!   cargo run -p edge-tests --release --bin simulate -- --nodes 10,100,1000 --size 128MiB \
//!       --down 50mbit --up 10mbit --mirror 50mbit
//! ```

use anyhow::{bail, Context, Result};
use edge_tests::sim::{run, Spec};
use std::time::Duration;

/// One blob to N nodes in simulation, against the Kumar-Ross bound. No root needed.
#[derive(clap::Parser)]
struct Opts {
    /// Pool sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    nodes: Vec<usize>,
    /// Blob size (B, KiB, MiB, GiB).
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    size: u64,
    /// Piece size; default: what the agents choose for the blob.
    #[arg(long, value_parser = parse_size)]
    piece: Option<u64>,
    /// Every node's download rate, e.g. 50mbit.
    #[arg(long, default_value = "50mbit", value_parser = parse_rate)]
    down: f64,
    /// Every node's upload rate; default: the download rate.
    #[arg(long, value_parser = parse_rate)]
    up: Option<f64>,
    /// The mirror's upload rate; default: the download rate.
    #[arg(long, value_parser = parse_rate)]
    mirror: Option<f64>,
    /// Nodes' uplinks spread evenly over [up*(1-spread), up*(1+spread)].
    #[arg(long, default_value_t = 0.0)]
    spread: f64,
    /// The mirror already holds the blob.
    #[arg(long)]
    warm: bool,
    /// One-way delay between hosts, ms.
    #[arg(long, default_value_t = 10.0)]
    latency: f64,
    /// Link MTU (payload share of each link byte).
    #[arg(long, default_value_t = 9000)]
    mtu: u32,
    /// Neighbours per node.
    #[arg(long, default_value_t = 40)]
    degree: usize,
    /// Upload slots (pushes at once).
    #[arg(long)]
    slots: Option<u32>,
    /// Pieces offered ahead on each lane.
    #[arg(long)]
    lookahead: Option<u32>,
    /// Pushes accepted at once.
    #[arg(long)]
    incoming: Option<u32>,
    /// Fresh pieces leased at once per pool.
    #[arg(long)]
    in_flight: Option<u32>,
    /// Mirror transfers at once per node once every piece is in the pool.
    #[arg(long)]
    assist: Option<u32>,
    /// Pieces per mirror lease.
    #[arg(long)]
    run: Option<u32>,
    /// Leases one node may hold at once.
    #[arg(long)]
    per_holder: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulation step, ms.
    #[arg(long, default_value_t = 1.0)]
    dt: f64,
}

fn parse_rate(s: &str) -> Result<f64> {
    let mbit = s.strip_suffix("mbit").context("write e.g. 50mbit")?;
    let mbit: f64 = mbit.parse().context("not a number of mbit")?;
    Ok(mbit * 1e6 / 8.0)
}

fn parse_size(s: &str) -> Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("size {s:?}"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("size {s:?}: use B, KiB, MiB or GiB"),
    };
    Ok(n * mult)
}

fn main() -> Result<()> {
    let o = <Opts as clap::Parser>::parse();
    let up = o.up.unwrap_or(o.down);
    let mirror = o.mirror.unwrap_or(o.down);
    let piece = o.piece.unwrap_or(64 << 10);
    println!(
        "| nodes | size | piece | down/up/mirror mbit | last (s) | median (s) | bound (s) | last / bound | mirror copies | peer copies | wasted % | refusals |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &n in &o.nodes {
        let mut spec = Spec::new(n, o.size, piece, up, o.down, mirror);
        if o.spread > 0.0 {
            spec.node_up = (0..n)
                .map(|i| up * (1.0 - o.spread + 2.0 * o.spread * i as f64 / (n.max(2) - 1) as f64))
                .collect();
        }
        spec.origin = (!o.warm).then_some(mirror);
        spec.latency = Duration::from_secs_f64(o.latency / 1000.0);
        spec.sched_latency = spec.latency;
        spec.efficiency = f64::from(o.mtu - 52) / f64::from(o.mtu + 14);
        spec.degree = o.degree;
        spec.seed = o.seed;
        spec.dt = Duration::from_secs_f64(o.dt / 1000.0);
        if let Some(v) = o.slots {
            spec.tunables.upload_slots = v;
        }
        if let Some(v) = o.lookahead {
            spec.tunables.lookahead = v;
        }
        if let Some(v) = o.incoming {
            spec.tunables.max_incoming = v;
        }
        if let Some(v) = o.per_holder {
            spec.release.per_holder = v;
        }
        if let Some(v) = o.run {
            spec.release.run = v;
        }
        if let Some(v) = o.assist {
            spec.tunables.assist_parallel = v;
        }
        if let Some(v) = o.in_flight {
            spec.release.in_flight = v;
        }
        let began = std::time::Instant::now();
        let r = run(&spec, spec.bound() * 10.0);
        let last = r.finish.last().copied().unwrap_or(f64::NAN);
        let median = r
            .finish
            .get(r.finish.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        let s = o.size as f64;
        println!(
            "| {n} | {} MiB | {} KiB | {:.0}/{:.0}/{:.0} | {last:.2} | {median:.2} | {:.2} | **{:.3}** | {:.2} | {:.2} | {:.2} | {} |{}",
            o.size >> 20,
            piece >> 10,
            o.down * 8.0 / 1e6,
            up * 8.0 / 1e6,
            mirror * 8.0 / 1e6,
            r.bound,
            last / r.bound,
            r.mirror_sent / s,
            r.peer_sent / s,
            100.0 * r.wasted / (r.peer_sent + r.mirror_sent),
            r.refusals,
            if r.unfinished > 0 { format!(" {} unfinished", r.unfinished) } else { String::new() },
        );
        let at = |q: f64| {
            r.finish
                .get(((r.finish.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        eprintln!(
            "simulate: {n} nodes took {:.1} s; all pieces released at {:.2} s; finish p10 {:.2} p50 {:.2} p90 {:.2} p99 {:.2} last {:.2}",
            began.elapsed().as_secs_f64(),
            r.released_at,
            at(0.1), at(0.5), at(0.9), at(0.99), at(1.0)
        );
    }
    Ok(())
}
