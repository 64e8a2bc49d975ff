//! The registry API containerd talks to (hosts.toml mirror, for the registry itself or for the
//! distributed name the admission webhook wrote into the image). Manifests and the `/v2/` ping
//! go to the mirror as they are; blobs come from the local cache or a download, after the
//! mirror confirmed this requester may read them.

use crate::download::{Download, TaskSpec};
use crate::error::{Error, Result};
use crate::state::AgentState;
use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use std::time::SystemTime;
use storage::body::{file_stream, metered, parse_range, span, RateLimit, Share, Span};
use storage::reference::{split_path, validate_name, Digest, Reference};
use storage::request::{joined_accept, preflight, read_limited};
use storage::{Access, UpstreamReply};
use tracing::Instrument;

const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Headers passed back from the mirror as they are.
const RELAYED: [&str; 5] = [
    "content-type",
    "docker-content-digest",
    "www-authenticate",
    "docker-distribution-api-version",
    "content-range",
];

pub async fn api(req: HttpRequest, state: web::Data<AgentState>) -> Result<HttpResponse> {
    let (head, ns) = preflight(
        req.method().as_str(),
        req.query_string(),
        serve::header_pairs(&req),
    )?;
    let ns = ns.filter(|ns| {
        ns.len() <= 253
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    });
    // An image the admission webhook rewrote names its registry's distributed host; the
    // mirror, the access grants and the cache know the registry itself.
    let ns = ns.map(|ns| {
        let names = state.cfg.distributed_names().ok();
        names.and_then(|n| n.registry(&ns)).unwrap_or(ns)
    });
    let tail = req.match_info().get("tail").unwrap_or("");
    if tail.is_empty() {
        return Ok(relay(&state, &req, "/v2/", ns.as_deref()).await?.0);
    }
    let (repo, kind, reference) = split_path(tail)?;
    // CRI-O cannot send `?ns=`: its mirror location (`poolcast hosts --runtime crio`) puts the
    // registry's distributed name first in the path instead.
    let (ns, repo) = match ns {
        Some(ns) => (Some(ns), repo),
        None => match state
            .cfg
            .distributed_names()
            .ok()
            .and_then(|n| n.split_repo(repo))
        {
            Some((ns, repo)) => (Some(ns), repo),
            None => (None, repo),
        },
    };
    validate_name(repo)?;
    match kind {
        "manifests" => {
            Reference::parse(reference)?;
            let (r, body) = relay(
                &state,
                &req,
                &format!("/v2/{repo}/manifests/{reference}"),
                ns.as_deref(),
            )
            .await?;
            if let Some(body) = body.filter(|_| r.status() == StatusCode::OK) {
                let now = std::time::Instant::now();
                let ctx = AheadCtx {
                    auth: req.headers().get(AUTHORIZATION).cloned(),
                    trace: serve::trace::Parent::current(),
                    asked: now,
                };
                state
                    .ahead
                    .lock()
                    .manifest(ns.as_deref(), repo, &body, ctx, now);
            }
            Ok(r)
        }
        "blobs" => {
            let digest = Digest::parse(reference)?;
            blob(
                &state,
                &req,
                BlobRequest {
                    ns,
                    repo: repo.to_string(),
                    digest,
                    head,
                },
            )
            .await
        }
        _ => Err(storage::Error::Unsupported(format!("/v2/{repo}/{kind}")).into()),
    }
}

fn unreachable(url: &url::Url, e: reqwest::Error) -> Error {
    Error::MirrorUnreachable {
        url: format!("{}{}", url.origin().ascii_serialization(), url.path()),
        message: e.to_string(),
    }
}

/// Passes a request to the mirror with containerd's `Authorization` and `Accept`, and its
/// answer back (with its body, for a GET).
async fn relay(
    state: &AgentState,
    req: &HttpRequest,
    path: &str,
    ns: Option<&str>,
) -> Result<(HttpResponse, Option<Bytes>)> {
    let url = state.mirror_url(path, ns, &[]);
    let method = if req.method() == Method::HEAD {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let mut out = crate::trace::traced(state.http.request(method, url.clone()));
    if let Some(v) = req.headers().get("authorization") {
        out = out.header("authorization", v.as_bytes());
    }
    if let Some(v) = joined_accept(req.headers().get_all(ACCEPT).map(HeaderValue::as_bytes)) {
        out = out.header("accept", v);
    }
    let resp = out.send().await.map_err(|e| unreachable(&url, e))?;
    let mut builder = HttpResponse::build(
        StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
    );
    copy_headers(&mut builder, resp.headers());
    if req.method() == Method::HEAD {
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let empty = futures_util::stream::empty::<storage::Result<Bytes>>();
        return Ok((
            builder.body(SizedStream::new(len.unwrap_or(0), empty)),
            None,
        ));
    }
    let body = Bytes::from(read_limited(resp, MAX_MANIFEST).await?);
    Ok((builder.body(body.clone()), Some(body)))
}

fn copy_headers(builder: &mut HttpResponseBuilder, headers: &reqwest::header::HeaderMap) {
    for name in RELAYED {
        if let Some(v) = headers
            .get(name)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            builder.insert_header((name, v));
        }
    }
}

struct BlobRequest {
    ns: Option<String>,
    repo: String,
    digest: Digest,
    head: bool,
}

impl BlobRequest {
    /// The same blob at the mirror, under the same registry.
    fn mirror_url(&self, state: &AgentState) -> url::Url {
        state.mirror_url(
            &format!("/v2/{}/blobs/{}", self.repo, self.digest),
            self.ns.as_deref(),
            &[],
        )
    }
}

async fn blob(
    state: &web::Data<AgentState>,
    req: &HttpRequest,
    b: BlobRequest,
) -> Result<HttpResponse> {
    let auth = req.headers().get(AUTHORIZATION);
    let range_text = req
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let range = parse_range(range_text)?;
    let range_text = range_text.unwrap_or("");
    tracing::debug!(digest = %b.digest, "blob requested");
    let (size, proven) = check_access(state, &b, auth).await?;
    if !proven && !b.head {
        return relay_blob(state, req, &b, auth).await;
    }
    if !b.head {
        state
            .ahead
            .lock()
            .requested(b.ns.as_deref(), &b.repo, &b.digest, |ctx| {
                ctx.trace = serve::trace::Parent::current();
                ctx.asked = std::time::Instant::now();
            });
    }
    let builder = |span: Span, size: u64| {
        let status = if span.partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut r = HttpResponse::build(status);
        r.content_type("application/octet-stream")
            .insert_header(("Docker-Content-Digest", b.digest.to_string()))
            .insert_header(("Accept-Ranges", "bytes"));
        if span.partial {
            let (start, end) = (span.start, span.end);
            r.insert_header(("Content-Range", format!("bytes {start}-{end}/{size}")));
        }
        r
    };
    let held = match proven {
        true => {
            state
                .store
                .open_verified(&b.digest, SystemTime::now())
                .await?
        }
        false => None,
    };
    if let Some((file, entry)) = held {
        let span = span(range, entry.size, range_text)?;
        let r = builder(span, entry.size);
        let share = share(state, b.head, span).await?;
        return from_cache(state, &b, (file, entry), r, span, share);
    }
    let span = span(range, size, range_text)?;
    if b.head {
        let r = builder(span, size);
        let body = futures_util::stream::empty();
        return Ok(respond(state, r, (span, size), true, body));
    }
    let spec = TaskSpec {
        digest: b.digest.clone(),
        size,
        ns: b.ns.clone(),
        repo: b.repo.clone(),
        auth: auth.cloned(),
    };
    let share = share(state, false, span).await?;
    let Some(task) = Download::get_or_start(state, spec)? else {
        // Its download ended since the look above (it was started ahead of this client):
        // the stored copy.
        let held = state
            .store
            .open_verified(&b.digest, SystemTime::now())
            .await?
            .ok_or_else(|| crate::Error::Download {
                digest: b.digest.to_string(),
                message: "stored a moment ago and gone from the cache already".into(),
            })?;
        return from_cache(state, &b, held, builder(span, size), span, share);
    };
    // After the download's start: the swarm sees it before it looks at working ahead.
    state.swarm.send(crate::p2p::Input::WorkAhead);
    let body = share.wrap(task.ingest.stream(span.start, Some(span.end + 1)));
    Ok(respond(
        state,
        builder(span, size),
        (span, size),
        false,
        body,
    ))
}

/// What the agent keeps of an image's client for the blobs it starts ahead of it
/// ([`storage::ahead`]).
#[derive(Clone)]
pub struct AheadCtx {
    /// The credentials the client sent with the manifest.
    pub auth: Option<HeaderValue>,
    /// The trace of the client's latest request for the image: the blob's work joins it.
    pub trace: serve::trace::Parent,
    /// When the client last asked for the image's manifest or one of its blobs.
    pub asked: std::time::Instant,
}

/// A client that asked for nothing of an image for this long is taken to have stopped pulling
/// it (failed, or killed): its next blobs no longer hold back the mirror's help with other
/// blobs' tails (`swarm::Node::set_more`). skopeo asks for each blob once the one before it
/// is in, which a blob of a few GiB over a thin link can take longer than this; help then
/// comes sooner, as it did before.
pub const PULLING: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the download of a blob no client asked for yet, as [`storage::ahead`] chose it:
/// after the mirror's access check with the credentials the client sent for the image's
/// manifest, unless it is held or downloading already. Failures are only logged: the
/// client's own request, if it comes, starts afresh.
pub async fn work_ahead(state: std::sync::Arc<AgentState>, next: storage::ahead::Next<AheadCtx>) {
    let span = next.ctx.trace.ahead_span(&next.digest.to_string());
    work_ahead_in(web::Data::from(state), next)
        .instrument(span)
        .await
}

async fn work_ahead_in(state: web::Data<AgentState>, next: storage::ahead::Next<AheadCtx>) {
    let now = SystemTime::now();
    let held = state.store.holds(&next.digest, now);
    if held || state.downloads.lock().contains_key(next.digest.hex()) {
        return;
    }
    let b = BlobRequest {
        ns: next.ns,
        repo: next.repo,
        digest: next.digest,
        head: false,
    };
    let auth = next.ctx.auth;
    match check_access(&state, &b, auth.as_ref()).await {
        Ok((size, true)) => {
            let spec = TaskSpec {
                digest: b.digest.clone(),
                size,
                ns: b.ns,
                repo: b.repo,
                auth,
            };
            match Download::get_or_start(&state, spec) {
                Ok(Some(_)) => {
                    state.metrics.started_ahead.inc();
                }
                // Stored meanwhile: nothing to start.
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(digest = %b.digest, error = %e, "blob not started ahead");
                }
            }
        }
        // Served only through the mirror, when asked for (see `relay_blob`).
        Ok((_, false)) => {}
        Err(e) => tracing::debug!(digest = %b.digest, error = %e, "blob not started ahead"),
    }
}

/// Serves `span` of a blob held whole in the cache, once the access check passed (a refused
/// request must not keep a blob from eviction).
fn from_cache(
    state: &AgentState,
    b: &BlobRequest,
    (file, entry): (std::fs::File, storage::store::BlobEntry),
    response: HttpResponseBuilder,
    span: Span,
    share: Share,
) -> Result<HttpResponse> {
    state.store.touch(&b.digest, &entry, SystemTime::now())?;
    state.metrics.cache_hits.inc();
    let body = share.wrap(file_stream(file, span.start, span.end + 1));
    if !b.head {
        state.swarm.send(crate::p2p::Input::WorkAhead);
    }
    Ok(respond(state, response, (span, entry.size), b.head, body))
}

/// A blob the mirror let this requester read on the word of a registry it cannot vouch for
/// (see [`storage::access::UNPROVEN_HEADER`]): streamed through the mirror, which fetches it
/// from that registry and checks its digest, never served from this node's cache or its peers.
async fn relay_blob(
    state: &web::Data<AgentState>,
    req: &HttpRequest,
    b: &BlobRequest,
    auth: Option<&HeaderValue>,
) -> Result<HttpResponse> {
    let url = b.mirror_url(state);
    let mut out = crate::trace::traced(state.http.get(url.clone()));
    if let Some(a) = auth {
        out = out.header("authorization", a.as_bytes());
    }
    if let Some(r) = req.headers().get("range") {
        out = out.header("range", r.as_bytes());
    }
    let resp = out.send().await.map_err(|e| unreachable(&url, e))?;
    let mut builder = HttpResponse::build(
        StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
    );
    copy_headers(&mut builder, resp.headers());
    if !resp.status().is_success() {
        let body = read_limited(resp, MAX_MANIFEST).await?;
        return Ok(builder.body(body));
    }
    builder.insert_header(("Accept-Ranges", "bytes"));
    let len = resp.content_length();
    let limits = state.clone();
    let from_mirror = futures_util::StreamExt::then(resp.bytes_stream(), move |chunk| {
        let limits = limits.clone();
        async move {
            let limits = &limits.limits;
            let chunk =
                chunk.map_err(|e| storage::Error::Transfer(format!("from the mirror: {e}")))?;
            // Limited where it comes in, like every download.
            limits.total.take(chunk.len()).await;
            limits.down.take(chunk.len()).await;
            Ok(chunk)
        }
    });
    let unlimited = std::sync::Arc::new(RateLimit::new(0));
    let body = metered(from_mirror, unlimited, state.metrics.served_bytes.clone());
    Ok(match len {
        Some(n) => builder.body(SizedStream::new(n, body)),
        None => builder.streaming(body),
    })
}

/// The response's share of `sendBuffers` (none for a HEAD), waiting up to `sendTimeout`.
async fn share(state: &AgentState, head: bool, span: Span) -> Result<Share> {
    if head {
        return Ok(Share::none());
    }
    let len = span.end + 1 - span.start;
    Ok(state
        .budget
        .share(Some(len), state.cfg.send_timeout.0)
        .await?)
}

fn respond(
    state: &AgentState,
    mut builder: HttpResponseBuilder,
    (span, size): (Span, u64),
    head: bool,
    body: impl futures_util::Stream<Item = storage::Result<Bytes>> + 'static,
) -> HttpResponse {
    let len = if size == 0 {
        0
    } else {
        span.end + 1 - span.start
    };
    if head {
        let empty = futures_util::stream::empty::<storage::Result<Bytes>>();
        return builder.body(SizedStream::new(len, empty));
    }
    // Downloads are limited where they come in; serving containerd is local.
    let unlimited = std::sync::Arc::new(RateLimit::new(0));
    builder.body(SizedStream::new(
        len,
        metered(body, unlimited, state.metrics.served_bytes.clone()),
    ))
}

/// Asks the mirror whether this requester may read the blob (the mirror asks upstream with
/// the same credentials). A yes is kept in the cache index (so it survives a restart) and
/// trusted for `authCacheTTL`: a held blob is then served with no network at all. When the
/// mirror cannot be reached, a yes up to `cacheTTL` old still serves what this node holds, so
/// a pool keeps running the images it has. Returns the blob's size.
async fn check_access(
    state: &AgentState,
    b: &BlobRequest,
    auth: Option<&HeaderValue>,
) -> Result<(u64, bool)> {
    let object = b.digest.to_string();
    let access = Access {
        ns: b.ns.as_deref().unwrap_or(""),
        repo: &b.repo,
        object: &object,
    };
    let auth = auth.map(HeaderValue::as_bytes);
    let now = SystemTime::now();
    let granted_within = |within| state.store.granted(&access, auth, now, within);
    let held = state
        .store
        .entry(&b.digest, now)
        .ok()
        .flatten()
        .filter(|e| e.media_type.is_none())
        .map(|e| e.size);
    let size = held.or_else(|| state.sizes.lock().get(b.digest.hex()).copied());
    if let Some(size) = size.filter(|_| granted_within(state.cfg.auth_cache_ttl.0)) {
        return Ok((size, true));
    }
    let url = b.mirror_url(state);
    let mut head = crate::trace::traced(state.http.head(url.clone()));
    if let Some(a) = auth {
        head = head.header("authorization", a);
    }
    match head.send().await {
        Ok(resp) if resp.status().is_success() => {
            // The header, not `content_length()`: for a HEAD that is the (empty) body's length.
            let size = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .ok_or_else(|| Error::MirrorUnreachable {
                    url: url.to_string(),
                    message: "no Content-Length on HEAD".into(),
                })?;
            let proven = !resp
                .headers()
                .contains_key(storage::access::UNPROVEN_HEADER);
            if !proven {
                return Ok((size, false));
            }
            if let Err(e) = state.store.grant(&access, auth, now) {
                tracing::warn!(error = %e, "could not record access");
            }
            let mut sizes = state.sizes.lock();
            if sizes.len() > 100_000 {
                sizes.clear();
            }
            sizes.insert(b.digest.hex().to_string(), size);
            Ok((size, true))
        }
        Ok(resp) => {
            let reply = UpstreamReply {
                status: resp.status().as_u16(),
                www_authenticate: resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                content_type: None,
                body: Bytes::new(),
            };
            Err(storage::Error::Upstream(reply).into())
        }
        Err(e) => match held {
            Some(size) if granted_within(state.cfg.cache_ttl.0) => {
                tracing::warn!(digest = %b.digest, error = %e, "mirror unreachable; serving a held blob to a requester it served before");
                Ok((size, true))
            }
            _ => Err(unreachable(&url, e)),
        },
    }
}
