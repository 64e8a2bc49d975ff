//! One blob download on this node, as containerd sees it: the file pieces land in, the piece
//! digests the mirror publishes, and the sequencer that streams the verified prefix to
//! containerd, hashes the whole blob and commits it to the cache. Where pieces come from (peers,
//! the mirror) is the swarm's business (`crate::p2p`).
//!
//! ```text
//!   layout loop: mirror /pieces (signed) ──digests, proofs──> Download ──> swarm (verifies)
//!   peer: PROOF + DATA ──> swarm checks the proof over the hash ──> Download (digest, proof)
//!   swarm: piece verified ──mark_done──> Download ──> sequencer: contiguous prefix
//!          ──> sha256 of the whole ──> Ingest progress (containerd streams) ──> BlobStore::commit
//! ```

use crate::p2p::Input;
use crate::state::AgentState;
use actix_web::web;
use nodepool::PieceLayout;
use parking_lot::{Mutex, RwLock};
use sha2::Digest as _;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::ingest::{Ingest, IngestWriter, Joined, Progress};
use storage::pieces::{PieceList, SignedPieces, PIECES_BINARY, PIECES_SIGNED};
use storage::reference::Digest;
use swarm::PieceSet;
use tokio::sync::watch;
use tracing::Instrument;

/// Layout requests in a row that may fail before the download does.
const LAYOUT_RETRIES: u32 = 6;

/// What a download needs to know about the blob and its requester.
#[derive(Clone)]
pub struct TaskSpec {
    pub digest: Digest,
    pub size: u64,
    pub ns: Option<String>,
    pub repo: String,
    /// containerd's credentials: the mirror checks them on every request made for it.
    pub auth: Option<actix_web::http::header::HeaderValue>,
}

impl TaskSpec {
    /// This blob's `/v2/<name>/<kind>/<digest>` at the mirror.
    pub fn mirror_url(&self, state: &AgentState, kind: &str, extra: &[(&str, String)]) -> url::Url {
        state.mirror_url(
            &format!("/v2/{}/{kind}/{}", self.repo, self.digest),
            self.ns.as_deref(),
            extra,
        )
    }
}

pub struct Download {
    pub spec: TaskSpec,
    pub layout: PieceLayout,
    pub ingest: Arc<Ingest>,
    /// The file pieces are written into; renamed into the cache when the blob is whole.
    pub file: Arc<File>,
    /// The span of the request that started the download (its pull's trace): the parent of
    /// each piece source's span (`crate::trace::piece_span`) and of the piece-digest requests.
    /// Disabled when tracing is off.
    pub span: tracing::Span,
    /// Piece digests, as far as this node has learnt them (from the mirror, or a peer's proof).
    digests: RwLock<Vec<Option<[u8; 32]>>>,
    /// The mirror's proof of each piece whose digest came signed: sent to peers ahead of the
    /// piece. The swarm keeps it after the download ends, to serve the blob.
    pub proofs: Proofs,
    /// Pieces coming or come from the mirror, and pieces from peers with no proof that held:
    /// what the layout loop asks the mirror for.
    wanted: Mutex<BTreeSet<u32>>,
    want: tokio::sync::Notify,
    /// Pieces verified and written.
    done: Mutex<PieceSet>,
    failed: Mutex<Option<String>>,
    generation: watch::Sender<u64>,
}

impl Download {
    /// Starts (or joins) the download of a blob. The caller streams from `download.ingest`.
    /// `None`: none runs and the blob is in the store: a download that ended between the
    /// caller's look at the store and this call (it commits before it leaves the map, and
    /// the store is asked under the map's lock), to be served from there, not taken again.
    pub fn get_or_start(
        state: &web::Data<AgentState>,
        spec: TaskSpec,
    ) -> crate::Result<Option<Arc<Self>>> {
        let mut downloads = state.downloads.lock();
        if let Some(d) = downloads.get(spec.digest.hex()) {
            return Ok(Some(d.clone()));
        }
        let store = state.store.clone();
        if store.holds(&spec.digest, SystemTime::now()) {
            return Ok(None);
        }
        // A blob larger than the cache is refused before anything is allocated for it (its
        // size is what the mirror's HEAD said), and room is made for one that fits.
        store.make_room(spec.size, SystemTime::now()).map_err(|e| {
            tracing::warn!(digest = %spec.digest, error = %e, "blob refused");
            crate::Error::Download {
                digest: spec.digest.to_string(),
                message: e.to_string(),
            }
        })?;
        let (ingest, writer) = match state
            .ingests
            .join_or_start(&spec.digest, || store.temp_file())?
        {
            Joined::Started(ingest, writer) => (ingest, writer),
            Joined::Existing(_) | Joined::Stored => {
                return Err(crate::Error::Download {
                    digest: spec.digest.to_string(),
                    message: "download registry out of step".into(),
                })
            }
        };
        let layout = state
            .cfg
            .layout_for(spec.size)
            .map_err(|e| crate::Error::Layout {
                digest: spec.digest.to_string(),
                message: e.to_string(),
            })?;
        writer.set(Progress::Running {
            written: 0,
            size: Some(spec.size),
        });
        let count = layout.count() as usize;
        let download = Arc::new(Download {
            layout,
            ingest,
            file: writer.file.clone(),
            digests: RwLock::new(vec![None; count]),
            proofs: Arc::new(RwLock::new(vec![None; count])),
            wanted: Mutex::default(),
            want: tokio::sync::Notify::new(),
            done: Mutex::new(PieceSet::empty(layout.count())),
            failed: Mutex::new(None),
            generation: watch::channel(0).0,
            span: if serve::trace::enabled() {
                tracing::Span::current()
            } else {
                tracing::Span::none()
            },
            spec,
        });
        tracing::debug!(digest = %download.spec.digest, size = download.spec.size, pieces = count, "download started");
        downloads.insert(download.spec.digest.hex().to_string(), download.clone());
        state.metrics.tasks.set(downloads.len() as i64);
        drop(downloads);
        if count > 0 {
            let span = download.span.clone();
            tokio::spawn(layout_loop(state.clone(), download.clone()).instrument(span));
            state.swarm.send(Input::Start(download.clone()));
        }
        tokio::spawn(sequencer(state.clone(), download.clone(), writer));
        Ok(Some(download))
    }

    /// The wire name of the blob.
    pub fn key(&self) -> u64 {
        crate::p2p::wire::task_key(&self.spec.digest.sha256())
    }

    /// The digest the mirror published for a piece, if it has yet.
    pub fn digest_of(&self, piece: u32) -> Option<[u8; 32]> {
        self.digests.read().get(piece as usize).copied().flatten()
    }

    /// A piece's digest and proof, from a peer's proof that held for what arrived.
    pub fn set_proven(&self, piece: u32, digest: [u8; 32], proof: [u8; 64]) {
        if let Some(slot) = self.digests.write().get_mut(piece as usize) {
            slot.get_or_insert(digest);
        }
        if let Some(slot) = self.proofs.write().get_mut(piece as usize) {
            slot.get_or_insert(proof);
        }
    }

    /// A piece arrived with no digest to check it by: the layout loop asks the mirror.
    pub fn want_digest(&self, piece: u32) {
        self.wanted.lock().insert(piece);
        self.want.notify_one();
    }

    /// Pieces `first..first + count` are coming from the mirror: the layout loop asks for
    /// their digests and proofs at once (the mirror answers as they are in), so they are
    /// known by the time the pieces land and the pieces go on to peers without a wait.
    pub fn want_range(&self, first: u32, count: u32) {
        let end = first.saturating_add(count).min(self.layout.count());
        self.wanted.lock().extend(first..end);
        self.want.notify_one();
    }

    /// The next `/pieces` question of the signed loop: the first wanted piece still without a
    /// digest, and how many pieces from it cover the wanted ones among the next
    /// [`LAYOUT_BATCH`].
    fn next_wanted(&self) -> Option<(u32, u32)> {
        let digests = self.digests.read();
        let mut wanted = self.wanted.lock();
        wanted.retain(|&p| digests.get(p as usize).is_some_and(Option::is_none));
        let first = *wanted.first()?;
        let last = wanted
            .range(first..first.saturating_add(LAYOUT_BATCH))
            .next_back()
            .copied()
            .unwrap_or(first);
        Some((first, last - first + 1))
    }

    /// A piece arrived and matched its digest.
    pub fn mark_done(&self, piece: u32) {
        if self.done.lock().insert(piece) {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    pub fn fail(&self, message: String) {
        let mut failed = self.failed.lock();
        if failed.is_none() {
            tracing::warn!(digest = %self.spec.digest, %message, "download failed");
            *failed = Some(message);
        }
        drop(failed);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn failed(&self) -> bool {
        self.failed.lock().is_some()
    }

    fn has(&self, piece: u32) -> bool {
        self.done.lock().contains(piece)
    }

    /// Pieces verified so far.
    pub fn held(&self) -> u32 {
        self.done.lock().count()
    }
}

/// Shared with the swarm's record of a blob: the mirror's proof of each piece.
pub type Proofs = Arc<RwLock<Vec<Option<[u8; 64]>>>>;

/// Pieces a piece-list answer covers: in the signed loop, the span asked for at most (the
/// pieces this node waits for among the next 16); against an older mirror, the pieces an
/// answer waits for while the blob arrives (a quarter of a second at most, at the mirror), as
/// every answer costs the mirror's uplink about 300 bytes beyond its digests.
const LAYOUT_BATCH: u32 = 16;

/// Learns piece digests from the mirror and tells the swarm. Runs in the download's span, so
/// its requests carry the pull's `traceparent`.
///
/// A mirror that signs (the signed form, `storage::pieces::PIECES_SIGNED`) is asked only for
/// the pieces this node takes from the mirror itself (as it starts each range) and any a peer
/// sent without a proof that held. Pieces from peers come with the mirror's proof, so
/// the mirror's uplink carries each digest to about one node, not to every node. An older
/// mirror's answers name no proofs: then the loop asks for every digest as the blob arrives,
/// as before.
async fn layout_loop(state: web::Data<AgentState>, d: Arc<Download>) {
    let count = d.layout.count();
    let mut signed = true;
    let mut errors = 0;
    let mut generation = d.generation.subscribe();
    loop {
        if d.failed() {
            return;
        }
        let (from, span) = if signed {
            if d.held() >= count {
                return;
            }
            match d.next_wanted() {
                Some(ask) => ask,
                None => {
                    tokio::select! {
                        _ = d.want.notified() => {}
                        _ = generation.changed() => {}
                    }
                    continue;
                }
            }
        } else {
            let from = d.digests.read().iter().take_while(|x| x.is_some()).count() as u32;
            if from >= count {
                return;
            }
            (from, LAYOUT_BATCH)
        };
        let mut query = vec![
            ("pieceSize", d.layout.piece_size().to_string()),
            ("from", from.to_string()),
            ("batch", span.to_string()),
        ];
        if signed {
            query.push(("limit", span.to_string()));
        }
        let url = d.spec.mirror_url(&state, "pieces", &query);
        let mut req = crate::trace::traced(state.http.get(url))
            .header(
                reqwest::header::ACCEPT,
                format!("{PIECES_SIGNED}, {PIECES_BINARY}"),
            )
            .timeout(Duration::from_secs(30));
        if let Some(auth) = &d.spec.auth {
            req = req.header("Authorization", auth.as_bytes());
        }
        state.metrics.piece_lists.inc();
        match fetch_layout(req, &d, from).await {
            Ok(answer) => {
                errors = 0;
                if let Some(key) = answer.key {
                    *state.piece_key.write() = Some(key);
                } else if signed {
                    tracing::info!(digest = %d.spec.digest, "the mirror does not sign piece digests: every digest from it");
                    signed = false;
                }
                let mut digests = d.digests.write();
                let mut proofs = d.proofs.write();
                for (k, digest) in answer.digests.into_iter().enumerate() {
                    let i = from as usize + k;
                    if let Some(slot) = digests.get_mut(i) {
                        slot.get_or_insert(digest);
                    }
                    if let (Some(slot), Some(proof)) = (
                        proofs.get_mut(i),
                        answer.proofs.as_ref().and_then(|p| p.get(k)),
                    ) {
                        slot.get_or_insert(*proof);
                    }
                }
                drop((digests, proofs));
                state.swarm.send(Input::Layout { task: d.key() });
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(digest = %d.spec.digest, error = %e, errors, "piece layout from the mirror failed");
                if errors > LAYOUT_RETRIES {
                    d.fail(e.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500 * errors as u64)).await;
            }
        }
    }
}

/// A `/pieces` answer: digests from the piece asked for, and with a signed answer the proofs
/// and the key that made them.
struct Answer {
    digests: Vec<[u8; 32]>,
    proofs: Option<Vec<[u8; 64]>>,
    key: Option<ed25519_dalek::VerifyingKey>,
}

/// A `/pieces` answer: the binary form the agent asks for, or JSON from a mirror that does not
/// know it.
fn read_layout(digest: &str, binary: bool, body: &[u8]) -> Result<PieceList, String> {
    if binary {
        PieceList::from_binary(digest, body)
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

async fn fetch_layout(
    req: reqwest::RequestBuilder,
    d: &Download,
    from: u32,
) -> crate::Result<Answer> {
    let err = |message: String| crate::Error::Layout {
        digest: d.spec.digest.to_string(),
        message,
    };
    let resp = req.send().await.map_err(|e| err(format!("request: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("mirror answered {}", resp.status())));
    }
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|t| t.as_bytes().to_vec())
        .unwrap_or_default();
    let body = resp
        .bytes()
        .await
        .map_err(|e| err(format!("piece list body: {e}")))?;
    let (size, piece_size, first, answer) = if media == PIECES_SIGNED.as_bytes() {
        let signed = SignedPieces::read(&d.spec.digest.sha256(), &body)
            .map_err(|e| err(format!("bad signed piece list: {e}")))?;
        let (digests, proofs) = signed.pieces.into_iter().unzip();
        let answer = Answer {
            digests,
            proofs: Some(proofs),
            key: Some(signed.key),
        };
        (signed.size, signed.piece_size, signed.from, answer)
    } else {
        let binary = media == PIECES_BINARY.as_bytes();
        let list = read_layout(&d.spec.digest.to_string(), binary, &body)
            .map_err(|e| err(format!("bad piece list: {e}")))?;
        let digests = list
            .pieces
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map_err(|e| err(format!("bad piece digest: {e}")))?;
                Ok(out)
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let answer = Answer {
            digests,
            proofs: None,
            key: None,
        };
        (list.size, list.piece_size, list.from, answer)
    };
    if size != d.spec.size || piece_size != d.layout.piece_size() {
        return Err(err(format!(
            "piece list for {size} bytes in {piece_size} pieces, expected {} in {}",
            d.spec.size,
            d.layout.piece_size()
        )));
    }
    if first != u64::from(from) {
        return Err(err(format!(
            "piece list from piece {first}, asked from {from}"
        )));
    }
    if answer.digests.len() as u64 > u64::from(d.layout.count() - from) {
        return Err(err(format!(
            "{} piece digests from piece {from} of {}",
            answer.digests.len(),
            d.layout.count()
        )));
    }
    Ok(answer)
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
/// way, and commits it to the cache once it matches; then tells the swarm.
async fn sequencer(state: web::Data<AgentState>, d: Arc<Download>, mut writer: IngestWriter) {
    let mut rx = d.generation.subscribe();
    let mut hasher = sha2::Sha256::new();
    let mut prefix = 0u32;
    let count = d.layout.count();
    let download = |message: String| crate::Error::Download {
        digest: d.spec.digest.to_string(),
        message,
    };
    let deadline = tokio::time::Instant::now() + state.cfg.download_timeout.0;
    let outcome: crate::Result<()> = loop {
        rx.borrow_and_update();
        if let Some(msg) = d.failed.lock().clone() {
            break Err(download(msg));
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(download(format!(
                "not done within downloadTimeout ({})",
                state.cfg.download_timeout
            )));
        }
        while prefix < count && d.has(prefix) {
            let span = d.layout.span(prefix).unwrap_or(0..0);
            match hash_span(
                d.file.clone(),
                std::mem::take(&mut hasher),
                span.start,
                span.end,
            )
            .await
            {
                Ok(h) => hasher = h,
                Err(e) => {
                    d.fail(format!("reading piece {prefix}: {e}"));
                    break;
                }
            }
            prefix += 1;
            writer.set(Progress::Running {
                written: span.end,
                size: Some(d.spec.size),
            });
        }
        if prefix == count && !d.failed() {
            let actual = Digest::from_sha256(&std::mem::take(&mut hasher).finalize());
            if actual != d.spec.digest {
                state.metrics.digest_mismatches.inc();
                break Err(crate::Error::BlobMismatch {
                    expected: d.spec.digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            let Some(temp) = writer.temp.take() else {
                break Err(download("temp file lost".into()));
            };
            if let Err(e) = state
                .store
                .commit(&d.spec.digest, temp, None, SystemTime::now())
            {
                break Err(e.into());
            }
            break Ok(());
        }
        let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout_at(wake, rx.changed()).await;
    };
    let ok = outcome.is_ok();
    match outcome {
        Ok(()) => {
            writer.set(Progress::Done { size: d.spec.size });
            tracing::info!(digest = %d.spec.digest, size = d.spec.size, "blob complete and verified");
        }
        Err(e) => {
            let msg = e.to_string();
            d.fail(msg.clone());
            writer.set(Progress::Failed(msg));
        }
    }
    state.downloads.lock().remove(d.spec.digest.hex());
    if count > 0 {
        state.swarm.send(Input::Ended {
            task: d.key(),
            stored: ok,
        });
    }
    drop(writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent reads the binary form it asks for, and JSON from a mirror that answers with it.
    #[test]
    fn a_piece_list_is_read_in_either_form() {
        let list = PieceList {
            digest: "sha256:ab".into(),
            size: 3 << 16,
            piece_size: 1 << 16,
            from: 1,
            pieces: vec![storage::pieces::piece_digest(b"x")],
            complete: false,
        };
        let binary = list.to_binary().expect("binary");
        assert_eq!(read_layout("sha256:ab", true, &binary), Ok(list.clone()));
        let json = serde_json::to_vec(&list).expect("json");
        assert_eq!(read_layout("sha256:ab", false, &json), Ok(list));
        assert!(read_layout("sha256:ab", true, &json).is_err());
        assert!(read_layout("sha256:ab", false, &binary).is_err());
    }

    /// A client's request looked at the store before the download started ahead of it had
    /// committed, and asks for the download once it has ended and left the map: the stored
    /// copy is served; the blob is not taken from the pool or the mirror a second time.
    #[tokio::test]
    async fn a_blob_stored_since_the_callers_look_is_not_downloaded_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = nodepool::AgentConfig {
            cache_host_path: dir.path().display().to_string(),
            mirror: "http://127.0.0.1:9".into(),
            ..Default::default()
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let server =
            crate::state::AgentServer::new(cfg, "127.0.0.1:65002".into(), metrics).expect("agent");
        let state = server.state();
        let data = b"a layer".to_vec();
        let digest = Digest::of(&data);
        let spec = |digest: &Digest| TaskSpec {
            digest: digest.clone(),
            size: data.len() as u64,
            ns: None,
            repo: "bench/image".into(),
            auth: None,
        };
        state
            .store
            .put_small(&digest, &data, None, SystemTime::now())
            .expect("put");
        let got = Download::get_or_start(&state, spec(&digest)).expect("answer");
        assert!(got.is_none(), "a stored blob was downloaded again");
        assert!(state.downloads.lock().is_empty());
        // Not stored: it starts.
        let other = Digest::of(b"another layer");
        let got = Download::get_or_start(&state, spec(&other)).expect("answer");
        assert!(got.is_some());
        assert!(state.downloads.lock().contains_key(other.hex()));
    }
}
