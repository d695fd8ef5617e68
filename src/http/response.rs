//! Upstream response heads: parsed into spans, with the framing decided once (RFC 9112 §6.3).
//!
//! An upstream that frames ambiguously (Content-Length with Transfer-Encoding, conflicting
//! lengths) or sends garbage gets a 502 for the client and its connection closed.

use std::mem::MaybeUninit;

use super::{classify, parse_content_length, trim, BodyFraming, HeaderField, HeaderKind, Span};

/// Largest response head accepted from an upstream (nginx `proxy_buffer_size` answers 502
/// past its limit too).
pub const MAX_RESPONSE_HEAD: usize = 32 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHeadError {
    Malformed,
    TooLarge,
    AmbiguousFraming,
}

#[derive(Debug, Default)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub minor_version: u8,
    /// From the status code to the end of the status line, CRLF excluded: `200 OK`.
    pub status_rest: Span,
    pub headers: Vec<HeaderField>,
    pub framing: BodyFraming,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
    pub has_request_id: bool,
    pub connection_names_headers: bool,
}

/// Parses the response head at the start of `buf`. `Ok(false)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    request_is_head: bool,
    head: &mut ResponseHead,
) -> Result<bool, UpstreamHeadError> {
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(UpstreamHeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamHeadError::TooLarge),
        Err(_) => return Err(UpstreamHeadError::Malformed),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(UpstreamHeadError::TooLarge);
    }
    // Status line: "HTTP/1.x " is 9 bytes; httparse has checked it.
    let status_end = buf
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(UpstreamHeadError::Malformed)?;
    if status_end < 12 || buf[status_end - 1] != b'\r' || buf[..9].contains(&b'\n') {
        return Err(UpstreamHeadError::Malformed);
    }
    head.len = len;
    head.status = res.code.unwrap_or(0);
    head.minor_version = res.version.unwrap_or(1);
    head.status_rest = Span::new(9, status_end - 1);
    head.headers.clear();
    head.has_request_id = false;
    head.connection_names_headers = false;

    let mut content_length: Option<u64> = None;
    let mut te_chunked_last: Option<bool> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in res.headers.iter() {
        let name = Span::within(buf, h.name.as_bytes());
        let value = if h.value.is_empty() {
            Span::new(name.end as usize, name.end as usize)
        } else {
            Span::within(buf, h.value)
        };
        let nl = buf[value.end as usize..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| value.end as usize + i)
            .ok_or(UpstreamHeadError::Malformed)?;
        let kind = classify(h.name.as_bytes());
        let v = trim(h.value);
        match kind {
            HeaderKind::ContentLength => {
                let n = parse_content_length(v).ok_or(UpstreamHeadError::AmbiguousFraming)?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(UpstreamHeadError::AmbiguousFraming);
                }
                content_length = Some(n);
            }
            HeaderKind::TransferEncoding => {
                let last = v.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
                te_chunked_last = Some(last.eq_ignore_ascii_case(b"chunked"));
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
            HeaderKind::XRequestId => head.has_request_id = true,
            _ => {}
        }
        head.headers.push(HeaderField {
            name,
            value,
            line: Span::new(name.start as usize, nl + 1),
            kind,
        });
    }

    let status = head.status;
    head.framing =
        if (100..200).contains(&status) || status == 204 || status == 304 || request_is_head {
            BodyFraming::None
        } else {
            match (te_chunked_last, content_length) {
                (Some(_), Some(_)) => return Err(UpstreamHeadError::AmbiguousFraming),
                (Some(true), None) => BodyFraming::Chunked,
                (Some(false), None) => BodyFraming::UntilClose,
                (None, Some(n)) => BodyFraming::Length(n),
                (None, None) => BodyFraming::UntilClose,
            }
        };
    head.keep_alive = !conn_close
        && (head.minor_version == 1 || conn_keep_alive)
        && head.framing != BodyFraming::UntilClose;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], is_head: bool) -> Result<ResponseHead, UpstreamHeadError> {
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, is_head, &mut h)?);
        Ok(h)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).unwrap();
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, BodyFraming::None);
        let h = parse(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(!h.keep_alive);
        let h = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, BodyFraming::None);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn ambiguous_framing_is_an_error() {
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(both, false).unwrap_err(),
            UpstreamHeadError::AmbiguousFraming
        );
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(
            parse(two, false).unwrap_err(),
            UpstreamHeadError::AmbiguousFraming
        );
        assert_eq!(
            parse(b"HTTP/1.1 2000 OK\r\n\r\n", false).unwrap_err(),
            UpstreamHeadError::Malformed
        );
    }
}
