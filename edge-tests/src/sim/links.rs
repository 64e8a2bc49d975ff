//! The links of the simulated pool: every transfer a flow, flows sharing each host's uplink and
//! downlink max-min fairly (what TCP flows through shaped links come close to).

use super::Spec;

#[derive(Debug)]
pub(super) struct Flow {
    pub src: usize,
    pub dst: usize,
    /// The pieces it carries: one for a push, a run for a mirror range.
    pub piece: u32,
    pub count: u32,
    /// Pieces of a mirror range already delivered.
    pub delivered: u32,
    pub mirror: bool,
    /// Payload bytes sent so far, and in all.
    pub sent: f64,
    pub len: f64,
    pub rate: f64,
}

/// Max-min fair rates: each host's uplink and downlink shared by its flows, bottlenecks
/// filled first (progressive filling).
pub(super) fn share(spec: &Spec, flows: &mut [Flow], frontier: f64) {
    let hosts = spec.nodes + 1;
    let eff = spec.efficiency;
    // Links: 0..hosts uplinks, hosts..2*hosts downlinks.
    let mut rem = vec![0.0f64; 2 * hosts];
    for i in 0..spec.nodes {
        rem[i] = spec.node_up[i] * eff;
        rem[hosts + i] = spec.node_down[i] * eff;
    }
    let piece = spec.piece_size as f64;
    rem[spec.nodes] = spec.mirror_up * eff * piece / (piece + spec.mirror_piece_overhead as f64);
    rem[hosts + spec.nodes] = f64::INFINITY;
    let piece_size = spec.piece_size as f64;
    let active: Vec<bool> = flows
        .iter()
        .map(|f| !f.mirror || frontier - f64::from(f.piece) * piece_size > f.sent + 1.0)
        .collect();
    let mut count = vec![0u32; 2 * hosts];
    let mut on_link: Vec<Vec<usize>> = vec![Vec::new(); 2 * hosts];
    for (k, f) in flows.iter().enumerate() {
        if !active[k] {
            continue;
        }
        count[f.src] += 1;
        count[hosts + f.dst] += 1;
        on_link[f.src].push(k);
        on_link[hosts + f.dst].push(k);
    }
    let mut frozen: Vec<bool> = active.iter().map(|a| !a).collect();
    for f in flows.iter_mut() {
        f.rate = 0.0;
    }
    let mut heap = std::collections::BinaryHeap::new();
    for l in 0..2 * hosts {
        if count[l] > 0 {
            heap.push(std::cmp::Reverse((
                Share(rem[l] / f64::from(count[l])),
                l,
                count[l],
            )));
        }
    }
    while let Some(std::cmp::Reverse((Share(share), l, c))) = heap.pop() {
        if c != count[l] || count[l] == 0 {
            continue;
        }
        for &k in &on_link[l] {
            if frozen[k] {
                continue;
            }
            frozen[k] = true;
            flows[k].rate = share;
            let (up, down) = (flows[k].src, hosts + flows[k].dst);
            for link in [up, down] {
                rem[link] = (rem[link] - share).max(0.0);
                count[link] -= 1;
                if link != l && count[link] > 0 {
                    heap.push(std::cmp::Reverse((
                        Share(rem[link] / f64::from(count[link])),
                        link,
                        count[link],
                    )));
                }
            }
        }
    }
}

/// A share of a link in bytes per second, ordered for the heap.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
