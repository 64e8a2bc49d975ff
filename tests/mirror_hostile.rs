//! What no real registry shows: an upstream that lies about a digest, one that redirects to
//! another host. A hostile fake stands in for upstream here, and only here.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::fake::{FakeUpstream, Reply};
use common::{client, sha256_hex, Mirror};
use std::io::Read;

fn mirror_for(upstream: &FakeUpstream, cache: &std::path::Path) -> Mirror {
    Mirror::start(&[
        "--upstream",
        &upstream.url,
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
}

#[test]
fn upstream_lying_about_a_blob_is_an_error_and_nothing_is_kept() {
    let good = vec![7u8; 300 * 1024];
    let digest = format!("sha256:{}", sha256_hex(&good));
    let mut evil = good.clone();
    evil[1234] ^= 0xff; // same length, different bytes
    let fake = FakeUpstream::start(move |_| Reply::new(200, evil.clone()));
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_for(&fake, cache.path());
    let url = format!("{}/v2/lies/app/blobs/{digest}", mirror.url());

    for attempt in 0..2 {
        let outcome = client().get(&url).send().map(|mut r| {
            let status = r.status().as_u16();
            let mut body = Vec::new();
            r.read_to_end(&mut body).map_err(|_| ()).ok();
            (status, body)
        });
        if let Ok((status, body)) = outcome {
            assert!(
                status != 200 || body.len() < good.len(),
                "attempt {attempt}: a complete body that fails its digest reached the client"
            );
        }
    }
    let blob_file = cache.path().join("blobs/sha256").join(&digest[7..]);
    assert!(
        !blob_file.exists(),
        "a blob that failed its digest was kept"
    );
    assert!(mirror.metric("poolcast_mirror_digest_mismatches_total") >= 2.0);
    // Both attempts went upstream: nothing was served from a cache of lies.
    let gets = fake.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 2);
    mirror.stop_and_assert_no_panic();
}

#[test]
fn upstream_lying_about_a_manifest_digest_is_refused() {
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let fake = FakeUpstream::start(move |_| {
        Reply::new(200, body.clone())
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .header("Docker-Content-Digest", &wrong)
    });
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_for(&fake, cache.path());
    let resp = client()
        .get(format!("{}/v2/lies/app/manifests/v1", mirror.url()))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    let codes = common::http::oci_error_codes(&resp.bytes().unwrap());
    assert_eq!(codes, vec!["DIGEST_INVALID".to_string()]);
    mirror.stop_and_assert_no_panic();
}

#[test]
fn credentials_are_not_forwarded_across_a_redirect_to_another_host() {
    let blob = vec![42u8; 64 * 1024];
    let digest = format!("sha256:{}", sha256_hex(&blob));
    let storage = FakeUpstream::start(move |_| Reply::new(200, blob.clone()));
    let location = format!("{}/storage/object?sig=abc", storage.url);
    let registry =
        FakeUpstream::start(move |_| Reply::new(307, Vec::new()).header("Location", &location));
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_for(&registry, cache.path());

    let resp = client()
        .get(format!("{}/v2/team/app/blobs/{digest}", mirror.url()))
        .header("Authorization", "Bearer secret-token")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(sha256_hex(&resp.bytes().unwrap()), digest[7..]);

    let at_registry = registry.requests();
    assert!(at_registry
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer secret-token")));
    let at_storage = storage.requests();
    assert!(!at_storage.is_empty(), "the redirect was not followed");
    assert!(
        at_storage
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "Authorization leaked to another host: {at_storage:?}"
    );
    mirror.stop_and_assert_no_panic();
}

#[test]
fn head_of_an_uncached_blob_has_its_real_length_when_upstream_omits_it() {
    let blob = vec![9u8; 200 * 1024];
    let digest = format!("sha256:{}", sha256_hex(&blob));
    let body = blob.clone();
    // Upstream answers HEAD 200 with no Content-Length at all, GET with the bytes.
    let fake = FakeUpstream::start(move |req| {
        let reply = if req.method == "HEAD" {
            Reply::new(200, Vec::new())
        } else {
            Reply::new(200, body.clone())
        };
        reply.without_length()
    });
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_for(&fake, cache.path());
    let path = format!("/v2/team/app/blobs/{digest}");

    let head = common::raw_request(mirror.host(), "HEAD", &path, &[]).unwrap();
    assert_eq!(head.status, 200, "HEAD {path}");
    assert_eq!(
        head.header("content-length"),
        Some(blob.len().to_string().as_str()),
        "HEAD Content-Length when upstream gave none"
    );
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    let seen = fake.requests();
    assert!(
        seen.iter().any(|r| r.method == "HEAD"),
        "upstream was not asked first: {seen:?}"
    );

    let get = common::raw_request(mirror.host(), "GET", &path, &[]).unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.body, blob);
    let gets = fake.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 1, "the HEAD's fetch was not the one the GET used");
    mirror.stop_and_assert_no_panic();
}
