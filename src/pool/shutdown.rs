//! Shutdown: TERM (with --shutdown-delay), INT/QUIT, a second signal escalating, and the drain that
//! ends in SIGKILL at its deadline.
//!
//! One of the pool's duties, as its own `impl Pool` block (the state and the events are in `pool`).

use super::*;

impl Pool {
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
            Phase::Starting | Phase::Running => {
                self.abandon_reload();
                self.begin_shutdown(kind, now);
            }
        }
        self.tick(now);
    }

    /// A shutdown cuts a rolling reload short: its own outcome, not a failure (the successors
    /// are stopped with everyone else, and the old code serves until the drain).
    pub(super) fn abandon_reload(&mut self) {
        if let Reload::Rolling { to } = self.reload {
            self.reload = Reload::Idle;
            self.reloads_abandoned += 1;
            log::info!("event=reload result=abandoned gen={to} reason=shutdown");
        }
    }

    pub(super) fn begin_shutdown(&mut self, kind: Shutdown, now: Instant) {
        match kind {
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
        }
    }

    /// Tells every worker to stop with `signal`; SIGKILL follows at `kill_at` (sent by tick).
    pub(super) fn drain_all(&mut self, signal: Signal, kill_at: Instant) {
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
    pub(super) fn drain_all_again(&mut self, signal: Signal, kill_at: Instant) {
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
    pub(super) fn kill_all(&mut self, now: Instant) {
        for w in self.workers.values_mut() {
            if w.state != WorkerState::Killed {
                w.state = WorkerState::Draining { kill_at: now };
            }
        }
    }

    /// --shutdown-delay is over: start draining.
    pub(super) fn end_shutdown_delay(&mut self, now: Instant) {
        if let Phase::Delaying { until } = self.phase
            && now >= until
        {
            log::info!("event=drain workers={}", self.workers.len());
            self.phase = Phase::Draining { code: 0 };
            self.drain_all(Signal::Term, now + self.config.graceful_timeout);
        }
    }
}
