//! The master: binds, spawns, watches, reaps. The thin process layer around `pool`.
//!
//! Why this shape (tini's loop): one thread, one loop a reader can hold in their head —
//! `loop { carry out actions; publish health; wait for events; handle signals, pipes, reaping }`.
//! Each duty is a function named for it. The loop sleeps in epoll until a signal, a worker's pipe
//! or the pool's next deadline wakes it (at most once a second, so /alive can tell it is alive);
//! an idle master costs ~0 % CPU.

mod pipes;
mod preload;
mod source;
mod statuses;

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::unix::pipe::Receiver;
use mio::{Events, Interest, Poll};
use nix::sys::signal::{Signal as Sig, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;

use crate::bind;
use crate::config::Config;
use crate::lifecycle::ExitStatus;
use crate::metrics::{Snapshot, Totals};
use crate::notify;
use crate::pool::{Action, Pool, Signal, WorkerId};
use crate::prestart;
use crate::probe::{self, ProbeConfig};
use crate::protocol::{self, Message};
use crate::reload;
use crate::signals::{self, Event};
use crate::spawn;
use crate::state::{self, Doorbell, Health, Shared};
use crate::sys;
use crate::trim::Trimmer;
use crate::webhook;
use crate::zygote::Zygotes;

use self::pipes::{Proc, flush_control, read_status, send_control};
use self::preload::Preload;
use self::source::Source;
use self::statuses::Statuses;

/// The loop wakes at least this often, so the probe thread can tell a live loop from a stuck one.
const LOOP_TICK_MS: u64 = 1000;
/// A check request unanswered this long (its worker died or hangs) no longer blocks the next.
const CHECK_TIMEOUT_S: u64 = 5;

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
        Signal::Restart => Sig::SIGHUP,
        Signal::Quit => Sig::SIGQUIT,
        Signal::Kill => Sig::SIGKILL,
        Signal::DumpTraceback => Sig::SIGUSR2,
    };
    // The pid is one of our unreaped children, so it cannot have been recycled for another process.
    if let Err(e) = kill(Pid::from_raw(pid), sig) {
        log::debug!("event=signal_failed pid={pid} signal={sig} error={e}");
    }
}

/// Why the master could not start (it is then not running anything): for main to print.
#[derive(Debug)]
pub enum Error {
    /// The app's listening socket (address in use, no permission, a bad inherited fd).
    Bind(bind::Error),
    /// The probe server's port.
    Probe(String),
    /// A thread or an event-loop resource the master needs (epoll, a signal handler, a pipe).
    Setup { what: &'static str, error: String },
    /// What the kind runs beside the pool (consume: the broker thread), in its own words.
    Kind(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind(e) => write!(f, "{e}"),
            Error::Probe(e) => f.write_str(e),
            Error::Setup { what, error } => write!(f, "cannot start {what}: {error}"),
            Error::Kind(e) => f.write_str(e),
        }
    }
}

/// Maps a setup step's error to `Error::Setup`, naming the step.
fn setup<T, E: fmt::Display>(what: &'static str, result: Result<T, E>) -> Result<T, Error> {
    result.map_err(|e| Error::Setup {
        what,
        error: e.to_string(),
    })
}

/// Django's checks, asked of one ready worker at a time for the probes.
#[derive(Default)]
struct Checks {
    /// When the master last asked a worker to run the app's checks, until it answers.
    in_flight: Option<Instant>,
    /// Round robin over ready workers.
    turn: usize,
}

struct Master {
    config: Config,
    listener: Option<TcpListener>,
    poll: Poll,
    /// The workers' status pipes (the zygotes' are in `poll`).
    statuses: Statuses,
    pool: Pool,
    procs: HashMap<WorkerId, Proc>,
    /// --preload: the zygotes and their processes.
    preload: Option<Preload>,
    shared: Arc<Shared>,
    watcher: Option<reload::Watcher>,
    /// Read ends of the doorbells: the kind's, the autoreload watcher's and the probes'.
    kind_rx: Receiver,
    autoreload_rx: Option<Receiver>,
    check_rx: Receiver,
    last_memory_check: Instant,
    /// Request metrics summed from every worker's heartbeats, and bad lines counted.
    totals: Totals,
    protocol_errors: u64,
    webhooks: Option<webhook::Webhooks>,
    /// The last published state, to turn changes into webhook events.
    published: (Health, Snapshot),
    checks: Checks,
    /// systemd's $NOTIFY_SOCKET (Type=notify), if any.
    notify: Option<std::os::unix::net::SocketAddr>,
    /// When to hand back code pages that startup and bursts of work touched.
    trimmer: Trimmer,
}

impl Master {
    /// Carries out the pool's (and the zygotes') actions until neither has any; Some(code) when
    /// the master should exit.
    fn carry_out_actions(&mut self) -> Option<i32> {
        loop {
            let actions = self.pool.take_actions();
            let zygote_actions = self
                .preload
                .as_mut()
                .map(|p| p.zygotes.take_actions())
                .unwrap_or_default();
            if actions.is_empty() && zygote_actions.is_empty() {
                return None;
            }
            for action in zygote_actions {
                self.carry_out_zygote_action(action);
            }
            for action in actions {
                match action {
                    Action::Spawn { worker, generation } => match &mut self.preload {
                        Some(preload) => preload.zygotes.want(worker, generation, Instant::now()),
                        None => self.spawn(worker, generation),
                    },
                    Action::Cancel { worker, timed_out } => self.cancel(worker, timed_out),
                    Action::Signal { pid, signal } => {
                        if signal != Signal::DumpTraceback {
                            self.config.kind.worker_leaving(pid);
                        }
                        send_signal(pid, signal)
                    }
                    Action::LogTraceback(text) => crate::logging::traceback(&text),
                    Action::Exit { code } => {
                        self.config.kind.close();
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
                let proc_ = pipes::watch(
                    self.statuses.registry(),
                    Source::Status(id),
                    self.poll.registry(),
                    Source::Control(id),
                    spawned,
                    &launch.bootstrap,
                );
                self.procs.insert(id, proc_);
                self.pool.spawned(id, pid);
            }
            Err(e) => {
                let error = spawn_error(&launch, &e);
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
                let pids: Vec<i32> = if self.config.kind.forwards_log_reopen() {
                    // Zygotes too: a worker forked after the rotation inherits their log file.
                    let zygotes = self.preload.iter().flat_map(|p| p.procs.values());
                    let zygotes = zygotes.map(|p| p.pid);
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

    /// waitpid(-1) until nothing is left: workers go to the pool, zygotes to theirs, orphans are
    /// just reaped.
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
            if self.zygote_reaped(pid, exit) {
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
                    if let Some(preload) = &mut self.preload {
                        preload.orphan_reaped(pid, exit);
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
        self.config.kind.worker_gone(pid);
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

    /// One status line as a message; a bad line is logged and counted, and skipped.
    fn parse(&mut self, pid: i32, line: &[u8]) -> Option<Message> {
        match protocol::parse_message(line) {
            Ok(message) => Some(message),
            Err(error) => {
                self.protocol_errors += 1;
                log::warn!(
                    "event=bad_message pid={pid} error={:?} line={:?}",
                    error.to_string(),
                    String::from_utf8_lossy(line)
                );
                None
            }
        }
    }

    fn deliver_messages(&mut self, proc_: &mut Proc) {
        let now = Instant::now();
        for line in read_status(self.statuses.registry(), proc_) {
            let Some(message) = self.parse(proc_.pid, &line) else {
                continue;
            };
            match &message {
                Message::Ready {
                    django,
                    dirs,
                    reject_reasons,
                    ..
                } => {
                    if *django {
                        self.shared.set_django();
                    }
                    self.totals.know_rejections(reject_reasons);
                    if let Some(watcher) = &self.watcher {
                        for dir in dirs {
                            watcher.watch(PathBuf::from(dir), false);
                        }
                    }
                }
                Message::Checked(result) => {
                    self.checks.in_flight = None;
                    self.shared.store_checks(result.clone());
                }
                Message::Heartbeat {
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
                Message::Boot
                | Message::Settle { .. }
                | Message::Celery(_)
                | Message::Failed(_)
                | Message::Forked { .. } => {}
            }
            if self.config.kind.message(proc_.pid, &message, now) {
                self.shared.set_django();
            }
            self.pool.message(proc_.pid, message, now)
        }
    }

    fn handle_worker_io(&mut self, id: WorkerId, source: Source) {
        let Some(mut proc_) = self.procs.remove(&id) else {
            return;
        };
        if source == Source::Status(id) {
            self.deliver_messages(&mut proc_);
        } else {
            flush_control(self.poll.registry(), &mut proc_);
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
                self.config.kind.next_deadline(),
                self.preload
                    .as_ref()
                    .and_then(|p| p.zygotes.next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map_or(tick, |d| d.saturating_duration_since(now).min(tick));
            let timeout = self.statuses.cap(timeout);
            let polled_at = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("event=poll_failed error={e}");
                }
                continue;
            }
            let waited = polled_at.elapsed();
            let mut statuses = self.statuses.polled();
            for event in events.iter() {
                match Source::of(event.token()) {
                    Some(Source::Signals) => self.handle_signals(&mut signals),
                    Some(Source::Autoreload)
                        if self.autoreload_rx.as_mut().is_some_and(state::answer) =>
                    {
                        self.pool.reload(Instant::now())
                    }
                    Some(Source::Kind) => {
                        state::answer(&mut self.kind_rx);
                        self.config.kind.woken();
                    }
                    Some(Source::CheckWanted) => {
                        state::answer(&mut self.check_rx);
                        if self.shared.take_check_wanted() {
                            self.request_check();
                        }
                    }
                    Some(Source::Statuses) => statuses = true,
                    Some(source @ (Source::Status(id) | Source::Control(id))) => {
                        self.handle_worker_io(id, source)
                    }
                    Some(source @ (Source::ZygoteStatus(id) | Source::ZygoteControl(id))) => {
                        self.handle_zygote_io(id, source)
                    }
                    Some(Source::Autoreload) | None => {}
                }
            }
            if statuses {
                for id in self.statuses.ready() {
                    self.handle_worker_io(id, Source::Status(id));
                }
            }
            self.check_memory();
            let started = self.published.0.is_started();
            self.trimmer.tick(
                started,
                waited,
                || sys::resident_bytes(std::process::id() as i32),
                Instant::now(),
            );
            self.pool.tick(Instant::now());
            if let Some(preload) = &mut self.preload {
                if self.pool.health().stopping {
                    preload.zygotes.shutdown(Instant::now());
                }
                preload.zygotes.tick(Instant::now());
            }
            self.pump();
            let polled = self.config.kind.status_polled(Instant::now());
            self.statuses.watch(self.poll.registry(), polled);
        }
    }

    /// What the kind has for its workers (consume: deliveries), or a reason to stop.
    fn pump(&mut self) {
        let pump = self.config.kind.pump(self.pool.health().stopping);
        if let Some(error) = pump.fatal {
            self.pool.abort(1, error, Instant::now());
        }
        for (pid, frame) in pump.frames {
            if let Some((&id, proc_)) = self.procs.iter_mut().find(|(_, p)| p.pid == pid) {
                send_control(self.poll.registry(), Source::Control(id), proc_, &frame);
            }
        }
    }

    /// A probe wants fresh Django checks: ask the next ready worker, unless a request is pending.
    fn request_check(&mut self) {
        let now = Instant::now();
        if self
            .checks
            .in_flight
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(CHECK_TIMEOUT_S))
        {
            return;
        }
        let pids = self.pool.ready_pids();
        if pids.is_empty() {
            return;
        }
        self.checks.turn = (self.checks.turn + 1) % pids.len();
        let pid = pids[self.checks.turn];
        if let Some((&id, proc_)) = self.procs.iter_mut().find(|(_, p)| p.pid == pid) {
            send_control(
                self.poll.registry(),
                Source::Control(id),
                proc_,
                b"{\"t\":\"check\"}\n",
            );
            self.checks.in_flight = Some(now);
            log::debug!("event=check_requested pid={pid}");
        }
    }

    /// Hands the current state to the probe thread, and its changes to the webhooks.
    fn publish(&mut self) {
        let mut health = self.pool.health();
        self.config.kind.judge(&mut health, Instant::now());
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
            protocol_errors: self.protocol_errors,
            ..Snapshot::default()
        };
        self.pool.fill_metrics(&mut snapshot);
        if let Some(preload) = &self.preload {
            snapshot.zygotes = preload.zygotes.live();
            snapshot.zygote_restarts = Some(preload.zygotes.restarts);
        }
        self.config.kind.metrics(&mut snapshot);
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
) -> Result<String, Error> {
    let local = |listener: &TcpListener| {
        listener
            .local_addr()
            .map_err(|e| Error::Probe(format!("cannot read the app socket's address: {e}")))
    };
    let (ip, port) = match (app, config.port) {
        (Some((listener, _)), Some(port)) => (local(listener)?.ip(), port),
        // A free port for the app, so a free one for probes too.
        (Some((listener, 0)), None) => (local(listener)?.ip(), 0),
        (Some((listener, _)), None) => {
            let addr = local(listener)?;
            let port = addr.port().checked_add(1).ok_or_else(|| {
                Error::Probe("no port above 65535 for probes; set --probe-port".into())
            })?;
            (addr.ip(), port)
        }
        (None, port) => (bind, port.unwrap_or(0)),
    };
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr).map_err(|e| {
        Error::Probe(if e.kind() == ErrorKind::AddrInUse {
            format!(
                "cannot listen for probes on {addr}: address already in use; pick another --probe-port"
            )
        } else {
            format!("cannot listen for probes on {addr}: {e}")
        })
    })?;
    let probe_addr = local(&listener)?.to_string();
    let config = ProbeConfig {
        listen_fd: app.map_or(-1, |(l, _)| l.as_raw_fd()),
        ..config.clone()
    };
    setup("the probe thread", probe::spawn(listener, config, shared))?;
    Ok(probe_addr)
}

/// Runs the server until it shuts down; the exit code, or why it could not start.
pub fn run(mut config: Config) -> Result<i32, Error> {
    let listener = match &config.listen {
        Some(l) => Some(bind::listen(l.bind, l.port, l.backlog).map_err(Error::Bind)?),
        None => None,
    };
    let addr = match &listener {
        Some(l) => setup("the app socket", l.local_addr())?.to_string(),
        None => "none".to_string(),
    };
    let shared = Arc::new(Shared::new());
    // The pool decides its first spawns now; they are carried out in the loop. Publishing its health
    // before the probe thread starts means no probe ever sees an empty, sizeless pool.
    let pool = Pool::new(
        config.pool.clone(),
        config.kind.supervision(),
        Instant::now(),
    );
    shared.publish(pool.health(), Snapshot::default());
    let app = listener
        .as_ref()
        .zip(config.listen.as_ref().map(|l| l.port));
    let probe_addr = match &config.probe {
        Some(probe) => start_probes(probe, app, config.probe_bind, shared.clone())?,
        None => String::from("off"),
    };
    become_subreaper();

    let poll = setup("the event loop (epoll)", Poll::new())?;
    let statuses = setup("the event loop (epoll)", Statuses::new(poll.registry()))?;
    let mut signals = setup("the signal handlers", Signals::new(signals::HANDLED))?;
    setup(
        "the signal handlers",
        poll.registry()
            .register(&mut signals, Source::Signals.token(), Interest::READABLE),
    )?;

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
        Some(setup(
            "the webhook thread",
            webhook::spawn(config.webhook_urls.clone()),
        )?)
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
                return Ok(protocol::EXIT_BOOT_FAILED);
            }
        }
    }
    let (check_bell, mut check_rx) = setup("the probes' doorbell", Doorbell::new())?;
    setup(
        "the probes' doorbell",
        poll.registry().register(
            &mut check_rx,
            Source::CheckWanted.token(),
            Interest::READABLE,
        ),
    )?;
    let _ = shared.check_bell.set(check_bell);
    let (mut watcher, mut autoreload_rx) = (None, None);
    if let Some((filter, dirs)) = config.autoreload.take() {
        let (bell, mut rx) = setup("the autoreload watcher", Doorbell::new())?;
        setup(
            "the autoreload watcher",
            poll.registry()
                .register(&mut rx, Source::Autoreload.token(), Interest::READABLE),
        )?;
        let w = setup("the autoreload watcher", reload::spawn(filter, bell))?;
        for dir in dirs {
            w.watch(dir, true);
        }
        watcher = Some(w);
        autoreload_rx = Some(rx);
    }
    let (kind_bell, mut kind_rx) = setup("the kind's doorbell", Doorbell::new())?;
    setup(
        "the kind's doorbell",
        poll.registry()
            .register(&mut kind_rx, Source::Kind.token(), Interest::READABLE),
    )?;
    config.kind.start(kind_bell).map_err(Error::Kind)?;
    let preload = config
        .kind
        .zygote(0)
        .map(|_| Preload::new(Zygotes::new(config.pool.boot_timeout)));
    let mut master = Master {
        config,
        listener,
        poll,
        statuses,
        pool,
        procs: HashMap::new(),
        preload,
        shared,
        watcher,
        kind_rx,
        autoreload_rx,
        check_rx,
        last_memory_check: Instant::now(),
        totals: Totals::default(),
        protocol_errors: 0,
        webhooks,
        published: (Health::default(), Snapshot::default()),
        checks: Checks::default(),
        notify: notify::socket(),
        trimmer: Trimmer::Starting,
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
