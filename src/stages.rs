//! The route's stages between routing and integration, in their order:
//!
//! 1. **authorize**: API keys (403), and the usage plan the key brings to the route;
//! 2. **throttle**: the client address's bucket, the key's quota, then the token buckets
//!    (key per route, key, route, listener, global);
//!
//! The response cache comes after these, in `crate::proxy::cached`, because it may wait
//! (for a fetch of the same key already in flight) and write.
//!
//! Each stage may answer on its own ([`Verdict`]). A refusal at any point undoes what the
//! earlier steps took (the per-address token, the quota reservation), so a refused request
//! costs nothing anywhere. Must not: do I/O or allocate; the caller writes the answer.

use std::net::IpAddr;

use crate::auth::KeyPlan;
use crate::gateway::Gateway;
use crate::http::RequestHead;
use crate::limit::{ceil_secs, now_nanos, write_fields, Leases, SharedBucket};

/// What the stages decided.
pub enum Verdict<'g> {
    /// Go on to the integration.
    Proceed,
    /// 403: no usable API key for this route.
    Forbidden,
    /// 429 from a token bucket, with how long until it admits a request.
    Throttled {
        bucket: &'g SharedBucket,
        wait_nanos: u64,
    },
    /// 429 "Limit Exceeded": the key's quota is spent until the next period.
    QuotaExhausted { wait_secs: u64 },
}

/// The request as the stages see it.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: IpAddr,
    pub listener: usize,
    pub route: usize,
}

/// What the stages leave for the rest of the request: the authorized key (an index into
/// `Config::api_keys`; its `id` may be logged, its value never) and header lines to add.
#[derive(Default)]
pub struct Outcome {
    pub api_key: Option<usize>,
    /// RateLimit fields for an admitted response, when the route asks for them.
    pub headers: Vec<u8>,
}

/// Runs the stages for one request.
pub fn run<'g>(
    gateway: &'g Gateway,
    leases: &Leases,
    req: &Request,
    outcome: &mut Outcome,
) -> Verdict<'g> {
    outcome.api_key = None;
    outcome.headers.clear();
    let route = &gateway.config.routes[req.route];

    // Authorize.
    let mut key_plan: Option<&KeyPlan> = None;
    if route.api_key_required {
        let presented = gateway.keys.presented(req.buf, &req.head.headers);
        match gateway.keys.authorize(presented, req.route) {
            Some(authorized) => {
                outcome.api_key = Some(authorized.key);
                key_plan = authorized.plan;
            }
            None => return Verdict::Forbidden,
        }
    }

    // Throttle: the client's own bucket first.
    let per_ip = gateway.per_ip[req.route].as_ref();
    if let Some(table) = per_ip {
        if let Err(wait_nanos) = table.admit(req.peer, now_nanos()) {
            return Verdict::Throttled {
                bucket: &table.bucket,
                wait_nanos,
            };
        }
    }
    let refund_per_ip = || {
        if let Some(table) = per_ip {
            table.refund(req.peer);
        }
    };

    // Then the key's quota, reserved now and released if a bucket refuses.
    let mut reserved_quota = None;
    if let Some(q) = key_plan.and_then(|kp| kp.quota) {
        let now = crate::quota::wall_clock();
        if let Err(wait_secs) = gateway.quotas[q].try_reserve(now) {
            refund_per_ip();
            return Verdict::QuotaExhausted { wait_secs };
        }
        reserved_quota = Some((q, now));
    }

    // Then the buckets: the key's per-route and per-key buckets from its usage plan, then
    // the route, listener and global buckets.
    let mut chain = [0usize; 5];
    let mut len = 0;
    if let Some(kp) = key_plan {
        let per_route = kp.route_buckets.iter().find(|(r, _)| *r == req.route);
        for b in per_route.map(|&(_, b)| b).into_iter().chain(kp.bucket) {
            chain[len] = b;
            len += 1;
        }
    }
    for &b in gateway.chains[req.listener][req.route].iter() {
        chain[len] = b;
        len += 1;
    }
    let chain = &chain[..len];
    if chain.is_empty() {
        return Verdict::Proceed;
    }
    let now = now_nanos();
    if let Err(refusal) = leases.admit(&gateway.buckets, chain, now) {
        if let Some((q, at)) = reserved_quota {
            gateway.quotas[q].release(at);
        }
        refund_per_ip();
        return Verdict::Throttled {
            bucket: &gateway.buckets[refusal.bucket],
            wait_nanos: refusal.wait_nanos,
        };
    }
    if route.rate_limit_headers {
        if let Some(st) = leases.standing(&gateway.buckets, chain, now) {
            let bucket = &gateway.buckets[st.bucket];
            write_fields(
                &mut outcome.headers,
                bucket,
                st.remaining,
                ceil_secs(st.reset_nanos),
            );
        }
    }

    Verdict::Proceed
}
