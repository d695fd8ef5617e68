//! Telling a service manager what the process is doing: the systemd notify protocol
//! (sd_notify(3)) spoken directly, with no libsystemd. When `$NOTIFY_SOCKET` names a Unix
//! datagram socket (a path, or an abstract name written `@name`), each change of state is
//! one datagram of `KEY=VALUE` lines to it: ready once every listener is bound and every
//! worker serves, reloading and ready again around each reload (what `Type=notify-reload`
//! waits for), and stopping when a drain begins.
//!
//! Owns: finding the socket, the message text, sending it. Must not: fail or stop Weir (a
//! notification that cannot be sent is a warning, logged once; the gateway serves on),
//! wait long (a manager whose queue stays full gets [`SEND_TIMEOUT`], then a warning), or
//! be called on the request path. With no `$NOTIFY_SOCKET` every function here does nothing.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest a notification waits for room in the manager's socket queue: a stuck
/// manager must not stall a reload or a drain.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Start-up is done: every listener is bound and every worker serves. `status` is the
/// one line `systemctl status` shows.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={status}",
        std::process::id()
    ));
}

/// A reload begins. The monotonic time lets systemd tell this reload from one it asked
/// for earlier (`Type=notify-reload` ignores a RELOADING=1 older than its own request).
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        monotonic_usec()
    ));
}

/// A reload ended, whatever its outcome: the gateway serves (the new generation, or the
/// old one when the reload failed, as `status` says).
pub fn reloaded(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A drain begins: the process will exit on its own.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}

/// Sends `message` to `$NOTIFY_SOCKET`, if it is set.
fn notify(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, message) {
        // Once: a socket that is gone stays gone, and every reload would repeat it.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            crate::warn!(
                "cannot notify the service manager at NOTIFY_SOCKET={}: {e}; Weir serves on, \
                 but the manager may not see it ready, reloading or stopping",
                target.to_string_lossy()
            );
        }
    }
}

/// Sends one datagram to `target`: an absolute path, or `@name` for the abstract
/// namespace (the `@` stands for the leading NUL byte).
pub fn send_to(target: &OsStr, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    let bytes = target.as_bytes();
    let sent = match bytes.first() {
        Some(b'@') => {
            let addr = SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(message.as_bytes(), &addr)?
        }
        Some(b'/') => socket.send_to(message.as_bytes(), target)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract socket name",
            ))
        }
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with
/// (`std::time::Instant` reads the same clock but does not expose its value).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let path = std::env::temp_dir().join(format!("weir-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\nSTATUS=x").unwrap();
        assert_eq!(received(&socket), "READY=1\nSTATUS=x");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("weir-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(received(&socket), "STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_target_and_a_missing_socket() {
        assert!(send_to(OsStr::new("relative/notify"), "READY=1").is_err());
        assert!(send_to(OsStr::new(""), "READY=1").is_err());
        assert!(send_to(OsStr::new("/nonexistent/weir/notify"), "READY=1").is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
