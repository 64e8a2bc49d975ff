//! Command-line flags of each component. Flags override the config file, whose keys are the
//! Helm values keys; every flag also reads a `POOLCAST_*` environment variable.

use anyhow::Result;
use clap::Args;
use nodepool::defaults::flag_help as help;
use nodepool::{
    AgentConfig, ByteSize, CacheMode, DownloadPattern, HumanDuration, MirrorConfig, Rate,
    SchedulerConfig, UpstreamSpec, WebhookConfig,
};
use std::path::PathBuf;

macro_rules! set {
    ($target:expr, $value:expr) => {
        if let Some(v) = $value {
            $target = v;
        }
    };
}

#[derive(Args)]
pub struct MirrorArgs {
    /// YAML config (keys: upstreams, cacheTTL, cacheHostPath, capacity, ratelimit, ...).
    #[arg(long, env = "POOLCAST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_LISTEN", help = help::<MirrorConfig>("Address to listen on", "listen"))]
    listen: Option<String>,
    /// Upstream registry, `URL` or `NS=URL`; repeat for several. The first serves requests
    /// without `?ns=` [config: upstreams].
    #[arg(long = "upstream", env = "POOLCAST_UPSTREAMS", value_delimiter = ',')]
    upstreams: Vec<UpstreamSpec>,
    #[arg(long, env = "POOLCAST_CACHE_DIR", help = help::<MirrorConfig>(
        "Cache folder; empty: a folder that dies with the process", "cacheHostPath"))]
    cache_dir: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_CACHE_TTL", help = help::<MirrorConfig>(
        "Remove entries unused for this long", "cacheTTL"))]
    cache_ttl: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_CAPACITY", help = help::<MirrorConfig>(
        "Evict least recently used past this size, e.g. 40GiB; 0: bounded by cacheTTL only",
        "capacity"))]
    capacity: Option<ByteSize>,
    #[arg(long, env = "POOLCAST_RATELIMIT", help = help::<MirrorConfig>(
        "Total transfer rate, e.g. 512M = 512 MB/s; 0: unlimited", "ratelimit"))]
    ratelimit: Option<Rate>,
    #[arg(long, env = "POOLCAST_OSS_INTERNET_ACCELERATE", help = help::<MirrorConfig>(
        "Fetch OSS-redirected blobs via OSS transfer acceleration", "ossInternetAccelerate"))]
    oss_internet_accelerate: bool,
    #[arg(long, env = "POOLCAST_ALLOW_ANY_REGISTRY", help = help::<MirrorConfig>(
        "Serve `?ns=HOST` for any registry host", "allowAnyRegistry"))]
    allow_any_registry: bool,
    #[arg(long, env = "POOLCAST_AUTH_CACHE_TTL", help = help::<MirrorConfig>(
        "Trust upstream's \"may read\" answer this long", "authCacheTTL"))]
    auth_cache_ttl: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_MANIFEST_TTL", help = help::<MirrorConfig>(
        "Revalidate manifests fetched by tag after this long", "manifestTTL"))]
    manifest_ttl: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_UPSTREAM_CA_FILE", help = help::<MirrorConfig>(
        "PEM file of CA certificates trusted for upstream HTTPS besides the public web PKI; \
         empty: the public web PKI only", "upstreamCAFile"))]
    upstream_ca_file: Option<PathBuf>,
}

impl MirrorArgs {
    pub fn into_config(self) -> Result<MirrorConfig> {
        let mut c = match &self.config {
            Some(path) => MirrorConfig::load(path)?,
            None => MirrorConfig::default(),
        };
        set!(c.listen, self.listen);
        if !self.upstreams.is_empty() {
            c.upstreams = self.upstreams;
        }
        set!(
            c.cache_host_path,
            self.cache_dir.map(|d| d.to_string_lossy().into_owned())
        );
        set!(c.cache_ttl, self.cache_ttl);
        set!(c.capacity, self.capacity);
        set!(c.ratelimit, self.ratelimit);
        set!(c.auth_cache_ttl, self.auth_cache_ttl);
        set!(c.manifest_ttl, self.manifest_ttl);
        set!(
            c.upstream_ca_file,
            self.upstream_ca_file
                .map(|f| f.to_string_lossy().into_owned())
        );
        c.oss_internet_accelerate |= self.oss_internet_accelerate;
        c.allow_any_registry |= self.allow_any_registry;
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// YAML config (keys: downloadPattern, ratelimit, cache.mode, blocksize, transferTimeout, ...).
    #[arg(long, env = "POOLCAST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_LISTEN", help = help::<AgentConfig>(
        "Registry API for containerd (the seeds' p2p.port)", "listen"))]
    listen: Option<String>,
    #[arg(long, env = "POOLCAST_PEER_LISTEN", help = help::<AgentConfig>(
        "Where peers fetch pieces", "peerListen"))]
    peer_listen: Option<String>,
    #[arg(long, env = "POOLCAST_ADVERTISE", help = help::<AgentConfig>(
        "Address peers are told to use; empty: the bound peer address", "advertise"))]
    advertise: Option<String>,
    #[arg(long, env = "POOLCAST_MIRROR", help = help::<AgentConfig>(
        "The pool mirror's URL", "mirror"))]
    mirror: Option<String>,
    #[arg(long, env = "POOLCAST_SCHEDULER", help = help::<AgentConfig>(
        "The scheduler's URL, for downloadPattern p2p", "scheduler"))]
    scheduler: Option<String>,
    // The one place NODE_NAME is read (the chart sets it from the pod's node).
    #[arg(long, env = "NODE_NAME", help = help::<AgentConfig>(
        "This node's name; empty: the host name", "node"))]
    node: Option<String>,
    #[arg(long, env = "POOLCAST_POOL", help = help::<AgentConfig>("The node pool id", "pool"))]
    pool: Option<String>,
    #[arg(long, env = "POOLCAST_DOWNLOAD_PATTERN", value_parser = parse_pattern,
        help = help::<AgentConfig>("p2p or source", "downloadPattern"))]
    download_pattern: Option<DownloadPattern>,
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true, help = help::<AgentConfig>(
        "Shared secret of peer and scheduler traffic; empty: not checked", "secret"))]
    secret: Option<String>,
    #[arg(long, env = "POOLCAST_POOL_KEY", hide_env_values = true, help = help::<AgentConfig>(
        "This pool's key, instead of the secret (what the chart gives each pool)", "poolKey"))]
    pool_key: Option<String>,
    #[arg(long, env = "POOLCAST_PAIR_KEYS", hide_env_values = true, value_delimiter = ',',
        value_parser = parse_pair_key, help = help::<AgentConfig>(
        "POOL=KEY for each pool this pool is connected to, with poolKey", "pairKeys"))]
    pair_keys: Vec<(String, String)>,
    #[arg(long, env = "POOLCAST_CACHE_DIR", help = help::<AgentConfig>(
        "Cache folder for disk mode; empty: a folder that dies with the process",
        "cacheHostPath"))]
    cache_dir: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_CACHE_MODE", value_parser = parse_mode,
        help = help::<AgentConfig>("disk or memory", "cache.mode"))]
    cache_mode: Option<CacheMode>,
    #[arg(long, env = "POOLCAST_CAPACITY", help = help::<AgentConfig>(
        "Cache size", "cache.capacity"))]
    capacity: Option<ByteSize>,
    #[arg(long, env = "POOLCAST_CACHE_TTL", help = help::<AgentConfig>(
        "Remove blobs unused this long", "cacheTTL"))]
    cache_ttl: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_RATELIMIT", help = help::<AgentConfig>(
        "Total rate, upload plus download, e.g. 5M; 0: unlimited", "ratelimit"))]
    ratelimit: Option<Rate>,
    #[arg(long, env = "POOLCAST_DOWNLOAD_RATE", help = help::<AgentConfig>(
        "Download cap; 0: only ratelimit", "downloadRate"))]
    download_rate: Option<Rate>,
    #[arg(long, env = "POOLCAST_UPLOAD_RATE", help = help::<AgentConfig>(
        "Upload cap; 0: only ratelimit", "uploadRate"))]
    upload_rate: Option<Rate>,
    #[arg(long, env = "POOLCAST_BLOCKSIZE", help = help::<AgentConfig>(
        "Piece size", "blocksize"))]
    blocksize: Option<nodepool::BlockSize>,
    #[arg(long, env = "POOLCAST_CONNECT_TIMEOUT", help = help::<AgentConfig>(
        "Time allowed to connect to the mirror, the scheduler and peers", "connectTimeout"))]
    connect_timeout: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_TRANSFER_TIMEOUT", help = help::<AgentConfig>(
        "A piece transfer without data this long goes elsewhere", "transferTimeout"))]
    transfer_timeout: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_DOWNLOAD_TIMEOUT", help = help::<AgentConfig>(
        "The longest one blob download may take", "downloadTimeout"))]
    download_timeout: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_PROXY_FS_PARALLELS", help = help::<AgentConfig>(
        "Pieces received from peers at once", "proxyFsParallels"))]
    proxy_fs_parallels: Option<u32>,
}

fn parse_pattern(s: &str) -> Result<DownloadPattern, String> {
    match s {
        "p2p" => Ok(DownloadPattern::P2p),
        "source" => Ok(DownloadPattern::Source),
        _ => Err(format!("`{s}`: expected p2p or source")),
    }
}

fn parse_pair_key(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((pool, key)) if !pool.is_empty() && !key.is_empty() => {
            Ok((pool.to_string(), key.to_string()))
        }
        _ => Err("expected POOL=KEY".to_string()),
    }
}

fn parse_mode(s: &str) -> Result<CacheMode, String> {
    match s {
        "disk" => Ok(CacheMode::Disk),
        "memory" => Ok(CacheMode::Memory),
        _ => Err(format!("`{s}`: expected disk or memory")),
    }
}

impl AgentArgs {
    pub fn into_config(self) -> Result<AgentConfig> {
        let mut c = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::default(),
        };
        set!(c.listen, self.listen);
        set!(c.peer_listen, self.peer_listen);
        set!(c.advertise, self.advertise);
        set!(c.mirror, self.mirror);
        set!(c.scheduler, self.scheduler);
        set!(c.node, self.node);
        set!(c.pool, self.pool);
        set!(c.download_pattern, self.download_pattern);
        set!(c.secret, self.secret);
        set!(c.pool_key, self.pool_key);
        if !self.pair_keys.is_empty() {
            c.pair_keys = self.pair_keys.into_iter().collect();
        }
        set!(
            c.cache_host_path,
            self.cache_dir.map(|d| d.to_string_lossy().into_owned())
        );
        set!(c.cache.mode, self.cache_mode);
        set!(c.cache.capacity, self.capacity);
        set!(c.cache_ttl, self.cache_ttl);
        set!(c.ratelimit, self.ratelimit);
        set!(c.download_rate, self.download_rate);
        set!(c.upload_rate, self.upload_rate);
        set!(c.blocksize, self.blocksize);
        set!(c.connect_timeout, self.connect_timeout);
        set!(c.transfer_timeout, self.transfer_timeout);
        set!(c.download_timeout, self.download_timeout);
        set!(c.proxy_fs_parallels, self.proxy_fs_parallels);
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct SchedulerArgs {
    /// YAML config (keys: edgeNodePools, secret, peerTTL, sourceAssignTimeout, ...).
    #[arg(long, env = "POOLCAST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_LISTEN", help = help::<SchedulerConfig>(
        "Address to listen on", "listen"))]
    listen: Option<String>,
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true, help = help::<SchedulerConfig>(
        "Shared secret of peer and scheduler traffic; empty: not checked", "secret"))]
    secret: Option<String>,
    #[arg(long, env = "POOLCAST_PEER_TTL", help = help::<SchedulerConfig>(
        "Drop peers silent this long", "peerTTL"))]
    peer_ttl: Option<HumanDuration>,
    #[arg(long, env = "POOLCAST_SOURCE_ASSIGN_TIMEOUT", help = help::<SchedulerConfig>(
        "How long a first-holder lease of fresh pieces lasts",
        "sourceAssignTimeout"))]
    source_assign_timeout: Option<HumanDuration>,
    /// Serve the read-only dashboard at `/` (config: `dashboard: true`); off by default, as it
    /// shows node addresses and preheated image names to anyone who reaches the port.
    #[arg(long, env = "POOLCAST_DASHBOARD")]
    dashboard: bool,
}

impl SchedulerArgs {
    pub fn into_config(self) -> Result<SchedulerConfig> {
        let mut c = match &self.config {
            Some(path) => SchedulerConfig::load(path)?,
            None => SchedulerConfig::default(),
        };
        set!(c.listen, self.listen);
        set!(c.secret, self.secret);
        set!(c.peer_ttl, self.peer_ttl);
        set!(c.source_assign_timeout, self.source_assign_timeout);
        c.dashboard |= self.dashboard;
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct WebhookArgs {
    /// YAML config (keys: registries, port, distributedSuffix, tlsCertFile, tlsKeyFile, ...).
    #[arg(long, env = "POOLCAST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_LISTEN", help = help::<WebhookConfig>(
        "Address to listen on", "listen"))]
    listen: Option<String>,
    /// Registry host whose images go through the agent, `host[:port]` as images name it;
    /// repeat for several [config: registries].
    #[arg(
        long = "registry",
        env = "POOLCAST_WEBHOOK_REGISTRIES",
        value_delimiter = ','
    )]
    registries: Vec<String>,
    #[arg(long, env = "POOLCAST_P2P_PORT", help = help::<WebhookConfig>(
        "The agent's port on the nodes (the seeds' p2p.port), which rewritten images name",
        "port"))]
    port: Option<u16>,
    #[arg(long, env = "POOLCAST_DISTRIBUTED_SUFFIX", help = help::<WebhookConfig>(
        "Suffix of the distributed names of registries that are not ACR instances",
        "distributedSuffix"))]
    distributed_suffix: Option<String>,
    #[arg(long, env = "POOLCAST_TLS_CERT", help = help::<WebhookConfig>(
        "PEM certificate chain to serve", "tlsCertFile"))]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_TLS_KEY", help = help::<WebhookConfig>(
        "PEM private key", "tlsKeyFile"))]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_CLIENT_CA", help = help::<WebhookConfig>(
        "PEM CA of the API server's client certificate: reviews without it are refused",
        "clientCAFile"))]
    client_ca: Option<PathBuf>,
    #[arg(long, env = "POOLCAST_PLAIN_HTTP", help = help::<WebhookConfig>(
        "Serve plain HTTP: tests and local trials only, the API server needs HTTPS",
        "plainHttp"))]
    plain_http: bool,
}

impl WebhookArgs {
    pub fn into_config(self) -> Result<WebhookConfig> {
        let mut c = match &self.config {
            Some(path) => WebhookConfig::load(path)?,
            None => WebhookConfig::default(),
        };
        let path = |p: Option<PathBuf>| p.map(|p| p.to_string_lossy().into_owned());
        set!(c.listen, self.listen);
        if !self.registries.is_empty() {
            c.registries = self.registries;
        }
        set!(c.port, self.port);
        set!(c.distributed_suffix, self.distributed_suffix);
        set!(c.tls_cert_file, path(self.tls_cert));
        set!(c.tls_key_file, path(self.tls_key));
        set!(c.client_ca_file, path(self.client_ca));
        c.plain_http |= self.plain_http;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mirror: MirrorArgs,
    }

    #[test]
    fn the_upstream_ca_flag_overrides_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror.yaml");
        std::fs::write(
            &path,
            "upstreams: [\"https://h.example\"]\nupstreamCAFile: /from/file.pem\n",
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let from = |args: &[&str]| {
            let argv = ["poolcast-mirror", "--config", config];
            let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
            cli.mirror.into_config().unwrap().upstream_ca_file
        };
        assert_eq!(from(&[]), "/from/file.pem");
        assert_eq!(
            from(&["--upstream-ca-file", "/from/flag.pem"]),
            "/from/flag.pem"
        );
    }
}
