//! Fetching an image's next blob from upstream as soon as the link to it is idle
//! ([`storage::ahead`]).
//!
//! skopeo into `dir:` asks for one blob at a time; the agents of a pool start the next blob
//! once every piece of the current one is leased, but by then the mirror has taken the
//! current blob whole from upstream and its upstream link waits: for the agents' access
//! check, their first piece requests, and the fetch they start (about a second per layer on
//! the fan-out bed). So the mirror remembers the blobs of the image manifests it serves and
//! which the pool's members asked for (a blob `GET` or its piece list). While those are the
//! image's first blobs in order, and upstream fetches nothing else, it fetches the next one
//! with the credentials sent with the manifest: at most one blob ahead of the pool. A
//! member's request for it is checked as any other (for those credentials, from the answer
//! the fetch got), and joins the fetch or finds the blob cached.

use crate::blobs::{locate, Source};
use crate::server::{AppState, Ctx};
use crate::upstream::Upstream;
use actix_web::http::header::HeaderValue;
use actix_web::web;
use parking_lot::Mutex;
use std::time::{Instant, SystemTime};
use storage::reference::Digest;
use tracing::Instrument;

/// What an image's record keeps for the fetches of its blobs.
#[derive(Clone)]
pub struct Fetcher {
    up: Upstream,
    /// The credentials sent with the manifest.
    auth: Option<HeaderValue>,
}

/// The images whose blobs the pool is pulling.
pub struct Ahead(Mutex<storage::ahead::Ahead<Fetcher>>);

impl Default for Ahead {
    fn default() -> Self {
        Ahead(Mutex::new(storage::ahead::Ahead::for_pool()))
    }
}

impl Ahead {
    /// A manifest was served to `ctx`'s requester.
    pub fn manifest(&self, ctx: &Ctx<'_>, body: &[u8]) {
        let fetcher = Fetcher {
            up: ctx.up.clone(),
            auth: ctx.auth.cloned(),
        };
        let now = Instant::now();
        self.0
            .lock()
            .manifest(Some(&ctx.up.ns), ctx.repo, body, fetcher, now);
    }

    /// A member asked for a blob (its bytes or its pieces), and was let through. Every range
    /// and piece-list request lands here; only a blob asked for the first time can change
    /// what is next.
    pub fn requested(&self, state: &web::Data<AppState>, ctx: &Ctx<'_>, digest: &Digest) {
        let first = self
            .0
            .lock()
            .requested(Some(&ctx.up.ns), ctx.repo, digest, |_| {});
        if first {
            fetch_next(state);
        }
    }
}

/// Starts the next blob the pool will ask for, if there is one and upstream fetches nothing
/// else but the last bytes of a blob: the blob before it keeps the whole link until then.
/// Called when a member asks for a blob, when an upstream fetch is ending and when it ends.
pub fn fetch_next(state: &web::Data<AppState>) {
    if !state.ingests.all_ending() {
        return;
    }
    loop {
        let Some(next) = state.ahead.0.lock().next(Instant::now()) else {
            return;
        };
        let held = state.store.holds(&next.digest, SystemTime::now());
        if !held {
            tracing::debug!(digest = %next.digest, repo = next.repo, "fetching a blob ahead of the pool");
            tokio::spawn(fetch(state.clone(), next).instrument(tracing::Span::current()));
            return;
        }
        // Held already: as good as asked for; look past it.
        state
            .ahead
            .0
            .lock()
            .requested(next.ns.as_deref(), &next.repo, &next.digest, |_| {});
    }
}

async fn fetch(state: web::Data<AppState>, next: storage::ahead::Next<Fetcher>) {
    let ctx = Ctx {
        up: next.ctx.up,
        repo: &next.repo,
        auth: next.ctx.auth.as_ref(),
        head: false,
    };
    match locate(&state, &ctx, &next.digest, true).await {
        Ok(Some(Source::Ingest(_))) => {
            state.metrics.fetched_ahead.inc();
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(digest = %next.digest, error = %e, "blob not fetched ahead"),
    };
}
