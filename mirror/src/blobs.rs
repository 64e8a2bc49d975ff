//! `GET|HEAD /v2/<name>/blobs/<digest>`: from the cache, from an ingest under way, or by
//! starting the one upstream fetch that every concurrent requester shares.

use crate::error::{Error, Result};
use crate::server::{AppState, Ctx};
use crate::upstream::{refusal, RequestOpts};
use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderValue, RANGE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use reqwest::Method;
use sha2::Digest as _;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use storage::body::{file_stream, metered, parse_range, span, RangeSpec, Share, Span, CHUNK};
use storage::ingest::{Ingest, IngestWriter, Joined, Progress};
use storage::reference::Digest;
use tracing::Instrument;

/// Joiners retry when the ingest they joined was refused for its starter's credentials.
const ATTEMPTS: usize = 3;
/// The most an upstream fetch's last bytes may overlap the next blob's first request
/// ([`crate::ahead`]): the time upstream took to answer this one, at most this.
const MAX_LEAD: Duration = Duration::from_secs(1);

/// Where a requested blob's bytes come from, after the requester's access was checked.
pub enum Source {
    Cached(std::fs::File, storage::store::BlobEntry),
    Ingest(Arc<Ingest>),
}

/// Finds a blob for this requester: the verified cache, an ingest under way, or (when `start`)
/// a new upstream fetch. `None`: not held and `start` is false.
pub async fn locate(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    digest: &Digest,
    start: bool,
) -> Result<Option<Source>> {
    let probe = ctx.up.blob_url(ctx.repo, digest);
    let object = digest.to_string();
    for _ in 0..ATTEMPTS {
        if let Some((file, entry)) = state.store.open_verified(digest, SystemTime::now()).await? {
            prove(state, ctx, digest, Some(entry.size)).await?;
            state.authorize(ctx, &object, probe.clone(), None).await?;
            state.store.touch(digest, &entry, SystemTime::now())?;
            state.metrics.cache_hits.inc();
            return Ok(Some(Source::Cached(file, entry)));
        }
        if !start && state.ingests.get(digest).is_none() {
            return Ok(None);
        }
        let store = state.store.clone();
        let source = Some(ctx.up.ns.as_str());
        let stored = || store.holds(digest, SystemTime::now());
        match state
            .ingests
            .join_or_start_from(digest, source, stored, || store.temp_file())?
        {
            // Its ingest ended after the look above: the stored copy, on the next round.
            Joined::Stored => {
                tracing::debug!(%digest, "ingest ended between the store's look and the join; serving the stored copy");
                continue;
            }
            Joined::Started(ingest, writer) => {
                let auth = ctx.auth.cloned();
                let job = (ctx.up.ns.clone(), ctx.repo.to_string());
                // The fetch outlives this request (single-flight), but belongs to its trace.
                let fetched = fetch(state.clone(), probe.clone(), auth, writer, job);
                let after = state.clone();
                tokio::spawn(
                    async move {
                        fetched.await;
                        // The writer is gone: upstream may be idle now.
                        crate::ahead::fetch_next(&after);
                    }
                    .instrument(tracing::Span::current()),
                );
                // The starter's own upstream answer is its access check. Counted only once
                // upstream said yes: /metrics must not tell anyone what is cached.
                ingest.started().await?;
                state.metrics.cache_misses.inc();
                return Ok(Some(Source::Ingest(ingest)));
            }
            Joined::Existing(ingest) => {
                if ingest.source.as_deref() != source {
                    prove(state, ctx, digest, ingest.started().await?).await?;
                }
                state.authorize(ctx, &object, probe.clone(), None).await?;
                match ingest.started().await {
                    // Refused for its starter's credentials; ours passed: try again.
                    Err(storage::Error::Upstream(_)) => continue,
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                state.metrics.cache_hits.inc();
                return Ok(Some(Source::Ingest(ingest)));
            }
        }
    }
    Err(Error::transfer(format!(
        "{digest}: upstream refused {ATTEMPTS} times"
    )))
}

/// Makes sure a registry named in `?ns=` but not configured holds `digest` before its cached
/// copy (or a fetch from another registry) is served under its name: it must serve the bytes,
/// and they must match. Otherwise anyone could run a registry that says yes to every `HEAD`
/// and read whatever the pool cached from private registries. The proof is remembered for
/// `cacheTTL`; configured upstreams need none.
/// Whether the registry named in `?ns=` may be taken at its word for `object`: a configured
/// upstream, or one that served these bytes within `cacheTTL`.
fn proven(state: &AppState, ctx: &Ctx<'_>, object: &str, now: SystemTime) -> bool {
    ctx.up.configured
        || state
            .store
            .possesses(&ctx.up.ns, object, now, state.cache_ttl)
}

async fn prove(state: &AppState, ctx: &Ctx<'_>, digest: &Digest, size: Option<u64>) -> Result<()> {
    let object = digest.to_string();
    let now = SystemTime::now();
    if proven(state, ctx, &object, now) {
        return Ok(());
    }
    state.metrics.upstream_requests.inc();
    let url = ctx.up.blob_url(ctx.repo, digest);
    let resp = state
        .client
        .send(Method::GET, url, RequestOpts::new(ctx.auth, None))
        .await?;
    if !resp.status().is_success() {
        return Err(Error::upstream(refusal(resp).await));
    }
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::transfer(format!("reading upstream body: {e}")))?;
        got += chunk.len() as u64;
        if size.is_some_and(|s| got > s) {
            break;
        }
        state.limit.take(chunk.len()).await;
        hasher.update(&chunk);
    }
    let actual = Digest::from_sha256(&hasher.finalize());
    if actual != *digest || size.is_some_and(|s| got != s) {
        state.metrics.digest_mismatches.inc();
        return Err(Error::DigestMismatch {
            what: "blob",
            expected: object,
            actual: actual.to_string(),
        });
    }
    state.store.record_possession(&ctx.up.ns, &object, now)?;
    state.record_access(&ctx.up.ns, ctx.repo, &object, ctx.auth);
    Ok(())
}

pub async fn get(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    digest: Digest,
    req: &HttpRequest,
) -> Result<HttpResponse> {
    let range_text = req
        .headers()
        .get(RANGE)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let range = parse_range(range_text)?;
    let range_text = range_text.unwrap_or("");
    // HEAD never starts a fetch unless it must: for a blob we do not hold, upstream answers.
    let source = match locate(state, ctx, &digest, !ctx.head).await? {
        Some(source) => source,
        None => match head_upstream(state, ctx, &digest).await? {
            Some(resp) => return Ok(resp),
            // Upstream's HEAD did not say how long the blob is, and a HEAD must. The client
            // is about to GET it anyway: start the one fetch, and answer once the size is in.
            None => locate(state, ctx, &digest, true)
                .await?
                .ok_or_else(|| Error::transfer(format!("{digest}: fetch did not start")))?,
        },
    };
    if !ctx.head {
        state.ahead.requested(state, ctx, &digest);
    }
    match source {
        Source::Cached(file, entry) => {
            let span = span(range, entry.size, range_text)?;
            let share = share(state, ctx, Some(span.end + 1 - span.start)).await?;
            let body = share.wrap(file_stream(file, span.start, span.end + 1));
            let known = Known {
                ingest: None,
                size: entry.size,
            };
            Ok(respond_proven(state, ctx, req, &digest, known, span, body).await)
        }
        Source::Ingest(ingest) => {
            serve_ingest(state, ctx, req, &digest, &ingest, range, range_text).await
        }
    }
}

/// Where the digests of a blob being answered are kept (its ingest while it arrives, else the
/// store), and its size.
struct Known<'a> {
    ingest: Option<&'a Ingest>,
    size: u64,
}

/// [`respond`], with the proofs of the range's pieces whose digests are known ([`add_proofs`]).
async fn respond_proven(
    state: &AppState,
    ctx: &Ctx<'_>,
    req: &HttpRequest,
    digest: &Digest,
    known: Known<'_>,
    span: Span,
    body: impl Stream<Item = storage::Result<Bytes>> + 'static,
) -> HttpResponse {
    let (start, end) = (span.start, span.end);
    let mut resp = respond(state, ctx, digest, span, Some(known.size), body);
    add_proofs(state, ctx, req, digest, &known, start, end, &mut resp).await;
    resp
}

/// For an agent that names its piece size (`storage::pieces::PIECE_SIZE_HEADER`): the proofs
/// of the range's pieces whose digests are known already, so the agent need not ask
/// `/pieces` for them.
#[allow(clippy::too_many_arguments)]
async fn add_proofs(
    state: &AppState,
    ctx: &Ctx<'_>,
    req: &HttpRequest,
    digest: &Digest,
    known: &Known<'_>,
    start: u64,
    end: u64,
    resp: &mut HttpResponse,
) {
    use actix_web::http::header::HeaderName;
    use storage::pieces::{KEY_HEADER, PIECE_SIZE_HEADER, PROOFS_HEADER};
    if ctx.head || resp.status() != StatusCode::PARTIAL_CONTENT {
        return;
    }
    let Some(piece_size) = req
        .headers()
        .get(PIECE_SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let (ingest, size) = (known.ingest, known.size);
    let known = crate::pieces::known_proofs(state, digest, ingest, size, piece_size, start, end);
    let Some(proofs) = known.await else {
        return;
    };
    let key = hex::encode(state.piece_key.verifying_key().as_bytes());
    for (name, value) in [(PROOFS_HEADER, proofs.to_header()), (KEY_HEADER, key)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

async fn serve_ingest(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    req: &HttpRequest,
    digest: &Digest,
    ingest: &Arc<Ingest>,
    range: Option<RangeSpec>,
    range_text: &str,
) -> Result<HttpResponse> {
    let size = match ingest.started().await? {
        // A HEAD has no body to delimit: its Content-Length must be the blob's.
        None if ctx.head => Some(ingest.known_size().await?),
        size => size,
    };
    match size {
        Some(size) => {
            let span = span(range, size, range_text)?;
            let share = share(state, ctx, Some(span.end + 1 - span.start)).await?;
            let body = share.wrap(ingest.stream(span.start, Some(span.end + 1)));
            let known = Known {
                ingest: Some(ingest),
                size,
            };
            Ok(respond_proven(state, ctx, req, digest, known, span, body).await)
        }
        // Upstream did not say how long the blob is: stream it whole, chunked.
        None => {
            let share = share(state, ctx, None).await?;
            let body = metered(
                share.wrap(ingest.stream(0, None)),
                state.limit.clone(),
                state.metrics.served_bytes.clone(),
            );
            Ok(blob_headers(HttpResponse::Ok(), digest).streaming(body))
        }
    }
}

/// The response's share of `sendBuffers` (none for a HEAD), waiting up to `sendTimeout`.
async fn share(state: &AppState, ctx: &Ctx<'_>, len: Option<u64>) -> Result<Share> {
    if ctx.head {
        return Ok(Share::none());
    }
    Ok(state.budget.share(len, state.send_timeout).await?)
}

fn blob_headers(mut builder: HttpResponseBuilder, digest: &Digest) -> HttpResponseBuilder {
    builder
        .content_type("application/octet-stream")
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header(("Accept-Ranges", "bytes"));
    builder
}

fn respond(
    state: &AppState,
    ctx: &Ctx<'_>,
    digest: &Digest,
    Span {
        partial,
        start,
        end,
    }: Span,
    size: Option<u64>,
    body: impl Stream<Item = storage::Result<Bytes>> + 'static,
) -> HttpResponse {
    let len = if size == Some(0) { 0 } else { end + 1 - start };
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut builder = blob_headers(HttpResponse::build(status), digest);
    if partial {
        if let Some(size) = size {
            builder.insert_header(("Content-Range", format!("bytes {start}-{end}/{size}")));
        }
    }
    if ctx.head {
        let empty = futures_util::stream::empty::<storage::Result<Bytes>>();
        return builder.body(SizedStream::new(len, empty));
    }
    let body = metered(
        body,
        state.limit.clone(),
        state.metrics.served_bytes.clone(),
    );
    builder.body(SizedStream::new(len, body))
}

/// HEAD for a blob we do not hold: ask upstream, start nothing. `None`: upstream accepted
/// but gave no usable `Content-Length` (none, unparsable, or 0 for a blob that is not empty).
async fn head_upstream(
    state: &AppState,
    ctx: &Ctx<'_>,
    digest: &Digest,
) -> Result<Option<HttpResponse>> {
    state.metrics.upstream_requests.inc();
    let resp = state
        .client
        .send(
            Method::HEAD,
            ctx.up.blob_url(ctx.repo, digest),
            RequestOpts::new(ctx.auth, None),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(Error::upstream(refusal(resp).await));
    }
    state.record_access(&ctx.up.ns, ctx.repo, &digest.to_string(), ctx.auth);
    let len = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|&n| n > 0 || *digest == Digest::of(b""));
    let Some(len) = len else {
        tracing::debug!(%digest, "upstream HEAD without a Content-Length; fetching to learn it");
        return Ok(None);
    };
    // A length the cache could never hold is not passed on: agents size their downloads by it.
    let capacity = state.store.capacity();
    if capacity > 0 && len > capacity {
        return Err(storage::Error::TooLarge {
            size: len,
            capacity,
        }
        .into());
    }
    let empty = futures_util::stream::empty::<storage::Result<Bytes>>();
    let mut builder = blob_headers(HttpResponse::Ok(), digest);
    if !proven(state, ctx, &digest.to_string(), SystemTime::now()) {
        builder.insert_header((storage::access::UNPROVEN_HEADER, "1"));
    }
    Ok(Some(builder.body(SizedStream::new(len, empty))))
}

/// The one upstream fetch of a blob: write at offset, hash, announce progress, verify,
/// commit. Runs on its own task so a departing client does not cut it short.
async fn fetch(
    state: web::Data<AppState>,
    url: url::Url,
    auth: Option<HeaderValue>,
    mut writer: IngestWriter,
    (ns, repo): (String, String),
) {
    state.metrics.upstream_requests.inc();
    let digest = writer.digest().clone();
    let asked = Instant::now();
    let resp = match state
        .client
        .send(Method::GET, url, RequestOpts::new(auth.as_ref(), None))
        .await
    {
        Ok(resp) => resp,
        Err(e) => return writer.set(Progress::Failed(e.to_string())),
    };
    if !resp.status().is_success() {
        return writer.set(Progress::Refused(refusal(resp).await));
    }
    state.record_access(&ns, &repo, &digest.to_string(), auth.as_ref());
    let size = resp.content_length();
    // A blob that cannot fit is refused whole, before a byte is written. Room is made as bytes
    // arrive, not for the length upstream claims: a registry that claims a huge blob and sends
    // nothing must not empty the cache.
    let capacity = state.store.capacity();
    if let Some(size) = size.filter(|&s| capacity > 0 && s > capacity) {
        let e = storage::Error::TooLarge { size, capacity };
        tracing::warn!(%digest, error = %e, "blob not fetched");
        return writer.set(Progress::Failed(e.to_string()));
    }
    writer.set(Progress::Running { written: 0, size });
    // The next blob's request will take about as long to answer as this one did: started
    // that long before this one's last byte, it finds the link to upstream free as its bytes
    // come. Started only once this one was in, each blob of an image of 20 small layers came
    // after a 50-90 ms gap on the fan-out bed, and the origin's link idled a tenth of the time
    // (docs/benchmarks.md, "One window for a pool's blobs").
    let lead = asked.elapsed().min(MAX_LEAD);
    match copy_verified(&state, resp, &writer, size, (asked, lead)).await {
        Ok(written) => {
            let Some(temp) = writer.temp.take() else {
                return writer.set(Progress::Failed("temp file lost".into()));
            };
            match state.store.commit(&digest, temp, None, SystemTime::now()) {
                Ok(()) => {
                    // Bytes from `ns` that matched their digest: `ns` holds the blob.
                    let kept =
                        state
                            .store
                            .record_possession(&ns, &digest.to_string(), SystemTime::now());
                    if let Err(e) = kept {
                        tracing::warn!(%digest, error = %e, "could not record possession");
                    }
                    writer.set(Progress::Done { size: written })
                }
                Err(e) => writer.set(Progress::Failed(format!("storing {digest}: {e}"))),
            }
        }
        Err(e) => {
            if matches!(e, Error::DigestMismatch { .. } | Error::SizeMismatch { .. }) {
                state.metrics.digest_mismatches.inc();
            }
            tracing::warn!(%digest, error = %e, "blob ingest failed; nothing kept");
            writer.set(Progress::Failed(e.to_string()));
        }
    }
}

async fn copy_verified(
    state: &web::Data<AppState>,
    resp: reqwest::Response,
    writer: &IngestWriter,
    size: Option<u64>,
    (asked, lead): (Instant, Duration),
) -> Result<u64> {
    let mut stream = resp.bytes_stream();
    let mut hasher = Some(sha2::Sha256::new());
    let mut buf = BytesMut::new();
    let mut written = 0u64;
    let mut ending = false;
    loop {
        // What is left comes within `lead` at the rate so far (counted from the request, so a
        // blob's first bytes do not promise too much): the next blob may start.
        if let Some(size) = size.filter(|_| !ending) {
            let got = written + buf.len() as u64;
            let left = size.saturating_sub(got) as f64;
            let rate = got as f64 / asked.elapsed().as_secs_f64().max(1e-3);
            if left <= rate * lead.as_secs_f64() {
                ending = true;
                writer.ending();
                crate::ahead::fetch_next(state);
            }
        }
        // Flush what we have whenever upstream pauses, so readers see bytes early.
        let next = match stream.next().now_or_never() {
            Some(item) => item,
            None => {
                if !buf.is_empty() {
                    written = flush(state, writer, &mut buf, &mut hasher, written, size).await?;
                }
                stream.next().await
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Error::transfer(format!("reading upstream body: {e}")))?;
        state.limit.take(chunk.len()).await;
        state.metrics.upstream_bytes.inc_by(chunk.len() as u64);
        buf.extend_from_slice(&chunk);
        let capacity = state.store.capacity();
        if size.is_none() && capacity > 0 && written + buf.len() as u64 > capacity {
            return Err(storage::Error::TooLarge {
                size: written + buf.len() as u64,
                capacity,
            }
            .into());
        }
        if size.is_some_and(|s| written + buf.len() as u64 > s) {
            return Err(Error::SizeMismatch {
                expected: size.unwrap_or(0),
                got: written + buf.len() as u64,
            });
        }
        if buf.len() >= CHUNK {
            written = flush(state, writer, &mut buf, &mut hasher, written, size).await?;
        }
    }
    if !buf.is_empty() {
        written = flush(state, writer, &mut buf, &mut hasher, written, size).await?;
    }
    if let Some(expected) = size.filter(|s| *s != written) {
        return Err(Error::SizeMismatch {
            expected,
            got: written,
        });
    }
    let actual = Digest::from_sha256(&hasher.take().unwrap_or_default().finalize());
    if &actual != writer.digest() {
        return Err(Error::DigestMismatch {
            what: "blob",
            expected: writer.digest().to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(written)
}

/// Writes `buf` at `offset`, making room in the cache for it first (room follows the bytes
/// that arrive, not the length upstream claims).
async fn flush(
    state: &AppState,
    writer: &IngestWriter,
    buf: &mut BytesMut,
    hasher: &mut Option<sha2::Sha256>,
    offset: u64,
    size: Option<u64>,
) -> Result<u64> {
    state
        .store
        .make_room(offset + buf.len() as u64, SystemTime::now())?;
    let data = buf.split().freeze();
    let file = writer.file.clone();
    let mut h = hasher.take().unwrap_or_default();
    let len = data.len() as u64;
    let h = tokio::task::spawn_blocking(move || -> std::io::Result<sha2::Sha256> {
        file.write_all_at(&data, offset)?;
        h.update(&data);
        Ok(h)
    })
    .await
    .map_err(|e| Error::transfer(e.to_string()))??;
    *hasher = Some(h);
    writer.set(Progress::Running {
        written: offset + len,
        size,
    });
    Ok(offset + len)
}
