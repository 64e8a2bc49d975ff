//! One connection to a peer: the handshake, then a reader and a writer.
//!
//! ```text
//!   dial/accept ─> HELLO both ways ─> AUTH both ways (MAC over both HELLOs with the pool secret)
//!   reader: frames ─> DATA: written at its place in the blob's file and hashed (Sinks),
//!                           the whole piece's hash to the actor
//!                  ─> everything else to the actor
//!   writer: control frames first (notices merged), piece data in between, 32 KiB at a time
//! ```

use super::wire::{Frame, Hello, MAX_DATA};
use super::{Input, PeerId};
use crate::state::AgentState;
use bytes::{Bytes, BytesMut};
use nodepool::{PoolKeys, PoolSecret};
use sha2::Digest as _;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Piece data a peer connection's kernel buffer holds not yet sent (`TCP_NOTSENT_LOWAT`): a
/// push is then written about as fast as the uplink sends it, so the swarm's push times measure
/// the uplink (its lanes fit it: `swarm::Tunables::lane_rate`), and an answer or notice waits
/// behind little data. Measured no slower on equal links (docs/benchmarks.md).
const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Progress of a piece coming in is reported at its first bytes and then every this many.
const PROGRESS_EVERY: u64 = 128 * 1024;

/// What the writer is told to send.
pub enum Out {
    Frame(Frame),
    /// Send piece `piece` of blob `task`: `len` bytes of `file` from `start`.
    Push {
        task: u64,
        piece: u32,
        file: Arc<File>,
        start: u64,
        len: u64,
    },
}

/// The actor's handle on a connection's writer.
#[derive(Clone)]
pub struct ConnHandle {
    tx: mpsc::UnboundedSender<Out>,
}

impl ConnHandle {
    pub fn send(&self, out: Out) {
        let _ = self.tx.send(out);
    }
}

/// Where bytes of a piece this node accepted go, and the hash over them so far.
pub struct Sink {
    file: Arc<File>,
    start: u64,
    len: u64,
    written: u64,
    hasher: sha2::Sha256,
    /// The mirror's proof of the piece, if the peer sent one ahead of it.
    proof: Option<[u8; 64]>,
    /// Given up: no byte more may reach the file (another transfer may own the piece now).
    closed: bool,
    /// The piece's `pieces` span (`piece.source=peer`, `crate::trace::piece_span`), from the
    /// ACCEPT to the piece's end; disabled when tracing is off.
    span: tracing::Span,
}

impl Sink {
    /// No byte more reaches the file; the piece's span ends with `outcome` (once).
    fn end(&mut self, outcome: &'static str) {
        if self.closed {
            return;
        }
        self.closed = true;
        crate::trace::end(&self.span, self.written, outcome);
        self.span = tracing::Span::none();
    }
}

type SinkKey = (PeerId, u64, u32);

/// Pieces accepted from peers and not yet whole, by (peer, blob, piece). Each sink has its own
/// lock, so connections write in parallel; closing one takes its lock, so no write of a
/// transfer given up lands after the close.
#[derive(Default)]
pub struct Sinks(parking_lot::Mutex<HashMap<SinkKey, Arc<parking_lot::Mutex<Sink>>>>);

impl Sinks {
    /// Accepts piece `key` into `len` bytes of `file` from `start`; `span` is the piece's span,
    /// ended when the piece is whole, fails or is closed.
    pub fn open(&self, key: SinkKey, file: Arc<File>, start: u64, len: u64, span: tracing::Span) {
        let sink = Sink {
            file,
            start,
            len,
            written: 0,
            hasher: sha2::Sha256::new(),
            proof: None,
            closed: false,
            span,
        };
        // One writer per piece: any other transfer of it still open (given up, its sender not
        // yet told) is closed first, so no stale byte lands in the piece's place.
        let stale: Vec<_> = {
            let mut map = self.0.lock();
            let keys: Vec<SinkKey> = map
                .keys()
                .filter(|k| k.1 == key.1 && k.2 == key.2)
                .copied()
                .collect();
            let stale = keys.into_iter().filter_map(|k| map.remove(&k)).collect();
            map.insert(key, Arc::new(parking_lot::Mutex::new(sink)));
            stale
        };
        for old in stale {
            old.lock().end("superseded");
        }
    }

    /// Keeps the mirror's proof a peer sent ahead of piece `key`, if it is accepted here and
    /// not yet whole; it goes to the actor with the piece's hash.
    fn set_proof(&self, key: &SinkKey, proof: [u8; 64]) {
        if let Some(sink) = self.get(key) {
            sink.lock().proof = Some(proof);
        }
    }

    /// Gives up piece `key` (`why`, for its span: `withdrawn` by the peer, `refused` here).
    pub fn close(&self, key: SinkKey, why: &'static str) {
        let old = self.0.lock().remove(&key);
        if let Some(old) = old {
            old.lock().end(why);
        }
    }

    /// Closes every sink of a peer; returns how many pieces were coming from it.
    pub fn close_peer(&self, peer: PeerId) -> usize {
        let gone: Vec<_> = {
            let mut map = self.0.lock();
            let keys: Vec<SinkKey> = map.keys().filter(|k| k.0 == peer).copied().collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        for s in &gone {
            s.lock().end("peer gone");
        }
        gone.len()
    }

    fn get(&self, key: &SinkKey) -> Option<Arc<parking_lot::Mutex<Sink>>> {
        self.0.lock().get(key).cloned()
    }
}

/// A peer that passed the handshake.
pub struct Greeted {
    pub hello: Hello,
    pub stream: TcpStream,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] super::wire::WireError),
    #[error("expected {0}")]
    Unexpected(&'static str),
    #[error("the peer's pool secret does not match")]
    BadMac,
    #[error("no key for pool {0}: it is not connected to this node's pool")]
    NotConnected(String),
    #[error("timed out")]
    Timeout,
}

fn mac(secret: &PoolSecret, dialer: &Hello, listener: &Hello, from_dialer: bool) -> [u8; 32] {
    let role: &[u8] = if from_dialer { b"dialer" } else { b"listener" };
    secret.mac(&[
        b"poolcast-peer/1",
        role,
        &dialer.nonce,
        dialer.node.as_bytes(),
        dialer.pool.as_bytes(),
        &listener.nonce,
        listener.node.as_bytes(),
        listener.pool.as_bytes(),
    ])
}

async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(f) = Frame::decode(buf)? {
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Unexpected("a frame, got end of stream"));
        }
    }
}

async fn write_frame(stream: &mut TcpStream, f: &Frame) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    stream.write_all(&out).await
}

/// Both ends say who they are, then prove they hold the key for their two pools (the pool key
/// within a pool, the pair key across connected pools; each MACs both HELLOs, so neither can
/// be replayed into another connection). A peer of a pool this node holds no key for is
/// refused. With no keys at all, MACs are sent and not checked. Returns the peer's HELLO and bytes already read past the handshake.
pub async fn handshake(
    mut stream: TcpStream,
    me: &Hello,
    keys: &PoolKeys,
    dialer: bool,
    timeout: Duration,
) -> Result<(Greeted, BytesMut), HandshakeError> {
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set on a peer connection");
    }
    let work = async {
        let mut buf = BytesMut::with_capacity(4096);
        write_frame(&mut stream, &Frame::Hello(me.clone())).await?;
        let Frame::Hello(them) = read_frame(&mut stream, &mut buf).await? else {
            return Err(HandshakeError::Unexpected("HELLO"));
        };
        let secret = match keys.is_off() {
            true => keys.own().clone(),
            false => keys
                .key_for(&me.pool, &them.pool)
                .ok_or_else(|| HandshakeError::NotConnected(them.pool.clone()))?,
        };
        let secret = &secret;
        let (d, l) = if dialer { (me, &them) } else { (&them, me) };
        write_frame(&mut stream, &Frame::Auth(mac(secret, d, l, dialer))).await?;
        let Frame::Auth(theirs) = read_frame(&mut stream, &mut buf).await? else {
            return Err(HandshakeError::Unexpected("AUTH"));
        };
        let expected = mac(secret, d, l, !dialer);
        if !secret.is_off() && !constant_time_eq(&theirs, &expected) {
            return Err(HandshakeError::BadMac);
        }
        Ok((
            Greeted {
                hello: them,
                stream,
            },
            buf,
        ))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts the reader and writer of a greeted connection; returns the writer's handle.
pub fn run(
    state: Arc<AgentState>,
    peer: PeerId,
    greeted: Greeted,
    pending: BytesMut,
    sinks: Arc<Sinks>,
    actor: mpsc::UnboundedSender<Input>,
) -> ConnHandle {
    let _ = greeted.stream.set_nodelay(true);
    let (read, write) = greeted.stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let r_actor = actor.clone();
    let r_state = state.clone();
    tokio::spawn(async move {
        let why = reader(&r_state, peer, read, pending, &sinks, &r_actor).await;
        let _ = r_actor.send(Input::Gone { peer, why });
    });
    tokio::spawn(async move {
        if let Err(e) = writer(&state, peer, write, rx, &actor).await {
            let _ = actor.send(Input::Gone {
                peer,
                why: format!("writing: {e}"),
            });
        }
    });
    ConnHandle { tx }
}

async fn reader(
    state: &AgentState,
    peer: PeerId,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    sinks: &Sinks,
    actor: &mpsc::UnboundedSender<Input>,
) -> String {
    loop {
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(Frame::Data {
                    task,
                    piece,
                    offset,
                    bytes,
                })) => {
                    state.limits.down.take(bytes.len()).await;
                    state.limits.total.take(bytes.len()).await;
                    state.metrics.peer_in().inc_by(bytes.len() as u64);
                    if let Err(why) = take_data(sinks, (peer, task, piece), offset, &bytes, actor) {
                        return why;
                    }
                }
                Ok(Some(Frame::Proof { task, piece, sig })) => {
                    sinks.set_proof(&(peer, task, piece), sig);
                }
                Ok(Some(frame)) => {
                    if actor.send(Input::Frame { peer, frame }).is_err() {
                        return "agent stopping".into();
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("bad frame: {e}"),
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => return "closed".into(),
            Ok(_) => {}
            Err(e) => return format!("reading: {e}"),
        }
    }
}

/// Writes piece bytes where they belong and hashes them; at the last byte, hands the piece's
/// hash to the actor. Bytes of a piece not accepted here (refused, or given up) are dropped:
/// the sender may not have heard yet. Out-of-order or excess bytes end the connection.
fn take_data(
    sinks: &Sinks,
    key: SinkKey,
    offset: u32,
    bytes: &Bytes,
    actor: &mpsc::UnboundedSender<Input>,
) -> Result<(), String> {
    let Some(sink) = sinks.get(&key) else {
        return Ok(());
    };
    let mut sink = sink.lock();
    if sink.closed {
        return Ok(());
    }
    if u64::from(offset) != sink.written || sink.written + bytes.len() as u64 > sink.len {
        return Err(format!(
            "piece {} data at {offset} (+{}) does not follow {} of {} bytes",
            key.2,
            bytes.len(),
            sink.written,
            sink.len
        ));
    }
    let at = sink.start + sink.written;
    let file = sink.file.clone();
    let before = sink.written;
    let result = match tokio::task::block_in_place(|| file.write_all_at(bytes, at)) {
        Err(e) => Some(Err(format!("writing: {e}"))),
        Ok(()) => {
            sink.hasher.update(bytes);
            sink.written += bytes.len() as u64;
            (sink.written == sink.len)
                .then(|| Ok(std::mem::take(&mut sink.hasher).finalize().into()))
        }
    };
    let written = sink.written;
    match result {
        Some(hash) => {
            match &hash {
                Ok(_) => sink.end("received"),
                Err(e) => {
                    sink.span.record("error.message", e.as_str());
                    sink.end("failed");
                }
            }
            let proof = sink.proof.take();
            drop(sink);
            sinks.0.lock().remove(&key);
            let _ = actor.send(Input::Arrived {
                peer: Some(key.0),
                task: key.1,
                piece: key.2,
                hash,
                proof,
            });
        }
        // Progress at the first bytes and every PROGRESS_EVERY after: the stall timer's.
        None if before == 0 || before / PROGRESS_EVERY != written / PROGRESS_EVERY => {
            let _ = actor.send(Input::Progress {
                task: key.1,
                piece: key.2,
                bytes: written,
            });
        }
        None => {}
    }
    Ok(())
}

async fn writer(
    state: &AgentState,
    peer: PeerId,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    actor: &mpsc::UnboundedSender<Input>,
) -> std::io::Result<()> {
    let mut control: VecDeque<Frame> = VecDeque::new();
    let mut pushes = Pushes(VecDeque::new(), state);
    let pushes = &mut pushes.0;
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        // Everything queued, without waiting.
        while let Ok(o) = rx.try_recv() {
            queue(state, o, &mut control, pushes);
        }
        if control.is_empty() && pushes.is_empty() {
            match rx.recv().await {
                Some(o) => queue(state, o, &mut control, pushes),
                None => return Ok(()),
            }
            continue;
        }
        out.clear();
        for f in merge_notices(&mut control) {
            f.encode(&mut out);
        }
        if let Some(push) = pushes.front_mut() {
            let n = (push.len - push.sent).min(MAX_DATA as u64) as usize;
            let mut data = vec![0u8; n];
            let at = push.start + push.sent;
            let file = push.file.clone();
            let read = tokio::task::block_in_place(|| file.read_exact_at(&mut data, at));
            match read {
                Ok(()) => {
                    state.limits.up.take(n).await;
                    state.limits.total.take(n).await;
                    state.metrics.peer_out().inc_by(n as u64);
                    Frame::Data {
                        task: push.task,
                        piece: push.piece,
                        offset: push.sent as u32,
                        bytes: Bytes::from(data),
                    }
                    .encode(&mut out);
                    push.sent += n as u64;
                }
                Err(e) => {
                    tracing::warn!(peer, piece = push.piece, error = %e, "reading a piece to push");
                    Frame::Withdraw {
                        task: push.task,
                        piece: push.piece,
                    }
                    .encode(&mut out);
                    push.sent = push.len;
                    push.failed = true;
                }
            }
        }
        write.write_all(&out).await?;
        if let Some(push) = pushes.front().filter(|p| p.sent >= p.len) {
            state.metrics.uploads.dec();
            let _ = actor.send(Input::Pushed {
                peer,
                task: push.task,
                piece: push.piece,
                ok: !push.failed,
            });
            pushes.pop_front();
        }
    }
}

/// Pushes queued on a connection; those left when it ends leave the uploads gauge.
struct Pushes<'a>(VecDeque<Push>, &'a AgentState);

impl Drop for Pushes<'_> {
    fn drop(&mut self) {
        self.1.metrics.uploads.dec_by(self.0.len() as i64);
    }
}

struct Push {
    task: u64,
    piece: u32,
    file: Arc<File>,
    start: u64,
    len: u64,
    sent: u64,
    failed: bool,
}

fn queue(state: &AgentState, o: Out, control: &mut VecDeque<Frame>, pushes: &mut VecDeque<Push>) {
    match o {
        Out::Frame(f) => control.push_back(f),
        Out::Push {
            task,
            piece,
            file,
            start,
            len,
        } => {
            state.metrics.uploads.inc();
            pushes.push_back(Push {
                task,
                piece,
                file,
                start,
                len,
                sent: 0,
                failed: false,
            })
        }
    }
}

/// The queued control frames, with runs of notices for one blob merged into one frame.
fn merge_notices(control: &mut VecDeque<Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::with_capacity(control.len());
    for f in control.drain(..) {
        match (out.last_mut(), f) {
            (
                Some(Frame::Notices { task, notices }),
                Frame::Notices {
                    task: t,
                    notices: more,
                },
            ) if *task == t && notices.len() + more.len() <= super::wire::MAX_NOTICES => {
                notices.extend(more);
            }
            (_, f) => out.push(f),
        }
    }
    out
}
