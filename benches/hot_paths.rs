//! Micro-benchmarks of the user-space hot paths: request-head parsing, route lookup in a
//! table of 1,000 routes, and the header rewrite toward the upstream.
//!
//! `cargo bench --bench hot_paths`. These measure Weir's own code only; end-to-end cost
//! (mostly kernel time) is measured side by side with nginx by perf/run.sh.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir::config::{self, Integration};
use weir::http::{parse_request, parse_response, RequestHead, ResponseHead};
use weir::rewrite::{request_head, response_head, ForwardRequest, ForwardResponse};
use weir::router::Router;

/// A typical API request as a browser or SDK sends it (about 500 bytes, 12 headers).
const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&cursor=abc HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.abcdefghijklmnop\r\n\
Cache-Control: no-cache\r\n\
Connection: keep-alive\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\n\
X-Forwarded-For: 198.51.100.23\r\n\
Referer: https://app.example.com/orders\r\n\
Sec-Fetch-Mode: cors\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Sun, 22 Nov 2026 03:00:00 GMT\r\n\
Content-Type: application/json\r\n\
Content-Length: 1024\r\n\
Connection: keep-alive\r\n\
Cache-Control: max-age=60\r\n\
ETag: \"5f3e-1024\"\r\n\r\n";

fn base_config(routes: &str) -> config::Config {
    let src = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:9001\"]\n{routes}"
    );
    config::parse(&src, "bench").expect("bench config")
}

fn parse(c: &mut Criterion) {
    let cfg = base_config("");
    let mut head = RequestHead::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("request_head", |b| {
        b.iter(|| parse_request(black_box(REQUEST), &cfg.http, &mut head).unwrap())
    });
    let mut rhead = ResponseHead::default();
    g.bench_function("response_head", |b| {
        b.iter(|| parse_response(black_box(RESPONSE), false, &mut rhead).unwrap())
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    // 1,000 routes: 100 services x 10 resource shapes, on 10 hosts plus the default.
    let mut routes = String::new();
    for svc in 0..100 {
        let host = match svc % 11 {
            10 => String::new(),
            h => format!("host = \"svc{h}.example.com\"\n"),
        };
        for (i, shape) in [
            "/v1/s{svc}/items",
            "/v1/s{svc}/items/{id}",
            "/v1/s{svc}/items/{id}/parts",
            "/v1/s{svc}/items/{id}/parts/{part}",
            "/v1/s{svc}/users/{user}",
            "/v1/s{svc}/users/{user}/orders",
            "/v1/s{svc}/users/{user}/orders/{order}",
            "/v1/s{svc}/health",
            "/v1/s{svc}/search",
            "/v1/s{svc}/static/{*rest}",
        ]
        .iter()
        .enumerate()
        {
            let path = shape.replace("{svc}", &svc.to_string());
            let methods = if i % 2 == 0 {
                "methods = [\"GET\", \"POST\"]\n"
            } else {
                ""
            };
            routes.push_str(&format!(
                "[[route]]\n{host}path = \"{path}\"\n{methods}upstream = \"u\"\n"
            ));
        }
    }
    let cfg = base_config(&routes);
    assert_eq!(cfg.routes.len(), 1000);
    let specs: Vec<_> = cfg.routes.iter().map(weir::config::Route::spec).collect();
    let router = Router::build(&specs, 0).unwrap();
    let mut g = c.benchmark_group("route_1000");
    g.bench_function("param_path_named_host", |b| {
        b.iter(|| {
            router.lookup(
                black_box(b"svc7.example.com"),
                black_box(b"/v1/s73/users/42/orders/9"),
                black_box(b"GET"),
            )
        })
    });
    g.bench_function("catch_all_default_host", |b| {
        b.iter(|| {
            router.lookup(
                black_box(b"unknown.example.net:8080"),
                black_box(b"/v1/s98/static/css/site/main.css"),
                black_box(b"GET"),
            )
        })
    });
    g.bench_function("miss_404", |b| {
        b.iter(|| {
            router.lookup(
                black_box(b"svc3.example.com"),
                black_box(b"/nope/x"),
                black_box(b"GET"),
            )
        })
    });
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let cfg = base_config("[[route]]\npath = \"/api/{*rest}\"\nupstream = \"u\"\nstrip_prefix = \"/api\"\n[[route]]\npath = \"/b/{*rest}\"\nupstream = \"u\"\n");
    let integration = |i: usize| match &cfg.routes[i].integration {
        Integration::Http(h) => h.clone(),
        Integration::Mock(_) => unreachable!(),
    };
    let (strip, plain) = (integration(0), integration(1));
    let mut head = RequestHead::default();
    parse_request(REQUEST, &cfg.http, &mut head).unwrap();
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("rewrite");
    for (name, route) in [
        ("request_head", &plain),
        ("request_head_strip_prefix", &strip),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                request_head(
                    &mut out,
                    &ForwardRequest {
                        buf: REQUEST,
                        head: &head,
                        route,
                        target_authority: b"127.0.0.1:9001",
                        client_ip: b"192.0.2.10",
                        request_id: b"4bfc0f83cc59cd7a0000000000000001",
                        proto: b"http",
                        extra: b"",
                        drop_conditionals: false,
                        validators: b"",
                        hidden: [b"", b""],
                        api_key_id: None,
                        traceparent: b"",
                    },
                );
                black_box(&out);
            })
        });
    }
    let mut rhead = ResponseHead::default();
    parse_response(RESPONSE, false, &mut rhead).unwrap();
    g.bench_function("response_head", |b| {
        b.iter(|| {
            out.clear();
            response_head(
                &mut out,
                RESPONSE,
                &rhead,
                &ForwardResponse {
                    request_id: b"4bfc0f83cc59cd7a0000000000000001",
                    close: false,
                    keep_alive_10: false,
                    chunked: false,
                    extra: b"",
                    cache: b"",
                },
            );
            black_box(&out);
        })
    });
    g.finish();
}

/// One access log line from a request's record: the JSON line with every field (the
/// default), and nginx's combined format.
fn access_log(c: &mut Criterion) {
    use weir::observe::access_log::{clf_time, format, Entry, Field, Format};
    use weir::observe::{Record, UpstreamRecord};
    let record = Record {
        status: 200,
        bytes_out: 1200,
        head_bytes: 176,
        upstream: Some(UpstreamRecord {
            status: 200,
            nanos: 2_000_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let entry = Entry {
        record: Some(&record),
        request_id: b"0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a",
        ip: b"192.0.2.7",
        method: b"GET",
        target: b"/api/users/42?fields=name,email",
        protocol: b"HTTP/1.1",
        user_agent: b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        referer: b"https://example.com/app",
        stage: "public",
        route_path: "/api/users/{id}",
        route_has_methods: true,
        api_key_id: "alice",
        upstream: "10.0.0.7:8080",
        trace_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
        epoch_ms: 1_796_333_885_123,
        time: clf_time(1_796_333_885),
    };
    let json = Format::Json(Field::ALL.iter().map(|(f, _)| *f).collect());
    let mut g = c.benchmark_group("access_log");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("json_line", |b| {
        b.iter(|| {
            out.clear();
            format(&mut out, &json, black_box(&entry));
            out.len()
        })
    });
    g.bench_function("combined_line", |b| {
        b.iter(|| {
            out.clear();
            format(&mut out, &Format::Clf, black_box(&entry));
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, parse, route, rewrite, access_log);
criterion_main!(benches);
