//! Authorization: API keys and the usage plan a key brings to a route (JWT and custom
//! authorizers will join here).
//!
//! Owns: the table from a key's SHA-256 to the key, and from a key and a route to the
//! plan's buckets, and the runtime specs [`ApiKey`] and [`UsagePlan`] (re-exported by
//! `config`). Must not: keep or log key values (only digests are stored; the key's
//! `id` is what logs and reports may show), or do any I/O on the request path.

use std::sync::Arc;

use ahash::AHashMap;
use sha2::{Digest, Sha256};

use crate::http::{trim, HeaderField};
use crate::limit::{SharedBucket, Throttle};
use crate::quota::{Quota, QuotaCounter};

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// An API key. Only its SHA-256 is kept; `id` is what logs and usage reports show.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub enabled: bool,
}

/// A usage plan: which keys, on which routes, at what rate.
#[derive(Debug, Clone)]
pub struct UsagePlan {
    pub name: String,
    /// Indices into `Config::api_keys`.
    pub keys: Vec<usize>,
    /// `covers[route]`: the plan applies to that route.
    pub covers: Vec<bool>,
    /// Each key's own bucket in this plan (API Gateway's per-client throttle).
    pub throttle: Option<Throttle>,
    /// Per-route buckets for each key, by route index (the method-level override).
    pub route_throttles: Vec<(usize, Throttle)>,
    /// Requests each key may make per period.
    pub quota: Option<Quota>,
}

/// What the key table is built from; config's `Config::key_spec` gives it.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec<'a> {
    /// Lower-case name of the header that carries API keys.
    pub header: &'a str,
    pub api_keys: &'a [ApiKey],
    pub usage_plans: &'a [UsagePlan],
    /// How many routes there are.
    pub routes: usize,
}

/// What a key may do on the routes of one usage plan.
#[derive(Debug)]
pub struct KeyPlan {
    pub plan: usize,
    /// The key's own bucket in the plan.
    pub bucket: Option<usize>,
    /// The key's per-route buckets, by route index.
    pub route_buckets: Vec<(usize, usize)>,
    /// The key's quota counter in the plan.
    pub quota: Option<usize>,
}

#[derive(Debug)]
struct KeyEntry {
    enabled: bool,
    plans: Vec<KeyPlan>,
}

/// Every API key, by digest, with its plans.
#[derive(Debug, Default)]
pub struct KeyTable {
    /// Lower-case header name carrying the key.
    pub header: Vec<u8>,
    by_digest: AHashMap<[u8; 32], usize>,
    keys: Vec<KeyEntry>,
    /// `covers[plan][route]`.
    covers: Vec<Vec<bool>>,
    /// Routes some plan covers: on those a key must belong to a covering plan.
    planned_routes: Vec<bool>,
}

/// A key accepted for a route: which key, and its plan there if any.
#[derive(Debug)]
pub struct Authorized<'a> {
    pub key: usize,
    pub plan: Option<&'a KeyPlan>,
}

impl KeyTable {
    /// Builds the table, adding each key's plan buckets to `buckets` and its quota
    /// counters to `quotas`, taken from `state` so that a reload keeps them. `route_keys`
    /// names each route for state that outlives a reload.
    pub fn build(
        config: KeySpec<'_>,
        route_keys: &[u64],
        buckets: &mut Vec<Arc<SharedBucket>>,
        quotas: &mut Vec<Arc<QuotaCounter>>,
        state: &mut crate::registry::Next,
    ) -> KeyTable {
        let mut keys: Vec<KeyEntry> = config
            .api_keys
            .iter()
            .map(|k| KeyEntry {
                enabled: k.enabled,
                plans: Vec::new(),
            })
            .collect();
        for (p, plan) in config.usage_plans.iter().enumerate() {
            for &k in &plan.keys {
                let id = &config.api_keys[k].id;
                let mut add = |scope: String, t: &Throttle| {
                    buckets.push(state.bucket(&scope, &t.name, t.rate, t.burst));
                    buckets.len() - 1
                };
                let scope = format!("plan {} key {id}", plan.name);
                let bucket = plan.throttle.as_ref().map(|t| add(scope.clone(), t));
                let route_buckets = plan
                    .route_throttles
                    .iter()
                    .map(|(route, t)| {
                        let scope = format!("{scope} route {:x}", route_keys[*route]);
                        (*route, add(scope, t))
                    })
                    .collect();
                let quota = plan.quota.map(|q| {
                    quotas.push(state.quota(&plan.name, id, q.limit, q.period));
                    quotas.len() - 1
                });
                keys[k].plans.push(KeyPlan {
                    plan: p,
                    bucket,
                    route_buckets,
                    quota,
                });
            }
        }
        let covers: Vec<Vec<bool>> = config
            .usage_plans
            .iter()
            .map(|p| p.covers.clone())
            .collect();
        let planned_routes = (0..config.routes)
            .map(|r| covers.iter().any(|c| c[r]))
            .collect();
        KeyTable {
            header: config.header.as_bytes().to_vec(),
            by_digest: config
                .api_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.sha256, i))
                .collect(),
            keys,
            covers,
            planned_routes,
        }
    }

    /// The key a request presents: its key header's value, if it has one.
    pub fn presented<'b>(&self, buf: &'b [u8], headers: &[HeaderField]) -> Option<&'b [u8]> {
        headers
            .iter()
            .find(|h| h.name.of(buf).eq_ignore_ascii_case(&self.header))
            .map(|h| trim(h.value.of(buf)))
    }

    /// Checks the key a request presents for `route`. `None`: 403 (no key, an unknown or
    /// disabled key, or a key in no plan that covers the route).
    pub fn authorize(&self, presented: Option<&[u8]>, route: usize) -> Option<Authorized<'_>> {
        let presented = presented.filter(|v| !v.is_empty())?;
        let &key = self.by_digest.get(&sha256(presented))?;
        let entry = &self.keys[key];
        if !entry.enabled {
            return None;
        }
        if !self.planned_routes[route] {
            return Some(Authorized { key, plan: None });
        }
        let plan = entry.plans.iter().find(|kp| self.covers[kp.plan][route])?;
        Some(Authorized {
            key,
            plan: Some(plan),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector() {
        let d = sha256(b"abc");
        assert_eq!(
            d[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
    }

    #[test]
    fn keys_plans_and_routes() {
        let key_a = "a".repeat(24);
        let key_b = "b".repeat(24);
        let src = format!(
            r#"
[[listener]]
address = "127.0.0.1:0"

[[api_key]]
id = "alice"
value = "{key_a}"

[[api_key]]
id = "bob"
sha256 = "{}"

[[api_key]]
id = "off"
value = "{}"
enabled = false

[[usage_plan]]
name = "gold"
keys = ["alice"]
routes = ["search"]
throttle = {{ rate = 10 }}
route_throttle = {{ "search" = {{ rate = 1 }} }}

[[route]]
name = "search"
path = "/search"
mock = {{}}
api_key_required = true

[[route]]
path = "/open"
mock = {{}}
api_key_required = true
"#,
            hex(&sha256(key_b.as_bytes())),
            "c".repeat(24)
        );
        let config = crate::config::parse(&src, "t").unwrap();
        let mut buckets = Vec::new();
        let registry = crate::registry::Registry::new().unwrap();
        let keys = vec![0; config.routes.len()];
        let table = KeyTable::build(
            config.key_spec(),
            &keys,
            &mut buckets,
            &mut Vec::new(),
            &mut registry.next(),
        );
        assert_eq!(buckets.len(), 2);
        let alice = table.authorize(Some(key_a.as_bytes()), 0).unwrap();
        assert_eq!(alice.key, 0);
        let plan = alice.plan.unwrap();
        assert_eq!(
            (plan.bucket, plan.route_buckets.clone()),
            (Some(0), vec![(0, 1)])
        );
        // bob is valid but in no plan covering /search; any valid key may use /open.
        assert!(table.authorize(Some(key_b.as_bytes()), 0).is_none());
        assert!(table
            .authorize(Some(key_b.as_bytes()), 1)
            .is_some_and(|a| a.plan.is_none()));
        assert!(
            table
                .authorize(Some("c".repeat(24).as_bytes()), 1)
                .is_none(),
            "disabled"
        );
        assert!(table.authorize(Some(b"nope"), 1).is_none());
        assert!(table.authorize(None, 1).is_none());
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}
