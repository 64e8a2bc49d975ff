//! Access grants: "upstream served this object of this repository to this requester", kept in
//! the store's index so they survive a restart. The mirror records one whenever upstream says
//! yes to a requester; the agent records the mirror's yes. Both check them here, so "private
//! images stay private" rests on one key and one window.
//!
//! A grant is per repository *and* object (a digest, or `tag:<tag>`): upstream serves a blob
//! only through repositories that hold it, so a grant for one repository must not open
//! another's blobs to whoever knows their digests. Credentials are kept hashed.

use crate::error::Result;
use crate::store::BlobStore;
use nodepool::unix_secs as unix;
use sha2::Digest as _;
use std::time::{Duration, SystemTime};

/// On a mirror's answer to a blob `HEAD`: the registry named in `?ns=` is not one the mirror
/// was configured with and has not served these bytes, so its yes is only its word. The agent
/// then serves nothing it or its peers hold; the bytes come through the mirror, which fetches
/// them from that registry and checks their digest (proof by possession).
pub const UNPROVEN_HEADER: &str = "poolcast-unproven";

/// What a requester asks to read: `object` of `repo` at the registry `ns`.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub ns: &'a str,
    pub repo: &'a str,
    /// A digest (`sha256:...`) or `tag:<tag>`.
    pub object: &'a str,
}

impl Access<'_> {
    /// The index key of the grant to the holder of `auth` (an `Authorization` header value;
    /// `None`: anonymous).
    pub fn key(&self, auth: Option<&[u8]>) -> String {
        let who = auth.map_or_else(
            || "anonymous".to_string(),
            |a| hex::encode(&sha2::Sha256::digest(a)[..16]),
        );
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{who}",
            self.ns, self.repo, self.object
        )
    }
}

impl BlobStore {
    /// Remembers that upstream served `access` to the holder of `auth` at `now`.
    pub fn grant(&self, access: &Access<'_>, auth: Option<&[u8]>, now: SystemTime) -> Result<()> {
        self.access_tree()
            .insert(access.key(auth).as_bytes(), &unix(now).to_be_bytes())?;
        Ok(())
    }

    /// Whether upstream served `access` to the holder of `auth`, or to anyone (what upstream
    /// served anonymously is public), less than `within` before `now` (at least a second).
    pub fn granted(
        &self,
        access: &Access<'_>,
        auth: Option<&[u8]>,
        now: SystemTime,
        within: Duration,
    ) -> bool {
        let now = unix(now);
        [auth, None].into_iter().any(|who| {
            self.granted_at(&access.key(who))
                .is_some_and(|at| now.saturating_sub(at) < within.as_secs().max(1))
        })
    }

    /// Remembers that registry `ns` served the bytes of `digest` and they matched it: proof
    /// that `ns` holds the blob, so its cached copy may be served to whoever `ns` accepts
    /// (a registry that holds a blob could serve it to them itself).
    pub fn record_possession(&self, ns: &str, digest: &str, now: SystemTime) -> Result<()> {
        self.access_tree().insert(
            possession_key(ns, digest).as_bytes(),
            &unix(now).to_be_bytes(),
        )?;
        Ok(())
    }

    /// Whether `ns` proved it holds `digest` less than `within` before `now`.
    pub fn possesses(&self, ns: &str, digest: &str, now: SystemTime, within: Duration) -> bool {
        self.granted_at(&possession_key(ns, digest))
            .is_some_and(|at| unix(now).saturating_sub(at) < within.as_secs().max(1))
    }

    /// When the grant under `key` was last recorded (unix seconds).
    fn granted_at(&self, key: &str) -> Option<u64> {
        let raw = self.access_tree().get(key.as_bytes()).ok()??;
        let bytes: [u8; 8] = raw.as_ref().try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }
}

/// Not a grant key: those have four parts, the repository never empty.
fn possession_key(ns: &str, digest: &str) -> String {
    format!("{ns}\u{0}\u{0}{digest}\u{0}possession")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    const BLOB: Access<'static> = Access {
        ns: "docker.io",
        repo: "team/app",
        object: "sha256:00",
    };

    #[test]
    fn a_grant_opens_only_its_repository_and_object_to_its_requester() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), Duration::from_secs(3600), 0).expect("open");
        let alice = Some(&b"Bearer alice"[..]);
        store.grant(&BLOB, alice, at(0)).expect("grant");
        let minute = Duration::from_secs(60);
        assert!(store.granted(&BLOB, alice, at(59), minute));
        assert!(
            !store.granted(&BLOB, alice, at(60), minute),
            "past the window"
        );
        assert!(!store.granted(&BLOB, Some(b"Bearer bob"), at(1), minute));
        assert!(!store.granted(&BLOB, None, at(1), minute));
        let other_repo = Access {
            repo: "team/other",
            ..BLOB
        };
        assert!(!store.granted(&other_repo, alice, at(1), minute));
    }

    #[test]
    fn what_upstream_served_anonymously_is_open_to_everyone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), Duration::from_secs(3600), 0).expect("open");
        store.grant(&BLOB, None, at(0)).expect("grant");
        let minute = Duration::from_secs(60);
        assert!(store.granted(&BLOB, Some(b"Bearer anyone"), at(1), minute));
        assert!(store.granted(&BLOB, None, at(1), minute));
    }

    #[test]
    fn keys_hash_the_credentials() {
        let key = BLOB.key(Some(b"Bearer secret-token"));
        assert!(!key.contains("secret-token"), "{key}");
        assert!(key.starts_with("docker.io\u{0}team/app\u{0}sha256:00\u{0}"));
        assert!(BLOB.key(None).ends_with("\u{0}anonymous"));
    }

    #[test]
    fn possession_is_per_registry_and_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), Duration::from_secs(3600), 0).expect("open");
        let hour = Duration::from_secs(3600);
        store
            .record_possession("quay.io", "sha256:00", at(0))
            .expect("record");
        assert!(store.possesses("quay.io", "sha256:00", at(10), hour));
        assert!(!store.possesses("evil.example", "sha256:00", at(10), hour));
        assert!(!store.possesses("quay.io", "sha256:01", at(10), hour));
        assert!(!store.possesses("quay.io", "sha256:00", at(3600), hour));
        // No grant of any requester reads as possession, nor the other way round.
        let access = Access {
            ns: "quay.io",
            repo: "",
            object: "sha256:00",
        };
        assert!(!store.granted(&access, None, at(10), hour));
    }
}
