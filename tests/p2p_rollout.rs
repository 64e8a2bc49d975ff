//! Pulls through node agents, real processes on their own loopback addresses: every agent ends
//! with a digest-identical image, the mirror fetches each blob from upstream once, and in p2p
//! mode most bytes move peer to peer instead of leaving the mirror once per node.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::TASKS as AGENT_TASKS;
use common::agent::{
    CACHE_HITS, PEER_BYTES, PIECE_LISTS, PROOFS_FAILED, PROOFS_HELD, SCHEDULER_ERRORS,
    SERVED_BYTES, SOURCE_BYTES, STARTED_AHEAD,
};
use common::fixture::REPO;
use common::p2p::{BedSpec, P2pBed};
use common::scheduler::{JOINS, PEERS, TASKS};
use common::{assert_eventually, Containerd};

const POOL: &str = "pool-a";

#[test]
fn p2p_rollout_every_agent_gets_a_digest_identical_image() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 31,
        ..BedSpec::default()
    });
    let agents = bed.add_agents(6, POOL, &[]);
    let durations = bed.pull_all(&agents);

    let copy = bed.one_copy() as f64;
    let upstream = bed.fx.upstream_bytes();
    let served = bed.fx.served_bytes() as f64;
    let from_mirror = bed.sum(&agents, SOURCE_BYTES);
    let peer_in = bed.peer_bytes(&agents, "in");
    let pieces = f64::from(bed.image_pieces());
    let leased = bed.mirror_pieces(&agents, "lease");
    let assisted = bed.mirror_pieces(&agents, "assist");
    let rescued = bed.mirror_pieces(&agents, "rescue");
    let ahead = bed.sum(&agents, STARTED_AHEAD);
    let lists = bed.sum(&agents, PIECE_LISTS);
    let proofs_held = bed.sum(&agents, PROOFS_HELD);
    let proofs_failed = bed.sum(&agents, PROOFS_FAILED);
    let slowest = durations.iter().max().unwrap();
    eprintln!(
        "p2p rollout, 6 agents, one cold image of {copy} bytes ({:?} + config), {pieces} pieces \
         at the default blocksize:\n  \
         mirror upstream bytes: {upstream} ({:.2} copies)\n  \
         mirror served bytes (blobs + manifests): {served} ({:.2} copies)\n  \
         agents' bytes from the mirror: {from_mirror} ({:.2} copies)\n  \
         agents' pieces from the mirror: leased {leased} ({:.2} copies), tail help {assisted}, \
         rescue {rescued}\n  \
         agents' peer bytes in: {peer_in} ({:.2} copies)\n  \
         blobs started ahead of skopeo: {ahead}\n  \
         piece-digest answers from the mirror: {lists}; pieces from peers accepted on the \
         mirror's proof: {proofs_held}, proofs that did not hold: {proofs_failed}\n  \
         slowest pull: {slowest:.1?}\n  per agent: {}",
        bed.fx
            .image
            .layers
            .iter()
            .map(|l| l.size)
            .collect::<Vec<_>>(),
        upstream as f64 / copy,
        served / copy,
        from_mirror / copy,
        leased / pieces,
        peer_in / copy,
        bed.per_agent(&agents, PEER_BYTES),
    );
    assert_eq!(
        upstream,
        bed.one_copy(),
        "the mirror should fetch each blob from upstream exactly once"
    );
    assert!(peer_in > 0.0, "no bytes moved peer to peer");
    // Peers send the mirror's proof ahead of each piece, so digests of pieces from peers do
    // not cross the mirror's uplink: most such pieces are accepted on a proof, none is refused.
    let from_peers = peer_in / (copy / pieces);
    assert!(
        proofs_held >= 0.5 * from_peers && proofs_failed == 0.0,
        "{proofs_held} pieces accepted on a proof of about {from_peers:.0} from peers, \
         {proofs_failed} proofs refused"
    );
    // Digests come with the pieces: the agents asked the mirror about 20 times for 131
    // pieces (12 to 24 measured), where asking per piece per node would be some 800.
    assert!(
        lists <= pieces,
        "the agents asked the mirror for piece digests {lists} times for {pieces} pieces"
    );
    // skopeo asks for the blobs one by one; the agents start the next once the one asked for
    // is nearly all leased (storage::ahead), and that changes none of the counts below.
    assert!(ahead >= 1.0, "no agent started a blob ahead of skopeo");
    // Each fresh piece leaves the mirror once: measured 1.00 copies; the margin covers a lease
    // that lapses on a loaded machine and is handed to another node.
    assert!(
        leased >= pieces && leased <= 1.5 * pieces,
        "the agents fetched {leased} leased pieces of {pieces} ({:.2} copies; measured 1.00)",
        leased / pieces
    );
    // Beyond that the mirror only helps the tail, with an uplink that is idle once every piece
    // is in the pool, and backs off when peers overtake its help: 1.03 to 1.12 copies served
    // in all (2026-12-03; 1.20 to 1.74 before the back-off), 1.27 to 1.29 since agents work
    // ahead of skopeo (the layers' tails now end together, and on loopback the mirror is as
    // fast as any peer; on shaped links it sends 1.06). Since the tests build sha2 and the
    // proof checks optimised (2026-12-04: at debug speed, hashing a piece took longer than
    // moving it), 16 runs gave 1.00 to 1.10 in 12 and 1.24, 1.28, 1.39, 1.52 in the others
    // (the tail help a loopback mirror gives); the bound is for P2P that does not work:
    // source mode sends 6.
    assert!(
        served <= 2.0 * copy,
        "the mirror served {:.2} copies of the image to a pool of 6 (measured 1.00 to 1.52; \
         source mode would be 6)",
        served / copy
    );
}

#[test]
fn source_mode_pulls_everything_from_the_mirror() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 32,
        scheduler: false,
        ..BedSpec::default()
    });
    let agents = bed.add_agents(3, POOL, &[]);
    bed.pull_all(&agents);

    let peer = bed.peer_bytes(&agents, "in") + bed.peer_bytes(&agents, "out");
    assert_eq!(peer, 0.0, "source mode moved bytes between peers");
    for &i in &agents {
        let from_mirror = bed.agents[i].metric(SOURCE_BYTES);
        assert!(
            from_mirror >= bed.one_copy() as f64,
            "{} took {from_mirror} bytes from the mirror, less than the image ({})",
            bed.agents[i].node(),
            bed.one_copy()
        );
    }
    assert_eq!(bed.fx.upstream_bytes(), bed.one_copy());
}

#[test]
fn agent_restart_serves_cached_blob_without_network() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 33,
        ..BedSpec::default()
    });
    let a = bed.add_agent(POOL, &["--cache-mode", "disk"]);
    bed.pull(a);
    let served_before = bed.fx.served_bytes();

    bed.agents[a].restart();
    bed.pull(a);

    let agent = &bed.agents[a];
    let mirror_growth = bed.fx.served_bytes() - served_before;
    let smallest = bed.fx.image.layers.iter().map(|b| b.size).min().unwrap();
    eprintln!(
        "after restart: mirror served {mirror_growth} more bytes (manifests), agent cache hits {}, \
         agent bytes from the mirror {}",
        agent.metric(CACHE_HITS),
        agent.metric(SOURCE_BYTES)
    );
    assert_eq!(
        agent.metric(SOURCE_BYTES),
        0.0,
        "the restarted agent fetched blob bytes from the mirror instead of its disk cache"
    );
    assert_eq!(
        agent.peer_bytes("in"),
        0.0,
        "the restarted agent fetched from peers"
    );
    assert!(
        agent.metric(CACHE_HITS) >= bed.fx.image.blobs().len() as f64,
        "expected a cache hit per blob, got {}",
        agent.metric(CACHE_HITS)
    );
    assert!(
        mirror_growth < smallest,
        "the mirror served {mirror_growth} bytes for the second pull, more than a layer"
    );

    // With the mirror gone and the agent restarted again, held blobs still go to a requester
    // served before: the agent's grants survive in its cache index.
    bed.fx.mirror.kill();
    bed.agents[a].restart();
    for blob in bed.fx.image.blobs() {
        let path = bed.fx.blob_path(&blob.digest);
        let resp = common::raw_request(bed.agents[a].host(), "GET", &path, &[]).unwrap();
        assert_eq!(resp.status, 200, "GET {path} with the mirror down");
        assert_eq!(resp.body, bed.fx.image.blob_bytes(&blob.digest));
    }
}

#[test]
fn a_zero_byte_blob_completes_at_once_and_its_download_ends() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 37,
        ..BedSpec::default()
    });
    let digest = bed.fx.registry.push_blob(REPO, b"").unwrap();
    let a = bed.add_agent(POOL, &[]);
    let path = format!("/v2/{REPO}/blobs/{digest}");

    let resp = common::raw_request(bed.agents[a].host(), "GET", &path, &[]).unwrap();
    assert_eq!((resp.status, resp.body.len()), (200, 0), "GET {path}");
    // A 0-byte blob has no pieces: nothing to wait for from the mirror or peers. Counted as
    // one piece, the download polled the mirror for it forever.
    assert_eventually(
        std::time::Duration::from_secs(10),
        "the agent's download of the 0-byte blob ending",
        || bed.agents[a].metric(AGENT_TASKS) == 0.0,
    );
    let resp = common::raw_request(bed.agents[a].host(), "GET", &path, &[]).unwrap();
    assert_eq!((resp.status, resp.body.len()), (200, 0), "GET {path} again");
    assert_eq!(
        bed.agents[a].metric(CACHE_HITS),
        1.0,
        "the second GET was not served from the agent's cache"
    );
    assert_eq!(
        bed.agents[a].metric(SCHEDULER_ERRORS),
        0.0,
        "the agent joined or listed a blob without pieces, which the scheduler refuses"
    );
}

#[test]
fn containerd_pulls_through_the_agent_with_hosts_toml() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 34,
        ..BedSpec::default()
    });
    let a = bed.add_agent(POOL, &[]);
    let containerd = Containerd::start();
    let digest = containerd.pull_via_mirror(
        &bed.image_ref(),
        &bed.fx.registry.host(),
        bed.agents[a].url(),
    );
    assert_eq!(digest, bed.fx.image.manifest_digest);
    // containerd falls back to the registry when a mirror fails, so the digest alone does not
    // show the agent served the pull: its counter must account for every blob.
    let served = bed.agents[a].metric(SERVED_BYTES);
    assert!(
        served >= bed.one_copy() as f64,
        "the agent served {served} bytes of a {}-byte image; containerd went around it",
        bed.one_copy()
    );
}

#[test]
fn memory_cache_serves_pulls_and_is_gone_after_restart() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 35,
        ..BedSpec::default()
    });
    let a = bed.add_agent(POOL, &["--cache-mode", "memory"]);
    bed.pull(a);
    let cache_dir = bed.agents[a].opts.cache_dir.clone();
    let on_disk = std::fs::read_dir(&cache_dir).map_or(0, |d| d.count());
    assert_eq!(
        on_disk,
        0,
        "memory mode wrote to the disk cache dir {}",
        cache_dir.display()
    );
    // Held in memory: a second pull is served from it.
    let from_mirror = bed.agents[a].metric(SOURCE_BYTES);
    bed.pull(a);
    assert_eq!(
        bed.agents[a].metric(SOURCE_BYTES),
        from_mirror,
        "the second pull fetched again instead of using the memory cache"
    );
    assert!(bed.agents[a].metric(CACHE_HITS) >= bed.fx.image.blobs().len() as f64);

    // A restart (a SIGKILL, no clean-up) loses the cache: the same pull fetches every blob
    // again, and the dead agent's tmpfs folder is freed by the next agent to start.
    let before = memory_dir(&bed.agents[a].log_path());
    assert!(before.is_dir(), "no memory cache at {}", before.display());
    bed.agents[a].restart();
    assert!(
        !before.exists(),
        "the killed agent's memory cache {} still takes RAM",
        before.display()
    );
    bed.pull(a);
    let agent = &bed.agents[a];
    eprintln!(
        "memory mode after restart: cache hits {}, blobs started ahead {}, bytes from the mirror {}, from peers {}",
        agent.metric(CACHE_HITS),
        agent.metric(STARTED_AHEAD),
        agent.metric(SOURCE_BYTES),
        agent.peer_bytes("in")
    );
    // The only hits: blobs this agent fetched again itself, ahead of skopeo's asking.
    assert!(
        agent.metric(CACHE_HITS) <= agent.metric(STARTED_AHEAD),
        "a blob survived the restart"
    );
    assert!(
        agent.metric(SOURCE_BYTES) >= bed.one_copy() as f64,
        "the restarted agent fetched {} bytes, less than the image ({})",
        agent.metric(SOURCE_BYTES),
        bed.one_copy()
    );
}

#[test]
fn evicted_blobs_stop_being_offered_to_peers() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 36,
        ..BedSpec::default()
    });
    // Blobs unused for 2 s expire; the cache GC runs every second.
    let a = bed.add_agent(POOL, &["--cache-ttl", "2s"]);
    bed.pull(a);
    // (Not "the scheduler knows every blob" first: the earliest may already have expired.)
    assert!(
        bed.scheduler().metric(JOINS) > 0.0,
        "the pull skipped the scheduler"
    );
    assert_eventually(
        std::time::Duration::from_secs(20),
        "the scheduler forgets the blobs the agent's cache evicted",
        || bed.scheduler().metric(TASKS) == 0.0,
    );
    assert_eq!(bed.scheduler().metric(PEERS), 1.0, "the agent itself stays");
    // A new node is sent to the mirror, not to a holder that would answer 404.
    let b = bed.add_agent(POOL, &[]);
    bed.pull(b);
    assert_eq!(
        bed.agents[b].peer_bytes("in"),
        0.0,
        "bytes came from an agent that no longer holds the image"
    );
    assert_eq!(
        bed.agents[b].metric(common::agent::PIECE_FAILURES),
        0.0,
        "the new node was sent to a peer without the pieces"
    );
}

/// The memory cache folder the agent's last "agent ready" line names.
fn memory_dir(log: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("agent ready"))
        .unwrap();
    let plain: String = strip_ansi(line);
    let at = plain.find("cache=").unwrap() + "cache=".len();
    let path = plain[at..].split_whitespace().next().unwrap();
    std::path::PathBuf::from(path)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
