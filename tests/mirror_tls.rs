//! An upstream registry whose certificate a private CA signed, as many on-premises Harbors
//! are: the mirror trusts it only when `upstreamCAFile` names that CA, and a CA file it cannot
//! use stops it at start rather than leaving it to fail every pull.
//!
//! ```text
//!   rcgen CA --signs--> cert for 127.0.0.1 --> docker-registry (http.tls)
//!   ca.pem --upstreamCAFile--> Mirror --HTTPS--> registry    <--pull-- skopeo
//! ```

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::{certs, Certs};
use common::{Fixture, Registry};

const KIB: usize = 1024;

/// An HTTPS registry holding the usual fixture image, and a mirror in front of it with
/// `mirror_args`.
fn tls_fixture(certs: &Certs, seed: u64, mirror_args: &[&str]) -> Fixture {
    let registry = Registry::start_with_tls(&certs.cert, &certs.key);
    assert!(registry.url().starts_with("https://"), "{}", registry.url());
    Fixture::around(registry, &[256 * KIB, 64 * KIB], seed, mirror_args)
}

#[test]
fn a_mirror_trusting_the_private_ca_pulls_digest_identically() {
    let certs = certs(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca).unwrap();
    // The config key, as the chart writes it; upstreams and cache come from flags.
    let config = dir.path().join("mirror.yaml");
    std::fs::write(&config, format!("upstreamCAFile: {}\n", ca.display())).unwrap();
    let mut fx = tls_fixture(&certs, 61, &["--config", config.to_str().unwrap()]);

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    fx.pull_and_verify(&fx.via_mirror_by_digest(), None);
    assert!(
        fx.upstream_bytes() >= fx.image.total_blob_bytes(),
        "the blobs came from somewhere other than the HTTPS upstream?"
    );
    assert!(
        fx.registry.requests_seen("GET", "/blobs/") >= fx.image.blobs().len(),
        "the registry did not see the mirror's blob requests"
    );
    assert_eq!(
        fx.mirror.stderr_matching("upstream CA file read").len(),
        1,
        "the mirror did not say it read the CA file"
    );
    fx.mirror.stop_and_assert_no_panic();
}

#[test]
fn a_mirror_without_the_ca_fails_the_pull_with_a_tls_error() {
    let certs = certs(&["127.0.0.1"]);
    let mut fx = tls_fixture(&certs, 62, &[]);

    // The registry's own GETs so far: its readiness probe and the push.
    let gets_before = fx.registry.requests_seen("GET", "/");
    let out = common::skopeo_pull(&fx.via_mirror_by_tag(), &fx.fresh_dir("pull"), None).unwrap();
    assert!(
        !out.status.success(),
        "a mirror trusting only the public web PKI pulled from a private-CA registry"
    );
    // What the mirror answers says why: upstream's certificate, not a missing image.
    let resp = common::raw_request(
        fx.mirror.host(),
        "GET",
        &format!(
            "/v2/{}/manifests/{}",
            common::fixture::REPO,
            common::fixture::TAG
        ),
        &[("Accept", common::image::MANIFEST_TYPE)],
    )
    .unwrap();
    let body = String::from_utf8_lossy(&resp.body);
    assert_eq!(resp.status, 502, "{body}");
    assert!(body.contains("certificate"), "not a TLS error: {body}");
    assert_eq!(
        fx.registry.requests_seen("GET", "/"),
        gets_before,
        "a request of the mirror got past the TLS handshake"
    );
    fx.mirror.stop_and_assert_no_panic();
}

/// Runs `poolcast mirror` with `args` and env `envs`, which must stop at start; returns its
/// stderr lines that start with `poolcast:`.
fn start_up_errors(args: &[&str], envs: &[(&str, &Path)]) -> Vec<String> {
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolcast"));
    cmd.args(["mirror", "--listen", "127.0.0.1:0", "--upstream"])
        .arg("https://127.0.0.1:1")
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let exited = common::eventually(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(exited, "{args:?} did not stop start-up: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
        .lines()
        .filter(|l| l.starts_with("poolcast:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_ca_file_the_mirror_cannot_use_stops_start_up_naming_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let by_flag = start_up_errors(&["--upstream-ca-file", missing.to_str().unwrap()], &[]);
    let by_env = start_up_errors(&[], &[("POOLCAST_UPSTREAM_CA_FILE", &not_pem)]);
    for (lines, path, why) in [
        (by_flag, &missing, "cannot be read"),
        (by_env, &not_pem, "holds no certificate"),
    ] {
        assert_eq!(lines.len(), 1, "one line of error: {lines:?}");
        let line = &lines[0];
        assert!(line.contains("upstreamCAFile"), "{line}");
        assert!(line.contains(path.to_str().unwrap()), "{line}");
        assert!(line.contains(why), "{line}");
    }
}
