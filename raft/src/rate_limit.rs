//! A token bucket of bytes per second, shared by every snapshot a node sends, so that moving
//! replicas (each a snapshot stream) leaves the network and disk to ingest and the groups'
//! own replication. No kept rate-limit crate was available offline, and the need is small.
//!
//! The bucket holds at most `burst_bytes`; a taker that finds too few tokens takes them anyway,
//! leaving the bucket in debt, and sleeps until the debt it made is paid. A second sender then
//! finds the debt and waits behind it, so two concurrent snapshots share the rate rather than
//! each getting it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A shared bound on bytes per second (cloning shares the bucket); unlimited when built with
/// a rate of 0.
#[derive(Clone, Debug, Default)]
pub struct RateLimit {
    bucket: Option<Arc<Mutex<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    bytes_per_sec: f64,
    burst_bytes: f64,
    /// Negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    /// A bound of `bytes_per_sec` (0: none) that lets `burst_bytes` through at once after an
    /// idle spell.
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> RateLimit {
        if bytes_per_sec == 0 {
            return RateLimit::default();
        }
        let burst_bytes = burst_bytes.max(1) as f64;
        RateLimit {
            bucket: Some(Arc::new(Mutex::new(Bucket {
                bytes_per_sec: bytes_per_sec as f64,
                burst_bytes,
                tokens: burst_bytes,
                refilled: Instant::now(),
            }))),
        }
    }

    /// The bound in bytes per second; None when unlimited.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        let bucket = self.bucket.as_ref()?;
        let b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        Some(b.bytes_per_sec as u64)
    }

    /// Takes `bytes` from the bucket, waiting as long as the rate requires.
    pub async fn take(&self, bytes: u64) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let wait = {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let earned = now.duration_since(b.refilled).as_secs_f64() * b.bytes_per_sec;
            b.tokens = (b.tokens + earned).min(b.burst_bytes);
            b.refilled = now;
            b.tokens -= bytes as f64;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.bytes_per_sec)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `total` bytes in `chunk`-byte pieces through `limit` from `senders` tasks at once;
    /// answers how long it took.
    async fn send(limit: &RateLimit, senders: u64, total: u64, chunk: u64) -> Duration {
        let started = Instant::now();
        let tasks: Vec<_> = (0..senders)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    for _ in 0..total / senders / chunk {
                        limit.take(chunk).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn sending_n_bytes_at_rate_r_takes_at_least_n_over_r_less_the_burst() {
        let (rate, burst, total, chunk) = (4u64 << 20, 256u64 << 10, 2u64 << 20, 64u64 << 10);
        let floor = Duration::from_secs_f64((total - burst) as f64 / rate as f64);
        let took = send(&RateLimit::new(rate, burst), 1, total, chunk).await;
        assert!(
            took >= floor,
            "{total} bytes at {rate} B/s took {took:?} < {floor:?}"
        );
        // Not far above it either: the bucket waits for the debt, no more (a loaded machine
        // may add scheduling delay, hence the wide margin).
        assert!(took < floor * 4, "took {took:?} for a floor of {floor:?}");
        // Two senders share one bucket: together no faster than one.
        let took = send(&RateLimit::new(rate, burst), 2, total, chunk).await;
        assert!(took >= floor, "two senders took {took:?} < {floor:?}");
    }

    #[tokio::test]
    async fn a_rate_of_zero_is_unlimited() {
        let limit = RateLimit::new(0, 1 << 20);
        assert_eq!(limit.bytes_per_sec(), None);
        let took = send(&limit, 1, 1 << 30, 1 << 20).await;
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
}
