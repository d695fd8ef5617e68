//! TLS termination with rustls: certificates from PEM files chosen by SNI, and one server
//! configuration per listener shared by every worker.
//!
//! Owns: loading certificates and keys (at start-up, never on a worker loop), choosing one
//! by the client's server name (exact, then `*.suffix` for one label, then the default),
//! and the rustls settings: TLS 1.3, and TLS 1.2 unless turned off; ALPN `http/1.1`; session
//! tickets. Because the same `ServerConfig` (and so the same rotating ticket keys) serves
//! every worker, a client resumes its session on whichever core SO_REUSEPORT picks.
//!
//! Must not: do the handshake's I/O itself (monoio-rustls drives it on the worker), or
//! accept a configuration it could not fully load.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsSettings;

/// Reads a certificate chain and its private key from PEM files.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = {
        let pem =
            std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?
    };
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der: PrivateKeyDer<'static> = {
        let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?
            .ok_or_else(|| format!("{}: no private key in it", key.display()))?
    };
    let signing_key = any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

/// Chooses a certificate by SNI: exact name, then a wildcard covering one label, then the
/// default (the first certificate without `names`, or else the first).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with its leading dot, key): `*.example.com` is stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some(dot) = name.find('.') {
            let suffix = &name[dot..];
            if let Some((_, k)) = self.wildcard.iter().find(|(s, _)| s == suffix) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// Builds a listener's TLS configuration from its settings.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    let mut first = None;
    for c in &settings.certificates {
        let key = Arc::new(load_certified_key(&c.cert, &c.key)?);
        first.get_or_insert_with(|| key.clone());
        if c.names.is_empty() {
            default.get_or_insert_with(|| key.clone());
        }
        for name in &c.names {
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), key.clone())),
                None => {
                    exact.insert(name.clone(), key.clone());
                }
            }
        }
    }
    let default = default
        .or(first)
        .ok_or("a TLS listener needs a certificate")?;
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            exact,
            wildcard,
            default,
        }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: ticket keys rotate every 6 hours and, being part of this one
    // config, are the same on every worker.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(Arc::new(config))
}
