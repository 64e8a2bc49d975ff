#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use super::*;
use crate::review::AdmissionReview;
use crate::secrets::tests::memory::Store;
use crate::secrets::tests::{config_of, pull_secret};

const ACR: &str = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com";
const ACR_P2P: &str = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001";
const DIGEST: &str = "sha256:4c1b3e5ee2e3c1ab0c5d1d2f48ea0b6f3e8f0b1c2d3e4f5a6b7c8d9e0f1a2b3c";

fn mutator() -> Mutator {
    Mutator::new(&WebhookConfig {
        registries: vec![ACR.into(), "docker.io".into(), "10.0.0.5:5000".into()],
        plain_http: true,
        ..WebhookConfig::default()
    })
    .unwrap()
}

fn pod(labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": labels},
        "spec": {
            "imagePullSecrets": [{"name": "test-registry"}],
            "initContainers": [
                {"name": "migrate", "image": format!("{ACR}/shop/migrate@{DIGEST}")},
            ],
            "containers": [
                {"name": "app", "image": format!("{ACR}/docker-builder/nginx:latest")},
                {"name": "proxy", "image": "envoyproxy/envoy:v1.30"},
                {"name": "metrics", "image": "quay.io/prometheus/node-exporter:v1"},
                {"name": "local", "image": "10.0.0.5:5000/team/tool:v2"},
            ],
        },
    })
}

fn p2p_labels() -> Value {
    json!({"app": "web", MODE_LABEL: MODE_P2P})
}

/// A request as the API server sends it, through the same parser the server uses.
fn request(
    object: &Value,
    operation: &str,
    sub_resource: Option<&str>,
    dry_run: bool,
) -> AdmissionRequest {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": sub_resource,
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": dry_run,
        },
    });
    AdmissionReview::parse(review.to_string().as_bytes())
        .unwrap()
        .1
}

/// A pod CREATE, reviewed as the entry `selection` would send it.
async fn created(
    m: &Mutator,
    pod: &Value,
    selection: Selection,
    api: &dyn SecretApi,
) -> Option<Mutation> {
    let req = request(pod, "CREATE", None, false);
    m.mutate(&req, selection, api).await.unwrap()
}

fn store_with_secret() -> Store {
    let store = Store::default();
    store.put(
        "shop",
        pull_secret(
            "test-registry",
            json!({ACR: {"auth": "dXNlcjpwYXNz"}, "other.example.com": {"auth": "eA=="}}),
        ),
    );
    store
}

fn apply(object: &Value, patch: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).unwrap();
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn images(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_labelled_pod_pulls_configured_registries_through_the_agent() {
    let (m, store) = (mutator(), store_with_secret());
    let pod = pod(p2p_labels());
    let out = created(&m, &pod, Selection::PodLabel, &store)
        .await
        .unwrap();
    let patched = apply(&pod, &out.patch);
    assert_eq!(
        images(&patched, "containers"),
        [
            format!("{ACR_P2P}/docker-builder/nginx:latest"),
            "docker.io.distributed.local:65001/envoyproxy/envoy:v1.30".to_string(),
            "quay.io/prometheus/node-exporter:v1".to_string(),
            "10.0.0.5.port-5000.distributed.local:65001/team/tool:v2".to_string(),
        ]
    );
    assert_eq!(
        images(&patched, "initContainers"),
        [format!("{ACR_P2P}/shop/migrate@{DIGEST}")]
    );
    assert_eq!(
        patched["spec"]["imagePullSecrets"],
        json!([{"name": "test-registry"}, {"name": "acr-credential-test-registry-p2p"}])
    );
    let annotations = &patched["metadata"]["annotations"];
    assert_eq!(annotations[MODE_LABEL], MODE_P2P);
    let config: Value =
        serde_json::from_str(annotations[CONFIG_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(config["mode"], "p2p");
    assert_eq!(config["port"], 65001);
    assert_eq!(config["images"].as_array().unwrap().len(), 4);
    assert_eq!(
        config["images"][0],
        json!({"container": "migrate", "type": "initContainer",
               "from": format!("{ACR}/shop/migrate@{DIGEST}"),
               "to": format!("{ACR_P2P}/shop/migrate@{DIGEST}")})
    );
    assert_eq!(
        config["imagePullSecrets"],
        json!(["acr-credential-test-registry-p2p"])
    );
    // The copy: same credentials under the distributed host, in the pod's namespace.
    let copy = store
        .secret("shop", "acr-credential-test-registry-p2p")
        .unwrap();
    assert_eq!(
        config_of(&copy)["auths"],
        json!({ACR_P2P: {"auth": "dXNlcjpwYXNz"}, "other.example.com": {"auth": "eA=="}})
    );
    assert_eq!(out.secrets_written, 1);
}

#[tokio::test]
async fn pods_without_the_label_or_with_another_value_are_untouched() {
    let (m, store) = (mutator(), store_with_secret());
    for labels in [
        json!({"app": "web"}),
        json!({MODE_LABEL: "none"}),
        Value::Null,
    ] {
        let pod = pod(labels);
        assert!(created(&m, &pod, Selection::PodLabel, &store)
            .await
            .is_none());
    }
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

#[tokio::test]
async fn namespace_selected_pods_are_mutated_unless_their_own_label_opts_out() {
    let (m, store) = (mutator(), store_with_secret());
    let unlabelled = pod(json!({"app": "web"}));
    let out = created(&m, &unlabelled, Selection::NamespaceLabel, &store)
        .await
        .unwrap();
    assert_eq!(out.images.len(), 4);
    let opted_out = pod(json!({MODE_LABEL: "none"}));
    assert!(created(&m, &opted_out, Selection::NamespaceLabel, &store)
        .await
        .is_none());
}

#[tokio::test]
async fn dry_run_creates_no_secret_but_returns_the_same_patch() {
    let m = mutator();
    let (dry, wet) = (store_with_secret(), store_with_secret());
    let pod = pod(p2p_labels());
    let a = m
        .mutate(
            &request(&pod, "CREATE", None, true),
            Selection::PodLabel,
            &dry,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dry.calls(), ["get shop/test-registry"]);
    assert!(dry
        .secret("shop", "acr-credential-test-registry-p2p")
        .is_none());
    assert_eq!(a.secrets_written, 0);
    let b = created(&m, &pod, Selection::PodLabel, &wet).await.unwrap();
    assert_eq!(a.patch, b.patch);
}

#[tokio::test]
async fn a_mutated_pod_is_not_mutated_again_and_a_reinvocation_only_adds() {
    let (m, store) = (mutator(), store_with_secret());
    let pod = pod(p2p_labels());
    let first = created(&m, &pod, Selection::PodLabel, &store)
        .await
        .unwrap();
    let patched = apply(&pod, &first.patch);
    // The second webhook entry, or a reinvocation with nothing new: no change at all.
    for selection in [Selection::PodLabel, Selection::NamespaceLabel] {
        let again = request(&patched, "CREATE", None, false);
        assert!(m.mutate(&again, selection, &store).await.unwrap().is_none());
    }
    // Another webhook added a sidecar: only it is rewritten, the record grows.
    let mut with_sidecar = patched.clone();
    with_sidecar["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidecar", "image": "busybox:1.36"}));
    let more = created(&m, &with_sidecar, Selection::PodLabel, &store)
        .await
        .unwrap();
    let twice = apply(&with_sidecar, &more.patch);
    assert_eq!(
        images(&twice, "containers")[4],
        "docker.io.distributed.local:65001/library/busybox:1.36"
    );
    assert_eq!(
        twice["spec"]["imagePullSecrets"],
        patched["spec"]["imagePullSecrets"]
    );
    let text = twice["metadata"]["annotations"][CONFIG_ANNOTATION]
        .as_str()
        .unwrap();
    let config: Value = serde_json::from_str(text).unwrap();
    assert_eq!(config["images"].as_array().unwrap().len(), 5);
    assert_eq!(
        config["imagePullSecrets"],
        json!(["acr-credential-test-registry-p2p"])
    );
}

#[tokio::test]
async fn pods_of_one_deployment_share_one_copy() {
    let (m, store) = (mutator(), store_with_secret());
    let pod = pod(p2p_labels());
    for _ in 0..3 {
        created(&m, &pod, Selection::PodLabel, &store)
            .await
            .unwrap();
    }
    let creates = store
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert_eq!(creates, 1, "{:?}", store.calls());
}

#[tokio::test]
async fn pods_without_pull_secrets_or_configured_images_get_what_applies() {
    let (m, store) = (mutator(), Store::default());
    let mut public = pod(p2p_labels());
    public["spec"]
        .as_object_mut()
        .unwrap()
        .remove("imagePullSecrets");
    public["metadata"]["annotations"] = json!({"team": "shop"});
    let out = created(&m, &public, Selection::PodLabel, &store)
        .await
        .unwrap();
    let patched = apply(&public, &out.patch);
    assert!(patched["spec"].get("imagePullSecrets").is_none());
    assert_eq!(patched["metadata"]["annotations"]["team"], "shop");
    assert_eq!(patched["metadata"]["annotations"][MODE_LABEL], "p2p");

    // A pull secret that does not exist, or holds no configured registry, is not copied.
    let mut missing = pod(p2p_labels());
    missing["spec"]["imagePullSecrets"] = json!([{"name": "gone"}]);
    let out = created(&m, &missing, Selection::PodLabel, &store)
        .await
        .unwrap();
    assert!(out.secrets.is_empty());

    let mut elsewhere = pod(p2p_labels());
    elsewhere["spec"] = json!({"containers": [{"name": "a", "image": "quay.io/a/b:1"}]});
    assert!(created(&m, &elsewhere, Selection::PodLabel, &store)
        .await
        .is_none());
}

#[tokio::test]
async fn a_failing_api_leaves_the_pod_unchanged() {
    struct Down;
    #[async_trait::async_trait]
    impl SecretApi for Down {
        async fn get(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
            Err(Error::Kube {
                action: "get",
                namespace: namespace.into(),
                name: name.into(),
                message: "connection refused".into(),
            })
        }
        async fn create(&self, _: &str, _: &Secret) -> Result<()> {
            unreachable!("nothing is created after a failed read")
        }
        async fn replace(&self, _: &str, _: &Secret) -> Result<()> {
            unreachable!("nothing is replaced after a failed read")
        }
    }
    let pod = pod(p2p_labels());
    let req = request(&pod, "CREATE", None, false);
    let err = mutator()
        .mutate(&req, Selection::PodLabel, &Down)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn a_debug_container_of_an_accelerated_pod_is_rewritten_alone() {
    let (m, store) = (mutator(), store_with_secret());
    let new_pod = pod(p2p_labels());
    let out = created(&m, &new_pod, Selection::PodLabel, &store)
        .await
        .unwrap();
    let mut running = apply(&new_pod, &out.patch);
    running["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    let calls = store.calls().len();
    let req = request(&running, "UPDATE", Some("ephemeralcontainers"), false);
    let debug = m
        .mutate(&req, Selection::PodLabel, &store)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        debug.patch,
        [
            json!({"op": "replace", "path": "/spec/ephemeralContainers/0/image",
                "value": "docker.io.distributed.local:65001/library/busybox"})
        ]
    );
    assert_eq!(
        store.calls().len(),
        calls,
        "no API calls for a debug container"
    );
    // A pod that was not accelerated at creation keeps its debug image as it is.
    let mut plain = pod(p2p_labels());
    plain["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    let req = request(&plain, "UPDATE", Some("ephemeralcontainers"), false);
    assert!(m
        .mutate(&req, Selection::PodLabel, &store)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn other_operations_and_kinds_are_untouched() {
    let (m, store) = (mutator(), store_with_secret());
    let pod = pod(p2p_labels());
    for (op, sub) in [
        ("UPDATE", None),
        ("DELETE", None),
        ("CREATE", Some("binding")),
    ] {
        let req = request(&pod, op, sub, false);
        assert!(
            m.mutate(&req, Selection::PodLabel, &store)
                .await
                .unwrap()
                .is_none(),
            "{op}"
        );
    }
    let mut req = request(&pod, "CREATE", None, false);
    req.kind.kind = "Deployment".into();
    req.kind.group = "apps".into();
    assert!(m
        .mutate(&req, Selection::PodLabel, &store)
        .await
        .unwrap()
        .is_none());
}

#[test]
fn rewrite_leaves_unconfigured_and_rewritten_images_alone() {
    let m = mutator();
    assert_eq!(m.rewrite("quay.io/a/b:1"), None);
    assert_eq!(m.rewrite(&format!("{ACR_P2P}/ns/app:tag")), None);
    assert_eq!(m.rewrite("not an image"), None);
    assert_eq!(
        m.rewrite(&format!("{ACR}/ns/app:tag")).as_deref(),
        Some(format!("{ACR_P2P}/ns/app:tag").as_str())
    );
    assert_eq!(
        m.rewrite("index.docker.io/library/nginx").as_deref(),
        Some("docker.io.distributed.local:65001/library/nginx")
    );
}

#[test]
fn registries_resolved_from_acr_instances_are_rewritten_once_set() {
    let m = mutator();
    let image = "test-registry-vpc.cn-shanghai.cr.aliyuncs.com/team/app:1";
    assert_eq!(m.rewrite(image), None, "not known before resolution");
    m.acr_registries()
        .write()
        .unwrap()
        .insert("test-registry-vpc.cn-shanghai.cr.aliyuncs.com".into());
    assert_eq!(
        m.rewrite(image).as_deref(),
        Some("test-registry-vpc.distributed.cn-shanghai.cr.aliyuncs.com:65001/team/app:1")
    );
    m.acr_registries().write().unwrap().clear();
    assert_eq!(m.rewrite(image), None, "a domain gone is not rewritten");
}
