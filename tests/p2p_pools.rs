//! Pool boundaries: peers never exchange pieces across pools that are not declared connected
//! (edge pools are separate networks), do across pools that are, and a request to the peer port
//! without the pool secret gets nothing.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::{PEER_BYTES, SOURCE_BYTES};
use common::p2p::{BedSpec, P2pBed, PIECE_SIZE};
use common::raw_request;
use nodepool::{unix_now, PoolSecret, AUTH_HEADER};

const POOL_A: &str = "pool-a";
const POOL_B: &str = "pool-b";

/// Pool A pulls first and completes; then pool B pulls. Returns (A's peer bytes out during B's
/// pull, B's peer bytes in, B's peer bytes out, B's bytes from the mirror).
fn pool_a_then_pool_b(bed: &mut P2pBed) -> (f64, f64, f64, f64) {
    let a = bed.add_agents(2, POOL_A, &[]);
    let b = bed.add_agents(2, POOL_B, &[]);
    bed.pull_all(&a);
    let a_out_before = bed.peer_bytes(&a, "out");
    bed.pull_all(&b);
    let a_out_during_b = bed.peer_bytes(&a, "out") - a_out_before;
    eprintln!(
        "pool A: {}\npool B: {}\npool B from the mirror: {}",
        bed.per_agent(&a, PEER_BYTES),
        bed.per_agent(&b, PEER_BYTES),
        bed.per_agent(&b, SOURCE_BYTES)
    );
    (
        a_out_during_b,
        bed.peer_bytes(&b, "in"),
        bed.peer_bytes(&b, "out"),
        bed.sum(&b, SOURCE_BYTES),
    )
}

#[test]
fn two_pools_not_interconnected_exchange_no_bytes() {
    // No config: each pool is one network that reaches no other.
    let mut bed = P2pBed::start(BedSpec {
        seed: 51,
        ..BedSpec::default()
    });
    let (a_out, b_in, b_out, b_source) = pool_a_then_pool_b(&mut bed);
    assert_eq!(
        a_out, 0.0,
        "pool A uploaded {a_out} bytes while only pool B pulled"
    );
    assert!(
        b_in <= b_out,
        "pool B received {b_in} peer bytes but its own agents sent only {b_out}: some came from \
         outside the pool"
    );
    assert!(
        b_source + b_in >= 2.0 * bed.one_copy() as f64,
        "pool B's two pulls got {b_source} bytes from the mirror and {b_in} from each other, \
         less than two copies of the image"
    );
}

#[test]
fn interconnected_pools_share_pieces() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 52,
        pools_yaml: Some("- id: pool-a\n  connectedPools: [pool-b]\n- id: pool-b\n"),
        ..BedSpec::default()
    });
    let (a_out, b_in, _, _) = pool_a_then_pool_b(&mut bed);
    assert!(
        a_out > 0.0,
        "pool A uploaded nothing to the pool it is connected to"
    );
    assert!(b_in > 0.0, "pool B received no peer bytes");
}

#[test]
fn peer_port_without_the_pool_secret_gets_nothing() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 53,
        secret: Some("s3cret"),
        ..BedSpec::default()
    });
    let holder = bed.add_agent(POOL_A, &[]);
    bed.pull(holder);

    let layer = bed.fx.image.layers[0].clone();
    let piece = bed.fx.image.blob_bytes(&layer.digest)[..PIECE_SIZE as usize].to_vec();
    let path = |index: u32| format!("/pieces/{}/{index}?pieceSize={PIECE_SIZE}", layer.digest);
    let now = unix_now();
    let sign = |secret: &str, path: &str, pool: &str, at: u64| {
        PoolSecret::new(secret).sign("GET", path, pool, at)
    };
    let peer = bed.agents[holder].peer_host().to_owned();
    let get = |target: &str, sig: Option<&str>| {
        let headers: Vec<(&str, &str)> = sig.map(|s| (AUTH_HEADER, s)).into_iter().collect();
        raw_request(&peer, "GET", target, &headers).unwrap()
    };
    let leaks = |body: &[u8]| body.windows(64).any(|w| w == &piece[..64]);

    let cases = [
        ("no signature", None),
        ("a wrong secret", Some(sign("guess", &path(0), POOL_A, now))),
        (
            "a pool this node does not reach",
            Some(sign("s3cret", &path(0), POOL_B, now)),
        ),
        (
            "a signature for another piece",
            Some(sign("s3cret", &path(1), POOL_A, now)),
        ),
        (
            "a signature an hour old",
            Some(sign("s3cret", &path(0), POOL_A, now - 3600)),
        ),
    ];
    for (what, sig) in &cases {
        let resp = get(&path(0), sig.as_deref());
        assert!(
            resp.status == 401 || resp.status == 403,
            "a request with {what} got {} (expected 401 or 403)",
            resp.status
        );
        assert!(!leaks(&resp.body), "a request with {what} got blob bytes");
    }

    // The same request, signed for the holder's own pool with the pool secret, is served:
    // what failed above was the signature, not the request.
    let sig = sign("s3cret", &path(0), POOL_A, now);
    let resp = get(&path(0), Some(&sig));
    assert_eq!(
        resp.status, 200,
        "a correctly signed piece request was refused"
    );
    assert!(
        resp.body == piece,
        "the piece served is not the blob's first MiB"
    );
}
