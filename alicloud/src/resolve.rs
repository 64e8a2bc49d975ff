//! Instance ids to registry domains, at run time: at start, then every `refreshInterval`.
//! The last good answer is kept on disk (`cacheFile`), so a component that starts while the
//! OpenAPI cannot be reached still knows its registries, and keeps it while later refreshes
//! fail.
//!
//! ```text
//!   region: acr.region | metadata region-id | node label topology.kubernetes.io/region
//!   vpc:    acr.vpcId  | metadata vpc-id    | none (internet domains)
//!   credentials (chain) --> GetInstanceVpcEndpoint + ListInstanceEndpoint per instance
//!                       --> InstanceEndpoints --> on_change(...) and cacheFile
//! ```

use crate::cr::{self, Cr, InstanceEndpoints};
use crate::credentials::{Chain, ChainSettings};
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::sts::{self, Sts};
use nodepool::AcrConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// Env variable the chart fills from the node's `topology.kubernetes.io/region` label (the
/// pod's copy of it, which Kubernetes' PodTopologyLabels admission adds).
pub const NODE_REGION_ENV: &str = "POOLCAST_NODE_REGION";
/// Longest wait before retrying after a failed refresh.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Every configured instance, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub instances: Vec<InstanceEndpoints>,
}

impl Resolution {
    /// `(ns, url)` per domain: each domain (and alias) of an instance is a registry name, all
    /// fetched from the instance's first reachable domain over https.
    pub fn upstreams(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in &self.instances {
            let Some(first) = i.domains.first() else {
                continue;
            };
            for d in i.domains.iter().chain(&i.aliases) {
                out.push((d.clone(), format!("https://{first}")));
            }
        }
        out
    }

    /// Every domain of every instance: the registry names images may use.
    pub fn registries(&self) -> Vec<String> {
        self.upstreams().into_iter().map(|(ns, _)| ns).collect()
    }
}

/// The cache file: the answer, and what it answered (a file for other instances is not used).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheFile {
    instances: Vec<String>,
    resolved_at: String,
    resolution: Resolution,
}

pub struct Resolver {
    cfg: AcrConfig,
    chain: Chain,
    metadata: Metadata,
    node_region: String,
    metadata_disabled: bool,
    /// Region and VPC once known: they do not change under a running process.
    place: Mutex<Option<(String, Option<String>)>>,
}

impl Resolver {
    /// From the config and the process environment.
    pub fn new(cfg: &AcrConfig) -> Result<Self> {
        Self::with_env(cfg, &|k| std::env::var(k).ok())
    }

    pub fn with_env(cfg: &AcrConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let flag = |k: &str| env(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let metadata = Metadata::new(
            &cfg.metadata_endpoint,
            flag("ALIBABA_CLOUD_IMDSV1_DISABLED"),
        )?;
        let sts_endpoint = if cfg.sts_endpoint.is_empty() {
            sts::endpoint_from_env(env)
        } else {
            cfg.sts_endpoint.clone()
        };
        let chain = Chain::from_env(
            env,
            &ChainSettings {
                ram_role: &cfg.ram_role,
                assume_role: Some((&cfg.assume_role_arn, cfg.expire_duration)),
            },
            Sts::new(&sts_endpoint)?,
            metadata.clone(),
        );
        Ok(Resolver {
            cfg: cfg.clone(),
            chain,
            metadata,
            node_region: env(NODE_REGION_ENV).unwrap_or_default().trim().to_string(),
            metadata_disabled: flag("ALIBABA_CLOUD_ECS_METADATA_DISABLED"),
            place: Mutex::new(None),
        })
    }

    pub fn instances(&self) -> &[String] {
        &self.cfg.instances
    }

    pub fn refresh_interval(&self) -> Duration {
        self.cfg.refresh_interval.0
    }

    /// Where credentials come from, for logs (no secret).
    pub fn credentials(&self) -> String {
        self.chain.describe()
    }

    /// The region and VPC to resolve for, found once.
    async fn place(&self) -> Result<(String, Option<String>)> {
        let mut place = self.place.lock().await;
        if let Some(p) = place.as_ref() {
            return Ok(p.clone());
        }
        let mut metadata_error = None;
        let region = if !self.cfg.region.is_empty() {
            self.cfg.region.clone()
        } else {
            let from_metadata = if self.metadata_disabled {
                None
            } else {
                match self.metadata.region().await {
                    Ok(r) if nodepool::acr_config::is_region(&r) => Some(r),
                    Ok(r) => {
                        metadata_error = Some(format!("metadata region-id `{r}` is not a region"));
                        None
                    }
                    Err(e) => {
                        metadata_error = Some(e.to_string());
                        None
                    }
                }
            };
            match from_metadata {
                Some(r) => r,
                None if nodepool::acr_config::is_region(&self.node_region) => {
                    self.node_region.clone()
                }
                None => {
                    return Err(Error::Setting(format!(
                        "the region of the ACR instances is unknown: set region (the ECS metadata server gave none: {}; the node has no topology.kubernetes.io/region label in {NODE_REGION_ENV})",
                        metadata_error.as_deref().unwrap_or("disabled")
                    )))
                }
            }
        };
        let vpc = if !self.cfg.vpc_id.is_empty() {
            Some(self.cfg.vpc_id.clone())
        } else if self.metadata_disabled || metadata_error.is_some() {
            None
        } else {
            match self.metadata.vpc_id().await {
                Ok(v) if v.starts_with("vpc-") => Some(v),
                Ok(_) | Err(_) => None,
            }
        };
        tracing::info!(%region, vpc = vpc.as_deref().unwrap_or("none (internet domains)"), "ACR instances are resolved for");
        *place = Some((region.clone(), vpc.clone()));
        Ok((region, vpc))
    }

    /// The OpenAPI client for `region`.
    fn cr(&self, region: &str) -> Result<Cr> {
        if self.cfg.openapi_endpoint.is_empty() {
            Cr::new(&cr::default_endpoint(region))
        } else {
            Cr::new(&self.cfg.openapi_endpoint)
        }
    }

    /// One instance's domains.
    pub async fn resolve_instance(&self, instance_id: &str) -> Result<InstanceEndpoints> {
        let (region, vpc) = self.place().await?;
        let creds = self.chain.get().await?;
        let (vpc_endpoint, endpoints) = self
            .cr(&region)?
            .endpoints(&creds, instance_id, &region, &self.chain.describe())
            .await?;
        cr::choose(
            instance_id,
            &region,
            vpc.as_deref(),
            &vpc_endpoint,
            &endpoints,
        )
    }

    /// Every instance; the first failure fails it all (a partial answer would drop registries).
    pub async fn resolve(&self) -> Result<Resolution> {
        let mut instances = Vec::new();
        for id in &self.cfg.instances {
            instances.push(self.resolve_instance(id).await?);
        }
        Ok(Resolution { instances })
    }

    /// The cached answer for these instances, if a file holds one.
    pub fn load_cache(&self) -> Option<Resolution> {
        if self.cfg.cache_file.is_empty() {
            return None;
        }
        let text = std::fs::read(&self.cfg.cache_file).ok()?;
        match serde_json::from_slice::<CacheFile>(&text) {
            Ok(c) if c.instances == self.cfg.instances => {
                tracing::info!(file = %self.cfg.cache_file, resolved_at = %c.resolved_at, "using the last good ACR answer");
                Some(c.resolution)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %self.cfg.cache_file, error = %e, "ignoring an unreadable ACR cache file");
                None
            }
        }
    }

    fn save_cache(&self, r: &Resolution) {
        if self.cfg.cache_file.is_empty() {
            return;
        }
        let file = CacheFile {
            instances: self.cfg.instances.clone(),
            resolved_at: crate::sign::iso8601(SystemTime::now()),
            resolution: r.clone(),
        };
        if let Err(e) = write_atomic(Path::new(&self.cfg.cache_file), &file) {
            tracing::warn!(file = %self.cfg.cache_file, error = %e, "could not keep the ACR answer on disk");
        }
    }

    /// Resolves, keeping a good answer on disk; on failure the cached one, if any, with the
    /// error. `Err` only when there is neither.
    pub async fn resolve_or_cached(&self) -> Result<(Resolution, Option<Error>)> {
        match self.resolve().await {
            Ok(r) => {
                self.save_cache(&r);
                Ok((r, None))
            }
            Err(e) => match self.load_cache() {
                Some(r) => Ok((r, Some(e))),
                None => Err(e),
            },
        }
    }

    /// Resolves now and then every `refreshInterval` (failures retried sooner), calling
    /// `on_change` with each answer that differs from the last one given, starting with the
    /// cached one when the first try fails. Runs until dropped.
    pub async fn watch(&self, mut on_change: impl FnMut(&Resolution) + Send) {
        let mut last: Option<Resolution> = None;
        let every = self.refresh_interval();
        loop {
            let wait = match self.resolve_or_cached().await {
                Ok((r, error)) => {
                    if let Some(e) = &error {
                        tracing::warn!(error = %e, "ACR instances not resolved; keeping the last good answer");
                    }
                    if last.as_ref() != Some(&r) {
                        for i in &r.instances {
                            tracing::info!(instance = %i.instance_id, region = %i.region, vpc = %i.vpc_id, domains = ?i.domains, aliases = ?i.aliases, "ACR instance resolved");
                        }
                        on_change(&r);
                        last = Some(r);
                    }
                    if error.is_some() {
                        every.min(RETRY_AFTER_FAILURE)
                    } else {
                        every
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ACR instances not resolved and no earlier answer is known; retrying");
                    every.min(RETRY_AFTER_FAILURE)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Writes `value` as JSON next to `path`, then renames it over: a reader sees the old file or
/// the new one, never half of one.
fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(id: &str, domains: &[&str], aliases: &[&str]) -> InstanceEndpoints {
        InstanceEndpoints {
            instance_id: id.into(),
            region: "cn-hangzhou".into(),
            vpc_id: String::new(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn every_domain_is_fetched_through_the_first_reachable_one() {
        let r = Resolution {
            instances: vec![endpoints(
                "cri-a",
                &["a.example", "a2.example"],
                &["a-vpc.example"],
            )],
        };
        assert_eq!(
            r.upstreams(),
            [
                ("a.example".to_string(), "https://a.example".to_string()),
                ("a2.example".to_string(), "https://a.example".to_string()),
                ("a-vpc.example".to_string(), "https://a.example".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn a_cached_answer_serves_when_the_api_is_down_and_only_for_its_instances() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = dir.path().join("sub/acr.json");
        let cfg = AcrConfig {
            instances: vec!["cri-a".into()],
            region: "cn-hangzhou".into(),
            openapi_endpoint: "http://127.0.0.1:9".into(),
            cache_file: cache.to_string_lossy().into_owned(),
            ..AcrConfig::default()
        };
        let env = |k: &str| match k {
            "ALIBABA_CLOUD_ACCESS_KEY_ID" => Some("id".to_string()),
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET" => Some("secret".to_string()),
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED" => Some("true".to_string()),
            _ => None,
        };
        let resolver = Resolver::with_env(&cfg, &env).expect("resolver");
        let err = resolver.resolve_or_cached().await.expect_err("nothing yet");
        assert!(err.to_string().contains("GetInstanceVpcEndpoint"), "{err}");
        let good = Resolution {
            instances: vec![endpoints("cri-a", &["a.example"], &[])],
        };
        resolver.save_cache(&good);
        let (r, e) = resolver.resolve_or_cached().await.expect("cached");
        assert_eq!(r, good);
        assert!(e.is_some());
        let other = Resolver::with_env(
            &AcrConfig {
                instances: vec!["cri-b".into()],
                ..cfg.clone()
            },
            &env,
        )
        .expect("resolver");
        assert!(
            other.load_cache().is_none(),
            "a file for other instances is not used"
        );
    }

    #[tokio::test]
    async fn the_region_falls_back_to_the_node_label_and_is_asked_for_when_unknown() {
        let cfg = AcrConfig {
            instances: vec!["cri-a".into()],
            openapi_endpoint: "http://127.0.0.1:9".into(),
            ..AcrConfig::default()
        };
        let env = |region: Option<&'static str>| {
            move |k: &str| match k {
                "ALIBABA_CLOUD_ACCESS_KEY_ID" => Some("id".to_string()),
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET" => Some("secret".to_string()),
                "ALIBABA_CLOUD_ECS_METADATA_DISABLED" => Some("true".to_string()),
                NODE_REGION_ENV => region.map(str::to_string),
                _ => None,
            }
        };
        let labelled = Resolver::with_env(&cfg, &env(Some("cn-shenzhen"))).expect("resolver");
        let err = labelled
            .resolve()
            .await
            .expect_err("no API here")
            .to_string();
        assert!(err.contains("cri-a in cn-shenzhen"), "{err}");
        let unknown = Resolver::with_env(&cfg, &env(None)).expect("resolver");
        let err = unknown.resolve().await.expect_err("no region").to_string();
        assert!(err.contains("set region"), "{err}");
    }
}
