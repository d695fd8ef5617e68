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
    workers: Option<WorkersFile>,
    /// Pin worker N to the N-th CPU of the process's affinity mask. Default true.
    /// Like nginx `worker_cpu_affinity auto`.
    pin: Option<bool>,
    /// `"auto"`, `"io_uring"` or `"epoll"`. Default auto.
    io: Option<IoDriver>,
    /// io_uring setup: `"auto"`, `"defer_taskrun"`, `"coop_taskrun"`, `"plain"`.
    ring: Option<RingMode>,
    /// Submission queue entries per worker ring (256..=32768). Default 1024.
    ring_entries: Option<u32>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT. Default 30s.
    drain_timeout: Option<Dur>,
}

/// `[http]`: limits and timeouts applied to every client connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Largest request head (request line + headers). Default 16k. Over it: 431.
    max_head: Option<Size>,
    /// Longest request target. Default 8k (or half of `max_head` if that is smaller). Over it: 414.
    max_uri: Option<Size>,
    /// Most header fields in one request. Default 100. Over it: 431.
    max_headers: Option<u32>,
    /// Time allowed to receive a whole request head. Default 60s (nginx
    /// `client_header_timeout`). Over it: 408 and close.
    header_timeout: Option<Dur>,
    /// Longest pause between two reads of a request body. Default 60s (nginx
    /// `client_body_timeout`). Over it: 408 and close.
    body_timeout: Option<Dur>,
    /// How long an idle keep-alive connection is kept. Default 75s (nginx `keepalive_timeout`).
    keepalive_timeout: Option<Dur>,
    /// Requests served on one connection before it is closed. Default 1000
    /// (nginx `keepalive_requests`).
    keepalive_requests: Option<u32>,
    /// Default largest request body for routes that set none. Default 10m (nginx
    /// `client_max_body_size`, API Gateway's 10 MB payload limit). Over it: 413.
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
    certificates: Vec<CertificateFile>,
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
    header: Option<String>,
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
    ttl: Option<Dur>,
    /// Largest response stored. Default 1m, at most 64m.
    max_entry: Option<Size>,
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
    lock_timeout: Option<Dur>,
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
    connect_timeout: Option<Dur>,
    /// Longest wait for the response head, and between reads of the response body.
    /// Default 60s (nginx `proxy_read_timeout`). Over it: 504.
    response_timeout: Option<Dur>,
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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TargetFile {
    Plain(String),
    Table(TargetTable),
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
    /// Largest request body for this route. Default `[http] max_body`.
    max_body: Option<Size>,
    /// A bucket for this route (the method level).
    throttle: Option<Spanned<ThrottleFile>>,
    /// A bucket per client IP address on this route.
    throttle_per_ip: Option<Spanned<ThrottleFile>>,
    /// Name for usage plans (`routes = [...]`).
    name: Option<Spanned<String>>,
    /// Require a valid API key: 403 otherwise.
    api_key_required: Option<bool>,
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
    let raw: ConfigFile = match toml::from_str(src) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ck.error(span, e.message().trim().to_string());
            return Err(ConfigErrors(ck.errors));
        }
    };
    let config = resolve(raw, &mut ck);
    if ck.errors.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    ck.errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors(ck.errors))
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
        let address = match resolve_addr(l.address.get_ref()) {
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

    let mut routes = Vec::new();
    for r in raw.route {
        if let Some(route) = resolve_route(r, &listeners, &upstreams, &http, ck) {
            routes.push(route);
        }
    }

    let (api_key_header, api_keys) = resolve_api_keys(raw.api_keys, raw.api_key, ck);
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
    let (span, s) = match raw {
        Some(s) => (s.span(), s.into_inner()),
        None => (0..0, ServerFile::default()),
    };
    let workers = match s.workers {
        None | Some(WorkersFile::Auto) => Workers::Auto,
        Some(WorkersFile::Count(n)) if (1..=1024).contains(&n) => Workers::Count(n as usize),
        Some(WorkersFile::Count(n)) => {
            ck.error(
                span.clone(),
                format!("workers = {n}: use 1 to 1024, or \"auto\""),
            );
            Workers::Auto
        }
    };
    let ring_entries = s.ring_entries.unwrap_or(1024);
    if !(256..=32768).contains(&ring_entries) || !ring_entries.is_power_of_two() {
        ck.error(
            span,
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
    let (span, h) = match raw {
        Some(h) => (h.span(), h.into_inner()),
        None => (0..0, HttpFile::default()),
    };
    let limits = HttpLimits {
        max_head: h.max_head.map_or(16 << 10, |s| s.0 as usize),
        max_uri: h.max_uri.map_or_else(
            || {
                h.max_head
                    .map_or(8 << 10, |m| (m.0 as usize / 2).min(8 << 10))
            },
            |s| s.0 as usize,
        ),
        max_headers: h.max_headers.map_or(100, |n| n as usize),
        header_timeout: h.header_timeout.map_or(Duration::from_secs(60), |d| d.0),
        body_timeout: h.body_timeout.map_or(Duration::from_secs(60), |d| d.0),
        keepalive_timeout: h.keepalive_timeout.map_or(Duration::from_secs(75), |d| d.0),
        keepalive_requests: h.keepalive_requests.unwrap_or(1000),
        max_body: h.max_body.map_or(10 << 20, |s| s.0),
    };
    if !(1024..=1 << 20).contains(&limits.max_head) {
        ck.error(span.clone(), "max_head must be between 1k and 1m");
    }
    if limits.max_uri < 64 || limits.max_uri > limits.max_head {
        ck.error(
            span.clone(),
            "max_uri must be at least 64 bytes and no more than max_head",
        );
    }
    if !(1..=crate::http::request::MAX_HEADERS).contains(&limits.max_headers) {
        ck.error(span.clone(), "max_headers must be between 1 and 128");
    }
    for (name, d) in [
        ("header_timeout", limits.header_timeout),
        ("body_timeout", limits.body_timeout),
        ("keepalive_timeout", limits.keepalive_timeout),
    ] {
        if d.is_zero() {
            ck.error(span.clone(), format!("{name} must be more than zero"));
        }
    }
    if limits.keepalive_requests == 0 {
        ck.error(span, "keepalive_requests must be at least 1");
    }
    limits
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
    let span = raw.span();
    let u = raw.into_inner();
    let targets_span = u.targets.span();
    let mut targets = Vec::new();
    for t in u.targets.into_inner() {
        let tspan = t.span();
        let (authority, weight) = match t.into_inner() {
            TargetFile::Plain(a) => (a, 1),
            TargetFile::Table(t) => (t.address, t.weight.unwrap_or(1)),
        };
        if !(1..=1000).contains(&weight) {
            ck.error(tspan.clone(), "weight must be between 1 and 1000");
        }
        match resolve_addr(&authority) {
            Ok(addr) => targets.push(Target {
                authority,
                addr,
                weight,
            }),
            Err(msg) => ck.error(tspan, msg),
        }
    }
    if targets.is_empty() {
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
    let up = Upstream {
        name: name.to_string(),
        targets,
        balance: u.balance.unwrap_or(Balance::RoundRobin),
        connect_timeout: d(u.connect_timeout, 5),
        response_timeout: d(u.response_timeout, 60),
        max_idle: u.max_idle.unwrap_or(64) as usize,
        idle_timeout: d(u.idle_timeout, 60),
        max_fails: u.max_fails.unwrap_or(3),
        fail_timeout: d(u.fail_timeout, 10),
        tls,
    };
    if up.connect_timeout.is_zero() || up.response_timeout.is_zero() {
        ck.error(
            span,
            "connect_timeout and response_timeout must be more than zero",
        );
    }
    Some(up)
}

fn resolve_route(
    raw: Spanned<RouteFile>,
    listeners: &[Listener],
    upstreams: &[Upstream],
    http: &HttpLimits,
    ck: &mut Checker,
) -> Option<Route> {
    let span = raw.span();
    let line = ck.position(span.start).0;
    let r = raw.into_inner();
    let mut ok = true;

    let path = r.path.get_ref().clone();
    if !path.starts_with('/') {
        ck.error(r.path.span(), format!("path `{path}` must start with `/`"));
        ok = false;
    }

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

    let methods = match &r.methods {
        None => None,
        Some(m) => {
            if m.get_ref().is_empty() {
                ck.error(
                    m.span(),
                    "methods is empty: leave it out to allow any method",
                );
                ok = false;
            }
            for method in m.get_ref() {
                if method.is_empty() || !method.bytes().all(is_tchar) {
                    ck.error(m.span(), format!("`{method}` is not a valid HTTP method"));
                    ok = false;
                }
            }
            Some(m.get_ref().clone())
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
        max_body: r.max_body.map_or(http.max_body, |s| s.0),
        throttle,
        throttle_per_ip,
        rate_limit_headers,
        name,
        api_key_required: r.api_key_required.unwrap_or(false),
        cache,
    })
}

fn resolve_route_cache(raw: Spanned<RouteCacheFile>, ck: &mut Checker) -> Option<RouteCache> {
    let span = raw.span();
    let c = raw.into_inner();
    let errors = ck.errors.len();
    let ttl = c.ttl.map_or(Duration::from_secs(300), |d| d.0);
    if ttl.is_zero() || ttl > Duration::from_secs(3600) {
        ck.error(span.clone(), "cache ttl must be from 1s to 3600s");
    }
    let max_entry = c.max_entry.map_or(1 << 20, |s| s.0);
    if !(1..=64 << 20).contains(&max_entry) {
        ck.error(span.clone(), "cache max_entry must be from 1 byte to 64m");
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
    let lock_timeout = c.lock_timeout.map_or(Duration::from_secs(5), |d| d.0);
    if lock_timeout.is_zero() {
        ck.error(span, "cache lock_timeout must be more than zero");
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
        let names: Vec<String> = c
            .names
            .unwrap_or_default()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for n in &names {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || !bare.bytes().all(is_host_byte) {
                ck.error(span.clone(), format!("`{n}` is not a server name"));
                ok = false;
            }
        }
        let settings = CertificateSettings {
            cert: dir.join(&c.cert),
            key: dir.join(&c.key),
            names,
        };
        // Loaded now so that `weir check` finds a bad file; loaded again at start.
        if let Err(msg) = crate::tls::load_certified_key(&settings.cert, &settings.key) {
            ck.error(span.clone(), msg);
            ok = false;
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
            if h.is_empty() || !h.bytes().all(is_tchar) {
                ck.error(0..0, format!("api_keys.header `{h}` is not a header name"));
            }
            header = h.to_ascii_lowercase();
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
                    match toml::from_str::<KeysFile>(&text) {
                        Err(e) => {
                            kc.error(e.span().unwrap_or(0..0), e.message().trim().to_string())
                        }
                        Ok(kf) => {
                            for k in kf.api_key {
                                resolve_api_key(k, &mut keys, &mut kc);
                            }
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
    let sha256 = match (&k.value, &k.sha256) {
        (Some(v), None) => {
            let value = v.get_ref();
            if value.len() < 20
                || value.len() > 128
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                ck.error(
                    v.span(),
                    "an API key value must be 20 to 128 letters and digits (as API Gateway's)",
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

fn parse_host_pattern(h: &str) -> Result<HostPattern, String> {
    let lower = h.to_ascii_lowercase();
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
