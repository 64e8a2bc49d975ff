//! The peer API: `GET /pieces/<digest>/<index>?pieceSize=N`, for peers of reachable pools that
//! sign their request with the pool secret. Pieces come from a download under way (only
//! verified pieces) or from the cache; uploads count against `uploadRate` and `ratelimit`.

use crate::error::{Error, Result};
use crate::state::AgentState;
use actix_web::body::SizedStream;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use nodepool::PieceLayout;
use std::sync::Arc;
use std::time::SystemTime;
use storage::reference::Digest;

/// Upload chunks stay small: large buffers freed on other threads bloat glibc's arenas.
const CHUNK: u64 = 128 * 1024;
/// Pieces uploaded at once. More would slice the uplink so thin that no piece finishes soon:
/// a piece sent whole to a few peers turns them into holders that pass it on, where the same
/// bytes spread over every asker leave this node the only holder for longer. Askers beyond
/// this get `503` and ask another holder.
pub const UPLOAD_SLOTS: usize = 4;

/// Bounds the kernel send buffer of every connection `listener` accepts from now on (Linux
/// copies a listener's SO_SNDBUF to the sockets it accepts), so an upload slot is held until
/// its bytes are nearly on the wire, not just in a multi-megabyte kernel buffer. `0` leaves
/// the kernel's autotuning. See `peerSendBuffer`.
pub fn bound_send_buffer(listener: &std::net::TcpListener, bytes: u64) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    socket2::SockRef::from(listener).set_send_buffer_size(bytes)
}

fn authorize(req: &HttpRequest, state: &AgentState) -> Result<()> {
    if state.secret.is_off() {
        return Ok(());
    }
    let header = req
        .headers()
        .get(nodepool::AUTH_HEADER)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| Error::PeerDenied("no pool signature".into()))?;
    let path = match req.uri().path_and_query() {
        Some(pq) => pq.as_str().to_string(),
        None => req.path().to_string(),
    };
    let pool = state
        .secret
        .verify_now("GET", &path, header)
        .map_err(|e| Error::PeerDenied(e.to_string()))?;
    if !state.reachable.read().contains(&pool) {
        return Err(Error::PeerDenied(format!(
            "pool `{}` does not reach this node's pool",
            pool.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

pub async fn serve_piece(
    req: HttpRequest,
    path: web::Path<(String, u32)>,
    state: web::Data<AgentState>,
) -> Result<HttpResponse> {
    authorize(&req, &state)?;
    let (digest, index) = path.into_inner();
    let digest = Digest::parse(&digest)?;
    let piece_size = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "pieceSize")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|p| nodepool::check_piece_size(*p).is_ok())
        .ok_or_else(|| {
            Error::NotHeld(format!(
                "{digest} piece {index} (pieceSize missing or out of range)"
            ))
        })?;
    let not_held = || Error::NotHeld(format!("{digest} piece {index}"));

    let task = state.tasks.lock().get(digest.hex()).cloned();
    let body: std::pin::Pin<Box<dyn Stream<Item = storage::Result<Bytes>>>>;
    let len;
    if let Some(task) = task.filter(|t| t.layout.piece_size() == piece_size) {
        if !task.has_piece(index) {
            return Err(not_held());
        }
        let (start, end) = task.piece_range(index).ok_or_else(not_held)?;
        len = end - start;
        let ingest = task.ingest.clone();
        body = Box::pin(futures_util::stream::unfold(start, move |pos| {
            let ingest = ingest.clone();
            async move {
                if pos >= end {
                    return None;
                }
                let n = (end - pos).min(CHUNK);
                Some((ingest.read_at(pos, n as usize).await, pos + n))
            }
        }));
    } else {
        let Some((file, entry)) = state
            .store
            .open_verified(&digest, SystemTime::now())
            .await?
        else {
            return Err(not_held());
        };
        if entry.media_type.is_some() {
            return Err(not_held());
        }
        let span = PieceLayout::new(entry.size, piece_size)
            .ok()
            .and_then(|layout| layout.span(index))
            .ok_or_else(not_held)?;
        len = span.end - span.start;
        body = Box::pin(storage::body::file_stream(file, span.start, span.end));
    }
    let slot = state
        .upload_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::Busy(format!("all {UPLOAD_SLOTS} upload slots in use")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(SizedStream::new(
            len,
            upload(body, state.into_inner(), slot),
        )))
}

/// Counts an upload while it runs, and spends the upload and total budgets on it.
fn upload(
    body: std::pin::Pin<Box<dyn Stream<Item = storage::Result<Bytes>>>>,
    state: Arc<AgentState>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = storage::Result<Bytes>> {
    /// Holds the upload slot until the body is sent or dropped.
    struct InProgress(
        Arc<AgentState>,
        #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
    );
    impl Drop for InProgress {
        fn drop(&mut self) {
            self.0.metrics.uploads.dec();
        }
    }
    state.metrics.uploads.inc();
    let guard = Arc::new(InProgress(state, slot));
    body.then(move |chunk| {
        let guard = guard.clone();
        async move {
            if let Ok(bytes) = &chunk {
                let state = &guard.0;
                state.limits.up.take(bytes.len()).await;
                state.limits.total.take(bytes.len()).await;
                state.metrics.peer_out().inc_by(bytes.len() as u64);
            }
            chunk
        }
    })
}

#[cfg(test)]
mod tests {
    use super::bound_send_buffer;
    use std::net::{TcpListener, TcpStream};

    fn accepted_send_buffer(bytes: u64) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        bound_send_buffer(&listener, bytes).expect("SO_SNDBUF");
        let _client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (conn, _) = listener.accept().expect("accept");
        socket2::SockRef::from(&conn)
            .send_buffer_size()
            .expect("SO_SNDBUF")
    }

    #[test]
    fn accepted_peer_connections_keep_the_bounded_send_buffer() {
        // Linux doubles the value for its bookkeeping, and autotuning would let the buffer
        // grow to net.ipv4.tcp_wmem's maximum (4 MiB by default) once data flows.
        let got = accepted_send_buffer(256 << 10);
        assert!(
            (256 << 10..=512 << 10).contains(&got),
            "an accepted peer connection has a {got}-byte send buffer, not ~256 KiB"
        );
    }

    #[test]
    fn zero_leaves_the_kernel_default() {
        let bounded = accepted_send_buffer(64 << 10);
        let default = accepted_send_buffer(0);
        assert_ne!(bounded, default);
    }
}
