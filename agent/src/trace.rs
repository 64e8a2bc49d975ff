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

/// The span of one transfer of pieces `first..first + count` of download `task` from one
/// source (`peer`, `mirror`, `origin`; `peer` names the peer), a child of `parent` (the span
/// current when the download began, under the runtime's request): wrap the transfer in it
/// (`.instrument(...)`) and send its requests through [`traced`], so they join the pull's
/// trace. Disabled, at no cost, when tracing is off.
pub fn piece_span(
    parent: &tracing::Span,
    source: &'static str,
    task: &str,
    first: u32,
    count: u32,
    peer: Option<&str>,
) -> tracing::Span {
    if !serve::trace::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: parent,
        "pieces",
        otel.kind = "client",
        piece.source = source,
        piece.first = first,
        piece.count = count,
        task = task,
        peer.address = peer.unwrap_or(""),
    )
}
