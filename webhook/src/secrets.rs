//! Pull secrets for distributed names. kubelet picks a pod's credentials by the image's registry
//! host, so a rewritten image needs a Secret keyed by its distributed host: a copy of each pull
//! secret the pod names, `acr-credential-<name>-p2p`, identical but for the registry keys.
//!
//! ```text
//!   test-registry (kubernetes.io/dockerconfigjson)     acr-credential-test-registry-p2p
//!     auths:                                              auths:
//!       test-registry-vpc.cn-hangzhou.cr.aliyuncs.com  ->   test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001
//!       other.example.com                                   other.example.com            (not configured: kept)
//! ```
//!
//! The Kubernetes API sits behind [`SecretApi`] (get, create, replace), so the copy logic is the
//! same whether it talks to the API server ([`KubeSecrets`]) or to a test's memory.

use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use nodepool::DistributedNames;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Names the source Secret on every copy; only Secrets carrying it are ever replaced.
pub const COPY_OF_ANNOTATION: &str = "poolcast.io/p2p-copy-of";

const DOCKERCONFIGJSON: (&str, &str) = ("kubernetes.io/dockerconfigjson", ".dockerconfigjson");
const DOCKERCFG: (&str, &str) = ("kubernetes.io/dockercfg", ".dockercfg");

/// The copy's name, as the ACK add-on names it. A source name too long to fit stays unique by
/// a hash in place of its end.
pub fn copy_name(source: &str) -> String {
    let name = format!("acr-credential-{source}-p2p");
    if name.len() <= 253 {
        return name;
    }
    let hash = fnv1a(source.as_bytes());
    // A name from a review is not trusted to be ASCII: cut at a character boundary.
    let mut end = 200;
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    format!("acr-credential-{}-{hash:016x}-p2p", &source[..end])
}

/// Whether `name` is a copy's name (a copy is never copied again).
pub fn is_copy_name(name: &str) -> bool {
    name.starts_with("acr-credential-") && name.ends_with("-p2p")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The registry host an auth entry's key names: `https://index.docker.io/v1/` is `docker.io`,
/// `https://h:5000/path` is `h:5000`.
fn registry_of_key(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        "docker.io".into()
    } else {
        host
    }
}

/// The copy of `source` for distributed names, when it is a pull secret holding credentials for
/// at least one of `registries`; `None` otherwise.
pub fn p2p_copy(
    source: &Secret,
    names: &DistributedNames,
    registries: &BTreeSet<String>,
) -> Option<Secret> {
    let source_name = source.metadata.name.as_deref()?;
    let (kind, key) = [DOCKERCONFIGJSON, DOCKERCFG]
        .into_iter()
        .find(|(kind, _)| source.type_.as_deref() == Some(*kind))?;
    let raw = source.data.as_ref()?.get(key)?;
    let mut config: Value = serde_json::from_slice(&raw.0).ok()?;
    let auths = if key == DOCKERCONFIGJSON.1 {
        config.get_mut("auths")?.as_object_mut()?
    } else {
        config.as_object_mut()?
    };
    let mut rekeyed = serde_json::Map::new();
    let mut changed = false;
    for (k, v) in std::mem::take(auths) {
        let registry = registry_of_key(&k);
        match names.distributed(&registry) {
            Some(name) if registries.contains(&registry) => {
                changed = true;
                rekeyed.insert(name, v);
            }
            _ => {
                rekeyed.entry(k).or_insert(v);
            }
        }
    }
    if !changed {
        return None;
    }
    *auths = rekeyed;
    let data = serde_json::to_vec(&config).ok()?;
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(copy_name(source_name)),
            namespace: source.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "poolcast".to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                COPY_OF_ANNOTATION.to_string(),
                source_name.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(kind.to_string()),
        data: Some(BTreeMap::from([(key.to_string(), ByteString(data))])),
        ..Secret::default()
    })
}

/// The three Secret calls the webhook makes, in one namespace at a time.
#[async_trait::async_trait]
pub trait SecretApi: Send + Sync {
    /// `None` when there is no such Secret.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Secret>>;
    /// [`Error::AlreadyExists`] when the name is taken.
    async fn create(&self, namespace: &str, secret: &Secret) -> Result<()>;
    /// Replaces a Secret; `secret` carries the `resourceVersion` it replaces.
    async fn replace(&self, namespace: &str, secret: &Secret) -> Result<()>;
}

/// What [`ensure_copy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    /// An older copy held other credentials (the source was changed since).
    Updated,
    Unchanged,
    /// A Secret of that name that poolcast did not make: left alone, and used as it is.
    Foreign,
}

/// Creates the copy in `namespace`, or brings poolcast's existing copy up to date.
pub async fn ensure_copy(api: &dyn SecretApi, namespace: &str, copy: &Secret) -> Result<Ensured> {
    let name = copy.metadata.name.clone().unwrap_or_default();
    match api.create(namespace, copy).await {
        Ok(()) => return Ok(Ensured::Created),
        Err(Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    let Some(existing) = api.get(namespace, &name).await? else {
        // Deleted between the two calls: try once more.
        api.create(namespace, copy).await?;
        return Ok(Ensured::Created);
    };
    let ours = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COPY_OF_ANNOTATION))
        == copy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COPY_OF_ANNOTATION));
    if !ours {
        return Ok(Ensured::Foreign);
    }
    if existing.data == copy.data && existing.type_ == copy.type_ {
        return Ok(Ensured::Unchanged);
    }
    let mut update = copy.clone();
    update.metadata.resource_version = existing.metadata.resource_version;
    api.replace(namespace, &update).await?;
    Ok(Ensured::Updated)
}

/// [`SecretApi`] on the Kubernetes API server (in-cluster config, or `KUBECONFIG`).
pub struct KubeSecrets {
    client: kube::Client,
}

impl KubeSecrets {
    pub fn new(client: kube::Client) -> Self {
        KubeSecrets { client }
    }

    fn api(&self, namespace: &str) -> kube::Api<Secret> {
        kube::Api::namespaced(self.client.clone(), namespace)
    }
}

fn kube_error(action: &'static str, namespace: &str, name: &str, e: kube::Error) -> Error {
    Error::Kube {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl SecretApi for KubeSecrets {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        self.api(namespace)
            .get_opt(name)
            .await
            .map_err(|e| kube_error("get", namespace, name, e))
    }

    async fn create(&self, namespace: &str, secret: &Secret) -> Result<()> {
        let name = secret.metadata.name.as_deref().unwrap_or("");
        match self
            .api(namespace)
            .create(&kube::api::PostParams::default(), secret)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::AlreadyExists {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
            Err(e) => Err(kube_error("create", namespace, name, e)),
        }
    }

    async fn replace(&self, namespace: &str, secret: &Secret) -> Result<()> {
        let name = secret.metadata.name.as_deref().unwrap_or("");
        self.api(namespace)
            .replace(name, &kube::api::PostParams::default(), secret)
            .await
            .map(|_| ())
            .map_err(|e| kube_error("replace", namespace, name, e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use memory::Store;

    /// In-memory Secrets that record each call.
    pub(crate) mod memory {
        use super::*;
        use std::sync::Mutex;

        #[derive(Default)]
        pub struct Store {
            pub secrets: Mutex<BTreeMap<(String, String), Secret>>,
            pub calls: Mutex<Vec<String>>,
        }

        impl Store {
            pub fn put(&self, namespace: &str, secret: Secret) {
                let name = secret.metadata.name.clone().unwrap();
                self.secrets
                    .lock()
                    .unwrap()
                    .insert((namespace.into(), name), secret);
            }

            pub fn calls(&self) -> Vec<String> {
                self.calls.lock().unwrap().clone()
            }

            pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
                let key = (namespace.to_string(), name.to_string());
                self.secrets.lock().unwrap().get(&key).cloned()
            }
        }

        #[async_trait::async_trait]
        impl SecretApi for Store {
            async fn get(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
                self.calls
                    .lock()
                    .unwrap()
                    .push(format!("get {namespace}/{name}"));
                Ok(self.secret(namespace, name))
            }

            async fn create(&self, namespace: &str, secret: &Secret) -> Result<()> {
                let name = secret.metadata.name.clone().unwrap();
                self.calls
                    .lock()
                    .unwrap()
                    .push(format!("create {namespace}/{name}"));
                if self.secret(namespace, &name).is_some() {
                    return Err(Error::AlreadyExists {
                        namespace: namespace.into(),
                        name,
                    });
                }
                let mut stored = secret.clone();
                stored.metadata.resource_version = Some("1".into());
                self.put(namespace, stored);
                Ok(())
            }

            async fn replace(&self, namespace: &str, secret: &Secret) -> Result<()> {
                let name = secret.metadata.name.clone().unwrap();
                self.calls
                    .lock()
                    .unwrap()
                    .push(format!("replace {namespace}/{name}"));
                let current = self.secret(namespace, &name).unwrap();
                assert_eq!(
                    current.metadata.resource_version, secret.metadata.resource_version,
                    "replace names the version it replaces"
                );
                self.put(namespace, secret.clone());
                Ok(())
            }
        }
    }

    pub(crate) fn pull_secret(name: &str, auths: Value) -> Secret {
        let config = serde_json::json!({ "auths": auths, "credsStore": "x" });
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                ByteString(serde_json::to_vec(&config).unwrap()),
            )])),
            ..Secret::default()
        }
    }

    pub(crate) fn config_of(secret: &Secret) -> Value {
        let data = secret.data.as_ref().unwrap();
        serde_json::from_slice(&data[".dockerconfigjson"].0).unwrap()
    }

    fn setup() -> (DistributedNames, BTreeSet<String>) {
        let names = DistributedNames::new("distributed.local", 65001).unwrap();
        let registries = BTreeSet::from([
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com".to_string(),
            "docker.io".to_string(),
        ]);
        (names, registries)
    }

    #[test]
    fn copy_changes_only_the_configured_registry_keys() {
        let (names, registries) = setup();
        let auth = serde_json::json!({"username": "u", "password": "p", "auth": "dTpw"});
        let source = pull_secret(
            "test-registry",
            serde_json::json!({
                "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com": auth,
                "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="},
                "other.example.com": {"auth": "b3RoZXI="},
            }),
        );
        let copy = p2p_copy(&source, &names, &registries).unwrap();
        assert_eq!(
            copy.metadata.name.as_deref(),
            Some("acr-credential-test-registry-p2p")
        );
        assert_eq!(copy.type_, source.type_);
        assert_eq!(
            config_of(&copy),
            serde_json::json!({
                "auths": {
                    "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001": auth,
                    "docker.io.distributed.local:65001": {"auth": "aHViOmh1Yg=="},
                    "other.example.com": {"auth": "b3RoZXI="},
                },
                "credsStore": "x",
            })
        );
    }

    #[test]
    fn secrets_without_configured_registries_are_not_copied() {
        let (names, registries) = setup();
        let other = pull_secret("other", serde_json::json!({"quay.io": {"auth": "eA=="}}));
        assert!(p2p_copy(&other, &names, &registries).is_none());
        let mut opaque = pull_secret("opaque", serde_json::json!({"docker.io": {"auth": "eA=="}}));
        opaque.type_ = Some("Opaque".into());
        assert!(p2p_copy(&opaque, &names, &registries).is_none());
        let mut garbage = pull_secret("garbage", serde_json::json!({}));
        garbage.data = Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(b"{not json".to_vec()),
        )]));
        assert!(p2p_copy(&garbage, &names, &registries).is_none());
    }

    #[test]
    fn legacy_dockercfg_secrets_are_copied_too() {
        let (names, registries) = setup();
        let source = Secret {
            metadata: ObjectMeta {
                name: Some("old".into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockercfg".into()),
            data: Some(BTreeMap::from([(
                ".dockercfg".to_string(),
                ByteString(br#"{"https://index.docker.io/v1/":{"auth":"eA=="}}"#.to_vec()),
            )])),
            ..Secret::default()
        };
        let copy = p2p_copy(&source, &names, &registries).unwrap();
        let data: Value = serde_json::from_slice(&copy.data.unwrap()[".dockercfg"].0).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"docker.io.distributed.local:65001": {"auth": "eA=="}})
        );
    }

    #[test]
    fn long_names_stay_valid_and_distinct() {
        let a = copy_name(&"a".repeat(253));
        let b = copy_name(&format!("{}b", "a".repeat(252)));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
        assert!(is_copy_name(&a));
        assert!(!is_copy_name("test-registry"));
    }

    #[tokio::test]
    async fn an_existing_copy_is_updated_only_when_ours_and_stale() {
        let (names, registries) = setup();
        let store = Store::default();
        let v1 = pull_secret("s", serde_json::json!({"docker.io": {"auth": "djE="}}));
        let copy = p2p_copy(&v1, &names, &registries).unwrap();
        assert_eq!(
            ensure_copy(&store, "shop", &copy).await.unwrap(),
            Ensured::Created
        );
        assert_eq!(
            ensure_copy(&store, "shop", &copy).await.unwrap(),
            Ensured::Unchanged
        );
        let v2 = pull_secret("s", serde_json::json!({"docker.io": {"auth": "djI="}}));
        let copy2 = p2p_copy(&v2, &names, &registries).unwrap();
        assert_eq!(
            ensure_copy(&store, "shop", &copy2).await.unwrap(),
            Ensured::Updated
        );
        assert_eq!(
            config_of(&store.secret("shop", "acr-credential-s-p2p").unwrap()),
            config_of(&copy2)
        );
        // Someone else's Secret of that name is never overwritten.
        let mut foreign = copy.clone();
        foreign.metadata.annotations = None;
        foreign.metadata.name = Some("acr-credential-t-p2p".into());
        store.put("shop", foreign.clone());
        let mut mine = copy2.clone();
        mine.metadata.name = Some("acr-credential-t-p2p".into());
        assert_eq!(
            ensure_copy(&store, "shop", &mine).await.unwrap(),
            Ensured::Foreign
        );
        assert_eq!(
            store.secret("shop", "acr-credential-t-p2p").unwrap(),
            foreign
        );
    }

    proptest::proptest! {
        #[test]
        fn any_source_name_gives_a_copy_name_without_panic(name in "\\PC{0,400}") {
            let copy = copy_name(&name);
            proptest::prop_assert!(is_copy_name(&copy));
            proptest::prop_assert!(copy.len() <= 253);
        }
    }

    #[test]
    fn a_long_name_of_multibyte_characters_is_cut_at_a_character() {
        // 'é' is two bytes: byte 200 falls inside one for an odd prefix.
        let name = format!("x{}", "é".repeat(150));
        let copy = copy_name(&name);
        assert!(
            copy.starts_with("acr-credential-x") && copy.ends_with("-p2p"),
            "{copy}"
        );
    }
}
