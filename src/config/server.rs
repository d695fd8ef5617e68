//! `[server]` and `[http]`: process-wide runtime settings, and the limits and timeouts
//! applied to every client connection.
//!
//! Owns: [`Server`], [`Workers`], [`IoDriver`], [`RingMode`], [`HttpLimits`], their file
//! form (`ServerFile`, `HttpFile`, `WorkersFile`) and their checks. [`User`] is owned by
//! `privileges`, and re-exported here.
//!
//! Must not: do any I/O but looking `user` up in the system's user database (through
//! [`crate::privileges::lookup`], once, at load, so `weir check` refuses a user that does
//! not exist), or be consulted on the request path in its file form.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::errors::{span_of, Checker};
use super::values::{body_limit, Dur, Size};
pub use crate::http::HttpLimits;
pub use crate::privileges::User;

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Server {
    pub workers: Workers,
    pub pin: bool,
    pub io: IoDriver,
    pub ring: RingMode,
    pub ring_entries: u32,
    pub drain_timeout: Duration,
    /// Who serves: the process drops to this user once its listeners are bound. `None`:
    /// the user Weir was started as.
    pub user: Option<User>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One worker per CPU the process may run on.
    Auto,
    Count(usize),
}

/// Which I/O driver each worker's runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// io_uring when the kernel allows it, otherwise epoll.
    Auto,
    IoUring,
    Epoll,
}

/// How the io_uring ring is set up (see tuning.md for measured effects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingMode {
    /// The best the kernel supports: `defer_taskrun`, then `coop_taskrun`, then `plain`.
    Auto,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (Linux 6.1+).
    DeferTaskrun,
    /// IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG (Linux 5.19+).
    CoopTaskrun,
    /// No setup flags.
    Plain,
}

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[server]`: process-wide runtime settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    /// `"auto"` (one per allowed CPU) or a number. Like nginx `worker_processes`.
    workers: Option<Spanned<WorkersFile>>,
    /// Pin worker N to the N-th CPU of the process's affinity mask. Default true.
    /// Like nginx `worker_cpu_affinity auto`.
    pin: Option<bool>,
    /// `"auto"`, `"io_uring"` or `"epoll"`. Default auto.
    io: Option<IoDriver>,
    /// io_uring setup: `"auto"`, `"defer_taskrun"`, `"coop_taskrun"`, `"plain"`.
    ring: Option<RingMode>,
    /// Submission queue entries per worker ring (256..=32768). Default 1024.
    ring_entries: Option<Spanned<u32>>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT. Default 30s.
    drain_timeout: Option<Dur>,
    /// The user to serve as: started as root, Weir binds every listener, then drops to
    /// this user (and its group, with no supplementary groups) before any worker starts.
    /// Like nginx `user`. Default: stay the user Weir was started as.
    user: Option<Spanned<String>>,
}

/// `[http]`: limits and timeouts applied to every client connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpFile {
    /// Largest request head (request line + headers). Default 16k. Over it: 431.
    max_head: Option<Spanned<Size>>,
    /// Longest request target. Default 8k (or half of `max_head` if that is smaller). Over it: 414.
    max_uri: Option<Spanned<Size>>,
    /// Most header fields in one request. Default 100. Over it: 431.
    max_headers: Option<Spanned<u32>>,
    /// Time allowed to receive a whole request head. Default 60s (nginx
    /// `client_header_timeout`). Over it: 408 and close.
    header_timeout: Option<Spanned<Dur>>,
    /// Longest pause between two reads of a request body. Default 60s (nginx
    /// `client_body_timeout`). Over it: 408 and close.
    body_timeout: Option<Spanned<Dur>>,
    /// How long an idle keep-alive connection is kept. Default 75s (nginx `keepalive_timeout`).
    keepalive_timeout: Option<Spanned<Dur>>,
    /// Requests served on one connection before it is closed. Default 1000
    /// (nginx `keepalive_requests`).
    keepalive_requests: Option<Spanned<u32>>,
    /// Default largest request body for routes that set none. Default 10m (nginx
    /// `client_max_body_size`, API Gateway's 10 MB payload limit). Over it: 413.
    /// 0: no limit, as in nginx.
    max_body: Option<Size>,
}

#[derive(Debug)]
enum WorkersFile {
    Auto,
    Count(u64),
}

impl<'de> Deserialize<'de> for WorkersFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WorkersFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a number of workers")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WorkersFile, E> {
                u64::try_from(v)
                    .map(WorkersFile::Count)
                    .map_err(|_| E::custom("workers must be \"auto\" or a positive number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WorkersFile, E> {
                if v == "auto" {
                    Ok(WorkersFile::Auto)
                } else {
                    Err(E::custom("workers must be \"auto\" or a positive number"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

pub(super) fn resolve_server(raw: Option<Spanned<ServerFile>>, ck: &mut Checker) -> Server {
    let s = raw.map(Spanned::into_inner).unwrap_or_default();
    let workers = match s.workers.as_ref().map(|w| (w.span(), w.get_ref())) {
        None | Some((_, WorkersFile::Auto)) => Workers::Auto,
        Some((_, &WorkersFile::Count(n))) if (1..=1024).contains(&n) => Workers::Count(n as usize),
        Some((span, WorkersFile::Count(n))) => {
            ck.error(span, format!("workers = {n}: use 1 to 1024, or \"auto\""));
            Workers::Auto
        }
    };
    let ring_entries = s.ring_entries.as_ref().map_or(1024, |r| *r.get_ref());
    if !(256..=32768).contains(&ring_entries) || !ring_entries.is_power_of_two() {
        ck.error(
            s.ring_entries.as_ref().map_or(0..0, |r| r.span()),
            format!("ring_entries = {ring_entries}: use a power of two from 256 to 32768"),
        );
    }
    let user = s.user.as_ref().and_then(|u| resolve_user(u, ck));
    Server {
        workers,
        pin: s.pin.unwrap_or(true),
        io: s.io.unwrap_or(IoDriver::Auto),
        ring: s.ring.unwrap_or(RingMode::Auto),
        ring_entries,
        drain_timeout: s.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        user,
    }
}

/// `user = "NAME"`: the user, if the system has it.
fn resolve_user(written: &Spanned<String>, ck: &mut Checker) -> Option<User> {
    let name = written.get_ref();
    if name.is_empty() {
        ck.error(
            written.span(),
            "user = \"\": write a user name, like \"weir\", or leave `user` out to serve as \
             the user Weir is started as",
        );
        return None;
    }
    match crate::privileges::lookup(name) {
        Ok(Some(user)) => Some(user),
        Ok(None) => {
            ck.error(
                written.span(),
                format!(
                    "user = \"{name}\": this system has no such user: create it (`useradd \
                     --system --no-create-home --shell /usr/sbin/nologin {name}`), or write \
                     the name of an existing one"
                ),
            );
            None
        }
        Err(e) => {
            ck.error(
                written.span(),
                format!("user = \"{name}\": cannot look it up: {e}"),
            );
            None
        }
    }
}

pub(super) fn resolve_http(raw: Option<Spanned<HttpFile>>, ck: &mut Checker) -> HttpLimits {
    let h = raw.map(Spanned::into_inner).unwrap_or_default();
    let dur = |v: &Option<Spanned<Dur>>, default: u64| {
        v.as_ref()
            .map_or(Duration::from_secs(default), |d| d.get_ref().0)
    };
    let max_head = h.max_head.as_ref().map(|s| s.get_ref().0 as usize);
    let limits = HttpLimits {
        max_head: max_head.unwrap_or(16 << 10),
        max_uri: h.max_uri.as_ref().map_or_else(
            || max_head.map_or(8 << 10, |m| (m / 2).min(8 << 10)),
            |s| s.get_ref().0 as usize,
        ),
        max_headers: h
            .max_headers
            .as_ref()
            .map_or(100, |n| *n.get_ref() as usize),
        header_timeout: dur(&h.header_timeout, 60),
        body_timeout: dur(&h.body_timeout, 60),
        keepalive_timeout: dur(&h.keepalive_timeout, 75),
        keepalive_requests: h.keepalive_requests.as_ref().map_or(1000, |n| *n.get_ref()),
        max_body: h.max_body.map_or(10 << 20, body_limit),
    };
    if !(1024..=1 << 20).contains(&limits.max_head) {
        ck.error(span_of(&h.max_head), "max_head must be between 1k and 1m");
    }
    // Checked only as written: the default follows max_head, whose own error is enough.
    if h.max_uri.is_some() && (limits.max_uri < 64 || limits.max_uri > limits.max_head) {
        ck.error(
            span_of(&h.max_uri),
            "max_uri must be at least 64 bytes and no more than max_head",
        );
    }
    if !(1..=crate::http::request::MAX_HEADERS).contains(&limits.max_headers) {
        ck.error(
            span_of(&h.max_headers),
            "max_headers must be between 1 and 128",
        );
    }
    for (name, value) in [
        ("header_timeout", &h.header_timeout),
        ("body_timeout", &h.body_timeout),
        ("keepalive_timeout", &h.keepalive_timeout),
    ] {
        if value.as_ref().is_some_and(|d| d.get_ref().0.is_zero()) {
            ck.error(span_of(value), format!("{name} must be more than zero"));
        }
    }
    if limits.keepalive_requests == 0 {
        ck.error(
            span_of(&h.keepalive_requests),
            "keepalive_requests must be at least 1",
        );
    }
    limits
}
