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
//! The duties live apart, each an `impl Pool` block of its own: `exits` (a worker reaped or lost),
//! `changes` (reload, scale, recycle), `shutdown`, and `outputs` (actions, health, metrics).
//!
//! What a slot runs is not assumed: the one rule that differs by kind of process is a value,
//! `Supervision`, that each kind gives (`kind::Kind::supervision`).

mod changes;
mod exits;
mod outputs;
mod shutdown;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::lifecycle::{ExitStatus, Reason, Shutdown, StateName};
use crate::protocol::{BootFailure, EXIT_BOOT_FAILED, Message};
use crate::state::Health;

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

/// How the pool treats the processes of a kind: the supervision rule that differs by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    /// A pool of interchangeable workers (serve, consume): a dead one is respawned, a reload
    /// replaces them, TTIN/TTOU scale them, and a second TERM during shutdown sends SIGKILL.
    Pool,
    /// One process that *is* the service (a user's command, such as Celery): never respawned,
    /// reloaded or scaled; its exit code (128+N for signal N) becomes the master's, and a second
    /// TERM sends `escalation` (Celery's cold shutdown is SIGQUIT) before the kill.
    Service { escalation: Signal },
}

impl Supervision {
    fn service_ends_with_process(self) -> bool {
        matches!(self, Supervision::Service { .. })
    }

    fn escalation(self) -> Signal {
        match self {
            Supervision::Pool => Signal::Kill,
            Supervision::Service { escalation } => escalation,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain and exit, the service is shutting down.
    Term,
    /// SIGHUP: drain and exit like Term, because the worker is being replaced (a reload, a
    /// recycle, a scale-down), not shut down: an ASGI worker closes its WebSockets with 1012
    /// (service restart) instead of 1001, so clients reconnect at once.
    Restart,
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
    /// Draining for a stop-first reload: it keeps its slot until reaped, then the slot's new
    /// worker starts (`ReloadStyle::StopFirst`); its exit is not a crash.
    StopFirst,
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
    /// until reaped, so its respawn goes through the crash backoff like any failed boot; and one
    /// stopped for a stop-first reload, whose successor may only start once it is gone.
    fn holds_slot(&self) -> bool {
        !self.state.is_stopping()
            || matches!(self.plan, Plan::End(Reason::BootTimeout) | Plan::StopFirst)
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
    /// How a reload replaces a worker.
    pub reload: ReloadStyle,
}

/// How a reload (HUP, --autoreload) replaces each worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStyle {
    /// The new worker first, the old one drains once it is ready: no request waits.
    Rolling,
    /// The old worker drains first, the new one starts once it is reaped: for a worker that holds
    /// something only one process can have (--debugger's port), at the cost of a gap.
    StopFirst,
}

impl PoolConfig {
    /// A pool of `size` with the common timeouts and no limits; kinds set the rest, and the
    /// master's configuration seeds the jitter.
    pub fn new(size: usize, boot_timeout: Duration, graceful_timeout: Duration) -> PoolConfig {
        PoolConfig {
            size,
            boot_timeout,
            graceful_timeout,
            shutdown_delay: Duration::ZERO,
            timeout: None,
            heartbeat_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            max_memory_bytes: None,
            jitter_seed: 0,
            reload: ReloadStyle::Rolling,
        }
    }
}

pub struct Pool {
    config: PoolConfig,
    rules: Supervision,
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
    /// Reloads cut short by a shutdown: neither succeeded nor failed.
    pub reloads_abandoned: u64,
    /// From start to the first full pool being ready.
    startup_duration: Option<Duration>,
}

impl Pool {
    pub fn new(config: PoolConfig, rules: Supervision, now: Instant) -> Pool {
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
            reloads_abandoned: 0,
            startup_duration: None,
        };
        pool.tick(now);
        pool
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
pub(crate) mod tests;
