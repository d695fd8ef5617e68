//! The throttle stage, in API Gateway's order: the client address's own bucket, then the
//! key's quota (reserved now, released if a bucket refuses), then the token buckets: the
//! key's per-route and per-key buckets from its usage plan, then the route, listener and
//! global buckets. A refusal gives back what the earlier steps took, so a refused request
//! costs nothing anywhere. Must not: allocate or read the clock (the request's reading is
//! passed in).

use std::sync::Arc;

use super::{Reply, Request, Step, Taken};
use crate::auth::KeyPlan;
use crate::limit::{ceil_secs, write_fields, Leases, PerIpBuckets, SharedBucket};
use crate::quota::QuotaCounter;

/// What a route's throttle stage checks besides the key's plan.
#[derive(Debug, Default)]
pub struct Throttle {
    /// The route's per-client-address buckets.
    pub per_ip: Option<Arc<PerIpBuckets>>,
    /// For each listener, the buckets a request passes in order: route, listener, global
    /// (indexes into `Gateway::buckets`).
    pub chains: Box<[Box<[usize]>]>,
    /// Send RateLimit fields with admitted responses.
    pub headers: bool,
}

impl Throttle {
    /// Whether the stage has nothing to check without a key plan.
    pub fn is_empty(&self) -> bool {
        self.per_ip.is_none() && self.chains.iter().all(|c| c.is_empty())
    }
}

/// The generation's shared throttle state: every bucket and every quota counter.
pub struct Shared<'g> {
    pub buckets: &'g [Arc<SharedBucket>],
    pub quotas: &'g [Arc<QuotaCounter>],
}

/// Runs the stage for one request.
pub fn run<'g>(
    shared: Shared<'g>,
    stage: &'g Throttle,
    leases: &Leases,
    key_plan: Option<&KeyPlan>,
    req: &Request,
    taken: &mut Taken,
) -> Step<'g> {
    let now = req.now;
    // The client's own bucket first.
    let per_ip = stage.per_ip.as_deref();
    if let Some(table) = per_ip {
        if let Err(wait_nanos) = table.admit(req.peer, now.nanos) {
            return Step::Reply(Reply::Throttled {
                bucket: &table.bucket,
                wait_nanos,
            });
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
        let period_now = crate::quota::wall_clock(now);
        if let Err(wait_secs) = shared.quotas[q].try_reserve(period_now) {
            refund_per_ip();
            return Step::Reply(Reply::QuotaExceeded { wait_secs });
        }
        reserved_quota = Some((q, period_now));
    }

    // Then the buckets.
    let mut chain = [0usize; 5];
    let mut len = 0;
    if let Some(kp) = key_plan {
        let per_route = kp.route_buckets.iter().find(|(r, _)| *r == req.route);
        for b in per_route.map(|&(_, b)| b).into_iter().chain(kp.bucket) {
            chain[len] = b;
            len += 1;
        }
    }
    for &b in stage.chains[req.listener].iter() {
        chain[len] = b;
        len += 1;
    }
    let chain = &chain[..len];
    if chain.is_empty() {
        return Step::Continue;
    }
    if let Err(refusal) = leases.admit(shared.buckets, chain, now.nanos) {
        if let Some((q, at)) = reserved_quota {
            shared.quotas[q].release(at);
        }
        refund_per_ip();
        return Step::Reply(Reply::Throttled {
            bucket: &shared.buckets[refusal.bucket],
            wait_nanos: refusal.wait_nanos,
        });
    }
    if stage.headers {
        if let Some(st) = leases.standing(shared.buckets, chain, now.nanos) {
            let bucket = &shared.buckets[st.bucket];
            write_fields(
                &mut taken.headers,
                bucket,
                st.remaining,
                ceil_secs(st.reset_nanos),
            );
        }
    }
    Step::Continue
}
