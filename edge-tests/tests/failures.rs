//! Rollouts that lose a part midway across shaped links: a node, the scheduler, the mirror
//! (restarted on its hostPath cache), or the origin registry. Every remaining pull completes
//! and verifies.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use std::time::Duration;

use edge_tests::parts::eventually;
use edge_tests::pool::{
    all_ok, EdgePool, PoolSpec, AGENT_PEER_BYTES, MIB, MIRROR_SERVED, UPSTREAM_BYTES,
};

/// A rollout slow enough (24 MiB at 50 mbit, about 4 s at the bound) to break something in it.
fn slow_pool(seed: u64) -> EdgePool {
    EdgePool::start(PoolSpec {
        nodes: 5,
        mbit: 50,
        layers: vec![16 * MIB, 8 * MIB],
        seed,
        ..PoolSpec::default()
    })
    .unwrap()
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn node_killed_mid_rollout_the_others_complete() {
    let mut pool = slow_pool(51);
    let all: Vec<usize> = (0..pool.nodes.len()).collect();
    let pulls = pool.start_pulls(&all, |i| pool.by_tag(i));
    let victim = 2;
    let uploading = eventually(WAIT, || {
        pool.agent_metric(victim, AGENT_PEER_BYTES, Some("direction=\"out\""))
            .unwrap_or(0.0)
            > 0.0
    });
    assert!(uploading, "node 3 never uploaded to a peer");
    assert!(
        pulls.running() > 1,
        "the rollout ended before the node was killed"
    );
    pool.kill_agent(victim);

    let outcomes = pulls.finish(&pool.image);
    let others = outcomes.into_iter().filter(|(i, _)| *i != victim).collect();
    all_ok(others).unwrap();
}

#[test]
fn scheduler_killed_mid_rollout_every_pull_completes() {
    let mut pool = slow_pool(52);
    let all: Vec<usize> = (0..pool.nodes.len()).collect();
    let pulls = pool.start_pulls(&all, |i| pool.by_tag(i));
    let moving = eventually(WAIT, || {
        pool.agents_metric(&all, AGENT_PEER_BYTES, None)
            .unwrap_or(0.0)
            > 0.0
    });
    assert!(moving, "no peer traffic began");
    assert!(
        pulls.running() > 0,
        "the rollout ended before the scheduler was killed"
    );
    pool.kill_scheduler();
    all_ok(pulls.finish(&pool.image)).unwrap();
}

#[test]
fn mirror_restarted_mid_rollout_on_its_host_path_cache_every_pull_completes() {
    let mut pool = slow_pool(53);
    let all: Vec<usize> = (0..pool.nodes.len()).collect();
    let pulls = pool.start_pulls(&all, |i| pool.by_tag(i));
    let serving = eventually(WAIT, || {
        pool.mirror_metric(MIRROR_SERVED).unwrap_or(0.0) > 2.0 * MIB as f64
    });
    assert!(serving, "the mirror never served the pool");
    assert!(
        pulls.running() > 0,
        "the rollout ended before the mirror restarted"
    );
    pool.restart_mirror().unwrap();
    all_ok(pulls.finish(&pool.image)).unwrap();
}

#[test]
fn upstream_unreachable_images_in_the_pool_mirror_still_pull_by_tag_and_digest() {
    let mut pool = EdgePool::start(PoolSpec {
        nodes: 3,
        seed: 54,
        p2p: false,
        ..PoolSpec::default()
    })
    .unwrap();
    all_ok(
        pool.start_pulls(&[0], |i| pool.by_tag(i))
            .finish(&pool.image),
    )
    .unwrap();
    assert_eq!(
        pool.mirror_metric(UPSTREAM_BYTES).unwrap(),
        pool.image.total_blob_bytes() as f64
    );

    pool.stop_registry();
    let by_tag = pool
        .start_pulls(&[1], |i| pool.by_tag(i))
        .finish(&pool.image);
    let by_digest = pool
        .start_pulls(&[2], |i| pool.by_digest(i))
        .finish(&pool.image);
    all_ok(by_tag).unwrap();
    all_ok(by_digest).unwrap();
}
