//! Upstream failures map to 502 and 504; retries happen only where they are safe;
//! passive health leaves a failing target out and lets it back in, but never refuses a
//! request for want of a healthy target (the only target, or all of them, are tried).

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
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

fn get_x(weir: &Weir) -> RawResponse {
    raw(
        weir.addr(),
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
}

#[test]
fn the_only_target_of_a_group_is_never_left_out() {
    let port = dead_port();
    let weir = Weir::start(&config(
        &format!("\"{port}\""),
        "max_fails = 1\nfail_timeout = \"60s\"",
    ));
    // Failures, on both workers: each is a 502, never a 503.
    for _ in 0..4 {
        assert_eq!(get_x(&weir).status, 502);
    }
    let backend = Backend::start_on(port);
    // Back on the same port: the very next requests reach it, well within fail_timeout.
    for _ in 0..4 {
        assert_eq!(get_x(&weir).status, 200);
    }
    assert_eq!(backend.requests(), 4);
}

#[test]
fn a_failing_target_is_left_out_while_another_is_up() {
    let (bad, connections) = hanging_up_target();
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n{}",
        config(
            &format!("\"{bad}\", \"{}\"", backend.addr),
            "max_fails = 1\nfail_timeout = \"60s\"",
        )
    ));
    for _ in 0..10 {
        assert_eq!(get_x(&weir).status, 200);
    }
    assert_eq!(backend.requests(), 10);
    // Tried once (and the GET retried on the other target), then left out.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[test]
fn when_every_target_is_left_out_they_are_tried_anyway() {
    let (a, b) = (dead_port(), dead_port());
    let weir = Weir::start(&config(
        &format!("\"{a}\", \"{b}\""),
        "max_fails = 1\nfail_timeout = \"60s\"",
    ));
    // Both fail and are left out; the client gets the failure, not "no target".
    for _ in 0..4 {
        assert_eq!(get_x(&weir).status, 502);
    }
    // One comes back: requests reach it at once, not after fail_timeout.
    let backend = Backend::start_on(b);
    for _ in 0..6 {
        assert_eq!(get_x(&weir).status, 200);
    }
    assert_eq!(backend.requests(), 6);
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
