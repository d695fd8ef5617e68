//! Upstream failures map to 502, 503 and 504; retries happen only where they are safe;
//! passive health leaves a failing target out and lets it back in.

use std::io::{BufReader, Write};
use std::thread::sleep;
use std::time::Duration;

use crate::support::*;

fn config(targets: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = [{targets}]
{extra}

[[route]]
path = "/{{*rest}}"
upstream = "backend"
"#
    )
}

#[test]
fn an_unreachable_upstream_is_502() {
    let weir = Weir::start(&config(&format!("\"{}\"", dead_port()), "max_fails = 0"));
    let r = raw(
        weir.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.body_text(), r#"{"message":"Bad Gateway"}"#);
}

#[test]
fn a_target_left_out_after_failures_gives_503_then_comes_back() {
    let port = dead_port();
    let weir = Weir::start(&config(
        &format!("\"{port}\""),
        "max_fails = 1\nfail_timeout = \"500ms\"",
    ));
    let get = || {
        raw(
            weir.addr(),
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
    };
    assert_eq!(get().status, 502);
    assert_eq!(get().status, 503, "no target available while it cools down");
    let backend = Backend::start_on(port);
    assert!(eventually(|| get().status == 200), "never recovered");
    assert!(backend.requests() >= 1);
}

#[test]
fn a_slow_upstream_is_504() {
    let backend = Backend::start();
    let weir = Weir::start(&config(
        &format!("\"{}\"", backend.addr),
        "response_timeout = \"300ms\"",
    ));
    let r = raw(weir.addr(), b"GET /slow/3000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.body_text(), r#"{"message":"Gateway Timeout"}"#);
    // And a fast request right after is fine.
    let r = raw(
        weir.addr(),
        b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_failed_connect_is_retried_on_another_target_for_any_method() {
    let backend = Backend::start();
    let weir = Weir::start(&config(
        &format!("\"{}\", \"{}\"", dead_port(), backend.addr),
        "max_fails = 0",
    ));
    let client = client();
    for _ in 0..10 {
        let r = client.post(weir.url("/echo")).send("payload").unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(backend.requests(), 10);
}

#[test]
fn a_pooled_connection_closed_while_idle_is_not_an_error() {
    let backend = Backend::start();
    let weir = Weir::start(&config(&format!("\"{}\"", backend.addr), ""));
    let client = client();
    for _ in 0..5 {
        // The backend answers, then closes the idle connection without saying so.
        assert_eq!(
            client.get(weir.url("/idle-close")).call().unwrap().status(),
            200
        );
        sleep(Duration::from_millis(250));
        let r = client
            .post(weir.url("/echo"))
            .send("not idempotent")
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn a_garbage_response_is_502() {
    let backend = Backend::start();
    let weir = Weir::start(&config(&format!("\"{}\"", backend.addr), ""));
    let r = raw(weir.addr(), b"GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
}

#[test]
fn an_ambiguously_framed_response_is_502() {
    let backend = Backend::start();
    let weir = Weir::start(&config(&format!("\"{}\"", backend.addr), ""));
    let r = raw(
        weir.addr(),
        b"GET /both-framing HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
}

#[test]
fn a_failing_request_does_not_harm_the_next_one_elsewhere() {
    let backend = Backend::start();
    let weir = Weir::start(&config(
        &format!("\"{}\"", backend.addr),
        "response_timeout = \"2s\"",
    ));
    // One connection waits on a slow upstream; others go on meanwhile.
    let mut slow = connect(weir.addr());
    slow.write_all(b"GET /slow/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            client.get(weir.url("/garbage")).call().unwrap().status(),
            502
        );
        assert_eq!(client.get(weir.url("/ok")).call().unwrap().status(), 200);
    }
    let r = read_response(&mut BufReader::new(slow), false).unwrap();
    assert_eq!(r.body_text(), "slow");
}

#[test]
fn weighted_targets_share_the_load_by_weight() {
    let a = Backend::start();
    let b = Backend::start();
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n{}",
        config(
            &format!("{{ address = \"{}\", weight = 3 }}, \"{}\"", a.addr, b.addr),
            "",
        )
    ));
    let client = client();
    for _ in 0..40 {
        assert_eq!(client.get(weir.url("/w")).call().unwrap().status(), 200);
    }
    assert_eq!((a.requests(), b.requests()), (30, 10));
}
