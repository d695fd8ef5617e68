//! The request path. One task per client connection drives both directions:
//!
//! 1. **read** a request head into the connection's reused buffer ([`Connection::read_head`]);
//! 2. **route** it by host, path and method ([`crate::router`]);
//! 3. run the route's **stages** in order: authorize, throttle ([`crate::stages`]), then
//!    the response cache ([`cached`]), which may answer on its own;
//! 4. **integrate**: a mock response, or the upstream ([`Connection::proxy`]);
//! 5. **respond**, then loop for the next request on the connection (keep-alive, pipelining).
//!
//! Must not: allocate per request (buffers come from the worker and are reused), log per
//! request, or let one request's failure reach another connection: every error becomes a
//! status for this client or a close of this connection.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::{timeout, timeout_at, Instant};

use crate::config::{HttpIntegration, Integration, Route, Upstream};
use crate::http::write::{error_response_saying, push_u64, Trailer, CONTINUE};
use crate::http::{
    parse_request, parse_response, BodyFraming, ChunkedDecoder, Reject, RequestHead, ResponseHead,
};
use crate::limit::{ceil_secs, write_fields, SharedBucket};
use crate::net::read_more;
use crate::rewrite::{self, ForwardRequest, ForwardResponse};
use crate::router::RouteMatch;
use crate::stages::{Outcome, Verdict};
use crate::upstream::{self, ConnectError, Tried, UpstreamStream};
use crate::worker::{Generation, Worker};
use cached::{CacheRequest, OnResponse};

mod cached;

/// Read size for request and response bodies.
const BODY_CHUNK: usize = 32 * 1024;

/// Serves one client connection until it closes. `stream` is plain TCP or TLS over TCP
/// (`proto` says which, for `X-Forwarded-Proto`).
pub async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    worker: Rc<Worker>,
    gen: Rc<Generation>,
    listener: SocketAddr,
    stream: S,
    peer: SocketAddr,
    proto: &'static [u8],
    client_cert: Vec<u8>,
) {
    // The listener's index in a generation is found per request (`Connection::run`).
    let mut conn = Connection::new(worker, gen, listener, stream, peer, proto);
    conn.client_cert = client_cert;
    conn.run().await;
    conn.release();
}

/// What the request's head said, kept after the head's bytes are consumed.
#[derive(Debug, Clone, Copy, Default)]
struct RequestFacts {
    is_head: bool,
    http10: bool,
    keep_alive: bool,
    idempotent: bool,
    expect_continue: bool,
}

/// Where the request body stands.
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyState {
    fn is_done(&self) -> bool {
        match self {
            BodyState::Length(n) => *n == 0,
            BodyState::Chunked(d) => d.is_done(),
        }
    }

    /// How many bytes at the start of `input` belong to the body; errors on bad framing or
    /// a body over `max`.
    fn take(&mut self, input: &[u8], max: u64) -> Result<usize, BodyError> {
        match self {
            BodyState::Length(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            BodyState::Chunked(d) => {
                let take = d.scan(input).map_err(|_| BodyError::Malformed)?;
                if d.data_len() > max {
                    return Err(BodyError::TooLarge);
                }
                Ok(take)
            }
        }
    }
}

enum BodyError {
    ClientGone,
    Timeout,
    TooLarge,
    Malformed,
    Upstream,
}

/// How relaying a response failed.
enum RelayError {
    /// Not one byte of a response arrived: the connection was dead or reset.
    NothingReceived,
    /// No complete response head within the response timeout.
    Timeout,
    /// The upstream sent something that is not a valid response head.
    BadHead,
    /// The head went to the client, then the upstream or the client failed: close.
    Broken,
}

enum HeadRead {
    Ready,
    Closed,
    Rejected(Reject),
    TimedOut,
}

struct Connection<S> {
    worker: Rc<Worker>,
    /// The config generation the current (or last) request runs on.
    gen: Rc<Generation>,
    /// The listener's bound address: how it is found again in a newer generation.
    listener_addr: SocketAddr,
    /// The listener's index in `gen`.
    listener: usize,
    /// `http` or `https`.
    proto: &'static [u8],
    stream: S,
    peer_ip: std::net::IpAddr,
    client_ip: [u8; 46],
    client_ip_len: usize,
    /// Client bytes: the current head, then body or pipelined requests.
    buf: BytesMut,
    /// What Weir writes next (to the client or the upstream).
    out: Vec<u8>,
    /// Upstream response bytes.
    ubuf: BytesMut,
    head: RequestHead,
    response: ResponseHead,
    facts: RequestFacts,
    served: u32,
    request_id: [u8; 200],
    request_id_len: usize,
    sent_continue: bool,
    /// What the route's stages left for the response (the key, RateLimit fields).
    stages: Outcome,
    /// `x-client-cert-*` lines from the TLS handshake, forwarded with every request.
    client_cert: Vec<u8>,
    /// The response cache's part in the current request.
    cache: CacheRequest,
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    fn new(
        worker: Rc<Worker>,
        gen: Rc<Generation>,
        listener_addr: SocketAddr,
        stream: S,
        peer: SocketAddr,
        proto: &'static [u8],
    ) -> Self {
        let mut client_ip = [0u8; 46];
        let client_ip_len = {
            use std::io::Write;
            let mut cursor = io::Cursor::new(&mut client_ip[..]);
            let _ = write!(cursor, "{}", peer.ip());
            cursor.position() as usize
        };
        let buf = worker.head_buffer();
        Connection {
            worker,
            gen,
            listener_addr,
            listener: 0,
            proto,
            stream,
            peer_ip: peer.ip(),
            client_ip,
            client_ip_len,
            buf,
            out: Vec::new(),
            ubuf: BytesMut::new(),
            head: RequestHead::default(),
            response: ResponseHead::default(),
            facts: RequestFacts::default(),
            served: 0,
            request_id: [0; 200],
            request_id_len: 0,
            sent_continue: false,
            stages: Outcome::default(),
            client_cert: Vec::new(),
            cache: CacheRequest::default(),
        }
    }

    /// Gives the buffers back to the worker for the next connection.
    fn release(mut self) {
        self.release_idle_buffers();
    }

    /// Between requests a connection keeps only its read buffer: the write and upstream
    /// buffers go back to the worker. The read buffer stays as large as this client's heads
    /// need (1 KiB for most, more for heads with big cookies), so the next request reads
    /// into it without allocating; only one that grew past the pooled size (a body went
    /// through it) is swapped back for a small one. An idle connection then costs about
    /// [`crate::worker::HEAD_BUFFER`] plus its task.
    fn release_idle_buffers(&mut self) {
        if self.out.capacity() > 0 {
            self.worker.give_write_buffer(std::mem::take(&mut self.out));
        }
        if self.ubuf.capacity() > 0 {
            self.worker.give_read_buffer(std::mem::take(&mut self.ubuf));
        }
        // `capacity()` counts from the read position only; `try_reclaim` asks (without
        // allocating) whether the allocation underneath is larger than the pooled size.
        if self.buf.is_empty() && self.buf.try_reclaim(crate::worker::READ_BUFFER + 1) {
            let big = std::mem::replace(&mut self.buf, self.worker.head_buffer());
            self.worker.give_read_buffer(big);
        }
    }

    /// Takes a write buffer from the worker if the connection gave its own back.
    fn ensure_write_buffer(&mut self) {
        if self.out.capacity() == 0 {
            self.out = self.worker.take_write_buffer();
        }
    }

    async fn run(&mut self) {
        loop {
            match self.read_head().await {
                HeadRead::Ready => {}
                HeadRead::Closed => return,
                HeadRead::Rejected(reject) => {
                    self.new_request_id(false);
                    self.write_error(reject.status, None, true).await;
                    return;
                }
                HeadRead::TimedOut => {
                    self.new_request_id(false);
                    self.write_error(408, None, true).await;
                    return;
                }
            }
            // The request runs on the generation serving now; a connection whose listener
            // a reload removed closes instead (its client retries on a new connection).
            let gen = self.worker.generation();
            match gen.gateway.listener_at(self.listener_addr) {
                Some(index) => self.listener = index,
                None => return,
            }
            self.gen = gen;
            self.served += 1;
            let in_flight = self.worker.request_started();
            if !self.handle().await {
                return;
            }
            drop(in_flight);
            if self.buf.is_empty() {
                self.release_idle_buffers();
            }
        }
    }

    /// Reads until `buf` starts with a complete request head.
    async fn read_head(&mut self) -> HeadRead {
        let limits = &self.gen.gateway.config.http;
        let (header_timeout, idle_timeout) = (limits.header_timeout, limits.keepalive_timeout);
        // The first request gets the header timeout from the start (nginx
        // client_header_timeout); later ones may idle for the keep-alive timeout first.
        let mut deadline = (self.served == 0).then(|| Instant::now() + header_timeout);
        loop {
            if !self.buf.is_empty() {
                let limits = &self.gen.gateway.config.http;
                match parse_request(&self.buf, limits, &mut self.head) {
                    Ok(true) => return HeadRead::Ready,
                    Ok(false) => {}
                    Err(reject) => return HeadRead::Rejected(reject),
                }
                deadline.get_or_insert_with(|| Instant::now() + header_timeout);
            }
            let wait_until = deadline.unwrap_or_else(|| Instant::now() + idle_timeout);
            // Read into what is free; when the buffer is full, double it (up to max_head).
            let max_head = self.gen.gateway.config.http.max_head;
            let want = match self.buf.len() {
                0 => crate::worker::HEAD_BUFFER,
                n => n.min(max_head.saturating_sub(n)).max(1),
            };
            let buf = std::mem::take(&mut self.buf);
            match timeout_at(wait_until, read_more(&mut self.stream, buf, want)).await {
                // The read owned the buffer and is gone with it; the connection closes.
                // A head that was due gets a 408; an idle keep-alive connection just closes.
                Err(_) if deadline.is_some() => return HeadRead::TimedOut,
                Err(_) => return HeadRead::Closed,
                Ok((Ok(0), buf)) => {
                    self.buf = buf;
                    return HeadRead::Closed;
                }
                Ok((Ok(_), buf)) => self.buf = buf,
                Ok((Err(_), buf)) => {
                    self.buf = buf;
                    return HeadRead::Closed;
                }
            }
        }
    }

    /// One request, from routing to the end of its response. Returns whether the
    /// connection stays open.
    async fn handle(&mut self) -> bool {
        self.ensure_write_buffer();
        let worker = self.worker.clone();
        let gen = self.gen.clone();
        let gateway = &*gen.gateway;
        self.set_facts();
        self.sent_continue = false;
        // Nothing from the previous request's stages reaches this one's answers.
        self.stages.headers.clear();
        self.new_request_id(true);
        if let Some(port) = gateway.config.listeners[self.listener].redirect_https {
            return self.respond_https_redirect(port).await;
        }

        let buf = &self.buf[..];
        let found = gateway.routers[self.listener].lookup(
            self.head.host.of(buf),
            self.head.path(buf),
            self.head.method.of(buf),
        );
        let route_id = match found {
            RouteMatch::Found(id) => id as usize,
            RouteMatch::NotFound => return self.respond_error(404, None).await,
            RouteMatch::MethodNotAllowed { allow } => {
                return self.respond_error(405, Some(allow)).await
            }
        };
        let route = &gateway.config.routes[route_id];
        if let BodyFraming::Length(n) = self.head.framing {
            if n > route.max_body {
                return self.write_error(413, None, true).await;
            }
        }

        // The route's stages: authorize, throttle, (cache). See `crate::stages`.
        let request = crate::stages::Request {
            buf: &self.buf,
            head: &self.head,
            peer: self.peer_ip,
            listener: self.listener,
            route: route_id,
        };
        match crate::stages::run(gateway, &gen.leases, &request, &mut self.stages) {
            Verdict::Proceed => {}
            Verdict::Forbidden => return self.respond_error(403, None).await,
            Verdict::Throttled { bucket, wait_nanos } => {
                return self.respond_throttled(bucket, wait_nanos).await
            }
            Verdict::QuotaExhausted { wait_secs } => {
                return self.respond_quota_exhausted(wait_secs).await
            }
        }

        match &route.integration {
            Integration::Mock(_) => {
                let mock = gateway.mocks[route_id]
                    .as_ref()
                    .expect("mock rendered at start");
                if !self.discard_body(route).await {
                    return false;
                }
                let close = !self.keeps_alive();
                let date = worker.date();
                let trailer = trailer(
                    &self.request_id[..self.request_id_len],
                    &date,
                    close,
                    self.facts.http10,
                    &self.stages.headers,
                );
                mock.write(&mut self.out, self.facts.is_head, &trailer);
                self.flush_to_client().await.is_ok() && !close
            }
            Integration::Http(integration) => {
                if let Some(rc) = &route.cache {
                    if let Some(keep) = self.cache_stage(route_id, rc).await {
                        self.cache.finish();
                        return keep;
                    }
                }
                let safe = matches!(
                    self.head.method.of(&self.buf),
                    b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE"
                );
                if gateway.caching && !safe {
                    // An unsafe method: a success invalidates what the cache holds for the
                    // host and path, every query form, on every worker (RFC 9111 §4.4).
                    // The key buffer is free: this request is not looked up in the cache.
                    let scratch = &mut self.cache.key.bytes;
                    let path_hash = crate::cache::invalidation_hash(&self.buf, &self.head, scratch);
                    self.cache.invalidates = Some(path_hash);
                }
                let keep = self.proxy(route, integration).await;
                self.cache.finish();
                keep
            }
        }
    }

    /// The upstream failed with `status`: a stale cached response if the rules allow one,
    /// else the error (and a close).
    async fn fail(&mut self, status: u16, consume: bool) -> bool {
        match self.serve_stale_on_error(consume).await {
            Some(keep) => keep,
            None => self.write_error(status, None, true).await,
        }
    }

    fn set_facts(&mut self) {
        let (buf, head) = (&self.buf[..], &self.head);
        self.facts = RequestFacts {
            is_head: head.is_head(buf),
            http10: head.minor_version == 0,
            keep_alive: head.keep_alive,
            idempotent: head.is_idempotent(buf),
            expect_continue: head.expect_continue,
        };
    }

    /// Whether the connection may carry another request after this one.
    fn keeps_alive(&self) -> bool {
        let limits = &self.gen.gateway.config.http;
        self.facts.keep_alive
            && self.served < limits.keepalive_requests
            && !self.worker.is_draining()
    }

    /// Uses the client's `X-Request-Id` when it sent a usable one, else makes one.
    fn new_request_id(&mut self, from_head: bool) {
        if from_head {
            if let Some(span) = self.head.request_id {
                let v = span.of(&self.buf);
                self.request_id[..v.len()].copy_from_slice(v);
                self.request_id_len = v.len();
                return;
            }
        }
        let mut id = [0u8; 32];
        self.worker.next_request_id(&mut id);
        self.request_id[..32].copy_from_slice(&id);
        self.request_id_len = 32;
    }

    /// Answers with an error before the request body was read. The connection stays open
    /// only if nothing of the request remains unread.
    async fn respond_error(&mut self, status: u16, allow: Option<&[u8]>) -> bool {
        let close = self.head.has_body();
        if !close {
            self.buf.advance(self.head.len);
        }
        self.write_error(status, allow, close).await
    }

    async fn write_error(&mut self, status: u16, allow: Option<&[u8]>, force_close: bool) -> bool {
        let allow_header = |out: &mut Vec<u8>| {
            if let Some(allow) = allow {
                out.extend_from_slice(b"allow: ");
                out.extend_from_slice(allow);
                out.extend_from_slice(b"\r\n");
            }
        };
        self.write_error_with(status, force_close, allow_header)
            .await
    }

    /// Writes an error response; `headers` appends its own header lines.
    async fn write_error_with(
        &mut self,
        status: u16,
        force_close: bool,
        headers: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let message = crate::http::reason(status);
        self.write_error_saying(status, message, force_close, headers)
            .await
    }

    /// Writes an error response with its own message: `{"message":"<message>"}`.
    async fn write_error_saying(
        &mut self,
        status: u16,
        message: &str,
        force_close: bool,
        headers: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let close = force_close || !self.keeps_alive();
        let date = self.worker.date();
        self.ensure_write_buffer();
        self.out.clear();
        // What the stages added (RateLimit fields) goes on Weir's own answers too: a
        // client told its budget on a 200 is told it on the 502 that follows.
        let trailer = trailer(
            &self.request_id[..self.request_id_len],
            &date,
            close,
            self.facts.http10,
            &self.stages.headers,
        );
        error_response_saying(&mut self.out, status, message, headers, &trailer);
        self.flush_to_client().await.is_ok() && !close
    }

    /// 429 `{"message":"Limit Exceeded"}` for an exhausted quota, as API Gateway's
    /// QUOTA_EXCEEDED, with `Retry-After` at the start of the next period.
    async fn respond_quota_exhausted(&mut self, wait_secs: u64) -> bool {
        let unread_body = self.head.has_body();
        if !unread_body {
            self.buf.advance(self.head.len);
        }
        let retry_after = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"retry-after: ");
            push_u64(out, wait_secs);
            out.extend_from_slice(b"\r\n");
        };
        self.write_error_saying(429, "Limit Exceeded", unread_body, retry_after)
            .await
    }

    /// The listener redirects everything to HTTPS: 301 for GET and HEAD, 308 for other
    /// methods (which keeps the method and body), to `https://<host>[:port]<target>`. The
    /// host and target were validated by the parser, so they cannot inject a header.
    async fn respond_https_redirect(&mut self, port: u16) -> bool {
        let buf = &self.buf[..];
        let host = self.head.host.of(buf);
        if host.is_empty() {
            return self.respond_error(400, None).await;
        }
        let name = match host.iter().rposition(|&b| b == b':') {
            Some(i) if !host.ends_with(b"]") => &host[..i],
            _ => host,
        };
        let status = match self.head.method.of(buf) {
            b"GET" | b"HEAD" => 301,
            _ => 308,
        };
        // The connection's stage-header buffer serves as scratch: no allocation.
        let mut location = std::mem::take(&mut self.stages.headers);
        location.clear();
        location.extend_from_slice(b"location: https://");
        location.extend_from_slice(name);
        if port != 443 {
            location.push(b':');
            push_u64(&mut location, u64::from(port));
        }
        if self.head.absolute_form {
            location.extend_from_slice(self.head.path(buf));
            location.extend_from_slice(self.head.query.of(buf));
        } else {
            location.extend_from_slice(self.head.target.of(buf));
        }
        location.extend_from_slice(b"\r\n");
        let unread_body = self.head.has_body();
        if !unread_body {
            self.buf.advance(self.head.len);
        }
        let keep = self
            .write_error_with(status, unread_body, |out| out.extend_from_slice(&location))
            .await;
        self.stages.headers = location;
        keep
    }

    /// 429 from the throttle stage: `Retry-After` in whole seconds until the refusing
    /// bucket admits a request (at least 1), and its RateLimit fields.
    async fn respond_throttled(&mut self, bucket: &SharedBucket, wait_nanos: u64) -> bool {
        let retry = ceil_secs(wait_nanos).max(1);
        let unread_body = self.head.has_body();
        if !unread_body {
            self.buf.advance(self.head.len);
        }
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"retry-after: ");
            push_u64(out, retry);
            out.extend_from_slice(b"\r\n");
            write_fields(out, bucket, 0, retry);
        };
        self.write_error_with(429, unread_body, fields).await
    }

    async fn body_error(&mut self, e: BodyError) -> bool {
        match e {
            BodyError::ClientGone => false,
            BodyError::Timeout => self.write_error(408, None, true).await,
            BodyError::TooLarge => self.write_error(413, None, true).await,
            BodyError::Malformed => self.write_error(400, None, true).await,
            BodyError::Upstream => self.write_error(502, None, true).await,
        }
    }

    /// Writes `out` to the client and clears it.
    async fn flush_to_client(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let send_timeout = self.gen.gateway.config.http.body_timeout;
        match timeout(send_timeout, self.stream.write_all(out)).await {
            Ok((res, mut out)) => {
                out.clear();
                self.out = out;
                res.map(|_| ())
            }
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// The body bytes already in `buf` after the head: how many, and the body's state.
    fn buffered_body(&self, max_body: u64) -> Result<(usize, BodyState), BodyError> {
        let after_head = &self.buf[self.head.len..];
        let mut state = match self.head.framing {
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::None | BodyFraming::UntilClose => BodyState::Length(0),
        };
        let taken = state.take(after_head, max_body)?;
        Ok((taken, state))
    }

    /// Reads and drops the request body (mock integrations ignore it, as API Gateway's do).
    /// Returns false if the connection must close.
    async fn discard_body(&mut self, route: &Route) -> bool {
        if !self.head.has_body() {
            self.buf.advance(self.head.len);
            return true;
        }
        if self.facts.expect_continue {
            // The client waits before sending the body; answer without it and close.
            self.facts.keep_alive = false;
            self.buf.advance(self.head.len);
            return true;
        }
        let (taken, mut state) = match self.buffered_body(route.max_body) {
            Ok(b) => b,
            Err(e) => return self.body_error(e).await,
        };
        self.buf.advance(self.head.len + taken);
        match self.pump_body(None, &mut state, route.max_body).await {
            Ok(()) => true,
            Err(e) => self.body_error(e).await,
        }
    }

    /// Moves the rest of the request body from the client to `upstream` (or nowhere),
    /// one read at a time, keeping any pipelined bytes that follow it.
    async fn pump_body(
        &mut self,
        mut upstream: Option<&mut UpstreamStream>,
        state: &mut BodyState,
        max_body: u64,
    ) -> Result<(), BodyError> {
        let body_timeout = self.gen.gateway.config.http.body_timeout;
        while !state.is_done() {
            if self.buf.is_empty() {
                let buf = std::mem::take(&mut self.buf);
                match timeout(body_timeout, read_more(&mut self.stream, buf, BODY_CHUNK)).await {
                    Err(_) => return Err(BodyError::Timeout),
                    Ok((Ok(0) | Err(_), buf)) => {
                        self.buf = buf;
                        return Err(BodyError::ClientGone);
                    }
                    Ok((Ok(_), buf)) => self.buf = buf,
                }
            }
            let take = state.take(&self.buf, max_body)?;
            if let Some(up) = upstream.as_deref_mut() {
                let buf = std::mem::take(&mut self.buf);
                match timeout(body_timeout, up.write_all(buf.slice(..take))).await {
                    Ok((Ok(_), slice)) => self.buf = slice.into_inner(),
                    Ok((Err(_), slice)) => {
                        self.buf = slice.into_inner();
                        return Err(BodyError::Upstream);
                    }
                    Err(_) => return Err(BodyError::Upstream),
                }
            }
            self.buf.advance(take);
        }
        Ok(())
    }

    /// The HTTP integration: choose a target, send the request, relay the response, retry
    /// where that is safe (see docs/config.md, "Retries").
    async fn proxy(&mut self, route: &Route, integration: &HttpIntegration) -> bool {
        let gen = self.gen.clone();
        let group = integration.upstream;
        let upstream = &gen.gateway.config.upstreams[group];
        let health = &gen.gateway.upstreams[group].health;

        let (buffered, mut body) = match self.buffered_body(route.max_body) {
            Ok(b) => b,
            Err(e) => return self.body_error(e).await,
        };
        let whole_body_buffered = body.is_done();
        let mut tried = Tried::default();
        // What the client gets once every target was tried (`pick` gives up only then).
        let mut failure = 502;
        let mut fresh_only = false;

        loop {
            let picked = gen.pools.borrow_mut().groups[group].pick(tried);
            let Some(target) = picked else {
                return self.fail(failure, true).await;
            };
            let pooled = if fresh_only {
                None
            } else {
                gen.pools.borrow_mut().groups[group].take_idle(target)
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    match upstream::connect(&gen.gateway.upstreams[group], target).await {
                        Ok(c) => c,
                        Err(e) => {
                            // Nothing was sent: any method may go to another target.
                            health[target].failure(upstream);
                            tried.add(target);
                            failure = match e {
                                ConnectError::Timeout => 504,
                                ConnectError::Io(_) => 502,
                            };
                            continue;
                        }
                    }
                }
            };

            // The head and every body byte already read go out in one write.
            self.out.clear();
            let mut out = std::mem::take(&mut self.out);
            rewrite::request_head(
                &mut out,
                &ForwardRequest {
                    buf: &self.buf,
                    head: &self.head,
                    route: integration,
                    target_authority: upstream.targets[target].authority.as_bytes(),
                    client_ip: &self.client_ip[..self.client_ip_len],
                    request_id: &self.request_id[..self.request_id_len],
                    proto: self.proto,
                    extra: &self.client_cert,
                    drop_conditionals: self.cache.store,
                    validators: &self.cache.validators,
                    hidden: [
                        if route.forward_api_key {
                            b""
                        } else {
                            gen.gateway.config.api_key_header.as_bytes()
                        },
                        route.api_key_id_header.as_deref().unwrap_or("").as_bytes(),
                    ],
                    api_key_id: route.api_key_id_header.as_deref().and_then(|name| {
                        let key = self.stages.api_key?;
                        Some((
                            name.as_bytes(),
                            gen.gateway.config.api_keys[key].id.as_bytes(),
                        ))
                    }),
                },
            );
            out.extend_from_slice(&self.buf[self.head.len..self.head.len + buffered]);
            let (written, mut out) = conn.write_all(out).await;
            out.clear();
            self.out = out;
            if written.is_err() {
                if reused {
                    // A pooled connection found dead before the request was written: any
                    // method may be retried, on a fresh connection.
                    fresh_only = true;
                } else {
                    health[target].failure(upstream);
                    tried.add(target);
                    failure = 502;
                }
                continue;
            }

            gen.pools.borrow_mut().groups[group].started(target);
            let result = self
                .send_rest_and_relay(
                    &mut conn,
                    &mut body,
                    buffered,
                    whole_body_buffered,
                    route,
                    upstream,
                )
                .await;
            gen.pools.borrow_mut().groups[group].finished(target);

            match result {
                Ok((upstream_reusable, client_keep)) => {
                    health[target].success();
                    if upstream_reusable {
                        gen.pools.borrow_mut().groups[group].put_idle(target, conn);
                    }
                    return client_keep;
                }
                Err(Failure::Body(e)) => return self.body_error(e).await,
                Err(Failure::Relay(RelayError::NothingReceived)) => {
                    // The request was written and nothing came back. A reused connection
                    // was probably closed by the upstream while idle (not the target's
                    // fault); a fresh one failing counts against the target.
                    if reused {
                        fresh_only = true;
                    } else {
                        health[target].failure(upstream);
                        tried.add(target);
                    }
                    // Only an idempotent request whose body is still at hand is sent again.
                    if whole_body_buffered && self.facts.idempotent {
                        failure = 502;
                        continue;
                    }
                    return self.fail(502, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::Timeout)) => {
                    health[target].failure(upstream);
                    return self.fail(504, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::BadHead)) => {
                    health[target].failure(upstream);
                    return self.fail(502, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::Broken)) => return false,
            }
        }
    }

    /// Sends what remains of the request body, then relays the response. On success returns
    /// (upstream connection reusable, client connection stays open).
    async fn send_rest_and_relay(
        &mut self,
        conn: &mut UpstreamStream,
        body: &mut BodyState,
        buffered: usize,
        whole_body_buffered: bool,
        route: &Route,
        upstream: &Upstream,
    ) -> Result<(bool, bool), Failure> {
        if !whole_body_buffered {
            // From here on the request cannot be replayed: its body streams through.
            self.buf.advance(self.head.len + buffered);
            if self.facts.expect_continue && buffered == 0 {
                self.out.extend_from_slice(CONTINUE);
                self.flush_to_client()
                    .await
                    .map_err(|_| Failure::Body(BodyError::ClientGone))?;
                self.sent_continue = true;
            }
            self.pump_body(Some(conn), body, route.max_body)
                .await
                .map_err(Failure::Body)?;
            let result = self.relay_response(conn, upstream).await;
            return result.map_err(Failure::Relay);
        }
        let result = self.relay_response(conn, upstream).await;
        if result.is_ok() {
            self.buf.advance(self.head.len + buffered);
        }
        result.map_err(Failure::Relay)
    }

    /// Reads the upstream's response and streams it to the client with its own framing.
    async fn relay_response(
        &mut self,
        conn: &mut UpstreamStream,
        upstream: &Upstream,
    ) -> Result<(bool, bool), RelayError> {
        let wait = upstream.response_timeout;
        let mut ubuf = match std::mem::take(&mut self.ubuf) {
            b if b.capacity() > 0 => b,
            _ => self.worker.take_read_buffer(),
        };
        ubuf.clear();

        // The head, after any 1xx responses.
        loop {
            let (n, b) = match timeout(wait, read_more(conn, ubuf, 4096)).await {
                Err(_) => return Err(RelayError::Timeout),
                Ok((res, b)) => (res, b),
            };
            ubuf = b;
            match n {
                Ok(0) | Err(_) if ubuf.is_empty() => {
                    self.ubuf = ubuf;
                    return Err(RelayError::NothingReceived);
                }
                Ok(0) | Err(_) => {
                    self.ubuf = ubuf;
                    return Err(RelayError::BadHead);
                }
                Ok(_) => {}
            }
            loop {
                match parse_response(&ubuf, self.facts.is_head, &mut self.response) {
                    Ok(false) => break,
                    Err(_) => {
                        self.ubuf = ubuf;
                        return Err(RelayError::BadHead);
                    }
                    Ok(true) if self.response.status == 101 => {
                        // Upgrade is not forwarded (Weir strips it); a 101 is a protocol error.
                        self.ubuf = ubuf;
                        return Err(RelayError::BadHead);
                    }
                    Ok(true) if self.response.status < 200 => {
                        if !(self.response.status == 100 && self.sent_continue) {
                            rewrite::informational_head(&mut self.out, &ubuf, &self.response);
                            if self.flush_to_client().await.is_err() {
                                self.ubuf = ubuf;
                                return Err(RelayError::Broken);
                            }
                        }
                        ubuf.advance(self.response.len);
                        if ubuf.is_empty() {
                            break;
                        }
                    }
                    Ok(true) => {
                        if let OnResponse::Serve(stored, status, reusable) =
                            self.cache_on_response(&ubuf)
                        {
                            ubuf.clear();
                            self.ubuf = ubuf;
                            let keep = self.serve_stored(&stored, status, false, false).await;
                            return Ok((reusable, keep));
                        }
                        let result = self.relay_body(conn, ubuf, upstream).await;
                        return result;
                    }
                }
            }
        }
    }

    /// Writes the response head and streams the body. Consumes the upstream buffer.
    async fn relay_body(
        &mut self,
        conn: &mut UpstreamStream,
        mut ubuf: BytesMut,
        upstream: &Upstream,
    ) -> Result<(bool, bool), RelayError> {
        let framing = self.response.framing;
        let mut close = !self.keeps_alive();
        let until_close = framing == BodyFraming::UntilClose;
        // An HTTP/1.0 client cannot take chunked: a body that ends at close closes it too.
        if until_close && self.facts.http10 {
            close = true;
        }
        let rechunk = until_close && !close;
        rewrite::response_head(
            &mut self.out,
            &ubuf,
            &self.response,
            &ForwardResponse {
                request_id: &self.request_id[..self.request_id_len],
                close,
                keep_alive_10: self.facts.http10 && !close,
                chunked: rechunk,
                extra: &self.stages.headers,
                cache: self.cache.status.map_or(&b""[..], |s| s.header()),
            },
        );
        ubuf.advance(self.response.len);

        let mut remaining = match framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        let mut decoder = ChunkedDecoder::new();
        let mut done = match framing {
            BodyFraming::None => true,
            BodyFraming::Length(n) => n == 0,
            BodyFraming::Chunked | BodyFraming::UntilClose => false,
        };
        let mut clean = true;
        // The first piece goes out with the head; later ones straight from the read buffer.
        let mut first = true;
        loop {
            let take = if done {
                0
            } else {
                match framing {
                    BodyFraming::Length(_) => {
                        let t = remaining.min(ubuf.len() as u64);
                        remaining -= t;
                        done = remaining == 0;
                        t as usize
                    }
                    BodyFraming::Chunked => match decoder.scan(&ubuf) {
                        Ok(t) => {
                            done = decoder.is_done();
                            t
                        }
                        Err(_) => {
                            self.ubuf = ubuf;
                            return Err(RelayError::Broken);
                        }
                    },
                    _ => ubuf.len(),
                }
            };
            if self.cache.capture.is_some() {
                self.capture(&ubuf[..take]);
            }
            if rechunk && take > 0 {
                chunk_header(&mut self.out, take);
                self.out.extend_from_slice(&ubuf[..take]);
                self.out.extend_from_slice(b"\r\n");
                ubuf.advance(take);
            } else if first || take < 1024 {
                self.out.extend_from_slice(&ubuf[..take]);
                ubuf.advance(take);
            } else {
                // Large piece: send the pending bytes, then the piece without copying it.
                if !self.out.is_empty() && self.flush_to_client().await.is_err() {
                    return Err(RelayError::Broken);
                }
                let send_timeout = self.gen.gateway.config.http.body_timeout;
                match timeout(send_timeout, self.stream.write_all(ubuf.slice(..take))).await {
                    Ok((Ok(_), slice)) => ubuf = slice.into_inner(),
                    _ => return Err(RelayError::Broken),
                }
                ubuf.advance(take);
            }
            first = false;
            if done {
                break;
            }
            if !self.out.is_empty() && self.flush_to_client().await.is_err() {
                self.ubuf = ubuf;
                return Err(RelayError::Broken);
            }
            ubuf.clear();
            match timeout(upstream.response_timeout, read_more(conn, ubuf, BODY_CHUNK)).await {
                Err(_) => return Err(RelayError::Broken),
                Ok((Ok(0), b)) if until_close => {
                    ubuf = b;
                    if rechunk {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    clean = false;
                    break;
                }
                Ok((Ok(0) | Err(_), b)) => {
                    self.ubuf = b;
                    return Err(RelayError::Broken);
                }
                Ok((Ok(_), b)) => ubuf = b,
            }
        }
        if !self.out.is_empty() && self.flush_to_client().await.is_err() {
            self.ubuf = ubuf;
            return Err(RelayError::Broken);
        }
        self.cache_store();
        // Bytes after the end of the response mean the upstream broke framing: never reuse.
        let reusable = clean && self.response.keep_alive && ubuf.is_empty();
        ubuf.clear();
        self.ubuf = ubuf;
        Ok((reusable, !close))
    }
}

enum Failure {
    Body(BodyError),
    Relay(RelayError),
}

fn chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (4 * i)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

fn trailer<'a>(
    request_id: &'a [u8],
    date: &'a [u8],
    close: bool,
    http10: bool,
    extra: &'a [u8],
) -> Trailer<'a> {
    Trailer {
        date,
        request_id,
        close,
        keep_alive_10: http10 && !close,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_headers_are_hex() {
        let mut out = Vec::new();
        chunk_header(&mut out, 0x1a2b);
        chunk_header(&mut out, 1);
        assert_eq!(out, b"1a2b\r\n1\r\n");
    }
}

#[cfg(test)]
mod size_guard {
    /// Every idle keep-alive connection holds one of these futures: its size is most of
    /// what an idle connection costs (see perf/results for the measured KiB per connection).
    #[test]
    fn the_connection_task_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            c.set_nonblocking(true).unwrap();
            let s = monoio::net::TcpStream::from_std(c).unwrap();
            let cfg =
                crate::config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t").unwrap();
            let registry = crate::registry::Registry::new().unwrap();
            let bus = std::sync::Arc::new(crate::cache::Bus::new(1));
            let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            let gw = crate::gateway::Gateway::new(cfg, 1, vec![addr], bus, &mut registry.next());
            let published = crate::worker::Published::new(std::sync::Arc::new(gw.unwrap()), 1);
            let w = std::rc::Rc::new(crate::worker::Worker::new(0, published.into(), 1, 1));
            let gen = w.generation();
            let fut = super::serve(w, gen, addr, s, addr, b"http", Vec::new());
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 4096, "the connection future grew to {size} bytes");
        });
    }
}
