//! Routing by host, path and method; mock integrations.

use crate::support::*;

const ROUTES: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
path = "/users/{id}"
methods = ["GET", "PUT"]
mock = { body = "default-user" }

[[route]]
path = "/users/me"
mock = { body = "me" }

[[route]]
path = "/static/{*rest}"
mock = { body = "static" }

[[route]]
host = "api.example.com"
path = "/users/{id}"
mock = { status = 201, body = "api-user", headers = { "x-mock" = "yes", "content-type" = "text/plain" } }

[[route]]
host = "*.example.com"
path = "/users/{id}"
mock = { body = "wildcard-user" }
"#;

fn get(weir: &Weir, host: &str, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw(weir.addr(), req.as_bytes()).expect("a response")
}

#[test]
fn routes_by_exact_host_then_wildcard_then_default() {
    let weir = Weir::start(ROUTES);
    assert_eq!(
        get(&weir, "api.example.com", "/users/1").body_text(),
        "api-user"
    );
    assert_eq!(
        get(&weir, "API.example.com:8080", "/users/1").body_text(),
        "api-user"
    );
    assert_eq!(
        get(&weir, "eu.example.com", "/users/1").body_text(),
        "wildcard-user"
    );
    assert_eq!(
        get(&weir, "other.test", "/users/1").body_text(),
        "default-user"
    );
}

#[test]
fn static_segments_win_over_parameters_and_catch_all_takes_the_rest() {
    let weir = Weir::start(ROUTES);
    assert_eq!(get(&weir, "x", "/users/me").body_text(), "me");
    assert_eq!(get(&weir, "x", "/users/42").body_text(), "default-user");
    assert_eq!(
        get(&weir, "x", "/static/css/site.css").body_text(),
        "static"
    );
}

#[test]
fn unknown_path_is_a_json_404() {
    let weir = Weir::start(ROUTES);
    let r = get(&weir, "x", "/nowhere");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_text(), r#"{"message":"Not Found"}"#);
    // A configured host owns its paths: no fall-back to the default host.
    assert_eq!(get(&weir, "api.example.com", "/static/x").status, 404);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let weir = Weir::start(ROUTES);
    let r = raw(
        weir.addr(),
        b"DELETE /users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT, HEAD"));
    assert_eq!(r.body_text(), r#"{"message":"Method Not Allowed"}"#);
}

#[test]
fn mock_answers_with_its_status_headers_and_body() {
    let weir = Weir::start(ROUTES);
    let r = get(&weir, "api.example.com", "/users/1");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-mock"), Some("yes"));
    assert_eq!(r.header("content-length"), Some("8"));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let id = r.header("x-request-id").unwrap();
    assert_eq!(id.len(), 32, "{id}");
}

#[test]
fn head_on_a_mock_has_length_but_no_body() {
    let weir = Weir::start(ROUTES);
    let mut s = connect(weir.addr());
    use std::io::Write;
    s.write_all(
        b"HEAD /users/me HTTP/1.1\r\nHost: x\r\n\r\nGET /users/me HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(s);
    let head = read_response(&mut reader, true).unwrap();
    assert_eq!(head.header("content-length"), Some("2"));
    assert!(head.body.is_empty());
    let get = read_response(&mut reader, false).unwrap();
    assert_eq!(get.body_text(), "me");
}

#[test]
fn routes_apply_only_to_their_listener() {
    let weir = Weir::start(
        r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"

[[listener]]
name = "admin"
address = "127.0.0.1:0"

[[route]]
listener = "admin"
path = "/stats"
mock = { body = "admin only" }

[[route]]
path = "/shared"
mock = { body = "everywhere" }
"#,
    );
    let admin = weir.listeners["admin"];
    let public = weir.listeners["public"];
    let req = b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(admin, req).unwrap().body_text(), "admin only");
    assert_eq!(raw(public, req).unwrap().status, 404);
    let shared = b"GET /shared HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(public, shared).unwrap().body_text(), "everywhere");
    assert_eq!(raw(admin, shared).unwrap().body_text(), "everywhere");
}

#[test]
fn api_gateway_greedy_paths_any_and_lower_case_methods_match() {
    let weir = Weir::start(
        r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
path = "/items/{proxy+}"
methods = ["ANY"]
mock = { body = "items" }

[[route]]
path = "/orders/{id}"
methods = ["get", "post"]
mock = { body = "orders" }
"#,
    );
    let send = |method: &str, path: &str| {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        raw(weir.addr(), req.as_bytes()).expect("a response")
    };
    for method in ["GET", "DELETE", "PATCH"] {
        let r = send(method, "/items/a/b/c");
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (200, "items"),
            "{method}"
        );
    }
    assert_eq!(send("GET", "/orders/7").body_text(), "orders");
    assert_eq!(send("POST", "/orders/7").status, 200);
    let r = send("PUT", "/orders/7");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, HEAD"));
}
