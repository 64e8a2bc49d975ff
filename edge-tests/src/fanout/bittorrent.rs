//! BitTorrent's runs, the peer to beat: opentracker on the scheduler's host, one aria2c seed
//! already holding the payload on the mirror's host (the mirror's link), an aria2c in every
//! node that keeps seeding once done. The blob is a single-file torrent; the image is one
//! multi-file torrent of its blobs (config and layers), named by digest as a registry stores
//! them. A node is timed until aria2c has every SHA-1-checked piece; every file is then
//! checked against its sha256.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::report::Outcome;
use super::setup::{Payload, Setup};
use crate::bed::READY_TIMEOUT;
use crate::image::sha256_file;
use crate::torrent;

/// What is shared: the file or folder the torrent is made of, the folder the seed finds it in,
/// and each file (path under a leecher's download folder, expected sha256 hex).
struct Shared {
    content: PathBuf,
    seed_dir: PathBuf,
    files: Vec<(PathBuf, String)>,
}

pub fn run(s: &Setup, payload: Payload, piece_log2: u32, label: &'static str) -> Result<Outcome> {
    eprintln!("fanout: {label}");
    let bed = &s.bed;
    let shared = shared(s, payload)?;
    let (torrent_file, hash) =
        torrent::make_torrent(bed, &s.scheduler, &shared.content, piece_log2)?;
    let mut procs = vec![torrent::start_tracker(bed, &s.scheduler, &hash)?];
    let tag = match payload {
        Payload::Blob => "bt-blob",
        Payload::Image => "bt-image",
    };
    let dirs: Vec<PathBuf> = s
        .nodes
        .iter()
        .map(|n| bed.fresh_dir(&format!("{}-{tag}", n.name)))
        .collect();
    let outcome = (|| {
        procs.push(torrent::start_seed(
            bed,
            &s.mirror,
            &torrent_file,
            &shared.seed_dir,
        )?);
        // The seed hashes its copy (well over 64 MiB/s) before it announces; leechers started
        // before that would find no one to ask until their next announce.
        let check = READY_TIMEOUT + Duration::from_secs(s.size(payload)? >> 26);
        torrent::wait_seeded(bed, &s.scheduler, &hash, check)?;
        let (origin0, mirror0) = (s.tx_bytes(&s.origin)?, s.tx_bytes(&s.mirror)?);
        let start = super::now();
        for (node, dir) in s.nodes.iter().zip(&dirs) {
            procs.push(torrent::start_leecher(bed, node, &torrent_file, dir)?);
        }
        let deadline = start + s.pull_timeout(s.size(payload)?).as_secs_f64();
        let mut times: Vec<Option<f64>> = vec![None; dirs.len()];
        while times.iter().any(Option::is_none) && super::now() < deadline {
            for (t, dir) in times.iter_mut().zip(&dirs) {
                if t.is_none() {
                    *t = std::fs::read_to_string(dir.join("done"))
                        .ok()
                        .and_then(|text| text.trim().parse::<f64>().ok())
                        .map(|done| done - start);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut verified = Vec::new();
        for ((t, dir), node) in times.iter().zip(&dirs).zip(&s.nodes) {
            match (t, check_files(dir, &shared.files)) {
                (Some(t), Ok(())) => verified.push(*t),
                (None, _) => eprintln!("fanout: {label}: {} did not finish", node.name),
                (Some(_), Err(e)) => eprintln!("fanout: {label}: {}: {e:#}", node.name),
            }
        }
        Ok(Outcome {
            label: label.to_owned(),
            payload,
            times: verified,
            origin_sent: s.tx_bytes(&s.origin)? - origin0,
            source_sent: s.tx_bytes(&s.mirror)? - mirror0,
        })
    })();
    for id in procs {
        bed.kill(id);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    outcome
}

fn shared(s: &Setup, payload: Payload) -> Result<Shared> {
    Ok(match payload {
        Payload::Blob => {
            let blob = s.blob()?;
            Shared {
                content: blob.path.clone(),
                seed_dir: blob.path.parent().context("blob dir")?.to_owned(),
                files: vec![(
                    "blob".into(),
                    blob.digest.trim_start_matches("sha256:").into(),
                )],
            }
        }
        Payload::Image => {
            // Hard links: the seed's copy costs no disk.
            let seed_dir = s.bed.fresh_dir("bt-image-seed");
            let content = seed_dir.join("image");
            std::fs::create_dir_all(&content)?;
            let image = s.image()?;
            let mut files = Vec::new();
            for blob in image.blobs() {
                let hex = blob.hex().to_owned();
                std::fs::hard_link(image.blob_path(&blob.digest), content.join(&hex))
                    .with_context(|| format!("linking blob {hex} into the torrent's folder"))?;
                files.push((Path::new("image").join(&hex), hex));
            }
            Shared {
                content,
                seed_dir,
                files,
            }
        }
    })
}

fn check_files(dir: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    for (path, want) in files {
        let got = sha256_file(&dir.join(path))?;
        anyhow::ensure!(
            &got == want,
            "{} hashes to {got}, not {want}",
            path.display()
        );
    }
    Ok(())
}
