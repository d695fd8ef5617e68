//! State that outlives a config generation, found again by identity after a reload.
//!
//! Owns: the shared state each generation's [`crate::gateway::Gateway`] points at, keyed
//! by what it *is* rather than where it sits in a config: token buckets by their scope,
//! name, rate and burst; target health by target address; quota counters by plan and key;
//! per-address buckets by route and settings; the TLS session-ticket keys. A reload that
//! keeps a bucket, a target or a key therefore keeps its state (a drained bucket stays
//! drained, a down target stays down, a count goes on), and a changed limit starts fresh.
//!
//! Must not: be touched on the request path. Only the control thread uses it, one reload
//! at a time, while building a generation; workers see only the `Arc`s it handed out.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::limit::{PerIpBuckets, Scope, SharedBucket};
use crate::observe::access_log::{Destination, Writer};
use crate::quota::QuotaCounter;
use crate::upstream::TargetHealth;

/// One kind of state: what the serving generation uses, by key.
type Table<K, V> = HashMap<K, Arc<V>>;

#[derive(Default)]
struct Tables {
    buckets: Table<String, SharedBucket>,
    health: Table<SocketAddr, TargetHealth>,
    quotas: Table<(String, String), QuotaCounter>,
    per_ip: Table<String, PerIpBuckets>,
}

/// The process's state across generations.
pub struct Registry {
    /// What the serving generation uses.
    current: Mutex<Tables>,
    /// Access log writers by destination, for the life of the process (a reload that
    /// keeps a log file keeps its writer; one no longer used idles).
    writers: Mutex<HashMap<Destination, Arc<Writer>>>,
    /// TLS session-ticket keys, one set for the process: tickets issued before a reload
    /// (on any listener, by any worker) still resume after it.
    pub ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub fn new() -> Result<Registry, String> {
        Ok(Registry {
            current: Mutex::default(),
            writers: Mutex::default(),
            ticketer: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("TLS tickets: {e}"))?,
        })
    }

    /// Every access log writer started so far.
    pub fn access_writers(&self) -> Vec<Arc<Writer>> {
        let writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers.values().cloned().collect()
    }

    /// Starts building a generation: it takes state from what serves now, and what it
    /// does not take is dropped when it is committed.
    pub fn next(&self) -> Next<'_> {
        Next {
            registry: self,
            tables: Tables::default(),
            new_quotas: Vec::new(),
        }
    }
}

/// The state of a generation being built. [`Next::commit`] once it serves; dropped
/// without, the serving generation's state is untouched.
pub struct Next<'a> {
    registry: &'a Registry,
    tables: Tables,
    /// Quota counters that did not exist before: their counts come from the store.
    pub new_quotas: Vec<Arc<QuotaCounter>>,
}

fn reuse<K: Eq + Hash + Clone, V>(
    now: &Table<K, V>,
    next: &mut Table<K, V>,
    key: K,
    make: impl FnOnce() -> V,
) -> (Arc<V>, bool) {
    let found = next.get(&key).or_else(|| now.get(&key)).cloned();
    if let Some(v) = found {
        next.insert(key, v.clone());
        return (v, false);
    }
    let v = Arc::new(make());
    next.insert(key, v.clone());
    (v, true)
}

impl<'a> Next<'a> {
    /// The serving generation's state (locked only by the one reload building).
    fn now(&self) -> std::sync::MutexGuard<'a, Tables> {
        let registry: &'a Registry = self.registry;
        registry.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer for an access log at `destination`: the running one, or a new one (which
    /// opens the file now, so a path that cannot be written fails the build).
    pub fn access_writer(&mut self, destination: &Destination) -> Result<Arc<Writer>, String> {
        let mut writers = self
            .registry
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get(destination) {
            return Ok(w.clone());
        }
        let w = Writer::start(destination.clone())?;
        writers.insert(destination.clone(), w.clone());
        Ok(w)
    }

    /// The process's TLS session-ticket keys.
    pub fn ticketer(&self) -> Arc<dyn rustls::server::ProducesTickets> {
        self.registry.ticketer.clone()
    }

    /// A token bucket. `scope` says whose it is (`global`, `listener NAME`, `route KEY`,
    /// `plan P key K`, ...); a bucket with another rate, burst or name is another bucket.
    pub fn bucket(&mut self, scope: &str, name: &str, rate: f64, burst: u32) -> Arc<SharedBucket> {
        let key = format!("{scope}\u{0}{name}\u{0}{rate}\u{0}{burst}");
        let now = self.now();
        let level = match scope.split(' ').next() {
            Some("global") => Scope::Global,
            Some("listener") => Scope::Listener,
            Some("plan") => Scope::Key,
            _ => Scope::Route,
        };
        let (b, _) = reuse(&now.buckets, &mut self.tables.buckets, key, || {
            SharedBucket::scoped(level, name, rate, burst)
        });
        b
    }

    /// The passive health of the target at `addr`, shared by every group that has it.
    pub fn health(&mut self, addr: SocketAddr) -> Arc<TargetHealth> {
        let now = self.now();
        reuse(
            &now.health,
            &mut self.tables.health,
            addr,
            TargetHealth::default,
        )
        .0
    }

    /// One key's quota counter in one plan; a changed limit or period keeps the count.
    pub fn quota(
        &mut self,
        plan: &str,
        key: &str,
        limit: u64,
        period: crate::quota::Period,
    ) -> Arc<QuotaCounter> {
        let id = (plan.to_string(), key.to_string());
        let now = self.now();
        let old = now.quotas.get(&id).cloned();
        drop(now);
        let counter = match old {
            Some(c) if c.limit == limit && c.period == period => c,
            Some(c) => Arc::new(c.with_limit(limit, period)),
            None => {
                let c = Arc::new(QuotaCounter::new(plan, key, limit, period));
                self.new_quotas.push(c.clone());
                c
            }
        };
        self.tables.quotas.insert(id, counter.clone());
        counter
    }

    /// A route's per-client-address buckets.
    pub fn per_ip(
        &mut self,
        route: u64,
        name: &str,
        rate: f64,
        burst: u32,
        clients: usize,
    ) -> Arc<PerIpBuckets> {
        let key = format!("{route:x}\u{0}{name}\u{0}{rate}\u{0}{burst}\u{0}{clients}");
        let now = self.now();
        reuse(&now.per_ip, &mut self.tables.per_ip, key, || {
            PerIpBuckets::new(name, rate, burst, clients)
        })
        .0
    }

    /// The generation built with this state now serves: state it did not take is freed
    /// once the last request of the older generations ends.
    pub fn commit(self) {
        *self
            .registry
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.tables;
    }
}
