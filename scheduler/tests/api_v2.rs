//! P2P v2 over HTTP: a real scheduler bound to 127.0.0.1:0, driven with the real client.

mod common;

use common::{a_b_and_edge, config, status_of, Running, SECRET};
use nodepool::{PoolSecret, AUTH_HEADER};
use scheduler::api::{HeartbeatRequest, HeldTask, PeerRef, TaskInfo};
use scheduler::api_v2::{FreshRequest, FreshResponse, JoinRequest};
use scheduler::{Error, Metrics, SchedulerClient};
use std::time::{Duration, Instant};

const DIGEST: &str = "sha256:6666666666666666666666666666666666666666666666666666666666666666";
const PIECE: u64 = 4 << 20;
const PIECES: u32 = 128;
const SIZE: u64 = PIECES as u64 * PIECE;
/// The next fresh piece once `crowd` holds every lease.
const NEXT: u32 = swarm::release::MAX_IN_FLIGHT;
/// Members `crowd` fills the leases with, two each.
const MEMBERS: u32 = NEXT / 2;
const POOL: &str = "np-1";

fn peer(id: &str, pool: &str) -> PeerRef {
    PeerRef {
        id: id.into(),
        pool: pool.into(),
        addr: format!("10.0.0.{}:65002", id.len()),
    }
}

fn join_req(id: &str, pool: &str) -> JoinRequest {
    JoinRequest {
        peer: peer(id, pool),
        task: TaskInfo {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        },
        held: 0,
        done: false,
    }
}

fn ask(id: &str, completed: &[u32], wait: bool) -> FreshRequest {
    FreshRequest {
        peer: peer(id, POOL),
        digest: DIGEST.into(),
        completed: completed.to_vec(),
        wait,
    }
}

/// Waits (at most 5 s) until `waiting` fresh requests are held open.
async fn until_waiting(metrics: &Metrics, waiting: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.fresh_waiting.get() != waiting {
        assert!(
            Instant::now() < deadline,
            "{} requests waiting, not {waiting}",
            metrics.fresh_waiting.get()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Members holding two leases each (`swarm::release::MAX_IN_FLIGHT`, the most out at once:
/// the next fresh piece is that number) and `late`, one more, that has joined and holds none.
async fn crowd(c: &SchedulerClient) {
    for i in 0..MEMBERS {
        c.join(&join_req(&format!("m{i:02}"), POOL))
            .await
            .expect("join");
    }
    c.join(&join_req("late", POOL)).await.expect("join");
    for i in 0..MEMBERS {
        let id = format!("m{i:02}");
        for piece in [2 * i, 2 * i + 1] {
            let got = c.fresh(&ask(&id, &[], true)).await.expect("fresh");
            assert_eq!(got.pieces, vec![piece]);
        }
    }
}

/// Sends `late`'s waiting request in the background.
fn late_waits(c: &SchedulerClient) -> tokio::task::JoinHandle<(FreshResponse, Duration)> {
    let c = c.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let answer = c.fresh(&ask("late", &[], true)).await.expect("fresh");
        (answer, start.elapsed())
    })
}

#[actix_web::test]
async fn a_waiting_request_is_answered_when_another_member_completes_a_lease() {
    let s = Running::start(config(SECRET, vec![])).await;
    let c = s.client(SECRET, POOL);
    crowd(&c).await;
    let late = late_waits(&c);
    until_waiting(&s.metrics, 1).await;
    // m00 took piece 0 from the mirror: its lease ends, and the next goes to late at once.
    let report = c.fresh(&ask("m00", &[0], false)).await.expect("report");
    // Most of the 128 pieces are left to lease, more than one window: no moving on yet
    // (swarm::Releases::move_on).
    assert_eq!(report, FreshResponse::default());
    let (answer, took) = late.await.expect("late's request");
    assert_eq!(answer.pieces, vec![NEXT]);
    assert!(took < Duration::from_millis(1900), "{took:?}");
    assert_eq!(s.metrics.fresh_waiting.get(), 0);
    assert_eq!(s.metrics.fresh_leases.get(), u64::from(NEXT) + 1);
    assert_eq!(s.metrics.joins.get(), u64::from(MEMBERS) + 1);
    let text = s.metrics_text().await;
    for line in [
        format!("poolcast_scheduler_joins_total {}", MEMBERS + 1),
        format!("poolcast_scheduler_fresh_leases_total {}", NEXT + 1),
        "poolcast_scheduler_fresh_waiting 0".into(),
        format!("poolcast_scheduler_peers {}", MEMBERS + 1),
        "poolcast_scheduler_tasks 1".into(),
    ] {
        assert!(text.contains(line.as_str()), "{line} missing in:\n{text}");
    }
    s.stop().await;
}

#[actix_web::test]
async fn a_newer_request_of_the_same_peer_answers_the_older_one_empty() {
    let s = Running::start(config(SECRET, vec![])).await;
    let c = s.client(SECRET, POOL);
    crowd(&c).await;
    let older = late_waits(&c);
    until_waiting(&s.metrics, 1).await;
    let newer = late_waits(&c);
    let (answer, took) = older.await.expect("older request");
    assert_eq!(answer, FreshResponse::default());
    assert!(took < Duration::from_millis(1900), "{took:?}");
    until_waiting(&s.metrics, 1).await;
    c.fresh(&ask("m07", &[14], false)).await.expect("report");
    let (answer, _) = newer.await.expect("newer request");
    assert_eq!(
        answer.pieces,
        vec![NEXT],
        "the grant reached the open request"
    );
    s.stop().await;
}

#[actix_web::test]
async fn a_request_nobody_answers_comes_back_empty_after_the_long_poll() {
    let s = Running::start(config(SECRET, vec![])).await;
    let c = s.client(SECRET, POOL);
    crowd(&c).await;
    let (answer, took) = late_waits(&c).await.expect("late's request");
    assert_eq!(answer, FreshResponse::default());
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert_eq!(s.metrics.fresh_waiting.get(), 0);
    // It waits no more: a lease freed now stays free for whoever asks next.
    c.fresh(&ask("m00", &[0], false)).await.expect("report");
    let got = c.fresh(&ask("late", &[], true)).await.expect("fresh");
    assert_eq!(got.pieces, vec![NEXT]);
    s.stop().await;
}

#[actix_web::test]
async fn join_names_members_of_pools_that_pair_and_warm_holders() {
    let s = Running::start(config("", a_b_and_edge())).await;
    let c = s.client("", "unused when no secret is set");
    c.heartbeat(&HeartbeatRequest {
        peer: PeerRef {
            id: "warm".into(),
            pool: "b".into(),
            addr: "10.0.1.1:65002".into(),
        },
        held: vec![HeldTask {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        }],
    })
    .await
    .expect("heartbeat");
    c.join(&join_req("c1", "c")).await.expect("join");
    let a1 = c.join(&join_req("a1", "a")).await.expect("join");
    assert_eq!(a1.reachable_pools, vec!["a", "b"]);
    let names: Vec<(&str, &str, bool)> = a1
        .members
        .iter()
        .map(|m| (m.id.as_str(), m.addr.as_str(), m.done))
        .collect();
    assert_eq!(names, vec![("warm", "10.0.1.1:65002", true)]);
    let edge = c.join(&join_req("e1", "edge")).await.expect("join");
    assert!(edge.go_source && edge.members.is_empty());
    let mut other = join_req("a2", "a");
    other.task.size += 1;
    let err = c.join(&other).await.expect_err("conflict");
    assert_eq!(status_of(err), 409);
    s.stop().await;
}

#[actix_web::test]
async fn v2_requests_are_signed_and_checked() {
    let s = Running::start(config(SECRET, vec![])).await;
    let http = reqwest::Client::new();
    for path in ["/api/v2/join", "/api/v2/fresh"] {
        let unsigned = http
            .post(format!("{}{path}", s.url))
            .json(&join_req("n1", POOL))
            .send()
            .await
            .expect("send");
        assert_eq!(unsigned.status(), 401, "{path}");
    }
    let wrong = s.client("another secret", POOL);
    assert_eq!(
        status_of(
            wrong
                .join(&join_req("n1", POOL))
                .await
                .expect_err("refused")
        ),
        401
    );
    let other_pool = s.client(SECRET, "np-2");
    assert_eq!(
        status_of(
            other_pool
                .fresh(&ask("n1", &[], false))
                .await
                .expect_err("refused")
        ),
        401
    );
    let c = s.client(SECRET, POOL);
    match c
        .fresh(&ask("n1", &[], true))
        .await
        .expect_err("not joined")
    {
        Error::Status { status, message } => {
            assert_eq!(status, 404);
            assert!(
                message.contains("n1") && message.contains("join"),
                "{message}"
            );
        }
        other => panic!("expected 404, got {other}"),
    }
    c.join(&join_req("n1", POOL)).await.expect("join");
    for bad in [vec![PIECES], vec![0; PIECES as usize + 1]] {
        let err = c.fresh(&ask("n1", &bad, false)).await.expect_err("bad");
        assert_eq!(status_of(err), 400);
    }
    let body = "{\"peer\":{\"id\":\"n1\"}}";
    let key = nodepool::keys::pool_key(&PoolSecret::new(SECRET), POOL);
    let millis = nodepool::signed::unix_millis_now();
    let signed = s.sign(&key, POOL, "/api/v2/fresh", body.as_bytes(), millis);
    let resp = http
        .post(format!("{}/api/v2/fresh", s.url))
        .header(AUTH_HEADER, signed)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(s.metrics.unauthorized.get(), 4);
    s.stop().await;
}
