//! The access log: one line per request, JSON with API Gateway's `$context` names (or
//! nginx's combined format), written by a thread of its own; reopened for logrotate.
//! Lines are read back from the file and parsed as JSON, field by field.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A fresh path for a log file in the temp directory (removed when dropped).
struct LogPath(PathBuf);

impl LogPath {
    fn new() -> LogPath {
        let t = TempFile::new("log", b"");
        let path = t.path.clone();
        drop(t);
        LogPath(path)
    }
}

impl Drop for LogPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("log.1"));
    }
}

/// The file's lines, once it has at least `n` (lines are written within a worker tick).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, expected {n}:\n{text}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The line whose `requestId` is `id`.
fn line_for<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["requestId"] == id)
        .unwrap_or_else(|| panic!("no line for request {id} in {lines:?}"))
}

#[test]
fn each_kind_of_request_leaves_one_json_line_with_its_fields() {
    let backend = Backend::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = LogPath::new();
    // One worker: the cache hit must find the entry the miss stored (shards are per worker).
    let weir = Weir::start(&format!(
        r#"
[server]
workers = 1

[access_log]
path = "{log}"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[upstream.dead]
targets = ["{dead}"]

[[api_key]]
id = "alice"
value = "alice-key-0123456789abcdef"

[[route]]
path = "/items/{{id}}"
methods = ["GET"]
upstream = "backend"
api_key_required = true

[[route]]
path = "/mock"
mock = {{ status = 201, body = "made" }}

[[route]]
path = "/cached/{{*rest}}"
upstream = "backend"
strip_prefix = "/cached"
cache = {{ ttl = "60s" }}

[[route]]
path = "/limited"
mock = {{ body = "ok" }}
throttle = {{ rate = 0.01, burst = 1 }}

[[route]]
path = "/down"
upstream = "dead"
"#,
        log = log.0.display(),
        backend = backend.addr,
    ));
    let addr = weir.addr();
    let key = "x-api-key: alice-key-0123456789abcdef\r\n";
    let get = |path: &str, id: &str, extra: &str| {
        try_get(
            addr,
            path,
            &format!("x-request-id: {id}\r\nuser-agent: log-test/1\r\n{extra}"),
        )
        .unwrap()
    };
    assert_eq!(get("/items/42?full=1", "proxied", key).status, 200);
    assert_eq!(get("/mock", "mock", "").status, 201);
    assert_eq!(get("/nowhere", "missing", "").status, 404);
    assert_eq!(get("/limited", "first", "").status, 200);
    assert_eq!(get("/limited", "throttled", "").status, 429);
    assert_eq!(get("/down", "failed", "").status, 502);
    assert_eq!(get("/cached/a", "miss", "").status, 200);
    let hit = get("/cached/a", "hit", "");
    assert_eq!(hit.header("x-cache"), Some("HIT"));

    let lines: Vec<Value> = lines(&log.0, 8).iter().map(|l| json(l)).collect();
    assert_eq!(lines.len(), 8, "one line per request: {lines:?}");

    let p = line_for(&lines, "proxied");
    assert_eq!(p["httpMethod"], "GET");
    assert_eq!(p["routeKey"], "GET /items/{id}");
    assert_eq!(p["path"], "/items/42");
    assert_eq!(p["status"], 200);
    assert_eq!(p["protocol"], "HTTP/1.1");
    assert_eq!(p["ip"], "127.0.0.1");
    assert_eq!(p["stage"], "public");
    assert_eq!(p["userAgent"], "log-test/1");
    assert_eq!(p["apiKeyId"], "alice");
    assert_eq!(p["integrationStatus"], 200);
    assert_eq!(p["upstream"], backend.addr.to_string());
    assert_eq!(p["error.responseType"], "-");
    // The backend answers with the path: the body's length is what was logged.
    assert_eq!(p["responseLength"], "/items/42".len());
    assert!(p["responseLatency"].is_u64() && p["integrationLatency"].is_u64());
    assert!(p["requestTimeEpoch"].as_u64().unwrap() > 1_700_000_000_000);
    let time = p["requestTime"].as_str().unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    // Never the key itself.
    assert!(!lines.iter().any(|l| l.to_string().contains("alice-key")));

    let m = line_for(&lines, "mock");
    assert_eq!(
        (&m["status"], &m["routeKey"]),
        (&Value::from(201), &Value::from("ANY /mock"))
    );
    assert_eq!(m["responseLength"], 4);
    assert_eq!(m["integrationStatus"], "-");
    assert_eq!(m["upstream"], "-");

    let n = line_for(&lines, "missing");
    assert_eq!(n["status"], 404);
    assert_eq!(n["routeKey"], "-");
    assert_eq!(n["error.responseType"], "RESOURCE_NOT_FOUND");
    assert_eq!(n["error.message"], "Not Found");

    let t = line_for(&lines, "throttled");
    assert_eq!(t["status"], 429);
    assert_eq!(t["error.responseType"], "THROTTLED");

    let f = line_for(&lines, "failed");
    assert_eq!(f["status"], 502);
    assert_eq!(f["error.responseType"], "INTEGRATION_FAILURE");
    assert_eq!(f["upstream"], dead.to_string());
    assert_eq!(f["integrationStatus"], "-");
    assert_ne!(f["integrationErrorMessage"], "-");

    assert_eq!(line_for(&lines, "miss")["cacheStatus"], "MISS");
    let h = line_for(&lines, "hit");
    assert_eq!(h["cacheStatus"], "HIT");
    assert_eq!(h["upstream"], "-");
}

#[test]
fn the_combined_format_is_nginx_s_and_a_field_list_picks_fields() {
    let combined = LogPath::new();
    let picked = LogPath::new();
    let weir = Weir::start(&format!(
        r#"
[access_log]
path = "{combined}"
format = "clf"

[[listener]]
name = "a"
address = "127.0.0.1:0"

[[listener]]
name = "b"
address = "127.0.0.1:0"
access_log = {{ path = "{picked}", format = ["requestId", "status", "identity.sourceIp"] }}

[[route]]
path = "/hello"
mock = {{ body = "hello" }}
"#,
        combined = combined.0.display(),
        picked = picked.0.display(),
    ));
    let a = weir.listeners["a"];
    let b = weir.listeners["b"];
    try_get(
        a,
        "/hello?x=\"1\"",
        "referer: https://example.com/\r\nuser-agent: ua\r\n",
    )
    .unwrap();
    try_get(b, "/hello", "x-request-id: picked-1\r\n").unwrap();

    let line = &lines(&combined.0, 1)[0];
    // 127.0.0.1 - - [03/Dec/2026:21:38:05 +0000] "GET /hello?x="1" HTTP/1.1" 200 5 "..." "ua"
    let (ip, rest) = line.split_once(" - - [").unwrap();
    assert_eq!(ip, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26, "{line}");
    assert_eq!(
        rest,
        r#""GET /hello?x=\x221\x22 HTTP/1.1" 200 5 "https://example.com/" "ua""#
    );

    let picked_lines = lines(&picked.0, 1);
    assert_eq!(
        json(&picked_lines[0]),
        serde_json::json!({"requestId": "picked-1", "status": 200, "ip": "127.0.0.1"})
    );
    // Listener b has its own log; a's file has a's request only.
    assert_eq!(lines(&combined.0, 1).len(), 1);
}

#[test]
fn only_errors_and_sampling_pick_what_is_logged() {
    let errors = LogPath::new();
    let sampled = LogPath::new();
    let weir = Weir::start(&format!(
        r#"
[server]
workers = 1

[[listener]]
name = "errors"
address = "127.0.0.1:0"
access_log = {{ path = "{errors}", only = "errors" }}

[[listener]]
name = "sampled"
address = "127.0.0.1:0"
access_log = {{ path = "{sampled}", sample = 5 }}

[[route]]
path = "/ok"
mock = {{ body = "ok" }}
"#,
        errors = errors.0.display(),
        sampled = sampled.0.display(),
    ));
    for i in 0..4 {
        try_get(weir.listeners["errors"], "/ok", "").unwrap();
        try_get(
            weir.listeners["errors"],
            "/nope",
            &format!("x-request-id: err-{i}\r\n"),
        )
        .unwrap();
    }
    for _ in 0..20 {
        try_get(weir.listeners["sampled"], "/ok", "").unwrap();
    }
    let logged = lines(&errors.0, 4);
    assert_eq!(logged.len(), 4, "{logged:?}");
    for (i, l) in logged.iter().enumerate() {
        let v = json(l);
        assert_eq!(
            (v["status"].clone(), v["requestId"].clone()),
            (404.into(), format!("err-{i}").into())
        );
    }
    assert_eq!(lines(&sampled.0, 4).len(), 4, "one in five of 20");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&sampled.0, 4).len(), 4);
}

#[test]
fn sigusr1_and_a_reload_reopen_the_file_after_logrotate_moves_it() {
    let log = LogPath::new();
    let rotated = log.0.with_extension("log.1");
    let weir = Weir::start(&format!(
        "[access_log]\npath = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nmock = {{}}\n",
        log.0.display()
    ));
    try_get(weir.addr(), "/x", "x-request-id: before\r\n").unwrap();
    lines(&log.0, 1);
    // logrotate: move the file, then postrotate signals.
    std::fs::rename(&log.0, &rotated).unwrap();
    weir.signal(libc::SIGUSR1);
    assert!(weir.wait_for_log("SIGUSR1: reopening 1 access log"));
    try_get(weir.addr(), "/x", "x-request-id: after-usr1\r\n").unwrap();
    assert!(lines(&log.0, 1)[0].contains("after-usr1"));
    assert_eq!(lines(&rotated, 1).len(), 1);

    // Again, with `weir reload` as the postrotate command.
    std::fs::rename(&log.0, &rotated).unwrap();
    weir.reload();
    try_get(weir.addr(), "/x", "x-request-id: after-reload\r\n").unwrap();
    assert!(lines(&log.0, 1)[0].contains("after-reload"));
}

#[test]
fn lines_of_requests_served_before_a_stop_are_written() {
    let log = LogPath::new();
    let mut weir = Weir::start(&format!(
        "[access_log]\npath = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nmock = {{}}\n",
        log.0.display()
    ));
    for _ in 0..50 {
        try_get(weir.addr(), "/x", "").unwrap();
    }
    weir.signal(libc::SIGTERM);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
    let text = std::fs::read_to_string(&log.0).unwrap();
    assert_eq!(text.lines().count(), 50);
}

#[test]
fn a_bad_access_log_is_refused_with_its_line() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nmock = {}\n";
    let e = check_fails(&format!(
        "[access_log]\npath = \"/no/such/dir/a.log\"\n{base}"
    ));
    assert!(
        e.contains(":2:") && e.contains("no directory /no/such/dir"),
        "{e}"
    );
    let e = check_fails(&format!(
        "[access_log]\npath = \"stderr\"\nformat = [\"status\", \"bogus\"]\n{base}"
    ));
    assert!(
        e.contains(":3:") && e.contains("no access log field `bogus`"),
        "{e}"
    );
    let e = check_fails(&format!(
        "[access_log]\npath = \"stderr\"\nonly = \"some\"\n{base}"
    ));
    assert!(e.contains("write \"all\" or \"errors\""), "{e}");
    let e = check_fails(&format!(
        "[access_log]\npath = \"stderr\"\nsample = 0\n{base}"
    ));
    assert!(e.contains("sample = 0 logs nothing"), "{e}");
    let e = check_fails("[[listener]]\naddress = \"127.0.0.1:0\"\naccess_log = true\n[[route]]\npath = \"/x\"\nmock = {}\n");
    assert!(e.contains(":3:") && e.contains("access_log = true"), "{e}");
}
