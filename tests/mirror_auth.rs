//! Private images stay private: a cached blob goes only to requesters upstream accepts.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::fixture::{REPO, TAG};
use common::registry::{TokenIssuer, TOKEN_SERVICE};
use common::{basic_auth, leaks, raw_request, Fixture, Mirror, Registry, TestImage};

const KIB: usize = 1024;
const USER: &str = "alice";
const PASS: &str = "s3cret";

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

#[test]
fn bearer_token_flow_is_relayed_and_cached_blobs_need_a_token() {
    // The real registry verifies every token itself: nothing here can pass without a JWT
    // it accepts for the repository.
    let issuer = TokenIssuer::start(USER, PASS);
    let registry = Registry::start_with_token_auth(USER, PASS, issuer.auth());
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::build(&work.path().join("layout"), &[256 * KIB, 128 * KIB], 35);
    image.push(&registry, &format!("{REPO}:{TAG}"), Some((USER, PASS)));
    let cache = work.path().join("cache");
    let mut mirror = Mirror::for_registry(&registry, &cache, &[]);
    let bearer = |scope: &str| format!("Bearer {}", issuer.sign(USER, &[scope.into()]).unwrap());
    let pull_scope = format!("repository:{REPO}:pull");

    // The challenge comes from upstream, realm and all, so clients go to the real issuer.
    let ping = raw_request(mirror.host(), "GET", "/v2/", &[]).unwrap();
    assert_eq!(ping.status, 401, "anonymous GET /v2/");
    let challenge = ping.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", issuer.realm))
            && challenge.contains(&format!("service=\"{TOKEN_SERVICE}\"")),
        "GET /v2/ challenge: {challenge:?}"
    );
    let manifest_path = format!("/v2/{REPO}/manifests/{TAG}");
    let anon = raw_request(mirror.host(), "GET", &manifest_path, &[]).unwrap();
    assert_eq!(anon.status, 401);
    let challenge = anon.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.contains(&format!("scope=\"{pull_scope}\"")),
        "manifest challenge names the repository scope: {challenge:?}"
    );

    // A blob not cached yet: the client's token goes upstream, and upstream judges it.
    let layer = &image.layers[1];
    let blob = image.blob_bytes(&layer.digest);
    let blob_path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let other_repo = bearer("repository:other/repo:pull");
    let refused = raw_request(
        mirror.host(),
        "GET",
        &blob_path,
        &[("Authorization", &other_repo)],
    )
    .unwrap();
    assert_eq!(
        refused.status, 401,
        "a token for another repository, uncached blob"
    );
    let token = bearer(&pull_scope);
    let fetched = raw_request(
        mirror.host(),
        "GET",
        &blob_path,
        &[("Authorization", &token)],
    )
    .unwrap();
    assert_eq!(fetched.status, 200, "GET {blob_path} with a pull token");
    assert_eq!(fetched.body, blob);

    // skopeo does the whole dance against the mirror: 401, token from the realm, retry.
    let issued_before = issuer.issued().len();
    image.pull_and_verify(
        &format!("{}/{REPO}:{TAG}", mirror.host()),
        &work.path().join("pull"),
        Some((USER, PASS)),
    );
    assert!(
        issuer.issued().len() > issued_before,
        "skopeo pulled through the mirror without getting a token from the realm"
    );

    // Everything is cached now; without a token (or with one upstream refuses) nothing leaks.
    let cached = &image.layers[0];
    let cached_blob = image.blob_bytes(&cached.digest);
    let cached_path = format!("/v2/{REPO}/blobs/{}", cached.digest);
    for (who, headers) in [
        ("anonymous", vec![]),
        (
            "another repository's token",
            vec![("Authorization", other_repo.as_str())],
        ),
        (
            "a password instead of a token",
            vec![("Authorization", &*basic_auth(USER, PASS))],
        ),
    ] {
        for method in ["GET", "HEAD"] {
            let resp = raw_request(mirror.host(), method, &cached_path, &headers).unwrap();
            assert_eq!(resp.status, 401, "{who}: {method} of a cached blob");
            assert!(
                !leaks(&resp.body, &cached_blob),
                "{who}: 401 body carries blob bytes"
            );
            if who == "anonymous" {
                assert!(
                    resp.header("www-authenticate")
                        .is_some_and(|c| c.starts_with("Bearer ")),
                    "{who}: {method} must relay the Bearer challenge"
                );
            }
        }
    }
    let served = raw_request(
        mirror.host(),
        "GET",
        &cached_path,
        &[("Authorization", &token)],
    )
    .unwrap();
    assert_eq!(served.status, 200, "the pull token opens the cached blob");
    assert_eq!(served.body, cached_blob);
    mirror.stop_and_assert_no_panic();
}
