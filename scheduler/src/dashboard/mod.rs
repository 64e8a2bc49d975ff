//! The dashboard: one page at `/` (HTML, JS and CSS embedded in the binary, nothing to build)
//! that polls `GET /api/status` every two seconds. Read-only, and off unless `dashboard: true`
//! (`--dashboard`): it shows node names, addresses and the images being preheated, so it is
//! only for networks where whoever reaches the scheduler's port may see them.
//!
//! Everything comes from what the scheduler already knows: live peers and their last
//! heartbeat (cache use is the bytes of the complete blobs a node lists), the blobs being
//! spread with each node's pieces, the bytes agents report taking from peers and from the
//! mirror, and preheat jobs. Bytes from origin are the one thing it asks for: the mirrors
//! agents name are read every few seconds while the page is on ([`origin`]), and the JSON
//! shows the last reading.

pub(crate) mod origin;

use crate::preheat::JobView;
use crate::registry::status::{PeerView, TransferView};
use crate::server::{clock, AppState};
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The page and its JSON, when on; otherwise nothing is routed (the scheduler answers 404).
pub(crate) fn routes(cfg: &mut web::ServiceConfig, on: bool) {
    if !on {
        return;
    }
    cfg.route(
        "/",
        web::get().to(|| file(INDEX, "text/html; charset=utf-8")),
    )
    .route(
        "/dashboard.js",
        web::get().to(|| file(SCRIPT, "text/javascript; charset=utf-8")),
    )
    .route(
        "/dashboard.css",
        web::get().to(|| file(STYLE, "text/css; charset=utf-8")),
    )
    .route("/api/status", web::get().to(status));
}

async fn file(body: &'static str, kind: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, kind))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolStatus {
    id: String,
    name: String,
    p2p: bool,
    connected_pools: Vec<String>,
    nodes: usize,
    up: usize,
    /// The mirrors its nodes fetch from (one, normally).
    mirrors: Vec<String>,
    /// What those mirrors fetched from origin; `None`: unknown (no node named a mirror, or one
    /// of them could not be read).
    origin_bytes: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    id: String,
    pool: String,
    addr: String,
    registry: Option<String>,
    up: bool,
    seen_ago_ms: u64,
    /// Bytes of the complete blobs its last heartbeat listed; `None`: never heard one.
    cache_bytes: Option<u64>,
    blobs: usize,
    bytes_from_peers: u64,
    bytes_from_mirror: u64,
    /// The pool mirror it fetches from; `None` from agents that predate saying so.
    mirror: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bytes {
    peers: u64,
    mirror: u64,
    /// Blob bytes the mirrors fetched from upstream registries, summed over the mirrors read
    /// (each once, however many pools share it); `None` when none could be.
    origin: Option<u64>,
    /// Mirrors named by nodes whose upstream bytes are unknown (not in `origin`).
    origin_unknown: usize,
    /// Share of the nodes' blob bytes that came from peers; `None` before any byte moved.
    offload_ratio: Option<f64>,
}

/// A mirror some node fetches from, as last read.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MirrorStatus {
    url: String,
    pools: Vec<String>,
    /// Its `poolcast_mirror_upstream_bytes_total`; `None`: unknown, `error` says why.
    upstream_bytes: Option<u64>,
    error: Option<String>,
    read_ago_ms: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    generated_unix_ms: u64,
    pools: Vec<PoolStatus>,
    nodes: Vec<NodeStatus>,
    transfers: Vec<TransferView>,
    bytes: Bytes,
    mirrors: Vec<MirrorStatus>,
    jobs: Vec<JobView>,
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let now = clock();
    let (peers, transfers) = {
        let registry = state.registry.lock();
        (registry.peer_views(now), registry.transfer_views())
    };
    let nodes = nodes(&state, peers, now);
    let mut pools: BTreeMap<String, PoolStatus> = state
        .pools
        .iter()
        .map(|p| {
            let status = PoolStatus {
                id: p.id.clone(),
                name: if p.name.is_empty() {
                    p.id.clone()
                } else {
                    p.name.clone()
                },
                p2p: p.inter_connectivity,
                connected_pools: p.connected_pools.clone(),
                nodes: 0,
                up: 0,
                mirrors: Vec::new(),
                origin_bytes: None,
            };
            (p.id.clone(), status)
        })
        .collect();
    for n in &nodes {
        let pool = pools.entry(n.pool.clone()).or_insert_with(|| PoolStatus {
            id: n.pool.clone(),
            name: n.pool.clone(),
            p2p: true,
            connected_pools: Vec::new(),
            nodes: 0,
            up: 0,
            mirrors: Vec::new(),
            origin_bytes: None,
        });
        pool.nodes += 1;
        pool.up += usize::from(n.up);
    }
    let mirrors = mirrors(&state, &nodes, now);
    for m in &mirrors {
        for p in &m.pools {
            if let Some(pool) = pools.get_mut(p) {
                pool.mirrors.push(m.url.clone());
            }
        }
    }
    let read: BTreeMap<&str, Option<u64>> = mirrors
        .iter()
        .map(|m| (m.url.as_str(), m.upstream_bytes))
        .collect();
    for pool in pools.values_mut() {
        pool.origin_bytes = pool
            .mirrors
            .iter()
            .map(|m| read.get(m.as_str()).copied().flatten())
            .try_fold(0u64, |sum, b| b.map(|b| sum.saturating_add(b)))
            .filter(|_| !pool.mirrors.is_empty());
    }
    let known: Vec<u64> = mirrors.iter().filter_map(|m| m.upstream_bytes).collect();
    let origin = (!known.is_empty()).then(|| known.iter().fold(0u64, |a, b| a.saturating_add(*b)));
    let peers_bytes: u64 = nodes.iter().map(|n| n.bytes_from_peers).sum();
    let mirror_bytes: u64 = nodes.iter().map(|n| n.bytes_from_mirror).sum();
    let moved = peers_bytes + mirror_bytes;
    let body = Status {
        generated_unix_ms: nodepool::signed::unix_millis_now(),
        pools: pools.into_values().collect(),
        nodes,
        transfers,
        bytes: Bytes {
            peers: peers_bytes,
            mirror: mirror_bytes,
            origin,
            origin_unknown: mirrors
                .iter()
                .filter(|m| m.upstream_bytes.is_none())
                .count(),
            offload_ratio: (moved > 0).then(|| peers_bytes as f64 / moved as f64),
        },
        mirrors,
        jobs: state.jobs.lock().views(),
    };
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(body)
}

/// Live peers, then nodes heard from before that the registry has dropped (down).
fn nodes(state: &AppState, peers: Vec<PeerView>, now: std::time::Instant) -> Vec<NodeStatus> {
    let mut book = state.nodes.lock();
    book.forget_silent(now);
    let mut out: Vec<NodeStatus> = peers
        .into_iter()
        .map(|p| {
            let rec = book.get(&p.id);
            NodeStatus {
                registry: rec.and_then(|r| r.registry.clone()),
                up: true,
                seen_ago_ms: p.seen_ago_ms,
                cache_bytes: rec.map(|r| r.cache_bytes),
                blobs: rec.map_or(0, |r| r.blobs),
                bytes_from_peers: rec.map_or(0, |r| r.bytes_from_peers),
                bytes_from_mirror: rec.map_or(0, |r| r.bytes_from_mirror),
                mirror: rec.and_then(|r| r.mirror.clone()),
                id: p.id,
                pool: p.pool,
                addr: p.addr,
            }
        })
        .collect();
    let live: std::collections::HashSet<String> = out.iter().map(|n| n.id.clone()).collect();
    for (id, r) in book.iter().filter(|(id, _)| !live.contains(*id)) {
        out.push(NodeStatus {
            id: id.clone(),
            pool: r.pool.clone(),
            addr: r.addr.clone(),
            registry: r.registry.clone(),
            up: false,
            seen_ago_ms: now.saturating_duration_since(r.last_seen).as_millis() as u64,
            cache_bytes: Some(r.cache_bytes),
            blobs: r.blobs,
            bytes_from_peers: r.bytes_from_peers,
            bytes_from_mirror: r.bytes_from_mirror,
            mirror: r.mirror.clone(),
        });
    }
    out.sort_by(|a, b| (&a.pool, &a.id).cmp(&(&b.pool, &b.id)));
    out
}

/// Every mirror a listed node names, with its pools and last reading; one not read (named
/// since the last round, or past [`origin::MAX_MIRRORS`]) is unknown.
fn mirrors(state: &AppState, nodes: &[NodeStatus], now: std::time::Instant) -> Vec<MirrorStatus> {
    let mut pools: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in nodes {
        if let Some(m) = &n.mirror {
            pools.entry(m).or_default().insert(&n.pool);
        }
    }
    let readings = state.mirror_readings.lock();
    pools
        .into_iter()
        .map(|(url, pools)| {
            let reading = readings.get(url);
            let (upstream_bytes, error) = match reading.map(|r| &r.bytes) {
                Some(Ok(b)) => (Some(*b), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, Some("not read yet".to_string())),
            };
            MirrorStatus {
                url: url.to_string(),
                pools: pools.into_iter().map(String::from).collect(),
                upstream_bytes,
                error,
                read_ago_ms: reading
                    .map(|r| now.saturating_duration_since(r.at).as_millis() as u64),
            }
        })
        .collect()
}
