//! The access log: one line per request, formatted from its record on the worker into a
//! per-worker batch, and written by a thread of its own per destination.
//!
//! Owns: the log's settings ([`AccessLogSpec`], re-exported by `config`), the line
//! formats ([`format()`]: JSON with API Gateway's `$context` names, or nginx's combined
//! format), and the writer threads ([`Writer`]): a worker hands over whole batches through a
//! bounded queue and never waits; a batch that finds the queue full is dropped and its
//! records counted ([`Writer::dropped`]). Files are reopened on request (SIGUSR1, a
//! reload), for logrotate.
//!
//! Must not: do I/O or block on a worker (only the writer thread writes), allocate per
//! request (batches are reused), or write anything of an API key but its `id`.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::{Record, Refusal};
use crate::http::write::push_u64;

/// A worker hands its batch over once it holds this much.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches waiting for a writer; past this, new ones are dropped (and counted).
const QUEUED_BATCHES: usize = 256;

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Stderr,
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => f.write_str("stderr"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One field of a JSON line, by its API Gateway `$context` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RequestId,
    Ip,
    RequestTime,
    RequestTimeEpoch,
    HttpMethod,
    RouteKey,
    Path,
    Status,
    Protocol,
    ResponseLength,
    ResponseLatency,
    IntegrationLatency,
    IntegrationStatus,
    IntegrationErrorMessage,
    ErrorMessage,
    ErrorResponseType,
    ApiKeyId,
    Stage,
    UserAgent,
    CacheStatus,
    Upstream,
    TraceId,
}

impl Field {
    /// Every field with its name, in the default JSON line's order.
    pub const ALL: [(Field, &'static str); 22] = [
        (Field::RequestId, "requestId"),
        (Field::Ip, "ip"),
        (Field::RequestTime, "requestTime"),
        (Field::RequestTimeEpoch, "requestTimeEpoch"),
        (Field::HttpMethod, "httpMethod"),
        (Field::RouteKey, "routeKey"),
        (Field::Path, "path"),
        (Field::Status, "status"),
        (Field::Protocol, "protocol"),
        (Field::ResponseLength, "responseLength"),
        (Field::ResponseLatency, "responseLatency"),
        (Field::IntegrationLatency, "integrationLatency"),
        (Field::IntegrationStatus, "integrationStatus"),
        (Field::IntegrationErrorMessage, "integrationErrorMessage"),
        (Field::ErrorMessage, "error.message"),
        (Field::ErrorResponseType, "error.responseType"),
        (Field::ApiKeyId, "apiKeyId"),
        (Field::Stage, "stage"),
        (Field::UserAgent, "userAgent"),
        (Field::CacheStatus, "cacheStatus"),
        (Field::Upstream, "upstream"),
        (Field::TraceId, "traceId"),
    ];

    /// The field named `name` (also accepted: API Gateway's long forms
    /// `identity.sourceIp` and `identity.userAgent`, and a leading `$context.`).
    pub fn named(name: &str) -> Option<Field> {
        let name = name.strip_prefix("$context.").unwrap_or(name);
        let name = match name {
            "identity.sourceIp" => "ip",
            "identity.userAgent" => "userAgent",
            n => n,
        };
        Field::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    pub fn name(self) -> &'static str {
        Field::ALL[self as usize].1
    }

    /// `"name":`, as a JSON line writes it.
    fn key(self) -> &'static [u8] {
        KEYS[self as usize].as_bytes()
    }
}

/// Each field's `"name":`, in [`Field::ALL`]'s order (the enum's).
const KEYS: [&str; 22] = [
    "\"requestId\":",
    "\"ip\":",
    "\"requestTime\":",
    "\"requestTimeEpoch\":",
    "\"httpMethod\":",
    "\"routeKey\":",
    "\"path\":",
    "\"status\":",
    "\"protocol\":",
    "\"responseLength\":",
    "\"responseLatency\":",
    "\"integrationLatency\":",
    "\"integrationStatus\":",
    "\"integrationErrorMessage\":",
    "\"error.message\":",
    "\"error.responseType\":",
    "\"apiKeyId\":",
    "\"stage\":",
    "\"userAgent\":",
    "\"cacheStatus\":",
    "\"upstream\":",
    "\"traceId\":",
];

/// A line's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A JSON object per line with these fields, in this order.
    Json(Vec<Field>),
    /// nginx's `combined`: `ip - - [time] "request" status bytes "referer" "agent"`.
    Clf,
}

/// Which requests are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// Status 400 and above, and every answer Weir gave itself.
    Errors,
}

/// An access log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    pub destination: Destination,
    pub format: Format,
    pub only: Only,
    /// Log one in this many of the requests `only` selects (1: all of them).
    pub sample: u32,
}

impl AccessLogSpec {
    /// Whether `record` is one `only` selects (sampling is the worker's).
    pub fn selects(&self, record: &Record) -> bool {
        match self.only {
            Only::All => true,
            Only::Errors => record.status >= 400 || record.status == 0 || record.refusal.is_some(),
        }
    }
}

/// What a line says besides the record: the request's own bytes and names from the config.
/// Missing values are empty and written as `-` (as API Gateway does).
#[derive(Default)]
pub struct Entry<'a> {
    pub record: Option<&'a Record>,
    pub request_id: &'a [u8],
    pub ip: &'a [u8],
    pub method: &'a [u8],
    /// The request target as sent (path and query).
    pub target: &'a [u8],
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'a [u8],
    pub user_agent: &'a [u8],
    pub referer: &'a [u8],
    /// The listener's name.
    pub stage: &'a str,
    /// The route's path template, and whether the route lists methods (else `ANY`).
    pub route_path: &'a str,
    pub route_has_methods: bool,
    pub api_key_id: &'a str,
    /// The target's address as configured.
    pub upstream: &'a str,
    /// The W3C trace id (32 hex digits) of the request's `traceparent`.
    pub trace_id: &'a [u8],
    /// The request's start, in Unix milliseconds.
    pub epoch_ms: u64,
    /// The same second as `03/Dec/2026:21:38:05 +0000` ([`Batches::time`] keeps it).
    pub time: [u8; 26],
}

/// Appends the line for `e` (with its newline).
pub fn format(out: &mut Vec<u8>, fmt: &Format, e: &Entry) {
    match fmt {
        Format::Json(fields) => json_line(out, fields, e),
        Format::Clf => clf_line(out, e),
    }
    out.push(b'\n');
}

fn json_line(out: &mut Vec<u8>, fields: &[Field], e: &Entry) {
    let default = Record::default();
    let r = e.record.unwrap_or(&default);
    out.reserve(1024);
    out.push(b'{');
    for (i, &field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(field.key());
        let upstream = r.upstream;
        match field {
            Field::RequestId => json_str(out, e.request_id),
            Field::Ip => json_str(out, e.ip),
            Field::RequestTime => {
                out.push(b'"');
                out.extend_from_slice(&e.time);
                out.push(b'"');
            }
            Field::RequestTimeEpoch => push_u64(out, e.epoch_ms),
            Field::HttpMethod => json_str(out, e.method),
            Field::RouteKey => {
                if e.route_path.is_empty() {
                    json_str(out, b"");
                } else {
                    out.push(b'"');
                    let method = if e.route_has_methods {
                        e.method
                    } else {
                        b"ANY"
                    };
                    json_escape(out, method);
                    out.push(b' ');
                    json_escape(out, e.route_path.as_bytes());
                    out.push(b'"');
                }
            }
            Field::Path => json_str(out, path_of(e.target)),
            Field::Status => number_or_dash(out, u64::from(r.status), r.status != 0),
            Field::Protocol => json_str(out, e.protocol),
            Field::ResponseLength => {
                let body = r.bytes_out.saturating_sub(u64::from(r.head_bytes));
                number_or_dash(out, body, r.status != 0)
            }
            Field::ResponseLatency => {
                number_or_dash(out, r.end.since(r.start) / 1_000_000, r.end.nanos != 0)
            }
            Field::IntegrationLatency => match upstream {
                Some(u) if u.nanos > 0 => push_u64(out, u.nanos / 1_000_000),
                _ => json_str(out, b""),
            },
            Field::IntegrationStatus => match upstream {
                Some(u) if u.status > 0 => push_u64(out, u64::from(u.status)),
                _ => json_str(out, b""),
            },
            Field::IntegrationErrorMessage => json_str(
                out,
                r.refusal
                    .and_then(Refusal::integration_error)
                    .unwrap_or("")
                    .as_bytes(),
            ),
            Field::ErrorMessage => json_str(
                out,
                r.refusal.map_or("", |f| f.message(r.status)).as_bytes(),
            ),
            Field::ErrorResponseType => {
                json_str(out, r.refusal.map_or("", Refusal::response_type).as_bytes())
            }
            Field::ApiKeyId => json_str(out, e.api_key_id.as_bytes()),
            Field::Stage => json_str(out, e.stage.as_bytes()),
            Field::UserAgent => json_str(out, e.user_agent),
            Field::CacheStatus => json_str(
                out,
                r.cache.map_or("", crate::cache::Status::name).as_bytes(),
            ),
            Field::Upstream => json_str(out, e.upstream.as_bytes()),
            Field::TraceId => json_str(out, e.trace_id),
        }
    }
    out.push(b'}');
}

/// nginx's combined format (`$body_bytes_sent` is the body, without the head).
fn clf_line(out: &mut Vec<u8>, e: &Entry) {
    let default = Record::default();
    let r = e.record.unwrap_or(&default);
    clf_str(out, e.ip);
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(&e.time);
    out.extend_from_slice(b"] \"");
    if !e.method.is_empty() {
        clf_str(out, e.method);
        out.push(b' ');
        clf_str(out, e.target);
        out.push(b' ');
        clf_str(out, e.protocol);
    }
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(r.status));
    out.push(b' ');
    push_u64(out, r.bytes_out.saturating_sub(u64::from(r.head_bytes)));
    out.extend_from_slice(b" \"");
    clf_str(out, e.referer);
    out.extend_from_slice(b"\" \"");
    clf_str(out, e.user_agent);
    out.push(b'"');
}

fn path_of(target: &[u8]) -> &[u8] {
    target.split(|&b| b == b'?').next().unwrap_or(target)
}

fn number_or_dash(out: &mut Vec<u8>, n: u64, known: bool) {
    if known {
        push_u64(out, n);
    } else {
        out.extend_from_slice(b"\"-\"");
    }
}

/// A JSON string; empty is written as `"-"`.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if s.is_empty() {
        out.push(b'-');
    } else {
        json_escape(out, s);
    }
    out.push(b'"');
}

/// Escapes for a JSON string: quote, backslash, control bytes, and every byte above
/// ASCII (a header value need not be UTF-8; `\u00XX` keeps the line valid JSON). Runs of
/// bytes that need nothing are copied at once.
fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s;
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .position(|&b| !JSON_PLAIN[usize::from(b)])
            .unwrap_or(rest.len());
        out.extend_from_slice(&rest[..plain]);
        let Some(&b) = rest.get(plain) else {
            return;
        };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        rest = &rest[plain + 1..];
    }
}

/// Bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
static JSON_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// As nginx escapes variables in its log: `"`, `\` and bytes outside printable ASCII as
/// `\xXX`. Empty is `-`, as nginx writes it.
fn clf_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in s {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

/// `03/Dec/2026:21:38:05 +0000` (nginx's `$time_local` in UTC; API Gateway's `requestTime`).
pub fn clf_time(secs: u64) -> [u8; 26] {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let (year, month, day) = crate::calendar::civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    let mut t = *b"00/Jan/0000:00:00:00 +0000";
    let two = |t: &mut [u8], n: u64| {
        t[0] = b'0' + (n / 10 % 10) as u8;
        t[1] = b'0' + (n % 10) as u8;
    };
    two(&mut t[0..2], u64::from(day));
    t[3..6].copy_from_slice(MONTHS[(month as usize).clamp(1, 12) - 1]);
    let year = year.clamp(0, 9999) as u64;
    two(&mut t[7..9], year / 100);
    two(&mut t[9..11], year % 100);
    two(&mut t[12..14], rem / 3600);
    two(&mut t[15..17], rem % 3600 / 60);
    two(&mut t[18..20], rem % 60);
    t
}

/// A batch of lines and how many records it holds.
#[derive(Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub records: u64,
}

/// A listener's access log in a generation: its settings and its writer.
#[derive(Debug)]
pub struct AccessLog {
    pub spec: AccessLogSpec,
    pub writer: Arc<Writer>,
}

/// A worker's batches, one per writer it has written to, and its sampling count.
#[derive(Default)]
pub struct Batches {
    open: Vec<(Arc<Writer>, Batch)>,
    selected: u64,
    /// The last second formatted by [`Batches::time`], and its text.
    time: (u64, [u8; 26]),
}

impl Batches {
    /// `secs` as [`clf_time`] writes it, formatted once per second.
    pub fn time(&mut self, secs: u64) -> [u8; 26] {
        if self.time.0 != secs || self.time.1[0] == 0 {
            self.time = (secs, clf_time(secs));
        }
        self.time.1
    }

    /// Whether the next request `log` selects is one to log (one in `sample`).
    pub fn sampled(&mut self, log: &AccessLog) -> bool {
        if log.spec.sample <= 1 {
            return true;
        }
        self.selected = self.selected.wrapping_add(1);
        self.selected % u64::from(log.spec.sample) == 0
    }

    /// Appends one line for `log` (written by `line`), handing the batch over once it is
    /// large enough.
    pub fn append(&mut self, log: &AccessLog, line: impl FnOnce(&mut Vec<u8>)) {
        let i = match self
            .open
            .iter()
            .position(|(w, _)| Arc::ptr_eq(w, &log.writer))
        {
            Some(i) => i,
            None => {
                let bytes = log.writer.take_buffer();
                self.open
                    .push((log.writer.clone(), Batch { bytes, records: 0 }));
                self.open.len() - 1
            }
        };
        let (writer, batch) = &mut self.open[i];
        line(&mut batch.bytes);
        batch.records += 1;
        if batch.bytes.len() >= BATCH_BYTES {
            let bytes = writer.take_buffer();
            let full = std::mem::replace(batch, Batch { bytes, records: 0 });
            writer.submit(full);
        }
    }

    /// Hands every non-empty batch over (at each worker tick, and at the end).
    pub fn flush(&mut self) {
        for (writer, batch) in &mut self.open {
            if batch.records > 0 {
                let bytes = writer.take_buffer();
                let full = std::mem::replace(batch, Batch { bytes, records: 0 });
                writer.submit(full);
            }
        }
    }
}

/// One destination's writer thread and the queues to it.
pub struct Writer {
    pub destination: Destination,
    full: ArrayQueue<Batch>,
    spare: ArrayQueue<Vec<u8>>,
    reopen: AtomicBool,
    closing: AtomicBool,
    dropped: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", self.destination)
    }
}

impl Writer {
    /// Opens the destination (so a path that cannot be written fails the start or the
    /// reload) and starts its thread.
    pub fn start(destination: Destination) -> Result<Arc<Writer>, String> {
        let file = open(&destination)?;
        let writer = Arc::new(Writer {
            destination,
            full: ArrayQueue::new(QUEUED_BATCHES),
            spare: ArrayQueue::new(QUEUED_BATCHES),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let w = writer.clone();
        let handle = std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || w.run(file))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        *writer.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(writer)
    }

    /// Hands a batch to the writer; a full queue drops it, counts its records and says
    /// so (at most once a second per destination: [`crate::log`]'s rate limit). Never waits.
    pub fn submit(&self, batch: Batch) {
        let records = batch.records;
        match self.full.push(batch) {
            Ok(()) => {
                if let Some(t) = self
                    .thread
                    .lock()
                    .ok()
                    .and_then(|t| t.as_ref().map(|h| h.thread().clone()))
                {
                    t.unpark();
                }
            }
            Err(_) => {
                let total = self.dropped.fetch_add(records, Ordering::Relaxed) + records;
                crate::error_limited!(key = self.destination;
                    "access log {}: the writer is behind; {records} records dropped ({total} in all)",
                    self.destination
                );
            }
        }
    }

    /// An empty buffer for the next batch (one the writer gave back, if any).
    pub fn take_buffer(&self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 4096))
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Writes what is queued, then stops the thread.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.wake();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn wake(&self) {
        if let Ok(t) = self.thread.lock() {
            if let Some(h) = t.as_ref() {
                h.thread().unpark();
            }
        }
    }

    fn run(&self, mut file: Output) {
        loop {
            let closing = self.closing.load(Ordering::Relaxed);
            while let Some(mut batch) = self.full.pop() {
                if let Err(e) = file.write_all(&batch.bytes) {
                    crate::error!("access log {}: cannot write: {e}", self.destination);
                }
                batch.bytes.clear();
                let _ = self.spare.push(batch.bytes);
            }
            let _ = file.flush();
            if closing {
                return;
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                match open(&self.destination) {
                    Ok(f) => file = f,
                    Err(e) => crate::error!("access log: {e}; still writing to the old file"),
                }
            }
            std::thread::park_timeout(Duration::from_millis(500));
        }
    }
}

enum Output {
    Stderr,
    File(File),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stderr => std::io::stderr().write(buf),
            Output::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stderr => std::io::stderr().flush(),
            Output::File(f) => f.flush(),
        }
    }
}

fn open(destination: &Destination) -> Result<Output, String> {
    match destination {
        Destination::Stderr => Ok(Output::Stderr),
        Destination::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Output::File)
            .map_err(|e| format!("cannot open {} for the access log: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;
    use crate::observe::UpstreamRecord;

    fn entry<'a>(r: &'a Record) -> Entry<'a> {
        Entry {
            record: Some(r),
            request_id: b"abc123",
            ip: b"192.0.2.7",
            method: b"GET",
            target: b"/items/42?full=1",
            protocol: b"HTTP/1.1",
            user_agent: b"curl/8.5 \"quoted\"\x01\xe9",
            referer: b"",
            stage: "public",
            route_path: "/items/{id}",
            route_has_methods: false,
            api_key_id: "alice",
            upstream: "10.0.0.1:8080",
            trace_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
            epoch_ms: 1_764_797_885_123,
            time: clf_time(1_764_797_885),
        }
    }

    fn record() -> Record {
        Record {
            start: Now {
                nanos: 5_000_000_000,
            },
            end: Now {
                nanos: 5_012_000_000,
            },
            status: 200,
            bytes_out: 1200,
            head_bytes: 176,
            upstream: Some(UpstreamRecord {
                status: 200,
                nanos: 9_500_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_json_line_has_every_field_escaped() {
        let r = record();
        let mut out = Vec::new();
        let all = Field::ALL.iter().map(|(f, _)| *f).collect();
        format(&mut out, &Format::Json(all), &entry(&r));
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n"), "{line}");
        for part in [
            r#""requestId":"abc123""#,
            r#""requestTime":"03/Dec/2025:21:38:05 +0000""#,
            r#""requestTimeEpoch":1764797885123"#,
            r#""routeKey":"ANY /items/{id}""#,
            r#""path":"/items/42""#,
            r#""status":200"#,
            r#""responseLength":1024"#,
            r#""responseLatency":12"#,
            r#""integrationLatency":9"#,
            r#""integrationStatus":200"#,
            r#""integrationErrorMessage":"-""#,
            r#""error.responseType":"-""#,
            r#""userAgent":"curl/8.5 \"quoted\"\u0001\u00e9""#,
            r#""apiKeyId":"alice""#,
            r#""cacheStatus":"-""#,
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
    }

    #[test]
    fn a_refusal_names_its_type_and_message() {
        let r = Record {
            status: 429,
            refusal: Some(Refusal::Throttled(crate::limit::Scope::Route)),
            ..record()
        };
        let mut out = Vec::new();
        let fields = vec![Field::Status, Field::ErrorMessage, Field::ErrorResponseType];
        format(&mut out, &Format::Json(fields), &entry(&r));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"status\":429,\"error.message\":\"Too Many Requests\",\"error.responseType\":\"THROTTLED\"}\n"
        );
    }

    #[test]
    fn a_combined_line_is_nginx_s() {
        let r = record();
        let mut out = Vec::new();
        format(&mut out, &Format::Clf, &entry(&r));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [03/Dec/2025:21:38:05 +0000] \"GET /items/42?full=1 HTTP/1.1\" 200 1024 \"-\" \"curl/8.5 \\x22quoted\\x22\\x01\\xE9\"\n"
        );
    }

    #[test]
    fn a_writer_that_falls_behind_drops_whole_batches_and_counts_their_records() {
        // A writer whose thread never runs: the queue fills and stays full.
        let w = Writer {
            destination: Destination::Stderr,
            full: ArrayQueue::new(QUEUED_BATCHES),
            spare: ArrayQueue::new(QUEUED_BATCHES),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(None),
        };
        for _ in 0..QUEUED_BATCHES + 10 {
            let batch = Batch {
                bytes: b"line\nline\n".to_vec(),
                records: 2,
            };
            w.submit(batch);
        }
        assert_eq!(w.dropped(), 20);
    }

    #[test]
    fn every_field_is_in_its_place_in_the_tables() {
        for (i, (field, name)) in Field::ALL.iter().enumerate() {
            assert_eq!(*field as usize, i);
            assert_eq!(KEYS[i], format!("\"{name}\":"));
        }
    }

    #[test]
    fn fields_are_found_by_their_context_names() {
        assert_eq!(Field::named("identity.sourceIp"), Some(Field::Ip));
        assert_eq!(Field::named("$context.status"), Some(Field::Status));
        assert_eq!(
            Field::named("error.responseType"),
            Some(Field::ErrorResponseType)
        );
        assert_eq!(Field::named("nope"), None);
    }
}
