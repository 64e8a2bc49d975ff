//! The scheduler, for one download: who else takes part (joined every `intervalMs` while the
//! download runs), and which fresh pieces this node takes from the mirror first (a long-poll
//! each time the node asks). A scheduler that fails degrades the blob to the mirror, never
//! fails it.

use super::Input;
use crate::download::Download;
use crate::state::AgentState;
use scheduler::api::TaskInfo;
use scheduler::api_v2::{FreshRequest, JoinRequest, MemberInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bounds on how often a download joins again, whatever the scheduler asks.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(5);
/// The wait before joining again after the scheduler failed.
const RETRY: Duration = Duration::from_secs(1);

/// The scheduler's answer to a join.
pub struct Members {
    pub members: Vec<MemberInfo>,
    pub go_source: bool,
    pub reachable_pools: Vec<String>,
}

/// The scheduler's answer to an ask for fresh pieces.
pub struct Fresh {
    pub pieces: Vec<u32>,
    pub all_released: bool,
    /// The node may start its next blob (`allLeased`).
    pub move_on: bool,
}

/// Joins the blob's members every `intervalMs` until aborted (the download ended).
pub fn join_loop(
    state: Arc<AgentState>,
    d: Arc<Download>,
    tx: mpsc::UnboundedSender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(client) = state.scheduler.as_ref() else {
            return;
        };
        let task = TaskInfo {
            digest: d.spec.digest.to_string(),
            size: d.layout.size(),
            piece_size: d.layout.piece_size(),
        };
        loop {
            let req = JoinRequest {
                peer: state.peer_ref(),
                task: task.clone(),
                held: d.held(),
                done: false,
            };
            let (answer, wait) = match client.join(&req).await {
                Ok(r) => (
                    Ok(Members {
                        members: r.members,
                        go_source: r.go_source,
                        reachable_pools: r.reachable_pools,
                    }),
                    Duration::from_millis(r.interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL),
                ),
                Err(e) => (Err(e.to_string()), RETRY),
            };
            if tx
                .send(Input::Members {
                    task: d.key(),
                    answer,
                })
                .is_err()
            {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    })
}

/// Waits (long-polls) for the next lease. Never cut short by the agent: a grant on its way
/// back would be lost, and its pieces wait for the lease to lapse.
pub fn poll(
    state: Arc<AgentState>,
    key: u64,
    digest: String,
    tx: mpsc::UnboundedSender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let answer = ask(&state, digest, Vec::new(), true).await;
        let _ = tx.send(Input::Fresh { task: key, answer });
    })
}

/// Reports leased pieces completed, without waiting: a lease freed here goes to whoever waits.
pub fn report(
    state: Arc<AgentState>,
    key: u64,
    digest: String,
    completed: Vec<u32>,
    tx: mpsc::UnboundedSender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let answer = ask(&state, digest, completed.clone(), false).await;
        if let Err(e) = &answer {
            tracing::debug!(task = key, error = %e, "reporting completed leases failed");
        }
        let _ = tx.send(Input::Reported {
            task: key,
            completed: answer.is_err().then_some(completed),
        });
    })
}

async fn ask(
    state: &AgentState,
    digest: String,
    completed: Vec<u32>,
    wait: bool,
) -> Result<Fresh, String> {
    let Some(client) = state.scheduler.as_ref() else {
        return Err("no scheduler".into());
    };
    let req = FreshRequest {
        peer: state.peer_ref(),
        digest,
        completed,
        wait,
    };
    client
        .fresh(&req)
        .await
        .map(|r| Fresh {
            pieces: r.pieces,
            all_released: r.all_released,
            move_on: r.move_on,
        })
        .map_err(|e| e.to_string())
}
