//! One worker: the state a core owns, the config generation it serves, and its drain
//! state (its event loop is in [`crate::accept`]).
//!
//! Owns: everything per core ([`Worker`]): reusable buffers, the request-id sequence, the
//! cached `Date`, the in-flight count, its response-cache shard, and for the config
//! generation it serves ([`Generation`]) its upstream pools and throttle leases. It is
//! passed down explicitly to each connection task as an `Rc`; there are no hidden globals.
//!
//! A reload publishes a new generation ([`Published`]); a worker takes it up at the next
//! request that asks ([`Worker::generation`], one relaxed load when nothing changed) or at
//! its next tick ([`crate::accept`]), when it also starts accepting on new listeners and
//! stops on removed ones. A request keeps the generation it started with until it ends.
//!
//! Must not: be shared with another thread (it is `!Send` by construction), or block its
//! event loop.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use crate::gateway::Gateway;
use crate::http::write::DateCache;
use crate::limit::Leases;
use crate::observe::metrics::{Metrics, Names, Series};
use crate::upstream::Pools;

/// Each byte as two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Size of a pooled buffer (upstream responses, writes); large enough for almost every
/// response head plus a small body.
pub const READ_BUFFER: usize = 8 * 1024;
/// Size of the buffer an idle client connection waits with (nginx's
/// `client_header_buffer_size`); it grows when a head or body needs more.
pub const HEAD_BUFFER: usize = 1024;
/// Buffers kept for reuse per worker; beyond this, returned buffers are freed.
const POOLED_BUFFERS: usize = 1024;

/// The serving generation, as the control thread publishes it to every worker.
pub struct Published {
    current: arc_swap::ArcSwap<Gateway>,
    /// `current`'s generation number: what a worker compares on each request.
    generation: AtomicU64,
    /// Listener sockets a reload bound, one queue per worker: (address, its socket).
    inbox: Box<[crossbeam_queue::SegQueue<(SocketAddr, std::net::TcpListener)>]>,
    /// Every worker's metrics cells, when the admin API (which serves them) is on.
    pub metrics: Option<Arc<Metrics>>,
}

impl Published {
    pub fn new(first: Arc<Gateway>, workers: usize) -> Published {
        Published {
            metrics: first
                .config
                .admin
                .is_some()
                .then(|| Arc::new(Metrics::new(workers))),
            generation: AtomicU64::new(first.generation),
            current: arc_swap::ArcSwap::new(first),
            inbox: (0..workers).map(|_| Default::default()).collect(),
        }
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Makes `next` the serving generation, with `sockets[worker]` the new listeners'
    /// sockets for each worker.
    pub fn publish(
        &self,
        next: Arc<Gateway>,
        sockets: Vec<Vec<(SocketAddr, std::net::TcpListener)>>,
    ) {
        // The generation first: a worker that finds a socket in its inbox then finds the
        // generation that has its listener.
        let number = next.generation;
        self.current.store(next);
        self.generation.store(number, Ordering::Release);
        for (queue, mine) in self.inbox.iter().zip(sockets) {
            for s in mine {
                queue.push(s);
            }
        }
    }
}

/// A worker's part of one config generation: the generation itself and what the worker
/// keeps for it (indexed by its upstreams and buckets).
pub struct Generation {
    pub gateway: Arc<Gateway>,
    pub pools: RefCell<Pools>,
    /// This worker's leased tokens of every throttle bucket.
    pub leases: Leases,
    /// This worker's metrics cells for the generation's series, when metrics are on.
    pub series: Option<Series>,
}

impl Generation {
    fn new(gateway: Arc<Gateway>, pools: Pools, worker: usize, published: &Published) -> Self {
        let workers = published.inbox.len();
        let series = published.metrics.as_ref().map(|m| {
            let config = &gateway.config;
            let names = Names {
                listeners: config.listeners.iter().map(|l| l.name.as_str()).collect(),
                routes: config.routes.iter().map(|r| r.label()).collect(),
                upstreams: config
                    .upstreams
                    .iter()
                    .map(|u| {
                        let targets = u.targets.iter().map(|t| t.authority.as_str()).collect();
                        (u.name.as_str(), targets)
                    })
                    .collect(),
            };
            m.series_for(worker, &names)
        });
        Generation {
            leases: Leases::new(gateway.buckets.len(), workers as u32),
            pools: RefCell::new(pools),
            series,
            gateway,
        }
    }
}

pub struct Worker {
    pub id: usize,
    published: Arc<Published>,
    /// The generation this worker serves new requests with.
    current: RefCell<Rc<Generation>>,
    /// This worker's share of the response cache.
    pub cache: Rc<RefCell<crate::cache::Shard>>,
    /// Access log lines not yet handed to their writers.
    pub log_batches: RefCell<crate::observe::access_log::Batches>,
    read_buffers: RefCell<Vec<BytesMut>>,
    write_buffers: RefCell<Vec<Vec<u8>>>,
    date: RefCell<DateCache>,
    request_seed: u64,
    request_seq: Cell<u64>,
    /// The state of the `traceparent` generator.
    trace_state: Cell<u64>,
    in_flight: Cell<usize>,
    draining: Cell<bool>,
    drain_waiters: RefCell<Vec<Waker>>,
}

impl Worker {
    pub fn new(id: usize, published: Arc<Published>, seed: u64, workers: usize) -> Worker {
        let gateway = published.current();
        let cache_share = gateway.config.cache_memory / workers.max(1) as u64;
        let pools = Pools::new(&gateway.upstreams);
        let current = Generation::new(gateway, pools, id, &published);
        Worker {
            id,
            published,
            current: RefCell::new(Rc::new(current)),
            cache: Rc::new(RefCell::new(crate::cache::Shard::new(cache_share))),
            log_batches: RefCell::default(),
            read_buffers: RefCell::default(),
            write_buffers: RefCell::default(),
            date: RefCell::default(),
            request_seed: seed ^ (id as u64).rotate_left(56),
            request_seq: Cell::new(0),
            trace_state: Cell::new(
                seed.rotate_left(17) ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            in_flight: Cell::new(0),
            draining: Cell::new(false),
            drain_waiters: RefCell::default(),
        }
    }

    /// The generation to start a request on: the one serving now. One relaxed load when
    /// no reload happened since the last call.
    pub fn generation(&self) -> Rc<Generation> {
        let current = self.current.borrow();
        if self.published.generation.load(Ordering::Relaxed) == current.gateway.generation {
            return current.clone();
        }
        drop(current);
        self.take_up_published()
    }

    /// Switches to the published generation: new pools (with the idle connections to
    /// targets it still has) and new leases. Leased tokens of the old generation are not
    /// carried over: at most a lease per bucket is left unused, never handed out twice.
    fn take_up_published(&self) -> Rc<Generation> {
        let gateway = self.published.current();
        let mut pools = Pools::new(&gateway.upstreams);
        {
            let old = self.current.borrow();
            if let Ok(mut old_pools) = old.pools.try_borrow_mut() {
                pools.take_idle_from(&mut old_pools);
            };
        }
        let next = Rc::new(Generation::new(gateway, pools, self.id, &self.published));
        *self.current.borrow_mut() = next.clone();
        next
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

    /// The `Date` header value at `now` (a request's clock reading).
    pub fn date(&self, now: crate::clock::Now) -> [u8; 29] {
        let mut d = self.date.borrow_mut();
        let mut out = [0u8; 29];
        out.copy_from_slice(d.at(now.wall_secs()));
        out
    }

    /// A new `traceparent`: version 00, a random trace id and parent id, sampled.
    pub fn next_traceparent(&self, out: &mut [u8; 55]) {
        // wyrand: fast, and random enough for ids (not for secrets).
        let next = || {
            let s = self.trace_state.get().wrapping_add(0xa076_1d64_78bd_642f);
            self.trace_state.set(s);
            let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) ^ t) as u64 | 1
        };
        let hex = |out: &mut [u8], word: u64| {
            for (pair, byte) in out.chunks_exact_mut(2).zip(word.to_be_bytes()) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
            }
        };
        out[..3].copy_from_slice(b"00-");
        hex(&mut out[3..19], next());
        hex(&mut out[19..35], next());
        out[35] = b'-';
        hex(&mut out[36..52], next());
        out[52..].copy_from_slice(b"-01");
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

    pub fn start_drain(&self) {
        self.draining.set(true);
        for w in self.drain_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Every worker's metrics cells, when metrics are on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.published.metrics.as_ref()
    }

    /// Requests in flight on this worker.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// A listener socket a reload bound for this worker, if one is waiting.
    pub fn take_new_listener(&self) -> Option<(SocketAddr, std::net::TcpListener)> {
        self.published.inbox[self.id].pop()
    }

    /// Resolves when the worker starts draining.
    pub fn drained(self: &Rc<Self>) -> DrainWait {
        DrainWait(self.clone())
    }
}

/// Keeps a request counted as in flight.
pub struct InFlight(Rc<Worker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// Resolves when the worker starts draining ([`Worker::drained`]).
pub struct DrainWait(Rc<Worker>);

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
