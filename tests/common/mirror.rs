//! The `poolcast mirror` binary under test, on a port it picks itself.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use super::http::client;
use super::registry::Registry;
use super::READY_TIMEOUT;

pub const UPSTREAM_BYTES: &str = "poolcast_mirror_upstream_bytes_total";
pub const SERVED_BYTES: &str = "poolcast_mirror_served_bytes_total";
pub const CACHE_HITS: &str = "poolcast_mirror_cache_hits_total";
pub const CACHE_MISSES: &str = "poolcast_mirror_cache_misses_total";

/// What the mirror prints on stdout once its listener is bound; the rest of the line is its URL.
const READY_PREFIX: &str = "poolcast mirror listening on ";

pub struct Mirror {
    args: Vec<String>,
    child: Option<Child>,
    url: String,
    /// Every line the mirror wrote to stderr (its logs, and any panic message), across restarts.
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    /// Runs `poolcast mirror --listen 127.0.0.1:0 ARGS...` and waits until it is listening.
    /// Its output goes to the test's stderr (shown when the test fails); stderr is also kept
    /// for [`Mirror::assert_no_panic`].
    pub fn start(args: &[&str]) -> Mirror {
        let mut mirror = Mirror {
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            url: String::new(),
            stderr: Arc::new(Mutex::new(Vec::new())),
            stderr_reader: None,
        };
        mirror.spawn();
        mirror
    }

    /// A mirror in front of `registry` caching in `cache_dir`, plus `extra` flags.
    pub fn for_registry(registry: &Registry, cache_dir: &Path, extra: &[&str]) -> Mirror {
        let upstream = registry.url();
        let cache = cache_dir.to_str().expect("utf-8 temp path");
        let mut args = vec!["--upstream", upstream.as_str(), "--cache-dir", cache];
        args.extend_from_slice(extra);
        Mirror::start(&args)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolcast"));
        cmd.args(["mirror", "--listen", "127.0.0.1:0"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("spawning poolcast mirror");
        let stdout = child.stdout.take().expect("mirror stdout");
        let stderr = child.stderr.take().expect("mirror stderr");
        let kept = self.stderr.clone();
        self.stderr_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[mirror] {line}");
                kept.lock().expect("stderr log").push(line);
            }
        }));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[mirror] {line}");
                if let Some(url) = line.trim().strip_prefix(READY_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => {
                assert!(
                    url.starts_with("http://127.0.0.1:"),
                    "mirror announced {url:?}, expected http://127.0.0.1:PORT"
                );
                self.url = url;
            }
            Err(e) => {
                let status = self.kill();
                panic!(
                    "poolcast mirror {:?} did not print `{READY_PREFIX}http://...` within \
                     {READY_TIMEOUT:?} ({e}); exit status: {status:?}",
                    self.args
                );
            }
        }
    }

    /// The mirror process's id, for reading its memory and CPU time ([`super::proc_stats`]).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("mirror running")
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference pulled through the mirror.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Stops the mirror and starts it again with the same arguments (and so the same
    /// `--cache-dir`). The port changes: read `url()`/`host()` again afterwards.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `/healthz` status code.
    pub fn healthz(&self) -> u16 {
        client()
            .get(format!("{}/healthz", self.url))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("GET {}/healthz: {e}", self.url))
    }

    pub fn metrics_text(&self) -> String {
        let resp = client()
            .get(format!("{}/metrics", self.url))
            .send()
            .unwrap_or_else(|e| panic!("GET {}/metrics: {e}", self.url));
        assert!(
            resp.status().is_success(),
            "/metrics answered {}",
            resp.status()
        );
        resp.text().expect("reading /metrics")
    }

    /// The stderr lines so far that contain `needle`.
    pub fn stderr_matching(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .expect("stderr log")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Stops the mirror and fails if it reported a panic on stderr (actix turns a panicking
    /// handler into a dropped connection and a replaced worker, so a client alone cannot
    /// tell). Stopping first means every line it wrote has been read.
    pub fn stop_and_assert_no_panic(&mut self) {
        assert_eq!(self.healthz(), 200, "mirror /healthz after the requests");
        self.kill();
        // Control: the start-up log line arrived, so stderr really is being read.
        assert!(
            !self.stderr_matching("cache opened").is_empty(),
            "the mirror's stderr was not captured"
        );
        let panics = self.stderr_matching("panicked");
        assert!(panics.is_empty(), "the mirror panicked: {panics:#?}");
    }

    /// The sum of every sample of metric `name` across all label sets; 0 if it has none yet.
    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics_text(), name)
    }

    /// Stops the mirror; returns once its stderr is read to the end.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sums the samples named exactly `name` in Prometheus/OpenMetrics text (`name{labels} value`).
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (sample, rest) = match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    let close = line.rfind('}')?;
                    (&line[..i], &line[close + 1..])
                }
                Some(i) => (&line[..i], &line[i..]),
                None => return None,
            };
            if sample != name {
                return None;
            }
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}
