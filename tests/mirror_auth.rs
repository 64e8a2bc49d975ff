//! Private images stay private: a cached blob goes only to requesters upstream accepts.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::{basic_auth, raw_request, Fixture};

const KIB: usize = 1024;
const USER: &str = "alice";
const PASS: &str = "s3cret";

/// True if `body` holds any 32-byte run of the start of `blob`.
fn leaks(body: &[u8], blob: &[u8]) -> bool {
    let probe = &blob[..blob.len().min(4096)];
    probe
        .chunks(32)
        .filter(|c| c.len() == 32)
        .any(|c| body.windows(32).any(|w| w == c))
}

#[test]
fn private_repo_cached_blob_needs_credentials() {
    let fx = Fixture::with_auth(USER, PASS, &[256 * KIB, 512 * KIB], 31);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), Some((USER, PASS)));

    // The blobs are cached now; an anonymous client must still get nothing.
    let anonymous = common::skopeo_pull(&fx.via_mirror_by_tag(), &fx.fresh_dir("anon"), None)
        .expect("running skopeo");
    assert!(
        !anonymous.status.success(),
        "anonymous pull of a private image through the mirror succeeded"
    );

    let layer = &fx.image.layers[0];
    let blob = fx.image.blob_bytes(&layer.digest);
    let path = fx.blob_path(&layer.digest);
    let get = raw_request(fx.mirror.host(), "GET", &path, &[]).unwrap();
    assert_eq!(get.status, 401, "anonymous GET {path}");
    assert!(
        get.header("www-authenticate").is_some(),
        "a 401 must say how to authenticate"
    );
    assert!(!leaks(&get.body, &blob), "401 body carries blob bytes");

    let head = raw_request(fx.mirror.host(), "HEAD", &path, &[]).unwrap();
    assert_eq!(head.status, 401, "anonymous HEAD {path}");

    let authed = raw_request(
        fx.mirror.host(),
        "GET",
        &path,
        &[("Authorization", &basic_auth(USER, PASS))],
    )
    .unwrap();
    assert_eq!(authed.status, 200, "GET {path} with the right password");
    assert_eq!(authed.body, blob);
}

#[test]
fn private_repo_wrong_password_is_refused() {
    let fx = Fixture::with_auth(USER, PASS, &[256 * KIB], 32);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), Some((USER, PASS)));

    let layer = &fx.image.layers[0];
    let blob = fx.image.blob_bytes(&layer.digest);
    let path = fx.blob_path(&layer.digest);
    let wrong = raw_request(
        fx.mirror.host(),
        "GET",
        &path,
        &[("Authorization", &basic_auth(USER, "wrong"))],
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "GET {path} with a wrong password");
    assert!(!leaks(&wrong.body, &blob), "401 body carries blob bytes");

    let pull = common::skopeo_pull(
        &fx.via_mirror_by_tag(),
        &fx.fresh_dir("wrong"),
        Some((USER, "wrong")),
    )
    .expect("running skopeo");
    assert!(
        !pull.status.success(),
        "pull with a wrong password succeeded"
    );
}

#[test]
fn a_grant_for_one_repository_does_not_open_another_repositorys_blobs() {
    // Alice may read `other/repo` and `pool/app`. Upstream serves a blob only through a
    // repository that holds it, so asking for pool/app's layer *through other/repo* must fail
    // even though the mirror has the bytes and Alice has a fresh grant for other/repo.
    let fx = Fixture::with_auth(USER, PASS, &[256 * KIB], 33);
    let other = common::TestImage::build(&fx.work.path().join("other"), &[128 * KIB], 34);
    other.push(&fx.registry, "other/repo:v1", Some((USER, PASS)));
    fx.pull_and_verify(&fx.via_mirror_by_tag(), Some((USER, PASS)));
    other.pull_and_verify(
        &format!("{}/other/repo:v1", fx.mirror.host()),
        &fx.fresh_dir("other"),
        Some((USER, PASS)),
    );

    let layer = &fx.image.layers[0];
    let blob = fx.image.blob_bytes(&layer.digest);
    let path = format!("/v2/other/repo/blobs/{}", layer.digest);
    let auth = basic_auth(USER, PASS);
    let cross = raw_request(fx.mirror.host(), "GET", &path, &[("Authorization", &auth)]).unwrap();
    assert_eq!(
        cross.status, 404,
        "GET {path}: a blob of pool/app through other/repo"
    );
    assert!(!leaks(&cross.body, &blob), "the refusal carries blob bytes");
}
