//! The worker pool as a pure state machine: events in (a worker spawned, spoke, exited; time
//! passed; a reload, a scale or a shutdown was asked for), actions out (spawn, signal, log, exit).
//!
//! Why pure: every supervision rule (boot failures stop the server instead of looping, crashes back
//! off, a replacement is ready before its predecessor drains, a drain ends in SIGKILL at its
//! deadline, shutdown waits for the last worker) lives here and is unit-tested with a fake clock and
//! fake pids. `master` only carries actions out on real processes. Nothing here reads the clock,
//! the process id or a file, and nothing is printed but through `log` lines and `Action::LogTraceback`.
//!
//! A worker has two orthogonal pieces of state, each an enum:
//! - its process state, `Spawned -> Booting -> Ready -> Draining -> Killed` (removed when reaped);
//! - its `Plan`, what the pool intends for it: `Serve` its slot, `Succeed` another worker, be
//!   `ReplacedBy` a successor, or `End` (the pool ended it, so its exit is not a crash).
//!
//! Pool lifecycle: `Starting -> Running -> Delaying -> Draining`, or `-> Failing` on a fatal error;
//! a reload is `Idle`, `Queued` (asked for while starting) or `Rolling` to a generation.
//!
//! Replacing a worker (reload, --max-requests, --max-memory) always starts a *successor* in the same
//! slot first; the old worker is told to drain only once the successor is Ready, so the pool never
//! has fewer ready workers than its size while it happens. A reload walks the slots one at a time.
//!
//! What a slot runs is not assumed: the pool asks its `Rules` (one implementation per kind of
//! process, in `kind`) where supervision differs.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::lifecycle::{ExitStatus, Reason, Shutdown, StateName};
use crate::state::Health;
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

/// The supervision rules that differ by the kind of process a slot runs. The defaults are a
/// pool of interchangeable workers (the HTTP worker's rules).
pub trait Rules {
    /// Whether the service ends when a process of this kind exits: false for a pool of workers
    /// (the pool respawns it), true for a supervised command that *is* the service, whose exit
    /// code (128+N for signal N) becomes the master's.
    fn service_ends_with_process(&self) -> bool {
        false
    }

    /// What a second TERM (or INT) during a shutdown sends: SIGKILL for our own workers; a
    /// supervised command may have a faster way out of its own (Celery's cold shutdown, SIGQUIT).
    fn escalation(&self) -> Signal {
        Signal::Kill
    }
}

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
    /// Start a worker; answer with `spawned` or `spawn_failed`.
    Spawn {
        worker: WorkerId,
        generation: u64,
    },
    Signal {
        pid: i32,
        signal: Signal,
    },
    /// A boot traceback to write to the log, once however many workers report it.
    LogTraceback(String),
    /// --preload: a worker asked for (`Spawn`) but not forked yet is no longer wanted, because
    /// the pool is stopping it or because it passed --boot-timeout unforked (`timed_out`).
    Cancel {
        worker: WorkerId,
        timed_out: bool,
    },
    /// Every worker is gone: the master exits with this code.
    Exit {
        code: i32,
    },
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
    /// SIGKILL sent (it cannot be caught): only its exit is left to come.
    Killed,
}

impl WorkerState {
    pub fn name(&self) -> StateName {
        match self {
            WorkerState::Spawned => StateName::Spawned,
            WorkerState::Booting => StateName::Booting,
            WorkerState::Ready { .. } => StateName::Ready,
            WorkerState::Draining { .. } => StateName::Draining,
            WorkerState::Killed => StateName::Killed,
        }
    }

    fn is_booting(&self) -> bool {
        matches!(self, WorkerState::Spawned | WorkerState::Booting)
    }

    fn is_ready(&self) -> bool {
        matches!(self, WorkerState::Ready { .. })
    }

    /// Draining or killed: on its way out, no longer holding its slot.
    fn is_stopping(&self) -> bool {
        matches!(self, WorkerState::Draining { .. } | WorkerState::Killed)
    }
}

/// What the pool intends for a worker, beside its process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Holds its slot; nothing planned.
    Serve,
    /// Booting to take over `old`'s slot; `old` drains once this one is ready.
    Succeed { old: WorkerId },
    /// A successor (`by`) is booting; this one drains once it is ready.
    ReplacedBy { by: WorkerId, reason: Reason },
    /// The pool is ending it for `reason`: its exit is not a crash.
    End(Reason),
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub slot: usize,
    pub pid: Option<i32>,
    pub generation: u64,
    pub state: WorkerState,
    spawned_at: Instant,
    plan: Plan,
    requests: u64,
    /// Recycle after this many requests (--max-requests plus this worker's jitter).
    max_requests: Option<u64>,
}

impl Worker {
    /// Whether its slot counts as filled. A draining or killed worker has left it (its
    /// replacement may start at once), except one killed for its boot timeout: that one keeps it
    /// until reaped, so its respawn goes through the crash backoff like any failed boot.
    fn holds_slot(&self) -> bool {
        !self.state.is_stopping() || self.plan == Plan::End(Reason::BootTimeout)
    }
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
    /// Workers told to stop; SIGKILL at their own deadlines; the master exits with `code`.
    Draining {
        code: i32,
    },
    /// A fatal error: every worker is being killed, then the master exits with `code`.
    Failing {
        code: i32,
    },
}

/// The rolling reload, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    Idle,
    /// A HUP came before the first full pool was ready: carried out once it is.
    Queued,
    /// Replacing every worker older than generation `to`, one slot at a time.
    Rolling {
        to: u64,
    },
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
    /// Seed of the --max-requests-jitter generator (the master passes its pid: workers of two
    /// pods then recycle at different moments; tests pass a constant).
    pub jitter_seed: u64,
}

pub struct Pool {
    config: PoolConfig,
    rules: Rc<dyn Rules>,
    phase: Phase,
    reload: Reload,
    workers: BTreeMap<WorkerId, Worker>,
    slots: Vec<Slot>,
    next_id: WorkerId,
    generation: u64,
    started_at: Instant,
    actions: Vec<Action>,
    /// The first fatal error, for main to print as the last line.
    fatal: Option<String>,
    last_traceback: Option<String>,
    /// State of the jitter generator (xorshift): worker limits need spread, not cryptography.
    jitter_state: u64,
    pub restarts: BTreeMap<Reason, u64>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// From start to the first full pool being ready.
    startup_duration: Option<Duration>,
}

impl Pool {
    pub fn new(config: PoolConfig, rules: Rc<dyn Rules>, now: Instant) -> Pool {
        let slots = vec![Slot::default(); config.size];
        let jitter_state = 0x9E37_79B9_7F4A_7C15 ^ config.jitter_seed;
        let mut pool = Pool {
            config,
            rules,
            phase: Phase::Starting,
            reload: Reload::Idle,
            workers: BTreeMap::new(),
            slots,
            next_id: 1,
            generation: 0,
            started_at: now,
            actions: Vec::new(),
            fatal: None,
            last_traceback: None,
            jitter_state,
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

    /// The last boot traceback logged, for the startup/failed webhook.
    pub fn boot_traceback(&self) -> Option<&str> {
        self.last_traceback.as_deref()
    }

    /// Pids of ready workers, in a stable order (the master picks one to run the app's checks).
    pub fn ready_pids(&self) -> Vec<i32> {
        self.workers
            .values()
            .filter(|w| w.state.is_ready())
            .filter_map(|w| w.pid)
            .collect()
    }

    /// Pids of live workers, for the master's memory checks and signal forwarding.
    pub fn pids(&self) -> Vec<i32> {
        self.workers.values().filter_map(|w| w.pid).collect()
    }

    fn id_of(&self, pid: i32) -> Option<WorkerId> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid == Some(pid))
            .map(|(id, _)| *id)
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

    fn signal(&mut self, pid: Option<i32>, signal: Signal) {
        if let Some(pid) = pid {
            self.actions.push(Action::Signal { pid, signal });
        }
    }

    pub fn spawned(&mut self, worker: WorkerId, pid: i32) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.pid = Some(pid);
            log::info!(
                "event=spawn worker={worker} slot={} pid={pid} gen={}",
                w.slot,
                w.generation
            );
        }
    }

    /// The process could not be started at all (missing python, fork failure): fatal.
    pub fn spawn_failed(&mut self, worker: WorkerId, error: String, now: Instant) {
        self.workers.remove(&worker);
        self.fail(1, error, now);
    }

    pub fn message(&mut self, pid: i32, message: Message, now: Instant) {
        let Some(id) = self.id_of(pid) else {
            return;
        };
        match message {
            Message::Boot => {
                let w = self.workers.get_mut(&id).expect("found above");
                if w.state == WorkerState::Spawned {
                    w.state = WorkerState::Booting;
                }
            }
            Message::Ready { boot_ms, .. } => self.became_ready(id, boot_ms, now),
            Message::Heartbeat { requests, busy, .. } => {
                let timeout = self.config.timeout;
                let w = self.workers.get_mut(&id).expect("found above");
                w.requests += requests;
                if let WorkerState::Ready { last_heartbeat, .. } = &mut w.state {
                    *last_heartbeat = now;
                }
                let overdue = match (busy, timeout) {
                    (Some(busy), Some(limit)) if busy.elapsed >= limit => Some(busy),
                    _ => None,
                };
                if let Some(busy) = overdue.filter(|_| !matches!(w.plan, Plan::End(_))) {
                    log::error!(
                        "event=timeout worker={id} pid={pid} method={} path={:?} elapsed_s={:.1}",
                        busy.method,
                        busy.path,
                        busy.elapsed.as_secs_f64()
                    );
                    self.kill_hung(id, now);
                }
            }
            Message::Failed(failure) => {
                if !matches!(self.phase, Phase::Failing { .. }) {
                    self.boot_failed(failure, now);
                }
            }
            // The master's business: it answers the probes, and settles on the broker.
            Message::Checked(_)
            | Message::Settle { .. }
            | Message::Celery(_)
            | Message::Forked { .. } => {}
        }
        self.tick(now);
    }

    fn became_ready(&mut self, id: WorkerId, boot_ms: u64, now: Instant) {
        let w = self.workers.get_mut(&id).expect("a known worker");
        if !w.state.is_booting() {
            return;
        }
        w.state = WorkerState::Ready {
            since: now,
            last_heartbeat: now,
        };
        // boot_ms is the worker's own count (from exec, or from its fork); spawn_ms the pool's,
        // from deciding to start it (for a --preload worker, its zygote's import included).
        log::info!(
            "event=ready worker={id} slot={} pid={} gen={} boot_ms={boot_ms} spawn_ms={}",
            w.slot,
            w.pid.unwrap_or(0),
            w.generation,
            now.duration_since(w.spawned_at).as_millis()
        );
        if let Plan::Succeed { old } = w.plan {
            w.plan = Plan::Serve;
            self.retire(old, now);
        }
    }

    /// The successor of `old` is ready: `old` drains (new up before old goes).
    fn retire(&mut self, old: WorkerId, now: Instant) {
        let graceful = self.config.graceful_timeout;
        let Some(w) = self.workers.get_mut(&old) else {
            return;
        };
        let Plan::ReplacedBy { reason, .. } = w.plan else {
            return; // ended meanwhile (a timeout, say): already on its way out
        };
        w.plan = Plan::End(reason);
        w.state = WorkerState::Draining {
            kill_at: now + graceful,
        };
        let (slot, pid) = (w.slot, w.pid);
        self.signal(pid, Signal::Term);
        *self.restarts.entry(reason).or_default() += 1;
        log::info!(
            "event=retire worker={old} slot={slot} reason={}",
            reason.as_str()
        );
    }

    /// A request over --timeout or a silent worker: traceback, TERM, then KILL after a short grace.
    fn kill_hung(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if let Plan::ReplacedBy { by, .. } = w.plan {
            // Its successor now simply takes the slot.
            if let Some(s) = self.workers.get_mut(&by) {
                s.plan = Plan::Serve;
            }
        }
        let w = self.workers.get_mut(&id).expect("found above");
        w.plan = Plan::End(Reason::Timeout);
        w.state = WorkerState::Draining {
            kill_at: now + Duration::from_millis(HUNG_KILL_GRACE_MS),
        };
        let pid = w.pid;
        self.signal(pid, Signal::DumpTraceback);
        self.signal(pid, Signal::Term);
    }

    /// The master read a worker's resident memory.
    pub fn memory(&mut self, pid: i32, rss_bytes: u64, now: Instant) {
        let Some(limit) = self.config.max_memory_bytes else {
            return;
        };
        let Some(id) = self.id_of(pid) else {
            return;
        };
        let w = &self.workers[&id];
        if rss_bytes > limit && w.state.is_ready() && w.plan == Plan::Serve {
            log::warn!(
                "event=max_memory worker={id} pid={pid} rss_mb={}",
                rss_bytes >> 20
            );
            self.replace(id, Reason::MaxMemory, now);
        }
    }

    /// Starts a successor for `old`'s slot; `old` drains when the successor is ready.
    fn replace(&mut self, old: WorkerId, reason: Reason, now: Instant) {
        let Some(w) = self.workers.get(&old) else {
            return;
        };
        if w.plan != Plan::Serve {
            return;
        }
        let slot = w.slot;
        let successor = self.start_worker(slot, Plan::Succeed { old }, now);
        self.workers.get_mut(&old).expect("checked above").plan = Plan::ReplacedBy {
            by: successor,
            reason,
        };
        log::info!(
            "event=replace worker={old} slot={slot} successor={successor} reason={}",
            reason.as_str()
        );
    }

    fn boot_failed(&mut self, failure: BootFailure, now: Instant) {
        // The traceback is logged once, not once per worker or per respawn.
        if !failure.traceback.is_empty()
            && self.last_traceback.as_deref() != Some(failure.traceback.as_str())
        {
            self.actions
                .push(Action::LogTraceback(failure.traceback.clone()));
            self.last_traceback = Some(failure.traceback.clone());
        }
        if self.phase == Phase::Starting {
            self.fail(failure.exit_code(), failure.summary(), now);
        } else {
            log::error!("event=boot_failed {}", failure.summary());
        }
    }

    /// Something outside the pool failed for good (the broker is lost and --reconnect is off):
    /// stop every worker now and exit with `code`, printing `error`.
    pub fn abort(&mut self, code: i32, error: String, now: Instant) {
        log::error!("event=abort {error}");
        self.fail(code, error, now);
    }

    /// A fatal error: kill every worker, exit with `code` once they are gone.
    fn fail(&mut self, code: i32, error: String, now: Instant) {
        if matches!(self.phase, Phase::Failing { .. }) {
            return;
        }
        self.fatal.get_or_insert(error);
        self.phase = Phase::Failing { code };
        self.kill_all(now);
        self.tick(now);
    }

    /// A process was reaped: account for it, and decide what follows.
    pub fn exited(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let Some(id) = self.id_of(pid) else {
            return;
        };
        let worker = self.workers.remove(&id).expect("found above");
        self.ended(id, &worker, status, now);
        self.tick(now);
    }

    /// --preload: worker `worker` was never forked (its zygote failed to load the app, died or
    /// hung). With the import failure, as a failed boot (fatal at startup, a failed reload after);
    /// without, as a crash: respawned with backoff.
    pub fn lost(&mut self, worker: WorkerId, failure: Option<BootFailure>, now: Instant) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        if let Some(failure) = failure
            && !matches!(self.phase, Phase::Failing { .. })
        {
            self.boot_failed(failure, now);
        }
        self.ended(worker, &w, ExitStatus::NotForked, now);
        self.tick(now);
    }

    /// A worker is gone (reaped, or never forked): what follows from its plan and the phase.
    fn ended(&mut self, id: WorkerId, worker: &Worker, status: ExitStatus, now: Instant) {
        if self.rules.service_ends_with_process() {
            self.service_ended(id, worker, status, now);
        } else if let (Plan::Succeed { old }, true) = (worker.plan, !worker.state.is_ready()) {
            self.successor_failed(id, worker, old, status, now);
        } else if matches!(self.phase, Phase::Failing { .. } | Phase::Draining { .. }) {
            log_exit(id, worker, status);
        } else if let Plan::End(reason) = worker.plan
            && reason != Reason::BootTimeout
        {
            log_exit(id, worker, status);
            // Retired and scaled-down workers were counted when the pool ended them; a hung one
            // counts once it is gone.
            if reason == Reason::Timeout {
                *self.restarts.entry(reason).or_default() += 1;
            }
        } else if self.phase == Phase::Starting && !worker.state.is_ready() {
            self.failed_at_startup(id, worker, status, now);
        } else {
            self.crashed(id, worker, status, now);
        }
    }

    /// The process that is the service exited: the master follows with its code.
    fn service_ended(&mut self, id: WorkerId, worker: &Worker, status: ExitStatus, now: Instant) {
        log_exit(id, worker, status);
        if !matches!(self.phase, Phase::Failing { .. }) {
            self.phase = Phase::Draining {
                code: status.as_code(),
            };
            let graceful = now + self.config.graceful_timeout;
            self.drain_all(Signal::Term, graceful);
        }
    }

    /// A successor died before it was ready: its predecessor keeps serving.
    fn successor_failed(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        old: WorkerId,
        status: ExitStatus,
        now: Instant,
    ) {
        if let Some(w) = self.workers.get_mut(&old)
            && matches!(w.plan, Plan::ReplacedBy { by, .. } if by == id)
        {
            w.plan = Plan::Serve; // a limit that still holds replaces it again after the backoff
        }
        let slot = &mut self.slots[worker.slot];
        slot.crashes += 1;
        slot.respawn_at = Some(now + backoff(slot.crashes.max(2)));
        log::error!(
            "event=replace_failed worker={id} slot={} pid={} {status}",
            worker.slot,
            worker.pid.unwrap_or(0)
        );
        if let Reload::Rolling { to } = self.reload {
            self.reload = Reload::Idle;
            self.reloads_failed += 1;
            log::error!(
                "event=reload result=failed gen={to} reason=\"new workers did not boot; old workers keep serving\""
            );
        }
    }

    /// A worker of the first pool died while loading the app: the app cannot start.
    fn failed_at_startup(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        status: ExitStatus,
        now: Instant,
    ) {
        let error = match (worker.plan, status) {
            (Plan::End(Reason::BootTimeout), _) => format!(
                "worker did not boot within {}s; raise --boot-timeout or find what the import waits on",
                self.config.boot_timeout.as_secs_f64()
            ),
            (_, ExitStatus::Code(EXIT_BOOT_FAILED)) => "the app failed to load".to_string(),
            (_, ExitStatus::NotForked) => {
                "the --preload zygote could not fork a worker; see the log above".to_string()
            }
            (_, status) => format!("worker died while loading the app ({status})"),
        };
        log::error!(
            "event=boot_failed worker={id} slot={} pid={} {status}",
            worker.slot,
            worker.pid.unwrap_or(0)
        );
        self.fail(EXIT_BOOT_FAILED, error, now);
    }

    /// A worker died on its own (or its boot timed out after startup): respawn with backoff.
    fn crashed(&mut self, id: WorkerId, worker: &Worker, status: ExitStatus, now: Instant) {
        let stable = matches!(worker.state, WorkerState::Ready { since, .. }
            if now.duration_since(since) >= Duration::from_secs(STABLE_AFTER_S));
        let reason = match worker.plan {
            Plan::End(reason) => reason,
            _ => Reason::Crash,
        };
        *self.restarts.entry(reason).or_default() += 1;
        let slot = &mut self.slots[worker.slot];
        if stable {
            slot.crashes = 0;
        }
        slot.crashes += 1;
        let delay = backoff(slot.crashes);
        slot.respawn_at = Some(now + delay);
        log::warn!(
            "event=worker_died worker={id} slot={} pid={} {status} reason={} crashes={} respawn_in_ms={}",
            worker.slot,
            worker.pid.unwrap_or(0),
            reason.as_str(),
            slot.crashes,
            delay.as_millis()
        );
        // Its successor, if one was booting, now simply fills the slot.
        if let Plan::ReplacedBy { by, .. } = worker.plan
            && let Some(s) = self.workers.get_mut(&by)
        {
            s.plan = Plan::Serve;
        }
    }

    /// SIGHUP: roll out a new generation, slot by slot; a HUP during a reload restarts it.
    pub fn reload(&mut self, now: Instant) {
        if self.rules.service_ends_with_process() {
            // The process is the service: a second one beside it would be another service.
            log::info!("event=reload_ignored reason=\"a supervised command is not reloaded\"");
            return;
        }
        match self.phase {
            Phase::Starting => {
                log::info!("event=reload_deferred reason=starting");
                self.reload = Reload::Queued;
            }
            Phase::Running => {
                self.generation += 1;
                log::info!("event=reload gen={}", self.generation);
                self.kill_stale_successors();
                self.reload = Reload::Rolling {
                    to: self.generation,
                };
            }
            _ => log::info!("event=reload_ignored reason=stopping"),
        }
        self.tick(now);
    }

    /// Successors of an older reload would serve old code: kill them; their slots are redone.
    fn kill_stale_successors(&mut self) {
        let generation = self.generation;
        let stale: Vec<(WorkerId, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation < generation)
            .filter_map(|(id, w)| match w.plan {
                Plan::Succeed { old } => Some((*id, old)),
                _ => None,
            })
            .collect();
        for (id, old) in stale {
            let w = self.workers.get_mut(&id).expect("listed above");
            w.plan = Plan::End(Reason::Reload);
            w.state = WorkerState::Killed;
            let pid = w.pid;
            self.signal(pid, Signal::Kill);
            if let Some(old) = self.workers.get_mut(&old) {
                old.plan = Plan::Serve;
            }
        }
    }

    /// SIGTTIN (+1) / SIGTTOU (-1): change the pool size, never below one.
    pub fn scale(&mut self, up: bool, now: Instant) {
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            return;
        }
        if self.rules.service_ends_with_process() {
            log::info!("event=scale_ignored reason=\"a supervised command is one process\"");
            return;
        }
        if up {
            self.config.size += 1;
            self.slots.push(Slot::default());
        } else if self.config.size > 1 {
            self.config.size -= 1;
            self.slots.pop();
            let gone = self.config.size;
            let kill_at = now + self.config.graceful_timeout;
            let leaving: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|(_, w)| w.slot == gone && !w.state.is_stopping())
                .map(|(id, _)| *id)
                .collect();
            for id in leaving {
                let w = self.workers.get_mut(&id).expect("listed above");
                w.plan = Plan::End(Reason::Scale);
                w.state = WorkerState::Draining { kill_at };
                let pid = w.pid;
                self.signal(pid, Signal::Term);
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
            Phase::Delaying { .. } | Phase::Draining { .. } => {
                log::warn!("event=shutdown_escalated");
                if let Phase::Delaying { .. } = self.phase {
                    self.phase = Phase::Draining { code: 0 };
                }
                match self.rules.escalation() {
                    Signal::Kill => self.kill_all(now),
                    signal => {
                        let grace = Duration::from_millis(FAST_SHUTDOWN_GRACE_MS);
                        self.drain_all_again(signal, now + grace);
                    }
                }
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
                    self.phase = Phase::Draining { code: 0 };
                    self.drain_all(Signal::Term, now + self.config.graceful_timeout);
                }
                Shutdown::Fast => {
                    log::info!("event=shutdown kind=fast");
                    self.phase = Phase::Draining { code: 0 };
                    let grace = Duration::from_millis(FAST_SHUTDOWN_GRACE_MS);
                    self.drain_all(Signal::Quit, now + grace);
                }
            },
        }
        self.tick(now);
    }

    /// Tells every worker to stop with `signal`; SIGKILL follows at `kill_at` (sent by tick).
    fn drain_all(&mut self, signal: Signal, kill_at: Instant) {
        let mut told = Vec::new();
        for w in self.workers.values_mut() {
            let earlier = match w.state {
                WorkerState::Draining { kill_at: k } => k <= kill_at,
                WorkerState::Killed => true,
                _ => false,
            };
            if earlier {
                continue; // already stopping, on an earlier deadline
            }
            told.push(w.pid);
            w.state = WorkerState::Draining { kill_at };
        }
        for pid in told {
            self.signal(pid, signal);
        }
    }

    /// Tells every worker not yet killed to stop with `signal` now, SIGKILL at `kill_at` at the latest.
    fn drain_all_again(&mut self, signal: Signal, kill_at: Instant) {
        let mut told = Vec::new();
        for w in self.workers.values_mut() {
            if w.state == WorkerState::Killed {
                continue;
            }
            told.push(w.pid);
            if !matches!(w.state, WorkerState::Draining { kill_at: k } if k <= kill_at) {
                w.state = WorkerState::Draining { kill_at };
            }
        }
        for pid in told {
            self.signal(pid, signal);
        }
    }

    /// Every worker not killed yet gets its SIGKILL on the next tick.
    fn kill_all(&mut self, now: Instant) {
        for w in self.workers.values_mut() {
            if w.state != WorkerState::Killed {
                w.state = WorkerState::Draining { kill_at: now };
            }
        }
    }

    /// Time passed: enforce deadlines, respawn, move between phases. Call after every event.
    pub fn tick(&mut self, now: Instant) {
        self.end_shutdown_delay(now);
        self.enforce_deadlines(now);
        match self.phase {
            Phase::Starting | Phase::Running | Phase::Delaying { .. } => {
                self.fill_slots(now);
                if self.phase == Phase::Running {
                    self.recycle(now);
                    self.roll_reload(now);
                }
            }
            Phase::Draining { code } | Phase::Failing { code } => {
                if self.workers.is_empty() {
                    self.actions.push(Action::Exit { code });
                }
            }
        }
        self.mark_started(now);
    }

    /// --shutdown-delay is over: start draining.
    fn end_shutdown_delay(&mut self, now: Instant) {
        if let Phase::Delaying { until } = self.phase
            && now >= until
        {
            log::info!("event=drain workers={}", self.workers.len());
            self.phase = Phase::Draining { code: 0 };
            self.drain_all(Signal::Term, now + self.config.graceful_timeout);
        }
    }

    /// Boot timeouts, drain deadlines, silent workers; and a slot whose worker stayed up is healthy.
    fn enforce_deadlines(&mut self, now: Instant) {
        let mut hung = Vec::new();
        let mut kills = Vec::new();
        let mut unforked = Vec::new();
        for (id, w) in self.workers.iter_mut() {
            let Some(pid) = w.pid else {
                // --preload: asked of a zygote, not forked yet. Once stopped (there is no process
                // to signal) or past its boot timeout, it is given up.
                if w.state.is_stopping()
                    || now.duration_since(w.spawned_at) >= self.config.boot_timeout
                {
                    unforked.push(*id);
                }
                continue;
            };
            match w.state {
                WorkerState::Spawned | WorkerState::Booting
                    if now.duration_since(w.spawned_at) >= self.config.boot_timeout =>
                {
                    log::error!("event=boot_timeout worker={id} slot={} pid={pid}", w.slot);
                    if let Plan::Succeed { .. } = w.plan {
                        // Its predecessor learns of the failure when this one's exit is reaped.
                    } else {
                        w.plan = Plan::End(Reason::BootTimeout);
                    }
                    w.state = WorkerState::Killed;
                    kills.push(pid);
                }
                WorkerState::Draining { kill_at } if now >= kill_at => {
                    log::warn!("event=kill worker={id} pid={pid}");
                    w.state = WorkerState::Killed;
                    kills.push(pid);
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
                            "event=heartbeat_timeout worker={id} pid={pid} silent_s={:.1}",
                            now.duration_since(last_heartbeat).as_secs_f64()
                        );
                        hung.push(*id);
                    }
                }
                _ => {}
            }
        }
        for pid in kills {
            self.signal(Some(pid), Signal::Kill);
        }
        for id in hung {
            self.kill_hung(id, now);
        }
        for id in unforked {
            let w = self.workers.remove(&id).expect("listed above");
            let timed_out = !w.state.is_stopping();
            if timed_out {
                log::error!("event=boot_timeout worker={id} slot={} pid=0", w.slot);
            }
            self.actions.push(Action::Cancel {
                worker: id,
                timed_out,
            });
            self.ended(id, &w, ExitStatus::NotForked, now);
        }
    }

    /// The first full pool is ready: the server has started (and a queued reload may begin).
    fn mark_started(&mut self, now: Instant) {
        if self.phase != Phase::Starting || self.ready_slots() != self.config.size {
            return;
        }
        self.phase = Phase::Running;
        let took = now.duration_since(self.started_at);
        self.startup_duration = Some(took);
        log::info!(
            "event=started workers={} startup_ms={}",
            self.config.size,
            took.as_millis()
        );
        if self.reload == Reload::Queued {
            self.reload = Reload::Idle;
            self.reload(now);
        }
    }

    /// --max-requests: a ready worker past its limit gets a successor (when its slot is not backing off).
    fn recycle(&mut self, now: Instant) {
        let due: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.state.is_ready()
                    && w.plan == Plan::Serve
                    && w.max_requests.is_some_and(|limit| w.requests >= limit)
                    && self
                        .slots
                        .get(w.slot)
                        .is_some_and(|s| s.respawn_at.is_none_or(|at| now >= at))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            log::info!("event=max_requests worker={id}");
            self.replace(id, Reason::MaxRequests, now);
        }
    }

    /// One slot at a time: replace the first worker of an older generation, once nothing is booting.
    fn roll_reload(&mut self, now: Instant) {
        let Reload::Rolling { to } = self.reload else {
            return;
        };
        if self
            .workers
            .values()
            .any(|w| matches!(w.plan, Plan::Succeed { .. }))
        {
            return; // a successor is still booting
        }
        let next = self
            .workers
            .iter()
            .find(|(_, w)| w.generation < to && w.state.is_ready() && w.slot < self.config.size)
            .map(|(id, _)| *id);
        match next {
            Some(id) => self.replace(id, Reason::Reload, now),
            None if !self.workers.values().any(|w| w.state.is_booting()) => {
                self.reload = Reload::Idle;
                self.reloads_succeeded += 1;
                log::info!("event=reload result=succeeded gen={to}");
            }
            None => {}
        }
    }

    fn ready_slots(&self) -> usize {
        let mut ready = vec![false; self.config.size];
        for w in self.workers.values() {
            if w.state.is_ready() && w.slot < ready.len() {
                ready[w.slot] = true;
            }
        }
        ready.into_iter().filter(|r| *r).count()
    }

    fn start_worker(&mut self, slot: usize, plan: Plan, now: Instant) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        let max_requests = self.config.max_requests.map(|n| n + self.jitter());
        self.workers.insert(
            id,
            Worker {
                slot,
                pid: None,
                generation: self.generation,
                state: WorkerState::Spawned,
                spawned_at: now,
                plan,
                requests: 0,
                max_requests,
            },
        );
        self.actions.push(Action::Spawn {
            worker: id,
            generation: self.generation,
        });
        id
    }

    fn fill_slots(&mut self, now: Instant) {
        for slot in 0..self.config.size {
            let occupied = self
                .workers
                .values()
                .any(|w| w.slot == slot && w.holds_slot());
            if occupied {
                continue;
            }
            let state = &mut self.slots[slot];
            if state.respawn_at.is_some_and(|at| now < at) {
                continue;
            }
            state.respawn_at = None;
            self.start_worker(slot, Plan::Serve, now);
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
                WorkerState::Spawned | WorkerState::Booting => {
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
                WorkerState::Killed => {}
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
        snapshot.workers_by_state.clear();
        for w in self.workers.values() {
            *snapshot.workers_by_state.entry(w.state.name()).or_default() += 1;
        }
        snapshot.restarts = self.restarts.clone();
        snapshot.reloads_succeeded = self.reloads_succeeded;
        snapshot.reloads_failed = self.reloads_failed;
        snapshot.startup_seconds = self.startup_duration.map(|d| d.as_secs_f64());
        snapshot.workers = self
            .workers
            .values()
            .filter(|w| !w.state.is_stopping())
            .filter_map(|w| Some((w.slot, w.pid?)))
            .collect();
    }

    pub fn health(&self) -> Health {
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
            started: self.startup_duration.is_some(),
            stopping: matches!(
                self.phase,
                Phase::Delaying { .. } | Phase::Draining { .. } | Phase::Failing { .. }
            ),
            size: self.config.size,
            ready: self.ready_pids().len(),
            booted: self.ready_slots(),
            crash_loop,
            ..Health::default()
        }
    }
}

fn log_exit(id: WorkerId, worker: &Worker, status: ExitStatus) {
    log::info!(
        "event=exit worker={id} slot={} pid={} {status} requests={}",
        worker.slot,
        worker.pid.unwrap_or(0),
        worker.requests
    );
}

/// Respawn delay after the n-th quick crash in a row: the first is immediate, then doubling.
pub fn backoff(crashes: u32) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let ms = RESPAWN_BACKOFF_MIN_MS.saturating_mul(1 << (crashes - 2).min(20));
    Duration::from_millis(ms).min(Duration::from_secs(RESPAWN_BACKOFF_MAX_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a pool of interchangeable workers (the HTTP worker's): every default.
    struct Workers;
    impl Rules for Workers {}

    /// A second kind: a supervised command that is the service (as `hurricane celery` will be).
    struct Command;
    impl Rules for Command {
        fn service_ends_with_process(&self) -> bool {
            true
        }

        fn escalation(&self) -> Signal {
            Signal::Quit
        }
    }

    fn config(size: usize) -> PoolConfig {
        PoolConfig {
            size,
            boot_timeout: Duration::from_secs(60),
            graceful_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            timeout: None,
            heartbeat_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            max_memory_bytes: None,
            jitter_seed: 42,
        }
    }

    /// A fake clock and fake process table around a Pool: spawns get pids 100, 101, ...
    struct Harness {
        pool: Pool,
        now: Instant,
        next_pid: i32,
        alive: Vec<i32>,
        signals: Vec<(i32, Signal)>,
        tracebacks: Vec<String>,
        exit: Option<i32>,
        /// --preload: spawns wait here (like asks of a zygote still importing) instead of starting.
        deferred: bool,
        asked: Vec<WorkerId>,
        /// (worker, timed_out) of each Cancel.
        cancelled: Vec<(WorkerId, bool)>,
    }

    impl Harness {
        fn new(size: usize) -> Harness {
            Harness::of(size, Rc::new(Workers))
        }

        fn of(size: usize, rules: Rc<dyn Rules>) -> Harness {
            Harness::built(size, rules, false)
        }

        /// A pool whose spawns wait (as with --preload before the zygote is ready).
        fn deferred(size: usize) -> Harness {
            Harness::built(size, Rc::new(Workers), true)
        }

        fn built(size: usize, rules: Rc<dyn Rules>, deferred: bool) -> Harness {
            let now = Instant::now();
            let mut h = Harness {
                pool: Pool::new(config(size), rules, now),
                now,
                next_pid: 100,
                alive: vec![],
                signals: vec![],
                tracebacks: vec![],
                exit: None,
                deferred,
                asked: vec![],
                cancelled: vec![],
            };
            h.run();
            h
        }

        /// The zygote forks every worker asked for.
        fn fork_asked(&mut self) {
            for worker in std::mem::take(&mut self.asked) {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.alive.push(pid);
                self.pool.spawned(worker, pid);
            }
            self.run();
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
                        Action::Spawn { worker, .. } if self.deferred => self.asked.push(worker),
                        Action::Cancel { worker, timed_out } => {
                            self.cancelled.push((worker, timed_out))
                        }
                        Action::Spawn { worker, .. } => {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.alive.push(pid);
                            self.pool.spawned(worker, pid);
                        }
                        Action::Signal { pid, signal } => self.signals.push((pid, signal)),
                        Action::LogTraceback(text) => self.tracebacks.push(text),
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
                        reject_reasons: vec![],
                        routing_keys: vec![],
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
                reject_reasons: vec![],
                routing_keys: vec![],
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
                reject_reasons: vec![],
                routing_keys: vec![],
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
        let mut pool = Pool::new(config(2), Rc::new(Workers), now);
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
                reject_reasons: vec![],
                routing_keys: vec![],
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
                rejects: vec![],
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
    fn a_worker_lost_before_its_fork_stops_startup_with_its_failure() {
        let mut h = Harness::deferred(2);
        assert_eq!(h.asked, vec![1, 2]);
        let refused = BootFailure {
            kind: "preload".into(),
            error: "--preload: the app started threads".into(),
            traceback: "Traceback: ...".into(),
            ..failure()
        };
        h.pool.lost(1, Some(refused.clone()), h.now);
        h.run();
        h.pool.lost(2, Some(refused), h.now);
        h.run();
        assert_eq!(h.exit, Some(crate::worker::EXIT_PRELOAD_REFUSED));
        assert_eq!(
            h.pool.fatal_error(),
            Some("--preload: the app started threads")
        );
        assert_eq!(h.tracebacks.len(), 1, "logged once");
    }

    #[test]
    fn a_worker_lost_after_startup_is_respawned_like_a_crash() {
        let mut h = Harness::deferred(2);
        h.fork_asked();
        h.ready_all();
        h.exit(100, ExitStatus::Signal(9));
        assert_eq!(h.asked, vec![3], "respawn asked at once");
        h.asked.clear();
        h.pool.lost(3, None, h.now);
        h.run();
        assert!(
            h.asked.is_empty() && h.exit.is_none(),
            "not fatal; backing off"
        );
        h.advance(Duration::from_secs(1));
        assert_eq!(h.asked, vec![4], "asked again after the backoff");
    }

    #[test]
    fn unforked_workers_are_cancelled_at_shutdown_and_the_master_can_exit() {
        let mut h = Harness::deferred(2);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.cancelled, vec![(1, false), (2, false)]);
        assert_eq!(h.exit, Some(0), "nothing left to wait for");
    }

    #[test]
    fn an_unforked_successor_of_a_stale_reload_is_cancelled_and_past_its_boot_timeout_given_up() {
        let mut h = Harness::deferred(1);
        h.fork_asked();
        h.ready_all();
        h.pool.reload(h.now);
        h.run();
        assert_eq!(h.asked, vec![2]);
        h.pool.reload(h.now);
        h.run();
        assert_eq!(
            h.cancelled,
            vec![(2, false)],
            "the stale successor is dropped"
        );
        assert_eq!(h.asked, vec![2, 3], "the newest generation asked for");
        h.asked.clear();
        h.advance(config(1).boot_timeout);
        assert_eq!(
            h.cancelled,
            vec![(2, false), (3, true)],
            "never forked by its boot timeout: given up"
        );
        assert_eq!(h.pool.reloads_failed, 1);
        assert!(h.signals.is_empty(), "the old worker keeps serving");
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

    #[test]
    fn a_boot_traceback_is_logged_once_however_many_workers_report_it() {
        let mut h = Harness::new(2);
        let with_traceback = || BootFailure {
            traceback: "Traceback (most recent call last): ...".into(),
            ..failure()
        };
        h.say(100, Message::Failed(with_traceback()));
        h.say(101, Message::Failed(with_traceback()));
        assert_eq!(h.tracebacks.len(), 1);
        assert_eq!(h.pool.boot_traceback(), Some(h.tracebacks[0].as_str()));
    }

    #[test]
    fn a_killed_worker_is_a_state_not_a_far_deadline() {
        let mut h = Harness::new(1);
        h.ready_all();
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.advance(Duration::from_secs(30));
        assert_eq!(h.pool.workers[&1].state, WorkerState::Killed);
        assert_eq!(h.pool.next_deadline(), None, "nothing left to time");
        let mut snapshot = crate::metrics::Snapshot::default();
        h.pool.fill_metrics(&mut snapshot);
        assert_eq!(snapshot.workers_by_state.get(&StateName::Killed), Some(&1));
        assert!(snapshot.workers.is_empty(), "a killed worker holds no slot");
    }

    #[test]
    fn the_jitter_comes_from_the_configured_seed() {
        let draw = |seed| {
            let mut c = config(1);
            c.max_requests_jitter = 1000;
            c.jitter_seed = seed;
            let mut pool = Pool::new(c, Rc::new(Workers), Instant::now());
            (0..4).map(|_| pool.jitter()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "same seed, same limits");
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn a_worker_that_hangs_while_being_replaced_leaves_the_slot_to_its_successor() {
        let mut h = Harness::new(1).with(|c| {
            c.timeout = Some(Duration::from_secs(30));
            c.max_memory_bytes = Some(100 << 20);
        });
        h.ready_all();
        h.pool.memory(100, 200 << 20, h.now);
        h.run();
        assert_eq!(h.alive, vec![100, 101], "successor booting");
        heartbeat(&mut h, 100, 0, Some(30));
        assert_eq!(
            h.signals,
            vec![(100, Signal::DumpTraceback), (100, Signal::Term)]
        );
        ready(&mut h, 101);
        assert_eq!(h.signals.len(), 2, "no second TERM for the hung worker");
        h.exit(100, ExitStatus::Signal(15));
        assert_eq!(h.alive, vec![101], "no respawn: the successor has the slot");
        assert_eq!(h.pool.restarts.get(&Reason::Timeout), Some(&1));
        assert_eq!(h.pool.restarts.get(&Reason::MaxMemory), None);
    }

    /// The seam for kinds of process: the same pool runs a supervised command that is the service
    /// (`hurricane celery`), ending with its exit code instead of respawning it.
    #[test]
    fn a_command_kind_ends_the_service_with_its_exit_code() {
        let mut h = Harness::of(1, Rc::new(Command));
        ready(&mut h, 100);
        assert!(h.pool.health().started);
        h.exit(100, ExitStatus::Code(7));
        assert_eq!(h.exit, Some(7), "the command's code is the master's");
        assert_eq!(h.alive, Vec::<i32>::new(), "never respawned");

        let mut h = Harness::of(1, Rc::new(Command));
        ready(&mut h, 100);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Term)]);
        h.exit(100, ExitStatus::Signal(9));
        assert_eq!(h.exit, Some(137), "128 + the signal, as a shell reports it");
    }

    #[test]
    fn a_boot_timeout_after_startup_keeps_the_slot_until_reaped_then_backs_off() {
        let mut h = Harness::new(1).with(|c| c.boot_timeout = Duration::from_secs(5));
        h.ready_all();
        h.exit(100, ExitStatus::Code(1));
        assert_eq!(h.alive, vec![101], "first crash: immediate respawn");
        h.advance(Duration::from_secs(5));
        assert_eq!(h.signals, vec![(101, Signal::Kill)]);
        assert_eq!(
            h.alive,
            vec![101],
            "no second worker while the first is unreaped"
        );
        h.exit(101, ExitStatus::Signal(9));
        assert_eq!(h.pool.restarts.get(&Reason::BootTimeout), Some(&1));
        assert!(
            h.alive.is_empty(),
            "second failure in a row waits for the backoff"
        );
        h.advance(Duration::from_millis(RESPAWN_BACKOFF_MIN_MS));
        assert_eq!(h.alive, vec![102]);
        assert_eq!(h.exit, None, "after startup a slow boot is not fatal");
    }

    #[test]
    fn a_second_term_gives_a_command_its_cold_shutdown_before_the_kill() {
        let mut h = Harness::of(1, Rc::new(Command));
        ready(&mut h, 100);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Term), (100, Signal::Quit)]);
        h.advance(Duration::from_millis(FAST_SHUTDOWN_GRACE_MS));
        assert_eq!(h.signals.last(), Some(&(100, Signal::Kill)));
    }

    #[test]
    fn a_command_kind_is_never_reloaded_or_scaled_into_a_second_process() {
        let mut h = Harness::of(1, Rc::new(Command));
        ready(&mut h, 100);
        h.pool.reload(h.now);
        h.pool.scale(true, h.now);
        h.run();
        assert_eq!(h.alive, vec![100]);
        assert!(h.signals.is_empty());
    }
}
