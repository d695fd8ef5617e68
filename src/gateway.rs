//! The gateway as every worker sees it: the checked config compiled into routing tables,
//! pre-rendered mock responses, and upstream groups with their shared health.
//!
//! Built once at start-up and shared read-only (`Arc`) by all workers. Must not hold
//! anything a worker mutates on the request path, except the atomics of target health.

use std::sync::Arc;

use crate::auth::KeyTable;
use crate::config::{Config, Integration};
use crate::http::write::MockResponse;
use crate::limit::{PerIpBuckets, SharedBucket};
use crate::quota::QuotaCounter;
use crate::router::Router;
use crate::upstream::SharedUpstream;

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    /// One routing table per listener, indexed like `config.listeners`.
    pub routers: Vec<Router>,
    /// The rendered response of each mock route, indexed like `config.routes`.
    pub mocks: Vec<Option<MockResponse>>,
    pub upstreams: Vec<Arc<SharedUpstream>>,
    /// Every token bucket: global, per listener, per route, per key in a usage plan.
    pub buckets: Vec<SharedBucket>,
    /// Each listener's TLS, if it terminates TLS.
    pub tls: Vec<Option<crate::tls::Tls>>,
    /// Each route's per-client-IP buckets, if it has them.
    pub per_ip: Vec<Option<PerIpBuckets>>,
    /// API keys and what their usage plans allow.
    pub keys: KeyTable,
    /// One quota counter per key per plan with a quota, shared with the store's thread.
    pub quotas: Arc<[QuotaCounter]>,
    /// For each listener and route, the buckets a request passes, in order: route,
    /// listener, global (API Gateway's method, stage, account order).
    pub chains: Vec<Vec<Box<[usize]>>>,
    /// Carries cache purges and invalidations to every worker's shard.
    pub cache_bus: crate::cache::Bus,
    /// Whether any route caches (else unsafe methods need not invalidate anything).
    pub caching: bool,
}

impl Gateway {
    /// Re-reads every TLS listener's certificates: one line per listener saying what
    /// happened. A listener whose new files do not load keeps its certificates.
    pub fn reload_certificates(&self) -> Vec<String> {
        self.config
            .listeners
            .iter()
            .zip(&self.tls)
            .filter_map(|(l, tls)| {
                let tls = tls.as_ref()?;
                Some(match tls.reload() {
                    Ok(()) => format!("listener `{}`: certificates reloaded", l.name),
                    Err(e) => format!("listener `{}`: kept the old certificates: {e}", l.name),
                })
            })
            .collect()
    }

    pub fn new(config: Config, workers: usize) -> Result<Gateway, String> {
        let routers = (0..config.listeners.len())
            .map(|i| {
                Router::build(&config.routes, i).map_err(|errs| {
                    errs.iter()
                        .map(|e| format!("line {}: {}", config.routes[e.route].line, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mocks = config
            .routes
            .iter()
            .map(|r| match &r.integration {
                Integration::Mock(m) => Some(MockResponse::new(m)),
                Integration::Http(_) => None,
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| SharedUpstream::new(u.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let mut buckets = Vec::new();
        let mut add = |t: &Option<crate::config::Throttle>| {
            t.as_ref().map(|t| {
                buckets.push(SharedBucket::new(&t.name, t.rate, t.burst));
                buckets.len() - 1
            })
        };
        let global = add(&config.throttle);
        let per_listener: Vec<Option<usize>> =
            config.listeners.iter().map(|l| add(&l.throttle)).collect();
        let per_route: Vec<Option<usize>> =
            config.routes.iter().map(|r| add(&r.throttle)).collect();
        let chains = per_listener
            .iter()
            .map(|&listener| {
                per_route
                    .iter()
                    .map(|&route| [route, listener, global].into_iter().flatten().collect())
                    .collect()
            })
            .collect();
        let tls = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        crate::tls::Tls::new(t).map_err(|e| format!("listener `{}`: {e}", l.name))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let per_ip = config
            .routes
            .iter()
            .map(|r| {
                r.throttle_per_ip
                    .as_ref()
                    .map(|(t, clients)| PerIpBuckets::new(&t.name, t.rate, t.burst, *clients))
            })
            .collect();
        let mut quotas = Vec::new();
        let keys = KeyTable::build(&config, &mut buckets, &mut quotas);
        let caching = config.routes.iter().any(|r| r.cache.is_some());
        Ok(Gateway {
            cache_bus: crate::cache::Bus::new(workers),
            caching,
            config,
            routers,
            mocks,
            upstreams,
            buckets,
            tls,
            per_ip,
            keys,
            quotas: quotas.into(),
            chains,
        })
    }
}
