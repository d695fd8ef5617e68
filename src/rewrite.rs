//! Header rewriting between the client and the upstream.
//!
//! Owns: what the upstream sees of a request (hop-by-hop headers removed, `Host` chosen,
//! `X-Forwarded-*` and `X-Request-Id` set, path prefixes rewritten) and what the client
//! sees of a response (hop-by-hop headers removed, `Connection` and `X-Request-Id` set).
//!
//! Unchanged header lines are copied as contiguous runs of the bytes that were read, never
//! re-serialised; only the headers Weir adds are written field by field. Must not
//! allocate: everything is appended to the caller's reused buffer.
//!
//! Also owns the runtime specs [`HttpIntegration`] and [`HostRewrite`] (re-exported by `config`).

use crate::http::{list_contains, BodyFraming, HeaderField, HeaderKind, RequestHead, ResponseHead};

#[derive(Debug, Clone)]
pub struct HttpIntegration {
    pub upstream: usize,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub host: HostRewrite,
}

/// What `Host` the upstream sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    /// The chosen target's `host:port` as written in the config (nginx's `$proxy_host`).
    Target,
    /// The client's own `Host` (Kong's `preserve_host`).
    Preserve,
    /// A fixed value.
    Fixed(String),
}

/// Everything that decides the forwarded request head.
pub struct ForwardRequest<'a> {
    /// The client's read buffer; `head` spans index into it.
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub route: &'a HttpIntegration,
    /// The chosen target's `host:port` as configured.
    pub target_authority: &'a [u8],
    /// The client's address, as text.
    pub client_ip: &'a [u8],
    pub request_id: &'a [u8],
    /// `http` or `https`.
    pub proto: &'a [u8],
    /// Header lines Weir adds about the connection (the client certificate), each ending
    /// in CRLF.
    pub extra: &'a [u8],
    /// The cache fetches for itself: drop the client's conditional headers (and send
    /// `validators`, the cache's own, if any).
    pub drop_conditionals: bool,
    pub validators: &'a [u8],
    /// Lower-case names of client headers the upstream must not see (the API key once
    /// checked; a header Weir sets itself, so that clients cannot forge it). Empty names
    /// are ignored.
    pub hidden: [&'a [u8]; 2],
    /// A header line Weir adds: (lower-case name, value), e.g. the checked API key's id.
    pub api_key_id: Option<(&'a [u8], &'a [u8])>,
    /// A `traceparent` Weir made for this request (the client sent none, or no valid
    /// one): sent instead of the client's. Empty: the client's goes on as it came.
    pub traceparent: &'a [u8],
}

impl ForwardRequest<'_> {
    fn hides(&self, name: &[u8]) -> bool {
        self.hidden
            .iter()
            .any(|h| !h.is_empty() && name.eq_ignore_ascii_case(h))
    }
}

/// Appends the request head to send upstream.
pub fn request_head(out: &mut Vec<u8>, f: &ForwardRequest) {
    let (buf, head) = (f.buf, f.head);
    // Most routes hide nothing: then no header name is compared.
    let hiding = f.hidden.iter().any(|h| !h.is_empty());
    request_line(out, f);

    copy_kept_lines(
        out,
        buf,
        &head.headers,
        head.connection_names_headers,
        |h| match h.kind {
            HeaderKind::Other => !hiding || !f.hides(h.name.of(buf)),
            HeaderKind::ContentLength | HeaderKind::TransferEncoding => true,
            HeaderKind::Conditional => !f.drop_conditionals,
            HeaderKind::TraceParent => f.traceparent.is_empty(),
            _ => false,
        },
    );

    out.extend_from_slice(b"host: ");
    let client_host = head.host.of(buf);
    match &f.route.host {
        HostRewrite::Preserve if !client_host.is_empty() => out.extend_from_slice(client_host),
        HostRewrite::Fixed(h) => out.extend_from_slice(h.as_bytes()),
        _ => out.extend_from_slice(f.target_authority),
    }
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    for h in head
        .headers
        .iter()
        .filter(|h| h.kind == HeaderKind::XForwardedFor)
    {
        let v = h.value.of(buf);
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(f.client_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(f.proto);
    if !client_host.is_empty() {
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(client_host);
    }
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(f.request_id);
    out.extend_from_slice(b"\r\n");
    if !f.traceparent.is_empty() {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(f.traceparent);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = f.api_key_id {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(f.extra);
    out.extend_from_slice(f.validators);
    out.extend_from_slice(b"\r\n");
}

/// The request line, copied as read when nothing in it changes.
fn request_line(out: &mut Vec<u8>, f: &ForwardRequest) {
    let (buf, head, route) = (f.buf, f.head, f.route);
    let path = head.path(buf);
    let mut rest = path;
    if let Some(prefix) = &route.strip_prefix {
        let p = prefix.as_bytes();
        if path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/') {
            rest = &path[p.len()..];
        }
    }
    let add = route
        .add_prefix
        .as_deref()
        .filter(|p| *p != "/")
        .map(str::as_bytes);
    let unchanged =
        !head.absolute_form && head.minor_version == 1 && add.is_none() && rest.len() == path.len();
    if unchanged {
        out.extend_from_slice(head.request_line.of(buf));
        out.extend_from_slice(b"\r\n");
        return;
    }
    out.extend_from_slice(head.method.of(buf));
    out.push(b' ');
    if let Some(add) = add {
        out.extend_from_slice(add);
    }
    if rest.is_empty() {
        out.push(b'/');
    } else {
        out.extend_from_slice(rest);
    }
    out.extend_from_slice(head.query.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// How the client-facing response head ends.
pub struct ForwardResponse<'a> {
    pub request_id: &'a [u8],
    /// The client connection closes after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0 and keeps the connection: say so.
    pub keep_alive_10: bool,
    /// The upstream body runs until close; Weir re-frames it as chunked.
    pub chunked: bool,
    /// Header lines a stage added (each ending in CRLF), e.g. RateLimit fields.
    pub extra: &'a [u8],
    /// The `X-Cache` line, on cached routes.
    pub cache: &'a [u8],
}

/// Appends the response head to send to the client.
pub fn response_head(out: &mut Vec<u8>, ubuf: &[u8], head: &ResponseHead, f: &ForwardResponse) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status_rest.of(ubuf));
    out.extend_from_slice(b"\r\n");
    copy_kept_lines(
        out,
        ubuf,
        &head.headers,
        head.connection_names_headers,
        |h| !matches!(h.kind, HeaderKind::Connection | HeaderKind::HopByHop),
    );
    out.extend_from_slice(f.extra);
    out.extend_from_slice(f.cache);
    if !head.has_request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(f.request_id);
        out.extend_from_slice(b"\r\n");
    }
    if f.chunked && head.framing == BodyFraming::UntilClose {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if f.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if f.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an informational (1xx) response head as received, minus hop-by-hop headers.
pub fn informational_head(out: &mut Vec<u8>, ubuf: &[u8], head: &ResponseHead) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status_rest.of(ubuf));
    out.extend_from_slice(b"\r\n");
    copy_kept_lines(
        out,
        ubuf,
        &head.headers,
        head.connection_names_headers,
        |h| !matches!(h.kind, HeaderKind::Connection | HeaderKind::HopByHop),
    );
    out.extend_from_slice(b"\r\n");
}

/// Copies the header lines `keep` accepts (and that `Connection` does not name), merging
/// adjacent lines into one copy.
fn copy_kept_lines(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[HeaderField],
    connection_names_headers: bool,
    keep: impl Fn(&HeaderField) -> bool,
) {
    let mut run: Option<(usize, usize)> = None;
    for h in headers {
        let kept = keep(h)
            && !(connection_names_headers && named_by_connection(buf, headers, h.name.of(buf)));
        let (start, end) = (h.line.start as usize, h.line.end as usize);
        run = match (kept, run) {
            (true, Some((s, e))) if e == start => Some((s, end)),
            (true, prev) => {
                if let Some((s, e)) = prev {
                    out.extend_from_slice(&buf[s..e]);
                }
                Some((start, end))
            }
            (false, prev) => {
                if let Some((s, e)) = prev {
                    out.extend_from_slice(&buf[s..e]);
                }
                None
            }
        };
    }
    if let Some((s, e)) = run {
        out.extend_from_slice(&buf[s..e]);
    }
}

/// Whether a `Connection` field names `name` (so it is hop-by-hop for this message).
pub fn named_by_connection(buf: &[u8], headers: &[HeaderField], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Connection)
        .any(|h| list_contains(h.value.of(buf), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::http::{parse_request, parse_response};

    fn integration(extra: &str) -> HttpIntegration {
        let src = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:9\"]\n[[route]]\npath = \"/{{*p}}\"\nupstream = \"u\"\n{extra}"
        );
        match config::parse(&src, "t")
            .unwrap()
            .routes
            .remove(0)
            .integration
        {
            config::Integration::Http(h) => h,
            _ => unreachable!(),
        }
    }

    fn forward(raw: &[u8], route: &HttpIntegration) -> String {
        let c = config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t").unwrap();
        let mut head = RequestHead::default();
        assert!(parse_request(raw, &c.http, &mut head).unwrap());
        let mut out = Vec::new();
        request_head(
            &mut out,
            &ForwardRequest {
                buf: raw,
                head: &head,
                route,
                target_authority: b"10.0.0.1:9001",
                client_ip: b"192.0.2.7",
                request_id: b"rid",
                proto: b"http",
                extra: b"",
                drop_conditionals: false,
                validators: b"",
                hidden: [b"", b""],
                api_key_id: None,
                traceparent: b"",
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn removes_hop_by_hop_and_adds_forwarding_headers() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: x\r\nAccept: */*\r\nX-Forwarded-For: 198.51.100.1\r\nX-Request-Id: client\r\n\r\n";
        let out = forward(raw, &integration(""));
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nAccept: */*\r\nhost: 10.0.0.1:9001\r\nx-forwarded-for: 198.51.100.1, 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: api.example.com\r\nx-request-id: rid\r\n\r\n"
        );
    }

    #[test]
    fn rewrites_prefixes_and_host() {
        let raw = b"GET /api/users?x HTTP/1.1\r\nHost: h\r\n\r\n";
        let out = forward(
            raw,
            &integration("strip_prefix = \"/api\"\nadd_prefix = \"/v1\"\npreserve_host = true\n"),
        );
        assert!(
            out.starts_with("GET /v1/users?x HTTP/1.1\r\nhost: h\r\n"),
            "{out}"
        );
        let raw = b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n";
        let out = forward(
            raw,
            &integration("strip_prefix = \"/api\"\nset_host = \"svc.internal\"\n"),
        );
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nhost: svc.internal\r\n"),
            "{out}"
        );
        let raw = b"GET /apix HTTP/1.1\r\nHost: h\r\n\r\n";
        let out = forward(raw, &integration("strip_prefix = \"/api\"\n"));
        assert!(out.starts_with("GET /apix HTTP/1.1\r\n"), "{out}");
    }

    #[test]
    fn response_loses_hop_by_hop_and_gains_request_id() {
        let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok";
        let mut head = ResponseHead::default();
        assert!(parse_response(raw, false, &mut head).unwrap());
        let mut out = Vec::new();
        response_head(
            &mut out,
            raw,
            &head,
            &ForwardResponse {
                request_id: b"rid",
                close: true,
                keep_alive_10: false,
                chunked: false,
                extra: b"",
                cache: b"",
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nx-request-id: rid\r\nconnection: close\r\n\r\n"
        );
    }
}
