//! Pulls through the mirror with real clients: what arrives is what was pushed, and the mirror
//! fetches each blob from upstream once however many clients ask.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::mirror::{CACHE_HITS, SERVED_BYTES};
use common::{Containerd, Fixture};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[test]
fn skopeo_pull_through_mirror_is_digest_identical() {
    let fx = Fixture::new(&[512 * KIB, 2 * MIB], 11, &[]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    fx.pull_and_verify(&fx.via_mirror_by_digest(), None);
    assert!(
        fx.upstream_bytes() >= fx.image.total_blob_bytes(),
        "the blobs came from somewhere other than upstream?"
    );
}

#[test]
fn second_pull_is_served_from_cache() {
    let fx = Fixture::new(&[512 * KIB, 2 * MIB], 12, &[]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    let upstream_after_first = fx.upstream_bytes();
    assert!(upstream_after_first >= fx.image.total_blob_bytes());
    let hits_after_first = fx.mirror.metric(CACHE_HITS);

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert_eq!(
        fx.upstream_bytes(),
        upstream_after_first,
        "second pull went upstream"
    );
    assert!(fx.mirror.metric(CACHE_HITS) > hits_after_first);
    assert!(fx.served_bytes() >= 2 * fx.image.total_blob_bytes());
}

#[test]
fn containerd_pull_through_mirror_hosts_toml() {
    let fx = Fixture::new(&[256 * KIB, MIB], 13, &[]);
    let containerd = Containerd::start();
    let digest = containerd.pull_via_mirror(
        &format!("{}:{}", common::fixture::REPO, common::fixture::TAG),
        &fx.registry.host(),
        fx.mirror.url(),
    );
    assert_eq!(digest, fx.image.manifest_digest);
    // containerd falls back to the registry when a mirror fails, so a matching digest alone
    // does not show the mirror served the pull: its counters must account for every blob.
    assert!(
        fx.mirror.metric(SERVED_BYTES) as u64 >= fx.image.total_blob_bytes(),
        "mirror served {} bytes of a {}-byte image; containerd went around it",
        fx.mirror.metric(SERVED_BYTES),
        fx.image.total_blob_bytes()
    );
}

#[test]
fn sixteen_concurrent_cold_pulls_fetch_each_blob_once() {
    let fx = Fixture::new(&[40 * MIB, 24 * MIB], 14, &[]);
    let source = fx.via_mirror_by_tag();
    std::thread::scope(|s| {
        let pulls: Vec<_> = (0..16)
            .map(|i| {
                let out = fx.fresh_dir(&format!("client{i}"));
                let source = &source;
                let image = &fx.image;
                s.spawn(move || {
                    let result = common::skopeo_pull(source, &out, None).and_then(|o| {
                        anyhow::ensure!(
                            o.status.success(),
                            "skopeo failed: {}",
                            String::from_utf8_lossy(&o.stderr)
                        );
                        common::verify_pulled(&out, image)
                    });
                    // Free the disk as we go: 16 copies of 64 MiB add up.
                    let _ = std::fs::remove_dir_all(&out);
                    result
                })
            })
            .collect();
        let failures: Vec<String> = pulls
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("client {i}: {e:#}")),
                Err(_) => Some(format!("client {i}: panicked")),
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
    assert_eq!(
        fx.upstream_bytes(),
        fx.image.total_blob_bytes(),
        "16 cold pulls should fetch each blob from upstream exactly once"
    );
}

#[test]
fn image_index_is_served_as_the_client_asks_and_pulls_identically() {
    const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
    let fx = Fixture::new(&[256 * KIB], 51, &[]);
    // A multi-platform index over the pushed manifest, tagged `multi` upstream.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": common::image::MANIFEST_TYPE,
            "digest": fx.image.manifest_digest,
            "size": fx.image.manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let index_digest = format!("sha256:{}", common::sha256_hex(&index));
    let put = common::client()
        .put(format!("{}/v2/pool/app/manifests/multi", fx.registry.url()))
        .header("Content-Type", INDEX_TYPE)
        .body(index.clone())
        .send()
        .unwrap();
    assert!(
        put.status().is_success(),
        "pushing the index: {}",
        put.status()
    );

    let get = |reference: &str, accept: &str| {
        common::raw_request(
            fx.mirror.host(),
            "GET",
            &format!("/v2/pool/app/manifests/{reference}"),
            &[("Accept", accept)],
        )
        .unwrap()
    };
    let both = format!("{INDEX_TYPE}, {}", common::image::MANIFEST_TYPE);
    for reference in ["multi", index_digest.as_str()] {
        let resp = get(reference, &both);
        assert_eq!(resp.status, 200, "GET {reference}");
        assert_eq!(resp.body, index);
        assert_eq!(resp.header("content-type"), Some(INDEX_TYPE));
        assert_eq!(
            resp.header("docker-content-digest"),
            Some(index_digest.as_str())
        );
    }
    // The platform manifest the index names, by digest.
    let manifest = get(&fx.image.manifest_digest, common::image::MANIFEST_TYPE);
    assert_eq!(manifest.body, fx.image.manifest);

    // skopeo resolves the index to this platform's image and pulls it whole.
    fx.pull_and_verify(&format!("{}/pool/app:multi", fx.mirror.host()), None);
}
