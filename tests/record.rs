//! Every request ends in one place with one record (`weir::observe::Record`): answered,
//! refused, failed or cut short. The gateway runs in this process with a record sink;
//! the client is raw TCP and the upstream a real HTTP backend, so what the records say is
//! checked against what went over the sockets.

#[path = "gateway/support.rs"]
mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{read_response, Backend, PATIENCE};
use weir::cache::Status as CacheStatus;
use weir::observe::{Record, Refusal};

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

fn collect(_worker: usize, record: &Record) {
    RECORDS.lock().unwrap().push(*record);
}

/// Bytes written and read on one connection, so records can be held against them.
struct Exchange {
    sent: usize,
    received: usize,
    status: u16,
}

/// Sends `request` on a new connection and reads one response (or the close).
fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let status = read_response(
        &mut BufReader::new(&bytes[..]),
        request.starts_with(b"HEAD"),
    )
    .map_or(0, |r| r.status);
    Exchange {
        sent: request.len(),
        received: bytes.len(),
        status,
    }
}

/// The next record, waiting for it: a record is handed on after the last byte was
/// written, so the client may see its response first.
fn next_record(seen: &mut usize) -> Record {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(r) = RECORDS.lock().unwrap().get(*seen) {
            *seen += 1;
            return *r;
        }
        assert!(
            Instant::now() < deadline,
            "no record for request {}",
            *seen + 1
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

#[test]
fn every_request_ends_with_one_record() {
    weir::observe::set_sink(collect);
    let backend = Backend::start();
    // A port with nothing behind it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = weir::config::parse(
        &format!(
            r#"
[server]
workers = 1
[[listener]]
address = "127.0.0.1:0"
[upstream.backend]
targets = ["{backend}"]
[upstream.dead]
targets = ["{dead}"]
[[api_key]]
id = "alice"
value = "alice-key-0123456789abcdef"
[[route]]
path = "/mock"
mock = {{ body = "hello" }}
[[route]]
path = "/keyed"
mock = {{ body = "secret" }}
api_key_required = true
[[route]]
path = "/limited"
mock = {{ body = "ok" }}
throttle = {{ rate = 0.01, burst = 1 }}
[[route]]
path = "/up/{{*rest}}"
upstream = "backend"
strip_prefix = "/up"
[[route]]
path = "/cached/{{*rest}}"
upstream = "backend"
strip_prefix = "/cached"
cache = {{ ttl = "60s" }}
[[route]]
path = "/down"
upstream = "dead"
"#,
            backend = backend.addr,
        ),
        "record-test",
    )
    .unwrap();
    let running = weir::server::start(config, std::path::Path::new("record.toml")).unwrap();
    let addr = running.listeners[0].addr;
    let mut seen = 0;

    // A mock: bytes in are the head, bytes out what the client read.
    let x = exchange(addr, &get("/mock", ""));
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.status), (200, 200));
    assert_eq!(r.bytes_in, x.sent as u64);
    assert_eq!(r.bytes_out, x.received as u64);
    assert!(r.route.is_some() && r.route_key != 0 && r.refusal.is_none());
    assert!(r.upstream.is_none() && r.cache.is_none());
    assert_eq!(r.generation, 1);
    assert!(r.end >= r.start);

    // No route.
    let x = exchange(addr, &get("/nowhere", ""));
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.status), (404, 404));
    assert_eq!((r.route, r.refusal), (None, Some(Refusal::NotFound)));
    assert_eq!(r.bytes_out, x.received as u64);

    // API keys: refused without, the key's index with.
    let x = exchange(addr, &get("/keyed", ""));
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.refusal), (403, Some(Refusal::InvalidApiKey)));
    let x = exchange(
        addr,
        &get("/keyed", "x-api-key: alice-key-0123456789abcdef\r\n"),
    );
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.api_key, r.refusal), (200, Some(0), None));

    // Throttled on the second request.
    exchange(addr, &get("/limited", ""));
    assert_eq!(next_record(&mut seen).status, 200);
    let x = exchange(addr, &get("/limited", ""));
    let r = next_record(&mut seen);
    assert_eq!(
        (x.status, r.refusal),
        (429, Some(Refusal::Throttled(weir::limit::Scope::Route)))
    );

    // Proxied, with a body: the target, its status and time, the body counted in.
    let post =
        b"POST /up/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
    let x = exchange(addr, post);
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.status), (200, 200));
    assert_eq!(r.bytes_in, post.len() as u64);
    assert_eq!(r.bytes_out, x.received as u64);
    let up = r.upstream.expect("an upstream part");
    assert_eq!((up.target, up.status, up.retries), (0, 200, 0));
    assert!(up.nanos > 0 && up.nanos <= r.end.since(r.start));

    // Cached: a MISS goes upstream, the HIT does not.
    exchange(addr, &get("/cached/a", ""));
    let r = next_record(&mut seen);
    assert_eq!((r.status, r.cache), (200, Some(CacheStatus::Miss)));
    assert!(r.upstream.is_some());
    let x = exchange(addr, &get("/cached/a", ""));
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.cache), (200, Some(CacheStatus::Hit)));
    assert!(r.upstream.is_none());
    assert_eq!(r.bytes_out, x.received as u64);

    // An upstream that refuses connections: 502, with the target it tried.
    let x = exchange(addr, &get("/down", ""));
    let r = next_record(&mut seen);
    assert_eq!(
        (x.status, r.refusal),
        (502, Some(Refusal::IntegrationFailure))
    );
    assert_eq!(r.upstream.map(|u| u.status), Some(0));

    // Refused before routing: ambiguous framing.
    let smuggle =
        b"POST /mock HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    let x = exchange(addr, smuggle);
    let r = next_record(&mut seen);
    assert_eq!(x.status, 400);
    assert!(matches!(r.refusal, Some(Refusal::BadRequest(_))), "{r:?}");
    assert_eq!(r.route, None);

    let x = exchange(
        addr,
        b"POST /mock HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    );
    let r = next_record(&mut seen);
    assert_eq!((x.status, r.refusal), (413, Some(Refusal::TooLarge)));
    assert!(r.route.is_some());

    // A client that sends half a body and leaves: no response, the request is recorded.
    let head = b"POST /up/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[&head[..], b"only part"].concat()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let r = next_record(&mut seen);
    assert_eq!((r.status, r.refusal), (0, Some(Refusal::ClientGone)));
    assert_eq!(r.bytes_in, head.len() as u64 + 9);

    running.shutdown();
    // One record per request, no more.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(RECORDS.lock().unwrap().len(), seen);
}
