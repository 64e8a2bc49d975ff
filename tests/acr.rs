//! ACR EE instances named by id, against the stand-in for the OpenAPI, STS and the metadata
//! server (whose signature checks are the official SDK's): `poolcast acr endpoints` with each
//! credential method, the service's errors as the user sees them, the official client accepted
//! by the stand-in, and the mirror and `hosts write` following the resolution at run time.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::process::Component;
use common::standin::{StandIn, CHAIN_VARS, SDK_CLIENT};
use serde_json::{json, Value};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const VPC_DOMAIN: &str = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com";
const NET_DOMAIN: &str = "test-registry.cn-hangzhou.cr.aliyuncs.com";
const ROLE: &str = "acs:ram::1111:role/acr-reader";
const OTHER_ROLE: &str = "acs:ram::2222:role/acr-owner";
const PROVIDER: &str = "acs:ram::1111:oidc-provider/ack-rrsa-c1";

fn state() -> Value {
    json!({
        "keys": {"LTAI-good": "good-secret", "LTAI-denied": "denied-secret"},
        "denied": ["LTAI-denied"],
        "instances": {"cri-a": {
            "vpcDomains": [VPC_DOMAIN],
            "linkedVpcs": [["vpc-linked", "RUNNING"]],
            "internetDomains": [NET_DOMAIN],
        }},
        "oidc": {"roleArn": ROLE, "providerArn": PROVIDER, "token": "projected-sa-token"},
        "roles": [OTHER_ROLE],
        "metadata": {"region": "cn-hangzhou", "vpc": "vpc-linked", "role": "worker-role"},
    })
}

/// `poolcast ARGS` with only `envs` of the credential chain set.
fn poolcast(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolcast"));
    for var in CHAIN_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    common::run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap()
}

fn endpoints(s: &StandIn, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "acr",
        "endpoints",
        "--instance-id",
        "cri-a",
        "--openapi-endpoint",
        &s.url,
        "--sts-endpoint",
        &s.url,
        "--metadata-endpoint",
        &s.url,
    ];
    args.extend_from_slice(extra);
    poolcast(&args, envs)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const AK: &[(&str, &str)] = &[
    ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-good"),
    ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "good-secret"),
];

#[test]
fn an_access_key_in_a_linked_vpc_gets_the_vpc_domain_signed_acs3() {
    let s = StandIn::start(state());
    let out = endpoints(
        &s,
        &["--region", "cn-hangzhou", "--vpc-id", "vpc-linked"],
        AK,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{VPC_DOMAIN}\n"));
    let log = s.log();
    let cr: Vec<&Value> = log.iter().filter(|e| e["kind"] == "openapi").collect();
    assert_eq!(cr.len(), 2, "{log:?}");
    for e in cr {
        assert_eq!(e["signature"], "ACS3-HMAC-SHA256", "{e}");
        assert_eq!(e["caller"], "LTAI-good");
        assert_eq!(e["code"], "success");
    }
    assert!(
        log.iter().all(|e| e["kind"] == "openapi"),
        "region and VPC given: no metadata read: {log:?}"
    );
}

#[test]
fn a_node_in_no_linked_vpc_gets_the_internet_domain_and_the_region_from_metadata() {
    let s = StandIn::start(state());
    s.control(json!({"metadata": {"region": "cn-hangzhou", "vpc": "vpc-elsewhere"}}));
    let out = endpoints(&s, &[], AK);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{NET_DOMAIN}\n"));
    assert!(
        stderr(&out).contains(VPC_DOMAIN),
        "aliases named: {}",
        stderr(&out)
    );
    let reads: Vec<Value> = s
        .log()
        .into_iter()
        .filter(|e| e["kind"] == "metadata")
        .collect();
    assert!(
        !reads.is_empty() && reads.iter().all(|e| e["token"] == true),
        "IMDSv2 token on every read: {reads:?}"
    );
}

#[test]
fn rrsa_trades_the_projected_token_then_assumes_the_cross_account_role() {
    let s = StandIn::start(state());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "projected-sa-token\n").unwrap();
    let token = token.to_str().unwrap();
    let env = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let args = [
        "--region",
        "cn-hangzhou",
        "--vpc-id",
        "vpc-linked",
        "--assume-role-arn",
        OTHER_ROLE,
        "--expire-duration",
        "7200",
    ];
    let out = endpoints(&s, &args, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{VPC_DOMAIN}\n"));
    let log: Vec<Value> = s.log();
    let actions: Vec<&str> = log
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        [
            "AssumeRoleWithOIDC",
            "AssumeRole",
            "GetInstanceVpcEndpoint",
            "ListInstanceEndpoint"
        ]
    );
    assert_eq!(log[1]["signature"], "HMAC-SHA1", "AssumeRole signed V1");
    assert_eq!(log[1]["securityToken"], true);
    assert_eq!(log[1]["caller"], ROLE);
    assert_eq!(log[1]["durationSeconds"], "7200", "rrsa.expireDuration");
    for e in &log[2..] {
        assert_eq!(
            e["caller"], OTHER_ROLE,
            "the OpenAPI is called as the other account's role"
        );
        assert_eq!(e["securityToken"], true, "x-acs-security-token sent");
    }

    // A token the role does not trust: STS's code, and what to check.
    std::fs::write(token, "someone-else").unwrap();
    let out = endpoints(&s, &args, &env);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("AuthenticationFail.OIDCToken.Invalid"),
        "{err}"
    );
}

/// The metadata paths the stand-in was asked for, in order.
fn metadata_paths(s: &StandIn) -> Vec<String> {
    s.log()
        .iter()
        .filter(|e| e["kind"] == "metadata")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_worker_role_and_controller_ram_role_come_from_the_metadata_server() {
    let s = StandIn::start(state());
    let out = endpoints(&s, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{VPC_DOMAIN}\n"), "VPC from metadata");
    let paths = metadata_paths(&s);
    assert!(
        paths.contains(&"ram/security-credentials/".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"ram/security-credentials/worker-role".to_string()));

    // ASK: the role is named (controller.ramRole), not listed.
    let s = StandIn::start(state());
    s.control(
        json!({"metadata": {"region": "cn-hangzhou", "vpc": "vpc-linked", "role": "AskRole"}}),
    );
    let out = endpoints(&s, &["--ram-role", "AskRole"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let paths = metadata_paths(&s);
    assert!(
        !paths.contains(&"ram/security-credentials/".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"ram/security-credentials/AskRole".to_string()));
}

#[test]
fn api_errors_reach_the_user_verbatim_with_the_instance_and_what_to_grant() {
    let s = StandIn::start(state());
    let base = ["--region", "cn-hangzhou", "--vpc-id", "vpc-linked"];
    let fail = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = endpoints(&s, &args, env);
        assert!(!out.status.success(), "{}", stdout(&out));
        stderr(&out)
    };
    let denied = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-denied"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "denied-secret"),
    ];
    let err = fail(&[], &denied);
    assert!(err.contains("Forbidden.RAM: User not authorized"), "{err}");
    assert!(err.contains("cri-a"), "{err}");
    assert!(
        err.contains("cr:GetInstanceVpcEndpoint and cr:ListInstanceEndpoint"),
        "{err}"
    );
    let wrong = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-good"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret"),
    ];
    assert!(fail(&[], &wrong).contains("SignatureDoesNotMatch"));
    let unknown = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-nobody"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "x"),
    ];
    assert!(fail(&[], &unknown).contains("InvalidAccessKeyId.NotFound"));
    let out = poolcast(
        &[
            "acr",
            "endpoints",
            "--instance-id",
            "cri-missing",
            "--openapi-endpoint",
            &s.url,
            "--region",
            "cn-hangzhou",
            "--vpc-id",
            "vpc-linked",
        ],
        AK,
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("INSTANCE_NOT_EXIST") && err.contains("cri-missing"),
        "{err}"
    );
    for e in [err, fail(&[], &denied)] {
        assert!(
            !e.contains("denied-secret") && !e.contains("good-secret"),
            "no secret in errors: {e}"
        );
    }
}

#[test]
fn the_official_client_is_accepted_by_the_stand_in() {
    let s = StandIn::start(state());
    let out = common::run_with_timeout(
        Command::new("python3").args([
            SDK_CLIENT,
            &s.url,
            "cri-a",
            VPC_DOMAIN,
            "LTAI-good",
            "good-secret",
        ]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).trim(), "sdk ok");
}

/// A mirror whose config names instance cri-a; returns it with its log path.
fn acr_mirror(s: &StandIn, dir: &std::path::Path, envs: &[(&str, &str)]) -> (Component, String) {
    let cfg = dir.join("mirror.yaml");
    std::fs::write(
        &cfg,
        format!(
            "cacheHostPath: {}\nacr:\n  instances: [cri-a]\n  region: cn-hangzhou\n  vpcId: vpc-linked\n  \
             refreshInterval: 1s\n  cacheFile: {}\n  openapiEndpoint: {u}\n  stsEndpoint: {u}\n  metadataEndpoint: {u}\n",
            dir.join("cache").display(),
            dir.join("cache/acr-endpoints.json").display(),
            u = s.url
        ),
    )
    .unwrap();
    let log = dir.join("mirror.log");
    let mut env: Vec<(&str, &str)> = envs.to_vec();
    env.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"));
    let (mirror, urls) = Component::try_start_env(
        "mirror",
        &[
            "mirror".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
        &env,
        &["poolcast mirror listening on "],
        &log,
    )
    .unwrap();
    drop(mirror.label.clone());
    (mirror, urls[0].clone())
}

/// The status of `GET /v2/?ns=NS` at the mirror: 404 NAME_UNKNOWN unless NS is an upstream.
/// The stand-in's domains are loopback addresses with nothing on 443, so the mirror's ping
/// fails at once and it answers 200 for a known registry without leaving the machine.
fn known(mirror: &str, ns: &str) -> bool {
    reqwest::blocking::get(format!("{mirror}/v2/?ns={ns}"))
        .map(|r| r.status().as_u16() == 200)
        .unwrap_or(false)
}

#[test]
fn the_mirror_follows_the_instances_and_starts_from_the_last_good_answer_when_the_api_is_down() {
    let s = StandIn::start(state());
    s.control(json!({"instances": {"cri-a": {"vpcDomains": ["127.0.0.2"], "linkedVpcs": [["vpc-linked", "RUNNING"]], "internetDomains": ["127.0.0.4"]}}}));
    let dir = tempfile::tempdir().unwrap();
    let (mut mirror, url) = acr_mirror(&s, dir.path(), AK);
    common::assert_eventually(
        Duration::from_secs(20),
        "the VPC domain is an upstream",
        || known(&url, "127.0.0.2"),
    );
    assert!(
        known(&url, "127.0.0.4"),
        "the internet domain is an alias of the instance"
    );
    assert!(!known(&url, "127.0.0.3"));

    s.control(json!({"instances": {"cri-a": {"vpcDomains": ["127.0.0.3"], "linkedVpcs": [["vpc-linked", "RUNNING"]], "internetDomains": []}}}));
    common::assert_eventually(
        Duration::from_secs(20),
        "the new domain replaces the old",
        || known(&url, "127.0.0.3") && !known(&url, "127.0.0.2"),
    );

    mirror.kill();
    s.control(json!({"down": true}));
    let (_mirror, url) = acr_mirror(&s, dir.path(), AK);
    common::assert_eventually(
        Duration::from_secs(20),
        "the last good answer is used at start",
        || known(&url, "127.0.0.3"),
    );
    assert!(s
        .calls()
        .iter()
        .any(|(_, code)| code == "ServiceUnavailable"));
    let log = std::fs::read_to_string(dir.path().join("mirror.log")).unwrap();
    assert!(log.contains("keeping the last good answer"), "{log}");
    assert!(!log.contains("good-secret"), "no secret in the log");
}

#[test]
fn temporary_credentials_are_renewed_before_they_expire_and_never_logged() {
    let s = StandIn::start(state());
    s.control(json!({"stsSeconds": 4, "instances": {"cri-a": {"vpcDomains": ["127.0.0.2"], "linkedVpcs": [["vpc-linked", "RUNNING"]]}}}));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "projected-sa-token").unwrap();
    let token = token.to_str().unwrap().to_string();
    let env = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.as_str()),
    ];
    let (_mirror, _url) = acr_mirror(&s, dir.path(), &env);
    common::assert_eventually(Duration::from_secs(30), "credentials renewed twice", || {
        s.calls()
            .iter()
            .filter(|(a, _)| a == "AssumeRoleWithOIDC")
            .count()
            >= 3
    });
    let calls = s.calls();
    assert!(
        calls
            .iter()
            .all(|(_, code)| !code.starts_with("InvalidSecurityToken")),
        "renewed before expiry, never used expired: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .filter(|(a, c)| a == "GetInstanceVpcEndpoint" && c == "success")
            .count()
            >= 3
    );
    let log = std::fs::read_to_string(dir.path().join("mirror.log")).unwrap();
    assert!(
        !log.contains("token-") && !log.contains("projected-sa-token"),
        "no token in the log: {log}"
    );
}

#[test]
fn hosts_files_follow_the_instances_and_are_removed_without_an_api_call() {
    let s = StandIn::start(state());
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    let cache = dir.path().join("acr.json");
    let certs_s = certs.display().to_string();
    let cache_s = cache.display().to_string();
    let args = |verb: &'static str| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "hosts".into(),
            verb.into(),
            "--config-path".into(),
            certs_s.clone(),
        ];
        for x in [
            "--registry",
            "docker.io=https://registry-1.docker.io",
            "--acr-instance",
            "cri-a",
            "--region",
            "cn-hangzhou",
            "--vpc-id",
            "vpc-linked",
            "--distributed",
            "--acr-refresh-interval",
            "1s",
            "--openapi-endpoint",
            &s.url,
            "--metadata-endpoint",
            &s.url,
        ] {
            a.push(x.into());
        }
        a.push("--acr-cache-file".into());
        a.push(cache_s.clone());
        a
    };
    let file = |host: &str| certs.join(host).join("hosts.toml");
    let mut watch_args = args("write");
    watch_args.push("--watch".into());
    let log = dir.path().join("hosts.log");
    let mut envs: Vec<(&str, &str)> = AK.to_vec();
    envs.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"));
    let (mut watcher, _) =
        Component::try_start_env("hosts", &watch_args, &envs, &["wrote "], &log).unwrap();
    // The watcher writes the files one after another: wait for the last of them too.
    let distributed = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001";
    common::assert_eventually(
        Duration::from_secs(20),
        "files of both domains and the distributed name",
        || {
            file(VPC_DOMAIN).exists()
                && file(NET_DOMAIN).exists()
                && file("docker.io").exists()
                && file(distributed).exists()
        },
    );
    let text = std::fs::read_to_string(file(NET_DOMAIN)).unwrap();
    assert!(
        text.contains(&format!("server = \"https://{VPC_DOMAIN}\"")),
        "fetched through the linked domain: {text}"
    );

    s.control(json!({"instances": {"cri-a": {"vpcDomains": ["new-registry-vpc.cn-hangzhou.cr.aliyuncs.com"], "linkedVpcs": [["vpc-linked", "RUNNING"]], "internetDomains": []}}}));
    common::assert_eventually(
        Duration::from_secs(20),
        "the old domains' files go, the new one's comes",
        || {
            file("new-registry-vpc.cn-hangzhou.cr.aliyuncs.com").exists()
                && !file(VPC_DOMAIN).exists()
                && !file(NET_DOMAIN).exists()
        },
    );
    watcher.kill();

    s.control(json!({"down": true}));
    let before = s.calls().len();
    let remove: Vec<String> = args("remove");
    let remove: Vec<&str> = remove.iter().map(String::as_str).collect();
    let out = poolcast(&remove, AK);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file("new-registry-vpc.cn-hangzhou.cr.aliyuncs.com").exists());
    assert!(!file("docker.io").exists());
    assert_eq!(s.calls().len(), before, "remove made no API call");
}
