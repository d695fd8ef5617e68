//! Configuration: the TOML file format, its defaults, and every check made once at load.
//!
//! Owns: reading the file, rejecting unknown keys, resolving names (upstreams, listeners)
//! to indices and host names to socket addresses, and reporting every mistake with
//! `file:line:column`. The result, [`Config`], is immutable and shared by all workers.
//!
//! Must not: be consulted on the request path in its file form, or do any I/O after
//! start-up. Name resolution happens here, once, so no worker ever blocks on DNS.
//!
//! The file format is documented for users in `docs/config.md`; the `///` comments on
//! the `*File` structs are the same contract, kept next to the code.
//!
//! This file holds [`Config`], the entry points [`load`] and [`parse`], the whole file's
//! table (`ConfigFile`) and `resolve`, which resolves each section in turn and then makes
//! the checks that span sections. Each section has its own file:
//!
//! - `errors`: [`ConfigError`], [`ConfigErrors`], the `Checker` every section reports
//!   through, and the machinery that reports every mistake in one run;
//! - `values`: durations, sizes and byte classes shared by several sections;
//! - `server`: `[server]` and `[http]`;
//! - `listener`: `[[listener]]` and TLS toward clients;
//! - `upstream`: `[upstream.NAME]`, its targets and TLS toward them;
//! - `route`: `[[route]]`: matching, integrations (upstream or mock), per-route settings;
//! - `cache`: `[cache]` and a route's `cache = { ... }`;
//! - `auth`: API keys, the keys file, usage plans and quotas;
//! - `limits`: throttles, at every level;
//! - `log`: `[access_log]` and a listener's `access_log`;
//! - `admin`: `[admin]`, the admin API's listener;
//! - `table`: the route table as `weir routes` and the admin API describe it.

mod admin;
mod auth;
mod cache;
mod errors;
mod limits;
mod listener;
mod log;
mod route;
mod server;
mod table;
mod upstream;
mod values;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub use self::admin::Admin;
pub use self::auth::{ApiKey, Quota, UsagePlan};
pub use self::cache::{Invalidate, QueryKey, RouteCache};
pub use self::errors::{ConfigError, ConfigErrors};
pub use self::limits::Throttle;
pub use self::listener::{CertificateSettings, ClientAuth, Listener, TlsSettings};
pub use self::log::{AccessLogSpec, Destination, Field, Format, ListenerLog, Only};
pub use self::route::{HostPattern, HostRewrite, HttpIntegration, Integration, Mock, Route};
pub use self::server::{HttpLimits, IoDriver, RingMode, Server, User, Workers};
pub use self::table::RouteRow;
pub use self::upstream::{Balance, Target, Upstream, UpstreamTls};
pub use self::values::{is_host_byte, is_tchar, parse_duration, parse_size, Dur, Size};

use self::admin::{resolve_admin, AdminFile};
use self::auth::{
    check_one_plan_per_key_and_route, resolve_api_keys, resolve_usage_plan, ApiKeyFile,
    ApiKeysFile, QuotasFile, UsagePlanFile,
};
use self::cache::CacheFile;
use self::errors::{deserialize_all, Checker};
use self::limits::{resolve_throttle, ThrottleFile};
use self::listener::{resolve_listeners, ListenerFile};
use self::log::{resolve_access_log, AccessLogFile, TracingFile};
use self::route::{resolve_route, RouteContext, RouteFile};
use self::server::{resolve_http, resolve_server, HttpFile, ServerFile};
use self::upstream::{resolve_upstream, UpstreamFile};

// ---------------------------------------------------------------------------------------
// The resolved configuration used by the rest of Weir.
// ---------------------------------------------------------------------------------------

/// A checked configuration. Built only by [`load`] / [`parse`].
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub http: HttpLimits,
    /// The global bucket (API Gateway's account level); off unless configured.
    pub throttle: Option<Throttle>,
    /// Lower-case name of the header that carries API keys.
    pub api_key_header: String,
    pub api_keys: Vec<ApiKey>,
    pub usage_plans: Vec<UsagePlan>,
    /// Where quota counts are kept (only used when a plan has a quota).
    pub quota_store: std::path::PathBuf,
    /// `[cache] memory`: bytes all response-cache shards may hold together.
    pub cache_memory: u64,
    /// `[access_log]`: every listener's, unless a listener says otherwise.
    pub access_log: Option<AccessLogSpec>,
    /// `[admin]`: the admin API, if configured.
    pub admin: Option<Admin>,
    /// `[tracing] generate`: make a `traceparent` for requests without a valid one.
    pub make_traceparent: bool,
    /// The file's text, for the admin API's `/config` (secrets redacted there).
    pub source: std::sync::Arc<str>,
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
}

impl Config {
    /// What the API key table needs of this configuration.
    pub fn key_spec(&self) -> crate::auth::KeySpec<'_> {
        crate::auth::KeySpec {
            header: &self.api_key_header,
            api_keys: &self.api_keys,
            usage_plans: &self.usage_plans,
            routes: self.routes.len(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: Option<Spanned<ServerFile>>,
    #[serde(default)]
    http: Option<Spanned<HttpFile>>,
    /// The global bucket: every request on every listener.
    #[serde(default)]
    throttle: Option<Spanned<ThrottleFile>>,
    #[serde(default)]
    api_keys: Option<Spanned<ApiKeysFile>>,
    #[serde(default)]
    api_key: Vec<Spanned<ApiKeyFile>>,
    #[serde(default)]
    usage_plan: Vec<Spanned<UsagePlanFile>>,
    #[serde(default)]
    quotas: Option<Spanned<QuotasFile>>,
    #[serde(default)]
    cache: Option<Spanned<CacheFile>>,
    /// Where each request's line goes (off unless configured).
    #[serde(default)]
    access_log: Option<Spanned<AccessLogFile>>,
    /// The admin API (off unless configured).
    #[serde(default)]
    admin: Option<Spanned<AdminFile>>,
    /// W3C Trace Context.
    #[serde(default)]
    tracing: Option<Spanned<TracingFile>>,
    #[serde(default)]
    listener: Vec<Spanned<ListenerFile>>,
    #[serde(default)]
    upstream: BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    #[serde(default)]
    route: Vec<Spanned<RouteFile>>,
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&src, &file)
}

/// Checks config text; `file` names it in messages.
///
/// ```
/// let config = weir::config::parse(
///     "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[[route]]\npath = \"/health\"\nmock = {}\n",
///     "inline.toml",
/// )
/// .unwrap();
/// assert_eq!(config.listeners[0].address.port(), 8080);
/// assert_eq!(config.http.max_body, 10 << 20);
/// ```
///
/// Every mistake is reported with its place, all at once:
///
/// ```
/// let errors = weir::config::parse(
///     "[[listener]]\naddress = \"127.0.0.1\"\n\n[[route]]\npath = \"/a\"\nupstream = \"none\"\n",
///     "bad.toml",
/// )
/// .unwrap_err()
/// .to_string();
/// assert_eq!(
///     errors,
///     "bad.toml:2:11: `127.0.0.1` needs a port, like `127.0.0.1:8080`\n\
///      bad.toml:6:12: no [upstream.none] is defined for this route"
/// );
/// ```
pub fn parse(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut ck = Checker {
        src,
        file,
        errors: Vec::new(),
    };
    let (raw, damage) = deserialize_all(src, &mut ck);
    let structural = ck.errors.len();
    let config = raw.and_then(|raw| resolve(raw, &mut ck));
    if ck.errors.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    // A check that only failed because an entry was taken out is not news: drop the
    // semantic errors at the start of a table that lost an entry (for example "this route
    // has no integration" when its `upstream` had the wrong type), and all of them once a
    // whole table was taken out, since references to it would fail too.
    let semantic = ck.errors.split_off(structural);
    if !damage.dropped_table {
        let starts: Vec<(usize, usize)> =
            damage.tables.iter().map(|t| ck.position(t.start)).collect();
        ck.errors.extend(
            semantic
                .into_iter()
                .filter(|e| !starts.contains(&(e.line, e.column))),
        );
    }
    ck.errors.sort_by_key(|e| (e.line, e.column));
    ck.errors.dedup();
    Err(ConfigErrors(ck.errors))
}

fn resolve(raw: ConfigFile, ck: &mut Checker) -> Option<Config> {
    let server = resolve_server(raw.server, ck);
    let http = resolve_http(raw.http, ck);
    let throttle = raw
        .throttle
        .map(|t| resolve_throttle(t, "global", false, ck));

    let listeners = resolve_listeners(raw.listener, ck);
    let access_log = raw.access_log.and_then(|a| resolve_access_log(a, ck));
    let admin = raw.admin.and_then(|a| resolve_admin(a, ck));
    let make_traceparent = raw
        .tracing
        .and_then(|t| t.into_inner().generate)
        .unwrap_or(true);

    let mut upstreams = Vec::new();
    for (name, u) in raw.upstream {
        if let Some(up) = resolve_upstream(name.get_ref(), u, ck) {
            upstreams.push(up);
        }
    }

    let (api_key_header, api_keys) = resolve_api_keys(raw.api_keys, raw.api_key, ck);
    let mut routes = Vec::new();
    for r in raw.route {
        let context = RouteContext {
            listeners: &listeners,
            upstreams: &upstreams,
            http: &http,
            have_keys: !api_keys.is_empty(),
        };
        if let Some(route) = resolve_route(r, &context, ck) {
            routes.push(route);
        }
    }
    let usage_plans = raw
        .usage_plan
        .into_iter()
        .filter_map(|p| resolve_usage_plan(p, &api_keys, &listeners, &routes, ck))
        .collect::<Vec<_>>();
    check_one_plan_per_key_and_route(&usage_plans, &api_keys, &routes, ck);
    let cache_memory = raw
        .cache
        .and_then(|c| c.into_inner().memory)
        .map_or(64 << 20, |s| s.0);
    let config_dir = Path::new(ck.file).parent().unwrap_or(Path::new("."));
    let store = raw.quotas.and_then(|q| q.into_inner().store);
    let quota_store = config_dir.join(store.as_ref().map_or("weir-usage.redb", |s| s.get_ref()));
    if usage_plans.iter().any(|p| p.quota.is_some()) {
        if let Err(e) = crate::quota::check_store(&quota_store) {
            let message = format!("{e}: set [quotas] store to a path Weir can write");
            match &store {
                Some(s) => ck.error(s.span(), message),
                None => ck.errors.push(ConfigError {
                    file: ck.file.to_string(),
                    line: 0,
                    column: 0,
                    message,
                }),
            }
        }
    }

    // Build each listener's routing table now, so conflicts are reported by `weir check`.
    let specs: Vec<_> = routes.iter().map(Route::spec).collect();
    for (i, _) in listeners.iter().enumerate() {
        if let Err(errs) = crate::router::Router::build(&specs, i) {
            for e in errs {
                let line = routes[e.route].line;
                ck.errors.push(ConfigError {
                    file: ck.file.to_string(),
                    line,
                    column: 1,
                    message: e.message,
                });
            }
        }
    }
    ck.errors.dedup();

    Some(Config {
        server,
        http,
        throttle,
        api_key_header,
        api_keys,
        usage_plans,
        quota_store,
        cache_memory,
        access_log,
        admin,
        make_traceparent,
        source: ck.src.into(),
        listeners,
        upstreams,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse(src, "t.toml") {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = errors("[[listener]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:3:"), "{e:?}");
        assert!(e[0].contains("bogus"), "{e:?}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let src = r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
path = "/a"
upstream = "missing"

[[route]]
path = "nope"
mock = { status = 200 }
"#;
        let e = errors(src);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:7:") && e[0].contains("missing"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:10:") && e[1].contains("start with"),
            "{e:?}"
        );
    }

    #[test]
    fn a_good_file_resolves() {
        let src = r#"
[server]
workers = 2
drain_timeout = "5s"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[upstream.users]
targets = ["127.0.0.1:9001", { address = "localhost:9002", weight = 3 }]
balance = "least_outstanding"

[[route]]
host = "*.Example.com"
path = "/users/{id}"
methods = ["GET", "PUT"]
upstream = "users"
listener = "public"

[[route]]
path = "/health"
mock = { status = 200, body = '{"ok":true}', headers = { "content-type" = "application/json" } }
"#;
        let c = parse(src, "t.toml").unwrap();
        assert_eq!(c.server.workers, Workers::Count(2));
        assert_eq!(c.upstreams[0].targets[1].weight, 3);
        assert_eq!(
            c.routes[0].host,
            HostPattern::Wildcard(".example.com".into())
        );
        assert_eq!(c.routes[0].listener, Some(0));
        assert_eq!(c.routes[1].max_body, 10 << 20);
    }
}
