//! The agent's Prometheus metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// How a mirror range ended: `outcome="ok|failed|cancelled"`, for `reason` as in [`Reason`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RangeEnd {
    pub reason: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    /// Piece bytes to and from peers: `direction="in|out"`.
    pub peer_bytes: Family<Direction, Counter>,
    /// Bytes fetched from the mirror (or registry).
    pub source_bytes: Counter,
    /// Pieces fetched from the mirror because no peer could help.
    pub back_to_source: Counter,
    /// The same pieces by why: `reason="lease|assist|rescue|source"` (see `swarm::MirrorWhy`).
    pub mirror_pieces: Family<Reason, Counter>,
    /// Mirror ranges (requests) by why and how they ended. A cancelled range (a peer overtook
    /// it, or the blob was given up) loses what the mirror had already sent of it.
    pub mirror_ranges: Family<RangeEnd, Counter>,
    /// Bytes sent to containerd.
    pub served_bytes: Counter,
    pub cache_hits: Counter,
    /// Blobs of an image started before its client asked (`storage::ahead`).
    pub started_ahead: Counter,
    pub piece_failures: Counter,
    pub digest_mismatches: Counter,
    /// Piece-digest answers fetched from the mirror (`/pieces`).
    pub piece_lists: Counter,
    /// Pieces from peers accepted on the mirror's proof that came with them, and proofs that
    /// did not hold (the piece then waits for its digest from the mirror).
    pub proofs_held: Counter,
    pub proofs_failed: Counter,
    pub scheduler_errors: Counter,
    pub tasks: Gauge,
    pub uploads: Gauge,
    /// Peer connections open.
    pub peers: Gauge,
    /// Peers refused at the handshake (wrong pool secret).
    pub peer_denied: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("poolcast_agent");
        let m = Metrics {
            peer_bytes: Family::default(),
            source_bytes: Counter::default(),
            back_to_source: Counter::default(),
            mirror_pieces: Family::default(),
            mirror_ranges: Family::default(),
            served_bytes: Counter::default(),
            cache_hits: Counter::default(),
            started_ahead: Counter::default(),
            piece_failures: Counter::default(),
            digest_mismatches: Counter::default(),
            piece_lists: Counter::default(),
            proofs_held: Counter::default(),
            proofs_failed: Counter::default(),
            scheduler_errors: Counter::default(),
            tasks: Gauge::default(),
            uploads: Gauge::default(),
            peers: Gauge::default(),
            peer_denied: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "peer_bytes",
            "Piece bytes exchanged with peers",
            m.peer_bytes.clone(),
        );
        registry.register(
            "source_bytes",
            "Bytes fetched from the mirror or registry",
            m.source_bytes.clone(),
        );
        registry.register(
            "back_to_source",
            "Pieces fetched from the mirror",
            m.back_to_source.clone(),
        );
        registry.register(
            "mirror_pieces",
            "Pieces fetched from the mirror, by reason: lease (fresh pieces leased to this node), \
             assist (tail help once every piece is in the pool), rescue (no progress from peers), \
             source (source mode)",
            m.mirror_pieces.clone(),
        );
        registry.register(
            "mirror_ranges",
            "Ranges requested from the mirror, by reason (as mirror_pieces) and outcome: ok, \
             failed (an error or transferTimeout), cancelled (a peer overtook it, or the blob was \
             given up)",
            m.mirror_ranges.clone(),
        );
        registry.register(
            "served_bytes",
            "Bytes sent to containerd",
            m.served_bytes.clone(),
        );
        registry.register(
            "blobs_started_ahead",
            "Blobs of an image started before the client asked for them, as it pulls the image \
             blob by blob",
            m.started_ahead.clone(),
        );
        registry.register(
            "cache_hits",
            "Blobs served from the local cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "piece_failures",
            "Piece transfers that failed, stalled or did not verify",
            m.piece_failures.clone(),
        );
        registry.register(
            "digest_mismatches",
            "Pieces or blobs that did not match their digest",
            m.digest_mismatches.clone(),
        );
        registry.register(
            "piece_lists",
            "Piece-digest answers fetched from the mirror",
            m.piece_lists.clone(),
        );
        registry.register(
            "proofs_held",
            "Pieces from peers accepted on the mirror's proof sent with them",
            m.proofs_held.clone(),
        );
        registry.register(
            "proofs_failed",
            "Proofs from peers that did not hold",
            m.proofs_failed.clone(),
        );
        registry.register(
            "scheduler_errors",
            "Scheduler calls that failed",
            m.scheduler_errors.clone(),
        );
        registry.register("tasks", "Blob downloads under way", m.tasks.clone());
        registry.register(
            "uploads",
            "Piece uploads to peers under way",
            m.uploads.clone(),
        );
        registry.register("peers", "Peer connections open", m.peers.clone());
        registry.register(
            "peer_denied",
            "Peers refused at the handshake (wrong pool secret)",
            m.peer_denied.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn peer_in(&self) -> Counter {
        self.peer_bytes
            .get_or_create(&Direction { direction: "in" })
            .clone()
    }

    pub fn peer_out(&self) -> Counter {
        self.peer_bytes
            .get_or_create(&Direction { direction: "out" })
            .clone()
    }

    /// Counts one piece fetched from the mirror for `reason`.
    pub fn mirror_piece(&self, reason: &'static str) {
        self.mirror_pieces.get_or_create(&Reason { reason }).inc();
    }

    /// Counts one mirror range ended `outcome` for `reason`.
    pub fn mirror_range(&self, reason: &'static str, outcome: &'static str) {
        self.mirror_ranges
            .get_or_create(&RangeEnd { reason, outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
