//! The v2 fresh requests held open until a lease is granted to them: one slot per (blob,
//! group of pools, peer). The registry stays pure and returns the grants it makes; the server
//! hands each to the slot it names here, always with the registry locked first, so a grant can
//! never be made between a request's ask and its slot opening.
//!
//! ```text
//!   fresh (wait) ──registry: no grant now──> slot opens ──grant delivered──> answered
//!        │                                       ├──a newer request of the peer──> answered empty
//!        │                                       └──2 s──> answered empty, Releases::cancel
//!   a grant whose request went away is kept (pending) for the peer's next request
//! ```

use crate::api_v2::FreshResponse;
use crate::registry::{Delivery, WaitKey};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

enum Slot {
    Waiting {
        id: u64,
        tx: oneshot::Sender<FreshResponse>,
    },
    /// A grant whose request had gone: the peer's next request gets it.
    Pending { answer: FreshResponse, at: Instant },
}

#[derive(Default)]
pub(crate) struct Waiters {
    slots: HashMap<WaitKey, Slot>,
    /// Waiting slots per blob.
    per_blob: HashMap<String, usize>,
    waiting: usize,
    next_id: u64,
}

fn merge(into: &mut FreshResponse, more: FreshResponse) {
    into.pieces.extend(more.pieces);
    into.all_released |= more.all_released;
    into.move_on |= more.move_on;
}

impl Waiters {
    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Requests waiting for fresh pieces of `digest`.
    pub fn waiting_for(&self, digest: &str) -> usize {
        self.per_blob.get(digest).copied().unwrap_or(0)
    }

    fn count(&mut self, digest: &str, up: bool) {
        let n = self.per_blob.entry(digest.to_string()).or_default();
        if up {
            *n += 1;
            self.waiting += 1;
        } else {
            *n = n.saturating_sub(1);
            self.waiting = self.waiting.saturating_sub(1);
            if *n == 0 {
                self.per_blob.remove(digest);
            }
        }
    }

    /// A new request of `key`'s peer: an older one still waiting is answered empty at once;
    /// returns what was kept for it.
    pub fn replace(&mut self, key: &WaitKey) -> Option<FreshResponse> {
        match self.slots.remove(key)? {
            Slot::Waiting { tx, .. } => {
                self.count(&key.digest, false);
                let _ = tx.send(FreshResponse::default());
                None
            }
            Slot::Pending { answer, .. } => Some(answer),
        }
    }

    /// Opens the slot of `key` (call [`Waiters::replace`] first).
    pub fn wait(&mut self, key: WaitKey) -> (u64, oneshot::Receiver<FreshResponse>) {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        self.count(&key.digest, true);
        self.slots.insert(key, Slot::Waiting { id, tx });
        (id, rx)
    }

    /// Request `id` stops waiting. True when its slot was still open (no grant reached it):
    /// the caller then cancels its wait in the registry.
    pub fn end(&mut self, key: &WaitKey, id: u64) -> bool {
        match self.slots.get(key) {
            Some(Slot::Waiting { id: open, .. }) if *open == id => {
                self.slots.remove(key);
                self.count(&key.digest, false);
                true
            }
            _ => false,
        }
    }

    /// Hands a grant to the request waiting for it, or keeps it for the peer's next request.
    pub fn deliver(&mut self, d: Delivery, now: Instant) {
        self.hand(WaitKey::from(&d), FreshResponse::from(d.grant), now);
    }

    /// Hands `answer` to the request waiting under `key`, or keeps it (added to anything kept
    /// already) for the peer's next request: a grant that reached a request that went away
    /// unanswered is not lost.
    pub fn hand(&mut self, key: WaitKey, mut answer: FreshResponse, now: Instant) {
        if answer.pieces.is_empty() && !answer.all_released {
            return;
        }
        match self.slots.remove(&key) {
            Some(Slot::Waiting { tx, .. }) => {
                self.count(&key.digest, false);
                match tx.send(answer) {
                    Ok(()) => return,
                    Err(back) => answer = back,
                }
            }
            Some(Slot::Pending {
                answer: mut kept, ..
            }) => {
                merge(&mut kept, answer);
                answer = kept;
            }
            None => {}
        }
        self.slots.insert(key, Slot::Pending { answer, at: now });
    }

    /// Drops kept grants older than `age`: their leases have lapsed and gone to others.
    pub fn prune(&mut self, now: Instant, age: Duration) {
        self.slots.retain(|_, s| match s {
            Slot::Pending { at, .. } => now.saturating_duration_since(*at) < age,
            Slot::Waiting { .. } => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm::Grant;

    fn key(holder: u64) -> WaitKey {
        WaitKey {
            digest: "d".into(),
            group: 0,
            holder,
        }
    }

    fn grant(holder: u64, pieces: Vec<u32>) -> Delivery {
        Delivery {
            digest: "d".into(),
            group: 0,
            holder,
            grant: Grant {
                pieces,
                all_released: false,
                move_on: false,
            },
        }
    }

    #[test]
    fn a_grant_reaches_the_waiting_request() {
        let mut w = Waiters::default();
        let (_, mut rx) = w.wait(key(1));
        assert_eq!(w.waiting_for("d"), 1);
        w.deliver(grant(1, vec![3]), Instant::now());
        assert_eq!(rx.try_recv().ok().map(|a| a.pieces), Some(vec![3]));
        assert_eq!(w.waiting(), 0);
    }

    #[test]
    fn a_newer_request_answers_the_older_one_empty() {
        let mut w = Waiters::default();
        let (old, mut old_rx) = w.wait(key(1));
        assert!(w.replace(&key(1)).is_none());
        assert_eq!(old_rx.try_recv().ok(), Some(FreshResponse::default()));
        let (_, mut rx) = w.wait(key(1));
        assert!(!w.end(&key(1), old), "the old request's slot is gone");
        w.deliver(grant(1, vec![5]), Instant::now());
        assert_eq!(rx.try_recv().ok().map(|a| a.pieces), Some(vec![5]));
    }

    #[test]
    fn a_grant_whose_request_went_away_is_kept_for_the_next_one() {
        let mut w = Waiters::default();
        let (_, rx) = w.wait(key(1));
        drop(rx);
        let t0 = Instant::now();
        w.deliver(grant(1, vec![2]), t0);
        w.deliver(grant(1, vec![7]), t0);
        assert_eq!(w.waiting(), 0);
        assert_eq!(w.replace(&key(1)).map(|a| a.pieces), Some(vec![2, 7]));
        w.deliver(grant(2, vec![9]), t0);
        w.prune(t0 + Duration::from_secs(16), Duration::from_secs(15));
        assert!(w.replace(&key(2)).is_none(), "lapsed with its lease");
    }

    #[test]
    fn ending_an_answered_request_leaves_nothing_to_cancel() {
        let mut w = Waiters::default();
        let (id, _rx) = w.wait(key(1));
        w.deliver(grant(1, vec![0]), Instant::now());
        assert!(!w.end(&key(1), id));
        let (id, _rx) = w.wait(key(1));
        assert!(w.end(&key(1), id));
        assert_eq!(w.waiting_for("d"), 0);
    }
}
