//! The pool secret, which signs and verifies requests between agents, peers and the scheduler.
//!
//! The header `X-Poolcast-Auth: v1 <pool> <unix_secs> <hex hmac>` carries an HMAC-SHA256 over
//! `method \n path_and_query \n pool \n unix_secs`. The server checks the MAC in constant time
//! and refuses timestamps further than [`MAX_SKEW_SECS`] from its clock, which bounds replay.
//! The body is not covered: a request is bound to its method, path, pool and time.
//!
//! v1 stays for the agents' peer port until its handshake replaces it; the scheduler takes
//! only [`crate::signed`] (v2), signed with per-pool keys ([`crate::keys`]).
//!
//! An empty secret means authentication is off: servers accept every request
//! ([`PoolSecret::is_off`]); clients still sign, so turning it on needs no client change.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

/// The header that carries the signature (lowercase, as HTTP/2 and actix name it).
pub const AUTH_HEADER: &str = "x-poolcast-auth";
/// Signed requests older or newer than this, by the verifier's clock, are refused.
pub const MAX_SKEW_SECS: u64 = 300;

/// Longest header value accepted before parsing: `v1`, a pool id of up to 256 bytes, a
/// timestamp and 64 hex digits fit well inside.
const MAX_HEADER_LEN: usize = 512;
const MAX_POOL_LEN: usize = 256;
const VERSION: &str = "v1";

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Seconds since the Unix epoch at `t` (0 before it): the time signatures and cache entries
/// are stamped with.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// [`unix_secs`] of now.
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Why a signed request was refused. Messages never echo the secret or the expected MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing {AUTH_HEADER} header")]
    Missing,
    #[error("malformed {AUTH_HEADER} header: {0}")]
    Malformed(&'static str),
    #[error("unsupported signature version `{0}` (expected v1)")]
    Version(String),
    #[error(
        "signature time is {skew_secs}s away from the server's clock (at most {max_secs}s allowed)"
    )]
    Skew { skew_secs: u64, max_secs: u64 },
    #[error("signature does not match")]
    BadSignature,
    #[error("this signed request was already seen (replayed, or signed too long ago)")]
    Replayed,
}

/// The shared secret of a release (`secret`), as the one thing that signs and checks pool
/// traffic. Its `Debug` never shows the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PoolSecret {
    pub(crate) key: Vec<u8>,
}

impl std::fmt::Debug for PoolSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_off() { "off" } else { "set" };
        write!(f, "PoolSecret({state})")
    }
}

impl PoolSecret {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        PoolSecret { key: key.into() }
    }

    /// No secret configured: servers check nothing.
    pub fn is_off(&self) -> bool {
        self.key.is_empty()
    }

    /// HMAC-SHA256 over `parts`, each preceded by its length (8 bytes, big-endian), so no two
    /// different lists of parts share a MAC. For protocols that authenticate a handshake
    /// rather than an HTTP request.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.hmac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn hmac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    fn request_mac(
        &self,
        method: &str,
        path_and_query: &str,
        pool: &str,
        unix_secs: u64,
    ) -> HmacSha256 {
        let mut mac = self.hmac();
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(path_and_query.as_bytes());
        mac.update(b"\n");
        mac.update(pool.as_bytes());
        mac.update(b"\n");
        mac.update(unix_secs.to_string().as_bytes());
        mac
    }

    /// The `X-Poolcast-Auth` value for a request from a peer of `pool` at `unix_secs`.
    pub fn sign(&self, method: &str, path_and_query: &str, pool: &str, unix_secs: u64) -> String {
        let tag = self
            .request_mac(method, path_and_query, pool, unix_secs)
            .finalize()
            .into_bytes();
        format!("{VERSION} {pool} {unix_secs} {}", hex::encode(tag))
    }

    /// [`PoolSecret::sign`] at the current time.
    pub fn sign_now(&self, method: &str, path_and_query: &str, pool: &str) -> String {
        self.sign(method, path_and_query, pool, unix_now())
    }

    /// Checks a header made by [`PoolSecret::sign`] at `now_unix`, within [`MAX_SKEW_SECS`],
    /// and returns the pool it was signed for. Callers skip the check when [`is_off`].
    ///
    /// [`is_off`]: PoolSecret::is_off
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        header: &str,
        now_unix: u64,
    ) -> Result<String, AuthError> {
        if header.is_empty() {
            return Err(AuthError::Missing);
        }
        if header.len() > MAX_HEADER_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let mut fields = header.split(' ');
        let (Some(version), Some(pool), Some(secs), Some(tag), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(AuthError::Malformed(
                "expected `v1 <pool> <unix_secs> <hex hmac>`",
            ));
        };
        if version != VERSION {
            return Err(AuthError::Version(version.chars().take(16).collect()));
        }
        if pool.is_empty() || pool.len() > MAX_POOL_LEN || pool.chars().any(char::is_control) {
            return Err(AuthError::Malformed("bad pool id"));
        }
        if secs.is_empty() || secs.len() > 20 || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::Malformed("bad timestamp"));
        }
        let unix_secs: u64 = secs
            .parse()
            .map_err(|_| AuthError::Malformed("bad timestamp"))?;
        if tag.len() != 64 {
            return Err(AuthError::Malformed("MAC must be 64 hex digits"));
        }
        let tag = hex::decode(tag).map_err(|_| AuthError::Malformed("MAC is not hex"))?;
        let skew_secs = now_unix.abs_diff(unix_secs);
        if skew_secs > MAX_SKEW_SECS {
            return Err(AuthError::Skew {
                skew_secs,
                max_secs: MAX_SKEW_SECS,
            });
        }
        self.request_mac(method, path_and_query, pool, unix_secs)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(pool.to_string())
    }

    /// [`PoolSecret::verify`] at the current time.
    pub fn verify_now(
        &self,
        method: &str,
        path_and_query: &str,
        header: &str,
    ) -> Result<String, AuthError> {
        self.verify(method, path_and_query, header, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"pool secret";
    const NOW: u64 = 1_700_000_000;

    fn sign(secret: &[u8], method: &str, path: &str, pool: &str, unix_secs: u64) -> String {
        PoolSecret::new(secret).sign(method, path, pool, unix_secs)
    }

    fn check(header: &str) -> Result<String, AuthError> {
        PoolSecret::new(SECRET).verify("POST", "/api/v2/join", header, NOW)
    }

    #[test]
    fn signed_header_verifies_and_names_the_pool() {
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW);
        assert!(h.starts_with("v1 np-1 1700000000 "), "{h}");
        assert_eq!(check(&h), Ok("np-1".to_string()));
        // Clock skew inside the window is fine, either way.
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW - 299);
        assert_eq!(check(&h), Ok("np-1".to_string()));
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW + 300);
        assert_eq!(check(&h), Ok("np-1".to_string()));
    }

    #[test]
    fn tampered_method_path_or_pool_fails() {
        let h = sign(SECRET, "POST", "/api/v1/heartbeat", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h = sign(SECRET, "GET", "/api/v2/join", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW).replace("np-1", "np-2");
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h =
            sign(SECRET, "POST", "/api/v2/join", "np-1", NOW).replace("1700000000", "1700000001");
        assert_eq!(check(&h), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_secret_fails() {
        let h = sign(b"another secret", "POST", "/api/v2/join", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
    }

    #[test]
    fn old_or_future_timestamp_fails() {
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW - 301);
        assert!(matches!(
            check(&h),
            Err(AuthError::Skew { skew_secs: 301, .. })
        ));
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW + 3600);
        assert!(matches!(check(&h), Err(AuthError::Skew { .. })));
        let h = sign(SECRET, "POST", "/api/v2/join", "np-1", 0);
        assert!(matches!(check(&h), Err(AuthError::Skew { .. })));
    }

    #[test]
    fn garbage_headers_are_refused_without_panic() {
        let good = sign(SECRET, "POST", "/api/v2/join", "np-1", NOW);
        let tag = good.rsplit(' ').next().unwrap_or_default().to_string();
        let huge = "v1 ".to_string() + &"x".repeat(100_000);
        let cases = [
            String::new(),
            " ".into(),
            "v1".into(),
            "v1 np-1".into(),
            "v1 np-1 1700000000".into(),
            format!("v1 np-1 1700000000 {tag} extra"),
            format!("v1  np-1 1700000000 {tag}"),
            format!("v2 np-1 1700000000 {tag}"),
            format!("v1 np-1 -5 {tag}"),
            format!("v1 np-1 +1700000000 {tag}"),
            format!("v1 np-1 99999999999999999999999 {tag}"),
            format!("v1 np-1 1700000000 {}", "z".repeat(64)),
            format!("v1 np-1 1700000000 {}", &tag[..62]),
            format!("v1 np-1 1700000000 {}é", &tag[..62]),
            format!("v1 np\u{1}1 1700000000 {tag}"),
            huge,
            "\u{0}\u{0}\u{0}\u{0}".into(),
        ];
        for case in &cases {
            assert!(check(case).is_err(), "accepted {case:?}");
        }
        assert_eq!(check(""), Err(AuthError::Missing));
    }

    #[test]
    fn empty_secret_still_signs_consistently() {
        let h = sign(b"", "POST", "/p", "np", NOW);
        let off = PoolSecret::new("");
        assert!(off.is_off() && !PoolSecret::new(SECRET).is_off());
        assert_eq!(off.verify("POST", "/p", &h, NOW), Ok("np".to_string()));
        assert_eq!(
            PoolSecret::new(SECRET).verify("POST", "/p", &h, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn handshake_macs_bind_every_part_and_its_boundaries() {
        let secret = PoolSecret::new(SECRET);
        let mac = secret.mac(&[b"ab", b"c"]);
        assert_eq!(mac, secret.mac(&[b"ab", b"c"]));
        assert_ne!(
            mac,
            secret.mac(&[b"a", b"bc"]),
            "parts moved across a boundary"
        );
        assert_ne!(mac, secret.mac(&[b"abc"]));
        assert_ne!(mac, PoolSecret::new("other").mac(&[b"ab", b"c"]));
        // HMAC-SHA256 of the length-prefixed parts, nothing else.
        let mut plain = HmacSha256::new_from_slice(SECRET).expect("key");
        plain.update(&2u64.to_be_bytes());
        plain.update(b"ab");
        plain.update(&1u64.to_be_bytes());
        plain.update(b"c");
        assert_eq!(mac.as_slice(), plain.finalize().into_bytes().as_slice());
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let shown = format!("{:?}", PoolSecret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(format!("{:?}", PoolSecret::new("")), "PoolSecret(off)");
    }

    #[test]
    fn unix_seconds_count_from_the_epoch_and_never_go_negative() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_999);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(unix_secs(UNIX_EPOCH - std::time::Duration::from_secs(5)), 0);
    }
}
