//! The responses Weir writes itself: errors, `100 Continue`, mock integrations, and the
//! `Date` header they carry. All of it is appended to a reused buffer; nothing is formatted
//! through `fmt` on the request path.

use super::reason;

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a plain-HTTP request on a TLS port is told, as nginx's "The plain HTTP request
/// was sent to HTTPS port".
pub const PLAIN_HTTP_ON_TLS: &str = "This port expects HTTPS (TLS): use https://";

/// Appends a decimal number.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// What every response Weir writes ends its head with.
pub struct Trailer<'a> {
    /// Empty: write no `Date` (the head has one).
    pub date: &'a [u8],
    pub request_id: &'a [u8],
    /// Tell the client the connection closes after this response.
    pub close: bool,
    /// An HTTP/1.0 client that asked for keep-alive must be told it got it.
    pub keep_alive_10: bool,
    /// Header lines a stage added (each ending in CRLF), e.g. RateLimit fields.
    pub extra: &'a [u8],
}

impl Trailer<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.extra);
        // A stored response carries its origin's Date: none is added then.
        if !self.date.is_empty() {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(self.date);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(self.request_id);
        if self.close {
            out.extend_from_slice(b"\r\nconnection: close");
        } else if self.keep_alive_10 {
            out.extend_from_slice(b"\r\nconnection: keep-alive");
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// An error response with a JSON body, as API Gateway writes them: `{"message":"Not Found"}`.
/// `headers` appends header lines of its own (`Allow`, `Retry-After`), each ending in CRLF.
pub fn error_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: impl FnOnce(&mut Vec<u8>),
    t: &Trailer,
) {
    error_response_saying(out, status, reason(status), headers, t);
}

/// An error response whose message is not the status's reason phrase (API Gateway's
/// `{"message":"Limit Exceeded"}` for an exhausted quota).
pub fn error_response_saying(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    headers: impl FnOnce(&mut Vec<u8>),
    t: &Trailer,
) {
    error_head(out, status, message);
    headers(out);
    t.write(out);
    error_body(out, message);
}

/// The start of an error response's head: status line, type and length of the body
/// [`error_body`] writes for `message`.
pub fn error_head(out: &mut Vec<u8>, status: u16, message: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    push_u64(out, message.len() as u64 + 14);
    out.extend_from_slice(b"\r\n");
}

/// An error response's body: `{"message":"<message>"}`.
pub fn error_body(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"message\":\"");
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\"}");
}

#[derive(Debug, Clone)]
pub struct Mock {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A mock integration's response, rendered once at start-up.
#[derive(Debug, Clone)]
pub struct MockResponse {
    status: u16,
    /// Status line and the configured headers, with content-length.
    head: Vec<u8>,
    body: bytes::Bytes,
}

impl MockResponse {
    pub fn new(mock: &Mock) -> MockResponse {
        let mut head = Vec::new();
        head.extend_from_slice(b"HTTP/1.1 ");
        push_u64(&mut head, u64::from(mock.status));
        head.push(b' ');
        head.extend_from_slice(reason(mock.status).as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in &mock.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"content-length: ");
        push_u64(&mut head, mock.body.len() as u64);
        head.extend_from_slice(b"\r\n");
        MockResponse {
            status: mock.status,
            head,
            body: bytes::Bytes::from(mock.body.clone().into_bytes()),
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The status line and fields, without the trailer every response ends its head with.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The `Date` header value, formatted at most once a second (RFC 9110 §5.6.7 IMF-fixdate).
pub struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            second: u64::MAX,
            text: [b' '; 29],
        }
    }
}

impl DateCache {
    /// The value for Unix second `secs` (formatted again only when the second changes).
    pub fn at(&mut self, secs: u64) -> &[u8] {
        if secs != self.second {
            self.second = secs;
            self.text = imf_fixdate(secs);
        }
        &self.text
    }
}

/// Formats Unix seconds as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (year, month, day) = crate::calendar::civil_from_days(days as i64);
    let (year, month) = (year as u32, month as usize);

    let mut t = [0u8; 29];
    t[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    t[3..5].copy_from_slice(b", ");
    two(&mut t[5..7], day);
    t[7] = b' ';
    t[8..11].copy_from_slice(MONTHS[month - 1]);
    t[11] = b' ';
    two(&mut t[12..14], year / 100);
    two(&mut t[14..16], year % 100);
    t[16] = b' ';
    two(&mut t[17..19], (rem / 3600) as u32);
    t[19] = b':';
    two(&mut t[20..22], (rem % 3600 / 60) as u32);
    t[22] = b':';
    two(&mut t[23..25], (rem % 60) as u32);
    t[25..].copy_from_slice(b" GMT");
    t
}

fn two(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn error_body_matches_its_length() {
        let mut out = Vec::new();
        let t = Trailer {
            date: b"d",
            request_id: b"r",
            close: true,
            keep_alive_10: false,
            extra: b"",
        };
        error_response(&mut out, 404, |_| {}, &t);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, r#"{"message":"Not Found"}"#);
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
    }
}
