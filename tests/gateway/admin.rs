//! The admin API over real sockets: health and readiness, the route table, the running
//! config with its secrets redacted, upstream health, reload and purge, and the token.

use std::net::SocketAddr;

use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

/// Sends `METHOD path` to the admin API and parses the JSON answer.
fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: admin\r\n{auth}content-length: 0\r\n\r\n");
    let r = raw(addr, request.as_bytes()).expect("an admin response");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_text()));
    (r.status, body)
}

fn config(backend: SocketAddr, dead: [SocketAddr; 2]) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[upstream.dead]
targets = ["{}", "{}"]
max_fails = 1
fail_timeout = "60s"

[[api_key]]
id = "alice"
value = "alice-key-0123456789abcdef"

[[route]]
name = "items"
path = "/items/{{id}}"
upstream = "backend"
cache = {{ ttl = "60s" }}

[[route]]
path = "/down"
upstream = "dead"
"#,
        dead[0], dead[1]
    )
}

fn dead_addrs() -> [SocketAddr; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    [a.local_addr().unwrap(), b.local_addr().unwrap()]
}

#[test]
fn the_admin_api_answers_with_the_token_and_only_with_it() {
    let backend = Backend::start();
    let weir = Weir::start(&config(backend.addr, dead_addrs()));
    let admin = weir.admin_addr();

    let (status, body) = call(admin, "GET", "/healthz", None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = call(
        admin,
        "GET",
        "/healthz",
        Some("admin-token-0123456789abcdeX"),
    );
    assert_eq!(status, 401);
    let (status, body) = call(admin, "GET", "/healthz", Some(TOKEN));
    assert_eq!((status, &body["status"]), (200, &Value::from("ok")));

    let (status, body) = call(admin, "GET", "/nope", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(body["endpoints"].is_array());
    let (status, _) = call(admin, "GET", "/reload", Some(TOKEN));
    assert_eq!(status, 405);
    // The admin API is not on the public listener.
    assert_eq!(try_get(weir.addr(), "/healthz", "").unwrap().status, 404);
}

#[test]
fn routes_config_and_upstreams_describe_what_serves() {
    let backend = Backend::start();
    let weir = Weir::start(&config(backend.addr, dead_addrs()));
    let admin = weir.admin_addr();

    let (status, body) = call(admin, "GET", "/routes", Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(body["generation"], 1);
    let routes = body["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["name"], "items");
    assert_eq!(routes[0]["path"], "/items/{id}");
    assert_eq!(routes[0]["integration"], "upstream backend");
    assert_eq!(routes[0]["stages"], "cache(ttl 60s)");

    let (status, body) = call(admin, "GET", "/config", Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(body["config"]["api_key"][0]["id"], "alice");
    assert_eq!(body["config"]["api_key"][0]["value"], "<redacted>");
    assert_eq!(body["config"]["admin"]["token"], "<redacted>");
    assert!(!body.to_string().contains("alice-key"));
    assert!(!body.to_string().contains(TOKEN));

    let (status, body) = call(admin, "GET", "/upstreams", Some(TOKEN));
    assert_eq!(status, 200);
    let groups = body["upstreams"].as_array().unwrap();
    let backend_group = groups.iter().find(|g| g["group"] == "backend").unwrap();
    assert_eq!(
        backend_group["targets"][0]["address"],
        backend.addr.to_string()
    );
    assert_eq!(backend_group["targets"][0]["up"], true);
}

#[test]
fn readyz_says_which_upstream_has_every_target_down() {
    let backend = Backend::start();
    let weir = Weir::start(&config(backend.addr, dead_addrs()));
    let admin = weir.admin_addr();
    let (status, body) = call(admin, "GET", "/readyz", Some(TOKEN));
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("ready")),
        "{body}"
    );

    // Each request tries both dead targets; one failure marks each down for a minute.
    assert_eq!(try_get(weir.addr(), "/down", "").unwrap().status, 502);
    let (status, body) = call(admin, "GET", "/readyz", Some(TOKEN));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reasons"][0], "upstream `dead`: every target is down");
    let (_, up) = call(admin, "GET", "/upstreams", Some(TOKEN));
    let dead = up["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "dead")
        .unwrap()
        .clone();
    assert_eq!(dead["targets"][0]["up"], false);
    assert!(dead["targets"][0]["down_for_ms"].as_u64().unwrap() > 0);
}

#[test]
fn reload_and_purge_through_the_admin_api() {
    let backend = Backend::start();
    let dead = dead_addrs();
    let weir = Weir::start(&config(backend.addr, dead));
    let admin = weir.admin_addr();

    assert_eq!(
        try_get(weir.addr(), "/items/1", "")
            .unwrap()
            .header("x-cache"),
        Some("MISS")
    );
    let hit = || {
        (0..4)
            .map(|_| try_get(weir.addr(), "/items/1", "").unwrap())
            .any(|r| r.header("x-cache") == Some("HIT"))
    };
    assert!(hit());
    let (status, body) = call(admin, "POST", "/cache/purge?route=items", Some(TOKEN));
    assert_eq!(
        (status, &body["said"][0]),
        (200, &Value::from("purged route `items`"))
    );
    let (status, body) = call(admin, "POST", "/cache/purge?route=nope", Some(TOKEN));
    assert_eq!(status, 404, "{body}");

    // A route added by a reload through the admin API.
    weir.rewrite_config(&format!(
        "{}\n[[route]]\npath = \"/added\"\nmock = {{ body = \"added\" }}\n",
        config(backend.addr, dead)
    ));
    let (status, body) = call(admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(
        (status, &body["generation"]),
        (200, &Value::from(2)),
        "{body}"
    );
    assert_eq!(
        try_get(weir.addr(), "/added", "").unwrap().body_text(),
        "added"
    );

    // A broken file: 422 with the error, and the old config keeps serving.
    weir.rewrite_config("[[listener]\n");
    let (status, body) = call(admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["kept_generation"], 2);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("unclosed array table"),
        "{body}"
    );
    assert_eq!(try_get(weir.addr(), "/added", "").unwrap().status, 200);
}

#[test]
fn an_admin_api_open_to_the_network_without_a_token_is_warned_about() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nmock = {}\n";
    let out = check_passes(&format!("[admin]\naddress = \"0.0.0.0:9901\"\n{base}"));
    assert!(
        out.contains("warning: [admin] on 0.0.0.0:9901 answers anyone"),
        "{out}"
    );
    let out = check_passes(&format!("[admin]\naddress = \"127.0.0.1:9901\"\n{base}"));
    assert!(!out.contains("warning"), "{out}");
    let e = check_fails(&format!(
        "[admin]\naddress = \"127.0.0.1:9901\"\ntoken = \"short\"\n{base}"
    ));
    assert!(e.contains(":3:") && e.contains("at least 16"), "{e}");
}

#[test]
fn routes_running_shows_the_serving_generation_not_the_file() {
    let gateway = Weir::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/served\"\nmock = {}\n",
    );
    gateway.rewrite_config(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/served\"\nmock = {}\n[[route]]\npath = \"/not-yet\"\nmock = {}\n",
    );
    let config = gateway.config_path().display().to_string();
    let (code, file, err) = weir(&["routes", "-c", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(file.contains("/not-yet"), "{file}");
    let (code, running, err) = weir(&["routes", "-c", &config, "--running"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        running.contains("/served") && !running.contains("/not-yet"),
        "{running}"
    );
    assert!(running.starts_with("LISTENER"), "{running}");
}

#[test]
fn upstreams_show_the_requests_in_flight() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n{}",
        proxy_config(backend.addr, "")
    ));
    let admin = weir.admin_addr();
    let addr = weir.addr();
    let in_flight = || {
        let (_, body) = call(admin, "GET", "/upstreams", None);
        body["upstreams"][0]["targets"][0]["in_flight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(in_flight(), 0);
    let slow = std::thread::spawn(move || try_get(addr, "/slow/1500", "").unwrap().status);
    assert!(eventually(|| in_flight() == 1));
    assert_eq!(slow.join().unwrap(), 200);
    assert!(eventually(|| in_flight() == 0));
}

#[test]
fn purge_by_path_prefix_drops_every_query_form_under_it() {
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[server]\nworkers = 1\n{}",
        config(backend.addr, dead_addrs())
    ));
    let admin = weir.admin_addr();
    let x_cache = |path: &str| {
        try_get(weir.addr(), path, "")
            .unwrap()
            .header("x-cache")
            .map(str::to_string)
    };
    for path in ["/items/1", "/items/1?x=1", "/items/2"] {
        assert_eq!(x_cache(path).as_deref(), Some("MISS"));
        assert_eq!(x_cache(path).as_deref(), Some("HIT"));
    }
    let (status, body) = call(
        admin,
        "POST",
        "/cache/purge?prefix=%2Fitems%2F1",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    // The worker applies a purge before its next lookup.
    assert_eq!(x_cache("/items/1").as_deref(), Some("MISS"));
    assert_eq!(x_cache("/items/1?x=1").as_deref(), Some("MISS"));
    assert_eq!(x_cache("/items/2").as_deref(), Some("HIT"));
    let (status, _) = call(admin, "POST", "/cache/purge?prefix=items", Some(TOKEN));
    assert_eq!(status, 400);
}
