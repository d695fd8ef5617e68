//! The HTTP integration: what the upstream sees, what the client gets back, and how
//! connections, bodies and framings are carried.

use std::io::{BufReader, Read, Write};

use crate::support::*;

#[test]
fn upstream_sees_forwarding_headers_and_no_hop_by_hop_headers() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let r = raw(
        weir.addr(),
        b"GET /headers?q=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\nX-Forwarded-For: 198.51.100.9\r\nAccept: text/plain\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(seen.target, "/headers?q=1");
    assert_eq!(seen.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(seen.header("accept"), Some("text/plain"));
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    let id = seen.header("x-request-id").expect("a request id upstream");
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "the id is echoed to the client"
    );
}

#[test]
fn a_client_request_id_is_kept_end_to_end() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let r = raw(
        weir.addr(),
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(backend.last().header("x-request-id"), Some("abc-123"));
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let client = client();
    for i in 0..100 {
        let mut r = client.get(weir.url(&format!("/n/{i}"))).call().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_mut().read_to_string().unwrap(), format!("/n/{i}"));
    }
    assert_eq!(backend.requests(), 100);
    // At most one connection per worker for sequential traffic.
    assert!(
        backend.connections() <= 2,
        "{} connections",
        backend.connections()
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(
        b"GET /slow/200 HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthirdGET /fourth HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let bodies: Vec<String> = (0..4)
        .map(|_| read_response(&mut reader, false).unwrap().body_text())
        .collect();
    assert_eq!(bodies, ["slow", "/second", "third", "/fourth"]);
}

#[test]
fn content_length_bodies_go_both_ways() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut r = client().post(weir.url("/echo")).send(&body[..]).unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_mut().read_to_vec().unwrap(), body);
}

#[test]
fn bodies_larger_than_every_buffer_stream_through() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut r = client().post(weir.url("/echo")).send(&body[..]).unwrap();
    assert_eq!(r.status(), 200);
    let back = r
        .body_mut()
        .with_config()
        .limit(10 << 20)
        .read_to_vec()
        .unwrap();
    assert!(
        back == body,
        "a 3 MB body came back changed ({} bytes)",
        back.len()
    );
    let mut r = client().get(weir.url("/big/2500000")).call().unwrap();
    let big = r
        .body_mut()
        .with_config()
        .limit(10 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(big.len(), 2_500_000);
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
}

#[test]
fn chunked_request_bodies_reach_the_upstream() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let r = raw(
        weir.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nWiki\r\n5;name=val\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "Wikipedia");
    assert_eq!(backend.last().body, b"Wikipedia");
}

#[test]
fn chunked_responses_are_relayed_with_their_trailers() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !all.ends_with(b"x-trailer: yes\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(text.ends_with("5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: yes\r\n\r\n"));
}

#[test]
fn a_body_until_close_is_rechunked_for_a_keep_alive_client() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body_text(), "until the end");
    // The client connection survived.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut reader, false).unwrap().body_text(),
        "/again"
    );
}

#[test]
fn an_http10_client_gets_close_unless_it_asks_for_keep_alive() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(b"GET /ten HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.body_text(), "/ten");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut reader));

    let mut s = connect(weir.addr());
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    s.write_all(b"GET /b HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().body_text(), "/b");
    // HTTP/1.0 upstream request line is upgraded: the backend saw HTTP/1.1.
    assert!(backend.last().head.starts_with("GET /b HTTP/1.1\r\n"));
}

#[test]
fn expect_100_continue_gets_continue_before_the_body() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let interim = read_response(&mut reader, false).unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(b"hello").unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "hello");
    assert_eq!(backend.last().header("expect"), None);
}

#[test]
fn informational_responses_are_passed_through() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(b"GET /early-hints HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let hints = read_response(&mut reader, false).unwrap();
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</a.css>; rel=preload"));
    assert_eq!(
        read_response(&mut reader, false).unwrap().body_text(),
        "after hints"
    );
}

#[test]
fn head_204_and_304_responses_carry_no_body() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(
        b"HEAD /big/100 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: x\r\n\r\nGET /last HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let head = read_response(&mut reader, true).unwrap();
    assert_eq!(head.header("content-length"), Some("100"));
    assert_eq!(read_response(&mut reader, false).unwrap().status, 204);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 304);
    assert_eq!(
        read_response(&mut reader, false).unwrap().body_text(),
        "/last"
    );
}

#[test]
fn path_prefixes_and_host_are_rewritten_per_route() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{0}"]

[[route]]
path = "/api/{{*rest}}"
upstream = "backend"
strip_prefix = "/api"
add_prefix = "/v2"
set_host = "users.internal"

[[route]]
path = "/keep/{{*rest}}"
upstream = "backend"
preserve_host = true
"#,
        backend.addr
    ));
    raw(
        weir.addr(),
        b"GET /api/users/7?x=1 HTTP/1.1\r\nHost: edge.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let seen = backend.last();
    assert_eq!(seen.target, "/v2/users/7?x=1");
    assert_eq!(seen.header("host"), Some("users.internal"));
    raw(
        weir.addr(),
        b"GET /keep/a HTTP/1.1\r\nHost: edge.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(backend.last().header("host"), Some("edge.example"));
}

#[test]
fn a_backend_that_closes_after_every_response_gives_no_errors() {
    // python3 -m http.server answers HTTP/1.0 and closes after each response.
    let dir = std::env::temp_dir().join(format!("weir-pyhttp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from python").unwrap();
    let port = dead_port().port();
    let mut python = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(|| std::net::TcpStream::connect(addr).is_ok()));
    let weir = Weir::start(&proxy_config(addr, ""));
    let client = client();
    let mut errors = 0;
    for _ in 0..60 {
        match client.get(weir.url("/hello.txt")).call() {
            Ok(mut r) if r.status() == 200 => {
                assert_eq!(r.body_mut().read_to_string().unwrap(), "hello from python")
            }
            _ => errors += 1,
        }
    }
    let _ = python.kill();
    let _ = python.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(errors, 0);
}

#[test]
fn a_one_gib_upload_does_not_grow_memory() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, "[http]\nmax_body = \"2g\"\n"));
    let before = weir.memory_kib("VmRSS");
    let total: u64 = 1 << 30;
    let mut s = connect(weir.addr());
    s.write_all(
        format!("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'z'; 256 * 1024];
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), total.to_string());
    let peak = weir.memory_kib("VmHWM");
    // A few buffers, not the body: well under 1% of it.
    assert!(
        peak < before + 8 * 1024,
        "resident memory grew from {before} KiB to a peak of {peak} KiB"
    );
}
