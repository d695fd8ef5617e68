//! The cache stages of a route's pipeline: answer from this worker's shard, or let the
//! request go upstream with what the relay needs to store, revalidate or stand in for the
//! response (see `crate::cache` for the store and `crate::cache::policy` for the rules).
//!
//! On the request: [`lookup`] (HIT, 304, STALE while revalidating, or [`Step::Wait`] for a
//! fetch of the same key already in flight, then [`resume`]). On the response, called by
//! the HTTP integration through the pipeline: [`on_upstream_head`] (REVALIDATED on a 304,
//! STALE on a 5xx, else prepare to store), [`capture`] for each body piece, [`store`] at
//! the end, [`stand_in`] when the upstream fails. `Stage::Invalidate`: a 2xx/3xx answer to an
//! unsafe method drops every query form of the path on every worker.
//!
//! Must not: hold the shard borrowed across an await (nothing here awaits), write to a
//! socket, or read the clock (the request's reading is passed in).

use std::cell::RefCell;
use std::rc::Rc;

use super::{Ctx, Reply, Request, Step, Taken, Wait};
use crate::cache::policy::{self, Freshness, RequestDirectives, ResponseDirectives, ResponseFacts};
use crate::cache::{
    self, Fill, Invalidate as WhoMayRefresh, Purge, RouteCache, Shard, Status, Stored,
};
use crate::clock::Now;
use crate::http::{trim, BodyFraming, HeaderField, RequestHead, ResponseHead};

/// The cache's view of one request.
#[derive(Default)]
pub struct CacheState {
    /// What `X-Cache` says; `None` on routes without a cache.
    pub status: Option<Status>,
    pub key: cache::Key,
    /// A stored response that is not fresh: to revalidate, or to serve if the upstream fails.
    pub stale: Option<Rc<Stored>>,
    /// `validators` went upstream: a 304 refreshes `stale`.
    pub revalidating: bool,
    /// The response may be stored if the rules allow.
    pub store: bool,
    /// This request is the one fetching its key; others wait for it.
    pub fill: Option<FillTicket>,
    capture: Option<Capture>,
    /// `If-None-Match` / `If-Modified-Since` lines for a revalidation.
    pub validators: Vec<u8>,
    /// The request carried `Authorization`.
    authorization: bool,
    /// When the request went upstream, for the response delay in its age.
    request_at: Now,
    /// An unsafe method: the `host path` hash a 2xx/3xx response invalidates (every query
    /// form of it).
    invalidates: Option<u64>,
}

impl CacheState {
    /// Ends the request's part in the cache (waiters for its key look again).
    pub fn reset(&mut self) {
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

    /// Whether a body piece should be captured.
    pub fn capturing(&self) -> bool {
        self.capture.is_some()
    }
}

/// Ownership of a key's fetch; dropping it (whatever happened) releases the waiters.
pub struct FillTicket {
    shard: Rc<RefCell<Shard>>,
    hash: u64,
    fill: Rc<Fill>,
}

impl Drop for FillTicket {
    fn drop(&mut self) {
        self.shard.borrow_mut().finish_fill(self.hash, &self.fill);
    }
}

fn take_fill(shard: &Rc<RefCell<Shard>>, hash: u64) -> FillTicket {
    let fill = shard.borrow_mut().start_fill(hash);
    FillTicket {
        shard: shard.clone(),
        hash,
        fill,
    }
}

/// A response being stored while it is relayed.
struct Capture {
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
pub enum OnResponse {
    /// Relay it (and store it if a capture was set up).
    Relay,
    /// Answer from this stored response instead; the upstream connection is reusable if
    /// the bool says so.
    Serve(Rc<Stored>, Status, bool),
}

/// The cache stage on a request: a stored answer, a wait for a fetch in flight, or on to
/// the upstream with `taken.cache` set up for the relay.
pub fn lookup<'g>(ctx: &Ctx, rc: &RouteCache, req: &Request, taken: &mut Taken) -> Step<'g> {
    let state = &mut taken.cache;
    state.reset();
    let (buf, head) = (req.buf, req.head);
    let method = head.method.of(buf);
    // Only the methods listed: a `HEAD` is answered from a `GET` entry when `HEAD` is
    // listed (as by default), and is a BYPASS when it is not.
    let allowed = rc.methods.iter().any(|m| m.as_bytes() == method);
    if !allowed || head.has_body() {
        state.status = Some(Status::Bypass);
        return Step::Continue;
    }
    let facts = request_facts(buf, &head.headers);
    let refresh = facts.directives.refresh
        && match rc.invalidate {
            WhoMayRefresh::Never => false,
            WhoMayRefresh::Anyone => true,
            WhoMayRefresh::ApiKey => {
                taken.api_key.is_some() || {
                    let keys = ctx.keys;
                    let presented = keys.presented(buf, &head.headers);
                    keys.authorize(presented, req.route).is_some()
                }
            }
        };
    state.authorization = facts.authorization;
    state
        .key
        .build(rc, buf, head, if req.is_head { b"GET" } else { method });

    let found = {
        let mut shard = ctx.shard.borrow_mut();
        ctx.bus.receive(ctx.worker, &mut shard);
        shard.lookup(&state.key, buf, &head.headers)
    };
    let now = req.now.ms();
    if let Some(stored) = found {
        let not_modified = not_modified(&stored, &facts);
        if !refresh {
            if stored.is_fresh(now) {
                return serve(stored, Status::Hit, not_modified, None);
            }
            if stored.may_serve_while_revalidating(now) {
                let hash = state.key.full_hash;
                let refresh = (!req.is_head && ctx.shard.borrow().fill_in_flight(hash).is_none())
                    .then(|| take_fill(ctx.shard, hash));
                return serve(stored, Status::Stale, not_modified, refresh);
            }
        }
        state.stale = Some(stored);
    }

    // A miss: wait for a fetch of the same key already in flight on this worker.
    if !req.is_head && !refresh {
        let in_flight = ctx.shard.borrow().fill_in_flight(state.key.full_hash);
        match in_flight {
            Some(fill) => {
                return Step::Wait(Wait::Fill {
                    fill,
                    timeout: rc.lock_timeout,
                })
            }
            None => state.fill = Some(take_fill(ctx.shard, state.key.full_hash)),
        }
    }
    // A HEAD is forwarded as it came and nothing is stored from it.
    begin_fetch(state, !req.is_head, !refresh, req.now);
    Step::Continue
}

/// The cache stage after waiting for another request's fetch of the same key: its stored
/// response if there is one (`finished`), else on to the upstream without holding the key.
pub fn resume<'g>(ctx: &Ctx, req: &Request, taken: &mut Taken, finished: bool) -> Step<'g> {
    let state = &mut taken.cache;
    if finished {
        let found = ctx
            .shard
            .borrow_mut()
            .lookup(&state.key, req.buf, &req.head.headers);
        // The wait took time: freshness is checked against a new reading.
        if let Some(stored) = found.filter(|s| s.is_fresh(crate::clock::now().ms())) {
            let facts = request_facts(req.buf, &req.head.headers);
            let not_modified = not_modified(&stored, &facts);
            return serve(stored, Status::Hit, not_modified, None);
        }
    }
    begin_fetch(state, true, true, crate::clock::now());
    Step::Continue
}

fn serve<'g>(
    stored: Rc<Stored>,
    status: Status,
    not_modified: bool,
    refresh: Option<FillTicket>,
) -> Step<'g> {
    Step::Reply(Reply::Stored {
        stored,
        status,
        not_modified,
        refresh,
    })
}

/// The request goes upstream as a miss: it may be stored (`store`), and the stale entry it
/// found, if any, is revalidated with its validators when `revalidate`.
fn begin_fetch(state: &mut CacheState, store: bool, revalidate: bool, now: Now) {
    state.status = Some(Status::Miss);
    state.store = store;
    state.request_at = now;
    state.revalidating = store
        && revalidate
        && state
            .stale
            .as_ref()
            .is_some_and(|s| s.etag.is_some() || s.last_modified.is_some());
    if state.revalidating {
        write_validators(state);
    }
}

/// Sets up a background refresh (`stale-while-revalidate`) of `stale`: the request in
/// `buf` goes upstream as a miss that revalidates and stores, answered to nobody.
pub fn prepare_refresh(
    rc: &RouteCache,
    buf: &[u8],
    head: &RequestHead,
    state: &mut CacheState,
    stale: Rc<Stored>,
    ticket: FillTicket,
    now: Now,
) {
    state.reset();
    state.key.build(rc, buf, head, head.method.of(buf));
    state.authorization = request_facts(buf, &head.headers).authorization;
    state.stale = Some(stale);
    state.fill = Some(ticket);
    begin_fetch(state, true, true, now);
}

/// The `If-None-Match` / `If-Modified-Since` lines that revalidate `state.stale`.
fn write_validators(state: &mut CacheState) {
    let Some(stale) = &state.stale else {
        return;
    };
    let v = &mut state.validators;
    v.clear();
    if let Some(etag) = &stale.etag {
        v.extend_from_slice(b"if-none-match: ");
        v.extend_from_slice(etag);
        v.extend_from_slice(b"\r\n");
    } else if let Some(lm) = stale.last_modified {
        v.extend_from_slice(b"if-modified-since: ");
        v.extend_from_slice(&crate::http::write::imf_fixdate(lm));
        v.extend_from_slice(b"\r\n");
    }
}

/// The invalidation stage on a request: an unsafe method remembers the `host path` hash
/// its success will invalidate (RFC 9111 §4.4).
pub fn invalidate_on_request(req: &Request, taken: &mut Taken) {
    let safe = matches!(
        req.head.method.of(req.buf),
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE"
    );
    if !safe {
        // The key buffer is free: an unsafe request is not looked up in the cache.
        let scratch = &mut taken.cache.key.bytes;
        let path_hash = cache::invalidation_hash(req.buf, req.head, scratch);
        taken.cache.invalidates = Some(path_hash);
    }
}

/// A stale entry the rules allow instead of the upstream's failure, and whether the
/// request's conditionals make it a 304.
pub fn stand_in(
    state: &mut CacheState,
    rc: &RouteCache,
    buf: &[u8],
    head: &RequestHead,
    now: Now,
) -> Option<(Rc<Stored>, bool)> {
    let stale = state.stale.clone()?;
    if !stale.may_serve_on_error(now.ms(), rc.stale_if_error.as_secs()) {
        return None;
    }
    state.capture = None;
    state.status = Some(Status::Stale);
    let facts = request_facts(buf, &head.headers);
    let not_modified = not_modified(&stale, &facts);
    Some((stale, not_modified))
}

/// The upstream's final response head arrived (at the start of `ubuf`, parsed into
/// `response`); `request` is the client's request. `now` is when the head arrived; `date`
/// the `Date` value for a stored head that has none.
#[allow(clippy::too_many_arguments)]
pub fn on_upstream_head(
    ctx: &Ctx,
    rc: Option<&RouteCache>,
    state: &mut CacheState,
    request: (&[u8], &RequestHead),
    ubuf: &[u8],
    response: &ResponseHead,
    now: Now,
    date: &[u8],
) -> OnResponse {
    let status = response.status;
    if let Some(path_hash) = state.invalidates.take() {
        if (200..400).contains(&status) {
            ctx.shard.borrow_mut().invalidate_path(path_hash);
            ctx.bus.send(Purge::Path(path_hash), Some(ctx.worker));
        }
    }
    let Some(rc) = rc else {
        return OnResponse::Relay;
    };
    if state.status.is_none() || !state.store {
        return OnResponse::Relay;
    }
    let reusable = response.keep_alive
        && ubuf.len() == response.len
        && matches!(response.framing, BodyFraming::None | BodyFraming::Length(0));
    let delay = now.since(state.request_at) / 1_000_000_000;

    if status == 304 && state.revalidating {
        if let Some(stale) = state.stale.take() {
            let refreshed = revalidate(ctx, state, &stale, ubuf, response, rc, delay, now);
            state.status = Some(Status::Revalidated);
            return OnResponse::Serve(refreshed, Status::Revalidated, reusable);
        }
    }
    if matches!(status, 500 | 502 | 503 | 504) {
        if let Some(stale) = &state.stale {
            if stale.may_serve_on_error(now.ms(), rc.stale_if_error.as_secs()) {
                state.status = Some(Status::Stale);
                // The error's body is never read: the connection is not reused.
                return OnResponse::Serve(stale.clone(), Status::Stale, false);
            }
        }
    }

    let (facts, etag, last_modified) = response_facts(ubuf, response);
    let Ok(freshness) = policy::storable(rc, &facts, state.authorization, delay, now.wall_secs())
    else {
        return OnResponse::Relay;
    };
    let limit = rc.max_entry as usize;
    if let BodyFraming::Length(n) = response.framing {
        if n as usize + response.len > limit {
            return OnResponse::Relay;
        }
    }
    let (head, not_modified) = stored_heads(ubuf, response, etag.is_some(), date);
    let vary = facts
        .vary
        .map(|v| cache::vary_values(v, request.0, &request.1.headers))
        .unwrap_or_default();
    state.capture = Some(Capture {
        head,
        not_modified,
        body: Vec::new(),
        chunked: response.framing == BodyFraming::Chunked,
        limit: limit.saturating_sub(response.len),
        status,
        vary,
        etag: etag.map(<[u8]>::to_vec),
        last_modified,
        freshness,
    });
    OnResponse::Relay
}

/// The stored head and the 304 head of the response at the start of `ubuf`.
fn stored_heads(
    ubuf: &[u8],
    response: &ResponseHead,
    has_etag: bool,
    date: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(response.len + 64);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(response.status_rest.of(ubuf));
    head.extend_from_slice(b"\r\n");
    let mut nm = b"HTTP/1.1 304 Not Modified\r\n".to_vec();
    let mut has_date = false;
    let headers = &response.headers;
    for h in headers {
        let name = h.name.of(ubuf);
        let hop = response.connection_names_headers
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
        for out in [&mut head, &mut nm] {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(date);
            out.extend_from_slice(b"\r\n");
        }
    }
    (head, nm)
}

/// A 304 answered the revalidation: the stored response is fresh again.
#[allow(clippy::too_many_arguments)]
fn revalidate(
    ctx: &Ctx,
    state: &CacheState,
    stale: &Rc<Stored>,
    ubuf: &[u8],
    response: &ResponseHead,
    rc: &RouteCache,
    delay: u64,
    now: Now,
) -> Rc<Stored> {
    let (mut facts, _, _) = response_facts(ubuf, response);
    facts.status = stale.status;
    let says_freshness =
        facts.directives != ResponseDirectives::default() || facts.expires.is_some();
    let freshness = match policy::storable(rc, &facts, state.authorization, delay, now.wall_secs())
    {
        Ok(f) if says_freshness => f,
        Ok(f) => Freshness {
            initial_age: f.initial_age,
            ..stale.freshness
        },
        // The origin now forbids storing it: this answer is its last use.
        Err(_) => {
            ctx.shard.borrow_mut().invalidate_uri(state.key.uri_hash);
            return stale.clone();
        }
    };
    // RFC 9111 §3.2: the 304's fields replace the stored ones of the same name.
    let headers = &response.headers;
    let updates = || {
        headers.iter().filter(|h| {
            let name = h.name.of(ubuf);
            stored_line(name, h.kind)
                && !(response.connection_names_headers
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
        Rc::new(stale.revalidated(now.ms(), freshness, head.into(), not_modified.into()));
    ctx.shard.borrow_mut().insert(&state.key, refreshed.clone());
    refreshed
}

/// Keeps a copy of a relayed body piece, dropping the capture past `max_entry`.
pub fn capture(state: &mut CacheState, piece: &[u8]) {
    if let Some(c) = &mut state.capture {
        if c.body.len() + piece.len() > c.limit {
            state.capture = None;
        } else {
            c.body.extend_from_slice(piece);
        }
    }
}

/// The whole response went through: store it for the route with identity `route_key`.
pub fn store(ctx: &Ctx, state: &mut CacheState, route_key: u64, now: Now) {
    let Some(c) = state.capture.take() else {
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
        variant: state.key.variant().into(),
        vary: c.vary.into(),
        route: route_key,
        head: c.head.into(),
        not_modified: c.not_modified.into(),
        status: c.status,
        body: body.into(),
        etag: c.etag.map(Into::into),
        last_modified: c.last_modified,
        stored_ms: now.ms(),
        freshness: c.freshness,
    };
    ctx.shard.borrow_mut().insert(&state.key, Rc::new(stored));
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
