//! One blob download on this node: pieces from peers (as the scheduler directs) and from the
//! mirror (pieces nobody holds, or whenever P2P cannot help), each verified against the piece
//! digests the mirror publishes, streamed to containerd in order, and verified whole.
//!
//! ```text
//!   layout loop ──piece digests──┐        announce loop <──> scheduler
//!   (mirror /pieces, long-poll)  v          │ parents, source pieces
//!                         TaskState <───────┘
//!   workers ×N: assigned piece, else rarest among parents ─> peer (GET /pieces),
//!               else mirror (Range) ─> verify ─> write
//!   sequencer: contiguous prefix ─> sha256 of the whole ─> Ingest progress (containerd streams)
//!              ─> verified ─> BlobStore::commit
//! ```

use crate::state::AgentState;
use actix_web::web;
use bytes::BytesMut;
use futures_util::StreamExt;
use nodepool::PieceLayout;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use scheduler::api::{AnnounceRequest, TaskInfo};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use storage::ingest::{Ingest, IngestWriter, Joined, Progress};
use storage::pieces::PieceList;
use storage::reference::Digest;
use tokio::sync::watch;

/// Workers per download; the global `proxyFsParallels` semaphore bounds the total.
const WORKERS: usize = 8;
/// Mirror failures in a row tolerated for one download before containerd is told.
const SOURCE_RETRIES: u32 = 6;
/// Mirror range requests one download keeps open at once. The mirror's link is shared by the
/// pool: more parallel ranges per node only slice it thinner and delay every piece.
const SOURCE_PARALLEL: u32 = 4;
/// Least time between two announces of one download; pieces done in between go together.
const ANNOUNCE_GAP: Duration = Duration::from_millis(50);
/// Longest wait between announces while a worker is idle for want of a holder.
const IDLE_ANNOUNCE: Duration = Duration::from_millis(200);
/// Missing pieces, from the lowest, among which the rarest is taken.
const PICK_WINDOW: usize = 128;
/// Pieces one download fetches from one parent at once: parents' uplinks are shared by every
/// node that wants them, so each node asks several parents rather than one for more.
const PER_PARENT: u32 = 1;
/// Peer pieces one download keeps in flight while it fetches from the mirror. A node's downlink
/// is shared fairly by its TCP flows: beside seven peer flows a mirror range gets an eighth of
/// it, and the mirror's link, which every byte of the blob must cross once, idles. Measured on
/// the fan-out bed (16 nodes, 128 MiB): the mirror ran at half its rate and so did the pool.
const PEER_WHILE_SOURCING: u32 = 1;
/// How long a parent that answered "busy" is left alone.
const BUSY_BACKOFF: Duration = Duration::from_millis(150);
/// How long a parent whose request got no answer is left alone, doubled for each further one
/// in a row; after [`NO_ANSWER_LIMIT`] in a row it is dropped. On a congested link a SYN waits
/// in, or falls off, a full queue: on the fan-out bed with 32 nodes one connect in several
/// timed out to healthy parents, and dropping a parent at the first or second made the
/// scheduler send its pieces to the mirror again (held only by parents the node had dropped).
const NO_ANSWER_BACKOFF: Duration = Duration::from_secs(1);
const NO_ANSWER_LIMIT: u32 = 4;
const WRITE_CHUNK: usize = 128 * 1024;

/// What a download needs to know about the blob and its requester.
#[derive(Clone)]
pub struct TaskSpec {
    pub digest: Digest,
    pub size: u64,
    pub ns: Option<String>,
    pub repo: String,
    /// containerd's credentials: the mirror checks them on every request we make for it.
    pub auth: Option<actix_web::http::header::HeaderValue>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Piece {
    Missing,
    InFlight,
    Done,
}

struct Parent {
    addr: String,
    have: HashSet<u32>,
    inflight: u32,
    /// It answered "busy" (all upload slots taken): not asked again before this.
    busy_until: Option<Instant>,
}

impl Parent {
    fn available(&self, now: Instant) -> bool {
        self.inflight < PER_PARENT && self.busy_until.is_none_or(|t| t <= now)
    }
}

struct TaskState {
    pieces: Vec<Piece>,
    digests: Vec<Option<[u8; 32]>>,
    parents: HashMap<String, Parent>,
    blocked: HashSet<String>,
    /// Requests in a row that got no answer, per parent (see [`NO_ANSWER_BACKOFF`]).
    unanswered: HashMap<String, u32>,
    to_report: Vec<String>,
    assigned: HashSet<u32>,
    scheduler_ok: bool,
    go_source: bool,
    failed: Option<String>,
    finished: bool,
    last_progress: Instant,
    source_failures: u32,
    /// Mirror range requests in flight.
    source_inflight: u32,
    /// A worker found nothing to do: announce more often to hear of new holders sooner.
    waiting: bool,
}

enum Job {
    Peer {
        index: u32,
        id: String,
        addr: String,
    },
    Source {
        index: u32,
    },
    Wait,
    Finished,
}

pub struct Task {
    pub spec: TaskSpec,
    /// How the blob is cut: a 0-byte blob has no pieces and completes at once.
    pub layout: PieceLayout,
    pub ingest: Arc<Ingest>,
    file: Arc<File>,
    st: Mutex<TaskState>,
    generation: watch::Sender<u64>,
    /// Wakes the announce loop early: a piece is done (peers may want it) or a worker is idle
    /// (it wants to hear of new holders).
    announce_now: tokio::sync::Notify,
}

impl Task {
    /// Starts (or joins) the download of a blob. The caller streams from `task.ingest`.
    pub fn get_or_start(state: &web::Data<AgentState>, spec: TaskSpec) -> crate::Result<Arc<Task>> {
        let mut tasks = state.tasks.lock();
        if let Some(task) = tasks.get(spec.digest.hex()) {
            return Ok(task.clone());
        }
        let store = state.store.clone();
        let (ingest, writer) = match state
            .ingests
            .join_or_start(&spec.digest, || store.temp_file())?
        {
            Joined::Started(ingest, writer) => (ingest, writer),
            Joined::Existing(_) => {
                return Err(crate::Error::Download {
                    digest: spec.digest.to_string(),
                    message: "download registry out of step".into(),
                })
            }
        };
        let layout = PieceLayout::new(spec.size, state.cfg.blocksize.0).map_err(|e| {
            crate::Error::Layout {
                digest: spec.digest.to_string(),
                message: e.to_string(),
            }
        })?;
        let count = layout.count();
        writer.set(Progress::Running {
            written: 0,
            size: Some(spec.size),
        });
        let task = Arc::new(Task {
            layout,
            ingest,
            file: writer.file.clone(),
            st: Mutex::new(TaskState {
                pieces: vec![Piece::Missing; count as usize],
                digests: vec![None; count as usize],
                parents: HashMap::new(),
                blocked: HashSet::new(),
                unanswered: HashMap::new(),
                to_report: Vec::new(),
                assigned: HashSet::new(),
                scheduler_ok: true,
                go_source: !state.p2p(),
                failed: None,
                finished: false,
                last_progress: Instant::now(),
                source_failures: 0,
                source_inflight: 0,
                waiting: false,
            }),
            announce_now: tokio::sync::Notify::new(),
            generation: watch::channel(0).0,
            spec,
        });
        tasks.insert(task.spec.digest.hex().to_string(), task.clone());
        state.metrics.tasks.set(tasks.len() as i64);
        drop(tasks);
        tokio::spawn(layout_loop(state.clone(), task.clone()));
        // A blob without pieces has nothing to announce (the scheduler refuses it).
        if state.p2p() && count > 0 {
            tokio::spawn(announce_loop(state.clone(), task.clone()));
        }
        for _ in 0..WORKERS.min(count as usize) {
            tokio::spawn(worker(state.clone(), task.clone()));
        }
        tokio::spawn(sequencer(state.clone(), task.clone(), writer));
        Ok(task)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The bytes of a piece (end exclusive); empty past the last piece.
    fn piece_span(&self, index: u32) -> (u64, u64) {
        let size = self.layout.size();
        self.layout
            .span(index)
            .map_or((size, size), |span| (span.start, span.end))
    }

    /// Whether a piece is here and verified (peers may have it).
    pub fn has_piece(&self, index: u32) -> bool {
        self.st.lock().pieces.get(index as usize) == Some(&Piece::Done)
    }

    pub fn piece_range(&self, index: u32) -> Option<(u64, u64)> {
        (index < self.layout.count()).then(|| self.piece_span(index))
    }

    fn fail(&self, message: String) {
        let mut st = self.st.lock();
        if st.failed.is_none() {
            tracing::warn!(digest = %self.spec.digest, %message, "download failed");
            st.failed = Some(message);
        }
        drop(st);
        self.bump();
    }

    /// The next piece for a worker. First the pieces the scheduler sent this node to the
    /// mirror for (the pool waits on them); then, among the first [`PICK_WINDOW`] missing
    /// pieces, the one fewest parents hold (ties spread by node), so a new piece leaves its
    /// first holder for several nodes at once and they pass it on, instead of every node
    /// chasing the same piece; then the lowest missing piece from the mirror, when P2P
    /// cannot help (source mode, no scheduler, or no progress for `transferTimeout`).
    fn pick(&self, state: &AgentState) -> Job {
        let mut st = self.st.lock();
        if st.failed.is_some() || st.finished || st.pieces.iter().all(|p| *p == Piece::Done) {
            return Job::Finished;
        }
        let stalled = st.last_progress.elapsed() > state.cfg.transfer_timeout.0;
        let source_open = st.source_inflight < SOURCE_PARALLEL;
        let known = st.digests.iter().take_while(|d| d.is_some()).count() as u32;
        let missing = |st: &TaskState, i: u32| st.pieces[i as usize] == Piece::Missing;

        if source_open {
            let assigned = st
                .assigned
                .iter()
                .copied()
                .filter(|&i| i < known && missing(&st, i))
                .min();
            if let Some(index) = assigned {
                return self.take_source(&mut st, index, false);
            }
        }

        // A mirror piece waiting for a worker, or one under way: peers step aside (see
        // PEER_WHILE_SOURCING), and one worker is always kept free for the mirror.
        let peer_inflight: u32 = st.parents.values().map(|p| p.inflight).sum();
        let source_pending = st.assigned.iter().any(|&i| i < known && missing(&st, i));
        let peer_room = if st.source_inflight > 0 || source_pending {
            PEER_WHILE_SOURCING
        } else {
            WORKERS as u32 - 1
        };
        let node = &state.cfg.node;
        let now = Instant::now();
        let mut best: Option<((usize, u64), u32)> = None;
        let pieces = if peer_inflight < peer_room { known } else { 0 };
        for i in (0..pieces).filter(|&i| missing(&st, i)).take(PICK_WINDOW) {
            let mut holders = 0;
            let mut free = false;
            for (id, p) in &st.parents {
                if p.have.contains(&i) && !st.blocked.contains(id) {
                    holders += 1;
                    free |= p.available(now);
                }
            }
            if !free {
                continue;
            }
            let key = (holders, spread(node, i));
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, i));
            }
        }
        if let Some((_, index)) = best {
            let holder = st
                .parents
                .iter()
                .filter(|(id, p)| {
                    p.have.contains(&index) && !st.blocked.contains(*id) && p.available(now)
                })
                .min_by_key(|(id, p)| (p.inflight, spread(id, index)))
                .map(|(id, p)| (id.clone(), p.addr.clone()));
            if let Some((id, addr)) = holder {
                st.pieces[index as usize] = Piece::InFlight;
                st.waiting = false;
                if let Some(p) = st.parents.get_mut(&id) {
                    p.inflight += 1;
                }
                return Job::Peer { index, id, addr };
            }
        }

        let source_ok = st.go_source || !st.scheduler_ok || stalled;
        if source_open && source_ok {
            if let Some(index) = (0..known).find(|&i| missing(&st, i)) {
                return self.take_source(&mut st, index, stalled);
            }
        }
        st.waiting = true;
        Job::Wait
    }

    fn take_source(&self, st: &mut TaskState, index: u32, rescue: bool) -> Job {
        st.pieces[index as usize] = Piece::InFlight;
        st.source_inflight += 1;
        st.waiting = false;
        if rescue {
            st.last_progress = Instant::now(); // one rescue per transferTimeout
        }
        Job::Source { index }
    }

    fn complete(&self, index: u32, from: Option<&str>, result: crate::Result<()>) {
        let mut st = self.st.lock();
        match from {
            Some(id) => {
                if let Some(p) = st.parents.get_mut(id) {
                    p.inflight = p.inflight.saturating_sub(1);
                }
            }
            None => st.source_inflight = st.source_inflight.saturating_sub(1),
        }
        let done = result.is_ok();
        match result {
            Ok(()) => {
                st.pieces[index as usize] = Piece::Done;
                st.last_progress = Instant::now();
                st.assigned.remove(&index);
                if let Some(id) = from {
                    st.unanswered.remove(id);
                }
                if from.is_none() {
                    st.source_failures = 0; // only a mirror that keeps failing fails the pull
                }
            }
            Err(crate::Error::Busy(_)) => {
                st.pieces[index as usize] = Piece::Missing;
                if let Some(p) = from.and_then(|id| st.parents.get_mut(id)) {
                    p.busy_until = Some(Instant::now() + BUSY_BACKOFF);
                }
            }
            Err(e @ crate::Error::NoAnswer { .. })
                if from.is_some_and(|id| {
                    st.unanswered.get(id).copied().unwrap_or(0) + 1 < NO_ANSWER_LIMIT
                }) =>
            {
                st.pieces[index as usize] = Piece::Missing;
                let id = from.unwrap_or_default();
                let times = st.unanswered.entry(id.to_string()).or_insert(0);
                *times += 1;
                let pause = NO_ANSWER_BACKOFF * (1 << (*times - 1));
                tracing::info!(digest = %self.spec.digest, index, peer = id, error = %e, times = *times, "peer did not answer; trying it again later");
                if let Some(p) = st.parents.get_mut(id) {
                    p.busy_until = Some(Instant::now() + pause);
                }
            }
            Err(e) => {
                st.pieces[index as usize] = Piece::Missing;
                match from {
                    Some(id) => {
                        tracing::info!(digest = %self.spec.digest, index, peer = id, error = %e, "peer failed; piece goes elsewhere");
                        st.blocked.insert(id.to_string());
                        st.to_report.push(id.to_string());
                    }
                    None => {
                        st.source_failures += 1;
                        tracing::warn!(digest = %self.spec.digest, index, error = %e, failures = st.source_failures, "mirror piece failed");
                        if st.source_failures > SOURCE_RETRIES && st.failed.is_none() {
                            st.failed = Some(format!(
                                "the mirror failed {SOURCE_RETRIES} times; last: {e}"
                            ));
                        }
                    }
                }
            }
        }
        drop(st);
        if done {
            self.announce_now.notify_one(); // peers may want it
        }
        self.bump();
    }
}

/// A stable per-(peer, piece) tie-breaker, so equally loaded parents share the work and nodes
/// with equally rare pieces to choose from choose differently. FNV-1a alone is not enough:
/// ids and indexes that differ in their last bits ("n1".."n9", piece 4 and 5) come out nearly
/// in order, so on the fan-out bed every node took its ties in the same order and asked the
/// same few parents while others idled. The murmur3 finaliser mixes every bit into every bit.
fn spread(id: &str, index: u32) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ index as u64;
    for b in id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

async fn worker(state: web::Data<AgentState>, task: Arc<Task>) {
    let mut rx = task.generation.subscribe();
    loop {
        rx.borrow_and_update();
        match task.pick(&state) {
            Job::Finished => return,
            Job::Wait => {
                // Short: a busy parent may be free again soon.
                let _ = tokio::time::timeout(BUSY_BACKOFF, rx.changed()).await;
            }
            Job::Peer { index, id, addr } => {
                let began = Instant::now();
                let result = fetch_from_peer(&state, &task, index, &addr).await;
                tracing::debug!(digest = %task.spec.digest, index, from = %id, ms = began.elapsed().as_millis() as u64, ok = result.is_ok(), busy = matches!(result, Err(crate::Error::Busy(_))), "piece from peer");
                task.complete(index, Some(&id), result);
            }
            Job::Source { index } => {
                let began = Instant::now();
                let result = fetch_from_mirror(&state, &task, index).await;
                tracing::debug!(digest = %task.spec.digest, index, ms = began.elapsed().as_millis() as u64, ok = result.is_ok(), "piece from mirror");
                if result.is_ok() {
                    state.metrics.back_to_source.inc();
                } else {
                    // Back off before the next attempt at the mirror.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                task.complete(index, None, result);
            }
        }
    }
}

impl TaskSpec {
    /// This blob's `/v2/<name>/<kind>/<digest>` at the mirror.
    fn mirror_url(&self, state: &AgentState, kind: &str, extra: &[(&str, String)]) -> url::Url {
        state.mirror_url(
            &format!("/v2/{}/{kind}/{}", self.repo, self.digest),
            self.ns.as_deref(),
            extra,
        )
    }
}

async fn fetch_from_mirror(state: &AgentState, task: &Task, index: u32) -> crate::Result<()> {
    let (start, end) = task.piece_span(index);
    let url = task.spec.mirror_url(state, "blobs", &[]);
    let mut req = state
        .http
        .get(url)
        .header("Range", format!("bytes={start}-{}", end - 1));
    if let Some(auth) = &task.spec.auth {
        req = req.header("Authorization", auth.as_bytes());
    }
    fetch_piece(state, task, index, req, state.metrics.source_bytes.clone())
        .await
        .map_err(|e| match e {
            // Only a peer's 503 means "ask another holder"; the mirror's counts as a failure.
            crate::Error::Busy(_) => crate::Error::Piece {
                digest: task.spec.digest.to_string(),
                index,
                message: "mirror answered 503 Service Unavailable".into(),
            },
            e => e,
        })
}

async fn fetch_from_peer(
    state: &AgentState,
    task: &Task,
    index: u32,
    addr: &str,
) -> crate::Result<()> {
    let path = format!(
        "/pieces/{}/{index}?pieceSize={}",
        task.spec.digest,
        task.layout.piece_size()
    );
    let sig = state.secret.sign_now("GET", &path, &state.cfg.pool);
    let req = state
        .http
        .get(format!("http://{addr}{path}"))
        .header(nodepool::AUTH_HEADER, sig);
    fetch_piece(state, task, index, req, state.metrics.peer_in()).await
}

/// Streams one piece into place, hashing as it comes; only a piece that matches the mirror's
/// digest counts. Abandoned when no data comes for `transferTimeout` (as the seeds define it):
/// a slow transfer that keeps moving is not a failed one.
async fn fetch_piece(
    state: &AgentState,
    task: &Task,
    index: u32,
    req: reqwest::RequestBuilder,
    counter: Counter,
) -> crate::Result<()> {
    let err = |message: String| crate::Error::Piece {
        digest: task.spec.digest.to_string(),
        index,
        message,
    };
    let _slot = state
        .transfers
        .acquire()
        .await
        .map_err(|e| err(e.to_string()))?;
    let (start, end) = task.piece_span(index);
    let want = task.st.lock().digests[index as usize].ok_or_else(|| err("no digest yet".into()))?;
    let stall = state.cfg.transfer_timeout.0;
    let stalled = || err(format!("no data for transferTimeout ({stall:?})"));
    let work = async {
        let resp = tokio::time::timeout(stall, req.send())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| crate::Error::NoAnswer {
                digest: task.spec.digest.to_string(),
                index,
                message: nodepool::wire::error_chain(&e),
            })?;
        if resp.status() == 503 {
            return Err(crate::Error::Busy(format!("piece {index}")));
        }
        if !(resp.status() == 200 || resp.status() == 206) {
            return Err(err(format!("answered {}", resp.status())));
        }
        let mut body = resp.bytes_stream();
        let mut hasher = sha2::Sha256::new();
        let mut buf = BytesMut::new();
        let mut offset = start;
        loop {
            let chunk = tokio::time::timeout(stall, body.next())
                .await
                .map_err(|_| stalled())?
                .transpose()
                .map_err(|e| err(format!("body: {}", nodepool::wire::error_chain(&e))))?;
            let last = chunk.is_none();
            if let Some(chunk) = chunk {
                state.limits.total.take(chunk.len()).await;
                state.limits.down.take(chunk.len()).await;
                counter.inc_by(chunk.len() as u64);
                if offset + (buf.len() + chunk.len()) as u64 > end {
                    return Err(err("more bytes than the piece holds".into()));
                }
                buf.extend_from_slice(&chunk);
            }
            if buf.len() >= WRITE_CHUNK || (last && !buf.is_empty()) {
                let data = buf.split().freeze();
                hasher.update(&data);
                let file = task.file.clone();
                let at = offset;
                offset += data.len() as u64;
                tokio::task::spawn_blocking(move || file.write_all_at(&data, at))
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .map_err(|e| err(format!("write: {e}")))?;
            }
            if last {
                break;
            }
        }
        if offset != end {
            return Err(err(format!(
                "short piece: {} of {} bytes",
                offset - start,
                end - start
            )));
        }
        if hasher.finalize().as_slice() != want {
            state.metrics.digest_mismatches.inc();
            return Err(err("piece does not match its digest".into()));
        }
        Ok(())
    };
    work.await.inspect_err(|e| {
        if !matches!(e, crate::Error::Busy(_)) {
            state.metrics.piece_failures.inc();
        }
    })
}

/// Learns piece digests from the mirror, as the mirror gets the blob.
async fn layout_loop(state: web::Data<AgentState>, task: Arc<Task>) {
    let mut from = 0u32;
    let mut errors = 0;
    while from < task.layout.count() {
        if task.st.lock().failed.is_some() {
            return;
        }
        let url = task.spec.mirror_url(
            &state,
            "pieces",
            &[
                ("pieceSize", task.layout.piece_size().to_string()),
                ("from", from.to_string()),
            ],
        );
        let mut req = state.http.get(url).timeout(Duration::from_secs(30));
        if let Some(auth) = &task.spec.auth {
            req = req.header("Authorization", auth.as_bytes());
        }
        match fetch_layout(req, &task).await {
            Ok(list) => {
                errors = 0;
                let mut st = task.st.lock();
                for (k, hex_digest) in list.into_iter().enumerate() {
                    if let Some(slot) = st.digests.get_mut(from as usize + k) {
                        *slot = Some(hex_digest);
                    }
                }
                let known = st.digests.iter().take_while(|d| d.is_some()).count() as u32;
                drop(st);
                from = known;
                task.bump();
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(digest = %task.spec.digest, error = %e, errors, "piece layout from the mirror failed");
                if errors > SOURCE_RETRIES {
                    task.fail(e.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500 * errors as u64)).await;
            }
        }
    }
}

async fn fetch_layout(req: reqwest::RequestBuilder, task: &Task) -> crate::Result<Vec<[u8; 32]>> {
    let err = |message: String| crate::Error::Layout {
        digest: task.spec.digest.to_string(),
        message,
    };
    let resp = req.send().await.map_err(|e| err(format!("request: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("mirror answered {}", resp.status())));
    }
    let list: PieceList = resp
        .json()
        .await
        .map_err(|e| err(format!("bad piece list: {e}")))?;
    if list.size != task.spec.size || list.piece_size != task.layout.piece_size() {
        return Err(err(format!(
            "piece list for {} bytes in {} pieces, expected {} in {}",
            list.size,
            list.piece_size,
            task.spec.size,
            task.layout.piece_size()
        )));
    }
    list.pieces
        .iter()
        .map(|h| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).map_err(|e| err(format!("bad piece digest: {e}")))?;
            Ok(out)
        })
        .collect()
}

/// Tells the scheduler what we have and learns parents and which pieces to take from the
/// mirror. A scheduler that fails degrades the download to source, never fails it.
async fn announce_loop(state: web::Data<AgentState>, task: Arc<Task>) {
    let Some(client) = state.scheduler.as_ref() else {
        return;
    };
    let info = TaskInfo {
        digest: task.spec.digest.to_string(),
        size: task.spec.size,
        piece_size: task.layout.piece_size(),
    };
    loop {
        let (have, failed_parents, finished) = {
            let mut st = task.st.lock();
            if st.failed.is_some() {
                return;
            }
            let have = (0..task.layout.count())
                .filter(|i| st.pieces[*i as usize] == Piece::Done)
                .collect();
            (have, std::mem::take(&mut st.to_report), st.finished)
        };
        let req = AnnounceRequest {
            peer: state.peer_info(),
            task: info.clone(),
            have,
            done: finished,
            failed_parents,
        };
        let wait = match client.announce(&req).await {
            Ok(resp) => {
                state.set_reachable(resp.reachable_pools.clone());
                let mut st = task.st.lock();
                st.scheduler_ok = true;
                st.go_source = resp.go_source;
                st.assigned = resp.source_pieces.into_iter().collect();
                let mut parents = HashMap::new();
                for p in resp.parents {
                    let old = st.parents.get(&p.id);
                    let inflight = old.map_or(0, |old| old.inflight);
                    let busy_until = old.and_then(|old| old.busy_until);
                    parents.insert(
                        p.id,
                        Parent {
                            addr: p.addr,
                            have: p.have.into_iter().collect(),
                            inflight,
                            busy_until,
                        },
                    );
                }
                st.parents = parents;
                tracing::debug!(digest = %task.spec.digest, parents = st.parents.len(), offered = st.parents.values().map(|p| p.have.len()).sum::<usize>(), assigned = st.assigned.len(), "announced");
                Duration::from_millis(resp.interval_ms.clamp(100, 10_000))
            }
            Err(e) => {
                state.metrics.scheduler_errors.inc();
                tracing::debug!(error = %e, "announce failed; pieces go to the mirror");
                task.st.lock().scheduler_ok = false;
                Duration::from_secs(1)
            }
        };
        task.bump();
        if finished {
            return;
        }
        let wait = if task.st.lock().waiting {
            wait.min(IDLE_ANNOUNCE)
        } else {
            wait
        };
        // Sooner when a piece is done, so nodes waiting for it hear of it, but never more
        // often than every ANNOUNCE_GAP.
        tokio::time::sleep(ANNOUNCE_GAP.min(wait)).await;
        let _ = tokio::time::timeout(
            wait.saturating_sub(ANNOUNCE_GAP),
            task.announce_now.notified(),
        )
        .await;
    }
}

/// Feeds `start..end` of the download's file to the whole-blob hash, off the runtime, through
/// a small buffer: whole-piece buffers made glibc keep tens of MiB in per-thread arenas.
async fn hash_span(
    file: Arc<File>,
    mut hasher: sha2::Sha256,
    start: u64,
    end: u64,
) -> std::io::Result<sha2::Sha256> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Advances the verified-in-order prefix that containerd streams, hashes the whole blob on the
/// way, and commits it to the cache once it matches.
async fn sequencer(state: web::Data<AgentState>, task: Arc<Task>, mut writer: IngestWriter) {
    let mut rx = task.generation.subscribe();
    let mut hasher = sha2::Sha256::new();
    let mut prefix = 0u32;
    // (`hasher` moves into the blocking pool and back for each piece.)
    let download = |message: String| crate::Error::Download {
        digest: task.spec.digest.to_string(),
        message,
    };
    let outcome: crate::Result<()> = loop {
        rx.borrow_and_update();
        if let Some(msg) = task.st.lock().failed.clone() {
            break Err(download(msg));
        }
        while prefix < task.layout.count() && task.has_piece(prefix) {
            let (start, end) = task.piece_span(prefix);
            match hash_span(task.file.clone(), std::mem::take(&mut hasher), start, end).await {
                Ok(h) => hasher = h,
                Err(e) => {
                    task.fail(format!("reading piece {prefix}: {e}"));
                    break;
                }
            }
            prefix += 1;
            writer.set(Progress::Running {
                written: end,
                size: Some(task.spec.size),
            });
        }
        if prefix == task.layout.count() {
            let actual = Digest::from_sha256(&std::mem::take(&mut hasher).finalize());
            if actual != task.spec.digest {
                state.metrics.digest_mismatches.inc();
                break Err(crate::Error::BlobMismatch {
                    expected: task.spec.digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            let Some(temp) = writer.temp.take() else {
                break Err(download("temp file lost".into()));
            };
            if let Err(e) = state
                .store
                .commit(&task.spec.digest, temp, None, SystemTime::now())
            {
                break Err(e.into());
            }
            break Ok(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    };
    match outcome {
        Ok(()) => {
            writer.set(Progress::Done {
                size: task.spec.size,
            });
            task.st.lock().finished = true;
            tracing::info!(digest = %task.spec.digest, size = task.spec.size, "blob complete and verified");
        }
        Err(e) => {
            let msg = e.to_string();
            task.fail(msg.clone());
            writer.set(Progress::Failed(msg));
        }
    }
    state.tasks.lock().remove(task.spec.digest.hex());
    task.bump();
    drop(writer);
}

#[cfg(test)]
mod tests {
    use super::spread;

    fn ids() -> Vec<String> {
        (1..=16).map(|k| format!("n{k}")).collect()
    }

    #[test]
    fn equally_loaded_parents_share_the_pieces_evenly() {
        let ids = ids();
        let mut wins = std::collections::HashMap::<&str, u32>::new();
        for index in 0..1600 {
            let best = ids
                .iter()
                .min_by_key(|id| spread(id, index))
                .expect("16 ids");
            *wins.entry(best.as_str()).or_default() += 1;
        }
        for id in &ids {
            let n = wins.get(id.as_str()).copied().unwrap_or(0);
            assert!(
                (60..=140).contains(&n),
                "{id} would be asked for {n} of 1600 pieces, 100 expected: {wins:?}"
            );
        }
    }

    #[test]
    fn nodes_facing_the_same_tie_pick_different_pieces() {
        let firsts: std::collections::HashSet<u32> = ids()
            .iter()
            .map(|node| (0..16).min_by_key(|&i| spread(node, i)).expect("16 pieces"))
            .collect();
        assert!(
            firsts.len() >= 8,
            "16 nodes choosing among 16 equally rare pieces start with only {} distinct ones",
            firsts.len()
        );
    }
}
