//! Preheat jobs: pull images into a pool's nodes before a rollout, through the normal P2P path,
//! so the rollout's first pull is served inside the pool.
//!
//! ```text
//!  poolcast preheat / CI           scheduler                         agents of pool P
//!    | POST /api/v2/preheat (signed as P: images, nodes, credentials)
//!    |------------------------------->| resolve manifests through one agent's registry port
//!    |<-------------------------------| job                  GET /v2/<repo>/manifests/<ref>?ns=
//!    | GET /api/v2/preheat/<id>       |  each chosen agent:  GET /v2/<repo>/blobs/<digest>?ns=
//!    |------------------------------->|  (agent: pieces from peers, the rest from the mirror,
//!    |<-------------------------------|   as for containerd), bytes counted per node
//! ```
//!
//! The scheduler asks each chosen node's registry port (the address its heartbeat reports) for
//! every blob, as containerd would: that is the agent's normal download, P2P included, and it
//! leaves the blob in the node's cache. The user's credentials go along as a pull's would, so
//! the upstream registry decides, per repository, what may be warmed; they live in the job's
//! task only while it runs and are never shown.

pub(crate) mod http;
pub mod image;
mod run;

use crate::error::{Error, Result};
use image::{Credentials, ImageRef};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Most images in one job.
pub const MAX_IMAGES: usize = 100;
/// Jobs remembered (finished ones go first); past it, with all running, a new one is refused.
pub const MAX_JOBS: usize = 64;

/// How many nodes of the pool pull: every live one, or that many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeCount {
    #[default]
    All,
    Some(u32),
}

impl std::str::FromStr for NodeCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(NodeCount::All);
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(NodeCount::Some(n)),
            _ => Err(format!(
                "`{s}`: expected `all` or a number of nodes above 0"
            )),
        }
    }
}

impl Serialize for NodeCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NodeCount::All => s.serialize_str("all"),
            NodeCount::Some(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for NodeCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Word(String),
            Count(u32),
        }
        match Wire::deserialize(d)? {
            Wire::Word(w) => w.parse().map_err(serde::de::Error::custom),
            Wire::Count(0) => Err(serde::de::Error::custom("nodes must be above 0")),
            Wire::Count(n) => Ok(NodeCount::Some(n)),
        }
    }
}

/// `POST /api/v2/preheat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreheatRequest {
    /// The pool whose nodes pull; must be the pool the request is signed for.
    pub pool: String,
    /// Full references; each one's registry host is the upstream, as `?ns=` names it.
    pub images: Vec<String>,
    #[serde(default)]
    pub nodes: NodeCount,
    /// `os/arch[/variant]`: only that platform of an index; none: every platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Registry host -> credentials, as in a docker/skopeo auth file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, Credentials>,
}

impl PreheatRequest {
    /// The parsed images, or the first bad one.
    pub fn check(&self) -> Result<Vec<ImageRef>> {
        crate::api::check_name("pool", &self.pool)?;
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Err(Error::invalid(
                "images",
                format!("1 to {MAX_IMAGES} images, not {}", self.images.len()),
            ));
        }
        if let Some(p) = &self.platform {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                return Err(Error::invalid(
                    "platform",
                    format!("`{p}` is not os/arch[/variant]"),
                ));
            }
        }
        self.images.iter().map(|i| ImageRef::parse(i)).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Resolving,
    Pulling,
    Done,
    Failed,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image: String,
    pub blobs: usize,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeJobView {
    pub id: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub blobs_done: usize,
    pub blobs_total: usize,
    pub state: JobState,
    pub error: Option<String>,
}

/// A job as `GET /api/v2/preheat/<id>` and the dashboard show it (never its credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub pool: String,
    pub state: JobState,
    pub images: Vec<ImageView>,
    pub nodes: Vec<NodeJobView>,
    /// What failed, one line; `None` unless `failed`.
    pub error: Option<String>,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
}

impl JobView {
    pub fn bytes_done(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes_done).sum()
    }

    pub fn bytes_total(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes_total).sum()
    }
}

/// The jobs remembered, newest last.
#[derive(Debug, Default)]
pub struct Jobs {
    next: u64,
    jobs: VecDeque<Arc<Mutex<JobView>>>,
}

impl Jobs {
    /// Adds a job for `pool`; the oldest finished one goes when full.
    fn add(&mut self, pool: &str, images: &[ImageRef]) -> Result<Arc<Mutex<JobView>>> {
        if self.jobs.len() >= MAX_JOBS {
            let Some(i) = self.jobs.iter().position(|j| j.lock().state.finished()) else {
                return Err(Error::Capacity("too many preheat jobs running"));
            };
            self.jobs.remove(i);
        }
        self.next += 1;
        let job = Arc::new(Mutex::new(JobView {
            id: format!("{}-{}", nodepool::signed::unix_millis_now(), self.next),
            pool: pool.to_string(),
            state: JobState::Resolving,
            images: images
                .iter()
                .map(|i| ImageView {
                    image: i.to_string(),
                    blobs: 0,
                    bytes: 0,
                    error: None,
                })
                .collect(),
            nodes: Vec::new(),
            error: None,
            started_unix_ms: nodepool::signed::unix_millis_now(),
            finished_unix_ms: None,
        }));
        self.jobs.push_back(job.clone());
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<JobView> {
        self.jobs
            .iter()
            .map(|j| j.lock())
            .find(|j| j.id == id)
            .map(|j| j.clone())
    }

    /// Every job, newest first.
    pub fn views(&self) -> Vec<JobView> {
        self.jobs.iter().rev().map(|j| j.lock().clone()).collect()
    }
}
