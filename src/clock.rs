//! The one clock. A request reads it once, when its head is complete ([`now`]), and every
//! part of the request that asks "when" takes that reading: the token buckets, the quota
//! period, the cache's ages and freshness, the `Date` header and the request's record.
//! Only what measures a duration reads it again (the upstream's response time, the
//! request's total time).
//!
//! Readings are monotonic nanoseconds since the process started (plus one second, so 0
//! never means a time). Wall-clock seconds are derived from them with an offset that each
//! worker's tick resyncs ([`resync`]), so a stepped system clock is followed within a tick
//! without a second clock read per request. Must not: read the clock for anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds added to every reading: `0` stays free to mean "never".
const START: u64 = 1_000_000_000;

/// Wall-clock nanoseconds minus monotonic nanoseconds, as of the last [`resync`].
static WALL_OFFSET: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let epoch = Instant::now();
        set_offset(epoch);
        epoch
    })
}

fn set_offset(epoch: Instant) {
    let mono = epoch.elapsed().as_nanos() as u64 + START;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    WALL_OFFSET.store(wall.saturating_sub(mono), Ordering::Relaxed);
}

/// One reading of the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// Monotonic nanoseconds (see the module header).
    pub nanos: u64,
}

impl Now {
    /// Monotonic milliseconds, for the cache's ages.
    pub fn ms(self) -> u64 {
        self.nanos / 1_000_000
    }

    /// Seconds since the Unix epoch at this reading.
    pub fn wall_secs(self) -> u64 {
        (self.nanos + WALL_OFFSET.load(Ordering::Relaxed)) / 1_000_000_000
    }

    /// Milliseconds since the Unix epoch at this reading.
    pub fn wall_ms(self) -> u64 {
        (self.nanos + WALL_OFFSET.load(Ordering::Relaxed)) / 1_000_000
    }

    /// Nanoseconds from `earlier` to this reading.
    pub fn since(self, earlier: Now) -> u64 {
        self.nanos.saturating_sub(earlier.nanos)
    }
}

/// Reads the clock.
pub fn now() -> Now {
    Now {
        nanos: epoch().elapsed().as_nanos() as u64 + START,
    }
}

/// Re-reads the wall clock, so [`Now::wall_secs`] follows a stepped system clock.
/// Called from each worker's tick (ten times a second), never per request.
pub fn resync() {
    set_offset(epoch());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_seconds_match_the_system_clock() {
        resync();
        let ours = now().wall_secs();
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ours.abs_diff(system) <= 1, "{ours} vs {system}");
    }

    #[test]
    fn readings_are_monotonic_and_never_zero() {
        let a = now();
        let b = now();
        assert!(a.nanos >= START && b >= a);
        assert_eq!(b.since(a), b.nanos - a.nanos);
    }
}
