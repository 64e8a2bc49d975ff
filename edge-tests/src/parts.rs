//! The real parts, each started inside a host of the bed: the CNCF registry as origin, and the
//! `poolcast` binary as mirror, scheduler and agent. Addresses are fixed per host (each host has
//! its own namespace, so ports never collide).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bed::{Bed, Host, ProcId};

pub const REGISTRY_PORT: u16 = 5000;
pub const MIRROR_PORT: u16 = 5000;
pub const SCHEDULER_PORT: u16 = 65003;
pub const AGENT_PORT: u16 = 65001;
pub const PEER_PORT: u16 = 65002;
pub const SECRET: &str = "edge-secret";

/// The `poolcast` binary next to the running executable (`target/<profile>/poolcast`), or
/// `$POOLCAST_BIN`. Built with cargo once when it is not there yet.
pub fn poolcast_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_or_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("POOLCAST_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    // tests live in target/<profile>/deps, binaries in target/<profile>
    let profile_dir = exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("build").is_dir() && d.join("deps").is_dir())
        .context("finding target/<profile> above the running executable")?
        .to_owned();
    let bin = profile_dir.join("poolcast");
    if !bin.is_file() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--bin", "poolcast", "--manifest-path"])
            .arg(&manifest);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build --bin poolcast")?;
        if !status.success() || !bin.is_file() {
            bail!(
                "could not build {} (cargo build --bin poolcast: {status})",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// Starts `poolcast ARGS` inside `host`, waiting for its `ready` line.
pub fn poolcast(
    bed: &Bed,
    host: &Host,
    label: &str,
    args: Vec<String>,
    ready: &str,
) -> Result<ProcId> {
    let bin = poolcast_bin()?;
    let bin = bin.to_str().context("poolcast path is not UTF-8")?;
    Ok(bed.spawn(host, label, bin, &args, Some(ready))?.0)
}

/// `docker-registry serve` on 0.0.0.0:5000 of `host`, data under `data`.
pub fn start_registry(bed: &Bed, host: &Host, data: &Path) -> Result<ProcId> {
    let config = data.join("registry.yml");
    std::fs::create_dir_all(data)?;
    let yaml = testkit::RegistryConfig {
        data: &data.join("storage"),
        addr: &format!("0.0.0.0:{REGISTRY_PORT}"),
        access_log: false,
        auth: testkit::RegistryAuth::Anonymous,
        tls: None,
    }
    .yaml();
    std::fs::write(&config, yaml)?;
    let config = config.display().to_string();
    let (id, _) = bed.spawn(
        host,
        &format!("registry-{}", host.name),
        "docker-registry",
        &["serve".into(), config],
        None,
    )?;
    bed.wait_http(host, &format!("http://127.0.0.1:{REGISTRY_PORT}/v2/"))?;
    Ok(id)
}

/// `poolcast mirror` on `host`:5000 with `upstream` and a hostPath cache at `cache`.
pub fn start_mirror(bed: &Bed, host: &Host, upstream: &Host, cache: &Path) -> Result<ProcId> {
    start_mirror_with(bed, host, upstream, cache, &[])
}

/// [`start_mirror`] with `extra` flags after the others.
pub fn start_mirror_with(
    bed: &Bed,
    host: &Host,
    upstream: &Host,
    cache: &Path,
    extra: &[String],
) -> Result<ProcId> {
    let mut args = vec![
        "mirror".to_owned(),
        "--listen".into(),
        format!("{}:{MIRROR_PORT}", host.ip),
        "--upstream".into(),
        format!("http://{}:{REGISTRY_PORT}", upstream.ip),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    poolcast(bed, host, &host.name, args, "poolcast mirror listening on ")
}

/// `poolcast scheduler` on `host`:65003; `pools_yaml` is its `edgeNodePools` (a YAML sequence).
pub fn start_scheduler(bed: &Bed, host: &Host, pools_yaml: Option<&str>) -> Result<ProcId> {
    let mut args = vec![
        "scheduler".to_owned(),
        "--listen".into(),
        format!("{}:{SCHEDULER_PORT}", host.ip),
        "--secret".into(),
        SECRET.into(),
    ];
    if let Some(yaml) = pools_yaml {
        let path = bed.dir().join(format!("{}.yaml", host.name));
        let indented: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        std::fs::write(&path, format!("edgeNodePools:\n{indented}"))?;
        args.extend(["--config".into(), path.display().to_string()]);
    }
    poolcast(
        bed,
        host,
        &host.name,
        args,
        "poolcast scheduler listening on ",
    )
}

/// How one node's agent runs.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub mirror: Host,
    /// `Some`: p2p with this scheduler; `None`: source mode.
    pub scheduler: Option<Host>,
    pub pool: String,
    /// `--blocksize`; `None`: the agent's default piece size.
    pub blocksize: Option<String>,
    /// More flags, passed as they are.
    pub extra: Vec<String>,
}

/// `poolcast agent` on `host`:65001 (registry API) and :65002 (peers), cache under `cache`.
/// Only where it listens, whom it talks to, its pool, secret and cache are set; every tuning
/// flag is the agent's default unless `spec` names it.
pub fn start_agent(bed: &Bed, host: &Host, spec: &AgentSpec, cache: &Path) -> Result<ProcId> {
    let mut args = vec![
        "agent".to_owned(),
        "--listen".into(),
        format!("{}:{AGENT_PORT}", host.ip),
        "--peer-listen".into(),
        format!("{}:{PEER_PORT}", host.ip),
        "--mirror".into(),
        format!("http://{}:{MIRROR_PORT}", spec.mirror.ip),
        "--node".into(),
        host.name.clone(),
        "--pool".into(),
        spec.pool.clone(),
        "--secret".into(),
        SECRET.into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    if let Some(blocksize) = &spec.blocksize {
        args.extend(["--blocksize".into(), blocksize.clone()]);
    }
    match &spec.scheduler {
        Some(s) => args.extend([
            "--download-pattern".into(),
            "p2p".into(),
            "--scheduler".into(),
            format!("http://{}:{SCHEDULER_PORT}", s.ip),
        ]),
        None => args.extend(["--download-pattern".into(), "source".into()]),
    }
    args.extend(spec.extra.iter().cloned());
    poolcast(bed, host, &host.name, args, "poolcast agent peers on ")
}

/// The sum of every sample of metric `name` (any labels) of the server at `url`, scraped from
/// inside `host`; with `label` (`key="value"`) only the samples carrying it.
pub fn metric(bed: &Bed, host: &Host, url: &str, name: &str, label: Option<&str>) -> Result<f64> {
    let text = bed.http_get(host, &format!("{url}/metrics"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let (base, labels) = sample.split_once('{').unwrap_or((sample, ""));
            (base == name && label.iter().all(|l| labels.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum())
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
