//! What the master shares with its threads: the health and metrics it last published, the app's
//! check results, and doorbells that wake its loop.
//!
//! Why its own module: the probe thread reads this state, the pre-start runner ticks it, the
//! autoreload watcher and the probes ring the master through it, and the master writes it. None of
//! them should depend on another to reach it, so it sits below them all and depends on nothing but
//! the data it carries.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Snapshot;
use crate::worker::CheckResult;

/// A probe waits at most this long for a busy worker to run the app's checks.
pub const CHECK_WAIT_MS: u64 = 1000;

/// What the probes (and the webhooks) need to know of the pool, copied out after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// The first full pool was ready (not merely "no longer starting": a pool failing at startup never was).
    pub started: bool,
    pub stopping: bool,
    pub size: usize,
    pub ready: usize,
    /// Slots that have a ready worker (what /startup counts).
    pub booted: usize,
    pub crash_loop: Option<String>,
    /// What the kind of process adds to the probes (consume: the broker link): why /startup,
    /// /ready or /alive fail beyond the pool's own state.
    pub not_started: Option<String>,
    pub not_ready: Option<String>,
    pub not_alive: Option<String>,
}

impl Health {
    /// /ready's verdict: started, not stopping, a worker ready, nothing else in the way.
    pub fn is_ready(&self) -> bool {
        self.is_started() && !self.stopping && self.ready > 0 && self.not_ready.is_none()
    }

    /// /startup's verdict.
    pub fn is_started(&self) -> bool {
        self.started && self.not_started.is_none()
    }
}

/// The app's own checks (Django), as the probes see them.
#[derive(Default)]
pub struct Checks {
    /// The app is a Django project (a worker said so when ready).
    pub django: bool,
    pub result: Option<(Instant, CheckResult)>,
    /// A probe found the result stale: the master should ask a worker.
    wanted: bool,
}

/// One way to wake the master's loop for one reason: a non-blocking pipe whose read end has its own
/// token in the loop, so the loop knows *why* it woke without a shared flag to decode.
pub struct Doorbell {
    tx: mio::unix::pipe::Sender,
}

impl Doorbell {
    /// The bell, and the end the master registers with its poll.
    pub fn new() -> io::Result<(Doorbell, mio::unix::pipe::Receiver)> {
        let (tx, rx) = mio::unix::pipe::new()?;
        Ok((Doorbell { tx }, rx))
    }

    /// Wakes the loop; ringing a bell nobody answered yet is a no-op (the pipe already holds a byte).
    pub fn ring(&self) {
        let _ = (&self.tx).write(&[1]);
    }
}

/// Empties a doorbell's read end so it can ring again; true if it had rung.
pub fn answer(rx: &mut mio::unix::pipe::Receiver) -> bool {
    let mut rang = false;
    let mut buf = [0u8; 64];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => return rang,
            Ok(_) => rang = true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return rang, // WouldBlock: drained
        }
    }
}

pub struct Shared {
    pub health: Mutex<Health>,
    pub metrics: Mutex<Snapshot>,
    pub checks: Mutex<Checks>,
    checks_changed: Condvar,
    /// Rung by a probe that wants fresh checks (set once the loop exists).
    pub check_bell: OnceLock<Doorbell>,
    /// Unix milliseconds of the master loop's last iteration.
    pub loop_tick_ms: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            health: Mutex::new(Health::default()),
            metrics: Mutex::new(Snapshot::default()),
            checks: Mutex::new(Checks::default()),
            checks_changed: Condvar::new(),
            check_bell: OnceLock::new(),
            loop_tick_ms: AtomicU64::new(unix_ms()),
        }
    }

    /// A worker said the app is a Django project: probes may ask for its checks from now on.
    pub fn set_django(&self) {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).django = true;
    }

    /// A worker answered a check request.
    pub fn store_checks(&self, result: CheckResult) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.result = Some((Instant::now(), result));
        checks.wanted = false;
        self.checks_changed.notify_all();
    }

    /// The master asks: does a probe want a fresh check? (Clears the wish.)
    pub fn take_check_wanted(&self) -> bool {
        std::mem::take(&mut self.checks.lock().unwrap_or_else(|e| e.into_inner()).wanted)
    }

    /// The last check result, refreshed first if older than `interval`: the probe waits at most
    /// CHECK_WAIT_MS for a worker, then answers from what it has.
    pub fn fresh_checks(&self, interval: Duration) -> Option<CheckResult> {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        if !checks.django {
            return None;
        }
        let asked = Instant::now();
        if checks
            .result
            .as_ref()
            .is_some_and(|(at, _)| asked.duration_since(*at) < interval)
        {
            return checks.result.as_ref().map(|(_, r)| r.clone());
        }
        checks.wanted = true;
        if let Some(bell) = self.check_bell.get() {
            bell.ring();
        }
        let deadline = asked + Duration::from_millis(CHECK_WAIT_MS);
        while checks.result.as_ref().is_none_or(|(at, _)| *at < asked) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            checks = self
                .checks_changed
                .wait_timeout(checks, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        checks.result.as_ref().map(|(_, r)| r.clone())
    }

    /// The master loop is alive even when nothing changed.
    pub fn loop_tick(&self) {
        self.loop_tick_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// How long the master loop has been silent.
    pub fn loop_silent_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.loop_tick_ms.load(Ordering::Relaxed))
    }

    pub fn publish(&self, health: Health, metrics: Snapshot) {
        self.loop_tick();
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = metrics;
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> Snapshot {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doorbell_rings_once_until_answered() {
        let (bell, mut rx) = Doorbell::new().unwrap();
        assert!(!answer(&mut rx));
        bell.ring();
        bell.ring();
        assert!(answer(&mut rx));
        assert!(!answer(&mut rx), "drained");
    }

    #[test]
    fn a_probe_asks_for_checks_only_of_a_django_app_and_rings_the_master() {
        let shared = Shared::new();
        assert_eq!(shared.fresh_checks(Duration::ZERO), None);
        assert!(!shared.take_check_wanted());
        let (bell, mut rx) = Doorbell::new().unwrap();
        let _ = shared.check_bell.set(bell);
        shared.set_django();
        shared.store_checks(CheckResult::default());
        // Fresh enough: answered from the cache, nobody rung.
        assert!(shared.fresh_checks(Duration::from_secs(60)).is_some());
        assert!(!answer(&mut rx));
    }
}
