//! The HTTP caching rules of a shared cache (RFC 9111), as pure functions of header bytes.
//!
//! Owns: reading `Cache-Control`, `Expires`, `Date`, `Age`, `Vary`, validators and the
//! request's conditional headers; deciding whether a response may be stored and for how
//! long it is fresh; deciding whether a stored response satisfies a conditional request.
//!
//! Must not: touch the store or the clock (times come in as arguments), or allocate.

use super::RouteCache;
use crate::http::{list_contains, trim};

/// What a response's `Cache-Control` says (all of its fields together).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub no_store: bool,
    pub private: bool,
    pub no_cache: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub s_maxage: Option<u64>,
    pub max_age: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl ResponseDirectives {
    /// Adds one `Cache-Control` field value. Unknown directives are ignored (RFC 9111
    /// §5.2.3); `private="x"` and `no-cache="x"` count as their unqualified forms, which is
    /// the safe reading for a shared cache. A malformed number makes the response stale.
    pub fn add(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let item = trim(item);
            let (name, arg) = match item.iter().position(|&b| b == b'=') {
                Some(i) => (trim(&item[..i]), Some(unquote(trim(&item[i + 1..])))),
                None => (item, None),
            };
            let seconds = || arg.map_or(Some(0), parse_seconds).or(Some(0));
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            if is(b"no-store") {
                self.no_store = true;
            } else if is(b"private") {
                self.private = true;
            } else if is(b"no-cache") {
                self.no_cache = true;
            } else if is(b"public") {
                self.public = true;
            } else if is(b"must-revalidate") || is(b"proxy-revalidate") {
                self.must_revalidate = true;
            } else if is(b"s-maxage") {
                self.s_maxage = seconds();
            } else if is(b"max-age") {
                self.max_age = seconds();
            } else if is(b"stale-while-revalidate") {
                self.stale_while_revalidate = seconds();
            } else if is(b"stale-if-error") {
                self.stale_if_error = seconds();
            }
        }
    }
}

/// What a request's `Cache-Control` (or `Pragma`) asks of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache`, `max-age=0` or `Pragma: no-cache`: do not answer from the cache.
    pub refresh: bool,
}

impl RequestDirectives {
    pub fn add_cache_control(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            let item = trim(item);
            if item.eq_ignore_ascii_case(b"no-cache") {
                self.refresh = true;
            } else if let Some(v) = strip_prefix_ignore_case(item, b"max-age=") {
                if parse_seconds(unquote(v)) == Some(0) {
                    self.refresh = true;
                }
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Delta-seconds (RFC 9111 §1.2.2): digits; values past 2^31 are capped there.
pub fn parse_seconds(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, &d| {
        (acc * 10 + u64::from(d - b'0')).min(1 << 31)
    }))
}

/// An HTTP date as seconds since the Unix epoch (IMF-fixdate and the two obsolete forms).
pub fn parse_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(trim(v)).ok()?;
    let t = httpdate::parse_http_date(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Everything about an upstream response that decides whether and how it is stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseFacts<'a> {
    pub status: u16,
    pub directives: ResponseDirectives,
    /// `Expires`: `Some(None)` when present but not a valid date (it means "already
    /// expired", RFC 9111 §5.3).
    pub expires: Option<Option<u64>>,
    pub date: Option<u64>,
    pub age: u64,
    pub set_cookie: bool,
    pub vary: Option<&'a [u8]>,
    pub has_validator: bool,
}

/// Why a response was not stored (kept for tests and debugging; never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    Status,
}

/// How a stored response ages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Seconds it is fresh for, counted from its age when received.
    pub lifetime: u64,
    /// Its age when received (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub initial_age: u64,
    /// Always revalidate before use (`no-cache`).
    pub no_cache: bool,
    /// Never serve it stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub must_revalidate: bool,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
}

impl Freshness {
    /// Fresh for `lifetime` seconds from now, with no other constraint.
    pub fn lasting(lifetime: u64) -> Freshness {
        Freshness {
            lifetime,
            initial_age: 0,
            no_cache: false,
            must_revalidate: false,
            stale_while_revalidate: 0,
            stale_if_error: 0,
        }
    }
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Decides whether a response may be stored by a shared cache, and its freshness.
/// `response_delay`: whole seconds between sending the request and receiving the
/// response; `response_time`: wall-clock seconds when it arrived; `authorization`: the
/// request carried `Authorization`.
pub fn storable(
    route: &RouteCache,
    f: &ResponseFacts,
    authorization: bool,
    response_delay: u64,
    response_time: u64,
) -> Result<Freshness, Refusal> {
    let d = &f.directives;
    if route.honor_origin {
        if d.no_store {
            return Err(Refusal::NoStore);
        }
        if d.private {
            return Err(Refusal::Private);
        }
    }
    // RFC 9111 §3.5: these three are the only ways a response to an authenticated
    // request may be shared.
    if authorization && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
        return Err(Refusal::Authorization);
    }
    if f.set_cookie && !route.set_cookie {
        return Err(Refusal::SetCookie);
    }
    if f.vary.is_some_and(|v| list_contains(v, b"*")) {
        return Err(Refusal::VaryStar);
    }
    let explicit = if route.honor_origin {
        d.s_maxage.or(d.max_age).or_else(|| {
            f.expires.map(|e| match e {
                Some(expires) => expires.saturating_sub(f.date.unwrap_or(response_time)),
                None => 0,
            })
        })
    } else {
        None
    };
    let cacheable_status = match f.status {
        206 | 304 | 0..=199 => false,
        s if explicit.is_some() => s < 600,
        s => heuristically_cacheable(s),
    };
    if !cacheable_status {
        return Err(Refusal::Status);
    }
    let apparent_age = f.date.map_or(0, |date| response_time.saturating_sub(date));
    let corrected_age = f.age + response_delay;
    let honor = route.honor_origin;
    Ok(Freshness {
        lifetime: explicit.unwrap_or(route.ttl.as_secs()),
        initial_age: if honor {
            apparent_age.max(corrected_age)
        } else {
            0
        },
        no_cache: honor && d.no_cache,
        must_revalidate: honor && (d.must_revalidate || d.s_maxage.is_some()),
        stale_while_revalidate: if honor {
            d.stale_while_revalidate.unwrap_or(0)
        } else {
            0
        },
        stale_if_error: if honor {
            d.stale_if_error.unwrap_or(0)
        } else {
            0
        },
    })
}

/// Weak comparison of an `If-None-Match` list against a stored `ETag` (RFC 9110 §13.1.2).
pub fn none_match(if_none_match: &[u8], etag: &[u8]) -> bool {
    let etag = opaque(trim(etag));
    if trim(if_none_match) == b"*" {
        return true;
    }
    if_none_match
        .split(|&b| b == b',')
        .any(|candidate| opaque(trim(candidate)) == etag && !etag.is_empty())
}

/// The opaque part of an entity tag: `W/"x"` and `"x"` compare equal weakly.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route() -> RouteCache {
        crate::config::parse(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"u\"\ncache = { ttl = \"300s\" }\n",
            "t",
        )
        .unwrap()
        .routes[0]
            .cache
            .clone()
            .unwrap()
    }

    fn facts(cc: &str) -> ResponseFacts<'static> {
        let mut directives = ResponseDirectives::default();
        directives.add(cc.as_bytes());
        ResponseFacts {
            status: 200,
            directives,
            ..Default::default()
        }
    }

    #[test]
    fn directives_are_read_in_any_case_and_form() {
        let mut d = ResponseDirectives::default();
        d.add(b"Public, MAX-AGE=\"60\", s-maxage=30 , stale-while-revalidate=5, x-ext=1");
        d.add(b"stale-if-error=100");
        assert!(d.public && !d.private);
        assert_eq!(
            (
                d.max_age,
                d.s_maxage,
                d.stale_while_revalidate,
                d.stale_if_error
            ),
            (Some(60), Some(30), Some(5), Some(100))
        );
        let mut bad = ResponseDirectives::default();
        bad.add(b"max-age=ten");
        assert_eq!(bad.max_age, Some(0), "a malformed max-age means stale");
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires_then_ttl() {
        let r = route();
        let f = |cc: &str| storable(&r, &facts(cc), false, 0, 1000).unwrap();
        assert_eq!(f("max-age=60, s-maxage=10").lifetime, 10);
        assert_eq!(f("max-age=60").lifetime, 60);
        let mut e = facts("");
        e.expires = Some(Some(1100));
        e.date = Some(1000);
        assert_eq!(storable(&r, &e, false, 0, 1000).unwrap().lifetime, 100);
        e.expires = Some(None);
        assert_eq!(storable(&r, &e, false, 0, 1000).unwrap().lifetime, 0);
        assert_eq!(f("").lifetime, 300);
    }

    #[test]
    fn refusals() {
        let r = route();
        let refuse = |f: &ResponseFacts, auth: bool| storable(&r, f, auth, 0, 0).err();
        assert_eq!(refuse(&facts("no-store"), false), Some(Refusal::NoStore));
        assert_eq!(
            refuse(&facts("private, max-age=60"), false),
            Some(Refusal::Private)
        );
        assert_eq!(
            refuse(&facts("max-age=60"), true),
            Some(Refusal::Authorization)
        );
        for ok in ["public", "s-maxage=5", "must-revalidate"] {
            assert_eq!(refuse(&facts(ok), true), None, "{ok}");
        }
        let mut cookie = facts("");
        cookie.set_cookie = true;
        assert_eq!(refuse(&cookie, false), Some(Refusal::SetCookie));
        let mut star = facts("");
        star.vary = Some(b"accept, *");
        assert_eq!(refuse(&star, false), Some(Refusal::VaryStar));
        let mut status = facts("");
        status.status = 500;
        assert_eq!(refuse(&status, false), Some(Refusal::Status));
        status.directives.max_age = Some(5);
        assert_eq!(refuse(&status, false), None, "explicit freshness allows it");
        let mut partial = facts("max-age=60");
        partial.status = 206;
        assert_eq!(refuse(&partial, false), Some(Refusal::Status));
    }

    #[test]
    fn no_cache_is_stored_but_always_revalidated() {
        let f = storable(&route(), &facts("no-cache"), false, 0, 0).unwrap();
        assert!(f.no_cache);
    }

    #[test]
    fn origin_headers_can_be_ignored() {
        let mut r = route();
        r.honor_origin = false;
        r.ttl = Duration::from_secs(42);
        let f = storable(&r, &facts("no-store, max-age=1"), false, 0, 0).unwrap();
        assert_eq!(f.lifetime, 42);
    }

    #[test]
    fn age_counts_what_the_response_already_had() {
        let mut f = facts("max-age=60");
        f.date = Some(90);
        f.age = 5;
        let fr = storable(&route(), &f, false, 1, 100).unwrap();
        assert_eq!(fr.initial_age, 10, "apparent age 10 beats 5 + 1 s delay");
    }

    #[test]
    fn conditional_matching() {
        assert!(none_match(b"\"a\", W/\"b\"", b"\"b\""));
        assert!(none_match(b"*", b"\"x\""));
        assert!(!none_match(b"\"a\"", b"\"b\""));
        let mut r = RequestDirectives::default();
        r.add_cache_control(b"max-age=0");
        assert!(r.refresh);
        assert_eq!(
            parse_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_date(b"yesterday"), None);
    }
}
