//! A hostile fake upstream, for what no real registry shows: one that lies about a digest,
//! redirects to another host, or leaves out `Content-Length`. Each connection gets one
//! response and is closed.

use std::io::{BufRead, BufReader, Write};
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
}

impl Reply {
    pub fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
            no_length: false,
        }
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding fake upstream");
        let url = format!("http://{}", listener.local_addr().expect("fake address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
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
                    out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
                }
                for (k, v) in &reply.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = stream.write_all(out.as_bytes());
                if req.method != "HEAD" {
                    let _ = stream.write_all(&reply.body);
                }
            }
        });
        FakeUpstream { url, seen }
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("log").clone()
    }
}
