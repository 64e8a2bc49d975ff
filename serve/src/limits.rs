//! What keeps one client, or many, from holding a server's memory: a cap on open connections,
//! past which a connection is answered `503` with a clear reason and closed, and a send
//! deadline after which the kernel gives up on a client that stopped reading.
//!
//! The cap counts accepted connections (a guard in each connection's data, dropped when it
//! closes); a connection over the cap still gets an answer, so a client learns why instead of
//! waiting in the accept queue. `/healthz` is answered on every connection: a probe must not
//! restart a server that is only busy.

use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpResponse;
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One accepted connection, counted while it is open.
struct Slot {
    open: Arc<AtomicUsize>,
    over_cap: bool,
    /// A TLS client that presented a certificate the server's verifier accepted.
    client_cert: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts open connections against `max` (0: no cap); for `HttpServer::on_connect`.
pub(crate) fn counter(max: usize) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    let open = Arc::new(AtomicUsize::new(0));
    move |io, data: &mut Extensions| {
        let now = open.fetch_add(1, Ordering::Relaxed) + 1;
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        // The handshake is done by now: a certificate here passed the verifier.
        let client_cert = io.downcast_ref::<Tls>().is_some_and(|tls| {
            tls.get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty())
        });
        data.insert(Slot {
            open: open.clone(),
            over_cap: max > 0 && now > max,
            client_cert,
        });
    }
}

/// Whether the request came over TLS with a client certificate the server's verifier accepted
/// (servers that ask for one: the webhook with `clientCAFile`).
pub fn client_certificate(req: &actix_web::HttpRequest) -> bool {
    req.conn_data::<Slot>().is_some_and(|s| s.client_cert)
}

/// Answers every request on a connection over the cap with `503` and closes it.
pub(crate) async fn refuse_over_cap(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let over = req.conn_data::<Slot>().is_some_and(|s| s.over_cap);
    if over && req.path() != "/healthz" {
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"too many open connections to this server; retry shortly"}]}"#;
        let resp = HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .content_type("application/json")
            .force_close()
            .body(body);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Makes the kernel close, after `deadline`, every connection `listener` accepts from now on
/// whose sent data stays unacknowledged (or unsent, the client's window shut) that long
/// (TCP_USER_TIMEOUT, which accepted sockets take from their listener). A client that stops
/// reading then frees its buffers; one that reads slowly is not cut.
pub(crate) fn send_deadline(
    listener: &std::net::TcpListener,
    deadline: Duration,
) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_user_timeout(Some(deadline))
}
