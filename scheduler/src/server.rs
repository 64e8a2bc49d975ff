//! The HTTP surface: `/api/v1/{announce,heartbeat,leave}` (signed with the pool secret),
//! `/healthz` and `/metrics`, and the sweep that drops silent peers when nobody is asking.

use crate::api::{AnnounceRequest, HeartbeatRequest, LeaveRequest, MAX_BODY_BYTES};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::PeerRegistry;
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::{PoolSecret, SchedulerConfig, AUTH_HEADER};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time decisions use: tokio's clock, so tests with paused time drive TTLs.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub struct AppState {
    pub registry: Mutex<PeerRegistry>,
    pub metrics: Arc<Metrics>,
    /// Requests are not checked when it is off (no secret configured).
    secret: PoolSecret,
    sweep_every: Duration,
}

impl AppState {
    pub fn new(config: &SchedulerConfig, metrics: Arc<Metrics>) -> Result<Self> {
        config.validate()?;
        let registry = PeerRegistry::from_config(config, metrics.clone(), clock())?;
        Ok(AppState {
            registry: Mutex::new(registry),
            metrics,
            secret: config.pool_secret(),
            sweep_every: (config.peer_ttl.0 / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(5)),
        })
    }

    /// Checks the request's signature when a secret is set; returns the pool it was signed for.
    fn authenticate(&self, req: &HttpRequest) -> Result<Option<String>> {
        if self.secret.is_off() {
            return Ok(None);
        }
        let checked = signature(req.headers()).and_then(|header| {
            let path = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.path(), |p| p.as_str());
            self.secret
                .verify_now(req.method().as_str(), path, header)
                .map_err(|e| Error::Unauthorized(e.to_string()))
        });
        if checked.is_err() {
            self.metrics.unauthorized.inc();
        }
        checked.map(Some)
    }

    /// A signed request may only speak for peers of the pool it was signed for.
    fn check_pool(&self, signed: Option<&str>, claimed: &str) -> Result<()> {
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

    /// Drops silent peers and refreshes the gauges.
    pub fn sweep(&self) -> usize {
        let mut registry = self.registry.lock();
        let dropped = registry.expire(clock());
        self.metrics.peers.set(registry.peer_count() as i64);
        self.metrics.tasks.set(registry.task_count() as i64);
        dropped
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
        let state = self.state.clone();
        let routes = move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .route("/metrics", web::get().to(metrics_text))
                .service(api_resource("/api/v1/announce", announce))
                .service(api_resource("/api/v1/heartbeat", heartbeat))
                .service(api_resource("/api/v1/leave", leave))
                .default_service(web::to(not_found));
        };
        let options = serve::Options {
            shutdown_secs: 5,
            ..serve::Options::default()
        };
        let result = serve::until(serve::start(listener, routes, options)?, shutdown).await;
        sweep.abort();
        result
    }
}

/// A POST endpoint; other methods get a JSON 405.
fn api_resource<F, Args>(path: &str, handler: F) -> actix_web::Resource
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

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
async fn read_json<T: DeserializeOwned>(body: web::Payload) -> Result<T> {
    let bytes = body
        .to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::BodyTooLarge(MAX_BODY_BYTES))?
        .map_err(|e| Error::BodyInvalid(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::BodyInvalid(e.to_string().chars().take(200).collect()))
}

#[tracing::instrument(skip_all, fields(peer, digest))]
async fn announce(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let signed = state.authenticate(&req)?;
    let msg: AnnounceRequest = read_json(body).await?;
    tracing::Span::current()
        .record("peer", msg.peer.id.as_str())
        .record("digest", msg.task.digest.as_str());
    state.check_pool(signed.as_deref(), &msg.peer.pool)?;
    let answer = state.registry.lock().announce(&msg, clock())?;
    Ok(HttpResponse::Ok().json(answer))
}

#[tracing::instrument(skip_all, fields(peer))]
async fn heartbeat(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let signed = state.authenticate(&req)?;
    let msg: HeartbeatRequest = read_json(body).await?;
    tracing::Span::current().record("peer", msg.peer.id.as_str());
    state.check_pool(signed.as_deref(), &msg.peer.pool)?;
    let answer = state.registry.lock().heartbeat(&msg, clock())?;
    Ok(HttpResponse::Ok().json(answer))
}

#[tracing::instrument(skip_all, fields(peer))]
async fn leave(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let signed = state.authenticate(&req)?;
    let msg: LeaveRequest = read_json(body).await?;
    tracing::Span::current().record("peer", msg.peer_id.as_str());
    state.check_pool(signed.as_deref(), &msg.pool)?;
    state.registry.lock().leave(&msg, clock())?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerInfo, TaskInfo};
    use nodepool::HumanDuration;

    const DIGEST: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

    fn announce_from(id: &str) -> AnnounceRequest {
        AnnounceRequest {
            peer: PeerInfo {
                id: id.into(),
                pool: "np-1".into(),
                addr: "127.0.0.1:65002".into(),
                upload_slots: 4,
            },
            task: TaskInfo {
                digest: DIGEST.into(),
                size: 8 << 20,
                piece_size: 4 << 20,
            },
            have: vec![0],
            done: false,
            failed_parents: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_silent_peers_and_their_tasks() {
        let config = SchedulerConfig {
            peer_ttl: HumanDuration(Duration::from_secs(30)),
            ..SchedulerConfig::default()
        };
        let state =
            web::Data::new(AppState::new(&config, Arc::new(Metrics::new())).expect("state"));
        state
            .registry
            .lock()
            .announce(&announce_from("n1"), clock())
            .expect("announce");
        let sweeper = tokio::spawn(sweep_loop(state.clone()));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(state.registry.lock().peer_count(), 1);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(state.registry.lock().peer_count(), 0);
        assert_eq!(state.registry.lock().task_count(), 0);
        assert_eq!(state.metrics.peers.get(), 0);
        assert_eq!(state.metrics.tasks.get(), 0);
        sweeper.abort();
    }
}
