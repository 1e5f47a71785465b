//! `rate_limit`: a token bucket per key in the form of GCRA (the generic
//! cell rate algorithm), which keeps one number per key — its
//! "theoretical arrival time" (TAT), when the key's bucket will be full
//! again. A request is let through when the TAT it would push the key to
//! is no more than `burst` requests' worth ahead of now.
//!
//! The keys live in one fixed table shared by every worker, made of
//! atomics: a check is a few loads and one compare-and-swap, never a lock.
//! The table is sized from `max_keys` when the config is loaded and never
//! grows. A key whose TAT has passed is indistinguishable from a key never
//! seen (both may make a whole burst), so its slot is free for another
//! key: idle keys expire by themselves, with no sweeper. When every slot a
//! new key may use holds a key still paying off a burst, the one nearest
//! to paying it off is forgotten; it gets a fresh burst when it comes
//! back. Memory stays bounded whatever the number of keys.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::{RateKey, RateLimitConfig};

/// Slots of one bucket: a key may live in any of them. Four 16-byte slots
/// are one cache line.
const WAYS: usize = 4;

#[derive(Default)]
struct Slot {
    /// The key's keyed hash, never 0; 0 is a slot never used.
    key: AtomicU64,
    /// Nanoseconds since the limiter's `epoch` at which the key's bucket
    /// is full again.
    tat: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Bucket([Slot; WAYS]);

/// One app's limiter, or one rule's. Kept across snapshots while its
/// config is unchanged, so that a flip or a reload does not hand out
/// fresh bursts.
pub struct RateLimiter {
    pub config: RateLimitConfig,
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Keyed (SipHash, random keys per limiter): a client cannot choose
    /// header values that collide with another client's, or that crowd one
    /// bucket.
    hasher: RandomState,
    epoch: Instant,
    /// Nanoseconds one request costs its key.
    interval: u64,
    /// How far ahead of now a key's TAT may be: `burst` requests.
    tolerance: u64,
    /// Requests refused by any limiter of the app
    /// (`cutover_rate_limited_total`); the app's counter, which every
    /// rebuild carries over, so the count only grows.
    pub limited: Arc<AtomicU64>,
    /// Requests this table refused, for a rule's status.
    refused: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("slots", &self.slots())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter for `config`, its counter continuing `limited`.
    pub fn new(config: RateLimitConfig, limited: Arc<AtomicU64>) -> RateLimiter {
        let buckets = (config.max_keys as usize)
            .div_ceil(WAYS)
            .next_power_of_two();
        let interval = config.interval.as_nanos().max(1) as u64;
        RateLimiter {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
            limited,
            refused: AtomicU64::new(0),
            config,
        }
    }

    /// Requests this table refused since it was made.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Keys the table can hold at once (`max_keys` rounded up).
    pub fn slots(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes the table takes; fixed when the limiter is made.
    pub fn table_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// Keys in the table at `now`, whose bucket is not full again (a
    /// scan: for status and tests, not requests).
    pub fn keys(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let live = |s: &Slot| s.key.load(Relaxed) != 0 && s.tat.load(Relaxed) > now;
        self.buckets
            .iter()
            .flat_map(|b| &b.0)
            .filter(|s| live(s))
            .count()
    }

    /// May this request go on, at `now`? `Err`: how long until its key
    /// may make one more. A request without the header or cookie the
    /// limit is keyed by is counted by its client address instead, so
    /// leaving the key out does not escape the limit.
    pub fn check(&self, headers: &HeaderMap, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = self.key(headers, client);
        let verdict = self.check_key(key, self.nanos(now));
        if verdict.is_err() {
            self.limited.fetch_add(1, Relaxed);
            self.refused.fetch_add(1, Relaxed);
        }
        verdict
    }

    fn nanos(&self, now: Instant) -> u64 {
        // `+ 1`: a slot never used (TAT 0) is idle even at the epoch.
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// The request's key, hashed; never 0.
    fn key(&self, headers: &HeaderMap, client: IpAddr) -> u64 {
        let value = match &self.config.key {
            RateKey::ClientIp => None,
            RateKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            RateKey::Cookie(name) => cookie(headers, name),
        };
        let h = match value {
            Some(v) => self.hasher.hash_one((0u8, v)),
            None => match client.to_canonical() {
                IpAddr::V4(a) => self.hasher.hash_one((4u8, a.octets())),
                IpAddr::V6(a) => self.hasher.hash_one((6u8, a.octets())),
            },
        };
        h | 1
    }

    /// GCRA for the key hashed as `key` at `now` (ns since the epoch).
    fn check_key(&self, key: u64, now: u64) -> Result<(), Duration> {
        // The bucket from the high bits: the low bit is always set.
        let bucket = &self.buckets[(key >> 24) as usize & self.mask].0;
        let slot = match bucket.iter().find(|s| s.key.load(Relaxed) == key) {
            Some(s) => s,
            None => claim(bucket, key, now),
        };
        let mut tat = slot.tat.load(Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            let ahead = next - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match slot.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// A slot of `bucket` for a key not in it: an idle one (its TAT passed),
/// else the one nearest to idle. Two workers claiming the same slot at
/// once both go on with it; the limit is approximate only then.
fn claim(bucket: &[Slot; WAYS], key: u64, now: u64) -> &Slot {
    let mut victim = &bucket[0];
    let mut victim_tat = u64::MAX;
    for s in bucket {
        let tat = s.tat.load(Relaxed);
        if tat <= now {
            victim = s;
            break;
        }
        if tat < victim_tat {
            victim = s;
            victim_tat = tat;
        }
    }
    let old = victim.key.load(Relaxed);
    if victim
        .key
        .compare_exchange(old, key, Relaxed, Relaxed)
        .is_ok()
    {
        // A fresh key: as if its bucket had just filled up.
        victim.tat.store(now, Relaxed);
    }
    victim
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then_some(&v[1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limiter(rate_per_sec: u32, burst: u32, key: RateKey, max_keys: u32) -> RateLimiter {
        let config = RateLimitConfig {
            key,
            rate: format!("{rate_per_sec}/s"),
            interval: Duration::from_secs(1) / rate_per_sec,
            burst,
            max_keys,
        };
        RateLimiter::new(config, Arc::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_key_makes_its_burst_at_once_then_one_request_per_interval() {
        let l = limiter(10, 3, RateKey::ClientIp, 100);
        let h = HeaderMap::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(&h, ip("10.0.0.1"), t0), Ok(()));
        }
        let wait = l.check(&h, ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another address has its own bucket.
        assert_eq!(l.check(&h, ip("10.0.0.2"), t0), Ok(()));
        // One interval later, one more request; not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(&h, ip("10.0.0.1"), t1), Ok(()));
        assert!(l.check(&h, ip("10.0.0.1"), t1).is_err());
        assert_eq!(l.limited.load(Relaxed), 2);
    }

    #[test]
    fn a_header_key_falls_back_to_the_client_address_when_missing() {
        let l = limiter(1, 1, RateKey::Header("x-api-key".parse().unwrap()), 100);
        let t0 = Instant::now();
        let mut a = HeaderMap::new();
        a.insert("x-api-key", HeaderValue::from_static("a"));
        let none = HeaderMap::new();
        assert!(l.check(&a, ip("10.0.0.1"), t0).is_ok());
        // The same address without the header is a key of its own…
        assert!(l.check(&none, ip("10.0.0.1"), t0).is_ok());
        // …and it is limited.
        assert!(l.check(&none, ip("10.0.0.1"), t0).is_err());
        // The same header from elsewhere is the same key.
        assert!(l.check(&a, ip("10.0.0.9"), t0).is_err());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; session=xyz; b=2"));
        assert_eq!(cookie(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }

    /// A million distinct keys through a table capped at 100 000: the
    /// table's size is what it was when made, and it holds no more keys
    /// than its slots. Prints the size and the cost of a check (of this
    /// debug build: a release build is several times faster).
    #[test]
    fn a_million_keys_stay_within_the_cap() {
        let l = limiter(1, 5, RateKey::ClientIp, 100_000);
        let before = l.table_bytes();
        let h = HeaderMap::new();
        let now = Instant::now();
        let started = Instant::now();
        for i in 0..1_000_000u32 {
            let _ = l.check(&h, IpAddr::V4(i.into()), now);
        }
        let per_check = started.elapsed() / 1_000_000;
        assert_eq!(l.table_bytes(), before);
        assert_eq!(l.keys(now), l.slots(), "full, and no fuller");
        assert_eq!(l.slots(), 131_072);
        eprintln!(
            "1M keys: table {} bytes ({} slots, {} keys held); {per_check:?} per check (debug build)",
            l.table_bytes(),
            l.slots(),
            l.keys(now),
        );
        // The same key over and over: the hot case.
        let started = Instant::now();
        for _ in 0..1_000_000 {
            let _ = l.check(&h, ip("192.0.2.1"), now);
        }
        eprintln!(
            "one key: {:?} per check (debug build)",
            started.elapsed() / 1_000_000
        );
    }
}
