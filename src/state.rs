//! What the master shares with its threads: the health and metrics it last published, the app's
//! check results, and doorbells that wake its loop.
//!
//! Why its own module: the probe thread reads this state, the pre-start runner ticks it, the
//! autoreload watcher and the probes ring the master through it, and the master writes it. None of
//! them should depend on another to reach it, so it sits below them all and depends on nothing but
//! the data it carries.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Snapshot;
use crate::protocol::CheckResult;

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

/// What the app's checks say for a probe right now (`Shared::checks`).
#[derive(Debug, Clone, PartialEq)]
pub enum ChecksNow {
    /// Not a Django app: the probe answers from the pool alone.
    NotAsked,
    Fresh(CheckResult),
    /// The result was stale: the master was asked for a fresh one.
    Asked,
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

/// A doorbell as an async waker: a future polled from the master's loop (lapin's consumer) wakes
/// the loop from whichever thread has news for it.
impl std::task::Wake for Doorbell {
    fn wake(self: std::sync::Arc<Self>) {
        self.ring();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.ring();
    }
}

/// Empties a doorbell's read end so it can ring again; true if it had rung.
pub fn answer(rx: &mut mio::unix::pipe::Receiver) -> bool {
    let mut rang = false;
    let mut buf = [0u8; 64];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => return rang,
            // A short read took all the pipe held: a later ring is a new edge for the poll.
            Ok(n) if n < buf.len() => return true,
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
    /// Wakes the probe thread when a check result arrives (set once the probe thread exists).
    pub probe_waker: OnceLock<mio::Waker>,
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
            probe_waker: OnceLock::new(),
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
        if let Some(waker) = self.probe_waker.get() {
            let _ = waker.wake();
        }
    }

    /// The master asks: does a probe want a fresh check? (Clears the wish.)
    pub fn take_check_wanted(&self) -> bool {
        std::mem::take(&mut self.checks.lock().unwrap_or_else(|e| e.into_inner()).wanted)
    }

    /// What a probe that would pass should make of the app's checks: nothing (not a Django
    /// app), a result fresher than `interval`, or a stale one, in which case the master is asked
    /// for a fresh one (the probe then waits up to CHECK_WAIT_MS, without blocking anyone: its
    /// thread is woken by `probe_waker`, and answers from `checks_since`).
    pub fn checks(&self, interval: Duration, now: Instant) -> ChecksNow {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        if !checks.django {
            return ChecksNow::NotAsked;
        }
        if let Some((at, result)) = &checks.result
            && now.duration_since(*at) < interval
        {
            return ChecksNow::Fresh(result.clone());
        }
        checks.wanted = true;
        if let Some(bell) = self.check_bell.get() {
            bell.ring();
        }
        ChecksNow::Asked
    }

    /// The result that came after `asked`, or, past the wait, the last one there is.
    pub fn checks_since(&self, asked: Instant, waited_enough: bool) -> Option<CheckResult> {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        match &checks.result {
            Some((at, result)) if *at >= asked || waited_enough => Some(result.clone()),
            _ => None,
        }
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
        let t0 = Instant::now();
        assert_eq!(shared.checks(Duration::ZERO, t0), ChecksNow::NotAsked);
        assert!(!shared.take_check_wanted());
        let (bell, mut rx) = Doorbell::new().unwrap();
        let _ = shared.check_bell.set(bell);
        shared.set_django();
        assert_eq!(shared.checks(Duration::from_secs(5), t0), ChecksNow::Asked);
        assert!(answer(&mut rx), "the master was rung");
        assert!(shared.take_check_wanted());
        assert_eq!(shared.checks_since(t0, false), None, "nothing yet: wait");
        shared.store_checks(CheckResult::default());
        assert!(shared.checks_since(t0, false).is_some(), "the fresh answer");
        // Fresh enough: answered from the cache, nobody rung.
        let now = Instant::now();
        assert_eq!(
            shared.checks(Duration::from_secs(60), now),
            ChecksNow::Fresh(CheckResult::default())
        );
        assert!(!answer(&mut rx));
        // Stale again: a probe that waited long enough answers from the old result.
        let later = now + Duration::from_secs(61);
        assert_eq!(
            shared.checks(Duration::from_secs(60), later),
            ChecksNow::Asked
        );
        assert_eq!(shared.checks_since(later, false), None);
        assert!(shared.checks_since(later, true).is_some());
    }
}
