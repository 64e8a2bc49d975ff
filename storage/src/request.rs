//! The checks every registry request gets before it touches the store or a URL, and the
//! bounded body read, shared by the mirror and the agent. They take plain parts of a request,
//! not a server's request type.

use crate::error::{Error, Result};

/// Total size of request headers accepted on the registry API.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Longest joined `Accept` passed on.
const MAX_ACCEPT: usize = 4096;

/// What every registry API request is checked for first: the total size of its headers
/// (`(name, value)` pairs), a read-only method (returns whether it is `HEAD`), and
/// containerd's `?ns=` in `query` (returned as given).
pub fn preflight<'a>(
    method: &str,
    query: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(bool, Option<String>)> {
    let header_bytes: usize = headers
        .into_iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(Error::HeadersTooLarge(header_bytes));
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        other => return Err(Error::Unsupported(other.to_string())),
    };
    Ok((head, query_param(query, "ns")))
}

/// The first value of `name` in a query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every `Accept` line of a request as one list: Go clients (containerd, skopeo) send one
/// header line per media type, and passing on only the first would make upstream refuse an
/// index the client does accept. Lines that are not visible ASCII are left out; `None` when
/// nothing is left or the list is too long to pass on.
pub fn joined_accept<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let visible = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b);
    let parts: Vec<&str> = lines
        .into_iter()
        .filter(|line| line.iter().all(visible))
        .filter_map(|line| std::str::from_utf8(line).ok())
        .collect();
    let joined = parts.join(", ");
    (!joined.is_empty() && joined.len() <= MAX_ACCEPT).then_some(joined)
}

/// Reads a body of at most `limit` bytes; more is an error, not a truncation.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Error::ManifestTooLarge(limit));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::Transfer(nodepool::wire::error_chain(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(Error::ManifestTooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_takes_reads_and_refuses_writes_and_huge_headers() {
        let none: [(&str, &[u8]); 0] = [];
        assert_eq!(preflight("GET", "", none).ok(), Some((false, None)));
        assert_eq!(
            preflight("HEAD", "ns=docker.io&x=1", none).ok(),
            Some((true, Some("docker.io".into())))
        );
        assert!(matches!(
            preflight("PUT", "", none),
            Err(Error::Unsupported(m)) if m == "PUT"
        ));
        let big = vec![b'x'; MAX_HEADER_BYTES];
        assert!(matches!(
            preflight("GET", "", [("cookie", &big[..])]),
            Err(Error::HeadersTooLarge(_))
        ));
    }

    #[test]
    fn accept_lines_are_joined_and_bounded() {
        let lines: [&[u8]; 2] = [b"application/a", b"application/b; q=0.5"];
        assert_eq!(
            joined_accept(lines).as_deref(),
            Some("application/a, application/b; q=0.5")
        );
        assert_eq!(joined_accept(std::iter::empty()), None);
        let huge = vec![b'a'; MAX_ACCEPT + 1];
        assert_eq!(joined_accept([&huge[..]]), None);
        let bad: [&[u8]; 2] = [b"\xffbad", b"text/plain"];
        assert_eq!(joined_accept(bad).as_deref(), Some("text/plain"));
    }
}
