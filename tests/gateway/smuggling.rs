//! Ambiguous framing (the request-smuggling family) is refused with 400 and a close, and
//! nothing reaches the upstream.

use std::io::BufReader;
use std::io::Write;

use crate::support::*;

fn assert_refused(request: &[u8], status: u16) {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let mut s = connect(weir.addr());
    s.write_all(request).unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader, false)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(request)));
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(request));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut reader), "connection left open");
    assert_eq!(
        backend.requests(),
        0,
        "a refused request reached the upstream"
    );
}

macro_rules! refused {
    ($($name:ident: $status:expr, $request:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_refused($request, $status);
            }
        )*
    };
}

refused! {
    rejects_content_length_with_transfer_encoding: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    rejects_two_content_lengths: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    rejects_two_equal_content_lengths: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd";
    rejects_a_content_length_list: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd";
    rejects_a_signed_content_length: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd";
    rejects_transfer_encoding_not_ending_in_chunked: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n";
    rejects_an_unknown_transfer_coding_with_501: 501,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    rejects_two_transfer_encoding_headers: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    rejects_transfer_encoding_in_http10: 400,
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    rejects_a_non_hex_chunk_size: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    rejects_a_chunk_size_with_a_prefix: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n";
    rejects_an_overflowing_chunk_size: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n";
    rejects_whitespace_in_a_chunk_size: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n";
    rejects_a_bad_chunk_extension: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n";
    rejects_a_bare_lf_after_a_chunk_size: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
    rejects_chunk_data_longer_than_its_size: 400,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n";
    rejects_obs_fold: 400,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n";
    rejects_whitespace_before_a_colon: 400,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n";
    rejects_a_bare_lf_in_the_head: 400,
        b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n";
    rejects_a_bare_lf_request_line: 400,
        b"GET / HTTP/1.1\nHost: x\r\n\r\n";
    rejects_a_bare_cr_in_the_head: 400,
        b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n";
    rejects_a_nul_in_a_header: 400,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n";
    rejects_an_invalid_header_name: 400,
        b"GET / HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n";
    rejects_an_invalid_method: 400,
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n";
    rejects_http11_without_host: 400,
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n";
    rejects_two_hosts: 400,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    rejects_an_invalid_host: 400,
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n";
    rejects_dot_segments: 400,
        b"GET /public/../admin HTTP/1.1\r\nHost: x\r\n\r\n";
    rejects_encoded_dot_segments: 400,
        b"GET /public/%2e%2E/admin HTTP/1.1\r\nHost: x\r\n\r\n";
    rejects_an_unsupported_version_with_505: 505,
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n";
    rejects_garbage: 400,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n";
}

#[test]
fn a_refused_request_leaves_other_connections_alone() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    let client = client();
    assert_eq!(
        client.get(weir.url("/before")).call().unwrap().status(),
        200
    );
    for _ in 0..20 {
        let r = raw(
            weir.addr(),
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(
            client.get(weir.url("/during")).call().unwrap().status(),
            200
        );
    }
    assert!(backend
        .state
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.target != "/smuggled"));
}

#[test]
fn random_bytes_on_many_connections_never_harm_the_server() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(
        backend.addr,
        "[http]\nheader_timeout = \"1s\"\n",
    ));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for _ in 0..300 {
        let mut bytes: Vec<u8> = if next() % 2 == 0 {
            (0..next() % 600).map(|_| next() as u8).collect()
        } else {
            let mut v = valid.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % v.len();
                v[at] = next() as u8;
            }
            v
        };
        bytes.truncate(1 + (next() as usize) % (bytes.len().max(1)));
        let mut s = connect(weir.addr());
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
        // Whatever came back is either nothing or complete HTTP responses.
        assert!(
            sink.is_empty() || sink.starts_with(b"HTTP/1.1 "),
            "{:?}",
            String::from_utf8_lossy(&sink)
        );
    }
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            client.get(weir.url("/still-fine")).call().unwrap().status(),
            200
        );
    }
    // Whatever reached the upstream was framed as sent: no body longer than the five bytes
    // of the one chunked request the mutations started from, nothing stitched together.
    for seen in backend.state.seen.lock().unwrap().iter() {
        assert!(seen.body_len <= 5, "{seen:?}");
    }
}
