//! The chart's `runtime` value: the agent pods' hosts containers, as rendered, run by the real
//! binary against a folder standing in for the node (`/host/...` paths mapped into it), write
//! CRI-O's drop-in on a CRI-O node and containerd's files on a containerd node, and remove them.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;

use chart_support::*;
use std::path::Path;
use std::process::Command;

/// The hosts-toml init container's `args` and the agent's preStop command, rendered with `extra`.
fn rendered_commands(extra: &[&str]) -> (Vec<String>, Vec<String>, serde_yaml::Value) {
    let mut args = vec![
        "--set",
        "edgeNodePool.id=a",
        "--set-json",
        r#"registries=[{"host":"docker.io"},{"host":"10.0.0.5:5000","insecure":true}]"#,
    ];
    args.extend_from_slice(extra);
    let objs = objects(&render(&args).unwrap());
    let agent = of_kind(&objs, "DaemonSet", "agent")[0].clone();
    let spec = &agent["spec"]["template"]["spec"];
    let write = strings(&spec["initContainers"][0]["args"]);
    let remove = strings(&spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(write[2..], remove[3..], "remove undoes what write did");
    (write, remove[1..].to_vec(), agent)
}

/// Runs a rendered `poolcast` command with the node's `/host/...` paths under `node`.
fn run_on(node: &Path, args: &[String]) {
    let local: Vec<String> = args
        .iter()
        .map(|a| match a.strip_prefix("/host/") {
            Some(rest) => node.join(rest).display().to_string(),
            None => a.clone(),
        })
        .collect();
    let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast")).args(&local));
    assert!(
        out.status.success(),
        "{local:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mounts(container: &serde_yaml::Value) -> Vec<(String, bool)> {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (str_of(&m["name"]).to_string(), m["readOnly"] == true))
        .collect()
}

#[test]
fn runtime_crio_writes_the_drop_in_for_every_registry_and_removes_it() {
    let (write, remove, agent) = rendered_commands(&["--set", "runtime=crio"]);
    assert_eq!(
        volume(&agent, "crio-registries")["hostPath"]["path"],
        "/etc/containers/registries.conf.d"
    );
    let node = tempfile::tempdir().unwrap();
    run_on(node.path(), &write);
    let conf = node.path().join("registries.conf.d/poolcast.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    for expected in [
        "prefix = \"docker.io\"\nlocation = \"docker.io\"\ninsecure = false",
        "location = \"127.0.0.1:65001/docker.io.distributed.local\"\ninsecure = true",
        "prefix = \"10.0.0.5:5000\"\nlocation = \"10.0.0.5:5000\"\ninsecure = true",
        // The webhook's names, to the same registries.
        "prefix = \"docker.io.distributed.local:65001\"\nlocation = \"docker.io\"",
    ] {
        assert!(text.contains(expected), "{expected}\n---\n{text}");
    }
    assert!(
        !node
            .path()
            .join("containerd-config-path/docker.io")
            .exists(),
        "runtime crio writes no hosts.toml"
    );
    run_on(node.path(), &remove);
    assert!(!conf.exists());
}

#[test]
fn an_unset_runtime_wires_whichever_runtime_the_node_has_a_socket_for() {
    let (write, remove, agent) = rendered_commands(&[]);
    let spec = &agent["spec"]["template"]["spec"];
    // Only the hosts container reads the host's /run, and only reads it.
    assert!(mounts(&spec["initContainers"][0]).contains(&("host-run".into(), true)));
    assert!(!mounts(&spec["containers"][0])
        .iter()
        .any(|(name, _)| name == "host-run"));
    assert_eq!(volume(&agent, "host-run")["hostPath"]["path"], "/run");

    // A CRI-O node.
    let crio = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(crio.path().join("run/crio")).unwrap();
    std::fs::write(crio.path().join("run/crio/crio.sock"), "").unwrap();
    run_on(crio.path(), &write);
    assert!(crio.path().join("registries.conf.d/poolcast.conf").exists());
    assert!(!crio
        .path()
        .join("containerd-config-path/docker.io")
        .exists());
    run_on(crio.path(), &remove);
    assert!(!crio.path().join("registries.conf.d/poolcast.conf").exists());

    // A containerd node.
    let ctrd = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctrd.path().join("run/containerd")).unwrap();
    std::fs::write(ctrd.path().join("run/containerd/containerd.sock"), "").unwrap();
    run_on(ctrd.path(), &write);
    assert!(ctrd
        .path()
        .join("containerd-config-path/docker.io/hosts.toml")
        .exists());
    assert!(!ctrd.path().join("registries.conf.d/poolcast.conf").exists());
    run_on(ctrd.path(), &remove);
    assert!(!ctrd
        .path()
        .join("containerd-config-path/docker.io")
        .exists());
}

#[test]
fn runtime_containerd_mounts_nothing_of_crio_or_the_hosts_run() {
    let (write, _, agent) = rendered_commands(&["--set", "runtime=containerd"]);
    assert!(!write
        .iter()
        .any(|a| a.contains("registries.conf.d") || a.contains("/run/")));
    let volumes = agent["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(!volumes
        .iter()
        .any(|v| v["name"] == "crio-registries" || v["name"] == "host-run"));
    assert_rejected(
        &["--set", "edgeNodePool.id=a", "--set", "runtime=docker"],
        "runtime",
    );
}
