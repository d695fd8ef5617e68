//! `[cache]` and a route's `cache = { ... }`: how much memory the response cache may use,
//! and what each route caches, for how long, under which key, and who may refresh it.
//!
//! Owns: the file form (`CacheFile`, `RouteCacheFile`) of [`RouteCache`], [`QueryKey`] and
//! [`Invalidate`] (owned by `cache`, re-exported here) and their checks.
//!
//! Must not: do any I/O, or be consulted on the request path in its file form.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::errors::{span_of, Checker};
use super::values::{is_tchar, Dur, Size};
pub use crate::cache::{Invalidate, QueryKey, RouteCache};

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[cache]`: process-wide response-cache settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    /// Bytes all cache shards hold together, split evenly among the workers. Default 64m.
    pub(super) memory: Option<Size>,
}

/// `cache = { ttl = "300s", ... }` on a route: its response cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteCacheFile {
    /// Default freshness. Default 300s, at most 3600s (API Gateway's limits).
    ttl: Option<Spanned<Dur>>,
    /// Largest response stored. Default 1m, at most 64m.
    max_entry: Option<Spanned<Size>>,
    /// Methods answered from the cache. Default `["GET", "HEAD"]`.
    methods: Option<Vec<String>>,
    /// `"all"` (default), `"ignore"` or `"sorted"`.
    query: Option<String>,
    /// Request headers that are part of the key, e.g. `["accept-language"]`.
    key_headers: Option<Vec<String>>,
    /// Follow the origin's `Cache-Control` and `Expires`. Default true.
    honor_origin: Option<bool>,
    /// Store responses that set cookies. Default false.
    set_cookie: Option<bool>,
    /// `"never"` (default), `"anyone"` or `"api_key"`: who may refresh an entry with
    /// `Cache-Control: max-age=0`.
    invalidate: Option<String>,
    /// Serve stale entries this long when the upstream fails. Default 0s.
    stale_if_error: Option<Dur>,
    /// Longest wait for a concurrent fetch of the same key. Default 5s.
    lock_timeout: Option<Spanned<Dur>>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

pub(super) fn resolve_route_cache(
    raw: Spanned<RouteCacheFile>,
    ck: &mut Checker,
) -> Option<RouteCache> {
    let span = raw.span();
    let c = raw.into_inner();
    let errors = ck.errors.len();
    let ttl = c
        .ttl
        .as_ref()
        .map_or(Duration::from_secs(300), |d| d.get_ref().0);
    if ttl.is_zero() || ttl > Duration::from_secs(3600) {
        ck.error(span_of(&c.ttl), "cache ttl must be from 1s to 3600s");
    }
    let max_entry = c.max_entry.as_ref().map_or(1 << 20, |s| s.get_ref().0);
    if !(1..=64 << 20).contains(&max_entry) {
        ck.error(
            span_of(&c.max_entry),
            "cache max_entry must be from 1 byte to 64m",
        );
    }
    let methods: Vec<String> = c
        .methods
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()])
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.is_empty() {
        ck.error(
            span.clone(),
            "cache methods is empty: leave `cache` out instead",
        );
    }
    if methods.iter().any(|m| m == "HEAD") && !methods.iter().any(|m| m == "GET") {
        ck.error(
            span.clone(),
            "cache methods has HEAD without GET: HEAD is answered from GET entries, so nothing would ever be cached; write [\"GET\", \"HEAD\"]",
        );
    }
    for m in &methods {
        if m.is_empty() || !m.bytes().all(is_tchar) {
            ck.error(span.clone(), format!("`{m}` is not a valid HTTP method"));
        } else if matches!(m.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            ck.error(
                span.clone(),
                format!(
                    "{m} changes the resource: it invalidates cached entries, it is never cached"
                ),
            );
        }
    }
    let query = match c.query.as_deref() {
        None | Some("all") => QueryKey::All,
        Some("ignore") => QueryKey::Ignore,
        Some("sorted") => QueryKey::Sorted,
        Some(other) => {
            ck.error(
                span.clone(),
                format!("query = \"{other}\": use \"all\", \"ignore\" or \"sorted\""),
            );
            QueryKey::All
        }
    };
    let key_headers: Vec<String> = c
        .key_headers
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in &key_headers {
        if h.is_empty() || !h.bytes().all(is_tchar) {
            ck.error(span.clone(), format!("`{h}` is not a valid header name"));
        }
    }
    let invalidate = match c.invalidate.as_deref() {
        None | Some("never") => Invalidate::Never,
        Some("anyone") => Invalidate::Anyone,
        Some("api_key") => Invalidate::ApiKey,
        Some(other) => {
            ck.error(
                span.clone(),
                format!("invalidate = \"{other}\": use \"never\", \"anyone\" or \"api_key\""),
            );
            Invalidate::Never
        }
    };
    let lock_timeout = c
        .lock_timeout
        .as_ref()
        .map_or(Duration::from_secs(5), |d| d.get_ref().0);
    if lock_timeout.is_zero() {
        ck.error(
            span_of(&c.lock_timeout),
            "cache lock_timeout must be more than zero",
        );
    }
    (ck.errors.len() == errors).then(|| RouteCache {
        ttl,
        max_entry,
        methods,
        query,
        key_headers,
        honor_origin: c.honor_origin.unwrap_or(true),
        set_cookie: c.set_cookie.unwrap_or(false),
        invalidate,
        stale_if_error: c.stale_if_error.map_or(Duration::ZERO, |d| d.0),
        lock_timeout,
    })
}
