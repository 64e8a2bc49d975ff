//! Request signing between agents, peers and the scheduler with a shared pool secret.
//!
//! The header `X-Poolcast-Auth: v1 <pool> <unix_secs> <hex hmac>` carries an HMAC-SHA256 over
//! `method \n path_and_query \n pool \n unix_secs`. The server checks the MAC in constant time
//! and refuses timestamps further than `max_skew_secs` from its clock, which bounds replay.
//! The body is not covered: a request is bound to its method, path, pool and time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature (lowercase, as HTTP/2 and actix name it).
pub const AUTH_HEADER: &str = "x-poolcast-auth";

/// Longest header value accepted before parsing: `v1`, a pool id of up to 256 bytes, a
/// timestamp and 64 hex digits fit well inside.
const MAX_HEADER_LEN: usize = 512;
const MAX_POOL_LEN: usize = 256;
const VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

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
}

fn mac_for(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    pool: &str,
    unix_secs: u64,
) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
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
pub fn sign(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    pool: &str,
    unix_secs: u64,
) -> String {
    let tag = mac_for(secret, method, path_and_query, pool, unix_secs)
        .finalize()
        .into_bytes();
    format!("{VERSION} {pool} {unix_secs} {}", hex::encode(tag))
}

/// Checks a header made by [`sign`] and returns the pool it was signed for.
pub fn verify(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    header: &str,
    now_unix: u64,
    max_skew_secs: u64,
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
    if skew_secs > max_skew_secs {
        return Err(AuthError::Skew {
            skew_secs,
            max_secs: max_skew_secs,
        });
    }
    mac_for(secret, method, path_and_query, pool, unix_secs)
        .verify_slice(&tag)
        .map_err(|_| AuthError::BadSignature)?;
    Ok(pool.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"pool secret";
    const NOW: u64 = 1_700_000_000;

    fn check(header: &str) -> Result<String, AuthError> {
        verify(SECRET, "POST", "/api/v1/announce", header, NOW, 300)
    }

    #[test]
    fn signed_header_verifies_and_names_the_pool() {
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW);
        assert!(h.starts_with("v1 np-1 1700000000 "), "{h}");
        assert_eq!(check(&h), Ok("np-1".to_string()));
        // Clock skew inside the window is fine, either way.
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW - 299);
        assert_eq!(check(&h), Ok("np-1".to_string()));
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW + 300);
        assert_eq!(check(&h), Ok("np-1".to_string()));
    }

    #[test]
    fn tampered_method_path_or_pool_fails() {
        let h = sign(SECRET, "POST", "/api/v1/heartbeat", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h = sign(SECRET, "GET", "/api/v1/announce", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW).replace("np-1", "np-2");
        assert_eq!(check(&h), Err(AuthError::BadSignature));
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW)
            .replace("1700000000", "1700000001");
        assert_eq!(check(&h), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_secret_fails() {
        let h = sign(b"another secret", "POST", "/api/v1/announce", "np-1", NOW);
        assert_eq!(check(&h), Err(AuthError::BadSignature));
    }

    #[test]
    fn old_or_future_timestamp_fails() {
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW - 301);
        assert!(matches!(
            check(&h),
            Err(AuthError::Skew { skew_secs: 301, .. })
        ));
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW + 3600);
        assert!(matches!(check(&h), Err(AuthError::Skew { .. })));
        let h = sign(SECRET, "POST", "/api/v1/announce", "np-1", 0);
        assert!(matches!(check(&h), Err(AuthError::Skew { .. })));
    }

    #[test]
    fn garbage_headers_are_refused_without_panic() {
        let good = sign(SECRET, "POST", "/api/v1/announce", "np-1", NOW);
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
        assert_eq!(verify(b"", "POST", "/p", &h, NOW, 0), Ok("np".to_string()));
        assert_eq!(
            verify(SECRET, "POST", "/p", &h, NOW, 0),
            Err(AuthError::BadSignature)
        );
    }
}
