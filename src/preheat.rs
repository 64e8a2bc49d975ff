//! `poolcast preheat IMAGE...`: warm a pool before a rollout. The mirror reads every blob of
//! each image (single-flight as always), then, with `--scheduler`, a preheat job has the pool's
//! nodes pull every blob through their agents, P2P included (`scheduler::preheat`).
//!
//! Credentials come from a docker/skopeo auth file and go along as a pull's would, so nothing
//! is warmed that its user could not pull. On a terminal each image shows bytes, rate and ETA;
//! otherwise one line per image. Any failure (unknown tag, refused credentials, a node that
//! cannot be reached) ends it non-zero, naming what failed.

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scheduler::preheat::image::{Credentials, ImageRef, RegistryClient, Resolved};
use scheduler::preheat::{JobState, JobView, NodeCount, PreheatRequest};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct PreheatArgs {
    /// Images, as full references: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:...
    /// (the registry host picks the upstream, as containerd's `?ns=` does).
    #[arg(required = true)]
    images: Vec<String>,
    /// The pool's mirror, e.g. http://MIRROR:5000.
    #[arg(long, env = "POOLCAST_MIRROR")]
    mirror: String,
    /// The scheduler: also have the pool's nodes pull every blob through their agents.
    #[arg(long, env = "POOLCAST_SCHEDULER", requires = "pool")]
    scheduler: Option<String>,
    /// The release secret (the scheduler's `secret`); requests are signed with the key of
    /// `--pool` derived from it.
    #[arg(long, env = "POOLCAST_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The key of `--pool` itself (what the chart gives the pool's agents), instead of
    /// --secret: it can act for that pool only.
    #[arg(
        long,
        env = "POOLCAST_POOL_KEY",
        hide_env_values = true,
        conflicts_with = "secret"
    )]
    pool_key: Option<String>,
    /// The node pool whose nodes pull (with --scheduler).
    #[arg(long, env = "POOLCAST_POOL")]
    pool: Option<String>,
    /// How many of the pool's live nodes pull: `all`, or a number.
    #[arg(long, default_value = "all")]
    nodes: NodeCount,
    /// Only this platform of a multi-platform image (os/arch[/variant]); default: every one.
    #[arg(long)]
    platform: Option<String>,
    /// Registry credentials, in the docker/skopeo auth file format (`{"auths": {HOST: {"auth":
    /// base64(user:pass)}}}`).
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// While the scheduler knows no live node of the pool (agents still starting after an
    /// install), keep asking for this long (e.g. 2m); default: fail at once.
    #[arg(long, default_value = "0s")]
    wait_for_nodes: nodepool::HumanDuration,
}

/// How often a job's progress is read.
const POLL: Duration = Duration::from_millis(500);

pub async fn run(args: PreheatArgs) -> Result<()> {
    let images: Vec<ImageRef> = args
        .images
        .iter()
        .map(|i| ImageRef::parse(i))
        .collect::<Result<_, _>>()?;
    let credentials = match &args.auth_file {
        Some(path) => read_auth_file(path)?,
        None => BTreeMap::new(),
    };
    let terminal = std::io::stderr().is_terminal();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let mut failures = Vec::new();
    let mut warmed = Vec::new();
    for image in &images {
        let creds = credentials.get(&image.registry).cloned();
        let client = RegistryClient::new(http.clone(), &args.mirror, creds)
            .with_context(|| format!("--mirror {}", args.mirror))?;
        match warm_mirror(client, image, args.platform.as_deref(), terminal).await {
            Ok(r) => warmed.push(r),
            Err(e) => {
                eprintln!("{image}: FAILED: {e}");
                failures.push(format!("{image}: {e}"));
            }
        }
    }
    if let Some(url) = &args.scheduler {
        if !warmed.is_empty() {
            let pool = args.pool.clone().unwrap_or_default();
            let req = PreheatRequest {
                pool: pool.clone(),
                images: warmed.iter().map(|r| r.image.to_string()).collect(),
                nodes: args.nodes,
                platform: args.platform.clone(),
                credentials: credentials_for(&credentials, warmed.iter().map(|r| &r.image)),
            };
            let key = pool_key(&args, &pool);
            let wait = args.wait_for_nodes.0;
            match pull_on_nodes(url, key, &pool, &req, &warmed, wait, terminal).await {
                Ok(job) => failures.extend(job_failures(&job)),
                Err(e) => failures.push(format!("scheduler {url}: {e:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("preheat failed: {}", failures.join("; "));
    }
    Ok(())
}

fn bar(total: u64, label: String, terminal: bool) -> ProgressBar {
    if !terminal {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Resolves `image` through the mirror and reads every blob, which the mirror fetches once.
async fn warm_mirror(
    mut client: RegistryClient,
    image: &ImageRef,
    platform: Option<&str>,
    terminal: bool,
) -> Result<Resolved> {
    let started = Instant::now();
    let resolved = client.resolve(image, platform).await?;
    let progress = bar(resolved.bytes(), format!("mirror {image}"), terminal);
    for blob in &resolved.blobs {
        client
            .read_blob(image, &blob.digest, |n| progress.inc(n))
            .await?;
    }
    progress.finish_and_clear();
    println!(
        "{image}: mirror holds {} blobs, {} in {:.1}s",
        resolved.blobs.len(),
        human(resolved.bytes()),
        started.elapsed().as_secs_f64()
    );
    Ok(resolved)
}

/// Creates the scheduler's job and follows it to the end.
async fn pull_on_nodes(
    url: &str,
    key: nodepool::PoolSecret,
    pool: &str,
    req: &PreheatRequest,
    warmed: &[Resolved],
    wait_for_nodes: Duration,
    terminal: bool,
) -> Result<JobView> {
    let client = scheduler::SchedulerClient::new(url, key, pool.to_string(), POLL * 20)?;
    let started = Instant::now();
    let mut job = loop {
        match client.preheat(req).await {
            Ok(job) => break job,
            // Refused because no node is up yet: agents may still be starting.
            Err(scheduler::Error::Status {
                status: 400,
                message,
            }) if message.contains("no live node") && started.elapsed() < wait_for_nodes => {
                tokio::time::sleep(POLL * 4).await;
            }
            Err(e) => return Err(e).context("creating the preheat job"),
        }
    };
    let total: u64 = warmed.iter().map(Resolved::bytes).sum::<u64>() * job.nodes.len() as u64;
    let progress = bar(
        total,
        format!("pool {pool}: {} nodes", job.nodes.len()),
        terminal,
    );
    while !job.state.finished() {
        tokio::time::sleep(POLL).await;
        job = client
            .preheat_status(&job.id)
            .await
            .with_context(|| format!("reading preheat job {}", job.id))?;
        progress.set_length(job.bytes_total().max(total));
        progress.set_position(job.bytes_done());
    }
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let pulled = job
        .nodes
        .iter()
        .filter(|n| n.state == JobState::Done)
        .count();
    for image in &job.images {
        match &image.error {
            None => println!(
                "{}: pulled by {pulled} of {} nodes of pool {pool} ({} each) in {secs:.1}s",
                image.image,
                job.nodes.len(),
                human(image.bytes)
            ),
            Some(e) => println!("{}: FAILED on the pool: {e}", image.image),
        }
    }
    for node in job.nodes.iter().filter(|n| n.error.is_some()) {
        println!(
            "{}: FAILED: {}",
            node.id,
            node.error.as_deref().unwrap_or("")
        );
    }
    Ok(job)
}

/// What signs the pool's requests: the pool key as given, or derived from the release secret.
fn pool_key(args: &PreheatArgs, pool: &str) -> nodepool::PoolSecret {
    if let Some(key) = &args.pool_key {
        return nodepool::PoolSecret::new(key.as_bytes());
    }
    let release = nodepool::PoolSecret::new(args.secret.as_deref().unwrap_or("").as_bytes());
    if release.is_off() {
        release
    } else {
        nodepool::keys::pool_key(&release, pool)
    }
}

fn job_failures(job: &JobView) -> Vec<String> {
    if job.state != JobState::Failed {
        return Vec::new();
    }
    vec![format!(
        "preheat job {} on pool {}: {}",
        job.id,
        job.pool,
        job.error.as_deref().unwrap_or("failed")
    )]
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut n = bytes as f64;
    let mut unit = 0;
    while n >= 1024.0 && unit < UNITS.len() - 1 {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

/// Registry host -> credentials from a docker or skopeo auth file. Docker Hub's keys
/// (`https://index.docker.io/v1/`, `registry-1.docker.io`) read as `docker.io`, as `?ns=` names it.
fn read_auth_file(path: &Path) -> Result<BTreeMap<String, Credentials>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_auth_file(&text).with_context(|| format!("auth file {}", path.display()))
}

fn parse_auth_file(text: &[u8]) -> Result<BTreeMap<String, Credentials>> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let file: File = serde_json::from_slice(text).context("not a docker/skopeo auth file")?;
    let mut out = BTreeMap::new();
    for (key, entry) in file.auths {
        let (username, password) = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .with_context(|| format!("`{key}`: auth is not base64"))?;
                let raw = String::from_utf8(raw)
                    .with_context(|| format!("`{key}`: auth is not UTF-8"))?;
                let Some((u, p)) = raw.split_once(':') else {
                    bail!("`{key}`: auth is not base64 of user:password");
                };
                (u.to_string(), p.to_string())
            }
            (None, Some(u), Some(p)) => (u, p),
            _ => continue,
        };
        out.insert(registry_host(&key), Credentials { username, password });
    }
    Ok(out)
}

/// The credentials of the registries `images` name (as `?ns=` does), and no others: the job
/// carries them to the scheduler and to every node, so the rest of the auth file stays here.
fn credentials_for<'a>(
    all: &BTreeMap<String, Credentials>,
    images: impl IntoIterator<Item = &'a ImageRef>,
) -> BTreeMap<String, Credentials> {
    images
        .into_iter()
        .filter_map(|i| all.get_key_value(&i.registry))
        .map(|(host, creds)| (host.clone(), creds.clone()))
        .collect()
}

fn registry_host(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_of_docker_and_skopeo_name_registries_as_ns_does() {
        let file = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTE6cDE="},
            "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
            "harbor.example.com": {"username": "u3", "password": "p3"},
            "token-only.example.com": {"identitytoken": "x"}
        }}"#;
        let creds = parse_auth_file(file).expect("parsed");
        assert_eq!(creds["docker.io"].username, "u1");
        assert_eq!(creds["127.0.0.1:5000"].password, "pa:ss");
        assert_eq!(creds["harbor.example.com"].username, "u3");
        assert!(!creds.contains_key("token-only.example.com"));
        assert!(parse_auth_file(b"{\"auths\": {\"h\": {\"auth\": \"!!\"}}}").is_err());
        assert!(parse_auth_file(b"not json").is_err());
    }

    #[test]
    fn only_the_credentials_of_the_images_registries_go_to_the_scheduler() {
        let file = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTE6cDE="},
            "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
            "harbor.example.com": {"username": "u3", "password": "p3"},
            "other.example.com": {"username": "u4", "password": "p4"}
        }}"#;
        let all = parse_auth_file(file).expect("parsed");
        let images: Vec<ImageRef> = [
            "127.0.0.1:5000/pool/app:v1",
            "nginx:1.27",
            "127.0.0.1:5000/pool/other@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "quay.io/nobody/creds:v1",
        ]
        .iter()
        .map(|i| ImageRef::parse(i).expect("image"))
        .collect();
        let sent = credentials_for(&all, &images);
        assert_eq!(
            sent.keys().collect::<Vec<_>>(),
            ["127.0.0.1:5000", "docker.io"],
            "each named registry once; harbor's and other's stay out; quay.io has none"
        );
        assert_eq!(sent["127.0.0.1:5000"], all["127.0.0.1:5000"]);
        assert_eq!(sent["docker.io"].username, "u1");
        let request = PreheatRequest {
            pool: "pool-a".into(),
            images: images.iter().map(ToString::to_string).collect(),
            nodes: NodeCount::All,
            platform: None,
            credentials: sent,
        };
        let body = serde_json::to_string(&request).expect("json");
        assert!(!body.contains("u3") && !body.contains("p4"), "{body}");
        assert!(credentials_for(&all, &[]).is_empty());
    }
}
