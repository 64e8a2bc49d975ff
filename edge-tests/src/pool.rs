//! One node pool on a bed, the arrangement most scenarios use:
//!
//! ```text
//!   origin 10.77.0.2 (docker-registry, image pushed as edge/app:v1)
//!        ^ upstream
//!   mirror 10.77.0.3 <── pieces nobody has ── agents n1..nN 10.77.1.1.. <── skopeo (same netns)
//!                                                  ^ join, fresh
//!                                   scheduler 10.77.0.4 (p2p only)
//! ```
//!
//! Every link is shaped to the same rate. Pulls run skopeo inside each node's namespace against
//! its own agent, on threads that hold no reference to the bed, so a failing test still drops
//! the bed (and cleans up) at once.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::bed::{Bed, Host, ProcId};
use crate::image::{self, skopeo_pull, TestImage};
use crate::parts::{self, AgentSpec, AGENT_PORT, MIRROR_PORT, SCHEDULER_PORT};

pub const REPO: &str = "edge/app";
pub const TAG: &str = "v1";
pub const MIB: usize = 1 << 20;

pub const UPSTREAM_BYTES: &str = "poolcast_mirror_upstream_bytes_total";
pub const MIRROR_SERVED: &str = "poolcast_mirror_served_bytes_total";
pub const AGENT_SOURCE_BYTES: &str = "poolcast_agent_source_bytes_total";
pub const AGENT_PEER_BYTES: &str = "poolcast_agent_peer_bytes_total";

pub struct PoolSpec {
    pub nodes: usize,
    /// Every link's rate, both directions.
    pub mbit: u32,
    pub layers: Vec<usize>,
    pub seed: u64,
    /// Run a scheduler and agents in p2p mode; `false`: source mode, no scheduler.
    pub p2p: bool,
    pub blocksize: String,
    pub agent_extra: Vec<String>,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            nodes: 5,
            mbit: 100,
            layers: vec![12 * MIB, 4 * MIB],
            seed: 1,
            p2p: true,
            blocksize: "1MiB".into(),
            agent_extra: vec![],
        }
    }
}

pub struct Node {
    pub host: Host,
    pub agent: Option<ProcId>,
}

pub struct EdgePool {
    pub bed: Bed,
    pub image: TestImage,
    pub origin: Host,
    pub registry: Option<ProcId>,
    pub mirror: Host,
    pub mirror_proc: Option<ProcId>,
    pub mirror_cache: PathBuf,
    pub scheduler: Option<Host>,
    pub scheduler_proc: Option<ProcId>,
    pub nodes: Vec<Node>,
}

impl EdgePool {
    /// Builds the bed, pushes the image to the origin, starts mirror, scheduler and agents.
    pub fn start(spec: PoolSpec) -> Result<EdgePool> {
        let bed = Bed::new()?;
        crate::bed::require_tools(&["docker-registry", "skopeo"])?;
        let origin = bed.add_host("origin", Ipv4Addr::new(10, 77, 0, 2), spec.mbit)?;
        let mirror = bed.add_host("mirror", Ipv4Addr::new(10, 77, 0, 3), spec.mbit)?;
        let scheduler = if spec.p2p {
            Some(bed.add_host("scheduler", Ipv4Addr::new(10, 77, 0, 4), spec.mbit)?)
        } else {
            None
        };
        let hosts = (1..=spec.nodes)
            .map(|i| {
                bed.add_host(
                    &format!("n{i}"),
                    Ipv4Addr::new(10, 77, 1, i as u8),
                    spec.mbit,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let image = TestImage::build(&bed.fresh_dir("image"), &spec.layers, spec.seed)?;
        let registry = parts::start_registry(&bed, &origin, &bed.fresh_dir("registry"))?;
        image::push(&image, &bed, &origin, &format!("{REPO}:{TAG}"))?;
        let mirror_cache = bed.fresh_dir("mirror-cache");
        let mirror_proc = parts::start_mirror(&bed, &mirror, &origin, &mirror_cache)?;
        let scheduler_proc = match &scheduler {
            Some(s) => Some(parts::start_scheduler(&bed, s, None)?),
            None => None,
        };
        let agent_spec = AgentSpec {
            mirror: mirror.clone(),
            scheduler: scheduler.clone(),
            pool: "pool-a".into(),
            blocksize: Some(spec.blocksize.clone()),
            extra: spec.agent_extra.clone(),
        };
        let mut nodes = Vec::new();
        for host in hosts {
            let cache = bed.fresh_dir(&format!("{}-cache", host.name));
            let agent = parts::start_agent(&bed, &host, &agent_spec, &cache)?;
            nodes.push(Node {
                host,
                agent: Some(agent),
            });
        }
        Ok(EdgePool {
            bed,
            image,
            origin,
            registry: Some(registry),
            mirror,
            mirror_proc: Some(mirror_proc),
            mirror_cache,
            scheduler,
            scheduler_proc,
            nodes,
        })
    }

    /// `10.77.1.i:65001/edge/app:v1`: what node `i` pulls through its own agent.
    pub fn by_tag(&self, i: usize) -> String {
        format!("{}:{AGENT_PORT}/{REPO}:{TAG}", self.nodes[i].host.ip)
    }

    /// `10.77.1.i:65001/edge/app@sha256:...`
    pub fn by_digest(&self, i: usize) -> String {
        format!(
            "{}:{AGENT_PORT}/{REPO}@{}",
            self.nodes[i].host.ip, self.image.manifest_digest
        )
    }

    pub fn mirror_url(&self) -> String {
        format!("http://{}:{MIRROR_PORT}", self.mirror.ip)
    }

    pub fn scheduler_url(&self) -> Option<String> {
        self.scheduler
            .as_ref()
            .map(|s| format!("http://{}:{SCHEDULER_PORT}", s.ip))
    }

    pub fn agent_url(&self, i: usize) -> String {
        format!("http://{}:{AGENT_PORT}", self.nodes[i].host.ip)
    }

    /// A mirror metric, scraped from the mirror's own namespace.
    pub fn mirror_metric(&self, name: &str) -> Result<f64> {
        parts::metric(&self.bed, &self.mirror, &self.mirror_url(), name, None)
    }

    /// An agent metric of node `i` (optionally only samples with `label`, `key="value"`).
    pub fn agent_metric(&self, i: usize, name: &str, label: Option<&str>) -> Result<f64> {
        parts::metric(
            &self.bed,
            &self.nodes[i].host,
            &self.agent_url(i),
            name,
            label,
        )
    }

    /// Sum of an agent metric over `nodes`.
    pub fn agents_metric(&self, nodes: &[usize], name: &str, label: Option<&str>) -> Result<f64> {
        nodes
            .iter()
            .map(|&i| self.agent_metric(i, name, label))
            .sum()
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(id) = self.nodes[i].agent.take() {
            self.bed.kill(id);
        }
    }

    pub fn kill_scheduler(&mut self) {
        if let Some(id) = self.scheduler_proc.take() {
            self.bed.kill(id);
        }
    }

    pub fn stop_registry(&mut self) {
        if let Some(id) = self.registry.take() {
            self.bed.kill(id);
        }
    }

    /// Kills the mirror and starts it again on the same address with the same hostPath cache.
    pub fn restart_mirror(&mut self) -> Result<()> {
        if let Some(id) = self.mirror_proc.take() {
            self.bed.kill(id);
        }
        let mut last = None;
        // the port was ours a moment ago; a bind race is retried
        for _ in 0..20 {
            match parts::start_mirror(&self.bed, &self.mirror, &self.origin, &self.mirror_cache) {
                Ok(id) => {
                    self.mirror_proc = Some(id);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last.unwrap_or_else(|| anyhow!("mirror did not restart")))
    }

    /// Starts a skopeo pull of `sources[k]` inside node `nodes[k]`, each on its own thread.
    pub fn start_pulls(&self, nodes: &[usize], source: impl Fn(usize) -> String) -> Pulls {
        let pulls = nodes
            .iter()
            .map(|&i| {
                let host = self.nodes[i].host.clone();
                let src = source(i);
                let out = self
                    .bed
                    .fresh_dir(&format!("pull-{}-{}", host.name, unique()));
                let dst = out.clone();
                let handle = std::thread::spawn(move || {
                    let started = Instant::now();
                    skopeo_pull(&host, &src, &dst).map(|()| started.elapsed())
                });
                Pull {
                    node: i,
                    out,
                    handle,
                }
            })
            .collect();
        Pulls { pulls }
    }

    /// Pulls by tag through every node at once; fails listing each failed or wrong pull.
    pub fn rollout(&self) -> Result<Vec<Duration>> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let outcomes = self
            .start_pulls(&all, |i| self.by_tag(i))
            .finish(&self.image);
        all_ok(outcomes)
    }
}

fn unique() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Pull {
    node: usize,
    out: PathBuf,
    handle: JoinHandle<Result<Duration>>,
}

/// skopeo pulls under way.
pub struct Pulls {
    pulls: Vec<Pull>,
}

impl Pulls {
    /// How many have not finished.
    pub fn running(&self) -> usize {
        self.pulls
            .iter()
            .filter(|p| !p.handle.is_finished())
            .count()
    }

    /// Waits for every pull and verifies each against `image`: (node, duration or error).
    pub fn finish(self, image: &TestImage) -> Vec<(usize, Result<Duration>)> {
        self.pulls
            .into_iter()
            .map(|p| {
                let outcome = p
                    .handle
                    .join()
                    .map_err(|_| anyhow!("pull thread panicked"))
                    .and_then(|r| r)
                    .and_then(|took| image.verify(&p.out).map(|()| took));
                (p.node, outcome)
            })
            .collect()
    }
}

/// The durations when every outcome is good; otherwise an error listing the bad ones.
pub fn all_ok(outcomes: Vec<(usize, Result<Duration>)>) -> Result<Vec<Duration>> {
    let mut failures = Vec::new();
    let mut durations = Vec::new();
    for (node, outcome) in outcomes {
        match outcome {
            Ok(d) => durations.push(d),
            Err(e) => failures.push(format!("node {}: {e:#}", node + 1)),
        }
    }
    if failures.is_empty() {
        Ok(durations)
    } else {
        Err(anyhow!("pulls failed:\n{}", failures.join("\n")))
    }
}
