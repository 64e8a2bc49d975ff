//! The HTTPS surface the API server calls: `POST /mutate` (the webhook entry that selects pods
//! by their own label) and `POST /mutate/namespace` (the entry that selects them by their
//! namespace's label), plus `/healthz` and `/metrics`.
//!
//! Every AdmissionReview is answered `allowed: true`; a pod the webhook cannot or need not
//! change gets no patch. Only a body that is not an AdmissionReview gets a 400.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mutate::{Mutator, Selection};
use crate::review::AdmissionReview;
use crate::secrets::SecretApi;
use actix_web::{web, HttpRequest, HttpResponse};
use nodepool::WebhookConfig;
use std::future::Future;
use std::sync::Arc;

/// Largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 8 << 20;
/// Open connections served; more are answered `503` and closed.
const MAX_CONNECTIONS: usize = 1024;

pub struct AppState {
    pub mutator: Mutator,
    /// `clientCAFile` is set: reviews come only over connections with its client certificate.
    pub require_client_cert: bool,
    pub secrets: Arc<dyn SecretApi>,
    pub metrics: Arc<Metrics>,
}

pub struct WebhookServer {
    state: web::Data<AppState>,
    tls: Option<rustls::ServerConfig>,
}

impl WebhookServer {
    /// Checks the config and reads the certificate and key (unless `plainHttp`).
    pub fn new(
        config: &WebhookConfig,
        secrets: Arc<dyn SecretApi>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let mutator = Mutator::new(config)?;
        let tls = if config.plain_http {
            None
        } else {
            Some(tls_config(
                &config.tls_cert_file,
                &config.tls_key_file,
                &config.client_ca_file,
            )?)
        };
        Ok(WebhookServer {
            state: web::Data::new(AppState {
                mutator,
                require_client_cert: !config.client_ca_file.is_empty(),
                secrets,
                metrics,
            }),
            tls,
        })
    }

    /// The registries of ACR instances named by id, set by whoever resolves them.
    pub fn acr_registries(&self) -> crate::mutate::DynamicRegistries {
        self.state.mutator.acr_registries()
    }

    /// `https`, or `http` in plain-HTTP mode.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let routes = move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY))
                .route("/metrics", web::get().to(metrics_text))
                .route("/mutate", web::post().to(by_pod_label))
                .route("/mutate/namespace", web::post().to(by_namespace_label));
        };
        let options = serve::Options {
            shutdown_secs: 5,
            tls: self.tls,
            // The API server holds a few connections; a crowd is someone else.
            max_connections: MAX_CONNECTIONS,
            send_timeout: Some(nodepool::defaults::SEND_TIMEOUT),
            ..serve::Options::default()
        };
        serve::until(serve::start(listener, routes, options)?, shutdown).await
    }
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn by_pod_label(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    from_api_server(&req, &state)?;
    review(&state, &body, Selection::PodLabel).await
}

async fn by_namespace_label(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    from_api_server(&req, &state)?;
    review(&state, &body, Selection::NamespaceLabel).await
}

/// With `clientCAFile`, a review is acted on only when it came with the API server's client
/// certificate: otherwise any pod could forge one and have pull secret copies made.
fn from_api_server(req: &HttpRequest, state: &AppState) -> Result<()> {
    if state.require_client_cert && !serve::client_certificate(req) {
        state.metrics.bad_requests.inc();
        tracing::warn!(peer = ?req.peer_addr(), "refused a review without the API server's client certificate");
        return Err(Error::NotFromApiServer);
    }
    Ok(())
}

async fn review(state: &AppState, body: &[u8], selection: Selection) -> Result<HttpResponse> {
    let (review, request) = AdmissionReview::parse(body).inspect_err(|e| {
        state.metrics.bad_requests.inc();
        tracing::warn!(error = %e, "refused a request that is not an AdmissionReview");
    })?;
    state.metrics.reviews.inc();
    let pod = request
        .object
        .as_ref()
        .and_then(|o| {
            let meta = &o["metadata"];
            meta["name"]
                .as_str()
                .or_else(|| meta["generateName"].as_str())
        })
        .unwrap_or("")
        .to_string();
    let namespace = request.namespace.clone().unwrap_or_default();
    let patch = match state
        .mutator
        .mutate(&request, selection, state.secrets.as_ref())
        .await
    {
        Ok(Some(m)) => {
            state.metrics.mutated.inc();
            state.metrics.images_rewritten.inc_by(m.images.len() as u64);
            state
                .metrics
                .secrets_written
                .inc_by(m.secrets_written as u64);
            tracing::info!(uid = %request.uid, %namespace, %pod, images = m.images.len(), secrets = ?m.secrets, dry_run = request.dry_run.unwrap_or(false), "pod pulls through the agent");
            Some(m.patch)
        }
        Ok(None) => None,
        Err(e) => {
            state.metrics.failures.inc();
            tracing::warn!(uid = %request.uid, %namespace, %pod, error = %e, "pod left unchanged");
            None
        }
    };
    Ok(HttpResponse::Ok().json(review.respond(&request, patch.as_deref())))
}

/// The serving certificate chain and key, from PEM files; with `client_ca_file`, client
/// certificates it signed are asked for and checked (a connection without one is still taken:
/// kubelet's probes of /healthz carry none, and reviews are refused on it).
fn tls_config(
    cert_file: &str,
    key_file: &str,
    client_ca_file: &str,
) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: &str, file: &str, e: &dyn std::fmt::Display| {
        Error::Tls(format!("{what} {file}: {e}"))
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls("certificate", cert_file, &e))?;
    if certs.is_empty() {
        return Err(tls("certificate", cert_file, &"no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls("key", key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(client_ca_file)
            .map_err(|e| tls("client CA", client_ca_file, &e))?
        {
            let ca = ca.map_err(|e| tls("client CA", client_ca_file, &e))?;
            roots
                .add(ca)
                .map_err(|e| tls("client CA", client_ca_file, &e))?;
        }
        if roots.is_empty() {
            return Err(tls(
                "client CA",
                client_ca_file,
                &"no PEM certificate in it",
            ));
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls("client CA", client_ca_file, &e))?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key", cert_file, &e))
}
