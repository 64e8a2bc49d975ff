//! A real scheduler bound to 127.0.0.1:0, for the API tests.

#![allow(dead_code)] // each test file uses its own part

use nodepool::{PoolSecret, PoolSpec, SchedulerConfig};
use scheduler::{Error, Metrics, SchedulerClient, SchedulerServer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub const SECRET: &str = "pool secret";

pub struct Running {
    pub url: String,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub async fn start(config: SchedulerConfig) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let metrics = Arc::new(Metrics::new());
        let server = SchedulerServer::new(&config, metrics.clone()).expect("server");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = rx.await;
        }));
        Running {
            url,
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }

    /// What `GET /metrics` answers.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A client of `pool`, with that pool's key derived from `secret`, as an agent has it.
    pub fn client(&self, secret: &str, pool: &str) -> SchedulerClient {
        SchedulerClient::new(
            &self.url,
            nodepool::keys::pool_key(&PoolSecret::new(secret), pool),
            pool.into(),
            Duration::from_secs(10),
        )
        .expect("client")
    }

    /// A v2 signature for POSTing `body` to `path` here, as an agent of `pool` with `key`.
    pub fn sign(
        &self,
        key: &PoolSecret,
        pool: &str,
        path: &str,
        body: &[u8],
        millis: u64,
    ) -> String {
        let host = self.url.trim_start_matches("http://");
        let parts = nodepool::signed::RequestParts {
            method: "POST",
            host,
            path_and_query: path,
            body,
        };
        nodepool::signed::sign(key, &parts, pool, millis, nodepool::signed::fresh_nonce())
    }
}

pub fn config(secret: &str, pools: Vec<PoolSpec>) -> SchedulerConfig {
    SchedulerConfig {
        listen: "127.0.0.1:0".into(),
        secret: secret.into(),
        edge_node_pools: pools,
        ..SchedulerConfig::default()
    }
}

/// Pools `a` and `b` connected (declared by `a` only), and `edge` without P2P.
pub fn a_b_and_edge() -> Vec<PoolSpec> {
    vec![
        PoolSpec {
            id: "a".into(),
            connected_pools: vec!["b".into()],
            ..PoolSpec::default()
        },
        PoolSpec {
            id: "edge".into(),
            inter_connectivity: false,
            ..PoolSpec::default()
        },
    ]
}

pub fn status_of(e: Error) -> u16 {
    match e {
        Error::Status { status, .. } => status,
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}
