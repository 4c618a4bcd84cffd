//! Starting one supervised process, of whatever kind: the only place that forks.
//!
//! Why its own module: between fork and exec only async-signal-safe calls are allowed (the master
//! has threads, and another thread may hold the allocator's lock), so this code is kept small
//! enough to audit. Everything is prepared before the fork; the child only moves fds into place,
//! marks every other fd close-on-exec, resets signals and joins its own process group.
//!
//! The child's fds: 0-2 as the master's (stdin from /dev/null), 3 the listening socket, 4 the
//! status pipe (worker -> master), 5 the control pipe (master -> worker). Nothing else survives exec.
//!
//! A --preload zygote gets a unix socket at fd 5 instead of the control pipe: the master sends
//! each new worker's two pipes over it (SCM_RIGHTS, `ask_fork`); the zygote answers with the
//! forked worker's pid on its status pipe (the protocol is python/hurricane/zygote.py's).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use nix::unistd::pipe2;

/// The fds the child gets, in order, starting at 3.
const CHILD_FDS: usize = 3;
/// Pipe capacity asked for the control pipe, so the whole bootstrap fits without waiting.
const CONTROL_PIPE_BYTES: i32 = 1 << 20;
/// Variables of socket activation meant for the master alone; a child that saw them would think
/// the sockets were its own.
/// `NOTIFY_SOCKET` too: only the master tells systemd it is ready.
pub const SOCKET_ACTIVATION_VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// How to start one process of a kind (see `kind`): the program, its arguments, and the first
/// bytes written to its control pipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub bootstrap: Vec<u8>,
}

/// A started process: its pid and the master's ends of its two pipes (non-blocking).
pub struct Spawned {
    pub pid: i32,
    pub status: OwnedFd,
    pub control: OwnedFd,
}

/// What fd 5 of an exec'd process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A pipe, master -> process: a worker's (or the supervised command's) control pipe.
    Pipe,
    /// A unix stream socket, both ways: a zygote's (the bootstrap down it, then fork requests and
    /// their answers).
    Socket,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_CLOEXEC)?)
}

/// A worker's two pipes: (master's status read end, child's status write end, child's control
/// read end, master's control write end); the master's ends are non-blocking.
fn worker_pipes() -> io::Result<(OwnedFd, OwnedFd, OwnedFd, OwnedFd)> {
    let (status_r, status_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    // Failure only means a smaller buffer and a few more writes.
    let _ = fcntl(&control_w, FcntlArg::F_SETPIPE_SZ(CONTROL_PIPE_BYTES));
    set_nonblocking(&status_r)?;
    set_nonblocking(&control_w)?;
    Ok((status_r, status_w, control_r, control_w))
}

pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Runs in the child between fork and exec: async-signal-safe calls only, no allocation.
fn in_child(sources: [RawFd; CHILD_FDS]) -> io::Result<()> {
    // SAFETY: each call is async-signal-safe and takes plain integers or stack memory.
    unsafe {
        // Reset every signal first: the master's handlers must not run in this process.
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        // Copy the sources above the target range first, so no dup2 below clobbers a source.
        let mut high = [0; CHILD_FDS];
        for (slot, &fd) in high.iter_mut().zip(sources.iter()) {
            *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            if *slot < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (i, &fd) in high.iter().enumerate() {
            // dup2 clears close-on-exec on the target: these are the fds the worker inherits.
            if libc::dup2(fd, 3 + i as RawFd) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Everything from 6 up closes at exec. Marking (not closing) keeps std's exec-error pipe alive.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        let first = (3 + CHILD_FDS) as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            // Kernels before 5.11: mark them one by one, up to the soft limit.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 20) as RawFd
            } else {
                4096
            };
            for fd in first as RawFd..max {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        // Own process group: a terminal's Ctrl-C reaches the master, which decides what workers see.
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Forks and execs `launch` with the listening socket (or /dev/null in its place) and fresh pipes
/// (or, for a zygote, a socket at fd 5).
pub fn spawn(launch: &Launch, listener: Option<RawFd>, control: Control) -> io::Result<Spawned> {
    // Opened before the fork, closed after it: the child has its own copy at fd 3.
    let null = match listener {
        Some(_) => None,
        None => Some(std::fs::File::open("/dev/null")?),
    };
    let listener = listener.unwrap_or_else(|| null.as_ref().map_or(-1, |f| f.as_raw_fd()));
    let (status_r, status_w, control_r, control_w) = match control {
        Control::Pipe => worker_pipes()?,
        Control::Socket => {
            let (status_r, status_w) = pipe()?;
            set_nonblocking(&status_r)?;
            let (ours, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )?;
            set_nonblocking(&ours)?;
            (status_r, status_w, theirs, ours)
        }
    };

    let sources = [listener, status_w.as_raw_fd(), control_r.as_raw_fd()];
    let mut command = Command::new(&launch.program);
    command.args(&launch.args).stdin(Stdio::null());
    for var in SOCKET_ACTIVATION_VARS {
        command.env_remove(var);
    }
    // SAFETY: in_child only makes async-signal-safe calls and does not allocate.
    unsafe { command.pre_exec(move || in_child(sources)) };
    let child = command.spawn()?;
    // The child has its copies; the master keeps only its own ends. Dropping `child` does not wait:
    // the master reaps every pid itself with waitpid(-1).
    drop((status_w, control_r, null));
    Ok(Spawned {
        pid: child.id() as i32,
        status: status_r,
        control: control_w,
    })
}

/// A fork asked of a zygote, until its answer (python/hurricane/zygote.py sends it on its status
/// pipe): the master's ends of the new worker's pipes.
pub struct Asked {
    pub status: OwnedFd,
    pub control: OwnedFd,
}

impl Asked {
    /// The zygote answered with the worker's pid: a started process like an exec'd one.
    pub fn spawned(self, pid: i32) -> Spawned {
        Spawned {
            pid,
            status: self.status,
            control: self.control,
        }
    }
}

/// Asks the zygote behind `zygote` (its fd-5 socket) to fork worker `worker` of `generation`.
/// The worker's pipes are made here and their child ends sent along (SCM_RIGHTS), so the master
/// holds its ends exactly as for an exec'd worker; the answer comes later, on the zygote's status
/// pipe, so the master never waits for a zygote.
pub fn ask_fork(zygote: &OwnedFd, worker: u64, generation: u64) -> io::Result<Asked> {
    let (status_r, status_w, control_r, control_w) = worker_pipes()?;
    let request = format!("{{\"t\":\"fork\",\"worker\":{worker},\"generation\":{generation}}}\n");
    let fds = [status_w.as_raw_fd(), control_r.as_raw_fd()];
    let iov = [io::IoSlice::new(request.as_bytes())];
    let sent = sendmsg::<()>(
        zygote.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != request.len() {
        // A few dozen bytes into a socket the zygote reads at once: a short write means it is stuck.
        return Err(io::Error::other("the zygote's socket is full"));
    }
    // The zygote holds its copies now (and the worker will); ours would keep the pipes open.
    drop((status_w, control_r));
    Ok(Asked {
        status: status_r,
        control: control_w,
    })
}
