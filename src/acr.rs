//! ACR EE instances named by id, as the binary uses them: `poolcast acr endpoints` (the same
//! resolution the components run, so an operator can check permissions before installing),
//! the flags `poolcast hosts` takes for instances, and the background task of the mirror and
//! the webhook that resolves their instances at start and then every `refreshInterval`.

use alicloud::{Resolution, Resolver};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nodepool::defaults::flag_help as help;
use nodepool::{AcrConfig, HumanDuration, MirrorConfig, UpstreamSpec};

/// How to reach Alibaba Cloud; credentials come from the environment (`ALIBABA_CLOUD_*`).
#[derive(Args, Clone, Default, Debug)]
pub struct ConnArgs {
    /// Region of the instance [default: the ECS metadata server's region-id, then the node's
    /// topology.kubernetes.io/region label in POOLCAST_NODE_REGION].
    #[arg(long, env = "POOLCAST_ACR_REGION")]
    pub region: Option<String>,
    /// The VPC whose endpoint to use [default: the metadata server's vpc-id; none: the
    /// instance's internet domains].
    #[arg(long, env = "POOLCAST_ACR_VPC_ID")]
    pub vpc_id: Option<String>,
    /// AssumeRole into this role with the chain's credentials first (RRSA's cross-account role).
    #[arg(long, env = "POOLCAST_ACR_ASSUME_ROLE_ARN")]
    pub assume_role_arn: Option<String>,
    #[arg(long, env = "POOLCAST_ACR_EXPIRE_DURATION", help = help::<MirrorConfig>(
        "DurationSeconds of that AssumeRole session", "acr.expireDuration"))]
    pub expire_duration: Option<u32>,
    /// The RAM role the ECS metadata server is asked for (controller.ramRole, ASK) [default:
    /// the role attached to the instance].
    #[arg(long, env = "POOLCAST_ACR_RAM_ROLE")]
    pub ram_role: Option<String>,
    /// Base URL of the ACR OpenAPI [default: https://cr.REGION.aliyuncs.com].
    #[arg(long, env = "POOLCAST_ACR_OPENAPI_ENDPOINT")]
    pub openapi_endpoint: Option<String>,
    /// Base URL of STS [default: https://sts.aliyuncs.com].
    #[arg(long, env = "POOLCAST_ACR_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,
    /// Base URL of the ECS metadata server [default: http://100.100.100.200].
    #[arg(long, env = "POOLCAST_ACR_METADATA_ENDPOINT")]
    pub metadata_endpoint: Option<String>,
}

impl ConnArgs {
    /// The `acr` config these flags say, for `instances`.
    pub fn config(&self, instances: Vec<String>) -> Result<AcrConfig> {
        let mut c = AcrConfig {
            instances,
            ..AcrConfig::default()
        };
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                *target = v.trim().to_string();
            }
        };
        set(&mut c.region, &self.region);
        set(&mut c.vpc_id, &self.vpc_id);
        set(&mut c.assume_role_arn, &self.assume_role_arn);
        set(&mut c.ram_role, &self.ram_role);
        set(&mut c.openapi_endpoint, &self.openapi_endpoint);
        set(&mut c.sts_endpoint, &self.sts_endpoint);
        set(&mut c.metadata_endpoint, &self.metadata_endpoint);
        if let Some(d) = self.expire_duration {
            c.expire_duration = d;
        }
        c.validate()?;
        Ok(c)
    }
}

/// `poolcast hosts`' ACR instances: their domains get files like `--registry` entries.
#[derive(Args, Clone, Default, Debug)]
pub struct HostsAcrArgs {
    /// ACR EE instance id (cri-xxx) whose registry domains get files too, each with the
    /// instance's reachable domain as `server`; repeat for several.
    #[arg(
        long = "acr-instance",
        env = "POOLCAST_ACR_INSTANCES",
        value_delimiter = ','
    )]
    pub instances: Vec<String>,
    /// Where the last good answer is kept: used when the OpenAPI cannot be reached, and by
    /// `remove`, which makes no API call.
    #[arg(long = "acr-cache-file", env = "POOLCAST_ACR_CACHE_FILE")]
    pub cache_file: Option<String>,
    #[arg(long = "acr-refresh-interval", env = "POOLCAST_ACR_REFRESH_INTERVAL",
        help = help::<MirrorConfig>("How often `--watch` resolves the instances again",
        "acr.refreshInterval"))]
    pub refresh_interval: Option<HumanDuration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

impl HostsAcrArgs {
    /// A resolver for the instances, when any are named.
    pub fn resolver(&self) -> Result<Option<Resolver>> {
        if self.instances.is_empty() {
            return Ok(None);
        }
        let mut config = self.conn.config(self.instances.clone())?;
        if let Some(f) = &self.cache_file {
            config.cache_file = f.clone();
        }
        if let Some(d) = self.refresh_interval {
            config.refresh_interval = d;
        }
        config.validate()?;
        Ok(Some(Resolver::new(&config)?))
    }
}

#[derive(Subcommand)]
pub enum AcrCommand {
    /// Print an ACR EE instance's registry domains, one per line (the first is the one the
    /// mirrors fetch from), resolved as the components resolve them: checks the credentials
    /// and the RAM permissions (cr:GetInstanceVpcEndpoint, cr:ListInstanceEndpoint).
    Endpoints(EndpointsArgs),
}

#[derive(Args)]
pub struct EndpointsArgs {
    /// The instance id (cri-xxx).
    #[arg(long)]
    instance_id: String,
    #[command(flatten)]
    conn: ConnArgs,
}

pub async fn run(command: AcrCommand) -> Result<()> {
    match command {
        AcrCommand::Endpoints(args) => {
            let config = args
                .conn
                .config(vec![args.instance_id.trim().to_string()])?;
            let resolver = Resolver::new(&config)?;
            let found = resolver.resolve_instance(&config.instances[0]).await?;
            for d in &found.domains {
                println!("{d}");
            }
            let via = if found.vpc_id.is_empty() {
                "the internet endpoint".to_string()
            } else {
                format!("the endpoint linked to {}", found.vpc_id)
            };
            eprintln!(
                "poolcast acr: {} in {}: {via}; other domains: {}",
                found.instance_id,
                found.region,
                if found.aliases.is_empty() {
                    "none".to_string()
                } else {
                    found.aliases.join(", ")
                }
            );
            Ok(())
        }
    }
}

/// `NS=https://DOMAIN` per resolved domain, as `--registry` / `upstreams` entries.
pub fn specs(r: &Resolution) -> Vec<UpstreamSpec> {
    r.upstreams()
        .into_iter()
        .filter_map(|(ns, url)| format!("{ns}={url}").parse().ok())
        .collect()
}

/// The `--registry` entries of the instances for `hosts write` at start: the answer, or the
/// last good one; none when neither is known (the other registries still get their files, and
/// `--watch` retries).
pub async fn resolve_for_hosts(resolver: &Resolver) -> Vec<UpstreamSpec> {
    match resolver.resolve_or_cached().await {
        Ok((r, error)) => {
            if let Some(e) = error {
                eprintln!(
                    "poolcast hosts: ACR instances not resolved ({e}); using the last good answer"
                );
            }
            specs(&r)
        }
        Err(e) => {
            eprintln!(
                "poolcast hosts: ACR instances not resolved, their files are not written yet: {e}"
            );
            Vec::new()
        }
    }
}

/// Starts resolving `config`'s instances in the background (when it names any), handing each
/// new answer to `apply`. The task lives as long as the process.
pub fn spawn_watch(
    config: &AcrConfig,
    what: &'static str,
    mut apply: impl FnMut(&Resolution) + Send + 'static,
) -> Result<()> {
    if !config.is_enabled() {
        return Ok(());
    }
    let resolver = Resolver::new(config).with_context(|| format!("{what}: acr"))?;
    tracing::info!(instances = ?config.instances, credentials = %resolver.credentials(), "resolving ACR instances for the {what}");
    tokio::spawn(async move { resolver.watch(move |r| apply(r)).await });
    Ok(())
}

/// The mirror's ACR upstreams follow the resolution.
pub fn watch_mirror(config: &AcrConfig, upstreams: mirror::DynamicUpstreams) -> Result<()> {
    spawn_watch(config, "mirror", move |r| {
        let list = specs(r)
            .iter()
            .map(mirror::upstream::Upstream::from_spec)
            .collect();
        *upstreams.write() = list;
    })
}

/// The webhook's ACR registries follow the resolution.
pub fn watch_webhook(config: &AcrConfig, registries: webhook::DynamicRegistries) -> Result<()> {
    spawn_watch(config, "webhook", move |r| {
        let set = r.registries().into_iter().collect();
        *registries.write().unwrap_or_else(|e| e.into_inner()) = set;
    })
}
