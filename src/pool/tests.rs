//! The pool's unit tests: a fake clock and a fake process table (`Harness`) around a real `Pool`.

use super::*;

/// The rules of a pool of interchangeable workers (serve's and consume's).
const WORKERS: Supervision = Supervision::Pool;

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
        reload: ReloadStyle::Rolling,
    }
}

/// A fake clock and fake process table around a Pool: spawns get pids 100, 101, ...
pub(crate) struct Harness {
    pub(crate) pool: Pool,
    pub(crate) now: Instant,
    next_pid: i32,
    pub(crate) alive: Vec<i32>,
    pub(crate) signals: Vec<(i32, Signal)>,
    tracebacks: Vec<String>,
    pub(crate) exit: Option<i32>,
    /// --preload: spawns wait here (like asks of a zygote still importing) instead of starting.
    deferred: bool,
    asked: Vec<WorkerId>,
    /// (worker, timed_out) of each Cancel.
    cancelled: Vec<(WorkerId, bool)>,
}

impl Harness {
    fn new(size: usize) -> Harness {
        Harness::of(size, WORKERS)
    }

    pub(crate) fn of(size: usize, rules: Supervision) -> Harness {
        Harness::built(size, rules, false)
    }

    /// A pool whose spawns wait (as with --preload before the zygote is ready).
    fn deferred(size: usize) -> Harness {
        Harness::built(size, WORKERS, true)
    }

    fn built(size: usize, rules: Supervision, deferred: bool) -> Harness {
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

    pub(crate) fn run(&mut self) {
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

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.pool.tick(self.now);
        self.run();
    }

    fn say(&mut self, pid: i32, m: Message) {
        self.pool.message(pid, m, self.now);
        self.run();
    }

    pub(crate) fn ready_all(&mut self) {
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

    pub(crate) fn exit(&mut self, pid: i32, status: ExitStatus) {
        self.alive.retain(|p| *p != pid);
        self.pool.exited(pid, status, self.now);
        self.run();
    }
}

fn failure() -> BootFailure {
    BootFailure {
        kind: crate::protocol::FailureKind::Import,
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
    let mut pool = Pool::new(config(2), WORKERS, now);
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

pub(crate) fn ready(h: &mut Harness, pid: i32) {
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
    let busy = busy_s.map(|s| crate::protocol::Busy {
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
            loop_lag: None,
            websockets: None,
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
    assert_eq!(h.signals, vec![(100, Signal::Restart)]);
    assert_eq!(
        h.alive,
        vec![100, 101, 102, 103],
        "next slot's successor started"
    );
    assert_eq!(h.pool.health().ready, 2, "never below the pool size");
    h.exit(100, ExitStatus::Code(0));
    ready(&mut h, 103);
    assert_eq!(
        h.signals,
        vec![(100, Signal::Restart), (101, Signal::Restart)]
    );
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
        kind: crate::protocol::FailureKind::Preload,
        error: "--preload: the app started threads".into(),
        traceback: "Traceback: ...".into(),
        ..failure()
    };
    h.pool.lost(1, Some(refused.clone()), h.now);
    h.run();
    h.pool.lost(2, Some(refused), h.now);
    h.run();
    assert_eq!(h.exit, Some(crate::protocol::EXIT_PRELOAD_REFUSED));
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

/// Issue 26: with a stop-first reload (--debugger's port) the old worker is gone before its slot
/// gets the new one, and the reload still counts as one.
#[test]
fn a_stop_first_reload_stops_the_old_worker_before_its_slot_gets_the_new_one() {
    let mut h = Harness::new(1).with(|c| c.reload = ReloadStyle::StopFirst);
    h.ready_all();
    h.pool.reload(h.now);
    h.run();
    assert_eq!(h.signals, vec![(100, Signal::Restart)]);
    assert_eq!(
        h.alive,
        vec![100],
        "nothing new while the old one holds the slot"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.alive, vec![100], "still nothing until it is reaped");
    h.exit(100, ExitStatus::Code(0));
    assert_eq!(h.alive, vec![101], "the new generation takes the slot");
    assert_eq!(h.pool.reloads_succeeded, 0, "not before it is ready");
    ready(&mut h, 101);
    assert_eq!(h.pool.reloads_succeeded, 1);
    assert_eq!(h.pool.restarts.get(&Reason::Reload), Some(&1));
    assert_eq!(h.pool.health().crash_loop, None, "the stop was no crash");
}

/// Issue 22: a TERM while a reload rolls is neither a failed reload nor a failed successor.
#[test]
fn a_term_during_a_reload_abandons_it_and_fails_nothing() {
    let mut h = Harness::new(2);
    h.ready_all();
    h.pool.reload(h.now);
    h.run();
    assert_eq!(h.alive, vec![100, 101, 102], "a successor is booting");
    h.pool.shutdown(Shutdown::Graceful, h.now);
    h.run();
    assert_eq!(h.pool.reloads_abandoned, 1);
    for pid in [100, 101, 102] {
        assert!(h.signals.contains(&(pid, Signal::Term)), "{pid} drains");
        h.exit(pid, ExitStatus::Code(0));
    }
    assert_eq!(h.pool.reloads_failed, 0, "not a failed reload");
    assert_eq!(h.pool.reloads_succeeded, 0);
    assert_eq!(h.exit, Some(0));
    let mut snapshot = crate::metrics::Snapshot::default();
    h.pool.fill_metrics(&mut snapshot);
    assert_eq!(
        (snapshot.reloads_abandoned, snapshot.reloads_failed),
        (1, 0)
    );
}

/// Without a shutdown, a successor that dies booting still fails the reload (the test above
/// could pass by never counting failures).
#[test]
fn a_successor_dying_while_serving_still_fails_the_reload() {
    let mut h = Harness::new(2);
    h.ready_all();
    h.pool.reload(h.now);
    h.run();
    h.exit(102, ExitStatus::Code(1));
    assert_eq!((h.pool.reloads_failed, h.pool.reloads_abandoned), (1, 0));
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
    assert_eq!(h.signals.last(), Some(&(100, Signal::Restart)));
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
    assert_eq!(h.signals, vec![(101, Signal::Restart)]);
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
    assert_eq!(h.signals, vec![(101, Signal::Restart)]);
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
    assert_eq!(h.signals, vec![(101, Signal::Restart)]);
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
        let mut pool = Pool::new(c, WORKERS, Instant::now());
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
