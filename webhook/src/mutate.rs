//! The pod mutation of the seeds (ACK's `ack-acr-acceleration-p2p`): a pod labelled (or in a
//! namespace labelled) `k8s.aliyun.com/image-accelerate-mode=p2p` gets
//!
//! ```text
//!   spec.{initContainers,containers,ephemeralContainers}[*].image   of a configured registry
//!       test-registry-vpc.cn-hangzhou.cr.aliyuncs.com/ns/app:tag
//!    -> test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001/ns/app:tag
//!   spec.imagePullSecrets   + acr-credential-<name>-p2p for each pull secret with such a registry
//!   metadata.annotations    + k8s.aliyun.com/image-accelerate-mode: p2p
//!                           + k8s.aliyun.com/p2p-config: {"mode":"p2p","port":65001,"images":[...],...}
//! ```
//!
//! The mutation is idempotent: a rewritten image names no configured registry and a listed copy
//! is not added again, so a second call (reinvocation, or a pod that two webhook entries match)
//! changes nothing that the first did. When a needed Secret copy cannot be made, nothing is
//! rewritten: a rewritten image without its credentials would fail to pull, the original pulls.

use crate::error::{Error, Result};
use crate::image::ImageRef;
use crate::review::AdmissionRequest;
use crate::secrets::{copy_name, ensure_copy, is_copy_name, p2p_copy, Ensured, SecretApi};
use k8s_openapi::api::core::v1::Secret;
use nodepool::{DistributedNames, WebhookConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MODE_LABEL: &str = "k8s.aliyun.com/image-accelerate-mode";
pub const MODE_P2P: &str = "p2p";
pub const CONFIG_ANNOTATION: &str = "k8s.aliyun.com/p2p-config";

/// Time allowed for the Kubernetes API calls of one review (the chart gives the API server's
/// call 10 s).
pub const API_BUDGET: Duration = Duration::from_secs(5);
/// A copy made this recently from the same credentials is not checked again.
const RECENT: Duration = Duration::from_secs(60);

/// In the order a pod starts them.
const LISTS: [(&str, &str); 3] = [
    ("initContainers", "initContainer"),
    ("containers", "container"),
    ("ephemeralContainers", "ephemeralContainer"),
];

/// Which webhook entry the API server called: the one selecting pods by their own label, or
/// the one selecting them by their namespace's label (then a pod's own label, if any, must
/// say `p2p` too: another value opts the pod out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    PodLabel,
    NamespaceLabel,
}

/// One rewritten image, as the `p2p-config` annotation records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub container: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub from: String,
    pub to: String,
}

/// The `k8s.aliyun.com/p2p-config` annotation.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct P2pConfig {
    mode: String,
    port: u16,
    #[serde(default)]
    images: Vec<Rewrite>,
    #[serde(default)]
    image_pull_secrets: Vec<String>,
}

/// What one review changes.
#[derive(Debug, Default)]
pub struct Mutation {
    /// JSON Patch operations (RFC 6902).
    pub patch: Vec<Value>,
    pub images: Vec<Rewrite>,
    /// Copies added to `imagePullSecrets`.
    pub secrets: Vec<String>,
    /// Copies created or updated (none in a dry run).
    pub secrets_written: usize,
}

/// Registries that change at run time: the domains of ACR instances named by id (`acr`).
pub type DynamicRegistries = std::sync::Arc<std::sync::RwLock<BTreeSet<String>>>;

pub struct Mutator {
    registries: BTreeSet<String>,
    acr: DynamicRegistries,
    names: DistributedNames,
    /// (namespace, copy) -> when it was last made sure of, and a hash of its credentials.
    recent: Mutex<HashMap<(String, String), (Instant, u64)>>,
}

fn normalise(registry: &str) -> String {
    let r = registry.trim().to_ascii_lowercase();
    if r == "index.docker.io" {
        "docker.io".into()
    } else {
        r
    }
}

/// `/` and `~` escaped for a JSON Pointer (RFC 6901).
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Mutator {
    pub fn new(config: &WebhookConfig) -> Result<Self> {
        config.validate()?;
        Ok(Mutator {
            registries: config.registries.iter().map(|r| normalise(r)).collect(),
            acr: DynamicRegistries::default(),
            names: config.names()?,
            recent: Mutex::new(HashMap::new()),
        })
    }

    /// The registries of ACR instances named by id: whoever resolves them sets them here.
    pub fn acr_registries(&self) -> DynamicRegistries {
        self.acr.clone()
    }

    /// The configured registries and those resolved from ACR instances.
    fn registries(&self) -> std::borrow::Cow<'_, BTreeSet<String>> {
        let acr = self.acr.read().unwrap_or_else(|e| e.into_inner());
        if acr.is_empty() {
            return std::borrow::Cow::Borrowed(&self.registries);
        }
        std::borrow::Cow::Owned(self.registries.iter().chain(acr.iter()).cloned().collect())
    }

    /// The image under its registry's distributed name; `None` for images of registries not
    /// configured (including images already rewritten) and for what does not parse.
    pub fn rewrite(&self, image: &str) -> Option<String> {
        let r = ImageRef::parse(image)?;
        if !self.registries().contains(&r.domain) {
            return None;
        }
        Some(r.with_domain(&self.names.distributed(&r.domain)?))
    }

    /// The mutation of the pod in `req`, or `None` when it is left as it is.
    pub async fn mutate(
        &self,
        req: &AdmissionRequest,
        selection: Selection,
        api: &dyn SecretApi,
    ) -> Result<Option<Mutation>> {
        let Some(pod) = req.object.as_ref().filter(|_| is_pod(req)) else {
            return Ok(None);
        };
        let mode = pod["metadata"]["labels"][MODE_LABEL].as_str();
        let selected = match selection {
            Selection::PodLabel => mode == Some(MODE_P2P),
            Selection::NamespaceLabel => mode.is_none() || mode == Some(MODE_P2P),
        };
        let annotations = pod["metadata"]["annotations"].as_object();
        let recorded = annotations.and_then(|a| a.get(CONFIG_ANNOTATION)?.as_str());
        let lists: &[(&str, &str)] = match (req.operation.as_str(), req.sub_resource.as_deref()) {
            ("CREATE", None) => &LISTS,
            // A debug container joins a running pod: its pull secrets were copied (or not
            // needed) when the pod was created, and only this list may change now.
            ("UPDATE", Some("ephemeralcontainers")) if recorded.is_some() => &LISTS[2..],
            _ => return Ok(None),
        };
        if !selected {
            return Ok(None);
        }
        let mut m = Mutation::default();
        for (list, kind) in lists {
            let containers = pod["spec"][list].as_array().map_or(&[][..], Vec::as_slice);
            for (i, c) in containers.iter().enumerate() {
                let Some(from) = c["image"].as_str() else {
                    continue;
                };
                let Some(to) = self.rewrite(from) else {
                    continue;
                };
                m.patch.push(json!({"op": "replace", "path": format!("/spec/{list}/{i}/image"), "value": to}));
                m.images.push(Rewrite {
                    container: c["name"].as_str().unwrap_or("").to_string(),
                    kind: kind.to_string(),
                    from: from.to_string(),
                    to,
                });
            }
        }
        if m.images.is_empty() || lists.len() == 1 {
            return Ok((!m.images.is_empty()).then_some(m));
        }
        let namespace = req
            .namespace
            .as_deref()
            .or_else(|| pod["metadata"]["namespace"].as_str())
            .filter(|ns| !ns.is_empty())
            .ok_or_else(|| Error::BadReview("pod without a namespace".into()))?;
        let dry_run = req.dry_run.unwrap_or(false);
        tokio::time::timeout(
            API_BUDGET,
            self.copy_secrets(pod, namespace, dry_run, api, &mut m),
        )
        .await
        .map_err(|_| Error::ApiTimeout(API_BUDGET))??;
        self.annotate(pod, recorded, &mut m);
        Ok(Some(m))
    }

    /// Makes the copies of the pod's pull secrets and adds them to `imagePullSecrets`.
    async fn copy_secrets(
        &self,
        pod: &Value,
        namespace: &str,
        dry_run: bool,
        api: &dyn SecretApi,
        m: &mut Mutation,
    ) -> Result<()> {
        let listed = pod["spec"]["imagePullSecrets"].as_array();
        let names: Vec<&str> = listed
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        for name in names.iter().filter(|n| !is_copy_name(n)) {
            let copy_name = copy_name(name);
            if names.contains(&copy_name.as_str()) || m.secrets.contains(&copy_name) {
                continue;
            }
            let Some(source) = api.get(namespace, name).await? else {
                continue;
            };
            let Some(mut copy) = p2p_copy(&source, &self.names, &self.registries()) else {
                continue;
            };
            copy.metadata.namespace = Some(namespace.to_string());
            if !dry_run && self.ensure(api, namespace, &copy).await? {
                m.secrets_written += 1;
            }
            m.secrets.push(copy_name);
        }
        // Copies come only from listed secrets, so the list exists: append to it.
        for name in &m.secrets {
            let entry = json!({ "name": name });
            m.patch
                .push(json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": entry}));
        }
        Ok(())
    }

    /// [`ensure_copy`], skipped for a copy made moments ago from the same credentials (a
    /// Deployment's pods arrive together). True when the API was written to.
    async fn ensure(&self, api: &dyn SecretApi, namespace: &str, copy: &Secret) -> Result<bool> {
        let key = (
            namespace.to_string(),
            copy.metadata.name.clone().unwrap_or_default(),
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_vec(&copy.data)
            .unwrap_or_default()
            .hash(&mut hasher);
        let hash = hasher.finish();
        let fresh = |recent: &HashMap<_, (Instant, u64)>| {
            recent
                .get(&key)
                .is_some_and(|(at, h)| *h == hash && at.elapsed() < RECENT)
        };
        if fresh(&self.recent.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(false);
        }
        let outcome = ensure_copy(api, namespace, copy).await?;
        if outcome == Ensured::Foreign {
            tracing::warn!(namespace, secret = %key.1, "a Secret of the copy's name exists and was not made by poolcast; using it as it is");
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() > 10_000 {
            recent.clear();
        }
        recent.insert(key, (Instant::now(), hash));
        Ok(matches!(outcome, Ensured::Created | Ensured::Updated))
    }

    /// The seeds' annotations; an earlier record (a reinvocation) is extended, not replaced.
    fn annotate(&self, pod: &Value, recorded: Option<&str>, m: &mut Mutation) {
        let mut config = recorded
            .and_then(|r| serde_json::from_str::<P2pConfig>(r).ok())
            .unwrap_or_default();
        config.mode = MODE_P2P.into();
        config.port = self.names.port();
        config.images.extend(m.images.iter().cloned());
        for s in &m.secrets {
            if !config.image_pull_secrets.contains(s) {
                config.image_pull_secrets.push(s.clone());
            }
        }
        let text = serde_json::to_string(&config).unwrap_or_default();
        if pod["metadata"]["annotations"].is_object() {
            for (key, value) in [(MODE_LABEL, MODE_P2P), (CONFIG_ANNOTATION, &text)] {
                m.patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer(key)), "value": value}));
            }
        } else {
            let value = json!({ MODE_LABEL: MODE_P2P, CONFIG_ANNOTATION: text });
            m.patch
                .push(json!({"op": "add", "path": "/metadata/annotations", "value": value}));
        }
    }
}

fn is_pod(req: &AdmissionRequest) -> bool {
    req.kind.kind == "Pod" && req.kind.group.is_empty()
}

#[cfg(test)]
#[path = "mutate_tests.rs"]
mod tests;
