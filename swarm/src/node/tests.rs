//! Unit tests of the decisions: events in, actions out, time as an argument.

use super::*;

const T: TaskId = 7;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn set(len: u32, pieces: &[u32]) -> PieceSet {
    let mut s = PieceSet::empty(len);
    for &p in pieces {
        s.insert(p);
    }
    s
}

/// A node in a blob of `pieces` pieces holding `have`, with members `(peer, their pieces)`.
fn node(pieces: u32, have: &[u32], mode: Mode, members: &[(PeerId, &[u32])]) -> Node {
    let mut n = Node::new(Tunables::default(), 42);
    open(&mut n, T, pieces, have, mode, members);
    n
}

/// Opens blob `task` here holding `have` of its `pieces`, with members `(peer, their pieces)`.
fn open(
    n: &mut Node,
    task: TaskId,
    pieces: u32,
    have: &[u32],
    mode: Mode,
    members: &[(PeerId, &[u32])],
) {
    let mut out = Vec::new();
    n.handle(
        ms(0),
        Event::Open {
            task,
            pieces,
            piece_len: 1 << 20,
            have: set(pieces, have),
            mode,
        },
        &mut out,
    );
    for &(peer, theirs) in members {
        n.handle(
            ms(0),
            Event::Joined {
                peer,
                task,
                have: set(pieces, theirs),
                receiving: PieceSet::empty(pieces),
            },
            &mut out,
        );
    }
}

/// Opens a second blob of `pieces` pieces, none held, in p2p mode.
fn open_empty(n: &mut Node, task: TaskId, pieces: u32) {
    open(n, task, pieces, &[], Mode::P2p, &[]);
}

fn decide(n: &mut Node, now: Duration) -> Vec<Action> {
    let mut out = Vec::new();
    n.decide(now, &mut out);
    out
}

fn handle(n: &mut Node, now: Duration, ev: Event) -> Vec<Action> {
    let mut out = Vec::new();
    n.handle(now, ev, &mut out);
    n.decide(now, &mut out);
    out
}

fn offers(actions: &[Action]) -> Vec<(PeerId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Offer { peer, piece, .. } => Some((*peer, *piece)),
            _ => None,
        })
        .collect()
}

fn fetches(actions: &[Action]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::FetchMirror { first, count, .. } => Some((*first, *count)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_neediest_member_is_offered_the_rarest_piece_first() {
    // Pieces 0 and 1 held here; peer 1 holds piece 0, peer 2 nothing, peer 3 both.
    let mut n = node(4, &[0, 1], Mode::P2p, &[(1, &[0]), (2, &[]), (3, &[0, 1])]);
    let o = offers(&decide(&mut n, ms(0)));
    // Piece 1 is held by one member, piece 0 by two: peer 2 (holding least) gets piece 1
    // first; each lane takes `lookahead` offers, so piece 0 follows on the same lane, and
    // peer 1 gets the one piece it lacks.
    assert_eq!(o.first(), Some(&(2, 1)), "{o:?}");
    assert!(o.contains(&(2, 0)) && o.contains(&(1, 1)), "{o:?}");
    assert!(
        !o.iter().any(|&(p, _)| p == 3),
        "peer 3 holds everything: {o:?}"
    );
}

#[test]
fn an_accepted_offer_is_pushed_and_the_next_waits_for_the_push_to_end() {
    let mut n = node(4, &[0, 1], Mode::P2p, &[(2, &[])]);
    let o = offers(&decide(&mut n, ms(0)));
    assert_eq!(o.len(), 2, "two offered ahead on the lane: {o:?}");
    let (first, second) = (o[0].1, o[1].1);
    let a = handle(
        &mut n,
        ms(5),
        Event::Accepted {
            peer: 2,
            task: T,
            piece: first,
        },
    );
    assert!(
        a.contains(&Action::Push {
            peer: 2,
            task: T,
            piece: first
        }),
        "{a:?}"
    );
    let a = handle(
        &mut n,
        ms(6),
        Event::Accepted {
            peer: 2,
            task: T,
            piece: second,
        },
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::Push { .. })),
        "one push at a time: {a:?}"
    );
    let a = handle(
        &mut n,
        ms(90),
        Event::Pushed {
            peer: 2,
            task: T,
            piece: first,
        },
    );
    assert!(
        a.contains(&Action::Push {
            peer: 2,
            task: T,
            piece: second
        }),
        "{a:?}"
    );
}

#[test]
fn an_accept_for_an_offer_no_longer_out_is_withdrawn() {
    let mut n = node(2, &[0], Mode::P2p, &[(2, &[])]);
    let a = handle(
        &mut n,
        ms(0),
        Event::Accepted {
            peer: 2,
            task: T,
            piece: 1,
        },
    );
    assert!(
        a.contains(&Action::Withdraw {
            peer: 2,
            task: T,
            piece: 1
        }),
        "{a:?}"
    );
}

#[test]
fn offers_of_held_or_incoming_pieces_are_refused_and_others_accepted() {
    let mut n = node(4, &[0], Mode::P2p, &[(1, &[0, 1, 2]), (2, &[1])]);
    let a = handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 0,
        },
    );
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Refuse {
                why: Refusal::Have,
                ..
            }
        )),
        "{a:?}"
    );
    let a = handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 1,
        },
    );
    assert!(
        a.contains(&Action::Accept {
            peer: 1,
            task: T,
            piece: 1
        }),
        "{a:?}"
    );
    assert!(a.contains(&Action::Notify {
        task: T,
        piece: 1,
        notice: Notice::Receiving
    }));
    // The same piece from another holder is now coming: refused.
    let a = handle(
        &mut n,
        ms(1),
        Event::Offered {
            peer: 2,
            task: T,
            piece: 1,
        },
    );
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Refuse {
            why: Refusal::Receiving,
            ..
        }
    )));
    // An unknown blob or a piece past the end: unwanted.
    let a = handle(
        &mut n,
        ms(1),
        Event::Offered {
            peer: 2,
            task: 99,
            piece: 0,
        },
    );
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Refuse {
            why: Refusal::Unwanted,
            ..
        }
    )));
    let a = handle(
        &mut n,
        ms(1),
        Event::Offered {
            peer: 2,
            task: T,
            piece: 4,
        },
    );
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Refuse {
            why: Refusal::Unwanted,
            ..
        }
    )));
}

#[test]
fn a_refused_offer_frees_the_lane_for_another_piece() {
    let mut n = node(3, &[0, 1], Mode::P2p, &[(2, &[])]);
    let o = offers(&decide(&mut n, ms(0)));
    assert_eq!(o.len(), 2);
    let a = handle(
        &mut n,
        ms(5),
        Event::Refused {
            peer: 2,
            task: T,
            piece: o[0].1,
            why: Some(Refusal::Have),
        },
    );
    // Nothing else to offer (peer 2 has or is being offered both): no new offer, and the
    // refused piece is not offered again.
    assert!(offers(&a).is_empty(), "{a:?}");
    assert_eq!(n.backlog(T), 0);
}

#[test]
fn a_busy_peer_is_left_alone_for_the_back_off() {
    let mut n = node(2, &[0], Mode::P2p, &[(2, &[])]);
    let o = offers(&decide(&mut n, ms(0)));
    assert_eq!(o, vec![(2, 0)]);
    let a = handle(
        &mut n,
        ms(10),
        Event::Refused {
            peer: 2,
            task: T,
            piece: 0,
            why: Some(Refusal::Busy),
        },
    );
    assert!(
        offers(&a).is_empty(),
        "offered again during the back-off: {a:?}"
    );
    let mut out = Vec::new();
    n.tick(ms(10) + Tunables::default().busy_backoff, &mut out);
    assert_eq!(offers(&out), vec![(2, 0)]);
}

/// Why each mirror range of `actions` was started, in order.
fn whys(actions: &[Action]) -> Vec<MirrorWhy> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::FetchMirror { why, .. } => Some(*why),
            _ => None,
        })
        .collect()
}

#[test]
fn leased_pieces_are_fetched_as_ranges_and_reported_when_done() {
    let mut n = node(8, &[], Mode::P2p, &[]);
    let a = decide(&mut n, ms(0));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::AskFresh { wait: true, .. })),
        "{a:?}"
    );
    let a = handle(
        &mut n,
        ms(5),
        Event::Fresh {
            task: T,
            pieces: vec![2, 3, 4, 6],
            all_released: false,
            move_on: false,
        },
    );
    assert_eq!(fetches(&a), vec![(2, 3), (6, 1)]);
    assert_eq!(whys(&a), vec![MirrorWhy::Lease; 2]);
    // Asked again at once, to have the next lease ready.
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::AskFresh { wait: true, .. })),
        "{a:?}"
    );
    let a = handle(
        &mut n,
        ms(50),
        Event::Done {
            task: T,
            piece: 2,
            from: From::Mirror,
        },
    );
    let completed: Vec<Vec<u32>> = a
        .iter()
        .filter_map(|x| match x {
            Action::AskFresh { completed, .. } => Some(completed.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(completed, vec![vec![2]]);
    assert!(a.contains(&Action::Notify {
        task: T,
        piece: 2,
        notice: Notice::Have
    }));
}

#[test]
fn source_mode_takes_the_lowest_missing_pieces_a_few_at_a_time() {
    let mut n = node(10, &[0, 2], Mode::Source, &[]);
    let a = decide(&mut n, ms(0));
    assert_eq!(fetches(&a), vec![(1, 1), (3, 1), (4, 1), (5, 1)]);
    assert_eq!(whys(&a), vec![MirrorWhy::Source; 4]);
    assert!(
        !a.iter().any(|x| matches!(x, Action::AskFresh { .. })),
        "{a:?}"
    );
    let a = handle(
        &mut n,
        ms(9),
        Event::Done {
            task: T,
            piece: 3,
            from: From::Mirror,
        },
    );
    assert_eq!(fetches(&a), vec![(6, 1)]);
}

#[test]
fn once_everything_is_released_the_mirror_helps_quietly_and_yields_to_a_peer() {
    let mut n = node(4, &[0], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    let a = handle(
        &mut n,
        ms(0),
        Event::Fresh {
            task: T,
            pieces: vec![],
            all_released: true,
            move_on: true,
        },
    );
    assert_eq!(fetches(&a).len(), 1, "one help range to begin with: {a:?}");
    assert_eq!(whys(&a), vec![MirrorWhy::Assist]);
    assert!(
        !a.iter().any(|x| matches!(
            x,
            Action::Notify {
                notice: Notice::Receiving,
                ..
            }
        )),
        "help from the mirror is not announced: {a:?}"
    );
    // It arrives: the mirror is worth asking, two at once now.
    let a = handle(
        &mut n,
        ms(2),
        Event::Done {
            task: T,
            piece: fetches(&a)[0].0,
            from: From::Mirror,
        },
    );
    let f = fetches(&a);
    assert_eq!(f.len(), 2, "{a:?}");
    // A peer offers one of them: taken, and the mirror range given up.
    let a = handle(
        &mut n,
        ms(3),
        Event::Offered {
            peer: 1,
            task: T,
            piece: f[0].0,
        },
    );
    assert!(
        a.contains(&Action::Accept {
            peer: 1,
            task: T,
            piece: f[0].0
        }),
        "{a:?}"
    );
    assert!(
        a.contains(&Action::CancelMirror {
            task: T,
            first: f[0].0
        }),
        "{a:?}"
    );
}

#[test]
fn the_mirror_helps_no_tail_while_another_blob_here_still_waits_for_fresh_pieces() {
    const U: TaskId = 8;
    let mut n = node(4, &[0], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    open_empty(&mut n, U, 4);
    let released = |task| Event::Fresh {
        task,
        pieces: vec![],
        all_released: true,
        move_on: true,
    };
    let a = handle(&mut n, ms(1), released(T));
    assert!(
        fetches(&a).is_empty(),
        "the mirror helped one blob's tail while the other still needs its fresh pieces: {a:?}"
    );
    let a = handle(&mut n, ms(2), released(U));
    let fetched = a
        .iter()
        .filter(|x| matches!(x, Action::FetchMirror { task, .. } if *task == T))
        .count();
    assert_eq!(
        fetched, 1,
        "once both are released, both tails get help: {a:?}"
    );
}

#[test]
fn the_mirror_helps_no_tail_while_the_client_will_ask_for_more_blobs() {
    let mut n = node(4, &[0], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    n.set_more(true);
    let a = handle(
        &mut n,
        ms(1),
        Event::Fresh {
            task: T,
            pieces: vec![],
            all_released: true,
            move_on: true,
        },
    );
    assert!(
        fetches(&a).is_empty(),
        "the mirror helped a tail while the image's next blobs wait for it: {a:?}"
    );
    // The client's last blob is open here: nothing fresh is left for the mirror to send.
    n.set_more(false);
    let mut a = Vec::new();
    n.decide(ms(2), &mut a);
    assert_eq!(whys(&a), vec![MirrorWhy::Assist], "{a:?}");
}

#[test]
fn a_stalled_push_is_refused_and_its_sender_blocked() {
    let mut n = node(2, &[], Mode::P2p, &[(1, &[0, 1])]);
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 0,
        },
    );
    let stall = Tunables::default().stall;
    let mut out = Vec::new();
    n.tick(ms(0) + stall - ms(1), &mut out);
    assert!(
        !out.iter().any(|x| matches!(x, Action::Block { .. })),
        "{out:?}"
    );
    handle(
        &mut n,
        ms(100),
        Event::Progress {
            task: T,
            piece: 0,
            bytes: 1,
        },
    );
    let mut out = Vec::new();
    n.tick(ms(100) + stall, &mut out);
    assert!(out.contains(&Action::Refuse {
        peer: 1,
        task: T,
        piece: 0,
        why: Refusal::Unwanted
    }));
    assert!(out.contains(&Action::Block { peer: 1, task: T }), "{out:?}");
    // Its offers are refused from now on.
    let a = handle(
        &mut n,
        ms(200) + stall,
        Event::Offered {
            peer: 1,
            task: T,
            piece: 1,
        },
    );
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Refuse {
            why: Refusal::Unwanted,
            ..
        }
    )));
}

#[test]
fn a_corrupt_piece_blocks_its_sender_and_the_piece_is_missing_again() {
    let mut n = node(2, &[], Mode::P2p, &[(1, &[0, 1]), (2, &[0])]);
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 0,
        },
    );
    let a = handle(
        &mut n,
        ms(9),
        Event::Failed {
            task: T,
            piece: 0,
            from: From::Peer(1),
            corrupt: true,
        },
    );
    assert!(a.contains(&Action::Block { peer: 1, task: T }), "{a:?}");
    assert!(a.contains(&Action::Notify {
        task: T,
        piece: 0,
        notice: Notice::NotReceiving
    }));
    let a = handle(
        &mut n,
        ms(10),
        Event::Offered {
            peer: 2,
            task: T,
            piece: 0,
        },
    );
    assert!(
        a.contains(&Action::Accept {
            peer: 2,
            task: T,
            piece: 0
        }),
        "{a:?}"
    );
}

#[test]
fn a_failure_of_a_transfer_no_longer_current_changes_nothing() {
    let mut n = node(2, &[], Mode::P2p, &[(1, &[0]), (2, &[0])]);
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 2,
            task: T,
            piece: 0,
        },
    );
    let a = handle(
        &mut n,
        ms(1),
        Event::Failed {
            task: T,
            piece: 0,
            from: From::Peer(1),
            corrupt: true,
        },
    );
    assert!(
        a.is_empty() || !a.iter().any(|x| matches!(x, Action::Block { .. })),
        "{a:?}"
    );
}

#[test]
fn a_mirror_that_keeps_failing_fails_the_download() {
    let mut n = node(1, &[], Mode::Source, &[]);
    let retries = Tunables::default().mirror_retries;
    let mut now = ms(0);
    assert_eq!(fetches(&decide(&mut n, now)), vec![(0, 1)]);
    let mut failed = false;
    for k in 0..=retries {
        let a = handle(
            &mut n,
            now,
            Event::Failed {
                task: T,
                piece: 0,
                from: From::Mirror,
                corrupt: false,
            },
        );
        failed |= a.iter().any(|x| matches!(x, Action::Fail { .. }));
        if failed {
            break;
        }
        assert!(
            fetches(&a).is_empty(),
            "retried at once after failure {k}: {a:?}"
        );
        // The next attempt waits for the back-off.
        now = n.next_wakeup().expect("a retry is due");
        let mut out = Vec::new();
        n.tick(now, &mut out);
        assert_eq!(fetches(&out), vec![(0, 1)], "attempt {}", k + 1);
    }
    assert!(failed);
}

#[test]
fn a_peer_that_goes_frees_its_lane_and_what_it_was_sending() {
    let mut n = node(3, &[0], Mode::P2p, &[(1, &[1]), (2, &[])]);
    decide(&mut n, ms(0));
    offered(&mut n, ms(1), 1, 1);
    assert!(n.uploading() > 0);
    going_frees(&mut n, 1, 2, 1);
}

/// Two agents that dial each other at once keep one connection and drop the other; offers
/// that came on the dropped one, before the sender's join of the blob, were accepted from a
/// peer this node did not count as a member. Its going must free those pieces too, or they
/// wait for `stall` while every peer takes them for received here (seen on the fan-out bed:
/// one node of eight 11 s late).
#[test]
fn a_peer_that_goes_before_it_joined_frees_what_it_was_sending() {
    let mut n = node(3, &[0], Mode::P2p, &[(2, &[])]);
    decide(&mut n, ms(0));
    let a = offered(&mut n, ms(1), 1, 1);
    assert!(
        a.contains(&Action::Accept {
            peer: 1,
            task: T,
            piece: 1
        }),
        "{a:?}"
    );
    going_frees(&mut n, 1, 2, 1);
}

/// `peer` goes (at 2 ms): `piece`, accepted from it, is no longer taken for coming, and
/// `other`'s offer of it (at 3 ms) is accepted.
fn going_frees(n: &mut Node, peer: PeerId, other: PeerId, piece: u32) {
    let a = handle(n, ms(2), Event::Gone { peer });
    assert!(
        a.contains(&Action::Notify {
            task: T,
            piece,
            notice: Notice::NotReceiving
        }),
        "the piece is still taken for coming from the peer that went: {a:?}"
    );
    let a = offered(n, ms(3), other, piece);
    assert!(
        a.contains(&Action::Accept {
            peer: other,
            task: T,
            piece
        }),
        "{a:?}"
    );
}

#[test]
fn a_p2p_download_that_stops_moving_takes_a_piece_from_the_mirror() {
    let mut n = node(3, &[], Mode::P2p, &[(1, &[0, 1, 2])]);
    decide(&mut n, ms(0));
    let stall = Tunables::default().stall;
    let mut out = Vec::new();
    n.tick(stall - ms(1), &mut out);
    assert!(fetches(&out).is_empty(), "{out:?}");
    let mut out = Vec::new();
    n.tick(stall, &mut out);
    assert_eq!(fetches(&out), vec![(0, 1)]);
}

#[test]
fn a_held_blob_is_idle_once_no_member_lacks_a_piece() {
    let mut n = node(2, &[0, 1], Mode::P2p, &[(1, &[0])]);
    assert!(!n.is_idle(T));
    handle(
        &mut n,
        ms(1),
        Event::Notice {
            peer: 1,
            task: T,
            piece: 1,
            notice: Notice::Have,
        },
    );
    assert!(n.is_idle(T));
    assert!(n.is_complete(T));
}

#[test]
fn a_blob_of_no_pieces_is_complete_at_once() {
    let mut n = node(0, &[], Mode::P2p, &[]);
    assert!(n.is_complete(T));
    let a = decide(&mut n, ms(0));
    assert!(fetches(&a).is_empty() && offers(&a).is_empty(), "{a:?}");
}

#[test]
fn a_piece_accepted_behind_another_is_not_stalled_while_the_peer_moves() {
    let mut n = node(3, &[], Mode::P2p, &[(1, &[0, 1, 2])]);
    // Two pieces accepted from one peer: it pushes them one after the other.
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 0,
        },
    );
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 1,
        },
    );
    let stall = Tunables::default().stall;
    // The first moves all along; the second has seen no byte yet.
    for k in 1..=3 {
        let at = stall * k / 2;
        handle(
            &mut n,
            at,
            Event::Progress {
                task: T,
                piece: 0,
                bytes: 1000 * u64::from(k),
            },
        );
        let mut out = Vec::new();
        n.tick(at + ms(1), &mut out);
        assert!(
            !out.iter().any(|x| matches!(x, Action::Block { .. })),
            "at {at:?}: {out:?}"
        );
    }
    // The peer stops altogether: both are given up and the peer blocked.
    let mut out = Vec::new();
    n.tick(stall * 3 / 2 + stall, &mut out);
    assert!(out.contains(&Action::Block { peer: 1, task: T }), "{out:?}");
    assert!(out.contains(&Action::Notify {
        task: T,
        piece: 1,
        notice: Notice::NotReceiving
    }));
}

#[test]
fn a_leased_piece_a_peer_failed_to_deliver_goes_back_to_the_mirror() {
    let mut n = node(4, &[], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    // The peer offers piece 2 before the lease for it arrives.
    handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: 2,
        },
    );
    let a = handle(
        &mut n,
        ms(1),
        Event::Fresh {
            task: T,
            pieces: vec![2, 3],
            all_released: false,
            move_on: false,
        },
    );
    assert_eq!(
        fetches(&a),
        vec![(3, 1)],
        "piece 2 is coming from the peer: {a:?}"
    );
    // The peer goes away without it: the lease is this node's to fill.
    let a = handle(&mut n, ms(2), Event::Gone { peer: 1 });
    assert_eq!(fetches(&a), vec![(2, 1)], "{a:?}");
}

#[test]
fn a_peer_gets_no_more_accepted_at_once_than_a_lane_carries() {
    let mut n = node(
        8,
        &[],
        Mode::P2p,
        &[(1, &[0, 1, 2, 3, 4, 5, 6, 7]), (2, &[7])],
    );
    let per_lane = Tunables::default().lookahead + 1;
    for piece in 0..per_lane {
        let a = handle(
            &mut n,
            ms(0),
            Event::Offered {
                peer: 1,
                task: T,
                piece,
            },
        );
        assert!(
            a.contains(&Action::Accept {
                peer: 1,
                task: T,
                piece
            }),
            "{a:?}"
        );
    }
    let a = handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 1,
            task: T,
            piece: per_lane,
        },
    );
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Refuse {
                why: Refusal::Busy,
                ..
            }
        )),
        "{a:?}"
    );
    // Another peer is not held back by it.
    let a = handle(
        &mut n,
        ms(0),
        Event::Offered {
            peer: 2,
            task: T,
            piece: 7,
        },
    );
    assert!(
        a.contains(&Action::Accept {
            peer: 2,
            task: T,
            piece: 7
        }),
        "{a:?}"
    );
}

#[test]
fn a_p2p_download_that_gets_nothing_for_stall_takes_one_piece_from_the_mirror() {
    let stall = Tunables::default().stall;
    let mut n = node(4, &[1], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    let a = decide(&mut n, ms(0));
    assert!(fetches(&a).is_empty(), "{a:?}");
    let mut out = Vec::new();
    n.tick(stall - ms(1), &mut out);
    assert!(fetches(&out).is_empty(), "rescued before stall: {out:?}");
    let mut out = Vec::new();
    n.tick(stall, &mut out);
    assert_eq!(fetches(&out), vec![(0, 1)], "{out:?}");
    assert_eq!(whys(&out), vec![MirrorWhy::Rescue]);
}

#[test]
fn after_a_peer_overtakes_the_mirrors_help_the_next_help_waits_a_piece_time() {
    let mut n = node(8, &[0], Mode::P2p, &[(1, &[0, 1, 2, 3, 4, 5, 6, 7])]);
    let a = handle(
        &mut n,
        ms(0),
        Event::Fresh {
            task: T,
            pieces: vec![],
            all_released: true,
            move_on: true,
        },
    );
    let f = fetches(&a);
    assert_eq!(f.len(), 1, "{a:?}");
    let a = handle(
        &mut n,
        ms(1),
        Event::Offered {
            peer: 1,
            task: T,
            piece: f[0].0,
        },
    );
    assert!(
        a.contains(&Action::CancelMirror {
            task: T,
            first: f[0].0
        }),
        "{a:?}"
    );
    assert!(
        fetches(&a).is_empty(),
        "a help range replaced at once, to be overtaken again: {a:?}"
    );
    // No push measured yet: 50 ms.
    let wake = n.next_wakeup().expect("a wake-up for the help");
    assert_eq!(wake, ms(51));
    let mut out = Vec::new();
    n.tick(ms(50), &mut out);
    assert!(fetches(&out).is_empty(), "{out:?}");
    let mut out = Vec::new();
    n.tick(wake, &mut out);
    assert_eq!(fetches(&out).len(), 1, "{out:?}");
    assert_eq!(whys(&out), vec![MirrorWhy::Assist]);
}

#[test]
fn a_node_may_move_on_once_every_blob_it_pulls_is_leased_or_released() {
    const U: TaskId = 8;
    let mut n = node(4, &[], Mode::P2p, &[(1, &[])]);
    open_empty(&mut n, U, 4);
    assert!(!n.may_move_on());
    let fresh = |task, all_released, move_on| Event::Fresh {
        task,
        pieces: vec![],
        all_released,
        move_on,
    };
    handle(&mut n, ms(1), fresh(T, false, true));
    assert!(!n.may_move_on(), "blob U still waits for first holders");
    assert!(!n.released(), "leased is not released: no tail help yet");
    handle(&mut n, ms(2), fresh(U, true, true));
    assert!(n.may_move_on());
    assert!(
        !n.released(),
        "T's leased pieces are still on their way from the mirror"
    );
    // Once T is released too, the mirror may help both tails.
    handle(&mut n, ms(3), fresh(T, true, true));
    assert!(n.released());
}

#[test]
fn a_blob_closed_with_pushes_queued_on_a_lane_leaves_the_lane_free() {
    const U: TaskId = 8;
    let mut n = node(4, &[0, 1], Mode::P2p, &[(2, &[])]);
    let o = offers(&decide(&mut n, ms(0)));
    assert_eq!(o.len(), 2, "{o:?}");
    for (at, (_, piece)) in o.iter().enumerate() {
        handle(
            &mut n,
            ms(5 + at as u64),
            Event::Accepted {
                peer: 2,
                task: T,
                piece: *piece,
            },
        );
    }
    // The blob closes here with the second push queued behind the first.
    handle(&mut n, ms(10), Event::Close { task: T });
    let a = handle(
        &mut n,
        ms(20),
        Event::Pushed {
            peer: 2,
            task: T,
            piece: o[0].1,
        },
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::Push { task: T, .. })),
        "no push of a closed blob: {a:?}"
    );
    // The lane carries another blob's pieces.
    let mut out = Vec::new();
    n.handle(
        ms(30),
        Event::Open {
            task: U,
            pieces: 2,
            piece_len: 1 << 20,
            have: set(2, &[0, 1]),
            mode: Mode::P2p,
        },
        &mut out,
    );
    let a = handle(
        &mut n,
        ms(30),
        Event::Joined {
            peer: 2,
            task: U,
            have: set(2, &[]),
            receiving: PieceSet::empty(2),
        },
    );
    let offered: Vec<_> = a
        .iter()
        .filter(|x| matches!(x, Action::Offer { task: U, .. }))
        .collect();
    assert_eq!(offered.len(), 2, "{a:?}");
}

/// The scheduler says every piece is in the pool.
fn all_released(n: &mut Node, at: Duration) -> Vec<Action> {
    handle(
        n,
        at,
        Event::Fresh {
            task: T,
            pieces: vec![],
            all_released: true,
            move_on: true,
        },
    )
}

/// `peer` offers `piece` at `at`.
fn offered(n: &mut Node, at: Duration, peer: PeerId, piece: u32) -> Vec<Action> {
    handle(
        n,
        at,
        Event::Offered {
            peer,
            task: T,
            piece,
        },
    )
}

/// The mirror's transfer of `piece` has brought `bytes` by `at`.
fn progress(n: &mut Node, at: Duration, piece: u32, bytes: u64) {
    handle(
        n,
        at,
        Event::Progress {
            task: T,
            piece,
            bytes,
        },
    );
}

#[test]
fn help_that_is_moving_keeps_its_piece_unless_a_peer_is_far_sooner() {
    let mut n = node(4, &[0], Mode::P2p, &[(1, &[0, 1, 2, 3])]);
    let f = fetches(&all_released(&mut n, ms(0)));
    assert_eq!(f.len(), 1, "{f:?}");
    let help = f[0].0;
    // A push from the peer measures its rate: 1 MiB in 100 ms.
    let q = (1..4).find(|&p| p != help).expect("another missing piece");
    let a = offered(&mut n, ms(10), 1, q);
    assert!(
        a.contains(&Action::Accept {
            peer: 1,
            task: T,
            piece: q
        }),
        "{a:?}"
    );
    let from = From::Peer(1);
    handle(
        &mut n,
        ms(110),
        Event::Done {
            task: T,
            piece: q,
            from,
        },
    );
    // Half the piece came from the mirror in 200 ms: 200 ms to go, against 100 ms for a push.
    progress(&mut n, ms(200), help, 512 * 1024);
    let a = offered(&mut n, ms(200), 1, help);
    let why = Refusal::Receiving;
    assert!(
        a.contains(&Action::Refuse {
            peer: 1,
            task: T,
            piece: help,
            why
        }),
        "the mirror's bytes so far are not thrown away for a push only twice as quick: {a:?}"
    );
    assert!(!a.iter().any(|x| matches!(x, Action::CancelMirror { .. })));
    // Much later with next to nothing more: the help crawls, and the peer takes the piece.
    progress(&mut n, ms(20_000), help, 520 * 1024);
    let a = offered(&mut n, ms(20_000), 1, help);
    assert!(
        a.contains(&Action::CancelMirror {
            task: T,
            first: help
        }),
        "{a:?}"
    );
}

fn offered_tasks(actions: &[Action]) -> Vec<TaskId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Offer { task, .. } => Some(*task),
            _ => None,
        })
        .collect()
}

/// A blob opened earlier moves first: a client such as skopeo reads an image's layers in
/// order and waits for the first, while the agent fetches the later ones ahead.
#[test]
fn a_lane_moves_the_blob_opened_first_before_later_ones() {
    const U: TaskId = 8;
    // Peer 2 holds one piece of the first blob and none of the second (holding least would
    // pick the second); peer 3 holds both, so no piece here is held here alone.
    let mut n = node(
        4,
        &[0, 1, 2, 3],
        Mode::P2p,
        &[(2, &[0]), (3, &[0, 1, 2, 3])],
    );
    open(
        &mut n,
        U,
        4,
        &[0, 1, 2, 3],
        Mode::P2p,
        &[(2, &[]), (3, &[0, 1, 2, 3])],
    );
    let tasks = offered_tasks(&decide(&mut n, ms(1)));
    assert_eq!(tasks, vec![T, T], "the first blob's pieces go first");
}

/// A piece nobody else holds moves first whatever its blob: held back behind an earlier blob,
/// it would be the pool's tail, with this one uplink to serve it.
#[test]
fn a_piece_held_here_alone_moves_before_an_earlier_blobs_pieces() {
    const U: TaskId = 8;
    let mut n = node(
        4,
        &[0, 1, 2, 3],
        Mode::P2p,
        &[(2, &[0]), (3, &[0, 1, 2, 3])],
    );
    // Piece 0 of the later blob came from the mirror: nobody else has it.
    open(&mut n, U, 4, &[0], Mode::P2p, &[(2, &[]), (3, &[])]);
    let tasks = offered_tasks(&decide(&mut n, ms(1)));
    assert_eq!(tasks.first(), Some(&U), "{tasks:?}");
    assert!(tasks.contains(&T), "the earlier blob follows: {tasks:?}");
}

/// Help is shared out over the pool: with 15 members each node keeps at most two help ranges
/// on the mirror's uplink (32 for the pool, as many as its leases), whatever its window.
#[test]
fn help_at_once_shrinks_with_the_pool() {
    let all: Vec<u32> = (0..64).collect();
    let members: Vec<(PeerId, &[u32])> = (1..=15).map(|p| (p, &all[..])).collect();
    let mut n = node(64, &[0], Mode::P2p, &members);
    let f = fetches(&all_released(&mut n, ms(0)));
    assert_eq!(f.len(), 1, "{f:?}");
    let done = |n: &mut Node, at: u64, piece: u32| {
        fetches(&handle(
            n,
            ms(at),
            Event::Done {
                task: T,
                piece,
                from: From::Mirror,
            },
        ))
    };
    let f = done(&mut n, 10, f[0].0);
    assert_eq!(f.len(), 2, "one arrived: two at once {f:?}");
    // Another arrives: the window is three, but two are the most at once.
    let g = done(&mut n, 20, f[0].0);
    assert_eq!(g.len(), 1, "{g:?}");
    let g = done(&mut n, 30, g[0].0);
    assert_eq!(g.len(), 1, "{g:?}");
}

/// Feeds `n` (holding blob `T` whole) to peers that accept every offer, its uplink ending one
/// push every `step` (the pushes under way share it: the oldest ends first), for `steps` steps
/// from `from`; returns the lanes in use and the lanes allowed at each step.
fn upload(
    n: &mut Node,
    from: Duration,
    step: Duration,
    steps: u32,
    pushing: &mut std::collections::VecDeque<(PeerId, u32)>,
) -> Vec<(u32, u32)> {
    let mut in_use = Vec::new();
    let mut now = from;
    let mut acts = decide(n, now);
    for _ in 0..steps {
        while let Some(a) = acts.pop() {
            match a {
                Action::Offer { peer, task, piece } => {
                    acts.extend(handle(n, now, Event::Accepted { peer, task, piece }))
                }
                Action::Push { peer, piece, .. } => pushing.push_back((peer, piece)),
                _ => {}
            }
        }
        in_use.push((n.uploading(), n.lanes()));
        now += step;
        acts = match pushing.pop_front() {
            Some((peer, piece)) => handle(
                n,
                now,
                Event::Pushed {
                    peer,
                    task: T,
                    piece,
                },
            ),
            None => decide(n, now),
        };
    }
    in_use
}

/// Opens blob `T` (4,000 pieces of 1 MiB, all held) in a node with `lane_rate`, for six
/// peers that hold none of it.
fn holder_of_all(lane_rate: u64) -> Node {
    let mut n = Node::new(
        Tunables {
            lane_rate,
            ..Tunables::default()
        },
        42,
    );
    reopen(&mut n);
    n
}

fn reopen(n: &mut Node) {
    let all: Vec<u32> = (0..4000).collect();
    let peers: Vec<(PeerId, &[u32])> = (1..=6).map(|p| (p, &[][..])).collect();
    open(n, T, 4000, &all, Mode::P2p, &peers);
}

#[test]
fn a_thin_uplink_pushes_on_fewer_lanes_and_a_faster_one_opens_them_again() {
    // Lanes should get 512 KiB/s each.
    let mut n = holder_of_all(512 << 10);
    let mut pushing = std::collections::VecDeque::new();
    // The uplink sends 1 MiB/s: room for two such lanes, not six.
    let used = upload(&mut n, ms(0), ms(1000), 40, &mut pushing);
    assert_eq!(used[0].0, 6, "every peer's lane opens at first: {used:?}");
    assert_eq!(n.lanes(), 2, "{used:?}");
    assert!(used[30..].iter().all(|&(u, _)| u <= 2), "{used:?}");
    // The same node on a fast uplink (100 MiB/s) opens every lane again.
    let used = upload(&mut n, ms(40_000), ms(10), 400, &mut pushing);
    assert_eq!(n.lanes(), Tunables::default().upload_slots, "{used:?}");
    assert_eq!(used.last().map(|u| u.0), Some(6), "{used:?}");
}

#[test]
fn a_fast_uplink_keeps_every_lane() {
    let mut n = holder_of_all(Tunables::default().lane_rate);
    let mut pushing = std::collections::VecDeque::new();
    // 1 MiB pieces at 50 MiB/s.
    let used = upload(&mut n, ms(0), ms(20), 500, &mut pushing);
    assert_eq!(n.lanes(), Tunables::default().upload_slots);
    assert!(used.iter().all(|&(u, _)| u == 6), "{used:?}");
}

#[test]
fn offers_left_unanswered_for_stall_free_the_lane() {
    // One lane: the first peer offered to never answers.
    let cfg = Tunables {
        upload_slots: 1,
        ..Tunables::default()
    };
    let stall = cfg.stall;
    let mut n = Node::new(cfg, 42);
    open(
        &mut n,
        T,
        4,
        &[0, 1, 2, 3],
        Mode::P2p,
        &[(1, &[]), (2, &[])],
    );
    let first = offers(&decide(&mut n, ms(0)));
    let silent = first[0].0;
    assert!(first.iter().all(|&(p, _)| p == silent), "{first:?}");
    let other = 3 - silent;
    let mut out = Vec::new();
    n.tick(stall - ms(1), &mut out);
    assert!(offers(&out).is_empty(), "the lane still waits: {out:?}");
    let mut out = Vec::new();
    n.tick(stall, &mut out);
    assert!(
        offers(&out).iter().any(|&(p, _)| p == other),
        "the lane is free for the other peer: {out:?}"
    );
    // An answer that comes after all is told the piece will not come.
    let late = handle(
        &mut n,
        stall + ms(5),
        Event::Accepted {
            peer: silent,
            task: T,
            piece: first[0].1,
        },
    );
    assert!(
        late.contains(&Action::Withdraw {
            peer: silent,
            task: T,
            piece: first[0].1
        }),
        "{late:?}"
    );
}

#[test]
fn a_node_back_from_idle_measures_its_uplink_afresh() {
    // Lanes should get 1 MiB/s each.
    let mut n = holder_of_all(1 << 20);
    let mut pushing = std::collections::VecDeque::new();
    // 50 MiB/s for 3 s, then the blob closes and the node idles for a minute.
    upload(&mut n, ms(0), ms(20), 150, &mut pushing);
    assert_eq!(n.lanes(), Tunables::default().upload_slots);
    let mut out = Vec::new();
    n.handle(ms(3_000), Event::Close { task: T }, &mut out);
    // Its pushes under way end as pushes do.
    pushing.clear();
    let under_way: Vec<(PeerId, u32)> = n
        .peers
        .iter()
        .filter_map(|(&peer, p)| p.lane.push.map(|(_, piece)| (peer, piece)))
        .collect();
    for (peer, piece) in under_way {
        n.handle(
            ms(3_000),
            Event::Pushed {
                peer,
                task: T,
                piece,
            },
            &mut out,
        );
    }
    n.decide(ms(3_000), &mut out);
    assert_eq!(n.uploading(), 0);
    reopen(&mut n);
    // The next blob's first pushes end within the span: what the span holds then is not
    // the uplink's rate (one piece in 2 s), so no lane closes on it.
    let used = upload(&mut n, ms(63_000), ms(20), 150, &mut pushing);
    let slots = Tunables::default().upload_slots;
    assert!(used.iter().all(|&(_, l)| l == slots), "{used:?}");
}
