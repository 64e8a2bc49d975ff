//! The Helm chart in `chart/`, driven through the real `helm` (installed by
//! `scripts/install-helm.sh`), the real `kubernetes-validate` (Kubernetes' own OpenAPI schemas)
//! and the real `poolcast` config loader:
//!
//! ```text
//!   values matrix --helm template--> manifests --kubernetes-validate --strict--> ok
//!                                        |
//!                                        +--> ConfigMap files --poolcast config check--> ok
//!                                        +--> serde_yaml objects --> placement assertions
//! ```

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;

use chart_support::*;
use std::process::Command;

/// One point of the values matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    pattern: &'static str,
    pools: usize,
    node_selector: bool,
    host_path: &'static str,
    cache_mode: &'static str,
    hosts_toml: bool,
    /// More `helm template` arguments.
    extra: &'static [&'static str],
}

impl Case {
    fn args(&self) -> Vec<String> {
        vec![
            "--set-json".into(),
            pools_json(self.pools),
            "--set".into(),
            format!("p2p.plusMode.downloadPattern={}", self.pattern),
            "--set".into(),
            format!("p2p.plusMode.nodeSelectorEnable={}", self.node_selector),
            "--set".into(),
            format!("p2p.plusMode.cacheHostPath={}", self.host_path),
            "--set".into(),
            format!("p2p.v2.cache.mode={}", self.cache_mode),
            "--set".into(),
            format!("containerd.hostsToml={}", self.hosts_toml),
        ]
        .into_iter()
        .chain(self.extra.iter().map(|a| a.to_string()))
        .collect()
    }

    fn render(&self) -> String {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        render(&args).unwrap_or_else(|e| panic!("{self:?} fails to render: {e}"))
    }
}

/// p2p/source x one/three pools x nodeSelectorEnable x hostPath set/empty x disk/memory, with
/// containerd wiring; plus one case without it, one with ACR instances and `_default`, and one
/// with a registry's private CA and the scheduler's dashboard.
fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for pattern in ["p2p", "source"] {
        for pools in [1, 3] {
            for node_selector in [false, true] {
                for host_path in ["", "/data/poolcast-mirror"] {
                    for cache_mode in ["disk", "memory"] {
                        cases.push(Case {
                            pattern,
                            pools,
                            node_selector,
                            host_path,
                            cache_mode,
                            hosts_toml: true,
                            extra: &[],
                        });
                    }
                }
            }
        }
    }
    cases.push(Case {
        hosts_toml: false,
        ..cases[0]
    });
    cases.push(Case {
        extra: &["--set", "runtime=crio"],
        ..cases[0]
    });
    cases.push(Case {
        extra: &[
            "--set-json",
            r#"registryInstances="cri-a=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com,shop""#,
            "--set",
            "region=cn-shanghai",
            "--set",
            "containerd.defaultMirror=true",
            "--set",
            "mirror.allowAnyRegistry=true",
        ],
        ..cases[0]
    });
    cases.push(Case {
        extra: &[
            "--set-json",
            r#"registries=[{"host":"docker.io"},{"host":"harbor.example.com","ca":"-----BEGIN CERTIFICATE-----\nMIIBharbor\n-----END CERTIFICATE-----\n"}]"#,
            "--set",
            "scheduler.dashboard=true",
        ],
        ..cases[0]
    });
    cases
}

/// Stands in for a CA in values: rendering only checks for the PEM armour.
const PEM_A: &str = "-----BEGIN CERTIFICATE-----\nMIIBharbor\n-----END CERTIFICATE-----\n";
const PEM_B: &str = "-----BEGIN CERTIFICATE-----\nMIIBlocal\n-----END CERTIFICATE-----\n";

#[test]
fn every_point_of_the_matrix_lints_clean() {
    for case in matrix() {
        let out = run(Command::new(helm())
            .args(["lint", "--strict"])
            .arg(root().join("chart"))
            .args(case.args()));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{case:?}: helm lint: {text}");
        assert!(text.contains("0 chart(s) failed"), "{case:?}: {text}");
    }
}

#[test]
fn every_rendering_of_the_matrix_passes_strict_kubernetes_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, case) in matrix().iter().enumerate() {
        let path = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&path, case.render()).unwrap();
        files.push(path);
    }
    assert_strictly_valid(&files);
}

#[test]
fn strict_validation_catches_a_misspelled_field() {
    // The validator in use rejects what the API server would: proves the matrix test can fail.
    let dir = tempfile::tempdir().unwrap();
    let manifest = matrix()[0].render().replace(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrk: true",
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--kubernetes-version", KUBE_VERSION])
        .arg(&path));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hostNetwrk"));
}

#[test]
fn every_rendered_config_file_is_accepted_by_poolcast() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in matrix() {
        let objs = objects(&case.render());
        for cm in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
            let component = str_of(&cm["metadata"]["labels"]["app.kubernetes.io/component"]);
            if component == "upstream-ca" || component == "grafana-dashboard" {
                continue; // PEM files or the dashboard, not a component's config
            }
            for (file, text) in cm["data"].as_mapping().unwrap() {
                let path = dir.path().join(str_of(file));
                std::fs::write(&path, str_of(text)).unwrap();
                let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast"))
                    .args(["config", "check", "--component", component])
                    .arg(&path));
                assert!(
                    out.status.success(),
                    "{case:?}: {component} config rejected: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    str_of(text)
                );
                checked += 1;
            }
        }
    }
    // 16 p2p cases (scheduler + agent and mirror per pool), 16 source ones, 4 more one-pool
    // p2p ones; and the webhook's in each of the 36.
    assert_eq!(
        checked,
        8 * (1 + 2) + 8 * (1 + 6) + 8 * 2 + 8 * 6 + 4 * (1 + 2) + 36
    );
}

#[test]
fn agent_daemonsets_land_only_on_chosen_pools_and_use_their_pools_mirror() {
    let objs = objects(
        &render(&[
            "--set-json",
            &pools_json(3),
            "--set",
            "nodePoolLabel=apps.openyurt.io/nodepool",
        ])
        .unwrap(),
    );
    let agents = of_kind(&objs, "DaemonSet", "agent");
    assert_eq!(agents.len(), 3, "one agent DaemonSet per pool");
    let mirrors = of_kind(&objs, "Service", "mirror");
    for (agent, pool) in agents.iter().zip(POOLS) {
        assert_eq!(
            affinity(agent),
            vec![(
                "apps.openyurt.io/nodepool".to_string(),
                vec![pool.to_string()]
            )],
            "agent of {pool} must select only that pool's nodes"
        );
        let spec = &agent["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
        let config = config_of(&objs, str_of(&agent["metadata"]["name"]));
        assert_eq!(config["pool"], pool);
        assert_eq!(config["listen"], "0.0.0.0:65001");
        // The mirror URL names the Service that selects this pool's mirror pods.
        let service = mirrors
            .iter()
            .find(|s| s["spec"]["selector"]["poolcast.io/pool"] == pool)
            .unwrap();
        assert_eq!(
            config["mirror"],
            format!(
                "http://{}.edge.svc:5000",
                str_of(&service["metadata"]["name"])
            )
        );
        let container = &spec["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], 65001);
    }
}

#[test]
fn agent_advertises_the_node_ip_and_carries_the_pool_secret() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=np-shop-1",
            "--set",
            "p2p.peerPort=7002",
        ])
        .unwrap(),
    );
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    assert_eq!(
        env_of(agent, "NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert_eq!(
        env_of(agent, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env_of(agent, "POOLCAST_ADVERTISE")["value"],
        "$(NODE_IP):7002"
    );
    let release = |objs: &[serde_yaml::Value]| {
        objs.iter()
            .find(|o| o["kind"] == "Secret" && str_of(&o["metadata"]["name"]).ends_with("-secret"))
            .unwrap()
            .clone()
    };
    let secret = release(&objs);
    // The scheduler holds the release secret; the agents only their pool's key.
    let scheduler = of_kind(&objs, "Deployment", "scheduler")[0];
    let key_ref = &env_of(scheduler, "POOLCAST_SECRET")["valueFrom"]["secretKeyRef"];
    assert_eq!(key_ref["name"], secret["metadata"]["name"]);
    assert!(secret["data"][str_of(&key_ref["key"])].is_string());
    let agent_env =
        serde_yaml::to_string(&agent["spec"]["template"]["spec"]["containers"]).unwrap();
    assert!(!agent_env.contains("POOLCAST_SECRET"), "{agent_env}");
    let pool_ref = &env_of(agent, "POOLCAST_POOL_KEY")["valueFrom"]["secretKeyRef"];
    assert_ne!(pool_ref["name"], secret["metadata"]["name"]);
    let pool_secret = by_name(&objs, "Secret", str_of(&pool_ref["name"]));
    let decode = |v: &serde_yaml::Value| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(str_of(v))
            .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let release_secret = nodepool::PoolSecret::new(decode(&secret["data"]["secret"]));
    assert_eq!(
        nodepool::PoolSecret::new(decode(&pool_secret["data"]["poolKey"])),
        nodepool::keys::pool_key(&release_secret, "np-shop-1"),
        "the chart's pool key is not the one nodepool derives"
    );
    // Given a secret, the chart uses it as is; the generated one is long and differs per install.
    let given =
        objects(&render(&["--set", "edgeNodePool.id=a", "--set", "p2p.secret=s3cret"]).unwrap());
    assert_eq!(release(&given)["data"]["secret"], "czNjcmV0");
    let again = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=np-shop-1",
            "--set",
            "p2p.peerPort=7002",
        ])
        .unwrap(),
    );
    let (first, second) = (release(&objs), release(&again));
    assert_ne!(first["data"]["secret"], second["data"]["secret"]);
    assert!(str_of(&first["data"]["secret"]).len() >= 40);
}

#[test]
fn connected_pools_share_a_pair_key_and_nothing_else() {
    let values = "p2p:\n  secret: s3cret\n  plusMode:\n    edgeNodePools:\n      - {id: np-a, connectedPools: [np-b]}\n      - {id: np-b}\n      - {id: np-c}\n";
    let objs = objects_with(values);
    let release = nodepool::PoolSecret::new("s3cret");
    let keys_of = |pool: &str| {
        let agent = of_kind(&objs, "DaemonSet", "agent")
            .into_iter()
            .find(|d| d["metadata"]["labels"]["poolcast.io/pool"] == pool)
            .unwrap();
        let name = str_of(&env_of(agent, "POOLCAST_POOL_KEY")["valueFrom"]["secretKeyRef"]["name"]);
        let data = by_name(&objs, "Secret", name)["data"].clone();
        let decode = |v: &serde_yaml::Value| {
            use base64::Engine as _;
            let text = v.as_str().unwrap_or("");
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap(),
            )
            .unwrap()
        };
        (decode(&data["poolKey"]), decode(&data["pairKeys"]))
    };
    for (pool, pairs) in [
        ("np-a", vec!["np-b"]),
        ("np-b", vec!["np-a"]),
        ("np-c", vec![]),
    ] {
        let (own, pair_keys) = keys_of(pool);
        assert_eq!(
            nodepool::PoolSecret::new(own),
            nodepool::keys::pool_key(&release, pool),
            "{pool}"
        );
        let listed: Vec<&str> = pair_keys.split(',').filter(|p| !p.is_empty()).collect();
        assert_eq!(listed.len(), pairs.len(), "{pool}: {pair_keys}");
        for (entry, other) in listed.iter().zip(&pairs) {
            let (name, key) = entry.split_once('=').unwrap();
            assert_eq!(name, *other);
            assert_eq!(
                nodepool::PoolSecret::new(key),
                nodepool::keys::pair_key(&release, pool, other),
                "{pool}-{other}"
            );
        }
    }
}

#[test]
fn source_mode_deploys_no_scheduler() {
    let objs = objects(
        &render(&[
            "--set-json",
            &pools_json(3),
            "--set",
            "p2p.plusMode.downloadPattern=source",
        ])
        .unwrap(),
    );
    assert!(objs
        .iter()
        .all(|o| !str_of(&o["metadata"]["name"]).contains("scheduler")));
    for agent in of_kind(&objs, "DaemonSet", "agent") {
        let config = config_of(&objs, str_of(&agent["metadata"]["name"]));
        assert_eq!(config["downloadPattern"], "source");
        assert!(config.get("scheduler").is_none());
    }
}

#[test]
fn p2p_mode_deploys_one_scheduler_that_knows_every_chosen_pool() {
    let objs = objects(&render(&["--set-json", &pools_json(3)]).unwrap());
    let schedulers = of_kind(&objs, "Deployment", "scheduler");
    assert_eq!(schedulers.len(), 1);
    let config = config_of(&objs, str_of(&schedulers[0]["metadata"]["name"]));
    let ids: Vec<&str> = config["edgeNodePools"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| str_of(&p["id"]))
        .collect();
    assert_eq!(ids, POOLS);
    let service = of_kind(&objs, "Service", "scheduler")[0];
    for agent in of_kind(&objs, "DaemonSet", "agent") {
        let agent_config = config_of(&objs, str_of(&agent["metadata"]["name"]));
        assert_eq!(
            agent_config["scheduler"],
            format!(
                "http://{}.edge.svc:65003",
                str_of(&service["metadata"]["name"])
            )
        );
    }
}

#[test]
fn the_scheduler_serves_its_dashboard_only_when_asked() {
    let pools = pools_json(1);
    let args_with = |extra: &[&str]| {
        let mut args = vec!["--set-json", pools.as_str()];
        args.extend_from_slice(extra);
        let objs = objects(&render(&args).unwrap());
        let scheduler = of_kind(&objs, "Deployment", "scheduler")[0];
        strings(&scheduler["spec"]["template"]["spec"]["containers"][0]["args"])
    };
    let off = args_with(&[]);
    assert_eq!(
        off[..3],
        ["scheduler", "--config", "/etc/poolcast/scheduler.yaml"]
    );
    assert!(
        !off.iter().any(|a| a == "--dashboard"),
        "off by default: {off:?}"
    );
    let explicit_off = args_with(&["--set", "scheduler.dashboard=false"]);
    assert_eq!(explicit_off, off);
    let on = args_with(&[
        "--set",
        "scheduler.dashboard=true",
        "--set",
        "tracing.otlp.endpoint=http://otel:4318",
    ]);
    assert_eq!(
        on,
        [
            "scheduler",
            "--config",
            "/etc/poolcast/scheduler.yaml",
            "--dashboard",
            "--otlp-endpoint",
            "http://otel:4318"
        ]
    );
    // The flag is the binary's.
    let help = run(Command::new(env!("CARGO_BIN_EXE_poolcast")).args(["scheduler", "--help"]));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--dashboard"));
    assert_rejected(&["--set", "scheduler.dashboard=yes"], "dashboard");
}

#[test]
fn mirrors_are_pinned_one_per_pool() {
    for node_selector in [false, true] {
        let objs = objects(
            &render(&[
                "--set-json",
                &pools_json(3),
                "--set",
                &format!("p2p.plusMode.nodeSelectorEnable={node_selector}"),
            ])
            .unwrap(),
        );
        let mirrors = of_kind(&objs, "Deployment", "mirror");
        assert_eq!(mirrors.len(), 3);
        for (mirror, pool) in mirrors.iter().zip(POOLS) {
            let mut expected = vec![(
                "alibabacloud.com/nodepool-id".to_string(),
                vec![pool.to_string()],
            )];
            if node_selector {
                expected.push((
                    "k8s.aliyun.com/p2p-plus-node".to_string(),
                    vec!["true".to_string()],
                ));
            }
            assert_eq!(affinity(mirror), expected);
            assert_eq!(mirror["spec"]["replicas"], 1);
            assert_eq!(mirror["spec"]["strategy"]["type"], "Recreate");
        }
        let scheduler = of_kind(&objs, "Deployment", "scheduler")[0];
        let selector = &scheduler["spec"]["template"]["spec"]["nodeSelector"];
        assert_eq!(
            selector.get("k8s.aliyun.com/p2p-plus-node").is_some(),
            node_selector
        );
    }
}

#[test]
fn mirror_cache_is_a_host_path_only_when_asked() {
    let with = objects(
        &render(&[
            "--set-json",
            &pools_json(3),
            "--set",
            "p2p.plusMode.cacheHostPath=/data/poolcast",
        ])
        .unwrap(),
    );
    for mirror in of_kind(&with, "Deployment", "mirror") {
        let cache = volume(mirror, "cache");
        assert_eq!(cache["hostPath"]["path"], "/data/poolcast");
        let mounted = mount_path(mirror, "cache").unwrap();
        let config = config_of(&with, str_of(&mirror["metadata"]["name"]));
        assert_eq!(config["cacheHostPath"], mounted);
    }
    let without = objects(&render(&["--set-json", &pools_json(1)]).unwrap());
    let mirror = of_kind(&without, "Deployment", "mirror")[0];
    assert!(volume(mirror, "cache").get("hostPath").is_none());
    assert!(volume(mirror, "cache")["emptyDir"].is_mapping());
}

#[test]
fn agent_cache_follows_the_cache_mode() {
    let disk = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    let agent = of_kind(&disk, "DaemonSet", "agent")[0];
    let config = config_of(&disk, str_of(&agent["metadata"]["name"]));
    assert_eq!(config["cache"]["mode"], "disk");
    assert_eq!(config["cache"]["capacity"], "4294967296");
    assert_eq!(
        volume(agent, "cache")["hostPath"]["path"],
        "/var/lib/poolcast/agent"
    );
    assert_eq!(
        mount_path(agent, "cache"),
        Some(str_of(&config["cacheHostPath"]))
    );

    let memory = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.v2.cache.mode=memory",
            "--set",
            "p2p.v2.cache.memoryCacheCapacityGB=8",
        ])
        .unwrap(),
    );
    let agent = of_kind(&memory, "DaemonSet", "agent")[0];
    let config = config_of(&memory, str_of(&agent["metadata"]["name"]));
    assert_eq!(config["cache"]["mode"], "memory");
    assert_eq!(config["cache"]["capacity"], "8GiB");
    // The agent's memory mode writes under /dev/shm: a RAM volume as large as the cache, and a
    // memory limit that holds it.
    assert_eq!(mount_path(agent, "shm"), Some("/dev/shm"));
    assert_eq!(volume(agent, "shm")["emptyDir"]["medium"], "Memory");
    assert_eq!(volume(agent, "shm")["emptyDir"]["sizeLimit"], "8Gi");
    let limits = &agent["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["memory"], "9Gi");
    assert!(mount_path(agent, "cache").is_none());
}

#[test]
fn generic_registries_become_mirror_upstreams() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            r#"registries=[{"host":"docker.io"},{"host":"harbor.example.com"},{"host":"10.0.0.5:5000","insecure":true}]"#,
        ])
        .unwrap(),
    );
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
    let upstreams: Vec<&str> = config["upstreams"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(
        upstreams,
        [
            "docker.io=https://registry-1.docker.io",
            "harbor.example.com=https://harbor.example.com",
            "10.0.0.5:5000=http://10.0.0.5:5000"
        ]
    );
}

#[test]
fn agent_pods_wire_containerd_at_start_and_unwire_it_on_stop() {
    let objs = objects(
        &render(&[
            "--set-json",
            &pools_json(3),
            "--set-json",
            r#"registries=[{"host":"docker.io"},{"host":"10.0.0.5:5000","insecure":true}]"#,
            "--set",
            "containerd.configPath=/etc/containerd/certs.d",
        ])
        .unwrap(),
    );
    for agent in of_kind(&objs, "DaemonSet", "agent") {
        let spec = &agent["spec"]["template"]["spec"];
        let init = &spec["initContainers"][0];
        assert_eq!(
            volume(agent, "containerd-config-path")["hostPath"]["path"],
            "/etc/containerd/certs.d"
        );
        let mount = str_of(&init["volumeMounts"][0]["mountPath"]);
        assert_eq!(mount_path(agent, "containerd-config-path"), Some(mount));
        let write = strings(&init["args"]);
        let remove = strings(&spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]);
        assert_eq!(&write[..2], ["hosts", "write"]);
        assert_eq!(&remove[..3], ["poolcast", "hosts", "remove"]);
        assert_eq!(write[2..], remove[3..], "remove undoes what write did");

        // The rendered commands, run by the real binary against a folder standing in for the
        // node's config_path.
        let dir = tempfile::tempdir().unwrap();
        let local = |args: &[String]| -> Vec<String> {
            args.iter()
                .map(|a| {
                    if a == mount {
                        dir.path().display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect()
        };
        let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast")).args(local(&write)));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\""),
            "{hub}"
        );
        assert!(hub.contains("[host.\"http://127.0.0.1:65001\"]"), "{hub}");
        let private = std::fs::read_to_string(dir.path().join("10.0.0.5:5000/hosts.toml")).unwrap();
        assert!(
            private.contains("server = \"http://10.0.0.5:5000\""),
            "{private}"
        );
        // The names the webhook rewrites images to go to the same agent and registry.
        let distributed = dir
            .path()
            .join("docker.io.distributed.local:65001/hosts.toml");
        let distributed = std::fs::read_to_string(distributed).unwrap();
        assert_eq!(distributed, hub);
        let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast")).args(local(&remove[1..])));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    let off = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "containerd.hostsToml=false",
        ])
        .unwrap(),
    );
    let agent = of_kind(&off, "DaemonSet", "agent")[0];
    assert!(agent["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    assert!(agent["spec"]["template"]["spec"]["containers"][0]
        .get("lifecycle")
        .is_none());
    assert!(mount_path(agent, "containerd-config-path").is_none());
}

#[test]
fn a_registry_ca_reaches_every_mirror_and_containerds_fallback_to_the_registry() {
    let registries = serde_json::json!([
        {"host": "docker.io"},
        {"host": "harbor.example.com", "ca": PEM_A},
        {"host": "registry.local:5443", "ca": PEM_B},
    ]);
    let registries = format!("registries={registries}");
    let objs =
        objects(&render(&["--set-json", &pools_json(2), "--set-json", &registries]).unwrap());

    // One ConfigMap: every CA for the mirrors, and each registry's own for its hosts.toml.
    let cas = of_kind(&objs, "ConfigMap", "upstream-ca");
    assert_eq!(cas.len(), 1);
    let ca_name = str_of(&cas[0]["metadata"]["name"]);
    let data = &cas[0]["data"];
    assert_eq!(str_of(&data["ca.pem"]), format!("{PEM_A}{PEM_B}"));
    assert_eq!(str_of(&data["registry-1.pem"]), PEM_A);
    assert_eq!(str_of(&data["registry-2.pem"]), PEM_B);
    assert_eq!(data.as_mapping().unwrap().len(), 3);

    let mirrors = of_kind(&objs, "Deployment", "mirror");
    assert_eq!(mirrors.len(), 2);
    for mirror in mirrors {
        let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
        assert_eq!(config["upstreamCAFile"], "/etc/poolcast-ca/ca.pem");
        assert_eq!(mount_path(mirror, "upstream-ca"), Some("/etc/poolcast-ca"));
        assert_eq!(volume(mirror, "upstream-ca")["configMap"]["name"], ca_name);
        let annotations = &mirror["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations.get("checksum/upstream-ca").is_some(),
            "a changed CA must restart the mirror"
        );
        assert_config_accepted("mirror", &config);
    }

    for agent in of_kind(&objs, "DaemonSet", "agent") {
        let spec = &agent["spec"]["template"]["spec"];
        let init = &spec["initContainers"][0];
        let write = strings(&init["args"]);
        for ca in [
            "harbor.example.com=/etc/poolcast-ca/registry-1.pem",
            "registry.local:5443=/etc/poolcast-ca/registry-2.pem",
        ] {
            assert!(
                write.windows(2).any(|w| w[0] == "--ca" && w[1] == ca),
                "{write:?} lacks --ca {ca}"
            );
        }
        assert_eq!(write.iter().filter(|a| *a == "--ca").count(), 2);
        let ca_mount = init["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "upstream-ca")
            .expect("the init container mounts the CAs");
        assert_eq!(ca_mount["mountPath"], "/etc/poolcast-ca");
        assert_eq!(volume(agent, "upstream-ca")["configMap"]["name"], ca_name);

        // The rendered command, run by the real binary on folders standing in for the node's
        // config_path and the mounted ConfigMap.
        let dir = tempfile::tempdir().unwrap();
        let (certs_d, ca_dir) = (dir.path().join("certs.d"), dir.path().join("ca"));
        std::fs::create_dir_all(&ca_dir).unwrap();
        for (file, pem) in data.as_mapping().unwrap() {
            std::fs::write(ca_dir.join(str_of(file)), str_of(pem)).unwrap();
        }
        let config_mount = str_of(&init["volumeMounts"][0]["mountPath"]);
        run_rendered_locally(&write, |a| {
            if a == config_mount {
                certs_d.display().to_string()
            } else {
                a.replace("/etc/poolcast-ca", &ca_dir.display().to_string())
            }
        });
        for (host, pem) in [
            ("harbor.example.com", PEM_A),
            ("registry.local:5443", PEM_B),
        ] {
            let text = std::fs::read_to_string(certs_d.join(host).join("hosts.toml")).unwrap();
            assert!(
                text.contains("\nca = \"poolcast-ca.crt\"\n"),
                "{host}: {text}"
            );
            let copied = std::fs::read_to_string(certs_d.join(host).join("poolcast-ca.crt"));
            assert_eq!(copied.unwrap(), pem, "{host}");
        }
        let hub = std::fs::read_to_string(certs_d.join("docker.io/hosts.toml")).unwrap();
        assert!(!hub.contains("ca ="), "{hub}");
    }

    // Without a ca: no ConfigMap, no key, no mount.
    let plain = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    assert!(of_kind(&plain, "ConfigMap", "upstream-ca").is_empty());
    let mirror = of_kind(&plain, "Deployment", "mirror")[0];
    let config = config_of(&plain, str_of(&mirror["metadata"]["name"]));
    assert!(config.get("upstreamCAFile").is_none(), "{config:?}");
    assert!(mount_path(mirror, "upstream-ca").is_none());
    let agent = of_kind(&plain, "DaemonSet", "agent")[0];
    assert!(
        !strings(&agent["spec"]["template"]["spec"]["initContainers"][0]["args"])
            .contains(&"--ca".to_string())
    );
}

/// The rendered MutatingWebhookConfiguration's entries, by name.
fn webhook_entries(objs: &[serde_yaml::Value]) -> Vec<&serde_yaml::Value> {
    let config = objs
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration");
    config["webhooks"].as_sequence().unwrap().iter().collect()
}

fn by_name<'a>(objs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_webhook_never_blocks_pods_and_selects_them_by_pod_or_namespace_label() {
    let objs = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    let entries = webhook_entries(&objs);
    assert_eq!(entries.len(), 2);
    let service = of_kind(&objs, "Service", "webhook")[0];
    let deployment = of_kind(&objs, "Deployment", "webhook")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let https = &container["ports"][0];
    assert_eq!(service["spec"]["ports"][0]["targetPort"], https["name"]);
    let skip = serde_yaml::from_str::<serde_yaml::Value>(
        r#"{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, edge]}"#,
    )
    .unwrap();
    for (entry, path) in entries.iter().zip(["/mutate", "/mutate/namespace"]) {
        assert_eq!(entry["failurePolicy"], "Ignore");
        assert_eq!(entry["sideEffects"], "NoneOnDryRun");
        assert_eq!(entry["reinvocationPolicy"], "IfNeeded");
        assert_eq!(strings(&entry["admissionReviewVersions"]), ["v1"]);
        assert!(entry["timeoutSeconds"].as_u64().unwrap() <= 10);
        let svc = &entry["clientConfig"]["service"];
        assert_eq!(svc["name"], service["metadata"]["name"]);
        assert_eq!(svc["namespace"], "edge");
        assert_eq!(svc["port"], service["spec"]["ports"][0]["port"]);
        assert_eq!(svc["path"], path);
        let rules = entry["rules"].as_sequence().unwrap();
        let rule = |resource: &str| {
            rules
                .iter()
                .find(|r| strings(&r["resources"]) == [resource])
                .map(|r| strings(&r["operations"]))
        };
        assert_eq!(rule("pods"), Some(vec!["CREATE".to_string()]));
        assert_eq!(
            rule("pods/ephemeralcontainers"),
            Some(vec!["UPDATE".to_string()])
        );
        let ns_exprs = entry["namespaceSelector"]["matchExpressions"]
            .as_sequence()
            .unwrap();
        assert!(ns_exprs.contains(&skip), "{ns_exprs:?}");
    }
    let mode = "k8s.aliyun.com/image-accelerate-mode";
    assert_eq!(entries[0]["objectSelector"]["matchLabels"][mode], "p2p");
    let ns_label = &entries[1]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(
        (ns_label["key"].as_str(), ns_label["operator"].as_str()),
        (Some(mode), Some("In"))
    );
    assert_eq!(strings(&ns_label["values"]), ["p2p"]);
    // A pod with its own label is the first entry's alone: never mutated twice.
    let own = &entries[1]["objectSelector"]["matchExpressions"][0];
    assert_eq!(
        (own["key"].as_str(), own["operator"].as_str()),
        (Some(mode), Some("DoesNotExist"))
    );
}

#[test]
fn the_webhook_serves_its_config_and_certificate_with_only_secret_rights() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.port=7001",
            "--set-json",
            r#"registries=[{"host":"test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"},{"host":"docker.io"}]"#,
        ])
        .unwrap(),
    );
    let deployment = of_kind(&objs, "Deployment", "webhook")[0];
    let name = str_of(&deployment["metadata"]["name"]);
    let config = config_of(&objs, name);
    assert_eq!(
        strings(&config["registries"]),
        ["test-registry-vpc.cn-hangzhou.cr.aliyuncs.com", "docker.io"]
    );
    assert_eq!(config["port"], 7001);
    // The agents map the same distributed names back.
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    let agent_config = config_of(&objs, str_of(&agent["metadata"]["name"]));
    assert_eq!(
        agent_config["distributedSuffix"],
        config["distributedSuffix"]
    );

    let spec = &deployment["spec"]["template"]["spec"];
    let tls_dir = mount_path(deployment, "tls").unwrap();
    assert!(str_of(&config["tlsCertFile"]).starts_with(tls_dir));
    assert!(str_of(&config["tlsKeyFile"]).starts_with(tls_dir));
    let secret = by_name(
        &objs,
        "Secret",
        str_of(&volume(deployment, "tls")["secret"]["secretName"]),
    );
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for entry in webhook_entries(&objs) {
        assert_eq!(entry["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    }

    // It may read pull secrets and write their copies: nothing else.
    assert_eq!(spec["automountServiceAccountToken"], true);
    let account = str_of(&spec["serviceAccountName"]);
    let binding = by_name(&objs, "ClusterRoleBinding", name);
    assert_eq!(binding["subjects"][0]["name"], account);
    assert_eq!(binding["subjects"][0]["namespace"], "edge");
    let role = by_name(&objs, "ClusterRole", str_of(&binding["roleRef"]["name"]));
    let rules = role["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["secrets"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "create", "update"]);
    // The other workloads still mount no token.
    for kind in ["DaemonSet", "Deployment"] {
        for w in objs.iter().filter(|o| o["kind"] == kind) {
            if w["metadata"]["labels"]["app.kubernetes.io/component"] != "webhook" {
                assert_eq!(
                    w["spec"]["template"]["spec"]["automountServiceAccountToken"],
                    false
                );
            }
        }
    }
}

#[test]
fn the_webhook_takes_a_given_certificate_or_can_be_left_out() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "webhook.tls.cert=CERT",
            "--set",
            "webhook.tls.key=KEY",
            "--set",
            "webhook.tls.caBundle=CA",
        ])
        .unwrap(),
    );
    let secret = by_name(&objs, "Secret", "pc-poolcast-webhook-tls");
    assert_eq!(secret["data"]["tls.crt"], "Q0VSVA==");
    assert_eq!(secret["data"]["tls.key"], "S0VZ");
    for entry in webhook_entries(&objs) {
        assert_eq!(entry["clientConfig"]["caBundle"], "Q0E=");
    }

    let off = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "webhook.enabled=false",
        ])
        .unwrap(),
    );
    assert!(off
        .iter()
        .all(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] != "webhook"));
    assert!(!off
        .iter()
        .any(|o| o["kind"] == "MutatingWebhookConfiguration"));
    let agent = of_kind(&off, "DaemonSet", "agent")[0];
    let write = strings(&agent["spec"]["template"]["spec"]["initContainers"][0]["args"]);
    assert!(!write.contains(&"--distributed".to_string()), "{write:?}");
}

#[test]
fn acr_instances_become_registries_like_registries_entries() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            r#"registryInstances="cri-abc=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com, other-registry-vpc.cn-beijing.cr.aliyuncs.com""#,
            "--set",
            "acrInstances=shop",
            "--set",
            "region=cn-shanghai",
        ])
        .unwrap(),
    );
    let hosts = [
        "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        "other-registry-vpc.cn-beijing.cr.aliyuncs.com",
        "shop-registry-vpc.cn-shanghai.cr.aliyuncs.com",
    ];
    // Mirror upstreams over https, after the `registries` entries.
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
    let mut expected = vec!["docker.io=https://registry-1.docker.io".to_string()];
    expected.extend(hosts.iter().map(|h| format!("{h}=https://{h}")));
    assert_eq!(strings(&config["upstreams"]), expected);
    assert_config_accepted("mirror", &config);
    // Webhook registries, so labelled pods' images of these instances are rewritten.
    let webhook = of_kind(&objs, "Deployment", "webhook")[0];
    let config = config_of(&objs, str_of(&webhook["metadata"]["name"]));
    assert_eq!(strings(&config["registries"])[1..], hosts);
    assert_config_accepted("webhook", &config);
    // A hosts.toml per instance (and its distributed name) on every node.
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    let write = strings(&agent["spec"]["template"]["spec"]["initContainers"][0]["args"]);
    for h in hosts {
        assert!(
            write.contains(&format!("{h}=https://{h}")),
            "{h} not in {write:?}"
        );
    }
}

#[test]
fn mirror_registry_and_ttl_settings_reach_every_mirrors_config() {
    let defaults = objects(&render(&["--set-json", &pools_json(1)]).unwrap());
    let mirror = of_kind(&defaults, "Deployment", "mirror")[0];
    let config = config_of(&defaults, str_of(&mirror["metadata"]["name"]));
    assert_eq!(config["allowAnyRegistry"], false);
    assert_eq!(config["authCacheTTL"], "60s");
    assert_eq!(config["manifestTTL"], "30s");

    let objs = objects(
        &render(&[
            "--set-json",
            &pools_json(3),
            "--set",
            "mirror.allowAnyRegistry=true",
            "--set",
            "mirror.authCacheTTL=5m",
            "--set",
            "mirror.manifestTTL=120",
        ])
        .unwrap(),
    );
    let mirrors = of_kind(&objs, "Deployment", "mirror");
    assert_eq!(mirrors.len(), 3);
    for mirror in mirrors {
        let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
        assert_eq!(config["allowAnyRegistry"], true);
        assert_eq!(config["authCacheTTL"], "5m");
        assert_eq!(
            config["manifestTTL"], "120s",
            "whole seconds, as the add-on writes them"
        );
        assert_config_accepted("mirror", &config);
    }
}

#[test]
fn the_default_mirror_sends_unlisted_registries_to_the_agent_when_asked() {
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "containerd.defaultMirror=true",
            "--set",
            "mirror.allowAnyRegistry=true",
        ])
        .unwrap(),
    );
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    let spec = &agent["spec"]["template"]["spec"];
    let write = strings(&spec["initContainers"][0]["args"]);
    let remove = strings(&spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]);
    assert!(write.contains(&"--default".to_string()), "{write:?}");
    assert_eq!(write[2..], remove[3..], "remove undoes what write did");
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    assert_eq!(
        config_of(&objs, str_of(&mirror["metadata"]["name"]))["allowAnyRegistry"],
        true
    );

    // The rendered command, run by the real binary: _default beside the listed registry.
    let dir = tempfile::tempdir().unwrap();
    let mount = str_of(&spec["initContainers"][0]["volumeMounts"][0]["mountPath"]);
    run_rendered_locally(&write, |a| {
        if a == mount {
            dir.path().display().to_string()
        } else {
            a.to_string()
        }
    });
    let default = std::fs::read_to_string(dir.path().join("_default/hosts.toml")).unwrap();
    assert!(
        default.contains("[host.\"http://127.0.0.1:65001\"]"),
        "{default}"
    );
    assert!(!default.contains("server"), "{default}");
    assert!(dir.path().join("docker.io/hosts.toml").exists());

    // Off by default.
    let objs = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    let write = strings(&agent["spec"]["template"]["spec"]["initContainers"][0]["args"]);
    assert!(!write.contains(&"--default".to_string()), "{write:?}");
}

/// A probe's port, as a number: a named port is looked up in the container's ports.
fn probe_port(container: &serde_yaml::Value, probe: &str) -> u64 {
    let port = &container[probe]["httpGet"]["port"];
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .unwrap_or_else(|| panic!("{probe} names port {port:?}, which the container lacks"))
        ["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_workload_probes_healthz_on_its_own_port_and_has_the_resources_of_its_values() {
    let objs = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("chart/values.yaml")).unwrap())
            .unwrap();
    for (kind, component, port, scheme) in [
        ("DaemonSet", "agent", 65001, "HTTP"),
        ("Deployment", "mirror", 5000, "HTTP"),
        ("Deployment", "scheduler", 65003, "HTTP"),
        ("Deployment", "webhook", 8443, "HTTPS"),
    ] {
        let workloads = of_kind(&objs, kind, component);
        assert_eq!(workloads.len(), 1, "{component}");
        let container = &workloads[0]["spec"]["template"]["spec"]["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], "/healthz", "{component} {probe}");
            assert_eq!(probe_port(container, probe), port, "{component} {probe}");
            let used = get["scheme"].as_str().unwrap_or("HTTP");
            assert_eq!(used, scheme, "{component} {probe}");
            assert!(container[probe]["periodSeconds"].as_u64().unwrap() > 0);
        }
        assert!(
            container["livenessProbe"]["periodSeconds"].as_u64()
                >= container["readinessProbe"]["periodSeconds"].as_u64(),
            "{component}: liveness checks no more often than readiness"
        );
        // Requests and limits are exactly the values' (memory mode aside, see the cache test).
        let resources = &container["resources"];
        assert_eq!(resources, &values[component]["resources"], "{component}");
        assert!(resources["requests"]["cpu"].is_string(), "{component}");
        assert!(resources["requests"]["memory"].is_string(), "{component}");
        assert!(resources["limits"]["memory"].is_string(), "{component}");
    }
    // Given resources replace the defaults, for each component.
    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            r#"mirror.resources={"requests":{"cpu":"1","memory":"2Gi"},"limits":{"memory":"4Gi"}}"#,
            "--set-json",
            r#"scheduler.resources={"requests":{"cpu":"200m","memory":"1Gi"},"limits":{"memory":"3Gi"}}"#,
            "--set-json",
            r#"webhook.resources={"requests":{"cpu":"300m","memory":"64Mi"},"limits":{"memory":"256Mi"}}"#,
        ])
        .unwrap(),
    );
    for (kind, component, memory) in [
        ("Deployment", "mirror", "4Gi"),
        ("Deployment", "scheduler", "3Gi"),
        ("Deployment", "webhook", "256Mi"),
    ] {
        let container =
            &of_kind(&objs, kind, component)[0]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["resources"]["limits"]["memory"], memory,
            "{component}"
        );
    }
}

/// Every key path of a values tree, down to lists, empty maps and free-form maps (resources,
/// nodeSelector), which are values of their own.
fn value_keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    for (k, child) in v.as_mapping().unwrap() {
        let path = format!("{prefix}{}", str_of(k));
        let nested = child.as_mapping().is_some_and(|m| !m.is_empty())
            && !["resources", "nodeSelector"].contains(&str_of(k));
        if nested {
            value_keys(child, &format!("{path}."), out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_values_reference_in_the_install_guide_names_every_value_and_no_other() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("chart/values.yaml")).unwrap())
            .unwrap();
    let mut keys = Vec::new();
    value_keys(&values, "", &mut keys);
    let guide = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
    let reference = guide
        .split("## Values reference")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/install.md has a values reference");
    // The backquoted names in the first column of each row.
    let documented: Vec<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|l| {
            let first = l.split(" |").next().unwrap();
            format!("`{first}")
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|k| k.trim_end_matches("[]").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for key in &keys {
        let leaf = key.rsplit('.').next().unwrap();
        let group = key.rsplit_once('.').map(|(g, _)| format!("{g}.*"));
        assert!(
            documented.contains(key)
                || documented.contains(&format!("*.{leaf}"))
                || group.is_some_and(|g| documented.contains(&g)),
            "values.yaml key {key} is not in the docs/install.md values reference"
        );
    }
    for doc in &documented {
        let known = if let Some(leaf) = doc.strip_prefix("*.") {
            keys.iter().any(|k| k.ends_with(&format!(".{leaf}")))
        } else if let Some(group) = doc.strip_suffix(".*") {
            keys.iter().any(|k| k.starts_with(&format!("{group}.")))
        } else {
            keys.contains(doc)
        };
        assert!(
            known,
            "docs/install.md documents {doc}, which values.yaml lacks"
        );
    }
}

/// Runs a rendered `poolcast ...` command line with the real binary, each argument passed
/// through `local` (node paths to temp folders); it must succeed.
fn run_rendered_locally(args: &[String], local: impl Fn(&str) -> String) {
    let local: Vec<String> = args.iter().map(|a| local(a)).collect();
    let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast")).args(&local));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_webhook_takes_reviews_only_from_the_api_server_when_told_how_to_know_it() {
    let values = "edgeNodePool: {id: np-a}\nwebhook:\n  clientCA: \"CA PEM\"\n  networkPolicy:\n    allowFrom:\n      - ipBlock: {cidr: 10.0.0.0/24}\n";
    let objs = objects_with(values);
    let config = config_of(&objs, "pc-poolcast-webhook");
    assert_eq!(config["clientCAFile"], "/etc/poolcast/tls/client-ca.crt");
    let tls = by_name(&objs, "Secret", "pc-poolcast-webhook-tls");
    assert_eq!(tls["data"]["client-ca.crt"], "Q0EgUEVN");
    let policy = by_name(&objs, "NetworkPolicy", "pc-poolcast-webhook");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
        "10.0.0.0/24"
    );
    // Not asked: neither, so nothing changes for clusters that cannot give them.
    let plain = objects(&render(&["--set", "edgeNodePool.id=np-a"]).unwrap());
    assert!(plain.iter().all(|o| o["kind"] != "NetworkPolicy"));
    assert!(config_of(&plain, "pc-poolcast-webhook")["clientCAFile"].is_null());
}
