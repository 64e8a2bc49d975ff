//! The usual arrangement of a P2P test: a registry holding one pushed image, the pool mirror in
//! front of it, a scheduler, and agents on their own loopback addresses, each a simulated node.
//!
//! ```text
//!   TestImage --push--> Registry <--upstream-- Mirror <--pieces nobody has-- Agent 127.0.0.2
//!                                                 ^                            ^  pieces
//!                                   Scheduler <---+---- join/fresh/heartbeat - Agent 127.0.0.3 ...
//!   skopeo --pull--> Agent i
//! ```

use std::path::PathBuf;
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::agent::{Agent, AgentOpts, PEER_BYTES};
use super::fixture::{Fixture, REPO, TAG};
use super::image::{skopeo_pull, verify_pulled, TestImage};
use super::scheduler::Scheduler;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
/// Two layers of 6 MiB and 2 MiB (plus the config): 9 pieces, pulled in seconds.
pub const SMALL_IMAGE: &[usize] = &[6 * MIB, 2 * MIB];

/// What a bed runs besides the registry and the mirror.
pub struct BedSpec<'a> {
    pub layers: &'a [usize],
    pub seed: u64,
    /// Run a scheduler, and agents in `p2p` mode; `false`: no scheduler, agents in `source` mode.
    pub scheduler: bool,
    /// `edgeNodePools` of the scheduler's config, as a YAML sequence; `None`: no config file.
    pub pools_yaml: Option<&'a str>,
    /// The pool secret, given to the scheduler and every agent.
    pub secret: Option<&'a str>,
    pub scheduler_args: &'a [&'a str],
    /// `Some((user, pass))`: the registry demands these credentials (htpasswd).
    pub auth: Option<(&'a str, &'a str)>,
}

impl Default for BedSpec<'_> {
    fn default() -> Self {
        BedSpec {
            layers: SMALL_IMAGE,
            seed: 1,
            scheduler: true,
            pools_yaml: None,
            secret: None,
            scheduler_args: &[],
            auth: None,
        }
    }
}

pub struct P2pBed {
    // Drop order is declaration order: agents before the scheduler and the mirror they use.
    pub agents: Vec<Agent>,
    pub scheduler: Option<Scheduler>,
    pub fx: Fixture,
    secret: Option<String>,
    started: usize,
}

impl P2pBed {
    /// The registry with the image pushed as `pool/app:v1`, the mirror, the scheduler; no agents.
    pub fn start(spec: BedSpec) -> P2pBed {
        let fx = match spec.auth {
            Some((user, pass)) => Fixture::with_auth(user, pass, spec.layers, spec.seed),
            None => Fixture::new(spec.layers, spec.seed, &[]),
        };
        let scheduler = spec.scheduler.then(|| match spec.pools_yaml {
            Some(yaml) => Scheduler::with_pools(yaml, spec.secret, spec.scheduler_args),
            None => {
                let mut args: Vec<&str> = Vec::new();
                if let Some(secret) = spec.secret {
                    args.extend(["--secret", secret]);
                }
                args.extend_from_slice(spec.scheduler_args);
                Scheduler::start(&args)
            }
        });
        P2pBed {
            agents: Vec::new(),
            scheduler,
            fx,
            secret: spec.secret.map(str::to_owned),
            started: 0,
        }
    }

    /// Agents in `source` mode (no scheduler) around a mirror the caller built.
    pub fn around(fx: Fixture) -> P2pBed {
        P2pBed {
            agents: Vec::new(),
            scheduler: None,
            fx,
            secret: None,
            started: 0,
        }
    }

    /// Options for the next agent of `pool`: the next loopback address (127.0.0.2, .3, ...), node
    /// name `node-N`, its own cache dir, the defaults (pieces of 64 KiB for the test images)
    /// and `extra`.
    pub fn agent_opts(&mut self, pool: &str, extra: &[&str]) -> AgentOpts {
        self.started += 1;
        let n = self.started;
        assert!(n < 250, "out of loopback addresses");
        let extra_args = extra.iter().map(|s| s.to_string()).collect();
        AgentOpts {
            ip: format!("127.0.0.{}", n + 1),
            mirror_url: self.fx.mirror.url().to_owned(),
            scheduler_url: self.scheduler.as_ref().map(|s| s.url().to_owned()),
            node: format!("node-{n}"),
            pool: pool.to_owned(),
            secret: self.secret.clone(),
            cache_dir: self.fx.fresh_dir(&format!("node-{n}-cache")),
            extra_args,
        }
    }

    /// Starts one agent of `pool`; returns its index in `agents`.
    pub fn add_agent(&mut self, pool: &str, extra: &[&str]) -> usize {
        let opts = self.agent_opts(pool, extra);
        self.agents.push(Agent::start(opts));
        self.agents.len() - 1
    }

    /// Starts `n` agents of `pool`; returns their indices.
    pub fn add_agents(&mut self, n: usize, pool: &str, extra: &[&str]) -> Vec<usize> {
        (0..n).map(|_| self.add_agent(pool, extra)).collect()
    }

    pub fn scheduler(&self) -> &Scheduler {
        self.scheduler.as_ref().expect("this bed runs no scheduler")
    }

    pub fn scheduler_mut(&mut self) -> &mut Scheduler {
        self.scheduler.as_mut().expect("this bed runs no scheduler")
    }

    /// `AGENT_HOST/pool/app:v1`, what skopeo pulls through agent `i`.
    pub fn source(&self, i: usize) -> String {
        format!("{}/{REPO}:{TAG}", self.agents[i].host())
    }

    /// `pool/app:v1`
    pub fn image_ref(&self) -> String {
        format!("{REPO}:{TAG}")
    }

    /// Bytes of one copy of the image's blobs (config and layers).
    pub fn one_copy(&self) -> u64 {
        self.fx.image.total_blob_bytes()
    }

    /// skopeo-pulls through agent `i` and checks the image digest for digest.
    pub fn pull(&self, i: usize) -> Duration {
        self.pull_all(&[i])[0]
    }

    /// skopeo-pulls through agent `i` as `creds` (anonymous when `None`), unchecked: the output
    /// and where the image went, for tests that expect a refusal or verify themselves.
    pub fn pull_as(&self, i: usize, creds: Option<(&str, &str)>) -> (Output, PathBuf) {
        let out = self
            .fx
            .fresh_dir(&format!("pull-{}", self.agents[i].node()));
        let output = skopeo_pull(&self.source(i), &out, creds).expect("running skopeo");
        (output, out)
    }

    /// Pulls through each of `agents` at once and checks every result; returns the durations.
    pub fn pull_all(&self, agents: &[usize]) -> Vec<Duration> {
        self.start_pulls(agents).finish(&self.fx.image)
    }

    /// Starts a skopeo pull through each of `agents`, each on its own thread, and returns at once
    /// so the test can break things while they run. [`Pulls::finish`] waits and verifies.
    pub fn start_pulls(&self, agents: &[usize]) -> Pulls {
        let pulls = agents
            .iter()
            .map(|&agent| {
                let source = self.source(agent);
                let out = self
                    .fx
                    .fresh_dir(&format!("pull-{}", self.agents[agent].node()));
                let (src, dst) = (source.clone(), out.clone());
                let handle = std::thread::spawn(move || {
                    let started = Instant::now();
                    (skopeo_pull(&src, &dst, None), started.elapsed())
                });
                Pull {
                    agent,
                    source,
                    out,
                    handle,
                }
            })
            .collect();
        Pulls { pulls }
    }

    /// The sum of metric `name` over `agents`.
    pub fn sum(&self, agents: &[usize], name: &str) -> f64 {
        agents.iter().map(|&i| self.agents[i].metric(name)).sum()
    }

    /// `poolcast_agent_mirror_pieces_total{reason}` summed over `agents`.
    pub fn mirror_pieces(&self, agents: &[usize], reason: &str) -> f64 {
        agents
            .iter()
            .map(|&i| self.agents[i].mirror_pieces(reason))
            .sum()
    }

    /// Pieces of every blob of the image (config and layers) at the agents' default layout.
    pub fn image_pieces(&self) -> u32 {
        let image = &self.fx.image;
        std::iter::once(&image.config)
            .chain(&image.layers)
            .map(|b| {
                nodepool::layout::PieceLayout::auto(b.size)
                    .expect("layout")
                    .count()
            })
            .sum()
    }

    /// `poolcast_agent_peer_bytes_total{direction}` summed over `agents`.
    pub fn peer_bytes(&self, agents: &[usize], direction: &str) -> f64 {
        agents
            .iter()
            .map(|&i| self.agents[i].peer_bytes(direction))
            .sum()
    }

    /// Every agent's `name`, as `node-1=V node-2=V ...`, for messages.
    pub fn per_agent(&self, agents: &[usize], name: &str) -> String {
        agents
            .iter()
            .map(|&i| {
                let v = if name == PEER_BYTES {
                    format!(
                        "in {} out {}",
                        self.agents[i].peer_bytes("in"),
                        self.agents[i].peer_bytes("out")
                    )
                } else {
                    self.agents[i].metric(name).to_string()
                };
                format!("{}={v}", self.agents[i].node())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

struct Pull {
    agent: usize,
    source: String,
    out: PathBuf,
    handle: JoinHandle<(Result<Output>, Duration)>,
}

/// skopeo pulls under way.
pub struct Pulls {
    pulls: Vec<Pull>,
}

impl Pulls {
    /// How many pulls have not finished yet.
    pub fn running(&self) -> usize {
        self.pulls
            .iter()
            .filter(|p| !p.handle.is_finished())
            .count()
    }

    /// Waits for every pull and checks each is `image`, digest for digest; panics listing every
    /// failure. Returns each pull's duration, in the order the pulls were started.
    pub fn finish(self, image: &TestImage) -> Vec<Duration> {
        let mut failures = Vec::new();
        let mut durations = Vec::new();
        for pull in self.pulls {
            let (outcome, took) = match pull.handle.join() {
                Ok(r) => r,
                Err(_) => {
                    failures.push(format!("agent {}: pull thread panicked", pull.agent));
                    continue;
                }
            };
            durations.push(took);
            let checked = outcome.and_then(|o| {
                ensure!(
                    o.status.success(),
                    "skopeo failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                verify_pulled(&pull.out, image)
            });
            match checked {
                Ok(()) => eprintln!("pull of {} verified in {took:.1?}", pull.source),
                Err(e) => failures.push(format!(
                    "agent {} ({}), after {took:.1?}: {e:#}",
                    pull.agent, pull.source
                )),
            }
        }
        assert!(
            failures.is_empty(),
            "pulls failed:\n{}",
            failures.join("\n")
        );
        durations
    }
}
