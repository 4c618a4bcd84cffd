//! Exits: a worker reaped or lost, and what follows from its plan and the phase: a respawn with
//! backoff, a failed reload, a fatal boot failure, the end of the service.
//!
//! One of the pool's duties, as its own `impl Pool` block (the state and the events are in `pool`).

use super::*;

impl Pool {
    pub(super) fn boot_failed(&mut self, failure: BootFailure, now: Instant) {
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
    pub(super) fn fail(&mut self, code: i32, error: String, now: Instant) {
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
    pub(super) fn ended(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        status: ExitStatus,
        now: Instant,
    ) {
        if self.rules.service_ends_with_process() {
            self.service_ended(id, worker, status, now);
        } else if matches!(self.phase, Phase::Failing { .. } | Phase::Draining { .. }) {
            // Told to stop with everyone else: a successor that never got ready did not fail.
            log_exit(id, worker, status);
        } else if let (Plan::Succeed { old }, true) = (worker.plan, !worker.state.is_ready()) {
            self.successor_failed(id, worker, old, status, now);
        } else if worker.plan == Plan::StopFirst {
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
    pub(super) fn service_ended(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        status: ExitStatus,
        now: Instant,
    ) {
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
    pub(super) fn successor_failed(
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
    pub(super) fn failed_at_startup(
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
    pub(super) fn crashed(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        status: ExitStatus,
        now: Instant,
    ) {
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
}
