//! The fan-out benchmark: one blob from one source to N nodes over shaped links, on one bed and
//! in one run, by poolcast in p2p mode (cold pool), poolcast in source mode and BitTorrent
//! (opentracker, one aria2c seed), against the Kumar-Ross bound
//! `max(S/u_source, S/d_min, N*S/(u_source + sum u_i))`.
//!
//! ```text
//!   cargo run -p edge-tests --release --bin fanout -- --nodes 16 --size 128MiB --rate 50mbit
//! ```
//!
//! Every host's link (origin, mirror, scheduler, nodes) is shaped to `--rate` both ways. The
//! poolcast source is the mirror (it also fetches the blob from the origin, cold); the BitTorrent
//! seed runs in the mirror's namespace, on the same link. Needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use edge_tests::bed::{require_tools, Bed, Host, ProcId};
use edge_tests::image::{random_bytes, sha256_file};
use edge_tests::parts::{self, AgentSpec, AGENT_PORT, REGISTRY_PORT};
use edge_tests::torrent;

/// One blob from one source to N nodes over shaped links: poolcast p2p (cold and warm
/// mirror), poolcast source and BitTorrent, against the Kumar-Ross bound. Needs root.
#[derive(clap::Parser)]
struct Opts {
    /// Nodes in the pool (1 to 200).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
    /// Blob size (B, KiB, MiB or GiB).
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    size: u64,
    /// Every link's rate both ways, e.g. 50mbit.
    #[arg(long = "rate", default_value = "50mbit", value_parser = parse_rate)]
    mbit: u32,
    /// Every link's MTU in bytes. Jumbo frames by default: the bytes a shaped link carries per
    /// second are the same, but at 1500 bytes the kernel's per-packet work for 16-32 emulated
    /// hosts saturates two cores before the links fill (see scripts/bench-bed-capacity.sh).
    #[arg(long, default_value_t = 9000)]
    mtu: u32,
    /// The agents' piece size (their `blocksize`).
    #[arg(long, default_value = "4MiB")]
    blocksize: String,
    /// BitTorrent piece size as a power of two (mktorrent -l).
    #[arg(long, default_value_t = 20)]
    bt_piece_log2: u32,
    /// Which methods to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "p2p,p2p-warm,source,bittorrent"
    )]
    methods: Vec<Method>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Method {
    P2p,
    P2pWarm,
    Source,
    Bittorrent,
}

fn parse_rate(s: &str) -> Result<u32> {
    let mbit = s.strip_suffix("mbit").context("write e.g. 50mbit")?;
    mbit.parse().context("not a number of mbit")
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

/// What one method achieved.
struct Outcome {
    method: &'static str,
    /// Seconds from start until each node had the verified blob, sorted.
    times: Vec<f64>,
    origin_sent: u64,
    source_sent: u64,
}

struct Setup {
    bed: Bed,
    origin: Host,
    mirror: Host,
    scheduler: Host,
    nodes: Vec<Host>,
    blob: PathBuf,
    digest: String,
}

fn main() -> Result<()> {
    let opts = <Opts as clap::Parser>::parse();
    require_tools(&[
        "docker-registry",
        "curl",
        "aria2c",
        "opentracker",
        "mktorrent",
    ])?;
    let bin = parts::poolcast_bin()?;
    eprintln!("fanout: poolcast binary {}", bin.display());
    let setup = build(&opts)?;
    let mut outcomes = Vec::new();
    for method in &opts.methods {
        outcomes.push(match method {
            Method::P2p => poolcast_run(&setup, &opts, Mode::P2pCold, "poolcast p2p (cold)")?,
            Method::P2pWarm => poolcast_run(
                &setup,
                &opts,
                Mode::P2pWarmMirror,
                "poolcast p2p (warm mirr)",
            )?,
            Method::Source => poolcast_run(&setup, &opts, Mode::Source, "poolcast source")?,
            Method::Bittorrent => bittorrent_run(&setup, &opts)?,
        });
    }
    report(&opts, &mut outcomes);
    Ok(())
}

fn build(opts: &Opts) -> Result<Setup> {
    let bed = Bed::with_mtu(opts.mtu)?;
    let origin = bed.add_host("origin", Ipv4Addr::new(10, 77, 0, 2), opts.mbit)?;
    let mirror = bed.add_host("mirror", Ipv4Addr::new(10, 77, 0, 3), opts.mbit)?;
    let scheduler = bed.add_host("scheduler", Ipv4Addr::new(10, 77, 0, 4), opts.mbit)?;
    let nodes = (1..=opts.nodes)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, (i % 250) as u8 + 1);
            bed.add_host(&format!("n{i}"), ip, opts.mbit)
        })
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "fanout: bed of {} nodes up; writing a {} MiB blob",
        opts.nodes,
        opts.size >> 20
    );
    let blob_dir = bed.fresh_dir("seed");
    let blob = blob_dir.join("blob");
    std::fs::write(&blob, random_bytes(opts.size as usize, 0xfa40))?;
    let digest = format!("sha256:{}", sha256_file(&blob)?);
    parts::start_registry(&bed, &origin, &bed.fresh_dir("registry"))?;
    upload_blob(&bed, &origin, &blob, &digest)?;
    Ok(Setup {
        bed,
        origin,
        mirror,
        scheduler,
        nodes,
        blob,
        digest,
    })
}

/// Monolithic upload of `blob` to the origin's registry as `bench/blob`, from its own namespace.
fn upload_blob(bed: &Bed, origin: &Host, blob: &Path, digest: &str) -> Result<()> {
    let script = format!(
        "set -e; loc=$(curl -sf -D - -o /dev/null -X POST http://127.0.0.1:{REGISTRY_PORT}/v2/bench/blob/blobs/uploads/ \
         | tr -d '\\r' | awk -F': ' 'tolower($1)==\"location\"{{print $2}}'); \
         case \"$loc\" in http*) ;; *) loc=\"http://127.0.0.1:{REGISTRY_PORT}$loc\";; esac; \
         case \"$loc\" in *\\?*) sep='&';; *) sep='?';; esac; \
         curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T {} \"$loc${{sep}}digest={digest}\" -o /dev/null",
        blob.display()
    );
    bed.run_ok(origin, "sh", &["-c", &script])?;
    Ok(())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn tx_bytes(bed: &Bed, host: &Host) -> Result<u64> {
    let out = bed.run_ok(host, "cat", &["/sys/class/net/eth0/statistics/tx_bytes"])?;
    out.trim().parse().context("tx_bytes")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing cached anywhere: the mirror fetches from the origin while it serves the pool.
    P2pCold,
    /// The mirror keeps what the cold run cached; agents start empty. Tells the cold mirror's
    /// share of the time from the P2P protocol's.
    P2pWarmMirror,
    Source,
}

/// One poolcast rollout of the blob: fresh agent caches (and a fresh mirror cache unless
/// `P2pWarmMirror`), every node asks its agent at once (curl inside the node's namespace),
/// every result is checked against the digest.
fn poolcast_run(s: &Setup, opts: &Opts, mode: Mode, method: &'static str) -> Result<Outcome> {
    eprintln!("fanout: {method}");
    let bed = &s.bed;
    let p2p = mode != Mode::Source;
    let tag = match mode {
        Mode::P2pCold => "p2p",
        Mode::P2pWarmMirror => "p2p-warm",
        Mode::Source => "source",
    };
    let mirror_cache = match mode {
        Mode::P2pWarmMirror => bed.dir().join("mirror-p2p"),
        _ => bed.fresh_dir(&format!("mirror-{tag}")),
    };
    let mut procs: Vec<ProcId> = Vec::new();
    procs.push(parts::start_mirror(
        bed,
        &s.mirror,
        &s.origin,
        &mirror_cache,
    )?);
    if p2p {
        procs.push(parts::start_scheduler(bed, &s.scheduler, None)?);
    }
    let spec = AgentSpec {
        mirror: s.mirror.clone(),
        scheduler: p2p.then(|| s.scheduler.clone()),
        pool: "bench".into(),
        blocksize: Some(opts.blocksize.clone()),
        extra: vec![],
    };
    for node in &s.nodes {
        let cache = bed.fresh_dir(&format!("{}-{tag}-cache", node.name));
        procs.push(parts::start_agent(bed, node, &spec, &cache)?);
    }
    let (origin0, mirror0) = (tx_bytes(bed, &s.origin)?, tx_bytes(bed, &s.mirror)?);
    let start = now();
    let pulls: Vec<_> = s
        .nodes
        .iter()
        .map(|node| {
            let out = bed.dir().join(format!("{}-{tag}.blob", node.name));
            let url = format!(
                "http://{}:{AGENT_PORT}/v2/bench/blob/blobs/{}",
                node.ip, s.digest
            );
            let node = node.clone();
            std::thread::spawn(move || {
                let out_s = out.display().to_string();
                let r = edge_tests::bed::run_in(
                    &node,
                    "curl",
                    &["-sf", "-o", &out_s, &url],
                    Duration::from_secs(1800),
                );
                (r, now(), out)
            })
        })
        .collect();
    let mut times = Vec::new();
    for (pull, node) in pulls.into_iter().zip(&s.nodes) {
        let (r, done, out) = pull
            .join()
            .map_err(|_| anyhow::anyhow!("pull thread panicked"))?;
        let ok = r.map(|o| o.status.success()).unwrap_or(false)
            && sha256_file(&out).ok().as_deref() == Some(s.digest.trim_start_matches("sha256:"));
        if ok {
            times.push(done - start);
        } else {
            eprintln!(
                "fanout: {method}: {} did NOT get the verified blob after {:.1} s",
                node.name,
                done - start
            );
        }
        let _ = std::fs::remove_file(&out);
    }
    let outcome = Outcome {
        method,
        times,
        origin_sent: tx_bytes(bed, &s.origin)? - origin0,
        source_sent: tx_bytes(bed, &s.mirror)? - mirror0,
    };
    for id in procs {
        bed.kill(id);
    }
    Ok(outcome)
}

/// BitTorrent: opentracker on the scheduler's host, the seed on the mirror's host.
fn bittorrent_run(s: &Setup, opts: &Opts) -> Result<Outcome> {
    eprintln!("fanout: bittorrent (aria2c, opentracker)");
    let bed = &s.bed;
    let (torrent, hash) = torrent::make_torrent(bed, &s.scheduler, &s.blob, opts.bt_piece_log2)?;
    let mut procs = vec![torrent::start_tracker(bed, &s.scheduler, &hash)?];
    let seed_dir = s.blob.parent().context("blob dir")?;
    procs.push(torrent::start_seed(bed, &s.mirror, &torrent, seed_dir)?);
    std::thread::sleep(Duration::from_secs(2)); // the seed checks its copy and announces
    let (origin0, mirror0) = (tx_bytes(bed, &s.origin)?, tx_bytes(bed, &s.mirror)?);
    let start = now();
    let dirs: Vec<PathBuf> = s
        .nodes
        .iter()
        .map(|n| bed.fresh_dir(&format!("{}-bt", n.name)))
        .collect();
    for (node, dir) in s.nodes.iter().zip(&dirs) {
        procs.push(torrent::start_leecher(bed, node, &torrent, dir)?);
    }
    let deadline = start + 1800.0;
    let mut times: Vec<Option<f64>> = vec![None; dirs.len()];
    while times.iter().any(Option::is_none) && now() < deadline {
        for (t, dir) in times.iter_mut().zip(&dirs) {
            if t.is_none() {
                if let Ok(text) = std::fs::read_to_string(dir.join("done")) {
                    if let Ok(done) = text.trim().parse::<f64>() {
                        *t = Some(done - start);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut verified = Vec::new();
    for ((t, dir), node) in times.iter().zip(&dirs).zip(&s.nodes) {
        let ok = sha256_file(&dir.join("blob")).ok().as_deref()
            == Some(s.digest.trim_start_matches("sha256:"));
        match t {
            Some(t) if ok => verified.push(*t),
            _ => eprintln!(
                "fanout: bittorrent: {} did NOT get the verified blob",
                node.name
            ),
        }
    }
    let outcome = Outcome {
        method: "bittorrent (aria2c)",
        times: verified,
        origin_sent: tx_bytes(bed, &s.origin)? - origin0,
        source_sent: tx_bytes(bed, &s.mirror)? - mirror0,
    };
    for id in procs {
        bed.kill(id);
    }
    Ok(outcome)
}

fn report(opts: &Opts, outcomes: &mut [Outcome]) {
    let (n, size) = (opts.nodes as f64, opts.size as f64);
    let rate = f64::from(opts.mbit) * 1e6 / 8.0; // bytes/s, every link
    let bound = (size / rate)
        .max(size / rate)
        .max(n * size / (rate + n * rate));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "fan-out of one {} MiB blob to {} nodes, every link {} mbit each way, MTU {}",
        opts.size >> 20,
        opts.nodes,
        opts.mbit,
        opts.mtu
    );
    println!(
        "Kumar-Ross bound max(S/u_s, S/d_min, N*S/(u_s+sum u_i)) = {bound:.2} s \
         (poolcast pieces {}, BitTorrent pieces {} KiB)",
        opts.blocksize,
        (1u64 << opts.bt_piece_log2) >> 10
    );
    println!(
        "{:<22} {:>9} {:>8} {:>9} {:>10} {:>18} {:>20}",
        "method",
        "last (s)",
        "median",
        "last/bnd",
        "median/bnd",
        "origin sent (MiB)",
        "source sent (MiB)"
    );
    for o in outcomes.iter_mut() {
        o.times.sort_by(f64::total_cmp);
        let complete = o.times.len() == usize::from(opts.nodes);
        let last = o.times.last().copied().unwrap_or(f64::NAN);
        let median = o
            .times
            .get(o.times.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "{:<22} {:>9.2} {:>8.2} {:>9.2} {:>10.2} {:>18.1} {:>20.1}{}",
            o.method,
            last,
            median,
            last / bound,
            median / bound,
            mib(o.origin_sent),
            mib(o.source_sent),
            if complete {
                String::new()
            } else {
                format!("  ({} of {} nodes verified)", o.times.len(), opts.nodes)
            }
        );
    }
    println!(
        "(sent = bytes leaving the host's eth0, headers included; one copy = {:.1} MiB)",
        size / (1 << 20) as f64
    );
}
