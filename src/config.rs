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
//! the `*File` structs below are the same contract, kept next to the code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

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
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub workers: Workers,
    pub pin: bool,
    pub io: IoDriver,
    pub ring: RingMode,
    pub ring_entries: u32,
    pub drain_timeout: Duration,
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

/// Client-side HTTP limits and timeouts.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_head: usize,
    pub max_uri: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub max_body: u64,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub backlog: u32,
    /// The listener's bucket (API Gateway's stage level).
    pub throttle: Option<Throttle>,
    /// TLS termination, if this is an HTTPS listener.
    pub tls: Option<TlsSettings>,
    /// Answer every request with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
}

/// A TLS listener's certificates and protocol settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificates: Vec<CertificateSettings>,
    /// Accept TLS 1.2 as well as 1.3.
    pub tls12: bool,
    /// Longest a handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
    /// Client certificates (mutual TLS), if asked for.
    pub client_auth: Option<ClientAuth>,
}

/// Mutual TLS toward clients.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Refuse clients without a valid certificate (else: let them in as anonymous).
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Lower-case server names (`api.example.com`, `*.example.com`); empty: the default.
    pub names: Vec<String>,
}

/// An API key. Only its SHA-256 is kept; `id` is what logs and usage reports show.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub enabled: bool,
}

/// A usage plan: which keys, on which routes, at what rate.
#[derive(Debug, Clone)]
pub struct UsagePlan {
    pub name: String,
    /// Indices into `Config::api_keys`.
    pub keys: Vec<usize>,
    /// `covers[route]`: the plan applies to that route.
    pub covers: Vec<bool>,
    /// Each key's own bucket in this plan (API Gateway's per-client throttle).
    pub throttle: Option<Throttle>,
    /// Per-route buckets for each key, by route index (the method-level override).
    pub route_throttles: Vec<(usize, Throttle)>,
    /// Requests each key may make per period.
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: u64,
    pub period: crate::quota::Period,
}

/// A token bucket: `rate` requests per second refill it, `burst` is its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// Name in the `RateLimit` / `RateLimit-Policy` fields.
    pub name: String,
    pub rate: f64,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// TLS toward the targets, if they speak HTTPS.
    pub tls: Option<UpstreamTls>,
}

/// How Weir speaks TLS to an upstream group's targets.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// CA bundle to verify the targets with; `None`: the bundled Mozilla roots.
    pub ca: Option<std::path::PathBuf>,
    /// SNI and the name to verify; `None`: each target's host as written.
    pub server_name: Option<String>,
    /// A client certificate and key to present to the targets.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// The target as written (`host:port`); sent as `Host` unless the route says otherwise.
    pub authority: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Load-balancing policy of an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's default).
    RoundRobin,
    /// Fewest requests in flight on this worker, weighted (Envoy's LEAST_REQUEST).
    LeastOutstanding,
}

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

/// A route's response cache (`cache = { ... }` on an upstream route).
#[derive(Debug, Clone)]
pub struct RouteCache {
    /// Freshness when the origin gives none (or when `honor_origin` is off).
    pub ttl: Duration,
    /// Largest response (head and body) stored.
    pub max_entry: u64,
    /// Methods answered from the cache, upper-case. `HEAD` is answered from `GET` entries.
    pub methods: Vec<String>,
    pub query: QueryKey,
    /// Lower-case request header names that are part of the key.
    pub key_headers: Vec<String>,
    /// Follow the origin's `Cache-Control` and `Expires`.
    pub honor_origin: bool,
    /// Store responses that carry `Set-Cookie`.
    pub set_cookie: bool,
    /// Who may force a refresh with `Cache-Control: max-age=0` (or `no-cache`).
    pub invalidate: Invalidate,
    /// Serve a stale entry this long past expiry when the upstream fails, even if the
    /// origin did not say `stale-if-error`.
    pub stale_if_error: Duration,
    /// How long a request waits for another one already fetching the same key.
    pub lock_timeout: Duration,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKey {
    /// As sent.
    All,
    /// Not at all: `/a?x=1` and `/a?y=2` share an entry.
    Ignore,
    /// Parameters sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
    Sorted,
}

/// Who may refresh a cached entry with a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidate {
    Never,
    Anyone,
    /// Only requests with a valid API key (API Gateway's "require authorization").
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// No `host` key: the listener's default virtual host.
    Default,
    /// Lower-cased exact name.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub enum Integration {
    Http(HttpIntegration),
    Mock(Mock),
}

#[derive(Debug, Clone)]
pub struct HttpIntegration {
    pub upstream: usize,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub host: HostRewrite,
}

/// What `Host` the upstream sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    /// The chosen target's `host:port` as written in the config (nginx's `$proxy_host`).
    Target,
    /// The client's own `Host` (Kong's `preserve_host`).
    Preserve,
    /// A fixed value.
    Fixed(String),
}

#[derive(Debug, Clone)]
pub struct Mock {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
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
    #[serde(default)]
    listener: Vec<Spanned<ListenerFile>>,
    #[serde(default)]
    upstream: BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    #[serde(default)]
    route: Vec<Spanned<RouteFile>>,
}

/// `[server]`: process-wide runtime settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
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
}

/// `[http]`: limits and timeouts applied to every client connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
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

/// `[[listener]]`: an address Weir accepts connections on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerFile {
    /// `ip:port` or `host:port`; port 0 picks a free port (printed at start).
    address: Spanned<String>,
    /// Name that routes use in `listener = "..."`. Default: the address as written.
    name: Option<Spanned<String>>,
    /// Listen backlog. Default 1024 (nginx uses 511; the kernel caps it at somaxconn).
    backlog: Option<u32>,
    /// A bucket for every request on this listener (the stage level).
    throttle: Option<Spanned<ThrottleFile>>,
    /// Terminate TLS on this listener.
    tls: Option<Spanned<TlsFile>>,
    /// Redirect every request to `https://` on this port (nginx's `return 301 https://…`).
    redirect_https: Option<Spanned<u16>>,
}

/// `tls = { certificates = [...], tls12 = true, handshake_timeout = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    /// `{ cert = "fullchain.pem", key = "key.pem", names = ["api.example.com"] }`, chosen by
    /// SNI; one without `names` (or else the first) is the default.
    certificates: Vec<Spanned<CertificateFile>>,
    /// Accept TLS 1.2 too. Default true (nginx's `ssl_protocols TLSv1.2 TLSv1.3`).
    tls12: Option<bool>,
    /// Default 10s. A client that stalls mid-handshake is closed after it.
    handshake_timeout: Option<Dur>,
    /// Mutual TLS: `"required"` or `"optional"`. Needs `client_ca`.
    client_auth: Option<String>,
    /// PEM bundle of the CAs that client certificates must chain to.
    client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateFile {
    /// PEM certificate chain, leaf first; relative to the config file.
    cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519).
    key: String,
    /// Server names this certificate answers: exact or `*.suffix` (one label).
    names: Option<Vec<String>>,
}

/// `[api_keys]`: where keys come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeysFile {
    /// Request header carrying the key. Default `x-api-key`.
    header: Option<Spanned<String>>,
    /// A file of more `[[api_key]]` entries, relative to this config file.
    file: Option<Spanned<String>>,
}

/// `[[api_key]]`: one key, given as its value or as the SHA-256 of its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyFile {
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
struct QuotasFile {
    /// The redb file, relative to this config file. Default `weir-usage.redb`.
    store: Option<Spanned<String>>,
}

/// `[cache]`: process-wide response-cache settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    /// Bytes all cache shards hold together, split evenly among the workers. Default 64m.
    memory: Option<Size>,
}

/// `cache = { ttl = "300s", ... }` on a route: its response cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteCacheFile {
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
struct UsagePlanFile {
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

/// `throttle = { rate = 100, burst = 50 }`: a token bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleFile {
    /// Requests per second (fractions allowed, like 0.5).
    rate: f64,
    /// Bucket size: requests admitted at once after a quiet spell. Default: `rate`, at least 1.
    burst: Option<u32>,
    /// Name in the RateLimit fields. Default: "global", the listener's name, or "route".
    name: Option<String>,
    /// Routes only: send RateLimit fields on admitted responses too. Default false.
    headers: Option<bool>,
    /// `throttle_per_ip` only: addresses the table holds (memory: 8 bytes each). Default 65536.
    clients: Option<u32>,
}

/// `[upstream.NAME]`: a group of backend targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
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

/// `[[route]]`: what to do with requests for a host and path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
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

/// A duration: `"30s"`, `"500ms"`, `"5m"`, `"1h"`, or a whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\", \"5m\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a duration; write it like \"30s\", \"500ms\", \"5m\" or \"1h\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A size in bytes: a number, or `"16k"`, `"10m"`, `"1g"` (powers of 1024, like nginx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 4096, \"16k\", \"10m\" or \"1g\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a size; write it like 4096, \"16k\", \"10m\" or \"1g\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `4096`, `16k`, `10m`, `1g` (case-insensitive, powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// One mistake in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every mistake found in one file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

struct Checker<'a> {
    src: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
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

/// What [`deserialize_all`] had to take out of the document.
#[derive(Default)]
struct Damage {
    /// The spans of the tables that lost an entry.
    tables: Vec<Range<usize>>,
    /// A whole table (or array element) was taken out.
    dropped_table: bool,
}

/// Deserializes the file, reporting every unknown key and every value of the wrong type,
/// not only the first: serde stops at the first mistake, so each mistake found is recorded
/// and the entry holding it (the key and its value, or the array element) is taken out
/// of the parsed document before trying again. Spans always refer to the text as
/// written, so every message keeps its line and column. `None` when nothing can be
/// trusted (a syntax error).
fn deserialize_all<T: de::DeserializeOwned>(src: &str, ck: &mut Checker) -> (Option<T>, Damage) {
    let mut damage = Damage::default();
    let mut doc = match toml::de::DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            ck.error(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return (None, damage);
        }
    };
    for _ in 0..1000 {
        let e = match T::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => return (Some(raw), damage),
            Err(e) => e,
        };
        let at = e.span().unwrap_or(0..0);
        // A table that lost an entry may now lack a required key: already reported.
        let consequence = damage
            .tables
            .iter()
            .any(|t| *t == at || holds(at.clone(), t));
        if !consequence {
            ck.error(at.clone(), e.message().trim().to_string());
        }
        if !remove_entry_at(doc.get_mut(), 0..0, &at, &mut damage) {
            break;
        }
    }
    (None, damage)
}

/// Takes out of `table` (whose own span is `span`) the innermost entry holding `at`: a
/// key whose span is `at`, or the key and value, or array element, whose value contains
/// it. Every child is searched, deepest first: a `[header]` table's span is its header
/// line only, not the keys under it.
fn remove_entry_at(
    table: &mut toml::de::DeTable,
    span: Range<usize>,
    at: &Range<usize>,
    damage: &mut Damage,
) -> bool {
    let mut found = None;
    for (key, value) in table.iter_mut() {
        if remove_in_value(value, at, damage) {
            return true;
        }
        if found.is_none() && (key.span() == *at || holds(value.span(), at)) {
            let is_table = matches!(value.get_ref(), toml::de::DeValue::Table(_));
            found = Some((key.get_ref().to_string(), is_table));
        }
    }
    let Some((name, is_table)) = found else {
        return false;
    };
    table.remove(name.as_str());
    damage.tables.push(span);
    damage.dropped_table |= is_table;
    true
}

fn remove_in_value(
    value: &mut toml::Spanned<toml::de::DeValue>,
    at: &Range<usize>,
    damage: &mut Damage,
) -> bool {
    let span = value.span();
    match value.get_mut() {
        toml::de::DeValue::Table(t) => remove_entry_at(t, span, at, damage),
        toml::de::DeValue::Array(items) => {
            for item in items.iter_mut() {
                if remove_in_value(item, at, damage) {
                    return true;
                }
            }
            let Some(i) = items.iter().position(|v| holds(v.span(), at)) else {
                return false;
            };
            damage.dropped_table |= matches!(items[i].get_ref(), toml::de::DeValue::Table(_));
            damage.tables.push(span);
            *items = items
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, v)| v.clone())
                .collect();
            true
        }
        _ => false,
    }
}

fn holds(outer: Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && !outer.is_empty()
}

fn resolve(raw: ConfigFile, ck: &mut Checker) -> Option<Config> {
    let server = resolve_server(raw.server, ck);
    let http = resolve_http(raw.http, ck);
    let throttle = raw
        .throttle
        .map(|t| resolve_throttle(t, "global", false, ck));

    if raw.listener.is_empty() {
        ck.error(
            0..0,
            "no [[listener]]: add one, e.g. `address = \"127.0.0.1:8080\"`",
        );
    }
    let mut listeners = Vec::new();
    for l in raw.listener {
        let span = l.span();
        let l = l.into_inner();
        let address = match resolve_listen_addr(l.address.get_ref()) {
            Ok(a) => a,
            Err(msg) => {
                ck.error(l.address.span(), msg);
                continue;
            }
        };
        let name = l
            .name
            .as_ref()
            .map_or_else(|| l.address.get_ref().clone(), |n| n.get_ref().clone());
        if listeners.iter().any(|x: &Listener| x.name == name) {
            let at = l.name.as_ref().map_or(span.clone(), |n| n.span());
            ck.error(at, format!("a listener named `{name}` is defined twice"));
        }
        if address.port() != 0 && listeners.iter().any(|x: &Listener| x.address == address) {
            ck.error(
                l.address.span(),
                format!("address {address} is used by two listeners"),
            );
        }
        let throttle = l.throttle.map(|t| resolve_throttle(t, &name, false, ck));
        let tls_span = l.tls.as_ref().map(|t| t.span());
        let tls = l.tls.and_then(|t| resolve_tls(t, ck));
        if let (Some(port), Some(_)) = (&l.redirect_https, tls_span) {
            ck.error(
                port.span(),
                "a TLS listener cannot redirect to HTTPS: it is HTTPS",
            );
        }
        listeners.push(Listener {
            name,
            address,
            backlog: l.backlog.unwrap_or(1024),
            throttle,
            tls,
            redirect_https: l.redirect_https.map(|p| p.into_inner()),
        });
    }

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
    for (i, _) in listeners.iter().enumerate() {
        if let Err(errs) = crate::router::Router::build(&routes, i) {
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
        listeners,
        upstreams,
        routes,
    })
}

fn resolve_server(raw: Option<Spanned<ServerFile>>, ck: &mut Checker) -> Server {
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
    Server {
        workers,
        pin: s.pin.unwrap_or(true),
        io: s.io.unwrap_or(IoDriver::Auto),
        ring: s.ring.unwrap_or(RingMode::Auto),
        ring_entries,
        drain_timeout: s.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
    }
}

fn resolve_http(raw: Option<Spanned<HttpFile>>, ck: &mut Checker) -> HttpLimits {
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

/// Where an optional key was written; nowhere (the file as a whole) when it was not.
fn span_of<T>(v: &Option<Spanned<T>>) -> Range<usize> {
    v.as_ref().map_or(0..0, Spanned::span)
}

/// A body limit as written: 0 means no limit, as nginx's `client_max_body_size 0`.
fn body_limit(size: Size) -> u64 {
    if size.0 == 0 {
        u64::MAX
    } else {
        size.0
    }
}

/// A listener's `address`.
fn resolve_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not an address: write an IP address and a port, like `0.0.0.0:{port}` \
             (every IPv4 address), `[::]:{port}` (every IPv6 address) or `127.0.0.1:{port}`"
        ));
    }
    if s.contains("://") {
        return Err(format!(
            "`{s}`: a listener address has no scheme: write `host:port`, and add `tls = {{ ... }}` for HTTPS"
        ));
    }
    resolve_addr(s)
}

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

fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
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

fn resolve_upstream(name: &str, raw: Spanned<UpstreamFile>, ck: &mut Checker) -> Option<Upstream> {
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

/// What a route is resolved against.
struct RouteContext<'a> {
    listeners: &'a [Listener],
    upstreams: &'a [Upstream],
    http: &'a HttpLimits,
    /// Some API key is defined (else `api_key_required` could only ever answer 403).
    have_keys: bool,
}

fn resolve_route(raw: Spanned<RouteFile>, cx: &RouteContext, ck: &mut Checker) -> Option<Route> {
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

fn resolve_route_cache(raw: Spanned<RouteCacheFile>, ck: &mut Checker) -> Option<RouteCache> {
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

fn resolve_tls(raw: Spanned<TlsFile>, ck: &mut Checker) -> Option<TlsSettings> {
    let span = raw.span();
    let t = raw.into_inner();
    let dir = Path::new(ck.file)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if t.certificates.is_empty() {
        ck.error(span, "a TLS listener needs at least one certificate");
        return None;
    }
    let mut certificates = Vec::new();
    let mut ok = true;
    for c in t.certificates {
        let cspan = c.span();
        let c = c.into_inner();
        let names: Vec<String> = c
            .names
            .unwrap_or_default()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for n in &names {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || !bare.bytes().all(is_host_byte) {
                ck.error(cspan.clone(), format!("`{n}` is not a server name"));
                ok = false;
            }
        }
        let settings = CertificateSettings {
            cert: dir.join(&c.cert),
            key: dir.join(&c.key),
            names,
        };
        // Loaded now so that `weir check` finds a bad file; loaded again at start.
        match crate::tls::load_certified_key(&settings.cert, &settings.key) {
            Err(msg) => {
                ck.error(cspan.clone(), msg);
                ok = false;
            }
            Ok(certified) => {
                // A name the certificate is not valid for would be chosen by SNI, then
                // refused by every client that checks the certificate.
                let valid = crate::tls::certificate_names(&certified);
                for n in &settings.names {
                    if !valid.iter().any(|v| crate::tls::name_covers(v, n)) {
                        ck.error(
                            cspan.clone(),
                            format!(
                                "`{n}` is not a name of the certificate {} (it is valid for: {}): list only names the certificate has, or use a certificate issued for `{n}`",
                                settings.cert.display(),
                                if valid.is_empty() { "no DNS names".to_string() } else { valid.join(", ") }
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        certificates.push(settings);
    }
    let client_auth = match (t.client_auth.as_deref(), &t.client_ca) {
        (None, None) => None,
        (Some(mode @ ("required" | "optional")), Some(ca)) => {
            let ca = dir.join(ca);
            if let Err(msg) = crate::tls::load_roots(&ca) {
                ck.error(span.clone(), msg);
                ok = false;
            }
            Some(ClientAuth {
                ca,
                required: mode == "required",
            })
        }
        (Some("required" | "optional"), None) => {
            ck.error(
                span.clone(),
                "client_auth needs client_ca, the CAs to trust",
            );
            ok = false;
            None
        }
        (Some(other), _) => {
            ck.error(
                span.clone(),
                format!("client_auth = \"{other}\": use \"required\" or \"optional\""),
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            ck.error(
                span.clone(),
                "client_ca without client_auth: add client_auth = \"required\" or \"optional\"",
            );
            ok = false;
            None
        }
    };
    ok.then(|| TlsSettings {
        certificates,
        tls12: t.tls12.unwrap_or(true),
        handshake_timeout: t.handshake_timeout.map_or(Duration::from_secs(10), |d| d.0),
        client_auth,
    })
}

fn resolve_api_keys(
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

fn resolve_usage_plan(
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
fn check_one_plan_per_key_and_route(
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

fn resolve_throttle(
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

/// `tchar` from RFC 9110 §5.6.2: the bytes allowed in methods and header names.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a `Host` value (reg-name, IP literal, port).
pub fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
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
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("k"), None);
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
