//! The `poolcast agent` binary under test, one per simulated node. Each binds its own loopback
//! address (`127.0.0.X`, all of 127/8 is loopback on Linux) so peers have distinct addresses,
//! on ports it picks itself; its disk cache outlives a `restart()`.

use std::path::PathBuf;

use super::metrics::{scrape, sum_labeled};
use super::mirror::sum_metric;
use super::process::{print_log, Component};

pub const PEER_BYTES: &str = "poolcast_agent_peer_bytes_total";
pub const SOURCE_BYTES: &str = "poolcast_agent_source_bytes_total";
pub const BACK_TO_SOURCE: &str = "poolcast_agent_back_to_source_total";
pub const MIRROR_PIECES: &str = "poolcast_agent_mirror_pieces_total";
pub const SERVED_BYTES: &str = "poolcast_agent_served_bytes_total";
pub const CACHE_HITS: &str = "poolcast_agent_cache_hits_total";
/// Blobs the agent started before its client asked (`storage::ahead`).
pub const STARTED_AHEAD: &str = "poolcast_agent_blobs_started_ahead_total";
pub const PIECE_FAILURES: &str = "poolcast_agent_piece_failures_total";
pub const DIGEST_MISMATCHES: &str = "poolcast_agent_digest_mismatches_total";
pub const SCHEDULER_ERRORS: &str = "poolcast_agent_scheduler_errors_total";
pub const PIECE_LISTS: &str = "poolcast_agent_piece_lists_total";
pub const PROOFS_HELD: &str = "poolcast_agent_proofs_held_total";
pub const PROOFS_FAILED: &str = "poolcast_agent_proofs_failed_total";
pub const TASKS: &str = "poolcast_agent_tasks";
pub const UPLOADS: &str = "poolcast_agent_uploads";

const API_PREFIX: &str = "poolcast agent listening on ";
const PEERS_PREFIX: &str = "poolcast agent peers on ";

/// How to run one agent.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// `127.0.0.X`: both listeners bind it, on port 0.
    pub ip: String,
    pub mirror_url: String,
    /// `Some`: `--download-pattern p2p` with this scheduler; `None`: `--download-pattern source`.
    pub scheduler_url: Option<String>,
    pub node: String,
    pub pool: String,
    pub secret: Option<String>,
    /// `--cache-dir` (disk mode keeps blobs here across restarts).
    pub cache_dir: PathBuf,
    /// More flags: `--blocksize 1MiB`, `--upload-rate 4M`, `--transfer-timeout 2s`, ...
    pub extra_args: Vec<String>,
}

impl AgentOpts {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "agent",
            "--listen",
            &format!("{}:0", self.ip),
            "--peer-listen",
            &format!("{}:0", self.ip),
            "--mirror",
            &self.mirror_url,
            "--node",
            &self.node,
            "--pool",
            &self.pool,
            "--cache-dir",
            &self.cache_dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match &self.scheduler_url {
            Some(url) => args.extend([
                "--download-pattern".into(),
                "p2p".into(),
                "--scheduler".into(),
                url.clone(),
            ]),
            None => args.extend(["--download-pattern".into(), "source".into()]),
        }
        if let Some(secret) = &self.secret {
            args.extend(["--secret".into(), secret.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

pub struct Agent {
    pub opts: AgentOpts,
    process: Option<Component>,
    url: String,
    peer_url: String,
}

impl Agent {
    /// Starts the agent and waits until both its listeners are bound.
    pub fn start(opts: AgentOpts) -> Agent {
        let mut agent = Agent {
            opts,
            process: None,
            url: String::new(),
            peer_url: String::new(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let (process, urls) = Component::start(
            &self.opts.node,
            &self.opts.args(),
            &[API_PREFIX, PEERS_PREFIX],
            &self.log_path(),
        );
        let want = format!("http://{}:", self.opts.ip);
        for url in &urls {
            assert!(
                url.starts_with(&want),
                "{} announced {url:?}, expected {want}PORT",
                self.opts.node
            );
        }
        self.url = urls[0].clone();
        self.peer_url = urls[1].clone();
        self.process = Some(process);
    }

    /// Its log, next to its cache dir; restarts append to it.
    pub fn log_path(&self) -> PathBuf {
        self.opts.cache_dir.with_extension("log")
    }

    /// `http://127.0.0.X:PORT`: the registry API (containerd, skopeo). Changes on restart.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.X:PORT`, the registry part of an image reference pulled through the agent.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// `http://127.0.0.X:PORT`: the peer API (`/pieces/...`). Changes on restart.
    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }

    pub fn peer_host(&self) -> &str {
        self.peer_url.trim_start_matches("http://")
    }

    pub fn node(&self) -> &str {
        &self.opts.node
    }

    /// SIGKILL, to simulate the node dying: no goodbye to the scheduler, transfers reset.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Component::is_running)
    }

    /// Kills the agent and starts it again with the same options and cache dir. Its ports (and
    /// so `url()`, `host()`, `peer_url()`) change; its counters start from 0.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The agent process's id ([`super::proc_stats`]).
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .and_then(Component::pid)
            .expect("agent running")
    }

    pub fn metrics_text(&self) -> String {
        scrape(&self.url)
    }

    /// The sum of every sample of `name`; 0 when it has none yet.
    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics_text(), name)
    }

    /// `poolcast_agent_mirror_pieces_total{reason="lease"|"assist"|"rescue"|"source"}`.
    pub fn mirror_pieces(&self, reason: &str) -> f64 {
        sum_labeled(&self.metrics_text(), MIRROR_PIECES, "reason", reason)
    }

    /// `poolcast_agent_peer_bytes_total{direction="in"|"out"}`.
    pub fn peer_bytes(&self, direction: &str) -> f64 {
        sum_labeled(&self.metrics_text(), PEER_BYTES, "direction", direction)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_log(&self.opts.node, &self.log_path());
        }
    }
}
