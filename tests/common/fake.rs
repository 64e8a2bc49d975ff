//! A hostile fake upstream, for what no real registry shows: one that lies about a digest or a
//! length, says yes to everything, redirects anywhere, or leaves out `Content-Length`; over
//! plain HTTP or HTTPS (for `?ns=` hosts, which the mirror reaches over https). Each
//! connection gets one response and is closed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send no `Content-Length`: the body ends when the connection closes.
    pub no_length: bool,
    /// Claim this `Content-Length` whatever the body's length.
    pub claimed_length: Option<u64>,
}

impl Reply {
    pub fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
            no_length: false,
            claimed_length: None,
        }
    }

    /// Claims `len` bytes in `Content-Length`, whatever the body holds.
    pub fn claiming(mut self, len: u64) -> Reply {
        self.claimed_length = Some(len);
        self
    }

    /// Leaves out `Content-Length` (as some registries and CDNs do on HEAD).
    pub fn without_length(mut self) -> Reply {
        self.no_length = true;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

pub struct FakeUpstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeUpstream {
    /// Serves `handler`'s reply to every request, on a thread, until the process ends.
    pub fn start(handler: impl Fn(&SeenRequest) -> Reply + Send + 'static) -> FakeUpstream {
        Self::serve(None, handler)
    }

    /// As [`FakeUpstream::start`], over HTTPS with `cert_pem` and `key_pem`; `url` is then
    /// `https://localhost:PORT`, for a certificate naming `localhost`.
    pub fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        handler: impl Fn(&SeenRequest) -> Reply + Send + 'static,
    ) -> FakeUpstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("TLS config");
        Self::serve(Some(Arc::new(config)), handler)
    }

    fn serve(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&SeenRequest) -> Reply + Send + 'static,
    ) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding fake upstream");
        let addr = listener.local_addr().expect("fake address");
        let url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match &tls {
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        answer(rustls::StreamOwned::new(conn, stream), &handler, &log);
                    }
                    None => answer(stream, &handler, &log),
                }
            }
        });
        FakeUpstream { url, seen }
    }

    /// `host:port` as `?ns=` names it.
    pub fn ns(&self) -> &str {
        self.url.split("://").nth(1).unwrap_or("")
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("log").clone()
    }
}

/// Reads one request from `stream` and writes `handler`'s reply.
fn answer<S: Read + Write>(
    stream: S,
    handler: &impl Fn(&SeenRequest) -> Reply,
    log: &Mutex<Vec<SeenRequest>>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let req = SeenRequest {
        method,
        path,
        headers,
    };
    let reply = handler(&req);
    log.lock().expect("log").push(req.clone());
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    if !reply.no_length {
        let len = reply.claimed_length.unwrap_or(reply.body.len() as u64);
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let stream = reader.get_mut();
    let _ = stream.write_all(out.as_bytes());
    if req.method != "HEAD" {
        let _ = stream.write_all(&reply.body);
    }
    let _ = stream.flush();
}
