//! The HTTP integration: choose a target, send the request (head rewritten, body streamed),
//! read the response head after any 1xx, relay the body with its own framing, and retry
//! where that is safe (see docs/config.md, "Retries"). The route's pipeline sees the
//! response head, each body piece and the end ([`crate::stages::Pipeline::on_upstream_head`]
//! and the rest), so a stage (the cache) can store it or answer instead.
//!
//! Must not: copy a large body piece (it goes from the read buffer to the socket), reuse
//! an upstream connection whose framing was broken, or retry what may have had an effect.
//! A target's failure (no response, an invalid head, a timeout, a body cut short) is
//! logged where it is handled, rate-limited per target ([`crate::log`]); connect failures
//! are logged by [`upstream::connect`].

use bytes::{Buf, BytesMut};
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::timeout;

use super::body::{BodyError, BodyState, BODY_CHUNK};
use super::conn::{Connection, Outcome};
use crate::config::Upstream;
use crate::http::{parse_response, BodyFraming, ChunkedDecoder};
use crate::net::read_more;
use crate::observe::{Refusal, UpstreamRecord};
use crate::rewrite::{self, ForwardRequest, HttpIntegration};
use crate::stages::cache::OnResponse;
use crate::upstream::{self, ConnectError, Tried, UpstreamStream};

/// How relaying a response failed.
enum RelayError {
    /// Not one byte of a response arrived: the connection was dead or reset.
    NothingReceived,
    /// No complete response head within the response timeout.
    Timeout,
    /// The upstream sent something that is not a valid response head.
    BadHead,
    /// The head went to the client, then the client failed: close.
    Broken,
    /// The head went to the client, then the upstream failed (why): close.
    UpstreamBroke(&'static str),
}

enum Failure {
    Body(BodyError),
    Relay(RelayError),
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// Forwards the request on route `route_id` to its upstream group.
    pub(super) async fn forward(
        &mut self,
        route_id: usize,
        integration: &HttpIntegration,
    ) -> Outcome {
        let gen = self.gen.clone();
        let route = &gen.gateway.config.routes[route_id];
        let group = integration.upstream;
        let upstream = &gen.gateway.config.upstreams[group];
        let health = &gen.gateway.upstreams[group].health;

        let (buffered, mut body) = match self.buffered_body(route.max_body) {
            Ok(b) => b,
            Err(e) => return self.respond_body_error(e).await,
        };
        let whole_body_buffered = body.is_done();
        if self.head.traceparent.is_none() && gen.gateway.config.make_traceparent {
            self.ex.make_trace(&self.worker);
        }
        let mut tried = Tried::default();
        // What the client gets once every target was tried (`pick` gives up only then).
        let mut failure = (502, Refusal::IntegrationFailure);
        let mut fresh_only = false;
        let mut retries: u16 = 0;

        loop {
            let picked = gen.pools.borrow_mut().groups[group].pick(tried, self.ex.now);
            let Some(target) = picked else {
                return self.fail(route_id, failure, true).await;
            };
            if let Some(previous) = self.ex.record.upstream {
                retries = previous.retries.saturating_add(1);
            }
            self.ex.record.upstream = Some(UpstreamRecord {
                group: group as u32,
                target: target as u32,
                retries,
                ..UpstreamRecord::default()
            });
            let pooled = if fresh_only {
                None
            } else {
                gen.pools.borrow_mut().groups[group].take_idle(target, self.ex.now)
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => match upstream::connect(&gen.gateway.upstreams[group], target).await {
                    Ok(c) => c,
                    Err(e) => {
                        // Nothing was sent: any method may go to another target.
                        health[target].failure(upstream, target);
                        tried.add(target);
                        failure = match e {
                            ConnectError::Timeout => (504, Refusal::IntegrationTimeout),
                            ConnectError::Io(_) | ConnectError::Tls(_) => {
                                (502, Refusal::IntegrationFailure)
                            }
                        };
                        continue;
                    }
                },
            };

            // The head and every body byte already read go out in one write.
            self.out.clear();
            let mut out = std::mem::take(&mut self.out);
            let taken = &self.ex.taken;
            rewrite::request_head(
                &mut out,
                &ForwardRequest {
                    buf: &self.buf,
                    head: &self.head,
                    route: integration,
                    target_authority: upstream.targets[target].authority.as_bytes(),
                    client_ip: &self.client_ip[..self.client_ip_len],
                    request_id: self.ex.request_id(),
                    proto: self.proto,
                    extra: &self.client_cert,
                    drop_conditionals: taken.cache.store,
                    validators: &taken.cache.validators,
                    hidden: [
                        if route.forward_api_key {
                            b""
                        } else {
                            gen.gateway.config.api_key_header.as_bytes()
                        },
                        route.api_key_id_header.as_deref().unwrap_or("").as_bytes(),
                    ],
                    traceparent: if self.ex.trace_made {
                        self.ex.traceparent()
                    } else {
                        b""
                    },
                    api_key_id: route.api_key_id_header.as_deref().and_then(|name| {
                        let key = taken.api_key?;
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
            if let Err(e) = written {
                if reused {
                    // A pooled connection found dead before the request was written: any
                    // method may be retried, on a fresh connection.
                    fresh_only = true;
                } else {
                    let addr = upstream.targets[target].addr;
                    crate::warn_limited!(key = addr;
                        "{}: cannot send the request ({e})",
                        upstream.target_label(target)
                    );
                    health[target].failure(upstream, target);
                    tried.add(target);
                    failure = (502, Refusal::IntegrationFailure);
                }
                continue;
            }

            gen.pools.borrow_mut().groups[group].started(target);
            if let Some(series) = &gen.series {
                series.target_busy(group, target, false);
            }
            let result = self
                .send_rest_and_relay(
                    route_id,
                    &mut conn,
                    &mut body,
                    buffered,
                    whole_body_buffered,
                    upstream,
                )
                .await;
            gen.pools.borrow_mut().groups[group].finished(target);
            if let Some(series) = &gen.series {
                series.target_busy(group, target, true);
            }

            match result {
                Ok((upstream_reusable, client_keep)) => {
                    health[target].success(upstream, target);
                    if upstream_reusable {
                        gen.pools.borrow_mut().groups[group].put_idle(target, conn, self.ex.now);
                    }
                    return Outcome::keep(client_keep);
                }
                Err(Failure::Body(e)) => return self.respond_body_error(e).await,
                Err(Failure::Relay(RelayError::NothingReceived)) => {
                    // The request was written and nothing came back. A reused connection
                    // was probably closed by the upstream while idle (not the target's
                    // fault); a fresh one failing counts against the target.
                    if reused {
                        fresh_only = true;
                    } else {
                        let addr = upstream.targets[target].addr;
                        crate::warn_limited!(key = addr;
                            "{}: closed the connection without a response",
                            upstream.target_label(target)
                        );
                        health[target].failure(upstream, target);
                        tried.add(target);
                    }
                    // Only an idempotent request whose body is still at hand is sent again.
                    failure = (502, Refusal::IntegrationFailure);
                    if whole_body_buffered && self.ex.facts.idempotent {
                        continue;
                    }
                    return self.fail(route_id, failure, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::Timeout)) => {
                    let addr = upstream.targets[target].addr;
                    crate::warn_limited!(key = addr;
                        "{}: response timed out after {:?}",
                        upstream.target_label(target),
                        upstream.response_timeout
                    );
                    health[target].failure(upstream, target);
                    let timeout = (504, Refusal::IntegrationTimeout);
                    return self.fail(route_id, timeout, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::BadHead)) => {
                    let addr = upstream.targets[target].addr;
                    crate::warn_limited!(key = addr;
                        "{}: invalid response head",
                        upstream.target_label(target)
                    );
                    health[target].failure(upstream, target);
                    let bad = (502, Refusal::IntegrationFailure);
                    return self.fail(route_id, bad, whole_body_buffered).await;
                }
                Err(Failure::Relay(RelayError::Broken)) => {
                    self.ex.record.refusal = Some(Refusal::UpstreamBroke);
                    return Outcome::Close;
                }
                Err(Failure::Relay(RelayError::UpstreamBroke(why))) => {
                    let addr = upstream.targets[target].addr;
                    crate::warn_limited!(key = addr;
                        "{}: response cut short: {why}",
                        upstream.target_label(target)
                    );
                    self.ex.record.refusal = Some(Refusal::UpstreamBroke);
                    return Outcome::Close;
                }
            }
        }
    }

    /// The upstream failed with `status`: a stored response standing in if the route's
    /// stages have one, else the error (and a close). `consume`: the head is still in `buf`.
    async fn fail(
        &mut self,
        route_id: usize,
        (status, refusal): (u16, Refusal),
        consume: bool,
    ) -> Outcome {
        let gen = self.gen.clone();
        let pipeline = &gen.gateway.pipelines[route_id];
        let now = self.ex.now;
        match pipeline.stand_in(&mut self.ex.taken, &self.buf, &self.head, now) {
            Some((stored, not_modified)) => {
                let status = crate::cache::Status::Stale;
                self.respond_stored(&stored, status, not_modified, consume, now)
                    .await
            }
            None => self.write_error(status, refusal, None, true).await,
        }
    }

    /// Sends what remains of the request body, then relays the response. On success returns
    /// (upstream connection reusable, client connection stays open).
    async fn send_rest_and_relay(
        &mut self,
        route_id: usize,
        conn: &mut UpstreamStream,
        body: &mut BodyState,
        buffered: usize,
        whole_body_buffered: bool,
        upstream: &Upstream,
    ) -> Result<(bool, bool), Failure> {
        let max_body = self.gen.gateway.config.routes[route_id].max_body;
        if !whole_body_buffered {
            // From here on the request cannot be replayed: its body streams through.
            self.buf.advance(self.head.len + buffered);
            if self.ex.facts.expect_continue && buffered == 0 {
                self.respond_continue()
                    .await
                    .map_err(|_| Failure::Body(BodyError::ClientGone))?;
            }
            self.pump_body(Some(conn), body, max_body)
                .await
                .map_err(Failure::Body)?;
            let result = self.relay_response(route_id, conn, upstream).await;
            return result.map_err(Failure::Relay);
        }
        let result = self.relay_response(route_id, conn, upstream).await;
        if result.is_ok() {
            self.buf.advance(self.head.len + buffered);
        }
        result.map_err(Failure::Relay)
    }

    /// Reads the upstream's response and streams it to the client with its own framing.
    async fn relay_response(
        &mut self,
        route_id: usize,
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
                match parse_response(&ubuf, self.ex.facts.is_head, &mut self.response) {
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
                        if !(self.response.status == 100 && self.ex.sent_continue)
                            && self.respond_informational(&ubuf).await.is_err()
                        {
                            self.ubuf = ubuf;
                            return Err(RelayError::Broken);
                        }
                        ubuf.advance(self.response.len);
                        if ubuf.is_empty() {
                            break;
                        }
                    }
                    Ok(true) => {
                        let (answer, head_at) = self.upstream_head_arrived(route_id, &ubuf);
                        if let OnResponse::Serve(stored, status, reusable) = answer {
                            ubuf.clear();
                            self.ubuf = ubuf;
                            let keep = self
                                .respond_stored(&stored, status, false, false, head_at)
                                .await;
                            return Ok((reusable, keep == Outcome::KeepAlive));
                        }
                        return self
                            .relay_body(route_id, conn, ubuf, upstream, head_at)
                            .await;
                    }
                }
            }
        }
    }

    /// The upstream's final head is at the start of `ubuf`: record it and let the route's
    /// stages see it. Returns what they say and when the head arrived.
    fn upstream_head_arrived(
        &mut self,
        route_id: usize,
        ubuf: &[u8],
    ) -> (OnResponse, crate::clock::Now) {
        // The second clock reading: the upstream's time, and the cache's response delay
        // and storage time.
        let head_at = crate::clock::now();
        if let Some(u) = &mut self.ex.record.upstream {
            u.status = self.response.status;
            u.nanos = head_at.since(self.ex.now);
        }
        let gen = &*self.gen;
        let date = self.worker.date(head_at);
        let ctx = gen.gateway.stage_ctx(&self.worker.cache, self.worker.id);
        let answer = gen.gateway.pipelines[route_id].on_upstream_head(
            &ctx,
            &mut self.ex.taken,
            (&self.buf, &self.head),
            ubuf,
            &self.response,
            head_at,
            &date,
        );
        (answer, head_at)
    }

    /// Writes the response head and streams the body. Consumes the upstream buffer.
    async fn relay_body(
        &mut self,
        route_id: usize,
        conn: &mut UpstreamStream,
        mut ubuf: BytesMut,
        upstream: &Upstream,
        head_at: crate::clock::Now,
    ) -> Result<(bool, bool), RelayError> {
        let framing = self.response.framing;
        let mut close = !self.keeps_alive();
        let until_close = framing == BodyFraming::UntilClose;
        // An HTTP/1.0 client cannot take chunked: a body that ends at close closes it too.
        if until_close && self.ex.facts.http10 {
            close = true;
        }
        let rechunk = until_close && !close;
        self.respond_upstream_head(&ubuf, close, rechunk);
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
                            return Err(RelayError::UpstreamBroke("invalid chunked body"));
                        }
                    },
                    _ => ubuf.len(),
                }
            };
            self.gen.gateway.pipelines[route_id].on_body(&mut self.ex.taken, &ubuf[..take]);
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
                match self.send_bytes(ubuf.slice(..take)).await {
                    Ok(slice) => ubuf = slice.into_inner(),
                    Err(()) => return Err(RelayError::Broken),
                }
                ubuf.advance(take);
            }
            first = false;
            if done {
                break;
            }
            if !self.out.is_empty() && self.send().await.is_err() {
                self.ubuf = ubuf;
                return Err(RelayError::Broken);
            }
            ubuf.clear();
            match timeout(upstream.response_timeout, read_more(conn, ubuf, BODY_CHUNK)).await {
                Err(_) => return Err(RelayError::UpstreamBroke("the body timed out")),
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
                    return Err(RelayError::UpstreamBroke("the connection ended mid-body"));
                }
                Ok((Ok(_), b)) => ubuf = b,
            }
        }
        if !self.out.is_empty() && self.send().await.is_err() {
            self.ubuf = ubuf;
            return Err(RelayError::Broken);
        }
        let gateway = &self.gen.gateway;
        let ctx = gateway.stage_ctx(&self.worker.cache, self.worker.id);
        let route_key = gateway.route_keys[route_id];
        gateway.pipelines[route_id].on_end(&ctx, &mut self.ex.taken, route_key, head_at);
        // Bytes after the end of the response mean the upstream broke framing: never reuse.
        let reusable = clean && self.response.keep_alive && ubuf.is_empty();
        ubuf.clear();
        self.ubuf = ubuf;
        Ok((reusable, !close))
    }
}

pub(super) fn chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (4 * i)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
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
