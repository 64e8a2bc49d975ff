//! The HTTP surface: the OCI distribution pull API, `/healthz` and `/metrics`, and the state
//! every handler shares. Requests are validated here before anything reaches the cache or an
//! upstream URL.

use crate::blobs;
use crate::error::{Error, Result};
use crate::manifests;
use crate::metrics::Metrics;
use crate::upstream::{refusal, RequestOpts, Upstream, UpstreamClient, UpstreamRoots};
use actix_web::http::header::{HeaderValue, AUTHORIZATION};
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::MirrorConfig;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::body::{RateLimit, SendBudget};
use storage::ingest::Ingests;
use storage::reference::{split_path, validate_name, Digest, Reference};
use storage::request::preflight;
use storage::{Access, BlobStore};

/// How much response body actix gathers before writing to the socket. Its 32 KiB default
/// costs a third of hot-blob throughput; 2 MiB with 1 MiB file chunks matches nginx's
/// sendfile (docs/benchmarks.md), at up to ~3 MiB of buffer per connection sending a blob.
const WRITE_BUFFER: usize = 2 << 20;

/// Upstreams that change at run time: ACR instances' domains, resolved by id (`acr`).
pub type DynamicUpstreams = Arc<parking_lot::RwLock<Vec<Upstream>>>;

pub struct AppState {
    pub upstreams: Vec<Upstream>,
    pub acr: DynamicUpstreams,
    pub allow_any_registry: bool,
    pub client: UpstreamClient,
    pub store: Arc<BlobStore>,
    pub ingests: Arc<Ingests>,
    pub limit: Arc<RateLimit>,
    pub metrics: Arc<Metrics>,
    pub cache_ttl: Duration,
    pub auth_ttl: Duration,
    pub manifest_ttl: Duration,
    pub pieces: crate::pieces::PieceMemo,
    /// The images the pool pulls, to fetch the next blob before it is asked for.
    pub ahead: crate::ahead::Ahead,
    /// What every blob body draws from before it reads a chunk (`sendBuffers`: by default 85
    /// whole blobs, or more ranges, at once, however many connections are open and however
    /// they read).
    pub budget: SendBudget,
    max_connections: usize,
    /// `sendTimeout`: also how long a response waits for its share of `sendBuffers`.
    pub send_timeout: Duration,
    /// Signs piece digests (`/pieces`, signed form): kept as `piece-key` in the cache folder.
    pub piece_key: ed25519_dalek::SigningKey,
}

/// The parts of a registry request every handler needs.
pub struct Ctx<'a> {
    pub up: Upstream,
    pub repo: &'a str,
    pub auth: Option<&'a HeaderValue>,
    pub head: bool,
}

impl AppState {
    /// The upstream for `?ns=`; without it, the first configured one (or the first ACR one).
    fn upstream_for(&self, ns: Option<&str>) -> Result<Upstream> {
        let Some(ns) = ns.map(str::to_ascii_lowercase) else {
            return self
                .upstreams
                .first()
                .cloned()
                .or_else(|| self.acr.read().first().cloned())
                .ok_or_else(|| Error::RegistryUnknown("(none: requests must carry ?ns=)".into()));
        };
        if let Some(up) = self.upstreams.iter().find(|u| u.ns == ns) {
            return Ok(up.clone());
        }
        if let Some(up) = self.acr.read().iter().find(|u| u.ns == ns) {
            return Ok(up.clone());
        }
        match dynamic_upstream(&ns).filter(|_| self.allow_any_registry) {
            Some(up) => Ok(up),
            None => Err(Error::RegistryUnknown(ns.chars().take(80).collect())),
        }
    }

    /// Remembers that upstream served `object` from `repo` to this requester.
    pub fn record_access(&self, ns: &str, repo: &str, object: &str, auth: Option<&HeaderValue>) {
        let access = Access { ns, repo, object };
        let auth = auth.map(HeaderValue::as_bytes);
        if let Err(e) = self.store.grant(&access, auth, SystemTime::now()) {
            tracing::warn!(error = %e, "could not record access");
        }
    }

    /// Whether upstream served `object` from the repository to this requester (or to anyone:
    /// public content) within `within`.
    pub fn access_known(&self, ctx: &Ctx<'_>, object: &str, within: Duration) -> bool {
        let access = Access {
            ns: &ctx.up.ns,
            repo: ctx.repo,
            object,
        };
        let auth = ctx.auth.map(HeaderValue::as_bytes);
        self.store.granted(&access, auth, SystemTime::now(), within)
    }

    /// Checks with upstream that the requester may read what `probe` names, before serving it
    /// from cache. Answers are remembered for `authCacheTTL`; when upstream cannot be reached,
    /// an answer up to `cacheTTL` old is trusted so cached images still pull.
    pub async fn authorize(
        &self,
        ctx: &Ctx<'_>,
        object: &str,
        probe: url::Url,
        accept: Option<&HeaderValue>,
    ) -> Result<()> {
        if self.access_known(ctx, object, self.auth_ttl) {
            return Ok(());
        }
        self.metrics.upstream_requests.inc();
        let outcome = self
            .client
            .send(
                reqwest::Method::HEAD,
                probe,
                RequestOpts::new(ctx.auth, accept),
            )
            .await;
        let failure = match outcome {
            Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                self.record_access(&ctx.up.ns, ctx.repo, object, ctx.auth);
                return Ok(());
            }
            Ok(resp) if resp.status().is_server_error() => Error::upstream(refusal(resp).await),
            Ok(resp) => return Err(Error::upstream(refusal(resp).await)),
            Err(e) => e,
        };
        if self.access_known(ctx, object, self.cache_ttl) {
            tracing::warn!(repo = ctx.repo, error = %failure, "upstream unavailable; trusting an earlier access check");
            return Ok(());
        }
        Err(failure)
    }
}

/// The upstream for a `?ns=` host that is not configured (`allowAnyRegistry`): `https://ns`,
/// when `ns` (lowercase) is a plain `host[:port]`.
fn dynamic_upstream(ns: &str) -> Option<Upstream> {
    let valid_host = !ns.is_empty()
        && ns.len() <= 253
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !valid_host {
        return None;
    }
    let host = if ns == "docker.io" {
        "registry-1.docker.io"
    } else {
        ns
    };
    let base = url::Url::parse(&format!("https://{host}")).ok()?;
    // Nothing in `ns` may move the URL off the host it names (userinfo, a path).
    let named = base.host_str()? == host.split(':').next()?;
    named.then(|| Upstream {
        ns: ns.to_string(),
        base,
        configured: false,
    })
}

/// The mirror server: `new(config)` then `run(listener, shutdown)`.
pub struct MirrorServer {
    state: web::Data<AppState>,
    // A cache without `cacheHostPath` lives as long as the server.
    _scratch: Option<tempfile::TempDir>,
}

impl MirrorServer {
    pub fn new(config: &MirrorConfig, metrics: Arc<Metrics>) -> Result<Self> {
        // Before the cache: a CA file that cannot be used stops start-up with nothing opened.
        let roots = if config.upstream_ca_file.is_empty() {
            UpstreamRoots::default()
        } else {
            let roots = UpstreamRoots::load(&config.upstream_ca_file)?;
            tracing::info!(file = %config.upstream_ca_file, certificates = roots.len(), "upstream CA file read");
            roots
        };
        let (root, scratch) = if config.cache_host_path.is_empty() {
            let dir = tempfile::Builder::new()
                .prefix("poolcast-mirror-")
                .tempdir()?;
            (dir.path().to_path_buf(), Some(dir))
        } else {
            (std::path::PathBuf::from(&config.cache_host_path), None)
        };
        let store = BlobStore::open(&root, config.cache_ttl.0, config.capacity.0)?
            .with_verify_interval(config.verify_interval.0);
        metrics.cache_bytes.set(store.total_bytes() as i64);
        let piece_key = storage::pieces::load_or_make_key(&root.join("piece-key"))?;
        tracing::info!(cache = %root.display(), bytes = store.total_bytes(), "cache opened");
        let state = AppState {
            upstreams: config.upstreams.iter().map(Upstream::from_spec).collect(),
            acr: DynamicUpstreams::default(),
            allow_any_registry: config.allow_any_registry,
            client: UpstreamClient::new(
                config.connect_timeout.0,
                config.oss_internet_accelerate,
                &roots,
            )?
            .counting_unaccelerated(metrics.oss_unaccelerated.clone())
            .with_timeout(config.upstream_timeout.0),
            store: Arc::new(store),
            ingests: Arc::new(Ingests::default()),
            limit: Arc::new(RateLimit::new(config.ratelimit.0)),
            metrics,
            cache_ttl: config.cache_ttl.0,
            auth_ttl: config.auth_cache_ttl.0,
            manifest_ttl: config.manifest_ttl.0,
            pieces: Default::default(),
            ahead: Default::default(),
            budget: SendBudget::new(config.send_buffers.0),
            max_connections: config.max_connections as usize,
            send_timeout: config.send_timeout.0,
            piece_key,
        };
        Ok(MirrorServer {
            state: web::Data::new(state),
            _scratch: scratch,
        })
    }

    /// The upstreams of ACR instances named by id: whoever resolves them sets them here, and
    /// requests see the new set at once.
    pub fn acr_upstreams(&self) -> DynamicUpstreams {
        self.state.acr.clone()
    }

    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let gc = tokio::spawn(gc_loop(self.state.clone()));
        let state = self.state.clone();
        let routes = move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .route("/metrics", web::get().to(metrics_text))
                .route("/v2", web::to(registry_api))
                .route("/v2/{tail:.*}", web::to(registry_api));
        };
        let options = serve::Options {
            shutdown_secs: 10,
            write_buffer: Some(WRITE_BUFFER),
            tls: None,
            max_connections: self.state.max_connections,
            send_timeout: Some(self.state.send_timeout),
        };
        let result = serve::until(serve::start(listener, routes, options)?, shutdown).await;
        gc.abort();
        result
    }
}

async fn gc_loop(state: web::Data<AppState>) {
    let every = (state.cache_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.gc(SystemTime::now())).await {
            Ok(Ok(report)) => {
                state
                    .metrics
                    .evictions
                    .inc_by(report.expired + report.evicted);
                if report.expired + report.evicted > 0 {
                    tracing::info!(?report, "cache gc");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cache gc failed"),
            Err(e) => tracing::warn!(error = %e, "cache gc panicked"),
        }
        state
            .metrics
            .cache_bytes
            .set(state.store.total_bytes() as i64);
    }
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.ingests.set(state.ingests.len() as i64);
    state
        .metrics
        .cache_bytes
        .set(state.store.total_bytes() as i64);
    serve::metrics(state.metrics.render())
}

/// Every `/v2/...` request: validate, then dispatch to ping, manifests or blobs.
async fn registry_api(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let (head, ns) = preflight(
        req.method().as_str(),
        req.query_string(),
        serve::header_pairs(&req),
    )?;
    let up = state.upstream_for(ns.as_deref())?;
    let auth = req.headers().get(AUTHORIZATION);
    let tail = req.match_info().get("tail").unwrap_or("");
    if tail.is_empty() {
        return Ok(ping(&state, &up, auth).await);
    }
    let (repo, kind, reference) = split_path(tail)?;
    validate_name(repo)?;
    let ctx = Ctx {
        up,
        repo,
        auth,
        head,
    };
    match kind {
        "manifests" => manifests::get(&state, &ctx, Reference::parse(reference)?, &req).await,
        "pieces" => crate::pieces::get(&state, &ctx, Digest::parse(reference)?, &req).await,
        _ => blobs::get(&state, &ctx, Digest::parse(reference)?, &req).await,
    }
}

/// `GET /v2/`: relays upstream's answer so clients learn its auth challenge; when upstream
/// cannot be reached, says yes so cached images still pull.
async fn ping(state: &AppState, up: &Upstream, auth: Option<&HeaderValue>) -> HttpResponse {
    use actix_web::ResponseError;
    state.metrics.upstream_requests.inc();
    let ok = || {
        HttpResponse::Ok()
            .insert_header(("Docker-Distribution-API-Version", "registry/2.0"))
            .content_type("application/json")
            .body("{}")
    };
    match state
        .client
        .send(
            reqwest::Method::GET,
            up.ping_url(),
            RequestOpts::new(auth, None),
        )
        .await
    {
        Ok(resp) if resp.status().as_u16() == 401 => {
            Error::upstream(refusal(resp).await).error_response()
        }
        Ok(_) => ok(),
        Err(e) => {
            tracing::warn!(error = %e, "upstream ping failed; answering for it");
            ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_dynamic_upstream_is_https_to_the_named_host() {
        let up = dynamic_upstream("quay.io").expect("a host");
        assert_eq!(up.base.as_str(), "https://quay.io/");
        assert!(!up.configured);
        assert_eq!(
            dynamic_upstream("docker.io").map(|u| u.base.to_string()),
            Some("https://registry-1.docker.io/".into())
        );
        for bad in ["", "a/b", "user@host", "host?x", "h:99999999", "ünï.com"] {
            assert!(dynamic_upstream(bad).is_none(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_ns_is_a_host_or_refused(ns in "\\PC{0,300}") {
            if let Some(up) = dynamic_upstream(&ns) {
                prop_assert_eq!(up.base.scheme(), "https");
                prop_assert_eq!(up.base.path(), "/");
                prop_assert!(up.base.query().is_none() && up.base.username().is_empty());
            }
        }
    }
}
