//! `[[route]]`: which requests a route takes (listener, host, path, methods) and what it
//! does with them (an upstream group, with its path and `Host` rewrites, or a mock), plus
//! its per-route settings (body limit, throttles, API keys, cache).
//!
//! Owns: [`Route`], [`Integration`], their file form, and the checks of paths, hosts and
//! methods. Re-exports [`HostPattern`] (owned by `router`), [`HttpIntegration`] and
//! [`HostRewrite`] (owned by `rewrite`), and [`Mock`] (owned by `http`).
//!
//! Must not: do any I/O, or be consulted on the request path in its file form. Route
//! conflicts are found by the router itself (`Router::build`), called from `resolve`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::cache::{resolve_route_cache, RouteCache, RouteCacheFile};
use super::errors::{span_of, Checker};
use super::limits::{resolve_throttle, Throttle, ThrottleFile};
use super::listener::Listener;
use super::server::HttpLimits;
use super::upstream::Upstream;
use super::values::{body_limit, is_host_byte, is_tchar, Size};
pub use crate::http::Mock;
pub use crate::rewrite::{HostRewrite, HttpIntegration};
pub use crate::router::HostPattern;
use crate::router::RouteSpec;

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Route {
    /// Line of the `[[route]]` table, for messages.
    pub line: usize,
    /// Listener index, or `None` for every listener.
    pub listener: Option<usize>,
    pub host: HostPattern,
    pub path: String,
    /// Methods as written; `None` means any method.
    pub methods: Option<Vec<String>>,
    pub integration: Integration,
    pub max_body: u64,
    /// The route's bucket (API Gateway's method level).
    pub throttle: Option<Throttle>,
    /// A bucket per client IP address, and how many addresses the table holds.
    pub throttle_per_ip: Option<(Throttle, usize)>,
    /// Send `RateLimit` fields on admitted responses too (always on 429s).
    pub rate_limit_headers: bool,
    /// Name that usage plans use for this route.
    pub name: Option<String>,
    /// Requests need a valid API key (403 otherwise, before any other work).
    pub api_key_required: bool,
    /// The client's API key header goes on to the upstream (else it is removed).
    pub forward_api_key: bool,
    /// Lower-case header that carries the checked key's `id` upstream.
    pub api_key_id_header: Option<String>,
    /// The response cache for this route, if it has one.
    pub cache: Option<RouteCache>,
}

impl Route {
    /// What the router needs of this route.
    pub fn spec(&self) -> RouteSpec<'_> {
        RouteSpec {
            line: self.line,
            listener: self.listener,
            host: &self.host,
            path: &self.path,
            methods: self.methods.as_deref(),
        }
    }

    /// The route as metrics name it: `METHOD[,METHOD] /template`, or `ANY /template`, with
    /// the host before the path when the route has one (`GET api.example.com/items/{id}`).
    pub fn label(&self) -> String {
        let methods = self.methods.as_ref().map_or("ANY".into(), |m| m.join(","));
        let host = match &self.host {
            HostPattern::Default => String::new(),
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        };
        format!("{methods} {host}{}", self.path)
    }
}

#[derive(Debug, Clone)]
pub enum Integration {
    Http(HttpIntegration),
    Mock(Mock),
}

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[[route]]`: what to do with requests for a host and path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    /// Path pattern: `/users/{id}`, `/static/{*rest}`.
    path: Spanned<String>,
    /// Exact (`api.example.com`) or wildcard (`*.example.com`) host. Absent: default host.
    host: Option<Spanned<String>>,
    /// Methods this route answers. Absent: any. `GET` also answers `HEAD`.
    methods: Option<Spanned<Vec<String>>>,
    /// Only on this listener (by name). Absent: every listener.
    listener: Option<Spanned<String>>,
    /// Name of an `[upstream.NAME]` group (the HTTP integration).
    upstream: Option<Spanned<String>>,
    /// A fixed response (the mock integration).
    mock: Option<Spanned<MockFile>>,
    /// Remove this prefix from the path before forwarding.
    strip_prefix: Option<Spanned<String>>,
    /// Prepend this prefix (after `strip_prefix`).
    add_prefix: Option<Spanned<String>>,
    /// Send the client's `Host` upstream instead of the target's.
    preserve_host: Option<bool>,
    /// Send this `Host` upstream.
    set_host: Option<Spanned<String>>,
    /// Largest request body for this route. Default `[http] max_body`; 0: no limit.
    max_body: Option<Size>,
    /// A bucket for this route (the method level).
    throttle: Option<Spanned<ThrottleFile>>,
    /// A bucket per client IP address on this route.
    throttle_per_ip: Option<Spanned<ThrottleFile>>,
    /// Name for usage plans (`routes = [...]`).
    name: Option<Spanned<String>>,
    /// Require a valid API key: 403 otherwise.
    api_key_required: Option<Spanned<bool>>,
    /// Send the client's API key header on to the upstream. Default false: the key is a
    /// secret between the client and Weir, and is removed once checked.
    forward_api_key: Option<Spanned<bool>>,
    /// Send the checked key's `id` upstream in this header (e.g. `x-api-key-id`); any copy
    /// the client sent is removed, so it cannot be forged.
    api_key_id_header: Option<Spanned<String>>,
    /// Cache responses (upstream routes only).
    cache: Option<Spanned<RouteCacheFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MockFile {
    /// Default 200.
    status: Option<u16>,
    /// Default empty.
    body: Option<String>,
    /// Extra response headers.
    headers: Option<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

/// What a route is resolved against.
pub(super) struct RouteContext<'a> {
    pub(super) listeners: &'a [Listener],
    pub(super) upstreams: &'a [Upstream],
    pub(super) http: &'a HttpLimits,
    /// Some API key is defined (else `api_key_required` could only ever answer 403).
    pub(super) have_keys: bool,
}

pub(super) fn resolve_route(
    raw: Spanned<RouteFile>,
    cx: &RouteContext,
    ck: &mut Checker,
) -> Option<Route> {
    let RouteContext {
        listeners,
        upstreams,
        http,
        have_keys,
    } = *cx;
    let span = raw.span();
    let line = ck.position(span.start).0;
    let r = raw.into_inner();
    let mut ok = true;

    let path = match parse_path(r.path.get_ref()) {
        Ok(p) => p,
        Err(msg) => {
            ck.error(r.path.span(), msg);
            ok = false;
            String::new()
        }
    };

    let host = match &r.host {
        None => HostPattern::Default,
        Some(h) => match parse_host_pattern(h.get_ref()) {
            Ok(p) => p,
            Err(msg) => {
                ck.error(h.span(), msg);
                ok = false;
                HostPattern::Default
            }
        },
    };

    // Methods are matched as upper case: `get` means GET. `ANY` is API Gateway's word for
    // every method, the same as leaving `methods` out.
    let methods = match &r.methods {
        None => None,
        Some(m) => {
            if m.get_ref().is_empty() {
                ck.error(
                    m.span(),
                    "methods is empty: leave it out (or write [\"ANY\"]) to allow any method",
                );
                ok = false;
            }
            for method in m.get_ref() {
                if method.is_empty() || !method.bytes().all(is_tchar) {
                    ck.error(m.span(), format!("`{method}` is not a valid HTTP method"));
                    ok = false;
                }
            }
            let upper: Vec<String> = m.get_ref().iter().map(|x| x.to_ascii_uppercase()).collect();
            (!upper.iter().any(|x| x == "ANY")).then_some(upper)
        }
    };

    let listener = match &r.listener {
        None => None,
        Some(name) => match listeners.iter().position(|l| &l.name == name.get_ref()) {
            Some(i) => Some(i),
            None => {
                let known: Vec<_> = listeners.iter().map(|l| l.name.as_str()).collect();
                ck.error(
                    name.span(),
                    format!(
                        "no listener is named `{}` (listeners: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                );
                ok = false;
                None
            }
        },
    };

    let integration = match (&r.upstream, r.mock) {
        (Some(_), Some(m)) => {
            ck.error(
                m.span(),
                "a route has either `upstream` or `mock`, not both",
            );
            return None;
        }
        (None, None) => {
            ck.error(
                span,
                "this route has no integration: add `upstream = \"NAME\"` or `mock = { ... }`",
            );
            return None;
        }
        (None, Some(m)) => {
            for (key, present) in [
                ("strip_prefix", r.strip_prefix.is_some()),
                ("add_prefix", r.add_prefix.is_some()),
                ("preserve_host", r.preserve_host.is_some()),
                ("set_host", r.set_host.is_some()),
            ] {
                if present {
                    ck.error(
                        span.clone(),
                        format!("`{key}` applies to upstream routes, not to a mock"),
                    );
                    ok = false;
                }
            }
            Integration::Mock(resolve_mock(m, ck)?)
        }
        (Some(name), None) => {
            let Some(upstream) = upstreams.iter().position(|u| &u.name == name.get_ref()) else {
                ck.error(
                    name.span(),
                    format!("no [upstream.{}] is defined for this route", name.get_ref()),
                );
                return None;
            };
            let prefix = |p: &Option<Spanned<String>>, ck: &mut Checker| -> Option<String> {
                let p = p.as_ref()?;
                let v = p.get_ref();
                if !v.starts_with('/')
                    || (v.len() > 1 && v.ends_with('/'))
                    || v.contains(['?', '#'])
                {
                    ck.error(
                        p.span(),
                        format!(
                            "`{v}` must start with `/`, not end with `/`, and have no `?` or `#`"
                        ),
                    );
                }
                Some(v.clone())
            };
            let strip_prefix = prefix(&r.strip_prefix, ck);
            let add_prefix = prefix(&r.add_prefix, ck);
            let host = match (r.preserve_host, &r.set_host) {
                (Some(true), Some(h)) => {
                    ck.error(
                        h.span(),
                        "use either `preserve_host` or `set_host`, not both",
                    );
                    HostRewrite::Preserve
                }
                (Some(true), None) => HostRewrite::Preserve,
                (_, Some(h)) => {
                    if h.get_ref().is_empty() || !h.get_ref().bytes().all(is_host_byte) {
                        ck.error(h.span(), format!("`{}` is not a valid Host", h.get_ref()));
                    }
                    HostRewrite::Fixed(h.get_ref().clone())
                }
                _ => HostRewrite::Target,
            };
            Integration::Http(HttpIntegration {
                upstream,
                strip_prefix,
                add_prefix,
                host,
            })
        }
    };

    let rate_limit_headers = r
        .throttle
        .as_ref()
        .and_then(|t| t.get_ref().headers)
        .unwrap_or(false);
    let throttle = r.throttle.map(|t| resolve_throttle(t, "route", true, ck));
    let throttle_per_ip = r.throttle_per_ip.map(|t| {
        let clients = t.get_ref().clients.unwrap_or(65_536) as usize;
        if !(16..=1 << 24).contains(&clients) {
            ck.error(t.span(), "clients must be between 16 and 16777216");
        }
        (resolve_throttle(t, "client", false, ck), clients)
    });
    let name = r.name.as_ref().map(|n| n.get_ref().clone());
    let api_key_required = r.api_key_required.as_ref().is_some_and(|b| *b.get_ref());
    if api_key_required && !have_keys {
        ck.error(
            span_of(&r.api_key_required),
            "api_key_required = true, but no API key is defined, so every request would get 403: \
             add [[api_key]] entries (or an [api_keys] file), or remove api_key_required",
        );
    }
    let mut forward_api_key = true;
    let mut api_key_id_header = None;
    if let Some(forward) = &r.forward_api_key {
        if !api_key_required {
            ck.error(
                forward.span(),
                "forward_api_key applies to routes with api_key_required = true",
            );
        }
    }
    if let Some(h) = &r.api_key_id_header {
        if !api_key_required {
            ck.error(
                h.span(),
                "api_key_id_header applies to routes with api_key_required = true",
            );
        } else if h.get_ref().is_empty() || !h.get_ref().bytes().all(is_tchar) {
            ck.error(h.span(), format!("`{}` is not a header name", h.get_ref()));
        } else {
            api_key_id_header = Some(h.get_ref().to_ascii_lowercase());
        }
    }
    if api_key_required {
        forward_api_key = r.forward_api_key.as_ref().is_some_and(|b| *b.get_ref());
    }
    let cache = match r.cache {
        Some(c) if matches!(integration, Integration::Mock(_)) => {
            ck.error(
                c.span(),
                "`cache` applies to upstream routes: a mock is already as fast as a hit",
            );
            None
        }
        Some(c) => resolve_route_cache(c, ck),
        None => None,
    };
    if !ok {
        return None;
    }
    Some(Route {
        line,
        listener,
        host,
        path,
        methods,
        integration,
        max_body: r.max_body.map_or(http.max_body, body_limit),
        throttle,
        throttle_per_ip,
        rate_limit_headers,
        name,
        api_key_required,
        forward_api_key,
        api_key_id_header,
        cache,
    })
}

fn resolve_mock(raw: Spanned<MockFile>, ck: &mut Checker) -> Option<Mock> {
    let span = raw.span();
    let m = raw.into_inner();
    let status = m.status.unwrap_or(200);
    if !(200..=599).contains(&status) {
        ck.error(
            span.clone(),
            format!("mock status {status} must be 200 to 599"),
        );
        return None;
    }
    let mut headers = Vec::new();
    for (name, value) in m.headers.unwrap_or_default() {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            ck.error(span.clone(), format!("`{name}` is not a valid header name"));
        } else if crate::http::is_framing_or_hop_header(lower.as_bytes()) {
            ck.error(
                span.clone(),
                format!("header `{name}` is set by Weir itself and cannot be mocked"),
            );
        } else if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            ck.error(
                span.clone(),
                format!("the value of header `{name}` has a control character"),
            );
        } else {
            headers.push((name, value));
        }
    }
    Some(Mock {
        status,
        headers,
        body: m.body.unwrap_or_default(),
    })
}

/// A route's `path`, in matchit's syntax. API Gateway's greedy `{proxy+}` is accepted
/// as the catch-all `{*proxy}`; other routers' `:id` and `*` are refused with the way to
/// write them here, since matchit would take them literally and they would never match
/// what the user meant.
fn parse_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("path `{p}` must start with `/`"));
    }
    let segments: Vec<&str> = p[1..].split('/').collect();
    let mut out = String::with_capacity(p.len());
    for (i, seg) in segments.iter().enumerate() {
        out.push('/');
        if let Some(name) = seg.strip_prefix(':') {
            let name = if name.is_empty() { "id" } else { name };
            return Err(format!(
                "`{p}`: `{seg}` is not a parameter here: write it in braces, like `{{{name}}}`"
            ));
        }
        if seg.starts_with('*') {
            let name = seg.trim_start_matches('*');
            let name = if name.is_empty() { "rest" } else { name };
            return Err(format!(
                "`{p}`: `{seg}` is not a wildcard here: a catch-all is written `{{*{name}}}` and ends the path"
            ));
        }
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix("+}")) {
            Some(name) if i + 1 == segments.len() => {
                out.push_str("{*");
                out.push_str(name);
                out.push('}');
            }
            Some(_) => {
                return Err(format!(
                    "`{p}`: a greedy parameter like `{seg}` must end the path"
                ))
            }
            None => out.push_str(seg),
        }
    }
    Ok(out)
}

fn parse_host_pattern(h: &str) -> Result<HostPattern, String> {
    let lower = h.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
    let has_port = if lower.starts_with('[') {
        !lower.ends_with(']')
    } else {
        lower.contains(':')
    };
    if has_port {
        let bare = match lower.rfind(':') {
            Some(i) if !lower.starts_with('[') || lower[..i].ends_with(']') => &lower[..i],
            _ => lower.as_str(),
        };
        return Err(format!(
            "`{h}`: a route's host carries no port: write `{bare}`; it matches on every port of the route's listeners (use `listener` to choose a port)"
        ));
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') || !suffix.bytes().all(is_host_byte) {
            return Err(format!("`{h}` is not a valid wildcard host"));
        }
        return Ok(HostPattern::Wildcard(format!(".{suffix}")));
    }
    if lower.is_empty() || lower.contains('*') || !lower.bytes().all(is_host_byte) {
        return Err(format!(
            "`{h}` is not a valid host: use `api.example.com` or `*.example.com`"
        ));
    }
    Ok(HostPattern::Exact(lower))
}
