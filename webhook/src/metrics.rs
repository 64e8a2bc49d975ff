//! The webhook's Prometheus metrics, held in one struct so the handlers and tests share them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

pub struct Metrics {
    /// AdmissionReviews answered.
    pub reviews: Counter,
    /// Pods changed.
    pub mutated: Counter,
    /// Images rewritten to a distributed name.
    pub images_rewritten: Counter,
    /// Pull secret copies created or updated.
    pub secrets_written: Counter,
    /// Pods left unchanged because the mutation failed (Kubernetes API unreachable, ...).
    pub failures: Counter,
    /// Requests that were not AdmissionReviews.
    pub bad_requests: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("poolcast_webhook");
        let m = Metrics {
            reviews: Counter::default(),
            mutated: Counter::default(),
            images_rewritten: Counter::default(),
            secrets_written: Counter::default(),
            failures: Counter::default(),
            bad_requests: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("reviews", "AdmissionReviews answered", m.reviews.clone());
        registry.register("mutated", "Pods changed", m.mutated.clone());
        registry.register(
            "images_rewritten",
            "Images rewritten to a distributed registry name",
            m.images_rewritten.clone(),
        );
        registry.register(
            "secrets_written",
            "Pull secret copies created or updated",
            m.secrets_written.clone(),
        );
        registry.register(
            "failures",
            "Pods left unchanged because the mutation failed",
            m.failures.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests that were not AdmissionReviews",
            m.bad_requests.clone(),
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
