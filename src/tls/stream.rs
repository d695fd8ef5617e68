//! A TLS stream over a monoio `TcpStream`, driven by a rustls connection: the server side
//! for clients, the client side toward upstreams.
//!
//! Every byte read from the socket goes to rustls before the next read, so no ciphertext
//! is ever stranded in a buffer of our own; the rustls session stays reachable (the peer's
//! certificate for mutual TLS). The two ciphertext buffers are reused for the life of the
//! connection. Must not: return plaintext rustls has not authenticated, or swallow a
//! TLS alert: rustls's errors close the connection after its alert is sent.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};

/// Ciphertext read from the socket per read: the largest TLS record and its header.
const READ_SIZE: usize = 16 * 1024 + 512;

pub struct TlsStream<C = ServerConnection> {
    io: TcpStream,
    conn: C,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
}

/// What a client opened a connection to a TLS port with.
// Returned once per connection, by value as `TlsStream` itself was: a Box would add an
// allocation to every TLS connection to save a move of the rare plain-HTTP one.
#[allow(clippy::large_enum_variant)]
pub enum Accepted {
    /// A completed handshake.
    Tls(TlsStream),
    /// Plain HTTP: the first byte was a letter (a request method), not a TLS record. The
    /// socket is handed back, with what was read of the request unconsumed, so the caller
    /// can answer in plain HTTP.
    PlainHttp(TcpStream),
}

impl TlsStream<ServerConnection> {
    /// Performs the server side of the handshake, unless the client speaks plain HTTP.
    ///
    /// The handshake's own first read is looked at before rustls is given it: a TLS record
    /// starts with its content type (22 for a ClientHello; SSLv2-style hellos have the
    /// high bit set), an HTTP request with the letter of its method. No extra syscall.
    pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<Accepted> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut s = TlsStream::new(io, conn);
        let n = s.read_tls_from_socket().await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if s.incoming[0].is_ascii_alphabetic() {
            return Ok(Accepted::PlainHttp(s.io));
        }
        s.process_tls(n).await?;
        s.complete_handshake().await.map(Accepted::Tls)
    }
}

impl TlsStream<ClientConnection> {
    /// Performs the client side of the handshake, toward an upstream.
    pub async fn connect(
        io: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        TlsStream::handshake(io, conn).await
    }
}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    fn new(io: TcpStream, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            incoming: Vec::with_capacity(READ_SIZE),
            outgoing: Vec::new(),
        }
    }

    async fn handshake(io: TcpStream, conn: C) -> io::Result<Self> {
        TlsStream::new(io, conn).complete_handshake().await
    }

    async fn complete_handshake(mut self) -> io::Result<Self> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.send_tls().await?;
            } else if self.receive_tls().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // Session tickets and anything else rustls has queued.
        self.send_tls().await?;
        Ok(self)
    }

    /// The rustls session: negotiated parameters and the peer's certificates.
    pub fn session(&self) -> &C {
        &self.conn
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Reads ciphertext from the socket and gives all of it to rustls. 0: end of stream.
    async fn receive_tls(&mut self) -> io::Result<usize> {
        let n = self.read_tls_from_socket().await?;
        self.process_tls(n).await?;
        Ok(n)
    }

    /// Reads ciphertext from the socket into `incoming`. 0: end of stream, told to rustls.
    async fn read_tls_from_socket(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.incoming);
        buf.clear();
        buf.reserve(READ_SIZE);
        let (res, buf) = self.io.read(buf).await;
        self.incoming = buf;
        let n = res?;
        if n == 0 {
            // Tell rustls: a close without close_notify then reads as UnexpectedEof.
            let _ = self.conn.read_tls(&mut io::empty());
        }
        Ok(n)
    }

    /// Gives the `n` bytes read into `incoming` to rustls.
    async fn process_tls(&mut self, n: usize) -> io::Result<()> {
        let mut pending = &self.incoming[..n];
        while !pending.is_empty() {
            self.conn.read_tls(&mut pending)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert rustls prepared, then fail the connection.
                let _ = self.send_tls().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        Ok(())
    }

    /// Writes everything rustls has queued to the socket.
    async fn send_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.outgoing);
            out.clear();
            self.conn.write_tls(&mut out)?;
            let (res, out) = self.io.write_all(out).await;
            self.outgoing = out;
            res?;
        }
        Ok(())
    }

    /// Plaintext into `dst`, reading from the socket as needed. Ok(0): the stream ended.
    async fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: for HTTP, the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.receive_tls().await? == 0 {
                return Ok(0);
            }
            self.send_tls().await?;
        }
    }

    async fn write_plain(&mut self, src: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(src)?;
        self.send_tls().await?;
        Ok(n)
    }
}

impl<C, SD> AsyncReadRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's spare capacity, owned by us until we return it.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        let res = self.read_plain(dst).await;
        if let Ok(n) = res {
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Fill the first non-empty slice; callers loop for more, as with readv(2).
        let iovecs =
            unsafe { std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()) };
        let Some(first) = iovecs.iter().find(|v| v.iov_len > 0) else {
            return (Ok(0), buf);
        };
        let dst =
            unsafe { std::slice::from_raw_parts_mut(first.iov_base.cast::<u8>(), first.iov_len) };
        let res = self.read_plain(dst).await;
        // The slices before `first` are empty, so `n` bytes in are `n` bytes of the whole.
        if let Ok(n) = res {
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl<C, SD> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, owned by us until we return it.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.write_plain(src).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let iovecs =
            unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let mut written = 0;
        for v in iovecs {
            let src = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
            match self.conn.writer().write(src) {
                Ok(n) => written += n,
                Err(e) => return (Err(e), buf),
            }
        }
        let res = self.send_tls().await.map(|()| written);
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.send_tls().await?;
        self.io.shutdown().await
    }
}
