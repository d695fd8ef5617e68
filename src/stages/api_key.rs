//! The API key stage: the request must present an enabled key in a usage plan that covers
//! the route (403 otherwise); the key's plan then brings its quota and buckets to the
//! throttle stage. Must not: keep or log the key's value (only its index, whose `id` may be
//! logged).

use super::{Reply, Request, Taken};
use crate::auth::{KeyPlan, KeyTable};

/// Authorizes the request's key for its route: the key's plan on this route, if any.
pub fn run<'g>(
    keys: &'g KeyTable,
    req: &Request,
    taken: &mut Taken,
) -> Result<Option<&'g KeyPlan>, Reply<'g>> {
    let presented = keys.presented(req.buf, &req.head.headers);
    match keys.authorize(presented, req.route) {
        Some(authorized) => {
            taken.api_key = Some(authorized.key);
            Ok(authorized.plan)
        }
        None => Err(Reply::Forbidden),
    }
}
