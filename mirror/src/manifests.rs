//! `GET|HEAD /v2/<name>/manifests/<reference>`. Manifests are small and mutable by tag: they
//! are fetched whole, verified, stored content-addressed, and a tag is revalidated upstream
//! after `manifestTTL`. When upstream cannot be reached, a cached tag is served (and logged).

use crate::error::{Error, Result};
use crate::server::{AppState, Ctx};
use crate::upstream::{refusal, RequestOpts};
use actix_web::http::header::{HeaderValue, ACCEPT};
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::unix_secs as unix;
use reqwest::Method;
use std::time::SystemTime;
use storage::reference::{Digest, Reference};
use storage::request::{joined_accept, read_limited};
use storage::store::TagEntry;

/// The distribution registry's own limit on manifest size.
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;
const DEFAULT_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

struct Fetched {
    data: Vec<u8>,
    media_type: String,
    digest: Digest,
}

pub async fn get(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    reference: Reference,
    req: &HttpRequest,
) -> Result<HttpResponse> {
    let lines = req.headers().get_all(ACCEPT).map(HeaderValue::as_bytes);
    let accept = joined_accept(lines).and_then(|a| HeaderValue::from_str(&a).ok());
    let accept = accept.as_ref();
    let now = SystemTime::now();
    match reference {
        Reference::Digest(digest) => {
            // Only what the index holds as a manifest, and not larger than one may be, is read
            // (off the runtime): a layer's digest asked for as a manifest costs no read. A
            // registry that is not configured gets no cached manifest: fetching it from there
            // and matching its digest is the proof it holds it.
            let cached = match ctx.up.configured {
                true => {
                    state
                        .store
                        .read_manifest(&digest, now, MAX_MANIFEST)
                        .await?
                }
                false => None,
            };
            if let Some((data, entry)) = cached {
                let media_type = entry.media_type.clone().unwrap_or_default();
                let probe = ctx.up.manifest_url(ctx.repo, &digest.to_string());
                state
                    .authorize(ctx, &digest.to_string(), probe, accept)
                    .await?;
                state.store.touch(&digest, &entry, now)?;
                state.metrics.cache_hits.inc();
                return respond(state, ctx, data, &media_type, &digest).await;
            }
            let fetched = fetch(state, ctx, &digest.to_string(), accept).await?;
            state.metrics.cache_misses.inc();
            if fetched.digest != digest {
                state.metrics.digest_mismatches.inc();
                return Err(Error::DigestMismatch {
                    what: "manifest",
                    expected: digest.to_string(),
                    actual: fetched.digest.to_string(),
                });
            }
            keep(state, &fetched, now)?;
            respond(
                state,
                ctx,
                fetched.data,
                &fetched.media_type,
                &fetched.digest,
            )
            .await
        }
        Reference::Tag(tag) => by_tag(state, ctx, &tag, accept, now).await,
    }
}

async fn by_tag(
    state: &web::Data<AppState>,
    ctx: &Ctx<'_>,
    tag: &str,
    accept: Option<&HeaderValue>,
    now: SystemTime,
) -> Result<HttpResponse> {
    let key = format!("{}\u{0}{}\u{0}{}", ctx.up.ns, ctx.repo, tag);
    let mut cached = None;
    if let Some(entry) = state
        .store
        .tag(&key)?
        .filter(|t| accepts(accept, &t.media_type))
    {
        if let Ok(digest) = Digest::parse(&entry.digest) {
            if let Some((data, blob)) = state
                .store
                .read_manifest(&digest, now, MAX_MANIFEST)
                .await?
            {
                cached = Some((entry, digest, data, blob));
            }
        }
    }
    if let Some((entry, digest, data, blob)) = &cached {
        let fresh = unix(now).saturating_sub(entry.checked) < state.manifest_ttl.as_secs();
        if fresh && state.access_known(ctx, &tag_object(tag), state.auth_ttl) {
            state.store.touch(digest, blob, now)?;
            state.metrics.cache_hits.inc();
            return respond(state, ctx, data.clone(), &entry.media_type, digest).await;
        }
    }
    match fetch(state, ctx, tag, accept).await {
        Ok(fetched) => {
            let known = cached
                .as_ref()
                .is_some_and(|(_, d, _, _)| *d == fetched.digest);
            if known {
                state.metrics.cache_hits.inc();
            } else {
                state.metrics.cache_misses.inc();
                keep(state, &fetched, now)?;
            }
            let entry = TagEntry {
                digest: fetched.digest.to_string(),
                media_type: fetched.media_type.clone(),
                checked: unix(now),
            };
            state.store.put_tag(&key, &entry)?;
            respond(
                state,
                ctx,
                fetched.data,
                &fetched.media_type,
                &fetched.digest,
            )
            .await
        }
        Err(e) if upstream_down(&e) => {
            let Some((entry, digest, data, _)) = cached else {
                return Err(e);
            };
            if !state.access_known(ctx, &tag_object(tag), state.cache_ttl) {
                return Err(e);
            }
            tracing::warn!(repo = ctx.repo, tag, error = %e, "upstream unavailable; serving cached manifest");
            state.metrics.stale_served.inc();
            respond(state, ctx, data, &entry.media_type, &digest).await
        }
        Err(e) => Err(e),
    }
}

fn tag_object(tag: &str) -> String {
    format!("tag:{tag}")
}

fn upstream_down(e: &Error) -> bool {
    match e {
        Error::UpstreamUnreachable { .. } | Error::Storage(storage::Error::Transfer(_)) => true,
        Error::Storage(storage::Error::Upstream(reply)) => reply.status >= 500,
        _ => false,
    }
}

/// GETs a manifest with the requester's credentials; upstream's answer is the access check.
async fn fetch(
    state: &AppState,
    ctx: &Ctx<'_>,
    reference: &str,
    accept: Option<&HeaderValue>,
) -> Result<Fetched> {
    state.metrics.upstream_requests.inc();
    let url = ctx.up.manifest_url(ctx.repo, reference);
    let resp = state
        .client
        .send(Method::GET, url, RequestOpts::new(ctx.auth, accept))
        .await?;
    if !resp.status().is_success() {
        return Err(Error::upstream(refusal(resp).await));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let media_type = header("content-type")
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.to_string());
    let claimed = header("docker-content-digest");
    let data = read_limited(resp, MAX_MANIFEST as usize).await?;
    let digest = Digest::of(&data);
    if let Some(claimed) = claimed.filter(|c| *c != digest.to_string()) {
        state.metrics.digest_mismatches.inc();
        return Err(Error::DigestMismatch {
            what: "manifest",
            expected: claimed,
            actual: digest.to_string(),
        });
    }
    let object = if reference.contains(':') {
        reference.to_string()
    } else {
        tag_object(reference)
    };
    state.record_access(&ctx.up.ns, ctx.repo, &object, ctx.auth);
    state.record_access(&ctx.up.ns, ctx.repo, &digest.to_string(), ctx.auth);
    Ok(Fetched {
        data,
        media_type,
        digest,
    })
}

fn keep(state: &AppState, fetched: &Fetched, now: SystemTime) -> Result<()> {
    state.store.put_small(
        &fetched.digest,
        &fetched.data,
        Some(fetched.media_type.clone()),
        now,
    )?;
    Ok(())
}

/// A manifest answer. Its body draws on `sendBuffers` like a blob's (waiting up to
/// `sendTimeout`): up to 4 MiB each, many slow readers must not add up past the budget.
async fn respond(
    state: &AppState,
    ctx: &Ctx<'_>,
    data: Vec<u8>,
    media_type: &str,
    digest: &Digest,
) -> Result<HttpResponse> {
    let mut builder = HttpResponse::Ok();
    builder
        .content_type(media_type.to_string())
        .insert_header(("Docker-Content-Digest", digest.to_string()));
    if ctx.head {
        return Ok(builder.body(data));
    }
    state.ahead.manifest(ctx, &data);
    let len = data.len() as u64;
    let share = state.budget.share(Some(len), state.send_timeout).await?;
    state.metrics.served_bytes.inc_by(len);
    let body = share.wrap(futures_util::stream::once(futures_util::future::ready(
        storage::Result::Ok(bytes::Bytes::from(data)),
    )));
    Ok(builder.body(actix_web::body::SizedStream::new(len, body)))
}

/// Whether a client's `Accept` admits a media type (no header: anything goes).
fn accepts(accept: Option<&HeaderValue>, media_type: &str) -> bool {
    let Some(text) = accept.and_then(|a| a.to_str().ok()) else {
        return true;
    };
    text.split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .any(|t| t == media_type || t == "*/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_are_matched_by_media_type() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        let oci = "application/vnd.oci.image.index.v1+json";
        assert!(accepts(None, oci));
        assert!(accepts(
            Some(&h(
                "application/vnd.oci.image.index.v1+json; q=0.5, text/plain"
            )),
            oci
        ));
        assert!(accepts(Some(&h("*/*")), oci));
        assert!(!accepts(
            Some(&h("application/vnd.docker.distribution.manifest.v2+json")),
            oci
        ));
    }
}
