//! Changes to the pool while it serves: rolling reloads, TTIN/TTOU, and recycling (--max-requests,
//! --max-memory), each a successor first and the drain after.
//!
//! One of the pool's duties, as its own `impl Pool` block (the state and the events are in `pool`).

use super::*;

impl Pool {
    /// The successor of `old` is ready: `old` drains (new up before old goes).
    pub(super) fn retire(&mut self, old: WorkerId, now: Instant) {
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
        self.signal(pid, Signal::Restart);
        *self.restarts.entry(reason).or_default() += 1;
        log::info!(
            "event=retire worker={old} slot={slot} reason={}",
            reason.as_str()
        );
    }

    /// Starts a successor for `old`'s slot; `old` drains when the successor is ready.
    pub(super) fn replace(&mut self, old: WorkerId, reason: Reason, now: Instant) {
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
    pub(super) fn kill_stale_successors(&mut self) {
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
                self.signal(pid, Signal::Restart);
                *self.restarts.entry(Reason::Scale).or_default() += 1;
            }
        } else {
            log::warn!("event=scale_refused workers=1 reason=\"never below one worker\"");
            return;
        }
        log::info!("event=scale workers={}", self.config.size);
        self.tick(now);
    }

    /// --max-requests: a ready worker past its limit gets a successor (when its slot is not backing off).
    pub(super) fn recycle(&mut self, now: Instant) {
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
    pub(super) fn roll_reload(&mut self, now: Instant) {
        let Reload::Rolling { to } = self.reload else {
            return;
        };
        let style = self.config.reload;
        let waiting = self.workers.values().any(|w| match style {
            // a successor is still booting
            ReloadStyle::Rolling => matches!(w.plan, Plan::Succeed { .. }),
            // the stopped worker is not reaped yet, or its slot's new worker still boots
            ReloadStyle::StopFirst => w.plan == Plan::StopFirst || w.state.is_booting(),
        });
        if waiting {
            return;
        }
        let next = self
            .workers
            .iter()
            .find(|(_, w)| w.generation < to && w.state.is_ready() && w.slot < self.config.size)
            .map(|(id, _)| *id);
        let new_ready = self
            .workers
            .values()
            .filter(|w| w.generation >= to && w.state.is_ready())
            .count();
        match (next, style) {
            (Some(id), ReloadStyle::Rolling) => self.replace(id, Reason::Reload, now),
            (Some(id), ReloadStyle::StopFirst) => self.stop_first(id, now),
            (None, ReloadStyle::Rolling)
                if !self.workers.values().any(|w| w.state.is_booting()) =>
            {
                self.reload_succeeded(to)
            }
            (None, ReloadStyle::StopFirst) if new_ready >= self.config.size => {
                self.reload_succeeded(to)
            }
            (None, _) => {}
        }
    }

    fn reload_succeeded(&mut self, to: u64) {
        self.reload = Reload::Idle;
        self.reloads_succeeded += 1;
        log::info!("event=reload result=succeeded gen={to}");
    }

    /// A stop-first reload of `old`'s slot: it drains now; the slot's new worker starts once it
    /// is reaped.
    fn stop_first(&mut self, old: WorkerId, now: Instant) {
        let graceful = self.config.graceful_timeout;
        let Some(w) = self.workers.get_mut(&old) else {
            return;
        };
        w.plan = Plan::StopFirst;
        w.state = WorkerState::Draining {
            kill_at: now + graceful,
        };
        let (slot, pid) = (w.slot, w.pid);
        self.signal(pid, Signal::Restart);
        *self.restarts.entry(Reason::Reload).or_default() += 1;
        log::info!("event=retire worker={old} slot={slot} reason=reload style=stop_first");
    }
}
