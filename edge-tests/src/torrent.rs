//! BitTorrent as the benchmark's peer to beat, the way the BitTorrent-based image add-ons
//! distribute: opentracker (Debian's build serves only whitelisted info-hashes), one aria2c seed
//! holding the blob, and an aria2c leecher per node that keeps seeding once it has the blob.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bed::{Bed, Host, ProcId};

pub const TRACKER_PORT: u16 = 6969;
/// aria2c flags shared by the seed and the leechers: the tracker is the only peer source, and
/// it is asked often so a swarm of fresh peers finds itself in seconds.
const ARIA2_COMMON: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    "--bt-tracker-interval=1",
    "--seed-ratio=0.0",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--bt-max-peers=55",
    "--listen-port=6881",
];

/// A `.torrent` for `file` announcing to the tracker on `tracker`, and its info-hash (hex).
pub fn make_torrent(
    bed: &Bed,
    tracker: &Host,
    file: &Path,
    piece_log2: u32,
) -> Result<(PathBuf, String)> {
    let torrent = file.with_extension("torrent");
    let announce = format!("http://{}:{TRACKER_PORT}/announce", tracker.ip);
    let _ = std::fs::remove_file(&torrent);
    let (file_s, torrent_s) = (file.display().to_string(), torrent.display().to_string());
    bed.run_ok(
        tracker,
        "mktorrent",
        &[
            "-a",
            &announce,
            "-l",
            &piece_log2.to_string(),
            "-o",
            &torrent_s,
            &file_s,
        ],
    )?;
    let shown = bed.run_ok(tracker, "aria2c", &["-S", &torrent_s])?;
    let hash = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("Info Hash: "))
        .context("aria2c -S printed no info hash")?
        .trim()
        .to_owned();
    Ok((torrent, hash))
}

/// opentracker on `tracker`, serving only `info_hash`.
pub fn start_tracker(bed: &Bed, tracker: &Host, info_hash: &str) -> Result<ProcId> {
    // opentracker refuses to run as root: it chroots into `dir`, drops to `nobody`, and only
    // then reads the whitelist, by its path inside the chroot.
    let dir = bed.fresh_dir("tracker");
    std::fs::write(dir.join("whitelist.txt"), format!("{info_hash}\n"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let port = TRACKER_PORT.to_string();
    let args: Vec<String> = [
        "-i",
        &tracker.ip.to_string(),
        "-p",
        &port,
        "-P",
        &port,
        "-d",
        &dir.display().to_string(),
        "-w",
        "/whitelist.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (id, _) = bed.spawn(tracker, "opentracker", "opentracker", &args, None)?;
    let url = format!("http://{}:{TRACKER_PORT}/stats", tracker.ip);
    bed.wait_http(tracker, &url)?;
    Ok(id)
}

/// The seed: aria2c on `host` with the blob already in `dir`; it checks it, then only uploads.
pub fn start_seed(bed: &Bed, host: &Host, torrent: &Path, dir: &Path) -> Result<ProcId> {
    let mut args: Vec<String> = ARIA2_COMMON.iter().map(|s| s.to_string()).collect();
    args.extend([
        format!("--dir={}", dir.display()),
        "--check-integrity=true".into(),
        torrent.display().to_string(),
    ]);
    Ok(bed.spawn(host, "aria2-seed", "aria2c", &args, None)?.0)
}

/// Waits until the tracker on `tracker` counts a seed (a peer with the whole torrent) of
/// `info_hash` (hex), so leechers started now find one at their first announce.
pub fn wait_seeded(bed: &Bed, tracker: &Host, info_hash: &str, timeout: Duration) -> Result<()> {
    let escaped: String = info_hash
        .as_bytes()
        .chunks(2)
        .map(|pair| format!("%{}", String::from_utf8_lossy(pair)))
        .collect();
    let url = format!(
        "http://{}:{TRACKER_PORT}/scrape?info_hash={escaped}",
        tracker.ip
    );
    let seeded = crate::parts::eventually(timeout, || {
        // bencoded: d5:filesd20:<hash>d8:completei<seeds>e10:downloaded...
        bed.http_get(tracker, &url).is_ok_and(|answer| {
            answer
                .split_once("8:completei")
                .and_then(|(_, rest)| rest.split_once('e'))
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .is_some_and(|seeds| seeds > 0)
        })
    });
    if !seeded {
        bail!("the tracker counted no seed of {info_hash} within {timeout:?}");
    }
    Ok(())
}

/// A leecher on `host` downloading into `dir`; when it has the whole (SHA-1 checked) blob it
/// writes the time to `<dir>/done` and goes on seeding.
pub fn start_leecher(bed: &Bed, host: &Host, torrent: &Path, dir: &Path) -> Result<ProcId> {
    let hook = dir.join("done.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ndate +%s.%N > {}/done\n", dir.display()),
    )?;
    let status = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()?;
    if !status.success() {
        bail!("chmod +x {}", hook.display());
    }
    let mut args: Vec<String> = ARIA2_COMMON.iter().map(|s| s.to_string()).collect();
    args.extend([
        format!("--dir={}", dir.display()),
        format!("--on-bt-download-complete={}", hook.display()),
        torrent.display().to_string(),
    ]);
    Ok(bed
        .spawn(host, &format!("aria2-{}", host.name), "aria2c", &args, None)?
        .0)
}
