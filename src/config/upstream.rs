//! `[upstream.NAME]`: groups of backend targets, how requests are balanced among them,
//! their timeouts and failure handling, and TLS toward them.
//!
//! Owns: the file form of [`Upstream`], [`Target`], [`Balance`] (owned by `upstream`, and
//! re-exported here) and [`UpstreamTls`] (owned by `tls`), with the hand-written `TargetFile`
//! deserializer, and resolving host names to socket addresses, here, once, so no worker ever
//! blocks on DNS.
//!
//! Must not: do any I/O after load, or be consulted on the request path in its file form.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::errors::{span_of, Checker};
use super::values::Dur;
pub use crate::tls::UpstreamTls;
pub use crate::upstream::{Balance, Target, Upstream};

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[upstream.NAME]`: a group of backend targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// `"host:port"` strings or `{ address = "host:port", weight = 2 }` tables.
    targets: Spanned<Vec<Spanned<TargetFile>>>,
    /// `"round_robin"` (default) or `"least_outstanding"`.
    balance: Option<Balance>,
    /// Default 5s (nginx `proxy_connect_timeout` is 60s; Envoy's is 5s). Over it: next target, then 504.
    connect_timeout: Option<Spanned<Dur>>,
    /// Longest wait for the response head, and between reads of the response body.
    /// Default 60s (nginx `proxy_read_timeout`). Over it: 504.
    response_timeout: Option<Spanned<Dur>>,
    /// Idle keep-alive connections kept per target per worker. Default 64 (nginx `keepalive`).
    max_idle: Option<u32>,
    /// Idle upstream connections older than this are closed. Default 60s (nginx `keepalive_timeout`).
    idle_timeout: Option<Dur>,
    /// Consecutive failures before a target is left out. Default 3; 0 never leaves one out.
    max_fails: Option<u32>,
    /// How long a failed target is left out. Default 10s (nginx `fail_timeout`).
    fail_timeout: Option<Dur>,
    /// Speak TLS to the targets (nginx `proxy_pass https://` with `proxy_ssl_*`).
    tls: Option<Spanned<UpstreamTlsFile>>,
}

/// `tls = { ca = "ca.pem", server_name = "api.internal", cert = "c.pem", key = "k.pem" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsFile {
    /// CA bundle to verify targets against. Default: the bundled Mozilla root CAs.
    ca: Option<String>,
    /// Name sent as SNI and verified. Default: each target's host.
    server_name: Option<String>,
    /// Client certificate chain (PEM) to present to the targets.
    cert: Option<String>,
    /// Its private key (PEM).
    key: Option<String>,
}

/// A target: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug)]
enum TargetFile {
    Plain(String),
    Table(TargetTable),
}

// By hand rather than `#[serde(untagged)]`, so that a mistake inside a target table (an
// unknown key, a wrong type) is reported as itself, at its own place.
impl<'de> Deserialize<'de> for TargetFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target: \"host:port\" or { address = \"host:port\", weight = 2 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetFile, E> {
                Ok(TargetFile::Plain(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<TargetFile, A::Error> {
                TargetTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(TargetFile::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetTable {
    address: String,
    weight: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

/// An upstream target: `host:port`, never a URL.
fn resolve_target(s: &str) -> Result<SocketAddr, String> {
    if let Some((scheme, rest)) = s.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        return Err(match scheme.to_ascii_lowercase().as_str() {
            "https" => {
                let with_port = if authority.contains(':') {
                    authority.to_string()
                } else {
                    format!("{authority}:443")
                };
                format!(
                    "`{s}`: targets carry no scheme: write `{with_port}`, and add `tls = {{}}` to this upstream to speak HTTPS to it"
                )
            }
            _ => {
                let with_port = if authority.contains(':') {
                    authority.to_string()
                } else {
                    format!("{authority}:80")
                };
                format!("`{s}`: targets carry no scheme: write `{with_port}`")
            }
        });
    }
    if let Some((authority, _)) = s.split_once('/') {
        return Err(format!(
            "`{s}`: targets carry no path: write `{authority}`, and use the route's `add_prefix` to add a path"
        ));
    }
    resolve_addr(s)
}

pub(super) fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("`{s}` needs a port, like `{s}:8080`"));
    }
    // A host name: resolved here, once, never on a worker loop.
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{s}` resolves to no address")),
        Err(e) => Err(format!("cannot resolve `{s}`: {e}")),
    }
}

pub(super) fn resolve_upstream(
    name: &str,
    raw: Spanned<UpstreamFile>,
    ck: &mut Checker,
) -> Option<Upstream> {
    let u = raw.into_inner();
    let targets_span = u.targets.span();
    let mut targets = Vec::new();
    let written = u.targets.get_ref().len();
    for t in u.targets.into_inner() {
        let tspan = t.span();
        let (authority, weight) = match t.into_inner() {
            TargetFile::Plain(a) => (a, 1),
            TargetFile::Table(t) => (t.address, t.weight.unwrap_or(1)),
        };
        if !(1..=1000).contains(&weight) {
            ck.error(tspan.clone(), "weight must be between 1 and 1000");
        }
        match resolve_target(&authority) {
            Ok(addr) => targets.push(Target {
                authority,
                addr,
                weight,
            }),
            Err(msg) => ck.error(tspan, msg),
        }
    }
    if written == 0 {
        ck.error(targets_span, format!("upstream `{name}` has no targets"));
    }
    let tls = u.tls.map(|t| {
        let span = t.span();
        let t = t.into_inner();
        let dir = Path::new(ck.file)
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let ca = t.ca.map(|c| dir.join(c));
        if let Some(ca) = &ca {
            if let Err(msg) = crate::tls::load_roots(ca) {
                ck.error(span.clone(), msg);
            }
        }
        let client_cert = match (t.cert, t.key) {
            (Some(c), Some(k)) => {
                let (c, k) = (dir.join(c), dir.join(k));
                if let Err(msg) = crate::tls::load_certified_key(&c, &k) {
                    ck.error(span.clone(), msg);
                }
                Some((c, k))
            }
            (None, None) => None,
            _ => {
                ck.error(
                    span.clone(),
                    "a client certificate needs both `cert` and `key`",
                );
                None
            }
        };
        UpstreamTls {
            ca,
            server_name: t.server_name,
            client_cert,
        }
    });
    let d = |v: Option<Dur>, default: u64| v.map_or(Duration::from_secs(default), |d| d.0);
    for (key, value) in [
        ("connect_timeout", &u.connect_timeout),
        ("response_timeout", &u.response_timeout),
    ] {
        if value.as_ref().is_some_and(|v| v.get_ref().0.is_zero()) {
            ck.error(span_of(value), format!("{key} must be more than zero"));
        }
    }
    let up = Upstream {
        name: name.to_string(),
        targets,
        balance: u.balance.unwrap_or(Balance::RoundRobin),
        connect_timeout: d(u.connect_timeout.map(Spanned::into_inner), 5),
        response_timeout: d(u.response_timeout.map(Spanned::into_inner), 60),
        max_idle: u.max_idle.unwrap_or(64) as usize,
        idle_timeout: d(u.idle_timeout, 60),
        max_fails: u.max_fails.unwrap_or(3),
        fail_timeout: d(u.fail_timeout, 10),
        tls,
    };
    Some(up)
}
