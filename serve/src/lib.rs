//! What every poolcast HTTP server shares: building the actix server on an already-bound
//! listener (so tests bind `127.0.0.1:0`), the connection settings of `nodepool::wire`,
//! `/healthz`, the Prometheus answer of `/metrics`, graceful shutdown, and JSON error bodies.
//! Each server says only which routes it has; [`Options`] bound its connections (see `limits`).

mod limits;
pub mod trace;

pub use limits::client_certificate;

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
    /// Open connections served; more are answered `503` and closed. 0: no cap.
    pub max_connections: usize,
    /// A client whose connection takes no data for this long is cut (`None`: the kernel's
    /// own, about 15 minutes of retransmissions and never for a shut window).
    pub send_timeout: Option<std::time::Duration>,
}

/// Starts serving `routes` (plus `GET /healthz`) on `listener`. The returned server runs once
/// awaited; [`until`] runs it until a shutdown signal.
pub fn start<F>(listener: TcpListener, routes: F, options: Options) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    if let Some(deadline) = options.send_timeout {
        limits::send_deadline(&listener, deadline)?;
    }
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(trace::span_requests))
            .wrap(actix_web::middleware::from_fn(limits::refuse_over_cap))
            .route("/healthz", web::get().to(healthz))
            .configure(routes.clone())
    })
    .on_connect(limits::counter(options.max_connections));
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
        .client_request_timeout(nodepool::wire::SERVER_KEEP_ALIVE)
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
        // The workers' threads drop their connections (and the listener) a moment after the
        // stop resolves; a new connection each try, so a pooled keep-alive one cannot answer.
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let answer = fresh.get(format!("http://{addr}/healthz")).send().await;
            if answer.is_err() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still answering 5 s after shutdown"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_is_answered_503_and_healthz_still_answers() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let routes = |cfg: &mut web::ServiceConfig| {
            cfg.route("/work", web::get().to(|| async { "done" }));
        };
        let options = Options {
            max_connections: 1,
            ..Options::default()
        };
        let server = start(listener, routes, options).expect("start");
        let handle = server.handle();
        let running = tokio::spawn(server);
        // The one allowed connection, kept open once it was served.
        let first = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /work HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).contains("done"));
            s
        })
        .await
        .expect("first connection");
        let http = reqwest::Client::new();
        let over = http
            .get(format!("http://{addr}/work"))
            .send()
            .await
            .expect("second connection");
        assert_eq!(over.status().as_u16(), 503);
        assert_eq!(over.headers()["retry-after"], "1");
        assert!(over.text().await.expect("body").contains("TOOMANYREQUESTS"));
        let health = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status().as_u16(), 200);
        // Once the first connection (and the one kept for /healthz) is gone, a new one is served.
        drop((first, http));
        let mut served = false;
        for _ in 0..100 {
            let fresh = reqwest::Client::new();
            if let Ok(r) = fresh.get(format!("http://{addr}/work")).send().await {
                if r.status().is_success() {
                    served = true;
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(served, "a freed slot was never reused");
        handle.stop(false).await;
        let _ = running.await;
    }

    /// A client that opens a connection it then does not use at once (Go's transport parks a
    /// dial that lost a race in its idle pool) must be served when it does use it. actix's own
    /// 5 s answered such a connection `408` and closed it, and a request written as the `408`
    /// arrived failed: a skopeo pull over a lossy link did (CI, 2026-12-02).
    #[tokio::test]
    async fn a_connection_left_unused_for_a_while_is_served_when_used() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let routes = |cfg: &mut web::ServiceConfig| {
            cfg.route("/work", web::get().to(|| async { "done" }));
        };
        let server = start(listener, routes, Options::default()).expect("start");
        let handle = server.handle();
        let running = tokio::spawn(server);
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            std::thread::sleep(std::time::Duration::from_secs(6));
            s.write_all(b"GET /work HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).expect("read");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .expect("client");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        handle.stop(false).await;
        let _ = running.await;
    }
}
