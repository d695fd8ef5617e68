//! W3C Trace Context: a valid `traceparent` goes upstream as it came; a request without
//! one (or with an invalid one, or two) starts a trace with a new one; the trace id is in
//! the access log.

use crate::support::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traceparent_seen(backend: &Backend) -> Vec<String> {
    let seen = backend.last();
    seen.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.clone())
        .collect()
}

fn is_valid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && hex(parts[1])
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].len() == 16
        && hex(parts[2])
        && parts[3].len() == 2
}

#[test]
fn a_valid_traceparent_is_passed_on_and_a_missing_one_is_made() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));

    try_get(weir.addr(), "/a", &format!("traceparent: {VALID}\r\n")).unwrap();
    assert_eq!(traceparent_seen(&backend), vec![VALID.to_string()]);

    try_get(weir.addr(), "/b", "").unwrap();
    let made = traceparent_seen(&backend);
    assert_eq!(made.len(), 1);
    assert!(is_valid(&made[0]), "{made:?}");
    try_get(weir.addr(), "/c", "").unwrap();
    let again = traceparent_seen(&backend);
    assert_ne!(
        made[0][3..35],
        again[0][3..35],
        "each request starts its own trace"
    );

    // Invalid (upper-case hex, unknown version, all-zero id) or doubled: replaced by one.
    for bad in [
        "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\n".to_string(),
        "traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n".to_string(),
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n".to_string(),
        format!("traceparent: {VALID}\r\ntraceparent: {VALID}\r\n"),
    ] {
        try_get(weir.addr(), "/d", &bad).unwrap();
        let seen = traceparent_seen(&backend);
        assert_eq!(seen.len(), 1, "{bad}: {seen:?}");
        assert!(is_valid(&seen[0]) && seen[0] != VALID, "{bad}: {seen:?}");
    }
}

#[test]
fn generate_false_passes_what_came_and_makes_nothing() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[tracing]\ngenerate = false\n{}",
        proxy_config(backend.addr, "")
    ));
    try_get(weir.addr(), "/a", "").unwrap();
    assert!(traceparent_seen(&backend).is_empty());
    try_get(weir.addr(), "/a", &format!("traceparent: {VALID}\r\n")).unwrap();
    assert_eq!(traceparent_seen(&backend), vec![VALID.to_string()]);
}

#[test]
fn the_trace_id_is_in_the_access_log() {
    let backend = Backend::start();
    let log = TempFile::new("log", b"");
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n[access_log]\npath = \"{}\"\nformat = [\"requestId\", \"traceId\"]\n{}",
        log.path.display(),
        proxy_config(backend.addr, "")
    ));
    try_get(
        weir.addr(),
        "/a",
        &format!("x-request-id: passed\r\ntraceparent: {VALID}\r\n"),
    )
    .unwrap();
    try_get(weir.addr(), "/b", "x-request-id: made\r\n").unwrap();
    let made = traceparent_seen(&backend)[0].clone();
    assert!(eventually(|| std::fs::read_to_string(&log.path)
        .unwrap()
        .lines()
        .count()
        == 2));
    let text = std::fs::read_to_string(&log.path).unwrap();
    assert!(
        text.contains(
            "{\"requestId\":\"passed\",\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{{\"requestId\":\"made\",\"traceId\":\"{}\"}}",
            &made[3..35]
        )),
        "{text}"
    );
}
