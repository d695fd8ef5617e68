//! Routing: from (Host, path, method) to a route, per listener.
//!
//! Owns: virtual hosts (exact names in an ahash map, `*.suffix` wildcards longest first,
//! then the default host) and, per host, a matchit radix tree of path patterns. Precedence
//! among paths is matchit's: static segments over `{param}` over `{*catch_all}`. A
//! catch-all also matches its bare prefix (`/{*rest}` matches `/`) unless a route owns it.
//!
//! Also owns the runtime spec [`HostPattern`] and the router's input [`RouteSpec`].
//!
//! Must not: allocate on lookup, or fall back from a matched host to the default host (a
//! host that is configured owns all its paths, as an nginx `server` block does).

use ahash::AHashMap;

/// The virtual host a route belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// No `host` key: the listener's default virtual host.
    Default,
    /// Lower-cased exact name.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

/// What the router needs of one route; config's `Route::spec` builds it.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    /// Line of the `[[route]]` table, for messages.
    pub line: usize,
    /// Listener index, or `None` for every listener.
    pub listener: Option<usize>,
    pub host: &'a HostPattern,
    pub path: &'a str,
    /// Methods as written; `None` means any method.
    pub methods: Option<&'a [String]>,
}

/// A route's position in `Config::routes`.
pub type RouteId = u32;

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    Found(RouteId),
    NotFound,
    /// The path exists for other methods; `allow` is the value of the `Allow` header.
    MethodNotAllowed {
        allow: &'a [u8],
    },
}

/// A problem found while building a routing table, for `weir check`.
#[derive(Debug, Clone)]
pub struct RouteError {
    pub route: usize,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Router {
    exact: AHashMap<Box<[u8]>, VHost>,
    /// (suffix such as `.example.com`, host), longest suffix first.
    wildcard: Vec<(Box<[u8]>, VHost)>,
    default: Option<VHost>,
}

#[derive(Debug, Default)]
struct VHost {
    paths: matchit::Router<u32>,
    entries: Vec<PathEntry>,
}

/// The routes that share one path pattern, by method.
#[derive(Debug, Default)]
struct PathEntry {
    pattern: String,
    any: Option<RouteId>,
    methods: Vec<(Box<[u8]>, RouteId)>,
    allow: Vec<u8>,
}

impl PathEntry {
    fn find(&self, method: &[u8]) -> Option<RouteId> {
        self.methods
            .iter()
            .find(|(m, _)| &**m == method)
            .map(|&(_, id)| id)
    }
}

impl Router {
    /// Builds the table for listener `listener` from the routes that apply to it.
    pub fn build(routes: &[RouteSpec<'_>], listener: usize) -> Result<Router, Vec<RouteError>> {
        let mut router = Router::default();
        let mut errors = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            if route.listener.is_some_and(|l| l != listener) {
                continue;
            }
            let vhost = match route.host {
                HostPattern::Default => router.default.get_or_insert_with(VHost::default),
                HostPattern::Exact(h) => router.exact.entry(h.as_bytes().into()).or_default(),
                HostPattern::Wildcard(suffix) => {
                    match router
                        .wildcard
                        .iter()
                        .position(|(s, _)| **s == *suffix.as_bytes())
                    {
                        Some(p) => &mut router.wildcard[p].1,
                        None => {
                            router
                                .wildcard
                                .push((suffix.as_bytes().into(), VHost::default()));
                            &mut router.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                }
            };
            if let Err(message) = vhost.add(i, route, routes) {
                errors.push(RouteError { route: i, message });
            }
        }
        router
            .wildcard
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        for vhost in router
            .exact
            .values_mut()
            .chain(router.wildcard.iter_mut().map(|(_, v)| v))
            .chain(router.default.iter_mut())
        {
            vhost.add_catch_all_prefixes();
            vhost.finish_allow();
        }
        if errors.is_empty() {
            Ok(router)
        } else {
            Err(errors)
        }
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn lookup(&self, host: &[u8], path: &[u8], method: &[u8]) -> RouteMatch<'_> {
        let Some(vhost) = self.vhost(host) else {
            return RouteMatch::NotFound;
        };
        let Ok(path) = std::str::from_utf8(path) else {
            return RouteMatch::NotFound;
        };
        let Ok(m) = vhost.paths.at(path) else {
            return RouteMatch::NotFound;
        };
        let entry = &vhost.entries[*m.value as usize];
        if let Some(id) = entry.find(method) {
            return RouteMatch::Found(id);
        }
        if method == b"HEAD" {
            if let Some(id) = entry.find(b"GET") {
                return RouteMatch::Found(id);
            }
        }
        match entry.any {
            Some(id) => RouteMatch::Found(id),
            None => RouteMatch::MethodNotAllowed {
                allow: &entry.allow,
            },
        }
    }

    fn vhost(&self, host: &[u8]) -> Option<&VHost> {
        let mut buf = [0u8; 256];
        let name = normalise_host(host, &mut buf);
        if let Some(name) = name {
            if let Some(v) = self.exact.get(name) {
                return Some(v);
            }
            for (suffix, v) in &self.wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix) {
                    return Some(v);
                }
            }
        }
        self.default.as_ref()
    }
}

/// Lower-cases `host` without its port and trailing dot into `buf`. `None` if it does not fit.
fn normalise_host<'a>(host: &[u8], buf: &'a mut [u8; 256]) -> Option<&'a [u8]> {
    let name = if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']')?;
        &host[..=end]
    } else {
        let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
        &host[..end]
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    let out = buf.get_mut(..name.len())?;
    for (o, &b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

impl VHost {
    fn add(
        &mut self,
        id: usize,
        route: &RouteSpec<'_>,
        routes: &[RouteSpec<'_>],
    ) -> Result<(), String> {
        let entry = match self.paths.at(route.path) {
            Ok(m) if self.entries[*m.value as usize].pattern == route.path => *m.value as usize,
            _ => {
                let next = self.entries.len() as u32;
                self.paths.insert(route.path, next).map_err(|e| {
                    let other = match &e {
                        matchit::InsertError::Conflict { with } => self
                            .entries
                            .iter()
                            .find(|p| &p.pattern == with)
                            .and_then(|p| p.any.or(p.methods.first().map(|m| m.1)))
                            .map(|r| format!(" (the route at line {})", routes[r as usize].line))
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    format!("path `{}` cannot be routed: {e}{other}", route.path)
                })?;
                self.entries.push(PathEntry {
                    pattern: route.path.to_string(),
                    ..PathEntry::default()
                });
                next as usize
            }
        };
        let entry = &mut self.entries[entry];
        let dup = |other: RouteId| {
            format!(
                "this route repeats the route at line {} for the same host, path and method",
                routes[other as usize].line
            )
        };
        match route.methods {
            None => {
                if let Some(other) = entry.any {
                    return Err(dup(other));
                }
                entry.any = Some(id as RouteId);
            }
            Some(methods) => {
                for m in methods {
                    if let Some(other) = entry.find(m.as_bytes()) {
                        return Err(dup(other));
                    }
                    entry.methods.push((m.as_bytes().into(), id as RouteId));
                }
            }
        }
        Ok(())
    }

    /// A catch-all pattern (`/static/{*rest}`) also answers its bare prefix (`/static/`),
    /// as an nginx `location /static/` does, unless another route owns that path.
    fn add_catch_all_prefixes(&mut self) {
        for (i, entry) in self.entries.iter().enumerate() {
            if let Some(pos) = entry.pattern.find("{*") {
                let prefix = &entry.pattern[..pos];
                if self.paths.at(prefix).is_err() {
                    let _ = self.paths.insert(prefix, i as u32);
                }
            }
        }
    }

    fn finish_allow(&mut self) {
        for entry in &mut self.entries {
            let mut names: Vec<&[u8]> = entry.methods.iter().map(|(m, _)| &**m).collect();
            if names.contains(&&b"GET"[..]) && !names.contains(&&b"HEAD"[..]) {
                names.push(b"HEAD");
            }
            entry.allow = names.join(&b", "[..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn router(routes: &str) -> Router {
        let src = format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{routes}");
        let c = config::parse(&src, "t").unwrap();
        let specs: Vec<_> = c.routes.iter().map(config::Route::spec).collect();
        Router::build(&specs, 0).unwrap()
    }

    const ROUTES: &str = r#"
[[route]]
path = "/users/{id}"
methods = ["GET", "PUT"]
mock = { body = "0" }
[[route]]
path = "/users/me"
mock = { body = "1" }
[[route]]
path = "/static/{*rest}"
mock = { body = "2" }
[[route]]
host = "api.example.com"
path = "/users/{id}"
mock = { body = "3" }
[[route]]
host = "*.example.com"
path = "/users/{id}"
mock = { body = "4" }
[[route]]
host = "*.eu.example.com"
path = "/users/{id}"
mock = { body = "5" }
"#;

    #[test]
    fn hosts_paths_and_methods() {
        let r = router(ROUTES);
        assert_eq!(r.lookup(b"x", b"/users/7", b"GET"), RouteMatch::Found(0));
        assert_eq!(r.lookup(b"x", b"/users/7", b"HEAD"), RouteMatch::Found(0));
        assert_eq!(
            r.lookup(b"x", b"/users/me", b"DELETE"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            r.lookup(b"x", b"/static/a/b.css", b"GET"),
            RouteMatch::Found(2)
        );
        assert_eq!(
            r.lookup(b"x", b"/users/7", b"POST"),
            RouteMatch::MethodNotAllowed {
                allow: b"GET, PUT, HEAD"
            }
        );
        assert_eq!(r.lookup(b"x", b"/nope", b"GET"), RouteMatch::NotFound);
        assert_eq!(
            r.lookup(b"API.Example.com:8080", b"/users/7", b"POST"),
            RouteMatch::Found(3)
        );
        assert_eq!(
            r.lookup(b"a.example.com", b"/users/7", b"GET"),
            RouteMatch::Found(4)
        );
        assert_eq!(
            r.lookup(b"b.eu.example.com.", b"/users/7", b"GET"),
            RouteMatch::Found(5)
        );
        // A configured host owns its paths: no fall-back to the default host.
        assert_eq!(
            r.lookup(b"api.example.com", b"/static/a", b"GET"),
            RouteMatch::NotFound
        );
        assert_eq!(
            r.lookup(b"example.com", b"/users/me", b"GET"),
            RouteMatch::Found(1)
        );
    }

    #[test]
    fn duplicate_routes_are_errors() {
        let src = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/a\"\nmethods = [\"GET\"]\nmock = {}\n[[route]]\npath = \"/a\"\nmethods = [\"GET\"]\nmock = {}\n";
        let e = config::parse(src, "t").unwrap_err().to_string();
        assert!(e.contains("t:7:1") && e.contains("line 3"), "{e}");
        let src = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/a/{x}\"\nmock = {}\n[[route]]\npath = \"/a/{y}\"\nmock = {}\n";
        let e = config::parse(src, "t").unwrap_err().to_string();
        assert!(e.contains("t:6:1") && e.contains("line 3"), "{e}");
    }
}
