//! Peer connections coming in and going out: both pass the same handshake, then the actor
//! keeps one per pair.

use super::conn::{handshake, HandshakeError};
use super::wire::Hello;
use super::Input;
use crate::state::AgentState;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Handshakes under way at once from the peer port: a host that opens connections and says
/// nothing cannot hold more than this many tasks and sockets.
const HANDSHAKES: usize = 64;

fn hello(state: &AgentState) -> Hello {
    let mut nonce = [0u8; 16];
    let _ = getrandom(&mut nonce);
    Hello {
        nonce,
        node: state.node.clone(),
        pool: state.cfg.pool.clone(),
    }
}

/// Fresh random bytes for a nonce (from the kernel; a clock-based fallback if that fails).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (t >> (8 * (i % 16))) as u8;
            }
            Err(e)
        }
    }
}

/// Accepts peers on the peer port.
pub async fn listen(
    state: Arc<AgentState>,
    listener: TcpListener,
    tx: mpsc::UnboundedSender<Input>,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer port accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%from, "too many peer handshakes under way; connection dropped");
            continue;
        };
        let (state, tx) = (state.clone(), tx.clone());
        tokio::spawn(async move {
            let me = hello(&state);
            let result =
                handshake(stream, &me, &state.keys, false, state.cfg.connect_timeout.0).await;
            drop(slot);
            match result {
                Ok((greeted, pending)) => {
                    let _ = tx.send(Input::Connected {
                        greeted,
                        pending,
                        dialed: false,
                    });
                }
                Err(e) => report(&state, &from.to_string(), &e),
            }
        });
    }
}

/// Connects to a member the scheduler named.
pub fn dial(state: Arc<AgentState>, node: String, addr: String, tx: mpsc::UnboundedSender<Input>) {
    tokio::spawn(async move {
        let timeout = state.cfg.connect_timeout.0;
        let connect = tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await;
        let stream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = tx.send(Input::DialFailed {
                    node,
                    why: format!("connecting to {addr}: {e}"),
                });
                return;
            }
            Err(_) => {
                let _ = tx.send(Input::DialFailed {
                    node,
                    why: format!("connecting to {addr}: timed out"),
                });
                return;
            }
        };
        // An accepted connection has the listener's bound; a dialed one needs its own.
        if let Err(e) = super::bound_send_buffer(&stream, state.cfg.peer_send_buffer.0) {
            tracing::debug!(peer = %addr, error = %e, "peer send buffer not bounded");
        }
        let me = hello(&state);
        match handshake(stream, &me, &state.keys, true, timeout).await {
            Ok((greeted, pending)) if greeted.hello.node == node => {
                let _ = tx.send(Input::Connected {
                    greeted,
                    pending,
                    dialed: true,
                });
            }
            Ok((greeted, _)) => {
                let _ = tx.send(Input::DialFailed {
                    node,
                    why: format!("{addr} answered as {}", greeted.hello.node),
                });
            }
            Err(e) => {
                report(&state, &addr, &e);
                let _ = tx.send(Input::DialFailed {
                    node,
                    why: e.to_string(),
                });
            }
        }
    });
}

fn report(state: &AgentState, who: &str, e: &HandshakeError) {
    if matches!(e, HandshakeError::BadMac | HandshakeError::NotConnected(_)) {
        state.metrics.peer_denied.inc();
        tracing::warn!(peer = who, error = %e, "peer refused");
    } else {
        tracing::debug!(peer = who, error = %e, "peer handshake failed");
    }
}
