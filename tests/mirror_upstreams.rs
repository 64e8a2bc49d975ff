//! Several upstreams behind one mirror: containerd's `?ns=` picks the registry, a registry not
//! configured gets NAME_UNKNOWN, and `allowAnyRegistry` lets any registry host through.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::fixture::{REPO, TAG};
use common::image::MANIFEST_TYPE;
use common::{raw_request, Mirror, Registry, TestImage};

const KIB: usize = 1024;

/// Two real registries, each holding a different image under the same name and tag, and one
/// mirror in front of both (the first is the default).
struct TwoRegistries {
    mirror: Mirror,
    first: (Registry, TestImage),
    second: (Registry, TestImage),
    _work: tempfile::TempDir,
}

impl TwoRegistries {
    fn start() -> TwoRegistries {
        let work = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        for (i, seed) in [(0, 61), (1, 62)] {
            let registry = Registry::start();
            let image = TestImage::build(&work.path().join(format!("img-{i}")), &[64 * KIB], seed);
            image.push(&registry, &format!("{REPO}:{TAG}"), None);
            held.push((registry, image));
        }
        let second = held.pop().unwrap();
        let first = held.pop().unwrap();
        let cache = work.path().join("cache");
        let mirror = Mirror::start(&[
            "--upstream",
            &first.0.url(),
            "--upstream",
            &second.0.url(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        TwoRegistries {
            mirror,
            first,
            second,
            _work: work,
        }
    }

    fn get(&self, target: &str) -> common::RawResponse {
        raw_request(
            self.mirror.host(),
            "GET",
            target,
            &[("Accept", MANIFEST_TYPE)],
        )
        .unwrap()
    }
}

#[test]
fn ns_picks_the_second_upstream_and_none_means_the_first() {
    let bed = TwoRegistries::start();
    let (second, second_image) = (&bed.second.0, &bed.second.1);
    let first_image = &bed.first.1;
    assert_ne!(first_image.manifest_digest, second_image.manifest_digest);

    let by_ns = bed.get(&format!("/v2/{REPO}/manifests/{TAG}?ns={}", second.host()));
    assert_eq!(by_ns.status, 200);
    assert_eq!(
        by_ns.header("docker-content-digest"),
        Some(second_image.manifest_digest.as_str()),
        "?ns= of the second registry served another registry's tag"
    );
    let default = bed.get(&format!("/v2/{REPO}/manifests/{TAG}"));
    assert_eq!(
        default.header("docker-content-digest"),
        Some(first_image.manifest_digest.as_str()),
        "without ?ns= the first upstream serves"
    );

    // A blob only the second registry holds: found through its ns, not through the default.
    let layer = &second_image.layers[0];
    let via_ns = bed.get(&format!(
        "/v2/{REPO}/blobs/{}?ns={}",
        layer.digest,
        second.host()
    ));
    assert_eq!(via_ns.status, 200);
    assert_eq!(via_ns.body, second_image.blob_bytes(&layer.digest));
    let via_default = bed.get(&format!("/v2/{REPO}/blobs/{}", layer.digest));
    assert_eq!(
        via_default.status, 404,
        "the first registry does not hold the second's layer, and the cache must not say so"
    );

    // skopeo cannot send ?ns=: a whole pull without it is the first registry's image.
    first_image.pull_and_verify(
        &format!("{}/{REPO}:{TAG}", bed.mirror.host()),
        &bed._work.path().join("pull-default-is-first"),
        None,
    );
}

#[test]
fn unconfigured_ns_is_name_unknown() {
    let bed = TwoRegistries::start();
    let resp = bed.get(&format!(
        "/v2/{REPO}/manifests/{TAG}?ns=elsewhere.example:5000"
    ));
    assert_eq!(resp.status, 404);
    assert_eq!(resp.error_codes(), vec!["NAME_UNKNOWN".to_string()]);
}

/// A TCP listener that counts connections and closes each at once: enough to see that the
/// mirror tried a host, which it reaches over https only (no loopback registry speaks that here).
fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, count)
}

#[test]
fn allow_any_registry_lets_an_unconfigured_ns_through() {
    let configured = Registry::start();
    let (ns, connections) = counting_listener();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let target = format!("/v2/{REPO}/manifests/{TAG}?ns={ns}");

    let strict = Mirror::start(&["--upstream", &configured.url(), "--cache-dir", cache_dir]);
    let refused = raw_request(strict.host(), "GET", &target, &[]).unwrap();
    assert_eq!(refused.status, 404);
    assert_eq!(refused.error_codes(), vec!["NAME_UNKNOWN".to_string()]);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a strict mirror contacted {ns}"
    );
    drop(strict);

    let open = Mirror::start(&[
        "--upstream",
        &configured.url(),
        "--cache-dir",
        cache_dir,
        "--allow-any-registry",
    ]);
    let resp = raw_request(open.host(), "GET", &target, &[]).unwrap();
    assert_eq!(
        resp.status,
        502,
        "allowAnyRegistry: ?ns={ns} should be tried and fail at TLS, got {} {:?}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "the mirror did not contact the unconfigured registry {ns}"
    );
}
