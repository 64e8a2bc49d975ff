//! `POST /api/v2/preheat` (create a job) and `GET /api/v2/preheat/<id>` (read it), signed as
//! every scheduler request is, with the key of the job's pool: whoever may act for a pool's
//! nodes may preheat that pool, and read only that pool's jobs.

use super::{run, PreheatRequest};
use crate::error::{Error, Result};
use crate::server::{api_resource, clock, AppState};
use actix_web::{web, HttpRequest, HttpResponse};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(api_resource("/api/v2/preheat", create))
        .route("/api/v2/preheat/{id}", web::get().to(status));
}

pub(crate) async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, bytes) = state.authenticate(&req, body).await?;
    let msg: PreheatRequest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BodyInvalid(e.to_string().chars().take(200).collect()))?;
    state.check_pool(signed.as_deref(), &msg.pool)?;
    let images = msg.check()?;
    let targets = {
        let registry = state.registry.lock();
        let nodes = state.nodes.lock();
        run::choose(&registry, &nodes, &msg.pool, msg.nodes, clock())
    };
    let view = run::start(&state.jobs, msg, images, targets)?;
    Ok(HttpResponse::Created().json(view))
}

pub(crate) async fn status(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (signed, _) = state.authenticate(&req, body).await?;
    let id = path.into_inner();
    let unknown = || {
        Error::NotFound(format!(
            "preheat job {}",
            id.chars().take(64).collect::<String>()
        ))
    };
    let view = state.jobs.lock().get(&id).ok_or_else(unknown)?;
    if signed.as_deref().is_some_and(|p| p != view.pool) {
        // Another pool's job is as good as absent.
        return Err(unknown());
    }
    Ok(HttpResponse::Ok().json(view))
}
