//! A TLS handshake load generator for perf/tls-handshakes.sh: `threads` threads open
//! connections to `addr` for `seconds`, each doing a TLS handshake (full, or resumed from
//! a session ticket) and closing, and the total per second is printed.
//!
//! rustls makes the client side cheap enough for one load core to outrun a proxy's
//! handshakes, which OpenSSL-based tools (`openssl s_time`, h2load) cannot here. The
//! server certificate is not verified: this measures the server, not the client.
//!
//! `cargo run --release --example tls_handshakes -- 127.0.0.1:18443 full 4 6`

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate but checks the handshake signatures, as a real client does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tls_handshakes ADDR full|resumed THREADS SECONDS";
    let addr: SocketAddr = args.first().expect(usage).parse().expect(usage);
    let resumed = match args.get(1).map(String::as_str) {
        Some("full") => false,
        Some("resumed") => true,
        _ => panic!("{usage}"),
    };
    let threads: usize = args.get(2).map_or(4, |t| t.parse().expect(usage));
    let seconds: u64 = args.get(3).map_or(6, |s| s.parse().expect(usage));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = if resumed {
        Resumption::in_memory_sessions(1024)
    } else {
        Resumption::disabled()
    };
    let config = Arc::new(config);
    let name = ServerName::try_from("bench.weir.test").unwrap();

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let resumptions = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (config, name, done, failed, resumptions) = (
                config.clone(),
                name.clone(),
                done.clone(),
                failed.clone(),
                resumptions.clone(),
            );
            std::thread::spawn(move || {
                while Instant::now() < end {
                    let ok = (|| -> std::io::Result<()> {
                        let mut tcp = TcpStream::connect(addr)?;
                        tcp.set_nodelay(true)?;
                        let mut conn = ClientConnection::new(config.clone(), name.clone())
                            .map_err(std::io::Error::other)?;
                        while conn.is_handshaking() {
                            conn.complete_io(&mut tcp)?;
                        }
                        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                            resumptions.fetch_add(1, Ordering::Relaxed);
                        }
                        // TLS 1.3 sends session tickets after the handshake: read them (in
                        // both modes, so the server's work is the same), then close.
                        conn.read_tls(&mut tcp)?;
                        conn.process_new_packets().map_err(std::io::Error::other)?;
                        conn.send_close_notify();
                        let _ = conn.complete_io(&mut tcp);
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let total = done.load(Ordering::Relaxed);
    println!(
        "handshakes {} failed {} per_second {:.0} resumed {}",
        total,
        failed.load(Ordering::Relaxed),
        total as f64 / seconds as f64,
        resumptions.load(Ordering::Relaxed)
    );
}
