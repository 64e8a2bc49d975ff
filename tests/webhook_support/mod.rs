//! What the webhook tests share: TLS certificates made with rcgen, a fake of the Kubernetes API
//! server's Secret endpoints (no real API server runs here: Debian and PyPI ship etcd but no
//! kube-apiserver), the `poolcast webhook` process, and AdmissionReview v1 requests.
//!
//! ```text
//!   test --HTTPS, trusting the test CA--> poolcast webhook --kube client (KUBECONFIG)--> FakeKube
//!        POST /mutate AdmissionReview        |                    GET/POST/PUT /api/v1/namespaces/NS/secrets
//!   <-- AdmissionReview response, patch -----+
//! ```

#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use crate::common::process::Component;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MODE_LABEL: &str = "k8s.aliyun.com/image-accelerate-mode";
pub const CONFIG_ANNOTATION: &str = "k8s.aliyun.com/p2p-config";
pub const ACR: &str = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com";
pub const ACR_P2P: &str = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001";

pub use crate::common::tls::{certs, Certs};

/// One request the fake API server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct KubeState {
    secrets: BTreeMap<(String, String), Value>,
    seen: Vec<Seen>,
    version: u64,
}

/// The API server's Secret endpoints (`GET`, `POST`, `PUT` under
/// `/api/v1/namespaces/NS/secrets`), with its status codes: 404 for a missing Secret, 409
/// `AlreadyExists` on create, 409 `Conflict` on a replace naming an old `resourceVersion`.
pub struct FakeKube {
    pub url: String,
    state: Arc<Mutex<KubeState>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (code, body)
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(KubeState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FakeKube { url, state }
    }

    /// Stores a Secret as if created earlier.
    pub fn put(&self, namespace: &str, mut secret: Value) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        secret["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        st.secrets.insert((namespace.into(), name), secret);
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        self.state.lock().unwrap().secrets.get(&key).cloned()
    }

    /// `METHOD path` of every request so far.
    pub fn calls(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: webhook, user: {{token: test-token}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: webhook}}}}]\ncurrent-context: fake\n"
    )
}

fn serve(stream: TcpStream, state: &Mutex<KubeState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (code, reply) = answer(state, &method, &path, &body);
    state.lock().unwrap().seen.push(Seen { method, path, body });
    let reply = reply.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn answer(state: &Mutex<KubeState>, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut st = state.lock().unwrap();
    match (method, parts.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match st.secrets.get(&(ns.to_string(), name.to_string())) {
                Some(s) => (200, s.clone()),
                None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            let key = (ns.to_string(), name.clone());
            if st.secrets.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("secrets \"{name}\" already exists"),
                );
            }
            st.version += 1;
            let mut stored = body.clone();
            stored["metadata"]["resourceVersion"] = json!(st.version.to_string());
            st.secrets.insert(key, stored.clone());
            (201, stored)
        }
        ("PUT", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            let key = (ns.to_string(), name.to_string());
            let Some(current) = st.secrets.get(&key) else {
                return status(404, "NotFound", &format!("secrets \"{name}\" not found"));
            };
            let given = &body["metadata"]["resourceVersion"];
            if !given.is_null() && *given != current["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            st.version += 1;
            let mut stored = body.clone();
            stored["metadata"]["resourceVersion"] = json!(st.version.to_string());
            st.secrets.insert(key, stored.clone());
            (200, stored)
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// A pull secret as `kubectl create secret docker-registry` makes it.
pub fn pull_secret(name: &str, auths: Value) -> Value {
    let config = json!({ "auths": auths });
    let data = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": name}, "data": {".dockerconfigjson": data}})
}

/// The `.dockerconfigjson` of a Secret as the fake stored it.
pub fn docker_config(secret: &Value) -> Value {
    let data = secret["data"][".dockerconfigjson"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `poolcast webhook` over TLS, with a client that trusts its CA.
pub struct Webhook {
    pub url: String,
    pub client: reqwest::blocking::Client,
    pub certs: Certs,
    pub log: PathBuf,
    _process: Component,
    _dir: tempfile::TempDir,
}

impl Webhook {
    /// Serves `registries`, talking to the API server at `kube_url`.
    pub fn start(kube_url: &str, registries: &[&str]) -> Webhook {
        Self::start_with(kube_url, registries, json!({}), &[])
    }

    /// [`Webhook::start`] with more config keys (`acr`) and environment variables.
    pub fn start_with(
        kube_url: &str,
        registries: &[&str],
        extra: Value,
        envs: &[(&str, &str)],
    ) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let certs = certs(&["127.0.0.1", "localhost"]);
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &certs.cert).unwrap();
        std::fs::write(&key, &certs.key).unwrap();
        let mut config = json!({
            "listen": "127.0.0.1:0",
            "registries": registries,
            "port": 65001,
            "tlsCertFile": cert,
            "tlsKeyFile": key,
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        let config_path = dir.path().join("webhook.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, self::kubeconfig(kube_url)).unwrap();
        let log = dir.path().join("webhook.log");
        let args = vec![
            "webhook".to_string(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        let kc = kubeconfig.display().to_string();
        let mut env = vec![("KUBECONFIG", kc.as_str())];
        env.extend_from_slice(envs);
        let (process, urls) = Component::try_start_env(
            "webhook",
            &args,
            &env,
            &["poolcast webhook listening on"],
            &log,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        Webhook {
            url: urls[0].clone(),
            client: trusting(&certs.ca),
            certs,
            log,
            _process: process,
            _dir: dir,
        }
    }

    /// POSTs a body to `path`; the status and the JSON answer.
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// Sends a review to `path`; the response part of the answer, which must be a 200.
    pub fn review(&self, path: &str, review: &Value) -> Value {
        let (status, answer) = self.post(path, review.to_string().as_bytes());
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert_eq!(
            answer["response"]["allowed"], true,
            "pods are never blocked"
        );
        answer["response"].clone()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        crate::common::mirror::sum_metric(&text, name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::common::process::print_log("webhook", &self.log);
        }
    }
}

/// A client that trusts only `ca` (PEM).
pub fn trusting(ca: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An AdmissionReview v1 of a pod CREATE, as the API server sends it.
pub fn review(pod: &Value, namespace: &str, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{}", rand::random::<u32>()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "3c2b", "groups": ["system:serviceaccounts"]},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// The pod after the response's JSON Patch, applied as the API server applies it.
pub fn patched(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

/// The images of one container list of a pod.
pub fn images(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect()
}
