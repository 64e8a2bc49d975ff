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
