//! The `poolcast` command as a user meets it: bad config stops start-up with one line naming
//! the key, retired keys only warn; `poolcast up` starts and says where to point clients.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

fn poolcast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poolcast"))
}

#[test]
fn bad_config_value_stops_start_up_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cacheTTL: forever\nupstreams: [\"http://127.0.0.1:1\"]\n",
            "cacheTTL",
        ),
        (
            "ratelimit: fast\nupstreams: [\"http://127.0.0.1:1\"]\n",
            "ratelimit",
        ),
        ("upstreams: [\"ftp://x\"]\n", "upstreams"),
        ("cacheTTLL: 1h\n", "cacheTTLL"),
        (
            "listen: nowhere\nupstreams: [\"http://127.0.0.1:1\"]\n",
            "listen",
        ),
        ("cacheHostPath: /tmp\n", "upstreams"),
        (
            "upstreams: [\"https://127.0.0.1:1\"]\nupstreamCAFile: /nonexistent/poolcast-ca.pem\n",
            "upstreamCAFile",
        ),
    ];
    for (yaml, key) in cases {
        let path = dir.path().join("mirror.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = poolcast()
            .args(["mirror", "--config"])
            .arg(&path)
            .env("POOLCAST_CACHE_DIR", dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A config that wrongly passes would start a server: give it a bounded time.
        let exited = common::eventually(Duration::from_secs(10), || {
            child.try_wait().unwrap().is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(exited, "{yaml:?} did not stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{yaml:?} should stop start-up: {stderr}"
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("poolcast:"))
            .collect();
        assert_eq!(lines.len(), 1, "one line of error for {yaml:?}: {stderr}");
        assert!(lines[0].contains(key), "{:?} should name `{key}`", lines[0]);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_scheduler_config_with_keys_of_the_removed_v1_api_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler.yaml");
    std::fs::write(
        &path,
        "maxParents: 16\nannounceInterval: 500ms\nsourcePiecesInFlight: 4\npeerTTL: 20s\n",
    )
    .unwrap();
    let out = poolcast()
        .args(["config", "check", "--component", "scheduler"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    for key in ["maxParents", "announceInterval", "sourcePiecesInFlight"] {
        assert!(
            stderr.contains(&format!("warning: config key `{key}` is no longer used")),
            "{stderr}"
        );
    }
    let scheduler = common::Scheduler::start(&["--config", &path.display().to_string()]);
    let log = std::fs::read_to_string(scheduler.log_path()).unwrap();
    assert!(
        log.contains("config key `maxParents` is ignored"),
        "no warning in:\n{log}"
    );
}

#[test]
fn up_starts_all_three_and_says_where_to_point_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = poolcast()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--mirror-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
            "--cache-dir",
        ])
        .arg(dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("Metrics:") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for component in ["mirror", "scheduler", "agent"] {
        assert!(
            seen.contains(&format!("{component} listening on http://127.0.0.1:")),
            "{seen}"
        );
    }
    assert!(seen.contains("skopeo copy"), "{seen}");
    assert!(seen.contains("hosts.toml"), "{seen}");
    for part in ["mirror", "agent"] {
        let index = dir.path().join("cache").join(part).join("index");
        assert!(index.exists(), "{} was not created", index.display());
    }
}
