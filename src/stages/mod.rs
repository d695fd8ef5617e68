//! A route's pipeline: the stages a request passes between routing and its integration,
//! compiled once per config generation ([`Pipeline::compile`]).
//!
//! The stages, in the order a route runs them (API Gateway's order: authorize, throttle,
//! cache):
//!
//! 1. [`api_key`]: 403 without a usable key; brings the key's usage plan;
//! 2. [`throttle`]: the client address's bucket, the key's quota, then the token buckets
//!    (key per route, key, route, listener, global);
//! 3. [`cache`]: answers from this worker's shard, waits for a fetch of the same key in
//!    flight, or lets the request go on with what the relay needs to store the response;
//! 4. [`Stage::Invalidate`] (in [`cache`]): a success of an unsafe method drops what the cache holds for
//!    the path, on every worker (on every proxied route of a config that caches).
//!
//! Each stage answers [`Step::Continue`], [`Step::Reply`] (the responder writes it) or
//! [`Step::Wait`] (the connection awaits the wait, then resumes the same stage). The
//! stages are a closed enum: dispatch is a `match`, nothing is boxed per request. Stages
//! that watch the response ([`Pipeline::watches_response`]) are called again by the HTTP
//! integration when the upstream's head, body and end arrive.
//!
//! A refusal undoes what the refusing stage took (the per-address token, the quota
//! reservation); a request refused by a later stage still counts against the buckets it
//! passed, as in API Gateway. Must not: do I/O, write a response, or allocate on the
//! common path: stages decide, the connection (`crate::proxy`) acts.

pub mod api_key;
pub mod cache;
pub mod throttle;

use std::rc::Rc;
use std::time::Duration;

use crate::cache::{Fill, Status, Stored};
use crate::clock::Now;
use crate::config::{Integration, Route};
use crate::http::write::MockResponse;
use crate::http::RequestHead;
use crate::limit::SharedBucket;
use crate::rewrite::HttpIntegration;

/// One stage of a route's pipeline, with what it needs from the config.
#[derive(Debug)]
pub enum Stage {
    ApiKey,
    Throttle(throttle::Throttle),
    Cache(Box<crate::cache::RouteCache>),
    Invalidate,
}

/// What a route does once its stages let a request through.
#[derive(Debug)]
pub enum Integrate {
    /// A fixed response, rendered at load.
    Mock(MockResponse),
    /// Forward to an upstream group.
    Http(HttpIntegration),
}

/// A route compiled: its stages in order and its integration.
#[derive(Debug)]
pub struct Pipeline {
    pub stages: Box<[Stage]>,
    pub integrate: Integrate,
    /// Some stage wants the upstream's response (the cache, invalidation).
    pub watches_response: bool,
}

/// What a stage decided.
pub enum Step<'g> {
    Continue,
    Reply(Reply<'g>),
    Wait(Wait),
}

/// An answer a stage gives instead of the integration's.
pub enum Reply<'g> {
    /// 403: no usable API key for this route.
    Forbidden,
    /// 429 from a token bucket, with how long until it admits a request.
    Throttled {
        bucket: &'g SharedBucket,
        wait_nanos: u64,
    },
    /// 429 "Limit Exceeded": the key's quota is spent until the next period.
    QuotaExceeded { wait_secs: u64 },
    /// A stored response (or a 304 for it), and maybe a background refresh to start.
    Stored {
        stored: Rc<Stored>,
        status: Status,
        not_modified: bool,
        refresh: Option<cache::FillTicket>,
    },
}

/// What a stage waits for before it decides.
pub enum Wait {
    /// Another request on this worker is fetching the same cache key.
    Fill { fill: Rc<Fill>, timeout: Duration },
}

impl Wait {
    /// Waits; returns whether what was awaited finished (rather than timed out).
    pub async fn done(self) -> bool {
        match self {
            Wait::Fill { fill, timeout } => {
                monoio::time::timeout(timeout, fill.wait()).await.is_ok()
            }
        }
    }
}

/// The request as the stages see it.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub is_head: bool,
    pub peer: std::net::IpAddr,
    pub listener: usize,
    pub route: usize,
    pub now: Now,
}

/// What the stages need of the worker and the generation besides the request.
pub struct Ctx<'a> {
    /// This worker's share of the response cache.
    pub shard: &'a Rc<std::cell::RefCell<crate::cache::Shard>>,
    pub worker: usize,
    /// The generation's API keys (the cache's `invalidate = "api_key"` checks one).
    pub keys: &'a crate::auth::KeyTable,
    /// Carries invalidations to the other workers' shards.
    pub bus: &'a crate::cache::Bus,
}

/// What the stages leave for the rest of the request (reset for each request).
#[derive(Default)]
pub struct Taken {
    /// The authorized key, an index into `Config::api_keys` (its `id` may be logged, its
    /// value never).
    pub api_key: Option<usize>,
    /// Header lines for every response to this request, Weir's own answers included
    /// (RateLimit fields today).
    pub headers: Vec<u8>,
    /// The cache's part in the request.
    pub cache: cache::CacheState,
}

impl Taken {
    /// Clears what the previous request's stages left. (The cache's part is reset at the
    /// end of each request, when its fill ticket is let go, and by the cache stage.)
    pub fn reset(&mut self) {
        self.api_key = None;
        self.headers.clear();
    }
}

impl Pipeline {
    /// Compiles a route. `caching`: some route of the config caches, so
    /// every proxied route invalidates on unsafe methods.
    pub fn compile(route: &Route, throttle: throttle::Throttle, caching: bool) -> Pipeline {
        let mut stages = Vec::new();
        if route.api_key_required {
            stages.push(Stage::ApiKey);
        }
        if !throttle.is_empty() || route.api_key_required {
            stages.push(Stage::Throttle(throttle));
        }
        let integrate = match &route.integration {
            Integration::Mock(m) => Integrate::Mock(MockResponse::new(m)),
            Integration::Http(h) => {
                if let Some(rc) = &route.cache {
                    stages.push(Stage::Cache(Box::new(rc.clone())));
                }
                if caching {
                    stages.push(Stage::Invalidate);
                }
                Integrate::Http(h.clone())
            }
        };
        let watches_response = stages
            .iter()
            .any(|s| matches!(s, Stage::Cache(_) | Stage::Invalidate));
        Pipeline {
            stages: stages.into(),
            integrate,
            watches_response,
        }
    }

    /// The route's cache settings, if it caches.
    pub fn cache(&self) -> Option<&crate::cache::RouteCache> {
        self.stages.iter().find_map(|s| match s {
            Stage::Cache(rc) => Some(&**rc),
            _ => None,
        })
    }

    /// The upstream's final response head arrived (at the start of `ubuf`): whether a
    /// stage answers instead (a stored response revalidated or standing in for a 5xx).
    #[allow(clippy::too_many_arguments)]
    pub fn on_upstream_head(
        &self,
        ctx: &Ctx,
        taken: &mut Taken,
        request: (&[u8], &RequestHead),
        ubuf: &[u8],
        response: &crate::http::ResponseHead,
        now: Now,
        date: &[u8],
    ) -> cache::OnResponse {
        if !self.watches_response {
            return cache::OnResponse::Relay;
        }
        let state = &mut taken.cache;
        cache::on_upstream_head(ctx, self.cache(), state, request, ubuf, response, now, date)
    }

    /// A piece of the response body went to the client.
    pub fn on_body(&self, taken: &mut Taken, piece: &[u8]) {
        if taken.cache.capturing() {
            cache::capture(&mut taken.cache, piece);
        }
    }

    /// The whole response went to the client.
    pub fn on_end(&self, ctx: &Ctx, taken: &mut Taken, route_key: u64, now: Now) {
        if taken.cache.capturing() {
            cache::store(ctx, &mut taken.cache, route_key, now);
        }
    }

    /// The upstream failed: a stored response that may answer instead, and whether the
    /// request's conditionals make it a 304.
    pub fn stand_in(
        &self,
        taken: &mut Taken,
        buf: &[u8],
        head: &RequestHead,
        now: Now,
    ) -> Option<(Rc<Stored>, bool)> {
        let rc = self.cache()?;
        cache::stand_in(&mut taken.cache, rc, buf, head, now)
    }
}
