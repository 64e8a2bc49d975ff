//! Values that cannot work fail at `helm template` (values.schema.json, or a template check) with
//! a message naming the key; and `poolcast config check` refuses what would stop a component.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;

use chart_support::*;
use std::process::Command;

#[test]
fn a_pool_listed_twice_is_rejected() {
    assert_rejected(
        &[
            "--set-json",
            r#"p2p.plusMode.edgeNodePools=[{"name":"a","id":"np-1"},{"name":"b","id":"np-1"}]"#,
        ],
        "p2p.plusMode.edgeNodePools[1].id",
    );
}

#[test]
fn a_named_pool_without_an_id_is_rejected() {
    // The seeds' `{name: "", id: ""}` placeholder is no pool (tests/chart_acr.rs); a pool
    // with a name but no id is a mistake.
    assert_rejected(
        &[
            "--set-json",
            r#"p2p.plusMode.edgeNodePools=[{"name":"shop-1","id":""}]"#,
        ],
        "p2p.plusMode.edgeNodePools[0].id",
    );
}

#[test]
fn a_port_out_of_range_is_rejected() {
    for (key, value) in [
        ("p2p.port", "0"),
        ("p2p.port", "70000"),
        ("p2p.peerPort", "65536"),
    ] {
        assert_rejected(
            &[
                "--set",
                "edgeNodePool.id=a",
                "--set",
                &format!("{key}={value}"),
            ],
            key,
        );
    }
}

#[test]
fn agent_ports_that_collide_are_rejected() {
    assert_rejected(
        &["--set", "edgeNodePool.id=a", "--set", "p2p.peerPort=65001"],
        "p2p.peerPort",
    );
}

#[test]
fn an_unknown_download_pattern_is_rejected() {
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.plusMode.downloadPattern=torrent",
        ],
        "p2p.plusMode.downloadPattern",
    );
}

#[test]
fn bad_cache_settings_are_rejected() {
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.v2.cache.mode=ssd",
        ],
        "p2p.v2.cache.mode",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.plusMode.cacheTTL=forever",
        ],
        "p2p.plusMode.cacheTTL",
    );
    assert_rejected(
        &["--set", "edgeNodePool.id=a", "--set", "p2p.ratelimit=fast"],
        "p2p.ratelimit",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "mirror.manifestTTL=soon",
        ],
        "mirror.manifestTTL",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "mirror.authCacheTTL=0",
        ],
        "mirror.authCacheTTL",
    );
}

#[test]
fn a_misspelled_key_is_rejected() {
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "p2p.plusmode.cacheTTL=1h",
        ],
        "plusmode",
    );
}

#[test]
fn registry_settings_the_chart_cannot_use_are_rejected() {
    // A ca that holds no certificate would stop every mirror at start: refused at render.
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            r#"registries=[{"host":"docker.io"},{"host":"h.example","ca":"PEM"}]"#,
        ],
        "registries[1].ca: not a PEM certificate",
    );
    // Plain HTTP has no certificate for a CA to check.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let insecure = serde_json::json!([{"host": "h.example", "insecure": true, "ca": pem}]);
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            &format!("registries={insecure}"),
        ],
        "registries[0].ca: h.example is reached over plain HTTP",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set-json",
            r#"registries=[{"host":"h.example"},{"host":"h.example"}]"#,
        ],
        "registries[1].host",
    );
}

#[test]
fn config_check_rejects_a_bad_file_naming_the_key() {
    // What makes the ConfigMap test meaningful: the check fails on what would stop start-up.
    let dir = tempfile::tempdir().unwrap();
    for (component, yaml, key) in [
        (
            "mirror",
            "upstreams: [\"http://a:5000\"]\ncacheTTL: 0s\n",
            "cacheTTL",
        ),
        ("agent", "mirror: http://m:5000\n", "scheduler"),
        (
            "scheduler",
            "edgeNodePools: [{id: a}, {id: a}]\n",
            "edgeNodePools",
        ),
        (
            "agent",
            "mirror: http://m:5000\ndownloadPattern: source\nbogus: 1\n",
            "bogus",
        ),
    ] {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_poolcast"))
            .args(["config", "check", "--component", component])
            .arg(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{component} {yaml:?}: {stderr}");
        assert!(stderr.contains(key), "{component} {yaml:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn half_a_webhook_certificate_is_rejected() {
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "webhook.tls.cert=CERT",
        ],
        "webhook.tls",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "webhook.timeoutSeconds=60",
        ],
        "webhook.timeoutSeconds",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "webhook.distributedSuffix=bad_suffix",
        ],
        "webhook.distributedSuffix",
    );
}

#[test]
fn an_acr_instance_that_cannot_be_resolved_is_rejected() {
    // Ids (cri-xxx) are resolved at run time; a name needs a region, a host must be one.
    let with = |args: &[&str]| {
        let mut all = vec!["--set", "edgeNodePool.id=a"];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (args, key, says) in [
        (with(&["--set", "acrInstances=shop"]), "region", "shop"),
        (
            with(&["--set", "registryInstances=cri-x=bad_host"]),
            "registryInstances",
            "bad_host",
        ),
        (
            with(&[
                "--set",
                "region=cn-hangzhou",
                "--set",
                "registryInstances=a_b",
            ]),
            "registryInstances",
            "",
        ),
        (
            with(&[
                "--set-json",
                r#"registryInstances="test-registry-vpc.cn-hangzhou.cr.aliyuncs.com""#,
                "--set-json",
                r#"registries=[{"host":"test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"}]"#,
            ]),
            "registryInstances",
            "registries[0].host",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_rejected(&args, key);
        assert!(render(&args).unwrap_err().contains(says), "{args:?}");
    }
}

#[test]
fn an_incomplete_credential_method_is_rejected() {
    for (sets, key) in [
        (vec!["accessKey=LTAI"], "accessKeySecret"),
        (vec!["accessKeySecret=secret"], "accessKey"),
        (vec!["rrsa.enable=true"], "rrsa.rrsaRoleARN"),
        (
            vec!["rrsa.enable=true", "rrsa.rrsaRoleARN=acs:ram::1:role/p2p"],
            "rrsa.rrsaOIDCProviderRoleARN",
        ),
        (
            vec!["rrsa.assumeRoleARN=acs:ram::2:role/acr"],
            "rrsa.assumeRoleARN",
        ),
        (vec!["rrsa.expireDuration=60"], "rrsa.expireDuration"),
        (vec!["vpcId=not-a-vpc"], "vpcId"),
        (
            vec![
                "accessKey=LTAI",
                "accessKeySecret=s",
                "rrsa.enable=true",
                "rrsa.rrsaRoleARN=acs:ram::1:role/p2p",
                "rrsa.rrsaOIDCProviderRoleARN=acs:ram::1:oidc-provider/x",
            ],
            "accessKey",
        ),
    ] {
        let mut args = vec![
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "acrInstances=cri-abc",
        ];
        for set in &sets {
            args.extend(["--set", set]);
        }
        assert_rejected(&args, key);
    }
}

#[test]
fn a_default_mirror_the_mirrors_cannot_serve_is_rejected() {
    // Every unlisted registry would go agent -> mirror -> NAME_UNKNOWN -> registry: no gain.
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "containerd.defaultMirror=true",
        ],
        "mirror.allowAnyRegistry",
    );
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "containerd.defaultMirror=true",
            "--set",
            "mirror.allowAnyRegistry=true",
            "--set",
            "containerd.hostsToml=false",
        ],
        "containerd.hostsToml",
    );
}
