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

fn setup(limit: u32, throttle: &str) -> Setup {
    let backend = Backend::start();
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let store = std::env::temp_dir().join(format!(
        "weir-quota-test-{}-{}.redb",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&store);
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
