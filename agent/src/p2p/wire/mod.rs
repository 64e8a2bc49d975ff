//! The peer protocol's frames: one long-lived TCP connection per pair of peers carries every
//! blob they share, control messages and piece data interleaved, so a piece costs a few dozen
//! bytes of framing and no request.
//!
//! ```text
//!   frame = type (1 byte) | length (4 bytes, big-endian) | payload
//!   dialer ──HELLO──> listener        listener ──HELLO──> dialer
//!   dialer ──AUTH───> listener        listener ──AUTH───> dialer      (MACs over both HELLOs)
//!   then, either way: JOIN, LEAVE, NOTICE, OFFER, ACCEPT, REFUSE, WITHDRAW, PROOF, DATA
//! ```
//!
//! A PROOF (the mirror's signature of a piece's digest, `storage::pieces::proof_message`) goes
//! ahead of a piece's first DATA when the sender has it: the receiver checks it over the hash
//! of what arrived, and needs no digest from the mirror for that piece.
//!
//! Every field is bounded and checked: a frame that does not parse closes the connection.
//! Blobs are named on the wire by [`task_key`] (the first 8 bytes of the digest); a JOIN carries
//! the whole digest, and the key must match it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use swarm::{Notice, PieceSet, Refusal};

/// Protocol name and version, first bytes of a HELLO.
pub const MAGIC: &[u8; 8] = b"PCAST\0\0\x02";
/// Largest frame accepted: a JOIN of a blob with the most pieces (two bitmaps of 8 KiB) and
/// a DATA frame of [`MAX_DATA`] bytes fit.
pub const MAX_FRAME: usize = 128 * 1024;
/// Piece bytes per DATA frame: small enough that control frames wait little behind data.
pub const MAX_DATA: usize = 32 * 1024;
/// Most notices in one frame.
pub const MAX_NOTICES: usize = 4096;
/// Longest node name or pool id.
pub const MAX_NAME: usize = 253;
/// Most pieces a blob may have on the wire (as the scheduler's bound).
pub const MAX_PIECES: u32 = 1 << 16;
const HEADER: usize = 5;

/// The wire name of a blob: the first 8 bytes of its sha256.
pub fn task_key(sha256: &[u8; 32]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&sha256[..8]);
    u64::from_be_bytes(k)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub nonce: [u8; 16],
    pub node: String,
    pub pool: String,
}

/// A peer takes part in a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    pub digest: [u8; 32],
    pub size: u64,
    pub piece_size: u64,
    pub have: PieceSet,
    pub receiving: PieceSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Auth([u8; 32]),
    Join(Join),
    Leave {
        task: u64,
    },
    Notices {
        task: u64,
        notices: Vec<(u32, Notice)>,
    },
    Offer {
        task: u64,
        piece: u32,
    },
    Accept {
        task: u64,
        piece: u32,
    },
    Refuse {
        task: u64,
        piece: u32,
        why: Refusal,
    },
    Withdraw {
        task: u64,
        piece: u32,
    },
    Data {
        task: u64,
        piece: u32,
        offset: u32,
        bytes: Bytes,
    },
    /// The mirror's proof of the piece the sender is about to send.
    Proof {
        task: u64,
        piece: u32,
        sig: [u8; 64],
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("bad {what}: {why}")]
    Bad { what: &'static str, why: String },
}

fn bad(what: &'static str, why: impl Into<String>) -> WireError {
    WireError::Bad {
        what,
        why: why.into(),
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => 1,
            Frame::Auth(_) => 2,
            Frame::Join(_) => 3,
            Frame::Leave { .. } => 4,
            Frame::Notices { .. } => 5,
            Frame::Offer { .. } => 6,
            Frame::Accept { .. } => 7,
            Frame::Refuse { .. } => 8,
            Frame::Withdraw { .. } => 9,
            Frame::Data { .. } => 10,
            Frame::Proof { .. } => 11,
        }
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(self.kind());
        out.put_u32(0);
        match self {
            Frame::Hello(h) => {
                out.put_slice(MAGIC);
                out.put_slice(&h.nonce);
                put_name(out, &h.node);
                put_name(out, &h.pool);
            }
            Frame::Auth(mac) => out.put_slice(mac),
            Frame::Join(j) => {
                out.put_slice(&j.digest);
                out.put_u64(j.size);
                out.put_u64(j.piece_size);
                for set in [&j.have, &j.receiving] {
                    let bytes = set.to_bytes();
                    out.put_u32(bytes.len() as u32);
                    out.put_slice(&bytes);
                }
            }
            Frame::Leave { task } => out.put_u64(*task),
            Frame::Notices { task, notices } => {
                out.put_u64(*task);
                out.put_u16(notices.len() as u16);
                for (piece, notice) in notices {
                    out.put_u32(*piece);
                    out.put_u8(notice_code(*notice));
                }
            }
            Frame::Offer { task, piece }
            | Frame::Accept { task, piece }
            | Frame::Withdraw { task, piece } => {
                out.put_u64(*task);
                out.put_u32(*piece);
            }
            Frame::Refuse { task, piece, why } => {
                out.put_u64(*task);
                out.put_u32(*piece);
                out.put_u8(refusal_code(*why));
            }
            Frame::Data {
                task,
                piece,
                offset,
                bytes,
            } => {
                out.put_u64(*task);
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_slice(bytes);
            }
            Frame::Proof { task, piece, sig } => {
                out.put_u64(*task);
                out.put_u32(*piece);
                out.put_slice(sig);
            }
        }
        let len = (out.len() - start - HEADER) as u32;
        out[start + 1..start + HEADER].copy_from_slice(&len.to_be_bytes());
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` when more bytes are needed.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        if buf.len() < HEADER + len {
            buf.reserve(HEADER + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER);
        let mut p = buf.split_to(len).freeze();
        let frame = parse(kind, &mut p)?;
        if p.has_remaining() {
            return Err(bad("frame", format!("{} bytes left over", p.remaining())));
        }
        Ok(Some(frame))
    }
}

fn put_name(out: &mut BytesMut, name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn need(p: &Bytes, n: usize, what: &'static str) -> Result<(), WireError> {
    if p.remaining() < n {
        return Err(bad(what, "truncated"));
    }
    Ok(())
}

fn get_name(p: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    need(p, 1, what)?;
    let n = p.get_u8() as usize;
    need(p, n, what)?;
    let raw = p.split_to(n);
    let name = std::str::from_utf8(&raw).map_err(|_| bad(what, "not UTF-8"))?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(bad(what, "empty or has control characters"));
    }
    Ok(name.to_string())
}

fn task_piece(p: &mut Bytes, what: &'static str) -> Result<(u64, u32), WireError> {
    need(p, 12, what)?;
    let task = p.get_u64();
    let piece = p.get_u32();
    if piece >= MAX_PIECES {
        return Err(bad(what, format!("piece {piece} past {MAX_PIECES}")));
    }
    Ok((task, piece))
}

fn parse(kind: u8, p: &mut Bytes) -> Result<Frame, WireError> {
    Ok(match kind {
        1 => {
            need(p, MAGIC.len() + 16, "hello")?;
            if &p[..MAGIC.len()] != MAGIC {
                return Err(bad(
                    "hello",
                    "not a poolcast peer (protocol or version differs)",
                ));
            }
            p.advance(MAGIC.len());
            let mut nonce = [0u8; 16];
            p.copy_to_slice(&mut nonce);
            let node = get_name(p, "hello node")?;
            let pool = get_name(p, "hello pool")?;
            Frame::Hello(Hello { nonce, node, pool })
        }
        2 => {
            need(p, 32, "auth")?;
            let mut mac = [0u8; 32];
            p.copy_to_slice(&mut mac);
            Frame::Auth(mac)
        }
        3 => {
            need(p, 32 + 16, "join")?;
            let mut digest = [0u8; 32];
            p.copy_to_slice(&mut digest);
            let size = p.get_u64();
            let piece_size = p.get_u64();
            let layout = nodepool::PieceLayout::bounded(size, piece_size)
                .map_err(|e| bad("join", e.to_string()))?;
            let pieces = layout.count();
            if pieces > MAX_PIECES {
                return Err(bad("join", format!("{pieces} pieces is past {MAX_PIECES}")));
            }
            let mut sets = Vec::with_capacity(2);
            for what in ["join have", "join receiving"] {
                need(p, 4, what)?;
                let n = p.get_u32() as usize;
                need(p, n, what)?;
                let raw = p.split_to(n);
                sets.push(
                    PieceSet::from_bytes(pieces, &raw)
                        .ok_or_else(|| bad(what, "does not match the piece count"))?,
                );
            }
            let receiving = sets.pop().unwrap_or_default();
            let have = sets.pop().unwrap_or_default();
            Frame::Join(Join {
                digest,
                size,
                piece_size,
                have,
                receiving,
            })
        }
        4 => {
            need(p, 8, "leave")?;
            Frame::Leave { task: p.get_u64() }
        }
        5 => {
            need(p, 10, "notices")?;
            let task = p.get_u64();
            let n = p.get_u16() as usize;
            if n > MAX_NOTICES {
                return Err(bad("notices", format!("{n} notices")));
            }
            need(p, n * 5, "notices")?;
            let mut notices = Vec::with_capacity(n);
            for _ in 0..n {
                let piece = p.get_u32();
                if piece >= MAX_PIECES {
                    return Err(bad("notices", format!("piece {piece}")));
                }
                notices.push((piece, notice_of(p.get_u8())?));
            }
            Frame::Notices { task, notices }
        }
        6 => {
            let (task, piece) = task_piece(p, "offer")?;
            Frame::Offer { task, piece }
        }
        7 => {
            let (task, piece) = task_piece(p, "accept")?;
            Frame::Accept { task, piece }
        }
        8 => {
            let (task, piece) = task_piece(p, "refuse")?;
            need(p, 1, "refuse")?;
            let why = refusal_of(p.get_u8())?;
            Frame::Refuse { task, piece, why }
        }
        9 => {
            let (task, piece) = task_piece(p, "withdraw")?;
            Frame::Withdraw { task, piece }
        }
        10 => {
            let (task, piece) = task_piece(p, "data")?;
            need(p, 4, "data")?;
            let offset = p.get_u32();
            let bytes = p.split_to(p.remaining());
            if bytes.is_empty() || bytes.len() > MAX_DATA {
                return Err(bad("data", format!("{} bytes", bytes.len())));
            }
            Frame::Data {
                task,
                piece,
                offset,
                bytes,
            }
        }
        11 => {
            let (task, piece) = task_piece(p, "proof")?;
            need(p, 64, "proof")?;
            let mut sig = [0u8; 64];
            p.copy_to_slice(&mut sig);
            Frame::Proof { task, piece, sig }
        }
        other => return Err(WireError::UnknownType(other)),
    })
}

fn notice_code(n: Notice) -> u8 {
    match n {
        Notice::Have => 1,
        Notice::Receiving => 2,
        Notice::NotReceiving => 3,
    }
}

fn notice_of(code: u8) -> Result<Notice, WireError> {
    Ok(match code {
        1 => Notice::Have,
        2 => Notice::Receiving,
        3 => Notice::NotReceiving,
        c => return Err(bad("notice", format!("kind {c}"))),
    })
}

fn refusal_code(r: Refusal) -> u8 {
    match r {
        Refusal::Have => 1,
        Refusal::Receiving => 2,
        Refusal::Busy => 3,
        Refusal::Unwanted => 4,
    }
}

fn refusal_of(code: u8) -> Result<Refusal, WireError> {
    Ok(match code {
        1 => Refusal::Have,
        2 => Refusal::Receiving,
        3 => Refusal::Busy,
        4 => Refusal::Unwanted,
        c => return Err(bad("refuse", format!("reason {c}"))),
    })
}

#[cfg(test)]
mod tests;
