//! Nothing stops a pull the registry could serve: a parent killed mid-transfer, a parent that
//! stalls, a peer that sends corrupted pieces, the scheduler killed mid-rollout. In each, every
//! pull completes and is verified digest for digest. The stalling and lying peers are hostile
//! fakes (no real agent misbehaves on purpose) registered with the real scheduler.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::time::Duration;

use common::agent::{
    DIGEST_MISMATCHES, PEER_BYTES, PIECE_FAILURES, PROOFS_FAILED, SCHEDULER_ERRORS, SOURCE_BYTES,
    UPLOADS,
};
use common::assert_eventually;
use common::fake_peer::{FakePeer, FakePeerSpec, Misbehaviour};
use common::p2p::{BedSpec, P2pBed};
use common::scheduler::{PEERS, TASKS};

const POOL: &str = "pool-a";

#[test]
fn a_parent_killed_mid_transfer_does_not_fail_the_pull() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 41,
        ..BedSpec::default()
    });
    // The parent uploads slowly, so its transfers are still running when it dies: at 1 MB/s a
    // piece takes it tens of milliseconds, longer than from seeing it upload to the kill on a
    // loaded machine (at 4 MB/s a CI run once killed it after its last push had landed).
    let parent = bed.add_agent(POOL, &["--upload-rate", "1M"]);
    bed.pull(parent);
    let children = bed.add_agents(4, POOL, &[]);

    let pulls = bed.start_pulls(&children);
    assert_eventually(
        Duration::from_secs(20),
        "the parent uploading pieces to its children",
        || bed.agents[parent].metric(UPLOADS) > 0.0 && bed.agents[parent].peer_bytes("out") > 0.0,
    );
    bed.agents[parent].kill();
    eprintln!(
        "killed the parent {} mid-transfer",
        bed.agents[parent].node()
    );
    assert!(
        pulls.running() > 0,
        "every pull finished before the parent was killed: nothing was mid-transfer"
    );
    pulls.finish(&bed.fx.image);

    eprintln!(
        "children after the parent died: {} / failures {}",
        bed.per_agent(&children, PEER_BYTES),
        bed.per_agent(&children, PIECE_FAILURES)
    );
    assert!(
        bed.sum(&children, PIECE_FAILURES) > 0.0,
        "no child saw a piece fail: the parent died without any transfer from it in flight"
    );
}

/// A fake holder of every blob of the bed's image, in `POOL`, behaving as `behaviour`.
fn hostile_holder(bed: &P2pBed, behaviour: Misbehaviour) -> FakePeer {
    FakePeer::start(FakePeerSpec {
        ip: "127.0.0.200",
        behaviour,
        blobs: bed.fx.image.blobs().into_iter().cloned().collect(),
        scheduler_url: bed.scheduler().url(),
        pool: POOL,
        secret: None,
    })
}

#[test]
fn a_stalling_parent_is_dropped_within_transfer_timeout() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 42,
        ..BedSpec::default()
    });
    let fake = hostile_holder(&bed, Misbehaviour::Stall);
    let agents = bed.add_agents(3, POOL, &["--transfer-timeout", "2s"]);
    let durations = bed.pull_all(&agents);

    eprintln!(
        "stalling parent pushed {} pieces; pulls took {durations:.1?}; piece failures {}",
        fake.pushes(),
        bed.per_agent(&agents, PIECE_FAILURES)
    );
    assert!(
        fake.pushes() > 0,
        "no agent took a piece from the stalling parent"
    );
    // The stall costs each blob one transferTimeout (2 s here) before its pieces go elsewhere;
    // at the default 15 s, three blobs would take over 45 s.
    let slowest = *durations.iter().max().unwrap();
    assert!(
        slowest < Duration::from_secs(25),
        "a pull took {slowest:.1?}: the stalling parent was not dropped after --transfer-timeout 2s"
    );
    assert!(
        bed.sum(&agents, PIECE_FAILURES) > 0.0,
        "no agent counted a stalled piece"
    );
    // Each agent takes at most a lane's pieces (one pushed, two offered behind) from it per
    // blob, then blocks it.
    let most = agents.len() * 3 * bed.fx.image.blobs().len();
    assert!(
        fake.pushes() <= most,
        "the stalling parent was given {} pieces (at most {most} expected): not blocked",
        fake.pushes()
    );
}

#[test]
fn a_peer_sending_corrupted_pieces_is_reported_and_the_pull_verifies() {
    corrupted_pieces_are_caught(43, Misbehaviour::Corrupt);
}

/// A proof that is a real signature, by another key than the mirror's: refused, and the piece
/// is judged by the mirror's digest, which catches the bytes.
#[test]
fn a_peer_forging_proofs_is_caught_and_the_pull_verifies() {
    corrupted_pieces_are_caught(46, Misbehaviour::ForgedProof);
}

fn corrupted_pieces_are_caught(seed: u64, behaviour: Misbehaviour) {
    let mut bed = P2pBed::start(BedSpec {
        seed,
        ..BedSpec::default()
    });
    let fake = hostile_holder(&bed, behaviour);
    let agents = bed.add_agents(3, POOL, &["--transfer-timeout", "2s"]);
    bed.pull_all(&agents);

    eprintln!(
        "lying peer pushed {} pieces; digest mismatches {}",
        fake.pushes(),
        bed.per_agent(&agents, DIGEST_MISMATCHES)
    );
    assert!(
        fake.pushes() > 0,
        "no agent took a piece from the lying peer"
    );
    assert!(
        bed.sum(&agents, DIGEST_MISMATCHES) > 0.0,
        "no agent caught a corrupted piece"
    );
    if matches!(behaviour, Misbehaviour::ForgedProof) {
        assert!(
            bed.sum(&agents, PROOFS_FAILED) > 0.0,
            "no agent refused a forged proof"
        );
    }
    // Each agent takes at most a lane's pieces (one pushed, two offered behind) from it per
    // blob, then blocks it.
    let most = agents.len() * 3 * bed.fx.image.blobs().len();
    assert!(
        fake.pushes() <= most,
        "the lying peer was given {} pieces (at most {most} expected): not blocked",
        fake.pushes()
    );
}

#[test]
fn scheduler_killed_mid_rollout_degrades_to_source() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 44,
        ..BedSpec::default()
    });
    // Slow downloads, so the rollout is still under way when the scheduler dies.
    let agents = bed.add_agents(4, POOL, &["--download-rate", "2M"]);
    let pulls = bed.start_pulls(&agents);
    assert_eventually(Duration::from_secs(20), "the rollout under way", || {
        bed.sum(&agents, SOURCE_BYTES) + bed.peer_bytes(&agents, "in") > 256.0 * 1024.0
    });
    bed.scheduler_mut().kill();
    assert!(
        pulls.running() > 0,
        "every pull finished before the scheduler was killed"
    );
    pulls.finish(&bed.fx.image);
    assert!(
        bed.sum(&agents, SCHEDULER_ERRORS) > 0.0,
        "no agent noticed the scheduler was gone"
    );

    // Soft state: the restarted scheduler learns the holders from their heartbeats, and a new
    // node's pull gets pieces from them.
    bed.scheduler_mut().restart();
    // Joins of downloads still finishing re-register peers at once, but only heartbeats
    // (every 5 s) list every blob held: wait until the scheduler knows them all again.
    let blobs = bed.fx.image.blobs().len() as f64;
    assert_eventually(
        Duration::from_secs(20),
        "every agent and every blob they hold known to the restarted scheduler",
        || {
            let s = bed.scheduler();
            s.metric(PEERS) >= agents.len() as f64 && s.metric(TASKS) >= blobs
        },
    );
    let newcomer = bed.add_agent(POOL, &[]);
    bed.pull(newcomer);
    let peer_in = bed.agents[newcomer].peer_bytes("in");
    eprintln!(
        "after the scheduler restart, the new node got {peer_in} bytes from peers, {} from the mirror",
        bed.agents[newcomer].metric(SOURCE_BYTES)
    );
    assert!(
        peer_in > 0.0,
        "the new node got nothing from peers: the restarted scheduler did not learn the holders"
    );
}

#[test]
fn a_blob_larger_than_the_nodes_cache_is_refused_clearly_and_the_agent_keeps_serving() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 45,
        ..BedSpec::default()
    });
    // The image's largest layer is 6 MiB: a 4 MiB cache cannot hold it.
    let small = bed.add_agent(POOL, &["--capacity", "4MiB"]);
    let (output, _) = bed.pull_as(small, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a 6 MiB layer was pulled through a 4 MiB cache"
    );
    let log = std::fs::read_to_string(bed.agents[small].log_path()).unwrap_or_default();
    assert!(
        log.contains("does not fit the cache") || stderr.contains("does not fit the cache"),
        "no clear reason for the refusal; skopeo said: {stderr}\nagent log: {log}"
    );
    assert!(
        bed.agents[small].is_running(),
        "the agent died refusing the blob"
    );
    // The same agent still serves a pull that fits, and another node is unaffected.
    let other = bed.add_agent(POOL, &[]);
    bed.pull(other);
}

/// A download that keeps trickling never trips `transferTimeout`; `downloadTimeout` ends it:
/// the request fails, nothing of it is kept, and the next request starts afresh.
#[test]
fn a_download_past_download_timeout_fails_and_the_next_request_starts_afresh() {
    let mut bed = P2pBed::start(BedSpec {
        layers: &[2 << 20],
        seed: 48,
        scheduler: false,
        ..BedSpec::default()
    });
    // 2 MiB at 256 KiB/s takes 8 s; the download may take 2.
    let a = bed.add_agent(
        POOL,
        &["--download-rate", "256KiB", "--download-timeout", "2s"],
    );
    let layer = bed.fx.image.layers[0].clone();
    let host = bed.agents[a].host().to_owned();
    let path = format!("/v2/{}/blobs/{}", common::fixture::REPO, layer.digest);
    let started = std::time::Instant::now();
    let got = common::raw_request(&host, "GET", &path, &[]);
    let took = started.elapsed();
    let whole = got
        .as_ref()
        .is_ok_and(|r| r.status == 200 && r.body.len() as u64 == layer.size);
    assert!(!whole, "a download past downloadTimeout was served whole");
    assert!(
        took < Duration::from_secs(6),
        "the request ran {took:?}, past downloadTimeout (2 s)"
    );
    assert_eventually(
        Duration::from_secs(10),
        "the failed download is gone",
        || bed.agents[a].metric(common::agent::TASKS) == 0.0,
    );
    let log = std::fs::read_to_string(bed.agents[a].log_path()).unwrap();
    assert!(
        log.contains("downloadTimeout"),
        "the agent's log does not say why the download ended"
    );
    // Nothing was kept: the next request downloads again.
    let before = bed.agents[a].metric(SOURCE_BYTES);
    let _ = common::raw_request(&host, "GET", &path, &[]);
    assert!(
        bed.agents[a].metric(SOURCE_BYTES) > before,
        "the next request did not download again"
    );
}
