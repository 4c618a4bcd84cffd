//! --preload's zygotes as a pure state machine: events in (a worker is wanted, a zygote started,
//! spoke, exited; time passed; shutdown), actions out (start a zygote, fork a worker from one,
//! signal one, give a wanted worker up as lost).
//!
//! Why zygotes: a zygote is a Python process that imports the app once; workers forked from it
//! share its pages copy-on-write and are ready in milliseconds. Why one per generation: the master
//! never runs Python, and a reload must load new code, so HUP (or --autoreload) starts a new
//! zygote, and the pool's rolling replacement forks the new generation from it once it is ready;
//! then the older one exits. (gunicorn's --preload keeps the import in its master, so its HUP
//! cannot load new code.)
//!
//! Why apart from `pool`: the pool's rules do not change with --preload. It asks for a worker
//! (`Action::Spawn`) as before and learns the pid when the fork is done, or that the worker was
//! lost (`Pool::lost`), with the import failure when that is why, so a broken app still stops
//! startup and a broken reload still leaves the old generation serving.
//!
//! A zygote is `Starting -> Ready -> Stopping -> Killed` (removed when reaped). Rules:
//! - the first ask for a generation starts its zygote; asks wait until it is ready (its import
//!   counts against --boot-timeout);
//! - a zygote that fails to import (or dies importing, or times out) fails the workers waiting on
//!   it and is not retried for its generation: later asks fork from the newest ready zygote, whose
//!   old code keeps serving, as after any failed reload;
//! - a ready zygote that dies (kill -9, OOM) is started again with the crash backoff; workers keep
//!   serving meanwhile, and only new forks wait for it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::lifecycle::ExitStatus;
use crate::pool::{FAST_SHUTDOWN_GRACE_MS, STABLE_AFTER_S, Signal, WorkerId, backoff};
use crate::protocol::{BootFailure, Message};

pub type ZygoteId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZygoteState {
    /// Exec'd, importing the app; killed if not ready by `deadline` (--boot-timeout).
    Starting { deadline: Instant },
    /// Forks workers on request.
    Ready { since: Instant },
    /// Told to exit (TERM), or exiting after a failed import; SIGKILL at `kill_at`.
    Stopping { kill_at: Instant },
    /// SIGKILL sent: only its exit is left to come.
    Killed,
}

#[derive(Debug, Clone)]
pub struct Zygote {
    pub generation: u64,
    /// Known once the master has exec'd it (`started`).
    pub pid: Option<i32>,
    pub state: ZygoteState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Exec the zygote of `generation`; answer with `started`, or `start_failed`.
    Start {
        zygote: ZygoteId,
        generation: u64,
    },
    /// Ask the ready `zygote` to fork worker `worker` of `generation`; answer the pool with
    /// `spawned`, or with `lost` (and `broken` here if the zygote did not answer).
    Fork {
        zygote: ZygoteId,
        worker: WorkerId,
        generation: u64,
    },
    /// Worker `worker` will not be forked: the pool's `lost`, with the import failure if that is why.
    Lost {
        worker: WorkerId,
        failure: Option<BootFailure>,
    },
    Signal {
        pid: i32,
        signal: Signal,
    },
    /// A failed import's traceback no waiting worker carries to the pool's log.
    LogTraceback(String),
}

/// Whether the master is still running the service; zygotes are not started once it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopped,
}

/// A ready zygote died: it is started again at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restart {
    generation: u64,
    at: Instant,
}

pub struct Zygotes {
    zygotes: BTreeMap<ZygoteId, Zygote>,
    /// Workers asked for whose zygote is not ready yet, with their generation, in order of asking.
    waiting: Vec<(WorkerId, u64)>,
    next_id: ZygoteId,
    /// The newest generation whose zygote failed to load the app.
    failed: Option<u64>,
    /// Deaths of ready zygotes in a row; reset once one stays ready STABLE_AFTER_S.
    crashes: u32,
    restart: Option<Restart>,
    boot_timeout: Duration,
    phase: Phase,
    actions: Vec<Action>,
    /// Zygotes started again after one died or hung (not reloads), for /metrics.
    pub restarts: u64,
}

impl Zygotes {
    pub fn new(boot_timeout: Duration) -> Zygotes {
        Zygotes {
            zygotes: BTreeMap::new(),
            waiting: Vec::new(),
            next_id: 1,
            failed: None,
            crashes: 0,
            restart: None,
            boot_timeout,
            phase: Phase::Running,
            actions: Vec::new(),
            restarts: 0,
        }
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    #[cfg(test)]
    fn get(&self, id: ZygoteId) -> Option<&Zygote> {
        self.zygotes.get(&id)
    }

    /// (generation, pid) of each zygote that is starting or ready, for /metrics and signals.
    pub fn live(&self) -> Vec<(u64, i32)> {
        self.zygotes
            .values()
            .filter(|z| {
                matches!(
                    z.state,
                    ZygoteState::Starting { .. } | ZygoteState::Ready { .. }
                )
            })
            .filter_map(|z| Some((z.generation, z.pid?)))
            .collect()
    }

    fn ready_of(&self, generation: u64) -> Option<ZygoteId> {
        self.zygotes
            .iter()
            .find(|(_, z)| {
                z.generation == generation && matches!(z.state, ZygoteState::Ready { .. })
            })
            .map(|(id, _)| *id)
    }

    fn newest_ready(&self) -> Option<ZygoteId> {
        self.zygotes
            .iter()
            .filter(|(_, z)| matches!(z.state, ZygoteState::Ready { .. }))
            .max_by_key(|(_, z)| z.generation)
            .map(|(id, _)| *id)
    }

    fn starting(&self, generation: u64) -> bool {
        self.zygotes
            .values()
            .any(|z| z.generation == generation && matches!(z.state, ZygoteState::Starting { .. }))
            || self.restart.is_some_and(|r| r.generation == generation)
    }

    /// The pool wants worker `worker` of `generation`.
    pub fn want(&mut self, worker: WorkerId, generation: u64, now: Instant) {
        if self.phase == Phase::Stopped {
            self.actions.push(Action::Lost {
                worker,
                failure: None,
            });
            return;
        }
        if let Some(zygote) = self.ready_of(generation) {
            self.actions.push(Action::Fork {
                zygote,
                worker,
                generation,
            });
            return;
        }
        if self.starting(generation) {
            self.waiting.push((worker, generation));
            return;
        }
        if self.failed.is_some_and(|failed| failed >= generation)
            && let Some(zygote) = self.newest_ready()
        {
            // This generation's code failed to load: the code that serves now forks it.
            self.actions.push(Action::Fork {
                zygote,
                worker,
                generation,
            });
            return;
        }
        self.waiting.push((worker, generation));
        self.start(generation, now);
    }

    fn start(&mut self, generation: u64, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        if self.restart.is_some_and(|r| r.generation <= generation) {
            self.restart = None;
        }
        // An older zygote still importing would only ever serve a generation the pool left behind.
        let stale: Vec<ZygoteId> = self
            .zygotes
            .iter()
            .filter(|(_, z)| {
                z.generation < generation && matches!(z.state, ZygoteState::Starting { .. })
            })
            .map(|(id, _)| *id)
            .collect();
        for old in stale {
            self.stop(old, now);
        }
        self.zygotes.insert(
            id,
            Zygote {
                generation,
                pid: None,
                state: ZygoteState::Starting {
                    deadline: now + self.boot_timeout,
                },
            },
        );
        log::info!("event=zygote_start zygote={id} gen={generation}");
        self.actions.push(Action::Start {
            zygote: id,
            generation,
        });
    }

    /// The master exec'd zygote `id` as `pid`.
    pub fn started(&mut self, id: ZygoteId, pid: i32) {
        if let Some(z) = self.zygotes.get_mut(&id) {
            z.pid = Some(pid);
        }
    }

    /// The zygote could not be exec'd at all (the master says why, and stops: it is fatal).
    pub fn start_failed(&mut self, id: ZygoteId) {
        if let Some(z) = self.zygotes.remove(&id) {
            self.give_up(z.generation, None);
        }
    }

    /// A fork request to zygote `id` went unanswered: it is stuck; kill it and start another.
    pub fn broken(&mut self, id: ZygoteId, now: Instant) {
        let Some(z) = self.zygotes.get_mut(&id) else {
            return;
        };
        log::error!(
            "event=zygote_stuck zygote={id} gen={} pid={}",
            z.generation,
            z.pid.unwrap_or(0)
        );
        z.state = ZygoteState::Killed;
        let generation = z.generation;
        Zygotes::signal(&mut self.actions, z.pid, Signal::Kill);
        self.schedule_restart(generation, now);
    }

    /// The workers waiting on generation `generation`'s zygote, in order; they wait no more.
    fn take_waiting(&mut self, generation: u64) -> Vec<WorkerId> {
        let (taken, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, g)| *g == generation);
        self.waiting = still;
        taken.into_iter().map(|(worker, _)| worker).collect()
    }

    /// Workers that will not be forked: the pool's `lost`, with `failure` if that is why.
    fn lose(&mut self, workers: Vec<WorkerId>, failure: Option<BootFailure>) {
        for worker in workers {
            self.actions.push(Action::Lost {
                worker,
                failure: failure.clone(),
            });
        }
    }

    fn signal(actions: &mut Vec<Action>, pid: Option<i32>, signal: Signal) {
        if let Some(pid) = pid {
            actions.push(Action::Signal { pid, signal });
        }
    }

    /// The pool no longer wants worker `worker` (it is shutting down, or the reload moved on).
    pub fn cancel(&mut self, worker: WorkerId) {
        self.waiting.retain(|(w, _)| *w != worker);
    }

    pub fn message(&mut self, id: ZygoteId, message: &Message, now: Instant) {
        let Some(z) = self.zygotes.get_mut(&id) else {
            return;
        };
        let generation = z.generation;
        match message {
            Message::Ready { boot_ms, .. } => {
                if !matches!(z.state, ZygoteState::Starting { .. }) {
                    return;
                }
                z.state = ZygoteState::Ready { since: now };
                log::info!(
                    "event=zygote_ready zygote={id} gen={generation} pid={} boot_ms={boot_ms}",
                    z.pid.unwrap_or(0)
                );
                for worker in self.take_waiting(generation) {
                    self.actions.push(Action::Fork {
                        zygote: id,
                        worker,
                        generation,
                    });
                }
                // The pool asks for this generation (or newer) from now on: older zygotes go.
                let older: Vec<ZygoteId> = self
                    .zygotes
                    .iter()
                    .filter(|(_, z)| {
                        z.generation < generation
                            && matches!(
                                z.state,
                                ZygoteState::Starting { .. } | ZygoteState::Ready { .. }
                            )
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for old in older {
                    self.stop(old, now);
                }
            }
            Message::Failed(failure) => {
                if !matches!(z.state, ZygoteState::Starting { .. }) {
                    return;
                }
                // It exits by itself; the kill is only for one that does not.
                z.state = ZygoteState::Stopping {
                    kill_at: now + Duration::from_millis(FAST_SHUTDOWN_GRACE_MS),
                };
                log::error!(
                    "event=zygote_failed zygote={id} gen={generation} {}",
                    failure.summary()
                );
                self.give_up(generation, Some(failure.clone()));
            }
            _ => {}
        }
    }

    /// Generation `generation`'s zygote will not be ready: its waiting workers are lost.
    fn give_up(&mut self, generation: u64, failure: Option<BootFailure>) {
        self.failed = Some(self.failed.map_or(generation, |f| f.max(generation)));
        let lost = self.take_waiting(generation);
        if lost.is_empty()
            && let Some(failure) = &failure
            && !failure.traceback.is_empty()
        {
            self.actions
                .push(Action::LogTraceback(failure.traceback.clone()));
        }
        self.lose(lost, failure);
    }

    fn schedule_restart(&mut self, generation: u64, now: Instant) {
        if self.phase == Phase::Stopped || self.zygotes.values().any(|z| z.generation > generation)
        {
            return; // a newer generation's zygote replaces it anyway
        }
        self.crashes += 1;
        let delay = backoff(self.crashes);
        log::warn!(
            "event=zygote_restart gen={generation} crashes={} restart_in_ms={}",
            self.crashes,
            delay.as_millis()
        );
        self.restart = Some(Restart {
            generation,
            at: now + delay,
        });
    }

    fn stop(&mut self, id: ZygoteId, now: Instant) {
        let Some(z) = self.zygotes.get_mut(&id) else {
            return;
        };
        let generation = z.generation;
        let was_starting = matches!(z.state, ZygoteState::Starting { .. });
        z.state = ZygoteState::Stopping {
            kill_at: now + Duration::from_millis(FAST_SHUTDOWN_GRACE_MS),
        };
        Zygotes::signal(&mut self.actions, z.pid, Signal::Term);
        log::info!("event=zygote_stop zygote={id} gen={generation}");
        if was_starting {
            let lost = self.take_waiting(generation);
            self.lose(lost, None);
        }
    }

    /// Zygote `id` was reaped.
    pub fn exited(&mut self, id: ZygoteId, status: ExitStatus, now: Instant) {
        let Some(z) = self.zygotes.remove(&id) else {
            return;
        };
        let pid = z.pid.unwrap_or(0);
        match z.state {
            ZygoteState::Starting { .. } => {
                log::error!(
                    "event=zygote_exit zygote={id} gen={} pid={pid} {status} while=importing",
                    z.generation
                );
                let failure = BootFailure::config(
                    "",
                    format!(
                        "the --preload zygote died while importing the app ({status}); run without --preload to see the worker's own error"
                    ),
                );
                self.give_up(z.generation, Some(failure));
            }
            ZygoteState::Ready { since } => {
                log::error!(
                    "event=zygote_exit zygote={id} gen={} pid={pid} {status} while=ready",
                    z.generation
                );
                if now.duration_since(since) >= Duration::from_secs(STABLE_AFTER_S) {
                    self.crashes = 0;
                }
                self.schedule_restart(z.generation, now);
            }
            ZygoteState::Stopping { .. } | ZygoteState::Killed => {
                log::info!(
                    "event=zygote_exit zygote={id} gen={} pid={pid} {status}",
                    z.generation
                );
            }
        }
    }

    /// The master is stopping: every zygote exits, none starts again.
    pub fn shutdown(&mut self, now: Instant) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        self.restart = None;
        self.waiting.clear(); // the pool cancels its unforked workers itself
        let ids: Vec<ZygoteId> = self
            .zygotes
            .iter()
            .filter(|(_, z)| {
                matches!(
                    z.state,
                    ZygoteState::Starting { .. } | ZygoteState::Ready { .. }
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stop(id, now);
        }
    }

    /// Time passed: import deadlines, kill deadlines, a restart that is due.
    pub fn tick(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for (id, z) in self.zygotes.iter_mut() {
            match z.state {
                ZygoteState::Starting { deadline } if now >= deadline => {
                    log::error!(
                        "event=zygote_boot_timeout zygote={id} gen={} pid={}",
                        z.generation,
                        z.pid.unwrap_or(0)
                    );
                    z.state = ZygoteState::Killed;
                    timed_out.push(z.generation);
                    Zygotes::signal(&mut self.actions, z.pid, Signal::Kill);
                }
                ZygoteState::Stopping { kill_at } if now >= kill_at => {
                    z.state = ZygoteState::Killed;
                    Zygotes::signal(&mut self.actions, z.pid, Signal::Kill);
                }
                ZygoteState::Ready { since }
                    if now.duration_since(since) >= Duration::from_secs(STABLE_AFTER_S) =>
                {
                    self.crashes = 0;
                }
                _ => {}
            }
        }
        for generation in timed_out {
            let failure = BootFailure::config(
                "",
                format!(
                    "the --preload zygote did not import the app within {}s; raise --boot-timeout or find what the import waits on",
                    self.boot_timeout.as_secs_f64()
                ),
            );
            self.give_up(generation, Some(failure));
        }
        if let Some(restart) = self.restart
            && now >= restart.at
            && self.phase == Phase::Running
        {
            self.restart = None;
            self.restarts += 1;
            self.start(restart.generation, now);
        }
    }

    /// The earliest moment `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.restart.map(|r| r.at);
        for z in self.zygotes.values() {
            let at = match z.state {
                ZygoteState::Starting { deadline } => Some(deadline),
                ZygoteState::Stopping { kill_at } => Some(kill_at),
                ZygoteState::Ready { since } if self.crashes > 0 => {
                    Some(since + Duration::from_secs(STABLE_AFTER_S))
                }
                _ => None,
            };
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Duration = Duration::from_secs(60);

    fn ready() -> Message {
        Message::Ready {
            boot_ms: 300,
            dirs: vec![],
            django: false,
            reject_reasons: vec![],
            routing_keys: vec![],
        }
    }

    fn failure(kind: &str) -> BootFailure {
        BootFailure {
            kind: serde_json::from_value(serde_json::json!(kind)).unwrap(),
            app: "app".into(),
            error: "ImportError: no module named app".into(),
            traceback: "Traceback ...".into(),
            ..BootFailure::config("", String::new())
        }
    }

    /// Starts generation 0's zygote for worker 1 and makes it ready as pid 500; returns its id.
    fn running(z: &mut Zygotes, t0: Instant) -> ZygoteId {
        z.want(1, 0, t0);
        let Action::Start { zygote, generation } = z.take_actions()[0].clone() else {
            panic!("a start");
        };
        assert_eq!(generation, 0);
        z.started(zygote, 500);
        z.message(zygote, &ready(), t0);
        assert_eq!(
            z.take_actions(),
            vec![Action::Fork {
                zygote,
                worker: 1,
                generation: 0
            }]
        );
        zygote
    }

    #[test]
    fn the_first_ask_starts_the_zygote_and_asks_wait_until_it_is_ready() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        z.want(1, 0, t0);
        z.want(2, 0, t0);
        let actions = z.take_actions();
        assert_eq!(
            actions,
            vec![Action::Start {
                zygote: 1,
                generation: 0
            }],
            "one zygote for both"
        );
        z.started(1, 500);
        z.message(1, &ready(), t0 + Duration::from_millis(300));
        assert_eq!(
            z.take_actions(),
            vec![
                Action::Fork {
                    zygote: 1,
                    worker: 1,
                    generation: 0
                },
                Action::Fork {
                    zygote: 1,
                    worker: 2,
                    generation: 0
                },
            ]
        );
        z.want(3, 0, t0 + Duration::from_secs(1));
        assert_eq!(
            z.take_actions(),
            vec![Action::Fork {
                zygote: 1,
                worker: 3,
                generation: 0
            }],
            "a ready zygote forks at once"
        );
    }

    #[test]
    fn a_reload_starts_a_new_zygote_and_the_old_one_stops_once_it_is_ready() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        let old = running(&mut z, t0);
        z.want(7, 1, t0);
        assert_eq!(
            z.take_actions(),
            vec![Action::Start {
                zygote: 2,
                generation: 1
            }]
        );
        z.started(2, 600);
        z.message(2, &ready(), t0);
        assert_eq!(
            z.take_actions(),
            vec![
                Action::Fork {
                    zygote: 2,
                    worker: 7,
                    generation: 1
                },
                Action::Signal {
                    pid: 500,
                    signal: Signal::Term
                },
            ]
        );
        assert!(matches!(
            z.get(old).unwrap().state,
            ZygoteState::Stopping { .. }
        ));
        z.exited(old, ExitStatus::Code(0), t0);
        assert_eq!(z.live(), vec![(1, 600)]);
        assert_eq!(z.restarts, 0, "a reload is not a restart");
    }

    #[test]
    fn a_new_zygote_that_fails_to_import_loses_its_workers_and_the_old_one_keeps_forking() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        let old = running(&mut z, t0);
        z.want(7, 1, t0);
        z.take_actions();
        z.started(2, 600);
        z.message(2, &Message::Failed(failure("import")), t0);
        assert_eq!(
            z.take_actions(),
            vec![Action::Lost {
                worker: 7,
                failure: Some(failure("import"))
            }]
        );
        z.exited(2, ExitStatus::Code(3), t0);
        // A crash respawn asks for the failed generation: the old code forks it, nothing re-imports.
        z.want(8, 1, t0 + Duration::from_secs(1));
        assert_eq!(
            z.take_actions(),
            vec![Action::Fork {
                zygote: old,
                worker: 8,
                generation: 1
            }]
        );
        // The next reload tries again.
        z.want(9, 2, t0 + Duration::from_secs(2));
        assert!(matches!(
            z.take_actions()[0],
            Action::Start { generation: 2, .. }
        ));
    }

    #[test]
    fn a_ready_zygote_that_dies_is_started_again_with_backoff_and_asks_wait_for_it() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        let first = running(&mut z, t0);
        let t1 = t0 + Duration::from_secs(1);
        z.exited(first, ExitStatus::Signal(9), t1);
        z.tick(t1);
        let Action::Start { zygote: second, .. } = z.take_actions()[0].clone() else {
            panic!("restarted at once the first time");
        };
        assert_eq!(z.restarts, 1);
        z.started(second, 501);
        z.want(2, 0, t1);
        assert!(z.take_actions().is_empty(), "waits for the new zygote");
        z.message(second, &ready(), t1);
        assert_eq!(
            z.take_actions(),
            vec![Action::Fork {
                zygote: second,
                worker: 2,
                generation: 0
            }]
        );
        // A second quick death backs off.
        z.exited(second, ExitStatus::Signal(9), t1 + Duration::from_secs(1));
        z.tick(t1 + Duration::from_secs(1));
        assert!(z.take_actions().is_empty());
        let at = z.next_deadline().expect("a restart is due");
        assert!(at > t1 + Duration::from_secs(1));
        z.tick(at);
        assert!(matches!(
            z.take_actions()[0],
            Action::Start { generation: 0, .. }
        ));
    }

    #[test]
    fn an_import_past_the_boot_timeout_is_killed_and_fails_its_workers() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(Duration::from_secs(5));
        z.want(1, 0, t0);
        z.take_actions();
        z.started(1, 500);
        z.tick(t0 + Duration::from_secs(5));
        let actions = z.take_actions();
        assert_eq!(
            actions[0],
            Action::Signal {
                pid: 500,
                signal: Signal::Kill
            }
        );
        let Action::Lost {
            worker: 1,
            failure: Some(failure),
        } = &actions[1]
        else {
            panic!("worker 1 lost: {actions:?}");
        };
        assert!(failure.summary().contains("--boot-timeout"), "{failure:?}");
    }

    #[test]
    fn a_refusal_carries_its_own_exit_code() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        z.want(1, 0, t0);
        z.take_actions();
        z.started(1, 500);
        z.message(1, &Message::Failed(failure("preload")), t0);
        let actions = z.take_actions();
        let Action::Lost {
            failure: Some(failure),
            ..
        } = &actions[0]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(failure.exit_code(), crate::protocol::EXIT_PRELOAD_REFUSED);
    }

    #[test]
    fn shutdown_stops_every_zygote_and_nothing_starts_after() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        let id = running(&mut z, t0);
        z.shutdown(t0);
        assert_eq!(
            z.take_actions(),
            vec![Action::Signal {
                pid: 500,
                signal: Signal::Term
            }]
        );
        z.tick(t0 + Duration::from_millis(FAST_SHUTDOWN_GRACE_MS));
        assert_eq!(
            z.take_actions(),
            vec![Action::Signal {
                pid: 500,
                signal: Signal::Kill
            }]
        );
        z.exited(id, ExitStatus::Signal(9), t0 + Duration::from_secs(2));
        z.tick(t0 + Duration::from_secs(60));
        z.want(5, 0, t0 + Duration::from_secs(60));
        assert_eq!(
            z.take_actions(),
            vec![Action::Lost {
                worker: 5,
                failure: None
            }]
        );
    }

    #[test]
    fn a_hup_during_a_zygotes_import_stops_it_and_starts_the_newest() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        running(&mut z, t0);
        z.want(7, 1, t0);
        z.take_actions();
        z.started(2, 600);
        // The pool cancels its stale successor and asks for generation 2.
        z.cancel(7);
        z.want(8, 2, t0);
        assert_eq!(
            z.take_actions(),
            vec![
                Action::Signal {
                    pid: 600,
                    signal: Signal::Term
                },
                Action::Start {
                    zygote: 3,
                    generation: 2
                },
            ],
            "the importing zygote of generation 1 stops; the newest starts"
        );
        z.started(3, 700);
        z.message(3, &ready(), t0);
        let actions = z.take_actions();
        assert_eq!(
            actions[0],
            Action::Fork {
                zygote: 3,
                worker: 8,
                generation: 2
            }
        );
        assert!(
            actions.contains(&Action::Signal {
                pid: 500,
                signal: Signal::Term
            }),
            "and generation 0's goes once 2 is ready: {actions:?}"
        );
    }

    #[test]
    fn a_stuck_zygote_is_killed_and_replaced() {
        let t0 = Instant::now();
        let mut z = Zygotes::new(BOOT);
        let id = running(&mut z, t0);
        z.broken(id, t0);
        assert_eq!(
            z.take_actions(),
            vec![Action::Signal {
                pid: 500,
                signal: Signal::Kill
            }]
        );
        z.exited(id, ExitStatus::Signal(9), t0);
        z.tick(t0);
        assert!(matches!(
            z.take_actions()[0],
            Action::Start { generation: 0, .. }
        ));
    }
}
