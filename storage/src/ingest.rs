//! Single-flight ingest of a blob from upstream, readable while it arrives.
//!
//! ```text
//!   client A --miss--> Ingests::join_or_start --spawn--> fetch task: upstream GET
//!   client B --miss--> (joins)                             |  write at offset, hash
//!   client C --Range-> (joins)                             v
//!        ^  read_at(pos..written), wait on `progress`   temp file --verify--> BlobStore::commit
//! ```
//!
//! The fetch task is spawned, not driven by a client: a client that goes away does not stop
//! the ingest, so the blob still lands in the cache for the next one. Readers pread the same
//! open file, which stays valid across the rename into the store.

use crate::error::{Error, Result, UpstreamReply};
use crate::reference::Digest;
use bytes::Bytes;
use futures_util::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Where an ingest stands. Readers wait on changes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The upstream request is under way; nothing is known yet.
    Connecting,
    /// Upstream answered 200; `written` bytes are on disk, of `size` if upstream said.
    Running { written: u64, size: Option<u64> },
    /// All bytes are on disk and matched the digest.
    Done { size: u64 },
    /// Upstream said no before any byte (its answer is passed on to the starter).
    Refused(UpstreamReply),
    /// The transfer failed or did not verify; nothing was kept.
    Failed(String),
}

pub struct Ingest {
    pub digest: Digest,
    /// The registry (`?ns=`) its bytes come from, when its starter said: what a fetch from
    /// it proves that registry holds.
    pub source: Option<String>,
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// Per piece size, the digests of the pieces arrived so far (see `pieces`): every agent of
    /// a pool long-polls a blob still arriving at once, and each piece is hashed once, not once
    /// per agent. It dies with this ingest, so a failed fetch's bytes never vouch for the next.
    pub piece_digests: tokio::sync::Mutex<HashMap<u64, Vec<String>>>,
    /// Its last bytes are arriving ([`IngestWriter::ending`]): the link to upstream is about
    /// to be free.
    ending: AtomicBool,
}

/// The sending half, held by the fetch task.
pub struct IngestWriter {
    pub file: Arc<File>,
    /// The temp file's path, removed on drop unless the fetch commits it to the store.
    pub temp: Option<tempfile::TempPath>,
    progress: watch::Sender<Progress>,
    ingests: Arc<Ingests>,
    digest: Digest,
}

impl IngestWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn set(&self, p: Progress) {
        self.progress.send_replace(p);
    }

    /// Only the last bytes are still to come (about a round trip's worth at the rate they
    /// come): a fetch started now finds the link to upstream free as it gets going.
    pub fn ending(&self) {
        if let Some(i) = self.ingests.map.lock().get(self.digest.hex()) {
            i.ending.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for IngestWriter {
    fn drop(&mut self) {
        // Whatever happened, the next request must not join a finished or dead ingest.
        self.ingests.map.lock().remove(self.digest.hex());
        self.progress.send_if_modified(|p| {
            if matches!(p, Progress::Connecting | Progress::Running { .. }) {
                *p = Progress::Failed("ingest ended early".into());
                true
            } else {
                false
            }
        });
    }
}

#[derive(Default)]
pub struct Ingests {
    map: Mutex<HashMap<String, Arc<Ingest>>>,
}

pub enum Joined {
    /// This caller started the ingest and must run the fetch with the writer.
    Started(Arc<Ingest>, IngestWriter),
    Existing(Arc<Ingest>),
    /// None runs, and the blob is stored: an ingest finished between the caller's look at the
    /// store and this call. The caller serves the stored copy (fetching again would take the
    /// whole blob from upstream a second time).
    Stored,
}

impl Ingests {
    /// Joins the ingest of `digest`, or registers a new one backed by the temp file that
    /// `make_file` creates (called only when none runs).
    pub fn join_or_start(
        self: &Arc<Self>,
        digest: &Digest,
        make_file: impl FnOnce() -> Result<(File, tempfile::TempPath)>,
    ) -> Result<Joined> {
        self.join_or_start_from(digest, None, || false, make_file)
    }

    /// [`Ingests::join_or_start`], naming the registry a new ingest fetches from, and asking
    /// `stored` (with no ingest of `digest` running) whether the blob is in the store by now.
    /// A writer commits before it leaves the map, so asked under the map's lock, a blob whose
    /// ingest just ended is always seen: [`Joined::Stored`], never a second fetch.
    pub fn join_or_start_from(
        self: &Arc<Self>,
        digest: &Digest,
        source: Option<&str>,
        stored: impl FnOnce() -> bool,
        make_file: impl FnOnce() -> Result<(File, tempfile::TempPath)>,
    ) -> Result<Joined> {
        let mut map = self.map.lock();
        if let Some(existing) = map.get(digest.hex()) {
            return Ok(Joined::Existing(existing.clone()));
        }
        if stored() {
            return Ok(Joined::Stored);
        }
        let (file, temp) = make_file()?;
        let file = Arc::new(file);
        let (tx, rx) = watch::channel(Progress::Connecting);
        let ingest = Arc::new(Ingest {
            digest: digest.clone(),
            source: source.map(str::to_string),
            file: file.clone(),
            progress: rx,
            piece_digests: Default::default(),
            ending: AtomicBool::new(false),
        });
        map.insert(digest.hex().to_string(), ingest.clone());
        let writer = IngestWriter {
            file,
            temp: Some(temp),
            progress: tx,
            ingests: self.clone(),
            digest: digest.clone(),
        };
        Ok(Joined::Started(ingest, writer))
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<Ingest>> {
        self.map.lock().get(digest.hex()).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every ingest under way is receiving its last bytes (true when none is).
    pub fn all_ending(&self) -> bool {
        self.map
            .lock()
            .values()
            .all(|i| i.ending.load(Ordering::Relaxed))
    }
}

impl Ingest {
    /// Where the ingest stands now; `changed` on the receiver waits for news.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Reads bytes already written (callers check `progress` first).
    pub async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
        })
        .await
        .map_err(|e| Error::Transfer(e.to_string()))?
        .map_err(Error::from)
    }

    /// Waits until upstream has answered; returns the size if known.
    pub async fn started(&self) -> Result<Option<u64>> {
        let mut rx = self.progress.clone();
        loop {
            let progress = rx.borrow_and_update().clone();
            match progress {
                Progress::Connecting => {}
                Progress::Running { size, .. } => return Ok(size),
                Progress::Done { size } => return Ok(Some(size)),
                Progress::Refused(reply) => return Err(Error::Upstream(reply)),
                Progress::Failed(msg) => return Err(Error::Transfer(msg)),
            }
            if rx.changed().await.is_err() {
                return Err(Error::Transfer("ingest ended early".into()));
            }
        }
    }

    /// Waits until the blob's length is known: upstream's `Content-Length`, or, when upstream
    /// sent none, the end of the verified transfer.
    pub async fn known_size(&self) -> Result<u64> {
        let mut rx = self.progress.clone();
        loop {
            let progress = rx.borrow_and_update().clone();
            match progress {
                Progress::Connecting | Progress::Running { size: None, .. } => {}
                Progress::Running {
                    size: Some(size), ..
                }
                | Progress::Done { size } => return Ok(size),
                Progress::Refused(reply) => return Err(Error::Upstream(reply)),
                Progress::Failed(msg) => return Err(Error::Transfer(msg)),
            }
            if rx.changed().await.is_err() {
                return Err(Error::Transfer("ingest ended early".into()));
            }
        }
    }

    /// The bytes `start..end` (end exclusive; `None`: to the end), as they arrive.
    pub fn stream(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes>> + 'static {
        const CHUNK: u64 = 256 * 1024;
        let this = self.clone();
        futures_util::stream::unfold((start, this.progress.clone()), move |(pos, mut rx)| {
            let this = this.clone();
            async move {
                loop {
                    let progress = rx.borrow_and_update().clone();
                    let (avail, done) = match progress {
                        Progress::Connecting => (0, false),
                        // The blob's last byte leaves only after the whole blob verified, so a
                        // client never gets a complete body that did not match its digest.
                        Progress::Running {
                            written,
                            size: Some(size),
                        } => (written.min(size.saturating_sub(1)), false),
                        Progress::Running {
                            written,
                            size: None,
                        } => (written, false),
                        Progress::Done { size } => (size, true),
                        Progress::Refused(r) => {
                            return Some((Err(Error::Upstream(r)), (u64::MAX, rx)))
                        }
                        Progress::Failed(m) => {
                            return Some((Err(Error::Transfer(m)), (u64::MAX, rx)))
                        }
                    };
                    let limit = end.map_or(avail, |e| e.min(avail));
                    if pos == u64::MAX || end.is_some_and(|e| pos >= e) || (done && pos >= avail) {
                        return None;
                    }
                    if pos < limit {
                        let len = (limit - pos).min(CHUNK) as usize;
                        let file = this.file.clone();
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; len];
                            file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
                        })
                        .await;
                        return match read {
                            Ok(Ok(bytes)) => Some((Ok(bytes), (pos + len as u64, rx))),
                            Ok(Err(e)) => Some((Err(e.into()), (u64::MAX, rx))),
                            Err(e) => Some((Err(Error::Transfer(e.to_string())), (u64::MAX, rx))),
                        };
                    }
                    if rx.changed().await.is_err() {
                        return Some((
                            Err(Error::Transfer("ingest ended early".into())),
                            (u64::MAX, rx),
                        ));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(s: impl Stream<Item = Result<Bytes>>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        futures_util::pin_mut!(s);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn start(ingests: &Arc<Ingests>, d: &Digest) -> (Arc<Ingest>, IngestWriter) {
        let make = || {
            let (file, path) = tempfile::NamedTempFile::new()?.into_parts();
            Ok((file, path))
        };
        match ingests.join_or_start(d, make).expect("start") {
            Joined::Started(i, w) => (i, w),
            Joined::Existing(_) | Joined::Stored => panic!("should start"),
        }
    }

    #[test]
    fn the_link_is_about_to_be_free_once_every_ingest_is_ending() {
        let ingests = Arc::new(Ingests::default());
        assert!(ingests.all_ending(), "none under way");
        let a = Digest::from_sha256(&[1u8; 32]);
        let b = Digest::from_sha256(&[2u8; 32]);
        let (_ia, wa) = start(&ingests, &a);
        assert!(!ingests.all_ending());
        wa.ending();
        assert!(ingests.all_ending(), "its last bytes are coming");
        let (_ib, wb) = start(&ingests, &b);
        assert!(!ingests.all_ending(), "the next one just began");
        drop(wb);
        drop(wa);
        assert!(ingests.all_ending());
    }

    /// The race a pool hit at a layer's end: a request found the blob neither stored nor
    /// arriving, then the ingest committed and left the map before the request joined. The
    /// request must serve the stored copy, not fetch the whole blob from upstream again.
    #[test]
    fn an_ingest_that_ended_between_a_look_and_a_join_is_not_started_again() {
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            crate::store::BlobStore::open(dir.path(), Duration::from_secs(3600), 0).expect("store");
        let ingests = Arc::new(Ingests::default());
        let data = b"a layer".to_vec();
        let d = Digest::of(&data);
        let now = std::time::SystemTime::now();
        // The request looks: not stored.
        assert!(store.entry(&d, now).expect("entry").is_none());
        // Meanwhile the one ingest writes, commits and ends.
        let (file, temp) = store.temp_file().expect("temp");
        let (_, mut writer) = match ingests
            .join_or_start_from(&d, None, || false, || Ok((file, temp)))
            .expect("start")
        {
            Joined::Started(i, w) => (i, w),
            _ => panic!("should start"),
        };
        writer.file.write_all_at(&data, 0).expect("write");
        let temp = writer.temp.take().expect("temp path");
        store.commit(&d, temp, None, now).expect("commit");
        writer.set(Progress::Done {
            size: data.len() as u64,
        });
        drop(writer);
        // The request joins: no ingest runs, and the blob is stored.
        let stored = || store.holds(&d, now);
        let joined = ingests
            .join_or_start_from(&d, None, stored, || panic!("a second fetch was started"))
            .expect("join");
        assert!(matches!(joined, Joined::Stored));
        // Gone from the store (evicted, expired), it is fetched again.
        store.remove(&d).expect("remove");
        let stored = || store.holds(&d, now);
        let make = || {
            let (file, path) = tempfile::NamedTempFile::new()?.into_parts();
            Ok((file, path))
        };
        assert!(matches!(
            ingests.join_or_start_from(&d, None, stored, make),
            Ok(Joined::Started(..))
        ));
    }

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_and_a_range_before_the_end() {
        let ingests = Arc::new(Ingests::default());
        let d = Digest::of(b"0123456789");
        let (ingest, writer) = start(&ingests, &d);
        assert!(matches!(
            ingests.join_or_start(&d, || unreachable!()),
            Ok(Joined::Existing(_))
        ));
        let whole = tokio::spawn(collect(ingest.stream(0, None)));
        let range = tokio::spawn(collect(ingest.stream(2, Some(4))));
        writer.file.write_all_at(b"01234", 0).expect("write");
        writer.set(Progress::Running {
            written: 5,
            size: Some(10),
        });
        // The range is inside what has arrived: it completes before the blob does.
        assert_eq!(range.await.expect("join").expect("range"), b"23");
        writer.file.write_all_at(b"56789", 5).expect("write");
        writer.set(Progress::Running {
            written: 10,
            size: Some(10),
        });
        // Every byte is on disk, but the last one waits for verification.
        let tail = ingest.stream(9, Some(10));
        let held = tokio::time::timeout(std::time::Duration::from_millis(50), collect(tail)).await;
        assert!(held.is_err(), "the last byte left before the blob verified");
        writer.set(Progress::Done { size: 10 });
        drop(writer);
        assert_eq!(whole.await.expect("join").expect("whole"), b"0123456789");
        assert!(ingests.is_empty());
    }

    #[tokio::test]
    async fn a_failed_ingest_errors_its_readers_and_frees_the_slot() {
        let ingests = Arc::new(Ingests::default());
        let d = Digest::of(b"x");
        let (ingest, writer) = start(&ingests, &d);
        let reader = tokio::spawn(collect(ingest.stream(0, None)));
        writer.set(Progress::Running {
            written: 0,
            size: Some(1),
        });
        drop(writer); // the fetch task died
        assert!(reader.await.expect("join").is_err());
        assert!(ingests.get(&d).is_none());
    }
}
