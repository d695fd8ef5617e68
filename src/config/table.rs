//! The route table as people read it: one row per route with its listener, host, path,
//! methods, integration and stages, for `weir routes` and the admin API's `/routes`.
//!
//! Owns: [`RouteRow`] and how a route is described. Must not: be used on the request path.

use serde::{Deserialize, Serialize};

use super::{Config, HostPattern, Integration};

/// One route, described.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRow {
    pub name: Option<String>,
    /// The listener's name, or `*` for every listener.
    pub listener: String,
    /// The host pattern, or `*`.
    pub host: String,
    pub path: String,
    /// `ANY`, or the methods joined by commas.
    pub methods: String,
    /// `upstream NAME` or `mock STATUS`.
    pub integration: String,
    /// The stages in order, like `api_key → throttle(route 10/s burst 20) → cache(ttl 60s)`;
    /// `-` when there are none.
    pub stages: String,
}

impl Config {
    /// Every route, described, in the order they are matched for each listener.
    pub fn route_table(&self) -> Vec<RouteRow> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteRow {
                name: r.name.clone(),
                listener: r
                    .listener
                    .map_or_else(|| "*".to_string(), |l| self.listeners[l].name.clone()),
                host: match &r.host {
                    HostPattern::Default => "*".to_string(),
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Wildcard(suffix) => format!("*{suffix}"),
                },
                path: r.path.clone(),
                methods: r.methods.as_ref().map_or("ANY".into(), |m| m.join(",")),
                integration: match &r.integration {
                    Integration::Http(h) => format!("upstream {}", self.upstreams[h.upstream].name),
                    Integration::Mock(m) => format!("mock {}", m.status),
                },
                stages: self.stages(i),
            })
            .collect()
    }

    /// The stages a route's requests go through, in order.
    fn stages(&self, route_index: usize) -> String {
        let r = &self.routes[route_index];
        let mut out = Vec::new();
        if r.api_key_required {
            out.push("api_key".to_string());
        }
        let plans: Vec<&str> = self
            .usage_plans
            .iter()
            .filter(|p| p.covers[route_index])
            .map(|p| p.name.as_str())
            .collect();
        if !plans.is_empty() {
            out.push(format!("usage_plan({})", plans.join(",")));
        }
        let throttles = [
            self.throttle.as_ref(),
            r.listener.and_then(|l| self.listeners[l].throttle.as_ref()),
            r.throttle.as_ref(),
        ];
        for t in throttles.into_iter().flatten() {
            out.push(format!(
                "throttle({} {}/s burst {})",
                t.name, t.rate, t.burst
            ));
        }
        if let Some((t, _)) = &r.throttle_per_ip {
            out.push(format!("throttle_per_ip({}/s burst {})", t.rate, t.burst));
        }
        if let Some(c) = &r.cache {
            out.push(format!("cache(ttl {}s)", c.ttl.as_secs()));
        }
        if out.is_empty() {
            "-".into()
        } else {
            out.join(" → ")
        }
    }
}
