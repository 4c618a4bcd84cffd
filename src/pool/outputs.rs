//! What the pool tells the rest: its actions, its health for the probes, its metrics, its next
//! deadline, and which workers are where.
//!
//! One of the pool's duties, as its own `impl Pool` block (the state and the events are in `pool`).

use super::*;

impl Pool {
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
        snapshot.workers_desired = self.slots.len();
        snapshot.restarts = self.restarts.clone();
        snapshot.reloads_succeeded = self.reloads_succeeded;
        snapshot.reloads_failed = self.reloads_failed;
        snapshot.reloads_abandoned = self.reloads_abandoned;
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
