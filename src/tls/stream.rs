//! A TLS stream over a monoio `TcpStream`, driven by a rustls connection: the server side
//! for clients, the client side toward upstreams.
//!
//! Every byte read from the socket goes to rustls before the next read, so no ciphertext
//! is ever stranded in a buffer of our own; the rustls session stays reachable (the peer's
//! certificate for mutual TLS). The two ciphertext buffers are reused for the life of the
//! connection. A stream can be split into a read half and a write half
//! ([`TlsStream::into_split`]) for a tunnel that relays both directions at once.
//!
//! Must not: return plaintext rustls has not authenticated, or swallow a TLS alert:
//! rustls's errors close the connection after its alert is sent (on a split stream, with
//! the write half's next write).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};

/// Whether a failed server handshake was the client's certificate being refused (mutual
/// TLS): none presented where one is required, or one that does not verify.
pub fn refused_client_certificate(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

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
    /// The client closed without sending a byte: a port probe or a TCP health check,
    /// not a failed handshake.
    Closed,
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
            return Ok(Accepted::Closed);
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
        let res = self.read_plain(spare(&mut buf)).await;
        filled(buf, res)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Fill the first non-empty slice; callers loop for more, as with readv(2).
        let Some(dst) = first_spare(&mut buf) else {
            return (Ok(0), buf);
        };
        let res = self.read_plain(dst).await;
        filled_vec(buf, res)
    }
}

impl<C, SD> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = self.write_plain(initialised(&buf)).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = match write_slices(&mut self.conn.writer(), &buf) {
            Ok(n) => self.send_tls().await.map(|()| n),
            Err(e) => Err(e),
        };
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

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Splits the stream into a read half and a write half that can be used at the same
    /// time (by two tasks, or one task waiting on both): a tunnel relays each direction
    /// on its own. The halves share the rustls session; each keeps its own ciphertext
    /// buffer, and neither holds the session across an await.
    ///
    /// What rustls queues while reading (a TLS 1.3 key update's answer, an alert) goes
    /// out with the write half's next write or flush.
    pub fn into_split(self) -> (TlsReadHalf<C>, TlsWriteHalf<C>) {
        use monoio::io::Splitable;
        let conn = Rc::new(RefCell::new(self.conn));
        let (read, write) = self.io.into_split();
        (
            TlsReadHalf {
                io: read,
                conn: conn.clone(),
                incoming: self.incoming,
            },
            TlsWriteHalf {
                io: write,
                conn,
                outgoing: self.outgoing,
            },
        )
    }
}

/// The reading half of a split [`TlsStream`].
pub struct TlsReadHalf<C> {
    io: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<C>>,
    incoming: Vec<u8>,
}

/// The writing half of a split [`TlsStream`].
pub struct TlsWriteHalf<C> {
    io: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<C>>,
    outgoing: Vec<u8>,
}

impl<C, SD> TlsReadHalf<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Plaintext into `dst`, reading from the socket as needed. Ok(0): the stream ended.
    async fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.borrow_mut().reader().read(dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let mut buf = std::mem::take(&mut self.incoming);
            buf.clear();
            buf.reserve(READ_SIZE);
            let (res, buf) = self.io.read(buf).await;
            self.incoming = buf;
            let n = res?;
            let mut conn = self.conn.borrow_mut();
            if n == 0 {
                let _ = conn.read_tls(&mut io::empty());
                return Ok(0);
            }
            let mut pending = &self.incoming[..n];
            while !pending.is_empty() {
                conn.read_tls(&mut pending)?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
    }
}

impl<C, SD> TlsWriteHalf<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Writes everything rustls has queued to the socket.
    async fn send_tls(&mut self) -> io::Result<()> {
        loop {
            let mut out = std::mem::take(&mut self.outgoing);
            out.clear();
            {
                let mut conn = self.conn.borrow_mut();
                if !conn.wants_write() {
                    self.outgoing = out;
                    return Ok(());
                }
                conn.write_tls(&mut out)?;
            }
            let (res, out) = self.io.write_all(out).await;
            self.outgoing = out;
            res?;
        }
    }
}

impl<C, SD> AsyncReadRent for TlsReadHalf<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let res = self.read_plain(spare(&mut buf)).await;
        filled(buf, res)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Fill the first non-empty slice; callers loop for more, as with readv(2).
        let Some(dst) = first_spare(&mut buf) else {
            return (Ok(0), buf);
        };
        let res = self.read_plain(dst).await;
        filled_vec(buf, res)
    }
}

impl<C, SD> AsyncWriteRent for TlsWriteHalf<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let written = self.conn.borrow_mut().writer().write(initialised(&buf));
        let res = match written {
            Ok(n) => self.send_tls().await.map(|()| n),
            Err(e) => Err(e),
        };
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let written = write_slices(&mut self.conn.borrow_mut().writer(), &buf);
        let res = match written {
            Ok(n) => self.send_tls().await.map(|()| n),
            Err(e) => Err(e),
        };
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.borrow_mut().send_close_notify();
        self.send_tls().await?;
        self.io.shutdown().await
    }
}

/// The initialised bytes of `buf`, to write as plaintext.
fn initialised<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: the buffer's initialised bytes, owned by the caller until it returns it.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// Hands every slice of an iovec buffer to rustls as plaintext; the bytes taken.
fn write_slices<T: IoVecBuf>(writer: &mut impl Write, buf: &T) -> io::Result<usize> {
    // SAFETY: the iovec array of `buf` has `read_iovec_len` entries, each pointing at
    // initialised memory the buffer owns until the caller returns it.
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    let mut written = 0;
    for v in iovecs {
        let src = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
        written += writer.write(src)?;
    }
    Ok(written)
}

/// The spare capacity of `buf`, to read plaintext into.
fn spare<T: IoBufMut>(buf: &mut T) -> &mut [u8] {
    // SAFETY: the buffer's spare capacity, owned by the caller until it returns the buffer.
    unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) }
}

/// The first non-empty slice of an iovec buffer, to read plaintext into. The slices before
/// it are empty, so bytes read into it are the first of the whole.
fn first_spare<T: IoVecBufMut>(buf: &mut T) -> Option<&mut [u8]> {
    // SAFETY: the iovec array of `buf` has `write_iovec_len` entries, each pointing at
    // memory the buffer owns and lends to the caller until it is returned.
    let iovecs =
        unsafe { std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()) };
    let first = iovecs.iter().find(|v| v.iov_len > 0)?;
    Some(unsafe { std::slice::from_raw_parts_mut(first.iov_base.cast::<u8>(), first.iov_len) })
}

/// Marks `n` bytes of `buf` filled when the read succeeded, and returns both.
fn filled<T: IoBufMut>(mut buf: T, res: io::Result<usize>) -> BufResult<usize, T> {
    if let Ok(n) = res {
        // SAFETY: the read wrote `n` bytes at the start of the spare capacity.
        unsafe { buf.set_init(n) };
    }
    (res, buf)
}

/// [`filled`], for an iovec buffer.
fn filled_vec<T: IoVecBufMut>(mut buf: T, res: io::Result<usize>) -> BufResult<usize, T> {
    if let Ok(n) = res {
        // SAFETY: the read wrote `n` bytes at the start of the first non-empty slice.
        unsafe { buf.set_init(n) };
    }
    (res, buf)
}

#[cfg(test)]
mod split_tests {
    use super::*;

    /// A self-signed certificate for `localhost`: the server's config and a client config
    /// that trusts it.
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key_der)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    #[test]
    fn split_halves_carry_both_directions_at_once() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let (server_config, client_config) = configs();
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = monoio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let Accepted::Tls(tls) = TlsStream::accept(tcp, server_config).await.unwrap()
                else {
                    panic!("a TLS client was taken for plain HTTP");
                };
                let (mut read, mut write) = tls.into_split();
                // The read half waits for the client while the write half speaks first.
                let reader = monoio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let (n, buf) = read.read(Vec::with_capacity(1024)).await;
                        match n.unwrap() {
                            0 => return got,
                            _ => got.extend_from_slice(&buf),
                        }
                    }
                });
                let (res, _) = write.write_all(b"hello from the server".to_vec()).await;
                res.unwrap();
                let got = reader.await;
                write.shutdown().await.unwrap();
                got
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = TlsStream::connect(tcp, client_config, name).await.unwrap();
            // The server's write arrives while its read half is waiting.
            let (n, buf) = client.read(Vec::with_capacity(1024)).await;
            assert_eq!(&buf[..n.unwrap()], b"hello from the server");
            let (res, _) = client.write_all(b"and from the client".to_vec()).await;
            res.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(server.await, b"and from the client");
        });
    }
}
