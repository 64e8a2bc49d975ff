//! One blob download on this node, as containerd sees it: the file pieces land in, the piece
//! digests the mirror publishes, and the sequencer that streams the verified prefix to
//! containerd, hashes the whole blob and commits it to the cache. Where pieces come from (peers,
//! the mirror) is the swarm's business (`crate::p2p`).
//!
//! ```text
//!   layout loop: mirror /pieces (long-poll) ──digests──> Download ──> swarm (verifies arrivals)
//!   swarm: piece verified ──mark_done──> Download ──> sequencer: contiguous prefix
//!          ──> sha256 of the whole ──> Ingest progress (containerd streams) ──> BlobStore::commit
//! ```

use crate::p2p::Input;
use crate::state::AgentState;
use actix_web::web;
use nodepool::PieceLayout;
use parking_lot::{Mutex, RwLock};
use sha2::Digest as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::ingest::{Ingest, IngestWriter, Joined, Progress};
use storage::pieces::{PieceList, PIECES_BINARY};
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
    /// Piece digests, as far as the mirror has published them.
    digests: RwLock<Vec<Option<[u8; 32]>>>,
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

/// Pieces a piece-list answer waits for while the blob arrives (a quarter of a second at most,
/// at the mirror): every agent's answers cross the mirror's uplink, about 300 bytes each
/// beyond the digests, and answering as each piece or two came in cost that link 3 % of the
/// blob at 32 nodes (docs/benchmarks.md). A piece's digest is needed once the piece has
/// crossed that link to its first holder, which with the pool's leases out takes longer.
const LAYOUT_BATCH: u32 = 16;

/// Learns piece digests from the mirror, as the mirror gets the blob, and tells the swarm. Runs
/// in the download's span, so its requests carry the pull's `traceparent`.
async fn layout_loop(state: web::Data<AgentState>, d: Arc<Download>) {
    let mut from = 0u32;
    let mut errors = 0;
    while from < d.layout.count() {
        if d.failed() {
            return;
        }
        let url = d.spec.mirror_url(
            &state,
            "pieces",
            &[
                ("pieceSize", d.layout.piece_size().to_string()),
                ("from", from.to_string()),
                ("batch", LAYOUT_BATCH.to_string()),
            ],
        );
        let mut req = crate::trace::traced(state.http.get(url))
            .header(reqwest::header::ACCEPT, PIECES_BINARY)
            .timeout(Duration::from_secs(30));
        if let Some(auth) = &d.spec.auth {
            req = req.header("Authorization", auth.as_bytes());
        }
        match fetch_layout(req, &d).await {
            Ok(list) => {
                errors = 0;
                let mut digests = d.digests.write();
                for (k, digest) in list.into_iter().enumerate() {
                    if let Some(slot) = digests.get_mut(from as usize + k) {
                        *slot = Some(digest);
                    }
                }
                from = digests.iter().take_while(|x| x.is_some()).count() as u32;
                drop(digests);
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

/// A `/pieces` answer: the binary form the agent asks for, or JSON from a mirror that does not
/// know it.
fn read_layout(digest: &str, binary: bool, body: &[u8]) -> Result<PieceList, String> {
    if binary {
        PieceList::from_binary(digest, body)
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

async fn fetch_layout(req: reqwest::RequestBuilder, d: &Download) -> crate::Result<Vec<[u8; 32]>> {
    let err = |message: String| crate::Error::Layout {
        digest: d.spec.digest.to_string(),
        message,
    };
    let resp = req.send().await.map_err(|e| err(format!("request: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("mirror answered {}", resp.status())));
    }
    let binary = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes() == PIECES_BINARY.as_bytes());
    let body = resp
        .bytes()
        .await
        .map_err(|e| err(format!("piece list body: {e}")))?;
    let list = read_layout(&d.spec.digest.to_string(), binary, &body)
        .map_err(|e| err(format!("bad piece list: {e}")))?;
    if list.size != d.spec.size || list.piece_size != d.layout.piece_size() {
        return Err(err(format!(
            "piece list for {} bytes in {} pieces, expected {} in {}",
            list.size,
            list.piece_size,
            d.spec.size,
            d.layout.piece_size()
        )));
    }
    if list.pieces.len() > d.layout.count() as usize {
        return Err(err(format!(
            "{} piece digests for {} pieces",
            list.pieces.len(),
            d.layout.count()
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
