//! Running one preheat job: choose the nodes, resolve the images through one of them, then have
//! every chosen node read every blob through its registry port, counting bytes per node.

use super::image::{Credentials, ImageRef, RegistryClient, Resolved};
use super::{JobState, JobView, Jobs, NodeCount, NodeJobView, PreheatRequest};
use crate::error::{Error, Result};
use crate::nodes::NodeBook;
use crate::registry::PeerRegistry;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nodes pulling at once in one job; the rest wait their turn.
const NODES_AT_ONCE: usize = 32;
/// A node's registry port that sends no data for this long fails that node.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A chosen node: its name and registry port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub id: String,
    pub registry: String,
}

/// Live nodes of `pool` that report a registry port, by name; the first `count` of them.
pub(crate) fn choose(
    registry: &PeerRegistry,
    book: &NodeBook,
    pool: &str,
    count: NodeCount,
    now: Instant,
) -> Vec<Target> {
    let mut out: Vec<Target> = registry
        .peer_views(now)
        .into_iter()
        .filter(|p| p.pool == pool)
        .filter_map(|p| {
            let registry = book.get(&p.id)?.registry.clone()?;
            Some(Target { id: p.id, registry })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    if let NodeCount::Some(n) = count {
        out.truncate(n as usize);
    }
    out
}

/// Creates the job and starts it; returns its first view.
pub(crate) fn start(
    jobs: &Mutex<Jobs>,
    req: PreheatRequest,
    images: Vec<ImageRef>,
    targets: Vec<Target>,
) -> Result<JobView> {
    if targets.is_empty() {
        return Err(Error::invalid(
            "pool",
            format!(
                "no live node of pool `{}` reports its registry port (agents report it in \
                 their heartbeat; older agents do not)",
                req.pool
            ),
        ));
    }
    let job = jobs.lock().add(&req.pool, &images)?;
    {
        let mut j = job.lock();
        j.nodes = targets
            .iter()
            .map(|t| NodeJobView {
                id: t.id.clone(),
                bytes_done: 0,
                bytes_total: 0,
                blobs_done: 0,
                blobs_total: 0,
                state: JobState::Resolving,
                error: None,
            })
            .collect();
    }
    let view = job.lock().clone();
    tracing::info!(job = %view.id, pool = %req.pool, images = images.len(), nodes = targets.len(), "preheat job started");
    tokio::spawn(run(job, req, images, targets));
    Ok(view)
}

fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| Error::Client(e.to_string()))
}

async fn run(
    job: Arc<Mutex<JobView>>,
    req: PreheatRequest,
    images: Vec<ImageRef>,
    targets: Vec<Target>,
) {
    let outcome = pull(&job, &req, &images, &targets).await;
    let mut j = job.lock();
    let failure = outcome.err().map(|e| e.to_string()).or_else(|| {
        let failed: Vec<&str> = j
            .images
            .iter()
            .filter_map(|i| i.error.as_deref())
            .chain(j.nodes.iter().filter_map(|n| n.error.as_deref()))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    });
    j.state = if failure.is_some() {
        JobState::Failed
    } else {
        JobState::Done
    };
    let state = j.state;
    for n in j.nodes.iter_mut().filter(|n| !n.state.finished()) {
        n.state = state;
    }
    j.error = failure;
    j.finished_unix_ms = Some(nodepool::signed::unix_millis_now());
    tracing::info!(job = %j.id, state = ?j.state, error = j.error.as_deref().unwrap_or(""), "preheat job finished");
}

async fn pull(
    job: &Arc<Mutex<JobView>>,
    req: &PreheatRequest,
    images: &[ImageRef],
    targets: &[Target],
) -> Result<()> {
    let http = http()?;
    let resolved = resolve(job, &http, req, images, targets).await;
    if resolved.is_empty() {
        return Ok(()); // every image's error is recorded
    }
    let total: u64 = resolved.iter().map(Resolved::bytes).sum();
    let blobs: usize = resolved.iter().map(|r| r.blobs.len()).sum();
    {
        let mut j = job.lock();
        j.state = JobState::Pulling;
        for n in &mut j.nodes {
            n.bytes_total = total;
            n.blobs_total = blobs;
            n.state = JobState::Pulling;
        }
    }
    let resolved = Arc::new(resolved);
    let limit = Arc::new(tokio::sync::Semaphore::new(NODES_AT_ONCE));
    let mut tasks = Vec::new();
    for (index, target) in targets.iter().cloned().enumerate() {
        let (job, http, resolved, limit) =
            (job.clone(), http.clone(), resolved.clone(), limit.clone());
        let credentials = req.credentials.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(_slot) = limit.acquire_owned().await else {
                return;
            };
            let outcome = pull_on(&job, index, &target, &http, &resolved, &credentials).await;
            let mut j = job.lock();
            if let Some(n) = j.nodes.get_mut(index) {
                match outcome {
                    Ok(()) => n.state = JobState::Done,
                    Err(e) => {
                        n.state = JobState::Failed;
                        n.error = Some(format!("node {} ({}): {e}", target.id, target.registry));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Resolves every image through the first node whose registry port answers; an image that
/// fails records its error and is left out.
async fn resolve(
    job: &Arc<Mutex<JobView>>,
    http: &reqwest::Client,
    req: &PreheatRequest,
    images: &[ImageRef],
    targets: &[Target],
) -> Vec<Resolved> {
    let mut out = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let mut last = None;
        for t in targets {
            let creds = req.credentials.get(&image.registry).cloned();
            let mut client =
                match RegistryClient::new(http.clone(), &format!("http://{}", t.registry), creds) {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
            match client.resolve(image, req.platform.as_deref()).await {
                Ok(r) => {
                    last = None;
                    let mut j = job.lock();
                    if let Some(v) = j.images.get_mut(i) {
                        v.blobs = r.blobs.len();
                        v.bytes = r.bytes();
                    }
                    out.push(r);
                    break;
                }
                // Another node may answer; anything else is the image's own answer.
                Err(e @ Error::Fetch { .. }) => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = last {
            if let Some(v) = job.lock().images.get_mut(i) {
                v.error = Some(e.to_string());
            }
        }
    }
    out
}

async fn pull_on(
    job: &Arc<Mutex<JobView>>,
    index: usize,
    target: &Target,
    http: &reqwest::Client,
    resolved: &[Resolved],
    credentials: &BTreeMap<String, Credentials>,
) -> Result<()> {
    let base = format!("http://{}", target.registry);
    for r in resolved {
        let creds = credentials.get(&r.image.registry).cloned();
        let mut client = RegistryClient::new(http.clone(), &base, creds)?;
        for blob in &r.blobs {
            let progress = |n: u64| {
                if let Some(node) = job.lock().nodes.get_mut(index) {
                    node.bytes_done += n;
                }
            };
            let read = client.read_blob(&r.image, &blob.digest, progress).await?;
            if read != blob.size {
                return Err(Error::Fetch {
                    url: format!("{base}/v2/{}/blobs/{}", r.image.repository, blob.digest),
                    message: format!("{read} bytes read, the manifest says {}", blob.size),
                });
            }
            if let Some(node) = job.lock().nodes.get_mut(index) {
                node.blobs_done += 1;
            }
        }
    }
    Ok(())
}
