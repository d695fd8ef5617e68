//! HTTP/1.1 codec: strict parsing of request and response heads, chunked framing, and the
//! bytes Weir writes itself (error and mock responses).
//!
//! Owns: RFC 9112 framing decisions. Everything that could make two parties disagree about
//! where a message ends (the request-smuggling family) is rejected here, never guessed.
//! Also owns the runtime specs [`HttpLimits`] and [`Mock`] (re-exported by `config`).
//!
//! Must not: do I/O, allocate per request (parsed heads are offsets into the connection's
//! read buffer, kept in vectors that are reused), or know about routes and upstreams.

pub mod chunked;
pub mod request;
pub mod response;
pub mod write;

#[cfg(test)]
mod fuzz_tests;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use request::{parse_request, Reject, RequestHead};
pub use response::{parse_response, ResponseHead, UpstreamHeadError};
pub use write::Mock;

use std::time::Duration;

/// Client-side HTTP limits and timeouts.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_head: usize,
    pub max_uri: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub max_body: u64,
}

/// A byte class as a table: letters, digits and `extra`. One load per byte, which
/// matters where every byte of every request's `Host` is checked.
const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static TCHAR: [bool; 256] = byte_class(b"!#$%&'*+-.^_`|~");
static HOST_BYTE: [bool; 256] = byte_class(b"-._~!$&'()*+,;=%:[]");

/// `tchar` from RFC 9110 §5.6.2: the bytes allowed in methods and header names.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Bytes allowed in a `Host` value (reg-name, IP literal, port).
#[inline]
pub fn is_host_byte(b: u8) -> bool {
    HOST_BYTE[b as usize]
}

/// A byte range in a buffer. Heads are stored as spans so they can outlive the borrow of
/// the buffer they were parsed from (the buffer moves into I/O operations and back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The span of `part`, which must be a sub-slice of `base`.
    pub fn within(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span::new(start, start + part.len())
    }

    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Headers Weir acts on. Everything else is `Other` and passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRequestId,
    /// `traceparent` (W3C Trace Context): passed on, or replaced when not valid.
    TraceParent,
    /// Keep-Alive, Proxy-*, TE, Trailer, Upgrade: hop-by-hop by definition (RFC 9110 §7.6.1).
    HopByHop,
    /// `X-Client-Cert-*`: written by Weir from a verified client certificate, never taken
    /// from the client.
    ClientCert,
    /// `If-None-Match`, `If-Modified-Since`: dropped when the cache fetches a full response
    /// or sends its own validators.
    Conditional,
}

/// One header line of a parsed head.
#[derive(Debug, Clone, Copy)]
pub struct HeaderField {
    pub name: Span,
    pub value: Span,
    /// The whole line including its CRLF, to copy it unchanged.
    pub line: Span,
    pub kind: HeaderKind,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the upstream closes.
    UntilClose,
}

/// Classifies a header name (any case).
pub fn classify(name: &[u8]) -> HeaderKind {
    let eq = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if eq(b"te") => HeaderKind::HopByHop,
        4 if eq(b"host") => HeaderKind::Host,
        6 if eq(b"expect") => HeaderKind::Expect,
        7 if eq(b"upgrade") || eq(b"trailer") => HeaderKind::HopByHop,
        10 if eq(b"connection") => HeaderKind::Connection,
        10 if eq(b"keep-alive") => HeaderKind::HopByHop,
        11 if eq(b"traceparent") => HeaderKind::TraceParent,
        12 if eq(b"x-request-id") => HeaderKind::XRequestId,
        13 if eq(b"if-none-match") => HeaderKind::Conditional,
        14 if eq(b"content-length") => HeaderKind::ContentLength,
        15 if eq(b"x-forwarded-for") => HeaderKind::XForwardedFor,
        16 if eq(b"x-forwarded-host") => HeaderKind::XForwardedHost,
        17 if eq(b"transfer-encoding") => HeaderKind::TransferEncoding,
        17 if eq(b"x-forwarded-proto") => HeaderKind::XForwardedProto,
        17 if eq(b"if-modified-since") => HeaderKind::Conditional,
        n if n > 6 && name[..6].eq_ignore_ascii_case(b"proxy-") => HeaderKind::HopByHop,
        n if n > 14 && name[..14].eq_ignore_ascii_case(b"x-client-cert-") => HeaderKind::ClientCert,
        _ => HeaderKind::Other,
    }
}

/// Headers a mock integration may not set, because Weir writes them itself.
pub fn is_framing_or_hop_header(lower: &[u8]) -> bool {
    matches!(
        classify(lower),
        HeaderKind::ContentLength
            | HeaderKind::TransferEncoding
            | HeaderKind::Connection
            | HeaderKind::HopByHop
            | HeaderKind::XRequestId
    ) || lower == b"date"
}

/// Whether `v` is a `traceparent` Weir passes on: version `00`, a trace id and a parent
/// id in lower-case hex and not all zeros, and flags (W3C Trace Context §3.2).
pub fn is_valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    v.len() == 55
        && v.starts_with(b"00-")
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..55])
}

/// Does the comma-separated list `value` contain `token` (case-insensitive)?
pub fn list_contains(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim(item).eq_ignore_ascii_case(token))
}

/// Trims optional whitespace (SP and HTAB).
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a Content-Length value: one or more digits, nothing else (no sign, no list).
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The reason phrase Weir writes for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod byte_class_tests {
    #[test]
    fn the_tables_hold_the_rfc_classes() {
        for b in 0..=255u8 {
            let alnum = b.is_ascii_alphanumeric();
            assert_eq!(super::is_tchar(b), alnum || b"!#$%&'*+-.^_`|~".contains(&b));
            assert_eq!(
                super::is_host_byte(b),
                alnum || b"-._~!$&'()*+,;=%:[]".contains(&b)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_any_case() {
        assert_eq!(classify(b"Content-Length"), HeaderKind::ContentLength);
        assert_eq!(classify(b"TRANSFER-ENCODING"), HeaderKind::TransferEncoding);
        assert_eq!(classify(b"Proxy-Authorization"), HeaderKind::HopByHop);
        assert_eq!(classify(b"proxy-"), HeaderKind::Other);
        assert_eq!(classify(b"X-Custom"), HeaderKind::Other);
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"+42"), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b"42, 42"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }
}

#[cfg(test)]
mod traceparent_tests {
    use super::is_valid_traceparent as valid;

    #[test]
    fn only_a_well_formed_version_00_traceparent_is_valid() {
        assert!(valid(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(valid(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(!valid(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
