//! One request on a connection, in processing order: the redirect of an HTTPS-only
//! listener, routing, the body size check, the route's pipeline of stages
//! ([`crate::stages`]), then its integration (a mock here, the HTTP integration in
//! `forward.rs`). Every answer goes through the responder (`respond.rs`).
//!
//! [`Exchange`] is the request's state: its facts, its one clock reading, its id, what the
//! stages took and its record. It lives in the connection and is reset when a head is
//! complete. Must not: write to the socket itself (the responder does), or read the clock
//! again (the reading is in `ex.now`).

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::conn::{Connection, Outcome};
use crate::auth::KeyPlan;
use crate::clock::Now;
use crate::http::{BodyFraming, RequestHead};
use crate::observe::{Record, Refusal};
use crate::router::RouteMatch;
use crate::stages::{self, Integrate, Stage, Step, Taken};
use crate::worker::{Generation, Worker};

/// What the request's head said, kept after the head's bytes are consumed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestFacts {
    /// The method, as an index into [`crate::observe::metrics::METHODS`].
    pub method: u8,
    pub is_head: bool,
    pub http10: bool,
    pub keep_alive: bool,
    pub idempotent: bool,
    pub expect_continue: bool,
}

/// The request in progress on a connection.
#[derive(Default)]
pub(super) struct Exchange {
    pub facts: RequestFacts,
    /// The request's one clock reading, taken when its head was complete.
    pub now: Now,
    /// The request id, the `traceparent` (the client's, or one Weir made), then (when the
    /// listener logs) the method, target, `User-Agent` and `Referer` copied from the head:
    /// the access log's line is written after the head's bytes are gone. Reused from
    /// request to request.
    text: Vec<u8>,
    /// Where each of those ends in `text`.
    ends: [u32; 6],
    /// The `traceparent` in `text` is Weir's: it goes upstream instead of the client's.
    pub trace_made: bool,
    /// A `100 Continue` went to the client (an upstream's own 100 is then not relayed).
    pub sent_continue: bool,
    /// What the route's stages left for the response and the relay.
    pub taken: Taken,
    pub record: Record,
}

impl Exchange {
    /// Starts a request whose head is complete in `buf`.
    pub fn begin(
        &mut self,
        worker: &Worker,
        gen: &Generation,
        listener: usize,
        buf: &BytesMut,
        head: &RequestHead,
    ) {
        self.facts = RequestFacts {
            method: crate::observe::metrics::method_index(head.method.of(buf)),
            is_head: head.is_head(buf),
            http10: head.minor_version == 0,
            keep_alive: head.keep_alive,
            idempotent: head.is_idempotent(buf),
            expect_continue: head.expect_continue,
        };
        self.sent_continue = false;
        self.taken.reset();
        self.new_request_id(worker, Some((buf, head)));
        if gen.gateway.access_logs[listener].is_some() {
            self.keep_trace(buf, head);
            self.keep_for_log(buf, head);
        }
        self.start_record(gen, listener);
        self.record.bytes_in = head.len as u64;
    }

    /// Starts a request whose head was refused (or never came): only an error is sent.
    pub fn begin_refused(&mut self, worker: &Worker, gen: &Generation, listener: usize) {
        self.facts = RequestFacts::default();
        self.taken.reset();
        self.new_request_id(worker, None);
        self.start_record(gen, listener);
    }

    fn start_record(&mut self, gen: &Generation, listener: usize) {
        self.now = crate::clock::now();
        self.record = Record {
            start: self.now,
            generation: gen.gateway.generation,
            listener: listener as u32,
            ..Record::default()
        };
    }

    /// Uses the client's `X-Request-Id` when it sent a usable one, else makes one.
    pub fn new_request_id(&mut self, worker: &Worker, from: Option<(&[u8], &RequestHead)>) {
        self.text.clear();
        match from.and_then(|(buf, head)| Some(head.request_id?.of(buf))) {
            Some(id) => self.text.extend_from_slice(id),
            None => {
                let mut id = [0u8; 32];
                worker.next_request_id(&mut id);
                self.text.extend_from_slice(&id);
            }
        }
        let end = self.text.len() as u32;
        self.ends = [end; 6];
        self.trace_made = false;
    }

    pub fn request_id(&self) -> &[u8] {
        &self.text[..self.ends[0] as usize]
    }

    /// Keeps a copy of the client's valid `traceparent` when the access log will want its
    /// trace id (the upstream gets the client's field as it came, without a copy).
    pub fn keep_trace(&mut self, buf: &[u8], head: &RequestHead) {
        self.text.truncate(self.ends[0] as usize);
        if let Some(span) = head.traceparent {
            self.text.extend_from_slice(span.of(buf));
        }
        let end = self.text.len() as u32;
        self.ends[1..].fill(end);
    }

    /// Starts a trace for a request going upstream without a valid `traceparent` (W3C
    /// Trace Context): made only here, so requests that never go upstream pay nothing.
    pub fn make_trace(&mut self, worker: &Worker) {
        if self.trace_made || self.ends[1] > self.ends[0] {
            return;
        }
        let mut value = [0u8; 55];
        worker.next_traceparent(&mut value);
        let at = self.ends[0] as usize;
        self.text.splice(at..at, value);
        for end in &mut self.ends[1..] {
            *end += 55;
        }
        self.trace_made = true;
    }

    /// The request's `traceparent` (empty when it has none).
    pub fn traceparent(&self) -> &[u8] {
        &self.text[self.ends[0] as usize..self.ends[1] as usize]
    }

    /// The trace id in the request's `traceparent` (empty when it has none).
    pub fn trace_id(&self) -> &[u8] {
        self.traceparent().get(3..35).unwrap_or(b"")
    }

    /// Copies what the access log needs of the head (after the request id).
    pub fn keep_for_log(&mut self, buf: &[u8], head: &RequestHead) {
        /// A target longer than this is logged cut (nginx logs it whole; a line per
        /// request should not carry 64 KiB).
        const MAX_TARGET: usize = 4096;
        self.text.truncate(self.ends[1] as usize);
        let mut user_agent: &[u8] = b"";
        let mut referer: &[u8] = b"";
        for h in &head.headers {
            let name = h.name.of(buf);
            if name.eq_ignore_ascii_case(b"user-agent") {
                user_agent = h.value.of(buf);
            } else if name.eq_ignore_ascii_case(b"referer") {
                referer = h.value.of(buf);
            }
        }
        let target = head.target.of(buf);
        let parts = [
            head.method.of(buf),
            &target[..target.len().min(MAX_TARGET)],
            &user_agent[..user_agent.len().min(MAX_TARGET)],
            &referer[..referer.len().min(MAX_TARGET)],
        ];
        for (i, part) in parts.iter().enumerate() {
            self.text.extend_from_slice(part);
            self.ends[i + 2] = self.text.len() as u32;
        }
    }

    /// The `i`th piece kept by [`Exchange::keep_for_log`]: method, target, user agent,
    /// referer.
    pub fn kept(&self, i: usize) -> &[u8] {
        &self.text[self.ends[i + 1] as usize..self.ends[i + 2] as usize]
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// One request, from routing to the end of its response.
    pub(super) async fn exchange(&mut self) -> Outcome {
        self.ensure_write_buffer();
        let gen = self.gen.clone();
        let gateway = &*gen.gateway;
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
            RouteMatch::NotFound => return self.respond_error(404, Refusal::NotFound, None).await,
            RouteMatch::MethodNotAllowed { allow } => {
                return self
                    .respond_error(405, Refusal::MethodNotAllowed, Some(allow))
                    .await
            }
        };
        self.ex.record.route = Some(route_id as u32);
        self.ex.record.route_key = gateway.route_keys[route_id];
        let route = &gateway.config.routes[route_id];
        if let BodyFraming::Length(n) = self.head.framing {
            if n > route.max_body {
                return self.write_error(413, Refusal::TooLarge, None, true).await;
            }
        }

        // The route's pipeline: each stage continues, answers, or waits and resumes.
        let pipeline = &gateway.pipelines[route_id];
        let mut key_plan = None;
        let mut reply = None;
        for stage in pipeline.stages.iter() {
            let mut step = self.run_stage(&gen, stage, route_id, &mut key_plan, None);
            while let Step::Wait(wait) = step {
                // Boxed: waiting is rare (a coalesced miss), and the connection future
                // should not carry a timer for it on every request.
                let finished = Box::pin(wait.done()).await;
                step = self.run_stage(&gen, stage, route_id, &mut key_plan, Some(finished));
            }
            if let Step::Reply(r) = step {
                reply = Some(r);
                break;
            }
        }
        if let Some(reply) = reply {
            return self.reply(route_id, reply).await;
        }

        match &pipeline.integrate {
            Integrate::Mock(mock) => {
                if !self.discard_body(route.max_body).await {
                    return Outcome::Close;
                }
                self.respond_mock(mock).await
            }
            Integrate::Http(integration) => self.forward(route_id, integration).await,
        }
    }

    /// Runs one stage of the route's pipeline (`resumed`: it waited, and whether what it
    /// waited for finished). The API key stage leaves the key's plan in `key_plan` for the
    /// throttle stage.
    fn run_stage<'g>(
        &mut self,
        gen: &'g Generation,
        stage: &'g Stage,
        route_id: usize,
        key_plan: &mut Option<&'g KeyPlan>,
        resumed: Option<bool>,
    ) -> Step<'g> {
        let gateway = &*gen.gateway;
        let req = stages::Request {
            buf: &self.buf,
            head: &self.head,
            is_head: self.ex.facts.is_head,
            peer: self.peer_ip,
            listener: self.listener,
            route: route_id,
            now: self.ex.now,
        };
        let taken = &mut self.ex.taken;
        let ctx = gateway.stage_ctx(&self.worker.cache, self.worker.id);
        match (stage, resumed) {
            (Stage::ApiKey, _) => match stages::api_key::run(&gateway.keys, &req, taken) {
                Ok(plan) => {
                    *key_plan = plan;
                    Step::Continue
                }
                Err(reply) => Step::Reply(reply),
            },
            (Stage::Throttle(t), _) => stages::throttle::run(
                gateway.throttle_shared(),
                t,
                &gen.leases,
                *key_plan,
                &req,
                taken,
            ),
            (Stage::Cache(rc), None) => stages::cache::lookup(&ctx, rc, &req, taken),
            (Stage::Cache(_), Some(finished)) => stages::cache::resume(&ctx, &req, taken, finished),
            (Stage::Invalidate, _) => {
                stages::cache::invalidate_on_request(&req, taken);
                Step::Continue
            }
        }
    }

    /// A stage's answer.
    async fn reply(&mut self, route_id: usize, reply: stages::Reply<'_>) -> Outcome {
        match reply {
            stages::Reply::Forbidden => self.respond_error(403, Refusal::InvalidApiKey, None).await,
            stages::Reply::Throttled { bucket, wait_nanos } => {
                self.respond_throttled(bucket, wait_nanos).await
            }
            stages::Reply::QuotaExceeded { wait_secs } => {
                self.respond_quota_exceeded(wait_secs).await
            }
            stages::Reply::Stored {
                stored,
                status,
                not_modified,
                refresh,
            } => {
                self.ex.taken.cache.status = Some(status);
                if let Some(ticket) = refresh {
                    self.refresh_in_background(route_id, &stored, ticket);
                }
                let now = self.ex.now;
                self.respond_stored(&stored, status, not_modified, true, now)
                    .await
            }
        }
    }
}
