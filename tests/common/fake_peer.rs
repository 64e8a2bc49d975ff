//! A hostile fake peer, for what no real agent does on purpose: stall mid-piece, or answer a
//! piece with the right length of the wrong bytes. It registers with the real scheduler through
//! the real `SchedulerClient`, heartbeating as a complete holder of the blobs it is given, so the
//! scheduler offers it to agents as a parent like any other peer.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use scheduler::api::{HeartbeatRequest, HeldTask, PeerInfo};
use scheduler::SchedulerClient;

use super::image::BlobRef;

#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Sends the response head and a few bytes of the piece, then nothing, keeping the
    /// connection open.
    Stall,
    /// Sends `200` and exactly the piece's length, of bytes that are not the piece.
    Corrupt,
}

/// How the fake presents itself.
pub struct FakePeerSpec<'a> {
    /// Loopback address to bind (port 0), e.g. `127.0.0.200`.
    pub ip: &'a str,
    pub behaviour: Misbehaviour,
    /// Blobs it claims to hold whole.
    pub blobs: Vec<BlobRef>,
    pub piece_size: u64,
    pub scheduler_url: &'a str,
    pub pool: &'a str,
    pub secret: Option<&'a str>,
}

pub struct FakePeer {
    pub id: String,
    pub addr: String,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// How often the fake heartbeats; well inside any peerTTL a test uses.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl FakePeer {
    /// Binds, serves piece requests badly, and registers with the scheduler; returns once the
    /// scheduler accepted its first heartbeat (panics with the scheduler's answer otherwise).
    pub fn start(spec: FakePeerSpec) -> FakePeer {
        let listener = TcpListener::bind((spec.ip, 0)).expect("binding fake peer");
        let addr = listener
            .local_addr()
            .expect("fake peer address")
            .to_string();
        let id = format!("hostile-{:?}", spec.behaviour).to_lowercase();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        let blobs: Vec<(String, u64)> = spec
            .blobs
            .iter()
            .map(|b| (b.digest.clone(), b.size))
            .collect();
        let (count, halt, behaviour, piece_size) = (
            requests.clone(),
            stop.clone(),
            spec.behaviour,
            spec.piece_size,
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (count, halt, blobs) = (count.clone(), halt.clone(), blobs.clone());
                std::thread::spawn(move || {
                    count.fetch_add(1, Ordering::Relaxed);
                    answer(stream, behaviour, &blobs, piece_size, &halt);
                });
            }
        });

        let peer = PeerInfo {
            id: id.clone(),
            pool: spec.pool.to_owned(),
            addr: addr.clone(),
            upload_slots: 64,
        };
        let held: Vec<HeldTask> = spec
            .blobs
            .iter()
            .map(|b| HeldTask {
                digest: b.digest.clone(),
                size: b.size,
                piece_size: spec.piece_size,
            })
            .collect();
        let client = SchedulerClient::new(
            spec.scheduler_url,
            nodepool::keys::pool_key(
                &nodepool::PoolSecret::new(spec.secret.unwrap_or("")),
                spec.pool,
            ),
            spec.pool.to_owned(),
            Duration::from_secs(5),
        )
        .expect("scheduler client for the fake peer");
        let (first_tx, first_rx) = mpsc::channel();
        let halt = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the fake peer's heartbeats");
            let req = HeartbeatRequest {
                peer,
                held,
                load: 0,
            };
            let mut first = Some(first_tx);
            while !halt.load(Ordering::Relaxed) {
                let result = rt.block_on(client.heartbeat(&req));
                match (first.take(), result) {
                    (Some(tx), r) => {
                        let _ = tx.send(r.map(drop).map_err(|e| e.to_string()));
                    }
                    (None, Err(e)) => eprintln!("[fake peer] heartbeat failed: {e}"),
                    (None, Ok(_)) => {}
                }
                std::thread::sleep(HEARTBEAT);
            }
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
            requests,
            stop,
        }
    }

    /// Piece requests it received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads one request (`GET /pieces/<digest>/<index>?pieceSize=N`) and misbehaves.
fn answer(
    stream: TcpStream,
    behaviour: Misbehaviour,
    blobs: &[(String, u64)],
    piece_size: u64,
    halt: &AtomicBool,
) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let mut parts = path.trim_start_matches("/pieces/").splitn(2, '/');
    let (digest, index) = (
        parts.next().unwrap_or(""),
        parts.next().and_then(|i| i.parse::<u64>().ok()),
    );
    let len = index.and_then(|index| {
        let size = blobs.iter().find(|(d, _)| d == digest)?.1;
        let start = index * piece_size;
        (start < size).then(|| (size - start).min(piece_size))
    });
    let mut stream = stream;
    let Some(len) = len else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    match behaviour {
        Misbehaviour::Stall => {
            let _ = stream.write_all(&vec![0x5a; len.min(100) as usize]);
            let _ = stream.flush();
            // Hold the connection open, silent, until the requester gives up or the test ends.
            while !halt.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Misbehaviour::Corrupt => {
            let _ = stream.write_all(&vec![0x5a; len as usize]);
            let _ = stream.flush();
        }
    }
}
