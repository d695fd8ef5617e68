//! `weir check`, `weir routes` and the command line: configs that could never work are
//! refused with their line and what to write instead, every mistake in one run; configs
//! written the way API Gateway or nginx users write them mean what they expect.

use crate::support::*;

/// The error lines of `weir check` on `config`, without the file name and the count.
fn errors(config: &str) -> Vec<String> {
    check_fails(config)
        .lines()
        .filter_map(|l| l.split_once(".toml:").map(|(_, rest)| rest.to_string()))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\n";

#[test]
fn every_unknown_key_and_type_error_is_reported_in_one_run_in_file_order() {
    let errs = errors(
        r#"[server]
workerz = 2
drain_timeout = 5.5

[[listener]]
address = "127.0.0.1:0"
bogus = 1

[upstream.u]
targets = ["127.0.0.1:9000", { address = "127.0.0.1:9001", wieght = 2 }]
balance = "random"

[[route]]
path = "/a"
upstream = "u"
methods = "GET"
throttle = { rate = 10, brust = 5 }

[[route]]
mock = {}
"#,
    );
    let places: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        places,
        ["2:1", "3:17", "7:1", "10:60", "11:11", "16:11", "17:25", "19:1"],
        "{errs:#?}"
    );
    assert!(errs[0].contains("unknown field `workerz`"), "{errs:#?}");
    assert!(errs[1].contains("5.5"), "{errs:#?}");
    assert!(errs[2].contains("unknown field `bogus`"), "{errs:#?}");
    // Inside a target table: the key itself, not "did not match any variant".
    assert!(errs[3].contains("unknown field `wieght`"), "{errs:#?}");
    assert!(errs[4].contains("random"), "{errs:#?}");
    assert!(errs[5].contains("sequence"), "{errs:#?}");
    assert!(errs[6].contains("unknown field `brust`"), "{errs:#?}");
    assert!(errs[7].contains("missing field `path`"), "{errs:#?}");
}

#[test]
fn a_wrong_type_does_not_bring_follow_on_errors() {
    // `upstream = 5` is one mistake: not also "this route has no integration".
    let errs = errors(&format!(
        "{LISTENER}\n[[route]]\npath = \"/a\"\nupstream = 5\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("6:12:"), "{errs:#?}");
}

#[test]
fn out_of_range_values_point_at_their_own_line() {
    let errs = errors(&format!(
        "[server]\npin = true\nworkers = 0\nring_entries = 100\n\n[http]\nmax_head = 1\nheader_timeout = \"0s\"\n\n{LISTENER}\n[upstream.u]\ntargets = [\"127.0.0.1:1\"]\nconnect_timeout = 0\n\n[[route]]\npath = \"/\"\nupstream = \"u\"\n"
    ));
    let places: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        places,
        ["3:11", "4:16", "7:12", "8:18", "15:19"],
        "{errs:#?}"
    );
}

#[test]
fn a_route_host_with_a_port_is_refused_with_the_bare_name() {
    let errs = errors(&format!(
        "{LISTENER}[[route]]\nhost = \"api.example.com:8080\"\npath = \"/\"\nmock = {{}}\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("4:8:") && errs[0].contains("write `api.example.com`"),
        "{errs:#?}"
    );
}

#[test]
fn colon_and_star_paths_are_refused_with_weir_syntax() {
    let errs = errors(&format!(
        "{LISTENER}[[route]]\npath = \"/items/:id\"\nmock = {{}}\n[[route]]\npath = \"/files/*\"\nmock = {{}}\n[[route]]\npath = \"/a/{{p+}}/b\"\nmock = {{}}\n"
    ));
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("4:8:") && errs[0].contains("`{id}`"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("7:8:") && errs[1].contains("`{*rest}`"),
        "{errs:#?}"
    );
    assert!(errs[2].contains("must end the path"), "{errs:#?}");
}

#[test]
fn listener_addresses_without_a_host_say_what_to_write() {
    for (written, port) in [("8080", "8080"), (":8081", "8081")] {
        let errs = errors(&format!(
            "[[listener]]\naddress = \"{written}\"\n[[route]]\npath = \"/\"\nmock = {{}}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("2:11:")
                && errs[0].contains(&format!("`0.0.0.0:{port}`"))
                && errs[0].contains(&format!("`127.0.0.1:{port}`")),
            "{errs:#?}"
        );
    }
}

#[test]
fn targets_written_as_urls_say_to_drop_the_scheme() {
    let errs = errors(&format!(
        "{LISTENER}[upstream.u]\ntargets = [\"http://127.0.0.1:9000\", \"https://api.example.com\", \"127.0.0.1:9001/v1\"]\n[[route]]\npath = \"/\"\nupstream = \"u\"\n"
    ));
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].contains("write `127.0.0.1:9000`"), "{errs:#?}");
    assert!(
        errs[1].contains("write `api.example.com:443`") && errs[1].contains("tls = {}"),
        "{errs:#?}"
    );
    assert!(
        errs[2].contains("write `127.0.0.1:9001`") && errs[2].contains("add_prefix"),
        "{errs:#?}"
    );
}

#[test]
fn api_key_required_without_any_key_is_refused() {
    let errs = errors(&format!(
        "{LISTENER}[[route]]\npath = \"/\"\napi_key_required = true\nmock = {{}}\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("5:20:") && errs[0].contains("[[api_key]]"),
        "{errs:#?}"
    );
}

#[test]
fn api_keys_may_hold_punctuation_but_not_spaces_or_be_short() {
    let config = |value: &str| {
        format!(
            "{LISTENER}[[api_key]]\nid = \"k\"\nvalue = \"{value}\"\n[[route]]\npath = \"/\"\napi_key_required = true\nmock = {{}}\n"
        )
    };
    check_passes(&config("abcd-efgh-ijkl-mnop-qrst"));
    for bad in ["short-key", "has a space in it somewhere"] {
        let errs = errors(&config(bad));
        assert!(
            errs.len() == 1 && errs[0].contains("20 to 128"),
            "{bad}: {errs:#?}"
        );
    }
}

#[test]
fn check_counts_in_words() {
    let good = TempFile::new(
        "toml",
        format!("{LISTENER}[[route]]\npath = \"/\"\nmock = {{}}\n").as_bytes(),
    );
    let (code, out, _) = weir(&["check", "-c", good.path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.trim_end()
            .ends_with("ok: 1 route on 1 listener, 0 upstreams"),
        "{out}"
    );
    let (code, out, _) = weir(&["check", "--config", "examples/quickstart.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("routes on 2 listeners"), "{out}");
}

#[test]
fn routes_prints_the_resolved_table_with_stages() {
    let config = TempFile::new(
        "toml",
        br#"[[listener]]
name = "public"
address = "127.0.0.1:0"
throttle = { rate = 100, burst = 50 }

[[api_key]]
id = "alice"
value = "abcdefghijklmnopqrstuvwxyz"

[upstream.users]
targets = ["127.0.0.1:9000"]

[[route]]
host = "api.example.com"
path = "/users/{proxy+}"
methods = ["get", "put"]
upstream = "users"
listener = "public"
api_key_required = true
cache = { ttl = "30s" }

[[route]]
path = "/health"
methods = ["ANY"]
mock = { status = 204 }
"#,
    );
    let (code, out, err) = weir(&["routes", "-c", config.path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LISTENER",
            "HOST",
            "PATH",
            "METHODS",
            "INTEGRATION",
            "STAGES"
        ]
    );
    let users: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &users[..6],
        [
            "public",
            "api.example.com",
            "/users/{*proxy}",
            "GET,PUT",
            "upstream",
            "users"
        ],
        "{out}"
    );
    assert!(
        lines[1].contains("api_key") && lines[1].contains("throttle(public 100/s burst 50)"),
        "{out}"
    );
    assert!(lines[1].contains("cache(ttl 30s)"), "{out}");
    let health: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&health[..5], ["*", "*", "/health", "ANY", "mock"], "{out}");

    let bad = TempFile::new("toml", b"[[listener]]\naddress = \"x\"\n");
    let (code, _, err) = weir(&["routes", "-c", bad.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:11:"), "{err}");
}

#[test]
fn every_command_has_its_own_help() {
    for cmd in ["run", "check", "routes", "usage", "purge"] {
        for flag in ["--help", "-h"] {
            let (code, out, err) = weir(&[cmd, flag]);
            assert_eq!(code, 0, "{cmd} {flag}: {err}");
            assert!(
                out.starts_with(&format!("weir {cmd}")),
                "{cmd} {flag}: {out}"
            );
        }
    }
    let (code, out, _) = weir(&["help", "check"]);
    assert_eq!(code, 0);
    assert!(out.contains("--config"), "{out}");
    let (code, out, _) = weir(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--config FILE") && out.contains("SIGQUIT"),
        "{out}"
    );
}

#[test]
fn a_cache_of_head_without_get_is_refused() {
    let errs = errors(&format!(
        "{LISTENER}[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n[[route]]\npath = \"/\"\nupstream = \"u\"\ncache = {{ methods = [\"HEAD\"] }}\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("HEAD without GET"), "{errs:#?}");
}
