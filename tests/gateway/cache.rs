//! The response cache: hits and misses counted at a real origin, the RFC 9111 rules one by
//! one with the response that breaks each, variants, 304s, invalidation, coalescing,
//! serving stale, the memory budget and purges.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::*;

/// What the origin answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// An origin whose answers a test scripts: the closure gets the request and how many
/// requests came before it (so bodies can say which fetch produced them).
struct Origin {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, every request gets a bare 503.
    failing: Arc<AtomicBool>,
    /// When set, every connection is closed without an answer.
    hang_up: Arc<AtomicBool>,
}

impl Origin {
    fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let hang_up = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (c, s, f, h) = (
            count.clone(),
            seen.clone(),
            failing.clone(),
            hang_up.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                if h.load(Ordering::SeqCst) {
                    continue; // dropped: closed unanswered
                }
                let (c, s, f, h, script) =
                    (c.clone(), s.clone(), f.clone(), h.clone(), script.clone());
                thread::spawn(move || serve_origin(stream, &c, &s, &f, &h, &*script));
            }
        });
        Origin {
            addr,
            count,
            seen,
            failing,
            hang_up,
        }
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn serve_origin(
    stream: TcpStream,
    count: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    failing: &AtomicBool,
    hang_up: &AtomicBool,
    script: &Script,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(head) = read_head(&mut reader) {
        if hang_up.load(Ordering::SeqCst) {
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(head.as_bytes()).is_err() {
            return;
        }
        let request = Seen {
            method: req.method.unwrap().to_string(),
            target: req.path.unwrap().to_string(),
            head: head.clone(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_string(), value)
                })
                .collect(),
            body_len: 0,
            body: Vec::new(),
        };
        let n = count.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(request.clone());
        let reply = if failing.load(Ordering::SeqCst) {
            Reply {
                status: 503,
                ..Reply::ok("origin down")
            }
        } else {
            script(&request, n)
        };
        thread::sleep(reply.delay);
        let mut text = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        let bodiless = reply.status == 304 || reply.status == 204;
        if !bodiless {
            text.push_str(&format!("content-length: {}\r\n", reply.body.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        if !bodiless && request.method != "HEAD" {
            bytes.extend_from_slice(&reply.body);
        }
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Weir with one cached catch-all route (`cache = { <cache> }`) in front of `origin`.
fn cached(origin: &Origin, cache: &str, extra: &str) -> Weir {
    Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.origin]
targets = ["{}"]

[[route]]
name = "cached"
path = "/{{*rest}}"
upstream = "origin"
cache = {{ {cache} }}

{extra}
"#,
        origin.addr
    ))
}

/// One GET on a fresh connection, with extra header lines.
fn get(weir: &Weir, path: &str, extra: &str) -> RawResponse {
    raw(
        weir.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .expect("a response")
}

/// Asks the same thing twice on one connection: the responses and the origin's count.
fn twice(weir: &Weir, path: &str, extra: &str) -> (RawResponse, RawResponse) {
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let a = get_on(&mut s, &mut r, path, extra);
    let b = get_on(&mut s, &mut r, path, extra);
    (a, b)
}

fn x_cache(r: &RawResponse) -> &str {
    r.header("x-cache").unwrap_or("-")
}

fn counting(cc: &'static str) -> impl Fn(&Seen, usize) -> Reply + Send + Sync {
    move |_, n| {
        let r = Reply::ok(format!("fetch {n}"));
        if cc.is_empty() {
            r
        } else {
            r.header("cache-control", cc)
        }
    }
}

#[test]
fn a_second_request_is_a_hit_with_an_age() {
    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(&origin, "", "");
    let (a, b) = twice(&weir, "/items/1", "");
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "HIT"));
    assert_eq!(a.body_text(), "fetch 0");
    assert_eq!(b.body_text(), "fetch 0");
    assert!(b.header("age").is_some(), "{}", b.head);
    assert!(a.header("age").is_none(), "{}", a.head);
    assert_eq!(b.header("cache-control"), Some("max-age=60"));
    assert_eq!(b.header("content-length"), Some("7"));
    assert_eq!(origin.requests(), 1);

    // A new connection, on whichever worker, finds it too (at most one miss per worker).
    for _ in 0..6 {
        assert_eq!(get(&weir, "/items/1", "").body_text().len(), 7);
    }
    assert!(origin.requests() <= 2);
    // Another path is another key; the query is part of it by default.
    assert_eq!(x_cache(&get(&weir, "/items/2", "")), "MISS");
    assert_eq!(x_cache(&get(&weir, "/items/1?x=1", "")), "MISS");
}

#[test]
fn head_is_answered_from_the_get_entry() {
    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(&origin, "", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/h", "")), "MISS");
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(x_cache(&head), "HIT");
    assert_eq!(head.header("content-length"), Some("7"));
    // The connection is still in step: the next response is whole.
    assert_eq!(get_on(&mut s, &mut r, "/h", "").body_text(), "fetch 0");
    assert_eq!(origin.requests(), 1);
}

#[test]
fn head_is_a_bypass_when_the_route_caches_only_get() {
    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(&origin, "methods = [\"GET\"]", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/h", "")), "MISS");
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/h", "")), "HIT");
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!((head.status, x_cache(&head)), (200, "BYPASS"));
    assert_eq!(origin.last().method, "HEAD");
    assert_eq!(origin.requests(), 2);
    // The connection is still in step, and the GET entry is untouched.
    let again = get_on(&mut s, &mut r, "/h", "");
    assert_eq!(
        (x_cache(&again), again.body_text().as_str()),
        ("HIT", "fetch 0")
    );
}

#[test]
fn a_head_on_an_expired_entry_is_forwarded_as_it_came() {
    let origin = Origin::start(|req: &Seen, n| {
        if req.header("if-none-match").is_some() {
            return Reply {
                status: 304,
                ..Reply::ok("")
            };
        }
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
    });
    let weir = cached(&origin, "", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    get_on(&mut s, &mut r, "/e", "");
    thread::sleep(Duration::from_millis(1500));
    s.write_all(b"HEAD /e HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!((head.status, x_cache(&head)), (200, "MISS"));
    assert_eq!(origin.last().method, "HEAD");
    assert!(origin.last().header("if-none-match").is_none());
}

#[test]
fn the_route_ttl_applies_without_origin_freshness_and_expires() {
    let origin = Origin::start(counting(""));
    let weir = cached(&origin, "ttl = \"2s\"", "");
    let (a, b) = twice(&weir, "/t", "");
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "HIT"));
    thread::sleep(Duration::from_millis(2500));
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let c = get_on(&mut s, &mut r, "/t", "");
    assert_eq!(x_cache(&c), "MISS");
    assert_eq!(c.body_text(), "fetch 1");
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/t", "")), "HIT");
}

#[test]
fn s_maxage_wins_over_max_age() {
    let origin = Origin::start(counting("max-age=600, s-maxage=2"));
    let weir = cached(&origin, "", "");
    let (_, b) = twice(&weir, "/s", "");
    assert_eq!(x_cache(&b), "HIT");
    thread::sleep(Duration::from_millis(2500));
    let (c, _) = twice(&weir, "/s", "");
    assert_eq!(x_cache(&c), "MISS", "s-maxage=1 has run out");
}

#[test]
fn expires_in_the_past_or_invalid_is_not_fresh_but_max_age_overrides_it() {
    let origin = Origin::start(|req: &Seen, n| {
        let r = Reply::ok(format!("fetch {n}")).header("expires", "Thu, 01 Jan 1970 00:00:00 GMT");
        match req.target.as_str() {
            "/max-age-wins" => r.header("cache-control", "max-age=60"),
            "/invalid" => Reply::ok(format!("fetch {n}")).header("expires", "0"),
            _ => r,
        }
    });
    let weir = cached(&origin, "", "");
    for path in ["/expired", "/invalid"] {
        let (a, b) = twice(&weir, path, "");
        assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"), "{path}");
    }
    let (_, b) = twice(&weir, "/max-age-wins", "");
    assert_eq!(x_cache(&b), "HIT");
}

#[test]
fn no_store_and_private_are_never_stored() {
    let origin = Origin::start(|req: &Seen, n| {
        let cc = match req.target.as_str() {
            "/no-store" => "no-store, max-age=60",
            _ => "private, max-age=60",
        };
        Reply::ok(format!("fetch {n}")).header("cache-control", cc)
    });
    let weir = cached(&origin, "", "");
    for path in ["/no-store", "/private"] {
        let (a, b) = twice(&weir, path, "");
        assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"), "{path}");
        assert_ne!(a.body_text(), b.body_text());
    }
    assert_eq!(origin.requests(), 4);
}

#[test]
fn honor_origin_false_uses_the_route_ttl_anyway() {
    let origin = Origin::start(counting("no-store"));
    let weir = cached(&origin, "honor_origin = false", "");
    let (_, b) = twice(&weir, "/p", "");
    assert_eq!(x_cache(&b), "HIT");
}

#[test]
fn no_cache_is_revalidated_every_time() {
    let origin = Origin::start(|req: &Seen, n| {
        if req.header("if-none-match") == Some("\"v1\"") {
            return Reply {
                status: 304,
                ..Reply::ok("")
            }
            .header("etag", "\"v1\"");
        }
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "no-cache")
            .header("etag", "\"v1\"")
    });
    let weir = cached(&origin, "", "");
    let (a, b) = twice(&weir, "/nc", "");
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "REVALIDATED"));
    assert_eq!(
        b.body_text(),
        "fetch 0",
        "the stored body, confirmed by the origin"
    );
    assert_eq!(origin.requests(), 2);
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
}

#[test]
fn a_304_updates_the_stored_fields_and_freshness() {
    let origin = Origin::start(|req: &Seen, n| {
        if req.header("if-none-match") == Some("\"v1\"") {
            // Still the same representation, now fresh for a minute, with a new field value.
            return Reply {
                status: 304,
                ..Reply::ok("")
            }
            .header("cache-control", "max-age=60")
            .header("x-version", "2");
        }
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
            .header("x-version", "1")
    });
    let weir = cached(&origin, "", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    get_on(&mut s, &mut r, "/u", "");
    thread::sleep(Duration::from_millis(1500));
    let revalidated = get_on(&mut s, &mut r, "/u", "");
    assert_eq!(x_cache(&revalidated), "REVALIDATED");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(revalidated.header("cache-control"), Some("max-age=60"));
    assert_eq!(revalidated.body_text(), "fetch 0");
    thread::sleep(Duration::from_millis(1200));
    let hit = get_on(&mut s, &mut r, "/u", "");
    assert_eq!((x_cache(&hit), hit.header("x-version")), ("HIT", Some("2")));
    let nm = get_on(&mut s, &mut r, "/u", "If-None-Match: \"v1\"\r\n");
    assert_eq!(
        (nm.status, nm.header("cache-control")),
        (304, Some("max-age=60"))
    );
    assert_eq!(origin.requests(), 2);
}

#[test]
fn a_changed_resource_replaces_the_entry_on_revalidation() {
    let origin = Origin::start(|_: &Seen, n| {
        // Never 304: the representation changes on every fetch.
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "max-age=2")
            .header("etag", &format!("\"v{n}\""))
    });
    let weir = cached(&origin, "", "");
    // One connection, so one worker's shard.
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    get_on(&mut s, &mut r, "/changing", "");
    let b = get_on(&mut s, &mut r, "/changing", "");
    assert_eq!(b.body_text(), "fetch 0");
    thread::sleep(Duration::from_millis(2500));
    let c = get_on(&mut s, &mut r, "/changing", "");
    let d = get_on(&mut s, &mut r, "/changing", "");
    assert_eq!(x_cache(&c), "MISS");
    assert_eq!(c.body_text(), "fetch 1");
    assert_eq!((x_cache(&d), d.body_text().as_str()), ("HIT", "fetch 1"));
    assert_eq!(origin.last().header("if-none-match"), Some("\"v0\""));
}

#[test]
fn authorization_is_shared_only_when_the_response_says_so() {
    let origin = Origin::start(|req: &Seen, n| {
        let cc = match req.target.as_str() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            "/must-revalidate" => "must-revalidate, max-age=60",
            _ => "max-age=60",
        };
        Reply::ok(format!("fetch {n}")).header("cache-control", cc)
    });
    let weir = cached(&origin, "", "");
    let auth = "Authorization: Bearer alice\r\n";
    let (a, b) = twice(&weir, "/plain", auth);
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"));
    // Nor is Bob given Alice's response.
    assert_eq!(
        x_cache(&get(&weir, "/plain", "Authorization: Bearer bob\r\n")),
        "MISS"
    );
    for path in ["/public", "/s-maxage", "/must-revalidate"] {
        let (_, b) = twice(&weir, path, auth);
        assert_eq!(x_cache(&b), "HIT", "{path}");
    }
}

#[test]
fn set_cookie_is_stored_only_when_the_route_allows_it() {
    let script = |_: &Seen, n| {
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "max-age=60")
            .header("set-cookie", "session=abc")
    };
    let origin = Origin::start(script);
    let weir = cached(&origin, "", "");
    let (_, b) = twice(&weir, "/c", "");
    assert_eq!(x_cache(&b), "MISS");

    let origin = Origin::start(script);
    let weir = cached(&origin, "set_cookie = true", "");
    let (_, b) = twice(&weir, "/c", "");
    assert_eq!(x_cache(&b), "HIT");
    assert_eq!(b.header("set-cookie"), Some("session=abc"));
}

#[test]
fn vary_stores_one_variant_per_header_value_and_never_vary_star() {
    let origin = Origin::start(|req: &Seen, n| {
        let lang = req.header("accept-language").unwrap_or("none").to_string();
        let vary = if req.target == "/star" {
            "*"
        } else {
            "Accept-Language"
        };
        Reply::ok(format!("{lang} {n}"))
            .header("cache-control", "max-age=60")
            .header("vary", vary)
    });
    let weir = cached(&origin, "", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |lang: &str| {
        let resp = get_on(
            &mut s,
            &mut r,
            "/v",
            &format!("Accept-Language: {lang}\r\n"),
        );
        (x_cache(&resp).to_string(), resp.body_text())
    };
    assert_eq!(ask("de"), ("MISS".into(), "de 0".into()));
    assert_eq!(ask("fr"), ("MISS".into(), "fr 1".into()));
    assert_eq!(ask("de"), ("HIT".into(), "de 0".into()));
    assert_eq!(ask("fr"), ("HIT".into(), "fr 1".into()));
    let none = get_on(&mut s, &mut r, "/v", "");
    assert_eq!(
        x_cache(&none),
        "MISS",
        "no Accept-Language is a variant of its own"
    );

    let (a, b) = twice(&weir, "/star", "");
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"));
}

#[test]
fn key_headers_and_query_settings_shape_the_key() {
    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(
        &origin,
        "key_headers = [\"x-tenant\"], query = \"sorted\"",
        "",
    );
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let a = get_on(&mut s, &mut r, "/k?b=2&a=1", "X-Tenant: one\r\n");
    let b = get_on(&mut s, &mut r, "/k?a=1&b=2", "X-Tenant: one\r\n");
    let c = get_on(&mut s, &mut r, "/k?a=1&b=2", "X-Tenant: two\r\n");
    assert_eq!(
        (x_cache(&a), x_cache(&b), x_cache(&c)),
        ("MISS", "HIT", "MISS")
    );

    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(&origin, "query = \"ignore\"", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let a = get_on(&mut s, &mut r, "/q?x=1", "");
    let b = get_on(&mut s, &mut r, "/q?y=2", "");
    assert_eq!(x_cache(&a), "MISS");
    assert_eq!(b.body_text(), "fetch 0", "{}", x_cache(&b));
}

#[test]
fn conditional_requests_get_304_from_a_fresh_entry() {
    let origin = Origin::start(|_: &Seen, n| {
        Reply::ok(format!("fetch {n}"))
            .header("cache-control", "max-age=60")
            .header("etag", "W/\"e1\"")
            .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            .header("content-type", "text/plain")
    });
    let weir = cached(&origin, "", "");
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let full = get_on(&mut s, &mut r, "/c", "If-None-Match: \"e1\"\r\n");
    assert_eq!(full.status, 200, "the fill fetches a full response");
    assert!(origin.last().header("if-none-match").is_none());

    let nm = get_on(&mut s, &mut r, "/c", "If-None-Match: \"zz\", \"e1\"\r\n");
    assert_eq!((nm.status, x_cache(&nm)), (304, "HIT"));
    assert_eq!(nm.header("etag"), Some("W/\"e1\""));
    assert_eq!(nm.header("cache-control"), Some("max-age=60"));
    assert!(nm.header("content-type").is_none(), "{}", nm.head);
    assert!(nm.body.is_empty());

    let other = get_on(&mut s, &mut r, "/c", "If-None-Match: \"zz\"\r\n");
    assert_eq!(other.status, 200);
    let since = get_on(
        &mut s,
        &mut r,
        "/c",
        "If-Modified-Since: Mon, 07 Nov 1994 08:49:37 GMT\r\n",
    );
    assert_eq!(since.status, 304);
    let before = get_on(
        &mut s,
        &mut r,
        "/c",
        "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n",
    );
    assert_eq!(before.status, 200);
    assert_eq!(origin.requests(), 1);
}

#[test]
fn a_successful_unsafe_method_invalidates_the_uri_on_every_worker() {
    let origin = Origin::start(|req: &Seen, n| match req.method.as_str() {
        "GET" => Reply::ok(format!("fetch {n}")).header("cache-control", "max-age=600"),
        _ if req.target.starts_with("/fails") => Reply {
            status: 500,
            ..Reply::ok("no")
        },
        _ => Reply::ok("changed"),
    });
    let weir = cached(&origin, "", "");
    // Fill both workers' shards (new connections spread over the workers).
    let mut before = Vec::new();
    for _ in 0..12 {
        before.push(get(&weir, "/doc?v=1", "").body_text());
    }
    assert!(origin.requests() <= 2);

    // A failed POST changes nothing.
    let post = |path: &str| {
        raw(
            weir.addr(),
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").as_bytes(),
        )
        .unwrap()
    };
    let p = post("/fails");
    assert_eq!((p.status, x_cache(&p)), (500, "BYPASS"));
    let fetched = origin.requests();
    for _ in 0..4 {
        assert!(before.contains(&get(&weir, "/doc?v=1", "").body_text()));
    }
    assert_eq!(origin.requests(), fetched);

    assert_eq!(post("/doc?v=1").status, 200);
    // Now no worker answers with what it held before.
    for _ in 0..12 {
        let after = get(&weir, "/doc?v=1", "");
        assert!(
            !before.contains(&after.body_text()),
            "a stale entry survived the POST: {}",
            after.body_text()
        );
    }
}

#[test]
fn a_successful_unsafe_method_invalidates_every_query_form_of_the_path_on_every_worker() {
    let origin = Origin::start(|req: &Seen, n| match req.method.as_str() {
        "GET" => Reply::ok(format!("fetch {n}")).header("cache-control", "max-age=600"),
        _ => Reply::ok("changed"),
    });
    // Two workers (the default here), so entries sit in both shards.
    let weir = cached(&origin, "", "");
    let forms = [
        "/v1/items/1?a=1&b=2",
        "/v1/items/1?b=2&a=1",
        "/v1/items/1?page=3",
        "/v1/items/1",
    ];
    let others = ["/v1/items/10?a=1", "/v1/items/1/parts?a=1"];
    // Fill both workers' shards: new connections spread over the workers by source port,
    // so keep opening them until each worker has fetched the path once (two fetches).
    let fill = |paths: &[&str]| -> Vec<String> {
        let mut bodies = Vec::new();
        for path in paths {
            let start = origin.requests();
            for _ in 0..200 {
                bodies.push(get(&weir, path, "").body_text());
                if origin.requests() - start >= 2 && bodies.len() >= 8 {
                    break;
                }
            }
            assert_eq!(origin.requests() - start, 2, "{path}: not on both workers");
        }
        bodies
    };
    let before = fill(&forms);
    let before_others = fill(&others);
    assert!(origin.requests() <= 2 * (forms.len() + others.len()));
    for path in forms {
        assert_eq!(x_cache(&get(&weir, path, "")), "HIT", "{path}");
    }

    let delete = raw(
        weir.addr(),
        b"DELETE /v1/items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(delete.status, 200);
    // Every query form is gone on every worker.
    let mut stored_since = Vec::new();
    for path in forms {
        for _ in 0..8 {
            let after = get(&weir, path, "");
            stored_since.push(after.body_text());
            assert!(
                !before.contains(&after.body_text()),
                "{path}: a stale entry survived the DELETE ({}, {})",
                x_cache(&after),
                after.body_text()
            );
        }
    }
    // Other paths, even ones that start the same, are kept.
    let fetched = origin.requests();
    for path in others {
        for _ in 0..4 {
            let r = get(&weir, path, "");
            assert_eq!(x_cache(&r), "HIT", "{path}");
            assert!(before_others.contains(&r.body_text()));
        }
    }
    assert_eq!(origin.requests(), fetched);

    // A POST with a query of its own drops the forms stored since, too: whatever either
    // worker answered with since the DELETE.
    let mut refilled = stored_since;
    for path in forms {
        for _ in 0..8 {
            refilled.push(get(&weir, path, "").body_text());
        }
    }
    let post = raw(
        weir.addr(),
        b"POST /v1/items/1?via=post HTTP/1.1\r\nHost: X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 200);
    for path in forms {
        for _ in 0..8 {
            let after = get(&weir, path, "");
            assert!(
                !refilled.contains(&after.body_text()),
                "{path}: a stale entry survived the POST ({})",
                after.body_text()
            );
        }
    }
}

#[test]
fn concurrent_misses_make_one_upstream_request_per_worker() {
    let origin = Origin::start(|_: &Seen, n| Reply {
        delay: Duration::from_millis(400),
        ..Reply::ok(format!("fetch {n}")).header("cache-control", "max-age=60")
    });
    let weir = cached(&origin, "", "");
    let addr = weir.addr();
    let clients: Vec<_> = (0..24)
        .map(|_| {
            thread::spawn(move || {
                raw(
                    addr,
                    b"GET /popular HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .unwrap()
            })
        })
        .collect();
    let responses: Vec<RawResponse> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(
        origin.requests() <= 2,
        "{} upstream requests for 24 concurrent misses on 2 workers",
        origin.requests()
    );
    let hits = responses.iter().filter(|r| x_cache(r) == "HIT").count();
    assert!(hits >= 22, "{hits} of 24 waited for the fetch");
}

#[test]
fn a_waiter_goes_upstream_itself_after_the_lock_timeout() {
    let origin = Origin::start(|_: &Seen, n| Reply {
        delay: Duration::from_millis(if n == 0 { 3000 } else { 0 }),
        ..Reply::ok(format!("fetch {n}")).header("cache-control", "max-age=60")
    });
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream.origin]\ntargets = [\"{}\"]\n\n\
         [[route]]\npath = \"/{{*rest}}\"\nupstream = \"origin\"\n\
         cache = {{ lock_timeout = \"200ms\" }}\n",
        origin.addr
    ));
    let addr = weir.addr();
    let slow = thread::spawn(move || {
        raw(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    assert!(eventually(|| origin.requests() == 1));
    let quick = get(&weir, "/slow", "");
    assert_eq!(quick.body_text(), "fetch 1");
    assert_eq!(slow.join().unwrap().unwrap().body_text(), "fetch 0");
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let origin = Origin::start(|_: &Seen, n| Reply {
        // The background refresh takes long enough for the stale answers to come first.
        delay: Duration::from_millis(if n == 0 { 0 } else { 1500 }),
        ..Reply::ok(format!("fetch {n}")).header(
            "cache-control",
            if n == 0 {
                "max-age=1, stale-while-revalidate=60"
            } else {
                "max-age=600"
            },
        )
    });
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream.origin]\ntargets = [\"{}\"]\n\n\
         [[route]]\npath = \"/{{*rest}}\"\nupstream = \"origin\"\ncache = {{ }}\n",
        origin.addr
    ));
    assert_eq!(get(&weir, "/swr", "").body_text(), "fetch 0");
    thread::sleep(Duration::from_millis(1300));
    for _ in 0..5 {
        let r = get(&weir, "/swr", "");
        assert_eq!((x_cache(&r), r.body_text().as_str()), ("STALE", "fetch 0"));
    }
    assert!(eventually(
        || get(&weir, "/swr", "").body_text() == "fetch 1"
    ));
    assert_eq!(
        origin.requests(),
        2,
        "one background refresh for all stale hits"
    );
    assert_eq!(x_cache(&get(&weir, "/swr", "")), "HIT");
}

#[test]
fn stale_if_error_serves_stale_when_the_origin_fails() {
    let origin = Origin::start(|req: &Seen, n| {
        let cc = if req.target == "/sie" {
            "max-age=1, stale-if-error=60"
        } else {
            "max-age=1"
        };
        Reply::ok(format!("fetch {n}")).header("cache-control", cc)
    });
    let weir = cached(&origin, "", "");
    // One connection, so one worker's shard.
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let a = get_on(&mut s, &mut r, "/sie", "");
    get_on(&mut s, &mut r, "/plain", "");
    thread::sleep(Duration::from_millis(1300));
    origin.failing.store(true, Ordering::SeqCst);
    let stale = get_on(&mut s, &mut r, "/sie", "");
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"));
    assert_eq!(stale.body_text(), a.body_text());
    // Without stale-if-error the failure shows.
    let err = get_on(&mut s, &mut r, "/plain", "");
    assert_eq!((err.status, x_cache(&err)), (503, "MISS"));
}

#[test]
fn the_route_stale_if_error_covers_an_origin_that_hangs_up() {
    let origin = Origin::start(counting("max-age=1"));
    let weir = Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream.origin]\ntargets = [\"{}\"]\nmax_fails = 0\n\n\
         [[route]]\npath = \"/covered\"\nupstream = \"origin\"\n\
         cache = {{ stale_if_error = \"1h\" }}\n\n\
         [[route]]\npath = \"/uncovered\"\nupstream = \"origin\"\ncache = {{ }}\n",
        origin.addr
    ));
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let fresh = get_on(&mut s, &mut r, "/covered", "");
    get_on(&mut s, &mut r, "/uncovered", "");
    thread::sleep(Duration::from_millis(1300));
    // Now every connection to the origin is closed without an answer: a 502.
    origin.hang_up.store(true, Ordering::SeqCst);
    let stale = get_on(&mut s, &mut r, "/covered", "");
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"));
    assert_eq!(stale.body_text(), fresh.body_text());
    // The connection stays usable after a stale answer.
    assert_eq!(get_on(&mut s, &mut r, "/covered", "").status, 200);
    assert_eq!(get_on(&mut s, &mut r, "/uncovered", "").status, 502);
}

#[test]
fn client_refresh_follows_the_invalidate_policy() {
    let refresh = "Cache-Control: max-age=0\r\n";
    for (policy, key, refreshed) in [
        ("never", "", false),
        ("anyone", "", true),
        ("api_key", "", false),
        ("api_key", "x-api-key: keyone0123456789abcdef\r\n", true),
    ] {
        let origin = Origin::start(counting("max-age=60"));
        let weir = cached(
            &origin,
            &format!("invalidate = \"{policy}\""),
            "[[api_key]]\nid = \"one\"\nvalue = \"keyone0123456789abcdef\"\n",
        );
        let mut s = connect(weir.addr());
        let mut r = BufReader::new(s.try_clone().unwrap());
        get_on(&mut s, &mut r, "/r", "");
        let again = get_on(&mut s, &mut r, "/r", &format!("{refresh}{key}"));
        let expect = if refreshed { "fetch 1" } else { "fetch 0" };
        assert_eq!(again.body_text(), expect, "{policy} {key}");
        // A refresh stores the new response for everyone.
        assert_eq!(get_on(&mut s, &mut r, "/r", "").body_text(), expect);
    }
}

#[test]
fn the_memory_budget_holds_under_a_flood_of_distinct_keys() {
    let body = "z".repeat(16 * 1024);
    let origin = Origin::start(move |_: &Seen, _| {
        Reply::ok(body.clone()).header("cache-control", "max-age=600")
    });
    let weir = cached(
        &origin,
        "",
        "[cache]\nmemory = \"1m\"\n\n[http]\nkeepalive_requests = 100000\n",
    );
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 0..200 {
        get_on(&mut s, &mut r, &format!("/warm/{i}"), "");
    }
    let start = weir.memory_kib("VmRSS");
    // 4000 distinct 16 KiB responses: 64 MiB offered to a 1 MiB cache.
    for i in 0..4000 {
        let resp = get_on(&mut s, &mut r, &format!("/flood/{i}"), "");
        assert_eq!(resp.body.len(), 16 * 1024);
    }
    let grown = weir.memory_kib("VmRSS").saturating_sub(start);
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB for a 1 MiB cache");
    // The newest keys are there; the oldest were evicted.
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/flood/3999", "")), "HIT");
    assert_eq!(x_cache(&get_on(&mut s, &mut r, "/flood/0", "")), "MISS");
    // Larger than max_entry: relayed, never stored.
    let origin = Origin::start(|_: &Seen, n| {
        Reply::ok(vec![b'b' + (n % 2) as u8; 4096]).header("cache-control", "max-age=60")
    });
    let weir = cached(&origin, "max_entry = \"1k\"", "");
    let (a, b) = twice(&weir, "/big", "");
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"));
    assert_eq!(b.body.len(), 4096);
}

#[test]
fn bypass_for_methods_and_bodies_the_route_does_not_cache() {
    let origin = Origin::start(counting("max-age=60"));
    let weir = cached(&origin, "methods = [\"GET\"]", "");
    let r = raw(
        weir.addr(),
        b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(x_cache(&r), "BYPASS");
    let r = raw(
        weir.addr(),
        b"OPTIONS /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(x_cache(&r), "BYPASS");
}

#[test]
fn chunked_and_close_delimited_responses_are_stored_whole() {
    let origin = Backend::start();
    let weir = Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream.origin]\ntargets = [\"{}\"]\n\n\
         [[route]]\npath = \"/{{*rest}}\"\nupstream = \"origin\"\ncache = {{ }}\n",
        origin.addr
    ));
    for path in ["/chunked", "/eof"] {
        let (a, b) = twice(&weir, path, "");
        assert_eq!(x_cache(&b), "HIT", "{path}");
        assert_eq!(a.body, b.body, "{path}");
        assert_eq!(
            b.header("content-length"),
            Some(b.body.len().to_string().as_str())
        );
        assert!(b.header("transfer-encoding").is_none());
    }
}

/// Runs `weir ARGS` with `CONFIG` replaced by the running gateway's config path.
fn weir_cli(weir: &Weir, args: &[&str]) -> (i32, String, String) {
    let config = weir.config_path().display().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "CONFIG" { config.as_str() } else { a })
        .collect();
    crate::support::weir(&args)
}

#[test]
fn purges_by_signal_and_by_route() {
    let origin = Origin::start(counting("max-age=600"));
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream.origin]\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"a\"\npath = \"/a\"\nupstream = \"origin\"\ncache = {{ }}\n\n\
         [[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"origin\"\ncache = {{ }}\n",
        origin.addr
    ));
    let fill = || {
        get(&weir, "/a", "");
        get(&weir, "/b", "");
    };
    fill();
    assert_eq!(origin.requests(), 2);
    fill();
    assert_eq!(origin.requests(), 2);

    let (code, out, err) = weir_cli(&weir, &["purge", "-c", "CONFIG", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "purged route `a`\n");
    // A route that does not exist: said, exit 1, nothing else purged.
    let (code, out, _) = weir_cli(&weir, &["purge", "-c", "CONFIG", "nope"]);
    assert_eq!(
        (code, out.as_str()),
        (1, "no route is named `nope`: nothing purged for it\n")
    );
    assert_eq!(x_cache(&get(&weir, "/a", "")), "MISS");
    assert_eq!(x_cache(&get(&weir, "/b", "")), "HIT");

    weir.signal(libc::SIGUSR2);
    assert!(eventually(|| weir.log().contains("purged the whole cache")));
    assert_eq!(x_cache(&get(&weir, "/a", "")), "MISS");
    assert_eq!(x_cache(&get(&weir, "/b", "")), "MISS");
}

#[test]
fn cache_settings_are_checked() {
    let base =
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n";
    for (cache, says) in [
        ("ttl = \"2h\"", "ttl must be from 1s to 3600s"),
        (
            "query = \"shuffled\"",
            "use \"all\", \"ignore\" or \"sorted\"",
        ),
        (
            "invalidate = \"admins\"",
            "\"never\", \"anyone\" or \"api_key\"",
        ),
        ("methods = [\"POST\"]", "it is never cached"),
        ("tll = \"1s\"", "unknown field `tll`"),
    ] {
        let err = check_fails(&format!(
            "{base}[[route]]\npath = \"/\"\nupstream = \"u\"\ncache = {{ {cache} }}\n"
        ));
        assert!(err.contains(says), "{cache}: {err}");
        assert!(err.contains(":8:"), "names the line: {err}");
    }
    let err = check_fails(&format!(
        "{base}[[route]]\npath = \"/\"\nmock = {{ body = \"x\" }}\ncache = {{ }}\n"
    ));
    assert!(err.contains("applies to upstream routes"), "{err}");
}
