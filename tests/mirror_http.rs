//! The mirror's HTTP surface spoken to directly: ranges, HEAD, `?ns=`, and hostile input that
//! must get a clean 4xx without hurting the server.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::fixture::{REPO, TAG};
use common::image::MANIFEST_TYPE;
use common::{raw_request, Fixture};

const KIB: usize = 1024;
const STALE_SERVED: &str = "poolcast_mirror_stale_served_total";

/// Fetches `digest` through the mirror so it is cached, checking the bytes on the way.
fn warm(fx: &Fixture, digest: &str) -> Vec<u8> {
    let blob = fx.image.blob_bytes(digest);
    let resp = raw_request(fx.mirror.host(), "GET", &fx.blob_path(digest), &[]).unwrap();
    assert_eq!(resp.status, 200, "GET blob {digest}");
    assert!(resp.body == blob, "blob {digest} came back different");
    blob
}

#[test]
fn range_requests_return_exact_slice_of_cached_blob() {
    let fx = Fixture::new(&[300 * KIB], 41, &[]);
    let layer = fx.image.layers[0].clone();
    let blob = warm(&fx, &layer.digest);
    let path = fx.blob_path(&layer.digest);

    let resp = raw_request(fx.mirror.host(), "GET", &path, &[("Range", "bytes=10-19")]).unwrap();
    assert_eq!(resp.status, 206);
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes 10-19/{}", layer.size).as_str())
    );
    assert_eq!(resp.body, &blob[10..20]);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );

    let tail_from = layer.size - 100;
    let range = format!("bytes={tail_from}-");
    let resp = raw_request(fx.mirror.host(), "GET", &path, &[("Range", &range)]).unwrap();
    assert_eq!(resp.status, 206, "open-ended {range}");
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes {tail_from}-{}/{}", layer.size - 1, layer.size).as_str())
    );
    assert_eq!(resp.body, &blob[tail_from as usize..]);
}

#[test]
fn head_blob_reports_size_and_digest_cold_and_cached() {
    let fx = Fixture::new(&[200 * KIB], 42, &[]);
    let layer = fx.image.layers[0].clone();
    let path = fx.blob_path(&layer.digest);
    let check = |when: &str| {
        let head = raw_request(fx.mirror.host(), "HEAD", &path, &[]).unwrap();
        assert_eq!(head.status, 200, "HEAD {when}");
        assert_eq!(
            head.header("content-length"),
            Some(layer.size.to_string().as_str()),
            "HEAD {when}"
        );
        assert_eq!(
            head.header("docker-content-digest"),
            Some(layer.digest.as_str()),
            "HEAD {when}"
        );
    };
    check("before the blob is cached");
    warm(&fx, &layer.digest);
    check("after the blob is cached");
}

/// GETs the fixture's manifest by tag from the mirror; asserts its bytes and digest header.
fn assert_manifest_by_tag_served(fx: &Fixture) -> common::http::RawResponse {
    let resp = raw_request(
        fx.mirror.host(),
        "GET",
        &format!("/v2/{REPO}/manifests/{TAG}"),
        &[("Accept", MANIFEST_TYPE)],
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, fx.image.manifest);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(fx.image.manifest_digest.as_str())
    );
    resp
}

#[test]
fn manifest_by_tag_is_served_with_its_digest_and_type() {
    let fx = Fixture::new(&[64 * KIB], 43, &[]);
    let resp = assert_manifest_by_tag_served(&fx);
    assert_eq!(resp.header("content-type"), Some(MANIFEST_TYPE));
}

#[test]
fn unknown_registry_ns_gets_clear_error() {
    let fx = Fixture::new(&[64 * KIB], 44, &[]);
    // Control: `ns` naming the configured upstream is what containerd sends, and works.
    let known = format!("/v2/{REPO}/manifests/{TAG}?ns={}", fx.registry.host());
    let resp = raw_request(
        fx.mirror.host(),
        "GET",
        &known,
        &[("Accept", MANIFEST_TYPE)],
    )
    .unwrap();
    assert_eq!(resp.status, 200, "GET {known}");

    for target in [
        format!("/v2/{REPO}/manifests/{TAG}?ns=other.example:5000"),
        format!(
            "/v2/{REPO}/blobs/{}?ns=other.example:5000",
            fx.image.layers[0].digest
        ),
    ] {
        let started = Instant::now();
        let resp = raw_request(fx.mirror.host(), "GET", &target, &[]).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "GET {target} took {:?}: the mirror should refuse, not try",
            started.elapsed()
        );
        assert!(
            (400..500).contains(&resp.status),
            "GET {target} answered {}",
            resp.status
        );
        assert_eq!(resp.status, 404, "GET {target}");
        assert_eq!(
            resp.error_codes(),
            vec!["NAME_UNKNOWN".to_string()],
            "GET {target}: expected an OCI NAME_UNKNOWN error, got {:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
}

#[test]
fn cached_manifest_is_served_stale_when_upstream_is_down() {
    let mut fx = Fixture::new(&[64 * KIB, 128 * KIB], 47, &["--manifest-ttl", "1s"]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert_eq!(fx.mirror.metric(STALE_SERVED), 0.0);

    fx.registry.stop();
    // Waiting out manifestTTL is the behaviour under test: a fresh tag is served without
    // asking upstream at all, so only an expired one takes the stale path.
    std::thread::sleep(Duration::from_millis(1500));

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert_manifest_by_tag_served(&fx);
    assert!(
        fx.mirror.metric(STALE_SERVED) >= 2.0,
        "{STALE_SERVED} is {} after two pulls by tag with upstream down",
        fx.mirror.metric(STALE_SERVED)
    );
}

enum Expect {
    /// A 4xx carrying this OCI error code.
    Code(&'static str),
    /// Exactly this status.
    Status(u16),
    /// Any 4xx.
    ClientError,
}

/// One hostile request: what it is, the request target, extra headers, the answer it must get.
struct Case<'a>(&'a str, String, Vec<(&'a str, &'a str)>, Expect);

#[test]
fn hostile_requests_get_4xx_and_mirror_stays_up() {
    let mut fx = Fixture::new(&[64 * KIB], 45, &[]);
    let layer = fx.image.layers[0].clone();
    warm(&fx, &layer.digest);
    let blob = fx.blob_path(&layer.digest);
    let some_digest = format!("sha256:{}", "a".repeat(64));
    let huge_value = "x".repeat(100 * KIB);
    let no_headers = Vec::new;
    let range = |r| vec![("Range", r)];

    #[rustfmt::skip]
    let cases = vec![
        Case("path traversal as name", format!("/v2/../etc/passwd/blobs/{some_digest}"),
             no_headers(), Expect::Code("NAME_INVALID")),
        Case("dot-dot segment inside name", format!("/v2/{REPO}/../../etc/blobs/{some_digest}"),
             no_headers(), Expect::Code("NAME_INVALID")),
        Case("percent-encoded traversal",
             format!("/v2/%2e%2e/%2e%2e/etc/passwd/blobs/{some_digest}"),
             no_headers(), Expect::ClientError),
        Case("uppercase name", format!("/v2/Pool/App/manifests/{TAG}"),
             no_headers(), Expect::Code("NAME_INVALID")),
        Case("digest that is not hex", format!("/v2/{REPO}/blobs/sha256:zz"),
             no_headers(), Expect::Code("DIGEST_INVALID")),
        Case("digest one hex digit short", format!("/v2/{REPO}/blobs/sha256:{}", "a".repeat(63)),
             no_headers(), Expect::Code("DIGEST_INVALID")),
        Case("unknown digest algorithm", format!("/v2/{REPO}/blobs/md5:abc"),
             no_headers(), Expect::Code("DIGEST_INVALID")),
        Case("range end beyond u64", blob.clone(),
             range("bytes=0-99999999999999999999999"), Expect::Status(416)),
        Case("range that is not numbers", blob.clone(),
             range("bytes=abc"), Expect::Status(416)),
        Case("range whose end precedes its start", blob.clone(),
             range("bytes=5-2"), Expect::Status(416)),
        Case("100 KiB header value", "/v2/".to_owned(),
             vec![("X-Poolcast-Junk", huge_value.as_str())], Expect::ClientError),
    ];

    let mut failures = Vec::new();
    for Case(what, target, headers, expect) in &cases {
        let resp = match raw_request(fx.mirror.host(), "GET", target, headers) {
            Ok(resp) => resp,
            Err(e) => {
                failures.push(format!("{what}: no response: {e:#}"));
                continue;
            }
        };
        let body = String::from_utf8_lossy(&resp.body);
        if body.contains("root:") {
            failures.push(format!("{what}: body looks like /etc/passwd"));
        }
        let ok = match expect {
            Expect::Code(code) => {
                (400..500).contains(&resp.status) && resp.error_codes().iter().any(|c| c == code)
            }
            Expect::Status(status) => resp.status == *status,
            Expect::ClientError => (400..500).contains(&resp.status),
        };
        if !ok {
            let shown: String = body.chars().take(300).collect();
            failures.push(format!("{what}: got {} {shown:?}", resp.status));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile requests not refused cleanly:\n{}",
        failures.join("\n")
    );

    assert_eq!(
        fx.mirror.healthz(),
        200,
        "mirror unhealthy after hostile input"
    );
    warm(&fx, &layer.digest);
    fx.mirror.stop_and_assert_no_panic();
}

#[test]
fn a_retagged_image_is_seen_after_manifest_ttl() {
    let fx = Fixture::new(&[64 * KIB], 45, &["--manifest-ttl", "1s"]);
    let get_tag = || {
        raw_request(
            fx.mirror.host(),
            "GET",
            &format!("/v2/{REPO}/manifests/{TAG}"),
            &[("Accept", MANIFEST_TYPE)],
        )
        .unwrap()
    };
    let first = get_tag();
    assert_eq!(
        first.header("docker-content-digest"),
        Some(fx.image.manifest_digest.as_str())
    );

    // Upstream moves the tag to another image.
    let next = common::TestImage::build(&fx.work.path().join("next"), &[32 * KIB], 46);
    next.push(&fx.registry, &format!("{REPO}:{TAG}"), None);
    common::assert_eventually(
        Duration::from_secs(10),
        "the mirror serves the new tag",
        || {
            let resp = get_tag();
            resp.status == 200 && resp.body == next.manifest
        },
    );
    let resp = get_tag();
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(next.manifest_digest.as_str())
    );
}

#[test]
fn piece_digests_are_published_for_agents_to_check_peers() {
    let fx = Fixture::new(&[200 * KIB], 47, &[]);
    let layer = fx.image.layers[0].clone();
    let blob = fx.image.blob_bytes(&layer.digest);
    let path = format!("/v2/{REPO}/pieces/{}?pieceSize=65536", layer.digest);
    // Cold: the mirror fetches the blob and answers once pieces are in; ask until complete.
    let mut pieces: Vec<String> = Vec::new();
    common::assert_eventually(Duration::from_secs(20), "all piece digests", || {
        let resp = raw_request(
            fx.mirror.host(),
            "GET",
            &format!("{path}&from={}", pieces.len()),
            &[],
        )
        .unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["size"], blob.len() as u64);
        for p in v["pieces"].as_array().unwrap() {
            pieces.push(p.as_str().unwrap().to_string());
        }
        v["complete"].as_bool().unwrap()
    });
    let want: Vec<String> = blob.chunks(65536).map(common::sha256_hex).collect();
    assert_eq!(pieces, want);
    // The binary form agents ask for: a 25-byte head, then the raw digests, from piece 1.
    let binary = raw_request(
        fx.mirror.host(),
        "GET",
        &format!("{path}&from=1"),
        &[("Accept", "application/vnd.poolcast.piece-digests.v1")],
    )
    .unwrap();
    assert_eq!(binary.status, 200);
    assert_eq!(
        binary.header("content-type"),
        Some("application/vnd.poolcast.piece-digests.v1")
    );
    assert_eq!(binary.body.len(), 25 + 32 * (want.len() - 1));
    assert_eq!(binary.body[..8], (blob.len() as u64).to_be_bytes());
    assert_eq!(binary.body[16..24], 1u64.to_be_bytes());
    assert_eq!(binary.body[24], 1, "complete");
    let raw: Vec<String> = binary.body[25..].chunks(32).map(hex::encode).collect();
    assert_eq!(raw, want[1..]);
    // The signed form: `limit` pieces from piece 1, each with the mirror's proof, which holds
    // for this blob and these digests only.
    let blob_sha: [u8; 32] = hex::decode(layer.digest.trim_start_matches("sha256:"))
        .unwrap()
        .try_into()
        .unwrap();
    let signed = raw_request(
        fx.mirror.host(),
        "GET",
        &format!("{path}&from=1&limit=2"),
        &[(
            "Accept",
            "application/vnd.poolcast.piece-digests.v2, application/vnd.poolcast.piece-digests.v1",
        )],
    )
    .unwrap();
    assert_eq!(
        signed.header("content-type"),
        Some(storage::pieces::PIECES_SIGNED)
    );
    let read = storage::pieces::SignedPieces::read(&blob_sha, &signed.body).unwrap();
    let got: Vec<String> = read.pieces.iter().map(|(d, _)| hex::encode(d)).collect();
    assert_eq!((read.from, got), (1, want[1..3].to_vec()));
    assert!(storage::pieces::SignedPieces::read(&[0u8; 32], &signed.body).is_err());
    // A range of whole pieces asked with the agent's piece size carries the proofs of its
    // pieces, the same the signed answer gave.
    let blob_path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let ranged = raw_request(
        fx.mirror.host(),
        "GET",
        &blob_path,
        &[
            ("Range", "bytes=65536-196607"),
            ("Poolcast-Piece-Size", "65536"),
        ],
    )
    .unwrap();
    assert_eq!(ranged.status, 206);
    let proofs = ranged.header("poolcast-proofs").expect("proofs header");
    let (first, hexes) = proofs.split_once(' ').unwrap();
    assert_eq!((first, hexes.len()), ("1", 2 * 128));
    assert_eq!(&hexes[..128], hex::encode(read.pieces[0].1));
    assert_eq!(&hexes[128..], hex::encode(read.pieces[1].1));
    assert_eq!(
        ranged.header("poolcast-piece-key"),
        Some(hex::encode(read.key.as_bytes()).as_str())
    );
    // Without the header, or not starting on a piece: no proofs.
    for (range, headers) in [
        ("bytes=65536-196607", vec![]),
        ("bytes=65537-196607", vec![("Poolcast-Piece-Size", "65536")]),
    ] {
        let mut all = vec![("Range", range)];
        all.extend(headers);
        let plain = raw_request(fx.mirror.host(), "GET", &blob_path, &all).unwrap();
        assert_eq!(plain.status, 206);
        assert_eq!(plain.header("poolcast-proofs"), None, "{range}");
    }
    let bad = raw_request(
        fx.mirror.host(),
        "GET",
        &format!("/v2/{REPO}/pieces/{}?pieceSize=1", layer.digest),
        &[],
    )
    .unwrap();
    assert!(
        bad.status >= 400 && bad.status < 500,
        "tiny pieceSize gets {}",
        bad.status
    );
}

#[test]
fn docker_schema2_manifest_keeps_its_type_and_digest() {
    const DOCKER_V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    let fx = Fixture::new(&[64 * KIB], 48, &[]);
    // skopeo converts the OCI image to a Docker schema 2 manifest on the way in.
    let docker_tag = "docker-v2s2";
    let mut push = std::process::Command::new("skopeo");
    push.args(["--insecure-policy", "copy", "--quiet", "--format", "v2s2"])
        .args(["--dest-tls-verify=false", "--dest-no-creds"])
        .arg(format!("oci:{}:poolcast-test", fx.image.layout.display()))
        .arg(format!(
            "docker://{}/{REPO}:{docker_tag}",
            fx.registry.host()
        ));
    common::run_ok(&mut push, common::CLIENT_TIMEOUT).unwrap();

    // What the registry itself says the manifest is.
    let origin = common::client()
        .get(format!(
            "{}/v2/{REPO}/manifests/{docker_tag}",
            fx.registry.url()
        ))
        .header("Accept", DOCKER_V2S2)
        .send()
        .unwrap();
    assert_eq!(origin.status().as_u16(), 200);
    let origin_type = origin.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        origin_type, DOCKER_V2S2,
        "skopeo --format v2s2 did not push v2s2"
    );
    let origin_body = origin.bytes().unwrap().to_vec();
    let digest = format!("sha256:{}", common::sha256_hex(&origin_body));

    for reference in [docker_tag, digest.as_str()] {
        for method in ["GET", "HEAD"] {
            let target = format!("/v2/{REPO}/manifests/{reference}");
            let accept = [("Accept", DOCKER_V2S2)];
            let resp = raw_request(fx.mirror.host(), method, &target, &accept).unwrap();
            assert_eq!(resp.status, 200, "{method} {target}");
            assert_eq!(
                resp.header("content-type"),
                Some(DOCKER_V2S2),
                "{method} {target}"
            );
            assert_eq!(
                resp.header("docker-content-digest"),
                Some(digest.as_str()),
                "{method} {target}"
            );
            assert_eq!(
                resp.header("content-length"),
                Some(origin_body.len().to_string().as_str()),
                "{method} {target}"
            );
            if method == "GET" {
                assert_eq!(resp.body, origin_body, "{method} {target}");
            }
        }
    }

    // The layers it names come through the mirror intact.
    let manifest: serde_json::Value = serde_json::from_slice(&origin_body).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for layer in layers {
        let d = layer["digest"].as_str().unwrap();
        let resp = raw_request(fx.mirror.host(), "GET", &fx.blob_path(d), &[]).unwrap();
        assert_eq!(resp.status, 200, "GET blob {d}");
        assert_eq!(format!("sha256:{}", common::sha256_hex(&resp.body)), d);
    }
}
