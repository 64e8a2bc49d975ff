//! Names, tags and digests as the OCI distribution spec defines them. Everything from a URL
//! passes through here before it touches the cache or an upstream URL.

use crate::error::{Error, Result};
use std::fmt;

/// A content digest. Only `sha256` is accepted: it is what registries produce and what the
/// cache verifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Self> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::DigestInvalid(clip(text)))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::DigestInvalid(clip(text)));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    pub fn from_sha256(bytes: &[u8]) -> Self {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_sha256(&sha2::Sha256::digest(data))
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 32 bytes of the sha256 (a digest made by `from_sha256` of a shorter slice is
    /// zero-padded).
    pub fn sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let _ = hex::decode_to_slice(&self.hex, &mut out);
        out
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self> {
        if text.contains(':') {
            return Digest::parse(text).map(Reference::Digest);
        }
        let ok = !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Reference::Tag(text.to_string()))
        } else {
            Err(Error::TagInvalid(clip(text)))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Checks a repository name against the spec's grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || !name.split('/').all(valid_component) {
        return Err(Error::NameInvalid(clip(name)));
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Splits a `/v2/` path tail into `(name, kind, reference)`: kind is `manifests`, `blobs` or
/// `pieces`.
pub fn split_path(tail: &str) -> Result<(&str, &str, &str)> {
    // The last marker wins: a repository may itself have a `blobs` or `manifests` component.
    let found = ["manifests", "blobs", "pieces"]
        .into_iter()
        .filter_map(|kind| tail.rfind(&format!("/{kind}/")).map(|at| (at, kind)))
        .max();
    match found {
        Some((at, kind)) => Ok((&tail[..at], kind, &tail[at + kind.len() + 2..])),
        None => Err(Error::Unsupported(format!(
            "/v2/{} (this mirror serves manifests and blobs)",
            tail.chars().take(80).collect::<String>()
        ))),
    }
}

/// Keeps hostile input short in error messages and logs.
fn clip(text: &str) -> String {
    let mut end = text.len().min(80);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_name_kind_and_reference() {
        assert_eq!(
            split_path("a/b/manifests/latest").ok(),
            Some(("a/b", "manifests", "latest"))
        );
        assert_eq!(
            split_path("a/blobs/sha256:x").ok(),
            Some(("a", "blobs", "sha256:x"))
        );
        // A repository may itself contain "blobs" as a component.
        assert_eq!(
            split_path("x/blobs/y/blobs/d").ok(),
            Some(("x/blobs/y", "blobs", "d"))
        );
        assert_eq!(
            split_path("a/manifests/b/blobs/d").ok(),
            Some(("a/manifests/b", "blobs", "d"))
        );
        assert!(split_path("_catalog").is_err());
        assert!(split_path("a/tags/list").is_err());
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        for ok in [
            "library/alpine",
            "a",
            "a0/b-c/d__e",
            "my.reg/x--y",
            "ns/app_1",
        ] {
            validate_name(ok).unwrap_or_else(|_| panic!("{ok} should be valid"));
        }
        for bad in [
            "", "..", "../etc", "a/../b", "A/b", "a//b", "/a", "a/", "a._b", "a___b", "-a", "a b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad} should be invalid");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        for bad in [
            "sha256:zz",
            "md5:abc",
            "sha256:",
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha512:{hex}"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("v1.2_3-x"), Ok(Reference::Tag(t)) if t == "v1.2_3-x"));
        assert!(Reference::parse(".hidden").is_err());
        assert!(Reference::parse(&"t".repeat(129)).is_err());
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "0".repeat(64))),
            Ok(Reference::Digest(_))
        ));
        assert!(Reference::parse("sha256:nope").is_err());
    }
}
