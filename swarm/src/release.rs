//! Which node takes each fresh piece from the mirror first.
//!
//! A pool's mirror should send each piece once, and its uplink should not idle while pieces
//! remain (its link is the one every byte must cross). [`Releases`] keeps up to `in_flight`
//! runs of pieces leased to first holders at once and, each time a lease ends, hands the
//! lowest run not yet released to the node that has waited longest: every node of the pool
//! takes its turn as a first holder, and the peers' pushes spread each fresh piece from there
//! (rarest first), so a node's uplink carries its share whatever its turn. (Giving leases to
//! the node with the least upload queued was tried: a starved node, holding little and so with
//! little to push, took every lease, and its downlink carried only the mirror.) A lease whose
//! holder goes or lapses goes back to be handed out again.
//!
//! ```text
//!   node ──ask (completed pieces)──> Releases ──grant [run] (now, or when a lease ends)──> node
//!   node ──GET Range of the piece──> mirror          node ──push──> the rest of the pool
//! ```

use crate::pieces::PieceSet;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// Who holds a lease: the caller's key for a node.
pub type Holder = u64;

#[derive(Clone, Debug)]
pub struct ReleaseConfig {
    /// Leases of one blob at once: enough that the mirror's link stays busy across the round
    /// trips between one lease and the next.
    pub in_flight: u32,
    /// Consecutive pieces per lease (one mirror range), so small pieces do not each cost a
    /// round trip to the scheduler.
    pub run: u32,
    /// Leases one node may hold at once.
    pub per_holder: u32,
    /// A lease not completed within this is handed out again.
    pub lease: Duration,
}

/// Bytes leased at once per blob and pool: the mirror's link stays busy across the round trips
/// between leases, and no more is out than the pool can take in as it arrives. What is leased
/// and not yet in is what every node lacks when the mirror sends its last byte, so less is a
/// shorter tail: 2 MiB measured better than 4 MiB in the simulator (8 to 16 nodes, equal and
/// 50/10 links) and on the fan-out bed (docs/benchmarks.md, "Where the mirror's extra bytes go, and shorter leases"); 1 MiB was no
/// better on the bed and costs twice the scheduler's and the mirror's requests.
pub const LEASED_BYTES: u64 = 2 << 20;
/// How far ahead of the mirror's last leased byte of a blob the pool's nodes start their next
/// one, in the mirror's time ([`Releases::move_on`]): a node takes 0.2-0.4 s from starting a
/// blob to its first leased byte (the access check through the mirror, the piece list, the
/// join, the first lease).
pub const MOVE_ON_LEAD: Duration = Duration::from_millis(500);
/// Releases within this past span make the pool's release rate ([`Releases::move_on`]).
const RATE_SPAN: Duration = Duration::from_secs(1);
/// Most leases out at once per blob and pool: each is a range of its own on the mirror's
/// uplink. With 64 (32 nodes, one piece each) a shaped uplink whose queue holds a few packets
/// dropped the mirror's own segments before they left, and a connection refused by its own
/// queue retries only every 500 ms (Linux's resource probe): ranges then stood still for
/// `transferTimeout`. 32 measured 1.20 / 1.23 at 32 nodes against 1.24 / 1.34 (blob / image;
/// 16 the same, 8 worse), with no lease timed out (docs/benchmarks.md).
pub const MAX_IN_FLIGHT: u32 = 32;
/// Runs are cut as if at least this many leases were out: the first node to reach a blob
/// (one started ahead of its client, `storage::ahead`) gets runs no longer than in a pool of
/// eight, not all of [`LEASED_BYTES`], which its downlink alone would take seconds to carry.
/// Pools of fewer than eight nodes get this many leases too (more than two per node), so that
/// [`LEASED_BYTES`] are out whatever the pool's size: with two per node, a pool of two had
/// 512 KiB out, a lone node 256 KiB, and the mirror's uplink waited on the round trips
/// between leases (2 nodes 1.17, 4 nodes 1.10 of the bound on the fan-out bed; a lone node
/// 1.30 in the simulator; docs/benchmarks.md, "Small pools keep the mirror busy").
const RUN_FLOOR_IN_FLIGHT: u64 = 16;

impl ReleaseConfig {
    /// The leases for `members` nodes taking a blob in `piece_size` pieces, in pools of
    /// `nodes` live nodes: two per member (the next asked for while the first is fetched), at
    /// most [`MAX_IN_FLIGHT`], and runs long enough that [`LEASED_BYTES`] are out in all. A
    /// pool of fewer than eight nodes has the leases of eight (16 at 64 KiB pieces; as many as
    /// [`LEASED_BYTES`] holds of larger ones), shared by the members pulling the blob; in a
    /// larger pool each member holds two, and the first to reach a blob keeps two, as the
    /// rest are about to come. Measured in the simulator and on the fan-out bed (docs/benchmarks.md).
    pub fn for_pool(
        members: usize,
        nodes: usize,
        piece_size: u64,
        lease: Duration,
    ) -> ReleaseConfig {
        let piece_size = piece_size.max(1);
        let members = members.max(1);
        let small = nodes.max(members).saturating_mul(2) < RUN_FLOOR_IN_FLIGHT as usize;
        let mut in_flight = members.saturating_mul(2);
        if small {
            let floor = (LEASED_BYTES / piece_size).clamp(1, RUN_FLOOR_IN_FLIGHT) as usize;
            in_flight = in_flight.max(floor);
        }
        let in_flight = in_flight.clamp(2, MAX_IN_FLIGHT as usize) as u32;
        let cut = u64::from(in_flight).max(RUN_FLOOR_IN_FLIGHT);
        let run = (LEASED_BYTES / (cut * piece_size)).max(1);
        // In a small pool the members pulling share every lease (one node of four pulling
        // alone holds all 16); in a larger one each holds two.
        let per_holder = if small {
            in_flight.div_ceil(members as u32).max(2)
        } else {
            2
        };
        ReleaseConfig {
            in_flight,
            run: run.min(u64::from(u32::MAX)) as u32,
            per_holder,
            lease,
        }
    }

    /// Pieces out at most with every lease out: `in_flight` runs.
    pub fn window(&self) -> u64 {
        u64::from(self.in_flight.max(1)) * u64::from(self.run.max(1))
    }
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig::for_pool(8, 8, 64 << 10, Duration::from_secs(15))
    }
}

/// The answer to a waiting node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Pieces to take from the mirror and spread.
    pub pieces: Vec<u32>,
    /// Every piece is in the pool: stop asking; the mirror may now help with any piece.
    pub all_released: bool,
    /// Nearly every piece is leased to a first holder ([`Releases::move_on`]): a node
    /// may start its next blob (on the wire: `allLeased`).
    pub move_on: bool,
}

/// A run of pieces leased to one node, until each is completed (by it or anyone).
#[derive(Clone, Debug)]
struct Lease {
    holder: Holder,
    at: Duration,
    left: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    holder: Holder,
    since: Duration,
}

/// The first-holder leases of one blob in one group of pools that can pair.
#[derive(Debug)]
pub struct Releases {
    /// Lowest piece never leased.
    next: u32,
    /// Pieces whose lease ended without them: handed out again first.
    again: BTreeSet<u32>,
    leases: Vec<Lease>,
    released: PieceSet,
    waiting: Vec<Waiter>,
    /// When each piece released within the last [`RATE_SPAN`] was.
    recent: VecDeque<Duration>,
    /// Pieces of other blobs leased in this blob's group of pools, in this blob's pieces
    /// ([`Releases::share`]): they take from this blob's window.
    others: u64,
}

impl Releases {
    pub fn new(pieces: u32) -> Releases {
        Releases {
            next: 0,
            again: BTreeSet::new(),
            leases: Vec::new(),
            released: PieceSet::empty(pieces),
            waiting: Vec::new(),
            recent: VecDeque::new(),
            others: 0,
        }
    }

    /// Pieces leased now and not completed.
    pub fn leased(&self) -> u64 {
        self.leases.iter().map(|l| l.left.len() as u64).sum()
    }

    /// The mirror's uplink is one link whatever blobs its pool pulls: what other blobs of the
    /// group have leased (`others`, counted in this blob's pieces) takes from this blob's
    /// window of `in_flight` runs, so the pool's leases together stay within one window. An
    /// image's blobs then leave the mirror one after another, in the order the caller
    /// grants them, as one blob's pieces do, and a blob started ahead waits for the room its
    /// predecessor frees instead of adding its own window of ranges to the mirror's uplink
    /// (docs/benchmarks.md, "One window for a pool's blobs").
    pub fn share(&mut self, others: u64) {
        self.others = others;
    }

    /// Pieces this blob may still lease before its window (less what [`Releases::share`]
    /// gave to other blobs) is full.
    pub fn room(&self, cfg: &ReleaseConfig) -> u64 {
        let window = cfg.window();
        window.saturating_sub(self.leased() + self.others)
    }

    pub fn pieces(&self) -> u32 {
        self.released.len()
    }

    /// Pieces some node completed from the mirror.
    pub fn released(&self) -> u32 {
        self.released.count()
    }

    pub fn all_released(&self) -> bool {
        self.released.is_full()
    }

    /// Every piece is released or leased to a first holder now (a lease that lapses takes
    /// this back).
    pub fn all_leased(&self) -> bool {
        self.unleased() == 0
    }

    /// Pieces never leased, or whose lease ended without them.
    fn unleased(&self) -> u64 {
        u64::from(self.pieces().saturating_sub(self.next)) + self.again.len() as u64
    }

    /// Whether the pool's nodes may start their next blob (one started ahead of a client that
    /// pulls an image blob by blob, `storage::ahead`): every piece is leased, or what is left
    /// to lease fits in one more window of leases (`in_flight` runs) and in what the pool
    /// released in the last [`MOVE_ON_LEAD`] at its rate over the last second. The leases out
    /// and what is left then keep the mirror's uplink busy about as long as a node takes from
    /// starting a blob to its first leased byte, so the mirror moves on to the next blob
    /// without a gap, and the next blob's leases do not add flows to the mirror's for long.
    /// Waiting until every piece was leased left the mirror's uplink at 0.6-0.9 for a second at
    /// each layer change; a whole window ahead of a slow pool (32 nodes at 10 mbit: 4 MiB, 3 s
    /// of the mirror's link) doubled the mirror's flows for seconds and lost ranges
    /// (docs/benchmarks.md, "The next layer half a second early").
    pub fn move_on(&self, cfg: &ReleaseConfig, now: Duration) -> bool {
        let window = cfg.window();
        let recent = self
            .recent
            .iter()
            .filter(|&&at| now.saturating_sub(at) < RATE_SPAN)
            .count() as u64;
        let lead = recent * MOVE_ON_LEAD.as_millis() as u64 / RATE_SPAN.as_millis() as u64;
        self.all_leased() || self.unleased() <= window.min(lead)
    }

    /// Leases held now.
    pub fn in_flight(&self) -> usize {
        self.leases.len()
    }

    /// Whether any node is waiting for a grant.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether `holder` is waiting for a grant.
    pub fn is_waiting(&self, holder: Holder) -> bool {
        self.waiting.iter().any(|w| w.holder == holder)
    }

    /// `holder` reports the leased pieces it completed and, with `wait`, waits for more.
    /// Returns the grants to deliver now: to this holder, to others whose wait this ends, or
    /// none (the holder keeps waiting).
    pub fn ask(
        &mut self,
        cfg: &ReleaseConfig,
        holder: Holder,
        completed: &[u32],
        wait: bool,
        now: Duration,
    ) -> Vec<(Holder, Grant)> {
        let mut done = false;
        for &piece in completed {
            if piece >= self.released.len() {
                continue;
            }
            self.again.remove(&piece);
            if self.released.insert(piece) {
                self.recent.push_back(now);
            }
            // Any lease of it ends there: a lapsed lease handed out again may be completed by
            // either node, and both copies are good.
            for lease in &mut self.leases {
                lease.left.retain(|&p| p != piece);
            }
            done = true;
        }
        if done {
            self.leases.retain(|l| !l.left.is_empty());
        }
        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_sub(at) >= RATE_SPAN)
        {
            self.recent.pop_front();
        }
        // A report alone (no `wait`) leaves a request of the holder that is waiting alone.
        if wait && !self.is_waiting(holder) {
            self.waiting.push(Waiter { holder, since: now });
        }
        self.grant(cfg, now)
    }

    /// `holder` stopped waiting (its request ended) without a grant.
    pub fn cancel(&mut self, holder: Holder) {
        self.waiting.retain(|w| w.holder != holder);
    }

    /// `holder` is gone: its leases go back to be handed out again.
    pub fn leave(
        &mut self,
        cfg: &ReleaseConfig,
        holder: Holder,
        now: Duration,
    ) -> Vec<(Holder, Grant)> {
        self.cancel(holder);
        self.take_back(|l| l.holder == holder);
        self.grant(cfg, now)
    }

    /// Leases older than `cfg.lease` go back to be handed out again.
    pub fn expire(&mut self, cfg: &ReleaseConfig, now: Duration) -> Vec<(Holder, Grant)> {
        let lease = cfg.lease;
        self.take_back(|l| now.saturating_sub(l.at) >= lease);
        self.grant(cfg, now)
    }

    fn take_back(&mut self, which: impl Fn(&Lease) -> bool) {
        let (gone, kept): (Vec<Lease>, Vec<Lease>) = std::mem::take(&mut self.leases)
            .into_iter()
            .partition(which);
        self.leases = kept;
        for piece in gone.into_iter().flat_map(|l| l.left) {
            if !self.released.contains(piece) {
                self.again.insert(piece);
            }
        }
    }

    /// Up to `max` consecutive pieces to lease next: pieces whose lease ended first.
    fn next_run(&mut self, max: u32) -> Vec<u32> {
        let mut run = Vec::new();
        if let Some(&first) = self.again.first() {
            let mut p = first;
            while run.len() < max as usize && self.again.remove(&p) {
                run.push(p);
                p += 1;
            }
            return run;
        }
        while run.len() < max as usize && self.next < self.released.len() {
            run.push(self.next);
            self.next += 1;
        }
        run
    }

    /// Hands out what the window has room for to the nodes waiting (the caller's pass after
    /// another blob of the group freed room: [`Releases::share`]).
    pub fn grant(&mut self, cfg: &ReleaseConfig, now: Duration) -> Vec<(Holder, Grant)> {
        let mut out = Vec::new();
        if self.all_released() {
            for w in self.waiting.drain(..) {
                out.push((
                    w.holder,
                    Grant {
                        pieces: Vec::new(),
                        all_released: true,
                        move_on: true,
                    },
                ));
            }
            return out;
        }
        while self.leases.len() < cfg.in_flight.max(1) as usize
            && self.room(cfg) > 0
            && (!self.again.is_empty() || self.next < self.pieces())
        {
            let leases = &self.leases;
            let held = |h: Holder| leases.iter().filter(|l| l.holder == h).count();
            let Some(k) = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| held(w.holder) < cfg.per_holder.max(1) as usize)
                .min_by_key(|(_, w)| w.since)
                .map(|(k, _)| k)
            else {
                break;
            };
            let w = self.waiting.swap_remove(k);
            let pieces = self.next_run(cfg.run.max(1));
            self.leases.push(Lease {
                holder: w.holder,
                at: now,
                left: pieces.clone(),
            });
            out.push((
                w.holder,
                Grant {
                    pieces,
                    all_released: false,
                    move_on: self.move_on(cfg, now),
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(in_flight: u32) -> ReleaseConfig {
        ReleaseConfig {
            in_flight,
            run: 1,
            per_holder: 1,
            lease: Duration::from_secs(15),
        }
    }

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn granted(out: &[(Holder, Grant)]) -> Vec<(Holder, Vec<u32>)> {
        out.iter().map(|(h, g)| (*h, g.pieces.clone())).collect()
    }

    #[test]
    fn pieces_go_out_in_order_up_to_the_in_flight_limit() {
        let c = cfg(2);
        let mut r = Releases::new(5);
        assert_eq!(granted(&r.ask(&c, 1, &[], true, t(0))), vec![(1, vec![0])]);
        assert_eq!(granted(&r.ask(&c, 2, &[], true, t(1))), vec![(2, vec![1])]);
        // Two in flight: the third node waits.
        assert!(r.ask(&c, 3, &[], true, t(2)).is_empty());
        assert!(r.is_waiting(3));
        // Node 1 completes piece 0 and asks again: the piece goes to the node that waited
        // longer with the same backlog.
        let out = r.ask(&c, 1, &[0], true, t(3));
        assert_eq!(granted(&out), vec![(3, vec![2])]);
        assert_eq!(r.released(), 1);
    }

    #[test]
    fn other_blobs_leases_take_from_the_window() {
        let c = cfg(4);
        let mut r = Releases::new(8);
        r.share(3);
        assert_eq!(r.room(&c), 1);
        assert_eq!(granted(&r.ask(&c, 1, &[], true, t(0))), vec![(1, vec![0])]);
        assert!(
            r.ask(&c, 2, &[], true, t(1)).is_empty(),
            "the window is full with the other blobs' three"
        );
        assert_eq!(r.leased(), 1);
        // The other blobs completed theirs: the waiting node gets the room.
        r.share(0);
        assert_eq!(granted(&r.grant(&c, t(2))), vec![(2, vec![1])]);
        assert_eq!(r.room(&c), 2);
    }

    #[test]
    fn the_node_waiting_longest_is_fed_first() {
        let c = cfg(1);
        let mut r = Releases::new(4);
        assert_eq!(granted(&r.ask(&c, 1, &[], true, t(0))), vec![(1, vec![0])]);
        assert!(r.ask(&c, 2, &[], true, t(1)).is_empty());
        assert!(r.ask(&c, 3, &[], true, t(2)).is_empty());
        // Node 1 finishes: node 2 has waited longest.
        let out = r.ask(&c, 1, &[0], true, t(3));
        assert_eq!(granted(&out), vec![(2, vec![1])]);
    }

    #[test]
    fn a_node_that_leaves_gives_its_lease_back() {
        let c = cfg(1);
        let mut r = Releases::new(3);
        r.ask(&c, 1, &[], true, t(0));
        assert!(r.ask(&c, 2, &[], true, t(1)).is_empty());
        let out = r.leave(&c, 1, t(2));
        assert_eq!(
            granted(&out),
            vec![(2, vec![0])],
            "piece 0 again, to node 2"
        );
    }

    #[test]
    fn a_lapsed_lease_is_handed_out_again() {
        let c = cfg(1);
        let mut r = Releases::new(2);
        r.ask(&c, 1, &[], true, t(0));
        assert!(r.ask(&c, 2, &[], true, t(10)).is_empty());
        assert!(r.expire(&c, t(14_999)).is_empty());
        let out = r.expire(&c, t(15_000));
        assert_eq!(granted(&out), vec![(2, vec![0])]);
        // The first holder completing it late still counts.
        r.ask(&c, 1, &[0], true, t(15_001));
        assert_eq!(r.released(), 1);
    }

    #[test]
    fn once_everything_is_released_waiters_are_told_to_stop() {
        let c = cfg(4);
        let mut r = Releases::new(2);
        r.ask(&c, 1, &[], true, t(0));
        r.ask(&c, 2, &[], true, t(0));
        assert!(r.ask(&c, 3, &[], true, t(0)).is_empty());
        r.ask(&c, 1, &[0], true, t(1));
        let out = r.ask(&c, 2, &[1], true, t(2));
        assert!(r.all_released());
        let mut told: Vec<Holder> = out
            .iter()
            .filter(|(_, g)| g.all_released)
            .map(|(h, _)| *h)
            .collect();
        told.sort();
        assert_eq!(told, vec![1, 2, 3]);
    }

    /// Holder 1 completes each piece it is granted, one every `every_ms` from `t(every_ms)`,
    /// while the others hold theirs; returns, for each of its grants, the pieces left to lease
    /// after it and whether it said `move_on`.
    fn one_completes(r: &mut Releases, c: &ReleaseConfig, every_ms: u64) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut held = granted(&r.ask(c, 1, &[], true, t(0)))[0].1.clone();
        for h in 2..=u64::from(c.in_flight) {
            r.ask(c, h, &[], true, t(0));
        }
        for k in 1.. {
            let grants = r.ask(c, 1, &held, true, t(k * every_ms));
            let Some((_, g)) = grants.into_iter().find(|(h, _)| *h == 1) else {
                break;
            };
            out.push((r.unleased(), g.move_on));
            held = g.pieces;
        }
        out
    }

    /// The pieces left to lease after the first grant that said `move_on`.
    fn left_at_first_move_on(said: &[(u64, bool)]) -> Option<u64> {
        said.iter().find(|&&(_, m)| m).map(|&(left, _)| left)
    }

    #[test]
    fn a_fast_pool_moves_on_once_what_is_left_fits_in_one_more_window() {
        // A window of two leases of one piece each; 20 pieces released a second, so half a
        // second's lead is 10 pieces and the window bounds it.
        let c = cfg(2);
        let mut r = Releases::new(12);
        let said = one_completes(&mut r, &c, 50);
        assert_eq!(left_at_first_move_on(&said), Some(2), "{said:?}");
        let first = said.iter().position(|&(_, m)| m).unwrap_or(0);
        assert!(said[first..].iter().all(|&(_, m)| m), "{said:?}");
    }

    #[test]
    fn a_slow_pool_moves_on_half_a_second_of_its_rate_before_its_last_lease() {
        // A window of four leases; one piece released every 400 ms (three within any second:
        // a lead of one piece), so the lead bounds it, not the window.
        let c = cfg(4);
        let mut r = Releases::new(12);
        let said = one_completes(&mut r, &c, 400);
        assert_eq!(left_at_first_move_on(&said), Some(1), "{said:?}");
    }

    #[test]
    fn a_lapsed_lease_takes_move_on_back_until_every_piece_is_leased_again() {
        let c = cfg(2);
        let mut r = Releases::new(6);
        let said = one_completes(&mut r, &c, 50);
        assert!(said.last().is_some_and(|&(left, m)| left == 0 && m));
        assert!(r.all_leased() && r.move_on(&c, t(300)));
        // Holder 1 stops waiting, and holder 2's lease of piece 1 lapses; no piece was released
        // for seconds, so the lead is nothing and the pool waits for every piece to be leased
        // again.
        r.cancel(1);
        let later = t(0) + c.lease;
        assert!(r.expire(&c, later).is_empty());
        assert!(!r.all_leased() && !r.move_on(&c, later));
        r.ask(&c, 3, &[], true, later);
        assert!(r.all_leased() && r.move_on(&c, later));
    }

    #[test]
    fn an_empty_blob_is_released_at_once() {
        let c = cfg(4);
        let mut r = Releases::new(0);
        let out = r.ask(&c, 1, &[], true, t(0));
        assert_eq!(
            out,
            vec![(
                1,
                Grant {
                    pieces: vec![],
                    all_released: true,
                    move_on: true,
                }
            )]
        );
    }

    #[test]
    fn a_report_without_waiting_frees_the_lease_for_others() {
        let c = cfg(1);
        let mut r = Releases::new(3);
        r.ask(&c, 1, &[], true, t(0));
        assert!(r.ask(&c, 2, &[], true, t(1)).is_empty());
        let out = r.ask(&c, 1, &[0], false, t(2));
        assert_eq!(granted(&out), vec![(2, vec![1])]);
        assert!(!r.is_waiting(1));
    }

    #[test]
    fn a_report_leaves_the_holders_waiting_request_waiting() {
        let c = cfg(1);
        let mut r = Releases::new(3);
        r.ask(&c, 1, &[], true, t(0));
        // Node 1 waits for its next lease, then reports the first done: the report frees the
        // lease, and the grant goes to node 1's waiting request.
        assert!(r.ask(&c, 1, &[], true, t(1)).is_empty());
        let out = r.ask(&c, 1, &[0], false, t(2));
        assert_eq!(granted(&out), vec![(1, vec![1])]);
    }

    #[test]
    fn leases_are_runs_of_consecutive_pieces_and_lapsed_runs_come_back_whole() {
        let c = ReleaseConfig {
            in_flight: 2,
            run: 3,
            ..cfg(2)
        };
        let mut r = Releases::new(7);
        assert_eq!(
            granted(&r.ask(&c, 1, &[], true, t(0))),
            vec![(1, vec![0, 1, 2])]
        );
        assert_eq!(
            granted(&r.ask(&c, 2, &[], true, t(0))),
            vec![(2, vec![3, 4, 5])]
        );
        assert!(r.ask(&c, 3, &[], true, t(0)).is_empty());
        // Node 1 completes one piece of three: its lease is still out.
        assert!(r.ask(&c, 1, &[0], true, t(1)).is_empty());
        // Node 2 leaves: its run comes back whole, to node 3, which waited longest.
        let out = r.leave(&c, 2, t(2));
        assert_eq!(granted(&out), vec![(3, vec![3, 4, 5])]);
        // Node 1 completes the rest: the last piece goes to it.
        assert_eq!(
            granted(&r.ask(&c, 1, &[1, 2], true, t(3))),
            vec![(1, vec![6])]
        );
    }

    #[test]
    fn a_pools_leases_follow_its_size_and_the_piece_size() {
        let lease = Duration::from_secs(15);
        let c = ReleaseConfig::for_pool(8, 8, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run, c.per_holder), (16, 2, 2));
        let c = ReleaseConfig::for_pool(16, 16, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run), (32, 1));
        let c = ReleaseConfig::for_pool(32, 32, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run), (32, 1));
        let c = ReleaseConfig::for_pool(1000, 1000, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run), (MAX_IN_FLIGHT, 1));
        let c = ReleaseConfig::for_pool(1, 1, 4 << 20, lease);
        assert_eq!((c.in_flight, c.run, c.per_holder), (2, 1, 2));
        let c = ReleaseConfig::for_pool(1, 1, 64 << 10, lease);
        assert_eq!(
            (c.in_flight, c.run, c.per_holder),
            (16, 2, 16),
            "a pool of one: the leases and runs of a pool of 8, all its own"
        );
        let c = ReleaseConfig::for_pool(1, 32, 64 << 10, lease);
        assert_eq!(
            (c.in_flight, c.run, c.per_holder),
            (2, 2, 2),
            "the first of 32 to reach a blob: two leases, runs of a pool of 8"
        );
        let c = ReleaseConfig::for_pool(1, 4, 64 << 10, lease);
        assert_eq!(
            (c.in_flight, c.per_holder),
            (16, 16),
            "one of 4 pulling alone: all 16"
        );
        // Small pools keep LEASED_BYTES out: more than two leases each.
        let c = ReleaseConfig::for_pool(2, 2, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run, c.per_holder), (16, 2, 8));
        let c = ReleaseConfig::for_pool(5, 5, 64 << 10, lease);
        assert_eq!((c.in_flight, c.run, c.per_holder), (16, 2, 4));
        // ... counted in bytes: 256 KiB pieces, 8 leases of one piece.
        let c = ReleaseConfig::for_pool(2, 2, 256 << 10, lease);
        assert_eq!((c.in_flight, c.run, c.per_holder), (8, 1, 4));
        for (members, piece) in [(1, 64 << 10), (2, 64 << 10), (3, 128 << 10), (8, 64 << 10)] {
            let c = ReleaseConfig::for_pool(members, members, piece, lease);
            let out = u64::from(c.in_flight) * u64::from(c.run) * piece;
            assert_eq!(out, LEASED_BYTES, "{members} members, {piece} B pieces");
            assert!(
                c.per_holder * members as u32 >= c.in_flight,
                "every lease can be held"
            );
        }
        let c = ReleaseConfig::for_pool(0, 0, 0, lease);
        assert!(c.in_flight >= 1 && c.run >= 1);
    }

    #[test]
    fn a_node_asking_again_holds_a_second_lease_while_the_first_is_fetched() {
        let c = ReleaseConfig::for_pool(8, 8, 64 << 10, Duration::from_secs(15));
        let mut r = Releases::new(1024);
        let first = granted(&r.ask(&c, 1, &[], true, t(0)));
        assert_eq!(first.len(), 1);
        let second = granted(&r.ask(&c, 1, &[], true, t(1)));
        assert_eq!(
            second.len(),
            1,
            "the next lease waits for the first: {second:?}"
        );
        assert!(r.ask(&c, 1, &[], true, t(2)).is_empty(), "two at most");
    }

    #[test]
    fn completions_out_of_range_are_ignored() {
        let c = cfg(1);
        let mut r = Releases::new(2);
        r.ask(&c, 1, &[7, u32::MAX], true, t(0));
        assert_eq!(r.released(), 0);
    }
}
