//! The control socket: how `weir reload -c FILE` reaches the gateway running with FILE.
//!
//! A Unix stream socket, private to the user running Weir (mode 0600), at a path derived
//! from the config file's absolute path, so that the command needs nothing but the file
//! to find its gateway. One command per connection: the client writes a line (`reload`,
//! `routes`, or `purge` followed by route names, each after a tab), the gateway answers `ok` or
//! `error` on the first line, then what happened, then closes.
//!
//! Owns: the socket's path, its thread, and the wire format. Must not: do the work
//! itself (it calls [`crate::server::Control`]) or run on a worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::server::Control;

/// Where the gateway started with `config` listens for commands:
/// `$XDG_RUNTIME_DIR/weir-HASH.sock` (or the temp directory), HASH from the config
/// file's absolute path.
pub fn socket_path(config: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut h = std::hash::DefaultHasher::new();
    absolute.hash(&mut h);
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("weir-{:016x}.sock", h.finish()))
}

/// Listens on `path` on a thread of its own. A socket file left by a gateway that is gone
/// is replaced; one a live gateway answers on is an error.
pub fn serve(path: PathBuf, control: Arc<Control>) -> Result<(), String> {
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "another gateway runs with this config (control socket {})",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot create the control socket {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    std::thread::Builder::new()
        .name("weir-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                answer(stream, &control);
            }
        })
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    Ok(())
}

fn answer(stream: UnixStream, control: &Control) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let mut words = line.split('\t');
    let (ok, lines) = match words.next().unwrap_or("") {
        "purge" => {
            let routes: Vec<String> = words.map(str::to_string).collect();
            let lines = control.purge_cache(&routes);
            let ok = !lines.iter().any(|l| l.starts_with("no route"));
            (ok, lines)
        }
        "routes" => {
            let table = control.current().config.route_table();
            match serde_json::to_string(&table) {
                Ok(json) => (true, vec![json]),
                Err(e) => (false, vec![e.to_string()]),
            }
        }
        "reload" => match control.reload() {
            Ok(lines) => (true, lines),
            Err(errors) => {
                let kept = control.current().generation;
                let mut lines = errors;
                lines.push(format!("kept generation {kept}"));
                (false, lines)
            }
        },
        other => (false, vec![format!("unknown command `{other}`")]),
    };
    let mut out = String::from(if ok { "ok\n" } else { "error\n" });
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    let _ = (&stream).write_all(out.as_bytes());
}

/// Sends `command` to the gateway started with `config`: Ok((succeeded, its lines)).
pub fn request(config: &Path, command: &str) -> Result<(bool, String), String> {
    let path = socket_path(config);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no running gateway answers for {} (control socket {}: {e}); is `weir run -c {}` running?",
            config.display(),
            path.display(),
            config.display()
        )
    })?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    match reply.split_once('\n') {
        Some(("ok", rest)) => Ok((true, rest.to_string())),
        Some(("error", rest)) => Ok((false, rest.to_string())),
        _ => Err(format!("the gateway's answer was cut short: {reply:?}")),
    }
}
