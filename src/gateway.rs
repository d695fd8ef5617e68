//! One config generation as every worker sees it: the checked config compiled into
//! routing tables, one pipeline per route (its stages and integration), upstream groups, and the shared state
//! (buckets, health, quota counters) taken from [`crate::registry`] by identity.
//!
//! Built at start and at each reload, then shared read-only (`Arc`) by all workers; a
//! request runs on the generation it started with. Must not hold anything a worker
//! mutates on the request path, except atomics in the shared state.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::KeyTable;
use crate::config::{Config, ListenerLog, Route};
use crate::limit::SharedBucket;
use crate::observe::access_log::AccessLog;
use crate::quota::QuotaCounter;
use crate::router::Router;
use crate::stages::throttle::Throttle;
use crate::stages::Pipeline;
use crate::upstream::SharedUpstream;

#[derive(Debug)]
pub struct Gateway {
    /// 1 at start, one more for each reload that took effect.
    pub generation: u64,
    pub config: Config,
    /// Each listener's address as bound (the real port where the config says 0),
    /// indexed like `config.listeners`: how a connection finds its listener in any
    /// generation.
    pub bound: Vec<SocketAddr>,
    /// Each route's identity across generations (see [`route_key`]), indexed like
    /// `config.routes`.
    pub route_keys: Vec<u64>,
    /// One routing table per listener, indexed like `config.listeners`.
    pub routers: Vec<Router>,
    /// Each route compiled into its stages and integration, indexed like `config.routes`.
    pub pipelines: Vec<Pipeline>,
    pub upstreams: Vec<Arc<SharedUpstream>>,
    /// Every token bucket: global, per listener, per route, per key in a usage plan.
    pub buckets: Vec<Arc<SharedBucket>>,
    /// Each listener's access log, if it has one.
    pub access_logs: Vec<Option<Arc<AccessLog>>>,
    /// Each listener's TLS, if it terminates TLS.
    pub tls: Vec<Option<crate::tls::Tls>>,
    /// API keys and what their usage plans allow.
    pub keys: KeyTable,
    /// One quota counter per key per plan with a quota, shared with the store's thread.
    pub quotas: Arc<[Arc<QuotaCounter>]>,
    /// Carries cache purges and invalidations to every worker's shard (one for the
    /// process: shards outlive generations).
    pub cache_bus: Arc<crate::cache::Bus>,
    /// Whether any route caches (else unsafe methods need not invalidate anything).
    pub caching: bool,
}

/// A route's identity across reloads: its `name` if it has one, else its listener, host,
/// path and methods. Cache entries and buckets of a route with the same key are kept.
pub fn route_key(config: &Config, route: &Route) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match &route.name {
        Some(name) => name.hash(&mut h),
        None => {
            route
                .listener
                .map(|l| config.listeners[l].name.as_str())
                .hash(&mut h);
            format!("{:?}", route.host).hash(&mut h);
            route.path.hash(&mut h);
            route.methods.hash(&mut h);
        }
    }
    h.finish()
}

impl Gateway {
    /// The index of the listener bound at `addr` in this generation, if it has one.
    pub fn listener_at(&self, addr: SocketAddr) -> Option<usize> {
        self.bound.iter().position(|&a| a == addr)
    }

    /// What the route's stages need of this generation, on worker `worker` with its
    /// cache shard.
    pub fn stage_ctx<'a>(
        &'a self,
        shard: &'a std::rc::Rc<std::cell::RefCell<crate::cache::Shard>>,
        worker: usize,
    ) -> crate::stages::Ctx<'a> {
        crate::stages::Ctx {
            shard,
            worker,
            keys: &self.keys,
            bus: &self.cache_bus,
        }
    }

    /// The shared throttle state the throttle stage takes from.
    pub fn throttle_shared(&self) -> crate::stages::throttle::Shared<'_> {
        crate::stages::throttle::Shared {
            buckets: &self.buckets,
            quotas: &self.quotas,
        }
    }

    /// Compiles `config` into generation `generation`, with the listeners bound at
    /// `bound`, taking shared state from `state`.
    pub fn new(
        config: Config,
        generation: u64,
        bound: Vec<SocketAddr>,
        cache_bus: Arc<crate::cache::Bus>,
        state: &mut crate::registry::Next,
    ) -> Result<Gateway, String> {
        let specs: Vec<_> = config.routes.iter().map(Route::spec).collect();
        let routers = (0..config.listeners.len())
            .map(|i| {
                Router::build(&specs, i).map_err(|errs| {
                    errs.iter()
                        .map(|e| format!("line {}: {}", config.routes[e.route].line, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let route_keys: Vec<u64> = config
            .routes
            .iter()
            .map(|r| route_key(&config, r))
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| SharedUpstream::new(u.clone(), |addr| state.health(addr)).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let mut buckets = Vec::new();
        let mut add = |scope: String, t: &Option<crate::config::Throttle>| {
            t.as_ref().map(|t| {
                buckets.push(state.bucket(&scope, &t.name, t.rate, t.burst));
                buckets.len() - 1
            })
        };
        let global = add("global".into(), &config.throttle);
        let per_listener: Vec<Option<usize>> = config
            .listeners
            .iter()
            .map(|l| add(format!("listener {}", l.name), &l.throttle))
            .collect();
        let per_route: Vec<Option<usize>> = config
            .routes
            .iter()
            .zip(&route_keys)
            .map(|(r, key)| add(format!("route {key:x}"), &r.throttle))
            .collect();
        let access_logs = config
            .listeners
            .iter()
            .map(|l| {
                let spec = match &l.access_log {
                    ListenerLog::Off => return Ok(None),
                    ListenerLog::Own(spec) => spec,
                    ListenerLog::Inherit => match &config.access_log {
                        Some(spec) => spec,
                        None => return Ok(None),
                    },
                };
                let writer = state.access_writer(&spec.destination)?;
                Ok(Some(Arc::new(AccessLog {
                    spec: spec.clone(),
                    writer,
                })))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let tls = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        crate::tls::Tls::new(t, state.ticketer())
                            .map_err(|e| format!("listener `{}`: {e}", l.name))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut quotas = Vec::new();
        let keys = KeyTable::build(
            config.key_spec(),
            &route_keys,
            &mut buckets,
            &mut quotas,
            state,
        );
        let caching = config.routes.iter().any(|r| r.cache.is_some());
        // Each route's throttle: its per-client buckets, and for each listener the
        // buckets a request passes in order: route, listener, global (API Gateway's
        // method, stage, account order).
        let pipelines = config
            .routes
            .iter()
            .zip(&route_keys)
            .zip(&per_route)
            .map(|((r, &key), &route_bucket)| {
                let throttle = Throttle {
                    per_ip: r
                        .throttle_per_ip
                        .as_ref()
                        .map(|(t, clients)| state.per_ip(key, &t.name, t.rate, t.burst, *clients)),
                    chains: per_listener
                        .iter()
                        .map(|&listener| {
                            [route_bucket, listener, global]
                                .into_iter()
                                .flatten()
                                .collect()
                        })
                        .collect(),
                    headers: r.rate_limit_headers,
                };
                Pipeline::compile(r, throttle, caching)
            })
            .collect();
        Ok(Gateway {
            generation,
            cache_bus,
            caching,
            config,
            bound,
            route_keys,
            routers,
            pipelines,
            upstreams,
            buckets,
            tls,
            access_logs,
            keys,
            quotas: quotas.into(),
        })
    }
}
