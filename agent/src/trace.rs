//! The agent's part of a pull's trace (`serve::trace`; off unless the binary has
//! `--otlp-endpoint`): its outgoing requests carry the current span's `traceparent`, and each
//! piece source gets a span of its own under the request's.

/// `req` with the current span's `traceparent` (nothing when tracing is off).
pub fn traced(mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in serve::trace::headers() {
        req = req.header(name, value);
    }
    req
}

/// A span for fetching piece `index` of `digest` from one source (`peer`, `mirror`, `origin`),
/// to enter (or `.instrument()` the fetch with) around that source's transfer; requests sent
/// inside it through [`traced`] become its children. Disabled (no cost) when tracing is off.
pub fn piece_span(
    source: &'static str,
    digest: &str,
    index: u64,
    peer: Option<&str>,
) -> tracing::Span {
    if !serve::trace::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "piece",
        otel.kind = "client",
        piece.source = source,
        piece.index = index,
        blob.digest = digest,
        peer.address = peer.unwrap_or(""),
    )
}
