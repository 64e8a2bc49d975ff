//! What the chart tests share: the real `helm` (installed by `scripts/install-helm.sh`), rendering,
//! and reading the rendered objects with serde_yaml.

#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use serde_yaml::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Kubernetes version whose schemas the manifests are checked against (the seeds' ACK Edge
/// clusters run 1.26 and later; kubernetes-validate ships 1.30's).
pub const KUBE_VERSION: &str = "1.30.0";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn helm() -> PathBuf {
    let path = root().join("target/tools/helm");
    let out = Command::new(root().join("scripts/install-helm.sh"))
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/install-helm.sh");
    assert!(
        out.status.success(),
        "scripts/install-helm.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/test.sh installs the tools)"))
}

/// `helm template` of the chart with `--set`/`--set-json` style arguments; Err is helm's stderr.
pub fn render(args: &[&str]) -> Result<String, String> {
    let out = run(Command::new(helm())
        .args(["template", "pc", "--namespace", "edge"])
        .arg(root().join("chart"))
        .args(args));
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The objects of a multi-document manifest (helm separates documents with `---` lines).
/// The objects rendered with `values` (YAML) as a values file.
pub fn objects_with(values: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    objects(&render(&["-f", file.to_str().unwrap()]).unwrap())
}

pub fn objects(manifest: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in manifest.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn of_kind<'a>(objs: &'a [Value], kind: &str, component: &str) -> Vec<&'a Value> {
    objs.iter()
        .filter(|o| o["kind"] == kind)
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        .collect()
}

pub fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

/// The nodeAffinity match expressions of a pod template, as (key, values).
pub fn affinity(workload: &Value) -> Vec<(String, Vec<String>)> {
    let terms = &workload["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let terms = terms.as_sequence().expect("required node affinity");
    assert_eq!(terms.len(), 1, "one term: its expressions are ANDed");
    terms[0]["matchExpressions"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["operator"], "In");
            let values = e["values"].as_sequence().unwrap();
            (
                str_of(&e["key"]).to_string(),
                values.iter().map(|v| str_of(v).to_string()).collect(),
            )
        })
        .collect()
}

/// A ConfigMap's one file, parsed.
pub fn config_of(objs: &[Value], name: &str) -> Value {
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"));
    let data = cm["data"].as_mapping().unwrap();
    assert_eq!(data.len(), 1);
    serde_yaml::from_str(str_of(data.values().next().unwrap())).unwrap()
}

pub fn env_of<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

pub fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

pub fn mount_path<'a>(workload: &'a Value, name: &str) -> Option<&'a str> {
    workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| str_of(&m["mountPath"]))
}

pub const POOLS: [&str; 3] = ["np-shop-1", "np-shop-2", "np-depot"];

pub fn pools_json(n: usize) -> String {
    let pools: Vec<String> = POOLS[..n]
        .iter()
        .map(|id| format!(r#"{{"name":"{id}-name","id":"{id}"}}"#))
        .collect();
    format!("p2p.plusMode.edgeNodePools=[{}]", pools.join(","))
}

/// The container's `args` (or a `command`) as strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| str_of(s).to_string())
        .collect()
}

/// `helm template` must fail, and its message must name `key`.
pub fn assert_rejected(args: &[&str], key: &str) {
    match render(args) {
        Ok(_) => panic!("{args:?} rendered; expected a failure naming {key}"),
        Err(e) => assert!(
            e.contains(key),
            "{args:?}: message does not name {key}: {e}"
        ),
    }
}

/// `poolcast config check --component COMPONENT` on a rendered config file; panics with its
/// message when the file is refused.
pub fn assert_config_accepted(component: &str, config: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{component}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(config).unwrap()).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast"))
        .args(["config", "check", "--component", component])
        .arg(&path));
    assert!(
        out.status.success(),
        "{component} config rejected: {}\n{config:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubernetes-validate --strict` of rendered manifests, in one run (loading the schemas
/// dominates); panics with its output unless every file passes.
pub fn assert_strictly_valid(files: &[PathBuf]) {
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--kubernetes-version", KUBE_VERSION])
        .args(files));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {text}");
    assert!(!text.contains("ERROR"), "{text}");
}
