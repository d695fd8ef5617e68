//! The epoll fallback (used where io_uring is missing or blocked, as under Docker's default
//! seccomp profile) serves the same protocol: a smoke run over its main paths.

use std::io::{BufReader, Write};

use crate::support::*;

#[test]
fn the_epoll_driver_serves_mocks_proxying_pipelining_and_errors() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[server]\nworkers = 2\nio = \"epoll\"\n{}\n[[route]]\npath = \"/mock\"\nmock = {{ body = \"m\" }}\n",
        proxy_config(backend.addr, "")
    ));
    assert!(weir.log().contains("on epoll"), "{}", weir.log());

    let client = client();
    let mut r = client.get(weir.url("/mock")).call().unwrap();
    assert_eq!(r.body_mut().read_to_string().unwrap(), "m");
    for i in 0..50 {
        let mut r = client.get(weir.url(&format!("/p/{i}"))).call().unwrap();
        assert_eq!(r.body_mut().read_to_string().unwrap(), format!("/p/{i}"));
    }
    assert!(backend.connections() <= 2);

    let body = vec![7u8; 500_000];
    let mut r = client.post(weir.url("/echo")).send(&body[..]).unwrap();
    assert_eq!(r.body_mut().read_to_vec().unwrap(), body);

    let mut s = connect(weir.addr());
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let bodies: Vec<String> = (0..3)
        .map(|_| read_response(&mut reader, false).unwrap().body_text())
        .collect();
    assert_eq!(bodies, ["/a", "abc", "/c"]);

    let bad = raw(
        weir.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    assert_eq!(bad.status, 400);
    let missing = raw(
        weir.addr(),
        b"GET /status/404 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(missing.status, 404);
}
