//! The content-addressed blob store: files under `<root>/blobs/sha256/<hex>`, an index in sled.
//!
//! A file becomes visible only after its bytes were hashed and matched its name (see
//! `ingest`), and is renamed into place from `<root>/tmp`. Every serve checks the file against
//! the stamp (length, mtime) it had when last verified; a file never verified by this process,
//! changed since, or last verified more than `verifyInterval` ago is hashed again before a byte
//! of it leaves, and dropped if it no longer matches. The interval bounds how long rot that
//! leaves the mtime alone (a bad sector, a write through a preserved timestamp) goes unseen,
//! while a hot blob is hashed at most once per interval, not once per serve. Entries unused for
//! `cacheTTL` expire; past `capacity` the least recently used go.

use crate::error::Result;
use crate::reference::Digest;
use nodepool::unix_secs as unix;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tempfile::TempPath;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobEntry {
    pub size: u64,
    /// Unix seconds of the last use, for TTL and LRU.
    pub last_used: u64,
    /// Set for manifests, whose media type is served back as Content-Type.
    #[serde(default)]
    pub media_type: Option<String>,
}

/// A tag as last seen upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: String,
    pub media_type: String,
    /// Unix seconds of the last time upstream confirmed it.
    pub checked: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub expired: u64,
    pub evicted: u64,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            len: meta.len(),
            mtime: meta.modified().ok(),
        }
    }
}

pub struct BlobStore {
    root: PathBuf,
    blobs: sled::Tree,
    tags: sled::Tree,
    access: sled::Tree,
    /// Piece digests per (blob, piece size), computed once per blob (`/pieces`).
    pieces: sled::Tree,
    db: sled::Db,
    /// What each file looked like when this process last hashed it, and when that was.
    verified: Mutex<HashMap<String, Verified>>,
    /// One re-hash per digest at a time; concurrent serves wait for its verdict.
    verifying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    verify_interval: Duration,
    total: AtomicU64,
    ttl: Duration,
    capacity: u64,
}

#[derive(Debug, Clone, Copy)]
struct Verified {
    stamp: FileStamp,
    at: Instant,
}

impl BlobStore {
    /// Opens (or creates) the store and reconciles the index with the files on disk.
    pub fn open(root: &Path, ttl: Duration, capacity: u64) -> Result<Self> {
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?; // half-written ingests of a previous run
        }
        std::fs::create_dir_all(&tmp)?;
        let db = sled::open(root.join("index"))?;
        let store = BlobStore {
            root: root.to_path_buf(),
            blobs: db.open_tree("blobs")?,
            tags: db.open_tree("tags")?,
            access: db.open_tree("access")?,
            pieces: db.open_tree("pieces")?,
            db,
            verified: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
            verify_interval: nodepool::defaults::VERIFY_INTERVAL,
            total: AtomicU64::new(0),
            ttl,
            capacity,
        };
        store.reconcile()?;
        Ok(store)
    }

    /// Files verified longer ago than `interval` are hashed again at their next serve;
    /// `0` hashes on every serve.
    pub fn with_verify_interval(mut self, interval: Duration) -> Self {
        self.verify_interval = interval;
        self
    }

    fn reconcile(&self) -> Result<()> {
        let mut total = 0;
        for item in self.blobs.iter() {
            let (key, value) = item?;
            let hex = String::from_utf8_lossy(&key).to_string();
            let entry: Option<BlobEntry> = serde_json::from_slice(&value).ok();
            let on_disk = std::fs::metadata(self.path_of_hex(&hex))
                .ok()
                .map(|m| m.len());
            match entry {
                Some(e) if on_disk == Some(e.size) => total += e.size,
                _ => {
                    tracing::warn!(digest = %hex, "cache index entry without a matching file, dropped");
                    self.blobs.remove(&key)?;
                }
            }
        }
        for dirent in std::fs::read_dir(self.root.join("blobs/sha256"))? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().to_string();
            if !self.blobs.contains_key(name.as_bytes())? {
                tracing::warn!(file = %name, "cache file not in the index, removed");
                let _ = std::fs::remove_file(dirent.path());
            }
        }
        self.total.store(total, Ordering::Relaxed);
        Ok(())
    }

    fn path_of_hex(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.path_of_hex(d.hex())
    }

    /// `capacity`: 0 when only the TTL bounds the cache.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn expired(&self, last_used: u64, now: SystemTime) -> bool {
        unix(now) >= last_used + self.ttl.as_secs().max(1)
    }

    /// Whether a blob is held (its entry exists and has not expired); an index that cannot
    /// be read counts as not holding it.
    pub fn holds(&self, d: &Digest, now: SystemTime) -> bool {
        matches!(self.entry(d, now), Ok(Some(_)))
    }

    /// The index entry of a blob that has not expired; an expired one is removed.
    pub fn entry(&self, d: &Digest, now: SystemTime) -> Result<Option<BlobEntry>> {
        let Some(raw) = self.blobs.get(d.hex().as_bytes())? else {
            return Ok(None);
        };
        let Ok(entry) = serde_json::from_slice::<BlobEntry>(&raw) else {
            self.remove(d)?;
            return Ok(None);
        };
        if self.expired(entry.last_used, now) {
            tracing::info!(digest = %d, "cache entry expired");
            self.remove(d)?;
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Opens a blob for serving, verifying it first unless this process already verified the
    /// file as it is now. `None`: not cached, expired, or found corrupt (and removed).
    pub async fn open_verified(
        &self,
        d: &Digest,
        now: SystemTime,
    ) -> Result<Option<(File, BlobEntry)>> {
        let Some(entry) = self.entry(d, now)? else {
            return Ok(None);
        };
        let file = match File::open(self.blob_path(d)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(digest = %d, "cache file vanished, dropping entry");
                self.remove(d)?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let stamp = FileStamp::of(&file.metadata()?);
        if !self.trusted(d, stamp) {
            // Concurrent serves of a file due for a re-hash share one: the first hashes, the
            // rest wait for its verdict instead of reading the disk again or serving unchecked.
            let gate = self
                .verifying
                .lock()
                .entry(d.hex().to_string())
                .or_default()
                .clone();
            let _turn = gate.lock().await;
            let ok = self.trusted(d, stamp)
                || (stamp.len == entry.size && {
                    let f = file.try_clone()?;
                    let want = d.clone();
                    tokio::task::spawn_blocking(move || hash_file(f).map(|got| got == want))
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))??
                });
            self.verifying.lock().remove(d.hex());
            if !ok {
                tracing::warn!(digest = %d, "cache file does not match its digest; removed, will refetch");
                self.remove(d)?;
                return Ok(None);
            }
            if !self.trusted(d, stamp) {
                let v = Verified {
                    stamp,
                    at: Instant::now(),
                };
                self.verified.lock().insert(d.hex().to_string(), v);
            }
        }
        Ok(Some((file, entry)))
    }

    /// Whether this process hashed the file as it is now, recently enough to serve it unhashed.
    fn trusted(&self, d: &Digest, stamp: FileStamp) -> bool {
        self.verified
            .lock()
            .get(d.hex())
            .is_some_and(|v| v.stamp == stamp && v.at.elapsed() < self.verify_interval)
    }

    /// Marks a blob used at `now`, for TTL and LRU. Callers touch only after the requester's
    /// access was granted: a request that is refused must not keep a blob from eviction.
    pub fn touch(&self, d: &Digest, entry: &BlobEntry, now: SystemTime) -> Result<()> {
        let step = (self.ttl.as_secs() / 4).clamp(0, 60);
        if unix(now) > entry.last_used + step {
            let mut e = entry.clone();
            e.last_used = unix(now);
            self.blobs.insert(
                d.hex().as_bytes(),
                serde_json::to_vec(&e).unwrap_or_default(),
            )?;
        }
        Ok(())
    }

    /// A fresh file under `<root>/tmp`, deleted when the `TempPath` drops unless committed.
    pub fn temp_file(&self) -> Result<(File, TempPath)> {
        let tmp = tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(self.root.join("tmp"))?;
        Ok(tmp.into_parts())
    }

    /// Makes a verified temp file visible under its digest.
    pub fn commit(
        &self,
        d: &Digest,
        temp: TempPath,
        media_type: Option<String>,
        now: SystemTime,
    ) -> Result<()> {
        let path = self.blob_path(d);
        temp.persist(&path).map_err(|e| e.error)?;
        let meta = std::fs::metadata(&path)?;
        let v = Verified {
            stamp: FileStamp::of(&meta),
            at: Instant::now(),
        };
        self.verified.lock().insert(d.hex().to_string(), v);
        let entry = BlobEntry {
            size: meta.len(),
            last_used: unix(now),
            media_type,
        };
        let old = self.blobs.insert(
            d.hex().as_bytes(),
            serde_json::to_vec(&entry).unwrap_or_default(),
        )?;
        let old_size = old
            .and_then(|raw| serde_json::from_slice::<BlobEntry>(&raw).ok())
            .map_or(0, |e| e.size);
        self.total.fetch_add(entry.size, Ordering::Relaxed);
        self.total.fetch_sub(old_size, Ordering::Relaxed);
        // A crash must not orphan the file: reconcile at start drops files the index lacks.
        self.db.flush()?;
        // `capacity` holds when a blob lands, not only at the next GC.
        self.evict_for(0, Some(d), now)?;
        Ok(())
    }

    /// Makes room for a blob of `size` bytes about to be written: evicts the least recently
    /// used until it fits under `capacity`. A blob larger than `capacity` itself is refused
    /// before a byte of it is written. No-op without a capacity.
    pub fn make_room(&self, size: u64, now: SystemTime) -> Result<()> {
        if self.capacity > 0 && size > self.capacity {
            return Err(crate::Error::TooLarge {
                size,
                capacity: self.capacity,
            });
        }
        self.evict_for(size, None, now)
    }

    /// Evicts the least recently used blobs (never `keep`) until `incoming` more bytes fit.
    fn evict_for(&self, incoming: u64, keep: Option<&Digest>, now: SystemTime) -> Result<()> {
        if self.capacity == 0 || self.total_bytes() + incoming <= self.capacity {
            return Ok(());
        }
        let mut live: Vec<(u64, Digest)> = self
            .list()
            .into_iter()
            .filter(|(d, _)| Some(d) != keep)
            .map(|(d, e)| (e.last_used, d))
            .collect();
        live.sort_by_key(|(used, _)| *used);
        for (_, d) in live {
            if self.total_bytes() + incoming <= self.capacity {
                break;
            }
            tracing::info!(digest = %d, at = unix(now), "evicted to stay within capacity");
            self.remove(&d)?;
        }
        Ok(())
    }

    /// Stores a small, already verified blob (a manifest).
    pub fn put_small(
        &self,
        d: &Digest,
        data: &[u8],
        media_type: Option<String>,
        now: SystemTime,
    ) -> Result<()> {
        let (mut file, temp) = self.temp_file()?;
        std::io::Write::write_all(&mut file, data)?;
        self.commit(d, temp, media_type, now)
    }

    /// Reads a manifest whole, verified like any serve, off the async runtime. What the index
    /// does not hold as a manifest (a layer asked for by its digest), or holds larger than
    /// `max` bytes, is `None` before a byte of it is read.
    pub async fn read_manifest(
        &self,
        d: &Digest,
        now: SystemTime,
        max: u64,
    ) -> Result<Option<(Vec<u8>, BlobEntry)>> {
        let is_manifest = |e: &BlobEntry| e.media_type.is_some() && e.size <= max;
        if !self.entry(d, now)?.as_ref().is_some_and(is_manifest) {
            return Ok(None);
        }
        let Some((mut file, entry)) = self.open_verified(d, now).await? else {
            return Ok(None);
        };
        if !is_manifest(&entry) {
            return Ok(None);
        }
        let size = entry.size;
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut data = Vec::with_capacity(size as usize);
            file.rewind()?;
            file.take(size).read_to_end(&mut data)?;
            Ok(data)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(Some((data, entry)))
    }

    /// The digests of a blob's pieces at `piece_size`, if computed before.
    pub fn piece_digests(&self, d: &Digest, piece_size: u64) -> Option<Vec<String>> {
        let raw = self.pieces.get(piece_key(d, piece_size)).ok()??;
        Some(raw.chunks(32).map(hex::encode).collect())
    }

    /// Keeps a blob's piece digests at `piece_size` (hex) until the blob goes.
    pub fn put_piece_digests(&self, d: &Digest, piece_size: u64, pieces: &[String]) -> Result<()> {
        let raw: Vec<u8> = pieces
            .iter()
            .filter_map(|p| hex::decode(p).ok())
            .flatten()
            .collect();
        self.pieces.insert(piece_key(d, piece_size), raw)?;
        Ok(())
    }

    pub fn remove(&self, d: &Digest) -> Result<()> {
        self.verified.lock().remove(d.hex());
        for key in self.pieces.scan_prefix(d.hex().as_bytes()).keys().flatten() {
            self.pieces.remove(key)?;
        }
        if let Some(raw) = self.blobs.remove(d.hex().as_bytes())? {
            if let Ok(e) = serde_json::from_slice::<BlobEntry>(&raw) {
                self.total
                    .fetch_sub(e.size.min(self.total_bytes()), Ordering::Relaxed);
            }
        }
        match std::fs::remove_file(self.blob_path(d)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every indexed blob (digest and entry); for an agent to re-announce what it holds.
    pub fn list(&self) -> Vec<(Digest, BlobEntry)> {
        self.blobs
            .iter()
            .filter_map(|item| {
                let (key, raw) = item.ok()?;
                let d = Digest::parse(&format!("sha256:{}", String::from_utf8_lossy(&key))).ok()?;
                Some((d, serde_json::from_slice(&raw).ok()?))
            })
            .collect()
    }

    pub fn tag(&self, key: &str) -> Result<Option<TagEntry>> {
        Ok(self
            .tags
            .get(key.as_bytes())?
            .and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    pub fn put_tag(&self, key: &str, entry: &TagEntry) -> Result<()> {
        self.tags.insert(
            key.as_bytes(),
            serde_json::to_vec(entry).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// The access grants (see `access`), in the same index so they survive a restart.
    pub(crate) fn access_tree(&self) -> &sled::Tree {
        &self.access
    }

    /// Removes expired entries, then the least recently used while over capacity.
    pub fn gc(&self, now: SystemTime) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut live = Vec::new();
        for item in self.blobs.iter() {
            let (key, raw) = item?;
            let hex = String::from_utf8_lossy(&key).to_string();
            let Ok(d) = Digest::parse(&format!("sha256:{hex}")) else {
                self.blobs.remove(&key)?;
                continue;
            };
            match serde_json::from_slice::<BlobEntry>(&raw) {
                Ok(e) if !self.expired(e.last_used, now) => live.push((e.last_used, e.size, d)),
                Ok(e) => {
                    report.expired += 1;
                    report.bytes_freed += e.size;
                    self.remove(&d)?;
                }
                Err(_) => self.remove(&d)?,
            }
        }
        if self.capacity > 0 && self.total_bytes() > self.capacity {
            live.sort_by_key(|(used, _, _)| *used);
            for (_, size, d) in live {
                if self.total_bytes() <= self.capacity {
                    break;
                }
                report.evicted += 1;
                report.bytes_freed += size;
                self.remove(&d)?;
            }
        }
        let ttl = self.ttl.as_secs();
        for item in self.tags.iter() {
            let (key, raw) = item?;
            let stale = serde_json::from_slice::<TagEntry>(&raw)
                .map(|t| unix(now) > t.checked + ttl)
                .unwrap_or(true);
            if stale {
                self.tags.remove(&key)?;
            }
        }
        for item in self.access.iter() {
            let (key, raw) = item?;
            let at = <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if unix(now) > at + ttl {
                self.access.remove(&key)?;
            }
        }
        Ok(report)
    }
}

fn piece_key(d: &Digest, piece_size: u64) -> Vec<u8> {
    let mut key = d.hex().as_bytes().to_vec();
    key.extend_from_slice(&piece_size.to_be_bytes());
    key
}

/// sha256 of a whole file, read through its own descriptor.
pub fn hash_file(mut file: File) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    file.rewind()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_sha256(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn store(dir: &Path, ttl: u64, capacity: u64) -> BlobStore {
        BlobStore::open(dir, Duration::from_secs(ttl), capacity).expect("open store")
    }

    /// A blob's bytes as a serve reads them (verified), or `None`.
    async fn read_all(s: &BlobStore, d: &Digest, now: SystemTime) -> Option<Vec<u8>> {
        let (mut file, _) = s.open_verified(d, now).await.expect("open")?;
        file.rewind().expect("rewind");
        let mut data = Vec::new();
        file.read_to_end(&mut data).expect("read");
        Some(data)
    }

    #[tokio::test]
    async fn committed_blob_survives_reopen_and_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"hello");
        {
            let s = store(dir.path(), 3600, 0);
            s.put_small(&d, b"hello", None, at(0)).expect("put");
            assert_eq!(s.total_bytes(), 5);
        }
        let s = store(dir.path(), 3600, 0);
        assert_eq!(s.total_bytes(), 5);
        assert_eq!(
            read_all(&s, &d, at(10)).await.as_deref(),
            Some(&b"hello"[..])
        );
    }

    #[tokio::test]
    async fn corrupted_file_is_detected_and_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"hello");
        let s = store(dir.path(), 3600, 0);
        s.put_small(&d, b"hello", None, at(0)).expect("put");
        std::fs::write(s.blob_path(&d), b"hellO").expect("corrupt");
        assert!(read_all(&s, &d, at(1)).await.is_none());
        assert!(!s.blob_path(&d).exists());
        assert_eq!(s.total_bytes(), 0);
    }

    /// Rewrites a byte of `path` in place and puts its mtime back, so only a hash can tell.
    fn rot_keeping_mtime(path: &Path) {
        use std::io::Write;
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        f.write_all(b"J").expect("write");
        f.set_modified(mtime).expect("restore mtime");
    }

    #[tokio::test]
    async fn rot_that_keeps_the_mtime_is_caught_once_the_verification_is_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"hello");
        let s = store(dir.path(), 3600, 0).with_verify_interval(Duration::from_millis(200));
        s.put_small(&d, b"hello", None, at(0)).expect("put");
        rot_keeping_mtime(&s.blob_path(&d));
        // Within the interval the stamp vouches for the file: the hot path does not hash.
        assert!(read_all(&s, &d, at(1)).await.is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(read_all(&s, &d, at(2)).await.is_none());
        assert!(!s.blob_path(&d).exists());
    }

    #[tokio::test]
    async fn a_zero_interval_hashes_every_serve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"hello");
        let s = store(dir.path(), 3600, 0).with_verify_interval(Duration::ZERO);
        s.put_small(&d, b"hello", None, at(0)).expect("put");
        assert!(read_all(&s, &d, at(1)).await.is_some());
        rot_keeping_mtime(&s.blob_path(&d));
        assert!(read_all(&s, &d, at(2)).await.is_none());
    }

    #[tokio::test]
    async fn expired_entries_are_gone_on_lookup_and_gc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 60, 0);
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        s.put_small(&a, b"a", None, at(0)).expect("put");
        s.put_small(&b, b"b", None, at(30)).expect("put");
        assert!(s.entry(&a, at(59)).expect("entry").is_some());
        assert!(s.entry(&a, at(61)).expect("entry").is_none());
        let report = s.gc(at(95)).expect("gc");
        assert_eq!(report.expired, 1);
        assert!(s.entry(&b, at(95)).expect("entry").is_none());
    }

    #[tokio::test]
    async fn least_recently_used_go_first_past_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 3600, 10);
        let blobs: Vec<(Digest, &[u8])> = vec![
            (Digest::of(b"11111"), b"11111"),
            (Digest::of(b"22222"), b"22222"),
            (Digest::of(b"33333"), b"33333"),
        ];
        for (i, (d, data)) in blobs[..2].iter().enumerate() {
            s.put_small(d, data, None, at(i as u64 * 100)).expect("put");
        }
        // Using the first one makes the second the least recently used.
        let (_, entry) = s
            .open_verified(&blobs[0].0, at(300))
            .await
            .expect("open")
            .expect("present");
        s.touch(&blobs[0].0, &entry, at(300)).expect("touch");
        s.put_small(&blobs[2].0, blobs[2].1, None, at(400))
            .expect("put");
        assert!(s.entry(&blobs[1].0, at(402)).expect("entry").is_none());
        assert!(s.entry(&blobs[0].0, at(402)).expect("entry").is_some());
        assert_eq!(s.total_bytes(), 10);
        assert_eq!(
            s.gc(at(401)).expect("gc").evicted,
            0,
            "nothing left for the GC"
        );
    }

    #[test]
    fn stray_files_and_dangling_entries_are_reconciled_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"x");
        {
            let s = store(dir.path(), 3600, 0);
            s.put_small(&d, b"x", None, at(0)).expect("put");
            std::fs::remove_file(s.blob_path(&d)).expect("rm");
            std::fs::write(dir.path().join("blobs/sha256/stray"), b"junk").expect("stray");
        }
        let s = store(dir.path(), 3600, 0);
        assert!(s.entry(&d, at(1)).expect("entry").is_none());
        assert!(!dir.path().join("blobs/sha256/stray").exists());
        assert_eq!(s.total_bytes(), 0);
    }

    #[tokio::test]
    async fn a_manifest_is_read_only_when_the_index_holds_it_as_one_within_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 3600, 0);
        let layer = Digest::of(b"layer bytes");
        s.put_small(&layer, b"layer bytes", None, at(0))
            .expect("put");
        let manifest = Digest::of(b"{}");
        let json = Some("application/json".to_string());
        s.put_small(&manifest, b"{}", json, at(0)).expect("put");
        assert!(s
            .read_manifest(&layer, at(1), 1 << 20)
            .await
            .expect("read")
            .is_none());
        assert!(s
            .read_manifest(&manifest, at(1), 1)
            .await
            .expect("read")
            .is_none());
        let (data, _) = s
            .read_manifest(&manifest, at(1), 1 << 20)
            .await
            .expect("read")
            .expect("a manifest");
        assert_eq!(data, b"{}");
    }

    #[tokio::test]
    async fn a_refused_request_does_not_keep_a_blob_from_eviction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 3600, 10);
        let old = Digest::of(b"11111");
        s.put_small(&old, b"11111", None, at(0)).expect("put");
        let newer = Digest::of(b"22222");
        s.put_small(&newer, b"22222", None, at(100)).expect("put");
        // Opened (as a request does before its access check), never touched: still the oldest.
        assert!(s
            .open_verified(&old, at(200))
            .await
            .expect("open")
            .is_some());
        let third = Digest::of(b"33333");
        s.put_small(&third, b"33333", None, at(300)).expect("put");
        assert!(s.entry(&old, at(301)).expect("entry").is_none());
        assert!(s.entry(&newer, at(301)).expect("entry").is_some());
    }

    #[tokio::test]
    async fn capacity_holds_when_a_blob_lands_and_a_blob_larger_than_it_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 3600, 10);
        for (i, data) in [&b"aaaa"[..], b"bbbb", b"cccc"].into_iter().enumerate() {
            s.put_small(&Digest::of(data), data, None, at(i as u64))
                .expect("put");
            assert!(s.total_bytes() <= 10, "over capacity after commit {i}");
        }
        assert!(s
            .entry(&Digest::of(b"aaaa"), at(5))
            .expect("entry")
            .is_none());
        assert!(matches!(
            s.make_room(11, at(6)),
            Err(crate::Error::TooLarge {
                size: 11,
                capacity: 10
            })
        ));
        s.make_room(10, at(6)).expect("room by evicting");
        assert_eq!(s.total_bytes(), 0);
    }
}
