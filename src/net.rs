//! Socket helpers shared by the client and upstream sides: appending reads into a reused
//! buffer, the liveness peek for pooled connections, listener sockets, and CPU pinning.
//!
//! Must not: block. Every call here is either an io_uring/epoll operation through monoio
//! or a non-blocking syscall.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

/// Reads into the spare capacity of `buf`, after what it already holds, reserving at least
/// `min_spare` bytes first. Returns the bytes read (0 at end of stream).
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: BytesMut,
    min_spare: usize,
) -> (io::Result<usize>, BytesMut) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let slice: SliceMut<BytesMut> = buf.slice_mut(len..cap);
    let (res, slice) = stream.read(slice).await;
    (res, slice.into_inner())
}

/// Is an idle pooled connection still usable? A non-blocking peek: end of stream, an error,
/// or unexpected bytes mean the upstream closed it or broke protocol while it sat idle.
pub fn idle_connection_alive(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv into a one-byte local; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Checks that nobody else holds `addr` before this process binds it with SO_REUSEPORT,
/// and resolves port 0 to a free port. Returns the address to bind the workers' group on.
///
/// SO_REUSEPORT lets every socket of the same user join a group on one address, so
/// binding the group alone would let a second Weir (or anything else with SO_REUSEPORT)
/// share the port and split its traffic. A bind WITHOUT SO_REUSEPORT fails with
/// EADDRINUSE while any socket listens on the address, reuse-port or not, so this socket
/// is bound once, then closed before the group binds. SO_REUSEADDR is set so a restart
/// is not refused for the previous run's connections in TIME_WAIT.
///
/// A race remains: two processes starting at the same instant can both pass this check
/// before either binds its group, and then share the port. Closing it would need the
/// kernel to refuse a second group, which SO_REUSEPORT does not offer for one user.
pub fn claim_address(addr: SocketAddr) -> io::Result<SocketAddr> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"))?;
    // Dropped here: the address is free again for the group to bind.
    Ok(bound)
}

/// Binds a listening socket with SO_REUSEPORT, so each worker can own one on the same
/// address and the kernel spreads connections across them.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
