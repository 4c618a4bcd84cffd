//! The master: binds, spawns, watches, reaps. The thin process layer around `pool`.
//!
//! Why this shape (tini's loop): one thread, one loop a reader can hold in their head —
//! `loop { carry out actions; publish health; wait for events; handle signals, pipes, reaping }`.
//! Each duty is a function named for it. The loop sleeps in epoll until a signal, a worker's pipe
//! or the pool's next deadline wakes it (at most once a second, so /alive can tell it is alive);
//! an idle master costs ~0 % CPU.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;

use crate::metrics::{Snapshot, Totals};
use crate::pool::{Action, ExitStatus, Health, Pool, PoolConfig, Signal, WorkerId};
use crate::prestart;
use crate::probe::{self, ProbeConfig, Shared};
use crate::reload;
use crate::signals::{self, Event};
use crate::spawn;
use crate::webhook;
use crate::worker::{self, WorkerConfig};

const SIGNALS: Token = Token(0);
/// The autoreload watcher wakes the loop through this token.
const WAKER: Token = Token(1);
/// The loop wakes at least this often, so the probe thread can tell a live loop from a stuck one.
const LOOP_TICK_MS: u64 = 1000;
/// A check request unanswered this long (its worker died or hangs) no longer blocks the next.
const CHECK_TIMEOUT_S: u64 = 5;

pub struct Config {
    pub bind: String,
    pub port: u16,
    pub backlog: i32,
    pub python: PathBuf,
    /// The probe server; None with --no-probe.
    pub probe: Option<ProbeConfig>,
    pub pool: PoolConfig,
    pub worker: WorkerConfig,
    /// --autoreload: what counts as a change, and --reload-dir directories.
    pub autoreload: Option<(reload::Filter, Vec<PathBuf>)>,
    pub webhook_urls: Vec<String>,
    /// --command, --check-migrations: run before the first worker starts.
    pub prestart: crate::prestart::Prestart,
}

/// A running worker process as the master sees it: its pipes and their buffers.
struct Proc {
    pid: i32,
    status: Option<OwnedFd>,
    status_buf: Vec<u8>,
    control: OwnedFd,
    /// Bytes still to write to the control pipe (the bootstrap, if the pipe was full).
    control_out: Vec<u8>,
    /// Requests in flight, as of its last heartbeat.
    inflight: u64,
}

fn status_token(id: WorkerId) -> Token {
    Token(id as usize * 2)
}

fn control_token(id: WorkerId) -> Token {
    Token(id as usize * 2 + 1)
}

/// Binds the app socket, or takes it from systemd-style socket activation (LISTEN_FDS/LISTEN_PID).
fn listen(bind: &str, port: u16, backlog: i32) -> anyhow::Result<TcpListener> {
    if let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS"))
        && pid.parse::<u32>().ok() == Some(std::process::id())
        && fds.parse::<u32>().unwrap_or(0) >= 1
    {
        let mut accepting: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on fd 3 with pointers to locals of the sizes passed; it only reads.
        let status = unsafe {
            libc::getsockopt(
                3,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut accepting as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if status != 0 || accepting != 1 {
            bail!(
                "LISTEN_FDS is set but fd 3 is not a listening socket; unset LISTEN_FDS/LISTEN_PID or fix the socket unit"
            );
        }
        // SAFETY: fd 3 is an open listening socket handed to this very process, which owns it from now on.
        let listener = unsafe { TcpListener::from_raw_fd(3) };
        // SAFETY: fcntl with integer arguments on the fd we just took ownership of.
        unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: single-threaded at this point (no threads started yet); nobody reads env concurrently.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        return Ok(listener);
    }
    let addrs: Vec<SocketAddr> = (bind, port)
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve --bind '{bind}'; give an IP address such as 0.0.0.0 or ::")
        })?
        .collect();
    let addr = *addrs
        .first()
        .with_context(|| format!("--bind '{bind}' resolves to no address"))?;
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => {
            anyhow::anyhow!("cannot listen on {addr}: address already in use; stop the other server or pick another --port")
        }
        ErrorKind::PermissionDenied => {
            anyhow::anyhow!("cannot listen on {addr}: permission denied; ports below 1024 need privileges, pick another --port")
        }
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    // Wake a worker only once the request's first bytes are here: the worker that accepts is then
    // busy at once, and the next connection's wakeup goes to an idle sibling. Best effort.
    let defer_s: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a local int of the size passed.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&defer_s as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // std listens with its own backlog; listen(2) again on a listening socket just resizes the queue.
    // SAFETY: listen on a socket fd we own.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        bail!(
            "cannot set --backlog {backlog}: {}",
            io::Error::last_os_error()
        );
    }
    Ok(listener)
}

fn become_subreaper() {
    if std::process::id() == 1 {
        return; // PID 1 inherits every orphan already
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "event=subreaper_failed error={}",
            io::Error::last_os_error()
        );
    }
}

fn send_signal(pid: i32, signal: Signal) {
    let sig = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Quit => libc::SIGQUIT,
        Signal::Kill => libc::SIGKILL,
        Signal::DumpTraceback => libc::SIGUSR2,
    };
    // SAFETY: kill with integer arguments. The pid is one of our unreaped children, so it cannot
    // have been recycled for another process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        log::debug!(
            "event=signal_failed pid={pid} signal={sig} error={}",
            io::Error::last_os_error()
        );
    }
}

/// Non-blocking reads from one worker's status pipe; returns complete lines. EOF closes the pipe.
fn read_status(poll: &Poll, proc_: &mut Proc) -> Vec<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    while let Some(fd) = &proc_.status {
        // SAFETY: read into a stack buffer from a pipe fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            proc_.status_buf.extend_from_slice(&chunk[..n as usize]);
            continue;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == ErrorKind::WouldBlock {
            break;
        }
        if n < 0 && err.kind() == ErrorKind::Interrupted {
            continue;
        }
        let raw = fd.as_raw_fd();
        let _ = poll.registry().deregister(&mut SourceFd(&raw));
        proc_.status = None;
    }
    worker::take_lines(&mut proc_.status_buf)
}

/// Writes what it can of the pending control bytes; keeps the pipe registered while any remain.
fn flush_control(poll: &Poll, id: WorkerId, proc_: &mut Proc) {
    let raw = proc_.control.as_raw_fd();
    let was_pending = !proc_.control_out.is_empty();
    while !proc_.control_out.is_empty() {
        // SAFETY: write from an owned buffer to a pipe fd we own.
        let n = unsafe {
            libc::write(
                raw,
                proc_.control_out.as_ptr().cast(),
                proc_.control_out.len(),
            )
        };
        if n > 0 {
            proc_.control_out.drain(..n as usize);
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            ErrorKind::Interrupted => continue,
            ErrorKind::WouldBlock => {
                let _ = poll.registry().register(
                    &mut SourceFd(&raw),
                    control_token(id),
                    Interest::WRITABLE,
                );
                return;
            }
            _ => {
                proc_.control_out.clear(); // the worker is gone; its exit arrives through SIGCHLD
            }
        }
    }
    if was_pending {
        let _ = poll.registry().deregister(&mut SourceFd(&raw));
    }
}

struct Master {
    config: Config,
    listener: TcpListener,
    poll: Poll,
    pool: Pool,
    procs: HashMap<WorkerId, Proc>,
    shared: Arc<Shared>,
    watcher: Option<reload::Watcher>,
    reload_pending: Arc<AtomicBool>,
    last_memory_check: Instant,
    /// Request metrics summed from every worker's heartbeats.
    totals: Totals,
    webhooks: Option<webhook::Webhooks>,
    /// The last published state, to turn changes into webhook events.
    published: (Health, Snapshot),
    /// When the master last asked a worker to run the app's checks, until it answers.
    check_in_flight: Option<Instant>,
    /// Round robin over ready workers for check requests.
    check_turn: usize,
}

impl Master {
    /// Carries out the pool's actions until it has none; Some(code) when the master should exit.
    fn carry_out_actions(&mut self) -> Option<i32> {
        loop {
            let actions = self.pool.take_actions();
            if actions.is_empty() {
                return None;
            }
            for action in actions {
                match action {
                    Action::Spawn {
                        worker, generation, ..
                    } => self.spawn(worker, generation),
                    Action::Signal { pid, signal } => send_signal(pid, signal),
                    Action::Exit { code } => return Some(code),
                }
            }
        }
    }

    fn spawn(&mut self, id: WorkerId, generation: u64) {
        match spawn::spawn_worker(&self.config.python, self.listener.as_raw_fd(), id) {
            Ok(spawned) => {
                let status_raw = spawned.status.as_raw_fd();
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&status_raw),
                    status_token(id),
                    Interest::READABLE,
                ) {
                    log::error!("event=register_failed worker={id} error={e}");
                }
                let mut proc_ = Proc {
                    pid: spawned.pid,
                    status: Some(spawned.status),
                    status_buf: Vec::new(),
                    control: spawned.control,
                    control_out: worker::bootstrap(&self.config.worker, id, generation),
                    inflight: 0,
                };
                flush_control(&self.poll, id, &mut proc_);
                self.procs.insert(id, proc_);
                self.pool.spawned(id, spawned.pid);
            }
            Err(e) => {
                let python = self.config.python.display();
                let error = if e.kind() == ErrorKind::NotFound {
                    format!(
                        "cannot run python '{python}': not found; pass --python PATH or activate a virtualenv"
                    )
                } else {
                    format!("cannot run python '{python}': {e}")
                };
                self.pool.spawn_failed(id, error, Instant::now());
            }
        }
    }

    fn handle_signals(&mut self, signals: &mut Signals) {
        let pending: Vec<i32> = signals.pending().collect();
        for sig in pending {
            match signals::classify(sig) {
                Some(Event::Shutdown(kind)) => {
                    log::info!("event=signal signal={}", signals::name(sig));
                    self.pool.shutdown(kind, Instant::now());
                }
                Some(Event::ChildExited) => self.reap(),
                Some(Event::Reload) => {
                    log::info!("event=signal signal=HUP");
                    self.pool.reload(Instant::now());
                }
                Some(Event::Scale(up)) => {
                    log::info!("event=signal signal={}", signals::name(sig));
                    self.pool.scale(up, Instant::now());
                }
                Some(Event::ReopenLogs) => match crate::logging::reopen() {
                    Ok(true) => {
                        log::info!("event=signal signal=USR1 action=reopen_log");
                        for pid in self.pool.pids() {
                            // SAFETY: kill with integer arguments on our own unreaped child.
                            unsafe { libc::kill(pid, libc::SIGUSR1) };
                        }
                    }
                    Ok(false) => {
                        log::info!("event=signal signal=USR1 action=none reason=\"no --log-file\"")
                    }
                    Err(e) => log::error!("event=reopen_log_failed error={e}"),
                },
                None => {}
            }
        }
    }

    /// waitpid(-1) until nothing is left: workers go to the pool, orphans are just reaped.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a pointer to a local int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let exit = if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            };
            let id = self
                .procs
                .iter()
                .find(|(_, p)| p.pid == pid)
                .map(|(id, _)| *id);
            match id {
                Some(id) => {
                    // The worker's last words (a boot failure, say) are still in its pipe: read them first.
                    let mut proc_ = self.procs.remove(&id).expect("found above");
                    self.deliver_messages(&mut proc_);
                    let now = Instant::now();
                    self.pool.exited(pid, exit, now);
                    let raw = proc_.control.as_raw_fd();
                    if !proc_.control_out.is_empty() {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                    }
                }
                None => log::debug!("event=reaped_orphan pid={pid} {exit}"),
            }
        }
    }

    fn deliver_messages(&mut self, proc_: &mut Proc) {
        let now = Instant::now();
        for line in read_status(&self.poll, proc_) {
            match worker::parse_message(&line) {
                Some(message) => {
                    match &message {
                        worker::Message::Ready { django: true, .. } => {
                            self.shared
                                .checks
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .django = true;
                        }
                        worker::Message::Checked(result) => {
                            self.check_in_flight = None;
                            self.shared.store_checks(result.clone());
                        }
                        _ => {}
                    }
                    if let worker::Message::Heartbeat {
                        counters, inflight, ..
                    } = &message
                    {
                        if let Some(counters) = counters {
                            self.totals.add(counters);
                        }
                        proc_.inflight = *inflight;
                    }
                    if let (worker::Message::Ready { dirs, .. }, Some(watcher)) =
                        (&message, &self.watcher)
                    {
                        for dir in dirs {
                            watcher.watch(PathBuf::from(dir), false);
                        }
                    }
                    self.pool.message(proc_.pid, message, now)
                }
                None => log::warn!(
                    "event=bad_worker_message pid={} line={:?}",
                    proc_.pid,
                    String::from_utf8_lossy(&line)
                ),
            }
        }
    }

    fn handle_worker_io(&mut self, token: Token) {
        let id = (token.0 / 2) as WorkerId;
        let Some(mut proc_) = self.procs.remove(&id) else {
            return;
        };
        if token == status_token(id) {
            self.deliver_messages(&mut proc_);
        } else {
            flush_control(&self.poll, id, &mut proc_);
        }
        self.procs.insert(id, proc_);
    }

    fn run(&mut self, mut signals: Signals) -> i32 {
        let mut events = Events::with_capacity(64);
        loop {
            if let Some(code) = self.carry_out_actions() {
                return code;
            }
            self.publish();
            let now = Instant::now();
            let tick = Duration::from_millis(LOOP_TICK_MS);
            let timeout = self
                .pool
                .next_deadline()
                .map_or(tick, |d| d.saturating_duration_since(now).min(tick));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("event=poll_failed error={e}");
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.handle_signals(&mut signals),
                    WAKER => {
                        if self.reload_pending.swap(false, Ordering::AcqRel) {
                            self.pool.reload(Instant::now());
                        }
                        if self.shared.take_check_wanted() {
                            self.request_check();
                        }
                    }
                    token => self.handle_worker_io(token),
                }
            }
            self.check_memory();
            self.pool.tick(Instant::now());
        }
    }

    /// A probe wants fresh Django checks: ask the next ready worker, unless a request is pending.
    fn request_check(&mut self) {
        let now = Instant::now();
        if self
            .check_in_flight
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(CHECK_TIMEOUT_S))
        {
            return;
        }
        let pids = self.pool.ready_pids();
        if pids.is_empty() {
            return;
        }
        self.check_turn = (self.check_turn + 1) % pids.len();
        let pid = pids[self.check_turn];
        if let Some((&id, proc_)) = self.procs.iter_mut().find(|(_, p)| p.pid == pid) {
            proc_.control_out.extend_from_slice(b"{\"t\":\"check\"}\n");
            flush_control(&self.poll, id, proc_);
            self.check_in_flight = Some(now);
            log::debug!("event=check_requested pid={pid}");
        }
    }

    /// Hands the current state to the probe thread, and its changes to the webhooks.
    fn publish(&mut self) {
        let now = (self.pool.health(), self.metrics());
        if now == self.published {
            self.shared.loop_tick();
            return;
        }
        if let Some(webhooks) = &self.webhooks {
            for event in webhook::changes(&self.published, &now) {
                webhooks.send(event);
            }
        }
        self.shared.publish(now.0.clone(), now.1.clone());
        self.published = now;
    }

    fn metrics(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            totals: self.totals.clone(),
            in_flight: self.procs.values().map(|p| p.inflight).sum(),
            ..Snapshot::default()
        };
        self.pool.fill_metrics(&mut snapshot);
        snapshot
    }

    /// --max-memory: read each worker's resident set, at most once a second.
    fn check_memory(&mut self) {
        if self.config.pool.max_memory_bytes.is_none()
            || self.last_memory_check.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        self.last_memory_check = Instant::now();
        for pid in self.pool.pids() {
            if let Some(rss) = resident_bytes(pid) {
                self.pool.memory(pid, rss, Instant::now());
            }
        }
    }
}

/// Resident memory of a process, from /proc/PID/statm (in pages).
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with an integer argument.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Runs the server until it shuts down; the exit code, or an error for main to print.
pub fn run(mut config: Config) -> anyhow::Result<i32> {
    let listener = listen(&config.bind, config.port, config.backlog)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new());
    // The pool decides its first spawns now; they are carried out in the loop. Publishing its health
    // before the probe thread starts means no probe ever sees an empty, sizeless pool.
    let pool = Pool::new(config.pool.clone(), Instant::now());
    shared.publish(pool.health(), Snapshot::default());
    let mut probe_addr = String::from("off");
    if let Some(probe_config) = &config.probe {
        let port = match probe_config.port {
            Some(port) => port,
            None if config.port == 0 => 0, // a free port for the app, so a free one for probes too
            None => addr
                .port()
                .checked_add(1)
                .context("no port above 65535 for probes; set --probe-port")?,
        };
        let probe_listener = TcpListener::bind((addr.ip(), port)).map_err(|e| {
            if e.kind() == ErrorKind::AddrInUse {
                anyhow::anyhow!("cannot listen for probes on {}:{port}: address already in use; pick another --probe-port", addr.ip())
            } else {
                anyhow::anyhow!("cannot listen for probes on {}:{port}: {e}", addr.ip())
            }
        })?;
        probe_addr = probe_listener.local_addr()?.to_string();
        let probe_config = ProbeConfig {
            listen_fd: listener.as_raw_fd(),
            ..probe_config.clone()
        };
        probe::spawn(probe_listener, probe_config, shared.clone())?;
    }
    become_subreaper();

    let poll = Poll::new().context("cannot create the event loop (epoll)")?;
    let mut signals = Signals::new(signals::HANDLED).context("cannot install signal handlers")?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;

    log::info!(
        "event=listening addr={addr} probe={probe_addr} workers={} app={} python={} version={}",
        config.pool.size,
        config.worker.app,
        config.python.display(),
        env!("CARGO_PKG_VERSION")
    );
    let webhooks = if config.webhook_urls.is_empty() {
        None
    } else {
        Some(
            webhook::spawn(config.webhook_urls.clone())
                .context("cannot start the webhook thread")?,
        )
    };
    if !config.prestart.is_empty() {
        match config.prestart.run(&mut signals, &shared) {
            prestart::Outcome::Done => {}
            prestart::Outcome::Stopped => {
                log::info!("event=exit code=0 during=prestart");
                return Ok(0);
            }
            prestart::Outcome::Failed { message, output } => {
                if let Some(webhooks) = &webhooks {
                    webhooks.send(webhook::Event {
                        kind: "startup",
                        status: "failed",
                        info: format!("Startup failed: {message}"),
                        traceback: Some(output),
                    });
                    webhooks.flush(Duration::from_secs(webhook::WEBHOOK_TIMEOUT_S + 1));
                }
                eprintln!("error: {message}");
                return Ok(worker::EXIT_BOOT_FAILED);
            }
        }
    }
    let reload_pending = Arc::new(AtomicBool::new(false));
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
    let _ = shared.waker.set(waker.clone());
    let mut watcher = None;
    if let Some((filter, dirs)) = config.autoreload.take() {
        let w = reload::spawn(filter, reload_pending.clone(), waker).map_err(anyhow::Error::msg)?;
        for dir in dirs {
            w.watch(dir, true);
        }
        watcher = Some(w);
    }
    let mut master = Master {
        config,
        listener,
        poll,
        pool,
        procs: HashMap::new(),
        shared,
        watcher,
        reload_pending,
        last_memory_check: Instant::now(),
        totals: Totals::default(),
        webhooks,
        published: (Health::default(), Snapshot::default()),
        check_in_flight: None,
        check_turn: 0,
    };
    let code = master.run(signals);
    master.publish();
    if let Some(webhooks) = &master.webhooks {
        if let Some(error) = master
            .pool
            .fatal_error()
            .filter(|_| !master.published.0.started)
        {
            let mut event = webhook::Event {
                kind: "startup",
                status: "failed",
                info: format!("Startup failed: {error}"),
                traceback: master.pool.boot_traceback().map(str::to_string),
            };
            if event.traceback.is_none() {
                event.traceback = Some(error.to_string());
            }
            webhooks.send(event);
        }
        // Bounded: a dead receiver delays the exit by at most this much.
        webhooks.flush(Duration::from_secs(webhook::WEBHOOK_TIMEOUT_S + 1));
    }
    if let Some(error) = master.pool.fatal_error() {
        eprintln!("error: {error}");
    } else {
        log::info!("event=exit code={code}");
    }
    Ok(code)
}
