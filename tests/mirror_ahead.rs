//! The mirror fetches an image's next blob from upstream once the one before it is in, while
//! what the pool asked for are the image's first blobs in order (`storage::ahead`,
//! `mirror::ahead`): at most one blob ahead, with the credentials of the manifest's request,
//! and never for a client that skips a blob or takes the config first.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::time::Duration;

use common::fixture::{REPO, TAG};
use common::{basic_auth, eventually, raw_request, Fixture, RawResponse};

const KIB: usize = 1024;
const FETCHED_AHEAD: &str = "poolcast_mirror_blobs_fetched_ahead_total";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";
/// How long a blob that should not be fetched is watched for.
const QUIET: Duration = Duration::from_millis(1500);

fn get(fx: &Fixture, path: &str, auth: Option<&str>) -> RawResponse {
    let mut headers = vec![("Accept", ACCEPT)];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    raw_request(fx.mirror.host(), "GET", path, &headers).unwrap()
}

fn manifest(fx: &Fixture, auth: Option<&str>) {
    let answer = get(fx, &format!("/v2/{REPO}/manifests/{TAG}"), auth);
    assert_eq!(answer.status, 200, "manifest through the mirror");
}

/// GETs blob `digest` through the mirror and checks its bytes.
fn blob(fx: &Fixture, digest: &str, auth: Option<&str>) {
    let answer = get(fx, &fx.blob_path(digest), auth);
    assert_eq!(answer.status, 200, "GET {digest}");
    assert!(
        answer.body == fx.image.blob_bytes(digest),
        "{digest}'s bytes"
    );
}

/// How many times the origin served blob `digest`.
fn origin_gets(fx: &Fixture, digest: &str) -> usize {
    fx.registry
        .requests_seen("GET", &format!("/blobs/{digest}"))
}

fn fetched_by_origin(fx: &Fixture, digest: &str) -> bool {
    eventually(Duration::from_secs(10), || origin_gets(fx, digest) == 1)
}

#[test]
fn the_next_blob_of_an_image_pulled_in_order_is_fetched_once_and_one_ahead() {
    let mut fx = Fixture::new(&[256 * KIB, 384 * KIB, 512 * KIB], 61, &[]);
    let layers: Vec<&str> = fx.image.layers.iter().map(|l| l.digest.as_str()).collect();
    let config = fx.image.config.digest.as_str();
    manifest(&fx, None);
    blob(&fx, layers[0], None);
    assert!(
        fetched_by_origin(&fx, layers[1]),
        "layer 1 was not fetched ahead of the client"
    );
    assert!(
        !eventually(QUIET, || origin_gets(&fx, layers[2]) > 0),
        "layer 2 fetched although nobody asked for layer 1 yet: more than one blob ahead"
    );
    assert_eq!(fx.mirror.metric(FETCHED_AHEAD), 1.0);
    // Another member gets the manifest meanwhile: the pool's record is not reset.
    manifest(&fx, None);
    blob(&fx, layers[1], None);
    assert!(
        fetched_by_origin(&fx, layers[2]),
        "layer 2 not fetched ahead"
    );
    blob(&fx, layers[2], None);
    assert!(fetched_by_origin(&fx, config), "config not fetched ahead");
    blob(&fx, config, None);
    for digest in layers.iter().chain([&config]) {
        assert_eq!(
            origin_gets(&fx, digest),
            1,
            "{digest} came from the origin once"
        );
    }
    assert_eq!(fx.mirror.metric(FETCHED_AHEAD), 3.0);
    fx.mirror.stop_and_assert_no_panic();
}

#[test]
fn a_client_that_takes_the_config_first_or_skips_a_layer_gets_nothing_fetched_ahead() {
    let fx = Fixture::new(&[256 * KIB, 256 * KIB, 256 * KIB], 62, &[]);
    let layers: Vec<&str> = fx.image.layers.iter().map(|l| l.digest.as_str()).collect();
    // containerd: the config, then the layers it lacks.
    manifest(&fx, None);
    blob(&fx, &fx.image.config.digest, None);
    blob(&fx, layers[1], None);
    assert!(
        !eventually(QUIET, || origin_gets(&fx, layers[2]) > 0
            || origin_gets(&fx, layers[0]) > 0),
        "a blob was fetched ahead of a client that took the config first"
    );
    // A client that has layer 0 and asks for layer 1: not the image's first blobs.
    let fx = Fixture::new(&[256 * KIB, 256 * KIB, 256 * KIB], 63, &[]);
    let layers: Vec<&str> = fx.image.layers.iter().map(|l| l.digest.as_str()).collect();
    manifest(&fx, None);
    blob(&fx, layers[1], None);
    assert!(
        !eventually(QUIET, || origin_gets(&fx, layers[2]) > 0
            || origin_gets(&fx, layers[0]) > 0),
        "a blob was fetched ahead of a client that skipped layer 0"
    );
    assert_eq!(fx.mirror.metric(FETCHED_AHEAD), 0.0);
}

#[test]
fn a_private_blob_fetched_ahead_is_served_only_to_requesters_upstream_accepts() {
    let (user, pass) = ("alice", "s3cret");
    let mut fx = Fixture::with_auth(user, pass, &[256 * KIB, 256 * KIB], 64);
    let alice = basic_auth(user, pass);
    let layers: Vec<&str> = fx.image.layers.iter().map(|l| l.digest.as_str()).collect();
    manifest(&fx, Some(&alice));
    blob(&fx, layers[0], Some(&alice));
    assert!(
        fetched_by_origin(&fx, layers[1]),
        "layer 1 not fetched ahead with the manifest's credentials"
    );
    let path = fx.blob_path(layers[1]);
    let anonymous = get(&fx, &path, None);
    assert_eq!(
        anonymous.status, 401,
        "anonymous GET of a blob fetched ahead"
    );
    let wrong = get(&fx, &path, Some(&basic_auth(user, "guess")));
    assert_eq!(
        wrong.status, 401,
        "a wrong password for a blob fetched ahead"
    );
    blob(&fx, layers[1], Some(&alice));
    assert_eq!(
        origin_gets(&fx, layers[1]),
        1,
        "fetched from the origin once"
    );
    fx.mirror.stop_and_assert_no_panic();
}
