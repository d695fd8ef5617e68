//! The request path. One task per client connection drives both directions. Follow a
//! request through these files, in this order:
//!
//! 1. `conn.rs`: the connection's keep-alive loop reads a request head into its reused
//!    buffer, takes the generation serving now, and ends every request in one place with
//!    its record ([`crate::observe::Record`]);
//! 2. `exchange.rs`: routes the request ([`crate::router`]), then runs the route's
//!    pipeline ([`crate::stages`]: API key, throttle, cache), each stage continuing,
//!    answering or waiting, then the route's integration: a mock, or
//! 3. `forward.rs`: the HTTP integration (targets, retries, the relay), with `body.rs`
//!    for the request body and `refresh.rs` for a cache entry refreshed in the background;
//! 4. `respond.rs`: every response written to the client goes through it.
//!
//! Must not: allocate per request (buffers come from the worker and are reused), log per
//! request, or let one request's failure reach another connection: every error becomes a
//! status for this client or a close of this connection.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::worker::{Generation, Worker};
use conn::Connection;

mod body;
mod conn;
mod exchange;
mod forward;
mod refresh;
mod respond;

/// Serves one client connection until it closes. `stream` is plain TCP or TLS over TCP
/// (`proto` says which, for `X-Forwarded-Proto`).
pub async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    worker: Rc<Worker>,
    gen: Rc<Generation>,
    listener: SocketAddr,
    stream: S,
    peer: SocketAddr,
    proto: &'static [u8],
    client_cert: Vec<u8>,
) {
    // The listener's index in a generation is found per request (`Connection::run`).
    let mut conn = Connection::new(worker, gen, listener, stream, peer, proto);
    conn.client_cert = client_cert;
    conn.run().await;
    if let Some(series) = &conn.gen.series {
        if let Some(index) = conn.gen.gateway.listener_at(listener) {
            series.listeners[index].closed();
        }
    }
    conn.release();
}

/// Answers plain HTTP sent to a TLS port: 400 with a JSON message and `connection: close`,
/// then a lingering close. The request is not parsed: the first byte (a letter, not a TLS
/// record) is all the evidence there is, and the connection ends either way.
pub async fn refuse_plain_http(
    worker: Rc<Worker>,
    gen: Rc<Generation>,
    listener: SocketAddr,
    tcp: monoio::net::TcpStream,
    peer: SocketAddr,
) {
    use monoio::io::AsyncWriteRent;
    /// How long, and how much, of the rest of the request is read and dropped after the
    /// answer, so that closing with unread bytes does not reset the connection (which can
    /// destroy the answer before the client reads it).
    const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
    const LINGER_BYTES: usize = 1 << 20;

    let mut conn = Connection::new(worker, gen, listener, tcp, peer, b"http");
    let sent = conn.refuse_plain_http().await;
    if sent && conn.stream.shutdown().await.is_ok() {
        let _ = monoio::time::timeout(LINGER, conn.drain_input(LINGER_BYTES)).await;
    }
    if let Some(series) = &conn.gen.series {
        if let Some(index) = conn.gen.gateway.listener_at(listener) {
            series.listeners[index].closed();
        }
    }
    conn.release();
}

#[cfg(test)]
mod size_guard {
    /// Every idle keep-alive connection holds one of these futures: its size is most of
    /// what an idle connection costs (see perf/results for the measured KiB per connection).
    #[test]
    fn the_connection_task_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            c.set_nonblocking(true).unwrap();
            let s = monoio::net::TcpStream::from_std(c).unwrap();
            let cfg =
                crate::config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t").unwrap();
            let registry = crate::registry::Registry::new().unwrap();
            let bus = std::sync::Arc::new(crate::cache::Bus::new(1));
            let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            let gw = crate::gateway::Gateway::new(cfg, 1, vec![addr], bus, &mut registry.next());
            let published = crate::worker::Published::new(std::sync::Arc::new(gw.unwrap()), 1);
            let w = std::rc::Rc::new(crate::worker::Worker::new(0, published.into(), 1, 1));
            let gen = w.generation();
            let fut = super::serve(w, gen, addr, s, addr, b"http", Vec::new());
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 4096, "the connection future grew to {size} bytes");
        });
    }
}
