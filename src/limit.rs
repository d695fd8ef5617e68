//! Throttling: token buckets (rate and burst) that hold exactly across workers, with no
//! lock and, on the common path, no shared cache line touched.
//!
//! Owns: each configured bucket's shared state ([`SharedBucket`], one atomic word), each
//! worker's local allowance of tokens leased from it ([`Leases`]), and the decision for a
//! request across all levels that apply to it ([`Leases::admit`]). Also owns the runtime
//! spec [`Throttle`] (re-exported by `config`).
//!
//! Must not: block, allocate per request, or let the configured limit multiply by the
//! number of workers.
//!
//! ## The algorithm
//!
//! Each bucket is a GCRA ("generic cell rate algorithm", RFC 2697's leaky bucket read as a
//! virtual scheduling rule, the form `redis-cell` and `pingora-limits` use): one
//! *theoretical arrival time* `tat`. Taking `n` tokens at time `now` moves it to
//! `max(tat, now) + n·T`, where `T = 1/rate`, and is allowed while the result is at most
//! `now + burst·T`. That is exactly a token bucket of size `burst` refilled at `rate`,
//! kept in one `AtomicU64` updated by compare-and-swap.
//!
//! Workers do not take tokens one by one from it: each takes a *lease* of several tokens
//! and admits requests from its local count, touching the shared word only when the lease
//! runs out. Leased tokens are already taken from the shared bucket, so the workers
//! together can never admit more than `burst + rate·t`. What a lease costs is the other
//! way: tokens leased by a worker that then goes quiet are unavailable to the others. The
//! lease shrinks as the shared bucket runs low (at most half of what is left, split over
//! the workers) and is at most `rate/500` tokens (2 ms of traffic), so the under-admission
//! is bounded by `workers × max(1, rate/500)` tokens plus what is left in leases.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A token bucket: `rate` requests per second refill it, `burst` is its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// Name in the `RateLimit` / `RateLimit-Policy` fields.
    pub name: String,
    pub rate: f64,
    pub burst: u32,
}

const NANOS: f64 = 1e9;

/// One token bucket shared by all workers.
#[derive(Debug)]
pub struct SharedBucket {
    /// Name used in the `RateLimit` and `RateLimit-Policy` fields.
    pub name: String,
    /// Whose bucket it is (for metrics: which level refused).
    pub scope: Scope,
    pub rate: f64,
    pub burst: u32,
    /// Nanoseconds per token.
    interval: u64,
    /// `burst · interval`: how far `tat` may run ahead of now.
    capacity: u64,
    max_lease: u32,
    tat: AtomicU64,
}

/// Whose requests a bucket counts, in API Gateway's terms where they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every request (API Gateway's account level).
    Global,
    /// A listener's (the stage level).
    Listener,
    /// A route's (the method level).
    #[default]
    Route,
    /// An API key's, from its usage plan (for the key, or the key on a route).
    Key,
    /// One client address's, on a route (`throttle_per_ip`).
    Client,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Listener => "listener",
            Scope::Route => "route",
            Scope::Key => "key",
            Scope::Client => "client",
        }
    }
}

/// Why a bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The bucket's index.
    pub bucket: usize,
    /// Nanoseconds until the bucket will admit one request.
    pub wait_nanos: u64,
}

impl SharedBucket {
    /// `rate` tokens per second (fractions allowed), `burst` tokens at most.
    /// A bucket of `scope`.
    pub fn scoped(scope: Scope, name: &str, rate: f64, burst: u32) -> SharedBucket {
        SharedBucket {
            scope,
            ..SharedBucket::new(name, rate, burst)
        }
    }

    pub fn new(name: &str, rate: f64, burst: u32) -> SharedBucket {
        let interval = ((NANOS / rate).round() as u64).max(1);
        let burst = burst.max(1);
        SharedBucket {
            name: name.to_string(),
            scope: Scope::Route,
            rate,
            burst,
            interval,
            capacity: interval.saturating_mul(u64::from(burst)),
            max_lease: ((rate / 500.0) as u32).clamp(1, 256),
            tat: AtomicU64::new(0),
        }
    }

    /// Tokens available at `now` (whole tokens).
    pub fn available(&self, now: u64) -> u64 {
        let tat = self.tat.load(Ordering::Relaxed).max(now);
        self.capacity.saturating_sub(tat - now) / self.interval
    }

    /// Nanoseconds from `now` until the bucket is full again.
    pub fn until_full(&self, now: u64) -> u64 {
        self.tat.load(Ordering::Relaxed).saturating_sub(now)
    }

    /// Takes a lease for a worker: at least one token, at most `max_lease`, less when the
    /// bucket runs low. Returns the tokens taken, or how long until one is available.
    pub fn lease(&self, now: u64, workers: u32) -> Result<u32, u64> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let used = base - now;
            let available = self.capacity.saturating_sub(used) / self.interval;
            if available == 0 {
                // The next token arrives when `tat` falls to `now + capacity - interval`.
                return Err((used + self.interval).saturating_sub(self.capacity).max(1));
            }
            let share = (available / (2 * u64::from(workers.max(1)))).max(1);
            let n = share.min(u64::from(self.max_lease)) as u32;
            let next = base + u64::from(n) * self.interval;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(n),
                Err(actual) => tat = actual,
            }
        }
    }

    /// The window of the policy in whole seconds: how long the bucket takes to refill.
    pub fn window_secs(&self) -> u64 {
        ceil_secs(self.capacity)
    }
}

/// Rounds nanoseconds up to whole seconds.
pub fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

/// One worker's leased tokens, one count per bucket.
#[derive(Debug)]
pub struct Leases {
    tokens: Box<[Cell<u32>]>,
    workers: u32,
}

/// Which bucket a response reports in its RateLimit fields, and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub bucket: usize,
    /// Tokens left after this request (the worker's lease plus the shared bucket).
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_nanos: u64,
}

impl Leases {
    pub fn new(buckets: usize, workers: u32) -> Leases {
        Leases {
            tokens: (0..buckets).map(|_| Cell::new(0)).collect(),
            workers,
        }
    }

    /// Admits one request against every bucket in `chain`, in order, or refuses it naming
    /// the first bucket that has no token. A refused request takes no token anywhere:
    /// tokens leased while checking stay with this worker for later requests.
    pub fn admit(
        &self,
        buckets: &[std::sync::Arc<SharedBucket>],
        chain: &[usize],
        now: u64,
    ) -> Result<(), Refusal> {
        for &b in chain {
            let local = &self.tokens[b];
            if local.get() == 0 {
                match buckets[b].lease(now, self.workers) {
                    Ok(n) => local.set(n),
                    Err(wait_nanos) => {
                        return Err(Refusal {
                            bucket: b,
                            wait_nanos,
                        })
                    }
                }
            }
        }
        for &b in chain {
            let local = &self.tokens[b];
            local.set(local.get() - 1);
        }
        Ok(())
    }

    /// The most restrictive bucket of `chain` after a request was admitted: the one with
    /// the fewest tokens left.
    pub fn standing(
        &self,
        buckets: &[std::sync::Arc<SharedBucket>],
        chain: &[usize],
        now: u64,
    ) -> Option<Standing> {
        chain
            .iter()
            .map(|&b| Standing {
                bucket: b,
                remaining: u64::from(self.tokens[b].get()) + buckets[b].available(now),
                reset_nanos: buckets[b].until_full(now),
            })
            .min_by_key(|s| s.remaining)
    }
}

/// Appends `RateLimit-Policy` and `RateLimit` (IETF draft, structured-field lists) for
/// `bucket` with `remaining` tokens, and `reset` seconds until more are available.
pub fn write_fields(out: &mut Vec<u8>, bucket: &SharedBucket, remaining: u64, reset: u64) {
    use crate::http::write::push_u64;
    out.extend_from_slice(b"ratelimit-policy: \"");
    out.extend_from_slice(bucket.name.as_bytes());
    out.extend_from_slice(b"\";q=");
    push_u64(out, u64::from(bucket.burst));
    out.extend_from_slice(b";w=");
    push_u64(out, bucket.window_secs().max(1));
    out.extend_from_slice(b"\r\nratelimit: \"");
    out.extend_from_slice(bucket.name.as_bytes());
    out.extend_from_slice(b"\";r=");
    push_u64(out, remaining);
    out.extend_from_slice(b";t=");
    push_u64(out, reset);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        // The reference's test point: burst 5, rate 10 admits 5 at once, then one per 100 ms.
        let buckets = [Arc::new(SharedBucket::new("b", 10.0, 5))];
        let leases = Leases::new(1, 1);
        let t0 = 10 * SEC;
        let admitted = (0..20)
            .filter(|_| leases.admit(&buckets, &[0], t0).is_ok())
            .count();
        assert_eq!(admitted, 5);
        let refusal = leases.admit(&buckets, &[0], t0).unwrap_err();
        assert_eq!(refusal.wait_nanos, SEC / 10);
        assert!(leases.admit(&buckets, &[0], t0 + SEC / 10 - 1).is_err());
        assert!(leases.admit(&buckets, &[0], t0 + SEC / 10).is_ok());
        assert!(leases.admit(&buckets, &[0], t0 + SEC / 10).is_err());
    }

    #[test]
    fn many_workers_never_admit_more_than_the_bucket() {
        let buckets = [Arc::new(SharedBucket::new("b", 1000.0, 100))];
        let workers: Vec<Leases> = (0..8).map(|_| Leases::new(1, 8)).collect();
        let mut admitted = 0u64;
        let t0 = 10 * SEC;
        // 10 simulated seconds in 100 µs steps, every worker asking 5 times a step.
        for step in 0..100_000u64 {
            let now = t0 + step * 100_000;
            for w in &workers {
                for _ in 0..5 {
                    admitted += u64::from(w.admit(&buckets, &[0], now).is_ok());
                }
            }
        }
        let expected = 100 + 1000 * 10;
        assert!(admitted <= expected, "{admitted} > {expected}");
        // Under-admission is bounded by what sits in leases: 8 workers × 2 tokens.
        assert!(admitted + 16 >= expected, "{admitted} far below {expected}");
    }

    #[test]
    fn a_refused_request_takes_no_token_at_any_level() {
        let buckets = [
            Arc::new(SharedBucket::new("route", 1.0, 3)),
            Arc::new(SharedBucket::new("global", 1.0, 1)),
        ];
        let leases = Leases::new(2, 1);
        let t0 = 10 * SEC;
        assert!(leases.admit(&buckets, &[0, 1], t0).is_ok());
        // The global bucket is empty now: the route level must not lose tokens to refusals.
        for _ in 0..10 {
            assert_eq!(leases.admit(&buckets, &[0, 1], t0).unwrap_err().bucket, 1);
        }
        assert_eq!(leases.standing(&buckets, &[0], t0).unwrap().remaining, 2);
        // A request that only the route level governs still gets both remaining tokens.
        assert!(leases.admit(&buckets, &[0], t0).is_ok());
        assert!(leases.admit(&buckets, &[0], t0).is_ok());
        assert!(leases.admit(&buckets, &[0], t0).is_err());
    }

    #[test]
    fn fractional_rates_work() {
        let buckets = [Arc::new(SharedBucket::new("slow", 0.5, 1))];
        let leases = Leases::new(1, 1);
        let t0 = 10 * SEC;
        assert!(leases.admit(&buckets, &[0], t0).is_ok());
        let r = leases.admit(&buckets, &[0], t0).unwrap_err();
        assert_eq!(ceil_secs(r.wait_nanos), 2);
        assert!(leases.admit(&buckets, &[0], t0 + 2 * SEC).is_ok());
    }

    #[test]
    fn the_fields_are_structured_field_lists() {
        let b = SharedBucket::new("route", 10.0, 20);
        let mut out = Vec::new();
        write_fields(&mut out, &b, 7, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ratelimit-policy: \"route\";q=20;w=2\r\nratelimit: \"route\";r=7;t=2\r\n"
        );
    }
}

/// Per-client-IP buckets for one route: a fixed table shared by all workers, so memory is
/// bounded whatever the number of addresses.
///
/// Each slot is one atomic word: a 20-bit tag of the address and its bucket's theoretical
/// arrival time in 10 µs units (44 bits: five years of uptime). An address may live in one
/// of two slots. A new address takes an empty slot, or one whose bucket is full again
/// (nothing is lost by forgetting it), or else the one nearest to full; an evicted
/// address starts again with a full bucket, so under an address flood larger than the
/// table a client can get at most one extra burst. Collisions of the 20-bit tag within
/// a slot pair are about one in a million.
#[derive(Debug)]
pub struct PerIpBuckets {
    pub bucket: SharedBucket,
    slots: Box<[AtomicU64]>,
    /// Per-process random keys, so clients cannot aim at each other's slots.
    hasher: ahash::RandomState,
    interval: u64,
    capacity: u64,
}

const UNIT_NANOS: u64 = 10_000;
const TAT_BITS: u32 = 44;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

impl PerIpBuckets {
    pub fn new(name: &str, rate: f64, burst: u32, clients: usize) -> PerIpBuckets {
        let bucket = SharedBucket::scoped(Scope::Client, name, rate, burst);
        let interval = (bucket.interval / UNIT_NANOS).max(1);
        PerIpBuckets {
            capacity: interval * u64::from(bucket.burst),
            interval,
            bucket,
            slots: (0..clients.max(2)).map(|_| AtomicU64::new(0)).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Bytes the table uses.
    pub fn memory(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }

    fn place(&self, ip: std::net::IpAddr) -> (u64, [usize; 2]) {
        let h = self.hasher.hash_one(ip);
        let tag = (h >> TAT_BITS) | 1; // never 0: 0 marks an empty slot
        let n = self.slots.len() as u64;
        let a = (h % n) as usize;
        let b = ((h >> 20) % n) as usize;
        (tag, [a, if b == a { (a + 1) % n as usize } else { b }])
    }

    /// Takes a token for `ip`, or returns the nanoseconds until one is available.
    pub fn admit(&self, ip: std::net::IpAddr, now_nanos: u64) -> Result<(), u64> {
        let now = now_nanos / UNIT_NANOS;
        let (tag, slots) = self.place(ip);
        loop {
            let words = slots.map(|i| self.slots[i].load(Ordering::Relaxed));
            let (slot, word, tat) = match (0..2).find(|&k| words[k] >> TAT_BITS == tag) {
                Some(k) => (slots[k], words[k], words[k] & TAT_MASK),
                None => {
                    // Not present: evict the slot nearest to full (an empty or full one first).
                    let k = if (words[0] & TAT_MASK) <= (words[1] & TAT_MASK) {
                        0
                    } else {
                        1
                    };
                    (slots[k], words[k], 0)
                }
            };
            let base = tat.max(now);
            let next = base + self.interval;
            if next - now > self.capacity {
                return Err((next - now - self.capacity) * UNIT_NANOS);
            }
            let new = tag << TAT_BITS | (next & TAT_MASK);
            if self.slots[slot]
                .compare_exchange(word, new, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Gives back the token `admit` took, when a later level refused the request.
    pub fn refund(&self, ip: std::net::IpAddr) {
        let (tag, slots) = self.place(ip);
        for i in slots {
            let _ = self.slots[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w >> TAT_BITS == tag)
                    .then(|| tag << TAT_BITS | ((w & TAT_MASK).saturating_sub(self.interval)))
            });
        }
    }
}

#[cfg(test)]
mod per_ip_tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const SEC: u64 = 1_000_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let t = PerIpBuckets::new("ip", 1.0, 2, 1024);
        let now = 100 * SEC;
        assert!(t.admit(ip(1), now).is_ok());
        assert!(t.admit(ip(1), now).is_ok());
        assert_eq!(t.admit(ip(1), now), Err(SEC));
        assert!(t.admit(ip(2), now).is_ok());
        assert!(t.admit(ip(1), now + SEC).is_ok());
        t.refund(ip(1));
        assert!(
            t.admit(ip(1), now + SEC).is_ok(),
            "a refunded token is usable again"
        );
    }

    #[test]
    fn a_flood_of_addresses_stays_in_the_table_and_recent_clients_keep_their_limit() {
        let t = PerIpBuckets::new("ip", 1.0, 1, 256);
        let now = 100 * SEC;
        assert_eq!(t.memory(), 256 * 8);
        for n in 0..100_000 {
            let _ = t.admit(ip(n), now);
        }
        // A client seen just now is still limited.
        assert!(t.admit(ip(1_000_000), now).is_ok());
        assert!(t.admit(ip(1_000_000), now).is_err());
    }
}
