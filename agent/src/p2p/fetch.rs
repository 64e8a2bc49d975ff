//! Ranges from the mirror: one request per run of pieces, bytes written where they belong as
//! they come, each piece's hash handed to the actor as its last byte lands. Each range is a
//! `pieces` span (`piece.source=mirror`) under the download's, and its request carries that
//! span's `traceparent`, so the mirror's (and its upstream's) spans join the pull's trace.

use super::Input;
use crate::download::Download;
use crate::state::AgentState;
use crate::trace::{self, Source};
use futures_util::StreamExt;
use sha2::Digest as _;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use storage::pieces::{RangeProofs, KEY_HEADER, PIECE_SIZE_HEADER, PROOFS_HEADER};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Progress is reported at the first bytes of a piece and then every this many bytes.
const PROGRESS_EVERY: u64 = 128 * 1024;

/// Fetches pieces `first..first + count` of a download from the mirror.
pub fn range(
    state: Arc<AgentState>,
    d: Arc<Download>,
    first: u32,
    count: u32,
    why: swarm::MirrorWhy,
    tx: mpsc::UnboundedSender<Input>,
) -> JoinHandle<()> {
    let span = trace::piece_span(
        &d.span,
        Source::Mirror {
            reason: why.label(),
        },
        &d.spec.digest,
        first,
        count,
    );
    tokio::spawn(async move {
        let key = d.key();
        let within = span.clone();
        // Ends the span however the range ends, a cancel (the task aborted) included.
        let mut reached = Reached {
            piece: first,
            bytes: 0,
            outcome: "cancelled",
            span,
            why,
            state: state.clone(),
        };
        let began = std::time::Instant::now();
        let result = fetch(&state, &d, first, count, why, &tx, &mut reached)
            .instrument(within)
            .await;
        tracing::debug!(
            task = key,
            first,
            count,
            why = why.label(),
            ms = began.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "mirror range"
        );
        match result {
            Ok(()) => reached.outcome = "ok",
            Err(why) => {
                reached.outcome = "failed";
                reached.span.record("error.message", why.as_str());
                let _ = tx.send(Input::MirrorFailed {
                    task: key,
                    first,
                    piece: reached.piece,
                    why,
                });
            }
        }
    })
}

/// How far a range got: the piece it is at, the bytes written, and (for its span and the
/// `mirror_ranges` metric) why it was asked for and how it ended.
struct Reached {
    piece: u32,
    bytes: u64,
    outcome: &'static str,
    span: tracing::Span,
    why: swarm::MirrorWhy,
    state: Arc<AgentState>,
}

impl Drop for Reached {
    fn drop(&mut self) {
        trace::end(&self.span, self.bytes, self.outcome);
        self.state
            .metrics
            .mirror_range(self.why.label(), self.outcome);
    }
}

async fn fetch(
    state: &AgentState,
    d: &Download,
    first: u32,
    count: u32,
    why: swarm::MirrorWhy,
    tx: &mpsc::UnboundedSender<Input>,
    reached: &mut Reached,
) -> Result<(), String> {
    let key = d.key();
    let last = first + count.max(1) - 1;
    let (Some(start), Some(end)) = (d.layout.span(first), d.layout.span(last)) else {
        return Err(format!("pieces {first}..={last} are past the blob"));
    };
    let (start, end) = (start.start, end.end);
    let url = d.spec.mirror_url(state, "blobs", &[]);
    let mut req = trace::traced(state.http.get(url))
        .header("Range", format!("bytes={start}-{}", end - 1))
        .header(PIECE_SIZE_HEADER, d.layout.piece_size().to_string());
    if let Some(auth) = &d.spec.auth {
        req = req.header("Authorization", auth.as_bytes());
    }
    let stall = state.cfg.transfer_timeout.0;
    let stalled = || format!("no data for transferTimeout ({stall:?})");
    let resp = tokio::time::timeout(stall, req.send())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| format!("request: {}", nodepool::wire::error_chain(&e)))?;
    if resp.status() != 206 && !(resp.status() == 200 && start == 0 && end == d.layout.size()) {
        return Err(format!("mirror answered {}", resp.status()));
    }
    // The proofs of the range's pieces the mirror already knew go with them; the rest are
    // asked of `/pieces` now, so that they are in when the pieces land.
    let proofs = range_proofs(state, resp.headers(), first);
    let proven = (proofs.len() as u32).min(count);
    if proven < count {
        d.want_range(first + proven, count - proven);
    }
    let mut body = resp.bytes_stream();
    let mut pos = start;
    let mut piece_end = d.layout.span(first).map_or(end, |s| s.end);
    let mut hasher = sha2::Sha256::new();
    let mut reported = 0u64;
    while pos < end {
        let chunk = tokio::time::timeout(stall, body.next())
            .await
            .map_err(|_| stalled())?
            .ok_or_else(|| format!("body ended at {} of {} bytes", pos - start, end - start))?
            .map_err(|e| format!("body: {}", nodepool::wire::error_chain(&e)))?;
        state.limits.total.take(chunk.len()).await;
        state.limits.down.take(chunk.len()).await;
        state.metrics.source_bytes.inc_by(chunk.len() as u64);
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if pos >= end {
                return Err("more bytes than the range holds".into());
            }
            let n = rest.len().min((piece_end - pos) as usize);
            let (part, tail) = rest.split_at(n);
            let file = d.file.clone();
            tokio::task::block_in_place(|| file.write_all_at(part, pos))
                .map_err(|e| format!("write: {e}"))?;
            hasher.update(part);
            pos += n as u64;
            reached.bytes += n as u64;
            rest = tail;
            let piece_start =
                piece_end - d.layout.span(reached.piece).map_or(0, |s| s.end - s.start);
            let done = pos - piece_start;
            if pos == piece_end {
                let hash: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                state.metrics.back_to_source.inc();
                state.metrics.mirror_piece(why.label());
                let _ = tx.send(Input::Arrived {
                    peer: None,
                    task: key,
                    piece: reached.piece,
                    hash: Ok(hash),
                    proof: proofs.get((reached.piece - first) as usize).copied(),
                });
                reached.piece += 1;
                reported = 0;
                piece_end = d.layout.span(reached.piece).map_or(end, |s| s.end);
            } else if reported == 0 || done - reported >= PROGRESS_EVERY {
                reported = done.max(1);
                let _ = tx.send(Input::Progress {
                    task: key,
                    piece: reached.piece,
                    bytes: done,
                });
            }
        }
    }
    Ok(())
}

/// The proofs a range answer carries for its pieces from `first` on
/// (`storage::pieces::RangeProofs`), and the mirror's key beside them, which this node then
/// checks proofs with. Anything malformed, or for other pieces, counts as none: the pieces are
/// then checked by `/pieces` answers.
fn range_proofs(
    state: &AgentState,
    headers: &reqwest::header::HeaderMap,
    first: u32,
) -> Vec<[u8; 64]> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(proofs), Some(key)) = (text(PROOFS_HEADER), text(KEY_HEADER)) else {
        return Vec::new();
    };
    let mut raw_key = [0u8; 32];
    let key = hex::decode_to_slice(key, &mut raw_key)
        .ok()
        .and_then(|()| ed25519_dalek::VerifyingKey::from_bytes(&raw_key).ok());
    match (key, RangeProofs::from_header(proofs)) {
        (Some(key), Some(proofs)) if proofs.first == u64::from(first) => {
            *state.piece_key.write() = Some(key);
            proofs.proofs
        }
        _ => Vec::new(),
    }
}
