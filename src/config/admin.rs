//! `[admin]`: the admin API's listener (off unless configured): its address and an
//! optional bearer token.
//!
//! Owns: [`Admin`], its file form and checks, and the warning for an admin API reachable
//! beyond this machine without a token. Must not: bind anything (`crate::admin` does, at
//! start).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::errors::Checker;
use super::listener::resolve_listen_addr;

/// The admin API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// Requests must carry `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl Admin {
    /// Why this admin API is a risk, if it is: reachable beyond loopback with no token.
    pub fn warning(&self) -> Option<String> {
        (!self.address.ip().is_loopback() && self.token.is_none()).then(|| {
            format!(
                "[admin] on {} answers anyone who can reach it (reload, purge, the config): \
                 set `token`, or bind it to 127.0.0.1",
                self.address
            )
        })
    }
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    /// `ip:port`; loopback (`127.0.0.1:9901`) unless it must be reached from elsewhere.
    address: Spanned<String>,
    /// A bearer token every request must carry (`Authorization: Bearer …`): at least 16
    /// printable ASCII characters.
    token: Option<Spanned<String>>,
}

pub(super) fn resolve_admin(raw: Spanned<AdminFile>, ck: &mut Checker) -> Option<Admin> {
    let raw = raw.into_inner();
    let address = match resolve_listen_addr(raw.address.get_ref()) {
        Ok(a) => a,
        Err(msg) => {
            ck.error(raw.address.span(), msg);
            return None;
        }
    };
    let token = raw.token.and_then(|t| {
        let ok = t.get_ref().len() >= 16 && t.get_ref().bytes().all(|b| (0x21..0x7f).contains(&b));
        if !ok {
            ck.error(
                t.span(),
                "the admin token must be at least 16 printable ASCII characters without spaces \
                 (for example the output of `openssl rand -hex 24`)",
            );
        }
        ok.then(|| t.into_inner())
    });
    Some(Admin { address, token })
}
