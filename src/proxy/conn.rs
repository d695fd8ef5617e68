//! One client connection: its socket, its reused buffers, and the keep-alive loop that
//! reads each request head, runs the exchange (`exchange.rs`) on the generation serving
//! now, and ends every request in one place ([`Connection::finish`]) with its record.
//!
//! Must not: allocate per request (buffers come from the worker and go back to it while
//! the connection idles), or keep a request's state into the next one (the exchange is
//! reset when a head is complete).

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::time::{timeout_at, Instant};

use super::exchange::Exchange;
use crate::http::{parse_request, Reject, RequestHead, ResponseHead};
use crate::net::read_more;
use crate::observe::access_log::{format, AccessLog, Entry};
use crate::observe::Refusal;
use crate::worker::{Generation, Worker};

/// How a request ended, for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The response is complete and the connection may carry another request.
    KeepAlive,
    /// The connection closes (Weir said so, the client or the upstream broke off, or the
    /// connection's listener is gone).
    Close,
}

impl Outcome {
    pub(super) fn keep(keep: bool) -> Outcome {
        if keep {
            Outcome::KeepAlive
        } else {
            Outcome::Close
        }
    }
}

pub(super) enum HeadRead {
    Ready,
    Closed,
    Rejected(Reject),
    TimedOut,
}

pub(super) struct Connection<S> {
    pub(super) worker: Rc<Worker>,
    /// The config generation the current (or last) request runs on.
    pub(super) gen: Rc<Generation>,
    /// The listener's bound address: how it is found again in a newer generation.
    pub(super) listener_addr: SocketAddr,
    /// The listener's index in `gen`.
    pub(super) listener: usize,
    /// `http` or `https`.
    pub(super) proto: &'static [u8],
    pub(super) stream: S,
    pub(super) peer_ip: std::net::IpAddr,
    pub(super) client_ip: [u8; 46],
    pub(super) client_ip_len: usize,
    /// Client bytes: the current head, then body or pipelined requests.
    pub(super) buf: BytesMut,
    /// What Weir writes next (to the client or the upstream).
    pub(super) out: Vec<u8>,
    /// Upstream response bytes.
    pub(super) ubuf: BytesMut,
    pub(super) head: RequestHead,
    pub(super) response: ResponseHead,
    pub(super) served: u32,
    /// `x-client-cert-*` lines from the TLS handshake, forwarded with every request.
    pub(super) client_cert: Vec<u8>,
    /// The request in progress.
    pub(super) ex: Exchange,
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    pub(super) fn new(
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
            served: 0,
            client_cert: Vec::new(),
            ex: Exchange::default(),
        }
    }

    /// Gives the buffers back to the worker for the next connection.
    pub(super) fn release(mut self) {
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
    pub(super) fn ensure_write_buffer(&mut self) {
        if self.out.capacity() == 0 {
            self.out = self.worker.take_write_buffer();
        }
    }

    /// The keep-alive loop: one iteration per request.
    pub(super) async fn run(&mut self) {
        loop {
            let read = self.read_head().await;
            if let HeadRead::Closed = read {
                return;
            }
            // The request runs on the generation serving now; a connection whose listener
            // a reload removed closes instead (its client retries on a new connection).
            let gen = self.worker.generation();
            match gen.gateway.listener_at(self.listener_addr) {
                Some(index) => self.listener = index,
                None => return,
            }
            self.gen = gen;
            let outcome = match read {
                HeadRead::Ready => {
                    self.served += 1;
                    if let Some(series) = &self.gen.series {
                        series.listeners[self.listener].request_begun();
                    }
                    let in_flight = self.worker.request_started();
                    self.ex.begin(
                        &self.worker,
                        &self.gen,
                        self.listener,
                        &self.buf,
                        &self.head,
                    );
                    let outcome = self.exchange().await;
                    drop(in_flight);
                    outcome
                }
                HeadRead::Rejected(reject) => {
                    self.ex
                        .begin_refused(&self.worker, &self.gen, self.listener);
                    let refusal = match reject.status {
                        400 => Refusal::BadRequest(reject.why),
                        _ => Refusal::HeadTooLarge,
                    };
                    self.write_error(reject.status, refusal, None, true).await;
                    Outcome::Close
                }
                HeadRead::TimedOut | HeadRead::Closed => {
                    self.ex
                        .begin_refused(&self.worker, &self.gen, self.listener);
                    self.write_error(408, Refusal::Timeout, None, true).await;
                    Outcome::Close
                }
            };
            self.finish();
            match outcome {
                Outcome::KeepAlive => {
                    if self.buf.is_empty() {
                        self.release_idle_buffers();
                    }
                }
                Outcome::Close => return,
            }
        }
    }

    /// The one end of every request: the record is completed and handed on (when anything
    /// consumes records: the end time is the request's second clock reading), and the
    /// access log's line written.
    pub(super) fn finish(&mut self) {
        let gen = self.gen.clone();
        let log = gen.gateway.access_logs[self.listener].as_deref();
        if crate::observe::consumed() || log.is_some() || gen.series.is_some() {
            let record = &mut self.ex.record;
            record.end = crate::clock::now();
            record.cache = self.ex.taken.cache.status;
            record.api_key = self.ex.taken.api_key.map(|k| k as u32);
            if record.status == 0 && record.refusal.is_none() {
                record.refusal = Some(Refusal::ClientGone);
            }
            crate::observe::emit(self.worker.id, record);
            if let (Some(series), Some(metrics)) = (&gen.series, &self.worker.metrics()) {
                series.record(metrics, record, self.ex.facts.method);
            }
            if let Some(log) = log {
                self.log_line(log);
            }
        }
        if let Some(series) = &gen.series {
            series.listeners[self.listener].request_ended();
        }
        // What the request held in the cache (a fill it owned) is let go now.
        self.ex.taken.cache.reset();
    }

    /// The request's access log line, into this worker's batch.
    fn log_line(&self, log: &AccessLog) {
        let record = &self.ex.record;
        if !log.spec.selects(record) {
            return;
        }
        let mut batches = self.worker.log_batches.borrow_mut();
        if !batches.sampled(log) {
            return;
        }
        let config = &self.gen.gateway.config;
        let route = record.route.map(|r| &config.routes[r as usize]);
        let entry = Entry {
            record: Some(record),
            request_id: self.ex.request_id(),
            ip: &self.client_ip[..self.client_ip_len],
            method: self.ex.kept(0),
            target: self.ex.kept(1),
            protocol: if self.ex.facts.http10 {
                b"HTTP/1.0"
            } else {
                b"HTTP/1.1"
            },
            user_agent: self.ex.kept(2),
            referer: self.ex.kept(3),
            stage: &config.listeners[self.listener].name,
            route_path: route.map_or("", |r| r.path.as_str()),
            route_has_methods: route.is_some_and(|r| r.methods.is_some()),
            api_key_id: record
                .api_key
                .map_or("", |k| config.api_keys[k as usize].id.as_str()),
            upstream: record.upstream.map_or("", |u| {
                config.upstreams[u.group as usize].targets[u.target as usize]
                    .authority
                    .as_str()
            }),
            trace_id: self.ex.trace_id(),
            epoch_ms: record.start.wall_ms(),
            time: batches.time(record.start.wall_secs()),
        };
        batches.append(log, |out| format(out, &log.spec.format, &entry));
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

    /// Reads and drops up to `limit` bytes from the client, until it closes.
    pub(super) async fn drain_input(&mut self, limit: usize) {
        let mut dropped = 0;
        while dropped < limit {
            self.buf.clear();
            let buf = std::mem::take(&mut self.buf);
            match read_more(&mut self.stream, buf, crate::worker::READ_BUFFER).await {
                (Ok(n), buf) if n > 0 => {
                    self.buf = buf;
                    dropped += n;
                }
                (_, buf) => {
                    self.buf = buf;
                    return;
                }
            }
        }
    }

    /// Whether the connection may carry another request after this one.
    pub(super) fn keeps_alive(&self) -> bool {
        let limits = &self.gen.gateway.config.http;
        self.ex.facts.keep_alive
            && self.served < limits.keepalive_requests
            && !self.worker.is_draining()
    }
}
