//! `poolcast`: one binary for every component. `poolcast up` runs the embedded default on one
//! machine; `poolcast mirror` runs a node pool's pull-through mirror.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use nodepool::{ByteSize, HumanDuration, MirrorConfig, Rate, UpstreamSpec};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "poolcast",
    version,
    about = "Container images onto edge Kubernetes node pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node pool's mirror: an OCI pull-through cache.
    Mirror(MirrorArgs),
    /// Try poolcast on one machine: the mirror on loopback, cached under ./poolcast-cache,
    /// Docker Hub as upstream unless told otherwise.
    Up(UpArgs),
}

/// Flags override the config file, whose keys are the Helm values keys.
#[derive(Args)]
struct MirrorArgs {
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
}

#[derive(Args)]
struct UpArgs {
    /// Address of the mirror.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
    /// Upstream registry (repeatable).
    #[arg(long = "upstream", default_value = "https://registry-1.docker.io")]
    upstreams: Vec<UpstreamSpec>,
    /// Cache folder.
    #[arg(long, default_value = "poolcast-cache")]
    cache_dir: PathBuf,
}

impl MirrorArgs {
    fn into_config(self) -> Result<MirrorConfig> {
        let mut c = match &self.config {
            Some(path) => MirrorConfig::load(path)?,
            None => MirrorConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if !self.upstreams.is_empty() {
            c.upstreams = self.upstreams;
        }
        if let Some(v) = self.cache_dir {
            c.cache_host_path = v.to_string_lossy().into_owned();
        }
        if let Some(v) = self.cache_ttl {
            c.cache_ttl = v;
        }
        if let Some(v) = self.capacity {
            c.capacity = v;
        }
        if let Some(v) = self.ratelimit {
            c.ratelimit = v;
        }
        if let Some(v) = self.auth_cache_ttl {
            c.auth_cache_ttl = v;
        }
        if let Some(v) = self.manifest_ttl {
            c.manifest_ttl = v;
        }
        c.oss_internet_accelerate |= self.oss_internet_accelerate;
        c.allow_any_registry |= self.allow_any_registry;
        c.validate()?;
        Ok(c)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POOLCAST_LOG")
                // Clients such as skopeo first try TLS on a plain-HTTP mirror; actix logs each
                // such probe as an error. POOLCAST_LOG overrides this default.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,actix_http::h1::dispatcher=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("poolcast: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mirror(args) => {
            let config = args.into_config()?;
            run_mirror(config, "poolcast mirror").await
        }
        Command::Up(args) => {
            let config = MirrorConfig {
                listen: args.listen,
                upstreams: args.upstreams,
                cache_host_path: std::path::absolute(&args.cache_dir)
                    .unwrap_or(args.cache_dir)
                    .to_string_lossy()
                    .into_owned(),
                ..MirrorConfig::default()
            };
            config.validate()?;
            run_mirror(config, "poolcast up: mirror").await
        }
    }
}

async fn run_mirror(config: MirrorConfig, banner: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind(&config.listen)
        .with_context(|| format!("binding mirror on {}", config.listen))?;
    let addr = listener.local_addr().context("reading bound address")?;
    let server = mirror::MirrorServer::new(&config, Arc::new(mirror::Metrics::new()))
        .context("opening the mirror's cache")?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("{banner} listening on http://{addr}");
    if banner.starts_with("poolcast up") {
        print_usage(&config, addr);
    }
    server
        .run(listener, shutdown_signal())
        .await
        .context("mirror server")
}

fn print_usage(config: &MirrorConfig, addr: std::net::SocketAddr) {
    let ns = config
        .upstreams
        .first()
        .map_or("docker.io", |u| u.ns.as_str());
    println!(
        "\nPull through it with skopeo:\n  skopeo copy --src-tls-verify=false docker://{addr}/library/alpine:latest oci:/tmp/alpine:latest\n\
         \nOr point containerd at it (config_path = \"/etc/containerd/certs.d\"), in /etc/containerd/certs.d/{ns}/hosts.toml:\n\
         \x20 server = \"https://{ns}\"\n  [host.\"http://{addr}\"]\n    capabilities = [\"pull\", \"resolve\"]\n\
         \nMetrics: http://{addr}/metrics   Cache: {}\n",
        config.cache_host_path
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
