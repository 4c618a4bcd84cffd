//! The worker pool as a pure state machine: events in (a worker spawned, spoke, exited; time
//! passed; a reload, a scale or a shutdown was asked for), actions out (spawn, signal, exit).
//!
//! Why pure: every supervision rule (boot failures stop the server instead of looping, crashes back
//! off, a replacement is ready before its predecessor drains, a drain ends in SIGKILL at its
//! deadline, shutdown waits for the last worker) lives here and is unit-tested with a fake clock and
//! fake pids. `master` only carries actions out on real processes.
//!
//! Worker lifecycle: `Spawned -> Booting -> Ready -> Draining -> (removed on exit)`.
//! Pool lifecycle: `Starting -> Running -> Delaying -> Draining`, or `-> Failing` on a fatal error.
//!
//! Replacing a worker (reload, --max-requests, --max-memory) always starts a *successor* in the same
//! slot first; the old worker is told to drain only once the successor is Ready, so the pool never
//! has fewer ready workers than its size while it happens. A reload walks the slots one at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::worker::{BootFailure, EXIT_BOOT_FAILED, Message};

/// First respawn delay after a quick crash; it doubles up to the maximum.
pub const RESPAWN_BACKOFF_MIN_MS: u64 = 100;
pub const RESPAWN_BACKOFF_MAX_S: u64 = 30;
/// A worker that has been ready this long counts as healthy: its slot's crash count resets.
pub const STABLE_AFTER_S: u64 = 10;
/// This many quick crashes in a row on one slot is a crash loop (reported by /alive).
pub const CRASH_LOOP_CRASHES: u32 = 5;
/// On a fast shutdown (INT, QUIT), workers get this long after SIGQUIT before SIGKILL.
pub const FAST_SHUTDOWN_GRACE_MS: u64 = 1000;
/// A worker killed for a timeout gets this long after SIGTERM (and the traceback dump) before SIGKILL.
pub const HUNG_KILL_GRACE_MS: u64 = 1000;

pub type WorkerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Quit,
    Kill,
    /// SIGUSR2: the worker's faulthandler prints every thread's traceback.
    DumpTraceback,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a worker for `slot`; answer with `spawned` or `spawn_failed`.
    Spawn {
        worker: WorkerId,
        slot: usize,
        generation: u64,
    },
    Signal {
        pid: i32,
        signal: Signal,
    },
    /// Every worker is gone: the master exits with this code.
    Exit {
        code: i32,
    },
}

/// How a process ended, as waitpid reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit_code={c}"),
            ExitStatus::Signal(s) => write!(f, "signal={s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// Forked; the interpreter has not spoken yet.
    Spawned,
    /// The interpreter is up and importing the app.
    Booting,
    Ready {
        since: Instant,
        last_heartbeat: Instant,
    },
    /// Told to stop (SIGTERM or SIGQUIT); SIGKILL at `kill_at`.
    Draining { kill_at: Instant },
}

impl WorkerState {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Spawned => "spawned",
            WorkerState::Booting => "booting",
            WorkerState::Ready { .. } => "ready",
            WorkerState::Draining { .. } => "draining",
        }
    }
}

/// Why a worker is being restarted: the `reason` of `hurricane_worker_restarts_total` and of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Crash,
    Timeout,
    MaxRequests,
    MaxMemory,
    Reload,
    Scale,
    BootTimeout,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Crash => "crash",
            Reason::Timeout => "timeout",
            Reason::MaxRequests => "max_requests",
            Reason::MaxMemory => "max_memory",
            Reason::Reload => "reload",
            Reason::Scale => "scale",
            Reason::BootTimeout => "boot_timeout",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub slot: usize,
    pub pid: Option<i32>,
    pub generation: u64,
    pub state: WorkerState,
    pub spawned_at: Instant,
    /// Why the pool killed or is replacing this worker, so its exit is not called a crash.
    ending: Option<Reason>,
    /// For a successor: the worker it replaces once ready.
    replaces: Option<WorkerId>,
    /// For a worker being replaced: its successor has been started.
    replaced_by: Option<WorkerId>,
    requests: u64,
    /// Recycle after this many requests (--max-requests plus this worker's jitter).
    max_requests: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// Quick crashes in a row; reset when a worker stays ready for STABLE_AFTER_S.
    crashes: u32,
    respawn_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Starting,
    Running,
    /// SIGTERM received: still serving, /ready failing, until `until`.
    Delaying {
        until: Instant,
    },
    /// Workers told to stop; SIGKILL at their own deadlines.
    Draining,
    /// A fatal error: every worker is being killed, then the master exits with `code`.
    Failing {
        code: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: finish in-flight requests.
    Graceful,
    /// SIGINT, SIGQUIT: stop now.
    Fast,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub size: usize,
    pub boot_timeout: Duration,
    pub graceful_timeout: Duration,
    pub shutdown_delay: Duration,
    /// Kill a worker whose request runs longer (None: never).
    pub timeout: Option<Duration>,
    /// Kill a ready worker silent for longer (None: never).
    pub heartbeat_timeout: Option<Duration>,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub max_memory_bytes: Option<u64>,
}

/// What the probes (and metrics) need to know, copied out after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub started: bool,
    pub stopping: bool,
    pub size: usize,
    pub ready: usize,
    pub booted: usize,
    pub workers: usize,
    pub crash_loop: Option<String>,
}

pub struct Pool {
    config: PoolConfig,
    phase: Phase,
    workers: BTreeMap<WorkerId, Worker>,
    slots: Vec<Slot>,
    next_id: WorkerId,
    generation: u64,
    /// The generation a reload is rolling out, while one is.
    reload_to: Option<u64>,
    /// A HUP that came before the first full pool: carried out once started.
    reload_pending: bool,
    started_at: Instant,
    actions: Vec<Action>,
    /// The first fatal error, for main to print as the last line.
    fatal: Option<String>,
    last_traceback: Option<String>,
    /// State of the jitter generator (xorshift): worker limits need spread, not cryptography.
    jitter_state: u64,
    pub requests_total: u64,
    pub restarts: BTreeMap<Reason, u64>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// From start to the first full pool being ready.
    startup_duration: Option<Duration>,
}

impl Pool {
    pub fn new(config: PoolConfig, now: Instant) -> Pool {
        let slots = vec![Slot::default(); config.size];
        let mut pool = Pool {
            config,
            phase: Phase::Starting,
            workers: BTreeMap::new(),
            slots,
            next_id: 1,
            generation: 0,
            reload_to: None,
            reload_pending: false,
            started_at: now,
            actions: Vec::new(),
            fatal: None,
            last_traceback: None,
            jitter_state: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            requests_total: 0,
            restarts: BTreeMap::new(),
            reloads_succeeded: 0,
            reloads_failed: 0,
            startup_duration: None,
        };
        pool.tick(now);
        pool
    }

    /// Actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn fatal_error(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// The last boot traceback printed, for the startup/failed webhook.
    pub fn boot_traceback(&self) -> Option<&str> {
        self.last_traceback.as_deref()
    }

    /// Pids of ready workers, in a stable order (the master picks one to run the app's checks).
    pub fn ready_pids(&self) -> Vec<i32> {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .filter_map(|w| w.pid)
            .collect()
    }

    /// Pids of live workers, for the master's memory checks.
    pub fn pids(&self) -> Vec<i32> {
        self.workers.values().filter_map(|w| w.pid).collect()
    }

    fn worker_by_pid(&mut self, pid: i32) -> Option<&mut Worker> {
        self.workers.values_mut().find(|w| w.pid == Some(pid))
    }

    fn jitter(&mut self) -> u64 {
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        if self.config.max_requests_jitter == 0 {
            0
        } else {
            x % (self.config.max_requests_jitter + 1)
        }
    }

    pub fn spawned(&mut self, worker: WorkerId, pid: i32) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.pid = Some(pid);
            log::info!(
                "event=spawn worker={} slot={} pid={pid} gen={}",
                w.id,
                w.slot,
                w.generation
            );
        }
    }

    /// The interpreter could not be started at all (missing python, fork failure): fatal.
    pub fn spawn_failed(&mut self, worker: WorkerId, error: String, now: Instant) {
        self.workers.remove(&worker);
        self.fail(1, error, now);
    }

    pub fn message(&mut self, pid: i32, message: Message, now: Instant) {
        let failing = matches!(self.phase, Phase::Failing { .. });
        let timeout = self.config.timeout;
        let Some(worker) = self.worker_by_pid(pid) else {
            return;
        };
        // Decisions that need the whole pool are made after the worker's borrow ends.
        let mut retire = None;
        let mut hung = false;
        let mut failure = None;
        let mut requests_seen = 0;
        match message {
            Message::Boot => {
                if worker.state == WorkerState::Spawned {
                    worker.state = WorkerState::Booting;
                }
            }
            Message::Ready { boot_ms, .. } => {
                if matches!(worker.state, WorkerState::Spawned | WorkerState::Booting) {
                    worker.state = WorkerState::Ready {
                        since: now,
                        last_heartbeat: now,
                    };
                    log::info!(
                        "event=ready worker={} slot={} pid={pid} gen={} boot_ms={boot_ms}",
                        worker.id,
                        worker.slot,
                        worker.generation
                    );
                    retire = worker.replaces.take();
                }
            }
            Message::Heartbeat { requests, busy, .. } => {
                worker.requests += requests;
                requests_seen = requests;
                if let WorkerState::Ready { last_heartbeat, .. } = &mut worker.state {
                    *last_heartbeat = now;
                }
                if let (Some(busy), Some(limit)) = (busy, timeout)
                    && busy.elapsed >= limit
                    && worker.ending.is_none()
                {
                    log::error!(
                        "event=timeout worker={} pid={pid} method={} path={:?} elapsed_s={:.1}",
                        worker.id,
                        busy.method,
                        busy.path,
                        busy.elapsed.as_secs_f64()
                    );
                    hung = true;
                }
            }
            Message::Failed(f) => failure = Some(f).filter(|_| !failing),
            Message::Checked(_) => {} // the master's business: it answers the probes
        }
        self.requests_total += requests_seen;
        if let Some(old) = retire {
            self.retire(old, now);
        }
        if hung {
            self.kill_hung(pid, Reason::Timeout, now);
        }
        if let Some(failure) = failure {
            self.boot_failed(failure, now);
        }
        self.tick(now);
    }

    /// The successor of `old` is ready: `old` drains (new up before old goes).
    fn retire(&mut self, old: WorkerId, now: Instant) {
        let graceful = self.config.graceful_timeout;
        let Some(w) = self.workers.get_mut(&old) else {
            return;
        };
        let reason = w.ending.unwrap_or(Reason::Reload);
        if let Some(pid) = w.pid {
            self.actions.push(Action::Signal {
                pid,
                signal: Signal::Term,
            });
        }
        w.state = WorkerState::Draining {
            kill_at: now + graceful,
        };
        *self.restarts.entry(reason).or_default() += 1;
        log::info!(
            "event=retire worker={old} slot={} reason={}",
            w.slot,
            reason.name()
        );
    }

    /// A request over --timeout or a silent worker: traceback, TERM, then KILL after a short grace.
    fn kill_hung(&mut self, pid: i32, reason: Reason, now: Instant) {
        if let Some(w) = self.worker_by_pid(pid) {
            w.ending = Some(reason);
            w.state = WorkerState::Draining {
                kill_at: now + Duration::from_millis(HUNG_KILL_GRACE_MS),
            };
            self.actions.push(Action::Signal {
                pid,
                signal: Signal::DumpTraceback,
            });
            self.actions.push(Action::Signal {
                pid,
                signal: Signal::Term,
            });
        }
    }

    /// The master read a worker's resident memory.
    pub fn memory(&mut self, pid: i32, rss_bytes: u64, now: Instant) {
        let Some(limit) = self.config.max_memory_bytes else {
            return;
        };
        let id = match self.worker_by_pid(pid) {
            Some(w)
                if rss_bytes > limit
                    && matches!(w.state, WorkerState::Ready { .. })
                    && w.ending.is_none() =>
            {
                log::warn!(
                    "event=max_memory worker={} pid={pid} rss_mb={}",
                    w.id,
                    rss_bytes >> 20
                );
                w.id
            }
            _ => return,
        };
        self.replace(id, Reason::MaxMemory, now);
    }

    /// Starts a successor for `old`'s slot; `old` drains when the successor is ready.
    fn replace(&mut self, old: WorkerId, reason: Reason, now: Instant) {
        let Some(w) = self.workers.get_mut(&old) else {
            return;
        };
        if w.replaced_by.is_some() {
            return;
        }
        w.ending = Some(reason);
        let slot = w.slot;
        let successor = self.start_worker(slot, now);
        if let Some(w) = self.workers.get_mut(&old) {
            w.replaced_by = Some(successor);
        }
        if let Some(s) = self.workers.get_mut(&successor) {
            s.replaces = Some(old);
        }
        log::info!(
            "event=replace worker={old} slot={slot} successor={successor} reason={}",
            reason.name()
        );
    }

    fn boot_failed(&mut self, failure: BootFailure, now: Instant) {
        // The traceback is printed once, not once per worker or per respawn.
        if self.last_traceback.as_deref() != Some(failure.traceback.as_str()) {
            crate::logging::traceback(&failure.traceback);
            self.last_traceback = Some(failure.traceback.clone());
        }
        if self.phase == Phase::Starting {
            self.fail(EXIT_BOOT_FAILED, failure.summary(), now);
        } else {
            log::error!("event=boot_failed {}", failure.summary());
        }
    }

    /// A fatal error: kill every worker, exit with `code` once they are gone.
    fn fail(&mut self, code: i32, error: String, now: Instant) {
        if matches!(self.phase, Phase::Failing { .. }) {
            return;
        }
        self.fatal.get_or_insert(error);
        self.phase = Phase::Failing { code };
        // tick sends the SIGKILLs: a drain deadline of now.
        for w in self.workers.values_mut() {
            w.state = WorkerState::Draining { kill_at: now };
        }
        self.tick(now);
    }

    pub fn exited(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let Some(id) = self
            .workers
            .values()
            .find(|w| w.pid == Some(pid))
            .map(|w| w.id)
        else {
            return;
        };
        let worker = self.workers.remove(&id).expect("found above");
        let slot = worker.slot;
        let booting = matches!(worker.state, WorkerState::Spawned | WorkerState::Booting);
        if let Some(old) = worker.replaces.filter(|_| booting) {
            // A successor died before it was ready: its predecessor keeps serving.
            if let Some(w) = self.workers.get_mut(&old) {
                w.replaced_by = None;
                if w.ending != Some(Reason::Reload) {
                    w.ending = None; // the limit still holds: replaced again after the backoff
                }
            }
            let slot_state = &mut self.slots[slot];
            slot_state.crashes += 1;
            slot_state.respawn_at = Some(now + backoff(slot_state.crashes.max(2)));
            log::error!("event=replace_failed worker={id} slot={slot} pid={pid} {status}");
            if self.reload_to.take().is_some() {
                self.reloads_failed += 1;
                log::error!(
                    "event=reload result=failed gen={} reason=\"new workers did not boot; old workers keep serving\"",
                    self.generation
                );
            }
            self.tick(now);
            return;
        }
        match (&self.phase, &worker.state) {
            (Phase::Failing { .. } | Phase::Draining, _) => {
                log::info!(
                    "event=exit worker={id} slot={slot} pid={pid} {status} requests={}",
                    worker.requests
                );
            }
            (_, WorkerState::Draining { .. }) => {
                log::info!(
                    "event=exit worker={id} slot={slot} pid={pid} {status} requests={}",
                    worker.requests
                );
                if let Some(reason @ (Reason::Timeout | Reason::Crash)) = worker.ending {
                    *self.restarts.entry(reason).or_default() += 1;
                }
            }
            (Phase::Starting, WorkerState::Spawned | WorkerState::Booting) => {
                let error = match (worker.ending, status) {
                    (Some(Reason::BootTimeout), _) => format!(
                        "worker did not boot within {}s; raise --boot-timeout or find what the import waits on",
                        self.config.boot_timeout.as_secs_f64()
                    ),
                    (_, ExitStatus::Code(EXIT_BOOT_FAILED)) => "the app failed to load".to_string(),
                    (_, status) => format!("worker died while loading the app ({status})"),
                };
                log::error!("event=boot_failed worker={id} slot={slot} pid={pid} {status}");
                self.fail(EXIT_BOOT_FAILED, error, now);
            }
            (_, state) => {
                let stable = matches!(state, WorkerState::Ready { since, .. }
                    if now.duration_since(*since) >= Duration::from_secs(STABLE_AFTER_S));
                let reason = worker.ending.unwrap_or(Reason::Crash);
                *self.restarts.entry(reason).or_default() += 1;
                let slot_state = &mut self.slots[slot];
                if stable {
                    slot_state.crashes = 0;
                }
                slot_state.crashes += 1;
                let delay = backoff(slot_state.crashes);
                slot_state.respawn_at = Some(now + delay);
                log::warn!(
                    "event=worker_died worker={id} slot={slot} pid={pid} {status} reason={} crashes={} respawn_in_ms={}",
                    reason.name(),
                    slot_state.crashes,
                    delay.as_millis()
                );
                // Its successor, if one was booting, now simply fills the slot.
                if let Some(successor) = worker.replaced_by
                    && let Some(s) = self.workers.get_mut(&successor)
                {
                    s.replaces = None;
                }
            }
        }
        self.tick(now);
    }

    /// SIGHUP: roll out a new generation, slot by slot; a HUP during a reload restarts it.
    pub fn reload(&mut self, now: Instant) {
        match self.phase {
            Phase::Starting => {
                log::info!("event=reload_deferred reason=starting");
                self.reload_pending = true;
            }
            Phase::Running => {
                self.generation += 1;
                log::info!("event=reload gen={}", self.generation);
                // Successors of an older reload are stale: stop them; their slots are redone.
                let stale: Vec<WorkerId> = self
                    .workers
                    .values()
                    .filter(|w| w.replaces.is_some() && w.generation < self.generation)
                    .map(|w| w.id)
                    .collect();
                for id in stale {
                    let w = self.workers.get_mut(&id).expect("listed above");
                    let old = w.replaces.take();
                    if let Some(pid) = w.pid {
                        self.actions.push(Action::Signal {
                            pid,
                            signal: Signal::Kill,
                        });
                    }
                    w.state = WorkerState::Draining {
                        kill_at: now + Duration::from_secs(u32::MAX as u64),
                    };
                    if let Some(old) = old.and_then(|o| self.workers.get_mut(&o)) {
                        old.replaced_by = None;
                    }
                }
                self.reload_to = Some(self.generation);
            }
            _ => log::info!("event=reload_ignored reason=stopping"),
        }
        self.tick(now);
    }

    /// SIGTTIN (+1) / SIGTTOU (-1): change the pool size, never below one.
    pub fn scale(&mut self, up: bool, now: Instant) {
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            return;
        }
        if up {
            self.config.size += 1;
            self.slots.push(Slot::default());
        } else if self.config.size > 1 {
            self.config.size -= 1;
            self.slots.pop();
            let gone = self.config.size;
            let graceful = self.config.graceful_timeout;
            for w in self.workers.values_mut().filter(|w| w.slot == gone) {
                if matches!(w.state, WorkerState::Draining { .. }) {
                    continue;
                }
                if let Some(pid) = w.pid {
                    self.actions.push(Action::Signal {
                        pid,
                        signal: Signal::Term,
                    });
                }
                w.ending = Some(Reason::Scale);
                w.state = WorkerState::Draining {
                    kill_at: now + graceful,
                };
                *self.restarts.entry(Reason::Scale).or_default() += 1;
            }
        } else {
            log::warn!("event=scale_refused workers=1 reason=\"never below one worker\"");
            return;
        }
        log::info!("event=scale workers={}", self.config.size);
        self.tick(now);
    }

    /// SIGTERM (graceful) or SIGINT/SIGQUIT (fast); a second request while stopping kills at once.
    pub fn shutdown(&mut self, kind: Shutdown, now: Instant) {
        match self.phase {
            Phase::Failing { .. } => {}
            Phase::Delaying { .. } | Phase::Draining => {
                log::warn!("event=shutdown_escalated");
                self.phase = Phase::Draining;
                self.drain_all(Signal::Kill, now, now);
            }
            Phase::Starting | Phase::Running => match kind {
                Shutdown::Graceful if !self.config.shutdown_delay.is_zero() => {
                    log::info!(
                        "event=shutdown kind=graceful delay_s={}",
                        self.config.shutdown_delay.as_secs_f64()
                    );
                    self.phase = Phase::Delaying {
                        until: now + self.config.shutdown_delay,
                    };
                }
                Shutdown::Graceful => {
                    log::info!("event=shutdown kind=graceful");
                    self.phase = Phase::Draining;
                    self.drain_all(Signal::Term, now, now + self.config.graceful_timeout);
                }
                Shutdown::Fast => {
                    log::info!("event=shutdown kind=fast");
                    self.phase = Phase::Draining;
                    self.drain_all(
                        Signal::Quit,
                        now,
                        now + Duration::from_millis(FAST_SHUTDOWN_GRACE_MS),
                    );
                }
            },
        }
        self.tick(now);
    }

    /// Tells every worker to stop with `signal`; SIGKILL follows at `kill_at` (sent by tick).
    fn drain_all(&mut self, signal: Signal, now: Instant, kill_at: Instant) {
        for w in self.workers.values_mut() {
            if signal == Signal::Kill {
                w.state = WorkerState::Draining { kill_at: now };
                continue;
            }
            if matches!(w.state, WorkerState::Draining { kill_at: k } if k <= kill_at) {
                continue; // already stopping, on an earlier deadline
            }
            if let Some(pid) = w.pid {
                self.actions.push(Action::Signal { pid, signal });
            }
            w.state = WorkerState::Draining { kill_at };
        }
    }

    /// Time passed: respawn, enforce deadlines, move between phases. Call after every event.
    pub fn tick(&mut self, now: Instant) {
        if let Phase::Delaying { until } = self.phase
            && now >= until
        {
            log::info!("event=drain workers={}", self.workers.len());
            self.phase = Phase::Draining;
            self.drain_all(Signal::Term, now, now + self.config.graceful_timeout);
        }

        // Deadlines: boot timeouts, silent workers and drain deadlines.
        let mut hung = Vec::new();
        for w in self.workers.values_mut() {
            let Some(pid) = w.pid else { continue };
            match w.state {
                WorkerState::Spawned | WorkerState::Booting
                    if w.ending.is_none()
                        && now.duration_since(w.spawned_at) >= self.config.boot_timeout =>
                {
                    log::error!(
                        "event=boot_timeout worker={} slot={} pid={pid}",
                        w.id,
                        w.slot
                    );
                    w.ending = Some(Reason::BootTimeout);
                    self.actions.push(Action::Signal {
                        pid,
                        signal: Signal::Kill,
                    });
                }
                WorkerState::Draining { kill_at } if now >= kill_at => {
                    log::warn!("event=kill worker={} pid={pid}", w.id);
                    self.actions.push(Action::Signal {
                        pid,
                        signal: Signal::Kill,
                    });
                    // Once is enough: the pid stays ours (a zombie) until reaped, and SIGKILL cannot be caught.
                    w.state = WorkerState::Draining {
                        kill_at: now + Duration::from_secs(u32::MAX as u64),
                    };
                }
                WorkerState::Ready {
                    since,
                    last_heartbeat,
                } => {
                    if now.duration_since(since) >= Duration::from_secs(STABLE_AFTER_S) {
                        self.slots[w.slot].crashes = 0;
                    }
                    if let Some(limit) = self.config.heartbeat_timeout
                        && now.duration_since(last_heartbeat) >= limit
                    {
                        log::error!(
                            "event=heartbeat_timeout worker={} pid={pid} silent_s={:.1}",
                            w.id,
                            now.duration_since(last_heartbeat).as_secs_f64()
                        );
                        hung.push(pid);
                    }
                }
                _ => {}
            }
        }
        for pid in hung {
            self.kill_hung(pid, Reason::Timeout, now);
        }

        match self.phase {
            Phase::Starting | Phase::Running | Phase::Delaying { .. } => {
                self.fill_slots(now);
                if matches!(self.phase, Phase::Running) {
                    self.recycle(now);
                    self.roll_reload(now);
                }
            }
            Phase::Draining => {
                if self.workers.is_empty() {
                    self.actions.push(Action::Exit { code: 0 });
                }
            }
            Phase::Failing { code } => {
                if self.workers.is_empty() {
                    self.actions.push(Action::Exit { code });
                }
            }
        }

        if self.phase == Phase::Starting && self.ready_slots() == self.config.size {
            self.phase = Phase::Running;
            self.startup_duration = Some(now.duration_since(self.started_at));
            log::info!(
                "event=started workers={} startup_ms={}",
                self.config.size,
                now.duration_since(self.started_at).as_millis()
            );
            if std::mem::take(&mut self.reload_pending) {
                self.reload(now);
            }
        }
    }

    /// --max-requests: a ready worker past its limit gets a successor (when its slot is not backing off).
    fn recycle(&mut self, now: Instant) {
        let due: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| {
                matches!(w.state, WorkerState::Ready { .. })
                    && w.ending.is_none()
                    && w.max_requests.is_some_and(|limit| w.requests >= limit)
                    && self
                        .slots
                        .get(w.slot)
                        .is_some_and(|s| s.respawn_at.is_none_or(|at| now >= at))
            })
            .map(|w| w.id)
            .collect();
        for id in due {
            log::info!("event=max_requests worker={id}");
            self.replace(id, Reason::MaxRequests, now);
        }
    }

    /// One slot at a time: replace the first worker of an older generation, once nothing is booting.
    fn roll_reload(&mut self, now: Instant) {
        let Some(target) = self.reload_to else { return };
        if self.workers.values().any(|w| w.replaces.is_some()) {
            return; // a successor is still booting
        }
        let next = self
            .workers
            .values()
            .filter(|w| {
                w.generation < target
                    && matches!(w.state, WorkerState::Ready { .. })
                    && w.slot < self.config.size
            })
            .map(|w| w.id)
            .next();
        match next {
            Some(id) => self.replace(id, Reason::Reload, now),
            None => {
                let booting = self
                    .workers
                    .values()
                    .any(|w| matches!(w.state, WorkerState::Spawned | WorkerState::Booting));
                if !booting {
                    self.reload_to = None;
                    self.reloads_succeeded += 1;
                    log::info!("event=reload result=succeeded gen={target}");
                }
            }
        }
    }

    fn ready_slots(&self) -> usize {
        let mut ready = vec![false; self.config.size];
        for w in self.workers.values() {
            if matches!(w.state, WorkerState::Ready { .. }) && w.slot < ready.len() {
                ready[w.slot] = true;
            }
        }
        ready.into_iter().filter(|r| *r).count()
    }

    fn start_worker(&mut self, slot: usize, now: Instant) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        let max_requests = self.config.max_requests.map(|n| n + self.jitter());
        self.workers.insert(
            id,
            Worker {
                id,
                slot,
                pid: None,
                generation: self.generation,
                state: WorkerState::Spawned,
                spawned_at: now,
                ending: None,
                replaces: None,
                replaced_by: None,
                requests: 0,
                max_requests,
            },
        );
        self.actions.push(Action::Spawn {
            worker: id,
            slot,
            generation: self.generation,
        });
        id
    }

    fn fill_slots(&mut self, now: Instant) {
        for slot in 0..self.config.size {
            let occupied = self
                .workers
                .values()
                .any(|w| w.slot == slot && !matches!(w.state, WorkerState::Draining { .. }));
            if occupied {
                continue;
            }
            let state = &mut self.slots[slot];
            if state.respawn_at.is_some_and(|at| now < at) {
                continue;
            }
            state.respawn_at = None;
            self.start_worker(slot, now);
        }
    }

    /// The earliest moment `tick` has something to do, for the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Phase::Delaying { until } = self.phase {
            consider(until);
        }
        for w in self.workers.values() {
            match w.state {
                WorkerState::Spawned | WorkerState::Booting if w.ending.is_none() => {
                    consider(w.spawned_at + self.config.boot_timeout)
                }
                WorkerState::Draining { kill_at } => consider(kill_at),
                WorkerState::Ready {
                    since,
                    last_heartbeat,
                } => {
                    if self.slots.get(w.slot).is_some_and(|s| s.crashes > 0) {
                        consider(since + Duration::from_secs(STABLE_AFTER_S));
                    }
                    if let Some(limit) = self.config.heartbeat_timeout {
                        consider(last_heartbeat + limit);
                    }
                }
                _ => {}
            }
        }
        if matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Delaying { .. }
        ) {
            for s in &self.slots {
                if let Some(at) = s.respawn_at {
                    consider(at);
                }
            }
        }
        next
    }

    /// The pool's part of /metrics.
    pub fn fill_metrics(&self, snapshot: &mut crate::metrics::Snapshot) {
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        for w in self.workers.values() {
            *states.entry(w.state.name()).or_default() += 1;
        }
        snapshot.workers_by_state = states.into_iter().collect();
        snapshot.restarts = self.restarts.iter().map(|(r, n)| (r.name(), *n)).collect();
        snapshot.reloads_succeeded = self.reloads_succeeded;
        snapshot.reloads_failed = self.reloads_failed;
        snapshot.startup_seconds = self.startup_duration.map(|d| d.as_secs_f64());
        snapshot.workers = self
            .workers
            .values()
            .filter(|w| !matches!(w.state, WorkerState::Draining { .. }))
            .filter_map(|w| Some((w.slot, w.pid?)))
            .collect();
    }

    pub fn health(&self) -> Health {
        let ready = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count();
        let crash_loop = self
            .slots
            .iter()
            .enumerate()
            .find(|(_, s)| s.crashes >= CRASH_LOOP_CRASHES)
            .map(|(i, s)| {
                format!(
                    "crash loop: worker slot {i} crashed {} times in a row soon after boot",
                    s.crashes
                )
            });
        Health {
            // Started means the first full pool was ready, not merely "no longer starting":
            // a pool failing at startup never was.
            started: self.startup_duration.is_some(),
            stopping: matches!(
                self.phase,
                Phase::Delaying { .. } | Phase::Draining | Phase::Failing { .. }
            ),
            size: self.config.size,
            ready,
            booted: self.ready_slots(),
            workers: self.workers.len(),
            crash_loop,
        }
    }
}

/// Respawn delay after the n-th quick crash in a row: the first is immediate, then doubling.
fn backoff(crashes: u32) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let ms = RESPAWN_BACKOFF_MIN_MS.saturating_mul(1 << (crashes - 2).min(20));
    Duration::from_millis(ms).min(Duration::from_secs(RESPAWN_BACKOFF_MAX_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clock and fake process table around a Pool: spawns get pids 100, 101, ...
    struct Harness {
        pool: Pool,
        now: Instant,
        next_pid: i32,
        alive: Vec<i32>,
        signals: Vec<(i32, Signal)>,
        exit: Option<i32>,
    }

    impl Harness {
        fn new(size: usize) -> Harness {
            let now = Instant::now();
            let config = PoolConfig {
                size,
                boot_timeout: Duration::from_secs(60),
                graceful_timeout: Duration::from_secs(30),
                shutdown_delay: Duration::ZERO,
                timeout: None,
                heartbeat_timeout: None,
                max_requests: None,
                max_requests_jitter: 0,
                max_memory_bytes: None,
            };
            let mut h = Harness {
                pool: Pool::new(config, now),
                now,
                next_pid: 100,
                alive: vec![],
                signals: vec![],
                exit: None,
            };
            h.run();
            h
        }

        fn with(mut self, f: impl FnOnce(&mut PoolConfig)) -> Harness {
            f(&mut self.pool.config);
            self
        }

        fn run(&mut self) {
            loop {
                let actions = self.pool.take_actions();
                if actions.is_empty() {
                    return;
                }
                for action in actions {
                    match action {
                        Action::Spawn { worker, .. } => {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.alive.push(pid);
                            self.pool.spawned(worker, pid);
                        }
                        Action::Signal { pid, signal } => self.signals.push((pid, signal)),
                        Action::Exit { code } => self.exit = Some(code),
                    }
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.pool.tick(self.now);
            self.run();
        }

        fn say(&mut self, pid: i32, m: Message) {
            self.pool.message(pid, m, self.now);
            self.run();
        }

        fn ready_all(&mut self) {
            for pid in self.alive.clone() {
                self.say(
                    pid,
                    Message::Ready {
                        boot_ms: 1,
                        dirs: vec![],
                        django: false,
                    },
                );
            }
        }

        fn exit(&mut self, pid: i32, status: ExitStatus) {
            self.alive.retain(|p| *p != pid);
            self.pool.exited(pid, status, self.now);
            self.run();
        }
    }

    fn failure() -> BootFailure {
        BootFailure {
            kind: "import".into(),
            app: "x".into(),
            error: "ModuleNotFoundError: No module named 'x'".into(),
            cwd: "/".into(),
            python: "python3".into(),
            sys_path: vec![],
            traceback: String::new(),
        }
    }

    #[test]
    fn starts_size_workers_and_is_started_when_all_are_ready() {
        let mut h = Harness::new(3);
        assert_eq!(h.alive, vec![100, 101, 102]);
        assert!(!h.pool.health().started);
        h.say(
            100,
            Message::Ready {
                boot_ms: 5,
                dirs: vec![],
                django: false,
            },
        );
        assert_eq!(h.pool.health().ready, 1);
        assert!(!h.pool.health().started);
        h.ready_all();
        let health = h.pool.health();
        assert!(health.started && !health.stopping);
        assert_eq!((health.ready, health.size), (3, 3));
    }

    #[test]
    fn boot_failure_at_startup_kills_the_rest_and_exits_3_without_respawning() {
        let mut h = Harness::new(2);
        h.say(100, Message::Failed(failure()));
        assert_eq!(h.signals, vec![(100, Signal::Kill), (101, Signal::Kill)]);
        h.exit(100, ExitStatus::Code(3));
        assert_eq!(h.exit, None, "waits for every worker");
        h.exit(101, ExitStatus::Signal(9));
        assert_eq!(h.exit, Some(EXIT_BOOT_FAILED));
        assert_eq!(h.next_pid, 102, "nothing respawned");
        assert!(h.pool.fatal_error().unwrap().contains("cannot import 'x'"));
        assert!(
            !h.pool.health().started,
            "a pool that failed at startup never started"
        );
    }

    #[test]
    fn boot_timeout_at_startup_is_fatal() {
        let mut h = Harness::new(1).with(|c| c.boot_timeout = Duration::from_secs(5));
        h.advance(Duration::from_secs(4));
        assert!(h.signals.is_empty());
        h.advance(Duration::from_secs(1));
        assert_eq!(h.signals, vec![(100, Signal::Kill)]);
        h.exit(100, ExitStatus::Signal(9));
        assert_eq!(h.exit, Some(EXIT_BOOT_FAILED));
        assert!(
            h.pool
                .fatal_error()
                .unwrap()
                .contains("did not boot within 5s")
        );
    }

    #[test]
    fn a_crash_after_boot_respawns_at_once_then_backs_off() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.exit(100, ExitStatus::Code(1));
        assert_eq!(h.alive, vec![101], "first crash: immediate respawn");
        h.say(
            101,
            Message::Ready {
                boot_ms: 1,
                dirs: vec![],
                django: false,
            },
        );
        h.exit(101, ExitStatus::Code(1));
        assert!(h.alive.is_empty(), "second quick crash waits");
        assert_eq!(
            h.pool.next_deadline(),
            Some(h.now + Duration::from_millis(100))
        );
        h.advance(Duration::from_millis(99));
        assert!(h.alive.is_empty());
        h.advance(Duration::from_millis(1));
        assert_eq!(h.alive, vec![102]);
        h.exit(102, ExitStatus::Code(1));
        assert_eq!(
            h.pool.next_deadline(),
            Some(h.now + Duration::from_millis(200))
        );
        assert_eq!(backoff(20), Duration::from_secs(RESPAWN_BACKOFF_MAX_S));
    }

    #[test]
    fn crash_loop_is_reported_and_clears_once_a_worker_stays_up() {
        let mut h = Harness::new(1);
        h.ready_all();
        for _ in 0..CRASH_LOOP_CRASHES {
            let pid = h.alive[0];
            h.exit(pid, ExitStatus::Code(1));
            h.advance(Duration::from_secs(RESPAWN_BACKOFF_MAX_S));
        }
        assert!(h.pool.health().crash_loop.unwrap().contains("crash loop"));
        h.ready_all();
        h.advance(Duration::from_secs(STABLE_AFTER_S));
        assert_eq!(h.pool.health().crash_loop, None);
    }

    #[test]
    fn graceful_shutdown_waits_for_workers_and_kills_at_the_deadline() {
        let mut h = Harness::new(2);
        h.ready_all();
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert!(h.pool.health().stopping);
        assert_eq!(h.signals, vec![(100, Signal::Term), (101, Signal::Term)]);
        h.exit(100, ExitStatus::Code(0));
        h.advance(Duration::from_secs(30));
        assert_eq!(h.signals.last(), Some(&(101, Signal::Kill)));
        assert_eq!(h.exit, None);
        h.advance(Duration::from_secs(30));
        assert_eq!(
            h.signals.iter().filter(|s| s.1 == Signal::Kill).count(),
            1,
            "SIGKILL sent once"
        );
        h.exit(101, ExitStatus::Signal(9));
        assert_eq!(h.exit, Some(0));
        assert_eq!(h.next_pid, 102, "no respawn during shutdown");
    }

    #[test]
    fn shutdown_delay_keeps_serving_with_ready_failing() {
        let mut h = Harness::new(1).with(|c| c.shutdown_delay = Duration::from_secs(3));
        h.ready_all();
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert!(h.pool.health().stopping);
        assert!(h.signals.is_empty());
        h.exit(100, ExitStatus::Code(1));
        assert_eq!(
            h.alive,
            vec![101],
            "still serving: a crashed worker is replaced"
        );
        h.advance(Duration::from_secs(3));
        assert_eq!(h.signals, vec![(101, Signal::Term)]);
    }

    #[test]
    fn second_signal_escalates_to_kill() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Term), (100, Signal::Kill)]);
    }

    #[test]
    fn fast_shutdown_quits_then_kills_after_the_grace() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.pool.shutdown(Shutdown::Fast, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Quit)]);
        h.advance(Duration::from_millis(FAST_SHUTDOWN_GRACE_MS));
        assert_eq!(h.signals, vec![(100, Signal::Quit), (100, Signal::Kill)]);
    }

    #[test]
    fn missing_interpreter_is_fatal_with_code_1() {
        let now = Instant::now();
        let config = PoolConfig {
            size: 2,
            boot_timeout: Duration::from_secs(1),
            graceful_timeout: Duration::from_secs(1),
            shutdown_delay: Duration::ZERO,
            timeout: None,
            heartbeat_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            max_memory_bytes: None,
        };
        let mut pool = Pool::new(config, now);
        let actions = pool.take_actions();
        let Action::Spawn { worker, .. } = actions[0] else {
            panic!()
        };
        pool.spawn_failed(worker, "no python".into(), now);
        // The second spawn was decided too; the master answers it before exiting.
        if let Action::Spawn { worker, .. } = actions[1] {
            pool.spawn_failed(worker, "no python".into(), now);
        }
        pool.tick(now);
        assert!(pool.take_actions().contains(&Action::Exit { code: 1 }));
        assert_eq!(pool.fatal_error(), Some("no python"));
    }

    fn ready(h: &mut Harness, pid: i32) {
        h.say(
            pid,
            Message::Ready {
                boot_ms: 1,
                dirs: vec![],
                django: false,
            },
        );
    }

    fn heartbeat(h: &mut Harness, pid: i32, requests: u64, busy_s: Option<u64>) {
        let busy = busy_s.map(|s| crate::worker::Busy {
            elapsed: Duration::from_secs(s),
            method: "GET".into(),
            path: "/slow".into(),
        });
        h.say(
            pid,
            Message::Heartbeat {
                requests,
                busy,
                inflight: 0,
                counters: None,
            },
        );
    }

    #[test]
    fn reload_replaces_slot_by_slot_new_ready_before_old_drains() {
        let mut h = Harness::new(2);
        h.ready_all();
        h.pool.reload(h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101, 102], "one successor at a time");
        assert!(
            h.signals.is_empty(),
            "nobody drains before the successor is ready"
        );
        ready(&mut h, 102);
        assert_eq!(h.signals, vec![(100, Signal::Term)]);
        assert_eq!(
            h.alive,
            vec![100, 101, 102, 103],
            "next slot's successor started"
        );
        assert_eq!(h.pool.health().ready, 2, "never below the pool size");
        h.exit(100, ExitStatus::Code(0));
        ready(&mut h, 103);
        assert_eq!(h.signals, vec![(100, Signal::Term), (101, Signal::Term)]);
        h.exit(101, ExitStatus::Code(0));
        assert_eq!(h.pool.reloads_succeeded, 1);
        assert_eq!(h.pool.restarts.get(&Reason::Reload), Some(&2));
        assert_eq!(h.pool.health().crash_loop, None);
    }

    #[test]
    fn a_reload_whose_new_code_fails_is_abandoned_and_old_workers_keep_serving() {
        let mut h = Harness::new(2);
        h.ready_all();
        h.pool.reload(h.now);
        h.run();
        h.say(102, Message::Failed(failure()));
        h.exit(102, ExitStatus::Code(3));
        assert!(h.signals.is_empty(), "old workers untouched");
        assert_eq!(h.exit, None);
        assert_eq!(h.pool.reloads_failed, 1);
        h.advance(Duration::from_secs(60));
        assert_eq!(h.alive, vec![100, 101], "no retry until the next HUP");
        h.pool.reload(h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101, 103], "the next HUP tries again");
    }

    #[test]
    fn a_hup_during_a_reload_restarts_it_with_the_newest_code() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.pool.reload(h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101]);
        h.pool.reload(h.now);
        h.run();
        assert_eq!(
            h.signals,
            vec![(101, Signal::Kill)],
            "the stale successor goes"
        );
        h.exit(101, ExitStatus::Signal(9));
        assert_eq!(h.alive, vec![100, 102]);
        ready(&mut h, 102);
        assert_eq!(h.signals.last(), Some(&(100, Signal::Term)));
        assert_eq!(h.pool.reloads_failed, 0);
    }

    #[test]
    fn a_request_past_the_timeout_gets_its_worker_killed_and_replaced() {
        let mut h = Harness::new(1).with(|c| c.timeout = Some(Duration::from_secs(30)));
        h.ready_all();
        heartbeat(&mut h, 100, 0, Some(29));
        assert!(h.signals.is_empty());
        heartbeat(&mut h, 100, 0, Some(30));
        assert_eq!(
            h.signals,
            vec![(100, Signal::DumpTraceback), (100, Signal::Term)]
        );
        h.advance(Duration::from_millis(HUNG_KILL_GRACE_MS));
        assert_eq!(h.signals.last(), Some(&(100, Signal::Kill)));
        h.exit(100, ExitStatus::Signal(9));
        assert_eq!(h.alive, vec![101], "replaced at once");
        assert_eq!(h.pool.restarts.get(&Reason::Timeout), Some(&1));
    }

    #[test]
    fn a_silent_worker_is_killed_after_the_heartbeat_timeout() {
        let mut h = Harness::new(1).with(|c| c.heartbeat_timeout = Some(Duration::from_secs(10)));
        h.ready_all();
        h.advance(Duration::from_secs(5));
        heartbeat(&mut h, 100, 0, None);
        h.advance(Duration::from_secs(9));
        assert!(h.signals.is_empty());
        h.advance(Duration::from_secs(1));
        assert_eq!(
            h.signals,
            vec![(100, Signal::DumpTraceback), (100, Signal::Term)]
        );
    }

    #[test]
    fn max_requests_recycles_with_the_successor_ready_first() {
        let mut h = Harness::new(1).with(|c| c.max_requests = Some(10));
        // The limit is drawn at spawn time; respawn the first worker under the new config.
        h.ready_all();
        h.exit(100, ExitStatus::Code(0));
        ready(&mut h, 101);
        heartbeat(&mut h, 101, 9, None);
        assert_eq!(h.alive, vec![101]);
        heartbeat(&mut h, 101, 1, None);
        assert_eq!(h.alive, vec![101, 102], "successor started at the limit");
        assert!(
            h.signals.is_empty(),
            "old keeps serving until the successor is ready"
        );
        ready(&mut h, 102);
        assert_eq!(h.signals, vec![(101, Signal::Term)]);
        assert_eq!(h.pool.restarts.get(&Reason::MaxRequests), Some(&1));
    }

    #[test]
    fn max_requests_jitter_spreads_the_limits() {
        let mut h = Harness::new(8).with(|c| {
            c.max_requests = Some(100);
            c.max_requests_jitter = 50;
        });
        let limits: Vec<u64> = (0..8).map(|_| 100 + h.pool.jitter()).collect();
        assert!(limits.iter().all(|l| (100..=150).contains(l)));
        assert!(
            limits
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1,
            "{limits:?}"
        );
        h.run();
    }

    #[test]
    fn max_memory_recycles_the_worker_over_the_limit() {
        let mut h = Harness::new(2).with(|c| c.max_memory_bytes = Some(100 << 20));
        h.ready_all();
        h.pool.memory(100, 50 << 20, h.now);
        h.pool.memory(101, 150 << 20, h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101, 102]);
        ready(&mut h, 102);
        assert_eq!(h.signals, vec![(101, Signal::Term)]);
        assert_eq!(h.pool.restarts.get(&Reason::MaxMemory), Some(&1));
    }

    #[test]
    fn ttin_and_ttou_scale_never_below_one() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.pool.scale(true, h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101]);
        assert_eq!(h.pool.health().size, 2);
        h.pool.scale(false, h.now);
        h.run();
        assert_eq!(h.signals, vec![(101, Signal::Term)]);
        h.exit(101, ExitStatus::Code(0));
        h.pool.scale(false, h.now);
        h.run();
        assert_eq!(h.pool.health().size, 1, "never below one");
        assert_eq!(h.alive, vec![100]);
    }
}
