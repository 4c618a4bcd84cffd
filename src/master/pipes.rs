//! The master's side of each process's two pipes: reading status lines, writing control bytes.
//!
//! Why apart from the loop: this is the only I/O on a worker's pipes, it never blocks (a full
//! control pipe keeps its bytes and is written when it drains, an EOF closes the status pipe), and
//! it is the same for workers and --preload zygotes.

use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Poll};
use nix::errno::Errno;

use crate::protocol;
use crate::spawn;

use super::source::Source;

/// A running worker process as the master sees it: its pipes and their buffers.
pub struct Proc {
    pub pid: i32,
    pub status: Option<OwnedFd>,
    pub status_buf: Vec<u8>,
    pub control: OwnedFd,
    /// Bytes still to write to the control pipe (the bootstrap, if the pipe was full).
    pub control_out: Vec<u8>,
    /// Requests in flight, as of its last heartbeat.
    pub inflight: u64,
}

/// Non-blocking reads from one worker's status pipe; returns complete lines. EOF closes the pipe.
pub fn read_status(poll: &Poll, proc_: &mut Proc) -> Vec<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    while let Some(fd) = &proc_.status {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(n) if n > 0 => {
                proc_.status_buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Ok(_) | Err(_) => {}
        }
        let raw = fd.as_raw_fd();
        let _ = poll.registry().deregister(&mut SourceFd(&raw));
        proc_.status = None;
    }
    protocol::take_lines(&mut proc_.status_buf)
}

/// Writes what it can of the pending control bytes; keeps the pipe registered (as `source`) while
/// any remain.
pub fn flush_control(poll: &Poll, source: Source, proc_: &mut Proc) {
    let raw = proc_.control.as_raw_fd();
    let was_pending = !proc_.control_out.is_empty();
    while !proc_.control_out.is_empty() {
        match nix::unistd::write(&proc_.control, &proc_.control_out) {
            Ok(n) if n > 0 => {
                proc_.control_out.drain(..n);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let _ = poll.registry().register(
                    &mut SourceFd(&raw),
                    source.token(),
                    Interest::WRITABLE,
                );
                return;
            }
            // The worker is gone; its exit arrives through SIGCHLD.
            Ok(_) | Err(_) => proc_.control_out.clear(),
        }
    }
    // The bootstrap is a quarter of a megabyte: hand its buffer back, not only its bytes.
    proc_.control_out = Vec::new();
    if was_pending {
        let _ = poll.registry().deregister(&mut SourceFd(&raw));
    }
}

/// Registers a started process's status pipe and sends it `control_out`.
pub fn watch(
    poll: &Poll,
    status: Source,
    control: Source,
    spawned: spawn::Spawned,
    control_out: Vec<u8>,
) -> Proc {
    let status_raw = spawned.status.as_raw_fd();
    if let Err(e) = poll.registry().register(
        &mut SourceFd(&status_raw),
        status.token(),
        Interest::READABLE,
    ) {
        log::error!("event=register_failed pid={} error={e}", spawned.pid);
    }
    let mut proc_ = Proc {
        pid: spawned.pid,
        status: Some(spawned.status),
        status_buf: Vec::new(),
        control: spawned.control,
        control_out,
        inflight: 0,
    };
    flush_control(poll, control, &mut proc_);
    proc_
}
