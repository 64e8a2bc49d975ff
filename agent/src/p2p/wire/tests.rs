use super::*;
use proptest::prelude::*;

fn round_trip(f: Frame) {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    let back = Frame::decode(&mut buf).expect("decodes").expect("whole");
    assert_eq!(back, f);
    assert!(buf.is_empty());
}

fn join(pieces_have: &[u32]) -> Join {
    let layout = nodepool::PieceLayout::new(10 << 20, 1 << 20).expect("layout");
    let mut have = PieceSet::empty(layout.count());
    for &p in pieces_have {
        have.insert(p);
    }
    Join {
        digest: [7; 32],
        size: layout.size(),
        piece_size: layout.piece_size(),
        have,
        receiving: PieceSet::empty(layout.count()),
    }
}

#[test]
fn every_frame_round_trips() {
    round_trip(Frame::Hello(Hello {
        nonce: [3; 16],
        node: "node-1".into(),
        pool: "np-1".into(),
    }));
    round_trip(Frame::Auth([9; 32]));
    round_trip(Frame::Join(join(&[0, 9])));
    round_trip(Frame::Leave { task: u64::MAX });
    round_trip(Frame::Notices {
        task: 1,
        notices: vec![
            (0, Notice::Have),
            (5, Notice::Receiving),
            (6, Notice::NotReceiving),
        ],
    });
    round_trip(Frame::Offer { task: 2, piece: 3 });
    round_trip(Frame::Accept { task: 2, piece: 3 });
    round_trip(Frame::Withdraw { task: 2, piece: 3 });
    for why in [
        Refusal::Have,
        Refusal::Receiving,
        Refusal::Busy,
        Refusal::Unwanted,
    ] {
        round_trip(Frame::Refuse {
            task: 2,
            piece: 3,
            why,
        });
    }
    round_trip(Frame::Data {
        task: 2,
        piece: 3,
        offset: 4096,
        bytes: Bytes::from(vec![1u8; MAX_DATA]),
    });
    round_trip(Frame::Proof {
        task: 2,
        piece: 3,
        sig: [7; 64],
    });
}

#[test]
fn a_partial_frame_waits_for_more_bytes() {
    let mut whole = BytesMut::new();
    Frame::Offer { task: 1, piece: 2 }.encode(&mut whole);
    Frame::Accept { task: 1, piece: 2 }.encode(&mut whole);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in whole.iter() {
        buf.put_u8(*b);
        while let Some(f) = Frame::decode(&mut buf).expect("valid") {
            got.push(f);
        }
    }
    assert_eq!(
        got,
        vec![
            Frame::Offer { task: 1, piece: 2 },
            Frame::Accept { task: 1, piece: 2 }
        ]
    );
}

#[test]
fn bad_frames_are_refused_with_a_reason() {
    let mut huge = BytesMut::new();
    huge.put_u8(10);
    huge.put_u32((MAX_FRAME + 1) as u32);
    assert_eq!(
        Frame::decode(&mut huge),
        Err(WireError::TooLarge(MAX_FRAME + 1))
    );
    let mut unknown = BytesMut::from(&[99u8, 0, 0, 0, 0][..]);
    assert_eq!(Frame::decode(&mut unknown), Err(WireError::UnknownType(99)));
    // A HELLO from something else.
    let mut other = BytesMut::new();
    other.put_u8(1);
    other.put_u32(26);
    other.put_slice(b"HTTP/1.1 200 OK\r\n\r\n0123456");
    assert!(matches!(
        Frame::decode(&mut other),
        Err(WireError::Bad { .. })
    ));
    // A JOIN whose bitmap does not match its piece count.
    let mut j = BytesMut::new();
    Frame::Join(join(&[1])).encode(&mut j);
    let len = j.len();
    j[len - 5] = 9; // the receiving set's length field: 2 -> 9 bytes claimed
    assert!(Frame::decode(&mut j).is_err());
    // A PROOF one byte short, or of a piece past the bound.
    let mut short = BytesMut::new();
    Frame::Proof {
        task: 1,
        piece: 2,
        sig: [7; 64],
    }
    .encode(&mut short);
    short[4] -= 1;
    short.truncate(short.len() - 1);
    assert!(Frame::decode(&mut short).is_err());
    let mut past = BytesMut::new();
    Frame::Proof {
        task: 1,
        piece: MAX_PIECES,
        sig: [7; 64],
    }
    .encode(&mut past);
    assert!(Frame::decode(&mut past).is_err());
    // An older peer's HELLO (version 1): refused, saying why.
    let mut old = BytesMut::new();
    Frame::Hello(Hello {
        nonce: [3; 16],
        node: "node-1".into(),
        pool: "np-1".into(),
    })
    .encode(&mut old);
    old[5 + 7] = 1;
    let err = Frame::decode(&mut old)
        .expect_err("older version")
        .to_string();
    assert!(err.contains("version differs"), "{err}");
    // Trailing bytes after a valid body.
    let mut t = BytesMut::new();
    t.put_u8(4);
    t.put_u32(9);
    t.put_u64(1);
    t.put_u8(0);
    assert!(Frame::decode(&mut t).is_err());
}

#[test]
fn the_task_key_is_the_digest_prefix() {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
    assert_eq!(task_key(&d), 0x0102_0304_0506_0708);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_headers_with_random_bodies_never_panic(kind in 0u8..13, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::new();
        buf.put_u8(kind);
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        let _ = Frame::decode(&mut buf);
    }

    #[test]
    fn notices_round_trip(task in any::<u64>(), list in proptest::collection::vec((0u32..MAX_PIECES, 0u8..3), 0..200)) {
        let notices: Vec<(u32, Notice)> = list.into_iter().map(|(p, k)| (p, [Notice::Have, Notice::Receiving, Notice::NotReceiving][k as usize])).collect();
        round_trip(Frame::Notices { task, notices });
    }
}
