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

/// The response bytes a server holds in memory at once, across all its clients. A body sending
/// a blob holds at most [`PER_BODY`]: actix's write buffer, which it fills only while the buffer
/// is under its size, plus the chunk in hand. So a response takes its share (less for a short
/// one) before it is sent, and keeps it until its body ends; once the budget is spent, the next
/// response waits for a share, having sent nothing, and is answered `503` if none comes free in
/// time. Memory for bodies is then this budget, whatever the number of clients and however
/// they read, and the send deadline frees the shares of clients that stopped reading. A body
/// never waits once it started, so bodies cannot wait for each other.
pub struct SendBudget {
    permits: Arc<tokio::sync::Semaphore>,
}

/// What one body may hold: the 2 MiB write buffer and one 1 MiB file chunk.
pub const PER_BODY: u64 = 3 << 20;
/// Shares are counted in these.
const UNIT: u64 = 64 << 10;

/// One response's share of a [`SendBudget`], held until its body ends.
pub struct Share(Option<tokio::sync::OwnedSemaphorePermit>);

impl Share {
    /// Holds nothing: for an answer without a body (HEAD).
    pub fn none() -> Self {
        Share(None)
    }

    /// `body`, holding this share until it ends or is dropped.
    pub fn wrap<S>(self, body: S) -> impl Stream<Item = Result<Bytes>> + 'static
    where
        S: Stream<Item = Result<Bytes>> + 'static,
    {
        body.map(move |item| {
            let _held = &self.0;
            item
        })
    }
}

impl SendBudget {
    /// `bytes` in all (at least one body's share).
    pub fn new(bytes: u64) -> Self {
        let units = (bytes.max(PER_BODY) / UNIT) as usize;
        SendBudget {
            permits: Arc::new(tokio::sync::Semaphore::new(units)),
        }
    }

    /// Bytes not taken by a body now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// The share of a body of `len` bytes (if known), waiting at most `wait` for it;
    /// [`Error::Busy`] when none came free.
    pub async fn share(&self, len: Option<u64>, wait: std::time::Duration) -> Result<Share> {
        let units = len.unwrap_or(PER_BODY).clamp(1, PER_BODY).div_ceil(UNIT) as u32;
        let taken = self.permits.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, taken).await {
            Ok(Ok(permit)) => Ok(Share(Some(permit))),
            _ => Err(Error::Busy),
        }
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
    async fn responses_past_the_budget_wait_for_a_share_then_are_refused_and_a_short_one_takes_less(
    ) {
        let budget = SendBudget::new(2 * PER_BODY);
        let wait = std::time::Duration::from_millis(50);
        let chunks = |n: usize| {
            futures_util::stream::iter(
                (0..n).map(|_| Ok(Bytes::from(vec![0u8; FILE_CHUNK as usize]))),
            )
        };
        // Two clients that stopped reading: the budget is theirs.
        let first = budget.share(None, wait).await.expect("a share");
        let second = budget
            .share(Some(100 * FILE_CHUNK), wait)
            .await
            .expect("a share");
        let mut first = Box::pin(first.wrap(chunks(100)));
        let mut second = Box::pin(second.wrap(chunks(100)));
        first.next().await.expect("chunk").expect("bytes");
        assert_eq!(budget.available(), 0);
        // A third waits, then is told to come back.
        assert!(matches!(
            budget.share(Some(FILE_CHUNK), wait).await,
            Err(Error::Busy)
        ));
        // The first is cut (the send deadline): the third gets one chunk's share.
        drop(first);
        let third = budget.share(Some(FILE_CHUNK), wait).await.expect("a share");
        assert_eq!(budget.available(), PER_BODY - FILE_CHUNK);
        // A body that has started never waits again, however long it is.
        for _ in 0..100 {
            second.next().await.expect("chunk").expect("bytes");
        }
        drop((second, third));
        assert_eq!(budget.available(), 2 * PER_BODY);
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
