//! The error log: what goes wrong (an upstream refusing connections or failing TLS
//! verification, a target left out and back, a bad or late response, a client refused by
//! mutual TLS) is one line on stderr naming what failed and why, and a flood of the same
//! failure is a line a second whose next line counts the rest.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::support::*;
use crate::tls::{client_trusting, issue, new_ca};

fn config(targets: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream.backend]
targets = [{targets}]
{extra}

[[route]]
path = "/{{*rest}}"
upstream = "backend"
"#
    )
}

fn get(weir: &Weir, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw(weir.addr(), request.as_bytes())
        .expect("a response")
        .status
}

/// The lines of `log` with `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// N of a line's `(and N more like this in the last X s)`, 0 without one.
fn more_like_this(line: &str) -> u64 {
    line.split_once(" (and ")
        .and_then(|(_, rest)| rest.split_once(" more like this in the last "))
        .map(|(n, _)| n.parse().expect("a count"))
        .unwrap_or(0)
}

#[test]
fn a_refused_connect_is_a_warning_naming_the_group_and_the_target() {
    let dead = dead_port();
    let weir = Weir::start(&config(&format!("\"{dead}\""), "max_fails = 0"));
    assert_eq!(get(&weir, "/"), 502);
    let line = format!("WARN upstream `backend` target {dead}: connect refused (");
    assert!(weir.wait_for_log(&line), "no `{line}` in:\n{}", weir.log());
    let logged = &lines_with(&weir.log(), &line)[0];
    // An RFC 3339 UTC time with milliseconds first, and the OS's own words in the end.
    let time = logged.split(' ').next().unwrap();
    assert_eq!(time.len(), "2026-12-03T18:37:19.123Z".len(), "{logged}");
    assert!(
        time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{logged}"
    );
    assert!(logged.contains("os error"), "{logged}");
}

#[test]
fn a_flood_of_refused_connects_is_a_line_a_second_that_counts_the_rest() {
    let dead = dead_port();
    let weir = Weir::start(&config(&format!("\"{dead}\""), "max_fails = 0"));
    let needle = format!("upstream `backend` target {dead}: connect refused");
    let started = Instant::now();
    // One connect per request: one target, nothing to retry on. (A 502 closes the
    // client's connection: one connection per request.)
    for _ in 0..200 {
        assert_eq!(get(&weir, "/"), 502);
    }
    let took = started.elapsed();
    assert!(weir.wait_for_log(&needle), "no `{needle}`:\n{}", weir.log());
    let during = lines_with(&weir.log(), &needle).len();
    // At most one line per second the flood lasted (and the one it started with).
    assert!(
        during as u64 <= took.as_secs() + 2 && during < 20,
        "{during} lines for 200 failures in {took:?}:\n{}",
        weir.log()
    );
    // A failure more than a second after the last line gets through, with the count of
    // those left out since.
    sleep(Duration::from_millis(1100));
    assert_eq!(get(&weir, "/"), 502);
    let counted = eventually(|| lines_with(&weir.log(), &needle).len() > during);
    assert!(counted, "no line after the pause:\n{}", weir.log());
    let lines = lines_with(&weir.log(), &needle);
    let last = lines.last().unwrap();
    assert!(
        last.contains(" more like this in the last "),
        "the count of the rest is missing: {last}"
    );
    // Every failure is a line or counted in one: 201 in all.
    let total: u64 = lines.iter().map(|l| 1 + more_like_this(l)).sum();
    assert_eq!(total, 201, "{}", lines.join("\n"));
}

#[test]
fn a_target_marked_down_and_back_up_is_one_line_each_way() {
    let dead = dead_port();
    let backend = Backend::start();
    let weir = Weir::start(&config(
        &format!("\"{dead}\", \"{}\"", backend.addr),
        "max_fails = 2\nfail_timeout = \"1s\"",
    ));
    let down =
        format!("WARN upstream `backend` target {dead}: marked down for 1s after 2 failures");
    // Round-robin: every other request tries the dead target first, then the other one.
    let marked = eventually(|| {
        assert_eq!(get(&weir, "/x"), 200);
        weir.log().contains(&down)
    });
    assert!(marked, "no `{down}` in:\n{}", weir.log());
    // Back on its port: tried again once its second is over, it answers.
    let revived = Backend::start_on(dead);
    let up = format!("INFO upstream `backend` target {dead}: back up");
    let back = eventually(|| {
        assert_eq!(get(&weir, "/x"), 200);
        sleep(Duration::from_millis(50));
        weir.log().contains(&up)
    });
    assert!(back, "no `{up}` in:\n{}", weir.log());
    assert!(revived.requests() > 0);
    // The transitions only: one line each, not one per failure or success.
    assert_eq!(weir.log_count("marked down"), 1, "{}", weir.log());
    assert_eq!(weir.log_count("back up"), 1, "{}", weir.log());
}

#[test]
fn an_invalid_response_head_and_a_response_timeout_are_warnings() {
    let backend = Backend::start();
    let weir = Weir::start(&config(
        &format!("\"{}\"", backend.addr),
        "response_timeout = \"300ms\"",
    ));
    let target = format!("WARN upstream `backend` target {}", backend.addr);
    assert_eq!(get(&weir, "/garbage"), 502);
    let bad = format!("{target}: invalid response head");
    assert!(weir.wait_for_log(&bad), "no `{bad}` in:\n{}", weir.log());
    assert_eq!(get(&weir, "/slow/2000"), 504);
    let late = format!("{target}: response timed out after 300ms");
    assert!(weir.wait_for_log(&late), "no `{late}` in:\n{}", weir.log());
}

/// An HTTPS origin with a self-signed certificate for `backend.internal`: it completes
/// handshakes with whoever trusts it, which Weir does not.
fn self_signed_origin() -> SocketAddr {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["backend.internal".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { break };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(PATIENCE));
                if let Ok(mut conn) = rustls::ServerConnection::new(config) {
                    while conn.is_handshaking() && conn.complete_io(&mut tcp).is_ok() {}
                }
            });
        }
    });
    addr
}

#[test]
fn an_upstream_certificate_weir_does_not_trust_is_an_error_with_rustls_reason() {
    let origin = self_signed_origin();
    let weir = Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.secure]\ntargets = [\"{origin}\"]\n\
         tls = {{ server_name = \"backend.internal\" }}\n\
         [[route]]\npath = \"/{{*rest}}\"\nupstream = \"secure\"\n"
    ));
    assert_eq!(get(&weir, "/"), 502);
    let line = format!(
        "ERROR upstream `secure` target {origin}: TLS handshake failed: \
         invalid peer certificate: UnknownIssuer"
    );
    assert!(weir.wait_for_log(&line), "no `{line}` in:\n{}", weir.log());
}

/// A TLS listener named `secure` with a certificate for `api.example.com` and `extra` in
/// its `tls` table: Weir, the CA that issued the certificate, and the files to keep.
fn tls_listener(extra: &str) -> (Weir, CertificateDer<'static>, Vec<TempFile>) {
    let (server_ca, _, issuer) = new_ca("Weir test CA");
    let (cert, key, _) = issue(&issuer, &["api.example.com"]);
    let (cert, key) = (
        TempFile::new("pem", cert.as_bytes()),
        TempFile::new("pem", key.as_bytes()),
    );
    let weir = Weir::start(&format!(
        "[[listener]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}]{extra} }}\n\
         [[route]]\npath = \"/\"\nmock = {{}}\n",
        cert.path.display(),
        key.path.display()
    ));
    (weir, server_ca, vec![cert, key])
}

/// Tries a handshake and one request with `config`; Err if either fails.
fn https_try(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<RawResponse, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("api.example.com").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    read_response(&mut BufReader::new(tls), false).ok_or_else(|| "no response".to_string())
}

/// Repeats `attempt` (which must fail) until the log has `needle`: a line of the same kind
/// may have been written less than a second ago, and this one is then left out.
fn until_logged(
    weir: &Weir,
    needle: &str,
    mut attempt: impl FnMut() -> Result<RawResponse, String>,
) {
    let logged = eventually(|| {
        assert!(attempt().is_err(), "the handshake succeeded");
        sleep(Duration::from_millis(100));
        weir.log().contains(needle)
    });
    assert!(logged, "no `{needle}` in:\n{}", weir.log());
}

#[test]
fn a_client_certificate_refused_by_mutual_tls_is_a_warning_with_the_reason() {
    let (_, client_ca_pem, _) = new_ca("Weir client CA");
    let client_ca_file = TempFile::new("pem", client_ca_pem.as_bytes());
    let (weir, server_ca, _files) = tls_listener(&format!(
        ", client_auth = \"required\", client_ca = \"{}\"",
        client_ca_file.path.display()
    ));
    let anonymous = client_trusting(&server_ca, &[&rustls::version::TLS13]);
    until_logged(
        &weir,
        "WARN listener `secure`: client certificate refused from 127.0.0.1: peer sent no certificates",
        || https_try(weir.addr(), &anonymous),
    );

    // A certificate from a CA the listener does not know.
    let (_, _, rogue_issuer) = new_ca("Rogue CA");
    let rogue = client_with(&server_ca, &rogue_issuer);
    until_logged(
        &weir,
        "WARN listener `secure`: client certificate refused from 127.0.0.1: \
         invalid peer certificate: UnknownIssuer",
        || https_try(weir.addr(), &rogue),
    );
}

/// A TLS 1.3 client trusting `server_ca` that presents a certificate from `issuer`.
fn client_with(
    server_ca: &CertificateDer<'static>,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> Arc<ClientConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client.example");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}

#[test]
fn another_failed_client_handshake_is_info_and_a_bare_connection_is_nothing() {
    let (weir, _server_ca, _files) = tls_listener("");
    // A TCP connection closed unused (a port probe, a health check) is not logged.
    drop(connect(weir.addr()));
    sleep(Duration::from_millis(200));
    // A client that does not trust the listener's certificate says so with an alert.
    let (other_ca, _, _) = new_ca("Another CA");
    let distrustful = client_trusting(&other_ca, &[&rustls::version::TLS13]);
    until_logged(
        &weir,
        "INFO listener `secure`: TLS handshake failed from 127.0.0.1: received fatal alert: ",
        || https_try(weir.addr(), &distrustful),
    );
    let failed = lines_with(&weir.log(), "TLS handshake failed");
    assert!(
        failed.iter().all(|l| l.contains("received fatal alert")),
        "{failed:?}"
    );
}
