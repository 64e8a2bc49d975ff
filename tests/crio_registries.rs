//! `poolcast hosts --runtime crio` with the containers/image stack CRI-O pulls with: skopeo,
//! reading the drop-in `poolcast hosts` wrote as its registries.conf, pulls the image by its
//! original name from the CNCF registry through the agent (whose counters show it served), and
//! straight from the registry once the agent is gone.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::SERVED_BYTES;
use common::p2p::{BedSpec, P2pBed};
use common::{require_tool, run_with_timeout, CLIENT_TIMEOUT};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn hosts(action: &str, dir: &Path, agent_url: &str, registry: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .args([
            "hosts",
            action,
            "--runtime",
            "crio",
            "--registries-conf-dir",
        ])
        .arg(dir)
        .args(["--agent", agent_url])
        .args(["--registry", &format!("{registry}=http://{registry}")])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "poolcast hosts {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `skopeo copy` by `image`'s own name, with nothing but the drop-in as registries.conf: no
/// `--src-tls-verify`, so plain HTTP is allowed only where the drop-in says `insecure`.
fn skopeo_pull(conf: &Path, image: &str, out: &Path) -> Output {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(conf)
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .arg("--src-no-creds")
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", out.display()));
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT).unwrap()
}

fn pull_ok(bed: &P2pBed, conf: &Path, image: &str) {
    let out = tempfile::tempdir().unwrap();
    let output = skopeo_pull(conf, image, out.path());
    assert!(
        output.status.success(),
        "skopeo pull of {image} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(conf).unwrap_or_default()
    );
    common::image::verify_pulled(out.path(), &bed.fx.image).unwrap();
}

#[test]
fn skopeo_with_the_crio_drop_in_pulls_through_the_agent_and_from_the_registry_without_it() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 61,
        scheduler: false,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    let registry = bed.fx.registry.host();
    let image = format!("{registry}/{}", bed.image_ref());
    let agent_url = bed.agents[a].url().to_string();

    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("registries.conf.d");
    hosts("write", &conf_dir, &agent_url, &registry, &[]);
    let conf = conf_dir.join("poolcast.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("prefix = \"{registry}\"")), "{text}");

    pull_ok(&bed, &conf, &image);
    // containers/image goes around a failing mirror silently: the agent's counter shows it
    // served the whole image, having taken the registry's name off the path.
    let served = bed.agents[a].metric(SERVED_BYTES);
    assert!(
        served >= bed.one_copy() as f64,
        "the agent served {served} of {} bytes; skopeo went around it",
        bed.one_copy()
    );

    // The agent gone, the same drop-in still pulls, from the registry itself.
    bed.agents[a].kill();
    pull_ok(&bed, &conf, &image);

    hosts("remove", &conf_dir, &agent_url, &registry, &[]);
    assert!(!conf.exists());
}

#[test]
fn an_image_renamed_by_the_webhook_pulls_through_the_agent_under_crio() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 62,
        scheduler: false,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    let registry = bed.fx.registry.host();
    let agent_url = bed.agents[a].url().to_string();
    let agent_port: u16 = agent_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let names = nodepool::DistributedNames::new("distributed.local", agent_port).unwrap();
    let image = format!(
        "{}/{}",
        names.distributed(&registry).unwrap(),
        bed.image_ref()
    );

    let dir = tempfile::tempdir().unwrap();
    hosts(
        "write",
        dir.path(),
        &agent_url,
        &registry,
        &["--distributed"],
    );
    let conf = dir.path().join("poolcast.conf");
    pull_ok(&bed, &conf, &image);
    assert!(bed.agents[a].metric(SERVED_BYTES) >= bed.one_copy() as f64);

    bed.agents[a].kill();
    pull_ok(&bed, &conf, &image);
}
