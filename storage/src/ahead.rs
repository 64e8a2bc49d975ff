//! Working ahead of a client that pulls an image's blobs one after another.
//!
//! skopeo into `dir:` asks for an image's blobs one at a time, each once the one before it has
//! streamed whole. Left to that pace, every blob's swarm ends with a tail (the last pieces
//! spreading, the client's stream draining) during which the mirror's uplink and the origin's
//! idle, and the next blob's first byte waits for the client's request and the mirror's
//! fetch: about a second per layer on the fan-out bed (docs/benchmarks.md).
//!
//! So the agent and the mirror remember the blobs of the image manifests they serve, in the
//! order skopeo asks for them (layers, then config), and which were asked for. While the blobs
//! asked for are the image's first ones, in order, the next blob nobody asked for yet may be
//! started ahead: a client that took each blob so far in order will ask for the rest.
//!
//! - The agent ([`Ahead::for_client`]) starts it once what its node pulls is leased to
//!   first holders but for what the mirror sends in about half a second
//!   (`swarm::Node::may_move_on`), and may run ahead of the client by
//!   several blobs, one at a time.
//!   A manifest asked for again starts the image's record afresh (a new pull).
//! - The mirror ([`Ahead::for_pool`]) fetches it from upstream once the blob before it is in,
//!   so the origin's link moves on to it at once; what the pool's members ask for adds up,
//!   and it runs at most one blob ahead of them.
//!
//! A client that holds some blobs already (containerd asks only for what it lacks) has asked
//! for no prefix of the image, or stops being one as it skips a blob, and is not worked ahead
//! of from then on: at most the blobs between its last request in order and its first skip
//! are fetched without being asked for. (containerd takes the config first and several
//! layers at once, and so is never worked ahead of; it needs it least.) A blob started ahead
//! is fetched with the credentials the client sent with the manifest (kept in `C`), and the
//! client's own request is checked again.
//!
//! ```text
//!   client ──GET manifest──> agent ──relay──> mirror      Ahead::manifest: blobs in order
//!   client ──GET blob k──> agent ──pieces──> mirror       Ahead::requested(k)
//!   agent: what this node pulls is (nearly) all leased ──> Ahead::next: blob k+1
//!   mirror: blob k in from upstream ──> Ahead::next: blob k+1
//!       ──> access check with the client's credentials ──> fetch, as if asked
//! ```

use serde::Deserialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::reference::Digest;

/// Images remembered at once (the newest kept).
const IMAGES: usize = 16;
/// An image's record is forgotten this long after its manifest was last served.
pub const KEEP: Duration = Duration::from_secs(600);
/// Blobs per manifest that are followed; a larger manifest is not worked ahead of.
const MAX_BLOBS: usize = 1024;

/// A blob to start ahead of the client.
#[derive(Clone)]
pub struct Next<C> {
    pub ns: Option<String>,
    pub repo: String,
    pub digest: Digest,
    /// What the image's record keeps for its blobs' fetches (the client's credentials).
    pub ctx: C,
}

struct Image<C> {
    ns: Option<String>,
    repo: String,
    blobs: Vec<Digest>,
    requested: Vec<bool>,
    started: Vec<bool>,
    at: Instant,
    ctx: C,
}

/// The image manifests served lately, newest last.
pub struct Ahead<C> {
    images: VecDeque<Image<C>>,
    /// Blobs started ahead and not asked for yet, at most, before another is started.
    most_ahead: usize,
    /// A manifest served again starts its image's record afresh.
    restart: bool,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

impl<C: Clone> Ahead<C> {
    /// One client's agent: each pull of a manifest starts afresh; any number of blobs ahead,
    /// one at a time as the caller asks.
    pub fn for_client() -> Self {
        Ahead {
            images: VecDeque::new(),
            most_ahead: usize::MAX,
            restart: true,
        }
    }

    /// A pool's mirror: every member's requests add up; at most one blob ahead of them.
    pub fn for_pool() -> Self {
        Ahead {
            images: VecDeque::new(),
            most_ahead: 1,
            restart: false,
        }
    }

    /// An image manifest served: its layers and then its config, in the order a client that
    /// pulls one at a time (skopeo) asks for them. Anything else (an index, a manifest that
    /// does not parse, one with a bad digest) is ignored.
    pub fn manifest(&mut self, ns: Option<&str>, repo: &str, body: &[u8], ctx: C, now: Instant) {
        let Ok(m) = serde_json::from_slice::<Manifest>(body) else {
            return;
        };
        let Some(layers) = m.layers else {
            return;
        };
        // skopeo asks for the layers in order and the config last; containerd takes the
        // config first, then the layers it lacks, a few at once.
        let blobs: Option<Vec<Digest>> = layers
            .into_iter()
            .chain(m.config)
            .map(|d| Digest::parse(&d.digest).ok())
            .collect();
        let Some(blobs) = blobs.filter(|b| b.len() >= 2 && b.len() <= MAX_BLOBS) else {
            return;
        };
        self.expire(now);
        let same = |i: &Image<C>| i.ns.as_deref() == ns && i.repo == repo && i.blobs == blobs;
        if !self.restart {
            if let Some(k) = self.images.iter().position(same) {
                if let Some(mut image) = self.images.remove(k) {
                    image.at = now;
                    image.ctx = ctx;
                    self.images.push_back(image);
                }
                return;
            }
        }
        self.images.retain(|i| !same(i));
        if self.images.len() >= IMAGES {
            self.images.pop_front();
        }
        let n = blobs.len();
        tracing::debug!(
            repo,
            blobs = n,
            "image manifest served: its blobs may be started ahead"
        );
        self.images.push_back(Image {
            ns: ns.map(str::to_owned),
            repo: repo.to_owned(),
            blobs,
            requested: vec![false; n],
            started: vec![false; n],
            at: now,
            ctx,
        });
    }

    /// A blob was asked for (a GET, not a HEAD); `touch` sees the record of each image it
    /// belongs to (the agent keeps the trace of the client's latest request there). Whether
    /// it was asked for the first time: only then can [`Ahead::next`] answer differently.
    pub fn requested(
        &mut self,
        ns: Option<&str>,
        repo: &str,
        digest: &Digest,
        mut touch: impl FnMut(&mut C),
    ) -> bool {
        let mut first = false;
        for image in &mut self.images {
            if image.ns.as_deref() != ns || image.repo != repo {
                continue;
            }
            for (k, blob) in image.blobs.iter().enumerate() {
                if blob == digest {
                    first |= !std::mem::replace(&mut image.requested[k], true);
                    touch(&mut image.ctx);
                }
            }
        }
        first
    }

    /// Whether [`Ahead::next`] has a blob to start, now or once one started ahead is asked
    /// for, in an image whose record `live` accepts (the caller's test that its client still
    /// pulls): the client pulls an image blob by blob and has not reached its end.
    pub fn pending(&self, now: Instant, live: impl Fn(&C) -> bool) -> bool {
        self.images.iter().any(|image| {
            let asked = image.requested.iter().take_while(|r| **r).count();
            now.saturating_duration_since(image.at) < KEEP
                && live(&image.ctx)
                && asked > 0
                && !image.requested[asked..].iter().any(|r| *r)
                && image.started[asked..].iter().any(|s| !*s)
        })
    }

    /// The next blob to start ahead, if any: newest image first, while the blobs asked for
    /// are the first ones in order (and at least one), the first blob after them not started
    /// ahead yet, unless as many as allowed are started and not asked for.
    pub fn next(&mut self, now: Instant) -> Option<Next<C>> {
        self.expire(now);
        for image in self.images.iter_mut().rev() {
            let asked = image.requested.iter().take_while(|r| **r).count();
            if asked == 0 || image.requested[asked..].iter().any(|r| *r) {
                continue;
            }
            let ahead = image.started[asked..].iter().filter(|s| **s).count();
            if ahead >= self.most_ahead {
                continue;
            }
            let Some(k) = (asked..image.blobs.len()).find(|&k| !image.started[k]) else {
                continue;
            };
            image.started[k] = true;
            return Some(Next {
                ns: image.ns.clone(),
                repo: image.repo.clone(),
                digest: image.blobs[k].clone(),
                ctx: image.ctx.clone(),
            });
        }
        None
    }

    fn expire(&mut self, now: Instant) {
        self.images
            .retain(|i| now.saturating_duration_since(i.at) < KEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", hex::encode([n; 32]))).expect("a digest")
    }

    /// A manifest of these layers, in order, and then the last as its config.
    fn manifest(blobs: &[u8]) -> Vec<u8> {
        let d = |n: &u8| format!(r#"{{"mediaType":"x","digest":"{}","size":1}}"#, digest(*n));
        let (config, layers) = blobs.split_last().expect("a config");
        let layers: Vec<String> = layers.iter().map(d).collect();
        format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
            d(config),
            layers.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn the_blob_after_those_asked_for_in_order_is_started_once() {
        let now = Instant::now();
        let mut a = Ahead::<Option<&str>>::for_client();
        a.manifest(None, "app", &manifest(&[1, 2, 3]), Some("Basic eDp5"), now);
        assert!(
            a.next(now).is_none(),
            "nothing asked for yet: the client may hold it all"
        );
        a.requested(None, "app", &digest(1), |_| {});
        let next = a.next(now).expect("a blob to start ahead");
        assert_eq!(next.digest, digest(2));
        assert_eq!(next.ctx, Some("Basic eDp5"));
        assert_eq!(next.repo, "app");
        assert_eq!(
            a.next(now).expect("a blob to start ahead").digest,
            digest(3),
            "then the one after"
        );
        assert!(a.next(now).is_none(), "each blob once");
        a.requested(None, "app", &digest(2), |_| {});
        a.requested(None, "app", &digest(3), |_| {});
        assert!(a.next(now).is_none(), "every blob asked for");
    }

    #[test]
    fn pending_until_the_last_blob_is_started() {
        let now = Instant::now();
        let any = |_: &Option<&str>| true;
        let mut a = Ahead::<Option<&str>>::for_client();
        a.manifest(None, "app", &manifest(&[1, 2, 3]), None, now);
        assert!(
            !a.pending(now, any),
            "nothing asked for: maybe nothing will be"
        );
        a.requested(None, "app", &digest(1), |_| {});
        assert!(a.pending(now, any));
        assert!(!a.pending(now, |_| false), "a client that stopped pulling");
        a.next(now).expect("blob 2");
        assert!(a.pending(now, any), "blob 3 is still to start");
        a.next(now).expect("blob 3");
        assert!(!a.pending(now, any), "every blob started");
        let mut b = Ahead::<Option<&str>>::for_client();
        b.manifest(None, "app", &manifest(&[1, 2, 3]), None, now);
        b.requested(None, "app", &digest(2), |_| {});
        assert!(
            !b.pending(now, any),
            "a client that skipped a blob is not worked ahead of"
        );
        assert!(!a.pending(now + KEEP, any), "a forgotten image");
    }

    #[test]
    fn a_client_that_skips_a_blob_gets_nothing_started_ahead() {
        let now = Instant::now();
        let mut a = Ahead::<Option<&str>>::for_client();
        a.manifest(None, "app", &manifest(&[1, 2, 3, 4]), None, now);
        a.requested(None, "app", &digest(1), |_| {});
        a.requested(None, "app", &digest(3), |_| {});
        assert!(
            a.next(now).is_none(),
            "the client holds blob 2, or asks out of order"
        );
        let mut b = Ahead::<Option<&str>>::for_client();
        b.manifest(None, "app", &manifest(&[1, 2, 3, 4]), None, now);
        b.requested(None, "app", &digest(1), |_| {});
        assert_eq!(
            b.next(now).expect("a blob to start ahead").digest,
            digest(2)
        );
        b.requested(None, "app", &digest(3), |_| {});
        assert!(
            b.next(now).is_none(),
            "blob 2 started ahead, then skipped: no more"
        );
    }

    #[test]
    fn another_registry_or_repository_asking_for_the_digest_does_not_count() {
        let now = Instant::now();
        let mut a = Ahead::<Option<&str>>::for_client();
        a.manifest(Some("reg.example"), "app", &manifest(&[1, 2]), None, now);
        a.requested(None, "app", &digest(1), |_| {});
        a.requested(Some("reg.example"), "other", &digest(1), |_| {});
        assert!(a.next(now).is_none());
        a.requested(Some("reg.example"), "app", &digest(1), |_| {});
        let next = a.next(now).expect("a blob to start ahead");
        assert_eq!(next.ns.as_deref(), Some("reg.example"));
    }

    #[test]
    fn indexes_bad_manifests_and_old_images_are_not_followed() {
        let now = Instant::now();
        let mut a = Ahead::<Option<&str>>::for_client();
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:00","size":1}]}"#;
        a.manifest(None, "app", index, None, now);
        a.manifest(None, "app", b"not json", None, now);
        let bad = br#"{"config":{"digest":"md5:x"},"layers":[{"digest":"sha256:zz"}]}"#;
        a.manifest(None, "app", bad, None, now);
        assert!(a.images.is_empty());
        a.manifest(None, "app", &manifest(&[1, 2]), None, now);
        a.requested(None, "app", &digest(1), |_| {});
        assert!(a.next(now + KEEP).is_none(), "forgotten after KEEP");
    }

    #[test]
    fn the_newest_images_are_kept() {
        let now = Instant::now();
        let mut a = Ahead::<Option<&str>>::for_client();
        for n in 0..(IMAGES as u8 + 4) {
            a.manifest(None, "app", &manifest(&[n * 2 + 1, n * 2 + 2]), None, now);
        }
        assert_eq!(a.images.len(), IMAGES);
        a.requested(None, "app", &digest(1), |_| {});
        assert!(a.next(now).is_none(), "the oldest image was dropped");
        let last = IMAGES as u8 + 3;
        a.requested(None, "app", &digest(last * 2 + 1), |_| {});
        assert_eq!(
            a.next(now).expect("a blob to start ahead").digest,
            digest(last * 2 + 2)
        );
    }

    #[test]
    fn a_pool_adds_up_its_members_requests_and_runs_one_blob_ahead() {
        let now = Instant::now();
        let mut m = Ahead::<&str>::for_pool();
        m.manifest(
            Some("reg"),
            "app",
            &manifest(&[1, 2, 3, 4, 5]),
            "first",
            now,
        );
        assert!(m.requested(Some("reg"), "app", &digest(1), |_| {}));
        assert!(
            !m.requested(Some("reg"), "app", &digest(1), |_| {}),
            "asked for again: nothing new"
        );
        // A second member gets the manifest: the pool's record is kept, its credentials too.
        m.manifest(
            Some("reg"),
            "app",
            &manifest(&[1, 2, 3, 4, 5]),
            "second",
            now,
        );
        let next = m.next(now).expect("blob 2, ahead of the pool");
        assert_eq!((next.digest, next.ctx), (digest(2), "second"));
        assert!(m.next(now).is_none(), "one blob ahead at most");
        m.requested(Some("reg"), "app", &digest(2), |_| {});
        assert_eq!(m.next(now).expect("blob 3").digest, digest(3));
        assert!(m.next(now).is_none());
        // A member that lacks only blob 5 asks for it: the pool skipped 3 and 4.
        m.requested(Some("reg"), "app", &digest(5), |_| {});
        m.requested(Some("reg"), "app", &digest(3), |_| {});
        assert!(m.next(now).is_none(), "not a prefix any more");
    }

    #[test]
    fn a_client_asking_for_the_manifest_again_starts_afresh() {
        let now = Instant::now();
        let mut a = Ahead::<()>::for_client();
        a.manifest(None, "app", &manifest(&[1, 2, 3]), (), now);
        a.requested(None, "app", &digest(1), |_| {});
        a.manifest(None, "app", &manifest(&[1, 2, 3]), (), now);
        assert!(a.next(now).is_none(), "nothing asked for in the new pull");
        let mut touched = 0;
        a.requested(None, "app", &digest(1), |_| touched += 1);
        assert_eq!(touched, 1, "the record of the image is touched");
        assert_eq!(a.next(now).expect("blob 2").digest, digest(2));
    }
}
