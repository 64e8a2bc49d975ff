//! Logs to stderr and, with `--otlp-endpoint`, traces over OTLP/HTTP (protobuf) to a collector
//! (the OpenTelemetry Collector, Jaeger, Tempo): `tracing` spans become OpenTelemetry spans
//! through `tracing-opentelemetry`, and `serve::trace` carries W3C `traceparent` across the
//! agent, mirror and upstream hops. Without the flag no OpenTelemetry layer is installed and
//! propagation stays off.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The OTLP traces path a collector's HTTP receiver serves.
const TRACES_PATH: &str = "/v1/traces";

/// What must outlive the process's work: the exporter, flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still batched (call outside the async runtime: the exporter blocks).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("poolcast: flushing traces: {e}");
            }
        }
    }
}

/// `endpoint` as the URL spans are posted to: a collector's base URL gets `/v1/traces`.
fn traces_url(endpoint: &url::Url) -> String {
    let text = endpoint.as_str().trim_end_matches('/');
    if text.ends_with(TRACES_PATH) {
        text.to_string()
    } else {
        format!("{text}{TRACES_PATH}")
    }
}

/// Installs the global subscriber; with `otlp`, spans of `service` are exported there.
pub fn init(otlp: Option<&url::Url>, service: &str) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POOLCAST_LOG")
        // Clients such as skopeo first try TLS on a plain-HTTP port; actix logs each such
        // probe as an error. POOLCAST_LOG overrides this default.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,actix_http::h1::dispatcher=off")
        });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Ok(Telemetry { provider: None });
    };
    if !matches!(endpoint.scheme(), "http" | "https") {
        anyhow::bail!("--otlp-endpoint {endpoint}: expected an http:// or https:// URL of an OTLP/HTTP receiver");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("poolcast"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(layer)
        .init();
    serve::trace::enable();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_collector_base_url_gets_the_traces_path_once() {
        for (given, url) in [
            ("http://otel:4318", "http://otel:4318/v1/traces"),
            ("http://otel:4318/", "http://otel:4318/v1/traces"),
            ("http://otel:4318/v1/traces", "http://otel:4318/v1/traces"),
            (
                "https://tempo.example/otlp",
                "https://tempo.example/otlp/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(&given.parse().unwrap()), url, "{given}");
        }
    }
}
