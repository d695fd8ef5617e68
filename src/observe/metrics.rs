//! Prometheus metrics: counters and histograms per listener and route, per upstream
//! target and per listener, kept in per-worker cells and summed when scraped.
//!
//! Each worker writes only its own cells (plain relaxed stores of `load + n`: one writer,
//! so no locked instruction and no shared cache line on the request path); the admin API's
//! thread reads every worker's cells and sums them ([`render`]). Series are keyed by
//! names (listener, the route's `METHOD /template`, upstream group and target address),
//! not positions, so a reload keeps their counts; a worker finds its cells for a
//! generation once, when it takes the generation up ([`Metrics::series_for`]), and then
//! indexes them by position.
//!
//! Must not: allocate or lock on the request path (a status outside the common set goes to
//! a small per-worker map behind a lock the scraper shares, rare by construction), or
//! import the gateway (callers pass names in).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Record, Refusal};
use crate::cache::Status as CacheStatus;
use crate::limit::Scope;

/// Request methods with a series of their own; others count as `OTHER`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// Statuses counted in fixed cells (0: no response was sent); others in the overflow map.
const CODES: [u16; 32] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409,
    410, 413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504, 0,
];

/// Upper bounds (seconds) of the latency histograms' buckets (and +Inf): from half a
/// millisecond, since most of an edge proxy's answers take less than one.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The index of a method in [`METHODS`].
pub fn method_index(method: &[u8]) -> u8 {
    match method {
        b"GET" => 0,
        b"HEAD" => 1,
        b"POST" => 2,
        b"PUT" => 3,
        b"PATCH" => 4,
        b"DELETE" => 5,
        b"OPTIONS" => 6,
        _ => 7,
    }
}

fn code_slot(code: u16) -> Option<usize> {
    CODES.iter().position(|&c| c == code)
}

/// Adds `n` to a cell only this worker writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

fn read(cell: &AtomicU64) -> u64 {
    cell.load(Ordering::Relaxed)
}

/// A latency histogram's cells.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, nanos: u64) {
        let secs = nanos as f64 / 1e9;
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            bump(&self.buckets[i], 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_nanos, nanos);
    }
}

/// One worker's cells for one listener and route.
#[derive(Default)]
pub struct RouteCells {
    /// Which series in this worker's overflow map.
    id: usize,
    requests: [[AtomicU64; 32]; 8],
    duration: Histogram,
    upstream: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// By cache result: hit, miss, stale, revalidated, bypass.
    cache: [AtomicU64; 5],
    /// Throttled, by the refusing bucket's [`Scope`]: global, listener, route, key, client.
    throttled: [AtomicU64; 5],
    quota: AtomicU64,
    api_key: AtomicU64,
}

/// One worker's cells for one upstream target: responses, errors, timeouts, and requests
/// sent and finished (the difference is the requests in flight).
#[derive(Default)]
pub struct TargetCells {
    outcomes: [AtomicU64; 3],
    sent: AtomicU64,
    done: AtomicU64,
}

/// One worker's cells for one listener.
#[derive(Default)]
pub struct ListenerCells {
    accepted: AtomicU64,
    closed: AtomicU64,
    /// Requests begun and ended: the difference is the connections with a request in
    /// flight (the others wait for their next request).
    begun: AtomicU64,
    ended: AtomicU64,
    /// Handshakes: full, resumed, failed.
    tls: [AtomicU64; 3],
}

impl ListenerCells {
    pub fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub fn closed(&self) {
        bump(&self.closed, 1);
    }

    /// A request began on one of this listener's connections.
    pub fn request_begun(&self) {
        bump(&self.begun, 1);
    }

    /// That request ended.
    pub fn request_ended(&self) {
        bump(&self.ended, 1);
    }

    /// A TLS handshake: completed (`Some(resumed)`) or failed (`None`).
    pub fn handshake(&self, resumed: Option<bool>) {
        let i = match resumed {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        };
        bump(&self.tls[i], 1);
    }
}

type RouteKey = (Arc<str>, Arc<str>);
type TargetKey = (Arc<str>, Arc<str>);

/// One worker's cells, by series name (for the scraper and for new generations).
#[derive(Default)]
struct WorkerCells {
    routes: Mutex<HashMap<RouteKey, Arc<RouteCells>>>,
    targets: Mutex<HashMap<TargetKey, Arc<TargetCells>>>,
    listeners: Mutex<HashMap<Arc<str>, Arc<ListenerCells>>>,
    /// Requests with a status outside [`CODES`]: (route cells id, method, code) → count.
    overflow: Mutex<HashMap<(usize, u8, u16), u64>>,
}

/// Every worker's cells, and the process's own counters.
pub struct Metrics {
    workers: Box<[WorkerCells]>,
    pub reloads_applied: AtomicU64,
    pub reloads_refused: AtomicU64,
    started: u64,
}

/// The names a generation's series have, in its positions (what [`Metrics::series_for`]
/// needs of a generation).
pub struct Names<'a> {
    pub listeners: Vec<&'a str>,
    /// Each route's label: `METHOD[,METHOD] /template`, or `ANY /template`.
    pub routes: Vec<String>,
    /// Each upstream group's name and its targets' addresses.
    pub upstreams: Vec<(&'a str, Vec<&'a str>)>,
}

/// One worker's cells for one generation, by position.
pub struct Series {
    /// `[listener * (routes + 1) + route]`; the last route slot is "no route".
    routes: Box<[Arc<RouteCells>]>,
    route_count: usize,
    targets: Box<[Box<[Arc<TargetCells>]>]>,
    pub listeners: Box<[Arc<ListenerCells>]>,
    worker: usize,
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers).map(|_| WorkerCells::default()).collect(),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            started: crate::clock::now().wall_secs(),
        }
    }

    /// Worker `worker`'s cells for a generation named `names`: the cells of series that
    /// existed before (a reload keeps their counts), new cells for new ones.
    pub fn series_for(&self, worker: usize, names: &Names) -> Series {
        let cells = &self.workers[worker];
        let route_count = names.routes.len();
        let mut routes_map = cells.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = Vec::with_capacity(names.listeners.len() * (route_count + 1));
        for listener in &names.listeners {
            for route in names.routes.iter().map(String::as_str).chain(["-"]) {
                let key: RouteKey = ((*listener).into(), route.into());
                let next_id = routes_map.len();
                let c = routes_map.entry(key).or_insert_with(|| {
                    Arc::new(RouteCells {
                        id: next_id,
                        ..RouteCells::default()
                    })
                });
                routes.push(c.clone());
            }
        }
        drop(routes_map);
        let mut targets_map = cells.targets.lock().unwrap_or_else(|e| e.into_inner());
        let targets = names
            .upstreams
            .iter()
            .map(|(group, targets)| {
                targets
                    .iter()
                    .map(|t| {
                        targets_map
                            .entry(((*group).into(), (*t).into()))
                            .or_default()
                            .clone()
                    })
                    .collect()
            })
            .collect();
        drop(targets_map);
        let mut listeners_map = cells.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let listeners = names
            .listeners
            .iter()
            .map(|l| listeners_map.entry((*l).into()).or_default().clone())
            .collect();
        Series {
            routes: routes.into(),
            route_count,
            targets,
            listeners,
            worker,
        }
    }
}

impl Metrics {
    /// Requests in flight to `target` of `group`, on every worker.
    pub fn in_flight(&self, group: &str, target: &str) -> u64 {
        let key: TargetKey = (group.into(), target.into());
        self.workers
            .iter()
            .filter_map(|w| {
                let targets = w.targets.lock().unwrap_or_else(|e| e.into_inner());
                let c = targets.get(&key)?;
                Some(read(&c.sent).saturating_sub(read(&c.done)))
            })
            .sum()
    }
}

impl Series {
    fn target(&self, group: usize, target: usize) -> Option<&TargetCells> {
        self.targets
            .get(group)
            .and_then(|g| g.get(target))
            .map(|t| &**t)
    }

    /// A request went to a target (`done` when its response ended or failed).
    pub fn target_busy(&self, group: usize, target: usize, done: bool) {
        if let Some(t) = self.target(group, target) {
            bump(if done { &t.done } else { &t.sent }, 1);
        }
    }

    /// Counts one finished request: its record, and its method (an index into
    /// [`METHODS`]).
    pub fn record(&self, metrics: &Metrics, record: &Record, method: u8) {
        let route = record.route.map_or(self.route_count, |r| r as usize);
        let slot = record.listener as usize * (self.route_count + 1) + route;
        let Some(cells) = self.routes.get(slot) else {
            return;
        };
        let m = usize::from(method.min(7));
        match code_slot(record.status) {
            Some(c) => bump(&cells.requests[m][c], 1),
            None => {
                let mut overflow = metrics.workers[self.worker]
                    .overflow
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *overflow
                    .entry((cells.id, m as u8, record.status))
                    .or_default() += 1;
            }
        }
        cells.duration.observe(record.end.since(record.start));
        bump(&cells.bytes_in, record.bytes_in);
        bump(&cells.bytes_out, record.bytes_out);
        if let Some(c) = record.cache {
            let i = match c {
                CacheStatus::Hit => 0,
                CacheStatus::Miss => 1,
                CacheStatus::Stale => 2,
                CacheStatus::Revalidated => 3,
                CacheStatus::Bypass => 4,
            };
            bump(&cells.cache[i], 1);
        }
        match record.refusal {
            Some(Refusal::Throttled(scope)) => bump(&cells.throttled[scope as usize], 1),
            Some(Refusal::QuotaExceeded) => bump(&cells.quota, 1),
            Some(Refusal::InvalidApiKey) => bump(&cells.api_key, 1),
            _ => {}
        }
        if let Some(u) = record.upstream {
            if u.nanos > 0 {
                cells.upstream.observe(u.nanos);
            }
            let outcome = match (u.status, record.refusal) {
                (s, _) if s > 0 => 0,
                (_, Some(Refusal::IntegrationTimeout)) => 2,
                _ => 1,
            };
            if let Some(t) = self
                .targets
                .get(u.group as usize)
                .and_then(|g| g.get(u.target as usize))
            {
                bump(&t.outcomes[outcome], 1);
            }
        }
    }
}

/// What the scrape reports besides the cells: the serving generation's state.
pub struct Gauges<'a> {
    pub generation: u64,
    /// Each target: group, address, whether it is up.
    pub targets: Vec<(&'a str, &'a str, bool)>,
    pub log_records_dropped: u64,
    /// Each usage plan with a quota: its name, requests counted in the current period
    /// (all its keys), and the limit per key.
    pub quotas: Vec<(&'a str, u64, u64)>,
}

/// The Prometheus text exposition of every series (summed over workers).
pub fn render(metrics: &Metrics, gauges: &Gauges) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Sum every worker's cells per series name.
    let mut routes: Vec<(RouteKey, Vec<Arc<RouteCells>>)> = Vec::new();
    let mut index: HashMap<RouteKey, usize> = HashMap::new();
    let mut overflow: Vec<(RouteKey, u8, u16, u64)> = Vec::new();
    for w in metrics.workers.iter() {
        let map = w.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_id: HashMap<usize, RouteKey> = HashMap::new();
        for (key, cells) in map.iter() {
            by_id.insert(cells.id, key.clone());
            let i = *index.entry(key.clone()).or_insert_with(|| {
                routes.push((key.clone(), Vec::new()));
                routes.len() - 1
            });
            routes[i].1.push(cells.clone());
        }
        drop(map);
        let o = w.overflow.lock().unwrap_or_else(|e| e.into_inner());
        for (&(id, m, code), &n) in o.iter() {
            if let Some(key) = by_id.get(&id) {
                overflow.push((key.clone(), m, code, n));
            }
        }
    }
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    let sum = |cells: &[Arc<RouteCells>], f: &dyn Fn(&RouteCells) -> u64| -> u64 {
        cells.iter().map(|c| f(c)).sum()
    };
    let labels = |(l, r): &RouteKey| format!("listener=\"{}\",route=\"{}\"", esc(l), esc(r));

    out.push_str("# HELP weir_requests_total Requests answered, by listener, route, method and status (code 0: no response was sent).\n# TYPE weir_requests_total counter\n");
    for (key, cells) in &routes {
        for (m, method) in METHODS.iter().enumerate() {
            for (c, code) in CODES.iter().enumerate() {
                let n = sum(cells, &|x| read(&x.requests[m][c]));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "weir_requests_total{{{},method=\"{method}\",code=\"{code}\"}} {n}",
                        labels(key)
                    );
                }
            }
        }
    }
    overflow.sort();
    for (key, m, code, n) in &overflow {
        let _ = writeln!(
            out,
            "weir_requests_total{{{},method=\"{}\",code=\"{code}\"}} {n}",
            labels(key),
            METHODS[usize::from(*m)]
        );
    }

    for (name, help, pick) in [
        (
            "weir_request_duration_seconds",
            "From a complete request head to the last response byte handed to the socket.",
            (|c: &RouteCells| &c.duration) as fn(&RouteCells) -> &Histogram,
        ),
        (
            "weir_upstream_duration_seconds",
            "From a complete request head to the upstream's response head (connecting included).",
            |c: &RouteCells| &c.upstream,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (key, cells) in &routes {
            let count = sum(cells, &|x| read(&pick(x).count));
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += sum(cells, &|x| read(&pick(x).buckets[i]));
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{},le=\"{bound}\"}} {cumulative}",
                    labels(key)
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{},le=\"+Inf\"}} {count}", labels(key));
            let secs = sum(cells, &|x| read(&pick(x).sum_nanos)) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{}}} {secs}", labels(key));
            let _ = writeln!(out, "{name}_count{{{}}} {count}", labels(key));
        }
    }

    for (name, help, pick) in [
        (
            "weir_request_bytes_total",
            "Request bytes read (heads and bodies).",
            (|c: &RouteCells| read(&c.bytes_in)) as fn(&RouteCells) -> u64,
        ),
        (
            "weir_response_bytes_total",
            "Response bytes written to clients (heads and bodies).",
            |c: &RouteCells| read(&c.bytes_out),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (key, cells) in &routes {
            let n = sum(cells, &|x| pick(x));
            if n > 0 {
                let _ = writeln!(out, "{name}{{{}}} {n}", labels(key));
            }
        }
    }

    out.push_str("# HELP weir_cache_requests_total Requests on routes that cache, by what the cache did.\n# TYPE weir_cache_requests_total counter\n");
    for (key, cells) in &routes {
        for (i, result) in ["hit", "miss", "stale", "revalidated", "bypass"]
            .iter()
            .enumerate()
        {
            let n = sum(cells, &|x| read(&x.cache[i]));
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_cache_requests_total{{{},result=\"{result}\"}} {n}",
                    labels(key)
                );
            }
        }
    }

    out.push_str("# HELP weir_refused_total Requests Weir refused itself before the integration, by reason and the level that refused (a throttle's scope; key for quotas and keys).\n# TYPE weir_refused_total counter\n");
    let scopes = [
        Scope::Global,
        Scope::Listener,
        Scope::Route,
        Scope::Key,
        Scope::Client,
    ];
    for (key, cells) in &routes {
        let throttled = scopes.iter().map(|&s| {
            let n = sum(cells, &|x| read(&x.throttled[s as usize]));
            ("throttled", s.name(), n)
        });
        let others = [
            ("quota_exceeded", "key", sum(cells, &|x| read(&x.quota))),
            ("invalid_api_key", "key", sum(cells, &|x| read(&x.api_key))),
        ];
        for (reason, scope, n) in throttled.chain(others) {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_refused_total{{{},reason=\"{reason}\",scope=\"{scope}\"}} {n}",
                    labels(key)
                );
            }
        }
    }

    // Upstream targets.
    let mut targets: HashMap<TargetKey, [u64; 3]> = HashMap::new();
    for w in metrics.workers.iter() {
        for (key, cells) in w.targets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let t = targets.entry(key.clone()).or_default();
            for (i, n) in t.iter_mut().enumerate() {
                *n += read(&cells.outcomes[i]);
            }
        }
    }
    let mut targets: Vec<_> = targets.into_iter().collect();
    targets.sort();
    out.push_str("# HELP weir_upstream_requests_total Requests sent to each upstream target, by outcome (response: a response head came; error: none came; timeout).\n# TYPE weir_upstream_requests_total counter\n");
    for ((group, target), counts) in &targets {
        for (i, outcome) in ["response", "error", "timeout"].iter().enumerate() {
            if counts[i] > 0 {
                let _ = writeln!(
                    out,
                    "weir_upstream_requests_total{{group=\"{}\",target=\"{}\",outcome=\"{outcome}\"}} {}",
                    esc(group),
                    esc(target),
                    counts[i]
                );
            }
        }
    }
    out.push_str("# HELP weir_upstream_target_up Whether the target is in use (1) or left out after failures (0).\n# TYPE weir_upstream_target_up gauge\n");
    for (group, target, up) in &gauges.targets {
        let _ = writeln!(
            out,
            "weir_upstream_target_up{{group=\"{}\",target=\"{}\"}} {}",
            esc(group),
            esc(target),
            u8::from(*up)
        );
    }

    // Listeners.
    let mut listeners: HashMap<Arc<str>, [u64; 7]> = HashMap::new();
    for w in metrics.workers.iter() {
        for (name, c) in w.listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let l = listeners.entry(name.clone()).or_default();
            l[0] += read(&c.accepted);
            l[1] += read(&c.closed);
            for i in 0..3 {
                l[2 + i] += read(&c.tls[i]);
            }
            l[5] += read(&c.begun);
            l[6] += read(&c.ended);
        }
    }
    let mut listeners: Vec<_> = listeners.into_iter().collect();
    listeners.sort();
    out.push_str("# HELP weir_connections_accepted_total Client connections accepted.\n# TYPE weir_connections_accepted_total counter\n");
    for (name, l) in &listeners {
        let _ = writeln!(
            out,
            "weir_connections_accepted_total{{listener=\"{}\"}} {}",
            esc(name),
            l[0]
        );
    }
    out.push_str("# HELP weir_connections Client connections open now: active (a request in flight) or idle (waiting for the next request, or for a TLS handshake).\n# TYPE weir_connections gauge\n");
    for (name, l) in &listeners {
        let open = l[0].saturating_sub(l[1]);
        let active = l[5].saturating_sub(l[6]).min(open);
        for (state, n) in [("active", active), ("idle", open - active)] {
            let _ = writeln!(
                out,
                "weir_connections{{listener=\"{}\",state=\"{state}\"}} {n}",
                esc(name)
            );
        }
    }
    out.push_str("# HELP weir_tls_handshakes_total TLS handshakes with clients, by result.\n# TYPE weir_tls_handshakes_total counter\n");
    for (name, l) in &listeners {
        for (i, (result, resumed)) in [("ok", "false"), ("ok", "true"), ("failed", "false")]
            .iter()
            .enumerate()
        {
            if l[2 + i] > 0 {
                let _ = writeln!(
                    out,
                    "weir_tls_handshakes_total{{listener=\"{}\",result=\"{result}\",resumed=\"{resumed}\"}} {}",
                    esc(name),
                    l[2 + i]
                );
            }
        }
    }

    // The process.
    let _ = writeln!(
        out,
        "# HELP weir_config_generation The config generation serving now (1 at start, one more per reload applied).\n# TYPE weir_config_generation gauge\nweir_config_generation {}",
        gauges.generation
    );
    let _ = writeln!(
        out,
        "# HELP weir_config_reloads_total Reloads, by result.\n# TYPE weir_config_reloads_total counter\nweir_config_reloads_total{{result=\"applied\"}} {}\nweir_config_reloads_total{{result=\"refused\"}} {}",
        read(&metrics.reloads_applied),
        read(&metrics.reloads_refused)
    );
    out.push_str("# HELP weir_quota_used Requests counted against a usage plan's quota in the current period, all its keys together.\n# TYPE weir_quota_used gauge\n");
    for (plan, used, _) in &gauges.quotas {
        let _ = writeln!(out, "weir_quota_used{{plan=\"{}\"}} {used}", esc(plan));
    }
    out.push_str("# HELP weir_quota_limit A usage plan's quota per key and period.\n# TYPE weir_quota_limit gauge\n");
    for (plan, _, limit) in &gauges.quotas {
        let _ = writeln!(out, "weir_quota_limit{{plan=\"{}\"}} {limit}", esc(plan));
    }
    let _ = writeln!(
        out,
        "# HELP weir_log_records_dropped_total Access log records dropped because a writer fell behind.\n# TYPE weir_log_records_dropped_total counter\nweir_log_records_dropped_total {}",
        gauges.log_records_dropped
    );
    process(&mut out, metrics.started);
    out
}

/// The standard `process_*` metrics, from /proc/self.
fn process(out: &mut String, started: u64) {
    let page = 4096.0;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let rss_pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the command.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
        rss_pages * page
    );
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
    );
    let _ = writeln!(
        out,
        "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}"
    );
    let _ = writeln!(
        out,
        "# HELP process_start_time_seconds Start time, in Unix seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {started}"
    );
}

/// A label value escaped as the text format wants (`\`, `"`, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;

    #[test]
    fn a_scrape_sums_the_workers_and_keeps_series_by_name() {
        let metrics = Metrics::new(2);
        let names = Names {
            listeners: vec!["public"],
            routes: vec!["GET /items/{id}".into()],
            upstreams: vec![("backend", vec!["10.0.0.1:80"])],
        };
        let a = metrics.series_for(0, &names);
        let b = metrics.series_for(1, &names);
        let ok = Record {
            start: Now {
                nanos: 1_000_000_000,
            },
            end: Now {
                nanos: 1_003_000_000,
            },
            route: Some(0),
            status: 200,
            bytes_in: 100,
            bytes_out: 1000,
            ..Record::default()
        };
        a.record(&metrics, &ok, 0);
        b.record(&metrics, &ok, 0);
        b.record(&metrics, &Record { status: 418, ..ok }, 0);
        // A new generation with the same names finds the same cells.
        let again = metrics.series_for(0, &names);
        again.record(&metrics, &ok, 0);
        let text = render(
            &metrics,
            &Gauges {
                generation: 1,
                targets: vec![],
                log_records_dropped: 0,
                quotas: vec![],
            },
        );
        let series = "listener=\"public\",route=\"GET /items/{id}\"";
        assert!(
            text.contains(&format!(
                "weir_requests_total{{{series},method=\"GET\",code=\"200\"}} 3"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "weir_requests_total{{{series},method=\"GET\",code=\"418\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "weir_request_duration_seconds_bucket{{{series},le=\"0.005\"}} 4"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("weir_request_bytes_total{{{series}}} 400")),
            "{text}"
        );
    }
}
