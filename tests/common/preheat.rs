//! `poolcast preheat` as a user runs it, and what it needs around a [`P2pBed`]: the image's
//! full reference (the registry host picks the upstream), an auth file, and a scheduler that
//! already knows the pool's nodes.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::fixture::{REPO, TAG};
use super::p2p::P2pBed;
use super::scheduler::PEERS;
use super::{assert_eventually, READY_TIMEOUT};

/// `REGISTRY_HOST/pool/app:v1`: the image as users name it, not through any mirror.
pub fn full_ref(bed: &P2pBed) -> String {
    format!("{}/{REPO}:{TAG}", bed.fx.registry.host())
}

/// A docker/skopeo auth file with `user:pass` for the bed's registry.
pub fn auth_file(bed: &P2pBed, user: &str, pass: &str) -> PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let json = serde_json::json!({ "auths": { bed.fx.registry.host(): { "auth": auth } } });
    let dir = bed.fx.fresh_dir("auth");
    std::fs::create_dir_all(&dir).expect("auth file dir");
    let path = dir.join("auth.json");
    std::fs::write(&path, json.to_string()).expect("writing the auth file");
    path
}

/// Waits until the scheduler has heard from `n` agents (their heartbeats carry the registry
/// ports preheat uses).
pub fn wait_for_nodes(bed: &P2pBed, n: usize) {
    assert_eventually(
        READY_TIMEOUT,
        &format!("the scheduler knows {n} nodes"),
        || bed.scheduler().metric(PEERS) as usize == n,
    );
}

/// Runs `poolcast preheat ARGS...` to the end (stdout is not a terminal: one line per image).
pub fn preheat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .arg("preheat")
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("running poolcast preheat")
}

/// stdout and stderr, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
