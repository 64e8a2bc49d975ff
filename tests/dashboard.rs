//! The scheduler's dashboard in a real browser: headless Chromium loads `/` from a scheduler
//! with real state (agents that pulled an image, a node that went down, a download under way,
//! a preheat job, the bytes the real mirror fetched from origin) and the test reads the DOM
//! after the page's scripts ran. It also keeps the
//! screenshots `docs/` shows (set `POOLCAST_DASHBOARD_SCREENSHOTS=DIR` to write them there).

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::mirror::UPSTREAM_BYTES;
use common::p2p::{BedSpec, P2pBed};
use common::preheat::{auth_file, full_ref, preheat, text, wait_for_nodes};
use common::scheduler::{Scheduler, PEERS};
use common::{assert_eventually, client, free_port, require_tool, READY_TIMEOUT};
use scheduler::api::{HeartbeatRequest, TaskInfo};
use scheduler::api_v2::{JoinRequest, PeerRef};
use scheduler::nodes::NodeNote;
use std::path::Path;
use std::process::Command;

const SECRET: &str = "dashboard-test-secret";
const POOLS: &str = "- id: pool-a\n  name: shop-1\n  connectedPools: [pool-b]\n- id: pool-b\n";
const DOWNLOADING: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000d1";

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`); returns
/// stdout. Virtual time lets the page's fetches finish before the DOM is read.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=8000")
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tag ... {attr}="{value}" ...>...</tag>` element's text, roughly: from the attribute
/// to the element's end tag.
fn element<'a>(dom: &'a str, attr: &str, value: &str, end: &str) -> &'a str {
    let needle = format!("{attr}=\"{value}\"");
    let start = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no element with {needle} in the DOM:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find(end).map_or(rest.len(), |i| i + end.len())]
}

/// The text inside the element `element` found (after its last `>`).
fn inner<'a>(element: &'a str, end: &str) -> &'a str {
    let body = element.strip_suffix(end).unwrap_or(element);
    body.rsplit_once('>').map_or(body, |(_, text)| text)
}

/// The text of the pool row's "from origin" cell.
fn origin_cell<'a>(dom: &'a str, pool: &str) -> &'a str {
    let row = element(dom, "data-pool", pool, "</tr>");
    let start = row
        .find("class=\"origin")
        .unwrap_or_else(|| panic!("no origin cell: {row}"));
    inner(&row[start..row[start..].find("</td>").unwrap() + start], "")
}

/// Whether the page's `12.3 MiB` stands for `n` bytes (to its one decimal).
fn shows_bytes(text: &str, n: u64) -> bool {
    let Some((num, unit)) = text.split_once(' ') else {
        return false;
    };
    let Some(i) = ["B", "KiB", "MiB", "GiB", "TiB"]
        .iter()
        .position(|u| *u == unit)
    else {
        return false;
    };
    let scale = 1024f64.powi(i as i32);
    num.parse::<f64>()
        .is_ok_and(|v| (v * scale - n as f64).abs() <= 0.05 * scale)
}

fn status(url: &str) -> serde_json::Value {
    client().get(url).send().unwrap().json().unwrap()
}

/// A node of `pool` that joined a 9-piece blob and holds 3 pieces: a download under way, as
/// the scheduler records it from a v2 join. It joins again every 500 ms (as a downloading
/// agent does, well within the test's 3 s peerTTL) until the returned guard is dropped.
fn keep_downloading(scheduler_url: &str, pool: &str) -> Downloading {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, pool, flag) = (scheduler_url.to_owned(), pool.to_owned(), stop.clone());
    join_downloading(&url, &pool);
    let handle = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            join_downloading(&url, &pool);
        }
    });
    Downloading {
        stop,
        handle: Some(handle),
    }
}

struct Downloading {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Downloading {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn join_downloading(scheduler_url: &str, pool: &str) {
    let key = nodepool::keys::pool_key(&nodepool::PoolSecret::new(SECRET.as_bytes()), pool);
    let client = scheduler::SchedulerClient::new(
        scheduler_url,
        key,
        pool.to_owned(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let join = JoinRequest {
        peer: PeerRef {
            id: "node-x".into(),
            pool: pool.into(),
            addr: "127.0.0.99:65002".into(),
        },
        task: TaskInfo {
            digest: DOWNLOADING.into(),
            size: 9 << 20,
            piece_size: 1 << 20,
        },
        held: 3,
        done: false,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.join(&join)).unwrap();
}

#[test]
fn dashboard_shows_pools_nodes_transfers_bytes_and_preheat_jobs_in_a_browser() {
    require_tool("chromium");
    let mut bed = P2pBed::start(BedSpec {
        seed: 71,
        secret: Some(SECRET),
        pools_yaml: Some(POOLS),
        scheduler_args: &["--dashboard", "--peer-ttl", "3s"],
        ..BedSpec::default()
    });
    let a = bed.add_agents(2, "pool-a", &[]);
    let b = bed.add_agent("pool-b", &[]);
    let gone = bed.add_agent("pool-a", &[]);
    wait_for_nodes(&bed, 4);
    bed.pull(a[0]);
    bed.pull(a[1]);
    // A preheat job for pool-b, with credentials the dashboard must never show.
    let auth = auth_file(&bed, "someone", "do-not-show-this-password");
    let out = preheat(&[
        &full_ref(&bed),
        "--mirror",
        bed.fx.mirror.url(),
        "--scheduler",
        bed.scheduler().url(),
        "--secret",
        SECRET,
        "--pool",
        "pool-b",
        "--auth-file",
        auth.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    bed.agents[gone].kill();
    assert_eventually(READY_TIMEOUT, "the scheduler drops the killed node", || {
        bed.scheduler().metric(PEERS) == 3.0
    });
    let _downloading = keep_downloading(bed.scheduler().url(), "pool-a");
    // Bytes by source ride on heartbeats: wait until the pulls' bytes were reported.
    let status_url = format!("{}/api/status", bed.scheduler().url());
    assert_eventually(READY_TIMEOUT, "heartbeats report the pulls' bytes", || {
        let s: serde_json::Value = client().get(&status_url).send().unwrap().json().unwrap();
        s["bytes"]["peers"].as_u64() > Some(0) && s["bytes"]["mirror"].as_u64() > Some(0)
    });
    let json = client().get(&status_url).send().unwrap().text().unwrap();
    assert!(!json.contains("do-not-show-this-password"), "{json}");
    // Bytes from origin: the mirror's own counter, which the scheduler reads (every 5 s) from
    // the mirror the agents name. Both pools' agents use the one mirror: counted once.
    let upstream = bed.fx.mirror.metric(UPSTREAM_BYTES) as u64;
    assert!(upstream > 0, "the pulls fetched the image from origin");
    assert_eventually(
        READY_TIMEOUT,
        "the scheduler reports the mirror's upstream bytes",
        || status(&status_url)["bytes"]["origin"].as_u64() == Some(upstream),
    );
    let s = status(&status_url);
    assert_eq!(s["bytes"]["originUnknown"], 0, "{s}");
    assert_eq!(
        s["mirrors"],
        serde_json::json!([{
            "url": bed.fx.mirror.url(),
            "pools": ["pool-a", "pool-b"],
            "upstreamBytes": upstream,
            "error": null,
            "readAgoMs": s["mirrors"][0]["readAgoMs"],
        }])
    );
    for pool in ["pool-a", "pool-b"] {
        let p = s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == pool)
            .unwrap();
        assert_eq!(p["originBytes"], upstream, "{pool}: {p}");
    }

    let profile = bed.fx.fresh_dir("chromium");
    let url = format!("{}/", bed.scheduler().url());
    let dom = chromium(&url, &["--dump-dom"], &profile);
    assert!(dom.contains("data-loaded=\"1\""), "the script ran: {dom}");
    assert!(!dom.contains("do-not-show-this-password"));

    let pool_a = element(&dom, "data-pool", "pool-a", "</tr>");
    assert!(
        pool_a.contains("shop-1") && pool_a.contains("pool-b"),
        "{pool_a}"
    );
    let up = element(&dom, "data-node", bed.agents[a[0]].node(), "</tr>");
    assert!(up.contains(">up<"), "{up}");
    assert!(
        up.contains(bed.agents[a[0]].peer_host()),
        "shows the address: {up}"
    );
    assert!(up.contains("MiB (3 blobs)"), "shows cache use: {up}");
    let down = element(&dom, "data-node", bed.agents[gone].node(), "</tr>");
    assert!(down.contains(">down<"), "{down}");
    assert!(
        element(&dom, "data-node", bed.agents[b].node(), "</tr>").contains("pool-b"),
        "lists pool-b's node"
    );

    let transfer = element(&dom, "data-digest", DOWNLOADING, "</div></div>");
    assert!(
        transfer.contains("node-x") && transfer.contains("3 / 9"),
        "per-node progress of the download under way: {transfer}"
    );

    let offload = element(&dom, "id", "offload", "</div>");
    assert!(offload.contains('%'), "offload ratio shown: {offload}");
    let origin = inner(element(&dom, "id", "bytes-origin", "</b>"), "</b>");
    assert!(
        shows_bytes(origin, upstream),
        "origin shown as the mirror's {upstream} bytes: {origin}"
    );
    for pool in ["pool-a", "pool-b"] {
        let cell = origin_cell(&dom, pool);
        assert!(shows_bytes(cell, upstream), "{pool} from origin: {cell}");
    }
    let job = element(&dom, "data-state", "done", "</div>");
    assert!(
        job.contains("pool-b") && job.contains("pool/app:v1"),
        "{job}"
    );

    // The screenshots docs/ keeps: the desktop size the issue names, and a phone.
    let keep = std::env::var_os("POOLCAST_DASHBOARD_SCREENSHOTS");
    for (name, size) in [
        ("dashboard.png", "1280,800"),
        ("dashboard-phone.png", "412,915"),
    ] {
        let dir = keep.as_ref().map_or(profile.clone(), Into::into);
        let path = dir.join(name);
        chromium(
            &url,
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={size}"),
            ],
            &profile,
        );
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
    }
}

#[test]
fn dashboard_is_off_unless_asked_for() {
    let bed = P2pBed::start(BedSpec {
        seed: 72,
        ..BedSpec::default()
    });
    for path in ["/", "/api/status", "/dashboard.js"] {
        let url = format!("{}{path}", bed.scheduler().url());
        let status = client().get(&url).send().unwrap().status().as_u16();
        assert_eq!(status, 404, "{path} without --dashboard");
    }
}

/// A signed heartbeat of `node` in `pool` holding nothing, naming `mirror` (or, as an agent
/// that predates it, no mirror).
fn heartbeat(scheduler_url: &str, pool: &str, node: &str, mirror: Option<&str>) {
    let key = nodepool::keys::pool_key(&nodepool::PoolSecret::new(SECRET.as_bytes()), pool);
    let client = scheduler::SchedulerClient::new(
        scheduler_url,
        key,
        pool.to_owned(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let beat = HeartbeatRequest {
        peer: PeerRef {
            id: node.into(),
            pool: pool.into(),
            addr: "127.0.0.98:65002".into(),
        },
        held: Vec::new(),
    };
    let note = NodeNote {
        mirror: mirror.map(Into::into),
        ..NodeNote::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.heartbeat_noted(&beat, &note)).unwrap();
}

#[test]
fn a_mirror_the_scheduler_cannot_read_is_unknown_and_never_holds_up_the_page() {
    require_tool("chromium");
    let scheduler = Scheduler::with_pools(POOLS, Some(SECRET), &["--dashboard"]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    heartbeat(scheduler.url(), "pool-a", "node-a", Some(&dead));
    heartbeat(scheduler.url(), "pool-b", "node-old", None);
    let status_url = format!("{}/api/status", scheduler.url());
    assert_eventually(READY_TIMEOUT, "the scheduler tried the mirror", || {
        status(&status_url)["mirrors"][0]["readAgoMs"].is_u64()
    });
    let started = std::time::Instant::now();
    let s = status(&status_url);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "answered from the last reading"
    );
    assert_eq!(s["mirrors"][0]["url"], dead.as_str(), "{s}");
    assert_eq!(s["mirrors"][0]["upstreamBytes"], serde_json::Value::Null);
    assert_eq!(s["mirrors"][0]["error"], "could not connect");
    assert_eq!(s["bytes"]["origin"], serde_json::Value::Null);
    assert_eq!(s["bytes"]["originUnknown"], 1);
    let pools = s["pools"].as_array().unwrap();
    assert_eq!(pools[0]["mirrors"], serde_json::json!([dead]));
    assert_eq!(pools[0]["originBytes"], serde_json::Value::Null);
    assert_eq!(pools[1]["mirrors"], serde_json::json!([]), "an old agent");
    assert_eq!(pools[1]["originBytes"], serde_json::Value::Null);

    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &format!("{}/", scheduler.url()),
        &["--dump-dom"],
        profile.path(),
    );
    assert!(dom.contains("data-loaded=\"1\""), "the script ran: {dom}");
    let origin = inner(element(&dom, "id", "bytes-origin", "</b>"), "</b>");
    assert_eq!(origin, "unknown");
    assert_eq!(origin_cell(&dom, "pool-a"), "unknown");
    assert_eq!(origin_cell(&dom, "pool-b"), "–");
}
