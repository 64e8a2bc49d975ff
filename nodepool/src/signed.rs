//! Signed HTTP requests, v2: what the scheduler accepts from agents, and any other signed
//! HTTP between poolcast parts.
//!
//! `X-Poolcast-Auth: v2 <pool> <unix_millis> <nonce: 32 hex> <mac: 64 hex>`, where the MAC is
//! [`PoolSecret::mac`] with the key of `pool` ([`crate::keys`]) over
//!
//! ```text
//!   "poolcast request v2", method, host, path and query, hex sha256(body), pool, unix_millis, nonce
//! ```
//!
//! A captured request cannot be sent to another server, path or with another body, nor for
//! another pool (whose key the signer would need). Within the skew window it could be sent
//! again as it is: the server keeps the nonces it accepted ([`ReplayCache`]) and refuses a
//! second use.

use crate::secret::{AuthError, MAX_SKEW_SECS};
use crate::PoolSecret;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

const VERSION: &str = "v2";
const LABEL: &[u8] = b"poolcast request v2";
const MAX_HEADER_LEN: usize = 512;
const MAX_POOL_LEN: usize = 256;

/// What a signature covers besides the pool, time and nonce.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The `Host` header as sent: `host[:port]`.
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

fn mac(key: &PoolSecret, req: &RequestParts<'_>, pool: &str, millis: u64, nonce: &str) -> [u8; 32] {
    let body = hex::encode(Sha256::digest(req.body));
    let millis = millis.to_string();
    key.mac(&[
        LABEL,
        req.method.as_bytes(),
        req.host.as_bytes(),
        req.path_and_query.as_bytes(),
        body.as_bytes(),
        pool.as_bytes(),
        millis.as_bytes(),
        nonce.as_bytes(),
    ])
}

/// A nonce no other request of any process is likely to carry: a per-process random part and
/// a counter.
pub fn fresh_nonce() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let random = *PROCESS.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    (u128::from(random) << 64) | u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The header value for `req`, sent by a node of `pool` with `key` (its pool key).
pub fn sign(
    key: &PoolSecret,
    req: &RequestParts<'_>,
    pool: &str,
    millis: u64,
    nonce: u128,
) -> String {
    let nonce = format!("{nonce:032x}");
    let tag = mac(key, req, pool, millis, &nonce);
    format!("{VERSION} {pool} {millis} {nonce} {}", hex::encode(tag))
}

/// [`sign`] now, with a fresh nonce.
pub fn sign_now(key: &PoolSecret, req: &RequestParts<'_>, pool: &str) -> String {
    sign(key, req, pool, unix_millis_now(), fresh_nonce())
}

/// A parsed v2 header, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader {
    pub pool: String,
    pub unix_millis: u64,
    pub nonce: u128,
    nonce_text: String,
    tag: [u8; 32],
}

impl SignedHeader {
    /// Parses `v2 <pool> <unix_millis> <nonce> <mac>`; anything else is an error, never a panic.
    pub fn parse(header: &str) -> Result<Self, AuthError> {
        if header.is_empty() {
            return Err(AuthError::Missing);
        }
        if header.len() > MAX_HEADER_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let fields: Vec<&str> = header.split(' ').collect();
        let [version, pool, millis, nonce, tag] = fields[..] else {
            return Err(AuthError::Malformed(
                "expected `v2 <pool> <unix_millis> <nonce> <hex hmac>`",
            ));
        };
        if version != VERSION {
            return Err(AuthError::Version(version.chars().take(16).collect()));
        }
        if pool.is_empty() || pool.len() > MAX_POOL_LEN || pool.chars().any(char::is_control) {
            return Err(AuthError::Malformed("bad pool id"));
        }
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(millis, 19) {
            return Err(AuthError::Malformed("bad timestamp"));
        }
        let unix_millis = millis
            .parse()
            .map_err(|_| AuthError::Malformed("bad timestamp"))?;
        let hex_of = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !hex_of(nonce, 32) {
            return Err(AuthError::Malformed(
                "nonce must be 32 lowercase hex digits",
            ));
        }
        let nonce_value =
            u128::from_str_radix(nonce, 16).map_err(|_| AuthError::Malformed("bad nonce"))?;
        if !hex_of(tag, 64) {
            return Err(AuthError::Malformed("MAC must be 64 lowercase hex digits"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(tag, &mut bytes)
            .map_err(|_| AuthError::Malformed("MAC is not hex"))?;
        Ok(SignedHeader {
            pool: pool.to_string(),
            unix_millis,
            nonce: nonce_value,
            nonce_text: nonce.to_string(),
            tag: bytes,
        })
    }

    /// Refuses a time further than [`MAX_SKEW_SECS`] from `now_millis`: cheap, so it comes
    /// before reading the body.
    pub fn check_time(&self, now_millis: u64) -> Result<(), AuthError> {
        let skew_secs = now_millis.abs_diff(self.unix_millis) / 1000;
        if skew_secs > MAX_SKEW_SECS {
            return Err(AuthError::Skew {
                skew_secs,
                max_secs: MAX_SKEW_SECS,
            });
        }
        Ok(())
    }

    /// Checks the MAC with `key` (the named pool's) over `req`, in constant time.
    pub fn verify(&self, key: &PoolSecret, req: &RequestParts<'_>) -> Result<(), AuthError> {
        use hmac::Mac;
        let body = hex::encode(Sha256::digest(req.body));
        let millis = self.unix_millis.to_string();
        let mut check = key.hmac();
        for part in [
            LABEL,
            req.method.as_bytes(),
            req.host.as_bytes(),
            req.path_and_query.as_bytes(),
            body.as_bytes(),
            self.pool.as_bytes(),
            millis.as_bytes(),
            self.nonce_text.as_bytes(),
        ] {
            check.update(&(part.len() as u64).to_be_bytes());
            check.update(part);
        }
        check
            .verify_slice(&self.tag)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// The nonces of accepted requests, so none is accepted twice. Bounded: when full, the oldest
/// is forgotten and requests signed no later than it are refused from then on (a replay of a
/// forgotten nonce is one of them). Under normal load the cache spans the whole skew window;
/// under a flood it spans less, and only requests that took longer than that to arrive are
/// refused (their sender retries, signing anew).
pub struct ReplayCache {
    seen: HashSet<u128>,
    order: VecDeque<(u64, u128)>,
    capacity: usize,
    /// Requests signed at or before this (unix millis) are refused.
    floor: u64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            floor: 0,
        }
    }

    /// Accepts a verified request's nonce once; `now_millis` lets expired entries go.
    pub fn admit(&mut self, header: &SignedHeader, now_millis: u64) -> Result<(), AuthError> {
        let window = MAX_SKEW_SECS * 1000;
        while let Some(&(at, nonce)) = self.order.front() {
            if at.saturating_add(window) >= now_millis {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
        if header.unix_millis <= self.floor || self.seen.contains(&header.nonce) {
            return Err(AuthError::Replayed);
        }
        if self.order.len() >= self.capacity {
            if let Some((at, nonce)) = self.order.pop_front() {
                self.seen.remove(&nonce);
                // Anything signed this early that comes again is no longer recognised.
                self.floor = self.floor.max(at);
            }
        }
        self.seen.insert(header.nonce);
        self.order.push_back((header.unix_millis, header.nonce));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    fn req(body: &'static [u8]) -> RequestParts<'static> {
        RequestParts {
            method: "POST",
            host: "scheduler:65003",
            path_and_query: "/api/v2/join",
            body,
        }
    }

    fn key(pool: &str) -> PoolSecret {
        crate::keys::pool_key(&PoolSecret::new("release"), pool)
    }

    fn check(header: &str, parts: &RequestParts<'_>) -> Result<String, AuthError> {
        let h = SignedHeader::parse(header)?;
        h.check_time(NOW)?;
        h.verify(&key(&h.pool), parts)?;
        Ok(h.pool)
    }

    #[test]
    fn a_signed_request_verifies_with_its_pools_key_and_nothing_else() {
        let header = sign(&key("np-1"), &req(b"{}"), "np-1", NOW, 7);
        assert_eq!(check(&header, &req(b"{}")), Ok("np-1".to_string()));
        // Every part is covered.
        let tampered = [
            RequestParts {
                method: "GET",
                ..req(b"{}")
            },
            RequestParts {
                host: "evil:65003",
                ..req(b"{}")
            },
            RequestParts {
                path_and_query: "/api/v1/leave",
                ..req(b"{}")
            },
            req(b"{\"x\":1}"),
        ];
        for parts in &tampered {
            assert_eq!(
                check(&header, parts),
                Err(AuthError::BadSignature),
                "{parts:?}"
            );
        }
        // Another pool's name on np-1's key: the scheduler checks with np-2's key.
        let claimed = sign(&key("np-1"), &req(b"{}"), "np-2", NOW, 7);
        assert_eq!(check(&claimed, &req(b"{}")), Err(AuthError::BadSignature));
        let moved = header.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(check(&moved, &req(b"{}")), Err(AuthError::BadSignature));
        let old = sign(&key("np-1"), &req(b"{}"), "np-1", NOW - 301_000, 7);
        assert!(matches!(
            check(&old, &req(b"{}")),
            Err(AuthError::Skew { .. })
        ));
    }

    #[test]
    fn a_nonce_is_accepted_once_and_a_full_cache_refuses_what_it_forgot() {
        let mut cache = ReplayCache::new(2);
        let at = |millis: u64, nonce: u128| {
            SignedHeader::parse(&sign(&key("p"), &req(b""), "p", millis, nonce)).expect("parse")
        };
        assert_eq!(cache.admit(&at(NOW, 1), NOW), Ok(()));
        assert_eq!(cache.admit(&at(NOW, 1), NOW), Err(AuthError::Replayed));
        assert_eq!(cache.admit(&at(NOW + 1, 2), NOW), Ok(()));
        // Full: nonce 1 (signed at NOW) is forgotten, so NOW is now too early.
        assert_eq!(cache.admit(&at(NOW + 2, 3), NOW), Ok(()));
        assert_eq!(cache.admit(&at(NOW, 1), NOW), Err(AuthError::Replayed));
        assert_eq!(cache.len(), 2);
        // Entries past the skew window expire without raising the floor.
        let later = NOW + MAX_SKEW_SECS * 1000 + 10;
        assert_eq!(cache.admit(&at(later, 4), later), Ok(()));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn nonces_do_not_repeat() {
        let a = fresh_nonce();
        assert_ne!(a, fresh_nonce());
    }

    proptest! {
        #[test]
        fn any_header_text_is_parsed_or_refused_without_panic(text in "\\PC{0,600}") {
            let _ = SignedHeader::parse(&text);
        }

        #[test]
        fn near_miss_headers_never_verify(
            pool in "[a-z0-9-]{1,20}",
            millis in 0u64..u64::MAX / 2,
            nonce in any::<u128>(),
            flip in 0usize..200,
        ) {
            let parts = req(b"body");
            let header = sign(&key(&pool), &parts, &pool, millis, nonce);
            let parsed = SignedHeader::parse(&header).expect("own header parses");
            prop_assert_eq!(&parsed.pool, &pool);
            prop_assert_eq!(parsed.unix_millis, millis);
            prop_assert_eq!(parsed.nonce, nonce);
            prop_assert!(parsed.verify(&key(&pool), &parts).is_ok());
            // Change one character: it either fails to parse or fails to verify.
            let mut bytes = header.into_bytes();
            let i = flip % bytes.len();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            if let Ok(text) = String::from_utf8(bytes) {
                if let Ok(h) = SignedHeader::parse(&text) {
                    prop_assert!(h.verify(&key(&h.pool), &parts).is_err() || h == parsed);
                }
            }
        }
    }
}
