//! A validating scanner for `Transfer-Encoding: chunked` bodies.
//!
//! Weir forwards chunked bodies byte for byte; this scanner only decides where the body
//! ends and whether its framing is well formed (RFC 9112 §7.1), counting the data bytes
//! for size limits. It keeps its state between reads, so a body can arrive in any pieces.

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not hex, empty, too many digits, or whitespace where a size should be.
    BadSize,
    /// A chunk extension with bytes that are not allowed, or too long.
    BadExtension,
    /// A line that does not end in CRLF, or data not followed by CRLF.
    BadLineEnd,
    /// A malformed or oversized trailer section.
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// Longest chunk-size line (digits plus extensions) accepted.
const MAX_LINE: u32 = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    digits: u32,
    line_len: u32,
    trailer_len: u32,
    data: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
            data: 0,
        }
    }

    /// True once the last chunk and the trailer section have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes seen so far (excluding framing).
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Scans `input`, returning how many of its bytes belong to the body. Fewer than
    /// `input.len()` only when the body ended inside `input`.
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        if self.state == State::Done {
            // The body has ended: nothing more belongs to it.
            return Ok(0);
        }
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(self.remaining as usize);
                i += take;
                self.remaining -= take as u64;
                self.data += take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size => match hex_value(b) {
                    Some(v) => {
                        self.digits += 1;
                        // 15 hex digits keep the size below 2^60: no overflow, and far
                        // beyond any body limit.
                        if self.digits > 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.remaining = self.remaining << 4 | u64::from(v);
                        State::Size
                    }
                    None if self.digits == 0 => return Err(ChunkError::BadSize),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b';' => {
                            self.line_len = self.digits + 1;
                            State::Extension
                        }
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        _ => return Err(ChunkError::BadSize),
                    },
                },
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkError::BadExtension);
                    }
                    match b {
                        b'\r' => State::SizeLf,
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        b'\t' | b' '..=b'~' | 0x80..=0xff => State::Extension,
                        _ => return Err(ChunkError::BadExtension),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.digits = 0;
                    if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::DataLf => match b {
                    b'\n' => State::Size,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b if super::is_tchar(b) => {
                        self.count_trailer()?;
                        State::TrailerName
                    }
                    _ => return Err(ChunkError::BadTrailer),
                },
                State::TrailerName => {
                    self.count_trailer()?;
                    match b {
                        b':' => State::TrailerValue,
                        b if super::is_tchar(b) => State::TrailerName,
                        _ => return Err(ChunkError::BadTrailer),
                    }
                }
                State::TrailerValue => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                        _ => return Err(ChunkError::BadTrailer),
                    }
                }
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::FinalLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i);
                    }
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::Data | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkError::BadTrailer);
        }
        Ok(())
    }
}

/// Appends the data of a chunked body that [`ChunkedDecoder`] has already validated,
/// without its framing (chunk sizes, extensions, trailers). `None` if it is not one.
pub fn dechunk(mut raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_end = raw[..line_end]
            .iter()
            .position(|&b| b == b';')
            .unwrap_or(line_end);
        let size = raw[..size_end].iter().try_fold(0usize, |acc, &b| {
            Some(acc.checked_mul(16)? + usize::from(hex_value(b)?))
        })?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(());
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Result<(usize, u64), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let n = d.scan(input)?;
        assert!(
            d.is_done(),
            "not done after {:?}",
            String::from_utf8_lossy(input)
        );
        Ok((n, d.data_len()))
    }

    #[test]
    fn scans_a_body_and_stops_at_its_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let (n, data) = whole(body).unwrap();
        assert_eq!(&body[n..], b"GET / HTTP/1.1");
        assert_eq!(data, 11);
    }

    #[test]
    fn nothing_more_belongs_to_a_finished_body() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.scan(b"0\r\n\r\n").unwrap(), 5);
        assert_eq!(d.scan(b"GET / HTTP/1.1\r\n").unwrap(), 0);
        assert!(d.is_done());
    }

    #[test]
    fn accepts_any_split() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new();
            let a = d.scan(&body[..split]).unwrap();
            let b = d.scan(&body[split..]).unwrap();
            assert_eq!(a + b, body.len());
            assert!(d.is_done());
        }
    }

    #[test]
    fn dechunk_keeps_only_the_data() {
        let mut out = Vec::new();
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: yes\r\n\r\n";
        assert_eq!(whole(raw).unwrap().0, raw.len());
        dechunk(raw, &mut out).unwrap();
        assert_eq!(out, b"hello, world");
        assert!(dechunk(b"5\r\nhel", &mut Vec::new()).is_none());
    }

    #[test]
    fn rejects_bad_framing() {
        let bad: &[(&[u8], ChunkError)] = &[
            (b"x\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b" 5\r\nhello\r\n", ChunkError::BadSize),
            (b"5 \r\nhello\r\n", ChunkError::BadSize),
            (b"0x5\r\nhello\r\n", ChunkError::BadSize),
            (b"-5\r\n", ChunkError::BadSize),
            (b"1000000000000000\r\n", ChunkError::BadSize),
            (b"5\nhello\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhelloXX", ChunkError::BadLineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5;a\x00b\r\n", ChunkError::BadExtension),
            (b"0\r\nbad trailer\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n\n", ChunkError::BadTrailer),
            (b"0\r\n\r\r", ChunkError::BadLineEnd),
        ];
        for (input, want) in bad {
            let mut d = ChunkedDecoder::new();
            assert_eq!(
                d.scan(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
