//! The `poolcast scheduler` binary under test. It binds `127.0.0.1:0` the first time and the same
//! port on `restart()`, so agents configured with its URL find it again.

use tempfile::TempDir;

use super::metrics::scrape;
use super::mirror::sum_metric;
use super::process::{print_log, Component};
use super::{eventually, READY_TIMEOUT};

pub const PEERS: &str = "poolcast_scheduler_peers";
pub const TASKS: &str = "poolcast_scheduler_tasks";
pub const JOINS: &str = "poolcast_scheduler_joins_total";
pub const FRESH_LEASES: &str = "poolcast_scheduler_fresh_leases_total";
pub const GO_SOURCE: &str = "poolcast_scheduler_go_source_total";

const READY_PREFIX: &str = "poolcast scheduler listening on ";

pub struct Scheduler {
    args: Vec<String>,
    process: Option<Component>,
    url: String,
    /// Holds its log and config file.
    dir: TempDir,
}

impl Scheduler {
    /// Runs `poolcast scheduler --listen 127.0.0.1:0 ARGS...` and waits until it listens.
    pub fn start(args: &[&str]) -> Scheduler {
        Self::launch(
            args.iter().map(|s| s.to_string()).collect(),
            scheduler_dir(),
        )
    }

    /// A scheduler whose config lists `yaml_pools` under `edgeNodePools` (a YAML sequence, e.g.
    /// `"- id: pool-a\n  connectedPools: [pool-b]\n- id: pool-b\n"`), signing with `secret`.
    pub fn with_pools(yaml_pools: &str, secret: Option<&str>, extra: &[&str]) -> Scheduler {
        let dir = scheduler_dir();
        let mut config = String::from("edgeNodePools:\n");
        for line in yaml_pools.lines() {
            config.push_str("  ");
            config.push_str(line);
            config.push('\n');
        }
        let path = dir.path().join("scheduler.yaml");
        std::fs::write(&path, config).expect("writing scheduler config");
        let mut args = vec!["--config".to_owned(), path.display().to_string()];
        if let Some(secret) = secret {
            args.extend(["--secret".to_owned(), secret.to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(args, dir)
    }

    fn launch(args: Vec<String>, dir: TempDir) -> Scheduler {
        let mut scheduler = Scheduler {
            args,
            process: None,
            url: String::new(),
            dir,
        };
        scheduler.spawn("127.0.0.1:0");
        scheduler
    }

    fn spawn(&mut self, listen: &str) {
        self.try_spawn(listen).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_spawn(&mut self, listen: &str) -> anyhow::Result<()> {
        let mut args = vec![
            "scheduler".to_owned(),
            "--listen".to_owned(),
            listen.to_owned(),
        ];
        args.extend(self.args.iter().cloned());
        let log = self.log_path();
        let (process, urls) = Component::try_start("scheduler", &args, &[READY_PREFIX], &log)?;
        let url = urls.into_iter().next().unwrap_or_default();
        anyhow::ensure!(
            url.starts_with("http://127.0.0.1:"),
            "scheduler announced {url:?}, expected http://127.0.0.1:PORT"
        );
        self.process = Some(process);
        self.url = url;
        Ok(())
    }

    /// Its log; restarts append to it.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("scheduler.log")
    }

    /// `http://127.0.0.1:PORT`; the same after `restart()`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SIGKILL: all its soft state (peers, tasks, pieces) is gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Kills the scheduler if it runs and starts it again on the same port, with no state.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.url.trim_start_matches("http://").to_owned();
        // The port was ours a moment ago; should the bind race with something, try again.
        let mut last = None;
        let up = eventually(READY_TIMEOUT, || match self.try_spawn(&listen) {
            Ok(()) => true,
            Err(e) => {
                last = Some(e);
                false
            }
        });
        assert!(up, "scheduler could not listen on {listen} again: {last:?}");
    }

    pub fn metrics_text(&self) -> String {
        scrape(&self.url)
    }

    /// The sum of every sample of `name`; 0 when it has none.
    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics_text(), name)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_log("scheduler", &self.log_path());
        }
    }
}

fn scheduler_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("poolcast-scheduler-")
        .tempdir()
        .expect("temp dir for the scheduler")
}
