//! The `weir` command: `run`, `check`, `usage`, `purge`, `--version`, `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HELP: &str = "\
weir: an io_uring, thread-per-core edge proxy and API gateway

USAGE:
    weir run -c FILE      start the gateway with the config FILE
    weir check -c FILE    check a config and print every error with file:line:column
    weir usage -c FILE [KEY]
                          print each API key's quota use in the current period
    weir purge --pid PID [ROUTE...]
                          purge the response cache of the running gateway PID: the
                          named routes (by `name`), or everything
    weir --version        print the version
    weir --help           print this help

SIGNALS:
    SIGTERM, SIGINT       stop accepting, let in-flight requests finish (up to
                          [server] drain_timeout), then exit 0; a second signal exits now
    SIGHUP                re-read TLS certificates and keys; on an error keep the old ones
    SIGUSR2               purge the response cache (the routes `weir purge` asked for, or all)

The config format is described in docs/config.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("-V" | "--version" | "version") => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") | None => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("usage") => match args.get(1..3).map(config_path) {
            Some(Ok(path)) => usage(path, args.get(3).map(String::as_str)),
            _ => fail("expected `weir usage -c FILE [KEY]`"),
        },
        Some("purge") => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--pid"), Some(pid)) => purge(pid, &args[3..]),
            _ => fail("expected `weir purge --pid PID [ROUTE...]`"),
        },
        Some(cmd @ ("run" | "check")) => match config_path(&args[1..]) {
            Ok(path) if cmd == "run" => run(path),
            Ok(path) => check(path),
            Err(msg) => fail(&msg),
        },
        Some(other) => fail(&format!("unknown command `{other}`; see `weir --help`")),
    }
}

/// Where `weir purge` leaves the route names for process `pid` before signalling it.
fn purge_request_path(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("weir-{pid}.purge"))
}

fn purge(pid: &str, routes: &[String]) -> ExitCode {
    let Ok(pid) = pid.parse::<u32>() else {
        return fail(&format!("`{pid}` is not a process id"));
    };
    let request = purge_request_path(pid);
    if routes.is_empty() {
        let _ = std::fs::remove_file(&request);
    } else if let Err(e) = std::fs::write(&request, routes.join("\n")) {
        return fail(&format!("cannot write {}: {e}", request.display()));
    }
    // SAFETY: kill(2) with a valid signal number; it only sends a signal.
    if unsafe { libc::kill(pid as i32, libc::SIGUSR2) } != 0 {
        let _ = std::fs::remove_file(&request);
        return fail(&format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    ExitCode::SUCCESS
}

fn config_path(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [flag, path] if flag == "-c" || flag == "--config" => Ok(PathBuf::from(path)),
        _ => Err("expected `-c FILE`; see `weir --help`".into()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("weir: {msg}");
    ExitCode::from(1)
}

fn check(path: PathBuf) -> ExitCode {
    match weir::config::load(&path) {
        Ok(config) => {
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes)",
                path.display(),
                config.listeners.len(),
                config.upstreams.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
    }
}

fn usage(path: PathBuf, only_key: Option<&str>) -> ExitCode {
    let config = match weir::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let store = &config.quota_store;
    let stored = if store.exists() {
        match weir::quota::read_all(store) {
            Ok(rows) => rows,
            Err(e) => return fail(&format!("cannot read {}: {e}", store.display())),
        }
    } else {
        Vec::new()
    };
    let now = weir::quota::wall_clock();
    println!(
        "{:<16} {:<24} {:>12} {:>12}  {:<6} resets in",
        "plan", "key", "used", "limit", "period"
    );
    for plan in &config.usage_plans {
        let Some(quota) = plan.quota else { continue };
        let current = quota.period.index(now);
        for &k in &plan.keys {
            let key = &config.api_keys[k].id;
            if only_key.is_some_and(|only| only != key) {
                continue;
            }
            let used = stored
                .iter()
                .find(|(p, id, period, _)| p == &plan.name && id == key && *period == current)
                .map_or(0, |r| r.3);
            println!(
                "{:<16} {:<24} {:>12} {:>12}  {:<6} {}s",
                plan.name,
                key,
                used,
                quota.limit,
                quota.period.name(),
                quota.period.until_next(now)
            );
        }
    }
    ExitCode::SUCCESS
}

fn run(path: PathBuf) -> ExitCode {
    let config = match weir::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let drain = config.server.drain_timeout;
    // Registered before the workers start, so an early signal is never fatal.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot handle signals: {e}")),
    };
    let running = match weir::server::start(config) {
        Ok(r) => r,
        Err(msg) => return fail(&msg),
    };
    for (name, addr) in &running.addresses {
        eprintln!("weir: listening on http://{addr} (listener `{name}`)");
    }
    let cpus: Vec<String> = running
        .cpus
        .iter()
        .map(|c| c.map_or("-".into(), |c| c.to_string()))
        .collect();
    eprintln!(
        "weir: {} worker{} on {}, pinned to CPUs [{}]",
        running.workers,
        if running.workers == 1 { "" } else { "s" },
        running.driver,
        cpus.join(", ")
    );

    let first = signals.forever().find(|&sig| {
        if sig == SIGHUP {
            for line in running.reload_certificates() {
                eprintln!("weir: SIGHUP: {line}");
            }
        }
        if sig == SIGUSR2 {
            // The routes `weir purge` left for this process, if it left any.
            let request = purge_request_path(std::process::id());
            let routes: Vec<String> = std::fs::read_to_string(&request)
                .map(|text| text.lines().map(str::to_string).collect())
                .unwrap_or_default();
            let _ = std::fs::remove_file(&request);
            for line in running.purge_cache(&routes) {
                eprintln!("weir: SIGUSR2: {line}");
            }
        }
        sig != SIGHUP && sig != SIGUSR2
    });
    eprintln!(
        "weir: {}: draining (up to {:?})",
        if first == Some(SIGINT) {
            "SIGINT"
        } else {
            "SIGTERM"
        },
        drain
    );
    running.shutdown_flag().store(true, Ordering::Relaxed);
    std::thread::spawn(move || {
        if signals.forever().any(|sig| sig != SIGHUP && sig != SIGUSR2) {
            eprintln!("weir: second signal: exiting now");
            std::process::exit(1);
        }
    });
    running.wait();
    eprintln!("weir: stopped");
    ExitCode::SUCCESS
}
