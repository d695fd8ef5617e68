//! The process: start-up messages, `weir check`, bind errors, graceful shutdown.

use std::io::{BufReader, Write};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use crate::support::*;

#[test]
fn check_accepts_the_quickstart_config() {
    let (code, out, _) = weir(&["check", "-c", "examples/quickstart.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_reports_every_error_with_its_line() {
    let bad = TempFile::new(
        "toml",
        br#"[[listener]]
address = "127.0.0.1:0"

[[route]]
path = "/a"
upstream = "nowhere"

[[route]]
path = "/b"
mock = { status = 999 }
"#,
    );
    let (code, _, err) = weir(&["check", "-c", bad.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let file = bad.path.display().to_string();
    assert!(
        err.contains(&format!("{file}:6:12: no [upstream.nowhere]")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:10:")) && err.contains("999"),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn check_rejects_unknown_keys_by_line() {
    let bad = TempFile::new(
        "toml",
        b"[[listener]]\naddress = \"127.0.0.1:0\"\nadress = \"x\"\n",
    );
    let (code, _, err) = weir(&["check", "-c", bad.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":3:1: unknown field `adress`"), "{err}");
}

#[test]
fn a_missing_config_is_a_one_line_error() {
    let (code, _, err) = weir(&["run", "-c", "/nonexistent/weir.toml"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn a_bind_failure_is_a_one_line_error() {
    // Held without SO_REUSEPORT, so Weir cannot join it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let result = Weir::start_raw(&format!(
        "[[listener]]\naddress = \"{addr}\"\n[[route]]\npath = \"/\"\nmock = {{}}\n"
    ));
    let log = result.err().expect("weir must not start");
    assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn a_second_weir_on_the_same_address_fails_and_the_first_keeps_serving() {
    let addr = dead_port();
    let config = format!(
        "[server]\nworkers = 2\n[[listener]]\naddress = \"{addr}\"\n[[route]]\npath = \"/\"\nmock = {{}}\n"
    );
    let first = Weir::start_raw(&config).unwrap_or_else(|log| panic!("{log}"));
    assert_eq!(first.addr(), addr);

    // SO_REUSEPORT groups the first one's workers, not two processes.
    let file = TempFile::new("toml", config.as_bytes());
    let mut second = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c"])
        .arg(&file.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(|| second.try_wait().unwrap().is_some());
    if !exited {
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second weir started on {addr}, the first one's address");
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(
        err.to_ascii_lowercase().contains("address already in use"),
        "{err}"
    );

    for _ in 0..8 {
        let r = raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .expect("the first weir answers");
        assert_eq!(r.status, 200);
    }
}

#[test]
fn version_and_help() {
    let (code, out, _) = weir(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("weir "), "{out}");
    let (code, out, _) = weir(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("weir check -c FILE"), "{out}");
}

#[test]
fn startup_reports_listeners_workers_and_driver() {
    let weir = Weir::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nmock = {}\n",
    );
    let log = weir.log();
    assert!(log.contains("INFO listening on http://127.0.0.1:"), "{log}");
    assert!(log.contains("2 workers on "), "{log}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let backend = Backend::start();
    let mut weir = Weir::start(&proxy_config(
        backend.addr,
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n",
    ));
    let addr = weir.addr();
    let mut s = connect(addr);
    s.write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(eventually(|| backend.requests() == 1));
    weir.signal(libc::SIGTERM);
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "slow");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a draining server closes"
    );
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
    assert!(weir.log().contains("draining"));
    sleep(Duration::from_millis(50));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigterm_with_nothing_in_flight_exits_promptly() {
    let mut weir = Weir::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nmock = {}\n",
    );
    weir.signal(libc::SIGINT);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
}

#[test]
fn log_lines_carry_an_rfc3339_timestamp_and_a_level() {
    let weir = Weir::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nmock = {}\n",
    );
    let log = weir.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .expect("a listening line");
    // 2026-12-03T18:37:19.123Z INFO listening on http://...
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(
        httpdate::parse_http_date(&rfc3339_to_http_date(stamp)).is_ok(),
        "{line}"
    );
    assert!(rest.starts_with("INFO listening on http://"), "{line}");
}

/// `2026-12-03T18:37:19.123Z` as an HTTP date, so that httpdate can check it is a real time.
fn rfc3339_to_http_date(stamp: &str) -> String {
    assert_eq!(stamp.len(), 24, "{stamp}");
    assert!(stamp.ends_with('Z') && &stamp[19..20] == ".", "{stamp}");
    let (y, mo, d) = (&stamp[0..4], &stamp[5..7], &stamp[8..10]);
    let time = &stamp[11..19];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][mo.parse::<usize>().unwrap() - 1];
    let days = weir::calendar::days_from_civil(
        y.parse().unwrap(),
        mo.parse().unwrap(),
        d.parse().unwrap(),
    );
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    format!("{weekday}, {d} {month} {y} {time} GMT")
}

#[test]
fn signals_an_nginx_user_sends_do_not_kill_weir_and_sigquit_drains() {
    let mut weir = Weir::start("[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nmock = { body = \"up\" }\n");
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH] {
        weir.signal(sig);
        sleep(Duration::from_millis(200));
        let r = raw(
            weir.addr(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            r.map(|r| r.status),
            Some(200),
            "after signal {sig}: {}",
            weir.log()
        );
    }
    assert!(
        weir.log().contains("SIGUSR1: no access log file to reopen"),
        "{}",
        weir.log()
    );
    assert!(weir.log().contains("SIGWINCH: ignored"), "{}", weir.log());
    weir.signal(libc::SIGQUIT);
    assert_eq!(
        weir.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        weir.log()
    );
    assert!(weir.log().contains("SIGQUIT: draining"), "{}", weir.log());
}
