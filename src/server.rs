//! Start-up and shutdown: binds the listeners, starts one pinned worker thread per core
//! with its own runtime and its own SO_REUSEPORT socket per listener, reports what runs,
//! and turns SIGTERM/SIGINT into a graceful drain.
//!
//! Must not: do any request work. Everything that can fail at start (bind, ring set-up)
//! fails here, before the first connection, as a one-line error.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use crate::config::{Config, IoDriver, RingMode, Workers};
use crate::gateway::Gateway;
use crate::worker::Worker;

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
    /// Each listener as bound, in config order.
    pub listeners: Vec<Bound>,
    pub workers: usize,
    pub driver: Driver,
    pub cpus: Vec<Option<usize>>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    quota_store: Option<crate::quota::Persister>,
    gateway: Arc<Gateway>,
}

impl Running {
    /// Starts draining and waits for every worker to finish.
    pub fn shutdown(self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wait();
    }

    /// Re-reads TLS certificates (on SIGHUP); a line per TLS listener.
    pub fn reload_certificates(&self) -> Vec<String> {
        self.gateway.reload_certificates()
    }

    /// Purges the response cache on every worker: the named routes' entries, or all of
    /// them when `routes` is empty. A line per purge saying what happened.
    pub fn purge_cache(&self, routes: &[String]) -> Vec<String> {
        use crate::cache::Purge;
        let bus = &self.gateway.cache_bus;
        if routes.is_empty() {
            bus.send(Purge::All, None);
            return vec!["purged the whole cache".into()];
        }
        let config = &self.gateway.config;
        routes
            .iter()
            .map(|name| {
                match config
                    .routes
                    .iter()
                    .position(|r| r.name.as_deref() == Some(name.as_str()))
                {
                    Some(i) => {
                        bus.send(Purge::Route(i), None);
                        format!("purged route `{name}`")
                    }
                    None => format!("no route is named `{name}`: nothing purged for it"),
                }
            })
            .collect()
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
        if let Some(store) = self.quota_store {
            store.finish();
        }
    }
}

/// Binds everything and starts the workers. Returns once every worker is serving.
pub fn start(config: Config) -> Result<Running, String> {
    let cpus = crate::net::allowed_cpus();
    let workers = match config.server.workers {
        Workers::Count(n) => n,
        Workers::Auto => cpus.len().max(1),
    };

    // Bind one socket per worker per listener now, so a bind error stops start-up cleanly.
    // The address is claimed first, so another process holding it (another Weir too) is
    // an error rather than a partner in the SO_REUSEPORT group; port 0 is resolved there.
    let mut bound = Vec::new();
    let mut sockets: Vec<Vec<(usize, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (index, l) in config.listeners.iter().enumerate() {
        let cannot = |addr, e| format!("cannot listen on {addr} (listener `{}`): {e}", l.name);
        let addr = crate::net::claim_address(l.address).map_err(|e| cannot(l.address, e))?;
        for per_worker in sockets.iter_mut() {
            let socket =
                crate::net::bind_reuseport(addr, l.backlog).map_err(|e| cannot(addr, e))?;
            per_worker.push((index, socket));
        }
        bound.push(Bound {
            name: l.name.clone(),
            addr,
            tls: l.tls.is_some(),
        });
    }

    let gateway = Arc::new(Gateway::new(config, workers)?);
    let quota_store = if gateway.quotas.is_empty() {
        None
    } else {
        let path = gateway.config.quota_store.clone();
        crate::quota::load(&path, &gateway.quotas)?;
        Some(crate::quota::Persister::start(
            path,
            gateway.quotas.clone(),
        )?)
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let seed = ahash::RandomState::new().hash_one(std::process::id());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Driver, String>>();
    let mut threads = Vec::new();
    let mut pinned = Vec::new();
    for (id, listeners) in sockets.into_iter().enumerate() {
        let cpu = (gateway.config.server.pin && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        pinned.push(cpu);
        let gateway = gateway.clone();
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
            .spawn(move || worker_thread(plan, gateway, shutdown, ready))
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
    Ok(Running {
        listeners: bound,
        workers,
        driver: driver.unwrap_or(Driver::Epoll),
        cpus: pinned,
        shutdown,
        threads,
        quota_store,
        gateway,
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
    /// This worker's own socket for each listener, by listener index.
    listeners: Vec<(usize, std::net::TcpListener)>,
}

fn worker_thread(
    plan: WorkerPlan,
    gateway: Arc<Gateway>,
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
    let server = &gateway.config.server;
    let (io, ring, entries) = (server.io, server.ring, server.ring_entries);
    let worker = Rc::new(Worker::new(id, gateway.clone(), seed, workers));

    if io != IoDriver::Epoll {
        for mode in ring_modes(ring) {
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(entries)
                .uring_builder(uring_builder(mode))
                .enable_timer()
                .build();
            match built {
                Ok(mut rt) => {
                    let listeners = set_blocking(listeners, true);
                    let _ = ready.send(Ok(Driver::IoUring(mode)));
                    rt.block_on(worker.run(listeners, shutdown));
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
            let listeners = set_blocking(listeners, false);
            let _ = ready.send(Ok(Driver::Epoll));
            rt.block_on(worker.run(listeners, shutdown));
        }
        Err(e) => {
            let _ = ready.send(Err(format!("worker {id}: cannot start epoll runtime: {e}")));
        }
    }
}

/// io_uring wants blocking sockets (it polls internally); epoll needs non-blocking ones.
fn set_blocking(
    listeners: Vec<(usize, std::net::TcpListener)>,
    blocking: bool,
) -> Vec<(usize, std::net::TcpListener)> {
    for (_, l) in &listeners {
        let _ = l.set_nonblocking(!blocking);
    }
    listeners
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
