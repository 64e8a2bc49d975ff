//! The mirror's Prometheus metrics, held in one struct so tests and handlers share them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    /// Blob bytes fetched from upstream registries.
    pub upstream_bytes: Counter,
    /// Bytes sent to clients (blobs and manifests).
    pub served_bytes: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub upstream_requests: Counter,
    /// `/pieces` answers, and their bodies' bytes: the piece digests the pool takes through the
    /// mirror's uplink.
    pub piece_lists: Counter,
    pub piece_list_bytes: Counter,
    pub digest_mismatches: Counter,
    pub evictions: Counter,
    pub stale_served: Counter,
    /// OSS redirects fetched from their own host although `ossInternetAccelerate` is on: V4
    /// presigned URLs sign the host, so a rewritten one would be refused.
    pub oss_unaccelerated: Counter,
    /// Blobs fetched from upstream before a member asked for them (`crate::ahead`).
    pub fetched_ahead: Counter,
    pub cache_bytes: Gauge,
    pub ingests: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("poolcast_mirror");
        let m = Metrics {
            upstream_bytes: Counter::default(),
            served_bytes: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            upstream_requests: Counter::default(),
            piece_lists: Counter::default(),
            piece_list_bytes: Counter::default(),
            digest_mismatches: Counter::default(),
            evictions: Counter::default(),
            stale_served: Counter::default(),
            oss_unaccelerated: Counter::default(),
            fetched_ahead: Counter::default(),
            cache_bytes: Gauge::default(),
            ingests: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "upstream_bytes",
            "Blob bytes fetched from upstream registries",
            m.upstream_bytes.clone(),
        );
        registry.register(
            "served_bytes",
            "Bytes sent to clients",
            m.served_bytes.clone(),
        );
        registry.register(
            "cache_hits",
            "Requests served without fetching from upstream",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Requests that started an upstream fetch",
            m.cache_misses.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to upstream registries",
            m.upstream_requests.clone(),
        );
        registry.register(
            "piece_lists",
            "Piece-digest answers (/pieces)",
            m.piece_lists.clone(),
        );
        registry.register(
            "piece_list_bytes",
            "Bytes of piece-digest answers' bodies (/pieces)",
            m.piece_list_bytes.clone(),
        );
        registry.register(
            "blobs_fetched_ahead",
            "Blobs of an image fetched from upstream before a pool member asked for them",
            m.fetched_ahead.clone(),
        );
        registry.register(
            "digest_mismatches",
            "Upstream transfers or cache files that did not match their digest",
            m.digest_mismatches.clone(),
        );
        registry.register(
            "evictions",
            "Cache entries removed by TTL or capacity",
            m.evictions.clone(),
        );
        registry.register(
            "stale_served",
            "Manifests served from cache because upstream was unreachable",
            m.stale_served.clone(),
        );
        registry.register(
            "oss_unaccelerated",
            "OSS redirects fetched unaccelerated because their V4 signature covers the host",
            m.oss_unaccelerated.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held in the cache",
            m.cache_bytes.clone(),
        );
        registry.register("ingests", "Upstream fetches under way", m.ingests.clone());
        Metrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
