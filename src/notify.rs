//! systemd's readiness protocol (`Type=notify`): `READY=1` once the first full pool is ready,
//! `STOPPING=1` when shutdown starts, each a datagram to `$NOTIFY_SOCKET`.
//!
//! Why hand-written: it is one datagram per state change, and the protocol is stable; a crate
//! would add more than it saves. Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.
//! The variable is taken out of the environment the children get (spawn), so no worker speaks for
//! the master.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where systemd listens, if it does: a path, or an abstract name written `@name`.
pub fn socket() -> Option<SocketAddr> {
    let path = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|p| !p.is_empty())?;
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None => SocketAddr::from_pathname(path).ok(),
    }
}

/// Sends one state line (`READY=1`, `STOPPING=1`, `STATUS=...`); failures are logged, never fatal.
pub fn send(target: &SocketAddr, state: &str) {
    let result = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), target));
    match result {
        Ok(_) => log::debug!("event=sd_notify state={state:?}"),
        Err(e) => log::warn!("event=sd_notify_failed state={state:?} error={e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_line_arrives_as_one_datagram() {
        let dir = std::env::temp_dir().join(format!("hurricane-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        send(&SocketAddr::from_pathname(&dir).unwrap(), "READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&dir);
    }
}
