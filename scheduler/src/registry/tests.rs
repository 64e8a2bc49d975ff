//! What the registry keeps of peers across requests (expiry, heartbeats, leave, bad input),
//! driven with explicit times. Membership and lease decisions are tested in `swarms/tests.rs`.

use super::*;
use crate::api::{HeldTask, PeerRef, TaskInfo};
use crate::api_v2::{JoinRequest, JoinResponse};
use nodepool::PoolSpec;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const THIRD: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const PIECE: u64 = 4 << 20;
/// Eight pieces.
const SIZE: u64 = 8 * PIECE;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(crate) fn pool(id: &str, inter: bool, connected: &[&str]) -> PoolSpec {
    PoolSpec {
        id: id.into(),
        name: String::new(),
        inter_connectivity: inter,
        connected_pools: connected.iter().map(|s| s.to_string()).collect(),
    }
}

fn registry(pools: &[PoolSpec], t0: Instant) -> PeerRegistry {
    let config = RegistryConfig {
        peer_ttl: secs(30),
        source_assign_timeout: secs(15),
        max_neighbors: 40,
    };
    let graph = PoolGraph::new(pools).expect("valid pools");
    PeerRegistry::new(config, graph, Arc::new(Metrics::new()), t0)
}

fn peer(id: &str, pool: &str) -> PeerRef {
    PeerRef {
        id: id.into(),
        pool: pool.into(),
        addr: format!("{id}.local:65002"),
    }
}

fn join_req(id: &str, pool: &str, digest: &str, done: bool) -> JoinRequest {
    JoinRequest {
        peer: peer(id, pool),
        task: TaskInfo {
            digest: digest.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        held: if done { 8 } else { 0 },
        done,
    }
}

/// A download of [`DIGEST`] starting (or going on): the members `id` is told of, sorted.
fn join(r: &mut PeerRegistry, id: &str, pool: &str, at: Instant) -> Vec<String> {
    let resp = r
        .join(&join_req(id, pool, DIGEST, false), at)
        .expect("join accepted");
    member_ids(&resp)
}

fn member_ids(resp: &JoinResponse) -> Vec<String> {
    let mut ids: Vec<String> = resp.members.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

fn beat(id: &str, pool: &str, digests: &[&str]) -> HeartbeatRequest {
    HeartbeatRequest {
        peer: peer(id, pool),
        held: digests
            .iter()
            .map(|d| HeldTask {
                digest: d.to_string(),
                size: SIZE,
                piece_size: PIECE,
            })
            .collect(),
    }
}

fn leave(id: &str, pool: &str, digest: Option<&str>) -> LeaveRequest {
    LeaveRequest {
        peer_id: id.into(),
        pool: pool.into(),
        digest: digest.map(str::to_string),
    }
}

#[test]
fn silent_peer_is_dropped_after_ttl_with_its_memberships() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "h1", "a", t0);
    assert_eq!(join(&mut r, "r1", "a", t0 + secs(29)), vec!["h1"]);
    assert_eq!(r.metrics.peers.get(), 2);
    assert!(join(&mut r, "r1", "a", t0 + secs(31)).is_empty());
    assert_eq!(r.peer_count(), 1);
    assert_eq!(r.expire(t0 + secs(61)), 1);
    assert_eq!(
        (r.peer_count(), r.task_count()),
        (0, 0),
        "a blob nobody takes part in is forgotten"
    );
    assert_eq!(r.metrics.peers.get(), 0);
}

#[test]
fn heartbeats_restore_holders_after_a_restart_and_keep_them_alive() {
    let t0 = Instant::now();
    let mut r = registry(&[pool("a", true, &["b"])], t0);
    let answer = r
        .heartbeat(&beat("h1", "a", &[DIGEST]), t0)
        .expect("heartbeat");
    assert_eq!(answer.reachable_pools, vec!["a", "b"]);
    assert_eq!(answer.interval_ms, 10_000, "peerTTL / 3");
    assert_eq!(join(&mut r, "r1", "b", t0), vec!["h1"]);
    // Heartbeats alone keep the peer and its complete memberships alive.
    r.heartbeat(&beat("h1", "a", &[DIGEST]), t0 + secs(25))
        .expect("heartbeat");
    assert_eq!(join(&mut r, "r2", "a", t0 + secs(50)), vec!["h1"]);
    assert_eq!(r.peer_count(), 2, "r1 went silent");
}

#[test]
fn a_heartbeat_leaves_the_complete_blobs_it_no_longer_lists_not_downloads() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    r.heartbeat(&beat("h1", "a", &[DIGEST, OTHER]), t0)
        .expect("heartbeat");
    // A download h1 has under way, and one h2 joined as complete (not through a heartbeat).
    r.join(&join_req("h1", "a", THIRD, false), t0)
        .expect("join");
    r.join(&join_req("h2", "a", DIGEST, true), t0)
        .expect("join");
    assert_eq!(join(&mut r, "r1", "a", t0), vec!["h1", "h2"]);

    // h1's cache evicted DIGEST; h2's was emptied by a restart in memory mode.
    let t1 = t0 + secs(5);
    r.heartbeat(&beat("h1", "a", &[OTHER]), t1)
        .expect("heartbeat");
    r.heartbeat(&beat("h2", "a", &[]), t1).expect("heartbeat");
    assert_eq!(join(&mut r, "r1", "a", t1), Vec::<String>::new());
    let of = |r: &mut PeerRegistry, digest: &str| {
        let resp = r
            .join(&join_req("r2", "a", digest, false), t1)
            .expect("join");
        member_ids(&resp)
    };
    assert_eq!(of(&mut r, OTHER), vec!["h1"], "what it still lists stays");
    assert_eq!(
        of(&mut r, THIRD),
        vec!["h1"],
        "a download in progress is not a held blob and stays"
    );
    assert_eq!(r.peer_count(), 4, "peers stay registered");
}

#[test]
fn leaving_a_blob_or_the_cluster_ends_membership_and_only_for_the_own_pool() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "h1", "a", t0);
    join(&mut r, "h2", "a", t0);
    // A request naming another pool cannot make a peer leave.
    r.leave(&leave("h1", "b", None), t0).expect("ignored");
    r.leave(&leave("h1", "b", Some(DIGEST)), t0)
        .expect("ignored");
    assert_eq!(join(&mut r, "r1", "a", t0), vec!["h1", "h2"]);
    r.leave(&leave("h1", "a", Some(DIGEST)), t0)
        .expect("leave blob");
    assert_eq!(r.peer_count(), 3, "leaving a blob keeps the peer");
    assert_eq!(join(&mut r, "r1", "a", t0), vec!["h2"]);
    r.leave(&leave("h2", "a", None), t0).expect("leave");
    assert_eq!(r.peer_count(), 2);
    assert!(join(&mut r, "r1", "a", t0).is_empty());
    r.leave(&leave("nobody", "a", None), t0)
        .expect("unknown peer is fine");
}

#[test]
fn peer_moving_to_another_pool_starts_over() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    join(&mut r, "h1", "a", t0);
    join(&mut r, "h1", "b", t0);
    assert!(join(&mut r, "r1", "a", t0).is_empty());
    assert_eq!(join(&mut r, "r2", "b", t0), vec!["h1"]);
    assert_eq!(r.peer_count(), 3);
}

#[test]
fn hostile_input_is_refused_not_panicked_on() {
    let t0 = Instant::now();
    let mut r = registry(&[], t0);
    let base = join_req("p1", "a", DIGEST, false);
    let mut joins = Vec::new();
    let mut c = base.clone();
    c.held = 9;
    joins.push(c);
    let mut c = base.clone();
    c.task.digest = "sha256:xyz".into();
    joins.push(c);
    let mut c = base.clone();
    c.task.piece_size = 0;
    joins.push(c);
    let mut c = base.clone();
    c.task.size = 0;
    joins.push(c);
    let mut c = base.clone();
    (c.task.size, c.task.piece_size) = (u64::MAX, 1);
    joins.push(c);
    let mut c = base.clone();
    c.peer.id = String::new();
    joins.push(c);
    let mut c = base.clone();
    c.peer.pool = "p".repeat(300);
    joins.push(c);
    let mut c = base.clone();
    c.peer.addr = "no-port".into();
    joins.push(c);
    for case in &joins {
        assert!(r.join(case, t0).is_err(), "accepted {case:?}");
    }
    let mut beats = Vec::new();
    let mut c = beat("p1", "a", &[DIGEST]);
    c.held[0].piece_size = 0;
    beats.push(c);
    beats.push(beat("p1", "a", &["sha256:../../etc"]));
    let mut c = beat("p1", "a", &[]);
    c.held = vec![beat("p1", "a", &[DIGEST]).held[0].clone(); crate::api::MAX_HELD + 1];
    beats.push(c);
    beats.push(beat("p\n1", "a", &[DIGEST]));
    for case in &beats {
        assert!(r.heartbeat(case, t0).is_err(), "accepted {case:?}");
    }
    for case in [
        leave("", "a", None),
        leave("p1", "a", Some("sha256:00")),
        leave("p1", &"p".repeat(300), None),
    ] {
        assert!(r.leave(&case, t0).is_err(), "accepted {case:?}");
    }
    assert_eq!((r.peer_count(), r.task_count()), (0, 0), "nothing recorded");
}
