//! Weir's own log lines (start-up, signals, refusals worth an operator's attention), on
//! stderr, one per line: an RFC 3339 UTC timestamp with milliseconds, a level, the message.
//!
//! ```text
//! 2026-12-03T18:37:19.123Z INFO listening on http://127.0.0.1:8080 (listener `public`)
//! 2026-12-03T18:37:20.001Z ERROR quota store /var/lib/weir/usage.redb: cannot write: ...
//! ```
//!
//! Owns: the line format and the levels. Must not: be called once per request on the
//! request path (each line locks stderr and reads the clock); per-request records belong
//! to an access log with its own buffer.

use std::fmt;
use std::io::Write;
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
}
