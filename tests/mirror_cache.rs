//! The mirror's on-disk cache: it survives restarts, never serves bytes that do not match their
//! digest, and lets entries expire.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use common::Fixture;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[test]
fn restart_with_same_cache_dir_serves_without_upstream() {
    let mut fx = Fixture::new(&[512 * KIB, MIB], 21, &[]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    let blob_gets = fx.registry.requests_seen("GET", "/blobs/");
    assert!(
        blob_gets >= fx.image.layers.len(),
        "the registry's access log shows {blob_gets} blob GETs for the first pull"
    );

    // The registry keeps running: a restarted mirror that fetched anything would be seen
    // both by its own fresh counters and in the registry's access log.
    fx.mirror.restart();
    fx.pull_and_verify(&fx.via_mirror_by_digest(), None);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert_eq!(
        fx.upstream_bytes(),
        0,
        "restarted mirror fetched blob bytes from upstream"
    );
    assert_eq!(
        fx.registry.requests_seen("GET", "/blobs/"),
        blob_gets,
        "the registry served blobs again after the mirror restarted"
    );
    assert!(fx.mirror.metric(common::mirror::CACHE_HITS) >= fx.image.layers.len() as f64);
    assert_eq!(fx.mirror.healthz(), 200);
}

#[test]
fn corrupted_cache_file_is_refetched_not_served() {
    let fx = Fixture::new(&[512 * KIB, MIB], 22, &[]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    let upstream_before = fx.upstream_bytes();

    for layer in &fx.image.layers {
        let path = fx.cached_blob_file(&layer.digest);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "the mirror should keep {} at {}: {e}",
                    layer.digest,
                    path.display()
                )
            });
        // Same size, different bytes: only a digest check can tell.
        for offset in [0, layer.size / 2, layer.size - 1] {
            let mut byte = [0u8];
            file.seek(SeekFrom::Start(offset)).unwrap();
            file.read_exact(&mut byte).unwrap();
            file.seek(SeekFrom::Start(offset)).unwrap();
            file.write_all(&[!byte[0]]).unwrap();
        }
        file.sync_all().unwrap();
    }

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert!(
        fx.upstream_bytes() > upstream_before,
        "the corrupted blobs were not fetched again"
    );
}

#[test]
fn rot_that_keeps_the_mtime_is_refetched_once_the_verification_is_old() {
    // A config file, not a flag: `verifyInterval` has no flag of its own.
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("mirror.yaml");
    std::fs::write(&conf_file, "verifyInterval: 1s\n").unwrap();
    let fx = Fixture::new(
        &[512 * KIB, MIB],
        24,
        &["--config", conf_file.to_str().unwrap()],
    );
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    let upstream_before = fx.upstream_bytes();

    let mut rotted = 0u64;
    for layer in &fx.image.layers {
        let path = fx.cached_blob_file(&layer.digest);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(layer.size / 2)).unwrap();
        file.read_exact(&mut byte).unwrap();
        file.seek(SeekFrom::Start(layer.size / 2)).unwrap();
        file.write_all(&[!byte[0]]).unwrap();
        file.sync_all().unwrap();
        // What `touch -r` does: the stamp (length, mtime) is as it was when last verified.
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        rotted += layer.size;
    }

    // Waiting out verifyInterval is the behaviour under test; there is no condition to poll.
    std::thread::sleep(Duration::from_millis(1500));

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert!(
        fx.upstream_bytes() >= upstream_before + rotted,
        "rotted blobs with their mtime restored were served from cache: upstream bytes {} -> {}, \
         rotted {rotted}",
        upstream_before,
        fx.upstream_bytes()
    );
    for layer in &fx.image.layers {
        let on_disk = common::sha256_file(&fx.cached_blob_file(&layer.digest)).unwrap();
        assert_eq!(
            format!("sha256:{on_disk}"),
            layer.digest,
            "cache file after refetch"
        );
    }
}

#[test]
fn expired_entry_is_refetched() {
    let fx = Fixture::new(&[256 * KIB, 512 * KIB], 23, &["--cache-ttl", "1s"]);
    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    let upstream_before = fx.upstream_bytes();
    assert!(upstream_before > 0);

    // Waiting out the TTL is the behaviour under test; there is no condition to poll instead.
    std::thread::sleep(Duration::from_millis(1500));

    fx.pull_and_verify(&fx.via_mirror_by_tag(), None);
    assert!(
        fx.upstream_bytes() > upstream_before,
        "an entry older than --cache-ttl was served from cache"
    );
}
