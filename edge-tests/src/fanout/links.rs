//! The bed's link rates and the Kumar-Ross bound they set. Nodes may download faster than they
//! upload (edge sites often upload at a fifth of their download) and their uplinks may differ;
//! the mirror's link (also the origin's and the scheduler's) has a rate of its own.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

use crate::bed::Link;

/// A link rate as tc writes it: `50mbit`, `7.5mbit`, `800kbit`, `1gbit`. Kept in bits per
/// second, whole kbit, so what is shaped is exactly what the bound is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate {
    bps: u64,
}

impl Rate {
    pub fn from_bps(bps: u64) -> Rate {
        // tc's tbf takes any rate; whole kbit keeps what the header prints and what is shaped
        // the same number.
        Rate {
            bps: (bps + 500) / 1000 * 1000,
        }
    }

    pub fn bps(self) -> u64 {
        self.bps
    }

    /// Bytes per second, as the bound counts them (headers are not payload: the bound is at
    /// the nominal rate).
    pub fn bytes_per_sec(self) -> f64 {
        self.bps as f64 / 8.0
    }
}

impl FromStr for Rate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Rate> {
        let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)]
            .iter()
            .find_map(|(unit, mult)| s.strip_suffix(unit).map(|n| (n, *mult)))
            .with_context(|| format!("rate {s:?}: write e.g. 50mbit, 7.5mbit or 800kbit"))?;
        let n: f64 = num
            .parse()
            .with_context(|| format!("rate {s:?}: {num:?} is not a number"))?;
        ensure!(
            n.is_finite() && n * mult >= 1e3 && n * mult <= 100e9,
            "rate {s:?}: use 1kbit to 100gbit"
        );
        Ok(Rate::from_bps((n * mult).round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bps;
        if b.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", b / 1_000_000)
        } else if b >= 1_000_000 {
            write!(f, "{}mbit", b as f64 / 1e6)
        } else {
            write!(f, "{}kbit", b / 1000)
        }
    }
}

/// `--up-spread`: a fraction in [0, 1).
pub fn parse_spread(s: &str) -> Result<f64> {
    let f: f64 = s
        .parse()
        .with_context(|| format!("spread {s:?} is not a number"))?;
    if !(0.0..1.0).contains(&f) {
        bail!("spread {s}: use 0 (equal uplinks) up to but not including 1");
    }
    Ok(f)
}

/// Every host's rates on one bed.
#[derive(Clone, Debug, PartialEq)]
pub struct Links {
    /// The mirror's link both ways; the origin, the scheduler (and the BitTorrent seed, which
    /// runs on the mirror's host, and its tracker) get the same.
    pub mirror: Rate,
    /// Per node, in node order (n1 first).
    pub node_down: Vec<Rate>,
    pub node_up: Vec<Rate>,
    /// The `--up-spread` the uplinks were spread by (0: all equal).
    pub up_spread: f64,
}

impl Links {
    /// `nodes` nodes downloading at `down` and uploading at `up`, or with `spread` > 0 at
    /// `up*(1-spread)` .. `up*(1+spread)` spread evenly (node i of n at
    /// `up*(1-spread+2*spread*i/(n-1))`, as the simulator spreads them), the mean still `up`.
    pub fn new(nodes: usize, down: Rate, up: Rate, spread: f64, mirror: Rate) -> Links {
        let node_up = (0..nodes)
            .map(|i| {
                let f = 1.0 - spread + 2.0 * spread * i as f64 / (nodes.max(2) - 1) as f64;
                Rate::from_bps((up.bps as f64 * f).round() as u64)
            })
            .collect();
        Links {
            mirror,
            node_down: vec![down; nodes],
            node_up,
            up_spread: spread,
        }
    }

    /// Node `i`'s link (0-based).
    pub fn node(&self, i: usize) -> Link {
        Link {
            up_bps: self.node_up[i].bps,
            down_bps: self.node_down[i].bps,
        }
    }

    pub fn mirror_link(&self) -> Link {
        Link::symmetric(self.mirror.bps)
    }

    /// The bound for moving `size` bytes from the mirror to every node.
    pub fn bound(&self, size: u64) -> Bound {
        Bound {
            size,
            nodes: self.node_up.len(),
            mirror_up: self.mirror,
            min_down: self.node_down.iter().copied().min().unwrap_or(self.mirror),
            sum_up: Rate {
                bps: self.node_up.iter().map(|r| r.bps).sum(),
            },
        }
    }

    /// `nodes down 50mbit / up 10mbit, mirror 50mbit`, the spread's range when there is one.
    pub fn describe(&self) -> String {
        let (down, up) = self.node_rates();
        format!("nodes down {down} / up {up}, mirror {}", self.mirror)
    }

    /// `50mbit/10mbit, mirror 50mbit` (nodes' down/up), for a table cell.
    pub fn short(&self) -> String {
        let (down, up) = self.node_rates();
        format!("{down}/{up}, mirror {}", self.mirror)
    }

    fn node_rates(&self) -> (Rate, String) {
        let down = self.node_down.first().copied().unwrap_or(self.mirror);
        let (lo, hi) = (
            self.node_up.iter().copied().min().unwrap_or(self.mirror),
            self.node_up.iter().copied().max().unwrap_or(self.mirror),
        );
        let up = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}..{hi} (spread {})", self.up_spread)
        };
        (down, up)
    }
}

/// `max(S/u_mirror, S/min d_i, N*S/(u_mirror + sum u_i))` and its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    pub size: u64,
    pub nodes: usize,
    pub mirror_up: Rate,
    pub min_down: Rate,
    pub sum_up: Rate,
}

impl Bound {
    /// The three terms in seconds: the mirror's uplink, the slowest downlink, every uplink.
    pub fn terms(&self) -> [f64; 3] {
        let s = self.size as f64;
        [
            s / self.mirror_up.bytes_per_sec(),
            s / self.min_down.bytes_per_sec(),
            self.nodes as f64 * s / (self.mirror_up.bytes_per_sec() + self.sum_up.bytes_per_sec()),
        ]
    }

    pub fn seconds(&self) -> f64 {
        self.terms().into_iter().fold(0.0, f64::max)
    }

    /// One line with every input and term, for the report's header.
    pub fn explain(&self) -> String {
        let [a, b, c] = self.terms();
        format!(
            "S = {} B ({:.2} MiB), N = {}: max(S/u_mirror = S/{} = {a:.2} s, S/min d_i = S/{} = {b:.2} s, \
             N*S/(u_mirror + sum u_i) = N*S/({} + {}) = {c:.2} s) = {:.2} s",
            self.size,
            self.size as f64 / (1 << 20) as f64,
            self.nodes,
            self.mirror_up,
            self.min_down,
            self.mirror_up,
            self.sum_up,
            self.seconds()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().expect("rate")
    }

    #[test]
    fn rates_read_as_tc_writes_them_and_print_back() {
        assert_eq!(rate("50mbit").bps(), 50_000_000);
        assert_eq!(rate("7.5mbit").bps(), 7_500_000);
        assert_eq!(rate("800kbit").bps(), 800_000);
        assert_eq!(rate("1gbit").bps(), 1_000_000_000);
        assert_eq!(rate("50mbit").to_string(), "50mbit");
        assert_eq!(rate("7.5mbit").to_string(), "7.5mbit");
        assert_eq!(rate("800kbit").to_string(), "800kbit");
        for bad in ["50", "50mb", "fastmbit", "0mbit", "-3mbit", "NaNmbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn spread_must_leave_every_uplink_above_zero() {
        assert_eq!(parse_spread("0.5").expect("spread"), 0.5);
        assert!(parse_spread("1").is_err());
        assert!(parse_spread("-0.1").is_err());
        assert!(parse_spread("x").is_err());
    }

    #[test]
    fn equal_links_bound_is_one_copy_over_the_link() {
        // 128 MiB at 50 mbit: the documented 21.47 s, whatever N.
        for n in [1, 8, 32] {
            let links = Links::new(n, rate("50mbit"), rate("50mbit"), 0.0, rate("50mbit"));
            let b = links.bound(128 << 20);
            assert!((b.seconds() - 21.47).abs() < 0.01, "{n}: {}", b.seconds());
        }
    }

    #[test]
    fn thin_uplinks_make_the_pools_upload_the_bound() {
        // 16 nodes at 50 down / 10 up, mirror 50: N*S/(50 + 160) mbit, not S/50.
        let links = Links::new(16, rate("50mbit"), rate("10mbit"), 0.0, rate("50mbit"));
        let b = links.bound(128 << 20);
        let s_bits = (128u64 << 20) as f64 * 8.0;
        assert!((b.seconds() - 16.0 * s_bits / 210e6).abs() < 1e-9);
        assert_eq!(b.sum_up, rate("160mbit"));
        assert!(b
            .explain()
            .contains("N*S/(u_mirror + sum u_i) = N*S/(50mbit + 160mbit)"));
        // A slow mirror binds when the pool's uplinks are plenty.
        let links = Links::new(4, rate("50mbit"), rate("50mbit"), 0.0, rate("10mbit"));
        assert!((links.bound(1 << 20).seconds() - 8.0 * (1 << 20) as f64 / 10e6).abs() < 1e-9);
    }

    #[test]
    fn spread_uplinks_span_the_range_evenly_around_the_same_mean() {
        let links = Links::new(5, rate("50mbit"), rate("10mbit"), 0.5, rate("50mbit"));
        let ups: Vec<String> = links.node_up.iter().map(Rate::to_string).collect();
        assert_eq!(ups, ["5mbit", "7.5mbit", "10mbit", "12.5mbit", "15mbit"]);
        assert_eq!(links.bound(1).sum_up, rate("50mbit"));
        assert_eq!(
            links.node(0),
            Link {
                up_bps: 5_000_000,
                down_bps: 50_000_000
            }
        );
        assert!(links.describe().contains("up 5mbit..15mbit (spread 0.5)"));
        assert_eq!(
            links.short(),
            "50mbit/5mbit..15mbit (spread 0.5), mirror 50mbit"
        );
    }
}
