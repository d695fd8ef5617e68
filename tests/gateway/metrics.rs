//! Prometheus metrics on the admin API: scraped before and after known traffic, the
//! differences must be exactly that traffic; series keep their counts across a reload.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::support::*;

/// A scrape, as `series → value` (`name{labels}` as written).
fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let r = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .expect("a scrape");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.body_text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// How much each of `series` grew between two scrapes.
fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[test]
fn counts_after_known_traffic_are_exact_and_survive_a_reload() {
    let backend = Backend::start();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[[route]]
path = "/mock"
methods = ["GET"]
mock = {{ body = "hello" }}

[[route]]
path = "/limited"
mock = {{ body = "ok" }}
throttle = {{ rate = 0.01, burst = 1 }}

[[route]]
path = "/api/{{*rest}}"
upstream = "backend"
strip_prefix = "/api"

[[route]]
path = "/cached/{{*rest}}"
upstream = "backend"
strip_prefix = "/cached"
cache = {{ ttl = "60s" }}
"#,
        backend = backend.addr
    );
    // One worker: the cache hit finds what the miss stored.
    let weir = Weir::start(&format!("[server]\nworkers = 1\n{config}"));
    let admin = weir.admin_addr();
    let addr = weir.addr();
    let before = scrape(admin);

    for _ in 0..5 {
        assert_eq!(try_get(addr, "/mock", "").unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(try_get(addr, "/nowhere", "").unwrap().status, 404);
    }
    for _ in 0..4 {
        try_get(addr, "/limited", "").unwrap();
    }
    assert_eq!(try_get(addr, "/api/x", "").unwrap().status, 200);
    assert_eq!(
        try_get(addr, "/cached/c", "").unwrap().header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        try_get(addr, "/cached/c", "").unwrap().header("x-cache"),
        Some("HIT")
    );

    let public = "listener=\"public\"";
    let expected = [
        (format!("weir_requests_total{{{public},route=\"GET /mock\",method=\"GET\",code=\"200\"}}"), 5.0),
        (format!("weir_requests_total{{{public},route=\"-\",method=\"GET\",code=\"404\"}}"), 2.0),
        (format!("weir_requests_total{{{public},route=\"ANY /limited\",method=\"GET\",code=\"200\"}}"), 1.0),
        (format!("weir_requests_total{{{public},route=\"ANY /limited\",method=\"GET\",code=\"429\"}}"), 3.0),
        (format!("weir_refused_total{{{public},route=\"ANY /limited\",reason=\"throttled\",scope=\"route\"}}"), 3.0),
        (format!("weir_requests_total{{{public},route=\"ANY /api/{{*rest}}\",method=\"GET\",code=\"200\"}}"), 1.0),
        (format!("weir_request_duration_seconds_count{{{public},route=\"GET /mock\"}}"), 5.0),
        (format!("weir_upstream_duration_seconds_count{{{public},route=\"ANY /api/{{*rest}}\"}}"), 1.0),
        (format!("weir_cache_requests_total{{{public},route=\"ANY /cached/{{*rest}}\",result=\"miss\"}}"), 1.0),
        (format!("weir_cache_requests_total{{{public},route=\"ANY /cached/{{*rest}}\",result=\"hit\"}}"), 1.0),
        (format!("weir_upstream_requests_total{{group=\"backend\",target=\"{}\",outcome=\"response\"}}", backend.addr), 2.0),
        ("weir_connections_accepted_total{listener=\"public\"}".to_string(), 14.0),
    ];
    // A request is counted right after its last byte is written: poll until all are in.
    let mut after = scrape(admin);
    assert!(
        eventually(|| {
            after = scrape(admin);
            expected.iter().all(|(s, n)| grew(&before, &after, s) == *n)
        }),
        "{:#?}\n{after:#?}",
        expected
            .iter()
            .map(|(s, n)| (s, *n, grew(&before, &after, s)))
            .collect::<Vec<_>>()
    );
    // Bytes: the mock's 5 responses at least carried their bodies.
    let bytes = format!("weir_response_bytes_total{{{public},route=\"GET /mock\"}}");
    assert!(grew(&before, &after, &bytes) >= 25.0);
    assert_eq!(after["weir_config_generation"], 1.0);
    assert_eq!(
        after[&format!(
            "weir_upstream_target_up{{group=\"backend\",target=\"{}\"}}",
            backend.addr
        )],
        1.0
    );
    assert!(after["process_resident_memory_bytes"] > 0.0);

    // A reload keeps the series of routes that stay.
    weir.rewrite_config(&format!(
        "[server]\nworkers = 1\n{config}\n[[route]]\npath = \"/new\"\nmock = {{}}\n"
    ));
    weir.reload();
    let reloaded = scrape(admin);
    let mock =
        format!("weir_requests_total{{{public},route=\"GET /mock\",method=\"GET\",code=\"200\"}}");
    assert_eq!(grew(&before, &reloaded, &mock), 5.0);
    assert_eq!(reloaded["weir_config_generation"], 2.0);
    assert_eq!(
        reloaded["weir_config_reloads_total{result=\"applied\"}"],
        1.0
    );
}

#[test]
fn without_an_admin_api_there_is_no_metrics_endpoint() {
    // The public listener never serves /metrics; with no [admin], nothing does (and, in
    // `Published::new`, nothing is collected: not observable from outside).
    let weir = Weir::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nmock = {}\n",
    );
    assert_eq!(try_get(weir.addr(), "/metrics", "").unwrap().status, 404);
    assert!(!weir.log().contains("admin API on"));
}

#[test]
fn quota_use_and_the_refusing_level_are_counted() {
    let store = TempFile::new("redb", b"");
    let _ = std::fs::remove_file(&store.path);
    let weir = Weir::start(&format!(
        r#"
[server]
workers = 1

[admin]
address = "127.0.0.1:0"

[quotas]
store = "{store}"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[[api_key]]
id = "alice"
value = "alice-key-0123456789abcdef"

[[usage_plan]]
name = "gold"
keys = ["alice"]
routes = ["orders"]
throttle = {{ rate = 0.01, burst = 2 }}
quota = {{ limit = 100, period = "DAY" }}

[[route]]
name = "orders"
path = "/orders"
mock = {{ body = "ok" }}
api_key_required = true
"#,
        store = store.path.display()
    ));
    let admin = weir.admin_addr();
    let key = "x-api-key: alice-key-0123456789abcdef\r\n";
    let statuses: Vec<u16> = (0..3)
        .map(|_| try_get(weir.addr(), "/orders", key).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = "weir_refused_total{listener=\"public\",route=\"ANY /orders\",reason=\"throttled\",scope=\"key\"}";
    let mut m = scrape(admin);
    assert!(
        eventually(|| {
            m = scrape(admin);
            m.get(refused) == Some(&1.0)
        }),
        "{m:#?}"
    );
    // The throttled request's quota reservation was given back: two counted.
    assert_eq!(m["weir_quota_used{plan=\"gold\"}"], 2.0);
    assert_eq!(m["weir_quota_limit{plan=\"gold\"}"], 100.0);
}

#[test]
fn connections_are_counted_active_and_idle() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n[admin]\naddress = \"127.0.0.1:0\"\n{}",
        proxy_config(backend.addr, "")
    ));
    let admin = weir.admin_addr();
    let active = "weir_connections{listener=\"127.0.0.1:0\",state=\"active\"}";
    let idle = "weir_connections{listener=\"127.0.0.1:0\",state=\"idle\"}";

    // One keep-alive connection that answered and waits, one with a slow request.
    let mut waiting = connect(weir.addr());
    let mut reader = std::io::BufReader::new(waiting.try_clone().unwrap());
    get_on(&mut waiting, &mut reader, "/fast", "");
    let addr = weir.addr();
    let slow = std::thread::spawn(move || try_get(addr, "/slow/1500", "").unwrap().status);
    let mut m = scrape(admin);
    assert!(
        eventually(|| {
            m = scrape(admin);
            m.get(active) == Some(&1.0) && m.get(idle) == Some(&1.0)
        }),
        "{m:#?}"
    );
    assert_eq!(slow.join().unwrap(), 200);
    drop((waiting, reader));
    assert!(
        eventually(|| {
            m = scrape(admin);
            m.get(active) == Some(&0.0) && m.get(idle) == Some(&0.0)
        }),
        "{m:#?}"
    );
}
