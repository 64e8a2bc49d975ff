//! Test images: an OCI layout on disk with random, incompressible layers (the same scheme as the
//! root crate's `tests/common/image.rs`), pushed with skopeo from inside the origin's namespace
//! and pulled with skopeo inside a node's namespace into `dir:` layouts checked digest for digest.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bed::{run_in, Bed, Host};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYOUT_REF: &str = "edge";

#[derive(Clone, Debug)]
pub struct Blob {
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
}

/// One single-platform OCI image, built on disk.
pub struct TestImage {
    pub layout: PathBuf,
    pub manifest_digest: String,
    /// Config first, then the layers.
    pub blobs: Vec<Blob>,
}

impl TestImage {
    /// Layers of `layer_sizes[i]` pseudo-random bytes derived from `seed`, one file each.
    pub fn build(dir: &Path, layer_sizes: &[usize], seed: u64) -> Result<TestImage> {
        let blob_dir = dir.join("blobs/sha256");
        fs::create_dir_all(&blob_dir)?;
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut layers = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let content = random_bytes(size, seed.wrapping_mul(1000).wrapping_add(i as u64));
            let mut header = tar::Header::new_gnu();
            header.set_size(size as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            let mut builder = tar::Builder::new(Vec::with_capacity(size + 4096));
            builder.append_data(&mut header, format!("layer-{i}.bin"), content.as_slice())?;
            layers.push(store_blob(&blob_dir, &builder.into_inner()?)?);
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = store_blob(
            &blob_dir,
            &serde_json::to_vec(&json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Labels": {"poolcast.edge.seed": seed.to_string()}},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }))?,
        )?;
        let descriptor =
            |b: &Blob, t: &str| json!({"mediaType": t, "digest": b.digest, "size": b.size});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(&config, "application/vnd.oci.image.config.v1+json"),
            "layers": layers.iter().map(|l| descriptor(l, LAYER_TYPE)).collect::<Vec<_>>(),
        }))?;
        let manifest_ref = store_blob(&blob_dir, &manifest)?;
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
                "mediaType": MANIFEST_TYPE, "digest": manifest_ref.digest, "size": manifest_ref.size,
                "annotations": {"org.opencontainers.image.ref.name": LAYOUT_REF}}]}))?,
        )?;
        let mut blobs = vec![config];
        blobs.extend(layers);
        Ok(TestImage {
            layout: dir.to_owned(),
            manifest_digest: manifest_ref.digest,
            blobs,
        })
    }

    /// Bytes of one copy: config and layers, what a mirror fetches upstream exactly once.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Pushes the image with skopeo from inside `origin` to its registry on loopback (unshaped).
    pub fn push(&self, bed: &Bed, origin: &Host, registry_port: u16, repo_tag: &str) -> Result<()> {
        bed.run_ok(
            origin,
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-no-creds",
                &format!("oci:{}:{LAYOUT_REF}", self.layout.display()),
                &format!("docker://127.0.0.1:{registry_port}/{repo_tag}"),
            ],
        )?;
        Ok(())
    }

    /// skopeo-pulls `source` (`host:port/repo:tag` or `@digest`) inside `node` into `out` and
    /// checks it is this image, blob for blob.
    pub fn pull_and_verify(&self, node: &Host, source: &str, out: &Path) -> Result<()> {
        skopeo_pull(node, source, out)?;
        self.verify(out)
    }

    /// A skopeo `dir:` layout holds this manifest and every blob, each hashing to its name.
    pub fn verify(&self, out: &Path) -> Result<()> {
        let manifest = fs::read(out.join("manifest.json"))
            .with_context(|| format!("reading {}/manifest.json", out.display()))?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        ensure!(
            got == self.manifest_digest,
            "pulled manifest {got}, pushed {}",
            self.manifest_digest
        );
        for blob in &self.blobs {
            let hex = blob.digest.trim_start_matches("sha256:");
            let path = out.join(hex);
            let actual =
                sha256_file(&path).with_context(|| format!("blob {} missing", blob.digest))?;
            ensure!(
                actual == hex,
                "pulled blob {} hashes to sha256:{actual}",
                blob.digest
            );
        }
        Ok(())
    }
}

/// `skopeo copy docker://SOURCE dir:OUT` inside `node`; fails with skopeo's stderr.
pub fn skopeo_pull(node: &Host, source: &str, out: &Path) -> Result<()> {
    let output = run_in(
        node,
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-no-creds",
            &format!("docker://{source}"),
            &format!("dir:{}", out.display()),
        ],
        Duration::from_secs(180),
    )?;
    ensure!(
        output.status.success(),
        "skopeo pull of {source} in {} failed ({}): {}",
        node.name,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Deterministic, incompressible bytes (SplitMix64), fast even in a debug build.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8) * 8];
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    for chunk in out.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn store_blob(dir: &Path, data: &[u8]) -> Result<Blob> {
    let hex = hex::encode(Sha256::digest(data));
    fs::write(dir.join(&hex), data)?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: data.len() as u64,
    })
}
