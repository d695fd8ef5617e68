//! Live reload (issue #11): `SIGHUP` or `weir reload -c FILE` puts the config file's new
//! contents in service without failing a request. Each kind of change takes effect; the
//! state that should survive does (buckets, quotas, cache entries, target health, pooled
//! upstream connections, TLS sessions); a broken file changes nothing and says why; and
//! memory stays flat over many reloads.
//!
//! Every listener here has a fixed port (a free one the test picks), so the same text
//! means the same listener in every generation. Where a test must know that the reload
//! has reached the worker serving one connection, its configs carry a `/generation` mock
//! route answering the generation they are meant to become.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, HandshakeKind};

use crate::support::*;

// ---------------------------------------------------------------------------------------
// Config pieces and clients
// ---------------------------------------------------------------------------------------

fn listener(name: &str, addr: SocketAddr) -> String {
    format!("[[listener]]\nname = \"{name}\"\naddress = \"{addr}\"\n\n")
}

/// A mock route answering `body`, with `extra` lines (a throttle, an API key rule).
fn mock(name: &str, path: &str, body: &str, extra: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\npath = \"{path}\"\nmock = {{ body = \"{body}\" }}\n{extra}\n")
}

/// The `/generation` route: answers `generation`, the generation its config is meant
/// to become.
fn marker(generation: u64) -> String {
    mock("generation", "/generation", &generation.to_string(), "")
}

/// `GET path` on a new connection: the body, or a description of what went wrong (so
/// it can be polled without panicking).
fn body(addr: SocketAddr, path: &str) -> String {
    match try_get(addr, path, "") {
        Ok(r) => r.body_text(),
        Err(e) => format!("error: {e}"),
    }
}

fn status(addr: SocketAddr, path: &str, extra: &str) -> u16 {
    try_get(addr, path, extra).map_or(0, |r| r.status)
}

/// One keep-alive client connection.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = connect(addr);
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    fn get(&mut self, path: &str) -> RawResponse {
        get_on(&mut self.stream, &mut self.reader, path, "")
    }

    fn get_with(&mut self, path: &str, extra: &str) -> RawResponse {
        get_on(&mut self.stream, &mut self.reader, path, extra)
    }

    /// Waits until this connection's requests are served by generation `generation`
    /// (its `/generation` route says so).
    fn wait_generation(&mut self, generation: u64) {
        let want = generation.to_string();
        assert!(
            eventually(|| self.get("/generation").body_text() == want),
            "this connection never reached generation {generation}"
        );
    }
}

/// Waits until a new connection is served by generation `generation`.
fn wait_generation(addr: SocketAddr, generation: u64) {
    let want = generation.to_string();
    assert!(
        eventually(|| body(addr, "/generation") == want),
        "new connections never reached generation {generation}"
    );
}

/// Waits for the log's summary of the reload to `generation` and checks its route counts.
fn assert_routes_summary(weir: &Weir, generation: u64, added: u32, removed: u32, changed: u32) {
    let line = format!(
        "reload: generation {generation} serving (routes: {added} added, {removed} removed, {changed} changed;"
    );
    assert!(
        weir.wait_for_log(&line),
        "no `{line}` in the log:\n{}",
        weir.log()
    );
}

/// The 1-based line of the config file holding `needle`.
fn line_of(weir: &Weir, needle: &str) -> usize {
    let text = std::fs::read_to_string(weir.config_path()).unwrap();
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` is not in the config:\n{text}"))
}

/// `weir reload -c FILE` on a broken file: exit 1 and every error printed as
/// `file:line:column: message` (each of `errors` is a line and a piece of its message);
/// the log has the same errors after `ERROR reload:` and says generation `kept` stays.
fn assert_refused(weir: &Weir, kept: u64, errors: &[(usize, &str)]) {
    let (code, out, err) = weir.reload_cli();
    let said = format!("{out}{err}");
    assert_eq!(
        code,
        1,
        "`weir reload` of a broken file:\nstdout: {out}\nstderr: {err}\nlog:\n{}",
        weir.log()
    );
    let file = weir
        .config_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for (line, message) in errors {
        let at = format!("{file}:{line}:");
        assert!(
            said.lines().any(|l| l.contains(&at) && l.contains(message)),
            "`weir reload` did not print `{at}<column>: …{message}…`:\n{said}"
        );
        assert!(
            eventually(|| weir
                .log()
                .lines()
                .any(|l| l.contains("ERROR reload:") && l.contains(&at) && l.contains(message))),
            "the log has no `ERROR reload: {at}<column>: …{message}…`:\n{}",
            weir.log()
        );
    }
    let kept_line = format!("kept generation {kept}");
    assert!(
        weir.wait_for_log(&kept_line),
        "the log does not say `{kept_line}`:\n{}",
        weir.log()
    );
}

/// Sets a flag when dropped: load threads stop even when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// TLS: a CA made by the test and a rustls client that checks against it
// ---------------------------------------------------------------------------------------

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key as PEM files, and the certificate itself.
struct Cert {
    cert: TempFile,
    key: TempFile,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let (der, _, issuer) = crate::tls::new_ca("Weir reload test CA");
        Ca { der, issuer }
    }

    /// A new certificate for api.example.com: PEM texts and the certificate.
    fn issue_pem(&self) -> (String, String, CertificateDer<'static>) {
        crate::tls::issue(&self.issuer, &["api.example.com"])
    }

    fn issue(&self) -> Cert {
        let (cert, key, der) = self.issue_pem();
        Cert {
            cert: TempFile::new("pem", cert.as_bytes()),
            key: TempFile::new("pem", key.as_bytes()),
            der,
        }
    }

    /// A TLS 1.3 client trusting this CA, with its own (empty) session store.
    fn client(&self) -> Arc<ClientConfig> {
        crate::tls::client_trusting(&self.der, &[&rustls::version::TLS13])
    }
}

/// A TLS listener serving `cert` as its default certificate.
fn tls_listener(name: &str, addr: SocketAddr, cert: &Cert) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"{addr}\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\n",
        cert.cert.path.display(),
        cert.key.path.display()
    )
}

/// One HTTPS request to api.example.com on a new connection; Err if anything fails.
fn https_get(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    path: &str,
) -> Result<crate::tls::TlsExchange, String> {
    crate::tls::https_get(addr, config, "api.example.com", path)
}

/// The certificate a brand-new TLS client (no session to resume) is served.
fn served_certificate(ca: &Ca, addr: SocketAddr) -> Option<CertificateDer<'static>> {
    https_get(addr, &ca.client(), "/")
        .ok()
        .map(|x| x.certificate)
}

// ---------------------------------------------------------------------------------------
// 1. Reloads under load
// ---------------------------------------------------------------------------------------

/// 4 keep-alive connections and a stream of new connections ask `GET /v` without pause
/// while the config flips between bodies "one" and "two" 50 times (SIGHUP and
/// `weir reload` in turn). Not one request fails, each reload reaches new connections,
/// and every keep-alive connection ends on the last config.
#[test]
fn fifty_reloads_under_load_fail_no_request_and_each_takes_effect() {
    let addr = dead_port();
    let config = |body: &str| {
        format!(
            "[http]\nkeepalive_requests = 1000000\n\n{}{}",
            listener("public", addr),
            mock("v", "/v", body, "")
        )
    };
    let weir = Weir::start(&config("one"));
    assert_eq!(body(addr, "/v"), "one");

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let last_body = Arc::new(Mutex::new(String::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let judge = |r: &RawResponse| -> Result<(), String> {
        let text = r.body_text();
        if r.status == 200 && (text == "one" || text == "two") {
            Ok(())
        } else {
            Err(format!("{} {text:?}", r.status))
        }
    };

    let mut threads = Vec::new();
    for t in 0..4 {
        let (stop, last_body, failures, requests) = (
            stop.clone(),
            last_body.clone(),
            failures.clone(),
            requests.clone(),
        );
        threads.push(thread::spawn(move || {
            let mut conn = Conn::open(addr);
            let mut stopped_at: Option<Instant> = None;
            loop {
                if stopped_at.is_none() && stop.load(Ordering::SeqCst) {
                    stopped_at = Some(Instant::now());
                }
                let r = match try_get_on(&mut conn.stream, &mut conn.reader, "/v", "") {
                    Ok(r) => r,
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("keep-alive connection {t}: {e}"));
                        return;
                    }
                };
                requests.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = judge(&r) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("keep-alive connection {t}: {e}"));
                }
                if let Some(at) = stopped_at {
                    // Stopping: this same connection must reach the last config.
                    if r.body_text() == *last_body.lock().unwrap() {
                        return;
                    }
                    if at.elapsed() > PATIENCE {
                        failures.lock().unwrap().push(format!(
                            "keep-alive connection {t} never moved to the last config"
                        ));
                        return;
                    }
                }
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = Conn::open(addr);
                }
                thread::sleep(Duration::from_millis(1));
            }
        }));
    }
    {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match try_get(addr, "/v", "") {
                    Ok(r) => {
                        requests.fetch_add(1, Ordering::SeqCst);
                        if let Err(e) = judge(&r) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("new connection: {e}"));
                        }
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("new connection: {e}")),
                }
                thread::sleep(Duration::from_millis(1));
            }
        }));
    }

    let mut last = "one";
    for i in 1..=50u64 {
        let next = if i % 2 == 1 { "two" } else { "one" };
        weir.rewrite_config(&config(next));
        if i % 2 == 1 {
            weir.sighup_and_wait(i + 1);
        } else {
            weir.reload_to(i + 1);
        }
        // New requests see the new body (four in a row, so whichever worker).
        assert!(
            eventually(|| (0..4).all(|_| body(addr, "/v") == next)),
            "after reload {i} new connections still got {last:?}, not {next:?}; log:\n{}",
            weir.log()
        );
        last = next;
        let failed = failures.lock().unwrap().clone();
        assert!(
            failed.is_empty(),
            "failed requests by reload {i}: {:?}",
            &failed[..failed.len().min(10)]
        );
    }
    *last_body.lock().unwrap() = last.to_string();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed requests of {}, the first: {:?}",
        failed.len(),
        requests.load(Ordering::SeqCst),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(
        weir.log_count("ERROR reload"),
        0,
        "a good file was refused:\n{}",
        weir.log()
    );
}

/// A request being answered while the reload lands gets its answer from the old config;
/// the next request on the same connection is served by the new one.
#[test]
fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let backend = Backend::start();
    let addr = dead_port();
    let config = |route: &str| {
        format!(
            "{}[upstream.backend]\ntargets = [\"{}\"]\n\n{route}",
            listener("public", addr),
            backend.addr
        )
    };
    let weir = Weir::start(&config(
        "[[route]]\nname = \"slow\"\npath = \"/slow/{ms}\"\nupstream = \"backend\"\n",
    ));
    let mut conn = Conn::open(addr);
    conn.stream
        .write_all(b"GET /slow/4000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        eventually(|| backend.requests() == 1),
        "the slow request never reached the backend"
    );

    weir.rewrite_config(&config(&mock("slow", "/slow/{ms}", "new", "")));
    weir.reload_to(2);
    assert!(
        eventually(|| body(addr, "/slow/1") == "new"),
        "new connections never got the new route"
    );

    let r = read_response(&mut conn.reader, false).expect("the request in flight was answered");
    assert_eq!((r.status, r.body_text().as_str()), (200, "slow"));
    assert_eq!(
        conn.get("/slow/1").body_text(),
        "new",
        "the connection's next request"
    );
    assert_eq!(backend.requests(), 1);
}

// ---------------------------------------------------------------------------------------
// 2. Each kind of change takes effect
// ---------------------------------------------------------------------------------------

#[test]
fn a_route_added_by_a_reload_answers() {
    let addr = dead_port();
    let a = mock("a", "/a", "a", "");
    let weir = Weir::start(&format!("{}{a}", listener("public", addr)));
    assert_eq!(status(addr, "/b", ""), 404);

    let b = mock("b", "/b", "b", "");
    weir.rewrite_config(&format!("{}{a}{b}", listener("public", addr)));
    weir.reload_to(2);
    assert!(
        eventually(|| body(addr, "/b") == "b"),
        "the new route never answered"
    );
    assert_eq!(body(addr, "/a"), "a");
    assert_routes_summary(&weir, 2, 1, 0, 0);
}

#[test]
fn a_route_removed_by_a_reload_is_404() {
    let addr = dead_port();
    let a = mock("a", "/a", "a", "");
    let b = mock("b", "/b", "b", "");
    let weir = Weir::start(&format!("{}{a}{b}", listener("public", addr)));
    assert_eq!(body(addr, "/b"), "b");

    weir.rewrite_config(&format!("{}{a}", listener("public", addr)));
    weir.reload_to(2);
    assert!(
        eventually(|| status(addr, "/b", "") == 404),
        "the removed route still answers"
    );
    assert_eq!(body(addr, "/a"), "a");
    assert_routes_summary(&weir, 2, 0, 1, 0);
}

#[test]
fn a_route_changed_by_a_reload_answers_the_new_way() {
    let addr = dead_port();
    let weir = Weir::start(&format!(
        "{}{}",
        listener("public", addr),
        mock("a", "/a", "old", "")
    ));
    assert_eq!(body(addr, "/a"), "old");

    weir.rewrite_config(&format!(
        "{}{}",
        listener("public", addr),
        mock("a", "/a", "new", "")
    ));
    weir.reload_to(2);
    assert!(
        eventually(|| body(addr, "/a") == "new"),
        "the route still answers the old way"
    );
    assert_routes_summary(&weir, 2, 0, 0, 1);
}

#[test]
fn new_targets_of_an_upstream_get_the_requests_after_a_reload() {
    let (old, new) = (Backend::start(), Backend::start());
    let addr = dead_port();
    let config = |target: SocketAddr| {
        format!(
            "{}[upstream.backend]\ntargets = [\"{target}\"]\n\n[[route]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"backend\"\n",
            listener("public", addr)
        )
    };
    let weir = Weir::start(&config(old.addr));
    assert_eq!(body(addr, "/x"), "/x");
    assert_eq!(old.requests(), 1);

    weir.rewrite_config(&config(new.addr));
    weir.reload_to(2);
    assert!(
        eventually(|| body(addr, "/x") == "/x" && new.requests() > 0),
        "no request reached the new target"
    );
    let old_count = old.requests();
    for _ in 0..6 {
        assert_eq!(body(addr, "/y"), "/y");
    }
    assert_eq!(
        old.requests(),
        old_count,
        "the old target still gets requests"
    );
    assert!(new.requests() >= 7);
}

const KEY_A: &str = "reloadkeyalpha0000000001";
const KEY_B: &str = "reloadkeybravo0000000002";

/// A listener, the given `(id, value)` keys and a route `/k` that requires one.
fn keys_config(addr: SocketAddr, keys: &[(&str, &str)]) -> String {
    let mut text = listener("public", addr);
    for (id, value) in keys {
        text.push_str(&format!(
            "[[api_key]]\nid = \"{id}\"\nvalue = \"{value}\"\n\n"
        ));
    }
    text.push_str(&mock("k", "/k", "k", "api_key_required = true"));
    text
}

fn with_key(key: &str) -> String {
    format!("x-api-key: {key}\r\n")
}

#[test]
fn an_api_key_added_by_a_reload_is_accepted() {
    let addr = dead_port();
    let weir = Weir::start(&keys_config(addr, &[("alpha", KEY_A)]));
    assert_eq!(status(addr, "/k", &with_key(KEY_A)), 200);
    assert_eq!(status(addr, "/k", &with_key(KEY_B)), 403);

    weir.rewrite_config(&keys_config(addr, &[("alpha", KEY_A), ("bravo", KEY_B)]));
    weir.reload_to(2);
    assert!(
        eventually(|| status(addr, "/k", &with_key(KEY_B)) == 200),
        "the new key is still refused"
    );
    assert_eq!(status(addr, "/k", &with_key(KEY_A)), 200);
}

#[test]
fn an_api_key_revoked_by_a_reload_is_refused() {
    let addr = dead_port();
    let weir = Weir::start(&keys_config(addr, &[("alpha", KEY_A), ("bravo", KEY_B)]));
    assert_eq!(status(addr, "/k", &with_key(KEY_B)), 200);

    weir.rewrite_config(&keys_config(addr, &[("alpha", KEY_A)]));
    weir.reload_to(2);
    assert!(
        eventually(|| status(addr, "/k", &with_key(KEY_B)) == 403),
        "the revoked key is still accepted"
    );
    for _ in 0..4 {
        assert_eq!(status(addr, "/k", &with_key(KEY_B)), 403);
    }
    assert_eq!(status(addr, "/k", &with_key(KEY_A)), 200);
}

#[test]
fn a_throttle_limit_changed_by_a_reload_applies() {
    let addr = dead_port();
    let config = |generation: u64, throttle: &str| {
        format!(
            "{}{}{}",
            listener("public", addr),
            marker(generation),
            mock("t", "/t", "t", &format!("throttle = {throttle}"))
        )
    };
    let weir = Weir::start(&config(
        1,
        "{ rate = 1000, burst = 1000, name = \"loose\" }",
    ));
    let mut conn = Conn::open(addr);
    for _ in 0..5 {
        assert_eq!(conn.get("/t").status, 200);
    }

    weir.rewrite_config(&config(2, "{ rate = 0.01, burst = 2, name = \"tight\" }"));
    weir.reload_to(2);
    conn.wait_generation(2);
    let statuses: Vec<u16> = (0..4).map(|_| conn.get("/t").status).collect();
    assert_eq!(statuses, [200, 200, 429, 429], "the new limit is burst 2");
    let refused = conn.get("/t");
    assert_eq!(refused.status, 429);
    let policy = refused.header("ratelimit-policy").unwrap_or("");
    assert!(
        policy.contains("\"tight\"") && policy.contains("q=2"),
        "RateLimit-Policy: {policy}"
    );
}

#[test]
fn a_listener_added_by_a_reload_is_announced_and_answers() {
    let (public, extra) = (dead_port(), dead_port());
    let route = mock("v", "/v", "v", "");
    let weir = Weir::start(&format!("{}{route}", listener("public", public)));
    assert!(refuses(extra), "something already listens on {extra}");

    weir.rewrite_config(&format!(
        "{}{}{route}",
        listener("public", public),
        listener("extra", extra)
    ));
    weir.reload_to(2);
    let line = format!("INFO listening on http://{extra} (listener `extra`)");
    assert!(
        weir.wait_for_log(&line),
        "no `{line}` in the log:\n{}",
        weir.log()
    );
    assert_eq!(weir.announced("extra"), Some(extra));
    assert!(
        eventually(|| body(extra, "/v") == "v"),
        "the new listener does not answer"
    );
    assert_eq!(body(public, "/v"), "v");
}

#[test]
fn a_listener_removed_by_a_reload_refuses_new_connections() {
    let (public, extra) = (dead_port(), dead_port());
    let route = mock("v", "/v", "v", "");
    let weir = Weir::start(&format!(
        "{}{}{route}",
        listener("public", public),
        listener("extra", extra)
    ));
    assert_eq!(body(extra, "/v"), "v");

    weir.rewrite_config(&format!("{}{route}", listener("public", public)));
    weir.reload_to(2);
    assert!(
        eventually(|| refuses(extra)),
        "the removed listener still accepts connections"
    );
    assert_eq!(body(public, "/v"), "v");
}

/// Both ways a certificate is replaced: the config names new files, or the files it
/// names get new contents (a renewal, then a reload of the unchanged config).
#[test]
fn a_certificate_replaced_by_a_reload_is_served_to_new_handshakes() {
    let ca = Ca::new();
    let (first, second) = (ca.issue(), ca.issue());
    let addr = dead_port();
    let config = |cert: &Cert| {
        format!(
            "{}{}",
            tls_listener("secure", addr, cert),
            mock("v", "/v", "v", "")
        )
    };
    let weir = Weir::start(&config(&first));
    assert_eq!(served_certificate(&ca, addr), Some(first.der.clone()));

    weir.rewrite_config(&config(&second));
    weir.reload_to(2);
    assert!(
        eventually(|| served_certificate(&ca, addr) == Some(second.der.clone())),
        "new handshakes never got the certificate the config now names"
    );

    let (cert, key, renewed) = ca.issue_pem();
    std::fs::write(&second.cert.path, cert).unwrap();
    std::fs::write(&second.key.path, key).unwrap();
    weir.rewrite_config(&config(&second));
    weir.reload_to(3);
    assert!(
        eventually(|| served_certificate(&ca, addr) == Some(renewed.clone())),
        "new handshakes never got the renewed certificate file"
    );
    let x = https_get(addr, &ca.client(), "/v").unwrap();
    assert_eq!(x.response.body_text(), "v");
}

// ---------------------------------------------------------------------------------------
// 3. State survives a reload
// ---------------------------------------------------------------------------------------

#[test]
fn a_drained_bucket_stays_drained_across_a_reload() {
    let addr = dead_port();
    let config = |generation: u64| {
        format!(
            "{}{}{}",
            listener("public", addr),
            marker(generation),
            mock(
                "limited",
                "/limited",
                "ok",
                "throttle = { rate = 0.01, burst = 2 }"
            )
        )
    };
    let weir = Weir::start(&config(1));
    let mut conn = Conn::open(addr);
    let statuses: Vec<u16> = (0..3).map(|_| conn.get("/limited").status).collect();
    assert_eq!(statuses, [200, 200, 429]);

    weir.rewrite_config(&config(2));
    weir.reload_to(2);
    conn.wait_generation(2);
    assert_eq!(
        conn.get("/limited").status,
        429,
        "the reload gave the bucket a fresh burst"
    );
    assert_eq!(status(addr, "/limited", ""), 429, "on a new connection");
}

#[test]
fn a_quota_count_continues_across_a_reload() {
    struct Store(std::path::PathBuf);
    impl Drop for Store {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let store =
        Store(std::env::temp_dir().join(format!("weir-reload-quota-{}.redb", std::process::id())));
    let addr = dead_port();
    let config = |generation: u64| {
        format!(
            "[quotas]\nstore = \"{}\"\n\n{}[[api_key]]\nid = \"alpha\"\nvalue = \"{KEY_A}\"\n\n\
             [[usage_plan]]\nname = \"basic\"\nkeys = [\"alpha\"]\nroutes = [\"q\"]\n\
             quota = {{ limit = 3, period = \"DAY\" }}\n\n{}{}",
            store.0.display(),
            listener("public", addr),
            marker(generation),
            mock("q", "/q", "q", "api_key_required = true")
        )
    };
    let weir = Weir::start(&config(1));
    let mut conn = Conn::open(addr);
    let key = with_key(KEY_A);
    for _ in 0..2 {
        assert_eq!(conn.get_with("/q", &key).status, 200);
    }

    weir.rewrite_config(&config(2));
    weir.reload_to(2);
    conn.wait_generation(2);
    assert_eq!(conn.get_with("/q", &key).status, 200, "the third of 3");
    let r = conn.get_with("/q", &key);
    assert_eq!(r.status, 429, "the reload started the count afresh");
    assert_eq!(r.body_text(), r#"{"message":"Limit Exceeded"}"#);
}

#[test]
fn a_cached_entry_is_still_a_hit_after_a_reload() {
    let backend = Backend::start();
    let addr = dead_port();
    let config = |generation: u64| {
        format!(
            "{}[upstream.backend]\ntargets = [\"{}\"]\n\n{}\
             [[route]]\nname = \"cached\"\npath = \"/c/{{*rest}}\"\nupstream = \"backend\"\ncache = {{ ttl = \"300s\" }}\n",
            listener("public", addr),
            backend.addr,
            marker(generation)
        )
    };
    let weir = Weir::start(&config(1));
    // One connection: one worker, one cache shard.
    let mut conn = Conn::open(addr);
    assert_eq!(conn.get("/c/1").header("x-cache"), Some("MISS"));
    assert_eq!(conn.get("/c/1").header("x-cache"), Some("HIT"));

    weir.rewrite_config(&config(2));
    weir.reload_to(2);
    conn.wait_generation(2);
    let r = conn.get("/c/1");
    assert_eq!(
        r.header("x-cache"),
        Some("HIT"),
        "the reload emptied the cache"
    );
    assert_eq!(r.body_text(), "/c/1");
    assert_eq!(backend.requests(), 1);
}

/// One worker, so the count of connections to the failing target is exact. The target
/// stays left out across a reload that leaves its group alone, and across one that adds
/// a target to its group.
#[test]
fn a_target_left_out_stays_left_out_across_a_reload() {
    let (bad, bad_connections) = hanging_up_target();
    let (good, added) = (Backend::start(), Backend::start());
    let addr = dead_port();
    let config = |generation: u64, targets: &str| {
        format!(
            "[server]\nworkers = 1\n\n{}[upstream.backend]\ntargets = [{targets}]\nmax_fails = 1\nfail_timeout = \"300s\"\n\n{}\
             [[route]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"backend\"\n",
            listener("public", addr),
            marker(generation)
        )
    };
    let two = format!("\"{bad}\", \"{}\"", good.addr);
    let weir = Weir::start(&config(1, &two));
    for _ in 0..4 {
        assert_eq!(body(addr, "/x"), "/x");
    }
    assert_eq!(
        bad_connections.load(Ordering::SeqCst),
        1,
        "tried once, then left out"
    );

    weir.rewrite_config(&config(2, &two));
    weir.reload_to(2);
    wait_generation(addr, 2);
    for _ in 0..6 {
        assert_eq!(body(addr, "/x"), "/x");
    }
    assert_eq!(
        bad_connections.load(Ordering::SeqCst),
        1,
        "after a reload that left the group alone, the failed target was tried again"
    );

    weir.rewrite_config(&config(3, &format!("{two}, \"{}\"", added.addr)));
    weir.reload_to(3);
    wait_generation(addr, 3);
    for _ in 0..8 {
        assert_eq!(body(addr, "/x"), "/x");
    }
    assert!(added.requests() > 0, "the added target got no request");
    assert_eq!(
        bad_connections.load(Ordering::SeqCst),
        1,
        "after a reload that added a target, the failed target was tried again"
    );
}

/// One worker, so one pooled connection: the reload does not replace it.
#[test]
fn warm_upstream_connections_are_reused_after_a_reload() {
    let backend = Backend::start();
    let addr = dead_port();
    let config = |generation: u64| {
        format!(
            "[server]\nworkers = 1\n\n{}[upstream.backend]\ntargets = [\"{}\"]\n\n{}\
             [[route]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"backend\"\n",
            listener("public", addr),
            backend.addr,
            marker(generation)
        )
    };
    let weir = Weir::start(&config(1));
    for _ in 0..5 {
        assert_eq!(body(addr, "/w"), "/w");
    }
    assert_eq!(backend.connections(), 1);

    weir.rewrite_config(&config(2));
    weir.reload_to(2);
    wait_generation(addr, 2);
    for _ in 0..5 {
        assert_eq!(body(addr, "/w"), "/w");
    }
    assert_eq!(backend.requests(), 10);
    assert_eq!(
        backend.connections(),
        1,
        "the reload threw away the pooled connection"
    );
}

#[test]
fn a_tls_session_resumes_across_a_reload() {
    let ca = Ca::new();
    let cert = ca.issue();
    let addr = dead_port();
    let config = |generation: u64| {
        format!(
            "{}{}{}",
            tls_listener("secure", addr, &cert),
            marker(generation),
            mock("v", "/v", "v", "")
        )
    };
    let weir = Weir::start(&config(1));
    let client = ca.client();
    let first = https_get(addr, &client, "/v").unwrap();
    assert_eq!(first.kind, Some(HandshakeKind::Full));

    weir.rewrite_config(&config(2));
    weir.reload_to(2);
    // A client of its own, so the session store of `client` is left as it was.
    let other = ca.client();
    assert!(
        eventually(
            || https_get(addr, &other, "/generation").is_ok_and(|x| x.response.body_text() == "2")
        ),
        "new connections never reached generation 2"
    );
    let again = https_get(addr, &client, "/v").unwrap();
    assert_eq!(
        again.kind,
        Some(HandshakeKind::Resumed),
        "the session did not resume"
    );
    assert_eq!(again.response.body_text(), "v");
}

// ---------------------------------------------------------------------------------------
// 4. A broken file changes nothing and says why
// ---------------------------------------------------------------------------------------

#[test]
fn a_syntax_error_keeps_the_old_config_serving() {
    let addr = dead_port();
    let config = |body: &str, tail: &str| {
        format!(
            "{}{}{tail}",
            listener("public", addr),
            mock("v", "/v", body, "")
        )
    };
    let weir = Weir::start(&config("one", ""));

    weir.rewrite_config(&config("two", "this is not toml\n"));
    let line = line_of(&weir, "this is not toml");
    assert_refused(&weir, 1, &[(line, "expected `=`")]);
    assert_eq!(body(addr, "/v"), "one");

    // SIGHUP reads the same file and refuses it the same way.
    weir.signal(libc::SIGHUP);
    assert!(
        eventually(|| weir.log_count("kept generation 1") >= 2),
        "SIGHUP with a broken file:\n{}",
        weir.log()
    );
    for _ in 0..4 {
        assert_eq!(body(addr, "/v"), "one");
    }

    // Once the file is mended, it reloads.
    weir.rewrite_config(&config("two", ""));
    weir.reload();
    assert!(eventually(|| body(addr, "/v") == "two"));
}

#[test]
fn an_unknown_upstream_keeps_the_old_config_serving() {
    let addr = dead_port();
    let weir = Weir::start(&format!(
        "{}{}",
        listener("public", addr),
        mock("v", "/v", "one", "")
    ));

    weir.rewrite_config(&format!(
        "{}{}[[route]]\nname = \"w\"\npath = \"/w\"\nupstream = \"nowhere\"\n",
        listener("public", addr),
        mock("v", "/v", "two", "")
    ));
    let line = line_of(&weir, "upstream = \"nowhere\"");
    assert_refused(&weir, 1, &[(line, "[upstream.nowhere]")]);
    for _ in 0..4 {
        assert_eq!(body(addr, "/v"), "one");
    }
    assert_eq!(status(addr, "/w", ""), 404);
}

#[test]
fn a_missing_certificate_file_keeps_the_old_certificate_and_config() {
    let ca = Ca::new();
    let cert = ca.issue();
    let addr = dead_port();
    let weir = Weir::start(&format!(
        "{}{}",
        tls_listener("secure", addr, &cert),
        mock("v", "/v", "one", "")
    ));
    assert_eq!(served_certificate(&ca, addr), Some(cert.der.clone()));

    let missing = "/nonexistent/weir-reload-test/cert.pem";
    weir.rewrite_config(&format!(
        "[[listener]]\nname = \"secure\"\naddress = \"{addr}\"\ntls = {{ certificates = [{{ cert = \"{missing}\", key = \"{}\" }}] }}\n\n{}",
        cert.key.path.display(),
        mock("v", "/v", "two", "")
    ));
    let line = line_of(&weir, missing);
    assert_refused(&weir, 1, &[(line, &format!("cannot read {missing}"))]);
    for _ in 0..4 {
        let x = https_get(addr, &ca.client(), "/v").unwrap();
        assert_eq!(x.certificate, cert.der, "the certificate changed");
        assert_eq!(x.response.body_text(), "one", "the routes changed");
    }
}

/// The new listener's port is held by another socket (bound without SO_REUSEPORT):
/// nothing of the new file is used, and the error names the address or the listener.
/// (A bind error has no place in the file, so no `file:line:column` is asked for.)
#[test]
fn a_new_listener_on_a_port_in_use_keeps_the_old_config_serving() {
    let addr = dead_port();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let weir = Weir::start(&format!(
        "{}{}",
        listener("public", addr),
        mock("v", "/v", "one", "")
    ));

    weir.rewrite_config(&format!(
        "{}{}{}",
        listener("public", addr),
        listener("extra", taken),
        mock("v", "/v", "two", "")
    ));
    let (code, out, err) = weir.reload_cli();
    let said = format!("{out}{err}");
    let names_it = |text: &str| text.contains(&taken.to_string()) || text.contains("`extra`");
    assert_eq!(
        code,
        1,
        "`weir reload` with a port in use:\nstdout: {out}\nstderr: {err}\nlog:\n{}",
        weir.log()
    );
    assert!(
        names_it(&said),
        "the error names neither {taken} nor `extra`:\n{said}"
    );
    assert!(
        eventually(|| weir
            .log()
            .lines()
            .any(|l| l.contains("ERROR reload:") && names_it(l))),
        "no `ERROR reload:` line about {taken}:\n{}",
        weir.log()
    );
    assert!(weir.wait_for_log("kept generation 1"), "{}", weir.log());
    assert_eq!(weir.announced("extra"), None);
    for _ in 0..4 {
        assert_eq!(body(addr, "/v"), "one");
    }

    // Once the port is free, the same file reloads: the failed try left nothing behind.
    drop(holder);
    weir.reload();
    assert!(
        eventually(|| body(taken, "/v") == "two"),
        "the new listener does not answer once its port is free"
    );
    assert_eq!(weir.announced("extra"), Some(taken));
}

// ---------------------------------------------------------------------------------------
// 5. Memory
// ---------------------------------------------------------------------------------------

/// 1,000 reloads (after 50 to warm up) leave the resident set where it was, give or take
/// 8 MiB: nothing of an old generation is kept.
#[test]
fn memory_stays_flat_across_a_thousand_reloads() {
    let addr = dead_port();
    let config = |generation: u64| {
        let body = if generation % 2 == 0 { "even" } else { "odd" };
        format!("{}{}", listener("public", addr), mock("v", "/v", body, ""))
    };
    let weir = Weir::start(&config(1));
    let reload = |generation: u64| {
        weir.rewrite_config(&config(generation));
        weir.reload_to(generation);
    };
    for generation in 2..=51 {
        reload(generation);
    }
    assert!(eventually(|| body(addr, "/v") == "odd"));
    let before = weir.memory_kib("VmRSS");
    for generation in 52..=1051 {
        reload(generation);
        if generation % 100 == 0 {
            assert!(
                eventually(|| body(addr, "/v") == "even"),
                "generation {generation} does not serve"
            );
        }
    }
    assert!(eventually(|| body(addr, "/v") == "odd"));
    let after = weir.memory_kib("VmRSS");
    assert!(
        after < before + 8 * 1024,
        "VmRSS grew from {before} KiB to {after} KiB over 1,000 reloads"
    );
}
