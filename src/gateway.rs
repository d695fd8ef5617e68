//! The gateway as every worker sees it: the checked config compiled into routing tables,
//! pre-rendered mock responses, and upstream groups with their shared health.
//!
//! Built once at start-up and shared read-only (`Arc`) by all workers. Must not hold
//! anything a worker mutates on the request path, except the atomics of target health.

use std::sync::Arc;

use crate::config::{Config, Integration};
use crate::http::write::MockResponse;
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
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, String> {
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
            .map(|u| Arc::new(SharedUpstream::new(u.clone())))
            .collect();
        Ok(Gateway {
            config,
            routers,
            mocks,
            upstreams,
        })
    }
}
