//! Test images (built by `testkit`, shared with the edge tests), pushed with skopeo and pulled
//! back with skopeo into `dir:` layouts that are checked digest for digest.

use std::ops::Deref;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::Result;

use super::registry::Registry;
use super::{require_tool, run_ok, run_with_timeout, CLIENT_TIMEOUT};

pub use testkit::image::{CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE};
pub use testkit::{random_bytes, verify_pulled, BlobRef};

/// One single-platform OCI image, built on disk: a [`testkit::TestImage`] that this suite
/// pushes and pulls with skopeo run directly.
pub struct TestImage(testkit::TestImage);

impl Deref for TestImage {
    type Target = testkit::TestImage;
    fn deref(&self) -> &testkit::TestImage {
        &self.0
    }
}

impl TestImage {
    /// Builds an image in `dir` (an OCI layout) whose layers are uncompressed tars, each holding
    /// one file of `layer_sizes[i]` pseudo-random bytes derived from `seed`. Same seed, same image.
    pub fn build(dir: &Path, layer_sizes: &[usize], seed: u64) -> TestImage {
        TestImage(testkit::TestImage::build(dir, layer_sizes, seed).expect("building test image"))
    }

    /// `skopeo copy` the image to `registry` as `repo:tag`, digests preserved.
    pub fn push(&self, registry: &Registry, repo_tag: &str, creds: Option<(&str, &str)>) {
        require_tool("skopeo");
        let dest = format!("{}/{repo_tag}", registry.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(self.skopeo_push_args(&dest, creds));
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
    cmd.args(testkit::image::skopeo_pull_args(source, out, creds));
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}
