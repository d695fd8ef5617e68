//! Start-up, reload and shutdown: binds the listeners, drops to `[server] user` if set,
//! starts one pinned worker thread per core with its own runtime and its own SO_REUSEPORT
//! socket per listener, reports what runs, reloads the config into a new generation
//! ([`Control::reload`], which tells a service manager when it starts and ends), and turns
//! SIGTERM/SIGINT/SIGQUIT into a graceful drain.
//!
//! Must not: do any request work. Everything that can fail at start (bind, ring set-up)
//! fails here, before the first connection, as a one-line error; everything that can fail
//! in a reload fails before the new generation is published, leaving the old one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::config::{Config, IoDriver, RingMode, Workers};
use crate::gateway::Gateway;
use crate::quota::QuotaSet;
use crate::registry::Registry;
use crate::worker::{Published, Worker};

/// The I/O driver a worker ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring(RingMode),
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Driver::IoUring(RingMode::DeferTaskrun) => f.write_str("io_uring (defer_taskrun)"),
            Driver::IoUring(RingMode::CoopTaskrun) => f.write_str("io_uring (coop_taskrun)"),
            Driver::IoUring(_) => f.write_str("io_uring"),
            Driver::Epoll => f.write_str("epoll"),
        }
    }
}

/// A listener as bound: its name, its address (the real port when the config said 0),
/// and whether it speaks TLS.
#[derive(Debug, Clone)]
pub struct Bound {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Bound {
    /// `http://127.0.0.1:8080` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// A running gateway.
pub struct Running {
    /// Each listener as bound at start, in config order.
    pub listeners: Vec<Bound>,
    pub workers: usize,
    pub driver: Driver,
    pub cpus: Vec<Option<usize>>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    control: Arc<Control>,
}

/// What changes a running gateway: reloads and purges, from the signal thread and the
/// control socket alike, one at a time.
pub struct Control {
    /// The config file, read again on each reload.
    path: PathBuf,
    workers: usize,
    published: Arc<Published>,
    registry: Registry,
    cache_bus: Arc<crate::cache::Bus>,
    /// The quota counters the store's thread writes, and that thread once a plan has a
    /// quota.
    quota_set: QuotaSet,
    quota_store: Mutex<Option<crate::quota::Persister>>,
    /// The store chosen at start: a reload keeps it.
    quota_path: PathBuf,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Running {
    /// Starts draining and waits for every worker to finish.
    pub fn shutdown(self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wait();
    }

    /// What reloads and purges this gateway.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Handle that starts a drain when set (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Waits for the workers to exit (after the shutdown flag is set), then writes the
    /// final quota counts.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
        let store = self.control.quota_store.lock().map(|mut s| s.take());
        if let Ok(Some(store)) = store {
            store.finish();
        }
        // The workers handed over their last lines as they drained: write them out.
        for writer in self.control.registry.access_writers() {
            writer.close();
        }
    }
}

/// What a reload did, or why it did nothing.
pub type ReloadResult = Result<Vec<String>, Vec<String>>;

impl Control {
    /// Reopens every access log file (SIGUSR1, and each reload: logrotate's `postrotate`
    /// sends either). Returns how many logs were told.
    pub fn reopen_logs(&self) -> usize {
        let writers = self.registry.access_writers();
        for w in &writers {
            w.reopen();
        }
        writers.len()
    }

    /// Requests in flight to `target` of `group` (0 when metrics are off).
    pub fn in_flight(&self, group: &str, target: &str) -> u64 {
        self.published
            .metrics
            .as_ref()
            .map_or(0, |m| m.in_flight(group, target))
    }

    /// The metrics, as Prometheus' text format (`None` when metrics are off: no `[admin]`).
    pub fn metrics_text(&self) -> Option<String> {
        let metrics = self.published.metrics.as_ref()?;
        let gateway = self.published.current();
        let now = crate::clock::now().ms();
        let targets = gateway
            .upstreams
            .iter()
            .flat_map(|u| {
                u.config
                    .targets
                    .iter()
                    .zip(u.health.iter())
                    .map(move |(t, h)| (u.config.name.as_str(), t.authority.as_str(), h.is_up(now)))
            })
            .collect();
        let log_records_dropped = self
            .registry
            .access_writers()
            .iter()
            .map(|w| w.dropped())
            .sum();
        // Each plan's use, summed over its keys (one read of each counter).
        let period_now = crate::quota::wall_clock(crate::clock::now());
        let mut quotas: Vec<(&str, u64, u64)> = Vec::new();
        for q in gateway.quotas.iter() {
            match quotas.iter_mut().find(|(plan, _, _)| *plan == q.plan) {
                Some(entry) => entry.1 += q.used(period_now),
                None => quotas.push((q.plan.as_str(), q.used(period_now), q.limit)),
            }
        }
        let gauges = crate::observe::metrics::Gauges {
            generation: gateway.generation,
            targets,
            log_records_dropped,
            quotas,
        };
        Some(crate::observe::metrics::render(metrics, &gauges))
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Gateway> {
        self.published.current()
    }

    /// Reloads the config file: checked as `weir check` does, then built against the
    /// state that outlives generations, with new listeners bound; then published to the
    /// workers. On any error nothing changes. Ok: lines saying what serves now;
    /// Err: every error. Both are logged here.
    ///
    /// A service manager that asked for the reload (systemd's `Type=notify-reload`) is
    /// told when it starts and when it ends, failed or not: either way the gateway serves.
    pub fn reload(&self) -> ReloadResult {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        crate::notify::reloading();
        self.reopen_logs();
        let old = self.published.current();
        let result = self.build_next(&old);
        if let Some(m) = &self.published.metrics {
            let counter = match &result {
                Ok(_) => &m.reloads_applied,
                Err(_) => &m.reloads_refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let status = match &result {
            Ok(lines) => {
                for line in lines {
                    crate::info!("{line}");
                }
                format!("serving generation {}", self.published.current().generation)
            }
            Err(errors) => {
                for e in errors {
                    crate::error!("reload: {e}");
                }
                let kept = format!(
                    "kept generation {} ({} error{})",
                    old.generation,
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                crate::error!("reload: {kept}");
                format!("reload failed: {kept}")
            }
        };
        crate::notify::reloaded(&status);
        result
    }

    fn build_next(&self, old: &Gateway) -> ReloadResult {
        let config = crate::config::load(&self.path)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut notes = Vec::new();
        if config.server.workers != old.config.server.workers
            || config.server.io != old.config.server.io
            || config.server.ring != old.config.server.ring
            || config.server.ring_entries != old.config.server.ring_entries
            || config.server.pin != old.config.server.pin
            || config.server.user != old.config.server.user
            || config.cache_memory != old.config.cache_memory
        {
            notes.push(
                "reload: [server] workers, io, ring, ring_entries, pin, user and [cache] \
                 memory take effect at the next start"
                    .to_string(),
            );
        }
        if config.quota_store != self.quota_path {
            notes.push(format!(
                "reload: [quotas] store stays {} until the next start",
                self.quota_path.display()
            ));
        }

        // Listeners: the ones that stay keep their sockets; new ones are bound now, so a
        // port in use fails the reload before anything changed.
        let mut bound = Vec::new();
        let mut announced = Vec::new();
        let mut sockets: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..self.workers).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            let same = |o: &crate::config::Listener| {
                o.address == l.address && (l.address.port() != 0 || o.name == l.name)
            };
            if let Some(i) = old.config.listeners.iter().position(same) {
                bound.push(old.bound[i]);
                continue;
            }
            let addr = bind_group(l, &mut sockets).map_err(|e| vec![e])?;
            bound.push(addr);
            announced.push(Bound {
                name: l.name.clone(),
                addr,
                tls: l.tls.is_some(),
            });
        }

        let mut state = self.registry.next();
        let next = Gateway::new(
            config,
            old.generation + 1,
            bound,
            self.cache_bus.clone(),
            &mut state,
        )
        .map_err(|e| vec![e])?;
        crate::quota::load(&self.quota_path, &state.new_quotas).map_err(|e| vec![e])?;
        if !next.quotas.is_empty() {
            let mut store = self.quota_store.lock().unwrap_or_else(|e| e.into_inner());
            if store.is_none() {
                *store = Some(
                    crate::quota::Persister::start(self.quota_path.clone(), self.quota_set.clone())
                        .map_err(|e| vec![e])?,
                );
            }
        }
        let summary = summarize(old, &next);
        state.commit();
        *self.quota_set.lock().unwrap_or_else(|e| e.into_inner()) = next.quotas.clone();
        let generation = next.generation;
        self.published.publish(Arc::new(next), sockets);

        let mut lines = notes;
        for b in &announced {
            lines.push(format!("listening on {} (listener `{}`)", b.url(), b.name));
        }
        lines.push(format!(
            "reload: generation {generation} serving ({summary})"
        ));
        Ok(lines)
    }

    /// Purges the response cache on every worker: the named routes' entries, or all of
    /// them when `routes` is empty. A line per purge saying what happened.
    /// Purges every cached response whose path starts with `prefix`, on every worker.
    pub fn purge_prefix(&self, prefix: &str) -> String {
        let bytes: std::sync::Arc<[u8]> = prefix.as_bytes().into();
        self.cache_bus
            .send(crate::cache::Purge::Prefix(bytes), None);
        format!("purged every path under `{prefix}`")
    }

    pub fn purge_cache(&self, routes: &[String]) -> Vec<String> {
        use crate::cache::Purge;
        let bus = &self.cache_bus;
        if routes.is_empty() {
            bus.send(Purge::All, None);
            return vec!["purged the whole cache".into()];
        }
        let gateway = self.published.current();
        routes
            .iter()
            .map(|name| {
                match gateway
                    .config
                    .routes
                    .iter()
                    .position(|r| r.name.as_deref() == Some(name.as_str()))
                {
                    Some(i) => {
                        bus.send(Purge::Route(gateway.route_keys[i]), None);
                        format!("purged route `{name}`")
                    }
                    None => format!("no route is named `{name}`: nothing purged for it"),
                }
            })
            .collect()
    }
}

/// `routes: 1 added, 0 removed, 2 changed; listeners: ...; upstreams: ...`.
fn summarize(old: &Gateway, new: &Gateway) -> String {
    // Routes by identity; a route "changed" when anything but its line moved.
    let route = |g: &Gateway, i: usize| {
        let mut r = g.config.routes[i].clone();
        r.line = 0;
        format!("{r:?}")
    };
    let routes = diff(
        &old.route_keys,
        &new.route_keys,
        |i| route(old, i),
        |i| route(new, i),
    );
    let names = |g: &Gateway| g.config.listeners.iter().map(|l| l.name.clone()).collect();
    let (on, nn): (Vec<String>, Vec<String>) = (names(old), names(new));
    let listeners = diff(
        &on,
        &nn,
        |i| format!("{:?}{:?}", old.config.listeners[i], old.bound[i]),
        |i| format!("{:?}{:?}", new.config.listeners[i], new.bound[i]),
    );
    let names = |g: &Gateway| g.config.upstreams.iter().map(|u| u.name.clone()).collect();
    let (ou, nu): (Vec<String>, Vec<String>) = (names(old), names(new));
    let upstreams = diff(
        &ou,
        &nu,
        |i| format!("{:?}", old.config.upstreams[i]),
        |i| format!("{:?}", new.config.upstreams[i]),
    );
    format!("routes: {routes}; listeners: {listeners}; upstreams: {upstreams}")
}

/// `A added, R removed, C changed` between two lists of identities.
fn diff<K: PartialEq>(
    old: &[K],
    new: &[K],
    old_text: impl Fn(usize) -> String,
    new_text: impl Fn(usize) -> String,
) -> String {
    let added = new.iter().filter(|k| !old.contains(k)).count();
    let removed = old.iter().filter(|k| !new.contains(k)).count();
    let changed = new
        .iter()
        .enumerate()
        .filter_map(|(n, k)| Some((n, old.iter().position(|o| o == k)?)))
        .filter(|&(n, o)| new_text(n) != old_text(o))
        .count();
    format!("{added} added, {removed} removed, {changed} changed")
}

/// Claims `l`'s address (another process holding it, another Weir too, is an error rather
/// than a partner in the SO_REUSEPORT group; port 0 is resolved there), then binds one
/// socket on it for each worker.
fn bind_group(
    l: &crate::config::Listener,
    sockets: &mut [Vec<(SocketAddr, std::net::TcpListener)>],
) -> Result<SocketAddr, String> {
    let cannot = |addr, e| format!("cannot listen on {addr} (listener `{}`): {e}", l.name);
    let addr = crate::net::claim_address(l.address).map_err(|e| cannot(l.address, e))?;
    for per_worker in sockets.iter_mut() {
        let socket = crate::net::bind_reuseport(addr, l.backlog).map_err(|e| cannot(addr, e))?;
        per_worker.push((addr, socket));
    }
    Ok(addr)
}

/// Binds everything and starts the workers. Returns once every worker is serving.
/// `path` is the config file, read again on each reload.
pub fn start(config: Config, path: &Path) -> Result<Running, String> {
    let cpus = crate::net::allowed_cpus();
    let workers = match config.server.workers {
        Workers::Count(n) => n,
        Workers::Auto => cpus.len().max(1),
    };

    // Bind one socket per worker per listener now, so a bind error stops start-up cleanly.
    let mut bound = Vec::new();
    let mut addrs = Vec::new();
    let mut sockets: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let addr = bind_group(l, &mut sockets)?;
        addrs.push(addr);
        bound.push(Bound {
            name: l.name.clone(),
            addr,
            tls: l.tls.is_some(),
        });
    }

    // Binding was the one thing that may need root. Drop to `user` now, before any
    // thread of ours exists (in `weir run`, the main thread is the only one): everything
    // after (certificates, the quota store, the workers) runs as the user that serves.
    if let Some(user) = &config.server.user {
        if crate::privileges::drop_to(user)? {
            still_loads(path, &user.name)?;
            crate::info!(
                "listeners bound; serving as user `{}` (uid {}, gid {})",
                user.name,
                user.uid,
                user.gid
            );
        }
    }

    let registry = Registry::new()?;
    let cache_bus = Arc::new(crate::cache::Bus::new(workers));
    let mut state = registry.next();
    let gateway = Gateway::new(config, 1, addrs, cache_bus.clone(), &mut state)?;
    let quota_path = gateway.config.quota_store.clone();
    crate::quota::load(&quota_path, &state.new_quotas)?;
    state.commit();
    let quota_set: QuotaSet = Arc::new(Mutex::new(gateway.quotas.clone()));
    let quota_store = if gateway.quotas.is_empty() {
        None
    } else {
        Some(crate::quota::Persister::start(
            quota_path.clone(),
            quota_set.clone(),
        )?)
    };
    let pin = gateway.config.server.pin;
    let published = Arc::new(Published::new(Arc::new(gateway), workers));
    let shutdown = Arc::new(AtomicBool::new(false));
    let seed = ahash::RandomState::new().hash_one(std::process::id());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Driver, String>>();
    let mut threads = Vec::new();
    let mut pinned = Vec::new();
    for (id, listeners) in sockets.into_iter().enumerate() {
        let cpu = (pin && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        pinned.push(cpu);
        let published = published.clone();
        let shutdown = shutdown.clone();
        let ready = ready_tx.clone();
        let plan = WorkerPlan {
            id,
            workers,
            cpu,
            seed,
            listeners,
        };
        let t = thread::Builder::new()
            .name(format!("weir-worker-{id}"))
            .spawn(move || worker_thread(plan, published, shutdown, ready))
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);

    let mut driver = None;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(d)) => driver = Some(d),
            Ok(Err(e)) => {
                shutdown.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => return Err("a worker exited during start-up".into()),
        }
    }
    let control = Arc::new(Control {
        path: path.to_path_buf(),
        workers,
        published,
        registry,
        cache_bus,
        quota_set,
        quota_store: Mutex::new(quota_store),
        quota_path,
        reloading: Mutex::new(()),
    });
    Ok(Running {
        listeners: bound,
        workers,
        driver: driver.unwrap_or(Driver::Epoll),
        cpus: pinned,
        shutdown,
        threads,
        control,
    })
}

/// Loads the config again, as the user the process just dropped to. Start-up read it as
/// root; every reload reads it (the file, the keys file, the certificates) as `user`. A
/// file only root can read would pass start-up and fail every reload: fail now instead.
fn still_loads(path: &Path, user: &str) -> Result<(), String> {
    crate::config::load(path).map(drop).map_err(|errors| {
        let all: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        format!(
            "after dropping to user `{user}`, the config no longer loads: {}; every file \
             Weir reads must be readable by `{user}`, since reloads read them as `{user}`",
            all.join("; ")
        )
    })
}

/// What one worker thread is given at start.
struct WorkerPlan {
    id: usize,
    /// How many workers there are in all (throttle leases are sized by it).
    workers: usize,
    cpu: Option<usize>,
    /// Per-process random seed for request ids.
    seed: u64,
    /// This worker's own socket for each listener, by bound address.
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

fn worker_thread(
    plan: WorkerPlan,
    published: Arc<Published>,
    shutdown: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<Driver, String>>,
) {
    let WorkerPlan {
        id,
        workers,
        cpu,
        seed,
        listeners,
    } = plan;
    if let Some(cpu) = cpu {
        if let Err(e) = crate::net::pin_current_thread(cpu) {
            crate::warn!("worker {id}: cannot pin to CPU {cpu}: {e}");
        }
    }
    let server = published.current().config.server.clone();
    let (io, ring, entries) = (server.io, server.ring, server.ring_entries);
    let worker = Rc::new(Worker::new(id, published, seed, workers));

    if io != IoDriver::Epoll {
        for mode in ring_modes(ring) {
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(entries)
                .uring_builder(uring_builder(mode))
                .enable_timer()
                .build();
            match built {
                Ok(mut rt) => {
                    let _ = ready.send(Ok(Driver::IoUring(mode)));
                    rt.block_on(crate::accept::run(worker, listeners, shutdown, true));
                    return;
                }
                Err(e) if io == IoDriver::IoUring && ring != RingMode::Auto => {
                    let _ = ready.send(Err(format!(
                        "worker {id}: cannot set up io_uring ({mode:?}): {e}; see tuning.md (memlock, seccomp)"
                    )));
                    return;
                }
                Err(_) => continue,
            }
        }
        if io == IoDriver::IoUring {
            let _ = ready.send(Err(format!(
                "worker {id}: io_uring is unavailable (old kernel, seccomp, or memlock); use io = \"auto\" or \"epoll\""
            )));
            return;
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            let _ = ready.send(Ok(Driver::Epoll));
            rt.block_on(crate::accept::run(worker, listeners, shutdown, false));
        }
        Err(e) => {
            let _ = ready.send(Err(format!("worker {id}: cannot start epoll runtime: {e}")));
        }
    }
}

fn ring_modes(mode: RingMode) -> Vec<RingMode> {
    match mode {
        RingMode::Auto => vec![
            RingMode::DeferTaskrun,
            RingMode::CoopTaskrun,
            RingMode::Plain,
        ],
        m => vec![m],
    }
}

fn uring_builder(mode: RingMode) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    match mode {
        RingMode::DeferTaskrun => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        RingMode::CoopTaskrun => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        RingMode::Plain | RingMode::Auto => {}
    }
    b
}
