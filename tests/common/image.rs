//! Test images: an OCI image layout on disk with random, incompressible layers, pushed with skopeo
//! and pulled back with skopeo into `dir:` layouts that are checked digest for digest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use super::registry::Registry;
use super::{require_tool, run_ok, run_with_timeout, sha256_file, sha256_hex, CLIENT_TIMEOUT};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The tag inside the on-disk layout (`oci:DIR:poolcast-test`).
const LAYOUT_REF: &str = "poolcast-test";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl BlobRef {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// One single-platform OCI image, built on disk.
pub struct TestImage {
    pub layout: PathBuf,
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`, which is what every pull must resolve to.
    pub manifest_digest: String,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

impl TestImage {
    /// Builds an image in `dir` (an OCI layout) whose layers are uncompressed tars, each holding
    /// one file of `layer_sizes[i]` pseudo-random bytes derived from `seed`. Same seed, same image.
    pub fn build(dir: &Path, layer_sizes: &[usize], seed: u64) -> TestImage {
        Self::try_build(dir, layer_sizes, seed).expect("building test image")
    }

    fn try_build(dir: &Path, layer_sizes: &[usize], seed: u64) -> Result<TestImage> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
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
            drop(content);
            let tar = builder.into_inner()?;
            layers.push(store_blob(&blobs, &tar, LAYER_TYPE)?);
        }

        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let history: Vec<_> = (0..layers.len())
            .map(|i| json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("poolcast test layer {i}")}))
            .collect();
        let config = serde_json::to_vec(&json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": oci_arch(),
            "os": "linux",
            "config": {"Labels": {"poolcast.test.seed": seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }))?;
        let config = store_blob(&blobs, &config, CONFIG_TYPE)?;

        let descriptor =
            |b: &BlobRef| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(&config),
            "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
        }))?;
        let manifest_ref = store_blob(&blobs, &manifest, MANIFEST_TYPE)?;
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": MANIFEST_TYPE,
                    "digest": manifest_ref.digest,
                    "size": manifest_ref.size,
                    "annotations": {"org.opencontainers.image.ref.name": LAYOUT_REF},
                }],
            }))?,
        )?;
        Ok(TestImage {
            layout: dir.to_owned(),
            manifest,
            manifest_digest: manifest_ref.digest,
            config,
            layers,
        })
    }

    /// Config and layers: everything a pull fetches as a blob.
    pub fn blobs(&self) -> Vec<&BlobRef> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }

    /// Bytes of all blobs (config + layers); what a mirror should fetch upstream exactly once.
    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs().iter().map(|b| b.size).sum()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn blob_bytes(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).expect("reading blob from test layout")
    }

    /// `skopeo copy` the image to `registry` as `repo:tag`. Digests are preserved (no
    /// recompression), so the registry holds exactly `manifest_digest` and these blobs.
    pub fn push(&self, registry: &Registry, repo_tag: &str, creds: Option<(&str, &str)>) {
        require_tool("skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
            .arg("--dest-tls-verify=false");
        match creds {
            Some((u, p)) => cmd.arg(format!("--dest-creds={u}:{p}")),
            None => cmd.arg("--dest-no-creds"),
        };
        cmd.arg(format!("oci:{}:{LAYOUT_REF}", self.layout.display()))
            .arg(format!("docker://{}/{repo_tag}", registry.host()));
        run_ok(&mut cmd, CLIENT_TIMEOUT).expect("skopeo push");
    }

    /// Pulls `source` (`host/repo:tag` or `host/repo@digest`) with skopeo into `out` and checks
    /// it is this image, byte for byte. Panics with skopeo's stderr when the pull fails.
    pub fn pull_and_verify(&self, source: &str, out: &Path, creds: Option<(&str, &str)>) {
        let output = skopeo_pull(source, out, creds).expect("running skopeo pull");
        assert!(
            output.status.success(),
            "skopeo pull of {source} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        verify_pulled(out, self).unwrap_or_else(|e| panic!("pull of {source}: {e:#}"));
    }
}

/// `skopeo copy docker://SOURCE dir:OUT`, plain HTTP, digests preserved, anonymous unless
/// `creds` are given. A failed pull is `Ok` with a non-zero status (tests assert failures too);
/// `Err` means skopeo could not run or hung.
pub fn skopeo_pull(source: &str, out: &Path, creds: Option<(&str, &str)>) -> Result<Output> {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .arg("--src-tls-verify=false");
    match creds {
        Some((u, p)) => cmd.arg(format!("--src-creds={u}:{p}")),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{source}"))
        .arg(format!("dir:{}", out.display()));
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}

/// Checks a skopeo `dir:` layout: its manifest hashes to the pushed manifest digest, every blob
/// of the image is present with the right size, and every blob file hashes to its name.
pub fn verify_pulled(out: &Path, image: &TestImage) -> Result<()> {
    let manifest = fs::read(out.join("manifest.json"))
        .with_context(|| format!("reading {}/manifest.json", out.display()))?;
    let got = format!("sha256:{}", sha256_hex(&manifest));
    ensure!(
        got == image.manifest_digest,
        "pulled manifest is {got}, pushed {}:\n{}",
        image.manifest_digest,
        String::from_utf8_lossy(&manifest)
    );
    for blob in image.blobs() {
        let path = out.join(blob.hex());
        let len = fs::metadata(&path)
            .with_context(|| format!("blob {} missing from pull", blob.digest))?
            .len();
        ensure!(
            len == blob.size,
            "blob {} is {len} bytes, expected {}",
            blob.digest,
            blob.size
        );
    }
    for entry in fs::read_dir(out)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "manifest.json" || name == "version" {
            continue;
        }
        let actual = sha256_file(&entry.path())?;
        if actual != name {
            bail!("pulled blob {name} hashes to sha256:{actual}");
        }
    }
    Ok(())
}

/// Deterministic, incompressible bytes (SplitMix64). Not `rand`: an unoptimised test build fills
/// 64 MiB with this in well under a second, with `StdRng` in several.
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

/// Writes `data` into the layout's blob dir under its digest.
fn store_blob(blobs: &Path, data: &[u8], media_type: &str) -> Result<BlobRef> {
    // Large blobs are hashed by sha256sum from disk; see `sha256_file`.
    let tmp = blobs.join(".incoming");
    fs::write(&tmp, data)?;
    let hex = if data.len() > 1 << 20 {
        sha256_file(&tmp)?
    } else {
        sha256_hex(data)
    };
    fs::rename(&tmp, blobs.join(&hex))?;
    Ok(BlobRef {
        digest: format!("sha256:{hex}"),
        size: data.len() as u64,
        media_type: media_type.to_owned(),
    })
}

/// The OCI architecture name of this machine, so containerd's platform match accepts the image.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
