//! What a request leaves behind: its [`Record`], filled at fixed points of the request path
//! and handed over once, at the one end of every request (`crate::proxy`'s connection
//! loop), whatever the request's fate: answered, refused, failed or cut short.
//!
//! The record is plain data: no allocation, nothing formatted. Its consumers (the access
//! log and metrics, next) read it at the end of a request; today a process-wide sink can be
//! set ([`set_sink`]) and the tests use it. Must not: do I/O or allocate per request; a
//! consumer that needs either hands the record to a thread of its own.

pub mod access_log;
pub mod metrics;

use std::sync::OnceLock;

use crate::cache::Status as CacheStatus;
use crate::clock::Now;

/// One request, as it ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    /// When the head was complete: the request's one clock reading.
    pub start: Now,
    /// When the request ended (the last response byte was handed to the socket).
    pub end: Now,
    /// The config generation it ran on.
    pub generation: u64,
    /// Its listener, an index into the generation's listeners.
    pub listener: u32,
    /// Its route, an index into the generation's routes (`None`: no route matched, or the
    /// head was refused before routing).
    pub route: Option<u32>,
    /// The route's identity across reloads (`crate::gateway::route_key`); 0 without a route.
    pub route_key: u64,
    /// The final status sent to the client; 0 when none was sent (the client left, or the
    /// response broke off before its head).
    pub status: u16,
    /// Request bytes read: the head and the body.
    pub bytes_in: u64,
    /// Response bytes written to the client, 1xx heads included.
    pub bytes_out: u64,
    /// Of those, the final response's head (so the body's length is the difference).
    pub head_bytes: u32,
    /// The upstream the request went to, if it did.
    pub upstream: Option<UpstreamRecord>,
    /// What the cache did (`X-Cache`), on routes that cache.
    pub cache: Option<CacheStatus>,
    /// The API key that authorized it, an index into the config's keys (its `id` may be
    /// logged, never its value).
    pub api_key: Option<u32>,
    /// Why Weir answered itself with an error, or cut the request short.
    pub refusal: Option<Refusal>,
}

/// The upstream part of a request (the last target tried, if several were).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// The upstream group, an index into the generation's upstreams.
    pub group: u32,
    /// The target, an index into the group's targets.
    pub target: u32,
    /// The target's final status; 0 if no response head came.
    pub status: u16,
    /// Targets tried before this one in the same request (connect failures, retries).
    pub retries: u16,
    /// From the start of the request (its clock reading) to the response head, in
    /// nanoseconds (connecting included, as API Gateway's integration latency); 0 if no
    /// head came.
    pub nanos: u64,
}

/// Why a request did not get the integration's answer. The names are API Gateway's
/// gateway response types where one exists ([`Refusal::response_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head broke HTTP/1.1's rules (400), with the parser's reason.
    BadRequest(&'static str),
    /// The head was too large (431) or its target too long (414).
    HeadTooLarge,
    /// The head (or a body) did not arrive in time (408).
    Timeout,
    /// No route for the host and path (404).
    NotFound,
    /// A route for the path, not for the method (405).
    MethodNotAllowed,
    /// The body is larger than the route allows (413).
    TooLarge,
    /// The body's chunked framing was broken (400).
    BadBody,
    /// No usable API key (403).
    InvalidApiKey,
    /// A token bucket refused (429), at this level.
    Throttled(crate::limit::Scope),
    /// The key's quota is spent (429).
    QuotaExceeded,
    /// The listener redirects to HTTPS (301/308).
    Redirect,
    /// Plain HTTP sent to a TLS listener (400).
    PlainHttpOnTls,
    /// No target could be reached or answered with a valid response (502).
    IntegrationFailure,
    /// The target did not answer in time (504).
    IntegrationTimeout,
    /// The client went away before its response was complete.
    ClientGone,
    /// The upstream broke off in the middle of a response already started.
    UpstreamBroke,
}

impl Refusal {
    /// API Gateway's name for it (`$context.error.responseType`).
    pub fn response_type(self) -> &'static str {
        match self {
            Refusal::BadRequest(_) | Refusal::BadBody => "BAD_REQUEST_BODY",
            Refusal::HeadTooLarge | Refusal::TooLarge => "REQUEST_TOO_LARGE",
            Refusal::Timeout => "REQUEST_TIMEOUT",
            Refusal::NotFound | Refusal::MethodNotAllowed => "RESOURCE_NOT_FOUND",
            Refusal::InvalidApiKey => "INVALID_API_KEY",
            Refusal::Throttled(_) => "THROTTLED",
            Refusal::QuotaExceeded => "QUOTA_EXCEEDED",
            Refusal::Redirect => "REDIRECT",
            Refusal::PlainHttpOnTls => "PLAIN_HTTP_ON_TLS",
            Refusal::IntegrationFailure | Refusal::UpstreamBroke => "INTEGRATION_FAILURE",
            Refusal::IntegrationTimeout => "INTEGRATION_TIMEOUT",
            Refusal::ClientGone => "CLIENT_CLOSED",
        }
    }
}

impl Refusal {
    /// The message of Weir's own answer (`$context.error.message`).
    pub fn message(self, status: u16) -> &'static str {
        match self {
            Refusal::QuotaExceeded => "Limit Exceeded",
            Refusal::PlainHttpOnTls => crate::http::write::PLAIN_HTTP_ON_TLS,
            Refusal::ClientGone => "The client closed the connection",
            Refusal::UpstreamBroke => "The upstream broke off its response",
            Refusal::BadRequest(why) => why,
            _ => crate::http::reason(status),
        }
    }

    /// What went wrong with the integration, when that is why (`integrationErrorMessage`).
    pub fn integration_error(self) -> Option<&'static str> {
        match self {
            Refusal::IntegrationFailure => {
                Some("No target could be reached or answered with a valid response")
            }
            Refusal::IntegrationTimeout => Some("The target did not answer in time"),
            Refusal::UpstreamBroke => Some("The target broke off its response"),
            _ => None,
        }
    }
}

/// A consumer of every record: the worker's id and the record.
pub type Sink = fn(usize, &Record);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the process's record sink (once; later calls are ignored). It runs on the worker
/// at the end of every request, so it must be quick and must not block.
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Whether anything consumes records (else the end of a request skips completing one).
#[inline]
pub fn consumed() -> bool {
    SINK.get().is_some()
}

/// Hands a finished request's record to the sink, if one is set.
#[inline]
pub fn emit(worker: usize, record: &Record) {
    if let Some(sink) = SINK.get() {
        sink(worker, record);
    }
}
