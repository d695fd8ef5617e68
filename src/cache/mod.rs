//! The response cache: one shard per worker, one memory budget for all of them.
//!
//! Owns: the cache key ([`Key`]), the stored responses ([`Stored`]) grouped by URI, with
//! the URIs indexed by host and path so that an unsafe method can drop every query form
//! and every variant of a path at once, the per-worker [`Shard`] with
//! its S3-FIFO eviction ([`eviction`]), the table of fetches in flight that concurrent
//! misses wait on ([`Fill`]), and the [`Bus`] that carries purges and invalidations to the
//! other workers. The HTTP rules (what may be stored, for how long) are in [`policy`].
//! Also owns the runtime specs [`RouteCache`], [`QueryKey`], [`Invalidate`] (re-exported by
//! `config`).
//!
//! Must not: lock or allocate on a hit, or do I/O: `crate::proxy` fetches and writes, this
//! module only decides and remembers. A shard is reached only from its own worker.

pub mod eviction;
pub mod policy;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;
use crossbeam_queue::SegQueue;

use crate::http::{trim, HeaderField, RequestHead};
use eviction::S3Fifo;
use policy::Freshness;

/// A route's response cache (`cache = { ... }` on an upstream route).
#[derive(Debug, Clone)]
pub struct RouteCache {
    /// Freshness when the origin gives none (or when `honor_origin` is off).
    pub ttl: Duration,
    /// Largest response (head and body) stored.
    pub max_entry: u64,
    /// Methods answered from the cache, upper-case. `HEAD` is answered from `GET` entries.
    pub methods: Vec<String>,
    pub query: QueryKey,
    /// Lower-case request header names that are part of the key.
    pub key_headers: Vec<String>,
    /// Follow the origin's `Cache-Control` and `Expires`.
    pub honor_origin: bool,
    /// Store responses that carry `Set-Cookie`.
    pub set_cookie: bool,
    /// Who may force a refresh with `Cache-Control: max-age=0` (or `no-cache`).
    pub invalidate: Invalidate,
    /// Serve a stale entry this long past expiry when the upstream fails, even if the
    /// origin did not say `stale-if-error`.
    pub stale_if_error: Duration,
    /// How long a request waits for another one already fetching the same key.
    pub lock_timeout: Duration,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKey {
    /// As sent.
    All,
    /// Not at all: `/a?x=1` and `/a?y=2` share an entry.
    Ignore,
    /// Parameters sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
    Sorted,
}

/// Who may refresh a cached entry with a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidate {
    Never,
    Anyone,
    /// Only requests with a valid API key (API Gateway's "require authorization").
    ApiKey,
}

/// Variants (by key headers and `Vary`) kept per URI; more replace the oldest.
const MAX_VARIANTS: usize = 16;
/// Book-keeping bytes charged per stored response on top of its bytes.
const ENTRY_OVERHEAD: u64 = 256;

/// What the `X-Cache` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Bypass,
    Stale,
    Revalidated,
}

impl Status {
    /// As `X-Cache` says it: `HIT`, `MISS`, ...
    pub fn name(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Bypass => "BYPASS",
            Status::Stale => "STALE",
            Status::Revalidated => "REVALIDATED",
        }
    }

    pub fn header(self) -> &'static [u8] {
        match self {
            Status::Hit => b"x-cache: HIT\r\n",
            Status::Miss => b"x-cache: MISS\r\n",
            Status::Bypass => b"x-cache: BYPASS\r\n",
            Status::Stale => b"x-cache: STALE\r\n",
            Status::Revalidated => b"x-cache: REVALIDATED\r\n",
        }
    }
}

/// The same hash on every worker, so an invalidation names the same URI everywhere.
fn hash(bytes: &[u8]) -> u64 {
    static STATE: OnceLock<ahash::RandomState> = OnceLock::new();
    STATE
        .get_or_init(|| {
            ahash::RandomState::with_seeds(
                0x243f_6a88_85a3_08d3,
                0x1319_8a2e_0370_7344,
                0xa409_3822_299f_31d0,
                0x082e_fa98_ec4e_6c89,
            )
        })
        .hash_one(bytes)
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// A request's cache key, built in a buffer the connection reuses.
///
/// Layout: `host path ?query` (the URI part, hashed to find the URI's group), then
/// `\0 method \0` and each key header's value followed by `\0` (the variant part). The
/// method is `GET` for `HEAD`, so a `HEAD` is answered from a `GET` entry. The URI part
/// starts with `host path` (the path part), which an invalidation names.
#[derive(Default)]
pub struct Key {
    pub bytes: Vec<u8>,
    pub path_len: usize,
    pub uri_len: usize,
    pub uri_hash: u64,
    /// Hash of all of `bytes`: the key concurrent fetches coalesce on.
    pub full_hash: u64,
}

impl Key {
    pub fn build(&mut self, cache: &RouteCache, buf: &[u8], head: &RequestHead, method: &[u8]) {
        let b = &mut self.bytes;
        b.clear();
        push_host_path(b, buf, head);
        self.path_len = b.len();
        push_query(b, buf, head, cache.query);
        self.uri_len = b.len();
        b.push(0);
        b.extend_from_slice(method);
        b.push(0);
        for name in &cache.key_headers {
            push_header_value(b, buf, &head.headers, name.as_bytes());
            b.push(0);
        }
        self.uri_hash = hash(&b[..self.uri_len]);
        self.full_hash = hash(b);
    }

    pub fn uri(&self) -> &[u8] {
        &self.bytes[..self.uri_len]
    }

    /// `host path`, without the query.
    pub fn path(&self) -> &[u8] {
        &self.bytes[..self.path_len]
    }

    pub fn variant(&self) -> &[u8] {
        &self.bytes[self.uri_len..]
    }
}

/// Appends `host path`: the host lower-cased, the path as sent, no query.
fn push_host_path(b: &mut Vec<u8>, buf: &[u8], head: &RequestHead) {
    b.extend(head.host.of(buf).iter().map(u8::to_ascii_lowercase));
    b.extend_from_slice(head.path(buf));
}

/// Appends the query as `how` says.
fn push_query(b: &mut Vec<u8>, buf: &[u8], head: &RequestHead, how: QueryKey) {
    let query = head.query.of(buf); // with its `?`
    match how {
        QueryKey::Ignore => {}
        QueryKey::All => b.extend_from_slice(query),
        QueryKey::Sorted => push_sorted_query(b, query),
    }
}

/// `?b=2&a=1` as `?a=1&b=2`. Sorting up to 64 parameters needs no allocation; a longer
/// query is kept as sent.
fn push_sorted_query(b: &mut Vec<u8>, query: &[u8]) {
    let Some(params) = query.strip_prefix(b"?") else {
        return;
    };
    let mut spans = [(0u32, 0u32); 64];
    let mut n = 0;
    let mut start = 0;
    for (i, &c) in params.iter().chain(std::iter::once(&b'&')).enumerate() {
        if c == b'&' {
            if i > start {
                if n == spans.len() {
                    b.extend_from_slice(query);
                    return;
                }
                spans[n] = (start as u32, i as u32);
                n += 1;
            }
            start = i + 1;
        }
    }
    let spans = &mut spans[..n];
    spans.sort_unstable_by(|x, y| {
        params[x.0 as usize..x.1 as usize].cmp(&params[y.0 as usize..y.1 as usize])
    });
    for (i, &(s, e)) in spans.iter().enumerate() {
        b.push(if i == 0 { b'?' } else { b'&' });
        b.extend_from_slice(&params[s as usize..e as usize]);
    }
}

/// Appends the values of every `name` field, joined by `, ` (RFC 9110 §5.3).
fn push_header_value(b: &mut Vec<u8>, buf: &[u8], headers: &[HeaderField], name: &[u8]) {
    let mut first = true;
    for h in headers {
        if h.name.of(buf).eq_ignore_ascii_case(name) {
            if !first {
                b.extend_from_slice(b", ");
            }
            b.extend_from_slice(trim(h.value.of(buf)));
            first = false;
        }
    }
}

/// The hash an unsafe request to `host path ?query` invalidates: that of its `host path`
/// ([`Key::path`]), whatever its query, so that every query form goes
/// ([`Shard::invalidate_path`]).
pub fn invalidation_hash(buf: &[u8], head: &RequestHead, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    push_host_path(scratch, buf, head);
    hash(scratch)
}

// ---------------------------------------------------------------------------------------
// Stored responses
// ---------------------------------------------------------------------------------------

/// One stored response.
#[derive(Debug)]
pub struct Stored {
    /// The variant part of its key (see [`Key`]).
    pub variant: Box<[u8]>,
    /// For each name in the response's `Vary`: `name\0value\0` as the request had them.
    pub vary: Box<[u8]>,
    /// The route that stored it, by its identity across reloads
    /// ([`crate::gateway::route_key`]).
    pub route: u64,
    /// Status line and header lines, each ending in CRLF, without framing, hop-by-hop
    /// fields or `Age`; the origin's `Date` is kept.
    pub head: Bytes,
    /// The head of a 304 for it: status line and the fields RFC 9110 §15.4.5 lists.
    pub not_modified: Bytes,
    pub status: u16,
    pub body: Bytes,
    pub etag: Option<Bytes>,
    pub last_modified: Option<u64>,
    /// When it was stored or last revalidated ([`crate::clock::Now::ms`]).
    pub stored_ms: u64,
    pub freshness: Freshness,
}

impl Stored {
    /// Age in milliseconds (RFC 9111 §4.2.3: its age on arrival plus its time here).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.freshness.initial_age * 1000 + now_ms.saturating_sub(self.stored_ms)
    }

    pub fn age_secs(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    fn lifetime_ms(&self) -> u64 {
        self.freshness.lifetime * 1000
    }

    /// Fresh, and usable without asking the origin.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        !self.freshness.no_cache && self.age_ms(now_ms) < self.lifetime_ms()
    }

    /// Stale, but within its `stale-while-revalidate` window.
    pub fn may_serve_while_revalidating(&self, now_ms: u64) -> bool {
        let f = &self.freshness;
        !f.no_cache
            && !f.must_revalidate
            && f.stale_while_revalidate > 0
            && self.age_ms(now_ms) < self.lifetime_ms() + f.stale_while_revalidate * 1000
    }

    /// Usable when the upstream fails: the origin's `stale-if-error`, or the route's.
    pub fn may_serve_on_error(&self, now_ms: u64, route_window_secs: u64) -> bool {
        let f = &self.freshness;
        let route_window = if f.must_revalidate {
            0
        } else {
            route_window_secs
        };
        let window = f.stale_if_error.max(route_window);
        window > 0 && self.age_ms(now_ms) < self.lifetime_ms() + window * 1000
    }

    /// A copy that is fresh again as of `now_ms` (after a 304 from the origin), with the
    /// heads the 304's fields updated.
    pub fn revalidated(
        &self,
        now_ms: u64,
        freshness: Freshness,
        head: Bytes,
        not_modified: Bytes,
    ) -> Stored {
        Stored {
            variant: self.variant.clone(),
            vary: self.vary.clone(),
            route: self.route,
            head,
            not_modified,
            status: self.status,
            body: self.body.clone(),
            etag: self.etag.clone(),
            last_modified: self.last_modified,
            stored_ms: now_ms,
            freshness,
        }
    }

    fn weight(&self) -> u64 {
        (self.variant.len()
            + self.vary.len()
            + self.head.len()
            + self.not_modified.len()
            + self.body.len()) as u64
            + ENTRY_OVERHEAD
    }

    /// Whether the request's values for the `Vary` fields match the stored ones.
    pub fn vary_matches(&self, buf: &[u8], headers: &[HeaderField], scratch: &mut Vec<u8>) -> bool {
        let mut rest = &self.vary[..];
        while !rest.is_empty() {
            let Some(name_end) = rest.iter().position(|&b| b == 0) else {
                return false;
            };
            let name = &rest[..name_end];
            rest = &rest[name_end + 1..];
            let value_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let stored = &rest[..value_end];
            rest = rest.get(value_end + 1..).unwrap_or(&[]);
            scratch.clear();
            push_header_value(scratch, buf, headers, name);
            if scratch[..] != *stored {
                return false;
            }
        }
        true
    }
}

/// `name\0value\0` for each field name listed in a `Vary` value, from the request.
pub fn vary_values(vary: &[u8], buf: &[u8], headers: &[HeaderField]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in vary.split(|&b| b == b',') {
        let name = trim(name);
        if name.is_empty() {
            continue;
        }
        out.extend(name.iter().map(u8::to_ascii_lowercase));
        out.push(0);
        push_header_value(&mut out, buf, headers, name);
        out.push(0);
    }
    out
}

/// All stored variants of one URI.
struct Group {
    uri: Box<[u8]>,
    variants: Vec<Rc<Stored>>,
}

impl Group {
    fn weight(&self) -> u64 {
        self.uri.len() as u64 + self.variants.iter().map(|v| v.weight()).sum::<u64>()
    }
}

// ---------------------------------------------------------------------------------------
// The shard
// ---------------------------------------------------------------------------------------

/// One worker's part of the cache.
pub struct Shard {
    entries: S3Fifo<Group>,
    /// For each `host path` hash ([`Key::path`]), the URI hashes of the groups stored for
    /// it (one per query form). Evictions do not update it, so it may name groups that are
    /// gone (removing those is a no-op); it is swept when it names many more groups than
    /// there are.
    paths: AHashMap<u64, Vec<u64>>,
    /// How many URI hashes `paths` holds in all.
    path_links: usize,
    fills: AHashMap<u64, Rc<Fill>>,
    scratch: Vec<u8>,
}

impl Shard {
    pub fn new(capacity: u64) -> Shard {
        Shard {
            entries: S3Fifo::new(capacity),
            paths: AHashMap::default(),
            path_links: 0,
            fills: AHashMap::default(),
            scratch: Vec::new(),
        }
    }

    /// Bytes held, as charged against the budget.
    pub fn bytes(&self) -> u64 {
        self.entries.bytes()
    }

    pub fn capacity(&self) -> u64 {
        self.entries.capacity()
    }

    /// The stored response for `key` whose `Vary` fields match the request, fresh or not.
    pub fn lookup(&mut self, key: &Key, buf: &[u8], headers: &[HeaderField]) -> Option<Rc<Stored>> {
        let group = self.entries.get(key.uri_hash)?;
        if *group.uri != *key.uri() {
            return None;
        }
        let scratch = &mut self.scratch;
        group
            .variants
            .iter()
            .find(|v| *v.variant == *key.variant() && v.vary_matches(buf, headers, scratch))
            .cloned()
    }

    /// Stores `stored` under `key`, replacing the variant with the same key and `Vary`
    /// values.
    pub fn insert(&mut self, key: &Key, stored: Rc<Stored>) {
        let (key_uri, uri_hash) = (key.uri(), key.uri_hash);
        if let Some(group) = self.entries.peek_mut(uri_hash) {
            if *group.uri == *key_uri {
                group
                    .variants
                    .retain(|v| !(v.variant == stored.variant && v.vary == stored.vary));
                if group.variants.len() >= MAX_VARIANTS {
                    group.variants.remove(0);
                }
                group.variants.push(stored);
                let weight = group.weight();
                self.entries.set_weight(uri_hash, weight);
                return;
            }
        }
        let group = Group {
            uri: key_uri.into(),
            variants: vec![stored],
        };
        let weight = group.weight();
        if self.entries.insert(uri_hash, group, weight).is_ok() {
            self.link(hash(key.path()), uri_hash);
        }
    }

    /// Notes that the group `uri_hash` is one of the path `path_hash`'s.
    fn link(&mut self, path_hash: u64, uri_hash: u64) {
        self.paths.entry(path_hash).or_default().push(uri_hash);
        self.path_links += 1;
        if self.path_links > 2 * self.entries.len() + 1024 {
            self.sweep_paths();
        }
    }

    /// Forgets the groups that are gone (and duplicates), leaving at most one link per
    /// group: linear in the links, once per about as many insertions.
    fn sweep_paths(&mut self) {
        let entries = &self.entries;
        let mut links = 0;
        self.paths.retain(|_, uris| {
            uris.retain(|&h| entries.contains(h));
            uris.sort_unstable();
            uris.dedup();
            links += uris.len();
            !uris.is_empty()
        });
        self.path_links = links;
    }

    /// Drops every variant of one URI (one query form).
    pub fn invalidate_uri(&mut self, uri_hash: u64) {
        self.entries.remove(uri_hash);
    }

    /// Drops every variant of every URI with this `host path` hash, whatever its query.
    /// Returns how many URIs were dropped.
    pub fn invalidate_path(&mut self, path_hash: u64) -> usize {
        let Some(uris) = self.paths.remove(&path_hash) else {
            return 0;
        };
        self.path_links -= uris.len();
        uris.iter()
            .filter(|&&h| self.entries.remove(h).is_some())
            .count()
    }

    pub fn apply(&mut self, purge: Purge) -> usize {
        match purge {
            Purge::All => {
                self.paths.clear();
                self.path_links = 0;
                self.entries.retain(|_| false)
            }
            Purge::Route(r) => {
                let mut dropped = 0;
                // A group may hold variants of several routes; drop only the route's.
                self.entries.retain(|g| {
                    let gone = g.variants.iter().filter(|v| v.route == r).count();
                    dropped += gone;
                    gone < g.variants.len()
                });
                dropped
            }
            Purge::Path(h) => self.invalidate_path(h),
            Purge::Prefix(prefix) => {
                let mut dropped = 0;
                // A group's `uri` is the lower-cased host, then the path from its `/`.
                self.entries.retain(|g| {
                    let path = g
                        .uri
                        .iter()
                        .position(|&b| b == b'/')
                        .map_or(&[][..], |i| &g.uri[i..]);
                    let gone = path.starts_with(&prefix);
                    if gone {
                        dropped += g.variants.len();
                    }
                    !gone
                });
                dropped
            }
        }
    }

    /// The fetch in flight for `full_hash`, if another request is fetching it.
    pub fn fill_in_flight(&self, full_hash: u64) -> Option<Rc<Fill>> {
        self.fills.get(&full_hash).cloned()
    }

    /// Registers this request as the one fetching `full_hash`.
    pub fn start_fill(&mut self, full_hash: u64) -> Rc<Fill> {
        let fill = Rc::new(Fill::default());
        self.fills.insert(full_hash, fill.clone());
        fill
    }

    /// Ends a fetch: later misses start their own, and the waiters look again.
    pub fn finish_fill(&mut self, full_hash: u64, fill: &Rc<Fill>) {
        if self
            .fills
            .get(&full_hash)
            .is_some_and(|f| Rc::ptr_eq(f, fill))
        {
            self.fills.remove(&full_hash);
        }
        fill.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Coalescing concurrent misses
// ---------------------------------------------------------------------------------------

/// A fetch in flight that other requests for the same key wait on.
#[derive(Default)]
pub struct Fill {
    done: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Fill {
    fn finish(&self) {
        self.done.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves when the fetch ends (stored or not).
    pub fn wait(self: Rc<Self>) -> impl Future<Output = ()> {
        FillWait(self)
    }
}

struct FillWait(Rc<Fill>);

impl Future for FillWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.0.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------
// Purges and invalidations across workers
// ---------------------------------------------------------------------------------------

/// Something every shard must drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    All,
    /// Every entry a route stored (by [`crate::gateway::route_key`]).
    Route(u64),
    /// Every query form and variant of a `host path` (by its hash, [`invalidation_hash`]).
    Path(u64),
    /// Every entry whose path starts with this (on any host).
    Prefix(std::sync::Arc<[u8]>),
}

/// Carries purges to every worker: a lock-free queue each, and a flag a worker checks
/// (one relaxed load) before each cache lookup.
pub struct Bus {
    queues: Box<[SegQueue<Purge>]>,
    pending: Box<[AtomicBool]>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bus({} workers)", self.queues.len())
    }
}

impl Bus {
    pub fn new(workers: usize) -> Bus {
        Bus {
            queues: (0..workers).map(|_| SegQueue::new()).collect(),
            pending: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Sends `purge` to every worker except `from` (which applies its own at once).
    pub fn send(&self, purge: Purge, from: Option<usize>) {
        for (i, (q, flag)) in self.queues.iter().zip(self.pending.iter()).enumerate() {
            if Some(i) != from {
                q.push(purge.clone());
                flag.store(true, Ordering::Release);
            }
        }
    }

    /// Applies what was sent to `worker`'s shard; returns entries dropped.
    pub fn receive(&self, worker: usize, shard: &mut Shard) -> usize {
        let Some(flag) = self.pending.get(worker) else {
            return 0;
        };
        if !flag.load(Ordering::Relaxed) || !flag.swap(false, Ordering::Acquire) {
            return 0;
        }
        let mut dropped = 0;
        while let Some(p) = self.queues[worker].pop() {
            dropped += shard.apply(p);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> (Vec<u8>, RequestHead) {
        let cfg = crate::config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t").unwrap();
        let mut head = RequestHead::default();
        assert!(crate::http::parse_request(text.as_bytes(), &cfg.http, &mut head).unwrap());
        (text.as_bytes().to_vec(), head)
    }

    fn route_cache(extra: &str) -> RouteCache {
        crate::config::parse(
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n\
                 [[route]]\npath = \"/\"\nupstream = \"u\"\ncache = {{ {extra} }}\n"
            ),
            "t",
        )
        .unwrap()
        .routes[0]
            .cache
            .clone()
            .unwrap()
    }

    fn key(rc: &RouteCache, text: &str) -> Key {
        let (buf, head) = request(text);
        let mut k = Key::default();
        k.build(rc, &buf, &head, b"GET");
        k
    }

    #[test]
    fn keys_follow_the_query_setting() {
        let all = route_cache("query = \"all\"");
        let a = key(&all, "GET /p?b=2&a=1 HTTP/1.1\r\nHost: X.test\r\n\r\n");
        let b = key(&all, "GET /p?a=1&b=2 HTTP/1.1\r\nHost: x.test\r\n\r\n");
        assert_ne!(a.uri_hash, b.uri_hash);
        assert_eq!(a.uri(), b"x.test/p?b=2&a=1");
        let sorted = route_cache("query = \"sorted\"");
        let a = key(&sorted, "GET /p?b=2&a=1 HTTP/1.1\r\nHost: x.test\r\n\r\n");
        let b = key(&sorted, "GET /p?a=1&b=2 HTTP/1.1\r\nHost: x.test\r\n\r\n");
        assert_eq!(a.bytes, b.bytes);
        let ignore = route_cache("query = \"ignore\"");
        let a = key(&ignore, "GET /p?b=2 HTTP/1.1\r\nHost: x.test\r\n\r\n");
        assert_eq!(a.uri(), b"x.test/p");
    }

    #[test]
    fn key_headers_make_variants() {
        let rc = route_cache("key_headers = [\"Accept-Language\"]");
        let a = key(
            &rc,
            "GET /p HTTP/1.1\r\nHost: x\r\nAccept-Language: de\r\n\r\n",
        );
        let b = key(
            &rc,
            "GET /p HTTP/1.1\r\nHost: x\r\naccept-language: fr\r\n\r\n",
        );
        assert_eq!(a.uri_hash, b.uri_hash);
        assert_ne!(a.full_hash, b.full_hash);
    }

    #[test]
    fn invalidation_names_the_path_whatever_the_query_setting() {
        let (buf, head) = request("POST /p?c=3 HTTP/1.1\r\nHost: X\r\ncontent-length: 0\r\n\r\n");
        let h = invalidation_hash(&buf, &head, &mut Vec::new());
        for q in ["all", "sorted", "ignore"] {
            let rc = route_cache(&format!("query = \"{q}\""));
            for target in ["/p?b=2&a=1", "/p", "/p?"] {
                let k = key(&rc, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
                assert_eq!(k.path(), b"x/p");
                assert_eq!(hash(k.path()), h, "{q} {target}");
            }
        }
    }

    fn stored(variant: &[u8], vary: Vec<u8>, body: usize) -> Stored {
        Stored {
            variant: variant.into(),
            vary: vary.into(),
            route: 0,
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
            not_modified: Bytes::new(),
            status: 200,
            body: Bytes::from(vec![b'x'; body]),
            etag: None,
            last_modified: None,
            stored_ms: 0,
            freshness: Freshness {
                stale_while_revalidate: 5,
                ..Freshness::lasting(10)
            },
        }
    }

    #[test]
    fn vary_picks_the_matching_variant() {
        let rc = route_cache("");
        let (de, de_head) = request("GET /p HTTP/1.1\r\nHost: x\r\nAccept-Language: de\r\n\r\n");
        let (fr, fr_head) = request("GET /p HTTP/1.1\r\nHost: x\r\nAccept-Language: fr\r\n\r\n");
        let k = key(&rc, "GET /p HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut shard = Shard::new(1 << 20);
        let vary = vary_values(b"Accept-Language", &de, &de_head.headers);
        shard.insert(&k, Rc::new(stored(k.variant(), vary, 10)));
        assert!(shard.lookup(&k, &de, &de_head.headers).is_some());
        assert!(shard.lookup(&k, &fr, &fr_head.headers).is_none());
        let vary = vary_values(b"Accept-Language", &fr, &fr_head.headers);
        shard.insert(&k, Rc::new(stored(k.variant(), vary, 10)));
        assert!(shard.lookup(&k, &de, &de_head.headers).is_some());
        assert!(shard.lookup(&k, &fr, &fr_head.headers).is_some());
        shard.invalidate_uri(k.uri_hash);
        assert!(shard.lookup(&k, &de, &de_head.headers).is_none());
    }

    /// Stores an entry for `target` (a GET) and returns its key.
    fn put(shard: &mut Shard, rc: &RouteCache, target: &str) -> Key {
        let k = key(rc, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
        shard.insert(&k, Rc::new(stored(k.variant(), Vec::new(), 10)));
        k
    }

    fn found(shard: &mut Shard, k: &Key) -> bool {
        shard.lookup(k, b"", &[]).is_some()
    }

    #[test]
    fn invalidating_a_path_drops_every_query_form_and_nothing_else() {
        let rc = route_cache("");
        let mut shard = Shard::new(1 << 20);
        let gone: Vec<Key> = ["/p?a=1&b=2", "/p?b=2&a=1", "/p?page=3", "/p"]
            .iter()
            .map(|t| put(&mut shard, &rc, t))
            .collect();
        let kept: Vec<Key> = ["/p2?a=1", "/p/q?a=1", "/q"]
            .iter()
            .map(|t| put(&mut shard, &rc, t))
            .collect();
        // A URI stored twice is linked once.
        put(&mut shard, &rc, "/p?page=3");
        assert_eq!(shard.path_links, 7);
        let (buf, head) = request("DELETE /p HTTP/1.1\r\nHost: x\r\n\r\n");
        let h = invalidation_hash(&buf, &head, &mut Vec::new());
        assert_eq!(shard.apply(Purge::Path(h)), 4);
        for k in &gone {
            assert!(
                !found(&mut shard, k),
                "{:?}",
                String::from_utf8_lossy(k.uri())
            );
        }
        for k in &kept {
            assert!(
                found(&mut shard, k),
                "{:?}",
                String::from_utf8_lossy(k.uri())
            );
        }
        assert_eq!(shard.apply(Purge::Path(h)), 0);
        // Stored again after the invalidation: found, and invalidated again.
        let again = put(&mut shard, &rc, "/p?a=1&b=2");
        assert!(found(&mut shard, &again));
        assert_eq!(shard.invalidate_path(h), 1);
        assert!(!found(&mut shard, &again));
    }

    #[test]
    fn the_path_index_forgets_evicted_entries() {
        let rc = route_cache("");
        // Room for a few dozen entries; many more go through.
        let mut shard = Shard::new(16 << 10);
        for i in 0..20_000 {
            put(&mut shard, &rc, &format!("/items/{}?v={}", i % 5000, i % 7));
            assert!(shard.path_links <= 2 * shard.entries.len() + 1025);
        }
        assert!(shard.paths.len() <= shard.path_links);
        // What is still stored is still found by its path.
        let k = put(&mut shard, &rc, "/items/42?v=1");
        let (buf, head) = request("PUT /items/42?x HTTP/1.1\r\nHost: x\r\n\r\n");
        shard.invalidate_path(invalidation_hash(&buf, &head, &mut Vec::new()));
        assert!(!found(&mut shard, &k));
    }

    #[test]
    fn ages_and_windows() {
        let s = stored(b"", Vec::new(), 0);
        assert!(s.is_fresh(9_999));
        assert!(!s.is_fresh(10_000));
        assert!(s.may_serve_while_revalidating(14_999));
        assert!(!s.may_serve_while_revalidating(15_000));
        assert!(!s.may_serve_on_error(10_500, 0));
        assert!(s.may_serve_on_error(10_500, 1));
        assert_eq!(s.age_secs(12_345), 12);
    }

    #[test]
    fn the_bus_reaches_other_workers_only() {
        let bus = Bus::new(2);
        let rc = route_cache("");
        let k = key(&rc, "GET /p HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut shards = [Shard::new(1 << 20), Shard::new(1 << 20)];
        for s in &mut shards {
            s.insert(&k, Rc::new(stored(k.variant(), Vec::new(), 1)));
        }
        bus.send(Purge::Path(hash(k.path())), Some(0));
        assert_eq!(bus.receive(0, &mut shards[0]), 0);
        assert_eq!(bus.receive(1, &mut shards[1]), 1);
        bus.send(Purge::All, None);
        assert_eq!(bus.receive(0, &mut shards[0]), 1);
    }
}
