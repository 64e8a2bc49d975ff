//! The seeds' values files as printed (tests/chart_support/seeds): ACK Edge with an AccessKey,
//! ACK Edge with RRSA and a cross-account role, ACK/ASK with `p2p.registryInstances` and
//! `controller.ramRole`, ACK Edge plus mode with `ossInternetAccelerate`. Each renders, passes
//! strict Kubernetes validation, and its config files pass `poolcast config check`; secrets stay
//! in Secrets; RRSA pods get the projected token and the SDKs' environment; NOTES names what
//! the role's trust policy must allow.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;

use chart_support::*;
use serde_yaml::Value;
use std::process::Command;

const NS: &str = "aliyun-acr-acceleration";
const SEEDS: [&str; 4] = [
    "ack-edge-accesskey.yaml",
    "ack-edge-rrsa.yaml",
    "ack-ask.yaml",
    "ack-edge-plus.yaml",
];

fn seed(name: &str) -> String {
    root()
        .join("tests/chart_support/seeds")
        .join(name)
        .display()
        .to_string()
}

fn render_seed(name: &str, extra: &[&str]) -> String {
    let file = seed(name);
    let mut args = vec!["-n", NS, "-f", file.as_str()];
    args.extend_from_slice(extra);
    render(&args).unwrap_or_else(|e| panic!("{name} does not render: {e}"))
}

/// Every container (init containers too) of every workload.
fn containers(objs: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for o in objs {
        let spec = &o["spec"]["template"]["spec"];
        for key in ["initContainers", "containers"] {
            for c in spec[key].as_sequence().map_or(&[][..], Vec::as_slice) {
                out.push((
                    format!("{}/{}", str_of(&o["metadata"]["name"]), str_of(&c["name"])),
                    c,
                ));
            }
        }
    }
    out
}

#[test]
fn the_seeds_values_files_as_printed_lint_render_validate_strictly_and_configure_poolcast() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in SEEDS {
        let lint = run(Command::new(helm())
            .args(["lint", "--strict", "-n", NS, "-f", &seed(name)])
            .arg(root().join("chart")));
        assert!(
            lint.status.success(),
            "{name}: helm lint --strict: {}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
        let text = render_seed(name, &[]);
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        files.push(path);
        let objs = objects(&text);
        let mut checked = 0;
        for cm in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
            let component = str_of(&cm["metadata"]["labels"]["app.kubernetes.io/component"]);
            if component == "grafana-dashboard" {
                continue; // the dashboard, not a component's config
            }
            let config = config_of(&objs, str_of(&cm["metadata"]["name"]));
            assert_config_accepted(component, &config);
            if component == "mirror" || component == "webhook" {
                assert_eq!(
                    config["acr"]["instances"][0], "cri-xxx",
                    "{name}: {component} resolves the instance"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2, "{name}: a mirror and the webhook");
        let agent = of_kind(&objs, "DaemonSet", "agent")[0];
        let init = strings(&agent["spec"]["template"]["spec"]["initContainers"][0]["args"]);
        assert!(
            init.windows(2).any(|w| w == ["--acr-instance", "cri-xxx"]),
            "{init:?}"
        );
    }
    assert_strictly_valid(&files);
}

#[test]
fn the_access_key_stays_in_its_secret() {
    let text = render_seed("ack-edge-accesskey.yaml", &[]);
    let objs = objects(&text);
    for leak in ["ExampleSecretDoNotLeak", "LTAI5tExampleKeyId"] {
        assert!(
            !text.contains(leak),
            "{leak} in plain text in the manifests"
        );
    }
    let secret = objs
        .iter()
        .find(|o| {
            o["kind"] == "Secret" && str_of(&o["metadata"]["name"]).ends_with("-alibaba-cloud")
        })
        .expect("the AccessKey Secret");
    let key = str_of(&secret["data"]["accessKeySecret"]);
    assert!(!key.is_empty());
    for cm in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
        let data = serde_yaml::to_string(&cm["data"]).unwrap();
        assert!(!data.contains(key) && !data.contains("accessKey"), "{data}");
    }
    let callers = containers(&objs)
        .into_iter()
        .filter(|(_, c)| {
            c["env"].as_sequence().is_some_and(|e| {
                e.iter()
                    .any(|v| v["name"] == "ALIBABA_CLOUD_ACCESS_KEY_SECRET")
            })
        })
        .collect::<Vec<_>>();
    // The mirror, the agent's init container and hosts-watch, the webhook.
    assert_eq!(
        callers.len(),
        4,
        "{:?}",
        callers.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, c) in containers(&objs) {
        let args = serde_yaml::to_string(&c["args"]).unwrap()
            + &serde_yaml::to_string(&c["command"]).unwrap();
        assert!(!args.contains(key), "{name}: secret on a command line");
        for e in c["env"].as_sequence().map_or(&[][..], Vec::as_slice) {
            if str_of(&e["name"]).starts_with("ALIBABA_CLOUD_ACCESS_KEY") {
                assert!(e["value"].is_null(), "{name}: {e:?} given as a value");
                assert!(str_of(&e["valueFrom"]["secretKeyRef"]["name"]).ends_with("-alibaba-cloud"));
            }
        }
    }
}

#[test]
fn rrsa_pods_get_the_projected_token_and_the_sdk_environment() {
    let objs = objects(&render_seed(
        "ack-edge-rrsa.yaml",
        &[
            "--set",
            "serviceAccount.name=ack-acr-acceleration-p2p-sa",
            "--set",
            "webhook.serviceAccountName=ack-acr-acceleration-p2p-job-sa",
        ],
    ));
    let mut callers = 0;
    for o in objs
        .iter()
        .filter(|o| matches!(str_of(&o["kind"]), "Deployment" | "DaemonSet"))
    {
        let spec = &o["spec"]["template"]["spec"];
        let component = o["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or("");
        if component == "scheduler" {
            continue;
        }
        let vol = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "rrsa-token")
            .expect("token volume");
        let token = &vol["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "sts.aliyuncs.com");
        assert_eq!(token["path"], "token");
        let sa = str_of(&spec["serviceAccountName"]);
        let want = if component == "webhook" {
            "ack-acr-acceleration-p2p-job-sa"
        } else {
            "ack-acr-acceleration-p2p-sa"
        };
        assert_eq!(sa, want, "{component}: the trust policy's service account");
        for key in ["initContainers", "containers"] {
            for c in spec[key].as_sequence().map_or(&[][..], Vec::as_slice) {
                let env = c["env"].as_sequence().map_or(&[][..], Vec::as_slice);
                let get = |n: &str| {
                    env.iter()
                        .find(|e| e["name"] == n)
                        .map(|e| str_of(&e["value"]).to_string())
                };
                if get("ALIBABA_CLOUD_ROLE_ARN").is_none() {
                    assert!(
                        matches!(str_of(&c["name"]), "agent"),
                        "{component}/{} lacks RRSA",
                        str_of(&c["name"])
                    );
                    continue;
                }
                callers += 1;
                assert_eq!(get("ALIBABA_CLOUD_ROLE_ARN").unwrap(), "acs:ram::aaa");
                assert_eq!(
                    get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN").unwrap(),
                    "acs:ram::bbb"
                );
                let file = get("ALIBABA_CLOUD_OIDC_TOKEN_FILE").unwrap();
                let mount = c["volumeMounts"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "rrsa-token")
                    .expect("token mounted");
                assert_eq!(file, format!("{}/token", str_of(&mount["mountPath"])));
            }
        }
    }
    assert_eq!(callers, 4, "mirror, hosts-toml, hosts-watch, webhook");
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
    assert_eq!(config["acr"]["assumeRoleARN"], "acs:ram::ccc");
    assert_eq!(config["acr"]["expireDuration"], 3600);
}

#[test]
fn notes_name_the_oidc_subjects_to_trust_and_ask_pods_get_their_ram_role() {
    // NOTES.txt rendered as a template of a copy of the chart (helm template skips NOTES).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("chart");
    let out = run(Command::new("cp")
        .arg("-r")
        .arg(root().join("chart"))
        .arg(&copy));
    assert!(out.status.success());
    std::fs::rename(
        copy.join("templates/NOTES.txt"),
        copy.join("templates/notes.yaml"),
    )
    .unwrap();
    let file = seed("ack-edge-rrsa.yaml");
    let out = run(Command::new(helm())
        .args(["template", "t"])
        .arg(&copy)
        .args([
            "--debug",
            "-n",
            NS,
            "-f",
            &file,
            "--set",
            "serviceAccount.name=ack-acr-acceleration-p2p-sa",
            "--set",
            "webhook.serviceAccountName=ack-acr-acceleration-p2p-job-sa",
            // The seeds' cache knobs poolcast has no use for: accepted, and NOTES says so.
            "--set",
            "p2p.v2.cache.optionBlockSize=67108864",
            "--set",
            "p2p.v2.cache.aio=true",
        ]));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("p2p.v2.cache.optionBlockSize and p2p.v2.cache.aio are accepted and ignored"),
        "{text}"
    );
    for sub in [
        "ack-acr-acceleration-p2p-sa",
        "ack-acr-acceleration-p2p-job-sa",
    ] {
        assert!(
            text.contains(&format!("\"system:serviceaccount:{NS}:{sub}\"")),
            "{text}"
        );
    }
    assert!(
        text.contains("poolcast acr endpoints --instance-id cri-xxx"),
        "{text}"
    );

    let objs = objects(&render_seed("ack-ask.yaml", &[]));
    for o in objs
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "DaemonSet")))
    {
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler" {
            continue;
        }
        assert_eq!(
            o["spec"]["template"]["metadata"]["annotations"]["k8s.aliyun.com/eci-ram-role-name"],
            "AskAcrReaderRole",
            "{}",
            str_of(&o["metadata"]["name"])
        );
    }
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    assert_eq!(
        config_of(&objs, str_of(&mirror["metadata"]["name"]))["acr"]["ramRole"],
        "AskAcrReaderRole"
    );
}

#[test]
fn plus_mode_as_printed_accelerates_oss_and_serves_all_nodes_as_one_pool() {
    let objs = objects(&render_seed("ack-edge-plus.yaml", &[]));
    let mirror = of_kind(&objs, "Deployment", "mirror")[0];
    let config = config_of(&objs, str_of(&mirror["metadata"]["name"]));
    assert_eq!(config["ossInternetAccelerate"], true);
    assert!(
        mirror["spec"]["template"]["spec"]["affinity"].is_null(),
        "the placeholder pool is no pool: every node"
    );
    let agent = of_kind(&objs, "DaemonSet", "agent")[0];
    let agent_config = config_of(&objs, str_of(&agent["metadata"]["name"]));
    assert_eq!(agent_config["ratelimit"], "5M");
    assert_eq!(agent_config["pool"], "all");
}
