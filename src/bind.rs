//! The app's listening socket: bound here, or taken over from systemd-style socket activation
//! (`LISTEN_FDS`/`LISTEN_PID`).
//!
//! Why apart from the master: it runs once, before anything else, and every way it can fail is a
//! message for the user (address in use, a port that needs privileges, an inherited fd that is not
//! a listening socket), so it reads best as one small function with its errors.

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{Backlog, getsockopt, listen as listen_on, sockopt};

/// Why the app's socket could not be had; each says what to do.
#[derive(Debug)]
pub enum Error {
    /// LISTEN_FDS is set for us but fd 3 is no listening socket.
    NotASocket,
    /// bind(2) failed on this address.
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The socket would not take its options (close-on-exec, the backlog).
    Configure(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotASocket => f.write_str(
                "LISTEN_FDS is set but fd 3 is not a listening socket; unset LISTEN_FDS/LISTEN_PID or fix the socket unit",
            ),
            Error::Bind { addr, error } => match error.kind() {
                ErrorKind::AddrInUse => write!(
                    f,
                    "cannot listen on {addr}: address already in use; stop the other server or pick another --port"
                ),
                ErrorKind::PermissionDenied => write!(
                    f,
                    "cannot listen on {addr}: permission denied; ports below 1024 need privileges, pick another --port"
                ),
                ErrorKind::AddrNotAvailable => write!(
                    f,
                    "cannot listen on {addr}: no such address on this machine; use 0.0.0.0, :: or one of its own addresses"
                ),
                _ => write!(f, "cannot listen on {addr}: {error}"),
            },
            Error::Configure(e) => f.write_str(e),
        }
    }
}

/// The first fd systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: i32 = 3;

/// True when socket activation hands this very process its socket.
fn activated() -> bool {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id())
        && fds.and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) >= 1
}

/// Binds the app socket, or takes it from socket activation; `bind` is an IP address (main checked).
pub fn listen(bind: IpAddr, port: u16, backlog: i32) -> Result<TcpListener, Error> {
    if activated() {
        // SAFETY: socket activation hands fd 3 to this very process (LISTEN_PID is ours), which
        // owns it from now on; nothing else in the process has touched it.
        let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
        if getsockopt(&fd, sockopt::AcceptConn) != Ok(true) {
            std::mem::forget(fd); // not ours to close: whatever it is, leave it be
            return Err(Error::NotASocket);
        }
        // Children get the socket as an explicit fd, never by inheritance.
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| Error::Configure(format!("cannot set close-on-exec on fd 3: {e}")))?;
        return Ok(TcpListener::from(fd));
    }
    let addr = SocketAddr::new(bind, port);
    let listener = TcpListener::bind(addr).map_err(|error| Error::Bind { addr, error })?;
    // Both best effort: a socket without them still serves, a little less cheaply.
    // Wake a worker only once the request's first bytes are here: the worker that accepts is
    // then busy at once, and the next connection's wakeup goes to an idle sibling.
    set_tcp_option(&listener, libc::TCP_DEFER_ACCEPT, 1);
    // Leave the ack of a request's bytes to the response, which carries it anyway: accepted
    // sockets inherit TCP_QUICKACK off from the listener, so the kernel sends no bare ACK for a
    // new connection's first request (HAProxy's `tcp-smart-accept`, on by default for its HTTP
    // frontends). With `Connection: close` that is one packet in ten fewer, and one that costs
    // the *client's* CPU: on loopback a packet is processed on its sender's CPU. A response slower
    // than the delayed-ack timer (40 ms) gets its ACK from that timer, as later requests on a
    // keep-alive connection always have.
    set_tcp_option(&listener, libc::TCP_QUICKACK, 0);
    // std listens with its own backlog; listen(2) again on a listening socket just resizes the
    // queue. The kernel caps it at net.core.somaxconn anyway.
    let backlog = Backlog::new(backlog.clamp(1, libc::SOMAXCONN))
        .map_err(|e| Error::Configure(format!("cannot set --backlog: {e}")))?;
    listen_on(&listener, backlog)
        .map_err(|e| Error::Configure(format!("cannot set --backlog: {e}")))?;
    Ok(listener)
}

/// One IPPROTO_TCP integer option; nix has neither TCP_DEFER_ACCEPT nor TCP_QUICKACK.
fn set_tcp_option(listener: &TcpListener, option: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a local int.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
