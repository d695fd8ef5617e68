//! TLS termination with rustls: certificates from PEM files chosen by SNI, and one server
//! configuration per listener shared by every worker.
//!
//! Owns: loading certificates and keys (at start-up, never on a worker loop), choosing one
//! by the client's server name (exact, then `*.suffix` for one label, then the default),
//! and the rustls settings: TLS 1.3, and TLS 1.2 unless turned off; ALPN `http/1.1`; session
//! tickets. Because the same `ServerConfig` (and so the same rotating ticket keys) serves
//! every worker, a client resumes its session on whichever core SO_REUSEPORT picks.
//!
//! Certificates are replaced by a reload (SIGHUP or `weir reload`): the new generation
//! builds its own [`Tls`] from the files, only if all of them load; new handshakes use
//! it, existing connections carry on, and the session ticket keys (from the registry)
//! stay the same so resumption works across the reload.
//!
//! The stream itself ([`stream::TlsStream`]) runs the handshake and the records on the
//! worker. Must not: take a lock on the handshake path, or accept a configuration it could
//! not fully load.
//!
//! Also owns the runtime specs [`TlsSettings`], [`CertificateSettings`], [`ClientAuth`] and
//! [`UpstreamTls`] (re-exported by `config`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod stream;
pub use stream::{refused_client_certificate, Accepted, TlsStream};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// A TLS listener's certificates and protocol settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificates: Vec<CertificateSettings>,
    /// Accept TLS 1.2 as well as 1.3.
    pub tls12: bool,
    /// Longest a handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
    /// Client certificates (mutual TLS), if asked for.
    pub client_auth: Option<ClientAuth>,
}

/// Mutual TLS toward clients.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Refuse clients without a valid certificate (else: let them in as anonymous).
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Lower-case server names (`api.example.com`, `*.example.com`); empty: the default.
    pub names: Vec<String>,
}

/// How Weir speaks TLS to an upstream group's targets.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// CA bundle to verify the targets with; `None`: the bundled Mozilla roots.
    pub ca: Option<std::path::PathBuf>,
    /// SNI and the name to verify; `None`: each target's host as written.
    pub server_name: Option<String>,
    /// A client certificate and key to present to the targets.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Reads a certificate chain and its private key from PEM files.
pub fn load_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
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
    Ok((chain, key_der))
}

/// Reads a certificate chain and key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let (chain, key_der) = load_chain_and_key(cert, key)?;
    let signing_key = any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "the private key {} does not belong to the certificate {} (their public keys differ): \
             use the key the certificate was issued for",
            key.display(),
            cert.display()
        ),
        e => format!("{} does not match {}: {e}", key.display(), cert.display()),
    })?;
    Ok(certified)
}

/// The DNS names a certificate is valid for: its subjectAltName DNS entries, lower case
/// (`*.example.com` for wildcards). Empty if it has none or cannot be read.
pub fn certificate_names(certified: &CertifiedKey) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(leaf) = certified.cert.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether a certificate for `dns_name` (possibly `*.example.com`) is valid for the server
/// name `name` (possibly a wildcard itself): exact, or one label under a wildcard, as TLS
/// clients check (RFC 6125 §6.4.3).
pub fn name_covers(dns_name: &str, name: &str) -> bool {
    if dns_name == name {
        return true;
    }
    match (dns_name.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => label != "*" && !label.is_empty() && rest == suffix,
        _ => false,
    }
}

#[cfg(test)]
mod name_tests {
    use super::name_covers;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("api.example.com", "api.example.com"));
        assert!(name_covers("*.example.com", "api.example.com"));
        assert!(name_covers("*.example.com", "*.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("api.example.com", "*.example.com"));
        assert!(!name_covers("api.example.com", "www.example.com"));
    }
}

/// Where Debian-family systems keep their trusted CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The rustls client configuration for an upstream group's TLS.
pub fn upstream_client_config(tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match &tls.ca {
        Some(ca) => load_roots(ca)?,
        // The system's CA bundle (Debian, Ubuntu, Alpine); where there is none, the
        // Mozilla roots built into Weir.
        None => match load_roots(Path::new(SYSTEM_CA_BUNDLE)) {
            Ok(roots) => roots,
            Err(_) => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = load_chain_and_key(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a PEM bundle of CA certificates (to verify clients, or upstreams, against).
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in it", path.display()));
    }
    Ok(roots)
}

/// The header lines describing a client's certificate, as forwarded upstream:
/// `x-client-cert-verified` (`SUCCESS`, or `NONE` without a certificate), then `-subject`,
/// `-issuer`, `-serial`, `-not-before`, `-not-after` (HTTP dates) and `-fingerprint`
/// (SHA-256 of the DER, hex). Values are made safe for a header line.
pub fn client_cert_headers(session: &rustls::ServerConnection) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut out = Vec::new();
    let leaf = session.peer_certificates().and_then(|c| c.first());
    let Some(leaf) = leaf else {
        out.extend_from_slice(b"x-client-cert-verified: NONE\r\n");
        return out;
    };
    out.extend_from_slice(b"x-client-cert-verified: SUCCESS\r\n");
    let mut field = |name: &str, value: &str| {
        out.extend_from_slice(b"x-client-cert-");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        // A certificate's names may hold anything; a header line may not.
        out.extend(
            value
                .bytes()
                .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    };
    if let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) {
        let date = |t: i64| {
            String::from_utf8_lossy(&crate::http::write::imf_fixdate(t.max(0) as u64)).into_owned()
        };
        field("subject", &rfc4514(cert.subject()));
        field("issuer", &rfc4514(cert.issuer()));
        field("serial", &serial_hex(cert.raw_serial()));
        field("not-before", &date(cert.validity().not_before.timestamp()));
        field("not-after", &date(cert.validity().not_after.timestamp()));
    }
    let digest = crate::auth::sha256(leaf.as_ref());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    field("fingerprint", &hex);
    out
}

/// A distinguished name as RFC 4514 writes it, as nginx's `$ssl_client_s_dn` (OpenSSL's
/// `XN_FLAG_RFC2253`) does: the RDNs in reverse order of their encoding joined by `,`, the
/// attributes of a multi-valued RDN by `+`; short names for the usual attribute types and
/// the dotted OID otherwise.
pub fn rfc4514(name: &x509_parser::x509::X509Name) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let short = short_name(&oid);
            out.push_str(short.unwrap_or(&oid));
            out.push('=');
            let value = attr.attr_value();
            match short.and_then(|_| directory_string(value)) {
                Some(text) => escape_dn_value(&mut out, &text),
                // RFC 4514 §2.4: a type without a short name, or a value that is not a
                // string, is `#` and the hex of the value's DER.
                None => {
                    use x509_parser::asn1_rs::ToDer;
                    out.push('#');
                    for b in value.to_der_vec().unwrap_or_default() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

/// The short names RFC 4514 §3 lists, and those OpenSSL prints for other common types.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.12" => "title",
        "2.5.4.15" => "businessCategory",
        "2.5.4.17" => "postalCode",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// The text of a string-typed attribute value, whatever its ASN.1 string type.
fn directory_string(value: &x509_parser::asn1_rs::Any) -> Option<String> {
    use x509_parser::asn1_rs::Tag;
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_string),
        // T.61 as Latin-1, as OpenSSL reads it.
        Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends an attribute value escaped as RFC 4514 §2.4 asks: `"`, `+`, `,`, `;`, `<`,
/// `>` and `\` anywhere, `#` or a space first, a space last, with a backslash. Control
/// characters and every byte of a non-ASCII character become `\XX` (as OpenSSL's
/// `ESC_MSB`), so the result is printable ASCII and fits a header line.
pub fn escape_dn_value(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
}

/// A certificate serial as nginx's `$ssl_client_serial` writes it: upper-case hex without
/// separators, without the leading zero byte DER adds to keep a high bit positive.
pub fn serial_hex(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Chooses a certificate by SNI: exact name, then a wildcard covering one label, then the
/// default (the first certificate without `names`, or else the first).
#[derive(Debug)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with its leading dot, key): `*.example.com` is stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl CertTable {
    /// Reads every certificate of `settings`; fails if any does not load.
    fn load(settings: &TlsSettings) -> Result<CertTable, String> {
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
        Ok(CertTable {
            exact,
            wildcard,
            default,
        })
    }

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

/// A listener's certificates, chosen by SNI. A reload builds a new one with the
/// generation; handshakes under way keep the one they started with.
#[derive(Debug)]
struct SniResolver {
    table: CertTable,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.choose(hello.server_name()))
    }
}

/// A listener's TLS: the rustls configuration every worker uses.
#[derive(Debug)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: std::time::Duration,
    /// Client certificates are asked for: forward what they say.
    pub mutual: bool,
}

impl Tls {
    /// Reads the certificates and builds the listener's TLS configuration. `ticketer`
    /// makes and opens session tickets: the process's one set of keys, so that sessions
    /// resume on every worker and across reloads.
    pub fn new(
        settings: &TlsSettings,
        ticketer: Arc<dyn rustls::server::ProducesTickets>,
    ) -> Result<Tls, String> {
        let resolver = Arc::new(SniResolver {
            table: CertTable::load(settings)?,
        });
        Ok(Tls {
            config: server_config(settings, resolver, ticketer)?,
            handshake_timeout: settings.handshake_timeout,
            mutual: settings.client_auth.is_some(),
        })
    }
}

fn server_config(
    settings: &TlsSettings,
    resolver: Arc<SniResolver>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = Arc::new(load_roots(&auth.ca)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if auth.required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            };
            builder.with_client_cert_verifier(
                verifier.map_err(|e| format!("client certificate verifier: {e}"))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: ticket keys rotate every 6 hours and are the process's own
    // (`crate::registry`), the same on every worker and in every config generation.
    config.ticketer = ticketer;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_dn_value(&mut out, value);
        out
    }

    #[test]
    fn dn_values_are_escaped_as_rfc_4514_says() {
        assert_eq!(escaped("client.example"), "client.example");
        assert_eq!(escaped("Acme, Inc."), r"Acme\, Inc.");
        assert_eq!(escaped(r#"a+b"c\d<e>f;g"#), r#"a\+b\"c\\d\<e\>f\;g"#);
        // `#` and a space only at the start, a space at the end; `=` is left alone.
        assert_eq!(escaped("#1 a=b#"), r"\#1 a=b#");
        assert_eq!(escaped(" padded "), r"\ padded\ ");
        assert_eq!(escaped(" "), r"\ ");
        assert_eq!(escaped(""), "");
        // Controls and non-ASCII as the hex of their UTF-8 bytes.
        assert_eq!(escaped("Z\u{fc}rich"), r"Z\C3\BCrich");
        assert_eq!(escaped("a\nb\0"), r"a\0Ab\00");
    }

    #[test]
    fn serials_are_upper_case_hex_without_the_der_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x0b]), "8A0B");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn names_are_written_last_rdn_first_with_short_names_or_oids() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let dn = &mut params.distinguished_name;
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme; GmbH");
        dn.push(rcgen::DnType::CommonName, "#svc");
        dn.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "0042");
        dn.push(rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]), "x");
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        assert_eq!(
            rfc4514(parsed.subject()),
            r"1.2.3.4=#0c0178,serialNumber=0042,CN=\#svc,O=Acme\; GmbH,C=DE"
        );
    }
}
