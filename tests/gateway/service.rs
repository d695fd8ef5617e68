//! Running as a service: the systemd notify protocol over a real Unix datagram socket
//! (ready, reloading, ready again, stopping).

use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;

use crate::support::*;

const MOCK: &str =
    "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nmock = { body = \"up\" }\n";

// ---------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------

/// A datagram socket bound where the test says, as systemd's notify socket is; the file is
/// removed when dropped.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(tag: &str) -> NotifySocket {
        let path =
            std::env::temp_dir().join(format!("weir-test-{}-{tag}.notify", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket { socket, path }
    }

    /// The next notification, as its `KEY=VALUE` lines (and its text, for messages).
    fn next(&self, waiting_for: &str, weir: &Weir) -> (HashMap<String, String>, String) {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification ({waiting_for}): {e}; log:\n{}", weir.log())
        });
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let fields = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (fields, text)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// CLOCK_MONOTONIC in microseconds, as the test sees it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[test]
fn systemd_hears_ready_then_reloading_and_ready_then_stopping() {
    let notify = NotifySocket::bind("notify");
    let config = format!("{}{MOCK}", server_prefix(""));
    let mut weir = Weir::start_with_env(
        &config,
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    )
    .unwrap_or_else(|log| panic!("weir did not start:\n{log}"));

    let (ready, text) = notify.next("READY=1 at start", &weir);
    assert_eq!(ready.get("READY").map(String::as_str), Some("1"), "{text}");
    assert_eq!(
        ready.get("MAINPID"),
        Some(&weir.pid().to_string()),
        "{text}"
    );
    assert_eq!(
        ready.get("STATUS").map(String::as_str),
        Some("serving 1 listener"),
        "{text}"
    );
    // Ready means serving.
    let r = try_get(weir.addr(), "/", "").unwrap();
    assert_eq!(r.status, 200);

    // A reload by SIGHUP (what systemd's ReloadSignal sends): RELOADING=1 with the time,
    // then READY=1 once the new generation serves.
    weir.signal(libc::SIGHUP);
    let (reloading, text) = notify.next("RELOADING=1 after SIGHUP", &weir);
    assert_eq!(
        reloading.get("RELOADING").map(String::as_str),
        Some("1"),
        "{text}"
    );
    let stamp: u64 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {text}"));
    // The same clock as ours (CLOCK_MONOTONIC), read before we received it.
    assert!(stamp > 0 && stamp <= monotonic_usec(), "{text}");
    let (done, text) = notify.next("READY=1 after the reload", &weir);
    assert_eq!(done.get("READY").map(String::as_str), Some("1"), "{text}");
    assert_eq!(
        done.get("STATUS").map(String::as_str),
        Some("serving generation 2"),
        "{text}"
    );

    // A reload that fails (through `weir reload`) also ends with READY=1: the old
    // generation serves on, and the status says so.
    weir.rewrite_config("[[listener]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n");
    let (code, _, _) = weir.reload_cli();
    assert_eq!(code, 1);
    let (reloading, text) = notify.next("RELOADING=1 for the bad file", &weir);
    assert_eq!(
        reloading.get("RELOADING").map(String::as_str),
        Some("1"),
        "{text}"
    );
    let (done, text) = notify.next("READY=1 after the failed reload", &weir);
    assert_eq!(done.get("READY").map(String::as_str), Some("1"), "{text}");
    assert!(
        done.get("STATUS")
            .is_some_and(|s| s.starts_with("reload failed: kept generation 2")),
        "{text}"
    );

    weir.signal(libc::SIGTERM);
    let (stopping, text) = notify.next("STOPPING=1 after SIGTERM", &weir);
    assert_eq!(
        stopping.get("STOPPING").map(String::as_str),
        Some("1"),
        "{text}"
    );
    assert_eq!(weir.wait_exit(PATIENCE), Some(0), "{}", weir.log());
}

#[test]
fn systemd_hears_ready_on_an_abstract_socket() {
    let name = format!("weir-test-{}-abstract.notify", std::process::id());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let weir = Weir::start_with_env(
        &format!("{}{MOCK}", server_prefix("")),
        &[("NOTIFY_SOCKET", format!("@{name}"))],
    )
    .unwrap_or_else(|log| panic!("weir did not start:\n{log}"));
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1: {e}; log:\n{}", weir.log()));
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.lines().any(|l| l == "READY=1"), "{text}");
    assert!(
        text.lines().any(|l| l == format!("MAINPID={}", weir.pid())),
        "{text}"
    );
}

#[test]
fn a_notify_socket_that_is_gone_is_one_warning_and_weir_serves_on() {
    let weir = Weir::start_with_env(
        &format!("{}{MOCK}", server_prefix("")),
        &[("NOTIFY_SOCKET", "/nonexistent/weir/notify".to_string())],
    )
    .unwrap_or_else(|log| panic!("weir did not start:\n{log}"));
    assert!(
        weir.wait_for_log("cannot notify the service manager"),
        "{}",
        weir.log()
    );
    // A reload tries twice more (reloading, ready), silently.
    weir.sighup_and_wait(2);
    assert_eq!(
        weir.log_count("cannot notify the service manager"),
        1,
        "{}",
        weir.log()
    );
    assert_eq!(try_get(weir.addr(), "/", "").unwrap().status, 200);
}
