//! Decision rules of the registry, driven with explicit times.

use super::*;
use crate::api::{HeldTask, TaskInfo};
use nodepool::PoolSpec;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PIECE: u64 = 4 << 20;
/// Eight pieces.
const SIZE: u64 = 8 * PIECE;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(ttl: u64, assign_timeout: u64, max_parents: usize) -> RegistryConfig {
    RegistryConfig {
        peer_ttl: secs(ttl),
        source_assign_timeout: secs(assign_timeout),
        max_parents,
        announce_interval: Duration::from_millis(500),
        source_in_flight: 64,
        max_neighbors: 40,
    }
}

pub(crate) fn pool(id: &str, inter: bool, connected: &[&str]) -> PoolSpec {
    PoolSpec {
        id: id.into(),
        name: String::new(),
        inter_connectivity: inter,
        connected_pools: connected.iter().map(|s| s.to_string()).collect(),
    }
}

fn registry_with(config: RegistryConfig, pools: &[PoolSpec], t0: Instant) -> PeerRegistry {
    let graph = PoolGraph::new(pools).expect("valid pools");
    PeerRegistry::new(config, graph, Arc::new(Metrics::new()), t0)
}

fn registry(pools: &[PoolSpec], t0: Instant) -> PeerRegistry {
    registry_with(config(30, 15, 16), pools, t0)
}

fn peer(id: &str, pool: &str) -> PeerInfo {
    PeerInfo {
        id: id.into(),
        pool: pool.into(),
        addr: format!("{id}.local:65002"),
        upload_slots: 4,
    }
}

fn ask(id: &str, pool: &str, have: &[u32]) -> AnnounceRequest {
    AnnounceRequest {
        peer: peer(id, pool),
        task: TaskInfo {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        have: have.to_vec(),
        done: false,
        failed_parents: Vec::new(),
    }
}

fn done(id: &str, pool: &str) -> AnnounceRequest {
    AnnounceRequest {
        done: true,
        ..ask(id, pool, &[])
    }
}

fn announce(r: &mut PeerRegistry, req: &AnnounceRequest, at: Instant) -> AnnounceResponse {
    r.announce(req, at).expect("announce accepted")
}

fn parent_ids(resp: &AnnounceResponse) -> Vec<String> {
    let mut ids: Vec<String> = resp.parents.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    ids
}

#[test]
fn parents_come_only_from_pairable_pools() {
    let t0 = Instant::now();
    let mut r = registry(&[pool("a", true, &["b"]), pool("b", true, &[])], t0);
    for (id, p) in [("a1", "a"), ("b1", "b"), ("c1", "c")] {
        announce(&mut r, &done(id, p), t0);
    }
    let resp = announce(&mut r, &ask("a2", "a", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["a1", "b1"]);
    assert_eq!(resp.reachable_pools, vec!["a", "b"]);
    assert!(
        resp.source_pieces.is_empty(),
        "every piece is held within reach"
    );
    let resp = announce(&mut r, &ask("c2", "c", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["c1"]);
    assert_eq!(resp.reachable_pools, vec!["c"]);
}

#[test]
fn unconnected_pools_never_pair() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("x1", "x"), t0);
    let resp = announce(&mut r, &ask("y1", "y", &[]), t0);
    assert!(resp.parents.is_empty());
    assert_eq!(
        resp.source_pieces,
        vec![0, 1, 2, 3],
        "pool y fetches its own copy"
    );
    // And x1 is never offered to y, however often y asks.
    for i in 0..20 {
        let resp = announce(&mut r, &ask(&format!("y{i}"), "y", &[]), t0);
        assert!(resp.parents.iter().all(|p| p.id != "x1"));
    }
}

#[test]
fn interconnected_pools_pair_both_ways() {
    let t0 = Instant::now();
    // Only `a` declares the link.
    let mut r = registry(&[pool("a", true, &["b"])], t0);
    announce(&mut r, &done("b1", "b"), t0);
    let resp = announce(&mut r, &ask("a1", "a", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["b1"]);

    let mut r = registry(&[pool("a", true, &["b"])], t0);
    announce(&mut r, &done("a1", "a"), t0);
    let resp = announce(&mut r, &ask("b1", "b", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["a1"]);
    assert_eq!(resp.reachable_pools, vec!["a", "b"]);
}

#[test]
fn pool_without_interconnectivity_goes_to_source() {
    let t0 = Instant::now();
    let mut r = registry(&[pool("s", false, &["a"]), pool("a", true, &["s"])], t0);
    announce(&mut r, &done("a1", "a"), t0);
    let held = announce(&mut r, &done("s1", "s"), t0);
    assert!(held.go_source);
    let resp = announce(&mut r, &ask("s2", "s", &[]), t0);
    assert!(resp.go_source);
    assert!(resp.parents.is_empty() && resp.source_pieces.is_empty());
    assert!(resp.reachable_pools.is_empty());
    // Its peers are never offered to others either.
    let resp = announce(&mut r, &ask("a2", "a", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["a1"]);
    assert_eq!(r.metrics.go_source.get(), 2);
}

#[test]
fn a_pool_fetches_few_pieces_from_its_mirror_at_once() {
    let t0 = Instant::now();
    let cfg = RegistryConfig {
        source_in_flight: 2,
        ..config(30, 15, 16)
    };
    let mut r = registry_with(cfg, &[], t0);
    assert_eq!(
        announce(&mut r, &ask("p1", "a", &[]), t0).source_pieces,
        vec![0, 1]
    );
    assert!(announce(&mut r, &ask("p2", "a", &[]), t0)
        .source_pieces
        .is_empty());
    // p1 has piece 0: a slot opens, but p1 has fetched more than p2, which gets it: peers
    // take turns at the mirror, so each piece's first holder is another node.
    let p1 = announce(&mut r, &ask("p1", "a", &[0]), t0);
    assert_eq!(p1.source_pieces, vec![1]);
    let p2 = announce(&mut r, &ask("p2", "a", &[]), t0);
    assert_eq!(p2.source_pieces, vec![2]);
    assert_eq!(parent_ids(&p2), vec!["p1"]);
    assert!(announce(&mut r, &ask("p3", "a", &[]), t0)
        .source_pieces
        .is_empty());
    // Another pool has its own mirror and its own budget.
    assert_eq!(
        announce(&mut r, &ask("q1", "b", &[]), t0).source_pieces,
        vec![0, 1]
    );
    // Reservations whose peers went quiet free their slots.
    let t3 = t0 + secs(3);
    assert_eq!(
        announce(&mut r, &ask("p3", "a", &[]), t3).source_pieces,
        vec![1, 2]
    );
}

#[test]
fn unheld_pieces_are_assigned_to_one_peer_each() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let first = announce(&mut r, &ask("p1", "a", &[]), t0);
    let second = announce(&mut r, &ask("p2", "a", &[]), t0);
    assert_eq!(first.source_pieces, vec![0, 1, 2, 3]);
    assert_eq!(second.source_pieces, vec![4, 5, 6, 7]);
    assert!(first.parents.is_empty() && second.parents.is_empty());
    let third = announce(&mut r, &ask("p3", "a", &[]), t0);
    assert!(
        third.source_pieces.is_empty(),
        "all pieces are being fetched"
    );
    // Asking again returns the same assignment, not more.
    let again = announce(&mut r, &ask("p1", "a", &[1]), t0);
    assert_eq!(again.source_pieces, vec![0, 2, 3]);
    // Once a piece arrives, the others fetch it from the peer that has it.
    let third = announce(&mut r, &ask("p3", "a", &[]), t0);
    assert_eq!(parent_ids(&third), vec!["p1"]);
    assert_eq!(third.parents[0].have, vec![1]);
    assert_eq!(r.metrics.source_pieces.get(), 8);
    // Another network fetches its own copy, also split.
    let other = announce(&mut r, &ask("q1", "b", &[]), t0);
    assert_eq!(other.source_pieces, vec![0, 1, 2, 3]);
}

#[test]
fn reserved_piece_is_reassigned_after_timeout_or_when_holder_dies() {
    let t0 = Instant::now();
    // Reservation timeout (15s) shorter than the peer TTL (30s).
    let mut r = registry_with(config(30, 15, 16), &[], t0);
    assert_eq!(
        announce(&mut r, &ask("p1", "a", &[]), t0).source_pieces,
        vec![0, 1, 2, 3]
    );
    let t10 = t0 + secs(10);
    // p1 keeps announcing, as a downloading agent does: its reservation holds.
    announce(&mut r, &ask("p1", "a", &[]), t10);
    assert_eq!(
        announce(&mut r, &ask("p2", "a", &[]), t10).source_pieces,
        vec![4, 5, 6, 7]
    );
    let t16 = t0 + secs(16);
    assert_eq!(
        announce(&mut r, &ask("p2", "a", &[]), t16).source_pieces,
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        announce(&mut r, &ask("p3", "a", &[]), t16).source_pieces,
        vec![0, 1, 2, 3]
    );
    assert!(announce(&mut r, &ask("p1", "a", &[]), t16)
        .source_pieces
        .is_empty());

    // Reservation timeout (60s) longer than the peer TTL (30s): the holder dying frees it.
    let mut r = registry_with(config(30, 60, 16), &[], t0);
    announce(&mut r, &ask("p1", "a", &[]), t0);
    let t20 = t0 + secs(20);
    announce(&mut r, &ask("p1", "a", &[]), t20);
    assert_eq!(
        announce(&mut r, &ask("p2", "a", &[]), t20).source_pieces,
        vec![4, 5, 6, 7]
    );
    assert!(announce(&mut r, &ask("p3", "a", &[]), t20)
        .source_pieces
        .is_empty());
    let t31 = t0 + secs(31);
    assert_eq!(
        announce(&mut r, &ask("p3", "a", &[]), t31).source_pieces,
        vec![0, 1, 2, 3]
    );

    // A piece whose only holder died is unheld again.
    let mut r = registry_with(config(30, 15, 16), &[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    let alive = announce(&mut r, &ask("p1", "a", &[0, 1, 2, 3, 4, 5, 6]), t20);
    assert!(alive.source_pieces.is_empty());
    assert_eq!(parent_ids(&alive), vec!["h1"]);
    let dead = announce(&mut r, &ask("p1", "a", &[0, 1, 2, 3, 4, 5, 6]), t31);
    assert!(dead.parents.is_empty());
    assert_eq!(dead.source_pieces, vec![7]);
}

#[test]
fn a_quiet_holder_releases_its_reservations() {
    // p1 was sent to the mirror, then died before anyone noticed (peerTTL 30s, reservation
    // 15s): once it has not announced for four intervals (at least 2s), others get its pieces.
    let t0 = Instant::now();
    let mut r = registry_with(config(30, 15, 16), &[], t0);
    assert_eq!(
        announce(&mut r, &ask("p1", "a", &[]), t0).source_pieces,
        vec![0, 1, 2, 3]
    );
    let t1 = t0 + secs(1);
    assert_eq!(
        announce(&mut r, &ask("p2", "a", &[]), t1).source_pieces,
        vec![4, 5, 6, 7]
    );
    let t3 = t0 + secs(3);
    assert_eq!(
        announce(&mut r, &ask("p3", "a", &[]), t3).source_pieces,
        vec![0, 1, 2, 3]
    );
}

#[test]
fn reported_parent_is_not_offered_again() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    announce(&mut r, &done("h2", "a"), t0);
    let mut report = ask("r1", "a", &[]);
    report.failed_parents = vec!["h1".into()];
    assert_eq!(parent_ids(&announce(&mut r, &report, t0)), vec!["h2"]);
    for _ in 0..5 {
        let resp = announce(&mut r, &ask("r1", "a", &[]), t0);
        assert_eq!(parent_ids(&resp), vec!["h2"]);
    }
    // Reporting again is not counted twice; other requesters still get h1.
    announce(&mut r, &report, t0);
    assert_eq!(r.metrics.parent_reports.get(), 1);
    assert_eq!(
        parent_ids(&announce(&mut r, &ask("r2", "a", &[]), t0)),
        vec!["h1", "h2"]
    );
}

#[test]
fn pieces_only_reported_parents_hold_go_to_source() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &ask("h1", "a", &[0, 1]), t0);
    announce(&mut r, &ask("h2", "a", &[1]), t0);
    let mut report = ask("r1", "a", &[]);
    report.failed_parents = vec!["h1".into()];
    let resp = announce(&mut r, &report, t0);
    assert_eq!(parent_ids(&resp), vec!["h2"]);
    // Only h1 holds piece 0, so r1 fetches it from the mirror; 2..8 are being fetched
    // by h1 and h2 already.
    assert_eq!(resp.source_pieces, vec![0]);
}

#[test]
fn silent_peer_is_dropped_after_ttl() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    let t29 = t0 + secs(29);
    assert_eq!(
        parent_ids(&announce(&mut r, &ask("r1", "a", &[]), t29)),
        vec!["h1"]
    );
    let t31 = t0 + secs(31);
    let resp = announce(&mut r, &ask("r1", "a", &[]), t31);
    assert!(resp.parents.is_empty());
    assert!(!r.holds("h1", DIGEST));
    assert_eq!(r.peer_count(), 1);
    assert_eq!(r.expire(t31 + secs(30)), 1);
    assert_eq!(
        (r.peer_count(), r.task_count()),
        (0, 0),
        "empty task dropped"
    );
    assert_eq!(r.metrics.peers.get(), 0);
}

#[test]
fn heartbeat_restores_holders_after_restart() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let beat = HeartbeatRequest {
        peer: peer("h1", "a"),
        held: vec![HeldTask {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        }],
        load: 0,
    };
    let answer = r.heartbeat(&beat, t0).expect("heartbeat");
    assert_eq!(answer.reachable_pools, vec!["a"]);
    assert_eq!(answer.interval_ms, 10_000);
    let resp = announce(&mut r, &ask("r1", "a", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["h1"]);
    assert_eq!(resp.parents[0].have, (0..8).collect::<Vec<u32>>());
    assert!(resp.source_pieces.is_empty());
    // Heartbeats alone keep the peer alive.
    r.heartbeat(&beat, t0 + secs(25)).expect("heartbeat");
    let resp = announce(&mut r, &ask("r1", "a", &[]), t0 + secs(50));
    assert_eq!(parent_ids(&resp), vec!["h1"]);
}

#[test]
fn heartbeat_without_a_held_blob_stops_offers_of_it() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let held = |digests: &[&str]| HeartbeatRequest {
        peer: peer("h1", "a"),
        held: digests
            .iter()
            .map(|d| HeldTask {
                digest: d.to_string(),
                size: SIZE,
                piece_size: PIECE,
            })
            .collect(),
        load: 0,
    };
    let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    r.heartbeat(&held(&[DIGEST, other]), t0).expect("heartbeat");
    // A download h1 has under way: announced, partly held.
    let third = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let mut partial = ask("h1", "a", &[0, 1]);
    partial.task.digest = third.into();
    announce(&mut r, &partial, t0);
    // And one it announced done (complete through an announce, not a heartbeat).
    announce(&mut r, &done("h2", "a"), t0);
    assert_eq!(
        parent_ids(&announce(&mut r, &ask("r1", "a", &[]), t0)),
        vec!["h1", "h2"]
    );

    // h1's cache evicted DIGEST; h2's was emptied by a restart in memory mode.
    let t1 = t0 + secs(5);
    r.heartbeat(&held(&[other]), t1).expect("heartbeat");
    r.heartbeat(
        &HeartbeatRequest {
            peer: peer("h2", "a"),
            held: Vec::new(),
            load: 0,
        },
        t1,
    )
    .expect("heartbeat");
    assert!(!r.holds("h1", DIGEST) && !r.holds("h2", DIGEST));
    let resp = announce(&mut r, &ask("r1", "a", &[]), t1);
    assert!(resp.parents.is_empty(), "no holder left: {resp:?}");
    assert!(!resp.source_pieces.is_empty());
    assert!(r.holds("h1", other), "what it still lists stays");
    assert!(
        r.holds("h1", third),
        "a download in progress is not a held blob and stays"
    );
    let mut asker = ask("r2", "a", &[]);
    asker.task.digest = third.into();
    assert_eq!(parent_ids(&announce(&mut r, &asker, t1)), vec!["h1"]);
    assert_eq!(r.peer_count(), 4, "peers stay registered");
}

#[test]
fn leaving_a_task_or_the_cluster_stops_offers() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    announce(&mut r, &done("h2", "a"), t0);
    let leave = |id: &str, pool: &str, digest: Option<&str>| LeaveRequest {
        peer_id: id.into(),
        pool: pool.into(),
        digest: digest.map(str::to_string),
    };
    // A request naming another pool cannot make a peer leave.
    r.leave(&leave("h1", "b", None), t0).expect("ignored");
    assert_eq!(r.peer_count(), 2);
    r.leave(&leave("h1", "a", Some(DIGEST)), t0)
        .expect("leave task");
    assert_eq!(r.peer_count(), 2);
    assert_eq!(
        parent_ids(&announce(&mut r, &ask("r1", "a", &[]), t0)),
        vec!["h2"]
    );
    r.leave(&leave("h2", "a", None), t0).expect("leave");
    assert!(!r.holds("h2", DIGEST));
    assert!(announce(&mut r, &ask("r1", "a", &[]), t0)
        .parents
        .is_empty());
    r.leave(&leave("nobody", "a", None), t0)
        .expect("unknown peer is fine");
}

#[test]
fn inconsistent_task_size_is_rejected() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &ask("p1", "a", &[]), t0);
    let mut other = ask("p2", "a", &[]);
    other.task.size = SIZE + 1;
    assert!(matches!(
        r.announce(&other, t0),
        Err(Error::TaskConflict { .. })
    ));
    let mut other = ask("p2", "a", &[]);
    other.task.piece_size = PIECE / 2;
    assert!(matches!(
        r.announce(&other, t0),
        Err(Error::TaskConflict { .. })
    ));
}

#[test]
fn hostile_input_is_refused_not_panicked_on() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let mut cases = Vec::new();
    let base = ask("p1", "a", &[]);
    cases.push(AnnounceRequest {
        have: vec![8],
        ..base.clone()
    });
    cases.push(AnnounceRequest {
        have: vec![u32::MAX],
        ..base.clone()
    });
    cases.push(AnnounceRequest {
        have: vec![0; 9],
        ..base.clone()
    });
    let mut c = base.clone();
    c.task.digest = "sha256:xyz".into();
    cases.push(c);
    let mut c = base.clone();
    c.task.piece_size = 0;
    cases.push(c);
    let mut c = base.clone();
    c.task.size = 0;
    cases.push(c);
    let mut c = base.clone();
    (c.task.size, c.task.piece_size) = (u64::MAX, 1);
    cases.push(c);
    let mut c = base.clone();
    c.peer.id = String::new();
    cases.push(c);
    let mut c = base.clone();
    c.peer.pool = "p".repeat(300);
    cases.push(c);
    let mut c = base.clone();
    c.peer.addr = "no-port".into();
    cases.push(c);
    let mut c = base.clone();
    c.failed_parents = vec!["x".into(); 2000];
    cases.push(c);
    for case in &cases {
        assert!(r.announce(case, t0).is_err(), "accepted {case:?}");
    }
    assert_eq!((r.peer_count(), r.task_count()), (0, 0), "nothing recorded");
}

#[test]
fn complete_peer_is_told_nothing_to_fetch() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    let resp = announce(&mut r, &done("h2", "a"), t0);
    assert!(resp.parents.is_empty() && resp.source_pieces.is_empty() && !resp.go_source);
    assert_eq!(resp.interval_ms, 500);
}

#[test]
fn less_loaded_parents_are_preferred() {
    let t0 = Instant::now();
    let mut r = registry_with(config(30, 15, 2), &[], t0);
    for i in 0..4 {
        let beat = HeartbeatRequest {
            peer: peer(&format!("h{i}"), "a"),
            held: vec![HeldTask {
                digest: DIGEST.into(),
                size: SIZE,
                piece_size: PIECE,
            }],
            load: if i < 2 { 8 } else { 0 },
        };
        r.heartbeat(&beat, t0).expect("heartbeat");
    }
    let resp = announce(&mut r, &ask("r1", "a", &[]), t0);
    assert_eq!(parent_ids(&resp), vec!["h2", "h3"]);
}

#[test]
fn parent_choices_spread_over_holders() {
    let t0 = Instant::now();
    let mut r = registry_with(config(30, 15, 4), &[], t0);
    for i in 0..100 {
        announce(&mut r, &done(&format!("h{i}"), "a"), t0);
    }
    let mut offered = std::collections::HashSet::new();
    for i in 0..25 {
        let resp = announce(&mut r, &ask(&format!("r{i}"), "a", &[]), t0);
        assert_eq!(resp.parents.len(), 4);
        offered.extend(resp.parents.into_iter().map(|p| p.id));
    }
    assert!(
        offered.len() >= 90,
        "only {} distinct parents offered",
        offered.len()
    );
}

#[test]
fn parents_must_hold_something_the_requester_lacks() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &ask("h1", "a", &[0, 1]), t0);
    announce(&mut r, &ask("h2", "a", &[2]), t0);
    let resp = announce(&mut r, &ask("r1", "a", &[0, 1]), t0);
    assert_eq!(parent_ids(&resp), vec!["h2"]);
}

#[test]
fn peer_moving_to_another_pool_starts_over() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    announce(&mut r, &done("h1", "a"), t0);
    announce(&mut r, &ask("h1", "b", &[]), t0);
    assert!(announce(&mut r, &ask("r1", "a", &[]), t0)
        .parents
        .is_empty());
    assert_eq!(r.peer_count(), 2);
}
