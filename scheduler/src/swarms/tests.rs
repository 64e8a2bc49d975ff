//! P2P v2 decisions, driven through the registry with explicit times.

use super::*;
use crate::api::{HeartbeatRequest, HeldTask, LeaveRequest, PeerRef, TaskInfo};
use crate::api_v2::{FreshRequest, JoinRequest, JoinResponse};
use crate::metrics::Metrics;
use crate::registry::tests::pool;
use crate::registry::{PeerRegistry, RegistryConfig};
use nodepool::{PoolGraph, PoolSpec};
use std::sync::Arc;
use std::time::Instant;

const DIGEST: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
const PIECE: u64 = 4 << 20;
const PIECES: u32 = 128;
const SIZE: u64 = PIECES as u64 * PIECE;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn registry_with(max_neighbors: usize, pools: &[PoolSpec], t0: Instant) -> PeerRegistry {
    registry_metrics(max_neighbors, pools, t0).0
}

fn registry_metrics(
    max_neighbors: usize,
    pools: &[PoolSpec],
    t0: Instant,
) -> (PeerRegistry, Arc<Metrics>) {
    let config = RegistryConfig {
        peer_ttl: secs(30),
        source_assign_timeout: secs(15),
        max_neighbors,
    };
    let graph = PoolGraph::new(pools).expect("valid pools");
    let metrics = Arc::new(Metrics::new());
    (
        PeerRegistry::new(config, graph, metrics.clone(), t0),
        metrics,
    )
}

fn registry(pools: &[PoolSpec], t0: Instant) -> PeerRegistry {
    registry_with(40, pools, t0)
}

fn peer(id: &str, pool: &str) -> PeerRef {
    PeerRef {
        id: id.into(),
        pool: pool.into(),
        addr: format!("{id}.local:65002"),
    }
}

fn join_req(id: &str, pool: &str, done: bool) -> JoinRequest {
    JoinRequest {
        peer: peer(id, pool),
        task: TaskInfo {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        held: if done { PIECES } else { 0 },
        done,
    }
}

fn join(r: &mut PeerRegistry, id: &str, pool: &str, at: Instant) -> JoinResponse {
    r.join(&join_req(id, pool, false), at)
        .expect("join accepted")
}

fn ids(resp: &JoinResponse) -> Vec<String> {
    let mut ids: Vec<String> = resp.members.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

fn ask(id: &str, pool: &str, completed: &[u32], wait: bool) -> FreshRequest {
    FreshRequest {
        peer: peer(id, pool),
        digest: DIGEST.into(),
        completed: completed.to_vec(),
        wait,
    }
}

/// The pieces granted at once to `id`.
fn fresh(r: &mut PeerRegistry, id: &str, completed: &[u32], at: Instant) -> Option<Vec<u32>> {
    r.fresh(&ask(id, "a", completed, true), at)
        .expect("fresh accepted")
        .grant
        .map(|g| g.pieces)
}

/// The grants handed to others since the last look, by holder.
fn delivered(r: &mut PeerRegistry) -> Vec<(Holder, Vec<u32>)> {
    r.take_deliveries()
        .into_iter()
        .map(|d| (d.holder, d.grant.pieces))
        .collect()
}

#[test]
fn members_come_only_from_pools_that_can_pair() {
    let t0 = Instant::now();
    let mut r = registry(&[pool("a", true, &["b"]), pool("b", true, &[])], t0);
    for (id, p) in [("a1", "a"), ("b1", "b"), ("c1", "c")] {
        join(&mut r, id, p, t0);
    }
    let a2 = join(&mut r, "a2", "a", t0);
    assert_eq!(ids(&a2), vec!["a1", "b1"], "not itself, not pool c");
    assert_eq!(a2.reachable_pools, vec!["a", "b"]);
    assert!(!a2.go_source);
    assert_eq!(a2.interval_ms, 5000);
    let c2 = join(&mut r, "c2", "c", t0);
    assert_eq!(ids(&c2), vec!["c1"]);
    let b2 = join(&mut r, "b2", "b", t0);
    assert_eq!(ids(&b2), vec!["a1", "a2", "b1"]);
    let addr = &b2.members.iter().find(|m| m.id == "a1").expect("a1").addr;
    assert_eq!(addr, "a1.local:65002");
}

#[test]
fn a_pool_without_interconnectivity_goes_to_source_and_is_nobodys_member() {
    let t0 = Instant::now();
    let pools = [pool("s", false, &["a"]), pool("a", true, &["s"])];
    let (mut r, metrics) = registry_metrics(40, &pools, t0);
    join(&mut r, "a1", "a", t0);
    let s1 = join(&mut r, "s1", "s", t0);
    assert!(s1.go_source && s1.members.is_empty() && s1.reachable_pools.is_empty());
    assert_eq!(ids(&join(&mut r, "a2", "a", t0)), vec!["a1"]);
    let err = r
        .fresh(&ask("s1", "s", &[], true), t0)
        .expect_err("not joined");
    assert!(matches!(err, Error::NotJoined { .. }), "{err}");
    assert_eq!(metrics.go_source.get(), 1);
    assert_eq!(metrics.joins.get(), 3);
}

#[test]
fn neighbour_sets_are_bounded_and_change_only_when_members_come_or_go() {
    let t0 = Instant::now();
    let mut r = registry_with(5, &[], t0);
    for i in 0..30 {
        join(&mut r, &format!("n{i:02}"), "a", t0);
    }
    let first = ids(&join(&mut r, "n00", "a", t0));
    assert_eq!(first.len(), 5);
    for _ in 0..3 {
        assert_eq!(ids(&join(&mut r, "n00", "a", t0)), first);
    }
    let other = ids(&join(&mut r, "n01", "a", t0));
    assert_ne!(other, first, "each node has its own choice");
    // A member it did not choose leaves: nothing changes.
    let unchosen = (1..30)
        .map(|i| format!("n{i:02}"))
        .find(|id| !first.contains(id))
        .expect("an unchosen member");
    r.leave(
        &LeaveRequest {
            peer_id: unchosen,
            pool: "a".into(),
            digest: Some(DIGEST.into()),
        },
        t0,
    )
    .expect("leave");
    assert_eq!(ids(&join(&mut r, "n00", "a", t0)), first);
    // A chosen one leaves: one other takes its place, the rest stay.
    r.leave(
        &LeaveRequest {
            peer_id: first[0].clone(),
            pool: "a".into(),
            digest: None,
        },
        t0,
    )
    .expect("leave");
    let after = ids(&join(&mut r, "n00", "a", t0));
    assert_eq!(after.len(), 5);
    assert_eq!(after.iter().filter(|id| first.contains(id)).count(), 4);
    // Newcomers displace at most one member each.
    for i in 30..40 {
        join(&mut r, &format!("n{i:02}"), "a", t0);
    }
    let later = ids(&join(&mut r, "n00", "a", t0));
    let kept = later.iter().filter(|id| after.contains(id)).count();
    let new = later.iter().filter(|id| id.as_str() >= "n30").count();
    assert_eq!(kept + new, 5);
}

#[test]
fn complete_holders_take_at_most_half_while_downloaders_fill_the_rest() {
    let t0 = Instant::now();
    let mut r = registry_with(4, &[], t0);
    for i in 0..10 {
        r.join(&join_req(&format!("h{i}"), "a", true), t0)
            .expect("join");
    }
    // Only complete holders: they fill every place.
    let resp = join(&mut r, "d0", "a", t0);
    assert_eq!(resp.members.len(), 4);
    assert!(resp.members.iter().all(|m| m.done));
    // One other downloader: 3 holders and it.
    join(&mut r, "d1", "a", t0);
    let resp = join(&mut r, "d0", "a", t0);
    assert_eq!(resp.members.iter().filter(|m| m.done).count(), 3);
    assert!(resp.members.iter().any(|m| m.id == "d1" && !m.done));
    for i in 2..10 {
        join(&mut r, &format!("d{i}"), "a", t0);
    }
    let resp = join(&mut r, "d0", "a", t0);
    assert_eq!(resp.members.len(), 4);
    assert_eq!(resp.members.iter().filter(|m| m.done).count(), 2);
}

#[test]
fn heartbeats_make_warm_holders_members_until_they_stop_listing_the_blob() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let mut beat = HeartbeatRequest {
        peer: peer("warm", "a"),
        held: vec![HeldTask {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        }],
    };
    r.heartbeat(&beat, t0).expect("heartbeat");
    let resp = join(&mut r, "d0", "a", t0);
    assert_eq!(ids(&resp), vec!["warm"]);
    assert!(resp.members[0].done);
    beat.held.clear();
    r.heartbeat(&beat, t0 + secs(1)).expect("heartbeat");
    assert!(join(&mut r, "d0", "a", t0 + secs(1)).members.is_empty());
}

#[test]
fn a_blob_known_with_another_layout_is_refused() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "n1", "a", t0);
    let mut other = join_req("n2", "a", false);
    other.task.piece_size = PIECE / 2;
    let err = r.join(&other, t0).expect_err("conflict");
    assert!(matches!(err, Error::TaskConflict { .. }), "{err}");
}

#[test]
fn fresh_pieces_go_to_waiting_members_two_leases_each() {
    let t0 = Instant::now();
    let (mut r, metrics) = registry_metrics(40, &[], t0);
    // Two members of 4 MiB pieces: 4 leases of one piece at once, 2 per node.
    join(&mut r, "n1", "a", t0);
    join(&mut r, "n2", "a", t0);
    assert_eq!(fresh(&mut r, "n1", &[], t0), Some(vec![0]));
    assert_eq!(fresh(&mut r, "n1", &[], t0), Some(vec![1]));
    assert_eq!(
        fresh(&mut r, "n1", &[], t0),
        None,
        "two leases each at most"
    );
    assert_eq!(fresh(&mut r, "n2", &[], t0), Some(vec![2]));
    assert_eq!(fresh(&mut r, "n2", &[], t0), Some(vec![3]));
    // A completion frees a lease for the next piece.
    assert_eq!(fresh(&mut r, "n2", &[2], t0), Some(vec![4]));
    assert_eq!(fresh(&mut r, "n1", &[0], t0), Some(vec![5]));
    assert!(delivered(&mut r).is_empty());
    assert_eq!(metrics.fresh_leases.get(), 6);
    // Reporting without waiting frees a lease but asks for none.
    let report = r.fresh(&ask("n1", "a", &[1], false), t0).expect("report");
    assert!(report.grant.is_none() && !report.all_released);
}

/// Members holding two leases each (`MAX_IN_FLIGHT`: the most out at once), and `late`, one
/// more, waiting. Returns `late`'s holder key; the next fresh piece is `MAX_IN_FLIGHT`.
fn crowd(r: &mut PeerRegistry, t0: Instant) -> Holder {
    let members = swarm::release::MAX_IN_FLIGHT / 2;
    for i in 0..members {
        join(r, &format!("m{i:02}"), "a", t0);
    }
    join(r, "late", "a", t0);
    for i in 0..members {
        let id = format!("m{i:02}");
        let first = 2 * i;
        assert_eq!(fresh(r, &id, &[], t0), Some(vec![first]));
        assert_eq!(fresh(r, &id, &[], t0), Some(vec![first + 1]));
    }
    assert_eq!(fresh(r, "late", &[], t0), None, "every lease out");
    r.fresh(&ask("late", "a", &[], true), t0)
        .expect("fresh")
        .key
        .holder
}

#[test]
fn a_completion_hands_the_freed_lease_to_the_member_waiting_longest() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let late = crowd(&mut r, t0);
    assert_eq!(fresh(&mut r, "m05", &[], t0), None, "m05 holds two");
    // m00 reports piece 0 without waiting: its lease goes to the waiting request of late.
    let report = r.fresh(&ask("m00", "a", &[0], false), t0).expect("report");
    assert!(report.grant.is_none());
    assert_eq!(
        delivered(&mut r),
        vec![(late, vec![swarm::release::MAX_IN_FLIGHT])]
    );
}

#[test]
fn a_leaving_holders_leases_are_handed_out_again_first() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let late = crowd(&mut r, t0);
    r.leave(
        &LeaveRequest {
            peer_id: "m03".into(),
            pool: "a".into(),
            digest: Some(DIGEST.into()),
        },
        t0,
    )
    .expect("leave");
    assert_eq!(delivered(&mut r), vec![(late, vec![6])]);
    assert_eq!(fresh(&mut r, "late", &[], t0), Some(vec![7]));
}

#[test]
fn lapsed_leases_and_silent_peers_give_their_pieces_back() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let late = crowd(&mut r, t0);
    // At 10 s m00 completes piece 0: late's lease of the next fresh piece starts then.
    let t10 = t0 + secs(10);
    r.fresh(&ask("m00", "a", &[0], false), t10).expect("report");
    assert_eq!(
        delivered(&mut r),
        vec![(late, vec![swarm::release::MAX_IN_FLIGHT])]
    );
    assert_eq!(fresh(&mut r, "late", &[], t10), None);
    // The leases made at 0 s lapse at 15 s (sourceAssignTimeout): late gets the lowest.
    r.sweep(t0 + secs(14));
    assert!(delivered(&mut r).is_empty());
    r.sweep(t0 + secs(15));
    assert_eq!(delivered(&mut r), vec![(late, vec![1])]);
    // Everyone but late and m00 (heard from at 10 s) is silent past peerTTL: dropped, with
    // their memberships.
    join(&mut r, "late", "a", t0 + secs(29));
    r.sweep(t0 + secs(31));
    assert_eq!(r.peer_count(), 2);
    assert_eq!(ids(&join(&mut r, "late", "a", t0 + secs(31))), vec!["m00"]);
    let err = r
        .fresh(&ask("m01", "a", &[], true), t0 + secs(31))
        .expect_err("gone");
    assert!(matches!(err, Error::NotJoined { .. }), "{err}");
}

#[test]
fn a_member_that_stops_joining_lapses_though_its_peer_lives() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "n1", "a", t0);
    join(&mut r, "n2", "a", t0);
    // n1 still heartbeats (no blobs held), but no longer joins.
    let beat = HeartbeatRequest {
        peer: peer("n1", "a"),
        held: Vec::new(),
    };
    r.heartbeat(&beat, t0 + secs(20)).expect("heartbeat");
    join(&mut r, "n2", "a", t0 + secs(20));
    r.sweep(t0 + secs(30));
    assert_eq!(r.peer_count(), 2);
    assert!(join(&mut r, "n2", "a", t0 + secs(30)).members.is_empty());
}

#[test]
fn once_every_piece_is_released_askers_are_told_to_stop() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let mut small = join_req("n1", "a", false);
    small.task.size = PIECE;
    r.join(&small, t0).expect("join");
    let ask1 = r.fresh(&ask("n1", "a", &[], true), t0).expect("fresh");
    assert_eq!(ask1.grant.map(|g| g.pieces), Some(vec![0]));
    let done = r.fresh(&ask("n1", "a", &[0], true), t0).expect("fresh");
    assert!(done.all_released && done.grant.is_some_and(|g| g.all_released));
}

#[test]
fn completed_pieces_must_be_in_the_blob() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "n1", "a", t0);
    for bad in [vec![PIECES], vec![0; PIECES as usize + 1]] {
        let err = r.fresh(&ask("n1", "a", &bad, true), t0).expect_err("bad");
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }
    let err = r
        .fresh(&ask("n9", "a", &[], true), t0)
        .expect_err("unknown");
    assert!(err.to_string().contains("n9"), "{err}");
}

#[test]
fn groups_of_pools_that_cannot_pair_lease_apart() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "a1", "a", t0);
    join(&mut r, "b1", "b", t0);
    assert_eq!(fresh(&mut r, "a1", &[], t0), Some(vec![0]));
    let b = r.fresh(&ask("b1", "b", &[], true), t0).expect("fresh");
    assert_eq!(
        b.grant.map(|g| g.pieces),
        Some(vec![0]),
        "its own mirror's copy"
    );
}

#[test]
fn ids_hash_stably() {
    assert_eq!(id_hash(""), 0xcbf2_9ce4_8422_2325);
    assert_ne!(id_hash("n1"), id_hash("n2"));
}

#[test]
fn a_member_asking_again_gets_a_second_lease_while_the_first_is_fetched() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    for k in 1..=8 {
        join(&mut r, &format!("n{k}"), "a", t0);
    }
    let first = fresh(&mut r, "n1", &[], t0);
    assert!(first.as_ref().is_some_and(|p| !p.is_empty()), "{first:?}");
    let second = fresh(&mut r, "n1", &[], t0 + Duration::from_millis(5));
    assert!(second.as_ref().is_some_and(|p| !p.is_empty()), "{second:?}");
}

const SMALL_PIECES: &str =
    "sha256:6666666666666666666666666666666666666666666666666666666666666666";

/// `id` of pool "a" joins a blob of 1,024 pieces of 64 KiB.
fn join_small(id: &str) -> JoinRequest {
    JoinRequest {
        peer: peer(id, "a"),
        task: TaskInfo {
            digest: SMALL_PIECES.into(),
            size: 1024 * (64 << 10),
            piece_size: 64 << 10,
        },
        held: 0,
        done: false,
    }
}

/// Leases of the blob of [`join_small`] taken by `id` at once, asking until it gets none.
fn leases_taken(r: &mut PeerRegistry, id: &str, t0: Instant) -> usize {
    r.join(&join_small(id), t0).expect("join accepted");
    let ask = FreshRequest {
        peer: peer(id, "a"),
        digest: SMALL_PIECES.into(),
        completed: Vec::new(),
        wait: true,
    };
    (0..100)
        .take_while(|_| r.fresh(&ask, t0).expect("fresh").grant.is_some())
        .count()
}

/// A registry whose pool "a" has nodes `n2` ..= `n{nodes}` alive (heartbeats), none in a blob.
fn pool_of(nodes: u32, t0: Instant) -> PeerRegistry {
    let mut r = registry(&[], t0);
    for i in 2..=nodes {
        let beat = HeartbeatRequest {
            peer: peer(&format!("n{i}"), "a"),
            held: Vec::new(),
        };
        r.heartbeat(&beat, t0).expect("heartbeat");
    }
    r
}

#[test]
fn a_small_pools_pullers_share_every_lease_and_a_large_pools_first_member_holds_two() {
    let t0 = Instant::now();
    // A pool of four, one node pulling: all 16 leases of 2 pieces (2 MiB) are its own.
    assert_eq!(leases_taken(&mut pool_of(4, t0), "n1", t0), 16);
    // Two pulling: 8 each.
    let mut r = registry(&[], t0);
    r.join(&join_small("n2"), t0).expect("join accepted");
    assert_eq!(leases_taken(&mut r, "n1", t0), 8);
    assert_eq!(leases_taken(&mut r, "n2", t0), 8);
    // A pool of 32 whose first node reaches the blob: two, the others are about to come.
    assert_eq!(leases_taken(&mut pool_of(32, t0), "n1", t0), 2);
}

const OTHER_SMALL: &str = "sha256:7777777777777777777777777777777777777777777777777777777777777777";

fn small_ask(id: &str, digest: &str, completed: &[u32], wait: bool) -> FreshRequest {
    FreshRequest {
        peer: peer(id, "a"),
        digest: digest.into(),
        completed: completed.to_vec(),
        wait,
    }
}

/// `id` of pool "a" takes part in `digest`, a blob of 1,024 pieces of 64 KiB, and asks for a
/// lease (`wait`) or reports `completed`: the pieces granted at once.
fn ask_small(
    r: &mut PeerRegistry,
    id: &str,
    digest: &str,
    completed: &[u32],
    wait: bool,
    t0: Instant,
) -> Option<Vec<u32>> {
    let mut join = join_small(id);
    join.task.digest = digest.into();
    r.join(&join, t0).expect("join accepted");
    let ask = small_ask(id, digest, completed, wait);
    r.fresh(&ask, t0).expect("fresh").grant.map(|g| g.pieces)
}

/// `id` asks for a lease of `digest` and is told to wait: its holder key.
fn waits_small(r: &mut PeerRegistry, id: &str, digest: &str, t0: Instant) -> Holder {
    assert_eq!(ask_small(r, id, digest, &[], true, t0), None, "{id} waits");
    r.fresh(&small_ask(id, digest, &[], true), t0)
        .expect("fresh")
        .key
        .holder
}

/// `ids` take every lease of [`SMALL_PIECES`] in turn (16 runs of 2 pieces in a pool this
/// small: 2 MiB, the pool's window).
fn fill_window(r: &mut PeerRegistry, ids: &[&str], t0: Instant) {
    for id in ids {
        let mut join = join_small(id);
        join.task.digest = SMALL_PIECES.into();
        r.join(&join, t0).expect("join accepted");
    }
    for k in 0..16 {
        let id = ids[k * ids.len() / 16];
        assert!(ask_small(r, id, SMALL_PIECES, &[], true, t0).is_some());
    }
    r.take_deliveries();
}

#[test]
fn a_pools_blobs_share_one_window_of_leases_the_first_asked_for_first() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    // n1 holds pieces 0-15, n2 16-31.
    fill_window(&mut r, &["n1", "n2"], t0);
    // n3 waits for the first blob, n4 for a second one: the window is the pool's.
    let n3 = waits_small(&mut r, "n3", SMALL_PIECES, t0);
    let n4 = waits_small(&mut r, "n4", OTHER_SMALL, t0);
    // n1 completes a run: the room goes to the blob asked for first.
    assert_eq!(
        ask_small(&mut r, "n1", SMALL_PIECES, &[0, 1], false, t0),
        None
    );
    assert_eq!(delivered(&mut r), vec![(n3, vec![32, 33])]);
    // The next run freed finds nobody waiting there: the second blob's first run.
    assert_eq!(
        ask_small(&mut r, "n1", SMALL_PIECES, &[2, 3], false, t0),
        None
    );
    assert_eq!(delivered(&mut r), vec![(n4, vec![0, 1])]);
}

#[test]
fn a_blob_nobody_pulls_any_more_frees_its_room_in_the_window() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    fill_window(&mut r, &["n1"], t0);
    let n3 = waits_small(&mut r, "n3", OTHER_SMALL, t0);
    let leave = LeaveRequest {
        peer_id: "n1".into(),
        pool: "a".into(),
        digest: Some(SMALL_PIECES.into()),
    };
    r.leave(&leave, t0).expect("leave");
    // The first blob is gone with its leases: the window is the second's.
    assert_eq!(delivered(&mut r), vec![(n3, vec![0, 1])]);
}
