//! Command-line flags of each component. Flags override the config file, whose keys are the
//! Helm values keys; every flag also reads a `POOLCAST_*` environment variable.

use anyhow::Result;
use clap::Args;
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
    /// Address to listen on [config: listen; default 0.0.0.0:5000].
    #[arg(long, env = "POOLCAST_LISTEN")]
    listen: Option<String>,
    /// Upstream registry, `URL` or `NS=URL`; repeat for several. The first serves requests
    /// without `?ns=` [config: upstreams].
    #[arg(long = "upstream", env = "POOLCAST_UPSTREAMS", value_delimiter = ',')]
    upstreams: Vec<UpstreamSpec>,
    /// Cache folder [config: cacheHostPath; default: a folder that dies with the process].
    #[arg(long, env = "POOLCAST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Remove entries unused for this long [config: cacheTTL; default 24h].
    #[arg(long, env = "POOLCAST_CACHE_TTL")]
    cache_ttl: Option<HumanDuration>,
    /// Evict least recently used past this size, e.g. 40GiB [config: capacity; default 0 = TTL only].
    #[arg(long, env = "POOLCAST_CAPACITY")]
    capacity: Option<ByteSize>,
    /// Total transfer rate, e.g. 512M = 512 MB/s [config: ratelimit; default 0 = unlimited].
    #[arg(long, env = "POOLCAST_RATELIMIT")]
    ratelimit: Option<Rate>,
    /// Fetch OSS-redirected blobs via OSS transfer acceleration [config: ossInternetAccelerate].
    #[arg(long, env = "POOLCAST_OSS_INTERNET_ACCELERATE")]
    oss_internet_accelerate: bool,
    /// Serve `?ns=HOST` for any registry host [config: allowAnyRegistry].
    #[arg(long, env = "POOLCAST_ALLOW_ANY_REGISTRY")]
    allow_any_registry: bool,
    /// Trust upstream's "may read" answer this long [config: authCacheTTL; default 60s].
    #[arg(long, env = "POOLCAST_AUTH_CACHE_TTL")]
    auth_cache_ttl: Option<HumanDuration>,
    /// Revalidate manifests fetched by tag after this long [config: manifestTTL; default 30s].
    #[arg(long, env = "POOLCAST_MANIFEST_TTL")]
    manifest_ttl: Option<HumanDuration>,
    /// PEM file of CA certificates trusted for upstream HTTPS besides the public web PKI
    /// [config: upstreamCAFile; default: the public web PKI only].
    #[arg(long, env = "POOLCAST_UPSTREAM_CA_FILE")]
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
    /// Registry API for containerd [config: listen; default 0.0.0.0:65001, the seeds' p2p.port].
    #[arg(long, env = "POOLCAST_LISTEN")]
    listen: Option<String>,
    /// Where peers fetch pieces [config: peerListen; default 0.0.0.0:65002].
    #[arg(long, env = "POOLCAST_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Address peers are told to use [config: advertise; default: the bound peer address].
    #[arg(long, env = "POOLCAST_ADVERTISE")]
    advertise: Option<String>,
    /// The pool mirror's URL [config: mirror].
    #[arg(long, env = "POOLCAST_MIRROR")]
    mirror: Option<String>,
    /// The scheduler's URL, for downloadPattern p2p [config: scheduler].
    #[arg(long, env = "POOLCAST_SCHEDULER")]
    scheduler: Option<String>,
    /// This node's name [config: node; default $NODE_NAME or the host name].
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The node pool id [config: pool].
    #[arg(long, env = "POOLCAST_POOL")]
    pool: Option<String>,
    /// p2p or source [config: downloadPattern; default p2p].
    #[arg(long, env = "POOLCAST_DOWNLOAD_PATTERN", value_parser = parse_pattern)]
    download_pattern: Option<DownloadPattern>,
    /// Shared secret of peer and scheduler traffic [config: secret].
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Cache folder for disk mode [config: cacheHostPath].
    #[arg(long, env = "POOLCAST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// disk or memory [config: cache.mode; default disk].
    #[arg(long, env = "POOLCAST_CACHE_MODE", value_parser = parse_mode)]
    cache_mode: Option<CacheMode>,
    /// Cache size [config: cache.capacity; default 4GiB].
    #[arg(long, env = "POOLCAST_CAPACITY")]
    capacity: Option<ByteSize>,
    /// Remove blobs unused this long [config: cacheTTL; default 24h].
    #[arg(long, env = "POOLCAST_CACHE_TTL")]
    cache_ttl: Option<HumanDuration>,
    /// Total rate, upload plus download, e.g. 5M [config: ratelimit; default 512M].
    #[arg(long, env = "POOLCAST_RATELIMIT")]
    ratelimit: Option<Rate>,
    /// Download cap [config: downloadRate; default 0 = only ratelimit].
    #[arg(long, env = "POOLCAST_DOWNLOAD_RATE")]
    download_rate: Option<Rate>,
    /// Upload cap [config: uploadRate; default 0 = only ratelimit].
    #[arg(long, env = "POOLCAST_UPLOAD_RATE")]
    upload_rate: Option<Rate>,
    /// Piece size [config: blocksize; default 4MiB].
    #[arg(long, env = "POOLCAST_BLOCKSIZE")]
    blocksize: Option<ByteSize>,
    /// [config: connectTimeout; default 5s].
    #[arg(long, env = "POOLCAST_CONNECT_TIMEOUT")]
    connect_timeout: Option<HumanDuration>,
    /// A piece transfer slower than this goes elsewhere [config: transferTimeout; default 15s].
    #[arg(long, env = "POOLCAST_TRANSFER_TIMEOUT")]
    transfer_timeout: Option<HumanDuration>,
    /// Piece transfers in flight at once [config: proxyFsParallels; default 128].
    #[arg(long, env = "POOLCAST_PROXY_FS_PARALLELS")]
    proxy_fs_parallels: Option<u32>,
}

fn parse_pattern(s: &str) -> Result<DownloadPattern, String> {
    match s {
        "p2p" => Ok(DownloadPattern::P2p),
        "source" => Ok(DownloadPattern::Source),
        _ => Err(format!("`{s}`: expected p2p or source")),
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
    /// Address to listen on [config: listen; default 0.0.0.0:65003].
    #[arg(long, env = "POOLCAST_LISTEN")]
    listen: Option<String>,
    /// Shared secret of peer and scheduler traffic [config: secret].
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Drop peers silent this long [config: peerTTL; default 30s].
    #[arg(long, env = "POOLCAST_PEER_TTL")]
    peer_ttl: Option<HumanDuration>,
    /// How long a piece assigned to one peer for the mirror stays reserved [config:
    /// sourceAssignTimeout; default 15s].
    #[arg(long, env = "POOLCAST_SOURCE_ASSIGN_TIMEOUT")]
    source_assign_timeout: Option<HumanDuration>,
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
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct WebhookArgs {
    /// YAML config (keys: registries, port, distributedSuffix, tlsCertFile, tlsKeyFile, ...).
    #[arg(long, env = "POOLCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [config: listen; default 0.0.0.0:8443].
    #[arg(long, env = "POOLCAST_LISTEN")]
    listen: Option<String>,
    /// Registry host whose images go through the agent, `host[:port]` as images name it;
    /// repeat for several [config: registries].
    #[arg(
        long = "registry",
        env = "POOLCAST_WEBHOOK_REGISTRIES",
        value_delimiter = ','
    )]
    registries: Vec<String>,
    /// The agent's port on the nodes, which rewritten images name [config: port; default
    /// 65001, the seeds' p2p.port].
    #[arg(long, env = "POOLCAST_P2P_PORT")]
    port: Option<u16>,
    /// Suffix of the distributed names of registries that are not ACR instances [config:
    /// distributedSuffix; default distributed.local].
    #[arg(long, env = "POOLCAST_DISTRIBUTED_SUFFIX")]
    distributed_suffix: Option<String>,
    /// PEM certificate chain to serve [config: tlsCertFile].
    #[arg(long, env = "POOLCAST_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key [config: tlsKeyFile].
    #[arg(long, env = "POOLCAST_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP: tests and local trials only, the API server needs HTTPS [config: plainHttp].
    #[arg(long, env = "POOLCAST_PLAIN_HTTP")]
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
