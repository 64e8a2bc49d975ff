//! Bytes from origin, for the dashboard: each pool's mirror counts the blob bytes it fetched
//! from upstream registries (`poolcast_mirror_upstream_bytes_total` on its `/metrics`), and
//! agents name their mirror in their heartbeat (`NodeNote::mirror`). While the dashboard is on,
//! [`read_loop`] reads every mirror the node book names each [`READ_EVERY`], all at once, each
//! within [`READ_TIMEOUT`], and keeps the last reading; `GET /api/status` only looks at what
//! was kept, so it never waits on a mirror, and nothing here touches the registry or its
//! decisions. A mirror that could not be read (or not yet) is unknown, with the reason.

use crate::server::AppState;
use actix_web::web;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The counter read.
pub(crate) const METRIC: &str = "poolcast_mirror_upstream_bytes_total";
/// How often every mirror is read.
pub(crate) const READ_EVERY: Duration = Duration::from_secs(5);
/// How long one read may take, connecting included.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Most mirrors read (one per pool, normally); the rest are unknown.
pub(crate) const MAX_MIRRORS: usize = 256;
/// Reads under way at once.
const PARALLEL: usize = 32;
/// Most of a `/metrics` answer read (a mirror's is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// One mirror's last reading.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// Its upstream bytes, or why they are unknown.
    pub bytes: Result<u64, String>,
    pub at: Instant,
}

/// The last reading of each mirror named when it was taken.
pub(crate) type Readings = HashMap<String, Reading>;

/// Reads the named mirrors every [`READ_EVERY`] until aborted.
pub(crate) async fn read_loop(state: web::Data<AppState>) {
    let http = match reqwest::Client::builder()
        .timeout(READ_TIMEOUT)
        .connect_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(nodepool::wire::CLIENT_POOL_IDLE)
        .user_agent(concat!("poolcast-scheduler/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client: the dashboard's bytes from origin stay unknown");
            return;
        }
    };
    let parallel = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let named = named_mirrors(&state);
        let mut reads = tokio::task::JoinSet::new();
        for base in named.into_iter().take(MAX_MIRRORS) {
            let (http, parallel) = (http.clone(), parallel.clone());
            reads.spawn(async move {
                let _permit = parallel.acquire_owned().await;
                let bytes = read(&http, &base).await;
                (base, bytes)
            });
        }
        let mut readings = Readings::new();
        while let Some(done) = reads.join_next().await {
            if let Ok((base, bytes)) = done {
                let at = crate::server::clock();
                readings.insert(base, Reading { bytes, at });
            }
        }
        *state.mirror_readings.lock() = readings;
    }
}

/// The distinct mirrors the node book names, in order.
fn named_mirrors(state: &AppState) -> BTreeSet<String> {
    let book = state.nodes.lock();
    book.iter().filter_map(|(_, r)| r.mirror.clone()).collect()
}

/// `METRIC` from `<base>/metrics`, within [`READ_TIMEOUT`]; the error says why briefly (it is
/// shown on the dashboard, so it names no more than the failure's kind).
async fn read(http: &reqwest::Client, base: &str) -> Result<u64, String> {
    let url = format!("{base}/metrics");
    let fetch = async {
        let mut resp = http.get(&url).send().await.map_err(|e| failure(&e))?;
        if !resp.status().is_success() {
            return Err(format!("/metrics answered {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| failure(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err("/metrics is larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        upstream_bytes(&String::from_utf8_lossy(&body))
            .ok_or_else(|| format!("no {METRIC} in its /metrics"))
    };
    match tokio::time::timeout(READ_TIMEOUT, fetch).await {
        Ok(read) => read,
        Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
    }
}

fn failure(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", READ_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_body() || e.is_decode() {
        "reading /metrics failed".into()
    } else {
        "request failed".into()
    }
}

/// The sum of `METRIC`'s samples in Prometheus or OpenMetrics text; `None` without one.
pub(crate) fn upstream_bytes(text: &str) -> Option<u64> {
    let mut total: Option<u64> = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else {
            rest.starts_with([' ', '\t']).then_some(rest)
        };
        let Some(value) = value.and_then(|v| v.split_whitespace().next()) else {
            continue;
        };
        let Some(n) = value.parse::<u64>().ok().or_else(|| {
            value
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0)
                .map(|f| f as u64)
        }) else {
            continue;
        };
        total = Some(total.unwrap_or(0).saturating_add(n));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_counter_is_read_from_prometheus_and_openmetrics_text() {
        let text = "# HELP poolcast_mirror_upstream_bytes Blob bytes fetched from upstream\n\
                    # TYPE poolcast_mirror_upstream_bytes counter\n\
                    poolcast_mirror_upstream_bytes_total 12345\n\
                    poolcast_mirror_upstream_bytes_total_created 1.7e9\n\
                    poolcast_mirror_upstream_requests_total 9\n\
                    # EOF\n";
        assert_eq!(upstream_bytes(text), Some(12345));
        let labelled = "poolcast_mirror_upstream_bytes_total{registry=\"a b}\"} 10 1700000000\n\
                        poolcast_mirror_upstream_bytes_total{registry=\"c\"} 2.5e1\n";
        assert_eq!(upstream_bytes(labelled), Some(35));
        assert_eq!(
            upstream_bytes("poolcast_mirror_upstream_bytes_total 0\n"),
            Some(0)
        );
        for none in [
            "",
            "# poolcast_mirror_upstream_bytes_total 5\n",
            "poolcast_mirror_served_bytes_total 5\n",
            "poolcast_mirror_upstream_bytes_total NaN\n",
            "poolcast_mirror_upstream_bytes_total -1\n",
        ] {
            assert_eq!(upstream_bytes(none), None, "{none}");
        }
    }

    /// A server that answers every connection with `answer` (after `delay`), on 127.0.0.1.
    async fn serve(answer: &'static str, delay: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_read_gives_the_counter_or_says_briefly_why_not() {
        let http = reqwest::Client::new();
        let ok = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 38\r\nConnection: close\r\n\r\npoolcast_mirror_upstream_bytes_total 7",
            Duration::ZERO,
        )
        .await;
        assert_eq!(read(&http, &ok).await, Ok(7));
        let missing = serve(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            read(&http, &missing).await,
            Err("/metrics answered 404".into())
        );
        let other = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nx_total 1",
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            read(&http, &other).await,
            Err(format!("no {METRIC} in its /metrics"))
        );
        let slow = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(30),
        )
        .await;
        let started = Instant::now();
        assert_eq!(read(&http, &slow).await, Err("no answer within 2s".into()));
        assert!(started.elapsed() < READ_TIMEOUT + Duration::from_secs(1));
        // Nothing listens on a port just freed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        assert_eq!(
            read(&http, &format!("http://127.0.0.1:{port}")).await,
            Err("could not connect".into())
        );
    }
}
