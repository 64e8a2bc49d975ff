//! Pool boundaries: peers never exchange pieces across pools that are not declared connected
//! (edge pools are separate networks), do across pools that are, and a request to the peer port
//! without the pool secret gets nothing.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::time::Duration;

use agent::p2p::wire::{Frame, Join};
use common::agent::{PEER_BYTES, SOURCE_BYTES};
use common::fake_peer::PeerClient;
use common::p2p::{BedSpec, P2pBed};
use common::raw_request;
use nodepool::PieceLayout;
use swarm::PieceSet;

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
    let bytes = bed.fx.image.blob_bytes(&layer.digest).to_vec();
    let layout = PieceLayout::auto(bytes.len() as u64).expect("layout");
    let mut digest = [0u8; 32];
    hex::decode_to_slice(layer.digest.trim_start_matches("sha256:"), &mut digest).unwrap();
    let join = Frame::Join(Join {
        digest,
        size: layout.size(),
        piece_size: layout.piece_size(),
        have: PieceSet::empty(layout.count()),
        receiving: PieceSet::empty(layout.count()),
    });
    let peer = bed.agents[holder].peer_host().to_owned();

    // The blob's own bytes among piece data a client got: (piece, offset, bytes) frames.
    let real = |data: &[(u32, u32, Vec<u8>)]| {
        data.iter()
            .filter(|(piece, offset, got)| {
                let at = layout.span(*piece).unwrap().start as usize + *offset as usize;
                bytes.get(at..at + got.len()) == Some(&got[..])
            })
            .map(|d| d.2.len())
            .sum::<usize>()
    };
    // What a client gets from the holder, accepting every offer, until it goes quiet.
    let knock = |pool: &str, secret: &str| -> (bool, Vec<(u32, u32, Vec<u8>)>) {
        let Ok(mut c) = PeerClient::connect(&peer, "intruder", pool, secret) else {
            return (false, Vec::new());
        };
        let mut got = Vec::new();
        if c.send(std::slice::from_ref(&join)).is_err() {
            return (true, got);
        }
        while let Some(f) = c.recv(Duration::from_secs(3)) {
            match f {
                Frame::Offer { task, piece } => {
                    let _ = c.send(&[Frame::Accept { task, piece }]);
                }
                Frame::Data {
                    piece,
                    offset,
                    bytes,
                    ..
                } => got.push((piece, offset, bytes.to_vec())),
                _ => {}
            }
            if got.len() > 4 {
                break;
            }
        }
        (true, got)
    };
    let first = layout.span(0).unwrap();
    let head = &bytes[first.start as usize..][..64];
    let leaks = |body: &[u8]| body.windows(64).any(|w| w == head);

    // Something that is not the protocol at all: an HTTP request for a piece.
    let resp = raw_request(&peer, "GET", &format!("/pieces/{}/0", layer.digest), &[]);
    assert!(
        !resp.as_ref().is_ok_and(|r| leaks(&r.body)),
        "an HTTP request to the peer port got blob bytes"
    );
    let (greeted, got) = knock(POOL_A, "guess");
    assert!(!greeted, "a handshake with a wrong secret passed");
    assert_eq!(real(&got), 0, "a peer with a wrong secret got blob bytes");
    let (_, got) = knock(POOL_B, "s3cret");
    assert_eq!(
        real(&got),
        0,
        "a peer of a pool this node does not reach got blob bytes"
    );

    // The same, from the holder's own pool with the pool secret, is served: what failed above
    // was the secret or the pool, not the request.
    let (greeted, got) = knock(POOL_A, "s3cret");
    assert!(greeted, "a handshake with the pool secret failed");
    assert!(
        real(&got) > 0,
        "a peer with the pool secret was pushed none of the blob ({} data frames)",
        got.len()
    );
}
