//! The agent's part of a pull's trace (`serve::trace`; off unless the binary has
//! `--otlp-endpoint`): its outgoing requests carry the current span's `traceparent`, and each
//! piece source gets a span of its own under the pulling request's.
//!
//! ```text
//!   request (the runtime's GET of a blob; Download::span)
//!     ├─ pieces  piece.source=mirror  (one mirror range)  ──traceparent──> mirror request
//!     └─ pieces  piece.source=peer    (one piece a peer sends, from its ACCEPT to its end)
//! ```

/// `req` with the current span's `traceparent` (nothing when tracing is off).
pub fn traced(mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in serve::trace::headers() {
        req = req.header(name, value);
    }
    req
}

/// Where a run of pieces comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A range request to the mirror, and why it was made (`swarm::MirrorWhy::label`: lease,
    /// assist, rescue, source).
    Mirror { reason: &'static str },
    /// A piece a peer sends; `node` is the peer's node name.
    Peer { node: &'a str },
}

/// The span of one transfer of pieces `first..first + count` of blob `digest` from one source,
/// a child of `parent` (the download's span: the request that started it), so it lands in the
/// pull's trace. Wrap the transfer in it (`.instrument(...)`) and send its requests through
/// [`traced`], so the mirror's spans join the trace below it. Its `piece.bytes` and
/// `piece.outcome` are recorded when it ends ([`end`]). Disabled, at no cost (no allocation,
/// one atomic load), when tracing is off.
pub fn piece_span(
    parent: &tracing::Span,
    source: Source<'_>,
    digest: &storage::reference::Digest,
    first: u32,
    count: u32,
) -> tracing::Span {
    if !serve::trace::enabled() {
        return tracing::Span::none();
    }
    let (kind, name, reason, node) = match source {
        Source::Mirror { reason } => ("client", "mirror", reason, ""),
        Source::Peer { node } => ("consumer", "peer", "", node),
    };
    tracing::info_span!(
        parent: parent,
        "pieces",
        otel.kind = kind,
        piece.source = name,
        piece.reason = reason,
        peer.name = node,
        digest = %digest,
        piece.first = first,
        piece.count = count,
        piece.bytes = tracing::field::Empty,
        piece.outcome = tracing::field::Empty,
        error.message = tracing::field::Empty,
    )
}

/// Records how a [`piece_span`] ended, once: `bytes` moved and `outcome` (mirror: `ok`,
/// `failed`, `cancelled`; peer: `received` (verified against its digest afterwards), `failed`,
/// `withdrawn`, `refused`, `superseded`, `peer gone`).
/// A failure's reason goes in its `error.message`.
pub fn end(span: &tracing::Span, bytes: u64, outcome: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.record("piece.bytes", bytes);
    span.record("piece.outcome", outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_span_is_disabled_while_tracing_is_off() {
        let digest = storage::reference::Digest::from_sha256(&[7; 32]);
        let span = piece_span(
            &tracing::Span::none(),
            Source::Peer { node: "node-2" },
            &digest,
            3,
            1,
        );
        assert!(span.is_disabled());
        end(&span, 10, "received");
    }
}
