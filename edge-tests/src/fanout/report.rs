//! What a run prints: a header naming the bed, every setting the harness gave poolcast and the
//! bound with its inputs, then one markdown row per method, ready for docs/benchmarks.md.

use super::links::Bound;
use super::setup::Payload;

/// What one method achieved.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub label: String,
    pub payload: Payload,
    /// Seconds from the start until each node had a verified copy (unsorted; nodes that did
    /// not are missing).
    pub times: Vec<f64>,
    /// Bytes that left the origin's and the mirror's (or the seed's) `eth0`.
    pub origin_sent: u64,
    pub source_sent: u64,
}

pub const TABLE_HEAD: &str = "| method | nodes | links down/up | MTU | S (MiB) | bound (s) | last (s) | median (s) \
    | last / bound | median / bound | origin sent, MiB (copies) | mirror / seed sent, MiB (copies) |\n\
    | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

/// One row: `links` as [`super::links::Links::short`] puts it.
pub fn row(o: &Outcome, bound: &Bound, links: &str, mtu: u32) -> String {
    let mut times = o.times.clone();
    times.sort_by(f64::total_cmp);
    let last = times.last().copied().unwrap_or(f64::NAN);
    let median = times
        .get(times.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let b = bound.seconds();
    let size = bound.size as f64;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let sent = |bytes: u64| format!("{:.1} ({:.2})", mib(bytes), bytes as f64 / size);
    let method = if times.len() == bound.nodes {
        o.label.clone()
    } else {
        format!(
            "{} **{} of {} verified**",
            o.label,
            times.len(),
            bound.nodes
        )
    };
    format!(
        "| {method} | {} | {links} | {mtu} | {:.1} | {b:.2} | {last:.2} | {median:.2} | **{:.2}** | {:.2} | {} | {} |",
        bound.nodes,
        size / (1 << 20) as f64,
        last / b,
        median / b,
        sent(o.origin_sent),
        sent(o.source_sent),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::links::Links;

    fn outcome(times: Vec<f64>) -> Outcome {
        Outcome {
            label: "poolcast p2p, curl blob (cold)".into(),
            payload: Payload::Blob,
            times,
            origin_sent: 135 << 20,
            source_sent: 270 << 20,
        }
    }

    #[test]
    fn a_row_gives_last_and_median_against_the_bound_and_bytes_in_copies() {
        let rate = "50mbit".parse().expect("rate");
        let links = Links::new(4, rate, rate, 0.0, rate);
        let bound = links.bound(135 << 20);
        let b = bound.seconds();
        let row = row(
            &outcome(vec![2.0 * b, 1.0 * b, 1.5 * b, 1.2 * b]),
            &bound,
            &links.short(),
            1500,
        );
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells[0], "| poolcast p2p, curl blob (cold)");
        assert_eq!(cells[1], "4");
        assert_eq!(cells[2], "50mbit/50mbit, mirror 50mbit");
        assert_eq!(cells[3], "1500");
        assert_eq!(cells[4], "135.0");
        assert_eq!(cells[8], "**2.00**", "last / bound: {row}");
        assert_eq!(cells[9], "1.20", "the lower median of four / bound: {row}");
        assert_eq!(cells[10], "135.0 (1.00)");
        assert_eq!(cells[11], "270.0 (2.00) |");
        assert_eq!(
            row.matches(" | ").count() + 2,
            TABLE_HEAD
                .lines()
                .next()
                .expect("head")
                .matches('|')
                .count()
        );
    }

    #[test]
    fn a_row_says_when_nodes_are_missing() {
        let rate = "50mbit".parse().expect("rate");
        let links = Links::new(4, rate, rate, 0.0, rate);
        let row = row(&outcome(vec![3.0]), &links.bound(1 << 20), "x", 9000);
        assert!(row.contains("**1 of 4 verified**"), "{row}");
        let row = super::row(&outcome(vec![]), &links.bound(1 << 20), "x", 9000);
        assert!(row.contains("| NaN |"), "{row}");
    }
}
