//! Usage-plan quotas: exhaustion with API Gateway's "Limit Exceeded", roll-over at the UTC
//! period boundary, and counts that survive a clean restart and a `kill -9`.

use std::io::{BufReader, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

const KEY: &str = "quotakey000000000000000001";

struct Setup {
    backend: Backend,
    store: std::path::PathBuf,
    config: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.store);
    }
}

/// A fresh path in the temp directory for this test process.
fn temp_path(ext: &str) -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "weir-quota-test-{}-{}.{ext}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ))
}

fn setup(limit: u32, throttle: &str) -> Setup {
    let store = temp_path("redb");
    let _ = std::fs::remove_file(&store);
    setup_at(store, limit, throttle)
}

fn setup_at(store: std::path::PathBuf, limit: u32, throttle: &str) -> Setup {
    let backend = Backend::start();
    let config = format!(
        r#"
[server]
workers = 2

[quotas]
store = "{store}"

[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[[api_key]]
id = "acme"
value = "{KEY}"

[[usage_plan]]
name = "basic"
keys = ["acme"]
quota = {{ limit = {limit}, period = "DAY" }}
{throttle}

[[route]]
path = "/{{*rest}}"
upstream = "backend"
api_key_required = true
"#,
        store = store.display(),
        backend = backend.addr,
    );
    Setup {
        backend,
        store,
        config,
    }
}

fn call(weir: &Weir) -> RawResponse {
    let mut s = connect(weir.addr());
    s.write_all(
        format!("GET /q HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    read_response(&mut BufReader::new(s), false).expect("a response")
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

fn usage(config: &str) -> String {
    let file = TempFile::new("toml", config.as_bytes());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["usage", "-c"])
        .arg(&file.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `weir usage` says is stored for acme; None while it cannot tell.
fn stored_count(config: &str) -> Option<u64> {
    let file = TempFile::new("toml", config.as_bytes());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["usage", "-c"])
        .arg(&file.path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report.lines().find(|l| l.contains("acme"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn used_in(report: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.contains("acme"))
        .expect("a line for acme");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn an_exhausted_quota_answers_limit_exceeded_until_the_next_utc_day() {
    let s = setup(3, "");
    let weir = Weir::start(&s.config);
    for _ in 0..3 {
        assert_eq!(call(&weir).status, 200);
    }
    let r = call(&weir);
    assert_eq!(r.status, 429);
    assert_eq!(r.body_text(), r#"{"message":"Limit Exceeded"}"#);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let expected = seconds_to_utc_midnight();
    assert!(
        retry.abs_diff(expected) <= 5,
        "Retry-After {retry}, midnight in {expected}"
    );
    assert_eq!(s.backend.requests(), 3);
}

#[test]
fn a_quota_rolls_over_at_the_utc_day_boundary() {
    let s = setup(2, "");
    // Weir's clock three seconds before the next UTC midnight.
    let skew = seconds_to_utc_midnight() as i64 - 3;
    let weir = Weir::start_with_env(&s.config, &[("WEIR_CLOCK_SKEW_SECS", skew.to_string())])
        .unwrap_or_else(|log| panic!("{log}"));
    assert_eq!(call(&weir).status, 200);
    assert_eq!(call(&weir).status, 200);
    let r = call(&weir);
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry <= 3, "Retry-After {retry}");
    std::thread::sleep(Duration::from_secs(retry + 1));
    assert_eq!(call(&weir).status, 200, "the new day has a new quota");
}

#[test]
fn quota_counts_survive_a_clean_restart() {
    let s = setup(3, "");
    let mut weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    assert_eq!(call(&weir).status, 200);
    weir.signal(libc::SIGTERM);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
    assert_eq!(used_in(&usage(&s.config)), 2);
    let weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    assert_eq!(call(&weir).status, 429, "two were used before the restart");
}

#[test]
fn quota_counts_survive_kill_9_after_a_second() {
    let s = setup(3, "");
    let mut weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    assert_eq!(call(&weir).status, 200);
    // Counts are written at least once a second: wait for one write, then crash.
    std::thread::sleep(Duration::from_millis(1500));
    weir.signal(libc::SIGKILL);
    assert!(weir.wait_exit(PATIENCE).is_none_or(|c| c != 0));
    let weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    assert_eq!(call(&weir).status, 429);
}

#[test]
fn a_throttled_request_costs_no_quota() {
    let s = setup(5, "throttle = { rate = 0.1, burst = 1 }");
    let mut weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    for _ in 0..4 {
        let r = call(&weir);
        assert_eq!(r.status, 429);
        assert_eq!(r.body_text(), r#"{"message":"Too Many Requests"}"#);
    }
    weir.signal(libc::SIGTERM);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
    assert_eq!(used_in(&usage(&s.config)), 1);
}

/// The config line of `store = ...`, 1-based.
fn store_line(config: &str) -> usize {
    config
        .lines()
        .position(|l| l.starts_with("store = "))
        .expect("a store line")
        + 1
}

#[test]
fn a_store_that_cannot_be_created_is_refused_by_check_and_run() {
    // Tests run as root, which may write anywhere: a path under a regular file is one
    // no user can create.
    let afile = TempFile::new("txt", b"not a directory");
    let store = afile.path.join("usage.redb");
    let s = setup_at(store.clone(), 3, "");
    let err = check_fails(&s.config);
    let line = store_line(&s.config);
    let wanted = format!(
        "cannot write the quota store {}: Not a directory (os error 20)",
        store.display()
    );
    let at = err
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(at.contains(&format!(".toml:{line}:")), "{at}");
    assert!(at.contains("[quotas] store"), "says what to do: {at}");

    let log = Weir::start_raw(&s.config)
        .err()
        .expect("weir run must refuse it");
    assert!(log.contains(&wanted), "{log}");
}

#[test]
fn a_store_that_is_a_directory_is_refused() {
    let dir = temp_path("d");
    std::fs::create_dir(&dir).unwrap();
    let s = setup_at(dir.clone(), 3, "");
    let err = check_fails(&s.config);
    assert!(
        err.contains(&format!("cannot write the quota store {}", dir.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn a_store_that_fails_at_run_time_is_reported_once_then_its_recovery() {
    let s = setup(10, "");
    let weir = Weir::start(&s.config);
    assert_eq!(call(&weir).status, 200);
    assert!(
        eventually(|| stored_count(&s.config) == Some(1)),
        "the first count is written"
    );

    // Something replaces the store with a directory: every write fails.
    std::fs::remove_file(&s.store).unwrap();
    std::fs::create_dir(&s.store).unwrap();
    assert_eq!(call(&weir).status, 200);
    let errors = |log: &str| {
        log.lines()
            .filter(|l| l.contains(" ERROR ") && l.contains("quota store"))
            .count()
    };
    assert!(eventually(|| errors(&weir.log()) > 0), "{}", weir.log());
    // Writes keep failing for several seconds (once a second, with a count pending each
    // time): still one line.
    for _ in 0..3 {
        assert_eq!(call(&weir).status, 200);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let log = weir.log();
    assert_eq!(errors(&log), 1, "{log}");
    let error = log.lines().find(|l| l.contains(" ERROR ")).unwrap();
    assert!(
        error.contains(&s.store.display().to_string()) && error.contains("Is a directory"),
        "names the store and the cause: {error}"
    );
    assert!(!log.contains("quota store written again"), "{log}");

    // The directory goes away: the next write succeeds, and says so once.
    std::fs::remove_dir(&s.store).unwrap();
    assert!(
        eventually(
            || weir.log().contains("INFO quota store") && weir.log().contains("written again")
        ),
        "{}",
        weir.log()
    );
    let mut weir = weir;
    weir.signal(libc::SIGTERM);
    assert_eq!(weir.wait_exit(PATIENCE), Some(0));
    let log = weir.log();
    assert_eq!(errors(&log), 1, "{log}");
    assert_eq!(log.matches("written again").count(), 1, "{log}");
    // Nothing counted while the store failed was lost.
    assert_eq!(used_in(&usage(&s.config)), 5);
}
