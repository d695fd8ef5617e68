//! The `weir` command: `run`, `check`, `routes`, `usage`, `purge`, `--version`, `--help`,
//! and the signals a running gateway answers.
//!
//! Must not: hold gateway logic. Each subcommand loads the config through
//! [`weir::config::load`] and hands it to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;
use weir::config::Config;
use weir::{error, info, warn};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HELP: &str = "\
weir: an io_uring, thread-per-core edge proxy and API gateway

USAGE:
    weir run -c FILE      start the gateway with the config FILE
    weir check -c FILE    check a config and print every error with file:line:column
    weir routes -c FILE   print the route table Weir would serve, with each route's stages
    weir reload -c FILE   reload the whole config of the gateway running with FILE, and
                          say what changed (or every error: then nothing changed)
    weir usage -c FILE [KEY]
                          print each API key's quota use in the current period
    weir purge -c FILE [ROUTE...]
                          purge the response cache of the gateway running with FILE:
                          the named routes (by `name`), or everything
    weir --version        print the version
    weir --help           print this help; `weir COMMAND --help` for one command

    -c FILE and --config FILE are the same.

SIGNALS:
    SIGTERM, SIGINT, SIGQUIT
                          stop accepting, let in-flight requests finish (up to
                          [server] drain_timeout), then exit 0; a second one exits now
    SIGHUP                reload the whole config, as `weir reload`; on an error keep the
                          config that serves and log every error
    SIGUSR1               reopen access log files (logrotate's postrotate)
    SIGUSR2               purge the whole response cache
    SIGWINCH              ignored (nginx stops daemon workers with it; Weir has none)

The config format is described in docs/config.md.";

const RUN_HELP: &str = "\
weir run -c FILE

Starts the gateway with the config FILE (also --config FILE): one worker per core, each
listener bound on every worker. Log lines go to stderr, each with an RFC 3339 timestamp
and a level. The config is checked first, exactly as `weir check` does; any error stops
the start with exit 1. See `weir --help` for the signals a running gateway answers.";

const CHECK_HELP: &str = "\
weir check -c FILE

Checks the config FILE (also --config FILE) without starting anything: every unknown key,
wrong type and impossible setting is printed as `file:line:column: message`, all of them
at once, in file order. Exit 0 and a one-line summary when the file is good, 1 otherwise.";

const ROUTES_HELP: &str = "\
weir routes -c FILE [--running]

Prints the route table Weir would serve for the config FILE (also --config FILE): for each
route its listener, host, path, methods, integration and stages, in the order they are
checked. Exit 1 with every error when the file does not check. With --running, prints the
table of the gateway running with FILE instead (its serving generation, which differs
from the file until a reload), asked through its control socket.";

const RELOAD_HELP: &str = "\
weir reload -c FILE

Reloads the gateway that runs with the config FILE (also --config FILE), through its
control socket, and waits for the result: FILE is checked exactly as `weir check` does,
then routes, upstreams, keys and plans, limits, cache settings, listeners and TLS
certificates change at once, with no connection closed and no request lost. Throttle
state, quota counts, cache entries, target health, warm upstream connections and TLS
sessions carry over. Exit 0 and the new generation's summary; exit 1 and every error
when the file does not check or a new listener cannot bind: then nothing changed.
SIGHUP does the same.";

const USAGE_HELP: &str = "\
weir usage -c FILE [KEY]

Prints each API key's quota use in the current period, read from the quota store of the
config FILE (also --config FILE); only KEY's rows when a key id is given.";

const PURGE_HELP: &str = "\
weir purge -c FILE [ROUTE...]

Purges the response cache of the gateway running with the config FILE (also --config
FILE), on every worker: the routes named ROUTE (by their `name`), or everything when no
route is named. It talks to the gateway through its control socket, as `weir reload`;
exit 1 if a named route does not exist (the others are purged).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants_help = args.iter().skip(1).any(|a| a == "-h" || a == "--help");
    match args.first().map(String::as_str) {
        Some("-V" | "--version" | "version") => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("-h" | "--help") | None => help(HELP),
        Some("help") => match args.get(1).map(String::as_str) {
            None => help(HELP),
            Some(cmd) => subcommand_help(cmd).map_or_else(
                || fail(&format!("unknown command `{cmd}`; see `weir --help`")),
                help,
            ),
        },
        Some(cmd) if wants_help && subcommand_help(cmd).is_some() => {
            help(subcommand_help(cmd).unwrap_or(HELP))
        }
        Some("usage") => match args.get(1..3).map(config_path) {
            Some(Ok(path)) => usage(path, args.get(3).map(String::as_str)),
            _ => fail("expected `weir usage -c FILE [KEY]`"),
        },
        Some("purge") => match args.get(1..3).map(config_path) {
            Some(Ok(path)) => purge(&path, &args[3..]),
            _ => fail("expected `weir purge -c FILE [ROUTE...]`"),
        },
        Some("routes") if args.get(3).map(String::as_str) == Some("--running") => {
            match config_path(&args[1..3]) {
                Ok(path) => running_routes(&path),
                Err(msg) => fail(&format!("{msg}: `weir routes -c FILE --running`")),
            }
        }
        Some(cmd @ ("run" | "check" | "routes" | "reload")) => match config_path(&args[1..]) {
            Ok(path) if cmd == "run" => run(path),
            Ok(path) if cmd == "check" => check(path),
            Ok(path) if cmd == "reload" => reload(&path),
            Ok(path) => routes(path),
            Err(msg) => fail(&format!("{msg}: `weir {cmd} -c FILE`")),
        },
        Some(other) => fail(&format!("unknown command `{other}`; see `weir --help`")),
    }
}

fn subcommand_help(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "run" => RUN_HELP,
        "check" => CHECK_HELP,
        "routes" => ROUTES_HELP,
        "reload" => RELOAD_HELP,
        "usage" => USAGE_HELP,
        "purge" => PURGE_HELP,
        _ => return None,
    })
}

fn help(text: &str) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

/// Asks the gateway running with `config` to purge `routes` (or everything).
fn purge(config: &Path, routes: &[String]) -> ExitCode {
    let mut command = String::from("purge");
    for r in routes {
        if r.contains(['\t', '\n']) {
            return fail(&format!(
                "a route name cannot contain a tab or a newline: {r:?}"
            ));
        }
        command.push('\t');
        command.push_str(r);
    }
    match weir::control::request(config, &command) {
        Ok((ok, lines)) => {
            print!("{lines}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(&e),
    }
}

fn config_path(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [flag, path] if flag == "-c" || flag == "--config" => Ok(PathBuf::from(path)),
        _ => Err("expected `-c FILE` (or `--config FILE`)".into()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("weir: {msg}");
    ExitCode::from(1)
}

/// Loads a config, or prints every error and gives the exit code.
fn load(path: &Path) -> Result<Config, ExitCode> {
    weir::config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn check(path: PathBuf) -> ExitCode {
    let config = match weir::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!("{}: {n} {}", path.display(), plural(n, "error", "errors"));
            return ExitCode::from(1);
        }
    };
    let count = |n: usize, one, many| format!("{n} {}", plural(n, one, many));
    println!(
        "{}: ok: {} on {}, {}",
        path.display(),
        count(config.routes.len(), "route", "routes"),
        count(config.listeners.len(), "listener", "listeners"),
        count(config.upstreams.len(), "upstream", "upstreams"),
    );
    if let Some(w) = config.admin.as_ref().and_then(|a| a.warning()) {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// `weir routes --running`: the serving generation's table, from the running gateway.
fn running_routes(path: &Path) -> ExitCode {
    match weir::control::request(path, "routes") {
        Ok((true, json)) => match serde_json::from_str::<Vec<weir::config::RouteRow>>(&json) {
            Ok(rows) => print_routes(rows),
            Err(e) => fail(&format!("the gateway's route table did not read: {e}")),
        },
        Ok((false, said)) => fail(said.trim()),
        Err(e) => fail(&e),
    }
}

/// `weir routes`: one row per route, in the order routes are matched for each listener.
fn routes(path: PathBuf) -> ExitCode {
    match load(&path) {
        Ok(config) => print_routes(config.route_table()),
        Err(code) => code,
    }
}

fn print_routes(table: Vec<weir::config::RouteRow>) -> ExitCode {
    let rows: Vec<[String; 6]> = table
        .into_iter()
        .map(|r| {
            [
                r.listener,
                r.host,
                r.path,
                r.methods,
                r.integration,
                r.stages,
            ]
        })
        .collect();
    let header = [
        "LISTENER",
        "HOST",
        "PATH",
        "METHODS",
        "INTEGRATION",
        "STAGES",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let print = |cells: [&str; 6]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    };
    print(header);
    for row in &rows {
        print(row.each_ref().map(String::as_str));
    }
    ExitCode::SUCCESS
}

fn usage(path: PathBuf, only_key: Option<&str>) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
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
    let now = weir::quota::wall_clock(weir::clock::now());
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

/// `weir reload`: asks the running gateway to reload, prints what it said.
fn reload(path: &Path) -> ExitCode {
    match weir::control::request(path, "reload") {
        Ok((true, text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((false, text)) => {
            eprint!("{text}");
            ExitCode::from(1)
        }
        Err(msg) => fail(&msg),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGWINCH => "SIGWINCH",
        _ => "a signal",
    }
}

fn run(path: PathBuf) -> ExitCode {
    // A gateway's errors are log lines (timestamp, level), as everything it says.
    let config = match weir::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                error!("{e}");
            }
            return ExitCode::from(1);
        }
    };
    let drain = config.server.drain_timeout;
    if let Some(w) = config.admin.as_ref().and_then(|a| a.warning()) {
        warn!("{w}");
    }
    // Registered before the workers start, so an early signal is never fatal: every
    // signal an nginx or systemd user sends is handled, none kills Weir without a drain.
    let mut signals =
        match Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH]) {
            Ok(s) => s,
            Err(e) => return fail(&format!("cannot handle signals: {e}")),
        };
    // The admin API's socket is bound with the listeners, before any privilege drop.
    let admin = match &config.admin {
        Some(a) => match weir::admin::bind(a.address) {
            Ok(listener) => Some((listener, a.token.clone())),
            Err(msg) => {
                error!("{msg}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let running = match weir::server::start(config, &path) {
        Ok(r) => r,
        Err(msg) => {
            error!("{msg}");
            return ExitCode::from(1);
        }
    };
    for l in &running.listeners {
        info!("listening on {} (listener `{}`)", l.url(), l.name);
    }
    if let Some((listener, token)) = admin {
        if let Ok(addr) = listener.local_addr() {
            info!("admin API on http://{addr}");
        }
        weir::admin::serve(listener, running.control(), token);
    }
    // The control socket before the line that says the gateway serves: whoever waits
    // for that line (a script, a test) may run `weir reload` at once.
    let control = running.control();
    let socket = weir::control::socket_path(&path);
    if let Err(e) = weir::control::serve(socket.clone(), control.clone()) {
        warn!("{e}: `weir reload` cannot reach this gateway; SIGHUP still reloads");
    }
    let cpus: Vec<String> = running
        .cpus
        .iter()
        .map(|c| c.map_or("-".into(), |c| c.to_string()))
        .collect();
    info!(
        "{} {} on {}, pinned to CPUs [{}]",
        running.workers,
        plural(running.workers, "worker", "workers"),
        running.driver,
        cpus.join(", ")
    );
    // Every listener is bound and every worker serves: a service manager waiting for
    // readiness (systemd's Type=notify) may start what depends on Weir.
    let n = running.listeners.len();
    weir::notify::ready(&format!(
        "serving {n} {}",
        plural(n, "listener", "listeners")
    ));

    let is_stop = |sig: i32| matches!(sig, SIGTERM | SIGINT | SIGQUIT);
    let first = signals.forever().find(|&sig| {
        let name = signal_name(sig);
        match sig {
            SIGHUP => {
                info!("{name}: reloading {}", path.display());
                // The outcome is logged by the reload itself.
                let _ = control.reload();
            }
            SIGUSR1 => match control.reopen_logs() {
                0 => info!("{name}: no access log file to reopen (Weir's own log is stderr)"),
                n => info!("{name}: reopening {n} access {}", plural(n, "log", "logs")),
            },
            SIGUSR2 => {
                for line in control.purge_cache(&[]) {
                    info!("{name}: {line}");
                }
            }
            SIGWINCH => {
                info!("{name}: ignored (Weir has no daemon workers; SIGQUIT stops gracefully)")
            }
            _ => {}
        }
        is_stop(sig)
    });
    info!(
        "{}: draining (up to {:?})",
        first.map_or("a signal", signal_name),
        drain
    );
    weir::notify::stopping();
    running.shutdown_flag().store(true, Ordering::Relaxed);
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().find(|&sig| is_stop(sig)) {
            warn!("second {}: exiting now", signal_name(sig));
            std::process::exit(1);
        }
    });
    running.wait();
    let _ = std::fs::remove_file(&socket);
    info!("stopped");
    ExitCode::SUCCESS
}
