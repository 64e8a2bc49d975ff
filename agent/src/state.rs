//! What every handler and download shares, and the server's lifecycle: two listeners (the
//! registry API for containerd, the peer port), a heartbeat to the scheduler, and cache GC.

use crate::download::Download;
use crate::metrics::Metrics;
use crate::p2p::{self, Swarm};
use crate::registry;
use actix_web::{web, HttpResponse};
use nodepool::{AgentConfig, CacheMode, DownloadPattern};
use parking_lot::{Mutex, RwLock};
use scheduler::api::{HeartbeatRequest, HeldTask, LeaveRequest};
use scheduler::client::SchedulerClient;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::body::RateLimit;
use storage::ingest::Ingests;
use storage::BlobStore;

/// How often the agent tells the scheduler it is alive and what it holds, until the scheduler
/// says otherwise, and at most: the scheduler asks for `peerTTL / 3`, which is honoured when
/// shorter, so a short `peerTTL` does not drop idle peers, but never stretched past this, so a
/// restarted scheduler relearns the holders within seconds.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest heartbeat interval honoured, whatever the scheduler asks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(200);

/// The wait before the next heartbeat when the scheduler asked for `interval_ms`.
pub(crate) fn heartbeat_interval(interval_ms: u64) -> Duration {
    Duration::from_millis(interval_ms).clamp(MIN_HEARTBEAT, HEARTBEAT)
}

pub struct Limits {
    pub total: RateLimit,
    pub down: RateLimit,
    pub up: RateLimit,
}

pub struct AgentState {
    pub cfg: AgentConfig,
    /// What this node was given: its pool's key and its connections' (or the release secret).
    /// Its pool key signs requests to the scheduler.
    pub keys: nodepool::PoolKeys,
    pub node: String,
    pub advertise: String,
    pub mirror: url::Url,
    pub http: reqwest::Client,
    pub store: Arc<BlobStore>,
    pub ingests: Arc<Ingests>,
    /// Downloads under way, by digest hex.
    pub downloads: Mutex<HashMap<String, Arc<Download>>>,
    /// The P2P runtime.
    pub swarm: Swarm,
    pub scheduler: Option<SchedulerClient>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Sizes of blobs the mirror confirmed (digest hex -> bytes); grants live in the store.
    pub sizes: Mutex<HashMap<String, u64>>,
    /// Pools whose peers may fetch from us: our own, plus what the scheduler says.
    pub reachable: RwLock<Vec<String>>,
    /// What every blob body to containerd draws from before it reads a chunk.
    pub budget: storage::body::SendBudget,
    /// The blobs of image manifests relayed lately, to start the next ahead of the client.
    pub ahead: Mutex<storage::ahead::Ahead<crate::registry::AheadCtx>>,
    /// The mirror's key that signs piece digests, as its last signed answer named it: what
    /// peers' proofs are checked with.
    pub piece_key: RwLock<Option<ed25519_dalek::VerifyingKey>>,
}

impl AgentState {
    /// This node as it names itself to the scheduler.
    pub fn peer_ref(&self) -> scheduler::api_v2::PeerRef {
        scheduler::api_v2::PeerRef {
            id: self.node.clone(),
            pool: self.cfg.pool.clone(),
            addr: self.advertise.clone(),
        }
    }

    pub fn p2p(&self) -> bool {
        self.cfg.download_pattern == DownloadPattern::P2p && self.scheduler.is_some()
    }

    /// `<mirror>/<path>?ns=<ns>&<extra...>`: containerd's `?ns=` goes along to the mirror.
    pub fn mirror_url(&self, path: &str, ns: Option<&str>, extra: &[(&str, String)]) -> url::Url {
        let mut url = self.mirror.clone();
        url.set_path(path);
        url.set_query(None);
        if ns.is_some() || !extra.is_empty() {
            let mut q = url.query_pairs_mut();
            if let Some(ns) = ns {
                q.append_pair("ns", ns);
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        url
    }

    pub fn set_reachable(&self, pools: Vec<String>) {
        let mut pools = pools;
        if !pools.contains(&self.cfg.pool) {
            pools.push(self.cfg.pool.clone());
        }
        *self.reachable.write() = pools;
    }
}

pub struct AgentServer {
    state: web::Data<AgentState>,
    inputs: tokio::sync::mpsc::UnboundedReceiver<p2p::Input>,
    _scratch: Option<Scratch>,
}

impl AgentServer {
    /// `advertise`: the address peers use, when the config leaves it empty (the bound peer
    /// listener's address).
    pub fn new(cfg: AgentConfig, advertise: String, metrics: Arc<Metrics>) -> crate::Result<Self> {
        let (root, scratch) = cache_root(&cfg)?;
        let capacity = cfg.cache.capacity.0;
        let store = BlobStore::open(&root, cfg.cache_ttl.0, capacity)?;
        // `poolcast agent --node` has already taken `$NODE_NAME`: what is left is the host.
        let node = if !cfg.node.is_empty() {
            cfg.node.clone()
        } else {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into())
        };
        let advertise = if cfg.advertise.is_empty() {
            advertise
        } else {
            cfg.advertise.clone()
        };
        let mirror = url::Url::parse(&cfg.mirror).map_err(|e| crate::Error::MirrorUrl {
            url: cfg.mirror.chars().take(200).collect(),
            message: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout.0)
            .pool_idle_timeout(nodepool::wire::CLIENT_POOL_IDLE)
            .user_agent(concat!("poolcast-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::Error::HttpClient(nodepool::wire::error_chain(&e)))?;
        let scheduler = match cfg.download_pattern {
            DownloadPattern::P2p if !cfg.scheduler.is_empty() => Some(
                SchedulerClient::new(
                    &cfg.scheduler,
                    cfg.pool_keys().own().clone(),
                    cfg.pool.clone(),
                    cfg.connect_timeout.0,
                )
                .map_err(crate::Error::SchedulerClient)?,
            ),
            _ => None,
        };
        let limits = Limits {
            total: RateLimit::new(cfg.ratelimit.0),
            down: RateLimit::new(cfg.download_rate.0),
            up: RateLimit::new(cfg.upload_rate.0),
        };
        let pool = cfg.pool.clone();
        let keys = cfg.pool_keys();
        let cfg_send_buffers = cfg.send_buffers.0;
        let (swarm, inputs) = Swarm::channel();
        let state = AgentState {
            cfg,
            keys,
            node,
            advertise,
            mirror,
            http,
            store: Arc::new(store),
            ingests: Arc::new(Ingests::default()),
            downloads: Mutex::new(HashMap::new()),
            swarm,
            scheduler,
            limits,
            metrics,
            sizes: Mutex::new(HashMap::new()),
            reachable: RwLock::new(vec![pool]),
            budget: storage::body::SendBudget::new(cfg_send_buffers),
            ahead: Mutex::new(storage::ahead::Ahead::for_client()),
            piece_key: RwLock::new(None),
        };
        if state.keys.is_off() {
            tracing::warn!(
                "no secret or poolKey configured: peer traffic is not authenticated, and the \
                 peer port serves every piece this node holds to anyone who can reach it"
            );
        }
        tracing::info!(node = %state.node, pool = %state.cfg.pool, advertise = %state.advertise, cache = %root.display(), "agent ready");
        Ok(AgentServer {
            state: web::Data::new(state),
            inputs,
            _scratch: scratch,
        })
    }

    pub async fn run(
        self,
        api: std::net::TcpListener,
        peers: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let options = || serve::Options {
            shutdown_secs: 5,
            ..serve::Options::default()
        };
        // The registry port is open to anything on the node's network: bounded like the mirror.
        let api_options = serve::Options {
            max_connections: self.state.cfg.max_connections as usize,
            send_timeout: Some(self.state.cfg.send_timeout.0),
            ..options()
        };
        let state = self.state.clone();
        let api_routes = move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .route("/metrics", web::get().to(metrics_text))
                .route("/v2", web::to(registry::api))
                .route("/v2/{tail:.*}", web::to(registry::api));
        };
        let registry_addr = crate::note::registry_addr(&api, &self.state.advertise);
        let api_server = serve::start(api, api_routes, api_options)?;
        p2p::bound_send_buffer(&peers, self.state.cfg.peer_send_buffer.0)?;
        peers.set_nonblocking(true)?;
        let peers = tokio::net::TcpListener::from_std(peers)?;
        let api_handle = api_server.handle();
        let mut background = p2p::start(
            self.state.clone().into_inner(),
            self.inputs,
            self.state.swarm.clone(),
            peers,
        );
        background.push(tokio::spawn(heartbeat_loop(
            self.state.clone(),
            registry_addr,
        )));
        background.push(tokio::spawn(gc_loop(self.state.clone())));
        let result = tokio::select! {
            r = api_server => r,
            _ = shutdown => Ok(()),
        };
        for b in background {
            b.abort();
        }
        api_handle.stop(true).await;
        result
    }
}

/// A cache folder that lives as long as the agent: held only for what its drop removes.
#[allow(dead_code)]
enum Scratch {
    Disk(tempfile::TempDir),
    Memory(MemoryDir),
}

#[cfg(test)]
impl AgentServer {
    /// The state the server's handlers share.
    pub(crate) fn state(&self) -> web::Data<AgentState> {
        self.state.clone()
    }
}

fn cache_root(cfg: &AgentConfig) -> crate::Result<(std::path::PathBuf, Option<Scratch>)> {
    if cfg.cache.mode == CacheMode::Memory {
        // Memory mode keeps blobs on tmpfs: RAM-backed, gone with the process.
        let shm = std::path::Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = MemoryDir::create(&parent).map_err(|source| crate::Error::CacheDir {
            path: parent.display().to_string(),
            source,
        })?;
        return Ok((dir.dir.path().to_path_buf(), Some(Scratch::Memory(dir))));
    }
    if cfg.cache_host_path.is_empty() {
        let dir = tempfile::Builder::new()
            .prefix("poolcast-agent-")
            .tempdir()
            .map_err(|source| crate::Error::CacheDir {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
        return Ok((dir.path().to_path_buf(), Some(Scratch::Disk(dir))));
    }
    Ok((std::path::PathBuf::from(&cfg.cache_host_path), None))
}

const MEMORY_PREFIX: &str = "poolcast-agent-mem-";

/// A memory-mode cache folder on tmpfs, with a lock file beside it (`<dir>.lock`) that this
/// process holds locked. A killed agent cannot remove its folder, and on tmpfs that is RAM
/// lost until reboot (or for as long as the pod's `/dev/shm` lives): the next agent to start
/// removes every folder whose lock nobody holds.
struct MemoryDir {
    dir: tempfile::TempDir,
    lock_path: std::path::PathBuf,
    _lock: std::fs::File,
}

impl MemoryDir {
    fn create(parent: &std::path::Path) -> std::io::Result<MemoryDir> {
        sweep_dead_memory_dirs(parent);
        let dir = tempfile::Builder::new()
            .prefix(MEMORY_PREFIX)
            .tempdir_in(parent)?;
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Locked under a name the sweep ignores, then renamed: a lock file is never seen
        // unlocked while its agent lives.
        let pending = parent.join(format!(".{name}.lock"));
        let lock = std::fs::File::create(&pending)?;
        lock.try_lock().map_err(std::io::Error::other)?;
        let lock_path = parent.join(format!("{name}.lock"));
        std::fs::rename(&pending, &lock_path)?;
        Ok(MemoryDir {
            dir,
            lock_path,
            _lock: lock,
        })
    }
}

impl Drop for MemoryDir {
    fn drop(&mut self) {
        // The folder goes with `dir`, after this.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Removes memory-mode folders of agents that died without cleaning up.
fn sweep_dead_memory_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(dir) = name
            .strip_suffix(".lock")
            .filter(|d| d.starts_with(MEMORY_PREFIX))
        else {
            continue;
        };
        let Ok(lock) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // its agent is alive
        }
        let dir = parent.join(dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the memory cache of an agent that died")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dead agent's memory cache");
                continue;
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

async fn metrics_text(state: web::Data<AgentState>) -> HttpResponse {
    state.metrics.tasks.set(state.downloads.lock().len() as i64);
    serve::metrics(state.metrics.render())
}

/// Keeps this node registered with everything it holds, so a restarted scheduler learns it
/// again and peers can keep fetching complete blobs from us.
async fn heartbeat_loop(state: web::Data<AgentState>, registry_addr: Option<String>) {
    let Some(client) = state.scheduler.as_ref() else {
        return;
    };
    let mut every = HEARTBEAT;
    loop {
        let held = held_tasks(&state.store, &state.cfg);
        let req = HeartbeatRequest {
            peer: state.peer_ref(),
            held,
        };
        let note = crate::note::node_note(&state, registry_addr.as_ref());
        match client.heartbeat_noted(&req, &note).await {
            Ok(resp) => {
                every = heartbeat_interval(resp.interval_ms);
                state.set_reachable(resp.reachable_pools);
            }
            Err(e) => {
                state.metrics.scheduler_errors.inc();
                tracing::debug!(error = %e, "scheduler heartbeat failed");
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// What this node can serve peers: every blob it holds whole. Manifests are never shared, and
/// a 0-byte blob has no pieces to share (the scheduler would refuse the whole heartbeat).
fn held_tasks(store: &BlobStore, cfg: &AgentConfig) -> Vec<HeldTask> {
    store
        .list()
        .into_iter()
        .filter(|(_, e)| e.media_type.is_none() && e.size > 0)
        .filter_map(|(d, e)| {
            let layout = cfg.layout_for(e.size).ok()?;
            Some(HeldTask {
                digest: d.to_string(),
                size: e.size,
                piece_size: layout.piece_size(),
            })
        })
        .collect()
}

async fn gc_loop(state: web::Data<AgentState>) {
    let every = (state.cfg.cache_ttl.0 / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = state.store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let before = held_blobs(&store);
            let report = store.gc(SystemTime::now());
            let after = held_blobs(&store);
            (
                report,
                before.difference(&after).cloned().collect::<Vec<_>>(),
            )
        })
        .await;
        let gone = match swept {
            Ok((Ok(r), gone)) => {
                if r.expired + r.evicted > 0 {
                    tracing::info!(?r, "agent cache gc");
                }
                gone
            }
            Ok((Err(e), gone)) => {
                tracing::warn!(error = %e, "agent cache gc failed");
                gone
            }
            Err(_) => Vec::new(),
        };
        leave_evicted(&state, gone).await;
    }
}

/// Digests of the blobs the cache holds whole (manifests are kept apart and never shared).
fn held_blobs(store: &BlobStore) -> HashSet<String> {
    store
        .list()
        .into_iter()
        .filter(|(_, e)| e.media_type.is_none())
        .map(|(d, _)| d.to_string())
        .collect()
}

/// Tells the scheduler at once that blobs the GC removed are no longer ours to serve, so peers
/// stop being sent here for them (the next heartbeat would say so too, by leaving them out).
async fn leave_evicted(state: &AgentState, gone: Vec<String>) {
    let Some(client) = state.scheduler.as_ref().filter(|_| state.p2p()) else {
        return;
    };
    for digest in gone {
        let req = LeaveRequest {
            peer_id: state.node.clone(),
            pool: state.cfg.pool.clone(),
            digest: Some(digest),
        };
        if let Err(e) = client.leave(&req).await {
            state.metrics.scheduler_errors.inc();
            tracing::debug!(error = %e, "telling the scheduler of an evicted blob failed");
            // The next heartbeat leaves the rest out anyway.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_follows_the_scheduler_within_bounds() {
        // peerTTL 3s: the scheduler asks for 1s, and gets it, so the peer stays alive.
        assert_eq!(heartbeat_interval(1_000), Duration::from_secs(1));
        // The default peerTTL (30s) asks for 10s: capped, holders stay fresh.
        assert_eq!(heartbeat_interval(10_000), HEARTBEAT);
        // Nonsense is bounded both ways.
        assert_eq!(heartbeat_interval(0), MIN_HEARTBEAT);
        assert_eq!(heartbeat_interval(u64::MAX), HEARTBEAT);
    }

    #[test]
    fn heartbeats_list_whole_blobs_with_pieces_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), Duration::from_secs(3600), 0).expect("store");
        let now = SystemTime::now();
        let layer = storage::Digest::of(b"layer");
        store.put_small(&layer, b"layer", None, now).expect("put");
        let empty = storage::Digest::of(b"");
        store.put_small(&empty, b"", None, now).expect("put");
        let manifest = storage::Digest::of(b"{}");
        store
            .put_small(&manifest, b"{}", Some("application/json".into()), now)
            .expect("put");
        let held = held_tasks(&store, &AgentConfig::default());
        let digests: Vec<&str> = held.iter().map(|h| h.digest.as_str()).collect();
        assert_eq!(digests, [layer.to_string()]);
    }
}
