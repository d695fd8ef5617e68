//! Weir's own log lines (start-up, signals, refusals worth an operator's attention), on
//! stderr, one per line: an RFC 3339 UTC timestamp with milliseconds, a level, the message.
//!
//! ```text
//! 2026-12-03T18:37:19.123Z INFO listening on http://127.0.0.1:8080 (listener `public`)
//! 2026-12-03T18:37:20.001Z ERROR quota store /var/lib/weir/usage.redb: cannot write: ...
//! 2026-12-03T18:37:21.050Z WARN upstream `api` target 10.0.0.7:80: connect refused (...) (and 41 more like this in the last 2.3 s)
//! ```
//!
//! Owns: the line format, the levels, and the rate limit of the error log. Must not: be
//! called once per request on the request path (each line locks stderr and reads the
//! clock); per-request records belong to an access log with its own buffer.
//!
//! **Rate limit.** What can fail once per request (an upstream refusing connections, a
//! client without a certificate) is logged with [`info_limited!`](crate::info_limited),
//! [`warn_limited!`](crate::warn_limited) or [`error_limited!`](crate::error_limited): at
//! most one line a second per kind of event, so a flood of failures costs a line a second,
//! not a line a request. A kind is the call site (each expansion declares its own static
//! [`RateLimit`]) and, optionally, a small key given as `key = EXPR;` (a target's address,
//! a listener's): each key of a site is limited on its own. The next line of a kind that
//! gets through says how many were left out since the last one:
//! `(and 41 more like this in the last 2.3 s)`.
//!
//! Deciding costs one clock reading, a hash of the key and a few atomic operations on the
//! site's table; a line left out is never formatted, allocates nothing and takes no lock.
//! Only a line written is formatted and takes stderr's lock, as every line does. A site
//! tracks up to [`KEYS_PER_SITE`] keys; keys beyond those share one more slot, so they are
//! limited together (still one line a second) rather than not at all.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How serious a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Writes one line. Use the [`info!`](crate::info), [`warn!`](crate::warn) and
/// [`error!`](crate::error) macros rather than calling this.
pub fn write(level: Level, message: fmt::Arguments) {
    let line = format!(
        "{} {} {message}\n",
        timestamp(SystemTime::now()),
        level.name()
    );
    // One write per line, so lines from several threads never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `2026-12-03T18:37:19.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (y, mo, d) = crate::calendar::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    )
}

/// At most one line per this many milliseconds for each kind of event.
pub const INTERVAL_MS: u64 = 1000;

/// Keys a site tracks apart; further keys share one slot (see the module header).
pub const KEYS_PER_SITE: usize = 16;

/// A slot's state is one word: when its last line was written (milliseconds on
/// [`crate::clock`], 0: never) in the high bits, and how many were left out since in the
/// low [`COUNT_BITS`] bits (saturating). One word, so a compare-and-swap moves both at once.
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TIME_MAX: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// One key's limit: the key (0: free) and its state word.
struct Slot {
    key: AtomicU64,
    state: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            key: AtomicU64::new(0),
            state: AtomicU64::new(0),
        }
    }
}

/// The rate limit of one call site, with a slot per key it has seen. Lock-free: a key
/// claims a free slot with a compare-and-swap and keeps it for the life of the process.
pub struct RateLimit {
    slots: [Slot; KEYS_PER_SITE],
    /// Shared by the keys that found every slot taken.
    overflow: Slot,
}

/// A line that gets through: how many were left out before it, over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    pub suppressed: u64,
    /// Milliseconds since the last line of this kind (0 for the first).
    pub over_ms: u64,
}

impl fmt::Display for Passed {
    /// ` (and 41 more like this in the last 2.3 s)`, or nothing when none was left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suppressed == 0 {
            return Ok(());
        }
        let plus = if self.suppressed >= COUNT_MAX {
            "+"
        } else {
            ""
        };
        write!(
            f,
            " (and {}{plus} more like this in the last {}.{} s)",
            self.suppressed,
            self.over_ms / 1000,
            self.over_ms % 1000 / 100
        )
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            slots: [const { Slot::new() }; KEYS_PER_SITE],
            overflow: Slot::new(),
        }
    }

    /// Whether a line for `key` may be written at `now_ms` (milliseconds on a monotonic
    /// clock, never 0): `Some` with what was left out before it, or `None` (counted).
    pub fn admit(&self, key: u64, now_ms: u64) -> Option<Passed> {
        let state = &self.slot(key).state;
        let now_ms = now_ms.clamp(1, TIME_MAX);
        let mut current = state.load(Ordering::Relaxed);
        loop {
            let last = current >> COUNT_BITS;
            let count = current & COUNT_MAX;
            let suppress = last != 0 && now_ms.saturating_sub(last) < INTERVAL_MS;
            let next = match suppress {
                true if count == COUNT_MAX => return None,
                true => current + 1,
                false => now_ms << COUNT_BITS,
            };
            match state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) if suppress => return None,
                Ok(_) => {
                    return Some(Passed {
                        suppressed: count,
                        over_ms: if last == 0 { 0 } else { now_ms - last },
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The slot of `key`: the one it claimed, else a free one it claims now, else the
    /// overflow slot. Open addressing from the key's hash; slots are never given back.
    fn slot(&self, key: u64) -> &Slot {
        // 0 marks a free slot.
        let key = key.max(1);
        let start = (key % KEYS_PER_SITE as u64) as usize;
        for i in 0..KEYS_PER_SITE {
            let slot = &self.slots[(start + i) % KEYS_PER_SITE];
            let mut held = slot.key.load(Ordering::Relaxed);
            if held == 0 {
                held = match slot
                    .key
                    .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => key,
                    Err(other) => other,
                };
            }
            if held == key {
                return slot;
            }
        }
        &self.overflow
    }

    /// Writes the line `message` at `level` unless a line for `key` was written less than
    /// [`INTERVAL_MS`] ago. `message` is formatted only if it is written.
    pub fn write<K: Hash + ?Sized>(&self, level: Level, key: &K, message: fmt::Arguments) {
        let now_ms = crate::clock::now().ms();
        if let Some(passed) = self.admit(hash_key(key), now_ms) {
            write(level, format_args!("{message}{passed}"));
        }
    }
}

/// A key as a word. `DefaultHasher::new()` has fixed keys: no allocation, no randomness.
fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Logs at INFO: `weir::info!("listening on {addr}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at WARN.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Logs at ERROR.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Rate-limited line at `$level` (see the module header): one static [`RateLimit`] per
/// call site. Use [`info_limited!`](crate::info_limited) and its siblings.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $key:expr; $($arg:tt)*) => {{
        static LIMIT: $crate::log::RateLimit = $crate::log::RateLimit::new();
        LIMIT.write($level, &$key, format_args!($($arg)*))
    }};
}

/// Logs at INFO, at most once a second from this call site (for each key):
/// `weir::info_limited!(key = addr; "target {addr}: back up")`.
#[macro_export]
macro_rules! info_limited {
    (key = $key:expr; $($arg:tt)*) => {
        $crate::log_limited!($crate::log::Level::Info, $key; $($arg)*)
    };
    ($($arg:tt)*) => { $crate::log_limited!($crate::log::Level::Info, (); $($arg)*) };
}

/// Logs at WARN, at most once a second from this call site (for each key).
#[macro_export]
macro_rules! warn_limited {
    (key = $key:expr; $($arg:tt)*) => {
        $crate::log_limited!($crate::log::Level::Warn, $key; $($arg)*)
    };
    ($($arg:tt)*) => { $crate::log_limited!($crate::log::Level::Warn, (); $($arg)*) };
}

/// Logs at ERROR, at most once a second from this call site (for each key).
#[macro_export]
macro_rules! error_limited {
    (key = $key:expr; $($arg:tt)*) => {
        $crate::log_limited!($crate::log::Level::Error, $key; $($arg)*)
    };
    ($($arg:tt)*) => { $crate::log_limited!($crate::log::Level::Error, (); $($arg)*) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_323_039_123);
        assert_eq!(timestamp(at), "2026-12-03T18:37:19.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    /// Clock readings are never 0 (see `crate::clock`); these tests start at 5 s.
    const T0: u64 = 5_000;

    #[test]
    fn one_line_a_second_then_the_count_of_those_left_out() {
        let limit = RateLimit::new();
        assert_eq!(
            limit.admit(7, T0),
            Some(Passed {
                suppressed: 0,
                over_ms: 0
            })
        );
        for ms in 1..=41 {
            assert_eq!(limit.admit(7, T0 + ms * 20), None, "{ms}");
        }
        assert_eq!(limit.admit(7, T0 + 999), None);
        let passed = limit.admit(7, T0 + 2_345).unwrap();
        assert_eq!(
            passed,
            Passed {
                suppressed: 42,
                over_ms: 2_345
            }
        );
        assert_eq!(
            passed.to_string(),
            " (and 42 more like this in the last 2.3 s)"
        );
        // The window starts again at the line that got through.
        assert_eq!(limit.admit(7, T0 + 3_000), None);
        assert_eq!(limit.admit(7, T0 + 3_345).unwrap().suppressed, 1);
        // A quiet kind says nothing more than its message.
        assert_eq!(limit.admit(7, T0 + 60_000).unwrap().to_string(), "");
    }

    #[test]
    fn each_key_is_limited_on_its_own() {
        let limit = RateLimit::new();
        assert!(limit.admit(1, T0).is_some());
        assert!(limit.admit(2, T0).is_some());
        assert!(limit.admit(1, T0 + 10).is_none());
        assert!(limit.admit(2, T0 + 10).is_none());
        assert!(limit.admit(hash_key("10.0.0.1:80"), T0).is_some());
        assert!(limit.admit(hash_key("10.0.0.2:80"), T0).is_some());
        assert!(limit.admit(hash_key("10.0.0.1:80"), T0 + 10).is_none());
        // 0 marks a free slot, yet is a key like any other (one with 1, which no hash
        // makes likely).
        let limit = RateLimit::new();
        assert!(limit.admit(0, T0).is_some());
        assert!(limit.admit(0, T0 + 10).is_none());
    }

    #[test]
    fn keys_beyond_the_table_share_one_limit() {
        let limit = RateLimit::new();
        let keys = KEYS_PER_SITE as u64;
        for k in 1..=keys {
            assert!(limit.admit(k, T0).is_some(), "{k}");
        }
        // Every slot is taken: the next keys share the overflow slot.
        assert!(limit.admit(keys + 1, T0).is_some());
        assert!(limit.admit(keys + 2, T0).is_none());
        assert_eq!(limit.admit(keys + 3, T0 + 1_000).unwrap().suppressed, 1);
        // The keys that have slots keep them.
        assert!(limit.admit(1, T0 + 500).is_none());
        assert!(limit.admit(1, T0 + 1_000).is_some());
    }

    #[test]
    fn the_count_saturates() {
        let limit = RateLimit::new();
        assert!(limit.admit(3, T0).is_some());
        let slot = limit.slot(3);
        slot.state
            .store((T0 << COUNT_BITS) | (COUNT_MAX - 1), Ordering::Relaxed);
        assert!(limit.admit(3, T0 + 1).is_none());
        assert!(limit.admit(3, T0 + 2).is_none());
        let passed = limit.admit(3, T0 + 1_500).unwrap();
        assert_eq!(passed.suppressed, COUNT_MAX);
        assert!(passed.to_string().starts_with(" (and 16777215+ more"));
    }

    #[test]
    fn threads_racing_let_one_line_through() {
        let limit = RateLimit::new();
        let passed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        if limit.admit(9, T0).is_some() {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 1);
        assert_eq!(limit.admit(9, T0 + 1_000).unwrap().suppressed, 3_999);
    }
}
