//! Working ahead of a client that pulls an image's blobs one after another.
//!
//! skopeo into `dir:` asks for an image's blobs one at a time, each once the one before it has
//! streamed whole. Left to that pace, every blob's swarm ends with a tail (the last pieces
//! spreading, the client's stream draining) during which the mirror's uplink and the origin's
//! idle, and the next blob's first byte waits for the client's request and the mirror's
//! fetch: about a second per layer on the fan-out bed (docs/benchmarks.md).
//!
//! So the agent remembers the blobs of the image manifests it relays, in the order skopeo
//! asks for them (layers, then config), and which a client asked for. Once every piece of
//! what this node pulls is leased to a first holder (the mirror has nothing fresh of it left
//! to hand out; `swarm::Node::all_leased`, from the scheduler's `allLeased`), it starts the
//! next blob of the image nobody here asked for yet, provided the blobs the client asked for
//! are the image's first ones, in order: a client that took each blob so far in order will
//! ask for the rest. That blob's download runs as any other; when the client asks, it joins
//! it (or finds it in the cache). One blob at a time is in its release, so the mirror's
//! uplink carries one blob's fresh pieces at a time, in the order the client reads them.
//!
//! A client that holds some blobs already (containerd asks only for what it lacks) has asked
//! for no prefix of the image, or stops being one as it skips a blob, and is not worked ahead
//! of from then on: at most the blobs between its last request in order and its first skip
//! are fetched without being asked for. (containerd takes the config first and several
//! layers at once, and so is never worked ahead of; it needs it least.) The blob started ahead goes through the mirror's
//! access check with the credentials the client sent with the manifest, and the client's own
//! request goes through it again. Its work joins the trace of the client's latest request.
//!
//! ```text
//!   client ──GET manifest──> agent ──relay──> mirror      Ahead::manifest: blobs in order
//!   client ──GET blob k──> agent                          Ahead::requested(k)
//!   swarm: every piece of what this node pulls leased ──> Ahead::next: blob k+1
//!       ──> access check at the mirror (client's credentials) ──> download, as if asked
//! ```

use actix_web::http::header::HeaderValue;
use serde::Deserialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use storage::reference::Digest;

/// Images remembered at once (the newest kept).
const IMAGES: usize = 16;
/// An image's record is forgotten this long after its manifest was relayed.
const KEEP: Duration = Duration::from_secs(600);
/// Blobs per manifest that are followed; a larger manifest is not worked ahead of.
const MAX_BLOBS: usize = 1024;

/// A blob to start ahead of the client.
#[derive(Clone)]
pub struct Next {
    pub ns: Option<String>,
    pub repo: String,
    pub digest: Digest,
    /// The credentials the client sent with the manifest.
    pub auth: Option<HeaderValue>,
    /// The trace of the client's latest request for the image: the blob's work joins it.
    pub trace: serve::trace::Parent,
}

struct Image {
    ns: Option<String>,
    repo: String,
    auth: Option<HeaderValue>,
    blobs: Vec<Digest>,
    requested: Vec<bool>,
    started: Vec<bool>,
    at: Instant,
    trace: serve::trace::Parent,
}

/// The image manifests relayed lately, newest last.
#[derive(Default)]
pub struct Ahead {
    images: VecDeque<Image>,
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

impl Ahead {
    /// An image manifest the client got: its layers and then its config, in the order a
    /// client that pulls one at a time (skopeo) asks for them. Anything else (an index, a manifest that does not
    /// parse, one with a bad digest) is ignored.
    pub fn manifest(
        &mut self,
        ns: Option<&str>,
        repo: &str,
        auth: Option<&HeaderValue>,
        body: &[u8],
        now: Instant,
    ) {
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
        // The same image asked for again starts afresh.
        self.images
            .retain(|i| !(i.ns.as_deref() == ns && i.repo == repo && i.blobs == blobs));
        if self.images.len() >= IMAGES {
            self.images.pop_front();
        }
        let n = blobs.len();
        tracing::debug!(
            repo,
            blobs = n,
            "image manifest relayed: its blobs may be started ahead"
        );
        self.images.push_back(Image {
            ns: ns.map(str::to_owned),
            repo: repo.to_owned(),
            auth: auth.cloned(),
            blobs,
            requested: vec![false; n],
            started: vec![false; n],
            at: now,
            trace: serve::trace::Parent::current(),
        });
    }

    /// A client asked for a blob (a GET, not a HEAD).
    pub fn requested(&mut self, ns: Option<&str>, repo: &str, digest: &Digest) {
        for image in &mut self.images {
            if image.ns.as_deref() != ns || image.repo != repo {
                continue;
            }
            for (k, blob) in image.blobs.iter().enumerate() {
                if blob == digest {
                    image.requested[k] = true;
                    image.trace = serve::trace::Parent::current();
                }
            }
        }
    }

    /// The next blob to start ahead, if any: newest image first, while the blobs its client
    /// asked for are the first ones in order (and at least one), the first blob after them
    /// not started ahead yet.
    pub fn next(&mut self, now: Instant) -> Option<Next> {
        self.expire(now);
        for image in self.images.iter_mut().rev() {
            let asked = image.requested.iter().take_while(|r| **r).count();
            if asked == 0 || image.requested[asked..].iter().any(|r| *r) {
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
                auth: image.auth.clone(),
                trace: image.trace.clone(),
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
        let mut a = Ahead::default();
        let auth = HeaderValue::from_static("Basic eDp5");
        a.manifest(None, "app", Some(&auth), &manifest(&[1, 2, 3]), now);
        assert!(
            a.next(now).is_none(),
            "nothing asked for yet: the client may hold it all"
        );
        a.requested(None, "app", &digest(1));
        let next = a.next(now).expect("a blob to start ahead");
        assert_eq!(next.digest, digest(2));
        assert_eq!(next.auth, Some(auth));
        assert_eq!(next.repo, "app");
        assert_eq!(
            a.next(now).expect("a blob to start ahead").digest,
            digest(3),
            "then the one after"
        );
        assert!(a.next(now).is_none(), "each blob once");
        a.requested(None, "app", &digest(2));
        a.requested(None, "app", &digest(3));
        assert!(a.next(now).is_none(), "every blob asked for");
    }

    #[test]
    fn a_client_that_skips_a_blob_gets_nothing_started_ahead() {
        let now = Instant::now();
        let mut a = Ahead::default();
        a.manifest(None, "app", None, &manifest(&[1, 2, 3, 4]), now);
        a.requested(None, "app", &digest(1));
        a.requested(None, "app", &digest(3));
        assert!(
            a.next(now).is_none(),
            "the client holds blob 2, or asks out of order"
        );
        let mut b = Ahead::default();
        b.manifest(None, "app", None, &manifest(&[1, 2, 3, 4]), now);
        b.requested(None, "app", &digest(1));
        assert_eq!(
            b.next(now).expect("a blob to start ahead").digest,
            digest(2)
        );
        b.requested(None, "app", &digest(3));
        assert!(
            b.next(now).is_none(),
            "blob 2 started ahead, then skipped: no more"
        );
    }

    #[test]
    fn another_registry_or_repository_asking_for_the_digest_does_not_count() {
        let now = Instant::now();
        let mut a = Ahead::default();
        a.manifest(Some("reg.example"), "app", None, &manifest(&[1, 2]), now);
        a.requested(None, "app", &digest(1));
        a.requested(Some("reg.example"), "other", &digest(1));
        assert!(a.next(now).is_none());
        a.requested(Some("reg.example"), "app", &digest(1));
        let next = a.next(now).expect("a blob to start ahead");
        assert_eq!(next.ns.as_deref(), Some("reg.example"));
    }

    #[test]
    fn indexes_bad_manifests_and_old_images_are_not_followed() {
        let now = Instant::now();
        let mut a = Ahead::default();
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:00","size":1}]}"#;
        a.manifest(None, "app", None, index, now);
        a.manifest(None, "app", None, b"not json", now);
        let bad = br#"{"config":{"digest":"md5:x"},"layers":[{"digest":"sha256:zz"}]}"#;
        a.manifest(None, "app", None, bad, now);
        assert!(a.images.is_empty());
        a.manifest(None, "app", None, &manifest(&[1, 2]), now);
        a.requested(None, "app", &digest(1));
        assert!(a.next(now + KEEP).is_none(), "forgotten after KEEP");
    }

    #[test]
    fn the_newest_images_are_kept() {
        let now = Instant::now();
        let mut a = Ahead::default();
        for n in 0..(IMAGES as u8 + 4) {
            a.manifest(None, "app", None, &manifest(&[n * 2 + 1, n * 2 + 2]), now);
        }
        assert_eq!(a.images.len(), IMAGES);
        a.requested(None, "app", &digest(1));
        assert!(a.next(now).is_none(), "the oldest image was dropped");
        let last = IMAGES as u8 + 3;
        a.requested(None, "app", &digest(last * 2 + 1));
        assert_eq!(
            a.next(now).expect("a blob to start ahead").digest,
            digest(last * 2 + 2)
        );
    }
}
