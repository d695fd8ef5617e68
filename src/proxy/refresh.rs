//! `stale-while-revalidate`: one background request refreshes a stale cache entry while
//! this and later requests get the stale one. It runs as a connection of its own whose
//! client is a [`Sink`], so it takes the same upstream path as any miss (pools, retries,
//! health, the cache's store at the end).
//!
//! Must not: answer anyone (what it writes is swallowed), or outlive its fill ticket
//! (waiters for the key are released when it ends, whatever happened).

use std::rc::Rc;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use super::conn::Connection;
use crate::cache::Stored;
use crate::stages::cache::FillTicket;
use crate::stages::Integrate;

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// Starts the background refresh of `stale` for the request in `buf`, on this
    /// request's generation (`route_id` is an index into it).
    pub(super) fn refresh_in_background(
        &mut self,
        route_id: usize,
        stale: &Rc<Stored>,
        ticket: FillTicket,
    ) {
        let request = self.buf[..self.head.len].to_vec();
        let stale = stale.clone();
        let (worker, gen, proto) = (self.worker.clone(), self.gen.clone(), self.proto);
        let (listener_addr, listener) = (self.listener_addr, self.listener);
        let peer = std::net::SocketAddr::new(self.peer_ip, 0);
        monoio::spawn(async move {
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
        let pipeline = &gen.gateway.pipelines[route_id];
        let (Some(rc), Integrate::Http(integration)) = (pipeline.cache(), &pipeline.integrate)
        else {
            return;
        };
        self.ex
            .begin(&self.worker, &gen, self.listener, &self.buf, &self.head);
        self.ex.new_request_id(&self.worker, None);
        let now = self.ex.now;
        let state = &mut self.ex.taken.cache;
        crate::stages::cache::prepare_refresh(rc, &self.buf, &self.head, state, stale, ticket, now);
        self.forward(route_id, integration).await;
        self.ex.taken.cache.reset();
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
