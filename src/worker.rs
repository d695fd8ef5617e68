//! One worker: the state a core owns, its accept loops, and its drain on shutdown.
//!
//! Owns: everything per core ([`Worker`]): upstream pools, reusable buffers, the request-id
//! sequence, the cached `Date`, the in-flight count, its response-cache shard. It is
//! passed down explicitly to each connection task as an `Rc`; there are no hidden globals.
//!
//! Must not: be shared with another thread (it is `!Send` by construction), or block its
//! event loop.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::gateway::Gateway;
use crate::http::write::DateCache;
use crate::limit::Leases;
use crate::upstream::Pools;

/// Size of a pooled buffer (upstream responses, writes); large enough for almost every
/// response head plus a small body.
pub const READ_BUFFER: usize = 8 * 1024;
/// Size of the buffer an idle client connection waits with (nginx's
/// `client_header_buffer_size`); it grows when a head or body needs more.
pub const HEAD_BUFFER: usize = 1024;
/// Buffers kept for reuse per worker; beyond this, returned buffers are freed.
const POOLED_BUFFERS: usize = 1024;

pub struct Worker {
    pub id: usize,
    pub gateway: Arc<Gateway>,
    pub pools: RefCell<Pools>,
    /// This worker's leased tokens of every throttle bucket.
    pub leases: Leases,
    /// This worker's share of the response cache.
    pub cache: RefCell<crate::cache::Shard>,
    read_buffers: RefCell<Vec<BytesMut>>,
    write_buffers: RefCell<Vec<Vec<u8>>>,
    date: RefCell<DateCache>,
    request_seed: u64,
    request_seq: Cell<u64>,
    in_flight: Cell<usize>,
    draining: Cell<bool>,
    drain_waiters: RefCell<Vec<Waker>>,
}

impl Worker {
    pub fn new(id: usize, gateway: Arc<Gateway>, seed: u64, workers: usize) -> Worker {
        let pools = Pools::new(&gateway.upstreams);
        let leases = Leases::new(gateway.buckets.len(), workers as u32);
        let cache_share = gateway.config.cache_memory / workers.max(1) as u64;
        Worker {
            id,
            gateway,
            pools: RefCell::new(pools),
            leases,
            cache: RefCell::new(crate::cache::Shard::new(cache_share)),
            read_buffers: RefCell::default(),
            write_buffers: RefCell::default(),
            date: RefCell::default(),
            request_seed: seed ^ (id as u64).rotate_left(56),
            request_seq: Cell::new(0),
            in_flight: Cell::new(0),
            draining: Cell::new(false),
            drain_waiters: RefCell::default(),
        }
    }

    /// A small buffer for reading request heads; most API request heads fit in it.
    pub fn head_buffer(&self) -> BytesMut {
        BytesMut::with_capacity(HEAD_BUFFER)
    }

    pub fn take_read_buffer(&self) -> BytesMut {
        self.read_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUFFER))
    }

    /// Takes back a buffer from [`Worker::take_read_buffer`] for reuse.
    pub fn give_read_buffer(&self, mut buf: BytesMut) {
        let mut pool = self.read_buffers.borrow_mut();
        if pool.len() < POOLED_BUFFERS {
            // `advance` moves a BytesMut's start forward, shrinking `capacity()`; on an
            // empty buffer `reserve` moves it back to the start of the same allocation.
            buf.clear();
            buf.reserve(READ_BUFFER);
            pool.push(buf);
        }
    }

    pub fn take_write_buffer(&self) -> Vec<u8> {
        self.write_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUFFER))
    }

    pub fn give_write_buffer(&self, mut buf: Vec<u8>) {
        let mut pool = self.write_buffers.borrow_mut();
        if pool.len() < POOLED_BUFFERS && buf.capacity() >= READ_BUFFER {
            buf.clear();
            pool.push(buf);
        }
    }

    /// The current `Date` header value.
    pub fn date(&self) -> [u8; 29] {
        let mut d = self.date.borrow_mut();
        let mut out = [0u8; 29];
        out.copy_from_slice(d.now());
        out
    }

    /// A new request id: 32 hex digits, unique per process run, worker and request.
    pub fn next_request_id(&self, out: &mut [u8; 32]) {
        let seq = self.request_seq.get().wrapping_add(1);
        self.request_seq.set(seq);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let words = [self.request_seed, seq];
        for (w, chunk) in words.iter().zip(out.chunks_mut(16)) {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = HEX[(w >> (60 - 4 * i) & 0xf) as usize];
            }
        }
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn request_started(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    fn start_drain(&self) {
        self.draining.set(true);
        for w in self.drain_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves when the worker starts draining.
    fn drained(self: &Rc<Self>) -> DrainWait {
        DrainWait(self.clone())
    }

    /// Serves `listeners` until `shutdown` is set, then drains: stops accepting, lets
    /// in-flight requests finish up to the drain timeout, and returns.
    pub async fn run(
        self: Rc<Self>,
        listeners: Vec<(usize, std::net::TcpListener)>,
        shutdown: Arc<AtomicBool>,
    ) {
        for (index, std_listener) in listeners {
            match monoio::net::TcpListener::from_std(std_listener) {
                Ok(l) => {
                    monoio::spawn(accept_loop(self.clone(), index, l));
                }
                Err(e) => crate::error!("worker {}: cannot use listener: {e}", self.id),
            }
        }
        // The signal arrives on the main thread; a 100 ms poll is ten wake-ups a second,
        // and keeps cross-thread wake-ups (a global mutex in monoio) off the request path.
        while !shutdown.load(Ordering::Relaxed) {
            monoio::time::sleep(Duration::from_millis(100)).await;
        }
        self.start_drain();
        let deadline = Instant::now() + self.gateway.config.server.drain_timeout;
        while self.in_flight.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.in_flight.get() > 0 {
            crate::warn!(
                "worker {}: drain timeout with {} requests in flight",
                self.id,
                self.in_flight.get()
            );
        }
    }
}

async fn accept_loop(worker: Rc<Worker>, index: usize, listener: monoio::net::TcpListener) {
    let mut stop = std::pin::pin!(worker.drained());
    loop {
        monoio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Heads and bodies are written whole: Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    match &worker.gateway.tls[index] {
                        None => {
                            monoio::spawn(crate::proxy::serve(
                                worker.clone(),
                                index,
                                stream,
                                peer,
                                b"http",
                                Vec::new(),
                            ));
                        }
                        Some(tls) => {
                            let config = tls.config.clone();
                            let deadline = tls.handshake_timeout;
                            let mutual = tls.mutual;
                            let worker = worker.clone();
                            monoio::spawn(async move {
                                let handshake = crate::tls::TlsStream::accept(stream, config);
                                // A failed or stalled handshake (an unknown protocol version,
                                // silence) just closes the connection; plain HTTP is told why.
                                match monoio::time::timeout(deadline, handshake).await {
                                    Ok(Ok(crate::tls::Accepted::Tls(tls))) => {
                                        let client_cert = if mutual {
                                            crate::tls::client_cert_headers(tls.session())
                                        } else {
                                            Vec::new()
                                        };
                                        crate::proxy::serve(worker, index, tls, peer, b"https", client_cert).await;
                                    }
                                    Ok(Ok(crate::tls::Accepted::PlainHttp(tcp))) => {
                                        refuse_plain_http(&worker, tcp).await;
                                    }
                                    _ => {}
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    crate::error!("worker {}: accept failed: {e}", worker.id);
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Dropping the listener here closes this worker's socket, so the kernel sends new
    // connections to no one rather than to a worker that will not accept them.
}

/// What a plain-HTTP request on a TLS port is told, as nginx's "The plain HTTP request
/// was sent to HTTPS port".
pub const PLAIN_HTTP_ON_TLS: &str = "This port expects HTTPS (TLS): use https://";

/// Answers plain HTTP sent to a TLS port: 400 with a JSON message and `connection: close`,
/// then a lingering close. The request is not parsed: the first byte (a letter, not a TLS
/// record) is all the evidence there is, and the connection ends either way.
async fn refuse_plain_http(worker: &Worker, mut tcp: monoio::net::TcpStream) {
    use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
    /// How long, and how much, of the rest of the request is read and dropped after the
    /// answer, so that closing with unread bytes does not reset the connection (which can
    /// destroy the answer before the client reads it).
    const LINGER: Duration = Duration::from_secs(5);
    const LINGER_BYTES: usize = 1 << 20;

    let mut id = [0u8; 32];
    worker.next_request_id(&mut id);
    let date = worker.date();
    let trailer = crate::http::write::Trailer {
        date: &date,
        request_id: &id,
        close: true,
        keep_alive_10: false,
        extra: b"",
    };
    let mut out = worker.take_write_buffer();
    crate::http::write::error_response_saying(&mut out, 400, PLAIN_HTTP_ON_TLS, |_| {}, &trailer);
    let (res, out) = tcp.write_all(out).await;
    worker.give_write_buffer(out);
    if res.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let _ = monoio::time::timeout(LINGER, async {
        let mut buf = worker.take_read_buffer();
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            buf.clear();
            let (res, b) = tcp.read(buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => dropped += n,
                _ => break,
            }
        }
        worker.give_read_buffer(buf);
    })
    .await;
}

/// Keeps a request counted as in flight.
pub struct InFlight(Rc<Worker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

struct DrainWait(Rc<Worker>);

impl Future for DrainWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.draining.get() {
            Poll::Ready(())
        } else {
            // Polled again on every accept; register each accept loop's waker once.
            let mut waiters = self.0.drain_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}
