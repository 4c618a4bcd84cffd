//! The worker pool as a pure state machine: events in (a worker spawned, spoke, exited; time
//! passed; shutdown requested), actions out (spawn, signal, exit).
//!
//! Why pure: every supervision rule (boot failures stop the server instead of looping, crashes back
//! off, a drain ends in SIGKILL at its deadline, shutdown waits for the last worker) lives here and is
//! unit-tested with a fake clock and fake pids. `master` only carries actions out on real processes.
//!
//! Worker lifecycle: `Spawned -> Booting -> Ready -> Draining -> (removed on exit)`.
//! Pool lifecycle: `Starting -> Running -> Delaying -> Draining`, or `-> Failing` on a fatal error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::worker::{BootFailure, Busy, EXIT_BOOT_FAILED, Message};

/// First respawn delay after a quick crash; it doubles up to the maximum.
pub const RESPAWN_BACKOFF_MIN_MS: u64 = 100;
pub const RESPAWN_BACKOFF_MAX_S: u64 = 30;
/// A worker that has been ready this long counts as healthy: its slot's crash count resets.
pub const STABLE_AFTER_S: u64 = 10;
/// This many quick crashes in a row on one slot is a crash loop (reported by /alive).
pub const CRASH_LOOP_CRASHES: u32 = 5;
/// On a fast shutdown (INT, QUIT), workers get this long after SIGQUIT before SIGKILL.
pub const FAST_SHUTDOWN_GRACE_MS: u64 = 1000;

pub type WorkerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Quit,
    Kill,
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
        busy: Option<Busy>,
    },
    /// Told to stop (SIGTERM or SIGQUIT); SIGKILL at `kill_at`.
    Draining {
        kill_at: Instant,
    },
}

/// Why a worker was killed by the pool, so its exit is explained rather than called a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    BootTimeout,
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub slot: usize,
    pub pid: Option<i32>,
    pub generation: u64,
    pub state: WorkerState,
    pub spawned_at: Instant,
    killed: Option<KillReason>,
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
}

/// What the probes need to know, copied out after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub started: bool,
    pub stopping: bool,
    pub size: usize,
    pub ready: usize,
    pub booted: usize,
    pub crash_loop: Option<String>,
}

pub struct Pool {
    config: PoolConfig,
    phase: Phase,
    workers: BTreeMap<WorkerId, Worker>,
    slots: Vec<Slot>,
    next_id: WorkerId,
    generation: u64,
    started_at: Instant,
    actions: Vec<Action>,
    /// The first fatal error, for main to print as the last line.
    fatal: Option<String>,
    last_traceback: Option<String>,
    pub requests_total: u64,
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
            started_at: now,
            actions: Vec::new(),
            fatal: None,
            last_traceback: None,
            requests_total: 0,
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

    fn worker_by_pid(&mut self, pid: i32) -> Option<&mut Worker> {
        self.workers.values_mut().find(|w| w.pid == Some(pid))
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
        let phase_failing = matches!(self.phase, Phase::Failing { .. });
        let Some(worker) = self.worker_by_pid(pid) else {
            return;
        };
        match message {
            Message::Boot => {
                if worker.state == WorkerState::Spawned {
                    worker.state = WorkerState::Booting;
                }
            }
            Message::Ready { boot_ms } => {
                if matches!(worker.state, WorkerState::Spawned | WorkerState::Booting) {
                    worker.state = WorkerState::Ready {
                        since: now,
                        busy: None,
                    };
                    log::info!(
                        "event=ready worker={} slot={} pid={pid} gen={} boot_ms={boot_ms}",
                        worker.id,
                        worker.slot,
                        worker.generation
                    );
                }
            }
            Message::Heartbeat { requests, busy } => {
                if let WorkerState::Ready { busy: b, .. } = &mut worker.state {
                    *b = busy;
                }
                self.requests_total += requests;
            }
            Message::Failed(failure) => {
                if !phase_failing {
                    self.boot_failed(failure, now);
                }
            }
        }
        self.tick(now);
    }

    fn boot_failed(&mut self, failure: BootFailure, now: Instant) {
        // The traceback is printed once, not once per worker or per respawn.
        if self.last_traceback.as_deref() != Some(failure.traceback.as_str()) {
            eprint!("{}", failure.traceback);
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
        match (&self.phase, &worker.state) {
            (Phase::Failing { .. } | Phase::Draining, _) | (_, WorkerState::Draining { .. }) => {
                log::info!("event=exit worker={id} slot={slot} pid={pid} {status}");
            }
            (Phase::Starting, WorkerState::Spawned | WorkerState::Booting) => {
                let error = match (worker.killed, status) {
                    (Some(KillReason::BootTimeout), _) => format!(
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
                let slot_state = &mut self.slots[slot];
                if stable {
                    slot_state.crashes = 0;
                }
                slot_state.crashes += 1;
                let delay = backoff(slot_state.crashes);
                slot_state.respawn_at = Some(now + delay);
                let reason = if worker.killed == Some(KillReason::BootTimeout) {
                    "boot_timeout"
                } else {
                    "crash"
                };
                log::warn!(
                    "event=worker_died worker={id} slot={slot} pid={pid} {status} reason={reason} crashes={} respawn_in_ms={}",
                    slot_state.crashes,
                    delay.as_millis()
                );
            }
        }
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

        // Deadlines: boot timeouts and drain deadlines end in SIGKILL.
        for w in self.workers.values_mut() {
            let Some(pid) = w.pid else { continue };
            match w.state {
                WorkerState::Spawned | WorkerState::Booting
                    if w.killed.is_none()
                        && now.duration_since(w.spawned_at) >= self.config.boot_timeout =>
                {
                    log::error!(
                        "event=boot_timeout worker={} slot={} pid={pid}",
                        w.id,
                        w.slot
                    );
                    w.killed = Some(KillReason::BootTimeout);
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
                WorkerState::Ready { since, .. }
                    if now.duration_since(since) >= Duration::from_secs(STABLE_AFTER_S) =>
                {
                    self.slots[w.slot].crashes = 0;
                }
                _ => {}
            }
        }

        match self.phase {
            Phase::Starting | Phase::Running | Phase::Delaying { .. } => self.fill_slots(now),
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
            log::info!(
                "event=started workers={} startup_ms={}",
                self.config.size,
                now.duration_since(self.started_at).as_millis()
            );
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
            let id = self.next_id;
            self.next_id += 1;
            self.workers.insert(
                id,
                Worker {
                    id,
                    slot,
                    pid: None,
                    generation: self.generation,
                    state: WorkerState::Spawned,
                    spawned_at: now,
                    killed: None,
                },
            );
            self.actions.push(Action::Spawn {
                worker: id,
                slot,
                generation: self.generation,
            });
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
                WorkerState::Spawned | WorkerState::Booting if w.killed.is_none() => {
                    consider(w.spawned_at + self.config.boot_timeout)
                }
                WorkerState::Draining { kill_at } => consider(kill_at),
                WorkerState::Ready { since, .. } if self.slots[w.slot].crashes > 0 => {
                    consider(since + Duration::from_secs(STABLE_AFTER_S))
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
            started: self.phase != Phase::Starting,
            stopping: matches!(
                self.phase,
                Phase::Delaying { .. } | Phase::Draining | Phase::Failing { .. }
            ),
            size: self.config.size,
            ready,
            booted: self.ready_slots(),
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
                self.say(pid, Message::Ready { boot_ms: 1 });
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
        h.say(100, Message::Ready { boot_ms: 5 });
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
        h.say(101, Message::Ready { boot_ms: 1 });
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
}
