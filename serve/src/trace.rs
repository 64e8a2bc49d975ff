//! W3C trace context across poolcast's HTTP hops, for traces exported over OTLP (the binary's
//! `--otlp-endpoint`). Off unless [`enable`] was called: then every server request gets a
//! `request` span whose parent is the caller's `traceparent`, and [`headers`] gives the
//! `traceparent` of the current span for an outgoing request, so one registry request makes
//! one trace across agent, mirror and upstream. Off, both cost one atomic load.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns propagation on for this process (the binary does, with an OTLP exporter installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

const TRACEPARENT: &str = "traceparent";

struct Pairs(Vec<(&'static str, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0.push((TRACEPARENT, value));
        }
    }
}

/// The `traceparent` of the current span, for an outgoing request; empty when tracing is off
/// or there is no sampled span.
pub fn headers() -> Vec<(&'static str, String)> {
    if !enabled() {
        return Vec::new();
    }
    let cx = tracing::Span::current().context();
    let mut pairs = Pairs(Vec::new());
    propagator().inject_context(&cx, &mut pairs);
    pairs.0
}

/// Where work that outlives a request joins that request's trace: taken from the current span
/// while the request runs ([`Parent::current`]), a span under it made later
/// ([`Parent::span`]). Holds no span open. Empty when tracing is off.
#[derive(Clone, Default)]
pub struct Parent(Option<opentelemetry::Context>);

impl Parent {
    pub fn current() -> Parent {
        if !enabled() {
            return Parent(None);
        }
        Parent(Some(tracing::Span::current().context()))
    }

    /// An `ahead` span (work started for a client before it asked) under this parent;
    /// disabled when tracing is off.
    pub fn ahead_span(&self, digest: &str) -> tracing::Span {
        let Some(cx) = &self.0 else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!("ahead", otel.kind = "internal", digest = digest);
        let _ = span.set_parent(cx.clone());
        span
    }
}

/// Middleware: a `request` span per request (with tracing on), its parent the caller's
/// `traceparent`, covering the handler.
pub(crate) async fn span_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !enabled() || req.path() == "/healthz" || req.path() == "/metrics" {
        return next.call(req).await;
    }
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.path(),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = propagator().extract(&Headers(req.headers()));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let resp = next.call(req).instrument(span.clone()).await;
    if let Ok(resp) = &resp {
        span.record("http.response.status_code", resp.status().as_u16());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_becomes_the_parent_and_junk_is_no_parent() {
        let mut headers = actix_web::http::header::HeaderMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(
            actix_web::http::header::HeaderName::from_static("traceparent"),
            actix_web::http::header::HeaderValue::from_static(good),
        );
        let cx = propagator().extract(&Headers(&headers));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            headers.insert(
                actix_web::http::header::HeaderName::from_static("traceparent"),
                actix_web::http::header::HeaderValue::from_str(bad).expect("ascii"),
            );
            let cx = propagator().extract(&Headers(&headers));
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn nothing_is_injected_while_tracing_is_off() {
        assert!(headers().is_empty());
    }
}
