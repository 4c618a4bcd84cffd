//! The master's side of each process's two pipes: reading status lines, writing control bytes.
//!
//! Why apart from the loop: this is the only I/O on a worker's pipes, it never blocks (a full
//! control pipe keeps its bytes and is written when it drains, an EOF closes the status pipe), and
//! it is the same for workers and --preload zygotes.

use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
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
pub fn read_status(registry: &Registry, proc_: &mut Proc) -> Vec<Vec<u8>> {
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
        let _ = registry.deregister(&mut SourceFd(&raw));
        proc_.status = None;
    }
    protocol::take_lines(&mut proc_.status_buf)
}

/// Queues `bytes` for the control pipe and writes what it can now. The pipe is registered (as
/// `source`) exactly while bytes wait for room, so a write that fits costs one syscall.
pub fn send_control(registry: &Registry, source: Source, proc_: &mut Proc, bytes: &[u8]) {
    if !proc_.control_out.is_empty() {
        // Already waiting for room: the writable event sends these after the rest.
        proc_.control_out.extend_from_slice(bytes);
        return;
    }
    let written = write_some(&proc_.control, bytes);
    if written < bytes.len() {
        proc_.control_out.extend_from_slice(&bytes[written..]);
        let raw = proc_.control.as_raw_fd();
        let _ = registry.register(&mut SourceFd(&raw), source.token(), Interest::WRITABLE);
    }
}

/// The control pipe has room (its writable event): writes what waits, and leaves the poll once
/// all is written.
pub fn flush_control(registry: &Registry, proc_: &mut Proc) {
    let written = write_some(&proc_.control, &proc_.control_out);
    proc_.control_out.drain(..written);
    if proc_.control_out.is_empty() {
        // The bootstrap is a quarter of a megabyte: hand its buffer back, not only its bytes.
        proc_.control_out = Vec::new();
        let raw = proc_.control.as_raw_fd();
        let _ = registry.deregister(&mut SourceFd(&raw));
    }
}

/// Writes as much of `bytes` as the pipe takes now; a gone worker takes everything (its exit
/// arrives through SIGCHLD).
fn write_some(fd: &OwnedFd, bytes: &[u8]) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        match nix::unistd::write(fd, &bytes[done..]) {
            Ok(n) if n > 0 => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Ok(_) | Err(_) => return bytes.len(),
        }
    }
    done
}

/// Registers a started process's status pipe (with `statuses`: the loop's poll, or for a worker
/// the epoll of its status pipes) and sends it `bootstrap`.
pub fn watch(
    statuses: &Registry,
    status: Source,
    registry: &Registry,
    control: Source,
    spawned: spawn::Spawned,
    bootstrap: &[u8],
) -> Proc {
    let status_raw = spawned.status.as_raw_fd();
    if let Err(e) = statuses.register(
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
        control_out: Vec::new(),
        inflight: 0,
    };
    send_control(registry, control, &mut proc_, bootstrap);
    proc_
}
