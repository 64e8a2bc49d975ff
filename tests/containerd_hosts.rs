//! `poolcast hosts`, as the chart's agent DaemonSet runs it, with a real containerd: the
//! `hosts.toml` it writes sends pulls through the agent, still pulls from the registry once the
//! agent is gone, and `hosts remove` takes it away again. An image the admission webhook
//! rewrote to its registry's distributed name pulls the same way, with no DNS for that name; and
//! `_default/hosts.toml` does the same for a registry that has no file of its own.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::SERVED_BYTES;
use common::p2p::{BedSpec, P2pBed};
use common::Containerd;
use std::path::Path;
use std::process::{Command, Stdio};

fn hosts(action: &str, config_path: &Path, agent_url: &str, registry: &str) {
    hosts_with(action, config_path, agent_url, registry, &[]);
}

fn hosts_with(action: &str, config_path: &Path, agent_url: &str, registry: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .args(["hosts", action, "--config-path"])
        .arg(config_path)
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

/// `ctr images pull` with the hosts dir as `poolcast hosts` left it (nothing rewritten).
/// containerd goes around a failing mirror silently: the agent's own counter shows it served.
fn assert_agent_served_a_copy(bed: &P2pBed, a: usize) {
    let served = bed.agents[a].metric(SERVED_BYTES);
    assert!(
        served >= bed.one_copy() as f64,
        "the agent served {served} of {} bytes; containerd went around it",
        bed.one_copy()
    );
}

fn pull(containerd: &Containerd, full_ref: &str) -> String {
    let hosts_dir = containerd.hosts_dir();
    containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--hosts-dir",
            hosts_dir.to_str().unwrap(),
            "--snapshotter",
            "native",
            full_ref,
        ])
        .unwrap_or_else(|e| panic!("ctr pull {full_ref}: {e:#}\n{}", containerd.log()));
    containerd.image_digest(full_ref).unwrap()
}

#[test]
fn hosts_toml_pulls_through_the_agent_and_falls_back_to_the_registry_without_it() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 36,
        scheduler: false,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    let registry = bed.fx.registry.host();
    let full_ref = format!("{registry}/{}", bed.image_ref());

    let containerd = Containerd::start();
    hosts(
        "write",
        &containerd.hosts_dir(),
        bed.agents[a].url(),
        &registry,
    );
    let file = containerd.hosts_dir().join(&registry).join("hosts.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("server = \"http://{registry}\"")),
        "{text}"
    );

    assert_eq!(pull(&containerd, &full_ref), bed.fx.image.manifest_digest);
    // containerd goes around a failing mirror silently: the agent's counter shows it served.
    assert_agent_served_a_copy(&bed, a);

    // The agent gone (uninstalled, crashed), a node with the same hosts.toml still pulls.
    let agent_url = bed.agents[a].url().to_string();
    bed.agents[a].kill();
    let fresh = Containerd::start();
    hosts("write", &fresh.hosts_dir(), &agent_url, &registry);
    assert_eq!(pull(&fresh, &full_ref), bed.fx.image.manifest_digest);

    hosts("remove", &fresh.hosts_dir(), &agent_url, &registry);
    assert!(!fresh.hosts_dir().join(&registry).exists());
}

#[test]
fn a_rewritten_image_pulls_through_the_agent_and_falls_back_to_its_registry() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 37,
        scheduler: false,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    let registry = bed.fx.registry.host();
    let agent_url = bed.agents[a].url().to_string();
    // What the webhook writes into the pod: the registry's distributed name at the agent's port.
    let agent_port = agent_url.rsplit(':').next().unwrap().trim_end_matches('/');
    let names =
        nodepool::DistributedNames::new("distributed.local", agent_port.parse().unwrap()).unwrap();
    let distributed = names.distributed(&registry).unwrap();
    assert!(
        distributed.ends_with(&format!(".distributed.local:{agent_port}")),
        "{distributed}"
    );
    let rewritten = format!("{distributed}/{}", bed.image_ref());

    let containerd = Containerd::start();
    hosts_with(
        "write",
        &containerd.hosts_dir(),
        &agent_url,
        &registry,
        &["--distributed"],
    );
    assert_eq!(pull(&containerd, &rewritten), bed.fx.image.manifest_digest);
    // The agent served it (containerd would go around a failing agent silently), having mapped
    // `?ns=<distributed name>` back to the registry the mirror knows.
    assert_agent_served_a_copy(&bed, a);

    // With the agent gone the same name still pulls, from the registry itself.
    bed.agents[a].kill();
    let fresh = Containerd::start();
    hosts_with(
        "write",
        &fresh.hosts_dir(),
        &agent_url,
        &registry,
        &["--distributed"],
    );
    assert_eq!(pull(&fresh, &rewritten), bed.fx.image.manifest_digest);
    hosts_with(
        "remove",
        &fresh.hosts_dir(),
        &agent_url,
        &registry,
        &["--distributed"],
    );
    assert_eq!(std::fs::read_dir(fresh.hosts_dir()).unwrap().count(), 0);
}

/// `poolcast hosts ACTION --default` alone: only `_default/hosts.toml`, no registry listed.
fn default_hosts(action: &str, config_path: &Path, agent_url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .args(["hosts", action, "--default", "--config-path"])
        .arg(config_path)
        .args(["--agent", agent_url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "poolcast hosts {action} --default: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_default_hosts_toml_sends_an_unlisted_registry_through_the_agent_and_falls_back_without_it() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 38,
        scheduler: false,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    let registry = bed.fx.registry.host();
    let full_ref = format!("{registry}/{}", bed.image_ref());
    let agent_url = bed.agents[a].url().to_string();

    // No file for the registry itself: containerd reads _default for it.
    let containerd = Containerd::start();
    default_hosts("write", &containerd.hosts_dir(), &agent_url);
    assert!(!containerd.hosts_dir().join(&registry).exists());
    assert_eq!(pull(&containerd, &full_ref), bed.fx.image.manifest_digest);
    assert_agent_served_a_copy(&bed, a);

    // With the agent gone, containerd's own fallback (the registry the image names) serves.
    bed.agents[a].kill();
    let fresh = Containerd::start();
    default_hosts("write", &fresh.hosts_dir(), &agent_url);
    assert_eq!(pull(&fresh, &full_ref), bed.fx.image.manifest_digest);
    default_hosts("remove", &fresh.hosts_dir(), &agent_url);
    assert_eq!(std::fs::read_dir(fresh.hosts_dir()).unwrap().count(), 0);
}
