//! A hostile fake peer, for what no real agent does on purpose: stall mid-piece, or push a
//! piece of the right length and the wrong bytes. It speaks the real peer protocol (the agent's
//! own handshake and frames) and registers with the real scheduler through the real
//! `SchedulerClient`, heartbeating as a complete holder of the blobs it is given, so agents are
//! told of it and connect to it like to any other holder.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use agent::p2p::conn::handshake;
use agent::p2p::wire::{task_key, Frame, Hello, Join};
use bytes::{Bytes, BytesMut};
use nodepool::{PieceLayout, PoolKeys, PoolSecret};
use scheduler::api::{HeartbeatRequest, HeldTask, PeerRef};
use scheduler::SchedulerClient;
use swarm::PieceSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::image::BlobRef;

#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Pushes the first bytes of an accepted piece, then nothing, keeping the connection open.
    Stall,
    /// Pushes exactly an accepted piece's length, of bytes that are not the piece.
    Corrupt,
    /// As `Corrupt`, with a proof ahead of the bytes: a real signature over their hash, by a
    /// key that is not the mirror's.
    ForgedProof,
}

/// How the fake presents itself.
pub struct FakePeerSpec<'a> {
    /// Loopback address to bind (port 0), e.g. `127.0.0.200`.
    pub ip: &'a str,
    pub behaviour: Misbehaviour,
    /// Blobs it claims to hold whole.
    pub blobs: Vec<BlobRef>,
    pub scheduler_url: &'a str,
    pub pool: &'a str,
    pub secret: Option<&'a str>,
}

pub struct FakePeer {
    pub id: String,
    pub addr: String,
    pushes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// How often the fake heartbeats; well inside any peerTTL a test uses.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl FakePeer {
    /// Binds, misbehaves towards every agent that connects, and registers with the scheduler;
    /// returns once the scheduler accepted its first heartbeat (panics with its answer
    /// otherwise).
    pub fn start(spec: FakePeerSpec) -> FakePeer {
        let listener = std::net::TcpListener::bind((spec.ip, 0)).expect("binding fake peer");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener
            .local_addr()
            .expect("fake peer address")
            .to_string();
        let id = format!("hostile-{:?}", spec.behaviour).to_lowercase();
        let pushes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let blobs: Vec<(String, PieceLayout)> = spec
            .blobs
            .iter()
            .map(|b| (b.digest.clone(), PieceLayout::auto(b.size).expect("layout")))
            .collect();
        let secret = PoolKeys::from_release(PoolSecret::new(spec.secret.unwrap_or("")), spec.pool);
        let hello = Hello {
            nonce: [7; 16],
            node: id.clone(),
            pool: spec.pool.to_owned(),
        };
        let held: Vec<HeldTask> = blobs
            .iter()
            .filter(|(_, l)| l.count() > 0)
            .map(|(d, l)| HeldTask {
                digest: d.clone(),
                size: l.size(),
                piece_size: l.piece_size(),
            })
            .collect();
        let peer = PeerRef {
            id: id.clone(),
            pool: spec.pool.to_owned(),
            addr: addr.clone(),
        };
        let client = SchedulerClient::new(
            spec.scheduler_url,
            secret.own().clone(),
            spec.pool.to_owned(),
            Duration::from_secs(5),
        )
        .expect("scheduler client for the fake peer");
        let (first_tx, first_rx) = mpsc::channel();
        let (count, halt, behaviour) = (pushes.clone(), stop.clone(), spec.behaviour);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime for the fake peer");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let blobs = Arc::new(blobs);
                let serving = tokio::spawn({
                    let halt = halt.clone();
                    async move {
                        while !halt.load(Ordering::Relaxed) {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let (blobs, count, hello, secret, halt) = (
                                blobs.clone(),
                                count.clone(),
                                hello.clone(),
                                secret.clone(),
                                halt.clone(),
                            );
                            tokio::spawn(async move {
                                let _ = misbehave(
                                    stream, hello, secret, behaviour, &blobs, &count, &halt,
                                )
                                .await;
                            });
                        }
                    }
                });
                let req = HeartbeatRequest { peer, held };
                let mut first = Some(first_tx);
                while !halt.load(Ordering::Relaxed) {
                    let result = client.heartbeat(&req).await;
                    match (first.take(), result) {
                        (Some(tx), r) => {
                            let _ = tx.send(r.map(drop).map_err(|e| e.to_string()));
                        }
                        (None, Err(e)) => eprintln!("[fake peer] heartbeat failed: {e}"),
                        (None, Ok(_)) => {}
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
                serving.abort();
            });
        });
        match first_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the scheduler refused the fake peer's heartbeat: {e}"),
            Err(e) => panic!("the fake peer's first heartbeat did not return: {e}"),
        }
        eprintln!(
            "[fake peer] {id} on {addr} registered as a holder of {} blobs",
            spec.blobs.len()
        );
        FakePeer {
            id,
            addr,
            pushes,
            stop,
        }
    }

    /// Pieces agents accepted from it so far (each one then stalled or was corrupt).
    pub fn pushes(&self) -> usize {
        self.pushes.load(Ordering::Relaxed)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// One agent's connection: the real handshake, a JOIN answering the agent's with every piece
/// held, then offers of the pieces it lacks, each accepted one stalled or corrupted.
async fn misbehave(
    stream: tokio::net::TcpStream,
    hello: Hello,
    secret: PoolKeys,
    behaviour: Misbehaviour,
    blobs: &[(String, PieceLayout)],
    pushes: &AtomicUsize,
    halt: &AtomicBool,
) -> std::io::Result<()> {
    let (greeted, mut buf) = handshake(stream, &hello, &secret, false, Duration::from_secs(5))
        .await
        .map_err(std::io::Error::other)?;
    let mut stream = greeted.stream;
    let mut offered: Vec<(u64, u32)> = Vec::new();
    loop {
        if halt.load(Ordering::Relaxed) {
            return Ok(());
        }
        let frame = loop {
            if let Some(f) = Frame::decode(&mut buf).map_err(std::io::Error::other)? {
                break f;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let mut out = BytesMut::new();
        match frame {
            Frame::Join(j) => {
                let Some((_, layout)) = blobs.iter().find(|(d, _)| {
                    d.strip_prefix("sha256:")
                        .is_some_and(|h| hex::encode(j.digest) == h)
                }) else {
                    continue;
                };
                let key = task_key(&j.digest);
                Frame::Join(Join {
                    digest: j.digest,
                    size: layout.size(),
                    piece_size: layout.piece_size(),
                    have: PieceSet::full(layout.count()),
                    receiving: PieceSet::empty(layout.count()),
                })
                .encode(&mut out);
                // Offer every piece the agent lacks: it takes what nobody else is sending.
                for piece in (0..layout.count()).filter(|p| !j.have.contains(*p)) {
                    Frame::Offer { task: key, piece }.encode(&mut out);
                    offered.push((key, piece));
                }
            }
            Frame::Accept { task, piece } => {
                let Some((_, layout)) = blobs.iter().find(|(d, _)| blob_key(d) == Some(task))
                else {
                    continue;
                };
                let Some(span) = layout.span(piece) else {
                    continue;
                };
                pushes.fetch_add(1, Ordering::Relaxed);
                let len = (span.end - span.start) as usize;
                match behaviour {
                    Misbehaviour::Stall => {
                        Frame::Data {
                            task,
                            piece,
                            offset: 0,
                            bytes: Bytes::from(vec![0x5a; len.min(100)]),
                        }
                        .encode(&mut out);
                        stream.write_all(&out).await?;
                        // Silent from now on, connection open, until the agent gives up.
                        while !halt.load(Ordering::Relaxed) {
                            if stream.read_buf(&mut buf).await? == 0 {
                                return Ok(());
                            }
                        }
                        return Ok(());
                    }
                    Misbehaviour::Corrupt | Misbehaviour::ForgedProof => {
                        if matches!(behaviour, Misbehaviour::ForgedProof) {
                            use ed25519_dalek::Signer as _;
                            use sha2::Digest as _;
                            let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
                            let hash: [u8; 32] = sha2::Sha256::digest(vec![0x5a; len]).into();
                            let (blob, layout) = blobs
                                .iter()
                                .find(|(d, _)| blob_key(d) == Some(task))
                                .map(|(d, l)| (d.clone(), *l))
                                .expect("blob");
                            let mut raw = [0u8; 32];
                            hex::decode_to_slice(&blob["sha256:".len()..], &mut raw)
                                .expect("digest");
                            let message = storage::pieces::proof_message(
                                &raw,
                                layout.piece_size(),
                                u64::from(piece),
                                &hash,
                            );
                            Frame::Proof {
                                task,
                                piece,
                                sig: key.sign(&message).to_bytes(),
                            }
                            .encode(&mut out);
                        }
                        let mut sent = 0;
                        while sent < len {
                            let n = (len - sent).min(agent::p2p::wire::MAX_DATA);
                            Frame::Data {
                                task,
                                piece,
                                offset: sent as u32,
                                bytes: Bytes::from(vec![0x5a; n]),
                            }
                            .encode(&mut out);
                            sent += n;
                        }
                    }
                }
            }
            // Refusals, notices, leaves: nothing to do.
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

fn blob_key(digest: &str) -> Option<u64> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(digest.strip_prefix("sha256:")?, &mut raw).ok()?;
    Some(task_key(&raw))
}

/// A raw peer-protocol client, for tests that knock on an agent's peer port.
pub struct PeerClient {
    rt: tokio::runtime::Runtime,
    stream: tokio::net::TcpStream,
    buf: BytesMut,
}

impl PeerClient {
    /// Connects to `addr` and runs the handshake as node `node` of `pool` with `secret`.
    pub fn connect(
        addr: &str,
        node: &str,
        pool: &str,
        secret: &str,
    ) -> std::io::Result<PeerClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let hello = Hello {
            nonce: [9; 16],
            node: node.to_owned(),
            pool: pool.to_owned(),
        };
        let (greeted, buf) = rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            handshake(
                stream,
                &hello,
                &PoolKeys::from_release(PoolSecret::new(secret), pool),
                true,
                Duration::from_secs(5),
            )
            .await
            .map_err(std::io::Error::other)
        })?;
        Ok(PeerClient {
            rt,
            stream: greeted.stream,
            buf,
        })
    }

    pub fn send(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out);
        }
        self.rt.block_on(self.stream.write_all(&out))
    }

    /// The next frame, or `None` when the connection ends or nothing comes within `wait`.
    pub fn recv(&mut self, wait: Duration) -> Option<Frame> {
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        self.rt.block_on(async {
            tokio::time::timeout(wait, async {
                loop {
                    if let Ok(Some(f)) = Frame::decode(buf) {
                        return Some(f);
                    }
                    if stream.read_buf(buf).await.ok()? == 0 {
                        return None;
                    }
                }
            })
            .await
            .ok()
            .flatten()
        })
    }
}
