//! Piece digests: the sha256 of each fixed-size slice of a blob, which the mirror publishes at
//! `GET /v2/<name>/pieces/<digest>` and agents check every piece from a peer against, and
//! [`PieceList`], that answer on the wire.

use nodepool::PieceLayout;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::io::Read;

/// The answer to `GET /v2/<name>/pieces/<digest>?pieceSize=N&from=K`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PieceList {
    pub digest: String,
    pub size: u64,
    pub piece_size: u64,
    pub from: u64,
    /// Hex sha256 of pieces `from`, `from + 1`, ...
    pub pieces: Vec<String>,
    /// True when the blob is whole and verified: no more pieces will come.
    pub complete: bool,
}

/// The media type of the binary form of a [`PieceList`], which an agent asks for with
/// `Accept` (a client that does not gets JSON). Every agent of a pool fetches every digest
/// through the mirror's uplink, the link the whole pool waits on, in about 200 long-poll
/// answers per blob while the blob arrives: as JSON 67 bytes a digest and a 200-byte wrapper
/// an answer, in this form 32 and 25. For a 64 MiB blob at 32 nodes the mirror sent 1.8 MiB
/// (2.8 % of the blob) less (docs/benchmarks.md). Body: `size`, `pieceSize` and `from` as
/// big-endian u64, `complete` as one byte (0 or 1), then the raw 32-byte sha256 of each
/// piece from `from` on.
pub const PIECES_BINARY: &str = "application/vnd.poolcast.piece-digests.v1";

/// Bytes before the digests in the binary form.
const BINARY_HEAD: usize = 25;

impl PieceList {
    /// The binary form ([`PIECES_BINARY`]). Fails on a digest that is not 64 hex digits.
    pub fn to_binary(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(BINARY_HEAD + 32 * self.pieces.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.piece_size.to_be_bytes());
        out.extend_from_slice(&self.from.to_be_bytes());
        out.push(u8::from(self.complete));
        for (k, hex_digest) in self.pieces.iter().enumerate() {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut raw)
                .map_err(|e| format!("piece {} digest: {e}", self.from + k as u64))?;
            out.extend_from_slice(&raw);
        }
        Ok(out)
    }

    /// Reads the binary form of the list of blob `digest`; a body of the wrong length or with a
    /// `complete` byte other than 0 or 1 is an error.
    pub fn from_binary(digest: &str, body: &[u8]) -> Result<PieceList, String> {
        if body.len() < BINARY_HEAD || !(body.len() - BINARY_HEAD).is_multiple_of(32) {
            return Err(format!(
                "{} bytes: not a {BINARY_HEAD}-byte head and whole 32-byte digests",
                body.len()
            ));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let complete = match body[24] {
            0 => false,
            1 => true,
            other => return Err(format!("complete byte {other}, not 0 or 1")),
        };
        Ok(PieceList {
            digest: digest.to_string(),
            size: word(0),
            piece_size: word(8),
            from: word(16),
            pieces: body[BINARY_HEAD..].chunks(32).map(hex::encode).collect(),
            complete,
        })
    }
}

/// The hex sha256 of one piece's bytes.
pub fn piece_digest(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The digest of every piece of `file` as `layout` cuts it, in order.
pub fn hash_pieces(mut file: std::fs::File, layout: PieceLayout) -> std::io::Result<Vec<String>> {
    use std::io::Seek;
    file.rewind()?;
    let mut out = Vec::with_capacity(layout.count() as usize);
    let mut buf = vec![0u8; 1 << 20];
    for span in (0..layout.count()).filter_map(|index| layout.span(index)) {
        let mut hasher = sha2::Sha256::new();
        let mut piece_left = span.end - span.start;
        while piece_left > 0 {
            let n = piece_left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            piece_left -= n as u64;
        }
        out.push(hex::encode(hasher.finalize()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pieces_hash_each_slice_and_the_short_tail() {
        let data: Vec<u8> = (0..(200 * 1024)).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&data).expect("write");
        let layout = PieceLayout::new(data.len() as u64, 64 * 1024).expect("layout");
        let got = hash_pieces(file, layout).expect("hash");
        let want: Vec<String> = data.chunks(64 * 1024).map(piece_digest).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got, want);
    }

    #[test]
    fn the_binary_form_carries_the_list_and_rejects_a_bad_body() {
        let list = PieceList {
            digest: "sha256:ab".into(),
            size: (1 << 40) + 5,
            piece_size: 64 << 10,
            from: 7,
            pieces: vec![piece_digest(b"a"), piece_digest(b"b")],
            complete: false,
        };
        let body = list.to_binary().expect("binary");
        assert_eq!(body.len(), BINARY_HEAD + 64);
        assert_eq!(PieceList::from_binary("sha256:ab", &body), Ok(list.clone()));
        let whole = PieceList {
            pieces: vec![],
            complete: true,
            ..list.clone()
        };
        let back = PieceList::from_binary("sha256:ab", &whole.to_binary().expect("binary"));
        assert_eq!(back, Ok(whole));

        for bad in [&body[..BINARY_HEAD - 1], &body[..body.len() - 1], &[][..]] {
            let err = PieceList::from_binary("sha256:ab", bad).expect_err("short");
            assert!(err.contains("32-byte digests"), "{err}");
        }
        let mut flag = body.clone();
        flag[24] = 2;
        let err = PieceList::from_binary("sha256:ab", &flag).expect_err("flag");
        assert!(err.contains("complete byte 2"), "{err}");
        let odd = PieceList {
            pieces: vec!["zz".into()],
            ..list
        };
        assert!(odd.to_binary().expect_err("not hex").contains("piece 7"));
    }

    #[test]
    fn the_wire_names_are_camel_case() {
        let list = PieceList {
            digest: "sha256:00".into(),
            size: 1,
            piece_size: 1,
            from: 0,
            pieces: vec![],
            complete: true,
        };
        let text = serde_json::to_string(&list).unwrap_or_default();
        assert!(text.contains("\"pieceSize\":1"), "{text}");
        let back: PieceList = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, list);
    }
}
