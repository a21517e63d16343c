//! Rate limiting of refusal entries per caller: a local user who is
//! refused over and over must not flood the journal (and push real entries
//! out of it). Changes are never limited: only root makes them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A token bucket per key: `burst` entries at once, then one per `every`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: u32,
    every: Duration,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket made).
    refilled: Instant,
    /// Entries dropped since the last one let through.
    suppressed: u64,
}

/// Whether an entry may be written, and how many were dropped before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Write { suppressed_before: u64 },
    Drop,
}

/// How many callers are remembered at most: each refused caller costs a
/// bucket, and a bucket that is full again says nothing worth keeping.
const MAX_KEYS: usize = 4096;

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(burst: u32, every: Duration) -> Self {
        RateLimiter { burst: burst.max(1), every: every.max(Duration::from_millis(1)), buckets: HashMap::new() }
    }

    /// Decides for one entry of `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(key) {
            self.forget_full(now);
        }
        let (burst, every) = (self.burst, self.every);
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, refilled: now, suppressed: 0 });
        let elapsed = now.saturating_duration_since(bucket.refilled);
        let earned = (elapsed.as_nanos() / every.as_nanos()).min(u128::from(burst)) as u32;
        if earned > 0 {
            bucket.tokens = (bucket.tokens + earned).min(burst);
            bucket.refilled += every * earned;
            if bucket.tokens == burst {
                bucket.refilled = now;
            }
        }
        if bucket.tokens == 0 {
            bucket.suppressed += 1;
            return Verdict::Drop;
        }
        bucket.tokens -= 1;
        let suppressed_before = std::mem::take(&mut bucket.suppressed);
        Verdict::Write { suppressed_before }
    }

    /// Drops the buckets that are full again (or, if none is, all): a
    /// flood of distinct callers cannot grow the map without bound.
    fn forget_full(&mut self, now: Instant) {
        let (burst, every) = (self.burst, self.every);
        self.buckets.retain(|_, b| {
            let earned = now.saturating_duration_since(b.refilled).as_nanos() / every.as_nanos();
            u128::from(b.tokens) + earned < u128::from(burst) || b.suppressed > 0
        });
        if self.buckets.len() >= MAX_KEYS {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_period_and_the_dropped_are_counted() {
        let mut limiter = RateLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&1000, t0), Verdict::Write { suppressed_before: 0 });
        }
        assert_eq!(limiter.check(&1000, t0), Verdict::Drop);
        assert_eq!(limiter.check(&1000, t0 + Duration::from_secs(9)), Verdict::Drop);
        // Another caller is not held back by the first.
        assert_eq!(limiter.check(&65534, t0), Verdict::Write { suppressed_before: 0 });
        assert_eq!(limiter.check(&1000, t0 + Duration::from_secs(10)), Verdict::Write { suppressed_before: 2 });
        assert_eq!(limiter.check(&1000, t0 + Duration::from_secs(11)), Verdict::Drop);
        // A long quiet refills the bucket, to the burst and no more.
        let later = t0 + Duration::from_secs(1000);
        for _ in 0..3 {
            assert!(matches!(limiter.check(&1000, later), Verdict::Write { .. }));
        }
        assert_eq!(limiter.check(&1000, later), Verdict::Drop);
    }

    #[test]
    fn many_callers_do_not_grow_it_without_bound() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for uid in 0..(MAX_KEYS as u32 * 3) {
            limiter.check(&uid, t0);
        }
        assert!(limiter.buckets.len() <= MAX_KEYS);
    }
}
