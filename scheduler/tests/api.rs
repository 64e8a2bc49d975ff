//! The scheduler over HTTP, bound to 127.0.0.1:0 and driven with the real client: heartbeat and
//! leave, signatures, bounds and bad input. Join and fresh are in `api_v2.rs`.

mod common;

use common::{config, status_of, Running, SECRET};
use nodepool::keys::pool_key;
use nodepool::signed::{self, unix_millis_now, RequestParts};
use nodepool::{unix_now as now_unix, PoolSecret, AUTH_HEADER};
use scheduler::api::{HeartbeatRequest, HeldTask, LeaveRequest, PeerRef, TaskInfo};
use scheduler::api_v2::JoinRequest;
use scheduler::{Error, SchedulerClient};
use std::time::Duration;

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const PIECE: u64 = 4 << 20;
const SIZE: u64 = 6 * PIECE;

fn peer(id: &str, pool: &str) -> PeerRef {
    PeerRef {
        id: id.into(),
        pool: pool.into(),
        addr: "127.0.0.1:65002".into(),
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

fn beat(id: &str, pool: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        peer: peer(id, pool),
        held: vec![HeldTask {
            digest: DIGEST.into(),
            size: SIZE,
            piece_size: PIECE,
        }],
    }
}

/// The members `id` of pool `np-1` is told of when it joins [`DIGEST`], with whether each
/// holds it whole.
async fn members(c: &SchedulerClient, id: &str) -> Vec<(String, bool)> {
    let answer = c.join(&join_req(id, "np-1")).await.expect("join");
    answer.members.into_iter().map(|m| (m.id, m.done)).collect()
}

#[actix_web::test]
async fn heartbeats_make_holders_members_and_leave_ends_it() {
    let s = Running::start(config(SECRET, vec![])).await;
    let c = s.client(SECRET, "np-1");
    let answer = c.heartbeat(&beat("h1", "np-1")).await.expect("heartbeat");
    assert_eq!(answer.interval_ms, 10_000, "peerTTL / 3");
    assert_eq!(answer.reachable_pools, vec!["np-1"]);
    assert_eq!(members(&c, "r1").await, vec![("h1".to_owned(), true)]);
    c.leave(&LeaveRequest {
        peer_id: "h1".into(),
        pool: "np-1".into(),
        digest: Some(DIGEST.into()),
    })
    .await
    .expect("leave");
    assert!(members(&c, "r2").await.iter().all(|(id, _)| id != "h1"));
    c.leave(&LeaveRequest {
        peer_id: "h1".into(),
        pool: "np-1".into(),
        digest: None,
    })
    .await
    .expect("leave");

    let text = s.metrics_text().await;
    for name in [
        "poolcast_scheduler_peers 2",
        "poolcast_scheduler_tasks 1",
        "poolcast_scheduler_joins_total 2",
        "poolcast_scheduler_go_source_total 0",
        "poolcast_scheduler_unauthorized_total 0",
    ] {
        assert!(text.contains(name), "{name} missing in:\n{text}");
    }
    let health = reqwest::get(format!("{}/healthz", s.url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), "ok");
    s.stop().await;
}

#[actix_web::test]
async fn unsigned_or_badly_signed_requests_get_401() {
    let s = Running::start(config(SECRET, vec![])).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v2/join", s.url);
    let body = serde_json::to_vec(&join_req("n1", "np-1")).expect("json");

    let unsigned = http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(unsigned.status(), 401);
    let json: serde_json::Value = unsigned.json().await.expect("error json");
    assert_eq!(json["errors"][0]["code"], "UNAUTHORIZED");
    assert!(json["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains(AUTH_HEADER)));

    let np1 = pool_key(&PoolSecret::new(SECRET), "np-1");
    let np2 = pool_key(&PoolSecret::new(SECRET), "np-2");
    let now = unix_millis_now();
    let path = "/api/v2/join";
    let bad_headers = [
        "garbage".to_string(),
        format!("v1 np-1 {} {}", now_unix(), "0".repeat(64)),
        // v1, as the scheduler took before: no longer.
        PoolSecret::new(SECRET).sign("POST", path, "np-1", now_unix()),
        // Another path, another body, stale, the release secret itself, another pool's key.
        s.sign(&np1, "np-1", "/api/v1/heartbeat", &body, now),
        s.sign(&np1, "np-1", path, b"{}", now),
        s.sign(&np1, "np-1", path, &body, now - 3_600_000),
        s.sign(&PoolSecret::new(SECRET), "np-1", path, &body, now),
        s.sign(&np2, "np-1", path, &body, now),
    ];
    for header in bad_headers {
        let resp = http
            .post(&url)
            .header(AUTH_HEADER, header.as_str())
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 401, "{header}");
    }
    // Signed for another host: a request captured on its way elsewhere.
    let elsewhere = signed::sign(
        &np1,
        &RequestParts {
            method: "POST",
            host: "scheduler.other:65003",
            path_and_query: path,
            body: &body,
        },
        "np-1",
        now,
        signed::fresh_nonce(),
    );
    let resp = http
        .post(&url)
        .header(AUTH_HEADER, elsewhere)
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401, "signed for another host");
    // A good request is taken once; the same bytes again are a replay.
    let once = s.sign(&np1, "np-1", path, &body, now);
    for (attempt, want) in [(0, 200), (1, 401)] {
        let resp = http
            .post(&url)
            .header(AUTH_HEADER, once.as_str())
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), want, "attempt {attempt}");
    }

    let wrong_secret = s.client("another secret", "np-1");
    let err = wrong_secret
        .heartbeat(&beat("n1", "np-1"))
        .await
        .expect_err("refused");
    assert_eq!(status_of(err), 401);
    // Signed for one pool, speaking for a peer of another.
    let other_pool = s.client(SECRET, "np-2");
    let err = other_pool
        .heartbeat(&beat("n1", "np-1"))
        .await
        .expect_err("refused");
    assert_eq!(status_of(err), 401);
    let err = other_pool
        .leave(&LeaveRequest {
            peer_id: "n1".into(),
            pool: "np-1".into(),
            digest: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(status_of(err), 401);

    let good = s.client(SECRET, "np-1");
    good.heartbeat(&beat("n2", "np-1"))
        .await
        .expect("signed request accepted");
    assert_eq!(s.metrics.unauthorized.get(), 14);
    assert_eq!(s.metrics.joins.get(), 1, "only the one good join");
    s.stop().await;
}

#[actix_web::test]
async fn hostile_input_gets_4xx_not_panic() {
    let s = Running::start(config(SECRET, vec![])).await;
    let http = reqwest::Client::new();
    let key = pool_key(&PoolSecret::new(SECRET), "np-1");
    let signed = |path: &str, body: &[u8]| s.sign(&key, "np-1", path, body, unix_millis_now());
    let good = serde_json::to_value(join_req("n1", "np-1")).expect("json");
    let with = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string().into_bytes()
    };
    let task_with = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v["task"][key] = value;
        v.to_string().into_bytes()
    };
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", vec![]),
        ("not json", b"\xff\xfe{{{".to_vec()),
        ("json array", b"[1,2,3]".to_vec()),
        ("missing fields", b"{\"peer\":{}}".to_vec()),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
        ("huge body", vec![b' '; 3 << 20]),
        ("negative count", with("held", serde_json::json!(-1))),
        (
            "more pieces held than the blob has",
            with("held", serde_json::json!(7)),
        ),
        ("a list for a count", with("held", serde_json::json!([0]))),
        (
            "string for a number",
            task_with("size", serde_json::json!("big")),
        ),
        ("size 0", task_with("size", serde_json::json!(0))),
        ("piece size 0", task_with("pieceSize", serde_json::json!(0))),
        (
            "millions of pieces",
            task_with("pieceSize", serde_json::json!(1)),
        ),
        ("size past u64", task_with("size", serde_json::json!(1e30))),
        (
            "bad digest",
            task_with("digest", serde_json::json!("sha256:../../etc")),
        ),
        ("long id", {
            let mut v = good.clone();
            v["peer"]["id"] = serde_json::json!("x".repeat(10_000));
            v.to_string().into_bytes()
        }),
        ("address without a port", {
            let mut v = good.clone();
            v["peer"]["addr"] = serde_json::json!("10.0.0.1");
            v.to_string().into_bytes()
        }),
    ];
    for (what, body) in bodies {
        let resp = http
            .post(format!("{}/api/v2/join", s.url))
            .header(AUTH_HEADER, signed("/api/v2/join", &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        assert!((400..500).contains(&status), "{what}: {status}");
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(json["errors"][0]["code"].is_string(), "{what}: error JSON");
    }
    let mut held = beat("n1", "np-1");
    held.held = vec![held.held[0].clone(); 10_001];
    let bytes = serde_json::to_vec(&held).expect("json");
    let resp = http
        .post(format!("{}/api/v1/heartbeat", s.url))
        .header(AUTH_HEADER, signed("/api/v1/heartbeat", &bytes))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    // The most a heartbeat may list still fits the body limit.
    held.held = (0..10_000u32)
        .map(|i| HeldTask {
            digest: format!("sha256:{i:064x}"),
            size: SIZE,
            piece_size: PIECE,
        })
        .collect();
    let bytes = serde_json::to_vec(&held).expect("json");
    let resp = http
        .post(format!("{}/api/v1/heartbeat", s.url))
        .header(AUTH_HEADER, signed("/api/v1/heartbeat", &bytes))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let get = http
        .get(format!("{}/api/v2/join", s.url))
        .send()
        .await
        .expect("send");
    assert_eq!(get.status(), 405);
    // v1's per-piece announce is gone.
    let body = b"{}";
    let announce = http
        .post(format!("{}/api/v1/announce", s.url))
        .header(AUTH_HEADER, signed("/api/v1/announce", body))
        .body(&body[..])
        .send()
        .await
        .expect("send");
    assert_eq!(announce.status(), 404);
    let unknown = http
        .get(format!("{}/v2/", s.url))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), 404);

    assert_eq!(s.metrics.joins.get(), 0);
    let health = reqwest::get(format!("{}/healthz", s.url))
        .await
        .expect("still up");
    assert_eq!(health.status(), 200);
    s.stop().await;
}

#[actix_web::test]
async fn heartbeat_restores_holders_after_restart() {
    let first = Running::start(config(SECRET, vec![])).await;
    let c = first.client(SECRET, "np-1");
    c.heartbeat(&beat("h1", "np-1")).await.expect("heartbeat");
    assert_eq!(members(&c, "r1").await, vec![("h1".to_owned(), true)]);
    first.stop().await;

    let second = Running::start(config(SECRET, vec![])).await;
    let c = second.client(SECRET, "np-1");
    assert!(
        members(&c, "r1").await.is_empty(),
        "a new scheduler knows nobody"
    );
    c.heartbeat(&beat("h1", "np-1")).await.expect("heartbeat");
    assert_eq!(members(&c, "r1").await, vec![("h1".to_owned(), true)]);
    second.stop().await;
}

#[actix_web::test]
async fn unreachable_scheduler_is_an_error_not_a_hang() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = SchedulerClient::new(
        &format!("http://127.0.0.1:{port}"),
        PoolSecret::default(),
        "np-1".into(),
        Duration::from_secs(2),
    )
    .expect("client");
    let err = c
        .heartbeat(&beat("n1", "np-1"))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}
