//! One `poolcast` component process (scheduler, agent) under test: started with its arguments,
//! ready once it printed every expected "listening" line. Its log goes to a file of its owner's
//! (appended to across restarts), whose tail the owner prints under its label when a test
//! fails, so the logs of six agents do not interleave line by line.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{log_tail, READY_TIMEOUT};

/// How much of each component's log a failing test prints.
const LOG_TAIL: usize = 12 * 1024;

pub struct Component {
    /// `node-3`, `scheduler`: names it in messages.
    pub label: String,
    child: Option<Child>,
}

impl Component {
    /// Runs `poolcast ARGS...`, logging to `log`, and waits until it printed a line starting
    /// with each of `ready_prefixes`; returns the rest of each such line (a URL), in the order
    /// asked. Panics naming the component when it exits or stays silent past [`READY_TIMEOUT`].
    pub fn start(
        label: &str,
        args: &[String],
        ready_prefixes: &[&str],
        log: &Path,
    ) -> (Component, Vec<String>) {
        Self::try_start(label, args, ready_prefixes, log).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Component::start`], with failure to start as an error (for retries).
    pub fn try_start(
        label: &str,
        args: &[String],
        ready_prefixes: &[&str],
        log: &Path,
    ) -> Result<(Component, Vec<String>)> {
        Self::try_start_env(label, args, &[], ready_prefixes, log)
    }

    /// [`Component::try_start`] with extra environment variables (`KUBECONFIG`, ...).
    pub fn try_start_env(
        label: &str,
        args: &[String],
        envs: &[(&str, &str)],
        ready_prefixes: &[&str],
        log: &Path,
    ) -> Result<(Component, Vec<String>)> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolcast"));
        cmd.args(args)
            .envs(envs.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning poolcast for {label}"))?;
        let stdout = child.stdout.take().expect("component stdout");

        let (tx, rx) = mpsc::channel();
        let prefixes: Vec<String> = ready_prefixes.iter().map(|s| s.to_string()).collect();
        let tag = label.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                for (i, prefix) in prefixes.iter().enumerate() {
                    if let Some(rest) = line.trim().strip_prefix(prefix.as_str()) {
                        let _ = tx.send((i, rest.trim().to_owned()));
                    }
                }
            }
        });

        let mut component = Component {
            label: label.to_owned(),
            child: Some(child),
        };
        let mut found: Vec<Option<String>> = vec![None; ready_prefixes.len()];
        let deadline = Instant::now() + READY_TIMEOUT;
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, rest)) => found[i] = Some(rest),
                Err(e) => {
                    let status = component.kill();
                    bail!(
                        "{label}: `poolcast {}` did not print {ready_prefixes:?} within \
                         {READY_TIMEOUT:?} ({e}); exit status: {status:?}; log:\n{}",
                        args.join(" "),
                        log_tail(log, LOG_TAIL)
                    );
                }
            }
        }
        Ok((component, found.into_iter().flatten().collect()))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as when a node dies: no goodbye to the scheduler, sockets reset.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints the tail of a component's log under its label; owners call it when a test fails.
pub fn print_log(label: &str, log: &Path) {
    eprintln!(
        "--- {label} log ({}) ---\n{}",
        log.display(),
        log_tail(log, LOG_TAIL)
    );
}
