//! TLS termination: certificates chosen by SNI, TLS 1.2 that can be turned off, sessions
//! that resume on any worker, and hostile or silent clients that harm no one. The client
//! is rustls with a real certificate check against a CA made by the test.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use crate::support::*;

/// A CA and three certificates issued by it, written to PEM files.
struct Pki {
    ca: CertificateDer<'static>,
    /// The CA certificate as a PEM file, for curl and openssl.
    ca_pem: TempFile,
    issuer: Issuer<'static, KeyPair>,
    /// (cert file, key file, certificate) for api.example.com, *.example.com, the default.
    certs: Vec<(TempFile, TempFile, CertificateDer<'static>)>,
}

/// A new CA named `common_name`: its certificate, as DER and PEM, and what issues with it.
pub(crate) fn new_ca(
    common_name: &str,
) -> (CertificateDer<'static>, String, Issuer<'static, KeyPair>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    (ca.der().clone(), ca.pem(), Issuer::new(ca_params, ca_key))
}

fn pki() -> Pki {
    let (ca_der, ca_pem, issuer) = new_ca("Weir test CA");
    let certs = [
        &["api.example.com"][..],
        &["*.example.com"],
        &["default.test", "deep.sub.example.com", "127.0.0.1"],
    ]
    .into_iter()
    .map(|names| {
        let (cert, key, der) = issue(&issuer, names);
        (
            TempFile::new("pem", cert.as_bytes()),
            TempFile::new("pem", key.as_bytes()),
            der,
        )
    })
    .collect();
    Pki {
        ca: ca_der,
        ca_pem: TempFile::new("pem", ca_pem.as_bytes()),
        issuer,
        certs,
    }
}

/// A new certificate for `names`: (certificate PEM, key PEM, certificate).
pub(crate) fn issue(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
) -> (String, String, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    // Its own subject, or OpenSSL takes a leaf named like its CA for self-signed.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

fn tls_config(pki: &Pki, extra: &str) -> String {
    let c = &pki.certs;
    format!(
        r#"tls = {{ certificates = [
    {{ cert = "{}", key = "{}", names = ["api.example.com"] }},
    {{ cert = "{}", key = "{}", names = ["*.example.com"] }},
    {{ cert = "{}", key = "{}" }},
], {extra} }}"#,
        c[0].0.path.display(),
        c[0].1.path.display(),
        c[1].0.path.display(),
        c[1].1.path.display(),
        c[2].0.path.display(),
        c[2].1.path.display(),
    )
}

fn start(pki: &Pki, backend: &Backend, extra: &str) -> Weir {
    Weir::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
{}

[upstream.backend]
targets = ["{}"]

[[route]]
path = "/{{*rest}}"
upstream = "backend"
"#,
        tls_config(pki, extra),
        backend.addr
    ))
}

fn client(pki: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    client_trusting(&pki.ca, versions)
}

/// A client that trusts `ca` only, with its own (empty) session store.
pub(crate) fn client_trusting(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub(crate) struct TlsExchange {
    pub(crate) response: RawResponse,
    pub(crate) certificate: CertificateDer<'static>,
    pub(crate) kind: Option<HandshakeKind>,
    alpn: Option<Vec<u8>>,
}

/// One HTTPS request with SNI `name`; Err if the handshake or request fails.
pub(crate) fn https_get(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
    path: &str,
) -> Result<TlsExchange, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), server_name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(tls);
    let response = read_response(&mut reader, false).ok_or("no response")?;
    let tls = reader.get_ref();
    Ok(TlsExchange {
        response,
        certificate: tls.conn.peer_certificates().ok_or("no certificate")?[0].clone(),
        kind: tls.conn.handshake_kind(),
        alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

#[test]
fn sni_chooses_the_exact_name_then_a_one_label_wildcard_then_the_default() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let config = client(&pki, &[&rustls::version::TLS13]);
    let served = |name: &str| {
        https_get(weir.addr(), &config, name, "/sni")
            .unwrap()
            .certificate
    };
    assert_eq!(served("api.example.com"), pki.certs[0].2);
    assert_eq!(served("eu.example.com"), pki.certs[1].2);
    assert_eq!(
        served("deep.sub.example.com"),
        pki.certs[2].2,
        "a wildcard covers one label"
    );
    assert_eq!(served("default.test"), pki.certs[2].2);
}

#[test]
fn https_requests_are_proxied_with_forwarded_proto_https_over_http11() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let config = client(&pki, &[&rustls::version::TLS13, &rustls::version::TLS12]);
    let x = https_get(weir.addr(), &config, "api.example.com", "/over-tls").unwrap();
    assert_eq!(x.response.status, 200);
    assert_eq!(x.response.body_text(), "/over-tls");
    assert_eq!(x.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        backend.last().header("x-forwarded-host"),
        Some("api.example.com")
    );
}

#[test]
fn tls12_is_accepted_unless_turned_off() {
    let pki = pki();
    let backend = Backend::start();
    let tls12_only = client(&pki, &[&rustls::version::TLS12]);
    let weir = start(&pki, &backend, "");
    assert_eq!(
        https_get(weir.addr(), &tls12_only, "api.example.com", "/12")
            .unwrap()
            .response
            .status,
        200
    );
    let strict = start(&pki, &backend, "tls12 = false");
    assert!(https_get(strict.addr(), &tls12_only, "api.example.com", "/12").is_err());
    let tls13 = client(&pki, &[&rustls::version::TLS13]);
    assert!(https_get(strict.addr(), &tls13, "api.example.com", "/13").is_ok());
}

/// SO_REUSEPORT spreads connections over the two workers by their source port, so a run
/// of resumptions lands on both; each one resumes, whichever worker issued the ticket.
#[test]
fn sessions_resume_on_any_worker() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let config = client(&pki, &[&rustls::version::TLS13]);
    let first = https_get(weir.addr(), &config, "api.example.com", "/first").unwrap();
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    for i in 0..12 {
        let again = https_get(weir.addr(), &config, "api.example.com", "/again").unwrap();
        assert_eq!(again.kind, Some(HandshakeKind::Resumed), "connection {i}");
        assert_eq!(again.response.status, 200);
    }
}

#[test]
fn plain_http_on_a_tls_port_gets_a_400_saying_so_and_harms_no_one() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let mut s = connect(weir.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // As nginx does: a 400 in plain HTTP that says why, then the end of the connection.
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut answer).expect("a clean close");
    let mut reader = BufReader::new(answer.as_slice());
    let r = read_response(&mut reader, false).expect("an HTTP response");
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body_text(),
        r#"{"message":"This port expects HTTPS (TLS): use https://"}"#
    );
    assert!(reader.buffer().is_empty(), "more after the response");
    assert_eq!(backend.requests(), 0);

    // A client that pipelines more than the first read: still a 400, not a reset.
    let mut s = connect(weir.addr());
    let mut big = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".to_vec();
    big.resize(big.len() + 200_000, b'a');
    s.write_all(&big).unwrap();
    let r = read_response(&mut BufReader::new(s), false).expect("an HTTP response");
    assert_eq!(r.status, 400);

    // Not a TLS record and not HTTP either: closed, with an alert where one applies.
    let mut s = connect(weir.addr());
    s.write_all(b"\x00\x01\x02\x03garbage\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");

    let config = client(&pki, &[&rustls::version::TLS13]);
    assert_eq!(
        https_get(weir.addr(), &config, "api.example.com", "/ok")
            .unwrap()
            .response
            .status,
        200
    );
}

#[test]
fn a_stalled_handshake_is_closed_after_its_timeout() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "handshake_timeout = \"300ms\"");
    let mut silent = connect(weir.addr());
    let config = client(&pki, &[&rustls::version::TLS13]);
    assert_eq!(
        https_get(weir.addr(), &config, "api.example.com", "/meanwhile")
            .unwrap()
            .response
            .status,
        200
    );
    assert!(closes(&mut silent), "a silent client is closed");
}

#[test]
fn check_names_a_missing_certificate_file() {
    let err = check_fails(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = { certificates = [{ cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }] }\n",
    );
    assert!(
        err.contains(":3:") && err.contains("cannot read /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn a_plain_listener_can_redirect_every_request_to_https() {
    let weir = Weir::start(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\nredirect_https = 8443\n[[listener]]\nname = \"std\"\naddress = \"127.0.0.1:0\"\nredirect_https = 443\n[[route]]\npath = \"/{*p}\"\nmock = {}\n",
    );
    let mut s = connect(weir.listeners["public"]);
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let r = get_on(&mut s, &mut reader, "/a/b?c=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://x:8443/a/b?c=1"));
    // The connection stays open for the next request.
    s.write_all(b"POST /form HTTP/1.1\r\nHost: shop.example:8080\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 308, "other methods keep their method and body");
    assert_eq!(r.header("location"), Some("https://shop.example:8443/form"));
    let r = raw(
        weir.listeners["std"],
        b"GET /x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.header("location"), Some("https://shop.example/x"));
}

#[test]
fn sighup_reloads_certificates_for_new_handshakes_and_keeps_old_ones_on_error() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let config = client(&pki, &[&rustls::version::TLS13]);
    // A fresh client each time: a resumed session shows the certificate it began with.
    let served = || {
        let fresh = client(&pki, &[&rustls::version::TLS13]);
        https_get(weir.addr(), &fresh, "api.example.com", "/")
            .unwrap()
            .certificate
    };
    assert_eq!(served(), pki.certs[0].2);

    // A connection opened before the reload.
    let tcp = TcpStream::connect(weir.addr()).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("api.example.com".to_string()).unwrap();
    let mut old = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
    old.write_all(b"GET /before HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .unwrap();
    let mut old_reader = BufReader::new(old);
    assert_eq!(read_response(&mut old_reader, false).unwrap().status, 200);

    // New files in place, then SIGHUP.
    let (cert, key, renewed) = issue(&pki.issuer, &["api.example.com"]);
    std::fs::write(&pki.certs[0].0.path, cert).unwrap();
    std::fs::write(&pki.certs[0].1.path, key).unwrap();
    weir.signal(libc::SIGHUP);
    assert!(
        eventually(|| served() == renewed),
        "new handshakes never got the new certificate"
    );
    assert!(
        weir.log().contains("reload: generation 2 serving"),
        "{}",
        weir.log()
    );

    // The connection from before carries on.
    old_reader
        .get_mut()
        .write_all(b"GET /after HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut old_reader, false).unwrap().body_text(),
        "/after"
    );

    // A broken key: the certificates in use stay, and the log says why.
    std::fs::write(&pki.certs[0].1.path, "not a key").unwrap();
    weir.signal(libc::SIGHUP);
    assert!(
        eventually(|| weir.log().contains("reload: kept generation 2")),
        "{}",
        weir.log()
    );
    assert_eq!(served(), renewed);
}

/// Runs a command; (exit code, stdout, stderr).
fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (curl and openssl come with Debian's curl and openssl packages)")
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_and_openssl_s_client_agree() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let strict = start(&pki, &backend, "tls12 = false");
    let curl = |weir: &Weir, extra: &[&str]| {
        let port = weir.addr().port();
        run(std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&pki.ca_pem.path)
            .args(["--resolve", &format!("api.example.com:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version} %{scheme}"])
            .args(extra)
            .arg(format!("https://api.example.com:{port}/from-curl")))
    };
    let (code, out, err) = curl(&weir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/from-curl\n200 1.1 HTTPS");
    let (code, _, _) = curl(&strict, &["--tls-max", "1.2"]);
    assert_ne!(
        code, 0,
        "a TLS 1.2 client got through a TLS 1.3-only listener"
    );
    let (code, out, _) = curl(&strict, &["--tlsv1.3"]);
    assert_eq!((code, out.as_str()), (0, "/from-curl\n200 1.1 HTTPS"));

    let s_client = |weir: &Weir, name: &str, extra: &[&str]| {
        run(std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &weir.addr().to_string(),
                "-servername",
                name,
            ])
            .arg("-CAfile")
            .arg(&pki.ca_pem.path)
            .args(["-verify_return_error", "-alpn", "http/1.1", "-showcerts"])
            .args(extra))
    };
    let (code, out, err) = s_client(&weir, "eu.example.com", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    let (code, out, _) = s_client(&weir, "api.example.com", &["-tls1_2"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("TLSv1.2"),
        "{out}"
    );
    let (code, _, _) = s_client(&strict, "api.example.com", &["-tls1_2"]);
    assert_ne!(
        code, 0,
        "openssl negotiated TLS 1.2 with a TLS 1.3-only listener"
    );
}

#[test]
fn large_bodies_cross_tls_both_ways_intact() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let config = client(&pki, &[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(weir.addr()).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("api.example.com".to_string()).unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    tls.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    tls.write_all(&body).unwrap();
    let mut reader = BufReader::new(tls);
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body == body,
        "the body came back changed ({} bytes)",
        r.body.len()
    );
    // And the connection is still good for another request.
    reader
        .get_mut()
        .write_all(
            b"GET /big/2000000 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.body.len(), 2_000_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
}

/// A CA for client certificates and a client certificate it issued, as PEM files and as
/// rustls values.
struct ClientCert {
    ca_pem: TempFile,
    cert_pem: TempFile,
    key_pem: TempFile,
    cert: CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn client_cert(common_name: &str) -> ClientCert {
    client_cert_for(|params| {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
    })
}

/// A client certificate whose subject (and anything else) `subject` sets.
fn client_cert_for(subject: impl FnOnce(&mut CertificateParams)) -> ClientCert {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Weir client CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    // Not rcgen's default subject, whose CN would stay first whatever is pushed.
    params.distinguished_name = rcgen::DistinguishedName::new();
    subject(&mut params);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    ClientCert {
        ca_pem: TempFile::new("pem", ca.pem().as_bytes()),
        cert_pem: TempFile::new("pem", cert.pem().as_bytes()),
        key_pem: TempFile::new("pem", key.serialize_pem().as_bytes()),
        cert: cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

fn client_with_certificate(
    pki: &Pki,
    cert: &CertificateDer<'static>,
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.clone()], key.clone_key())
        .unwrap();
    Arc::new(config)
}

/// Sends a request with a forged client-certificate header, to check it never passes.
fn https_get_forging(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<RawResponse, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("api.example.com".to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /mtls HTTP/1.1\r\nHost: api.example.com\r\nX-Client-Cert-Subject: CN=admin\r\nX-Client-Cert-Verified: SUCCESS\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    read_response(&mut BufReader::new(tls), false).ok_or_else(|| "no response".to_string())
}

#[test]
fn mutual_tls_required_refuses_untrusted_clients_and_forwards_the_certificate() {
    let pki = pki();
    // Five RDNs, encoded in this order, with values RFC 4514 escapes.
    let trusted_client = client_cert_for(|params| {
        use rcgen::DnType;
        let dn = &mut params.distinguished_name;
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "Acme, Inc.");
        dn.push(DnType::OrganizationalUnitName, " Payments+Cards ");
        dn.push(DnType::LocalityName, "Z\u{fc}rich");
        dn.push(DnType::CommonName, "client.example");
        dn.push(DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]), "x");
        // DER encodes it with a leading zero byte (the high bit is set).
        params.serial_number = Some(vec![0x8a, 0x0b, 0x1c, 0x2d].into());
    });
    let rogue_client = client_cert("rogue.example");
    let (client_ca, cert, key) = (
        &trusted_client.ca_pem,
        &trusted_client.cert,
        &trusted_client.key,
    );
    let (rogue_cert, rogue_key) = (&rogue_client.cert, &rogue_client.key);
    let backend = Backend::start();
    let weir = start(
        &pki,
        &backend,
        &format!(
            "client_auth = \"required\", client_ca = \"{}\"",
            client_ca.path.display()
        ),
    );
    let anonymous = client(&pki, &[&rustls::version::TLS13]);
    assert!(
        https_get_forging(weir.addr(), &anonymous).is_err(),
        "no certificate, no entry"
    );
    let rogue = client_with_certificate(&pki, rogue_cert, rogue_key);
    assert!(
        https_get_forging(weir.addr(), &rogue).is_err(),
        "an untrusted CA, no entry"
    );
    assert_eq!(backend.requests(), 0);

    let trusted = client_with_certificate(&pki, cert, key);
    let r = https_get_forging(weir.addr(), &trusted).unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(all("x-client-cert-verified"), ["SUCCESS"]);
    // RFC 4514: the last RDN first, `,` between them, specials escaped, UTF-8 bytes as
    // \XX, an attribute without a short name as its OID with the value's DER in hex.
    assert_eq!(
        all("x-client-cert-subject"),
        [
            r"1.3.6.1.4.1.99999.1=#0c0178,CN=client.example,L=Z\C3\BCrich,OU=\ Payments\+Cards\ ,O=Acme\, Inc.,C=US"
        ],
        "the forged subject got through"
    );
    // As nginx's $ssl_client_serial: upper-case hex, no separators, no DER sign byte.
    assert_eq!(seen.header("x-client-cert-serial"), Some("8A0B1C2D"));
    assert_eq!(
        seen.header("x-client-cert-issuer"),
        Some("CN=Weir client CA")
    );
    assert!(seen
        .header("x-client-cert-not-after")
        .unwrap()
        .ends_with(" GMT"));
    let fingerprint: String = weir::auth::sha256(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        seen.header("x-client-cert-fingerprint"),
        Some(fingerprint.as_str())
    );
}

#[test]
fn mutual_tls_optional_lets_anonymous_clients_in_as_none() {
    let pki = pki();
    let client_ca = client_cert("client.example").ca_pem;
    let backend = Backend::start();
    let weir = start(
        &pki,
        &backend,
        &format!(
            "client_auth = \"optional\", client_ca = \"{}\"",
            client_ca.path.display()
        ),
    );
    let anonymous = client(&pki, &[&rustls::version::TLS13]);
    assert_eq!(
        https_get_forging(weir.addr(), &anonymous).unwrap().status,
        200
    );
    let seen = backend.last();
    assert_eq!(seen.header("x-client-cert-verified"), Some("NONE"));
    assert_eq!(
        seen.header("x-client-cert-subject"),
        None,
        "the forged subject got through"
    );
}

#[test]
fn client_certificate_headers_are_never_taken_from_the_client() {
    let backend = Backend::start();
    let weir = Weir::start(&proxy_config(backend.addr, ""));
    raw(
        weir.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Client-Cert-Subject: CN=admin\r\nx-client-cert-verified: SUCCESS\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let seen = backend.last();
    assert_eq!(seen.header("x-client-cert-subject"), None);
    assert_eq!(seen.header("x-client-cert-verified"), None);
}

/// An HTTPS origin on a thread: answers `tls-origin <path> client=<yes|no>` with
/// keep-alive, and counts its connections. With `client_ca`, it demands a client
/// certificate from that CA.
struct TlsOrigin {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

fn tls_origin(pki: &Pki, client_ca: Option<&TempFile>) -> TlsOrigin {
    let (cert_pem, key_pem, _) = issue(&pki.issuer, &["backend.internal"]);
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(&ca.path).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { break };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut reader = BufReader::new(StreamOwned::new(conn, tcp));
                while let Some(head) = read_head(&mut reader) {
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let client = reader.get_ref().conn.peer_certificates().is_some();
                    let body = format!(
                        "tls-origin {path} client={}",
                        if client { "yes" } else { "no" }
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    TlsOrigin { addr, connections }
}

/// The response to `GET path` on a fresh connection.
fn get_once(weir: &Weir, path: &str) -> RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw(weir.addr(), request.as_bytes()).unwrap()
}

fn gateway_to(origin: SocketAddr, upstream_tls: &str) -> Weir {
    Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.secure]\ntargets = [\"{origin}\"]\ntls = {{ {upstream_tls} }}\n[[route]]\npath = \"/{{*rest}}\"\nupstream = \"secure\"\n"
    ))
}

#[test]
fn https_upstreams_are_verified_by_name_and_their_connections_reused() {
    let pki = pki();
    let origin = tls_origin(&pki, None);
    let weir = gateway_to(
        origin.addr,
        &format!(
            "ca = \"{}\", server_name = \"backend.internal\"",
            pki.ca_pem.path.display()
        ),
    );
    let client = crate::support::client();
    for i in 0..20 {
        let mut r = client.get(weir.url(&format!("/n/{i}"))).call().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.body_mut().read_to_string().unwrap(),
            format!("tls-origin /n/{i} client=no")
        );
    }
    let connections = origin.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} TLS connections for 20 requests"
    );
}

#[test]
fn an_upstream_certificate_that_does_not_verify_is_a_502() {
    let pki = pki();
    let origin = tls_origin(&pki, None);
    // The system's roots do not know the test CA; and the right CA with the wrong name.
    let untrusted = gateway_to(origin.addr, "server_name = \"backend.internal\"");
    let r = get_once(&untrusted, "/");
    assert_eq!(r.status, 502);
    let wrong_name = gateway_to(
        origin.addr,
        &format!(
            "ca = \"{}\", server_name = \"other.internal\"",
            pki.ca_pem.path.display()
        ),
    );
    let r = get_once(&wrong_name, "/");
    assert_eq!(r.status, 502);
}

#[test]
fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let pki = pki();
    let gateway_cert = client_cert("weir.gateway");
    let origin = tls_origin(&pki, Some(&gateway_cert.ca_pem));
    let (cert, key) = (&gateway_cert.cert_pem, &gateway_cert.key_pem);
    let with_cert = gateway_to(
        origin.addr,
        &format!(
            "ca = \"{}\", server_name = \"backend.internal\", cert = \"{}\", key = \"{}\"",
            pki.ca_pem.path.display(),
            cert.path.display(),
            key.path.display()
        ),
    );
    let r = get_once(&with_cert, "/m");
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, "tls-origin /m client=yes")
    );
    let without = gateway_to(
        origin.addr,
        &format!(
            "ca = \"{}\", server_name = \"backend.internal\"",
            pki.ca_pem.path.display()
        ),
    );
    let r = get_once(&without, "/m");
    assert_eq!(r.status, 502);
}

#[test]
fn an_rsa_certificate_serves_too() {
    let dir = std::env::temp_dir().join(format!("weir-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("rsa.pem"), dir.join("rsa.key"));
    let (code, _, err) = run(std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=rsa.example",
            "-addext",
            "subjectAltName=DNS:rsa.example",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert_eq!(code, 0, "{err}");
    let backend = Backend::start();
    let weir = Weir::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n[upstream.b]\ntargets = [\"{}\"]\n[[route]]\npath = \"/{{*r}}\"\nupstream = \"b\"\n",
        cert.display(),
        key.display(),
        backend.addr
    ));
    let port = weir.addr().port();
    let (code, out, err) = run(std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("rsa.example:{port}:127.0.0.1")])
        .arg(format!("https://rsa.example:{port}/rsa")));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((code, out.as_str()), (0, "/rsa"), "{err}");
}

#[test]
fn check_refuses_names_the_certificate_does_not_have() {
    let pki = pki();
    let (cert, key) = (&pki.certs[0].0, &pki.certs[0].1); // api.example.com
    let config = |names: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [\n  {{ cert = \"{}\", key = \"{}\", names = [{names}] }},\n] }}\n[[route]]\npath = \"/\"\nmock = {{}}\n",
            cert.path.display(),
            key.path.display()
        )
    };
    let err = check_fails(&config("\"api.example.com\", \"www.example.com\""));
    assert!(
        err.contains(":3:")
            && err.contains("`www.example.com` is not a name of the certificate")
            && err.contains("it is valid for: api.example.com"),
        "{err}"
    );
    assert!(!err.contains("`api.example.com` is not"), "{err}");
    // A wildcard certificate covers one label.
    let (wcert, wkey) = (&pki.certs[1].0, &pki.certs[1].1); // *.example.com
    check_passes(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\", names = [\"eu.example.com\", \"*.example.com\"] }}] }}\n[[route]]\npath = \"/\"\nmock = {{}}\n",
        wcert.path.display(),
        wkey.path.display()
    ));
}

#[test]
fn check_says_when_a_key_belongs_to_another_certificate() {
    let pki = pki();
    let err = check_fails(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n[[route]]\npath = \"/\"\nmock = {{}}\n",
        pki.certs[0].0.path.display(),
        pki.certs[1].1.path.display()
    ));
    assert!(
        err.contains("does not belong to the certificate") && !err.contains("KeyMismatch"),
        "{err}"
    );
}

#[test]
fn a_tls_listener_is_announced_as_https() {
    let pki = pki();
    let backend = Backend::start();
    let weir = start(&pki, &backend, "");
    let log = weir.log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO listening on https://127.0.0.1:")),
        "{log}"
    );
}
