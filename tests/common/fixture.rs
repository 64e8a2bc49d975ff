//! The usual arrangement of a mirror test: a registry holding one pushed image, and a mirror in
//! front of it with its own cache dir.
//!
//! ```text
//!   TestImage --push--> Registry <--upstream-- Mirror(cache) <--pull-- client
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

use super::image::TestImage;
use super::mirror::{Mirror, SERVED_BYTES, UPSTREAM_BYTES};
use super::registry::Registry;

/// The repository and tag every fixture pushes.
pub const REPO: &str = "pool/app";
pub const TAG: &str = "v1";

pub struct Fixture {
    // Drop order is declaration order: the mirror goes before its upstream and its files.
    pub mirror: Mirror,
    pub registry: Registry,
    pub image: TestImage,
    /// `--cache-dir` of the mirror.
    pub cache: PathBuf,
    pub work: TempDir,
    dirs: AtomicUsize,
}

impl Fixture {
    /// Anonymous registry with an image of `layer_sizes` pushed as `pool/app:v1`, and a mirror
    /// with `--upstream REGISTRY --cache-dir CACHE` plus `mirror_args`.
    pub fn new(layer_sizes: &[usize], seed: u64, mirror_args: &[&str]) -> Fixture {
        Self::around(Registry::start(), layer_sizes, seed, mirror_args)
    }

    /// As [`Fixture::new`], but the registry demands `user:pass`.
    pub fn with_auth(user: &str, pass: &str, layer_sizes: &[usize], seed: u64) -> Fixture {
        Self::around(
            Registry::start_with_auth(user, pass),
            layer_sizes,
            seed,
            &[],
        )
    }

    /// As [`Fixture::new`], in front of a registry the caller started.
    pub fn around(
        registry: Registry,
        layer_sizes: &[usize],
        seed: u64,
        mirror_args: &[&str],
    ) -> Fixture {
        let work = tempfile::Builder::new()
            .prefix("poolcast-test-")
            .tempdir()
            .expect("temp dir");
        let image = TestImage::build(&work.path().join("layout"), layer_sizes, seed);
        image.push(&registry, &format!("{REPO}:{TAG}"), registry.creds());
        let cache = work.path().join("cache");
        let mirror = Mirror::for_registry(&registry, &cache, mirror_args);
        Fixture {
            mirror,
            registry,
            image,
            cache,
            work,
            dirs: AtomicUsize::new(0),
        }
    }

    /// `MIRROR_HOST/pool/app:v1`
    pub fn via_mirror_by_tag(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.mirror.host())
    }

    /// `MIRROR_HOST/pool/app@sha256:...`
    pub fn via_mirror_by_digest(&self) -> String {
        format!(
            "{}/{REPO}@{}",
            self.mirror.host(),
            self.image.manifest_digest
        )
    }

    /// A directory under the fixture's temp dir that no earlier call returned.
    pub fn fresh_dir(&self, label: &str) -> PathBuf {
        let n = self.dirs.fetch_add(1, Ordering::Relaxed);
        self.work.path().join(format!("{label}-{n}"))
    }

    /// skopeo-pulls `source` and checks it is the pushed image, digest for digest.
    pub fn pull_and_verify(&self, source: &str, creds: Option<(&str, &str)>) {
        self.image
            .pull_and_verify(source, &self.fresh_dir("pull"), creds);
    }

    /// `/v2/pool/app/blobs/<digest>`
    pub fn blob_path(&self, digest: &str) -> String {
        format!("/v2/{REPO}/blobs/{digest}")
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.mirror.metric(UPSTREAM_BYTES) as u64
    }

    pub fn served_bytes(&self) -> u64 {
        self.mirror.metric(SERVED_BYTES) as u64
    }

    /// Where the mirror keeps blob `digest`: `<cache-dir>/blobs/sha256/<hex>`.
    pub fn cached_blob_file(&self, digest: &str) -> PathBuf {
        self.cache
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}
