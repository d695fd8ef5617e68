//! The cache stage of the request path: answer from this worker's shard, or let the
//! request go upstream with what the relay needs to store, revalidate or stand in for the
//! response (see `crate::cache` for the store and `crate::cache::policy` for the rules).
//!
//! In order: [`Connection::cache_stage`] before the integration (HIT, 304, STALE while
//! revalidating, or waiting for a fetch of the same key already in flight);
//! [`Connection::cache_on_response`] when the upstream's head arrives (REVALIDATED on a
//! 304, STALE on a 5xx, else prepare to store); [`Connection::capture`] for each body piece;
//! [`Connection::cache_store`] at the end of the body. Must not: hold the shard borrowed
//! across an await.

use std::rc::Rc;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::timeout;
use monoio::BufResult;

use super::{trailer, Connection};
use crate::cache::policy::{self, Freshness, RequestDirectives, ResponseDirectives, ResponseFacts};
use crate::cache::{self, clock_ms, wall_secs, Fill, Purge, Status, Stored};
use crate::config::{Integration, Invalidate, RouteCache};
use crate::http::write::push_u64;
use crate::http::{trim, BodyFraming, HeaderField, ResponseHead};
use crate::worker::Worker;

/// Bodies up to this size are copied into the head's write; larger ones are written
/// straight from the stored bytes.
const INLINE_BODY: usize = 16 * 1024;

/// The cache's view of the request on the connection.
#[derive(Default)]
pub(super) struct CacheRequest {
    /// What `X-Cache` says; `None` on routes without a cache.
    pub status: Option<Status>,
    pub route: usize,
    pub key: cache::Key,
    /// A stored response that is not fresh: to revalidate, or to serve if the upstream fails.
    pub stale: Option<Rc<Stored>>,
    /// `validators` went upstream: a 304 refreshes `stale`.
    pub revalidating: bool,
    /// The response may be stored if the rules allow.
    pub store: bool,
    /// This request is the one fetching its key; others wait for it.
    pub fill: Option<FillTicket>,
    pub capture: Option<Capture>,
    /// `If-None-Match` / `If-Modified-Since` lines for a revalidation.
    pub validators: Vec<u8>,
    /// The request carried `Authorization`.
    pub authorization: bool,
    /// When the request went upstream ([`clock_ms`]), for the response delay in its age.
    pub request_ms: u64,
    /// An unsafe method: the `host path` hash a 2xx/3xx response invalidates (every query
    /// form of it).
    pub invalidates: Option<u64>,
}

impl CacheRequest {
    fn reset(&mut self) {
        self.status = None;
        self.stale = None;
        self.revalidating = false;
        self.store = false;
        self.fill = None;
        self.capture = None;
        self.validators.clear();
        self.authorization = false;
        self.invalidates = None;
    }

    /// Ends the request's part in the cache: waiters for its key look again.
    pub fn finish(&mut self) {
        self.reset();
    }
}

/// Ownership of a key's fetch; dropping it (whatever happened) releases the waiters.
pub(super) struct FillTicket {
    worker: Rc<Worker>,
    hash: u64,
    fill: Rc<Fill>,
}

impl Drop for FillTicket {
    fn drop(&mut self) {
        self.worker
            .cache
            .borrow_mut()
            .finish_fill(self.hash, &self.fill);
    }
}

/// A response being stored while it is relayed.
pub(super) struct Capture {
    head: Vec<u8>,
    not_modified: Vec<u8>,
    body: Vec<u8>,
    chunked: bool,
    limit: usize,
    status: u16,
    vary: Vec<u8>,
    etag: Option<Vec<u8>>,
    last_modified: Option<u64>,
    freshness: Freshness,
}

/// What the upstream's response head means for the cache.
pub(super) enum OnResponse {
    /// Relay it (and store it if a capture was set up).
    Relay,
    /// Answer from this stored response instead; the upstream connection is reusable if
    /// the bool says so.
    Serve(Rc<Stored>, Status, bool),
}

/// The request headers the cache reads.
#[derive(Default)]
struct RequestFacts<'a> {
    directives: RequestDirectives,
    authorization: bool,
    if_none_match: Option<&'a [u8]>,
    if_modified_since: Option<&'a [u8]>,
}

fn request_facts<'a>(buf: &'a [u8], headers: &[HeaderField]) -> RequestFacts<'a> {
    let mut f = RequestFacts::default();
    let mut cache_control = false;
    let mut pragma_no_cache = false;
    for h in headers {
        let name = h.name.of(buf);
        let value = h.value.of(buf);
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            13 if is(b"authorization") => f.authorization = true,
            13 if is(b"cache-control") => {
                cache_control = true;
                f.directives.add_cache_control(value);
            }
            6 if is(b"pragma") => pragma_no_cache |= crate::http::list_contains(value, b"no-cache"),
            13 if is(b"if-none-match") => f.if_none_match = Some(value),
            17 if is(b"if-modified-since") => f.if_modified_since = Some(value),
            _ => {}
        }
    }
    // Pragma counts only without Cache-Control (RFC 9111 §5.4).
    if !cache_control && pragma_no_cache {
        f.directives.refresh = true;
    }
    f
}

/// Whether a stored response satisfies the request's conditional headers (so a 304 is
/// the answer). `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2).
fn not_modified(stored: &Stored, f: &RequestFacts) -> bool {
    if let Some(inm) = f.if_none_match {
        return stored
            .etag
            .as_ref()
            .is_some_and(|etag| policy::none_match(inm, etag));
    }
    match (
        f.if_modified_since.and_then(policy::parse_date),
        stored.last_modified,
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// What a response head says about caching.
fn response_facts<'a>(
    ubuf: &'a [u8],
    head: &ResponseHead,
) -> (ResponseFacts<'a>, Option<&'a [u8]>, Option<u64>) {
    let mut f = ResponseFacts {
        status: head.status,
        ..Default::default()
    };
    let mut etag = None;
    let mut last_modified = None;
    let mut directives = ResponseDirectives::default();
    for h in &head.headers {
        let name = h.name.of(ubuf);
        let value = trim(h.value.of(ubuf));
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            13 if is(b"cache-control") => directives.add(value),
            7 if is(b"expires") => f.expires = Some(policy::parse_date(value)),
            4 if is(b"date") => f.date = policy::parse_date(value),
            3 if is(b"age") => f.age = policy::parse_seconds(value).unwrap_or(0),
            10 if is(b"set-cookie") => f.set_cookie = true,
            4 if is(b"vary") => f.vary = Some(value),
            4 if is(b"etag") => etag = Some(value),
            13 if is(b"last-modified") => last_modified = policy::parse_date(value),
            _ => {}
        }
    }
    f.directives = directives;
    f.has_validator = etag.is_some() || last_modified.is_some();
    (f, etag, last_modified)
}

/// Header lines a stored response keeps: not framing, hop-by-hop, `Age` or `X-Cache`.
fn stored_line(name: &[u8], kind: crate::http::HeaderKind) -> bool {
    use crate::http::HeaderKind as K;
    matches!(kind, K::Other | K::Conditional)
        && !name.eq_ignore_ascii_case(b"age")
        && !name.eq_ignore_ascii_case(b"x-cache")
}

/// Fields a 304 carries (RFC 9110 §15.4.5); `Last-Modified` only when there is no ETag.
fn not_modified_line(name: &[u8], has_etag: bool) -> bool {
    [
        &b"cache-control"[..],
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"vary",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
        || (!has_etag && name.eq_ignore_ascii_case(b"last-modified"))
}

/// A stored head (status line, then field lines) with every field named in `updates`
/// replaced by the updates' lines.
fn merge_fields<'a>(
    stored: &[u8],
    ubuf: &[u8],
    updates: impl Iterator<Item = &'a HeaderField> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + 128);
    let mut lines = stored.split_inclusive(|&b| b == b'\n');
    if let Some(status_line) = lines.next() {
        out.extend_from_slice(status_line);
    }
    for line in lines {
        let name = &line[..line.iter().position(|&b| b == b':').unwrap_or(0)];
        if !updates
            .clone()
            .any(|h| h.name.of(ubuf).eq_ignore_ascii_case(name))
        {
            out.extend_from_slice(line);
        }
    }
    for h in updates {
        out.extend_from_slice(h.line.of(ubuf));
    }
    out
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// The cache stage for a route with a cache. Returns `Some(keep_alive)` when the
    /// cache answered; `None` sends the request on to the upstream, with `self.cache` set
    /// up for the relay.
    pub(super) async fn cache_stage(&mut self, route_id: usize, rc: &RouteCache) -> Option<bool> {
        let worker = self.worker.clone();
        let gen = self.gen.clone();
        let gateway = &*gen.gateway;
        self.cache.reset();
        self.cache.route = route_id;
        let buf = &self.buf[..];
        let head = &self.head;
        let method = head.method.of(buf);
        let is_head = self.facts.is_head;
        // Only the methods listed: a `HEAD` is answered from a `GET` entry when `HEAD` is
        // listed (as by default), and is a BYPASS when it is not.
        let allowed = rc.methods.iter().any(|m| m.as_bytes() == method);
        if !allowed || head.has_body() {
            self.cache.status = Some(Status::Bypass);
            return None;
        }
        let req = request_facts(buf, &head.headers);
        let refresh = req.directives.refresh
            && match rc.invalidate {
                Invalidate::Never => false,
                Invalidate::Anyone => true,
                Invalidate::ApiKey => {
                    self.stages.api_key.is_some() || {
                        let presented = gateway.keys.presented(buf, &head.headers);
                        gateway.keys.authorize(presented, route_id).is_some()
                    }
                }
            };
        self.cache.authorization = req.authorization;
        self.cache
            .key
            .build(rc, buf, head, if is_head { b"GET" } else { method });

        let now = clock_ms();
        let found = {
            let mut shard = worker.cache.borrow_mut();
            gateway.cache_bus.receive(worker.id, &mut shard);
            shard.lookup(&self.cache.key, buf, &head.headers)
        };
        if let Some(stored) = found {
            let nm = not_modified(&stored, &req);
            if !refresh {
                if stored.is_fresh(now) {
                    return Some(self.serve_stored(&stored, Status::Hit, nm, true).await);
                }
                if stored.may_serve_while_revalidating(now) {
                    if !is_head {
                        self.refresh_in_background(route_id, &stored);
                    }
                    return Some(self.serve_stored(&stored, Status::Stale, nm, true).await);
                }
            }
            self.cache.stale = Some(stored);
        }

        // A miss: wait for a fetch of the same key already in flight on this worker.
        if !is_head && !refresh {
            let in_flight = worker
                .cache
                .borrow()
                .fill_in_flight(self.cache.key.full_hash);
            if let Some(fill) = in_flight {
                let finished = timeout(rc.lock_timeout, fill.wait()).await.is_ok();
                if finished {
                    let buf = &self.buf[..];
                    let found =
                        worker
                            .cache
                            .borrow_mut()
                            .lookup(&self.cache.key, buf, &self.head.headers);
                    if let Some(stored) = found.filter(|s| s.is_fresh(clock_ms())) {
                        let req = request_facts(buf, &self.head.headers);
                        let not_modified = not_modified(&stored, &req);
                        return Some(
                            self.serve_stored(&stored, Status::Hit, not_modified, true)
                                .await,
                        );
                    }
                }
                // Timed out, or that response was not stored: fetch without holding the key.
            } else {
                self.cache.fill = Some(self.take_fill(self.cache.key.full_hash));
            }
        }
        // A HEAD is forwarded as it came and nothing is stored from it.
        self.begin_fetch(!is_head, !refresh);
        None
    }

    /// The request goes upstream as a miss: it may be stored (`store`), and the stale
    /// entry it found, if any, is revalidated with its validators when `revalidate`.
    fn begin_fetch(&mut self, store: bool, revalidate: bool) {
        self.cache.status = Some(Status::Miss);
        self.cache.store = store;
        // Taken now, after any wait for another fetch: the response delay is the upstream's.
        self.cache.request_ms = clock_ms();
        self.cache.revalidating = store
            && revalidate
            && self
                .cache
                .stale
                .as_ref()
                .is_some_and(|s| s.etag.is_some() || s.last_modified.is_some());
        if self.cache.revalidating {
            self.write_validators();
        }
    }

    fn take_fill(&self, hash: u64) -> FillTicket {
        let fill = self.worker.cache.borrow_mut().start_fill(hash);
        FillTicket {
            worker: self.worker.clone(),
            hash,
            fill,
        }
    }

    /// The `If-None-Match` / `If-Modified-Since` lines that revalidate `self.cache.stale`.
    fn write_validators(&mut self) {
        let Some(stale) = &self.cache.stale else {
            return;
        };
        let v = &mut self.cache.validators;
        v.clear();
        if let Some(etag) = &stale.etag {
            v.extend_from_slice(b"if-none-match: ");
            v.extend_from_slice(etag);
            v.extend_from_slice(b"\r\n");
        } else if let Some(lm) = stale.last_modified {
            v.extend_from_slice(b"if-modified-since: ");
            v.extend_from_slice(
                httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(lm))
                    .as_bytes(),
            );
            v.extend_from_slice(b"\r\n");
        }
    }

    /// `stale-while-revalidate`: one background request refreshes the entry while this
    /// and later requests get the stale one. It runs as a connection of its own whose
    /// client is a sink, so it takes the same upstream path (pools, retries, health).
    fn refresh_in_background(&mut self, route_id: usize, stale: &Rc<Stored>) {
        let hash = self.cache.key.full_hash;
        if self.worker.cache.borrow().fill_in_flight(hash).is_some() {
            return;
        }
        let ticket = self.take_fill(hash);
        let request = self.buf[..self.head.len].to_vec();
        let stale = stale.clone();
        let (worker, gen, proto) = (self.worker.clone(), self.gen.clone(), self.proto);
        let (listener_addr, listener) = (self.listener_addr, self.listener);
        let peer = std::net::SocketAddr::new(self.peer_ip, 0);
        monoio::spawn(async move {
            // On the generation of the request that found the entry stale: `route_id`
            // is an index into it.
            let mut conn = Connection::new(worker, gen.clone(), listener_addr, Sink, peer, proto);
            conn.listener = listener;
            conn.buf = BytesMut::from(&request[..]);
            let limits = &gen.gateway.config.http;
            if crate::http::parse_request(&conn.buf, limits, &mut conn.head) == Ok(true) {
                conn.refresh(route_id, stale, ticket).await;
            }
            conn.release();
        });
    }

    /// Runs a background refresh: the upstream part of a miss, answered to nobody.
    async fn refresh(&mut self, route_id: usize, stale: Rc<Stored>, ticket: FillTicket) {
        let gen = self.gen.clone();
        let route = &gen.gateway.config.routes[route_id];
        let (Some(rc), Integration::Http(integration)) = (&route.cache, &route.integration) else {
            return;
        };
        self.set_facts();
        self.new_request_id(false);
        self.cache.reset();
        self.cache.route = route_id;
        let buf = &self.buf[..];
        self.cache
            .key
            .build(rc, buf, &self.head, self.head.method.of(buf));
        self.cache.authorization = request_facts(buf, &self.head.headers).authorization;
        self.cache.stale = Some(stale);
        self.cache.fill = Some(ticket);
        self.begin_fetch(true, true);
        self.proxy(route, integration).await;
        self.cache.finish();
    }

    /// Writes a stored response (or a 304 for it). `consume`: the request head is still in
    /// `buf` and goes now. Returns whether the connection stays open.
    pub(super) async fn serve_stored(
        &mut self,
        stored: &Stored,
        status: Status,
        not_modified: bool,
        consume: bool,
    ) -> bool {
        if consume {
            self.buf.advance(self.head.len);
        }
        let close = !self.keeps_alive();
        let now = clock_ms();
        self.ensure_write_buffer();
        let out = &mut self.out;
        out.clear();
        if not_modified {
            out.extend_from_slice(&stored.not_modified);
        } else {
            out.extend_from_slice(&stored.head);
            if stored.status != 204 {
                out.extend_from_slice(b"content-length: ");
                push_u64(out, stored.body.len() as u64);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"age: ");
        push_u64(out, stored.age_secs(now));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(status.header());
        let t = trailer(
            &self.request_id[..self.request_id_len],
            b"",
            close,
            self.facts.http10,
            &self.stages.headers,
        );
        t.write(out);
        let send_body = !not_modified && !self.facts.is_head && !stored.body.is_empty();
        if send_body && stored.body.len() <= INLINE_BODY {
            out.extend_from_slice(&stored.body);
        } else if send_body {
            if self.flush_to_client().await.is_err() {
                return false;
            }
            let send_timeout = self.gen.gateway.config.http.body_timeout;
            return match timeout(send_timeout, self.stream.write_all(stored.body.clone())).await {
                Ok((Ok(_), _)) => !close,
                _ => false,
            };
        }
        self.flush_to_client().await.is_ok() && !close
    }

    /// When the upstream fails: a stale entry the rules allow instead of the error.
    /// Returns `None` when there is none.
    pub(super) async fn serve_stale_on_error(&mut self, consume: bool) -> Option<bool> {
        let stale = self.cache.stale.clone()?;
        let rc = self.gen.gateway.config.routes[self.cache.route]
            .cache
            .as_ref()?;
        if !stale.may_serve_on_error(clock_ms(), rc.stale_if_error.as_secs()) {
            return None;
        }
        self.cache.capture = None;
        let req = request_facts(&self.buf, &self.head.headers);
        let not_modified = not_modified(&stale, &req);
        Some(
            self.serve_stored(&stale, Status::Stale, not_modified, consume)
                .await,
        )
    }

    /// Looks at the upstream's final response head (still at the start of `ubuf`).
    pub(super) fn cache_on_response(&mut self, ubuf: &[u8]) -> OnResponse {
        let status = self.response.status;
        if let Some(path_hash) = self.cache.invalidates.take() {
            if (200..400).contains(&status) {
                let worker = &self.worker;
                worker.cache.borrow_mut().invalidate_path(path_hash);
                self.gen
                    .gateway
                    .cache_bus
                    .send(Purge::Path(path_hash), Some(worker.id));
            }
        }
        if self.cache.status.is_none() || !self.cache.store {
            return OnResponse::Relay;
        }
        let gen = self.gen.clone();
        let Some(rc) = gen.gateway.config.routes[self.cache.route].cache.as_ref() else {
            return OnResponse::Relay;
        };
        let reusable = self.response.keep_alive
            && ubuf.len() == self.response.len
            && matches!(
                self.response.framing,
                BodyFraming::None | BodyFraming::Length(0)
            );

        if status == 304 && self.cache.revalidating {
            if let Some(stale) = self.cache.stale.take() {
                let refreshed = self.revalidate(&stale, ubuf, rc);
                self.cache.status = Some(Status::Revalidated);
                return OnResponse::Serve(refreshed, Status::Revalidated, reusable);
            }
        }
        if matches!(status, 500 | 502 | 503 | 504) {
            if let Some(stale) = &self.cache.stale {
                if stale.may_serve_on_error(clock_ms(), rc.stale_if_error.as_secs()) {
                    // The error's body is never read: the connection is not reused.
                    return OnResponse::Serve(stale.clone(), Status::Stale, false);
                }
            }
        }

        let (facts, etag, last_modified) = response_facts(ubuf, &self.response);
        let Ok(freshness) = policy::storable(
            rc,
            &facts,
            self.cache.authorization,
            self.response_delay(),
            wall_secs(),
        ) else {
            return OnResponse::Relay;
        };
        let limit = rc.max_entry as usize;
        if let BodyFraming::Length(n) = self.response.framing {
            if n as usize + self.response.len > limit {
                return OnResponse::Relay;
            }
        }
        let (head, not_modified) = self.stored_heads(ubuf, etag.is_some());
        let vary = facts
            .vary
            .map(|v| cache::vary_values(v, &self.buf, &self.head.headers))
            .unwrap_or_default();
        self.cache.capture = Some(Capture {
            head,
            not_modified,
            body: Vec::new(),
            chunked: self.response.framing == BodyFraming::Chunked,
            limit: limit.saturating_sub(self.response.len),
            status,
            vary,
            etag: etag.map(<[u8]>::to_vec),
            last_modified,
            freshness,
        });
        OnResponse::Relay
    }

    /// Whole seconds the upstream took (RFC 9111 §4.2.3 `response_delay`).
    fn response_delay(&self) -> u64 {
        clock_ms().saturating_sub(self.cache.request_ms) / 1000
    }

    /// The stored head and the 304 head of the response at the start of `ubuf`.
    fn stored_heads(&self, ubuf: &[u8], has_etag: bool) -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::with_capacity(self.response.len + 64);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(self.response.status_rest.of(ubuf));
        head.extend_from_slice(b"\r\n");
        let mut nm = b"HTTP/1.1 304 Not Modified\r\n".to_vec();
        let mut has_date = false;
        let headers = &self.response.headers;
        for h in headers {
            let name = h.name.of(ubuf);
            let hop = self.response.connection_names_headers
                && crate::rewrite::named_by_connection(ubuf, headers, name);
            if !hop && stored_line(name, h.kind) {
                head.extend_from_slice(h.line.of(ubuf));
                if not_modified_line(name, has_etag) {
                    nm.extend_from_slice(h.line.of(ubuf));
                }
                has_date |= name.eq_ignore_ascii_case(b"date");
            }
        }
        if !has_date {
            let date = self.worker.date();
            for out in [&mut head, &mut nm] {
                out.extend_from_slice(b"date: ");
                out.extend_from_slice(&date);
                out.extend_from_slice(b"\r\n");
            }
        }
        (head, nm)
    }

    /// A 304 answered the revalidation: the stored response is fresh again.
    fn revalidate(&mut self, stale: &Rc<Stored>, ubuf: &[u8], rc: &RouteCache) -> Rc<Stored> {
        let (mut facts, _, _) = response_facts(ubuf, &self.response);
        facts.status = stale.status;
        let says_freshness =
            facts.directives != ResponseDirectives::default() || facts.expires.is_some();
        let now_wall = wall_secs();
        let freshness = match policy::storable(
            rc,
            &facts,
            self.cache.authorization,
            self.response_delay(),
            now_wall,
        ) {
            Ok(f) if says_freshness => f,
            Ok(f) => Freshness {
                initial_age: f.initial_age,
                ..stale.freshness
            },
            // The origin now forbids storing it: this answer is its last use.
            Err(_) => {
                self.worker
                    .cache
                    .borrow_mut()
                    .invalidate_uri(self.cache.key.uri_hash);
                return stale.clone();
            }
        };
        // RFC 9111 §3.2: the 304's fields replace the stored ones of the same name.
        let headers = &self.response.headers;
        let updates = || {
            headers.iter().filter(|h| {
                let name = h.name.of(ubuf);
                stored_line(name, h.kind)
                    && !(self.response.connection_names_headers
                        && crate::rewrite::named_by_connection(ubuf, headers, name))
            })
        };
        let has_etag = stale.etag.is_some();
        let head = merge_fields(&stale.head, ubuf, updates());
        let not_modified = merge_fields(
            &stale.not_modified,
            ubuf,
            updates().filter(|h| not_modified_line(h.name.of(ubuf), has_etag)),
        );
        let refreshed =
            Rc::new(stale.revalidated(clock_ms(), freshness, head.into(), not_modified.into()));
        self.worker
            .cache
            .borrow_mut()
            .insert(&self.cache.key, refreshed.clone());
        refreshed
    }

    /// Keeps a copy of a relayed body piece, dropping the capture past `max_entry`.
    pub(super) fn capture(&mut self, piece: &[u8]) {
        if let Some(c) = &mut self.cache.capture {
            if c.body.len() + piece.len() > c.limit {
                self.cache.capture = None;
            } else {
                c.body.extend_from_slice(piece);
            }
        }
    }

    /// The whole response went through: store it.
    pub(super) fn cache_store(&mut self) {
        let Some(c) = self.cache.capture.take() else {
            return;
        };
        let body = if c.chunked {
            let mut data = Vec::with_capacity(c.body.len());
            if crate::http::chunked::dechunk(&c.body, &mut data).is_none() {
                return;
            }
            data
        } else {
            c.body
        };
        let stored = Stored {
            variant: self.cache.key.variant().into(),
            vary: c.vary.into(),
            route: self.gen.gateway.route_keys[self.cache.route],
            head: c.head.into(),
            not_modified: c.not_modified.into(),
            status: c.status,
            body: body.into(),
            etag: c.etag.map(Into::into),
            last_modified: c.last_modified,
            stored_ms: clock_ms(),
            freshness: c.freshness,
        };
        self.worker
            .cache
            .borrow_mut()
            .insert(&self.cache.key, Rc::new(stored));
    }
}

/// The client of a background refresh: reads nothing, swallows what is written.
pub(super) struct Sink;

impl AsyncReadRent for Sink {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }
}

impl AsyncWriteRent for Sink {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let n = buf.bytes_init();
        (Ok(n), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let n = (0..buf.read_iovec_len())
            .map(|i| {
                // SAFETY: the iovec array of `buf` has `read_iovec_len` initialised entries.
                unsafe { (*buf.read_iovec_ptr().add(i)).iov_len }
            })
            .sum();
        (Ok(n), buf)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
