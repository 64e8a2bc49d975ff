//! The HTTP surface: `/api/v2/{join,fresh}` and `/api/v1/{heartbeat,leave}` (signed v2 with the
//! key of the sender's pool, `nodepool::signed`), `/healthz` and `/metrics`, and
//! the sweep that drops silent peers, lapsed members and lapsed leases when nobody is asking.
//!
//! A request is checked in order of cost: the header's form and time, then the body (at most
//! [`MAX_BODY_BYTES`]), then the MAC with the named pool's key (derived from the release
//! secret), then its nonce against the replay cache, and only then is the JSON parsed.

use crate::api::{HeartbeatRequest, LeaveRequest, MAX_BODY_BYTES};
use crate::api_v2::{FreshRequest, FreshResponse, JoinRequest, MAX_WAITING_PER_BLOB};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::{PeerRegistry, WaitKey};
use crate::waiters::Waiters;
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::signed::{unix_millis_now, ReplayCache, RequestParts, SignedHeader};
use nodepool::{PoolSecret, SchedulerConfig, AUTH_HEADER};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time decisions use: tokio's clock, so tests with paused time drive TTLs.
pub(crate) fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How long a v2 fresh request waits for a lease before it is answered empty.
pub const LONG_POLL: Duration = Duration::from_secs(2);

pub struct AppState {
    /// Locked before `waiters` whenever both are.
    pub registry: Mutex<PeerRegistry>,
    waiters: Mutex<Waiters>,
    pub metrics: Arc<Metrics>,
    /// The release secret, from which each pool's key derives; requests are not checked when
    /// it is off (no secret configured).
    secret: PoolSecret,
    /// Nonces of accepted requests (see `nodepool::signed::ReplayCache`).
    replays: Mutex<ReplayCache>,
    sweep_every: Duration,
    /// How long a grant whose request went away is kept for the peer's next request.
    keep_grants: Duration,
    /// What agents report beyond decisions (registry port, cache use, bytes by source).
    pub nodes: Mutex<crate::nodes::NodeBook>,
    pub jobs: Mutex<crate::preheat::Jobs>,
    /// The dashboard at `/` and its JSON under `/api/` (off unless `dashboard: true`).
    pub dashboard: bool,
    /// What the pools' mirrors last said they fetched from origin (read only while the
    /// dashboard is on, by a task of its own).
    pub(crate) mirror_readings: Mutex<crate::dashboard::origin::Readings>,
    pub pools: Vec<nodepool::PoolSpec>,
}

/// Open connections served: two per agent of a 1,000-node group of pools, four times over.
/// More are answered `503` and closed.
const MAX_CONNECTIONS: usize = 8192;
/// An agent that takes no data for this long is cut (its answers are a few KiB).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Nonces remembered: at 20,000 signed requests a second (1,000 agents each joining and asking
/// for fresh pieces of several blobs at once) the cache still spans six seconds, for about
/// 10 MiB.
const REPLAY_CACHE: usize = 1 << 17;

impl AppState {
    pub fn new(config: &SchedulerConfig, metrics: Arc<Metrics>) -> Result<Self> {
        config.validate()?;
        let registry = PeerRegistry::from_config(config, metrics.clone(), clock())?;
        Ok(AppState {
            registry: Mutex::new(registry),
            waiters: Mutex::new(Waiters::default()),
            metrics,
            secret: config.pool_secret(),
            replays: Mutex::new(ReplayCache::new(REPLAY_CACHE)),
            sweep_every: (config.peer_ttl.0 / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(5)),
            keep_grants: config.source_assign_timeout.0,
            nodes: Mutex::default(),
            jobs: Mutex::default(),
            dashboard: config.dashboard,
            mirror_readings: Mutex::default(),
            pools: config.edge_node_pools.clone(),
        })
    }

    /// Runs `f` on the registry, then hands the v2 grants it made to their requests.
    fn with_registry<T>(&self, f: impl FnOnce(&mut PeerRegistry) -> T) -> T {
        let mut registry = self.registry.lock();
        let out = f(&mut registry);
        let mut waiters = self.waiters.lock();
        self.deliver(&mut registry, &mut waiters);
        out
    }

    fn deliver(&self, registry: &mut PeerRegistry, waiters: &mut Waiters) {
        let now = clock();
        for d in registry.take_deliveries() {
            waiters.deliver(d, now);
        }
        self.metrics.fresh_waiting.set(waiters.waiting() as i64);
    }

    /// Reads the body (at most [`MAX_BODY_BYTES`]) and, when a secret is set, checks the
    /// request's signature; returns the pool it was signed for, and the body.
    pub(crate) async fn authenticate(
        &self,
        req: &HttpRequest,
        body: web::Payload,
    ) -> Result<(Option<String>, web::Bytes)> {
        if self.secret.is_off() {
            return Ok((None, read_body(body).await?));
        }
        let checked = self.check(req, body).await;
        if checked.is_err() {
            self.metrics.unauthorized.inc();
        }
        checked.map(|(pool, body)| (Some(pool), body))
    }

    async fn check(&self, req: &HttpRequest, body: web::Payload) -> Result<(String, web::Bytes)> {
        let denied = |e: nodepool::AuthError| Error::Unauthorized(e.to_string());
        let header = SignedHeader::parse(signature(req.headers())?).map_err(denied)?;
        header.check_time(unix_millis_now()).map_err(denied)?;
        let bytes = read_body(body).await?;
        let host = req
            .headers()
            .get(actix_web::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path(), |p| p.as_str());
        let parts = RequestParts {
            method: req.method().as_str(),
            host,
            path_and_query: path,
            body: &bytes,
        };
        let key = nodepool::keys::pool_key(&self.secret, &header.pool);
        header.verify(&key, &parts).map_err(denied)?;
        self.replays
            .lock()
            .admit(&header, unix_millis_now())
            .map_err(denied)?;
        Ok((header.pool, bytes))
    }

    /// A signed request may only speak for peers of the pool it was signed for.
    pub(crate) fn check_pool(&self, signed: Option<&str>, claimed: &str) -> Result<()> {
        match signed {
            Some(pool) if pool != claimed => {
                self.metrics.unauthorized.inc();
                Err(Error::Unauthorized(format!(
                    "signed for pool `{pool}`, not `{}`",
                    claimed.chars().take(64).collect::<String>()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Drops silent peers, lapsed members and leases, and refreshes the gauges.
    pub fn sweep(&self) -> usize {
        let mut registry = self.registry.lock();
        let dropped = registry.sweep(clock());
        self.metrics.peers.set(registry.peer_count() as i64);
        self.metrics.tasks.set(registry.task_count() as i64);
        let mut waiters = self.waiters.lock();
        self.deliver(&mut registry, &mut waiters);
        waiters.prune(clock(), self.keep_grants);
        dropped
    }

    /// Asks the registry for fresh pieces; answers at once, or opens the request's slot.
    fn ask_fresh(&self, msg: &FreshRequest) -> Result<Asked> {
        let mut registry = self.registry.lock();
        let mut waiters = self.waiters.lock();
        if msg.wait && waiters.waiting_for(&msg.digest) >= MAX_WAITING_PER_BLOB {
            return Err(Error::Capacity(
                "too many requests waiting for fresh pieces of one blob",
            ));
        }
        let fresh = registry.fresh(msg, clock());
        self.deliver(&mut registry, &mut waiters);
        let fresh = fresh?;
        // A report alone leaves the peer's waiting request waiting.
        let kept = if msg.wait {
            waiters.replace(&fresh.key)
        } else {
            None
        };
        self.metrics.fresh_waiting.set(waiters.waiting() as i64);
        let mut answer = FreshResponse {
            pieces: Vec::new(),
            all_released: fresh.all_released,
            move_on: fresh.move_on,
        };
        let granted = fresh.grant.is_some();
        if let Some(g) = fresh.grant {
            answer = g.into();
            answer.move_on |= fresh.move_on;
        }
        if let Some(kept) = kept {
            answer.pieces.extend(kept.pieces);
            answer.all_released |= kept.all_released;
            answer.move_on |= kept.move_on;
            if !granted && msg.wait {
                // Answered with what was kept: it waits no more.
                registry.cancel_fresh(&fresh.key);
            }
            return Ok(Asked::Now(answer));
        }
        if granted || !msg.wait {
            return Ok(Asked::Now(answer));
        }
        if fresh.news {
            // The pool may move on, and this node was never told: it hears it now rather
            // than when its wait runs out, seconds after the nodes granted a lease heard it.
            registry.cancel_fresh(&fresh.key);
            return Ok(Asked::Now(answer));
        }
        let (id, rx) = waiters.wait(fresh.key.clone());
        self.metrics.fresh_waiting.set(waiters.waiting() as i64);
        Ok(Asked::Wait(Waiting {
            state: None,
            key: fresh.key,
            id,
            rx,
        }))
    }
}

enum Asked {
    Now(FreshResponse),
    Wait(Waiting),
}

/// A fresh request waiting for a grant. Dropped unanswered (the client went away), it stops
/// waiting in the registry, and a grant that reached it unread is kept for the peer's next
/// request.
struct Waiting {
    state: Option<web::Data<AppState>>,
    key: WaitKey,
    id: u64,
    rx: tokio::sync::oneshot::Receiver<FreshResponse>,
}

impl Waiting {
    /// Ends the wait: the grant that reached it, or an empty answer (and the registry stops
    /// counting it as waiting). With `unread`, a grant that reached it is handed on instead
    /// (the client went away).
    fn finish(&mut self, unread: bool) -> FreshResponse {
        let Some(state) = self.state.take() else {
            return FreshResponse::default();
        };
        let mut registry = state.registry.lock();
        let mut waiters = state.waiters.lock();
        if waiters.end(&self.key, self.id) {
            registry.cancel_fresh(&self.key);
        }
        let answer = self.rx.try_recv();
        state.metrics.fresh_waiting.set(waiters.waiting() as i64);
        match answer {
            Ok(answer) if unread => {
                waiters.hand(self.key.clone(), answer, clock());
                FreshResponse::default()
            }
            Ok(answer) => answer,
            Err(_) if unread => FreshResponse::default(),
            // The wait ran out without a grant: the answer still says where the leases
            // stand, or a node would hear `moveOn` only once every piece was released.
            Err(_) => {
                let (all_released, move_on) = registry.fresh_standing(&self.key, clock());
                FreshResponse {
                    pieces: Vec::new(),
                    all_released,
                    move_on,
                }
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.finish(true);
    }
}

fn signature(headers: &HeaderMap) -> Result<&str> {
    let value = headers
        .get(AUTH_HEADER)
        .ok_or_else(|| Error::Unauthorized(format!("missing {AUTH_HEADER} header")))?;
    value
        .to_str()
        .map_err(|_| Error::Unauthorized(format!("{AUTH_HEADER} is not ASCII")))
}

/// The scheduler server: `new(config, metrics)` then `run(listener, shutdown)`.
pub struct SchedulerServer {
    state: web::Data<AppState>,
}

impl SchedulerServer {
    pub fn new(config: &SchedulerConfig, metrics: Arc<Metrics>) -> Result<Self> {
        if config.pool_secret().is_off() {
            tracing::warn!(
                "no `secret` configured: scheduler requests are not authenticated; \
                 any host that reaches this port can register peers"
            );
        }
        for key in config.retired_keys() {
            tracing::warn!(
                key,
                "config key `{key}` is ignored: only the removed v1 API (per-piece announces) \
                 read it; remove it from the config"
            );
        }
        Ok(SchedulerServer {
            state: web::Data::new(AppState::new(config, metrics)?),
        })
    }

    /// The shared state, for tests that look inside.
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let sweep = tokio::spawn(sweep_loop(self.state.clone()));
        let origin = self
            .state
            .dashboard
            .then(|| tokio::spawn(crate::dashboard::origin::read_loop(self.state.clone())));
        let state = self.state.clone();
        let routes = move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .route("/metrics", web::get().to(metrics_text))
                .service(api_resource("/api/v1/heartbeat", heartbeat))
                .service(api_resource("/api/v1/leave", leave))
                .service(api_resource("/api/v2/join", join))
                .service(api_resource("/api/v2/fresh", fresh))
                .configure(crate::preheat::http::routes)
                .configure(|c| crate::dashboard::routes(c, state.dashboard))
                .default_service(web::to(not_found));
        };
        let options = serve::Options {
            shutdown_secs: 5,
            max_connections: MAX_CONNECTIONS,
            send_timeout: Some(SEND_TIMEOUT),
            ..serve::Options::default()
        };
        let result = serve::until(serve::start(listener, routes, options)?, shutdown).await;
        sweep.abort();
        if let Some(origin) = origin {
            origin.abort();
        }
        result
    }
}

/// A POST endpoint; other methods get a JSON 405.
pub(crate) fn api_resource<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|req: HttpRequest| async move {
            Err::<HttpResponse, _>(Error::MethodNotAllowed(req.method().to_string()))
        }))
}

async fn sweep_loop(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(state.sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.sweep();
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(req.path().chars().take(80).collect()))
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    {
        let registry = state.registry.lock();
        state.metrics.peers.set(registry.peer_count() as i64);
        state.metrics.tasks.set(registry.task_count() as i64);
    }
    serve::metrics(state.metrics.render())
}

/// Reads a body of at most [`MAX_BODY_BYTES`].
async fn read_body(body: web::Payload) -> Result<web::Bytes> {
    body.to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::BodyTooLarge(MAX_BODY_BYTES))?
        .map_err(|e| Error::BodyInvalid(e.to_string()))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::BodyInvalid(e.to_string().chars().take(200).collect()))
}

#[tracing::instrument(skip_all, fields(peer))]
async fn heartbeat(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, bytes) = state.authenticate(&req, body).await?;
    let msg: HeartbeatRequest = parse_json(&bytes)?;
    tracing::Span::current().record("peer", msg.peer.id.as_str());
    state.check_pool(signed.as_deref(), &msg.peer.pool)?;
    let answer = state.with_registry(|r| r.heartbeat(&msg, clock()))?;
    let note = crate::nodes::NodeNote::from_body(&bytes);
    state.nodes.lock().heard(&msg, note, clock());
    Ok(HttpResponse::Ok().json(answer))
}

#[tracing::instrument(skip_all, fields(peer))]
async fn leave(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, bytes) = state.authenticate(&req, body).await?;
    let msg: LeaveRequest = parse_json(&bytes)?;
    tracing::Span::current().record("peer", msg.peer_id.as_str());
    state.check_pool(signed.as_deref(), &msg.pool)?;
    state.with_registry(|r| r.leave(&msg, clock()))?;
    Ok(HttpResponse::NoContent().finish())
}

#[tracing::instrument(skip_all, fields(peer, digest))]
async fn join(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, bytes) = state.authenticate(&req, body).await?;
    let msg: JoinRequest = parse_json(&bytes)?;
    tracing::Span::current()
        .record("peer", msg.peer.id.as_str())
        .record("digest", msg.task.digest.as_str());
    state.check_pool(signed.as_deref(), &msg.peer.pool)?;
    let answer = state.with_registry(|r| r.join(&msg, clock()))?;
    Ok(HttpResponse::Ok().json(answer))
}

/// Reports completed leases and, with `wait`, long-polls for the next one (at most
/// [`LONG_POLL`]).
#[tracing::instrument(skip_all, fields(peer, digest))]
async fn fresh(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, bytes) = state.authenticate(&req, body).await?;
    let msg: FreshRequest = parse_json(&bytes)?;
    tracing::Span::current()
        .record("peer", msg.peer.id.as_str())
        .record("digest", msg.digest.as_str());
    state.check_pool(signed.as_deref(), &msg.peer.pool)?;
    let mut waiting = match state.ask_fresh(&msg)? {
        Asked::Now(answer) => return Ok(HttpResponse::Ok().json(answer)),
        Asked::Wait(w) => w,
    };
    waiting.state = Some(state.clone());
    let answer = match tokio::time::timeout(LONG_POLL, &mut waiting.rx).await {
        Ok(Ok(answer)) => {
            waiting.state = None;
            answer
        }
        _ => waiting.finish(false),
    };
    Ok(HttpResponse::Ok().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerRef, TaskInfo};
    use nodepool::HumanDuration;

    const DIGEST: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_silent_peers_and_their_tasks() {
        let config = SchedulerConfig {
            peer_ttl: HumanDuration(Duration::from_secs(30)),
            ..SchedulerConfig::default()
        };
        let state =
            web::Data::new(AppState::new(&config, Arc::new(Metrics::new())).expect("state"));
        let join = join_from("n1");
        state
            .with_registry(|r| r.join(&join, clock()))
            .expect("join");
        let sweeper = tokio::spawn(sweep_loop(state.clone()));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(state.registry.lock().peer_count(), 1);
        assert_eq!(state.registry.lock().task_count(), 1);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(state.registry.lock().peer_count(), 0);
        assert_eq!(state.registry.lock().task_count(), 0);
        assert_eq!(state.metrics.peers.get(), 0);
        assert_eq!(state.metrics.tasks.get(), 0);
        sweeper.abort();
    }

    fn v2_peer(id: &str) -> PeerRef {
        PeerRef {
            id: id.into(),
            pool: "np-1".into(),
            addr: "127.0.0.1:65002".into(),
        }
    }

    /// A join of a blob of 256 pieces.
    fn join_from(id: &str) -> JoinRequest {
        JoinRequest {
            peer: v2_peer(id),
            task: TaskInfo {
                digest: DIGEST.into(),
                size: 256 << 20,
                piece_size: 1 << 20,
            },
            held: 0,
            done: false,
        }
    }

    /// `members` nodes joined to a blob of 256 pieces.
    fn joined(members: usize) -> web::Data<AppState> {
        let config = SchedulerConfig::default();
        let state =
            web::Data::new(AppState::new(&config, Arc::new(Metrics::new())).expect("state"));
        for i in 0..members {
            let join = join_from(&format!("n{i:04}"));
            state
                .with_registry(|r| r.join(&join, clock()))
                .expect("join");
        }
        state
    }

    fn fresh_from(id: &str, completed: &[u32], wait: bool) -> FreshRequest {
        FreshRequest {
            peer: v2_peer(id),
            digest: DIGEST.into(),
            completed: completed.to_vec(),
            wait,
        }
    }

    #[tokio::test]
    async fn at_most_a_thousand_requests_wait_per_blob() {
        let leased = swarm::release::MAX_IN_FLIGHT as usize;
        let state = joined(MAX_WAITING_PER_BLOB + leased + 1);
        let mut waiting = Vec::new();
        for i in 0..MAX_WAITING_PER_BLOB + leased {
            match state.ask_fresh(&fresh_from(&format!("n{i:04}"), &[], true)) {
                Ok(Asked::Wait(w)) => waiting.push(w),
                Ok(Asked::Now(answer)) => assert_eq!(answer.pieces.len(), 1, "{i}"),
                Err(e) => panic!("{i}: {e}"),
            }
        }
        assert_eq!(
            waiting.len(),
            MAX_WAITING_PER_BLOB,
            "{leased} leased at once"
        );
        assert_eq!(state.metrics.fresh_waiting.get(), 1000);
        let last = format!("n{:04}", MAX_WAITING_PER_BLOB + leased);
        let refused = state.ask_fresh(&fresh_from(&last, &[], true));
        assert!(matches!(refused, Err(Error::Capacity(_))));
        // Only reporting is still taken.
        assert!(state.ask_fresh(&fresh_from(&last, &[], false)).is_ok());
    }

    #[tokio::test]
    async fn a_node_granted_none_of_a_blobs_last_leases_still_hears_it_may_move_on() {
        let state = joined(2);
        // n0000 takes every lease of the blob, reporting each as done but the last.
        let mut completed = Vec::new();
        for _ in 0..256 {
            let Ok(Asked::Now(answer)) = state.ask_fresh(&fresh_from("n0000", &completed, true))
            else {
                panic!("a lease is free");
            };
            if answer.pieces.contains(&255) {
                break;
            }
            completed = answer.pieces;
        }
        assert!(completed.contains(&254), "{completed:?}");
        // n0001, which got no lease, hears at once that the pool may move on, not when its
        // long poll runs out nor once every piece is released.
        match state.ask_fresh(&fresh_from("n0001", &[], true)) {
            Ok(Asked::Now(a)) => assert!(a.pieces.is_empty() && a.move_on && !a.all_released),
            _ => panic!("news is answered at once"),
        }
        assert_eq!(state.metrics.fresh_waiting.get(), 0, "n0001 waits no more");
        // Told once: its next request waits, and the wait's empty end still says so.
        let Ok(Asked::Wait(mut waiting)) = state.ask_fresh(&fresh_from("n0001", &[], true)) else {
            panic!("no news: it waits");
        };
        waiting.state = Some(state.clone());
        let answer = waiting.finish(false);
        assert!(answer.pieces.is_empty() && answer.move_on && !answer.all_released);
    }

    #[tokio::test]
    async fn a_grant_that_reached_a_request_whose_client_went_away_goes_to_its_next() {
        // Every lease out, two to each member, and one member more, whose requests wait.
        let members = swarm::release::MAX_IN_FLIGHT / 2;
        let late = format!("n{members:04}");
        let state = joined(members as usize + 1);
        for i in 0..members {
            for _ in 0..2 {
                let asked = state.ask_fresh(&fresh_from(&format!("n{i:04}"), &[], true));
                assert!(matches!(asked, Ok(Asked::Now(_))));
            }
        }
        let Ok(Asked::Wait(mut gone)) = state.ask_fresh(&fresh_from(&late, &[], true)) else {
            panic!("every lease out: {late} waits");
        };
        gone.state = Some(state.clone());
        // n0000 completes piece 0: the lease goes to the late request, whose client has gone.
        let asked = state.ask_fresh(&fresh_from("n0000", &[0], false));
        assert!(matches!(asked, Ok(Asked::Now(_))));
        drop(gone);
        assert_eq!(state.metrics.fresh_waiting.get(), 0);
        match state.ask_fresh(&fresh_from(&late, &[], true)) {
            Ok(Asked::Now(answer)) => assert_eq!(answer.pieces, vec![2 * members]),
            _ => panic!("the kept grant is answered at once"),
        }
        // A request that goes away unanswered stops waiting.
        let Ok(Asked::Wait(mut gone)) = state.ask_fresh(&fresh_from(&late, &[], true)) else {
            panic!("{late} waits again");
        };
        gone.state = Some(state.clone());
        drop(gone);
        assert_eq!(state.metrics.fresh_waiting.get(), 0);
        let leased = state.metrics.fresh_leases.get();
        state
            .ask_fresh(&fresh_from("n0001", &[2], false))
            .expect("report");
        assert_eq!(state.metrics.fresh_leases.get(), leased, "nobody waits");
        match state.ask_fresh(&fresh_from(&late, &[], true)) {
            Ok(Asked::Now(answer)) => assert_eq!(answer.pieces, vec![2 * members + 1]),
            _ => panic!("a lease is free"),
        }
    }
}
