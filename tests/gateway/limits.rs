//! Client-side limits and timeouts, each with its status.

use std::io::{BufReader, Write};
use std::thread::sleep;
use std::time::Duration;

use crate::support::*;

fn limited(backend: &Backend, http: &str) -> Weir {
    Weir::start(&proxy_config(
        backend.addr,
        &format!("[http]\n{http}\n\n[[route]]\npath = \"/small\"\nupstream = \"backend\"\nmax_body = \"1k\"\n"),
    ))
}

#[test]
fn a_head_over_the_limit_is_431() {
    let backend = Backend::start();
    let weir = limited(&backend, "max_head = \"4k\"");
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 431);
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 431);
    assert_eq!(backend.requests(), 0);
}

#[test]
fn a_uri_over_the_limit_is_414() {
    let backend = Backend::start();
    let weir = limited(&backend, "max_uri = \"1k\"");
    let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 414);
    assert_eq!(backend.requests(), 0);
}

#[test]
fn a_body_over_the_route_limit_is_413() {
    let backend = Backend::start();
    let weir = limited(&backend, "");
    let req = format!(
        "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{}",
        "b".repeat(2000)
    );
    let r = raw(weir.addr(), req.as_bytes()).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.body_text(), r#"{"message":"Content Too Large"}"#);
    // The same body is fine on a route with the default limit.
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(2000)
    );
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 200);
    assert_eq!(backend.requests(), 1);
}

#[test]
fn a_chunked_body_over_the_route_limit_is_413() {
    let backend = Backend::start();
    let weir = limited(&backend, "");
    let chunk = format!("400\r\n{}\r\n", "c".repeat(1024));
    let req = format!("POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 413);
}

#[test]
fn a_head_that_never_completes_gets_408_and_a_close() {
    let backend = Backend::start();
    let weir = limited(&backend, "header_timeout = \"300ms\"");
    let mut s = connect(weir.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut reader));
    assert_eq!(backend.requests(), 0);
}

#[test]
fn a_body_that_stalls_gets_408() {
    let backend = Backend::start();
    let weir = limited(&backend, "body_timeout = \"300ms\"");
    let mut s = connect(weir.addr());
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nonly a little")
        .unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 408);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let backend = Backend::start();
    let weir = limited(&backend, "keepalive_timeout = \"300ms\"");
    let mut s = connect(weir.addr());
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
    // Nothing is said on an idle close: the connection just ends.
    assert!(closes(&mut reader));
}

#[test]
fn a_connection_closes_after_its_request_limit() {
    let backend = Backend::start();
    let weir = limited(&backend, "keepalive_requests = 3");
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for i in 1..=3 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut reader, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection") == Some("close"),
            i == 3,
            "request {i}"
        );
    }
    assert!(closes(&mut reader));
}

#[test]
fn a_slow_client_on_one_connection_does_not_stall_another() {
    let backend = Backend::start();
    let weir = limited(&backend, "header_timeout = \"5s\"");
    let mut slow = connect(weir.addr());
    slow.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    sleep(Duration::from_millis(50));
    let client = client();
    for _ in 0..20 {
        assert_eq!(client.get(weir.url("/fast")).call().unwrap().status(), 200);
    }
    slow.write_all(b"st: x\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut BufReader::new(slow), false)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn max_body_zero_means_no_limit_as_in_nginx() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(
        backend.addr,
        "[http]\nmax_body = 0\n\n[[route]]\npath = \"/small\"\nupstream = \"backend\"\nmax_body = \"1k\"\n",
    ));
    // 12 MiB: over the 10m default, under no limit at all.
    let body = vec![b'z'; 12 << 20];
    let mut s = connect(weir.addr());
    s.write_all(
        format!(
            "POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let r = read_response(&mut BufReader::new(s), false).expect("a response");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(backend.last().body_len, 12 << 20);
    // A route's own limit still holds.
    let req = format!(
        "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{}",
        "b".repeat(2000)
    );
    assert_eq!(raw(weir.addr(), req.as_bytes()).unwrap().status, 413);
}
