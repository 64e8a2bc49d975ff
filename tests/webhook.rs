//! `poolcast webhook` as the API server meets it: real AdmissionReview v1 requests over HTTPS
//! (a CA made with rcgen, the client trusting only it), JSON Patches applied as the API server
//! applies them, and pull secret copies made through the real Kubernetes client against a fake
//! of the API server's Secret endpoints.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;
mod common;
mod webhook_support;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use webhook_support::*;

const DIGEST: &str = "sha256:4c1b3e5ee2e3c1ab0c5d1d2f48ea0b6f3e8f0b1c2d3e4f5a6b7c8d9e0f1a2b3c";

/// The seeds' Deployment pod, with an init container, a Docker Hub sidecar, an image of a
/// registry poolcast does not serve, and a pinned digest.
fn pod(labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "test-5d4f7-", "namespace": "shop", "labels": labels},
        "spec": {
            "imagePullSecrets": [{"name": "test-registry"}],
            "initContainers": [
                {"name": "init", "image": format!("{ACR}/docker-builder/migrate@{DIGEST}")},
            ],
            "containers": [
                {"name": "test", "image": format!("{ACR}/docker-builder/nginx:latest"),
                 "command": ["sleep", "3600"]},
                {"name": "log", "image": "fluent/fluent-bit:3.0"},
                {"name": "exporter", "image": "quay.io/prometheus/node-exporter:v1.8.0"},
            ],
        },
    })
}

fn p2p() -> Value {
    json!({"app": "nginx", MODE_LABEL: "p2p"})
}

fn seeded_kube() -> FakeKube {
    let kube = FakeKube::start();
    kube.put(
        "shop",
        pull_secret(
            "test-registry",
            json!({
                ACR: {"username": "dev", "password": "s3cret", "auth": "ZGV2OnMzY3JldA=="},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="},
            }),
        ),
    );
    kube
}

#[test]
fn a_labelled_pod_is_rewritten_and_its_pull_secret_copied_in_its_namespace() {
    let kube = seeded_kube();
    let hook = Webhook::start(&kube.url, &[ACR, "docker.io"]);
    let pod = pod(p2p());
    let response = hook.review("/mutate", &review(&pod, "shop", false));
    let out = patched(&pod, &response);

    assert_eq!(
        images(&out, "containers"),
        [
            format!("{ACR_P2P}/docker-builder/nginx:latest"),
            "docker.io.distributed.local:65001/fluent/fluent-bit:3.0".into(),
            "quay.io/prometheus/node-exporter:v1.8.0".into(),
        ]
    );
    assert_eq!(
        images(&out, "initContainers"),
        [format!("{ACR_P2P}/docker-builder/migrate@{DIGEST}")]
    );
    assert_eq!(
        out["spec"]["imagePullSecrets"],
        json!([{"name": "test-registry"}, {"name": "acr-credential-test-registry-p2p"}])
    );
    let annotations = &out["metadata"]["annotations"];
    assert_eq!(annotations[MODE_LABEL], "p2p");
    let config: Value =
        serde_json::from_str(annotations[CONFIG_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(config["port"], 65001);
    assert_eq!(config["images"].as_array().unwrap().len(), 3);
    // Everything else in the pod is as it was.
    assert_eq!(
        out["spec"]["containers"][0]["command"],
        json!(["sleep", "3600"])
    );
    assert_eq!(out["metadata"]["labels"], pod["metadata"]["labels"]);

    // The copy went through the real Kubernetes client: read the source, create the copy in
    // the pod's namespace; its credentials are the source's under the distributed hosts.
    assert_eq!(
        kube.calls(),
        [
            "GET /api/v1/namespaces/shop/secrets/test-registry",
            "POST /api/v1/namespaces/shop/secrets",
        ]
    );
    let copy = kube
        .secret("shop", "acr-credential-test-registry-p2p")
        .unwrap();
    assert_eq!(copy["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        docker_config(&copy),
        json!({"auths": {
            ACR_P2P: {"username": "dev", "password": "s3cret", "auth": "ZGV2OnMzY3JldA=="},
            "docker.io.distributed.local:65001": {"auth": "aHViOmh1Yg=="},
        }})
    );
    assert_eq!(
        copy["metadata"]["annotations"]["poolcast.io/p2p-copy-of"],
        "test-registry"
    );
    assert_eq!(hook.metric("poolcast_webhook_mutated_total"), 1.0);
    assert_eq!(hook.metric("poolcast_webhook_images_rewritten_total"), 3.0);
    assert_eq!(hook.metric("poolcast_webhook_secrets_written_total"), 1.0);

    // The same pod again (its other webhook entry, a reinvocation): nothing more to do.
    let again = hook.review("/mutate", &review(&out, "shop", false));
    assert!(again.get("patch").is_none(), "{again}");
}

#[test]
fn a_pod_of_a_labelled_namespace_is_rewritten_and_an_unlabelled_pod_is_not() {
    let kube = seeded_kube();
    let hook = Webhook::start(&kube.url, &[ACR]);
    let plain = pod(json!({"app": "nginx"}));
    // The namespace entry of the webhook configuration calls /mutate/namespace.
    let response = hook.review("/mutate/namespace", &review(&plain, "shop", false));
    let out = patched(&plain, &response);
    assert_eq!(
        images(&out, "containers")[0],
        format!("{ACR_P2P}/docker-builder/nginx:latest")
    );
    assert_eq!(images(&out, "containers")[1], "fluent/fluent-bit:3.0");

    // Without the label (and without the namespace entry) a pod stays as it is, and no
    // Secret is read.
    let calls = kube.calls().len();
    let untouched = hook.review("/mutate", &review(&plain, "shop", false));
    assert!(untouched.get("patch").is_none(), "{untouched}");
    let opted_out = pod(json!({MODE_LABEL: "none"}));
    let untouched = hook.review("/mutate/namespace", &review(&opted_out, "shop", false));
    assert!(untouched.get("patch").is_none(), "{untouched}");
    assert_eq!(kube.calls().len(), calls);
}

#[test]
fn dry_run_returns_the_patch_and_creates_no_secret() {
    let kube = seeded_kube();
    let hook = Webhook::start(&kube.url, &[ACR]);
    let pod = pod(p2p());
    let response = hook.review("/mutate", &review(&pod, "shop", true));
    let out = patched(&pod, &response);
    assert_eq!(
        out["spec"]["imagePullSecrets"][1]["name"],
        "acr-credential-test-registry-p2p"
    );
    assert_eq!(
        kube.calls(),
        ["GET /api/v1/namespaces/shop/secrets/test-registry"]
    );
    assert!(kube
        .secret("shop", "acr-credential-test-registry-p2p")
        .is_none());
}

#[test]
fn a_stale_copy_is_replaced_and_a_foreign_secret_is_left_alone() {
    let kube = seeded_kube();
    let mut stale = pull_secret(
        "acr-credential-test-registry-p2p",
        json!({ACR_P2P: {"auth": "b2xkOm9sZA=="}}),
    );
    stale["metadata"]["annotations"] = json!({"poolcast.io/p2p-copy-of": "test-registry"});
    kube.put("shop", stale);
    let hook = Webhook::start(&kube.url, &[ACR]);
    let pod = pod(p2p());
    hook.review("/mutate", &review(&pod, "shop", false));
    assert_eq!(
        kube.calls(),
        [
            "GET /api/v1/namespaces/shop/secrets/test-registry",
            "POST /api/v1/namespaces/shop/secrets",
            "GET /api/v1/namespaces/shop/secrets/acr-credential-test-registry-p2p",
            "PUT /api/v1/namespaces/shop/secrets/acr-credential-test-registry-p2p",
        ]
    );
    let copy = kube
        .secret("shop", "acr-credential-test-registry-p2p")
        .unwrap();
    assert_eq!(
        docker_config(&copy)["auths"][ACR_P2P]["auth"],
        "ZGV2OnMzY3JldA=="
    );

    // Someone's own Secret of that name, in another namespace, is used but never overwritten.
    kube.put(
        "other",
        pull_secret("test-registry", json!({ACR: {"auth": "eDp5"}})),
    );
    let theirs = pull_secret(
        "acr-credential-test-registry-p2p",
        json!({ACR_P2P: {"auth": "bWluZQ=="}}),
    );
    kube.put("other", theirs);
    let response = hook.review("/mutate", &review(&pod, "other", false));
    assert!(response.get("patch").is_some());
    let kept = kube
        .secret("other", "acr-credential-test-registry-p2p")
        .unwrap();
    assert_eq!(docker_config(&kept)["auths"][ACR_P2P]["auth"], "bWluZQ==");
    assert!(!kube
        .calls()
        .iter()
        .any(|c| c.starts_with("PUT /api/v1/namespaces/other")));
}

#[test]
fn with_the_api_server_unreachable_pods_are_allowed_unchanged() {
    // A port nothing listens on: the API server is down or the network is cut.
    let down = format!("http://127.0.0.1:{}", common::free_port());
    let hook = Webhook::start(&down, &[ACR]);
    let pod = pod(p2p());
    let response = hook.review("/mutate", &review(&pod, "shop", false));
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(hook.metric("poolcast_webhook_failures_total"), 1.0);
    // A pod without pull secrets needs no API call and is still rewritten.
    let mut public = pod.clone();
    public["spec"]
        .as_object_mut()
        .unwrap()
        .remove("imagePullSecrets");
    let response = hook.review("/mutate", &review(&public, "shop", false));
    assert_eq!(
        images(&patched(&public, &response), "containers")[0],
        format!("{ACR_P2P}/docker-builder/nginx:latest")
    );
}

#[test]
fn what_is_not_an_admission_review_gets_a_400_and_the_webhook_keeps_serving() {
    let kube = FakeKube::start();
    let hook = Webhook::start(&kube.url, &[ACR]);
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "request": {"uid": "x"}});
    let (no_request, wrong_kind) = (no_request.to_string(), wrong_kind.to_string());
    let bodies: [&[u8]; 5] = [
        b"{not json",
        b"",
        b"[]",
        no_request.as_bytes(),
        wrong_kind.as_bytes(),
    ];
    for body in bodies {
        let (status, answer) = hook.post("/mutate", body);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("not an AdmissionReview"),
            "{answer}"
        );
    }
    assert_eq!(hook.metric("poolcast_webhook_bad_requests_total"), 5.0);
    // A review of something that is not a pod: allowed, untouched.
    let mut deployment = review(&json!({"kind": "Deployment"}), "shop", false);
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let response = hook.review("/mutate", &deployment);
    assert!(response.get("patch").is_none());
    let health = hook
        .client
        .get(format!("{}/healthz", hook.url))
        .send()
        .unwrap();
    assert_eq!(health.text().unwrap(), "ok");
    assert!(kube.calls().is_empty());
}

#[test]
fn only_clients_that_trust_its_ca_reach_it() {
    let kube = FakeKube::start();
    let hook = Webhook::start(&kube.url, &[ACR]);
    assert!(hook.url.starts_with("https://"), "{}", hook.url);
    let stranger = trusting(&certs(&["127.0.0.1"]).ca);
    assert!(stranger
        .get(format!("{}/healthz", hook.url))
        .send()
        .is_err());
    let plain = common::client()
        .get(hook.url.replace("https://", "http://") + "/healthz")
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}

#[test]
fn the_certificate_the_chart_generates_serves_the_webhook_service_name() {
    // The chart's genCA/genSignedCert pair, as rendered: the API server calls
    // https://<service>.<namespace>.svc and checks the certificate against caBundle.
    let objs =
        chart_support::objects(&chart_support::render(&["--set", "edgeNodePool.id=np-1"]).unwrap());
    let secret = objs
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "pc-poolcast-webhook-tls")
        .expect("the webhook's TLS Secret");
    let config = objs
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook configuration");
    let b64 = |v: &serde_yaml::Value| -> String {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(chart_support::str_of(v))
            .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let ca = b64(&config["webhooks"][0]["clientConfig"]["caBundle"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, b64(&secret["data"]["tls.crt"])).unwrap();
    std::fs::write(&key, b64(&secret["data"]["tls.key"])).unwrap();

    let kube = FakeKube::start();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, webhook_support::kubeconfig(&kube.url)).unwrap();
    let args: Vec<String> = [
        "webhook",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        ACR,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let kc = kubeconfig.display().to_string();
    let (_process, urls) = common::process::Component::try_start_env(
        "webhook",
        &args,
        &[("KUBECONFIG", &kc)],
        &["poolcast webhook listening on https://"],
        &dir.path().join("webhook.log"),
    )
    .unwrap();
    let addr: std::net::SocketAddr = urls[0].parse().unwrap();
    let host = "pc-poolcast-webhook.edge.svc";
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve(host, addr)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let health = client
        .get(format!("https://{host}:{}/healthz", addr.port()))
        .send()
        .unwrap();
    assert_eq!(health.text().unwrap(), "ok");
}

#[test]
fn bad_webhook_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("registries: []\nplainHttp: true\n", "registries"),
        ("registries: [docker.io]\n", "tlsCertFile"),
        (
            "registries: [docker.io]\nplainHttp: true\nport: 0\n",
            "port",
        ),
        (
            "registries: [docker.io]\nplainHttp: true\ndistributedSuffix: \"a..b\"\n",
            "distributedSuffix",
        ),
        (
            "registries: [docker.io]\nplainHttp: true\nregistry: [x]\n",
            "registry",
        ),
    ];
    for (yaml, key) in cases {
        let path = dir.path().join("webhook.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_poolcast"))
            .args(["webhook", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{yaml:?} did not stop start-up: {stderr}"
        );
        assert!(stderr.contains(key), "{yaml:?}: {stderr}");
        let check = Command::new(env!("CARGO_BIN_EXE_poolcast"))
            .args(["config", "check", "--component", "webhook"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            check.status.code(),
            Some(1),
            "config check accepted {yaml:?}"
        );
    }
}

#[test]
fn an_acr_instance_named_by_id_is_rewritten_once_resolved() {
    use common::standin::StandIn;
    let standin = StandIn::start(json!({
        "keys": {"LTAI-good": "good-secret"},
        "instances": {"cri-a": {"vpcDomains": [ACR], "linkedVpcs": [["vpc-linked", "RUNNING"]],
                                "internetDomains": ["test-registry.cn-hangzhou.cr.aliyuncs.com"]}},
    }));
    let kube = seeded_kube();
    let acr = json!({"acr": {
        "instances": ["cri-a"], "region": "cn-hangzhou", "vpcId": "vpc-linked",
        "openapiEndpoint": standin.url, "metadataEndpoint": standin.url,
    }});
    let hook = Webhook::start_with(
        &kube.url,
        &["docker.io"],
        acr,
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-good"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "good-secret"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ],
    );
    let pod = pod(p2p());
    common::assert_eventually(
        Duration::from_secs(20),
        "the instance's domain is rewritten",
        || {
            let response = hook.review("/mutate", &review(&pod, "shop", true));
            response.get("patch").is_some()
                && images(&patched(&pod, &response), "containers")[0]
                    == format!("{ACR_P2P}/docker-builder/nginx:latest")
        },
    );
    let response = hook.review("/mutate", &review(&pod, "shop", false));
    let out = patched(&pod, &response);
    assert_eq!(
        out["spec"]["imagePullSecrets"],
        json!([{"name": "test-registry"}, {"name": "acr-credential-test-registry-p2p"}]),
        "the pull secret is copied for the resolved domain"
    );
    assert!(!hook.log().contains("good-secret"), "no secret in the log");
}

#[test]
fn with_a_client_ca_only_the_api_servers_certificate_gets_a_review_acted_on() {
    let kube = seeded_kube();
    let api_server = certs(&["kube-apiserver"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("client-ca.crt");
    std::fs::write(&ca, &api_server.ca).unwrap();
    let hook = Webhook::start_with(
        &kube.url,
        &[ACR, "docker.io"],
        json!({"clientCAFile": ca}),
        &[],
    );
    let forged = review(&pod(p2p()), "shop", false);
    // Any pod that reaches the port, without the API server's certificate: refused, nothing made.
    let (status, answer) = hook.post("/mutate", forged.to_string().as_bytes());
    assert_eq!(status, 401, "{answer}");
    assert!(
        kube.calls().is_empty(),
        "a forged review reached the API: {:?}",
        kube.calls()
    );
    // Probes carry no certificate and still get an answer.
    let health = hook
        .client
        .get(format!("{}/healthz", hook.url))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // The API server's own client certificate: the review is acted on.
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", api_server.cert, api_server.key).as_bytes())
            .unwrap();
    let api = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(hook.certs.ca.as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    let answer: serde_json::Value = api
        .post(format!("{}/mutate", hook.url))
        .header("content-type", "application/json")
        .body(forged.to_string())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(answer["response"]["patch"].is_string(), "{answer}");
    assert!(kube
        .secret("shop", "acr-credential-test-registry-p2p")
        .is_some());
}
