//! `poolcast`: one binary for every component. `poolcast up` runs the embedded default on one
//! machine (mirror, scheduler and agent on loopback); `poolcast mirror`, `poolcast scheduler`,
//! `poolcast agent` and `poolcast webhook` run one component each, as the Helm chart deploys
//! them.

mod acr;
mod args;
mod crio;
mod hosts;
mod preheat;
mod telemetry;

use anyhow::{Context, Result};
use args::{AgentArgs, MirrorArgs, SchedulerArgs, WebhookArgs};
use clap::{Args, Parser, Subcommand};
use nodepool::{AgentConfig, MirrorConfig, SchedulerConfig, UpstreamSpec, WebhookConfig};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::pin::Pin;
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
    /// Export traces over OTLP/HTTP to this collector (`http://otel-collector:4318`); W3C
    /// `traceparent` links agent, mirror and upstream spans into one trace. Off when unset.
    #[arg(long, global = true, env = "POOLCAST_OTLP_ENDPOINT")]
    otlp_endpoint: Option<url::Url>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node pool's mirror: an OCI pull-through cache.
    Mirror(MirrorArgs),
    /// Run the P2P scheduler of a group of inter-connected pools.
    Scheduler(SchedulerArgs),
    /// Run the node agent: a registry for containerd that swaps pieces with peers.
    Agent(AgentArgs),
    /// Run the admission webhook: pods labelled k8s.aliyun.com/image-accelerate-mode=p2p pull
    /// their images through the node-local agent.
    Webhook(WebhookArgs),
    /// Try poolcast on one machine: mirror, scheduler and agent in one process on loopback,
    /// cached under ./poolcast-cache, Docker Hub as upstream unless told otherwise.
    Up(UpArgs),
    /// Point the node's runtime at the agent: write or remove containerd's `hosts.toml` files
    /// in its `config_path` or CRI-O's registries.conf.d drop-in (the chart's agent DaemonSet
    /// runs this).
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
    /// ACR Enterprise Edition instances: what the components resolve instance ids to.
    #[command(subcommand)]
    Acr(acr::AcrCommand),
    /// Warm a pool before a rollout: the mirror fetches every blob of each image and, with
    /// --scheduler, the pool's nodes pull them through their agents (P2P included).
    Preheat(preheat::PreheatArgs),
    /// Work with config files without running anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate a component's config file as the component would at start, and exit:
    /// 0 and `ok` when it would start, 1 and one line naming the key when not. Flags and
    /// `POOLCAST_*` environment overrides are not applied.
    Check {
        /// Which component's file this is.
        #[arg(long, value_enum)]
        component: Component,
        /// The YAML file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Component {
    Mirror,
    Scheduler,
    Agent,
    Webhook,
}

#[derive(Args)]
struct UpArgs {
    /// Upstream registry (repeatable).
    #[arg(long = "upstream", default_value = "https://registry-1.docker.io")]
    upstreams: Vec<UpstreamSpec>,
    /// Cache folder.
    #[arg(long, default_value = "poolcast-cache")]
    cache_dir: PathBuf,
    /// Address of the agent, where containerd pulls.
    #[arg(long, default_value = "127.0.0.1:65001")]
    listen: String,
    /// Address of the mirror.
    #[arg(long, default_value = "127.0.0.1:5000")]
    mirror_listen: String,
    /// Secret of the agent's peer and scheduler traffic; default: a random one per run, so the
    /// peer port never serves unauthenticated requests.
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Mirror(_) => "poolcast-mirror",
        Command::Scheduler(_) => "poolcast-scheduler",
        Command::Agent(_) => "poolcast-agent",
        Command::Webhook(_) => "poolcast-webhook",
        _ => "poolcast",
    };
    let telemetry = match telemetry::init(cli.otlp_endpoint.as_ref(), service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("poolcast: {e:#}");
            std::process::exit(1);
        }
    };
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    telemetry.shutdown();
    if let Err(e) = result {
        eprintln!("poolcast: {e:#}");
        std::process::exit(1);
    }
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Preheat(args) => preheat::run(args).await,
        Command::Mirror(args) => {
            let config = args.into_config()?;
            let listener = bind(&config.listen, "mirror")?;
            let server = mirror_server(&config)?;
            acr::watch_mirror(&config.acr, server.acr_upstreams())?;
            println!(
                "poolcast mirror listening on http://{}",
                listener.local_addr()?
            );
            server
                .run(listener, shutdown_signal())
                .await
                .context("mirror server")
        }
        Command::Scheduler(args) => {
            let config = args.into_config()?;
            let listener = bind(&config.listen, "scheduler")?;
            let server = scheduler_server(&config)?;
            println!(
                "poolcast scheduler listening on http://{}",
                listener.local_addr()?
            );
            server
                .run(listener, shutdown_signal())
                .await
                .context("scheduler server")
        }
        Command::Agent(args) => {
            let config = args.into_config()?;
            let (api, peers) = (
                bind(&config.listen, "agent")?,
                bind(&config.peer_listen, "agent peers")?,
            );
            let server = agent_server(config, &peers)?;
            println!("poolcast agent listening on http://{}", api.local_addr()?);
            println!("poolcast agent peers on http://{}", peers.local_addr()?);
            server
                .run(api, peers, shutdown_signal())
                .await
                .context("agent server")
        }
        Command::Webhook(args) => {
            let config = args.into_config()?;
            let listener = bind(&config.listen, "webhook")?;
            let secrets = webhook::kube_secrets()
                .await
                .context("connecting to the Kubernetes API")?;
            let server = webhook::WebhookServer::new(
                &config,
                Arc::new(secrets),
                Arc::new(webhook::Metrics::new()),
            )
            .context("starting the webhook")?;
            acr::watch_webhook(&config.acr, server.acr_registries())?;
            println!(
                "poolcast webhook listening on {}://{}",
                server.scheme(),
                listener.local_addr()?
            );
            server
                .run(listener, shutdown_signal())
                .await
                .context("webhook server")
        }
        Command::Up(args) => up(args).await,
        Command::Hosts(command) => hosts::run(command).await,
        Command::Acr(command) => acr::run(command).await,
        Command::Config(ConfigCommand::Check { component, file }) => {
            let what = || format!("config {}", file.display());
            match component {
                Component::Mirror => MirrorConfig::load(&file)?.validate().with_context(what)?,
                Component::Scheduler => {
                    let config = SchedulerConfig::load(&file)?;
                    config.validate().with_context(what)?;
                    for key in config.retired_keys() {
                        eprintln!("warning: config key `{key}` is no longer used and is ignored");
                    }
                }
                Component::Agent => AgentConfig::load(&file)?.validate().with_context(what)?,
                Component::Webhook => WebhookConfig::load(&file)?.validate().with_context(what)?,
            }
            println!("ok");
            Ok(())
        }
    }
}

fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("binding {what} on {addr}"))
}

fn mirror_server(config: &MirrorConfig) -> Result<mirror::MirrorServer> {
    mirror::MirrorServer::new(config, Arc::new(mirror::Metrics::new()))
        .context("starting the mirror")
}

fn scheduler_server(config: &SchedulerConfig) -> Result<scheduler::SchedulerServer> {
    scheduler::SchedulerServer::new(config, Arc::new(scheduler::Metrics::new()))
        .context("starting the scheduler")
}

fn agent_server(config: AgentConfig, peers: &TcpListener) -> Result<agent::AgentServer> {
    let advertise = peers.local_addr()?;
    if config.advertise.is_empty() && advertise.ip().is_unspecified() {
        anyhow::bail!("config key `advertise`: peerListen {advertise} is not an address peers can use; set advertise (e.g. the node IP and port)");
    }
    agent::AgentServer::new(
        config,
        advertise.to_string(),
        Arc::new(agent::Metrics::new()),
    )
    .context("starting the agent")
}

/// The embedded default: all three components in one process on loopback.
async fn up(args: UpArgs) -> Result<()> {
    let cache = std::path::absolute(&args.cache_dir).unwrap_or(args.cache_dir);
    let mirror_cfg = MirrorConfig {
        listen: args.mirror_listen,
        upstreams: args.upstreams,
        cache_host_path: cache.join("mirror").to_string_lossy().into_owned(),
        ..MirrorConfig::default()
    };
    mirror_cfg.validate()?;
    let mirror_l = bind(&mirror_cfg.listen, "mirror")?;
    let sched_l = bind("127.0.0.1:0", "scheduler")?;
    let agent_l = bind(&args.listen, "agent")?;
    let peer_l = bind("127.0.0.1:0", "agent peers")?;
    let (mirror_addr, sched_addr, agent_addr) = (
        mirror_l.local_addr()?,
        sched_l.local_addr()?,
        agent_l.local_addr()?,
    );
    let secret = match args.secret.filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => random_secret().context("generating the pool secret")?,
    };
    let sched_cfg = SchedulerConfig {
        listen: sched_addr.to_string(),
        secret: secret.clone(),
        ..SchedulerConfig::default()
    };
    let agent_cfg = AgentConfig {
        listen: agent_addr.to_string(),
        peer_listen: peer_l.local_addr()?.to_string(),
        mirror: format!("http://{mirror_addr}"),
        scheduler: format!("http://{sched_addr}"),
        node: "local".into(),
        cache_host_path: cache.join("agent").to_string_lossy().into_owned(),
        secret,
        ..AgentConfig::default()
    };
    agent_cfg.validate()?;
    let (m, sc, a) = (
        mirror_server(&mirror_cfg)?,
        scheduler_server(&sched_cfg)?,
        agent_server(agent_cfg, &peer_l)?,
    );
    println!("poolcast up: mirror listening on http://{mirror_addr}");
    println!("poolcast up: scheduler listening on http://{sched_addr}");
    println!("poolcast up: agent listening on http://{agent_addr}");
    let ns = mirror_cfg
        .upstreams
        .first()
        .map_or("docker.io", |u| u.ns.as_str())
        .to_string();
    println!(
        "\nPull through the agent with skopeo:\n  skopeo copy --src-tls-verify=false docker://{agent_addr}/library/alpine:latest oci:/tmp/alpine:latest\n\
         \nOr point containerd at it (config_path = \"/etc/containerd/certs.d\"), in /etc/containerd/certs.d/{ns}/hosts.toml:\n\
         \x20 server = \"https://{ns}\"\n  [host.\"http://{agent_addr}\"]\n    capabilities = [\"pull\", \"resolve\"]\n\
         \nMetrics: http://{agent_addr}/metrics, http://{mirror_addr}/metrics   Cache: {}\n",
        cache.display()
    );
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = |tx: &tokio::sync::broadcast::Sender<()>| -> Shutdown {
        let mut rx = tx.subscribe();
        Box::pin(async move {
            let _ = rx.recv().await;
        })
    };
    let servers = futures_util::future::try_join3(
        m.run(mirror_l, stop(&stop_tx)),
        sc.run(sched_l, stop(&stop_tx)),
        a.run(agent_l, peer_l, stop(&stop_tx)),
    );
    tokio::pin!(servers);
    tokio::select! {
        r = &mut servers => r.map(|_| ()).context("poolcast up"),
        _ = shutdown_signal() => {
            let _ = stop_tx.send(());
            servers.await.map(|_| ()).context("poolcast up")
        }
    }
}

/// 32 bytes from the kernel's CSPRNG, as hex.
fn random_secret() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    /// The names under `[dependencies]` of a crate's Cargo.toml (dev-dependencies aside).
    fn dependencies(krate: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(krate)
            .join("Cargo.toml");
        let text = std::fs::read_to_string(&path).expect("reading a crate's Cargo.toml");
        text.lines()
            .skip_while(|l| l.trim() != "[dependencies]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split(['.', '=', ' ']).next())
            .filter(|name| !name.is_empty() && !name.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_crate_map_holds() {
        // docs/architecture.md, "Crates": who must not depend on whom.
        let rules: [(&str, &[&str]); 9] = [
            (
                "swarm",
                &[
                    "nodepool",
                    "tokio",
                    "actix-web",
                    "reqwest",
                    "sled",
                    "storage",
                ],
            ),
            ("nodepool", &["actix-web", "reqwest", "sled"]),
            (
                "storage",
                &["actix-web", "mirror", "agent", "scheduler", "serve"],
            ),
            ("serve", &["storage", "mirror", "scheduler", "agent"]),
            ("mirror", &["scheduler", "agent"]),
            ("scheduler", &["storage", "mirror", "agent"]),
            ("agent", &["mirror"]),
            ("webhook", &["storage", "mirror", "scheduler", "agent"]),
            (
                "alicloud",
                &["actix-web", "sled", "storage", "serve", "mirror", "webhook"],
            ),
        ];
        for (krate, forbidden) in rules {
            let deps = dependencies(krate);
            assert!(
                deps.contains(&"nodepool".to_string()) || ["nodepool", "swarm"].contains(&krate),
                "{krate}: {deps:?}"
            );
            for f in forbidden {
                assert!(
                    !deps.iter().any(|d| d == f),
                    "{krate} depends on {f}: {deps:?}"
                );
            }
        }
    }

    #[test]
    fn up_generates_a_fresh_secret_each_run() {
        let (a, b) = (super::random_secret(), super::random_secret());
        let (a, b) = (a.expect("urandom"), b.expect("urandom"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
