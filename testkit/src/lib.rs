//! What the integration tests (`tests/`) and the edge tests (`edge-tests/`) both build their
//! worlds from: test images as OCI layouts on disk ([`image`]), the CNCF registry's config
//! ([`registry`]), and deterministic bytes and their hashes. Only tests depend on it; how a
//! process is run (directly, or inside a network namespace) stays with each suite.

pub mod image;
pub mod registry;

pub use image::{verify_pulled, BlobRef, TestImage};
pub use registry::{RegistryAuth, RegistryConfig};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

/// Deterministic, incompressible bytes (SplitMix64). Not `rand`: an unoptimised test build fills
/// 64 MiB with this in well under a second, with `StdRng` in several.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8) * 8];
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    for chunk in out.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hex sha256 of a file. Uses coreutils `sha256sum` (about ten times faster than `sha2` in an
/// unoptimised test build, which matters for the gigabytes some tests verify) and falls back
/// to `sha2` where it is missing.
pub fn sha256_file(path: &Path) -> Result<String> {
    if let Ok(out) = Command::new("sha256sum")
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(hex) = text.split_whitespace().next() {
                return Ok(hex.to_owned());
            }
        }
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_repeatable_per_seed() {
        assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
        assert_ne!(random_bytes(1000, 7), random_bytes(1000, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
    }

    #[test]
    fn files_hash_like_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").expect("write");
        assert_eq!(sha256_file(&path).expect("hash"), sha256_hex(b"hello"));
    }
}
