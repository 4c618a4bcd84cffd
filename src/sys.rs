//! Readings from the kernel: a process's resident memory (/proc) and a listening socket's accept
//! queue (TCP_INFO).
//!
//! Why apart: the master reads memory for `--max-memory`, the probe thread reads both for
//! `/metrics` and `--req-queue-len`. Neither owns the other, so the readings live below both.
//! Nothing here changes any state.

use std::os::fd::RawFd;

use nix::unistd::{SysconfVar, sysconf};

/// Resident memory of a process, from /proc/PID/statm (in pages); None once it is gone.
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    Some(pages * page.max(4096) as u64)
}

/// (current length, maximum) of a listening socket's accept queue, from TCP_INFO: for a socket
/// in LISTEN state Linux reports the queue in tcpi_unacked and the backlog in tcpi_sacked.
pub fn listen_queue(fd: RawFd) -> Option<(u32, u32)> {
    // nix has no TCP_INFO option; this is the one raw getsockopt left.
    // SAFETY: tcp_info is plain old data, so zeroed is a valid value, and getsockopt writes at
    // most `len` bytes into `info`, which is that large.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc, info)
    };
    const TCP_LISTEN: u8 = 10;
    (rc == 0 && info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn readings_of_this_process_and_a_listening_socket() {
        assert!(resident_bytes(std::process::id() as i32).unwrap() > 0);
        assert_eq!(resident_bytes(-1), None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (queued, max) = listen_queue(listener.as_raw_fd()).unwrap();
        assert_eq!(queued, 0);
        assert!(max > 0);
        assert_eq!(listen_queue(-1), None);
    }
}
