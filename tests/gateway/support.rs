//! Test support: start the real `weir` binary on ephemeral ports, a real HTTP backend
//! that records what reaches it, an HTTP client, and raw-socket helpers for input no
//! well-behaved client would send.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: these machines are shared and noisy. Tests assert behaviour, not speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// I/O driver for gateways started by tests: `WEIR_TEST_IO` or "auto".
pub fn test_io() -> String {
    std::env::var("WEIR_TEST_IO").unwrap_or_else(|_| "auto".into())
}

/// The `[server]` section [`Weir::start`] adds to a config that has none (2 workers).
pub fn server_prefix(config: &str) -> String {
    if config.contains("[server]") {
        String::new()
    } else {
        format!("[server]\nworkers = 2\nio = \"{}\"\n\n", test_io())
    }
}

// ---------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------

pub struct Weir {
    child: Option<Child>,
    pub listeners: HashMap<String, SocketAddr>,
    /// Everything the process wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    config: TempFile,
    /// The `[server]` section [`Weir::start`] put before the config ("" when it added
    /// none), put again by [`Weir::rewrite_config`] so a reload sees the same server.
    server_prefix: String,
}

impl Weir {
    /// Starts Weir with `config`; a `[server]` section is added unless present (2 workers).
    /// Listener addresses should use port 0.
    pub fn start(config: &str) -> Weir {
        let prefix = server_prefix(config);
        let mut weir = Weir::start_raw(&format!("{prefix}{config}"))
            .unwrap_or_else(|log| panic!("weir did not start:\n{log}"));
        weir.server_prefix = prefix;
        weir
    }

    /// Starts Weir with exactly `config`; Err(stderr) if it exits or never reports ready.
    pub fn start_raw(config: &str) -> Result<Weir, String> {
        Weir::start_with_env(config, &[])
    }

    /// Like [`Weir::start_raw`], with extra environment variables for the process.
    pub fn start_with_env(config: &str, env: &[(&str, String)]) -> Result<Weir, String> {
        let file = TempFile::new("toml", config.as_bytes());
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c"])
            .arg(&file.path)
            // Weir speaks to a service manager named there: not the one running the tests.
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                let mut ready_sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if !ready_sent && line.contains(" worker") && line.contains(" on ") {
                        ready_sent = true;
                        let _ = tx.send(());
                    }
                }
            });
        }
        let mut weir = Weir {
            child: Some(child),
            listeners: HashMap::new(),
            log: log.clone(),
            config: file,
            server_prefix: String::new(),
        };
        if rx.recv_timeout(PATIENCE).is_err() {
            thread::sleep(Duration::from_millis(100));
            return Err(log.lock().unwrap().clone());
        }
        for line in log.lock().unwrap().lines() {
            // 2026-12-03T18:37:19.123Z INFO listening on http://127.0.0.1:PORT (listener `NAME`)
            // (https:// for a TLS listener)
            let listening = line.split_once(" INFO listening on ").map(|(_, r)| r);
            if let Some(rest) = listening.and_then(|r| {
                r.strip_prefix("http://")
                    .or_else(|| r.strip_prefix("https://"))
            }) {
                let (addr, name) = rest.split_once(" (listener `").expect("listener line");
                let name = name.trim_end_matches("`)");
                weir.listeners
                    .insert(name.to_string(), addr.parse().expect("listener address"));
            }
        }
        Ok(weir)
    }

    /// The admin API's address, from the start line `admin API on http://ADDR`.
    pub fn admin_addr(&self) -> SocketAddr {
        let log = self.log();
        let rest = log
            .split("admin API on http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no admin API line in:\n{log}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The address of the only (or first-named) listener.
    pub fn addr(&self) -> SocketAddr {
        if self.listeners.len() == 1 {
            *self.listeners.values().next().unwrap()
        } else {
            self.listeners["public"]
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A line of /proc/PID/status, in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        eventually(|| self.log().contains(needle))
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    // -- Live reload ---------------------------------------------------------------------

    /// The config file the process was started with, which reloads read again.
    pub fn config_path(&self) -> &Path {
        &self.config.path
    }

    /// Writes `config` over the config file, in place (same path, same file). The
    /// `[server]` section [`Weir::start`] added is added again when `config` has none, so
    /// the server settings stay what they were. Nothing is reloaded yet.
    pub fn rewrite_config(&self, config: &str) {
        let text = if config.contains("[server]") {
            config.to_string()
        } else {
            format!("{}{config}", self.server_prefix)
        };
        std::fs::write(&self.config.path, text).unwrap();
    }

    /// Runs `weir reload -c FILE` on the config file: (exit code, stdout, stderr). A command
    /// still running after twice the patience is killed and reported as code -1.
    pub fn reload_cli(&self) -> (i32, String, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["reload", "-c"])
            .arg(&self.config.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir reload");
        let drain = |mut r: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + 2 * PATIENCE;
        let code = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            thread::sleep(Duration::from_millis(5));
        };
        (code, out.join().unwrap(), err.join().unwrap())
    }

    /// `weir reload -c FILE`, which must succeed (exit 0, a line with `generation N`):
    /// the generation N it reports.
    pub fn reload(&self) -> u64 {
        let (code, out, err) = self.reload_cli();
        let said = format!("{out}{err}");
        let generation = generation_in(&said);
        assert!(
            code == 0 && generation.is_some(),
            "`weir reload` failed (exit {code}):\nstdout: {out}\nstderr: {err}\nlog:\n{}",
            self.log()
        );
        generation.unwrap()
    }

    /// `weir reload -c FILE`, which must succeed with generation `generation` serving.
    pub fn reload_to(&self, generation: u64) {
        let got = self.reload();
        assert_eq!(got, generation, "the generation `weir reload` reported");
    }

    /// Sends SIGHUP and waits for the log line `reload: generation N serving`.
    pub fn sighup_and_wait(&self, generation: u64) {
        self.signal(libc::SIGHUP);
        let line = format!("reload: generation {generation} serving");
        assert!(
            self.wait_for_log(&line),
            "no `{line}` after SIGHUP; log:\n{}",
            self.log()
        );
    }

    /// The address the log last announced for listener `name`, at start or on a reload.
    pub fn announced(&self, name: &str) -> Option<SocketAddr> {
        let tail = format!(" (listener `{name}`)");
        self.log()
            .lines()
            .filter_map(|l| l.split_once(" INFO listening on ").map(|(_, r)| r))
            .filter_map(|r| r.strip_suffix(&tail))
            .filter_map(|r| {
                r.strip_prefix("http://")
                    .or_else(|| r.strip_prefix("https://"))
            })
            .filter_map(|a| a.parse().ok())
            .next_back()
    }
}

/// The N of the first `generation N` in `text`.
pub fn generation_in(text: &str) -> Option<u64> {
    text.match_indices("generation ").find_map(|(i, w)| {
        let digits: String = text[i + w.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it could not remove its control socket: do it for it.
            let _ = std::fs::remove_file(weir::control::socket_path(&self.config.path));
        }
    }
}

/// A file removed when dropped.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    pub fn new(ext: &str, contents: &[u8]) -> TempFile {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weir-test-{}-{}.{ext}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the `weir` command with `args`: (exit code, stdout, stderr).
pub fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A target that accepts connections and closes them unanswered; counts them.
pub fn hanging_up_target() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, count)
}

/// Runs `weir check` on `config`, which must pass: its output.
pub fn check_passes(config: &str) -> String {
    let file = TempFile::new("toml", config.as_bytes());
    let (code, out, err) = weir(&["check", "-c", file.path.to_str().unwrap()]);
    assert_eq!(code, 0, "weir check refused it: {err}");
    out
}

/// Runs `weir check` on `config`, which must fail: its error output.
pub fn check_fails(config: &str) -> String {
    let file = TempFile::new("toml", config.as_bytes());
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "-c"])
        .arg(&file.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "weir check accepted it: {err}");
    err
}

/// A config with one listener proxying every path to `backend`, plus `extra`.
pub fn proxy_config(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = ["{backend}"]

[[route]]
path = "/{{*rest}}"
upstream = "backend"

{extra}
"#
    )
}

// ---------------------------------------------------------------------------------------
// A real backend that records what reaches it
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// The raw head as received.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Copies parsed headers out of the buffer they borrow.
fn owned_headers(headers: &[httparse::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The first value of header `name` (any case).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Default)]
pub struct BackendState {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
}

/// An HTTP/1.1 origin on 127.0.0.1 whose behaviour is chosen by path:
/// `/echo` (body back), `/headers` (raw head back), `/chunked` (chunked response),
/// `/close` (Connection: close), `/eof` (HTTP/1.0, body until close), `/slow/MS`,
/// `/big/N` (N bytes), `/status/CODE`, `/sink` (counts the body without keeping it),
/// `/early-hints` (103 first), `/idle-close` (closes 100 ms after answering, unannounced),
/// `/garbage`, `/both-framing`; anything else: 200 with the path.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl Backend {
    pub fn start() -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts on a given address (e.g. one that was dead until now).
    pub fn start_on(addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        let s = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                thread::spawn(move || serve_backend(stream, &s));
            }
        });
        Backend { addr, state }
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn serve_backend(stream: TcpStream, state: &BackendState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(head.as_bytes()),
            Ok(httparse::Status::Complete(_))
        ) {
            return;
        }
        let method = req.method.unwrap().to_string();
        let target = req.path.unwrap().to_string();
        let headers = owned_headers(req.headers);
        let get = |n: &str| find_header(&headers, n).map(str::to_string);
        let keep = target != "/sink-close";
        let (body, body_len) = if get("transfer-encoding").is_some() {
            let b = read_chunked(&mut reader);
            let n = b.len();
            (b, n)
        } else if let Some(cl) = get("content-length") {
            let n: usize = cl.trim().parse().unwrap();
            if target.starts_with("/sink") {
                let copied = std::io::copy(&mut (&mut reader).take(n as u64), &mut std::io::sink())
                    .unwrap_or(0) as usize;
                (Vec::new(), copied)
            } else {
                let mut b = vec![0; n];
                if reader.read_exact(&mut b).is_err() {
                    return;
                }
                (b, n)
            }
        } else {
            (Vec::new(), 0)
        };
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target: target.clone(),
            head: head.clone(),
            headers: headers.clone(),
            body_len,
            body: body.clone(),
        });

        let respond = |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())?;
            if method != "HEAD" {
                out.write_all(body)?;
            }
            Ok::<(), std::io::Error>(())
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        let result = if path == "/echo" {
            respond(&mut out, "200 OK", "", &body)
        } else if path == "/headers" {
            respond(&mut out, "200 OK", "", head.as_bytes())
        } else if path == "/chunked" {
            out.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: yes\r\n\r\n")
        } else if path == "/close" {
            let _ = respond(&mut out, "200 OK", "connection: close\r\n", b"closing");
            return;
        } else if path == "/eof" {
            let _ =
                out.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end");
            return;
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            respond(&mut out, "200 OK", "", b"slow")
        } else if let Some(n) = path.strip_prefix("/big/") {
            let n: usize = n.parse().unwrap();
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            respond(&mut out, "200 OK", "", &body)
        } else if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap();
            if code == 204 || code == 304 {
                out.write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
            } else {
                respond(&mut out, &format!("{code} X"), "", b"")
            }
        } else if path.starts_with("/sink") {
            respond(&mut out, "200 OK", "", body_len.to_string().as_bytes())
        } else if path == "/idle-close" {
            // Keeps the connection alive in words, then closes it while idle: the race
            // every pooled proxy must survive.
            let r = respond(&mut out, "200 OK", "", b"first");
            thread::sleep(Duration::from_millis(100));
            let _ = r;
            return;
        } else if path == "/garbage" {
            let _ = out.write_all(b"NOT HTTP AT ALL\r\n\r\n");
            return;
        } else if path == "/both-framing" {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            );
            return;
        } else if path == "/early-hints" {
            out.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
                .and_then(|_| respond(&mut out, "200 OK", "", b"after hints"))
        } else {
            respond(
                &mut out,
                "200 OK",
                "content-type: text/plain\r\n",
                path.as_bytes(),
            )
        };
        if result.is_err() || !keep {
            return;
        }
    }
}

pub fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return body;
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap_or(0);
        if size == 0 {
            // Trailers until the blank line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).unwrap_or(0) == 0 || t == "\r\n" {
                    return body;
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).unwrap();
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// An HTTP client that returns every status as a response, with keep-alive.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into()
}

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one response (any framing) from `reader`. `None` if the connection closed first.
pub fn read_response(reader: &mut impl BufRead, request_was_head: bool) -> Option<RawResponse> {
    let head = read_head(reader)?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(head.as_bytes()).ok()?;
    let status = res.code?;
    let headers = owned_headers(res.headers);
    let get = |n: &str| find_header(&headers, n).map(str::to_string);
    let body = if request_was_head || status < 200 || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some() {
        read_chunked(reader)
    } else if let Some(cl) = get("content-length") {
        let mut b = vec![0; cl.trim().parse().unwrap()];
        reader.read_exact(&mut b).ok()?;
        b
    } else {
        let mut b = Vec::new();
        let _ = reader.read_to_end(&mut b);
        b
    };
    Some(RawResponse {
        status,
        head,
        headers,
        body,
    })
}

/// Sends `GET path` with `extra` header lines (each ending in CRLF) on an open
/// keep-alive connection and reads the response.
pub fn get_on(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
    extra: &str,
) -> RawResponse {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .unwrap();
    read_response(reader, false).expect("a response")
}

/// Like [`get_on`], but a write error or a connection closed before a whole response is
/// an Err, not a panic (for load that counts its failures).
pub fn try_get_on(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
    extra: &str,
) -> Result<RawResponse, String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .map_err(|e| format!("GET {path}: write: {e}"))?;
    read_response(reader, false).ok_or_else(|| format!("GET {path}: closed without a response"))
}

/// `GET path` on a new connection (`Connection: close`); Err for a refused connection,
/// a write error or no whole response.
pub fn try_get(addr: SocketAddr, path: &str, extra: &str) -> Result<RawResponse, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    try_get_on(
        &mut s,
        &mut reader,
        path,
        &format!("Connection: close\r\n{extra}"),
    )
}

/// True if a connection to `addr` is refused (nothing listens there).
pub fn refuses(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Sends raw bytes on a new connection and reads one response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    read_response(&mut BufReader::new(s), false)
}

/// True if the server closes the connection (EOF, or reset) within the patience window.
pub fn closes(reader: &mut impl Read) -> bool {
    let mut b = [0u8; 1];
    matches!(reader.read(&mut b), Ok(0) | Err(_))
}

/// Polls `cond` until true or the patience runs out.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A free port with nothing listening on it (bound, then released).
pub fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
