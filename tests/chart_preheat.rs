//! `preheat.*`: a Job per chosen pool after install and upgrade that runs `poolcast preheat`
//! against that pool's mirror and, in p2p mode, the scheduler, signing with the pool's own key.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;

use chart_support::*;
use serde_yaml::Value;
use std::process::Command;

const TWO_POOLS: &str = r#"
p2p:
  plusMode:
    edgeNodePools:
      - {name: shop-1, id: np-1}
      - {name: shop-2, id: np-2}
preheat:
  images: ["registry.example.com/app:v1", "docker.io/library/alpine:3.20"]
  nodes: 3
  platform: linux/arm64
  authSecret: regcred
"#;

fn jobs(objs: &[Value]) -> Vec<&Value> {
    of_kind(objs, "Job", "preheat")
}

fn args_of(job: &Value) -> Vec<String> {
    strings(&job["spec"]["template"]["spec"]["containers"][0]["args"])
}

#[test]
fn each_pool_gets_a_preheat_job_after_install_and_upgrade_against_its_own_mirror() {
    let objs = objects_with(TWO_POOLS);
    let jobs = jobs(&objs);
    assert_eq!(jobs.len(), 2, "one Job per pool");
    for (job, pool) in jobs.iter().zip(["np-1", "np-2"]) {
        let hooks = str_of(&job["metadata"]["annotations"]["helm.sh/hook"]);
        assert_eq!(hooks, "post-install,post-upgrade");
        let args = args_of(job);
        let joined = args.join(" ");
        assert!(
            joined.starts_with("preheat registry.example.com/app:v1 docker.io/library/alpine:3.20"),
            "{joined}"
        );
        let mirror = args[args.iter().position(|a| a == "--mirror").unwrap() + 1].clone();
        assert!(
            mirror.starts_with(&format!("http://pc-poolcast-mirror-{pool}-")),
            "its own pool's mirror: {mirror}"
        );
        for want in [
            format!("--pool {pool}"),
            "--nodes 3".into(),
            "--platform linux/arm64".into(),
            "--scheduler http://pc-poolcast-scheduler.edge.svc:65003".into(),
            "--auth-file /etc/poolcast-preheat/.dockerconfigjson".into(),
        ] {
            assert!(joined.contains(&want), "{want} in {joined}");
        }
        let pod = &job["spec"]["template"]["spec"];
        let key = &pod["containers"][0]["env"][0];
        assert_eq!(str_of(&key["name"]), "POOLCAST_POOL_KEY");
        let secret = str_of(&key["valueFrom"]["secretKeyRef"]["name"]);
        assert!(
            secret.contains(&format!("-pool-{pool}-")),
            "the pool's key, not the release secret: {secret}"
        );
        assert_eq!(
            str_of(&pod["volumes"][0]["secret"]["secretName"]),
            "regcred"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("preheat.yaml");
    let manifest = render(&["-f", &write_values(&dir, TWO_POOLS)]).unwrap();
    std::fs::write(&file, manifest).unwrap();
    assert_strictly_valid(&[file]);
}

fn write_values(dir: &tempfile::TempDir, values: &str) -> String {
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, values).unwrap();
    path.display().to_string()
}

#[test]
fn the_jobs_arguments_are_what_poolcast_preheat_takes() {
    let objs = objects_with(TWO_POOLS);
    let mut args = args_of(jobs(&objs)[0]);
    // The mounted auth file, here an empty one.
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    std::fs::write(&auth, r#"{"auths": {}}"#).unwrap();
    let at = args.iter().position(|a| a == "--auth-file").unwrap() + 1;
    args[at] = auth.display().to_string();
    // Parsed as given (a usage error exits 2); it then fails on the unreachable mirror.
    let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .args(&args)
        .env("POOLCAST_POOL_KEY", "0".repeat(64)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("preheat failed"), "{err}");
}

#[test]
fn source_mode_preheats_the_mirror_only_and_no_images_means_no_job() {
    let objs = objects_with(
        "p2p:\n  plusMode:\n    downloadPattern: source\nedgeNodePool:\n  id: np-1\npreheat:\n  images: [a.io/x:v1]\n",
    );
    let jobs = jobs(&objs);
    assert_eq!(jobs.len(), 1);
    let joined = args_of(jobs[0]).join(" ");
    assert!(!joined.contains("--scheduler"), "{joined}");
    assert!(jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"].is_null());
    assert!(jobs_of_default().is_empty(), "no preheat.images: no Job");
}

fn jobs_of_default() -> Vec<Value> {
    let objs = objects_with("edgeNodePool:\n  id: np-1\n");
    jobs(&objs).into_iter().cloned().collect()
}

#[test]
fn a_node_count_of_zero_is_rejected() {
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=np-1",
            "--set-json",
            r#"preheat={"images":["a.io/x:v1"],"nodes":0}"#,
        ],
        "preheat",
    );
}
