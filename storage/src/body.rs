//! Response bodies: byte ranges, file streams, and the rate limit every byte passes through.

use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use std::fs::File;
use std::num::NonZeroU32;
use std::sync::Arc;

pub const CHUNK: usize = 256 * 1024;

/// A `Range: bytes=...` header, before the size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// Parses one byte range. Several ranges, other units and garbage are refused (416).
pub fn parse_range(header: Option<&str>) -> Result<Option<RangeSpec>> {
    let Some(text) = header else { return Ok(None) };
    let invalid = || Error::RangeInvalid {
        range: text.chars().take(64).collect(),
        size: None,
    };
    if text.len() > 100 {
        return Err(invalid());
    }
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
    let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| invalid());
    let range = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => RangeSpec::Suffix(num(b)?),
        (false, true) => RangeSpec::From(num(a)?, None),
        (false, false) => {
            let (start, end) = (num(a)?, num(b)?);
            if start > end {
                return Err(invalid());
            }
            RangeSpec::From(start, Some(end))
        }
        (true, true) => return Err(invalid()),
    };
    Ok(Some(range))
}

impl RangeSpec {
    /// The inclusive byte span within a blob of `size` bytes, or 416.
    pub fn resolve(self, size: u64, text: &str) -> Result<(u64, u64)> {
        let invalid = || Error::RangeInvalid {
            range: text.chars().take(64).collect(),
            size: Some(size),
        };
        match self {
            RangeSpec::From(start, end) if start < size => {
                Ok((start, end.map_or(size - 1, |e| e.min(size - 1))))
            }
            RangeSpec::Suffix(n) if n > 0 && size > 0 => Ok((size.saturating_sub(n), size - 1)),
            _ => Err(invalid()),
        }
    }
}

/// Chunk size for serving cached files: large, so the per-chunk hop to the blocking pool
/// and the socket write are amortised (measured in docs/benchmarks.md).
const FILE_CHUNK: u64 = 1024 * 1024;

/// What part of a blob a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// A `Range` was asked for: the answer is `206 Partial Content`, else `200 OK`.
    pub partial: bool,
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

/// The span of a response for a blob of `size` bytes (416 for a range it cannot serve).
pub fn span(range: Option<RangeSpec>, size: u64, text: &str) -> Result<Span> {
    match range {
        Some(r) => {
            let (start, end) = r.resolve(size, text)?;
            Ok(Span {
                partial: true,
                start,
                end,
            })
        }
        None => Ok(Span {
            partial: false,
            start: 0,
            end: size.saturating_sub(1),
        }),
    }
}

/// The bytes `start..end` (exclusive) of a file, read sequentially in chunks off the runtime.
/// Reading into spare capacity (`read_to_end` on a `take`) skips zero-filling each buffer.
pub fn file_stream(
    file: File,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes>> + 'static {
    use std::io::{Read, Seek, SeekFrom};
    let file = Arc::new(parking_lot::Mutex::new((file, false)));
    futures_util::stream::unfold(start, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return None;
            }
            let len = (end - pos).min(FILE_CHUNK);
            let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                let mut guard = file.lock();
                let (f, positioned) = &mut *guard;
                if !*positioned {
                    f.seek(SeekFrom::Start(pos))?;
                    *positioned = true;
                }
                let mut buf = Vec::with_capacity(len as usize);
                f.take(len).read_to_end(&mut buf)?;
                if buf.len() as u64 != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "cache file shrank while serving",
                    ));
                }
                Ok(Bytes::from(buf))
            })
            .await;
            match read {
                Ok(Ok(bytes)) => Some((Ok(bytes), pos + len)),
                Ok(Err(e)) => Some((Err(Error::Io(e)), end)),
                Err(e) => Some((Err(Error::Transfer(e.to_string())), end)),
            }
        }
    })
}

/// A transfer budget (`ratelimit`, `uploadRate`, ...) that bytes in and out draw from.
pub struct RateLimit(Option<DefaultDirectRateLimiter>);

impl RateLimit {
    /// `bytes_per_second` of 0, or more than the limiter can count, means unlimited.
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = u32::try_from(bytes_per_second)
            .ok()
            .and_then(NonZeroU32::new);
        RateLimit(rate.map(|rate| {
            let burst = NonZeroU32::new((rate.get() / 10).max(CHUNK as u32)).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        }))
    }

    pub async fn take(&self, bytes: usize) {
        let Some(limiter) = &self.0 else { return };
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK);
            if let Some(n32) = NonZeroU32::new(n as u32) {
                // n never exceeds the burst, so capacity is always sufficient.
                let _ = limiter.until_n_ready(n32).await;
            }
            left -= n;
        }
    }
}

/// The response bytes a server holds in memory at once, across all its clients: a body takes
/// a share before it reads each chunk, and keeps the shares of its last [`HELD`] chunks, which
/// may still sit in the connection's write buffer (actix asks for the next chunk only when its
/// buffer has room). A client that stops reading stops asking, so it holds at most those few
/// chunks; once the budget is spent, the next chunk of every body waits, holding nothing,
/// until the send deadline cuts a stalled client or a reader drains. Memory for bodies is then
/// this budget, whatever the number of clients and however they read.
pub struct SendBudget {
    permits: Arc<tokio::sync::Semaphore>,
}

/// Chunks whose shares a body keeps: actix's write buffer (2 MiB) plus the chunk in hand.
const HELD: usize = 3;
/// The share of one chunk: the largest chunk any body here reads.
const SHARE: u32 = FILE_CHUNK as u32;

impl SendBudget {
    /// `bytes` in all (at least one chunk).
    pub fn new(bytes: u64) -> Self {
        let permits = (bytes / u64::from(SHARE)).max(1) as usize;
        SendBudget {
            permits: Arc::new(tokio::sync::Semaphore::new(permits)),
        }
    }

    /// Chunks that could be taken now (for tests and metrics).
    pub fn available_chunks(&self) -> usize {
        self.permits.available_permits()
    }

    /// `body`, each chunk read only once the budget has room for it.
    pub fn wrap<S>(&self, body: S) -> impl Stream<Item = Result<Bytes>> + 'static
    where
        S: Stream<Item = Result<Bytes>> + 'static,
    {
        use std::collections::VecDeque;
        let held: VecDeque<tokio::sync::OwnedSemaphorePermit> = VecDeque::new();
        let state = (Box::pin(body), held, self.permits.clone());
        futures_util::stream::unfold(state, |(mut body, mut held, permits)| async move {
            // Asked again: the writer has room, so the oldest chunk has left its buffer.
            while held.len() >= HELD {
                held.pop_front();
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // Waiting holds nothing: otherwise bodies that wait for each other's
                    // shares would wait forever.
                    held.clear();
                    permits.clone().acquire_owned().await.ok()?
                }
            };
            let item = body.next().await?;
            held.push_back(permit);
            Some((item, (body, held, permits)))
        })
    }
}

/// Counts and rate-limits a body on its way to a client.
pub fn metered(
    body: impl Stream<Item = Result<Bytes>> + 'static,
    limit: Arc<RateLimit>,
    served: Counter,
) -> impl Stream<Item = Result<Bytes>> + 'static {
    body.then(move |chunk| {
        let limit = limit.clone();
        let served = served.clone();
        async move {
            if let Ok(bytes) = &chunk {
                limit.take(bytes.len()).await;
                served.inc_by(bytes.len() as u64);
            }
            chunk
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        let r = |t: &str| parse_range(Some(t));
        assert_eq!(
            r("bytes=10-19").expect("ok"),
            Some(RangeSpec::From(10, Some(19)))
        );
        assert_eq!(r("bytes=5-").expect("ok"), Some(RangeSpec::From(5, None)));
        assert_eq!(r("bytes=-3").expect("ok"), Some(RangeSpec::Suffix(3)));
        assert_eq!(parse_range(None).expect("ok"), None);
        for bad in [
            "bytes=abc",
            "bytes=5-2",
            "bytes=0-99999999999999999999999",
            "items=0-1",
            "bytes=-",
            "bytes=0-1,3-4",
            "bytes=1",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RangeSpec::From(10, Some(19)).resolve(100, "").expect("ok"),
            (10, 19)
        );
        assert_eq!(
            RangeSpec::From(90, Some(500)).resolve(100, "").expect("ok"),
            (90, 99)
        );
        assert_eq!(
            RangeSpec::Suffix(500).resolve(100, "").expect("ok"),
            (0, 99)
        );
        assert!(RangeSpec::From(100, None).resolve(100, "").is_err());
        assert!(RangeSpec::Suffix(0).resolve(100, "").is_err());
        assert!(RangeSpec::From(0, None).resolve(0, "").is_err());
    }

    #[tokio::test]
    async fn a_body_that_is_not_read_holds_only_its_last_chunks_and_waiting_holds_none() {
        let budget = SendBudget::new(4 * FILE_CHUNK);
        let chunks = || {
            futures_util::stream::iter(
                (0..100).map(|_| Ok(Bytes::from(vec![0u8; FILE_CHUNK as usize]))),
            )
        };
        // A stalled client: its body was asked for five chunks, then never again.
        let mut stalled = Box::pin(budget.wrap(chunks()));
        for _ in 0..5 {
            stalled.next().await.expect("chunk").expect("bytes");
        }
        assert_eq!(budget.available_chunks(), 4 - HELD);
        // A reader goes on with what is left, however long its body.
        let mut reader = Box::pin(budget.wrap(chunks()));
        for _ in 0..100 {
            reader.next().await.expect("chunk").expect("bytes");
        }
        drop(reader);
        // A second stalled client takes the rest; a third waits, holding nothing.
        let mut second = Box::pin(budget.wrap(chunks()));
        second.next().await.expect("chunk").expect("bytes");
        let mut third = Box::pin(budget.wrap(chunks()));
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), third.next()).await;
        assert!(waited.is_err(), "a body read past the budget");
        // The stalled client is cut (the send deadline): its shares come back.
        drop(stalled);
        third.next().await.expect("chunk").expect("bytes");
        drop((second, third));
        assert_eq!(budget.available_chunks(), 4);
    }

    #[tokio::test]
    async fn rate_limit_spaces_out_transfers() {
        // governor keeps its own clock, so this runs in real time: 2 MB at 4 MB/s with a
        // 400 KB burst takes about 0.4 s.
        let limit = RateLimit::new(4_000_000);
        let start = std::time::Instant::now();
        limit.take(2_000_000).await;
        let took = start.elapsed().as_secs_f64();
        assert!((0.3..3.0).contains(&took), "2 MB at 4 MB/s took {took}s");
        let unlimited = RateLimit::new(0);
        let start = std::time::Instant::now();
        unlimited.take(1 << 30).await;
        assert!(start.elapsed().as_secs_f64() < 0.1);
    }
}
