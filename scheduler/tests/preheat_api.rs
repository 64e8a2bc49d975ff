//! The preheat job API over HTTP: a real scheduler bound to 127.0.0.1:0, driven with the real
//! client. Jobs are created and read only by requests signed for their pool, and a node that
//! cannot be reached fails the job with its name.

mod common;

use common::{a_b_and_edge, config, status_of, Running, SECRET};
use scheduler::api::{HeartbeatRequest, PeerRef};
use scheduler::nodes::NodeNote;
use scheduler::preheat::{JobState, NodeCount, PreheatRequest};
use std::time::{Duration, Instant};

fn beat(id: &str, pool: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        peer: PeerRef {
            id: id.into(),
            pool: pool.into(),
            addr: "127.0.0.1:65002".into(),
        },
        held: vec![],
    }
}

fn request(pool: &str) -> PreheatRequest {
    PreheatRequest {
        pool: pool.into(),
        images: vec!["registry.example.com/shop/app:v1".into()],
        nodes: NodeCount::All,
        platform: None,
        credentials: Default::default(),
    }
}

/// A port nothing listens on.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

#[tokio::test]
async fn preheat_jobs_are_created_and_read_only_as_their_pool() {
    let s = Running::start(config(SECRET, a_b_and_edge())).await;
    let a = s.client(SECRET, "a");
    let b = s.client(SECRET, "b");

    // No node of `a` has said where its registry port is: nothing to preheat on.
    a.heartbeat(&beat("old-agent", "a"))
        .await
        .expect("plain heartbeat");
    let none = a.preheat(&request("a")).await.expect_err("no node");
    assert_eq!(status_of(none), 400);

    let note = NodeNote {
        registry: Some(closed_port()),
        ..NodeNote::default()
    };
    a.heartbeat_noted(&beat("n1", "a"), &note)
        .await
        .expect("noted heartbeat");
    // Signed for `b`, asking for `a`: refused.
    let refused = b.preheat(&request("a")).await.expect_err("other pool");
    assert_eq!(status_of(refused), 401);
    let unsigned = s.client("another-secret", "a");
    assert_eq!(
        status_of(unsigned.preheat(&request("a")).await.expect_err("bad key")),
        401
    );

    let job = a.preheat(&request("a")).await.expect("job");
    assert_eq!(job.pool, "a");
    assert_eq!(
        job.nodes.len(),
        1,
        "only the node that reported its registry port"
    );
    assert_eq!(job.nodes[0].id, "n1");
    // `b` cannot see it.
    assert_eq!(
        status_of(b.preheat_status(&job.id).await.expect_err("hidden")),
        404
    );

    // The node's registry port is closed: the job fails, naming what could not be reached.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let view = a.preheat_status(&job.id).await.expect("status");
        if view.state.finished() {
            break view;
        }
        assert!(Instant::now() < deadline, "job still {:?}", view.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, JobState::Failed);
    let error = done.error.unwrap_or_default();
    assert!(
        error.contains(note.registry.as_deref().unwrap_or("?")),
        "names the unreachable address: {error}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_preheat_request_with_a_bad_image_or_node_count_is_refused() {
    let s = Running::start(config(SECRET, a_b_and_edge())).await;
    let a = s.client(SECRET, "a");
    let mut bad = request("a");
    bad.images = vec!["UPPER/case".into()];
    assert_eq!(
        status_of(a.preheat(&bad).await.expect_err("bad image")),
        400
    );
    let body = r#"{"pool":"a","images":["x.io/a:v1"],"nodes":0}"#;
    let key = nodepool::keys::pool_key(&nodepool::PoolSecret::new(SECRET), "a");
    let auth = s.sign(
        &key,
        "a",
        "/api/v2/preheat",
        body.as_bytes(),
        nodepool::signed::unix_millis_now(),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v2/preheat", s.url))
        .header(nodepool::AUTH_HEADER, auth)
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 400);
    s.stop().await;
}
