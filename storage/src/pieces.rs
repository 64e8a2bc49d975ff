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

/// The media type of the signed form: what agents ask for first (`Accept`), and what lets a
/// pool's peers pass digests along with the pieces, so that the mirror's uplink no longer
/// carries every digest to every node. Body: the [`PIECES_BINARY`] head, the mirror's 32-byte
/// ed25519 public key, then for each piece from `from` on its raw 32-byte sha256 and the
/// mirror's 64-byte signature of [`proof_message`] for it (its proof).
pub const PIECES_SIGNED: &str = "application/vnd.poolcast.piece-digests.v2";

/// Most pieces one signed answer carries: the mirror signs each (18 µs), so one request costs
/// it about a millisecond at most, what a range with its proofs costs; agents ask 16 at most.
pub const MAX_SIGNED: u64 = 64;

const PROOF_DOMAIN: &[u8; 17] = b"poolcast-piece-v1";

/// Bytes in a proof message.
pub const PROOF_MESSAGE: usize = 17 + 32 + 8 + 8 + 32;

/// What the mirror signs for one piece: that piece `index` of blob `blob` cut at `piece_size`
/// has sha256 `piece`. A peer that sends the piece sends the signature with it; the receiver
/// hashes what arrived and checks the signature over that hash, so a piece and its proof are
/// accepted together or not at all.
pub fn proof_message(
    blob: &[u8; 32],
    piece_size: u64,
    index: u64,
    piece: &[u8; 32],
) -> [u8; PROOF_MESSAGE] {
    let mut m = [0u8; PROOF_MESSAGE];
    m[..17].copy_from_slice(PROOF_DOMAIN);
    m[17..49].copy_from_slice(blob);
    m[49..57].copy_from_slice(&piece_size.to_be_bytes());
    m[57..65].copy_from_slice(&index.to_be_bytes());
    m[65..].copy_from_slice(piece);
    m
}

/// The key's proof that piece `index` of `blob` cut at `piece_size` hashes to `piece`.
pub fn sign_proof(
    key: &ed25519_dalek::SigningKey,
    blob: &[u8; 32],
    piece_size: u64,
    index: u64,
    piece: &[u8; 32],
) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    key.sign(&proof_message(blob, piece_size, index, piece))
        .to_bytes()
}

/// Whether `sig` is the key's proof that piece `index` of `blob` hashes to `piece`.
pub fn proof_holds(
    key: &ed25519_dalek::VerifyingKey,
    blob: &[u8; 32],
    piece_size: u64,
    index: u64,
    piece: &[u8; 32],
    sig: &[u8; 64],
) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(&proof_message(blob, piece_size, index, piece), &sig)
        .is_ok()
}

/// A signed answer, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPieces {
    pub size: u64,
    pub piece_size: u64,
    pub from: u64,
    pub complete: bool,
    /// The mirror's public key.
    pub key: ed25519_dalek::VerifyingKey,
    /// Each piece's sha256 and proof, from `from` on.
    pub pieces: Vec<([u8; 32], [u8; 64])>,
}

const SIGNED_HEAD: usize = BINARY_HEAD + 32;

impl PieceList {
    /// The signed form ([`PIECES_SIGNED`]) of this list of blob `blob`, each piece signed with
    /// `key`. Fails on a digest that is not 64 hex digits.
    pub fn to_signed(
        &self,
        blob: &[u8; 32],
        key: &ed25519_dalek::SigningKey,
    ) -> Result<Vec<u8>, String> {
        let binary = self.to_binary()?;
        let mut out = Vec::with_capacity(SIGNED_HEAD + 96 * self.pieces.len());
        out.extend_from_slice(&binary[..BINARY_HEAD]);
        out.extend_from_slice(key.verifying_key().as_bytes());
        for (k, raw) in binary[BINARY_HEAD..].chunks(32).enumerate() {
            let mut piece = [0u8; 32];
            piece.copy_from_slice(raw);
            let index = self.from + k as u64;
            out.extend_from_slice(&piece);
            out.extend_from_slice(&sign_proof(key, blob, self.piece_size, index, &piece));
        }
        Ok(out)
    }
}

impl SignedPieces {
    /// Reads a signed answer about blob `blob` and checks every proof in it against the key it
    /// names; a body of the wrong length, a bad key or a proof that does not hold is an error.
    pub fn read(blob: &[u8; 32], body: &[u8]) -> Result<SignedPieces, String> {
        if body.len() < SIGNED_HEAD || !(body.len() - SIGNED_HEAD).is_multiple_of(96) {
            return Err(format!(
                "{} bytes: not a {SIGNED_HEAD}-byte head and whole 96-byte pieces",
                body.len()
            ));
        }
        let head = PieceList::from_binary("", &body[..BINARY_HEAD])?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&body[BINARY_HEAD..SIGNED_HEAD]);
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|e| format!("the mirror's key: {e}"))?;
        let mut pieces = Vec::with_capacity((body.len() - SIGNED_HEAD) / 96);
        for (k, raw) in body[SIGNED_HEAD..].chunks(96).enumerate() {
            let mut piece = [0u8; 32];
            piece.copy_from_slice(&raw[..32]);
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&raw[32..]);
            let index = head.from + k as u64;
            if !proof_holds(&verifying, blob, head.piece_size, index, &piece, &sig) {
                return Err(format!("piece {index}: its proof does not hold"));
            }
            pieces.push((piece, sig));
        }
        Ok(SignedPieces {
            size: head.size,
            piece_size: head.piece_size,
            from: head.from,
            complete: head.complete,
            key: verifying,
            pieces,
        })
    }
}

/// The request header an agent names its piece size in when it asks the mirror for a range:
/// the mirror answers a range of whole pieces with the proofs of those whose digests it knows.
pub const PIECE_SIZE_HEADER: &str = "poolcast-piece-size";
/// The answer's proofs ([`RangeProofs`]) and the mirror's public key (hex) beside them.
pub const PROOFS_HEADER: &str = "poolcast-proofs";
pub const KEY_HEADER: &str = "poolcast-piece-key";

/// The proofs a range answer carries: of pieces `first`, `first + 1`, ... in order, as far as
/// the mirror knew their digests. On the wire ([`PROOFS_HEADER`]): `FIRST HEX...`, 128 hex
/// digits a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeProofs {
    pub first: u64,
    pub proofs: Vec<[u8; 64]>,
}

impl RangeProofs {
    pub fn to_header(&self) -> String {
        let mut text = format!("{} ", self.first);
        for proof in &self.proofs {
            text.push_str(&hex::encode(proof));
        }
        text
    }

    /// Reads the header's value; anything malformed is `None`.
    pub fn from_header(text: &str) -> Option<RangeProofs> {
        let (first, hexes) = text.split_once(' ')?;
        let first = first.parse().ok()?;
        if !hexes.len().is_multiple_of(128) {
            return None;
        }
        let proofs = hexes
            .as_bytes()
            .chunks(128)
            .map(|chunk| {
                let mut sig = [0u8; 64];
                hex::decode_to_slice(chunk, &mut sig).ok().map(|()| sig)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(RangeProofs { first, proofs })
    }
}

/// The mirror's signing key in `path` (32 secret bytes), made there (readable by its owner
/// only) if there is none, so that proofs the pool passes around outlive a restart. A file of
/// any other length is an error naming it, never replaced.
pub fn load_or_make_key(path: &std::path::Path) -> std::io::Result<ed25519_dalek::SigningKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {} bytes, not a 32-byte piece-signing key (remove it to make a new one)",
                        path.display(),
                        bytes.len()
                    ),
                )
            })?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("new");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&seed)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(e),
    }
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

    fn list(from: u64, n: usize) -> PieceList {
        PieceList {
            digest: String::new(),
            size: 1 << 20,
            piece_size: 64 * 1024,
            from,
            pieces: (0..n).map(|k| piece_digest(&[k as u8; 100])).collect(),
            complete: false,
        }
    }

    #[test]
    fn a_signed_answer_carries_proofs_that_hold_for_its_pieces_only() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let blob = [9u8; 32];
        let body = list(3, 4).to_signed(&blob, &key).expect("sign");
        assert_eq!(body.len(), 25 + 32 + 4 * 96);
        let read = SignedPieces::read(&blob, &body).expect("read");
        assert_eq!((read.from, read.pieces.len()), (3, 4));
        assert_eq!(read.key, key.verifying_key());
        let vk = key.verifying_key();
        let (piece, sig) = read.pieces[1];
        assert_eq!(hex::encode(piece), piece_digest(&[1u8; 100]));
        assert!(proof_holds(&vk, &blob, 64 * 1024, 4, &piece, &sig));
        // Another index, blob, piece size or hash: the proof does not hold.
        assert!(!proof_holds(&vk, &blob, 64 * 1024, 5, &piece, &sig));
        assert!(!proof_holds(&vk, &[8u8; 32], 64 * 1024, 4, &piece, &sig));
        assert!(!proof_holds(&vk, &blob, 128 * 1024, 4, &piece, &sig));
        assert!(!proof_holds(&vk, &blob, 64 * 1024, 4, &[0u8; 32], &sig));
        // Read as another blob's answer, or with a byte changed, or cut: an error.
        assert!(SignedPieces::read(&[8u8; 32], &body)
            .expect_err("refused")
            .contains("piece 3"));
        let mut bad = body.clone();
        bad[25 + 32 + 96 + 5] ^= 1;
        assert!(SignedPieces::read(&blob, &bad)
            .expect_err("refused")
            .contains("piece 4"));
        assert!(SignedPieces::read(&blob, &body[..body.len() - 1]).is_err());
        assert!(SignedPieces::read(&blob, &body[..20]).is_err());
    }

    #[test]
    fn range_proofs_read_back_and_anything_malformed_is_none() {
        let proofs = RangeProofs {
            first: 7,
            proofs: vec![[1u8; 64], [2u8; 64]],
        };
        let text = proofs.to_header();
        assert_eq!(RangeProofs::from_header(&text), Some(proofs));
        for bad in [
            "",
            "7",
            "x 00",
            &text[..text.len() - 1],
            &text.replace('0', "g"),
        ] {
            assert_eq!(RangeProofs::from_header(bad), None, "{bad:.20}");
        }
        assert_eq!(
            RangeProofs::from_header("3 "),
            Some(RangeProofs {
                first: 3,
                proofs: vec![]
            })
        );
    }

    #[test]
    fn the_signing_key_is_made_once_kept_and_a_bad_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("piece-key");
        let made = load_or_make_key(&path).expect("make");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_make_key(&path).expect("load");
        assert_eq!(made.to_bytes(), again.to_bytes());
        std::fs::write(&path, b"short").expect("write");
        let err = load_or_make_key(&path).expect_err("refused").to_string();
        assert!(
            err.contains("piece-key") && err.contains("5 bytes"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("kept"), b"short");
    }
}
