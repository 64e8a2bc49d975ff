//! The agent's access check against a registry that demands credentials (htpasswd): a blob
//! goes to containerd only when upstream accepts the requester for the repository, whether the
//! agent has to fetch it or already holds it from someone else's authorised pull.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::{SERVED_BYTES, SOURCE_BYTES};
use common::p2p::{BedSpec, P2pBed};
use common::{basic_auth, leaks, raw_request, verify_pulled};

const POOL: &str = "pool-a";
const USER: &str = "alice";
const PASS: &str = "s3cret";

#[test]
fn agent_serves_private_blobs_only_to_requesters_upstream_accepts() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 51,
        auth: Some((USER, PASS)),
        ..BedSpec::default()
    });
    let agents = bed.add_agents(2, POOL, &[]);
    let (a, b) = (agents[0], agents[1]);

    // Cold: an anonymous pull through the agent is refused and moves no blob bytes.
    let (anonymous, _) = bed.pull_as(a, None);
    assert!(
        !anonymous.status.success(),
        "anonymous pull of a private image through the agent succeeded"
    );
    assert_eq!(
        bed.agents[a].metric(SERVED_BYTES),
        0.0,
        "the agent served blob bytes to an anonymous client"
    );
    assert_eq!(
        bed.agents[a].metric(SOURCE_BYTES),
        0.0,
        "the agent fetched blob bytes for an anonymous client"
    );

    // The right credentials are served, digest for digest.
    let (authed, out) = bed.pull_as(a, Some((USER, PASS)));
    assert!(
        authed.status.success(),
        "authorised pull through the agent failed: {}",
        String::from_utf8_lossy(&authed.stderr)
    );
    verify_pulled(&out, &bed.fx.image).unwrap();

    // Now the agent holds every blob. Held is not the same as allowed.
    let served_before = bed.agents[a].metric(SERVED_BYTES);
    for blob in bed.fx.image.blobs() {
        let path = bed.fx.blob_path(&blob.digest);
        let bytes = bed.fx.image.blob_bytes(&blob.digest);
        let host = bed.agents[a].host();
        for (who, headers) in [
            ("anonymous", Vec::new()),
            (
                "wrong password",
                vec![("Authorization", basic_auth(USER, "wrong"))],
            ),
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let get = raw_request(host, "GET", &path, &headers).unwrap();
            assert_eq!(get.status, 401, "{who} GET {path} of a held blob");
            assert!(
                get.header("www-authenticate").is_some(),
                "a 401 must say how to authenticate"
            );
            assert!(!leaks(&get.body, &bytes), "401 body carries blob bytes");
            let head = raw_request(host, "HEAD", &path, &headers).unwrap();
            assert_eq!(head.status, 401, "{who} HEAD {path} of a held blob");
        }
        let auth = basic_auth(USER, PASS);
        let get = raw_request(host, "GET", &path, &[("Authorization", &auth)]).unwrap();
        assert_eq!(get.status, 200, "GET {path} of a held blob as {USER}");
        assert_eq!(get.body, bytes, "held blob {path}");
    }
    assert_eq!(
        bed.agents[a].metric(SERVED_BYTES) - served_before,
        bed.one_copy() as f64,
        "only the authorised requests got blob bytes"
    );
    let (anonymous, _) = bed.pull_as(a, None);
    assert!(
        !anonymous.status.success(),
        "anonymous pull of an image the agent holds succeeded"
    );

    // Another node of the pool: refused anonymously although a peer holds it all; served to
    // the right credentials.
    let (anonymous, _) = bed.pull_as(b, None);
    assert!(
        !anonymous.status.success(),
        "anonymous pull through a second agent succeeded"
    );
    assert_eq!(bed.agents[b].metric(SERVED_BYTES), 0.0);
    assert_eq!(bed.agents[b].peer_bytes("in"), 0.0, "fetched for nobody");
    let (authed, out) = bed.pull_as(b, Some((USER, PASS)));
    assert!(
        authed.status.success(),
        "authorised pull through the second agent failed: {}",
        String::from_utf8_lossy(&authed.stderr)
    );
    verify_pulled(&out, &bed.fx.image).unwrap();
}

/// With `allowAnyRegistry`, a registry the mirror was not configured with can say yes to any
/// `HEAD`. Once the mirror no longer holds a private layer (its cache went with its pod), the
/// agent must not take that yes for its own cached copy: the bytes come through the mirror,
/// which fetches them from that registry and checks their digest.
#[test]
fn an_unconfigured_registrys_yes_does_not_open_what_the_agent_holds() {
    use common::fake::{FakeUpstream, Reply};
    use common::fixture::{Fixture, REPO};
    use common::registry::Registry;
    let tls = common::tls::certs(&["localhost"]);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &tls.ca).unwrap();
    let fx = Fixture::around(
        Registry::start_with_auth(USER, PASS),
        &[256 << 10],
        52,
        &[
            "--allow-any-registry",
            "--upstream-ca-file",
            ca.path().to_str().unwrap(),
        ],
    );
    let layer = fx.image.layers[0].clone();
    let private = fx.image.blob_bytes(&layer.digest);
    let mut bed = P2pBed::around(fx);
    let a = bed.add_agent(POOL, &[]);
    let agent = bed.agents[a].host().to_owned();
    let alice = basic_auth(USER, PASS);
    let path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let got = raw_request(&agent, "GET", &path, &[("Authorization", alice.as_str())]).unwrap();
    assert_eq!(got.status, 200, "alice's pull through the agent");
    assert_eq!(got.body, private);
    // The mirror loses its copy; the agent keeps its own.
    std::fs::remove_file(bed.fx.cached_blob_file(&layer.digest)).unwrap();
    let size = layer.size as usize;
    let liar = FakeUpstream::start_tls(&tls.cert, &tls.key, move |_| {
        Reply::new(200, vec![0x5a; size]).header("Content-Type", "application/octet-stream")
    });
    let path = format!("/v2/any/repo/blobs/{}?ns={}", layer.digest, liar.ns());
    let got = raw_request(&agent, "GET", &path, &[]).unwrap();
    assert!(
        !leaks(&got.body, &private),
        "the agent served its cached private layer on the word of {} (status {})",
        liar.ns(),
        got.status
    );
    // alice still gets it, from the agent's cache.
    let path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let got = raw_request(&agent, "GET", &path, &[("Authorization", alice.as_str())]).unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, private);
}
