//! Test images: an OCI image layout on disk with random, incompressible layers (uncompressed
//! tars, one file each), the skopeo arguments that push it and pull it back into a `dir:`
//! layout, and the check that such a pull is the image, digest for digest.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::{random_bytes, sha256_file, sha256_hex};

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
    pub fn build(dir: &Path, layer_sizes: &[usize], seed: u64) -> Result<TestImage> {
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

    /// skopeo's arguments that push this image to `dest` (`host:port/repo:tag`) over plain
    /// HTTP, as `creds` (anonymous when `None`). Digests are preserved (no recompression), so
    /// the registry holds exactly `manifest_digest` and these blobs.
    pub fn skopeo_push_args(&self, dest: &str, creds: Option<(&str, &str)>) -> Vec<String> {
        let mut args = skopeo_copy_args();
        args.push("--dest-tls-verify=false".into());
        args.push(match creds {
            Some((u, p)) => format!("--dest-creds={u}:{p}"),
            None => "--dest-no-creds".into(),
        });
        args.push(format!("oci:{}:{LAYOUT_REF}", self.layout.display()));
        args.push(format!("docker://{dest}"));
        args
    }

    /// Checks a skopeo `dir:` layout is this image: see [`verify_pulled`].
    pub fn verify(&self, out: &Path) -> Result<()> {
        verify_pulled(out, self)
    }
}

fn skopeo_copy_args() -> Vec<String> {
    ["--insecure-policy", "copy", "--quiet", "--preserve-digests"]
        .map(String::from)
        .to_vec()
}

/// skopeo's arguments that pull `source` (`host/repo:tag` or `host/repo@digest`) over plain
/// HTTP into the `dir:` layout `out`, as `creds` (anonymous when `None`), digests preserved.
pub fn skopeo_pull_args(source: &str, out: &Path, creds: Option<(&str, &str)>) -> Vec<String> {
    let mut args = skopeo_copy_args();
    args.push("--src-tls-verify=false".into());
    args.push(match creds {
        Some((u, p)) => format!("--src-creds={u}:{p}"),
        None => "--src-no-creds".into(),
    });
    args.push(format!("docker://{source}"));
    args.push(format!("dir:{}", out.display()));
    args
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_builds_the_same_image_and_a_pull_of_it_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = TestImage::build(&dir.path().join("a"), &[1000, 3000], 5).expect("build");
        let b = TestImage::build(&dir.path().join("b"), &[1000, 3000], 5).expect("build");
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.blobs().len(), 3);
        // A `dir:` layout as skopeo writes it: the manifest and each blob under its hex.
        let out = dir.path().join("pulled");
        fs::create_dir_all(&out).expect("mkdir");
        fs::write(out.join("manifest.json"), &a.manifest).expect("manifest");
        for blob in a.blobs() {
            fs::write(out.join(blob.hex()), a.blob_bytes(&blob.digest)).expect("blob");
        }
        a.verify(&out).expect("verifies");
        fs::write(out.join(a.layers[0].hex()), b"rot").expect("corrupt");
        assert!(a.verify(&out).is_err(), "a corrupt blob verified");
    }
}
