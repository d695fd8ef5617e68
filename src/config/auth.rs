//! `[api_keys]`, `[[api_key]]`, `[[usage_plan]]` and `[quotas]`: API keys (inline or from
//! a keys file), the usage plans that give keys access to routes with their own throttles
//! and quotas, and API Gateway's rule that a key is in at most one plan for any route.
//!
//! Owns: the file form of [`ApiKey`], [`UsagePlan`] (owned by `auth`) and [`Quota`] (owned
//! by `quota`), all re-exported here, and their checks. Only a key's SHA-256 is kept.
//!
//! Must not: do any I/O after load (the keys file is read once, here), or be consulted on
//! the request path in its file form.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::errors::{deserialize_all, Checker, ConfigError};
use super::limits::{resolve_throttle, ThrottleFile};
use super::listener::Listener;
use super::route::Route;
use super::values::is_tchar;
pub use crate::auth::{ApiKey, UsagePlan};
pub use crate::quota::Quota;

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[api_keys]`: where keys come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeysFile {
    /// Request header carrying the key. Default `x-api-key`.
    header: Option<Spanned<String>>,
    /// A file of more `[[api_key]]` entries, relative to this config file.
    file: Option<Spanned<String>>,
}

/// `[[api_key]]`: one key, given as its value or as the SHA-256 of its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeyFile {
    id: Spanned<String>,
    value: Option<Spanned<String>>,
    /// Lower- or upper-case hex SHA-256 of the key, so the file holds no secret.
    sha256: Option<Spanned<String>>,
    /// Default true; a disabled key gets 403.
    enabled: Option<bool>,
}

/// A keys file: only `[[api_key]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    api_key: Vec<Spanned<ApiKeyFile>>,
}

/// `[quotas]`: where usage-plan quota counts are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuotasFile {
    /// The redb file, relative to this config file. Default `weir-usage.redb`.
    pub(super) store: Option<Spanned<String>>,
}

/// `quota = { limit = 1000, period = "DAY" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    limit: u64,
    /// `DAY`, `WEEK` or `MONTH`, aligned to UTC.
    period: String,
}

/// `[[usage_plan]]`: keys, the routes they may use, and their throttle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsagePlanFile {
    name: Spanned<String>,
    /// Key ids in this plan.
    keys: Spanned<Vec<String>>,
    /// Route names the plan covers. Absent, with `listeners` absent too: every route.
    routes: Option<Spanned<Vec<String>>>,
    /// Listeners (stages) whose routes the plan covers.
    listeners: Option<Spanned<Vec<String>>>,
    /// Each key's own bucket.
    throttle: Option<Spanned<ThrottleFile>>,
    /// Per-route buckets for each key: `{ "search" = { rate = 5, burst = 5 } }`.
    route_throttle: Option<BTreeMap<String, Spanned<ThrottleFile>>>,
    /// Requests per key per period.
    quota: Option<Spanned<QuotaFile>>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

pub(super) fn resolve_api_keys(
    settings: Option<Spanned<ApiKeysFile>>,
    inline: Vec<Spanned<ApiKeyFile>>,
    ck: &mut Checker,
) -> (String, Vec<ApiKey>) {
    let mut header = "x-api-key".to_string();
    let mut keys = Vec::new();
    for k in inline {
        resolve_api_key(k, &mut keys, ck);
    }
    if let Some(settings) = settings {
        let settings = settings.into_inner();
        if let Some(h) = settings.header {
            if h.get_ref().is_empty() || !h.get_ref().bytes().all(is_tchar) {
                ck.error(
                    h.span(),
                    format!("api_keys.header `{}` is not a header name", h.get_ref()),
                );
            }
            header = h.get_ref().to_ascii_lowercase();
        }
        if let Some(file) = settings.file {
            // Relative to the config file; read once, at load.
            let dir = Path::new(ck.file).parent().unwrap_or(Path::new("."));
            let path = dir.join(file.get_ref());
            let shown = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Err(e) => ck.error(file.span(), format!("cannot read keys file {shown}: {e}")),
                Ok(text) => {
                    let mut kc = Checker {
                        src: &text,
                        file: &shown,
                        errors: Vec::new(),
                    };
                    if let (Some(kf), _) = deserialize_all::<KeysFile>(&text, &mut kc) {
                        for k in kf.api_key {
                            resolve_api_key(k, &mut keys, &mut kc);
                        }
                    }
                    ck.errors.append(&mut kc.errors);
                }
            }
        }
    }
    (header, keys)
}

fn resolve_api_key(raw: Spanned<ApiKeyFile>, keys: &mut Vec<ApiKey>, ck: &mut Checker) {
    let span = raw.span();
    let k = raw.into_inner();
    let id = k.id.get_ref().clone();
    if keys.iter().any(|x| x.id == id) {
        ck.error(k.id.span(), format!("api key id `{id}` is defined twice"));
    }
    // The id is shown in logs and may be sent upstream in a header (`api_key_id_header`).
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        ck.error(
            k.id.span(),
            format!("api key id `{id}` must be printable ASCII (letters, digits, punctuation)"),
        );
    }
    let sha256 = match (&k.value, &k.sha256) {
        (Some(v), None) => {
            let value = v.get_ref();
            // API Gateway's rule: 20 to 128 characters. Any visible ASCII character, so
            // keys such as `abcd-efgh-ijkl-mnop-qrst` work; no spaces or control characters,
            // which a header value could not carry intact.
            if value.len() < 20 || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic())
            {
                ck.error(
                    v.span(),
                    "an API key value must be 20 to 128 visible ASCII characters (letters, digits, punctuation; no spaces), as API Gateway's",
                );
            }
            crate::auth::sha256(value.as_bytes())
        }
        (None, Some(h)) => match parse_hex32(h.get_ref()) {
            Some(d) => d,
            None => {
                ck.error(h.span(), "sha256 must be 64 hex digits");
                return;
            }
        },
        _ => {
            ck.error(
                span,
                format!("api key `{id}` needs exactly one of `value` and `sha256`"),
            );
            return;
        }
    };
    if keys.iter().any(|x| x.sha256 == sha256) {
        ck.error(
            span,
            format!("api key `{id}` has the same value as another key"),
        );
    }
    keys.push(ApiKey {
        id,
        sha256,
        enabled: k.enabled.unwrap_or(true),
    });
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

pub(super) fn resolve_usage_plan(
    raw: Spanned<UsagePlanFile>,
    keys: &[ApiKey],
    listeners: &[Listener],
    routes: &[Route],
    ck: &mut Checker,
) -> Option<UsagePlan> {
    let p = raw.into_inner();
    let name = p.name.get_ref().clone();
    let mut key_ids = Vec::new();
    for id in p.keys.get_ref() {
        match keys.iter().position(|k| &k.id == id) {
            Some(i) => key_ids.push(i),
            None => ck.error(
                p.keys.span(),
                format!("usage plan `{name}`: no api key has id `{id}`"),
            ),
        }
    }
    let route_by_name = |n: &str| routes.iter().position(|r| r.name.as_deref() == Some(n));
    let mut covers = vec![p.routes.is_none() && p.listeners.is_none(); routes.len()];
    if let Some(names) = &p.routes {
        for n in names.get_ref() {
            match route_by_name(n) {
                Some(i) => covers[i] = true,
                None => ck.error(
                    names.span(),
                    format!("usage plan `{name}`: no route is named `{n}`"),
                ),
            }
        }
    }
    if let Some(names) = &p.listeners {
        for n in names.get_ref() {
            match listeners.iter().position(|l| &l.name == n) {
                Some(l) => {
                    for (i, r) in routes.iter().enumerate() {
                        if r.listener.is_none_or(|x| x == l) {
                            covers[i] = true;
                        }
                    }
                }
                None => ck.error(
                    names.span(),
                    format!("usage plan `{name}`: no listener is named `{n}`"),
                ),
            }
        }
    }
    let throttle = p.throttle.map(|t| resolve_throttle(t, &name, false, ck));
    let mut route_throttles = Vec::new();
    for (route_name, t) in p.route_throttle.unwrap_or_default() {
        let span = t.span();
        match route_by_name(&route_name) {
            Some(i) if covers[i] => {
                let policy = format!("{name}/{route_name}");
                route_throttles.push((i, resolve_throttle(t, &policy, false, ck)));
            }
            Some(_) => ck.error(
                span,
                format!("usage plan `{name}` does not cover route `{route_name}`"),
            ),
            None => ck.error(
                span,
                format!("usage plan `{name}`: no route is named `{route_name}`"),
            ),
        }
    }
    let quota = p.quota.and_then(|q| {
        let span = q.span();
        let q = q.into_inner();
        match crate::quota::Period::parse(&q.period) {
            Some(period) => Some(Quota {
                limit: q.limit,
                period,
            }),
            None => {
                ck.error(
                    span,
                    format!("quota period `{}`: use DAY, WEEK or MONTH", q.period),
                );
                None
            }
        }
    });
    Some(UsagePlan {
        name,
        keys: key_ids,
        covers,
        throttle,
        route_throttles,
        quota,
    })
}

/// API Gateway's rule: a key is in at most one plan for any route.
pub(super) fn check_one_plan_per_key_and_route(
    plans: &[UsagePlan],
    keys: &[ApiKey],
    routes: &[Route],
    ck: &mut Checker,
) {
    for (a, pa) in plans.iter().enumerate() {
        for pb in &plans[a + 1..] {
            let shared_route = (0..routes.len()).find(|&r| pa.covers[r] && pb.covers[r]);
            let shared_key = pa.keys.iter().find(|k| pb.keys.contains(k));
            if let (Some(r), Some(&k)) = (shared_route, shared_key) {
                ck.errors.push(ConfigError {
                    file: ck.file.to_string(),
                    line: routes[r].line,
                    column: 1,
                    message: format!(
                        "api key `{}` is in usage plans `{}` and `{}`, which both cover this route; a key may be in one plan per route",
                        keys[k].id, pa.name, pb.name
                    ),
                });
            }
        }
    }
}
