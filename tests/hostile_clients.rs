//! Clients that try to exhaust the mirror, on a real mirror in front of the CNCF registry:
//! manifests asked for by a layer's digest, readers that stop reading, more connections than
//! it serves, `/pieces` with every piece size, and `/metrics` read to learn what is cached.
//! Each bound is checked on the process itself (`/proc`), not on a model of it.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::fixture::{Fixture, REPO};
use common::mirror::{CACHE_HITS, CACHE_MISSES, SERVED_BYTES};
use common::proc_stats::{cpu_secs, peak_rss_bytes, MIB};
use common::{assert_eventually, client, raw_request};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A mirror config file with `yaml`, for keys that have no flag.
fn config(fx_dir: &std::path::Path, yaml: &str) -> String {
    let path = fx_dir.join("mirror.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn fixture(layer: usize, seed: u64, yaml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), yaml);
    let fx = Fixture::new(&[layer], seed, &["--config", &file]);
    drop(dir); // read at start
    fx
}

fn blob_url(fx: &Fixture, digest: &str) -> String {
    format!("{}/v2/{REPO}/blobs/{digest}", fx.mirror.url())
}

/// Downloads a blob through the mirror, so it is cached.
fn warm(fx: &Fixture, digest: &str) {
    let body = client()
        .get(blob_url(fx, digest))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(common::sha256_hex(&body), digest[7..]);
}

#[test]
fn a_manifest_asked_for_by_a_layer_digest_reads_nothing_of_the_layer() {
    let fx = fixture(48 << 20, 131, "");
    let layer = fx.image.layers[0].digest.clone();
    warm(&fx, &layer);
    let pid = fx.mirror.pid();
    let before = peak_rss_bytes(pid);
    let url = format!("{}/v2/{REPO}/manifests/{layer}", fx.mirror.url());
    let askers: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || client().get(url).send().map(|r| r.status().as_u16()))
        })
        .collect();
    for asker in askers {
        let status = asker.join().unwrap().unwrap();
        assert_ne!(status, 200, "a layer was served as a manifest");
    }
    let grown = peak_rss_bytes(pid).saturating_sub(before);
    eprintln!(
        "8 manifest requests by a 48 MiB layer's digest: peak RSS +{} MiB",
        grown / MIB
    );
    assert!(
        grown < 24 * MIB,
        "peak RSS grew {} MiB: the layer was read as a manifest",
        grown / MIB
    );
    assert_eq!(fx.mirror.healthz(), 200);
}

/// Opens a connection that asks for `path` and never reads the answer.
fn stalled_reader(host: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    s
}

#[test]
fn readers_that_stop_reading_hold_bounded_memory_and_are_cut_at_the_send_deadline() {
    let fx = fixture(32 << 20, 132, "sendTimeout: 3s\nsendBuffers: 64MiB\n");
    let layer = fx.image.layers[0].clone();
    warm(&fx, &layer.digest);
    let pid = fx.mirror.pid();
    let before = peak_rss_bytes(pid);
    let path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let stalled: Vec<TcpStream> = (0..200)
        .map(|_| stalled_reader(fx.mirror.host(), &path))
        .collect();
    // Until the mirror has sent all it will to clients that do not read.
    let mut last = -1.0;
    assert_eventually(Duration::from_secs(30), "the stalled sends settle", || {
        let now = fx.mirror.metric(SERVED_BYTES);
        let settled = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(300));
        settled
    });
    let grown = peak_rss_bytes(pid).saturating_sub(before);
    eprintln!("200 readers that stopped: peak RSS +{} MiB", grown / MIB);
    // sendBuffers is 64 MiB; without it each stalled client holds about 3 MiB.
    assert!(
        grown < 200 * MIB,
        "peak RSS grew {} MiB for 200 clients that read nothing",
        grown / MIB
    );
    // A reader is still served, at worst after a 503 that says to come back (as containerd
    // does): the deadline frees what the stalled ones hold, and the ones waiting give up.
    let started = Instant::now();
    assert_eventually(
        Duration::from_secs(30),
        "a reader among them is served",
        || {
            let resp = client().get(blob_url(&fx, &layer.digest)).send().unwrap();
            match resp.status().as_u16() {
                200 => common::sha256_hex(&resp.bytes().unwrap()) == layer.digest[7..],
                503 => {
                    assert_eq!(resp.headers()["retry-after"], "1");
                    false
                }
                other => panic!("a reader got {other}"),
            }
        },
    );
    eprintln!("a reader among them was served in {:?}", started.elapsed());
    // Past the deadline, a stalled client's connection is gone: reading now does not bring
    // the rest of the blob.
    std::thread::sleep(Duration::from_secs(4));
    let mut one = stalled.into_iter().next().unwrap();
    one.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = one.read_to_end(&mut got);
    assert!(
        (got.len() as u64) < layer.size,
        "a client that stopped reading for past sendTimeout still got the whole blob"
    );
    assert_eq!(fx.mirror.healthz(), 200);
}

#[test]
fn an_agents_readers_that_stop_reading_hold_its_send_buffers_and_no_more() {
    use common::agent::{Agent, AgentOpts};
    let fx = fixture(32 << 20, 136, "");
    let layer = fx.image.layers[0].clone();
    let config = fx.work.path().join("agent.yaml");
    std::fs::write(&config, "sendBuffers: 16MiB\nsendTimeout: 3s\n").unwrap();
    let agent = Agent::start(AgentOpts {
        ip: "127.0.0.2".into(),
        mirror_url: fx.mirror.url().into(),
        scheduler_url: None,
        node: "node-1".into(),
        pool: "pool-a".into(),
        secret: None,
        cache_dir: fx.fresh_dir("agent-cache"),
        extra_args: vec!["--config".into(), config.display().to_string()],
    });
    let path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let url = format!("{}{path}", agent.url());
    let body = client().get(&url).send().unwrap().bytes().unwrap();
    assert_eq!(common::sha256_hex(&body), layer.digest[7..]);
    let pid = agent.pid();
    let before = peak_rss_bytes(pid);
    let _stalled: Vec<TcpStream> = (0..200)
        .map(|_| stalled_reader(agent.host(), &path))
        .collect();
    let mut last = -1.0;
    assert_eventually(Duration::from_secs(30), "the stalled sends settle", || {
        let now = agent.metric(common::agent::SERVED_BYTES);
        let settled = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(300));
        settled
    });
    let grown = peak_rss_bytes(pid).saturating_sub(before);
    eprintln!(
        "200 readers that stopped at an agent: peak RSS +{} MiB",
        grown / MIB
    );
    assert!(
        grown < 100 * MIB,
        "the agent's peak RSS grew {} MiB for 200 clients that read nothing",
        grown / MIB
    );
    assert_eventually(
        Duration::from_secs(30),
        "a reader at the agent is served",
        || {
            client().get(&url).send().is_ok_and(|r| {
                r.status().as_u16() == 200
                    && r.bytes()
                        .is_ok_and(|b| common::sha256_hex(&b) == layer.digest[7..])
            })
        },
    );
}

#[test]
fn connections_past_max_connections_get_a_503_that_says_why() {
    let fx = fixture(64 << 10, 133, "maxConnections: 8\n");
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(fx.mirror.host()).unwrap();
            write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 128];
            let _ = s.read(&mut buf).unwrap();
            s
        })
        .collect();
    let over = raw_request(fx.mirror.host(), "GET", "/v2/", &[]).unwrap();
    assert_eq!(over.status, 503);
    assert_eq!(over.error_codes(), vec!["TOOMANYREQUESTS".to_string()]);
    assert_eq!(over.header("retry-after"), Some("1"));
    drop(held);
    assert_eventually(
        Duration::from_secs(10),
        "served again once below the cap",
        || raw_request(fx.mirror.host(), "GET", "/v2/", &[]).is_ok_and(|r| r.status == 200),
    );
}

#[test]
fn pieces_are_listed_for_eleven_piece_sizes_only_and_each_is_hashed_once() {
    let fx = fixture(8 << 20, 134, "");
    let layer = fx.image.layers[0].digest.clone();
    warm(&fx, &layer);
    let pieces = |size: u64| {
        let url = format!(
            "{}/v2/{REPO}/pieces/{layer}?pieceSize={size}",
            fx.mirror.url()
        );
        client().get(url).send().unwrap().status().as_u16()
    };
    // 64 distinct sizes, as a client cycling through them would ask.
    let sizes: Vec<u64> = (1..=64).map(|k| k * 64 * 1024).collect();
    let accepted: Vec<u64> = sizes
        .iter()
        .copied()
        .filter(|&s| pieces(s) == 200)
        .collect();
    assert_eq!(
        accepted,
        [1, 2, 4, 8, 16, 32, 64].map(|k| k * 64 * 1024),
        "only powers of two are piece sizes"
    );
    let pid = fx.mirror.pid();
    let cpu = cpu_secs(pid);
    for _ in 0..3 {
        for &size in &accepted {
            assert_eq!(pieces(size), 200);
        }
    }
    let again = cpu_secs(pid) - cpu;
    eprintln!("21 more /pieces answers from what was hashed: {again:.2} CPU s");
    assert!(
        again < 1.0,
        "answering again cost {again:.2} CPU seconds: hashed again"
    );
}

#[test]
fn metrics_do_not_tell_a_refused_client_what_is_cached() {
    let fx = Fixture::with_auth("alice", "s3cret", &[256 << 10], 135);
    let cached = fx.image.layers[0].digest.clone();
    // alice pulls: the layer is cached.
    let body = client()
        .get(blob_url(&fx, &cached))
        .header("Authorization", common::basic_auth("alice", "s3cret"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(common::sha256_hex(&body), cached[7..]);
    let uncached = format!("sha256:{}", common::sha256_hex(b"not pulled by anyone"));
    let counters = || (fx.mirror.metric(CACHE_HITS), fx.mirror.metric(CACHE_MISSES));
    for digest in [&cached, &uncached] {
        let before = counters();
        let resp = client().get(blob_url(&fx, digest)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{digest}");
        assert_eq!(
            counters(),
            before,
            "a refused request for {digest} moved the counters"
        );
    }
}
