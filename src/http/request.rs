//! Request heads: httparse for the grammar, then the RFC 9112 checks httparse leaves to us.
//!
//! httparse accepts bare LF line endings and says nothing about Host, Content-Length or
//! Transfer-Encoding; a proxy that forwards what its upstream may read differently is a
//! smuggling vector, so every such case is a [`Reject`] here.

use std::mem::MaybeUninit;

use super::{classify, parse_content_length, trim, BodyFraming, HeaderField, HeaderKind, Span};
use super::{is_host_byte, HttpLimits};

/// The most header fields a request may have, whatever the config says.
pub const MAX_HEADERS: usize = 128;

/// A request Weir refuses, with the status to answer and a reason for operators.
/// Every reject closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub why: &'static str,
}

const fn bad(why: &'static str) -> Reject {
    Reject { status: 400, why }
}

/// A parsed request head: spans into the connection's read buffer.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Length of the head, including the blank line.
    pub len: usize,
    pub method: Span,
    /// The request line without its CRLF.
    pub request_line: Span,
    pub target: Span,
    /// The path used for routing (no query); see [`RequestHead::path`].
    path: Span,
    /// An absolute-form target with no path (`GET http://h HTTP/1.1`) routes as `/`.
    implied_root: bool,
    /// `?query`, or empty.
    pub query: Span,
    /// The request-target was in absolute form; the upstream gets origin form.
    pub absolute_form: bool,
    pub minor_version: u8,
    pub headers: Vec<HeaderField>,
    /// Host from an absolute-form target, else from the Host header; empty if none.
    pub host: Span,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The Connection header names other headers, which must not be forwarded.
    pub connection_names_headers: bool,
    /// A usable client-supplied X-Request-Id.
    pub request_id: Option<Span>,
    /// The client's `traceparent`, when it sent exactly one and it is valid.
    pub traceparent: Option<Span>,
    /// How many `traceparent` fields the client sent.
    pub traceparents: u8,
}

impl RequestHead {
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        if self.implied_root {
            b"/"
        } else {
            self.path.of(buf)
        }
    }

    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method.of(buf) == b"HEAD"
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        matches!(
            self.method.of(buf),
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }

    pub fn has_body(&self) -> bool {
        !matches!(self.framing, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// Parses the head at the start of `buf` into `head`.
///
/// `Ok(false)`: incomplete, read more. `Ok(true)`: `head` is filled in. `Err`: answer
/// `status` and close. `buf` is never longer than the caller's read limit, so an
/// incomplete head that fills it is too large.
pub fn parse_request(
    buf: &[u8],
    limits: &HttpLimits,
    head: &mut RequestHead,
) -> Result<bool, Reject> {
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let len = match req.parse_with_uninit_headers(buf, &mut raw[..max_headers]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject {
                status: 431,
                why: "too many header fields",
            })
        }
        Err(httparse::Error::Version) => {
            return Err(Reject {
                status: 505,
                why: "unsupported HTTP version",
            })
        }
        Err(httparse::Error::HeaderName) => {
            return Err(bad(
                "invalid header name (or whitespace before a colon, or obs-fold)",
            ))
        }
        Err(httparse::Error::HeaderValue) => return Err(bad("invalid header value")),
        Err(httparse::Error::Token) => return Err(bad("invalid method")),
        Err(httparse::Error::NewLine) => return Err(bad("bare CR or LF")),
        Err(_) => return Err(bad("malformed request line")),
    };
    if len > limits.max_head {
        return Err(Reject {
            status: 431,
            why: "request head too large",
        });
    }

    let method = req.method.unwrap_or_default().as_bytes();
    let target = req.path.unwrap_or_default().as_bytes();
    let method_span = Span::within(buf, method);
    // Only CRLFs may precede the request line (RFC 9112 §2.2).
    if !buf[..method_span.start as usize]
        .chunks(2)
        .all(|c| c == b"\r\n")
    {
        return Err(bad("bare LF before the request line"));
    }
    let request_line_end = line_end(buf, method_span.end as usize)?;
    if !buf[len - 4..len].eq(b"\r\n\r\n") {
        return Err(bad("head does not end with CRLF CRLF"));
    }
    if target.len() > limits.max_uri {
        return Err(Reject {
            status: 414,
            why: "request target too long",
        });
    }

    head.len = len;
    head.method = method_span;
    head.request_line = Span::new(method_span.start as usize, request_line_end - 2);
    head.target = Span::within(buf, target);
    head.minor_version = req.version.unwrap_or(1);
    head.headers.clear();
    head.host = Span::EMPTY;
    head.request_id = None;
    head.traceparent = None;
    head.traceparents = 0;
    head.connection_names_headers = false;
    head.absolute_form = false;
    head.implied_root = false;

    let mut host_count = 0;
    let mut cl_count = 0;
    let mut content_length = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;

    for h in req.headers.iter() {
        let name = Span::within(buf, h.name.as_bytes());
        let value = if h.value.is_empty() {
            Span::new(name.end as usize, name.end as usize)
        } else {
            Span::within(buf, h.value)
        };
        let end = line_end(buf, value.end as usize)?;
        let kind = classify(h.name.as_bytes());
        let v = trim(h.value);
        match kind {
            HeaderKind::Host => {
                host_count += 1;
                if !v.iter().all(|&b| is_host_byte(b)) {
                    return Err(bad("invalid Host"));
                }
                // An empty value has no position of its own: point at the raw value.
                head.host = if v.is_empty() {
                    Span::new(value.start as usize, value.start as usize)
                } else {
                    Span::within(buf, v)
                };
            }
            HeaderKind::ContentLength => {
                cl_count += 1;
                content_length = parse_content_length(v).ok_or(bad("invalid Content-Length"))?;
            }
            HeaderKind::TransferEncoding => {
                te_count += 1;
                te = Some(v);
            }
            HeaderKind::Connection => {
                for token in v.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else if !token.is_empty() {
                        head.connection_names_headers = true;
                    }
                }
            }
            HeaderKind::Expect => {
                if v.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(Reject {
                        status: 417,
                        why: "unsupported expectation",
                    });
                }
            }
            HeaderKind::XRequestId
                if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()) =>
            {
                head.request_id = Some(Span::within(buf, v));
            }
            HeaderKind::TraceParent => {
                // Two are as good as none (W3C Trace Context §3.2): replaced.
                head.traceparents = head.traceparents.saturating_add(1);
                head.traceparent = (head.traceparents == 1 && crate::http::is_valid_traceparent(v))
                    .then(|| Span::within(buf, v));
            }
            _ => {}
        }
        head.headers.push(HeaderField {
            name,
            value,
            line: Span::new(name.start as usize, end),
            kind,
        });
    }

    let http11 = head.minor_version == 1;
    if (http11 && host_count != 1) || host_count > 1 {
        return Err(bad("an HTTP/1.1 request needs exactly one Host"));
    }
    head.framing = match (te, cl_count) {
        (Some(_), _) if !http11 => return Err(bad("Transfer-Encoding in an HTTP/1.0 request")),
        (Some(_), n) if n > 0 => return Err(bad("both Transfer-Encoding and Content-Length")),
        (Some(_), _) if te_count > 1 => return Err(bad("more than one Transfer-Encoding")),
        (Some(v), _) if v.eq_ignore_ascii_case(b"chunked") => BodyFraming::Chunked,
        (Some(v), _) if last_coding_is_chunked(v) => {
            return Err(Reject {
                status: 501,
                why: "transfer codings other than chunked",
            })
        }
        (Some(_), _) => return Err(bad("Transfer-Encoding does not end in chunked")),
        (None, 0) => BodyFraming::None,
        (None, 1) => BodyFraming::Length(content_length),
        (None, _) => return Err(bad("more than one Content-Length")),
    };
    head.keep_alive = if http11 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    // An HTTP/1.0 client cannot understand 100 Continue (RFC 9110 §10.1.1).
    head.expect_continue = expect_continue && http11 && head.has_body();

    split_target(buf, head, method)?;
    Ok(true)
}

/// An incomplete head: wait for more, or refuse it if it can no longer fit.
fn incomplete(buf: &[u8], limits: &HttpLimits) -> Result<bool, Reject> {
    let line_done = buf.contains(&b'\n');
    // Refuse an over-long request line as soon as it is certain, not when the buffer fills.
    if !line_done && buf.len() > limits.max_uri + 32 {
        return Err(Reject {
            status: 414,
            why: "request target too long",
        });
    }
    if buf.len() >= limits.max_head {
        return Err(Reject {
            status: 431,
            why: "request head too large",
        });
    }
    Ok(false)
}

/// The index just past the LF ending the line that contains `from`; the LF must follow a CR.
fn line_end(buf: &[u8], from: usize) -> Result<usize, Reject> {
    let nl = buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)
        .ok_or(bad("unterminated line"))?;
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(bad("bare LF"));
    }
    Ok(nl + 1)
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// Splits the request target into path and query, handling absolute form, and rejects
/// targets that could be routed one way and resolved another.
fn split_target(buf: &[u8], head: &mut RequestHead, method: &[u8]) -> Result<(), Reject> {
    let target = head.target.of(buf);
    let start = head.target.start as usize;
    if target.contains(&b'#') {
        return Err(bad("fragment in request target"));
    }
    let path_start = if target.first() == Some(&b'/') {
        start
    } else if let Some(scheme_len) = absolute_scheme_len(target) {
        // RFC 9112 §3.2.2: the target's authority replaces Host.
        let rest = &target[scheme_len..];
        let auth_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = &rest[..auth_len];
        if authority.is_empty()
            || authority.contains(&b'@')
            || !authority.iter().all(|&b| is_host_byte(b))
        {
            return Err(bad("invalid authority in absolute-form target"));
        }
        head.host = Span::new(start + scheme_len, start + scheme_len + auth_len);
        head.absolute_form = true;
        start + scheme_len + auth_len
    } else if target == b"*" && method == b"OPTIONS" {
        head.path = head.target;
        head.query = Span::EMPTY;
        return Ok(());
    } else {
        return Err(bad("request target must be a path or an absolute URI"));
    };
    let end = head.target.end as usize;
    let q = buf[path_start..end]
        .iter()
        .position(|&b| b == b'?')
        .map_or(end, |i| path_start + i);
    head.path = Span::new(path_start, q);
    head.query = Span::new(q, end);
    head.implied_root = path_start == q;
    if !head.implied_root && buf[path_start] != b'/' {
        return Err(bad("path must start with /"));
    }
    if has_dot_segment(head.path.of(buf)) {
        return Err(bad("dot segment in path"));
    }
    Ok(())
}

fn absolute_scheme_len(target: &[u8]) -> Option<usize> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(scheme.len());
        }
    }
    None
}

/// `.` or `..` segments, plain or percent-encoded. Weir routes on the raw path, so a path
/// that an upstream would normalise into another route is refused rather than guessed at.
fn has_dot_segment(path: &[u8]) -> bool {
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return false;
    }
    path.split(|&b| b == b'/').any(|seg| {
        let mut dots = 0;
        let mut i = 0;
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg.len() - i >= 3
                && seg[i] == b'%'
                && seg[i + 1..i + 3].eq_ignore_ascii_case(b"2e")
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn limits() -> HttpLimits {
        config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t")
            .unwrap()
            .http
    }

    fn parse(raw: &[u8]) -> Result<RequestHead, Reject> {
        let mut head = RequestHead::default();
        match parse_request(raw, &limits(), &mut head)? {
            true => Ok(head),
            false => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn status(raw: &[u8]) -> u16 {
        match parse(raw) {
            Ok(_) => 0,
            Err(r) => r.status,
        }
    }

    #[test]
    fn parses_a_simple_request() {
        let raw = b"GET /users/7?x=1 HTTP/1.1\r\nHost: api.example.com\r\nX-A: b\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(h.len, raw.len());
        assert_eq!(h.path(raw), b"/users/7");
        assert_eq!(h.query.of(raw), b"?x=1");
        assert_eq!(h.host.of(raw), b"api.example.com");
        assert_eq!(h.headers[1].line.of(raw), b"X-A: b\r\n");
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::None);
    }

    #[test]
    fn absolute_form_sets_host_and_path() {
        let raw = b"GET http://a.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(h.host.of(raw), b"a.example:8080");
        assert_eq!(h.path(raw), b"/p");
        let raw = b"GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n";
        assert_eq!(parse(raw).unwrap().path(raw), b"/");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn rejects_smuggling_shapes() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",
            b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a/%2E%2e/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        ];
        for raw in cases {
            assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(
            status(b"GET /a/.well-known/b..c HTTP/1.1\r\nHost: a\r\n\r\n"),
            0
        );
    }

    #[test]
    fn limits_give_414_and_431() {
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(long_uri.as_bytes()), 414);
        let mut head = RequestHead::default();
        let partial = vec![b'a'; 9000];
        assert_eq!(
            parse_request(&partial, &limits(), &mut head)
                .unwrap_err()
                .status,
            414
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "b".repeat(17000));
        assert_eq!(
            parse_request(&big.as_bytes()[..16384], &limits(), &mut head)
                .unwrap_err()
                .status,
            431
        );
    }
}
