//! The request body: how much of it is already in the read buffer, reading the rest and
//! sending it on (to an upstream) or dropping it (a mock), with its framing checked and
//! its size limited as it goes.
//!
//! Must not: buffer a body whole (it streams through the connection's read buffer), or
//! leave bytes of a pipelined next request behind.

use bytes::Buf;
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::timeout;

use super::conn::Connection;
use crate::http::{BodyFraming, ChunkedDecoder};
use crate::net::read_more;
use crate::upstream::UpstreamStream;

/// Read size for request and response bodies.
pub(super) const BODY_CHUNK: usize = 32 * 1024;

/// Where the request body stands.
pub(super) enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyState {
    pub(super) fn is_done(&self) -> bool {
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

/// How reading or sending on a request body failed.
pub(super) enum BodyError {
    ClientGone,
    Timeout,
    TooLarge,
    Malformed,
    Upstream,
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// The body bytes already in `buf` after the head: how many, and the body's state.
    pub(super) fn buffered_body(&mut self, max_body: u64) -> Result<(usize, BodyState), BodyError> {
        let after_head = &self.buf[self.head.len..];
        let mut state = match self.head.framing {
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::None | BodyFraming::UntilClose => BodyState::Length(0),
        };
        let taken = state.take(after_head, max_body)?;
        self.ex.record.bytes_in += taken as u64;
        Ok((taken, state))
    }

    /// Reads and drops the request body (mock integrations ignore it, as API Gateway's do).
    /// Returns false if the connection must close (after answering the error, if any).
    pub(super) async fn discard_body(&mut self, max_body: u64) -> bool {
        if !self.head.has_body() {
            self.buf.advance(self.head.len);
            return true;
        }
        if self.ex.facts.expect_continue {
            // The client waits before sending the body; answer without it and close.
            self.ex.facts.keep_alive = false;
            self.buf.advance(self.head.len);
            return true;
        }
        let (taken, mut state) = match self.buffered_body(max_body) {
            Ok(b) => b,
            Err(e) => {
                self.respond_body_error(e).await;
                return false;
            }
        };
        self.buf.advance(self.head.len + taken);
        match self.pump_body(None, &mut state, max_body).await {
            Ok(()) => true,
            Err(e) => {
                self.respond_body_error(e).await;
                false
            }
        }
    }

    /// Moves the rest of the request body from the client to `upstream` (or nowhere),
    /// one read at a time, keeping any pipelined bytes that follow it.
    pub(super) async fn pump_body(
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
            self.ex.record.bytes_in += take as u64;
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
}
