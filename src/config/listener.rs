//! `[[listener]]`: the addresses Weir accepts connections on, and TLS on them: certificates
//! chosen by SNI, protocol versions, and client certificates (mutual TLS).
//!
//! Owns: [`Listener`], its file form (with TLS), resolving listener addresses, and loading
//! each certificate once so that `weir check` finds a bad one. Re-exports [`TlsSettings`],
//! [`CertificateSettings`] and [`ClientAuth`] (owned by `tls`).
//!
//! Must not: do any I/O after load (certificates are loaded again at start by `tls`), or be
//! consulted on the request path in its file form.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::errors::Checker;
use super::limits::{resolve_throttle, Throttle, ThrottleFile};
use super::log::{resolve_listener_log, ListenerLog, ListenerLogFile};
use super::upstream::resolve_addr;
use super::values::{is_host_byte, Dur};
pub use crate::tls::{CertificateSettings, ClientAuth, TlsSettings};

// ---------------------------------------------------------------------------------------
// The resolved settings used by the rest of Weir.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub backlog: u32,
    /// The listener's bucket (API Gateway's stage level).
    pub throttle: Option<Throttle>,
    /// TLS termination, if this is an HTTPS listener.
    pub tls: Option<TlsSettings>,
    /// Answer every request with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// This listener's access log.
    pub access_log: ListenerLog,
}

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[[listener]]`: an address Weir accepts connections on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    /// `ip:port` or `host:port`; port 0 picks a free port (printed at start).
    address: Spanned<String>,
    /// Name that routes use in `listener = "..."`. Default: the address as written.
    name: Option<Spanned<String>>,
    /// Listen backlog. Default 1024 (nginx uses 511; the kernel caps it at somaxconn).
    backlog: Option<u32>,
    /// A bucket for every request on this listener (the stage level).
    throttle: Option<Spanned<ThrottleFile>>,
    /// Terminate TLS on this listener.
    tls: Option<Spanned<TlsFile>>,
    /// Redirect every request to `https://` on this port (nginx's `return 301 https://…`).
    redirect_https: Option<Spanned<u16>>,
    /// This listener's own access log (`{ path = ... }`), or `false` for none. Default:
    /// `[access_log]`.
    access_log: Option<Spanned<ListenerLogFile>>,
}

/// `tls = { certificates = [...], tls12 = true, handshake_timeout = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    /// `{ cert = "fullchain.pem", key = "key.pem", names = ["api.example.com"] }`, chosen by
    /// SNI; one without `names` (or else the first) is the default.
    certificates: Vec<Spanned<CertificateFile>>,
    /// Accept TLS 1.2 too. Default true (nginx's `ssl_protocols TLSv1.2 TLSv1.3`).
    tls12: Option<bool>,
    /// Default 10s. A client that stalls mid-handshake is closed after it.
    handshake_timeout: Option<Dur>,
    /// Mutual TLS: `"required"` or `"optional"`. Needs `client_ca`.
    client_auth: Option<String>,
    /// PEM bundle of the CAs that client certificates must chain to.
    client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateFile {
    /// PEM certificate chain, leaf first; relative to the config file.
    cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519).
    key: String,
    /// Server names this certificate answers: exact or `*.suffix` (one label).
    names: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

/// Every `[[listener]]`, in file order. At least one is needed; names and addresses are unique.
pub(super) fn resolve_listeners(
    raw: Vec<Spanned<ListenerFile>>,
    ck: &mut Checker,
) -> Vec<Listener> {
    if raw.is_empty() {
        ck.error(
            0..0,
            "no [[listener]]: add one, e.g. `address = \"127.0.0.1:8080\"`",
        );
    }
    let mut listeners = Vec::new();
    for l in raw {
        let span = l.span();
        let l = l.into_inner();
        let address = match resolve_listen_addr(l.address.get_ref()) {
            Ok(a) => a,
            Err(msg) => {
                ck.error(l.address.span(), msg);
                continue;
            }
        };
        let name = l
            .name
            .as_ref()
            .map_or_else(|| l.address.get_ref().clone(), |n| n.get_ref().clone());
        if listeners.iter().any(|x: &Listener| x.name == name) {
            let at = l.name.as_ref().map_or(span.clone(), |n| n.span());
            ck.error(at, format!("a listener named `{name}` is defined twice"));
        }
        if address.port() != 0 && listeners.iter().any(|x: &Listener| x.address == address) {
            ck.error(
                l.address.span(),
                format!("address {address} is used by two listeners"),
            );
        }
        let throttle = l.throttle.map(|t| resolve_throttle(t, &name, false, ck));
        let tls_span = l.tls.as_ref().map(|t| t.span());
        let tls = l.tls.and_then(|t| resolve_tls(t, ck));
        if let (Some(port), Some(_)) = (&l.redirect_https, tls_span) {
            ck.error(
                port.span(),
                "a TLS listener cannot redirect to HTTPS: it is HTTPS",
            );
        }
        listeners.push(Listener {
            name,
            address,
            backlog: l.backlog.unwrap_or(1024),
            throttle,
            tls,
            redirect_https: l.redirect_https.map(|p| p.into_inner()),
            access_log: resolve_listener_log(l.access_log, ck),
        });
    }
    listeners
}

/// A listener's `address`.
pub(super) fn resolve_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not an address: write an IP address and a port, like `0.0.0.0:{port}` \
             (every IPv4 address), `[::]:{port}` (every IPv6 address) or `127.0.0.1:{port}`"
        ));
    }
    if s.contains("://") {
        return Err(format!(
            "`{s}`: a listener address has no scheme: write `host:port`, and add `tls = {{ ... }}` for HTTPS"
        ));
    }
    resolve_addr(s)
}

fn resolve_tls(raw: Spanned<TlsFile>, ck: &mut Checker) -> Option<TlsSettings> {
    let span = raw.span();
    let t = raw.into_inner();
    let dir = Path::new(ck.file)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if t.certificates.is_empty() {
        ck.error(span, "a TLS listener needs at least one certificate");
        return None;
    }
    let mut certificates = Vec::new();
    let mut ok = true;
    for c in t.certificates {
        let cspan = c.span();
        let c = c.into_inner();
        let names: Vec<String> = c
            .names
            .unwrap_or_default()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for n in &names {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || !bare.bytes().all(is_host_byte) {
                ck.error(cspan.clone(), format!("`{n}` is not a server name"));
                ok = false;
            }
        }
        let settings = CertificateSettings {
            cert: dir.join(&c.cert),
            key: dir.join(&c.key),
            names,
        };
        // Loaded now so that `weir check` finds a bad file; loaded again at start.
        match crate::tls::load_certified_key(&settings.cert, &settings.key) {
            Err(msg) => {
                ck.error(cspan.clone(), msg);
                ok = false;
            }
            Ok(certified) => {
                // A name the certificate is not valid for would be chosen by SNI, then
                // refused by every client that checks the certificate.
                let valid = crate::tls::certificate_names(&certified);
                for n in &settings.names {
                    if !valid.iter().any(|v| crate::tls::name_covers(v, n)) {
                        ck.error(
                            cspan.clone(),
                            format!(
                                "`{n}` is not a name of the certificate {} (it is valid for: {}): list only names the certificate has, or use a certificate issued for `{n}`",
                                settings.cert.display(),
                                if valid.is_empty() { "no DNS names".to_string() } else { valid.join(", ") }
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        certificates.push(settings);
    }
    let client_auth = match (t.client_auth.as_deref(), &t.client_ca) {
        (None, None) => None,
        (Some(mode @ ("required" | "optional")), Some(ca)) => {
            let ca = dir.join(ca);
            if let Err(msg) = crate::tls::load_roots(&ca) {
                ck.error(span.clone(), msg);
                ok = false;
            }
            Some(ClientAuth {
                ca,
                required: mode == "required",
            })
        }
        (Some("required" | "optional"), None) => {
            ck.error(
                span.clone(),
                "client_auth needs client_ca, the CAs to trust",
            );
            ok = false;
            None
        }
        (Some(other), _) => {
            ck.error(
                span.clone(),
                format!("client_auth = \"{other}\": use \"required\" or \"optional\""),
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            ck.error(
                span.clone(),
                "client_ca without client_auth: add client_auth = \"required\" or \"optional\"",
            );
            ok = false;
            None
        }
    };
    ok.then(|| TlsSettings {
        certificates,
        tls12: t.tls12.unwrap_or(true),
        handshake_timeout: t.handshake_timeout.map_or(Duration::from_secs(10), |d| d.0),
        client_auth,
    })
}
