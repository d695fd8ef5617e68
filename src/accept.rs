//! A worker's event loop: one accept loop per listener, the tick that takes up reloads
//! (new listeners accepted on, removed ones stopped) and keeps the clock in step, and the
//! drain at shutdown. Each accepted connection (after its TLS handshake, on a TLS
//! listener) goes to [`crate::proxy::serve`].
//!
//! Must not: block the worker's thread, or touch a connection after handing it over. A
//! failed TLS handshake is logged here (a client certificate refused at WARN, anything
//! else at INFO: clients fail handshakes all the time), rate-limited per listener.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::worker::Worker;

/// An accept loop's stop signal, for a listener a reload removed.
#[derive(Default)]
struct StopAccepting {
    stopped: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The listeners this worker accepts on, by bound address.
type Accepting = RefCell<Vec<(SocketAddr, Rc<StopAccepting>)>>;

/// Serves `listeners` until `shutdown` is set, then drains: stops accepting, lets
/// in-flight requests finish up to the drain timeout, and returns.
pub async fn run(
    worker: Rc<Worker>,
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    shutdown: Arc<AtomicBool>,
    blocking: bool,
) {
    let accepting = Accepting::default();
    for (addr, std_listener) in listeners {
        start_accepting(&worker, &accepting, addr, std_listener, blocking);
    }
    // The signal arrives on the main thread; a 100 ms poll is ten wake-ups a second,
    // and keeps cross-thread wake-ups (a global mutex in monoio) off the request path.
    // Reloads are taken up at the same tick.
    while !shutdown.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_millis(100)).await;
        follow_reloads(&worker, &accepting, blocking);
    }
    worker.start_drain();
    let deadline = Instant::now() + worker.generation().gateway.config.server.drain_timeout;
    while worker.in_flight() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.log_batches.borrow_mut().flush();
    if worker.in_flight() > 0 {
        crate::warn!(
            "worker {}: drain timeout with {} requests in flight",
            worker.id,
            worker.in_flight()
        );
    }
}

fn start_accepting(
    worker: &Rc<Worker>,
    accepting: &Accepting,
    addr: SocketAddr,
    socket: std::net::TcpListener,
    blocking: bool,
) {
    // io_uring wants blocking sockets (it polls internally); epoll non-blocking ones.
    let _ = socket.set_nonblocking(!blocking);
    match monoio::net::TcpListener::from_std(socket) {
        Ok(l) => {
            let stop = Rc::new(StopAccepting::default());
            accepting.borrow_mut().push((addr, stop.clone()));
            monoio::spawn(accept_loop(worker.clone(), addr, l, stop));
        }
        Err(e) => crate::error!("worker {}: cannot use listener {addr}: {e}", worker.id),
    }
}

/// At each tick: takes up a published generation, accepts on the listeners it added,
/// and stops accepting on those it removed (their connections finish their current
/// request, then close).
fn follow_reloads(worker: &Rc<Worker>, accepting: &Accepting, blocking: bool) {
    // The tick also keeps the clock's wall offset in step with the system clock, and
    // hands this worker's access log lines to their writers.
    crate::clock::resync();
    worker.log_batches.borrow_mut().flush();
    while let Some((addr, socket)) = worker.take_new_listener() {
        start_accepting(worker, accepting, addr, socket, blocking);
    }
    let gen = worker.generation();
    accepting.borrow_mut().retain(|(addr, stop)| {
        let keep = gen.gateway.listener_at(*addr).is_some();
        if !keep {
            stop.stopped.set(true);
            if let Some(w) = stop.waker.borrow_mut().take() {
                w.wake();
            }
        }
        keep
    });
}

async fn accept_loop(
    worker: Rc<Worker>,
    addr: SocketAddr,
    listener: monoio::net::TcpListener,
    removed: Rc<StopAccepting>,
) {
    let mut stop = std::pin::pin!(worker.drained());
    let mut removed = std::pin::pin!(Removed(removed));
    loop {
        monoio::select! {
            _ = &mut stop => break,
            _ = &mut removed => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Heads and bodies are written whole: Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    // The listener's settings (TLS) as the serving generation has them.
                    let gen = worker.generation();
                    let Some(index) = gen.gateway.listener_at(addr) else {
                        continue;
                    };
                    if let Some(series) = &gen.series {
                        series.listeners[index].accepted();
                    }
                    match &gen.gateway.tls[index] {
                        None => {
                            monoio::spawn(crate::proxy::serve(
                                worker.clone(),
                                gen.clone(),
                                addr,
                                stream,
                                peer,
                                b"http",
                                Vec::new(),
                            ));
                        }
                        Some(tls) => {
                            let config = tls.config.clone();
                            let deadline = tls.handshake_timeout;
                            let mutual = tls.mutual;
                            let worker = worker.clone();
                            let gen = gen.clone();
                            monoio::spawn(async move {
                                let handshake = crate::tls::TlsStream::accept(stream, config);
                                // A failed or stalled handshake (an unknown protocol version,
                                // silence) just closes the connection, with a line in the
                                // error log; plain HTTP is told why.
                                match monoio::time::timeout(deadline, handshake).await {
                                    Ok(Ok(crate::tls::Accepted::Tls(tls))) => {
                                        if let Some(series) = &gen.series {
                                            let kind = tls.session().handshake_kind();
                                            let resumed = kind == Some(rustls::HandshakeKind::Resumed);
                                            series.listeners[index].handshake(Some(resumed));
                                        }
                                        let client_cert = if mutual {
                                            crate::tls::client_cert_headers(tls.session())
                                        } else {
                                            Vec::new()
                                        };
                                        crate::proxy::serve(worker, gen, addr, tls, peer, b"https", client_cert).await;
                                    }
                                    Ok(Ok(crate::tls::Accepted::PlainHttp(tcp))) => {
                                        crate::proxy::refuse_plain_http(worker, gen, addr, tcp, peer).await;
                                    }
                                    failed => {
                                        if let Some(series) = &gen.series {
                                            // A connection closed before any byte is no
                                            // handshake at all.
                                            if !matches!(failed, Ok(Ok(_))) {
                                                series.listeners[index].handshake(None);
                                            }
                                            series.listeners[index].closed();
                                        }
                                        match failed {
                                            Ok(Ok(_)) => {}
                                            Ok(Err(e)) => log_handshake_failure(&gen, index, peer, &e),
                                            Err(_) => {
                                                let name = &gen.gateway.config.listeners[index].name;
                                                crate::info_limited!(key = addr;
                                                    "listener `{name}`: TLS handshake failed from {}: \
                                                     timed out after {deadline:?}",
                                                    peer.ip()
                                                );
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    crate::error!("worker {}: accept failed: {e}", worker.id);
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Dropping the listener here closes this worker's socket, so the kernel sends new
    // connections to no one rather than to a worker that will not accept them.
}

/// One rate-limited line for a client's failed handshake on listener `index`, keyed by
/// the listener (not the client: there is no bound on clients).
#[cold]
fn log_handshake_failure(
    gen: &crate::worker::Generation,
    index: usize,
    peer: SocketAddr,
    e: &std::io::Error,
) {
    let name = &gen.gateway.config.listeners[index].name;
    let key = gen.gateway.bound[index];
    if crate::tls::refused_client_certificate(e) {
        // rustls's reason: `peer sent no certificates`, `invalid peer certificate: ...`.
        crate::warn_limited!(key = key;
            "listener `{name}`: client certificate refused from {}: {e}",
            peer.ip()
        );
    } else {
        crate::info_limited!(key = key;
            "listener `{name}`: TLS handshake failed from {}: {e}",
            peer.ip()
        );
    }
}

/// Resolves when a reload removed the listener.
struct Removed(Rc<StopAccepting>);

impl Future for Removed {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.stopped.get() {
            Poll::Ready(())
        } else {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
