//! Throttling: token buckets per route, listener and globally, exact across workers,
//! answered with 429, Retry-After and the IETF RateLimit fields.

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sfv::{BareItem, ListEntry, Parser};

use crate::support::*;

/// A parsed RateLimit-Policy or RateLimit item: its name and integer parameters.
fn sf_item(value: &str) -> (String, Vec<(String, i64)>) {
    let list: sfv::List = Parser::new(value).parse().expect("a structured-field list");
    assert_eq!(list.len(), 1, "{value}");
    let ListEntry::Item(item) = &list[0] else {
        panic!("not an item: {value}")
    };
    let BareItem::String(name) = &item.bare_item else {
        panic!("the policy name is not a string: {value}")
    };
    let params = item
        .params
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                i64::from(v.as_integer().expect("integer")),
            )
        })
        .collect();
    (name.as_str().to_string(), params)
}

fn param(params: &[(String, i64)], key: &str) -> i64 {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key}"))
}

fn gateway(backend: &Backend, extra: &str) -> Weir {
    Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{}"]

{extra}
"#,
        backend.addr
    ))
}

fn get(
    stream: &mut std::net::TcpStream,
    reader: &mut BufReader<std::net::TcpStream>,
    path: &str,
) -> RawResponse {
    get_on(stream, reader, path, "")
}

#[test]
fn a_route_admits_its_burst_then_answers_429_with_retry_after_and_ratelimit_fields() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        "[[route]]\npath = \"/limited\"\nupstream = \"backend\"\nthrottle = { rate = 0.1, burst = 3, name = \"per-route\" }\n",
    );
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let statuses: Vec<u16> = (0..6)
        .map(|_| get(&mut s, &mut reader, "/limited").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(
        backend.requests(),
        3,
        "a refused request reached the upstream"
    );

    let r = get(&mut s, &mut reader, "/limited");
    assert_eq!(r.status, 429);
    assert_eq!(r.body_text(), r#"{"message":"Too Many Requests"}"#);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    let (name, policy) = sf_item(r.header("ratelimit-policy").unwrap());
    assert_eq!(name, "per-route");
    assert_eq!(param(&policy, "q"), 3);
    assert_eq!(param(&policy, "w"), 30);
    let (name, state) = sf_item(r.header("ratelimit").unwrap());
    assert_eq!(name, "per-route");
    assert_eq!(param(&state, "r"), 0);
    assert!(
        param(&state, "t") as u64 <= retry,
        "Retry-After must not point earlier than t"
    );
    // The connection stays usable after a 429.
    assert_eq!(get(&mut s, &mut reader, "/limited").status, 429);
}

#[test]
fn many_connections_across_workers_share_one_limit() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        "[[route]]\npath = \"/limited\"\nupstream = \"backend\"\nthrottle = { rate = 0.1, burst = 10 }\n",
    );
    let admitted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let admitted = admitted.clone();
            let addr = weir.addr();
            thread::spawn(move || {
                let mut s = connect(addr);
                let mut reader = BufReader::new(s.try_clone().unwrap());
                for _ in 0..5 {
                    if get(&mut s, &mut reader, "/limited").status == 200 {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        10,
        "80 requests over 2 workers, burst 10"
    );
}

#[test]
fn levels_apply_route_then_listener_then_global() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        r#"
[throttle]
rate = 0.1
burst = 6

[[listener]]
address = "127.0.0.1:0"
throttle = {{ rate = 0.1, burst = 4, name = "stage" }}

[upstream.backend]
targets = ["{}"]

[[route]]
path = "/a"
upstream = "backend"
throttle = {{ rate = 0.1, burst = 1 }}

[[route]]
path = "/b"
upstream = "backend"
"#,
        backend.addr
    ));
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let refused_by = |r: &RawResponse| sf_item(r.header("ratelimit").unwrap()).0;

    assert_eq!(get(&mut s, &mut reader, "/a").status, 200);
    // /a is out of its own tokens: refused by the route, and the refusals cost the
    // listener and global buckets nothing.
    for _ in 0..5 {
        let r = get(&mut s, &mut reader, "/a");
        assert_eq!((r.status, refused_by(&r).as_str()), (429, "route"));
    }
    // The listener bucket (4) had one token taken by /a: three more, then it refuses.
    for _ in 0..3 {
        assert_eq!(get(&mut s, &mut reader, "/b").status, 200);
    }
    let r = get(&mut s, &mut reader, "/b");
    assert_eq!((r.status, refused_by(&r).as_str()), (429, "stage"));
    assert_eq!(backend.requests(), 4);
}

#[test]
fn the_global_bucket_covers_every_listener() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        r#"
[throttle]
rate = 0.1
burst = 2

[[listener]]
name = "public"
address = "127.0.0.1:0"

[[listener]]
name = "other"
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{}"]

[[route]]
path = "/{{*rest}}"
upstream = "backend"
"#,
        backend.addr
    ));
    let req = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(weir.listeners["public"], req).unwrap().status, 200);
    assert_eq!(raw(weir.listeners["other"], req).unwrap().status, 200);
    let r = raw(weir.listeners["public"], req).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(sf_item(r.header("ratelimit").unwrap()).0, "global");
}

#[test]
fn admitted_responses_carry_ratelimit_fields_when_the_route_asks() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        "[[route]]\npath = \"/h\"\nupstream = \"backend\"\nthrottle = { rate = 0.1, burst = 5, headers = true }\n[[route]]\npath = \"/m\"\nmock = {}\nthrottle = { rate = 0.1, burst = 5, headers = true }\n[[route]]\npath = \"/quiet\"\nupstream = \"backend\"\nthrottle = { rate = 0.1, burst = 5 }\n",
    );
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let remaining: Vec<i64> = (0..3)
        .map(|_| {
            let r = get(&mut s, &mut reader, "/h");
            assert_eq!(r.status, 200);
            let (_, policy) = sf_item(r.header("ratelimit-policy").unwrap());
            assert_eq!(param(&policy, "q"), 5);
            param(&sf_item(r.header("ratelimit").unwrap()).1, "r")
        })
        .collect();
    assert_eq!(remaining, [4, 3, 2]);
    let mock = get(&mut s, &mut reader, "/m");
    assert_eq!(param(&sf_item(mock.header("ratelimit").unwrap()).1, "r"), 4);
    assert_eq!(get(&mut s, &mut reader, "/quiet").header("ratelimit"), None);
}

/// Demand well above the limit for three seconds, with the real clock, from
/// `connections` connections: the admitted requests must stay within 2% of
/// burst + rate × elapsed.
fn assert_accurate(weir: &Weir, path: &'static str, connections: usize, rate: f64, burst: f64) {
    let admitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(3);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let admitted = admitted.clone();
            let addr = weir.addr();
            thread::spawn(move || {
                let mut s = connect(addr);
                let mut reader = BufReader::new(s.try_clone().unwrap());
                while start.elapsed() < run_for {
                    if get(&mut s, &mut reader, path).status == 200 {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = burst + rate * elapsed;
    let got = admitted.load(Ordering::SeqCst) as f64;
    assert!(
        (got - expected).abs() <= 0.02 * expected + 2.0,
        "{path} from {connections} connection(s): {got} admitted, expected {expected:.0} over {elapsed:.2} s"
    );
}

const MANY_REQUESTS: &str = "[http]\nkeepalive_requests = 1000000\n";

#[test]
fn a_route_bucket_admits_burst_plus_rate_times_time() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        &format!("{MANY_REQUESTS}[[route]]\npath = \"/r\"\nupstream = \"backend\"\nthrottle = {{ rate = 200, burst = 20 }}\n[[route]]\npath = \"/s\"\nupstream = \"backend\"\nthrottle = {{ rate = 200, burst = 20 }}\n"),
    );
    assert_accurate(&weir, "/r", 1, 200.0, 20.0);
    assert_accurate(&weir, "/s", 12, 200.0, 20.0);
}

/// Runs [`assert_accurate`] from 1 and from 12 connections, each on a fresh gateway
/// whose config `config` builds around a backend address.
fn accurate_from_one_and_many(
    config: impl Fn(std::net::SocketAddr) -> String,
    path: &'static str,
    rate: f64,
    burst: f64,
) {
    for connections in [1, 12] {
        let backend = Backend::start();
        let weir = Weir::start(&config(backend.addr));
        assert_accurate(&weir, path, connections, rate, burst);
    }
}

#[test]
fn a_listener_bucket_admits_burst_plus_rate_times_time() {
    accurate_from_one_and_many(
        |backend| {
            format!("{MANY_REQUESTS}[[listener]]\naddress = \"127.0.0.1:0\"\nthrottle = {{ rate = 300, burst = 30 }}\n[upstream.backend]\ntargets = [\"{backend}\"]\n[[route]]\npath = \"/l\"\nupstream = \"backend\"\n")
        },
        "/l",
        300.0,
        30.0,
    );
}

#[test]
fn the_global_bucket_admits_burst_plus_rate_times_time() {
    accurate_from_one_and_many(
        |backend| {
            format!("{MANY_REQUESTS}[throttle]\nrate = 250\nburst = 50\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.backend]\ntargets = [\"{backend}\"]\n[[route]]\npath = \"/g\"\nupstream = \"backend\"\n")
        },
        "/g",
        250.0,
        50.0,
    );
}

#[test]
fn a_bad_throttle_is_a_config_error() {
    let err = check_fails(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nthrottle = { rate = 10, headers = true }\n[[route]]\npath = \"/\"\nmock = {}\nthrottle = { rate = 0 }\n",
    );
    assert!(
        err.contains(":3:") && err.contains("`headers` applies to a route"),
        "{err}"
    );
    assert!(err.contains(":7:") && err.contains("rate = 0"), "{err}");
}

/// Sends one request from the source address `from` (any 127.0.0.0/8 address).
fn from_address(weir: &Weir, from: std::net::Ipv4Addr) -> RawResponse {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    socket.connect(&weir.addr().into()).unwrap();
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /per-ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_response(&mut BufReader::new(s), false).expect("a response")
}

#[test]
fn each_client_address_has_its_own_bucket() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        "[[route]]\npath = \"/per-ip\"\nupstream = \"backend\"\nthrottle_per_ip = { rate = 0.1, burst = 2 }\n",
    );
    let a = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let b = std::net::Ipv4Addr::new(127, 0, 0, 3);
    assert_eq!(from_address(&weir, a).status, 200);
    assert_eq!(from_address(&weir, a).status, 200);
    let r = from_address(&weir, a);
    assert_eq!(r.status, 429);
    assert_eq!(sf_item(r.header("ratelimit").unwrap()).0, "client");
    assert_eq!(
        from_address(&weir, b).status,
        200,
        "another address is not limited"
    );
    assert_eq!(from_address(&weir, b).status, 200);
    assert_eq!(from_address(&weir, b).status, 429);
}

#[test]
fn a_flood_of_client_addresses_stays_within_a_fixed_table() {
    let backend = Backend::start();
    let weir = gateway(
        &backend,
        "[[route]]\npath = \"/per-ip\"\nupstream = \"backend\"\nthrottle_per_ip = { rate = 0.1, burst = 1, clients = 64 }\n",
    );
    let before = weir.memory_kib("VmRSS");
    for n in 0..1000u32 {
        let addr = std::net::Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8);
        assert_eq!(
            from_address(&weir, addr).status,
            200,
            "a new address has a full bucket"
        );
    }
    let grown = weir.memory_kib("VmRSS").saturating_sub(before);
    assert!(grown < 4096, "RSS grew by {grown} KiB over 1000 addresses");
    // A client seen just now is still limited after the flood.
    let recent = std::net::Ipv4Addr::new(127, 2, 0, 1);
    assert_eq!(from_address(&weir, recent).status, 200);
    assert_eq!(from_address(&weir, recent).status, 429);
}

#[test]
fn weirs_own_errors_after_the_stages_carry_the_ratelimit_fields_too() {
    let dead = dead_port();
    let weir = Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.gone]\ntargets = [\"{dead}\"]\n\
         [[route]]\npath = \"/down\"\nupstream = \"gone\"\nthrottle = {{ rate = 0.1, burst = 5, headers = true }}\n\
         [[route]]\npath = \"/m\"\nmock = {{}}\nthrottle = {{ rate = 0.1, burst = 5, headers = true }}\n"
    ));
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    // A 200 from a route that sends the fields, then a 404 on the same connection: the
    // 404 ran no stage and must not carry the previous request's fields.
    assert!(get(&mut s, &mut reader, "/m").header("ratelimit").is_some());
    let missing = get(&mut s, &mut reader, "/nowhere");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("ratelimit"), None);
    // The upstream is down: the 502 tells the client its budget as a 200 would.
    let r = raw(
        weir.addr(),
        b"GET /down HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(param(&sf_item(r.header("ratelimit").unwrap()).1, "r"), 4);
    assert!(r.header("ratelimit-policy").is_some());
}
