//! `GET /v2/<name>/pieces/<digest>?pieceSize=N&from=K`: the sha256 of each piece of a blob, for
//! node agents to check pieces they get from peers. The mirror is the pool's trust anchor: it
//! hashes bytes it fetched itself. While a blob is still arriving, the answer holds the pieces
//! complete so far (`complete: false`), after a short long-poll for progress; agents ask again
//! `from` the next piece. With `&batch=M` the answer also waits, a quarter of a second at
//! most, until M pieces from `from` are in: agents ask so, as each answer costs the mirror's
//! uplink about 300 bytes beyond its digests. Access is checked exactly as for the blob itself.
//!
//! Agents ask for the signed form (`storage::pieces::PIECES_SIGNED`, at most `&limit=M`
//! pieces, 64 at most): each digest comes with the mirror's ed25519 signature of it (its
//! proof, made with the key kept as `piece-key` in the cache folder), which peers send along
//! with the piece, so an agent asks here only for pieces it got from the mirror itself.
//!
//! Piece sizes are a fixed set (`nodepool::check_piece_size`: eleven powers of two), and the
//! digests of a cached blob at a size are computed once, by one request while others wait, and
//! kept in the store's index until the blob goes: no client can make the mirror hash a blob
//! more than eleven times, nor hold the result in memory.

use crate::blobs::{locate, Source};
use crate::error::{Error, Result};
use crate::server::{AppState, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::{check_piece_size, PieceLayout, MAX_PIECE, MIN_PIECE};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use storage::ingest::{Ingest, Progress};
use storage::pieces::{
    hash_pieces, piece_digest, sign_proof, PieceList, RangeProofs, MAX_SIGNED, PIECES_BINARY,
    PIECES_SIGNED,
};
use storage::reference::Digest;
use storage::request::query_param;

/// At most this many digests per answer; agents page with `from`.
const MAX_PER_ANSWER: u64 = 4096;
/// How long a request waits for the next piece of a blob still arriving.
const LONG_POLL: Duration = Duration::from_secs(5);
/// How long after it was asked an answer may wait for more pieces than the first (`batch`).
const BATCH_WAIT: Duration = Duration::from_millis(250);
/// The most pieces an answer waits for (`batch`).
const MAX_BATCH: u64 = 256;
/// Blobs hashed into pieces at once; more requests wait their turn.
const HASH_JOBS: usize = 2;

/// One hash of a blob at a piece size at a time, and at most [`HASH_JOBS`] at all.
pub struct PieceMemo {
    gates: Mutex<HashMap<MemoKey, Arc<tokio::sync::Mutex<()>>>>,
    jobs: tokio::sync::Semaphore,
}

impl Default for PieceMemo {
    fn default() -> Self {
        PieceMemo {
            gates: Mutex::default(),
            jobs: tokio::sync::Semaphore::new(HASH_JOBS),
        }
    }
}

/// (digest, piece size)
type MemoKey = (String, u64);

fn param(req: &HttpRequest, name: &str) -> Result<Option<u64>> {
    number_param(req.query_string(), name)
}

/// A decimal query parameter; present but not a number is an error.
fn number_param(query: &str, name: &str) -> Result<Option<u64>> {
    let raw = query_param(query, name);
    raw.map(|v| {
        v.parse::<u64>().map_err(|_| {
            Error::unsupported(format!(
                "query parameter {name}={}",
                v.chars().take(20).collect::<String>()
            ))
        })
    })
    .transpose()
}

pub async fn get(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    digest: Digest,
    req: &HttpRequest,
) -> Result<HttpResponse> {
    let piece_size = param(req, "pieceSize")?.unwrap_or(4 << 20);
    check_piece_size(piece_size).map_err(|_| {
        Error::unsupported(format!(
            "pieceSize {piece_size} (a power of two from {MIN_PIECE} to {MAX_PIECE})"
        ))
    })?;
    let from = param(req, "from")?.unwrap_or(0);
    let source = locate(state, ctx, &digest, true).await?;
    state.ahead.requested(state, ctx, &digest);
    let list = match source {
        Some(Source::Cached(file, entry)) => {
            let all = memoized(state, &digest, file, layout(entry.size, piece_size)?).await?;
            let first = (from as usize).min(all.len());
            let last = (first + MAX_PER_ANSWER as usize).min(all.len());
            PieceList {
                digest: digest.to_string(),
                size: entry.size,
                piece_size,
                from,
                pieces: all[first..last].to_vec(),
                complete: true,
            }
        }
        Some(Source::Ingest(ingest)) => {
            let batch = param(req, "batch")?.unwrap_or(1).clamp(1, MAX_BATCH);
            arriving(&ingest, &digest, piece_size, from, batch).await?
        }
        None => return Err(Error::transfer(format!("{digest} could not be located"))),
    };
    if accepts(req, PIECES_SIGNED) {
        // Signed: at most `limit` pieces (each costs a signature), by default MAX_SIGNED.
        let limit = param(req, "limit")?
            .unwrap_or(MAX_SIGNED)
            .clamp(1, MAX_SIGNED) as usize;
        let mut list = list;
        list.pieces.truncate(limit);
        let body = list
            .to_signed(&digest.sha256(), &state.piece_key)
            .map_err(Error::transfer)?;
        count(state, body.len());
        return Ok(HttpResponse::Ok().content_type(PIECES_SIGNED).body(body));
    }
    if accepts(req, PIECES_BINARY) {
        let body = list.to_binary().map_err(Error::transfer)?;
        count(state, body.len());
        return Ok(HttpResponse::Ok().content_type(PIECES_BINARY).body(body));
    }
    let body = serde_json::to_vec(&list).map_err(|e| Error::transfer(e.to_string()))?;
    count(state, body.len());
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

fn count(state: &AppState, bytes: usize) {
    state.metrics.piece_lists.inc();
    state.metrics.piece_list_bytes.inc_by(bytes as u64);
}

/// Whether the client's `Accept` names `media` (agents ask for the signed form, older ones
/// for the binary one; anyone else gets JSON).
fn accepts(req: &HttpRequest, media: &str) -> bool {
    req.headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().unwrap_or("").trim() == media)
}

/// Most proofs one range answer carries.
const MAX_RANGE_PROOFS: usize = 64;

/// The proofs of the whole pieces in bytes `start..=end` of a blob whose digests the mirror
/// already knows at `piece_size` (it computes none here, so a range is never held up by
/// hashing). `None` if the range does not start on a piece or no digest of its first piece is
/// known yet.
pub async fn known_proofs(
    state: &AppState,
    digest: &Digest,
    ingest: Option<&Ingest>,
    size: u64,
    piece_size: u64,
    start: u64,
    end: u64,
) -> Option<RangeProofs> {
    check_piece_size(piece_size).ok()?;
    let layout = PieceLayout::bounded(size, piece_size).ok()?;
    if !start.is_multiple_of(piece_size) {
        return None;
    }
    let first = start / piece_size;
    let last = (end / piece_size).min(u64::from(layout.count()).saturating_sub(1));
    let pick = |list: &[String]| -> Option<Vec<String>> {
        let upto = (last as usize).min(list.len().checked_sub(1)?);
        Some(list.get(first as usize..=upto)?.to_vec())
    };
    let known = match ingest {
        Some(ingest) => pick(ingest.piece_digests.lock().await.get(&piece_size)?)?,
        None => pick(&state.store.piece_digests(digest, piece_size)?)?,
    };
    let blob = digest.sha256();
    let proofs = (first..)
        .zip(known.iter().take(MAX_RANGE_PROOFS))
        .map(|(index, hex_digest)| {
            let mut piece = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut piece).ok()?;
            Some(sign_proof(
                &state.piece_key,
                &blob,
                piece_size,
                index,
                &piece,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RangeProofs { first, proofs })
}

async fn memoized(
    state: &AppState,
    digest: &Digest,
    file: std::fs::File,
    layout: PieceLayout,
) -> Result<Arc<Vec<String>>> {
    let size = layout.piece_size();
    if let Some(known) = state.store.piece_digests(digest, size) {
        return Ok(Arc::new(known));
    }
    let key = (digest.to_string(), size);
    let gate = state
        .pieces
        .gates
        .lock()
        .entry(key.clone())
        .or_default()
        .clone();
    let turn = gate.lock().await;
    // Whoever held the gate before may have done the work.
    let all = match state.store.piece_digests(digest, size) {
        Some(known) => Ok(known),
        None => hash_once(state, digest, file, layout).await,
    };
    drop(turn);
    state.pieces.gates.lock().remove(&key);
    all.map(Arc::new)
}

async fn hash_once(
    state: &AppState,
    digest: &Digest,
    file: std::fs::File,
    layout: PieceLayout,
) -> Result<Vec<String>> {
    let _job = state
        .pieces
        .jobs
        .acquire()
        .await
        .map_err(|e| Error::transfer(e.to_string()))?;
    let all = tokio::task::spawn_blocking(move || hash_pieces(file, layout))
        .await
        .map_err(|e| Error::transfer(e.to_string()))??;
    state
        .store
        .put_piece_digests(digest, layout.piece_size(), &all)?;
    Ok(all)
}

/// The layout of a blob of `size` bytes at an accepted `piece_size`: refused only for a size
/// so large its pieces cannot be numbered.
fn layout(size: u64, piece_size: u64) -> Result<PieceLayout> {
    PieceLayout::new(size, piece_size)
        .map_err(|e| Error::unsupported(format!("pieceSize {piece_size} for {size} bytes: {e}")))
}

/// Pieces of a blob still arriving: waits for piece `from` to complete (at most
/// [`LONG_POLL`]), and for `batch` pieces from there to complete (at most [`BATCH_WAIT`]),
/// then hashes every complete piece from `from` on.
async fn arriving(
    ingest: &Arc<Ingest>,
    digest: &Digest,
    piece_size: u64,
    from: u64,
    batch: u64,
) -> Result<PieceList> {
    let mut rx = ingest.progress();
    let asked = tokio::time::Instant::now();
    let deadline = asked + LONG_POLL;
    let (avail, layout, complete) = loop {
        let snapshot = rx.borrow_and_update().clone();
        let (avail, size, done) = match snapshot {
            Progress::Running {
                written,
                size: Some(size),
            } => (written, size, false),
            Progress::Done { size } => (size, size, true),
            Progress::Running { size: None, .. } | Progress::Connecting => (0, 0, false),
            Progress::Refused(reply) => return Err(Error::upstream(reply)),
            Progress::Failed(msg) => return Err(Error::transfer(msg)),
        };
        let layout = layout(size, piece_size)?;
        let end_of = |index: u64| {
            u32::try_from(index)
                .ok()
                .and_then(|index| layout.span(index))
                .map_or(size, |span| span.end)
        };
        let first_in = size > 0 && avail >= end_of(from);
        let batch_in = avail >= end_of(from.saturating_add(batch.max(1) - 1));
        let batch_over = tokio::time::Instant::now() >= asked + BATCH_WAIT;
        if done || (first_in && (batch_in || batch_over)) {
            break (avail, layout, done);
        }
        // Once the first piece is in, the batch waits no longer than BATCH_WAIT.
        let until = if first_in {
            deadline.min(asked + BATCH_WAIT)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(Error::transfer("ingest ended early")),
            Err(_) if first_in && tokio::time::Instant::now() < deadline => continue,
            Err(_) => break (avail, layout, false),
        }
    };
    // Extend the ingest's shared list to what has arrived, then answer from it.
    let arrived = u64::from(layout.complete_within(avail));
    let wanted = arrived.min(from.saturating_add(MAX_PER_ANSWER));
    // Piece sizes are a fixed set: at most eleven lists, each piece hashed once per size.
    let mut memo = ingest.piece_digests.lock().await;
    let known = memo.entry(piece_size).or_default();
    while (known.len() as u64) < wanted {
        let Some(span) = layout.span(known.len() as u32) else {
            break;
        };
        let bytes = ingest
            .read_at(span.start, (span.end - span.start) as usize)
            .await?;
        known.push(piece_digest(&bytes));
    }
    let first = (from as usize).min(known.len());
    let pieces = known[first..(wanted as usize).max(first)].to_vec();
    drop(memo);
    let index = from.saturating_add(pieces.len() as u64);
    Ok(PieceList {
        digest: digest.to_string(),
        size: layout.size(),
        piece_size,
        from,
        complete: complete && index >= u64::from(layout.count()),
        pieces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_pieces_query_is_numbers_or_an_error(query in "\\PC{0,200}", size in any::<u64>()) {
            let _ = number_param(&query, "pieceSize");
            let _ = number_param(&query, "from");
            let given = format!("pieceSize={size}&from=0");
            prop_assert_eq!(number_param(&given, "pieceSize").ok(), Some(Some(size)));
            let accepted = check_piece_size(size).is_ok();
            prop_assert_eq!(accepted, size.is_power_of_two() && (MIN_PIECE..=MAX_PIECE).contains(&size));
        }
    }

    /// A blob of `len` bytes whose ingest has started and nothing arrived yet, and the digests
    /// of its 4 KiB pieces. The ingest map is returned to keep it alive.
    fn ingest_of(
        len: usize,
    ) -> (
        Vec<u8>,
        Digest,
        Arc<storage::ingest::Ingests>,
        Arc<Ingest>,
        storage::ingest::IngestWriter,
        Vec<String>,
    ) {
        use storage::ingest::{Ingests, Joined};
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let ingests = Arc::new(Ingests::default());
        let make = || Ok(tempfile::NamedTempFile::new()?.into_parts());
        let Ok(Joined::Started(ingest, writer)) = ingests.join_or_start(&digest, make) else {
            panic!("should start");
        };
        let want: Vec<String> = data.chunks(4096).map(piece_digest).collect();
        (data, digest, ingests, ingest, writer, want)
    }

    #[tokio::test]
    async fn pieces_of_a_blob_still_arriving_are_hashed_once_and_paged() {
        use std::os::unix::fs::FileExt;
        let (data, digest, _ingests, ingest, writer, want) = ingest_of(10 * 1024);
        // 6 KiB of 10 have arrived: one whole 4 KiB piece.
        writer.file.write_all_at(&data[..6144], 0).expect("write");
        writer.set(Progress::Running {
            written: 6144,
            size: Some(data.len() as u64),
        });
        let first = arriving(&ingest, &digest, 4096, 0, 1).await.expect("list");
        assert_eq!(
            (first.pieces.clone(), first.complete),
            (want[..1].to_vec(), false)
        );
        writer
            .file
            .write_all_at(&data[6144..], 6144)
            .expect("write");
        writer.set(Progress::Done {
            size: data.len() as u64,
        });
        let rest = arriving(&ingest, &digest, 4096, 1, 1).await.expect("list");
        assert_eq!((rest.pieces, rest.complete), (want[1..].to_vec(), true));
        let memo = ingest.piece_digests.lock().await;
        assert_eq!(
            memo.get(&4096),
            Some(&want),
            "each piece hashed once, kept in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waits_for_its_batch_a_quarter_second_at_most() {
        use std::os::unix::fs::FileExt;
        let (data, digest, _ingests, ingest, writer, want) = ingest_of(16 * 1024);
        let arrive = |upto: usize| {
            writer.file.write_all_at(&data[..upto], 0).expect("write");
            writer.set(Progress::Running {
                written: upto as u64,
                size: Some(data.len() as u64),
            });
        };
        arrive(6144);
        // One piece of a batch of three is in, and no more come: answered at BATCH_WAIT.
        let t0 = tokio::time::Instant::now();
        let first = arriving(&ingest, &digest, 4096, 0, 3).await.expect("list");
        assert_eq!(first.pieces, want[..1]);
        assert_eq!(t0.elapsed(), BATCH_WAIT);
        // The batch fills before BATCH_WAIT: answered as it does, with every piece in.
        let t1 = tokio::time::Instant::now();
        let waiting = {
            let (ingest, digest) = (ingest.clone(), digest.clone());
            tokio::spawn(async move { arriving(&ingest, &digest, 4096, 1, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        arrive(12 * 1024);
        let next = waiting.await.expect("task").expect("list");
        assert_eq!(next.pieces, want[1..3]);
        assert_eq!(t1.elapsed(), Duration::from_millis(100));
        // A batch of one (older agents) is answered as soon as its piece is in.
        let t2 = tokio::time::Instant::now();
        let one = arriving(&ingest, &digest, 4096, 2, 1).await.expect("list");
        assert_eq!(
            (one.pieces, t2.elapsed()),
            (want[2..3].to_vec(), Duration::ZERO)
        );
    }
}
