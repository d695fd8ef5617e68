//! Running as a service: the systemd notify protocol over a real Unix datagram socket
//! (ready, reloading, ready again, stopping), and `[server] user` (refused by `weir check`
//! when the system has no such user; dropped to after binding when started as root).

use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

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

// ---------------------------------------------------------------------------------------
// [server] user
// ---------------------------------------------------------------------------------------

/// A config whose `[server]` serves as `user`.
fn as_user(user: &str) -> String {
    format!(
        "[server]\nworkers = 2\nio = \"{}\"\nuser = \"{user}\"\n\n{MOCK}",
        test_io()
    )
}

/// Runs `weir run` on `config` until it exits (it must, within the patience), as `uid`
/// when given: (exit code, stderr).
fn run_until_exit(config: &TempFile, uid: Option<u32>) -> (Option<i32>, String) {
    let binary = match uid {
        Some(_) => executable_by_anyone(),
        None => std::path::PathBuf::from(env!("CARGO_BIN_EXE_weir")),
    };
    let mut command = Command::new(binary);
    command
        .args(["run", "-c"])
        .arg(&config.path)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            return (out.status.code(), err);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, "still running".into())
}

/// A copy of the weir binary any user can run: the build's own may sit under a directory
/// only its owner can enter (a checkout in `mktemp -d`, mode 0700), where `nobody` gets
/// EACCES before Weir runs at all.
fn executable_by_anyone() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weir-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("weir");
        std::fs::copy(env!("CARGO_BIN_EXE_weir"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

fn is_root() -> bool {
    // SAFETY: reads the process's effective uid.
    unsafe { libc::geteuid() == 0 }
}

/// `nobody`, as the system knows it.
fn nobody() -> weir::config::User {
    weir::privileges::lookup("nobody")
        .unwrap()
        .expect("a user `nobody`")
}

#[test]
fn check_refuses_an_unknown_user_with_its_line() {
    let file = TempFile::new("toml", as_user("weir-no-such-user").as_bytes());
    let (code, _, err) = weir(&["check", "-c", file.path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let at = format!("{}:4:8: ", file.path.display());
    assert!(
        err.contains(&format!(
            "{at}user = \"weir-no-such-user\": this system has no such user"
        )),
        "{err}"
    );
    assert!(err.contains("useradd --system"), "{err}");

    let empty = check_fails(&as_user(""));
    assert!(
        empty.contains(":4:8: user = \"\": write a user name"),
        "{empty}"
    );
}

#[test]
fn serves_as_the_user_it_was_started_as() {
    let Ok(out) = Command::new("id").arg("-un").output() else {
        eprintln!("skipped: no `id` command");
        return;
    };
    let me = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || me.is_empty() {
        eprintln!("skipped: the current uid has no user name");
        return;
    }
    check_passes(&as_user(&me));
    let weir = Weir::start(&as_user(&me));
    assert_eq!(try_get(weir.addr(), "/", "").unwrap().body_text(), "up");
    // Nothing to drop: no line says it did.
    assert!(!weir.log().contains("serving as user"), "{}", weir.log());
}

#[test]
fn a_user_that_is_not_root_cannot_become_another() {
    // As root, the test runs Weir as `nobody` to be that user; otherwise it is one.
    let (uid, other) = if is_root() {
        (Some(nobody().uid), "root")
    } else {
        (None, "root")
    };
    let config = TempFile::new("toml", as_user(other).as_bytes());
    let (code, err) = run_until_exit(&config, uid);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ERROR [server] user = \"root\""), "{err}");
    assert!(
        err.contains("not root, so it cannot become `root`"),
        "{err}"
    );
}

#[test]
fn started_as_root_it_binds_then_serves_as_nobody() {
    if !is_root() {
        eprintln!("skipped: dropping to `nobody` needs the tests to run as root");
        return;
    }
    let nobody = nobody();
    let mut weir = Weir::start(&as_user("nobody"));
    assert_eq!(try_get(weir.addr(), "/", "").unwrap().body_text(), "up");
    assert!(
        weir.log().contains(&format!(
            "serving as user `nobody` (uid {}, gid {})",
            nobody.uid, nobody.gid
        )),
        "{}",
        weir.log()
    );

    // Every thread (the main one, each worker, the control socket's) is nobody, with no
    // supplementary group: real, effective, saved and file-system ids alike.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", weir.pid()))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    assert!(tasks.len() >= 3, "main, 2 workers: {tasks:?}");
    for task in tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid:"), vec![nobody.uid.to_string(); 4], "{status}");
        assert_eq!(field("Gid:"), vec![nobody.gid.to_string(); 4], "{status}");
        assert!(field("Groups:").is_empty(), "{status}");
    }

    // Reloads run as nobody too, and still work; so does the drain.
    weir.sighup_and_wait(2);
    assert_eq!(try_get(weir.addr(), "/", "").unwrap().status, 200);
    weir.signal(libc::SIGTERM);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0), "{}", weir.log());
}

#[test]
fn a_config_only_root_can_read_fails_the_start_rather_than_every_reload() {
    if !is_root() {
        eprintln!("skipped: dropping to `nobody` needs the tests to run as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let config = TempFile::new("toml", as_user("nobody").as_bytes());
    std::fs::set_permissions(&config.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = run_until_exit(&config, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("after dropping to user `nobody`, the config no longer loads"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
}
