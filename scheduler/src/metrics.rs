//! The scheduler's Prometheus metrics, held in one struct so the registry, the handlers and
//! tests share them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    /// Live peers.
    pub peers: Gauge,
    /// Blobs with at least one live peer.
    pub tasks: Gauge,
    /// Joins answered "go to source" (pools without P2P).
    pub go_source: Counter,
    /// Requests refused for a missing or bad signature.
    pub unauthorized: Counter,
    /// Joins answered.
    pub joins: Counter,
    /// Pieces leased to first holders (v2 fresh).
    pub fresh_leases: Counter,
    /// v2 fresh requests waiting for a lease.
    pub fresh_waiting: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("poolcast_scheduler");
        let m = Metrics {
            peers: Gauge::default(),
            tasks: Gauge::default(),
            go_source: Counter::default(),
            unauthorized: Counter::default(),
            joins: Counter::default(),
            fresh_leases: Counter::default(),
            fresh_waiting: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("peers", "Live peers", m.peers.clone());
        registry.register(
            "tasks",
            "Blobs with at least one live peer",
            m.tasks.clone(),
        );
        registry.register(
            "go_source",
            "Joins answered with goSource (pool without P2P)",
            m.go_source.clone(),
        );
        registry.register(
            "unauthorized",
            "Requests refused for a missing or bad signature",
            m.unauthorized.clone(),
        );
        registry.register("joins", "Joins answered", m.joins.clone());
        registry.register(
            "fresh_leases",
            "Pieces leased to first holders to take from the mirror (P2P v2)",
            m.fresh_leases.clone(),
        );
        registry.register(
            "fresh_waiting",
            "P2P v2 requests waiting for fresh pieces",
            m.fresh_waiting.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
