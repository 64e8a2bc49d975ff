//! The agent's P2P runtime: one task (the actor) owns the decisions (`swarm::Node`) and
//! carries them out over peer connections, mirror ranges and the scheduler.
//!
//! ```text
//!   downloads, connections, mirror ranges, scheduler answers ──Input──> actor
//!   actor: Input ──> swarm::Node::handle ... Node::decide ──> actions
//!     Offer/Accept/Refuse/Withdraw/Notify ──> frames on peer connections
//!     Push ──> a connection's writer streams the piece from the blob's file
//!     FetchMirror/CancelMirror ──> a range request to the mirror
//!     AskFresh ──> a long-poll to the scheduler
//!   arrivals (peer or mirror): hash checked against the mirror's digest ──> Node::Done, and the
//!   download's sequencer streams the verified prefix to containerd
//! ```
//!
//! Nothing from a peer is trusted: a piece counts only once its bytes hash to the digest the
//! mirror published, and a peer that sends a bad piece is blocked for the blob.

mod actor;
pub mod conn;
mod fetch;
mod peers;
mod schedule;
pub mod wire;

use crate::download::Download;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::sync::mpsc;

pub use actor::start;

/// The runtime's handle on a peer connection.
pub type PeerId = u64;

/// What the actor hears.
pub enum Input {
    /// A download began here.
    Start(Arc<Download>),
    /// More piece digests of a download are known.
    Layout {
        task: u64,
    },
    /// A download ended: verified and stored, or failed.
    Ended {
        task: u64,
        stored: bool,
    },
    /// A connection passed its handshake (`dialed`: this node dialled it).
    Connected {
        greeted: conn::Greeted,
        pending: BytesMut,
        dialed: bool,
    },
    /// Dialling a member failed.
    DialFailed {
        node: String,
        why: String,
    },
    Frame {
        peer: PeerId,
        frame: wire::Frame,
    },
    Gone {
        peer: PeerId,
        why: String,
    },
    /// A piece's bytes arrived whole (from a peer, or the mirror when `peer` is `None`), with
    /// their hash; `Err` when they could not be written.
    Arrived {
        peer: Option<PeerId>,
        task: u64,
        piece: u32,
        hash: Result<[u8; 32], String>,
        /// The mirror's proof the peer sent ahead of the piece.
        proof: Option<[u8; 64]>,
    },
    /// Bytes of a piece arrived: `bytes` of it so far.
    Progress {
        task: u64,
        piece: u32,
        bytes: u64,
    },
    /// A push went out whole (`ok`), or was given up.
    Pushed {
        peer: PeerId,
        task: u64,
        piece: u32,
        ok: bool,
    },
    /// A mirror range failed; its pieces from `piece` on did not arrive.
    MirrorFailed {
        task: u64,
        first: u32,
        piece: u32,
        why: String,
    },
    /// A held blob a peer asked about was opened from the cache (or is not held).
    Held {
        task: u64,
        held: Option<actor::HeldBlob>,
    },
    /// The scheduler's answers.
    Members {
        task: u64,
        answer: Result<schedule::Members, String>,
    },
    /// The answer to the long-poll for a lease.
    Fresh {
        task: u64,
        answer: Result<schedule::Fresh, String>,
    },
    /// A report of completed leases was taken (`None`), or failed (the pieces to report again).
    Reported {
        task: u64,
        completed: Option<Vec<u32>>,
    },
    /// A client asked for a blob: the next blob of its image may be started ahead
    /// (`storage::ahead`) once every piece this node pulls is released.
    WorkAhead,
}

/// The agent's handle on the actor.
#[derive(Clone)]
pub struct Swarm {
    tx: mpsc::UnboundedSender<Input>,
}

impl Swarm {
    /// The handle, and the actor's end of the channel (for [`start`]).
    pub fn channel() -> (Swarm, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Swarm { tx }, rx)
    }

    pub fn send(&self, input: Input) {
        let _ = self.tx.send(input);
    }
}

/// The decisions' settings from the agent's config: `transferTimeout` is the stall limit,
/// `proxyFsParallels` the pushes accepted at once.
pub fn tunables(cfg: &nodepool::AgentConfig) -> swarm::Tunables {
    swarm::Tunables {
        stall: cfg.transfer_timeout.0,
        max_incoming: cfg.proxy_fs_parallels,
        ..swarm::Tunables::default()
    }
}

/// Bounds the kernel send buffer of `socket`: a connection this node dialed, or a listener,
/// whose SO_SNDBUF Linux copies to every connection it accepts from then on. So control frames
/// wait little behind piece data queued in the kernel, on both ends of a pair's connection.
/// `0` leaves the kernel's autotuning. See `peerSendBuffer`.
pub fn bound_send_buffer<S: std::os::fd::AsFd>(socket: &S, bytes: u64) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    socket2::SockRef::from(socket).set_send_buffer_size(bytes)
}

#[cfg(test)]
mod send_buffer_tests {
    use super::bound_send_buffer;

    #[test]
    fn dialed_and_accepted_connections_both_get_the_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        bound_send_buffer(&listener, 64 << 10).expect("listener");
        let dialed =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let size = |s: &std::net::TcpStream| {
            socket2::SockRef::from(s)
                .send_buffer_size()
                .expect("SO_SNDBUF")
        };
        // Linux doubles what it is given, for its own bookkeeping.
        assert_eq!(size(&accepted), 128 << 10);
        let autotuned = size(&dialed);
        bound_send_buffer(&dialed, 64 << 10).expect("dialed");
        assert_eq!(size(&dialed), 128 << 10, "was {autotuned}");
        // 0 leaves the kernel's choice alone.
        bound_send_buffer(&dialed, 0).expect("zero");
        assert_eq!(size(&dialed), 128 << 10);
    }
}
