//! API keys and usage plans: 403 before any other work, keys by value, by SHA-256 and
//! from a keys file, and each key's own buckets.

use std::io::BufReader;

use crate::support::*;

const GOLD: &str = "goldkey0000000000000000001";
const SILVER: &str = "silverkey00000000000000002";
const HASHED: &str = "hashedkey00000000000000003";
const DISABLED: &str = "disabledkey000000000000004";
const FROM_FILE: &str = "filekey0000000000000000005";

fn sha256_hex(s: &str) -> String {
    weir::auth::sha256(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn start(backend: &Backend, keys_file: &TempFile) -> Weir {
    Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[api_keys]
file = "{file}"

[[api_key]]
id = "gold-customer"
value = "{GOLD}"

[[api_key]]
id = "silver-customer"
value = "{SILVER}"

[[api_key]]
id = "hashed-customer"
sha256 = "{hashed}"

[[api_key]]
id = "gone"
value = "{DISABLED}"
enabled = false

[[usage_plan]]
name = "gold"
keys = ["gold-customer", "hashed-customer", "file-customer"]
routes = ["orders", "search"]
throttle = {{ rate = 0.1, burst = 4 }}
route_throttle = {{ "search" = {{ rate = 0.1, burst = 1 }} }}

[[usage_plan]]
name = "silver"
keys = ["silver-customer"]
routes = ["orders"]
throttle = {{ rate = 0.1, burst = 2 }}

[[route]]
name = "orders"
path = "/orders"
upstream = "backend"
api_key_required = true

[[route]]
name = "search"
path = "/search"
upstream = "backend"
api_key_required = true

[[route]]
path = "/public"
upstream = "backend"
"#,
        backend = backend.addr,
        file = keys_file.path.display(),
        hashed = sha256_hex(HASHED),
    ))
}

fn keys_file() -> TempFile {
    TempFile::new(
        "toml",
        format!(
            "[[api_key]]\nid = \"file-customer\"\nsha256 = \"{}\"\n",
            sha256_hex(FROM_FILE)
        )
        .as_bytes(),
    )
}

fn call(
    stream: &mut std::net::TcpStream,
    reader: &mut BufReader<std::net::TcpStream>,
    path: &str,
    key: Option<&str>,
) -> RawResponse {
    let key = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    get_on(stream, reader, path, &key)
}

#[test]
fn a_route_that_requires_a_key_refuses_missing_unknown_and_disabled_keys_with_403() {
    let backend = Backend::start();
    let file = keys_file();
    let weir = start(&backend, &file);
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for key in [
        None,
        Some("unknownkey0000000000000000"),
        Some(DISABLED),
        Some(""),
    ] {
        let r = call(&mut s, &mut reader, "/orders", key);
        assert_eq!(r.status, 403, "{key:?}");
        assert_eq!(r.body_text(), r#"{"message":"Forbidden"}"#);
    }
    assert_eq!(backend.requests(), 0, "a refused key reached the upstream");
    // Routes that do not require a key ignore it.
    assert_eq!(call(&mut s, &mut reader, "/public", None).status, 200);
}

#[test]
fn keys_by_value_by_sha256_and_from_a_keys_file_are_accepted() {
    let backend = Backend::start();
    let file = keys_file();
    let weir = start(&backend, &file);
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for key in [GOLD, HASHED, FROM_FILE, SILVER] {
        assert_eq!(
            call(&mut s, &mut reader, "/orders", Some(key)).status,
            200,
            "{key}"
        );
    }
}

#[test]
fn a_key_outside_every_plan_covering_the_route_is_403() {
    let backend = Backend::start();
    let file = keys_file();
    let weir = start(&backend, &file);
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    // silver's plan covers /orders but not /search.
    assert_eq!(
        call(&mut s, &mut reader, "/search", Some(SILVER)).status,
        403
    );
    assert_eq!(call(&mut s, &mut reader, "/search", Some(GOLD)).status, 200);
}

#[test]
fn each_key_has_its_own_buckets_from_its_plan() {
    let backend = Backend::start();
    let file = keys_file();
    let weir = start(&backend, &file);
    let mut s = connect(weir.addr());
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let status = |s: &mut std::net::TcpStream,
                  r: &mut BufReader<std::net::TcpStream>,
                  path,
                  key| { call(s, r, path, Some(key)).status };
    // gold: per-key burst 4, and 1 on /search.
    assert_eq!(status(&mut s, &mut reader, "/search", GOLD), 200);
    let r = call(&mut s, &mut reader, "/search", Some(GOLD));
    assert_eq!(r.status, 429);
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"gold/search\""),
        "{:?}",
        r.header("ratelimit")
    );
    for _ in 0..3 {
        assert_eq!(status(&mut s, &mut reader, "/orders", GOLD), 200);
    }
    let r = call(&mut s, &mut reader, "/orders", Some(GOLD));
    assert_eq!(r.status, 429);
    assert!(r.header("ratelimit").unwrap().starts_with("\"gold\""));
    // Another key in the same plan has buckets of its own.
    assert_eq!(status(&mut s, &mut reader, "/orders", HASHED), 200);
    // silver: burst 2.
    assert_eq!(status(&mut s, &mut reader, "/orders", SILVER), 200);
    assert_eq!(status(&mut s, &mut reader, "/orders", SILVER), 200);
    assert_eq!(status(&mut s, &mut reader, "/orders", SILVER), 429);
}

#[test]
fn a_key_in_two_plans_for_one_route_is_a_config_error() {
    let err = check_fails(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[api_key]]\nid = \"k\"\nvalue = \"{GOLD}\"\n[[usage_plan]]\nname = \"a\"\nkeys = [\"k\"]\n[[usage_plan]]\nname = \"b\"\nkeys = [\"k\"]\nroutes = [\"r\"]\n[[route]]\nname = \"r\"\npath = \"/\"\nmock = {{}}\n"
    ));
    assert!(
        err.contains(":13:") && err.contains("one plan per route"),
        "{err}"
    );
}

/// A backend behind three key routes: the default, `forward_api_key`, `api_key_id_header`.
fn start_forwarding(backend: &Backend) -> Weir {
    Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[[api_key]]
id = "dashed"
value = "abcd-efgh-ijkl-mnop-qrst"

[[route]]
path = "/default"
upstream = "backend"
api_key_required = true

[[route]]
path = "/forward"
upstream = "backend"
api_key_required = true
forward_api_key = true

[[route]]
path = "/id"
upstream = "backend"
api_key_required = true
api_key_id_header = "x-api-key-id"
"#,
        backend = backend.addr,
    ))
}

#[test]
fn the_key_is_removed_before_forwarding_unless_the_route_forwards_it() {
    let backend = Backend::start();
    let weir = start_forwarding(&backend);
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    // A key with dashes (API Gateway accepts it) works.
    let key = Some("abcd-efgh-ijkl-mnop-qrst");
    assert_eq!(call(&mut s, &mut r, "/default", key).status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("x-api-key"), None, "{}", seen.head);

    assert_eq!(call(&mut s, &mut r, "/forward", key).status, 200);
    assert_eq!(
        backend.last().header("x-api-key"),
        Some("abcd-efgh-ijkl-mnop-qrst")
    );
}

#[test]
fn the_key_id_is_sent_in_its_header_and_a_client_copy_cannot_forge_it() {
    let backend = Backend::start();
    let weir = start_forwarding(&backend);
    let mut s = connect(weir.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let forged =
        "X-API-Key: abcd-efgh-ijkl-mnop-qrst\r\nX-Api-Key-Id: admin\r\nx-api-key-id: root\r\n";
    assert_eq!(get_on(&mut s, &mut r, "/id", forged).status, 200);
    let seen = backend.last();
    let ids: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ids, ["dashed"], "{}", seen.head);
    assert_eq!(seen.header("x-api-key"), None, "{}", seen.head);
}
