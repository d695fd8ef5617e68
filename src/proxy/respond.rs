//! The responder: every response Weir writes to a client goes through here (errors,
//! refusals, redirects, mocks, stored responses, the upstream's head and body, `100
//! Continue` and relayed 1xx heads). Every final head ends in [`Connection::end_head`],
//! which appends the headers the stages left for any response (RateLimit today, CORS
//! next), `Date`, `X-Request-Id` and `Connection`, and records the status; every byte
//! leaves through [`Connection::send`] or [`Connection::send_bytes`], which count it.
//!
//! Must not: decide what to answer (the exchange and the stages do), or format through
//! `fmt` (everything is appended to the connection's reused buffer).

use std::io;

use bytes::Buf;
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::timeout;

use super::conn::{Connection, Outcome};
use crate::cache::{Status, Stored};
use crate::clock::Now;
use crate::http::write::{push_u64, MockResponse, Trailer, CONTINUE};
use crate::http::ResponseHead;
use crate::limit::{ceil_secs, write_fields, SharedBucket};
use crate::observe::Refusal;
use crate::rewrite::{self, ForwardResponse};

/// Bodies up to this size are copied into the head's write; larger ones are written
/// straight from the stored bytes.
const INLINE_BODY: usize = 16 * 1024;

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// Ends a final response head in `out`: the stages' headers, `Date` (unless the head
    /// has one: pass `date = false`), `X-Request-Id`, `Connection`; records `status`.
    fn end_head(&mut self, status: u16, close: bool, date: bool) {
        self.ex.record.status = status;
        // A stored head carries its origin's Date: the cache hit skips formatting one.
        let now = if date {
            self.worker.date(self.ex.now)
        } else {
            [0; 29]
        };
        Trailer {
            date: if date { &now } else { b"" },
            request_id: self.ex.request_id(),
            close,
            keep_alive_10: self.ex.facts.http10 && !close,
            extra: &self.ex.taken.headers,
        }
        .write(&mut self.out);
        // The head is all `out` holds: each writer starts the head in an empty buffer.
        self.ex.record.head_bytes = self.out.len() as u32;
    }

    /// Writes `out` to the client and clears it.
    pub(super) async fn send(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let len = out.len() as u64;
        let send_timeout = self.gen.gateway.config.http.body_timeout;
        match timeout(send_timeout, self.stream.write_all(out)).await {
            Ok((res, mut out)) => {
                out.clear();
                self.out = out;
                if res.is_ok() {
                    self.ex.record.bytes_out += len;
                }
                res.map(|_| ())
            }
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes `bytes` to the client without copying them (after what `out` holds).
    pub(super) async fn send_bytes<B: IoBuf>(&mut self, bytes: B) -> Result<B, ()> {
        if !self.out.is_empty() {
            self.send().await.map_err(|_| ())?;
        }
        let len = bytes.bytes_init() as u64;
        let send_timeout = self.gen.gateway.config.http.body_timeout;
        match timeout(send_timeout, self.stream.write_all(bytes)).await {
            Ok((Ok(_), bytes)) => {
                self.ex.record.bytes_out += len;
                Ok(bytes)
            }
            _ => Err(()),
        }
    }

    /// Sends `out` and says whether the connection stays open.
    async fn send_final(&mut self, close: bool) -> Outcome {
        Outcome::keep(self.send().await.is_ok() && !close)
    }

    /// Answers with an error before the request body was read. The connection stays open
    /// only if nothing of the request remains unread.
    pub(super) async fn respond_error(
        &mut self,
        status: u16,
        refusal: Refusal,
        allow: Option<&[u8]>,
    ) -> Outcome {
        let close = self.consume_head_unless_body();
        self.write_error(status, refusal, allow, close).await
    }

    /// Drops the request head from the buffer if no body follows it; returns whether a
    /// body is left unread (the connection must then close after the answer).
    fn consume_head_unless_body(&mut self) -> bool {
        let unread_body = self.head.has_body();
        if !unread_body {
            self.buf.advance(self.head.len);
        }
        unread_body
    }

    /// Writes an error response (`{"message":"<reason>"}`), with `Allow` if given.
    pub(super) async fn write_error(
        &mut self,
        status: u16,
        refusal: Refusal,
        allow: Option<&[u8]>,
        force_close: bool,
    ) -> Outcome {
        let allow_header = |out: &mut Vec<u8>| {
            if let Some(allow) = allow {
                out.extend_from_slice(b"allow: ");
                out.extend_from_slice(allow);
                out.extend_from_slice(b"\r\n");
            }
        };
        let message = crate::http::reason(status);
        self.write_error_saying(status, message, refusal, force_close, allow_header)
            .await
    }

    /// Writes an error response with its own message, `{"message":"<message>"}`;
    /// `headers` appends header lines of its own.
    async fn write_error_saying(
        &mut self,
        status: u16,
        message: &str,
        refusal: Refusal,
        force_close: bool,
        headers: impl FnOnce(&mut Vec<u8>),
    ) -> Outcome {
        self.ex.record.refusal = Some(refusal);
        let close = force_close || !self.keeps_alive();
        self.ensure_write_buffer();
        self.out.clear();
        crate::http::write::error_head(&mut self.out, status, message);
        headers(&mut self.out);
        self.end_head(status, close, true);
        crate::http::write::error_body(&mut self.out, message);
        self.send_final(close).await
    }

    /// 429 `{"message":"Limit Exceeded"}` for an exhausted quota, as API Gateway's
    /// QUOTA_EXCEEDED, with `Retry-After` at the start of the next period.
    pub(super) async fn respond_quota_exceeded(&mut self, wait_secs: u64) -> Outcome {
        let unread_body = self.consume_head_unless_body();
        let retry_after = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"retry-after: ");
            push_u64(out, wait_secs);
            out.extend_from_slice(b"\r\n");
        };
        self.write_error_saying(
            429,
            "Limit Exceeded",
            Refusal::QuotaExceeded,
            unread_body,
            retry_after,
        )
        .await
    }

    /// 429 from the throttle stage: `Retry-After` in whole seconds until the refusing
    /// bucket admits a request (at least 1), and its RateLimit fields.
    pub(super) async fn respond_throttled(
        &mut self,
        bucket: &SharedBucket,
        wait_nanos: u64,
    ) -> Outcome {
        let retry = ceil_secs(wait_nanos).max(1);
        let unread_body = self.consume_head_unless_body();
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"retry-after: ");
            push_u64(out, retry);
            out.extend_from_slice(b"\r\n");
            write_fields(out, bucket, 0, retry);
        };
        let message = crate::http::reason(429);
        let refusal = Refusal::Throttled(bucket.scope);
        self.write_error_saying(429, message, refusal, unread_body, fields)
            .await
    }

    /// The listener redirects everything to HTTPS: 301 for GET and HEAD, 308 for other
    /// methods (which keeps the method and body), to `https://<host>[:port]<target>`. The
    /// host and target were validated by the parser, so they cannot inject a header.
    pub(super) async fn respond_https_redirect(&mut self, port: u16) -> Outcome {
        let buf = &self.buf[..];
        let host = self.head.host.of(buf);
        if host.is_empty() {
            return self
                .respond_error(400, Refusal::BadRequest("no Host to redirect to"), None)
                .await;
        }
        let name = match host.iter().rposition(|&b| b == b':') {
            Some(i) if !host.ends_with(b"]") => &host[..i],
            _ => host,
        };
        let status = match self.head.method.of(buf) {
            b"GET" | b"HEAD" => 301,
            _ => 308,
        };
        // The stages' header buffer is empty on this path and serves as scratch.
        let mut location = std::mem::take(&mut self.ex.taken.headers);
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
        let unread_body = self.consume_head_unless_body();
        let message = crate::http::reason(status);
        let outcome = self
            .write_error_saying(status, message, Refusal::Redirect, unread_body, |out| {
                out.extend_from_slice(&location)
            })
            .await;
        location.clear();
        self.ex.taken.headers = location;
        outcome
    }

    /// 400 to plain HTTP on a TLS port (see [`super::refuse_plain_http`]); returns whether
    /// the answer was sent. The request ends here, with its record.
    pub(super) async fn refuse_plain_http(&mut self) -> bool {
        self.ex.begin_refused(&self.worker, &self.gen, 0);
        if let Some(index) = self.gen.gateway.listener_at(self.listener_addr) {
            self.ex.record.listener = index as u32;
        }
        let message = crate::http::write::PLAIN_HTTP_ON_TLS;
        self.write_error_saying(400, message, Refusal::PlainHttpOnTls, true, |_| {})
            .await;
        let sent = self.ex.record.bytes_out > 0;
        self.finish();
        sent
    }

    /// A body error while reading the request: its status, and a close.
    pub(super) async fn respond_body_error(&mut self, e: super::body::BodyError) -> Outcome {
        use super::body::BodyError;
        let (status, refusal) = match e {
            BodyError::ClientGone => {
                self.ex.record.refusal = Some(Refusal::ClientGone);
                return Outcome::Close;
            }
            BodyError::Timeout => (408, Refusal::Timeout),
            BodyError::TooLarge => (413, Refusal::TooLarge),
            BodyError::Malformed => (400, Refusal::BadBody),
            BodyError::Upstream => (502, Refusal::IntegrationFailure),
        };
        self.write_error(status, refusal, None, true).await
    }

    /// A mock integration's response (its body was read and dropped already).
    pub(super) async fn respond_mock(&mut self, mock: &MockResponse) -> Outcome {
        let close = !self.keeps_alive();
        self.out.clear();
        self.out.extend_from_slice(mock.head());
        self.end_head(mock.status(), close, true);
        if !self.ex.facts.is_head {
            self.out.extend_from_slice(mock.body());
        }
        self.send_final(close).await
    }

    /// Writes a stored response (or a 304 for it), aged at `now`. `consume`: the request
    /// head is still in `buf` and goes now.
    pub(super) async fn respond_stored(
        &mut self,
        stored: &Stored,
        status: Status,
        not_modified: bool,
        consume: bool,
        now: Now,
    ) -> Outcome {
        if consume {
            self.buf.advance(self.head.len);
        }
        let close = !self.keeps_alive();
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
        push_u64(out, stored.age_secs(now.ms()));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(status.header());
        // A stored head carries its origin's Date.
        self.end_head(if not_modified { 304 } else { stored.status }, close, false);
        let send_body = !not_modified && !self.ex.facts.is_head && !stored.body.is_empty();
        if send_body && stored.body.len() <= INLINE_BODY {
            self.out.extend_from_slice(&stored.body);
        } else if send_body {
            return Outcome::keep(self.send_bytes(stored.body.clone()).await.is_ok() && !close);
        }
        self.send_final(close).await
    }

    /// `100 Continue` before the body of a request that expects it.
    pub(super) async fn respond_continue(&mut self) -> io::Result<()> {
        self.out.extend_from_slice(CONTINUE);
        self.send().await?;
        self.ex.sent_continue = true;
        Ok(())
    }

    /// An upstream's 1xx head (at the start of `ubuf`), relayed as it came, minus
    /// hop-by-hop fields.
    pub(super) async fn respond_informational(&mut self, ubuf: &[u8]) -> io::Result<()> {
        rewrite::informational_head(&mut self.out, ubuf, &self.response);
        self.send().await
    }

    /// Puts the upstream's final response head (at the start of `ubuf`) in `out`; the
    /// body follows it. `rechunk`: the body runs until close and goes out chunked.
    pub(super) fn respond_upstream_head(&mut self, ubuf: &[u8], close: bool, rechunk: bool) {
        let response: &ResponseHead = &self.response;
        self.ex.record.status = response.status;
        rewrite::response_head(
            &mut self.out,
            ubuf,
            response,
            &ForwardResponse {
                request_id: self.ex.request_id(),
                close,
                keep_alive_10: self.ex.facts.http10 && !close,
                chunked: rechunk,
                extra: &self.ex.taken.headers,
                cache: self.ex.taken.cache.status.map_or(&b""[..], |s| s.header()),
            },
        );
        self.ex.record.head_bytes = self.out.len() as u32;
    }
}
