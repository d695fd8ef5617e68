//! Throttles: the token buckets written as `throttle = { rate, burst }` at every level
//! (`[throttle]` for the whole gateway, a listener's, a route's, `throttle_per_ip`, and a
//! usage plan's per-key and per-route buckets).
//!
//! Owns: the file form (`ThrottleFile`) of [`Throttle`] (owned by `limit`, re-exported
//! here) and its checks.
//!
//! Must not: do any I/O, or be consulted on the request path in its file form; the buckets
//! themselves live in `limit`.

use serde::Deserialize;
use toml::Spanned;

use super::errors::Checker;
pub use crate::limit::Throttle;

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `throttle = { rate = 100, burst = 50 }`: a token bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ThrottleFile {
    /// Requests per second (fractions allowed, like 0.5).
    rate: f64,
    /// Bucket size: requests admitted at once after a quiet spell. Default: `rate`, at least 1.
    burst: Option<u32>,
    /// Name in the RateLimit fields. Default: "global", the listener's name, or "route".
    name: Option<String>,
    /// Routes only: send RateLimit fields on admitted responses too. Default false.
    pub(super) headers: Option<bool>,
    /// `throttle_per_ip` only: addresses the table holds (memory: 8 bytes each). Default 65536.
    pub(super) clients: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

pub(super) fn resolve_throttle(
    raw: Spanned<ThrottleFile>,
    default_name: &str,
    is_route: bool,
    ck: &mut Checker,
) -> Throttle {
    let span = raw.span();
    let t = raw.into_inner();
    if !(t.rate.is_finite() && t.rate > 0.0 && t.rate <= 1e9) {
        ck.error(
            span.clone(),
            format!(
                "rate = {}: use a number of requests per second above 0",
                t.rate
            ),
        );
    }
    let burst = t.burst.unwrap_or_else(|| (t.rate.ceil() as u32).max(1));
    if burst == 0 {
        ck.error(span.clone(), "burst must be at least 1");
    }
    if t.headers.is_some() && !is_route {
        ck.error(span.clone(), "`headers` applies to a route's throttle only");
    }
    if t.clients.is_some() && default_name != "client" {
        ck.error(span.clone(), "`clients` applies to throttle_per_ip only");
    }
    let name = t.name.unwrap_or_else(|| default_name.to_string());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        ck.error(
            span,
            format!("throttle name `{name}` must be printable ASCII without quotes or backslashes"),
        );
    }
    Throttle {
        name,
        rate: t.rate,
        burst,
    }
}
