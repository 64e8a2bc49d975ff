//! Self-test of the integration harness, without the mirror: the registry, the test images,
//! skopeo and containerd must agree on digests before any mirror test can mean anything.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::metrics::sum_labeled;
use common::{mirror::sum_metric, raw_request, Containerd, Hosts, Registry, TestImage};

#[test]
fn image_pushed_to_plain_registry_pulls_back_identical_with_skopeo_and_containerd() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::build(&work.path().join("layout"), &[300 * 1024, 1024 * 1024], 1);
    assert_eq!(image.layers.len(), 2);
    image.push(&registry, "smoke/app:v1", None);

    let by_tag = format!("{}/smoke/app:v1", registry.host());
    image.pull_and_verify(&by_tag, &work.path().join("by-tag"), None);
    let by_digest = format!("{}/smoke/app@{}", registry.host(), image.manifest_digest);
    image.pull_and_verify(&by_digest, &work.path().join("by-digest"), None);

    let containerd = Containerd::start();
    let digest = containerd.pull_direct("smoke/app:v1", &registry.host());
    assert_eq!(digest, image.manifest_digest);
}

#[test]
fn registry_with_auth_demands_credentials_and_accepts_them() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let challenge = raw_request(&registry.host(), "GET", "/v2/", &[]).unwrap();
    assert_eq!(challenge.status, 401);
    let www = challenge.header("www-authenticate").unwrap_or_default();
    assert!(www.starts_with("Basic"), "challenge was {www:?}");
    let auth = common::basic_auth("alice", "s3cret");
    let ok = raw_request(&registry.host(), "GET", "/v2/", &[("Authorization", &auth)]).unwrap();
    assert_eq!(
        ok.status, 200,
        "registry refused the harness's basic auth header"
    );

    let work = tempfile::tempdir().unwrap();
    let image = TestImage::build(&work.path().join("layout"), &[200 * 1024, 500 * 1024], 2);
    image.push(&registry, "private/app:v1", registry.creds());

    let source = format!("{}/private/app:v1", registry.host());
    image.pull_and_verify(&source, &work.path().join("with-creds"), registry.creds());
    let anonymous = common::skopeo_pull(&source, &work.path().join("anonymous"), None).unwrap();
    assert!(
        !anonymous.status.success(),
        "anonymous pull of a private repo succeeded"
    );
    let wrong =
        common::skopeo_pull(&source, &work.path().join("wrong"), Some(("alice", "nope"))).unwrap();
    assert!(
        !wrong.status.success(),
        "pull with a wrong password succeeded"
    );

    let containerd = Containerd::start();
    let digest = containerd
        .pull(
            "private/app:v1",
            &registry.host(),
            &Hosts::Direct,
            registry.creds(),
        )
        .unwrap();
    assert_eq!(digest, image.manifest_digest);
}

#[test]
fn stopped_registry_restarts_with_its_data() {
    let mut registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::build(&work.path().join("layout"), &[64 * 1024], 3);
    image.push(&registry, "smoke/restart:v1", None);
    registry.stop();
    assert!(raw_request(&registry.host(), "GET", "/v2/", &[]).is_err());
    registry.restart();
    let source = format!("{}/smoke/restart:v1", registry.host());
    image.pull_and_verify(&source, &work.path().join("pulled"), None);
}

#[test]
fn same_seed_builds_same_image_and_different_seed_differs() {
    let work = tempfile::tempdir().unwrap();
    let a = TestImage::build(&work.path().join("a"), &[4096, 8192], 7);
    let b = TestImage::build(&work.path().join("b"), &[4096, 8192], 7);
    let c = TestImage::build(&work.path().join("c"), &[4096, 8192], 8);
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_ne!(a.manifest_digest, c.manifest_digest);
    assert_ne!(a.layers[0].digest, a.layers[1].digest);
    let sizes: u64 = a.blobs().iter().map(|b| b.size).sum();
    assert_eq!(a.total_blob_bytes(), sizes);
    assert!(a.layers[0].size > 4096, "a layer is a tar around its file");
}

#[test]
fn metric_sums_samples_across_label_sets() {
    let text = "# TYPE x counter\nx_total{a=\"1\"} 2\nx_total{a=\"b c\"} 3.5 123\n\
                x_total_created 9\nx_total 1\n# EOF\n";
    assert_eq!(sum_metric(text, "x_total"), 6.5);
    assert_eq!(sum_metric(text, "missing"), 0.0);
}

#[test]
fn labeled_metric_sums_only_samples_with_that_label() {
    let text =
        "# TYPE p counter\np_total{direction=\"in\"} 5\np_total{direction=\"out\",x=\"1\"} 7\n\
                p_total{direction=\"out\"} 1\npx_total{direction=\"out\"} 100\n# EOF\n";
    assert_eq!(sum_labeled(text, "p_total", "direction", "out"), 8.0);
    assert_eq!(sum_labeled(text, "p_total", "direction", "in"), 5.0);
    assert_eq!(sum_labeled(text, "p_total", "direction", "sideways"), 0.0);
}

#[test]
fn eventually_waits_for_a_condition_and_gives_up() {
    let start = std::time::Instant::now();
    let mut n = 0;
    common::assert_eventually(
        std::time::Duration::from_secs(5),
        "counter reaches 3",
        || {
            n += 1;
            n >= 3
        },
    );
    assert!(!common::eventually(
        std::time::Duration::from_millis(50),
        || false
    ));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn basic_auth_header_is_rfc7617_base64() {
    assert_eq!(
        common::basic_auth("Aladdin", "open sesame"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    assert_eq!(common::basic_auth("a", "b"), "Basic YTpi");
    assert_eq!(common::basic_auth("ab", "c"), "Basic YWI6Yw==");
}
