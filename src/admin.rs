//! The admin API: a small HTTP/1.1 server on its own listener and threads, for operators
//! and their tools. Off unless `[admin]` is configured; loopback unless told otherwise;
//! every request needs the bearer token when one is set.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | every metric, in Prometheus' text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when every listener is bound, a config serves and no upstream group has every target down; else 503 with the reasons |
//! | `GET /routes` | the route table of the serving generation (as `weir routes`) |
//! | `GET /config` | the serving config as JSON, secrets redacted, with its generation |
//! | `GET /upstreams` | every target with its health and requests in flight |
//! | `POST /reload` | reload the config file (as `weir reload`) |
//! | `POST /cache/purge` | purge the cache: `?route=NAME` (repeatable), `?prefix=/PATH`, or everything |
//!
//! Owns: the admin socket, its threads and the JSON it answers. Must not: run on a worker
//! or touch the request path: it reads the published generation and calls
//! [`crate::server::Control`] as the control socket does. One connection per request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::server::Control;

/// The largest request head the admin API reads.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// Binds the admin listener (at start, before Weir drops privileges).
pub fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).map_err(|e| format!("cannot listen on {address} ([admin]): {e}"))
}

/// Serves the admin API on `listener` from a thread of its own (and one per connection).
pub fn serve(listener: TcpListener, control: Arc<Control>, token: Option<String>) {
    let token: Option<Arc<str>> = token.map(Into::into);
    let open = Arc::new(AtomicUsize::new(0));
    let spawned = std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let (control, token, open) = (control.clone(), token.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("weir-admin-conn".into())
                    .spawn(move || {
                        answer(stream, &control, token.as_deref());
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    crate::error!("admin API: cannot start a thread for a connection");
                }
            }
        });
    if let Err(e) = spawned {
        crate::error!("admin API: cannot start its thread: {e}");
    }
}

/// A request, as far as the admin API reads it.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
}

fn answer(mut stream: TcpStream, control: &Control, token: Option<&str>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let (status, body) = match read_request(&mut stream) {
        Err((status, why)) => (status, json!({ "message": why })),
        Ok(req) if !authorized(&req, token) => (
            401,
            json!({ "message": "Unauthorized: send Authorization: Bearer <token>" }),
        ),
        Ok(req) if req.method == "GET" && req.path == "/metrics" => match control.metrics_text() {
            Some(text) => return send(&mut stream, 200, PROMETHEUS, text.as_bytes()),
            None => (404, json!({ "message": "metrics are off" })),
        },
        Ok(req) => route(&req, control),
    };
    let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
    body.push(b'\n');
    send(&mut stream, status, "application/json", &body);
}

/// The Prometheus text format's content type.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn send(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
        crate::http::reason(status),
        body.len()
    );
    if status == 401 {
        head.push_str("www-authenticate: Bearer realm=\"weir-admin\"\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Reads a head (and drops a body of up to 64 KiB).
fn read_request(stream: &mut TcpStream) -> Result<Request, (u16, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .map_err(|_| (408, "the request did not arrive in time"))?;
        if n == 0 {
            return Err((400, "the connection closed before a whole request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::to_string)
                };
                let body: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body > 64 * 1024 {
                    return Err((413, "the admin API takes no body larger than 64 KiB"));
                }
                let mut rest = buf.len() - len;
                while rest < body {
                    let n = stream.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    rest += n;
                }
                return Ok(Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    authorization: header("authorization"),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err((431, "Request Header Fields Too Large")),
            Err(_) => return Err((400, "Bad Request")),
        }
    }
}

/// Whether the request carries the token (compared in constant time), or none is needed.
fn authorized(req: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn route(req: &Request, control: &Control) -> (u16, Value) {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => (200, json!({ "status": "ok" })),
        ("GET", "/readyz") => ready(control),
        ("GET", "/routes") => {
            let gateway = control.current();
            let routes = gateway.config.route_table();
            (
                200,
                json!({ "generation": gateway.generation, "routes": routes }),
            )
        }
        ("GET", "/config") => config(control),
        ("GET", "/upstreams") => upstreams(control),
        ("POST", "/reload") => match control.reload() {
            Ok(lines) => {
                let generation = control.current().generation;
                (
                    200,
                    json!({ "ok": true, "generation": generation, "said": lines }),
                )
            }
            Err(errors) => {
                let kept = control.current().generation;
                (
                    422,
                    json!({ "ok": false, "kept_generation": kept, "errors": errors }),
                )
            }
        },
        ("POST", "/cache/purge") if req.query.starts_with("prefix=") => {
            let prefix = percent_decode(&req.query["prefix=".len()..]);
            if !prefix.starts_with('/') {
                return (400, json!({ "message": "a path prefix starts with `/`" }));
            }
            let said = control.purge_prefix(&prefix);
            (200, json!({ "ok": true, "said": [said] }))
        }
        ("POST", "/cache/purge") => {
            let routes: Vec<String> = req
                .query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("route="))
                .map(percent_decode)
                .collect();
            let said = control.purge_cache(&routes);
            let ok = !said.iter().any(|l| l.starts_with("no route"));
            (
                if ok { 200 } else { 404 },
                json!({ "ok": ok, "said": said }),
            )
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/routes" | "/config" | "/upstreams") => {
            (405, json!({ "message": "Method Not Allowed: use GET" }))
        }
        (_, "/reload" | "/cache/purge") => {
            (405, json!({ "message": "Method Not Allowed: use POST" }))
        }
        _ => (
            404,
            json!({ "message": "Not Found", "endpoints": ENDPOINTS }),
        ),
    }
}

const ENDPOINTS: [&str; 8] = [
    "GET /metrics",
    "GET /healthz",
    "GET /readyz",
    "GET /routes",
    "GET /config",
    "GET /upstreams",
    "POST /reload",
    "POST /cache/purge[?route=NAME...|?prefix=/PATH]",
];

/// Ready: a generation serves with every listener bound, and no upstream group has all
/// its targets left out.
fn ready(control: &Control) -> (u16, Value) {
    let gateway = control.current();
    let now = crate::clock::now().ms();
    let reasons: Vec<String> = gateway
        .upstreams
        .iter()
        .filter(|u| !u.health.is_empty() && u.health.iter().all(|h| !h.is_up(now)))
        .map(|u| format!("upstream `{}`: every target is down", u.config.name))
        .collect();
    let bound = gateway.bound.len() == gateway.config.listeners.len();
    let mut reasons = reasons;
    if !bound {
        reasons.push("not every listener is bound".into());
    }
    let status = if reasons.is_empty() { 200 } else { 503 };
    (
        status,
        json!({
            "status": if reasons.is_empty() { "ready" } else { "not ready" },
            "generation": gateway.generation,
            "listeners": gateway.bound.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "reasons": reasons,
        }),
    )
}

/// The serving config, as JSON from its TOML, with API key values and the admin token
/// replaced by `"<redacted>"`.
fn config(control: &Control) -> (u16, Value) {
    let gateway = control.current();
    let mut table: toml::Table = match gateway.config.source.parse() {
        Ok(t) => t,
        Err(e) => {
            return (
                500,
                json!({ "message": format!("cannot read the config: {e}") }),
            )
        }
    };
    redact(&mut table);
    let config = serde_json::to_value(&table).unwrap_or(Value::Null);
    (
        200,
        json!({ "generation": gateway.generation, "config": config }),
    )
}

fn redact(table: &mut toml::Table) {
    const SECRET: &str = "<redacted>";
    if let Some(toml::Value::Array(keys)) = table.get_mut("api_key") {
        for key in keys {
            if let Some(v) = key.get_mut("value") {
                *v = toml::Value::String(SECRET.into());
            }
        }
    }
    if let Some(toml::Value::Table(admin)) = table.get_mut("admin") {
        if let Some(v) = admin.get_mut("token") {
            *v = toml::Value::String(SECRET.into());
        }
    }
}

fn upstreams(control: &Control) -> (u16, Value) {
    let gateway = control.current();
    let now = crate::clock::now().ms();
    let groups: Vec<Value> = gateway
        .upstreams
        .iter()
        .map(|u| {
            let targets: Vec<Value> = u
                .config
                .targets
                .iter()
                .zip(u.health.iter())
                .map(|(t, h)| {
                    json!({
                        "address": t.authority,
                        "weight": t.weight,
                        "up": h.is_up(now),
                        "down_for_ms": h.down_until_ms().saturating_sub(now),
                        "consecutive_failures": h.consecutive_failures(),
                        "in_flight": control.in_flight(&u.config.name, &t.authority),
                    })
                })
                .collect();
            json!({ "group": u.config.name, "targets": targets })
        })
        .collect();
    (
        200,
        json!({ "generation": gateway.generation, "upstreams": groups }),
    )
}

/// `%XX` decoded (route names may hold any character); `+` stays `+`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let req = |a: &str| Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            authorization: Some(a.into()),
        };
        let token = Some("0123456789abcdef");
        assert!(authorized(&req("Bearer 0123456789abcdef"), token));
        assert!(!authorized(&req("Bearer 0123456789abcde"), token));
        assert!(!authorized(&req("Bearer 0123456789abcdeF"), token));
        assert!(!authorized(&req("0123456789abcdef"), token));
        assert!(authorized(&req(""), None));
    }

    #[test]
    fn secrets_are_redacted() {
        let mut t: toml::Table = "[admin]\naddress = \"127.0.0.1:1\"\ntoken = \"s3cr3t-s3cr3t-s3cr3t\"\n[[api_key]]\nid = \"a\"\nvalue = \"key-value-0123456789\"\n"
            .parse()
            .unwrap();
        redact(&mut t);
        let text = t.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("key-value"),
            "{text}"
        );
        assert!(text.contains("id = \"a\""));
    }

    #[test]
    fn route_names_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
