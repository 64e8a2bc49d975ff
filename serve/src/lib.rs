//! What every poolcast HTTP server shares: building the actix server on an already-bound
//! listener (so tests bind `127.0.0.1:0`), the connection settings of `nodepool::wire`,
//! `/healthz`, the Prometheus answer of `/metrics`, graceful shutdown, and JSON error bodies.
//! Each server says only which routes it has.

use actix_web::dev::Server;
use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::future::Future;
use std::net::TcpListener;

/// How one server differs from the others.
#[derive(Default)]
pub struct Options {
    /// Seconds in-flight requests get to finish once shutdown begins.
    pub shutdown_secs: u64,
    /// Response bytes gathered before a socket write; `None`: actix's default (32 KiB).
    pub write_buffer: Option<usize>,
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    pub tls: Option<rustls::ServerConfig>,
}

/// Starts serving `routes` (plus `GET /healthz`) on `listener`. The returned server runs once
/// awaited; [`until`] runs it until a shutdown signal.
pub fn start<F>(listener: TcpListener, routes: F, options: Options) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let server = HttpServer::new(move || {
        App::new()
            .route("/healthz", web::get().to(healthz))
            .configure(routes.clone())
    });
    let server = match options.tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    let server = match options.write_buffer {
        Some(bytes) => server.h1_write_buffer_size(bytes),
        None => server,
    };
    Ok(server
        .keep_alive(nodepool::wire::SERVER_KEEP_ALIVE)
        .disable_signals()
        .shutdown_timeout(options.shutdown_secs)
        .run())
}

/// Runs `server` until it fails or `shutdown` resolves; then stops it, letting requests in
/// flight finish.
pub async fn until(server: Server, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let handle = server.handle();
    tokio::select! {
        result = server => result,
        _ = shutdown => {
            handle.stop(true).await;
            Ok(())
        }
    }
}

/// A request's headers as `(name, value)` pairs, for checks that take plain parts.
pub fn header_pairs(req: &HttpRequest) -> impl Iterator<Item = (&str, &[u8])> {
    req.headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// A Prometheus scrape answer: OpenMetrics text as `prometheus-client` renders it.
pub fn metrics(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

/// An error answer: `status`, `headers` (those that are not valid header values are left
/// out) and a JSON `body`.
pub fn json_error(
    status: u16,
    headers: impl IntoIterator<Item = (&'static str, String)>,
    body: impl actix_web::body::MessageBody + 'static,
) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.insert_header((name, value));
        }
    }
    resp.insert_header((CONTENT_TYPE, "application/json"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_answers_healthz_and_its_routes_then_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let routes = |cfg: &mut web::ServiceConfig| {
            cfg.route(
                "/hello",
                web::get().to(|| async { json_error(418, [("X-Why", "tea".into())], "{}") }),
            );
        };
        let server = start(listener, routes, Options::default()).expect("start");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(until(server, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let health = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.text().await.expect("body"), "ok");
        let teapot = http
            .get(format!("http://{addr}/hello"))
            .send()
            .await
            .expect("route");
        assert_eq!(teapot.status().as_u16(), 418);
        assert_eq!(teapot.headers()["x-why"], "tea");
        assert_eq!(teapot.headers()["content-type"], "application/json");
        let _ = stop.send(());
        running.await.expect("join").expect("server ran");
        assert!(
            http.get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err(),
            "still answering after shutdown"
        );
    }
}
