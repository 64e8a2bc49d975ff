//! HTTP for tests: a blocking reqwest client for well-formed requests, and a raw HTTP/1.1 client
//! over `TcpStream` for the hostile ones reqwest would normalise or refuse (`..` in paths,
//! oversized headers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A client with a timeout, so a mirror that hangs fails the test instead of stalling it.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building reqwest client")
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `code`s of an OCI error body (`{"errors":[{"code":...}]}`); empty if the body is not one.
    pub fn error_codes(&self) -> Vec<String> {
        oci_error_codes(&self.body)
    }
}

pub fn oci_error_codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .collect()
}

/// Sends `GET`/`HEAD`/... `target` with exactly the given headers (plus `Host` and
/// `Connection: close`), byte for byte as written.
pub fn raw_request(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<RawResponse> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_exchange(host, req.as_bytes(), method == "HEAD")
}

/// Writes `request` and reads the response until the server closes. The write runs on its own
/// thread so a server that answers (say `431`) before reading all of a huge request is still
/// heard.
pub fn raw_exchange(host: &str, request: &[u8], head: bool) -> Result<RawResponse> {
    let stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let request = request.to_vec();
    let write = std::thread::spawn(move || writer.write_all(&request));
    let mut reader = stream;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (the server closed with our request unread)
            // still leaves a complete answer to inspect.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => bail!(
                "reading response from {host}: {e} (after {} bytes)",
                raw.len()
            ),
        }
    }
    let _ = write.join();
    parse_response(&raw, head)
}

fn parse_response(raw: &[u8], head: bool) -> Result<RawResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })?;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head {
        return Ok(resp);
    }
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length").and_then(|v| v.parse().ok()) {
        rest[..rest.len().min(len)].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            // Connection ended mid-chunk: return what arrived; callers check lengths.
            out.extend_from_slice(data);
            return Ok(out);
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// `Basic <base64(user:pass)>`, for raw requests (no base64 crate among the dev-dependencies).
pub fn basic_auth(user: &str, pass: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
