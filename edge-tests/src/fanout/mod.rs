//! The fan-out benchmark (`src/bin/fanout.rs`): one payload from one source to N nodes over
//! shaped links, every method on one bed in one run, against the Kumar-Ross bound
//! `max(S/u_mirror, S/min d_i, N*S/(u_mirror + sum u_i))`.
//!
//! ```text
//!   origin ──(mirror's link)──> mirror / BitTorrent seed ──┬──> n1 (down d_1, up u_1)
//!   (docker-registry)           scheduler / tracker        ├──> n2      ...
//!                               (both on the mirror's rate) └──> nN   curl, skopeo or aria2c
//! ```
//!
//! The payload is a random blob (`curl` of it by digest through each node's agent) or an image
//! of several layers (`skopeo copy` of it by tag through each node's agent, layers in
//! parallel as skopeo and containerd pull them); BitTorrent moves the same bytes as a single-
//! or multi-file torrent. poolcast runs at its defaults: the harness gives the agents and the
//! mirror only where to listen, whom to talk to, their pool, secret and cache, unless a tuning
//! flag is asked for (`--blocksize`, `--agent-arg`, `--mirror-arg`), and then the header says so.

mod bittorrent;
mod links;
mod poolcast;
mod report;
mod setup;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::bed::require_tools;
use crate::parts;
pub use links::{parse_spread, Bound, Links, Rate};
pub use report::Outcome;
pub use setup::{layer_sizes, Payload};

/// One payload from one source to N nodes over shaped links: poolcast (p2p cold and with a warm
/// mirror, source mode) and BitTorrent, a blob with curl and an image with skopeo, against the
/// Kumar-Ross bound. Needs root.
#[derive(clap::Parser, Debug)]
pub struct Opts {
    /// Nodes in the pool (1 to 200).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub nodes: u16,
    /// Bytes to move (B, KiB, MiB or GiB): the blob, or the image's layer files in all.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub size: u64,
    /// Every link's rate both ways unless --down, --up or --mirror-rate say otherwise
    /// (e.g. 50mbit, 7.5mbit, 800kbit).
    #[arg(long, default_value = "50mbit")]
    pub rate: Rate,
    /// The nodes' download rate; default --rate.
    #[arg(long)]
    pub down: Option<Rate>,
    /// The nodes' upload rate (their mean with --up-spread); default --rate.
    #[arg(long)]
    pub up: Option<Rate>,
    /// Unequal uplinks: node i of N uploads at up*(1-F+2F*i/(N-1)), evenly from up*(1-F) to
    /// up*(1+F). 0 <= F < 1.
    #[arg(long, default_value = "0", value_parser = parse_spread)]
    pub up_spread: f64,
    /// The mirror's link both ways, and the origin's and the scheduler's (the BitTorrent seed
    /// runs on the mirror's host, the tracker on the scheduler's); default --rate.
    #[arg(long)]
    pub mirror_rate: Option<Rate>,
    /// Every link's MTU in bytes. Jumbo frames by default: the bytes a shaped link carries per
    /// second are the same, but at 1500 bytes the kernel's per-packet work for 16-32 emulated
    /// hosts saturates two cores before the links fill (see scripts/bench-bed-capacity.sh).
    #[arg(long, default_value_t = 9000)]
    pub mtu: u32,
    /// Every host's TCP congestion control (`host`: the machine's default). Linux's default
    /// unless told otherwise; see `edge_tests::bed::DEFAULT_CONGESTION`.
    #[arg(long, default_value = crate::bed::DEFAULT_CONGESTION)]
    pub congestion: String,
    /// Layers of the image the -image methods pull (sizes 6/21, 5/21, ... of --size for 6).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub layers: u16,
    /// Override the agents' piece size (`blocksize`); default: the agent's own default.
    #[arg(long)]
    pub blocksize: Option<String>,
    /// Another agent flag, passed as it is (repeat for more): --agent-arg=--ratelimit=0.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// A mirror flag, passed as it is (repeat for more).
    #[arg(long = "mirror-arg", allow_hyphen_values = true)]
    pub mirror_args: Vec<String>,
    /// BitTorrent piece size as a power of two (mktorrent -l).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(15..=28))]
    pub bt_piece_log2: u32,
    /// Which methods to run, in order, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "p2p,p2p-image,bittorrent,bittorrent-image"
    )]
    pub methods: Vec<Method>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// poolcast p2p, cold mirror, curl of the blob.
    P2p,
    /// poolcast p2p, the mirror already holding the blob.
    P2pWarm,
    /// poolcast source mode (no scheduler), curl of the blob.
    Source,
    /// poolcast p2p, cold mirror, skopeo of the image.
    P2pImage,
    /// poolcast p2p, the mirror already holding the image.
    P2pImageWarm,
    /// poolcast source mode, skopeo of the image.
    SourceImage,
    /// aria2c, a single-file torrent of the blob.
    Bittorrent,
    /// aria2c, one multi-file torrent of the image's blobs.
    BittorrentImage,
}

impl Method {
    pub fn payload(self) -> Payload {
        match self {
            Method::P2p | Method::P2pWarm | Method::Source | Method::Bittorrent => Payload::Blob,
            _ => Payload::Image,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Method::P2p => "poolcast p2p, curl blob (cold)",
            Method::P2pWarm => "poolcast p2p, curl blob (warm mirror)",
            Method::Source => "poolcast source, curl blob",
            Method::P2pImage => "poolcast p2p, skopeo image (cold)",
            Method::P2pImageWarm => "poolcast p2p, skopeo image (warm mirror)",
            Method::SourceImage => "poolcast source, skopeo image",
            Method::Bittorrent => "BitTorrent (aria2c), blob",
            Method::BittorrentImage => "BitTorrent (aria2c), image files",
        }
    }

    fn poolcast_mode(self) -> Option<poolcast::Mode> {
        match self {
            Method::P2p | Method::P2pImage => Some(poolcast::Mode::P2pCold),
            Method::P2pWarm | Method::P2pImageWarm => Some(poolcast::Mode::P2pWarmMirror),
            Method::Source | Method::SourceImage => Some(poolcast::Mode::Source),
            Method::Bittorrent | Method::BittorrentImage => None,
        }
    }
}

/// The flags the harness gives poolcast beyond wiring; none unless asked for.
#[derive(Clone, Debug, Default)]
pub struct Knobs {
    pub blocksize: Option<String>,
    pub agent_args: Vec<String>,
    pub mirror_args: Vec<String>,
}

impl Knobs {
    pub fn from_opts(opts: &Opts) -> Knobs {
        Knobs {
            blocksize: opts.blocksize.clone(),
            agent_args: opts.agent_args.clone(),
            mirror_args: opts.mirror_args.clone(),
        }
    }

    /// `agents: defaults; mirror: defaults`, or the flags given.
    pub fn describe(&self) -> String {
        let mut agent: Vec<String> = self
            .blocksize
            .iter()
            .flat_map(|b| ["--blocksize".to_owned(), b.clone()])
            .collect();
        agent.extend(self.agent_args.iter().cloned());
        let show = |flags: &[String]| match flags {
            [] => "defaults (no tuning flag)".to_owned(),
            flags => flags.join(" "),
        };
        format!(
            "agents: {}; mirror: {}",
            show(&agent),
            show(&self.mirror_args)
        )
    }
}

pub fn parse_size(s: &str) -> Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("size {s:?}: a whole number and B, KiB, MiB or GiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => anyhow::bail!("size {s:?}: use B, KiB, MiB or GiB"),
    };
    match n.checked_mul(mult) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => anyhow::bail!("size {s:?}: use 1 B to 16 EiB"),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Builds the bed, runs every method in order, prints the header and the table.
pub fn run(opts: &Opts) -> Result<()> {
    let mut tools = vec!["docker-registry", "curl"];
    let has = |f: fn(&Method) -> bool| opts.methods.iter().any(f);
    if has(|m| m.payload() == Payload::Image) {
        tools.push("skopeo"); // pushes the image to the origin, and pulls it
    }
    if has(|m| m.poolcast_mode().is_none()) {
        tools.extend(["aria2c", "opentracker", "mktorrent"]);
    }
    require_tools(&tools)?;
    eprintln!(
        "fanout: poolcast binary {}",
        parts::poolcast_bin()?.display()
    );
    let rate = opts.rate;
    let links = Links::new(
        usize::from(opts.nodes),
        opts.down.unwrap_or(rate),
        opts.up.unwrap_or(rate),
        opts.up_spread,
        opts.mirror_rate.unwrap_or(rate),
    );
    let payloads: Vec<Payload> = opts.methods.iter().map(|m| m.payload()).collect();
    let setup = setup::Setup::build(
        links,
        opts.mtu,
        (opts.congestion != "host").then_some(opts.congestion.as_str()),
        opts.size,
        opts.layers,
        &payloads,
    )?;
    let knobs = Knobs::from_opts(opts);
    let mut warm = poolcast::WarmCaches::new();
    let mut outcomes = Vec::new();
    for &method in &opts.methods {
        let (payload, label) = (method.payload(), method.label());
        let outcome = match method.poolcast_mode() {
            Some(mode) => poolcast::run(&setup, &knobs, payload, mode, label, &mut warm),
            None => bittorrent::run(&setup, payload, opts.bt_piece_log2, label),
        };
        // One method that could not run (a process that did not start, say) costs its row,
        // not the others' figures.
        outcomes.push(outcome.unwrap_or_else(|e| {
            eprintln!("fanout: {label} did not run: {e:#}");
            Outcome {
                label: format!("{label} (did not run)"),
                payload,
                times: Vec::new(),
                origin_sent: 0,
                source_sent: 0,
            }
        }));
    }

    println!(
        "fan-out to {} nodes, {}, MTU {}, TCP {}; {}; BitTorrent pieces {} KiB",
        opts.nodes,
        setup.links.describe(),
        opts.mtu,
        opts.congestion,
        knobs.describe(),
        (1u64 << opts.bt_piece_log2) >> 10
    );
    for payload in [Payload::Blob, Payload::Image] {
        if let Ok(size) = setup.size(payload) {
            let what = match payload {
                Payload::Blob => "blob".to_owned(),
                Payload::Image => format!("image, {} layers + config", opts.layers),
            };
            println!(
                "Kumar-Ross bound, {what}: {}",
                setup.links.bound(size).explain()
            );
        }
    }
    println!();
    println!("{}", report::TABLE_HEAD);
    for o in &outcomes {
        let bound = setup.links.bound(setup.size(o.payload)?);
        println!("{}", report::row(o, &bound, &setup.links.short(), opts.mtu));
    }
    println!("\n(sent: bytes leaving the host's eth0, every frame's headers included (its tbf queue's count); copies: of S)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_default_run_sets_no_tuning_flag_and_runs_every_method_on_both_payloads() {
        let opts = Opts::try_parse_from(["fanout"]).expect("defaults parse");
        let knobs = Knobs::from_opts(&opts);
        assert!(knobs.blocksize.is_none() && knobs.agent_args.is_empty());
        assert!(knobs.mirror_args.is_empty());
        assert_eq!(
            knobs.describe(),
            "agents: defaults (no tuning flag); mirror: defaults (no tuning flag)"
        );
        assert_eq!(
            opts.methods,
            [
                Method::P2p,
                Method::P2pImage,
                Method::Bittorrent,
                Method::BittorrentImage
            ]
        );
        assert_eq!((opts.down, opts.up, opts.mirror_rate), (None, None, None));
    }

    #[test]
    fn tuning_flags_are_passed_and_named_in_the_header() {
        let opts = Opts::try_parse_from([
            "fanout",
            "--blocksize",
            "1MiB",
            "--agent-arg=--ratelimit=0",
            "--agent-arg",
            "--upload-rate=4M",
            "--mirror-arg=--ratelimit=512M",
            "--methods",
            "p2p-image-warm,source-image",
        ])
        .expect("parse");
        assert_eq!(
            Knobs::from_opts(&opts).describe(),
            "agents: --blocksize 1MiB --ratelimit=0 --upload-rate=4M; mirror: --ratelimit=512M"
        );
        assert_eq!(opts.methods, [Method::P2pImageWarm, Method::SourceImage]);
    }

    #[test]
    fn asymmetric_links_take_their_rates_from_down_up_and_mirror_rate() {
        let opts = Opts::try_parse_from([
            "fanout",
            "--down=50mbit",
            "--up=10mbit",
            "--mirror-rate=100mbit",
            "--up-spread=0.5",
        ])
        .expect("parse");
        assert_eq!(opts.up_spread, 0.5);
        assert_eq!(opts.mirror_rate, Some("100mbit".parse().expect("rate")));
        assert!(Opts::try_parse_from(["fanout", "--up-spread=1.5"]).is_err());
        assert!(Opts::try_parse_from(["fanout", "--down=50"]).is_err());
    }

    #[test]
    fn sizes_read_with_their_units_and_bad_ones_say_so() {
        assert_eq!(parse_size("128MiB").expect("size"), 128 << 20);
        assert_eq!(parse_size("4096").expect("size"), 4096);
        for bad in ["", "0MiB", "12MB", "MiB", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
