//! What no real registry shows: an upstream that lies about a digest, one that redirects to
//! another host. A hostile fake stands in for upstream here, and only here.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::fake::{FakeUpstream, Reply};
use common::{client, sha256_hex, Mirror};
use std::io::Read;

fn mirror_for(upstream: &FakeUpstream, cache: &std::path::Path) -> Mirror {
    mirror_with(upstream, cache, &[])
}

fn mirror_with(upstream: &FakeUpstream, cache: &std::path::Path, extra: &[&str]) -> Mirror {
    let mut args = vec![
        "--upstream",
        &upstream.url,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Mirror::start(&args)
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

/// An upstream that names a blob's digest but serves other bytes, to whoever asks.
fn says_yes_to_everything(size: u64) -> impl Fn(&common::fake::SeenRequest) -> Reply {
    move |_| {
        Reply::new(200, vec![0x5a; size as usize])
            .header("Content-Type", "application/octet-stream")
    }
}

#[test]
fn an_unconfigured_registry_must_prove_it_holds_a_blob_before_its_cached_copy_is_served() {
    use common::fixture::Fixture;
    use common::registry::Registry;
    let tls = common::tls::certs(&["localhost"]);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &tls.ca).unwrap();
    let fx = Fixture::around(
        Registry::start_with_auth("alice", "s3cret"),
        &[256 << 10],
        141,
        &[
            "--allow-any-registry",
            "--upstream-ca-file",
            ca.path().to_str().unwrap(),
        ],
    );
    let layer = fx.image.layers[0].clone();
    let private = fx.image.blob_bytes(&layer.digest);
    // alice pulls through the mirror: the private layer and manifest are cached.
    fx.pull_and_verify(&fx.via_mirror_by_tag(), Some(("alice", "s3cret")));
    let liar = FakeUpstream::start_tls(&tls.cert, &tls.key, says_yes_to_everything(layer.size));
    let get = |path: &str| {
        let url = format!("{}{path}?ns={}", fx.mirror.url(), liar.ns());
        let resp = client().get(url).send().unwrap();
        (resp.status().as_u16(), resp.bytes().unwrap().to_vec())
    };
    let (status, body) = get(&format!("/v2/any/repo/blobs/{}", layer.digest));
    assert_ne!(
        status,
        200,
        "the cached private layer was served for {}",
        liar.ns()
    );
    assert!(!common::leaks(&body, &private), "the private layer leaked");
    let (status, body) = get(&format!(
        "/v2/any/repo/manifests/{}",
        fx.image.manifest_digest
    ));
    assert_ne!(
        status,
        200,
        "the cached private manifest was served for {}",
        liar.ns()
    );
    assert!(!common::leaks(&body, &fx.image.manifest));
    // A registry that does hold the blob serves it, and then gets the cached copy.
    let bytes = private.clone();
    let holder =
        FakeUpstream::start_tls(&tls.cert, &tls.key, move |_| Reply::new(200, bytes.clone()));
    let url = format!(
        "{}/v2/other/repo/blobs/{}?ns={}",
        fx.mirror.url(),
        layer.digest,
        holder.ns()
    );
    let resp = client().get(url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().unwrap().to_vec(), private);
    let mut mirror = fx.mirror;
    mirror.stop_and_assert_no_panic();
}

#[test]
fn redirects_to_link_local_addresses_or_other_schemes_are_refused_without_connecting() {
    for location in [
        "http://169.254.169.254/latest/meta-data/iam",
        "ftp://127.0.0.1/blob",
        "https://[fe80::1]/blob",
    ] {
        let to = location.to_string();
        let fake =
            FakeUpstream::start(move |_| Reply::new(307, Vec::new()).header("Location", &to));
        let cache = tempfile::tempdir().unwrap();
        let mut mirror = mirror_for(&fake, cache.path());
        let digest = format!("sha256:{}", "ab".repeat(32));
        let started = std::time::Instant::now();
        let resp = client()
            .get(format!("{}/v2/team/app/blobs/{digest}", mirror.url()))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        assert_eq!(status, 502, "{location}: {text}");
        assert!(text.contains("refused"), "{location}: {text}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{location}: tried to connect"
        );
        mirror.stop_and_assert_no_panic();
    }
}

#[test]
fn a_zero_length_blob_completes_and_lying_lengths_fail_cleanly() {
    let empty = format!("sha256:{}", sha256_hex(b""));
    let real = vec![3u8; 100 * 1024];
    let short = format!("sha256:{}", sha256_hex(&real));
    let huge = format!("sha256:{}", sha256_hex(b"huge"));
    let (e, s, h) = (empty.clone(), short.clone(), huge.clone());
    let fake = FakeUpstream::start(move |req| {
        if req.path.ends_with(&e) {
            Reply::new(200, Vec::new())
        } else if req.path.ends_with(&s) {
            // Claims more than it sends, then closes.
            Reply::new(200, real[..50 * 1024].to_vec()).claiming(real.len() as u64)
        } else if req.path.ends_with(&h) {
            Reply::new(200, Vec::new()).claiming(1 << 40)
        } else {
            Reply::new(404, Vec::new())
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_with(&fake, cache.path(), &["--capacity", "64MiB"]);
    let url = |kind: &str, d: &str| format!("{}/v2/team/app/{kind}/{d}", mirror.url());
    let resp = client().get(url("blobs", &empty)).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.bytes().unwrap().is_empty());
    let pieces: serde_json::Value = client()
        .get(url("pieces", &empty))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(pieces["pieces"], serde_json::json!([]));
    assert_eq!(pieces["complete"], true);
    for attempt in 0..2 {
        let outcome = client()
            .get(url("blobs", &short))
            .send()
            .and_then(|r| r.bytes());
        assert!(
            outcome.map_or(true, |b| b.len() < 100 * 1024),
            "attempt {attempt}: a blob shorter than its length was served whole"
        );
    }
    assert!(!cache.path().join("blobs/sha256").join(&short[7..]).exists());
    // A length no cache could hold is not passed on to the agents that size downloads by it.
    let head = common::raw_request(
        mirror.host(),
        "HEAD",
        &format!("/v2/team/app/blobs/{huge}"),
        &[],
    )
    .unwrap();
    assert_ne!(head.header("content-length"), Some("1099511627776"));
    assert_eq!(head.status, 502);
    mirror.stop_and_assert_no_panic();
}

#[test]
fn capacity_holds_when_a_blob_lands_and_a_blob_larger_than_it_is_refused() {
    let a = vec![1u8; 600 * 1024];
    let b = vec![2u8; 600 * 1024];
    let c = vec![4u8; 2 << 20];
    let blobs: Vec<(String, Vec<u8>)> = [a, b, c]
        .into_iter()
        .map(|d| (format!("sha256:{}", sha256_hex(&d)), d))
        .collect();
    let served = blobs.clone();
    let fake = FakeUpstream::start(move |req| {
        match served.iter().find(|(d, _)| req.path.ends_with(d.as_str())) {
            Some((_, data)) => Reply::new(200, data.clone()),
            None => Reply::new(404, Vec::new()),
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_with(&fake, cache.path(), &["--capacity", "1MiB"]);
    let file = |d: &str| cache.path().join("blobs/sha256").join(&d[7..]);
    let get = |d: &str| {
        let resp = client()
            .get(format!("{}/v2/team/app/blobs/{d}", mirror.url()))
            .send()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.bytes().map(|b| b.len()).unwrap_or(0),
        )
    };
    assert_eq!(get(&blobs[0].0), (200, 600 * 1024));
    assert!(file(&blobs[0].0).exists());
    assert_eq!(get(&blobs[1].0), (200, 600 * 1024));
    // No GC ran (cacheTTL 24h: it runs every minute); the first went when the second landed.
    common::assert_eventually(
        std::time::Duration::from_secs(5),
        "the second blob is kept",
        || file(&blobs[1].0).exists(),
    );
    assert!(
        !file(&blobs[0].0).exists(),
        "over capacity after a blob landed"
    );
    let (status, _) = get(&blobs[2].0);
    assert_eq!(status, 502, "a blob larger than the capacity was served");
    assert!(!file(&blobs[2].0).exists());
    mirror.stop_and_assert_no_panic();
}

/// An upstream that claims a blob nearly as large as the cache and then sends a few bytes must
/// not empty the cache: room is made for the bytes that arrive, not for the length claimed.
#[test]
fn a_claimed_length_that_never_arrives_evicts_nothing() {
    let kept = vec![1u8; 600 * 1024];
    let kept_digest = format!("sha256:{}", sha256_hex(&kept));
    let liar_digest = format!("sha256:{}", sha256_hex(b"never sent"));
    let (served, liar) = (kept.clone(), liar_digest.clone());
    let fake = FakeUpstream::start(move |req| {
        if req.path.ends_with(&liar) {
            // 900 KiB claimed, 16 bytes sent, then the connection closes.
            Reply::new(200, vec![7u8; 16]).claiming(900 * 1024)
        } else {
            Reply::new(200, served.clone())
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let mut mirror = mirror_with(&fake, cache.path(), &["--capacity", "1MiB"]);
    let file = |d: &str| cache.path().join("blobs/sha256").join(&d[7..]);
    let get = |d: &str| {
        client()
            .get(format!("{}/v2/team/app/blobs/{d}", mirror.url()))
            .send()
            .and_then(|r| r.bytes())
            .map(|b| b.len())
    };
    assert_eq!(get(&kept_digest).unwrap(), kept.len());
    common::assert_eventually(
        std::time::Duration::from_secs(5),
        "the first blob is cached",
        || file(&kept_digest).exists(),
    );
    let got = get(&liar_digest).unwrap_or(0);
    assert!(got < 900 * 1024, "the liar's blob was served whole");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        file(&kept_digest).exists(),
        "a claimed length that never arrived evicted a cached blob"
    );
    assert!(!file(&liar_digest).exists());
    mirror.stop_and_assert_no_panic();
}
