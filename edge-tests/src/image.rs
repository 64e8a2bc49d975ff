//! Test images (built by `testkit`, the same as the root crate's integration tests use),
//! pushed with skopeo from inside the origin's namespace and pulled with skopeo inside a node's
//! namespace into `dir:` layouts checked digest for digest (`TestImage::verify`).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::bed::{run_in, Bed, Host};
use crate::parts::REGISTRY_PORT;

pub use testkit::{random_bytes, sha256_file, TestImage};

/// Pushes `image` with skopeo from inside `origin` to its registry on loopback (unshaped).
pub fn push(image: &TestImage, bed: &Bed, origin: &Host, repo_tag: &str) -> Result<()> {
    let dest = format!("127.0.0.1:{REGISTRY_PORT}/{repo_tag}");
    let args = image.skopeo_push_args(&dest, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bed.run_ok(origin, "skopeo", &args)?;
    Ok(())
}

/// `skopeo copy docker://SOURCE dir:OUT` inside `node`; fails with skopeo's stderr.
pub fn skopeo_pull(node: &Host, source: &str, out: &Path) -> Result<()> {
    let args = testkit::image::skopeo_pull_args(source, out, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_in(node, "skopeo", &args, Duration::from_secs(180))?;
    ensure!(
        output.status.success(),
        "skopeo pull of {source} in {} failed ({}): {}",
        node.name,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
