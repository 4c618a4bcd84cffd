//! The master: binds, spawns, watches, reaps. The thin process layer around `pool`.
//!
//! Why this shape (tini's loop): one thread, one loop a reader can hold in their head —
//! `loop { carry out actions; publish health; wait for events; handle signals, pipes, reaping }`.
//! Each duty is a function named for it. The loop sleeps in epoll until a signal, a worker's pipe
//! or the pool's next deadline wakes it (at most once a second, so /alive can tell it is alive);
//! an idle master costs ~0 % CPU.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::unix::pipe::Receiver;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{Signal as Sig, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;

use crate::amqp::{self, Consume};
use crate::bind;
use crate::celery::Celery;
use crate::kind::Kind;
use crate::lifecycle::ExitStatus;
use crate::metrics::{Snapshot, Totals};
use crate::notify;
use crate::pool::{Action, Pool, PoolConfig, Signal, WorkerId};
use crate::prestart;
use crate::probe::{self, ProbeConfig};
use crate::reload;
use crate::signals::{self, Event};
use crate::spawn;
use crate::state::{self, Doorbell, Health, Shared};
use crate::sys;
use crate::webhook;
use crate::worker;
use crate::zygote::{self, ZygoteId, Zygotes};

/// The loop wakes at least this often, so the probe thread can tell a live loop from a stuck one.
const LOOP_TICK_MS: u64 = 1000;
/// A check request unanswered this long (its worker died or hangs) no longer blocks the next.
const CHECK_TIMEOUT_S: u64 = 5;

/// Where `serve` listens.
pub struct Listen {
    pub bind: IpAddr,
    pub port: u16,
    pub backlog: i32,
}

pub struct Config {
    /// serve: the app's socket; None for consume, whose workers listen on nothing.
    pub listen: Option<Listen>,
    /// Where the probe server binds when there is no app socket to sit beside.
    pub probe_bind: IpAddr,
    /// consume: the broker, and how deliveries are spread.
    pub consume: Option<amqp::Config>,
    /// celery: the --liveness-timeout of the supervised Celery process.
    pub celery: Option<Duration>,
    /// What each slot runs.
    pub kind: Rc<dyn Kind>,
    /// The probe server; None with --no-probe.
    pub probe: Option<ProbeConfig>,
    pub pool: PoolConfig,
    /// --autoreload: what counts as a change, and --reload-dir directories.
    pub autoreload: Option<(reload::Filter, Vec<PathBuf>)>,
    pub webhook_urls: Vec<String>,
    /// --command, --check-migrations: run before the first worker starts.
    pub prestart: prestart::Prestart,
    /// For the `event=listening` line.
    pub app: String,
    pub python: PathBuf,
}

/// What woke the loop. Every source has a token of its own, so nothing is decoded from a shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    /// The autoreload watcher saw a change.
    Autoreload,
    /// A probe wants fresh app checks.
    CheckWanted,
    /// The broker thread has events (consume).
    Broker,
    /// A worker's status pipe has lines to read.
    Status(WorkerId),
    /// A worker's control pipe has room for pending bytes.
    Control(WorkerId),
    /// A --preload zygote's status pipe has lines to read.
    ZygoteStatus(ZygoteId),
    /// A zygote's socket has room for the rest of its bootstrap.
    ZygoteControl(ZygoteId),
}

/// Tokens below this are the fixed sources; above it, four per id: a worker's two pipes, then
/// the zygote's of the same number (workers and zygotes count apart).
const FIRST_WORKER_TOKEN: usize = 16;

impl Source {
    fn token(self) -> Token {
        Token(match self {
            Source::Signals => 0,
            Source::Autoreload => 1,
            Source::CheckWanted => 2,
            Source::Broker => 3,
            Source::Status(id) => FIRST_WORKER_TOKEN + id as usize * 4,
            Source::Control(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 1,
            Source::ZygoteStatus(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 2,
            Source::ZygoteControl(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 3,
        })
    }

    fn of(token: Token) -> Option<Source> {
        match token.0 {
            0 => Some(Source::Signals),
            1 => Some(Source::Autoreload),
            2 => Some(Source::CheckWanted),
            3 => Some(Source::Broker),
            t if t >= FIRST_WORKER_TOKEN => {
                let id = ((t - FIRST_WORKER_TOKEN) / 4) as u64;
                Some(match (t - FIRST_WORKER_TOKEN) % 4 {
                    0 => Source::Status(id),
                    1 => Source::Control(id),
                    2 => Source::ZygoteStatus(id),
                    _ => Source::ZygoteControl(id),
                })
            }
            _ => None,
        }
    }
}

/// A worker asked of a zygote whose answer has not come yet.
struct Awaiting {
    zygote: ZygoteId,
    asked: spawn::Asked,
}

/// Orphans reaped lately, remembered this many: a forked worker that dies at once can be reaped
/// before its zygote's answer names it.
const ORPHANS_REMEMBERED: usize = 64;

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

/// Why a process could not be exec'd, saying what to do.
fn spawn_error(launch: &spawn::Launch, e: &std::io::Error) -> String {
    let program = launch.program.display();
    if e.kind() == ErrorKind::NotFound {
        format!(
            "cannot run python '{program}': not found; pass --python PATH or activate a virtualenv"
        )
    } else {
        format!("cannot run python '{program}': {e}")
    }
}

fn become_subreaper() {
    if std::process::id() == 1 {
        return; // PID 1 inherits every orphan already
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("event=subreaper_failed error={e}");
    }
}

fn send_signal(pid: i32, signal: Signal) {
    let sig = match signal {
        Signal::Term => Sig::SIGTERM,
        Signal::Quit => Sig::SIGQUIT,
        Signal::Kill => Sig::SIGKILL,
        Signal::DumpTraceback => Sig::SIGUSR2,
    };
    // The pid is one of our unreaped children, so it cannot have been recycled for another process.
    if let Err(e) = kill(Pid::from_raw(pid), sig) {
        log::debug!("event=signal_failed pid={pid} signal={sig} error={e}");
    }
}

/// Non-blocking reads from one worker's status pipe; returns complete lines. EOF closes the pipe.
fn read_status(poll: &Poll, proc_: &mut Proc) -> Vec<Vec<u8>> {
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
    worker::take_lines(&mut proc_.status_buf)
}

/// Writes what it can of the pending control bytes; keeps the pipe registered (as `source`) while
/// any remain.
fn flush_control(poll: &Poll, source: Source, proc_: &mut Proc) {
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
    if was_pending {
        let _ = poll.registry().deregister(&mut SourceFd(&raw));
    }
}

struct Master {
    config: Config,
    listener: Option<TcpListener>,
    /// consume: the broker link and the dispatch of deliveries.
    consume: Option<Consume>,
    /// celery: what the hooks in the Celery process reported.
    celery: Option<Celery>,
    broker_rx: Option<Receiver>,
    poll: Poll,
    pool: Pool,
    procs: HashMap<WorkerId, Proc>,
    /// --preload: the zygotes' state, and their processes.
    zygotes: Option<Zygotes>,
    zygote_procs: HashMap<ZygoteId, Proc>,
    /// Forks asked of a zygote, by worker, until it answers.
    awaiting: HashMap<WorkerId, Awaiting>,
    /// (pid, exit) of the latest orphans reaped, newest last.
    orphans: std::collections::VecDeque<(i32, ExitStatus)>,
    shared: Arc<Shared>,
    watcher: Option<reload::Watcher>,
    /// Read ends of the doorbells: the autoreload watcher's and the probes'.
    autoreload_rx: Option<Receiver>,
    check_rx: Receiver,
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
    /// systemd's $NOTIFY_SOCKET (Type=notify), if any.
    notify: Option<std::os::unix::net::SocketAddr>,
}

impl Master {
    /// Carries out the pool's (and the zygotes') actions until neither has any; Some(code) when
    /// the master should exit.
    fn carry_out_actions(&mut self) -> Option<i32> {
        loop {
            let actions = self.pool.take_actions();
            let zygote_actions = self
                .zygotes
                .as_mut()
                .map(Zygotes::take_actions)
                .unwrap_or_default();
            if actions.is_empty() && zygote_actions.is_empty() {
                return None;
            }
            for action in zygote_actions {
                self.carry_out_zygote_action(action);
            }
            for action in actions {
                match action {
                    Action::Spawn { worker, generation } => match &mut self.zygotes {
                        Some(zygotes) => zygotes.want(worker, generation, Instant::now()),
                        None => self.spawn(worker, generation),
                    },
                    Action::Cancel { worker, timed_out } => self.cancel(worker, timed_out),
                    Action::Signal { pid, signal } => {
                        if signal != Signal::DumpTraceback
                            && let Some(consume) = &mut self.consume
                        {
                            consume.worker_leaving(pid);
                        }
                        send_signal(pid, signal)
                    }
                    Action::LogTraceback(text) => crate::logging::traceback(&text),
                    Action::Exit { code } => {
                        if let Some(consume) = &mut self.consume {
                            consume.close();
                        }
                        self.end_zygotes();
                        return Some(code);
                    }
                }
            }
        }
    }

    /// Execs worker `id`.
    fn spawn(&mut self, id: WorkerId, generation: u64) {
        let launch = self.config.kind.launch(id, generation);
        let listener = self.listener.as_ref().map(|l| l.as_raw_fd());
        match spawn::spawn(&launch, listener, spawn::Control::Pipe) {
            Ok(spawned) => {
                let pid = spawned.pid;
                self.procs.insert(
                    id,
                    self.watch(
                        Source::Status(id),
                        Source::Control(id),
                        spawned,
                        launch.bootstrap,
                    ),
                );
                self.pool.spawned(id, pid);
            }
            Err(e) => {
                let error = spawn_error(&launch, &e);
                self.pool.spawn_failed(id, error, Instant::now());
            }
        }
    }

    /// Registers a started process's status pipe and sends it `control_out`.
    fn watch(
        &self,
        status: Source,
        control: Source,
        spawned: spawn::Spawned,
        control_out: Vec<u8>,
    ) -> Proc {
        let status_raw = spawned.status.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
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
        flush_control(&self.poll, control, &mut proc_);
        proc_
    }

    fn carry_out_zygote_action(&mut self, action: zygote::Action) {
        let now = Instant::now();
        match action {
            zygote::Action::Start { zygote, generation } => self.start_zygote(zygote, generation),
            zygote::Action::Fork {
                zygote,
                worker,
                generation,
            } => self.fork(zygote, worker, generation),
            zygote::Action::Lost { worker, failure } => self.pool.lost(worker, failure, now),
            zygote::Action::Signal { pid, signal } => send_signal(pid, signal),
            zygote::Action::LogTraceback(text) => crate::logging::traceback(&text),
        }
    }

    /// Execs zygote `id` of `generation` (--preload).
    fn start_zygote(&mut self, id: ZygoteId, generation: u64) {
        let Some(launch) = self.config.kind.zygote(generation) else {
            return;
        };
        let listener = self.listener.as_ref().map(|l| l.as_raw_fd());
        let zygotes = self.zygotes.as_mut().expect("a zygote action");
        match spawn::spawn(&launch, listener, spawn::Control::Socket) {
            Ok(spawned) => {
                let pid = spawned.pid;
                zygotes.started(id, pid);
                log::info!("event=zygote_spawn zygote={id} gen={generation} pid={pid}");
                let proc_ = self.watch(
                    Source::ZygoteStatus(id),
                    Source::ZygoteControl(id),
                    spawned,
                    launch.bootstrap,
                );
                self.zygote_procs.insert(id, proc_);
            }
            Err(e) => {
                zygotes.start_failed(id);
                let error = spawn_error(&launch, &e);
                self.pool.abort(1, error, Instant::now());
            }
        }
    }

    /// Asks zygote `zygote` for worker `id`; its answer comes up the zygote's status pipe.
    fn fork(&mut self, zygote: ZygoteId, id: WorkerId, generation: u64) {
        let now = Instant::now();
        let Some(zproc) = self.zygote_procs.get(&zygote) else {
            self.pool.lost(id, None, now);
            return;
        };
        match spawn::ask_fork(&zproc.control, id, generation) {
            Ok(asked) => {
                self.awaiting.insert(id, Awaiting { zygote, asked });
            }
            Err(e) => {
                // Its socket is gone (it died) or full (it is stuck): either way it must go.
                log::error!("event=fork_failed worker={id} zygote={zygote} error=\"{e}\"");
                if let Some(zygotes) = &mut self.zygotes {
                    zygotes.broken(zygote, now);
                }
                self.pool.lost(id, None, now);
            }
        }
    }

    /// Zygote `zygote` answered the fork of worker `id`: from now on a worker like any other.
    fn forked(
        &mut self,
        zygote: ZygoteId,
        zygote_pid: i32,
        id: WorkerId,
        pid: Result<i32, String>,
    ) {
        let now = Instant::now();
        let Some(awaiting) = self.awaiting.remove(&id) else {
            // Cancelled meanwhile: with our ends of its pipes closed, the worker sees its control
            // pipe's EOF and exits; it is reaped as an orphan.
            log::debug!("event=fork_unwanted worker={id} zygote={zygote}");
            return;
        };
        match pid {
            Ok(pid) => {
                log::info!(
                    "event=fork worker={id} zygote={zygote} zygote_pid={zygote_pid} pid={pid}"
                );
                let spawned = awaiting.asked.spawned(pid);
                self.procs.insert(
                    id,
                    self.watch(Source::Status(id), Source::Control(id), spawned, Vec::new()),
                );
                self.pool.spawned(id, pid);
                // A worker that died before this answer came was reaped as an orphan.
                if let Some(at) = self.orphans.iter().position(|(p, _)| *p == pid) {
                    let (_, status) = self.orphans.remove(at).expect("found above");
                    self.worker_exited(id, pid, status);
                }
            }
            Err(error) => {
                log::error!("event=fork_failed worker={id} zygote={zygote} error={error:?}");
                self.pool.lost(id, None, now);
            }
        }
    }

    /// The pool no longer wants worker `id`, not forked yet. Asked of a zygote that has not
    /// answered by --boot-timeout: that zygote is stuck, and goes. (No shorter timeout: a machine
    /// under heavy load, or a VM stalled for seconds, delays a fork's answer but does not lose it.)
    fn cancel(&mut self, id: WorkerId, timed_out: bool) {
        if let Some(zygotes) = &mut self.zygotes {
            zygotes.cancel(id);
        }
        let Some(awaiting) = self.awaiting.remove(&id) else {
            return;
        };
        if timed_out {
            log::error!(
                "event=fork_failed worker={id} zygote={} error=\"no answer within --boot-timeout\"",
                awaiting.zygote
            );
            if let Some(zygotes) = &mut self.zygotes {
                zygotes.broken(awaiting.zygote, Instant::now());
            }
        }
    }

    /// The master is exiting: zygotes still there are killed and reaped, so none outlives it.
    fn end_zygotes(&mut self) {
        for (_, proc_) in self.zygote_procs.drain() {
            let pid = Pid::from_raw(proc_.pid);
            let _ = kill(pid, Sig::SIGKILL);
            let _ = waitpid(pid, None);
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
                Some(Event::ReopenLogs) => self.reopen_logs(),
                None => {}
            }
        }
    }

    /// SIGUSR1: reopen --log-file here and in every worker.
    fn reopen_logs(&mut self) {
        match crate::logging::reopen() {
            Ok(true) => {
                log::info!("event=signal signal=USR1 action=reopen_log");
                let pids = if self.config.kind.forwards_log_reopen() {
                    // Zygotes too: a worker forked after the rotation inherits their log file.
                    let zygotes = self.zygote_procs.values().map(|p| p.pid);
                    self.pool.pids().into_iter().chain(zygotes).collect()
                } else {
                    Vec::new()
                };
                for pid in pids {
                    // One of our unreaped children: the pid cannot have been recycled.
                    let _ = kill(Pid::from_raw(pid), Sig::SIGUSR1);
                }
            }
            Ok(false) => {
                log::info!("event=signal signal=USR1 action=none reason=\"no --log-file\"")
            }
            Err(e) => log::error!("event=reopen_log_failed error={e}"),
        }
    }

    /// waitpid(-1) until nothing is left: workers go to the pool, orphans are just reaped.
    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid.as_raw(), ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue, // stopped or continued: not an exit
            };
            if let Some(zid) = self
                .zygote_procs
                .iter()
                .find(|(_, p)| p.pid == pid)
                .map(|(id, _)| *id)
            {
                let mut proc_ = self.zygote_procs.remove(&zid).expect("found above");
                self.deliver_zygote_messages(zid, &mut proc_);
                self.forget_control(&proc_);
                if let Some(zygotes) = &mut self.zygotes {
                    zygotes.exited(zid, exit, Instant::now());
                }
                // What it had not answered will not be forked.
                let unanswered: Vec<WorkerId> = self
                    .awaiting
                    .iter()
                    .filter(|(_, a)| a.zygote == zid)
                    .map(|(id, _)| *id)
                    .collect();
                for id in unanswered {
                    self.awaiting.remove(&id);
                    self.pool.lost(id, None, Instant::now());
                }
                continue;
            }
            let id = self
                .procs
                .iter()
                .find(|(_, p)| p.pid == pid)
                .map(|(id, _)| *id);
            match id {
                Some(id) => self.worker_exited(id, pid, exit),
                None => {
                    log::debug!("event=reaped_orphan pid={pid} {exit}");
                    if self.zygotes.is_some() {
                        if self.orphans.len() == ORPHANS_REMEMBERED {
                            self.orphans.pop_front();
                        }
                        self.orphans.push_back((pid, exit));
                    }
                }
            }
        }
    }

    /// Worker `id` (`pid`) was reaped.
    fn worker_exited(&mut self, id: WorkerId, pid: i32, exit: ExitStatus) {
        let Some(mut proc_) = self.procs.remove(&id) else {
            return;
        };
        // The worker's last words (a boot failure, say) are still in its pipe: read them first.
        self.deliver_messages(&mut proc_);
        if let Some(consume) = &mut self.consume {
            consume.worker_gone(pid);
        }
        self.pool.exited(pid, exit, Instant::now());
        self.forget_control(&proc_);
    }

    /// A reaped process's control fd leaves the poll if it was waiting to write.
    fn forget_control(&self, proc_: &Proc) {
        if !proc_.control_out.is_empty() {
            let raw = proc_.control.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
    }

    /// A zygote's lines: boot, ready, or why it failed.
    fn deliver_zygote_messages(&mut self, id: ZygoteId, proc_: &mut Proc) {
        let now = Instant::now();
        for line in read_status(&self.poll, proc_) {
            let Some(message) = worker::parse_message(&line) else {
                log::warn!(
                    "event=bad_zygote_message pid={} line={:?}",
                    proc_.pid,
                    String::from_utf8_lossy(&line)
                );
                continue;
            };
            match message {
                worker::Message::Forked { worker, pid } => {
                    self.forked(id, proc_.pid, worker, pid);
                    continue;
                }
                worker::Message::Ready { django: true, .. } => self.shared.set_django(),
                _ => {}
            }
            if let Some(zygotes) = &mut self.zygotes {
                zygotes.message(id, &message, now);
            }
        }
    }

    fn deliver_messages(&mut self, proc_: &mut Proc) {
        let now = Instant::now();
        for line in read_status(&self.poll, proc_) {
            let Some(message) = worker::parse_message(&line) else {
                log::warn!(
                    "event=bad_worker_message pid={} line={:?}",
                    proc_.pid,
                    String::from_utf8_lossy(&line)
                );
                continue;
            };
            match &message {
                worker::Message::Ready {
                    django,
                    dirs,
                    reject_reasons,
                    routing_keys,
                    ..
                } => {
                    if *django {
                        self.shared.set_django();
                    }
                    self.totals.know_rejections(reject_reasons);
                    if let Some(consume) = &mut self.consume {
                        consume.worker_ready(proc_.pid, routing_keys);
                    }
                    if let Some(watcher) = &self.watcher {
                        for dir in dirs {
                            watcher.watch(PathBuf::from(dir), false);
                        }
                    }
                }
                worker::Message::Checked(result) => {
                    self.check_in_flight = None;
                    self.shared.store_checks(result.clone());
                }
                worker::Message::Heartbeat {
                    counters,
                    inflight,
                    rejects,
                    ..
                } => {
                    if let Some(counters) = counters {
                        self.totals.add(counters);
                    }
                    self.totals.add_rejects(rejects);
                    proc_.inflight = *inflight;
                }
                worker::Message::Settle {
                    id,
                    ack,
                    requeue,
                    ms,
                } => {
                    if let Some(consume) = &mut self.consume {
                        consume.settled(proc_.pid, *id, *ack, *requeue, *ms);
                    }
                }
                worker::Message::Celery(event) => {
                    if let Some(celery) = &mut self.celery
                        && celery.event(event, now)
                    {
                        self.shared.set_django();
                    }
                }
                worker::Message::Boot
                | worker::Message::Failed(_)
                | worker::Message::Forked { .. } => {}
            }
            self.pool.message(proc_.pid, message, now)
        }
    }

    fn handle_worker_io(&mut self, id: WorkerId, source: Source) {
        if let Source::ZygoteStatus(_) | Source::ZygoteControl(_) = source {
            let Some(mut proc_) = self.zygote_procs.remove(&id) else {
                return;
            };
            if source == Source::ZygoteStatus(id) {
                self.deliver_zygote_messages(id, &mut proc_);
            } else {
                flush_control(&self.poll, source, &mut proc_);
            }
            self.zygote_procs.insert(id, proc_);
            return;
        }
        let Some(mut proc_) = self.procs.remove(&id) else {
            return;
        };
        if source == Source::Status(id) {
            self.deliver_messages(&mut proc_);
        } else {
            flush_control(&self.poll, Source::Control(id), &mut proc_);
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
            let deadline = [
                self.pool.next_deadline(),
                self.consume.as_ref().and_then(Consume::next_deadline),
                self.celery.as_ref().and_then(Celery::next_deadline),
                self.zygotes.as_ref().and_then(Zygotes::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map_or(tick, |d| d.saturating_duration_since(now).min(tick));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("event=poll_failed error={e}");
                }
                continue;
            }
            for event in events.iter() {
                match Source::of(event.token()) {
                    Some(Source::Signals) => self.handle_signals(&mut signals),
                    Some(Source::Autoreload)
                        if self.autoreload_rx.as_mut().is_some_and(state::answer) =>
                    {
                        self.pool.reload(Instant::now())
                    }
                    Some(Source::Broker) => {
                        if let Some(rx) = &mut self.broker_rx {
                            state::answer(rx);
                        }
                        if let Some(consume) = &mut self.consume {
                            consume.take_events();
                        }
                    }
                    Some(Source::CheckWanted) => {
                        state::answer(&mut self.check_rx);
                        if self.shared.take_check_wanted() {
                            self.request_check();
                        }
                    }
                    Some(
                        source @ (Source::Status(id)
                        | Source::Control(id)
                        | Source::ZygoteStatus(id)
                        | Source::ZygoteControl(id)),
                    ) => self.handle_worker_io(id, source),
                    Some(Source::Autoreload) | None => {}
                }
            }
            self.check_memory();
            self.pool.tick(Instant::now());
            if let Some(zygotes) = &mut self.zygotes {
                if self.pool.health().stopping {
                    zygotes.shutdown(Instant::now());
                }
                zygotes.tick(Instant::now());
            }
            self.pump_deliveries();
        }
    }

    /// consume: stop on a lost broker, cancel on shutdown, and hand deliveries to workers.
    fn pump_deliveries(&mut self) {
        let Some(consume) = &mut self.consume else {
            return;
        };
        if let Some(error) = consume.take_fatal() {
            self.pool.abort(1, error, Instant::now());
        }
        if self.pool.health().stopping {
            consume.stop();
        }
        for (pid, frame) in consume.assign() {
            if let Some((&id, proc_)) = self.procs.iter_mut().find(|(_, p)| p.pid == pid) {
                proc_.control_out.extend_from_slice(&frame);
                flush_control(&self.poll, Source::Control(id), proc_);
            }
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
            flush_control(&self.poll, Source::Control(id), proc_);
            self.check_in_flight = Some(now);
            log::debug!("event=check_requested pid={pid}");
        }
    }

    /// Hands the current state to the probe thread, and its changes to the webhooks.
    fn publish(&mut self) {
        let mut health = self.pool.health();
        if let Some(consume) = &self.consume {
            consume.judge(&mut health);
        }
        if let Some(celery) = &self.celery {
            celery.judge(&mut health, Instant::now());
        }
        if health.is_started() && !self.published.0.is_started() {
            // Startup's code (argument parsing, the first spawns) will not run again.
            if let Some(bytes) = crate::trim::release_startup_code() {
                log::debug!("event=released_startup_code mapping_kb={}", bytes >> 10);
            }
        }
        if let Some(target) = &self.notify {
            if health.is_started() && !self.published.0.is_started() {
                notify::send(target, "READY=1");
            }
            if health.stopping && !self.published.0.stopping {
                notify::send(target, "STOPPING=1");
            }
        }
        let now = (health, self.metrics());
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
        snapshot.zygotes = self.zygotes.as_ref().map(Zygotes::live).unwrap_or_default();
        snapshot.zygote_restarts = self.zygotes.as_ref().map(|z| z.restarts);
        snapshot.amqp = self.consume.as_ref().map(Consume::snapshot);
        snapshot.celery = self.celery.as_ref().map(Celery::snapshot);
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
            if let Some(rss) = sys::resident_bytes(pid) {
                self.pool.memory(pid, rss, Instant::now());
            }
        }
    }
}

/// Binds the probe port (beside the app's: its port + 1 unless given) and starts the probe thread.
fn start_probes(
    config: &ProbeConfig,
    app: Option<(&TcpListener, u16)>,
    bind: IpAddr,
    shared: Arc<Shared>,
) -> anyhow::Result<String> {
    let (ip, port) = match (app, config.port) {
        (Some((listener, _)), Some(port)) => (listener.local_addr()?.ip(), port),
        // A free port for the app, so a free one for probes too.
        (Some((listener, 0)), None) => (listener.local_addr()?.ip(), 0),
        (Some((listener, _)), None) => {
            let addr = listener.local_addr()?;
            let port = addr
                .port()
                .checked_add(1)
                .context("no port above 65535 for probes; set --probe-port")?;
            (addr.ip(), port)
        }
        (None, port) => (bind, port.unwrap_or(0)),
    };
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr).map_err(|e| {
        if e.kind() == ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen for probes on {addr}: address already in use; pick another --probe-port"
            )
        } else {
            anyhow::anyhow!("cannot listen for probes on {addr}: {e}")
        }
    })?;
    let probe_addr = listener.local_addr()?.to_string();
    let config = ProbeConfig {
        listen_fd: app.map_or(-1, |(l, _)| l.as_raw_fd()),
        ..config.clone()
    };
    probe::spawn(listener, config, shared)?;
    Ok(probe_addr)
}

/// Runs the server until it shuts down; the exit code, or an error for main to print.
pub fn run(mut config: Config) -> anyhow::Result<i32> {
    let listener = match &config.listen {
        Some(l) => Some(bind::listen(l.bind, l.port, l.backlog)?),
        None => None,
    };
    let addr = match &listener {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".to_string(),
    };
    let shared = Arc::new(Shared::new());
    // The pool decides its first spawns now; they are carried out in the loop. Publishing its health
    // before the probe thread starts means no probe ever sees an empty, sizeless pool.
    let pool = Pool::new(config.pool.clone(), config.kind.clone(), Instant::now());
    shared.publish(pool.health(), Snapshot::default());
    let app = listener
        .as_ref()
        .zip(config.listen.as_ref().map(|l| l.port));
    let probe_addr = match &config.probe {
        Some(probe) => start_probes(probe, app, config.probe_bind, shared.clone())?,
        None => String::from("off"),
    };
    become_subreaper();

    let poll = Poll::new().context("cannot create the event loop (epoll)")?;
    let mut signals = Signals::new(signals::HANDLED).context("cannot install signal handlers")?;
    poll.registry()
        .register(&mut signals, Source::Signals.token(), Interest::READABLE)?;

    log::info!(
        "event=listening addr={addr} probe={probe_addr} kind={} workers={} app={} python={} version={}",
        config.kind.name(),
        config.pool.size,
        config.app,
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
                    webhooks.send(webhook::Event::startup_failed(&message, Some(&output)));
                    webhooks.flush(Duration::from_secs(webhook::WEBHOOK_TIMEOUT_S + 1));
                }
                eprintln!("error: {message}");
                return Ok(worker::EXIT_BOOT_FAILED);
            }
        }
    }
    let (check_bell, mut check_rx) = Doorbell::new()?;
    poll.registry().register(
        &mut check_rx,
        Source::CheckWanted.token(),
        Interest::READABLE,
    )?;
    let _ = shared.check_bell.set(check_bell);
    let (mut watcher, mut autoreload_rx) = (None, None);
    if let Some((filter, dirs)) = config.autoreload.take() {
        let (bell, mut rx) = Doorbell::new()?;
        poll.registry()
            .register(&mut rx, Source::Autoreload.token(), Interest::READABLE)?;
        let w = reload::spawn(filter, bell).map_err(anyhow::Error::msg)?;
        for dir in dirs {
            w.watch(dir, true);
        }
        watcher = Some(w);
        autoreload_rx = Some(rx);
    }
    let (mut consume, mut broker_rx) = (None, None);
    if let Some(amqp) = config.consume.take() {
        let (bell, mut rx) = Doorbell::new()?;
        poll.registry()
            .register(&mut rx, Source::Broker.token(), Interest::READABLE)?;
        consume = Some(Consume::start(amqp, bell).context("cannot start the AMQP thread")?);
        broker_rx = Some(rx);
    }
    let celery = config.celery.map(Celery::new);
    let zygotes = config
        .kind
        .zygote(0)
        .map(|_| Zygotes::new(config.pool.boot_timeout));
    let mut master = Master {
        config,
        listener,
        consume,
        celery,
        broker_rx,
        poll,
        pool,
        procs: HashMap::new(),
        zygotes,
        zygote_procs: HashMap::new(),
        awaiting: HashMap::new(),
        orphans: std::collections::VecDeque::new(),
        shared,
        watcher,
        autoreload_rx,
        check_rx,
        last_memory_check: Instant::now(),
        totals: Totals::default(),
        webhooks,
        published: (Health::default(), Snapshot::default()),
        check_in_flight: None,
        check_turn: 0,
        notify: notify::socket(),
    };
    let code = master.run(signals);
    master.publish();
    if let Some(webhooks) = &master.webhooks {
        if let Some(error) = master
            .pool
            .fatal_error()
            .filter(|_| !master.published.0.started)
        {
            webhooks.send(webhook::Event::startup_failed(
                error,
                master.pool.boot_traceback(),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_its_own_token_and_comes_back_from_it() {
        let sources = [
            Source::Signals,
            Source::Autoreload,
            Source::CheckWanted,
            Source::Broker,
            Source::Status(1),
            Source::Control(1),
            Source::Status(0),
            Source::Control(7),
            Source::ZygoteStatus(1),
            Source::ZygoteControl(1),
            Source::ZygoteStatus(7),
        ];
        let tokens: std::collections::HashSet<Token> = sources.iter().map(|s| s.token()).collect();
        assert_eq!(tokens.len(), sources.len(), "no two sources share a token");
        for source in sources {
            assert_eq!(Source::of(source.token()), Some(source));
        }
        assert_eq!(Source::of(Token(FIRST_WORKER_TOKEN - 1)), None);
    }
}
