//! poolcast's admission webhook: pods labelled (or in a namespace labelled)
//! `k8s.aliyun.com/image-accelerate-mode=p2p` get their images of the configured registries
//! rewritten to the registry's distributed name, which containerd resolves to the node-local
//! agent, with copies of their pull secrets for that name, as the ACK P2P add-on does. It never
//! blocks a pod: what it cannot change it leaves as it is.

mod error;
pub mod image;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod secrets;
mod server;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use mutate::{DynamicRegistries, Mutator, Selection};
pub use secrets::{KubeSecrets, SecretApi};
pub use server::WebhookServer;

/// A client of the Kubernetes API from the pod's service account (or `KUBECONFIG`), with short
/// timeouts: the API server waits for the webhook's answer.
pub async fn kube_secrets() -> Result<KubeSecrets> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        Error::KubeClient(format!(
            "no config (in-cluster service account or KUBECONFIG): {e}"
        ))
    })?;
    config.connect_timeout = Some(std::time::Duration::from_secs(2));
    config.read_timeout = Some(mutate::API_BUDGET);
    config.write_timeout = Some(mutate::API_BUDGET);
    let client = kube::Client::try_from(config).map_err(|e| Error::KubeClient(e.to_string()))?;
    Ok(KubeSecrets::new(client))
}
