//! Integration-test harness: real parts, no mocks.
//!
//! Each helper owns one real process (the CNCF registry, the `poolcast` mirror, scheduler and
//! agents, containerd) or drives one real client (skopeo, ctr), and kills what it started when
//! dropped, also when the test panics. Nothing is shared between tests: every test gets its own
//! ports and temp dirs.
//!
//! ```text
//!   TestImage --skopeo push--> Registry <--upstream-- Mirror <--pull-- skopeo / containerd
//!                                                       ^
//!                                    Scheduler <--> Agents (127.0.0.x) <--pull-- skopeo / containerd
//! ```
//!
//! The tools come from `scripts/test.sh`; a missing tool fails the test with a message naming it.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod agent;
pub mod containerd;
pub mod fake;
pub mod fake_peer;
pub mod fixture;
pub mod http;
pub mod image;
pub mod metrics;
pub mod mirror;
pub mod p2p;
pub mod preheat;
pub mod proc_stats;
pub mod process;
pub mod registry;
pub mod scheduler;
pub mod standin;
pub mod tls;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use self::scheduler::Scheduler;
pub use agent::{Agent, AgentOpts};
pub use containerd::{Containerd, Hosts};
pub use fixture::Fixture;
pub use http::{basic_auth, client, raw_request, RawResponse};
pub use image::{skopeo_pull, verify_pulled, BlobRef, TestImage};
pub use mirror::Mirror;
pub use p2p::{BedSpec, P2pBed};
pub use registry::Registry;

/// How long a process gets to become ready (bind, answer its first request).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client operation (a push, a pull) may take before it counts as hung.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until `cond` holds, polling; panics naming `what` if it does not within `timeout`.
pub fn assert_eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if !eventually(timeout, &mut cond) {
        panic!("condition not reached within {timeout:?}: {what}");
    }
}

/// Polls `cond` until it holds (true) or `timeout` passes (false). The short poll interval is
/// the only sleep the harness allows itself.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Fails with a message naming the missing tool and how to get it. Tests never skip silently.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|dir| dir.join(tool).is_file())
        })
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed. Run the tests with scripts/test.sh, which installs \
         docker-registry, skopeo, containerd (ctr) and apache2-utils (htpasswd)."
    );
}

/// Containerd needs root (it mounts and chowns); say so instead of failing obscurely.
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(uid, "0", "{what} must run as root (uid is {uid:?})");
}

/// A port that was free a moment ago. Only for children that cannot bind port 0 and report it
/// (the registry); callers retry when the child loses the race for it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Runs `cmd` to completion, capturing stdout and stderr, and kills it after `timeout` so a hung
/// client fails its test instead of hanging the run.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    let mut out = child.stdout.take().context("child stdout")?;
    let mut err = child.stderr.take().context("child stderr")?;
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {desc}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            bail!(
                "{desc} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Like [`run_with_timeout`], but a non-zero exit is an error carrying the child's stderr.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `program arg arg ...`, for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` bytes of a log file, for printing when a test fails.
pub fn log_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

pub use testkit::{sha256_file, sha256_hex};

/// True if `body` holds any 32-byte run of the start of `blob`.
pub fn leaks(body: &[u8], blob: &[u8]) -> bool {
    let probe = &blob[..blob.len().min(4096)];
    probe
        .chunks(32)
        .filter(|c| c.len() == 32)
        .any(|c| body.windows(32).any(|w| w == c))
}
