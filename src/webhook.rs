//! Webhooks: a JSON POST to each `--webhook-url` when something a deploy pipeline or a chat channel
//! cares about happens (startup, readiness/liveness changes, reloads, shutdown, worker restarts).
//!
//! Why a thread of its own with a bounded queue: a dead or slow receiver must never delay the
//! master, a probe or a request. The master only diffs its published state (`changes`, pure and
//! unit-tested) and drops events into the queue; this thread posts them with a timeout and retries.
//! The payload keeps django-hurricane's fields, so existing receivers keep working.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::metrics::Snapshot;
use crate::state::Health;

/// Each POST may take this long, connection included.
pub const WEBHOOK_TIMEOUT_S: u64 = 5;
/// Attempts per URL, with the delay doubling from the first retry's.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
pub const WEBHOOK_RETRY_FIRST_MS: u64 = 500;
/// Events waiting beyond this are dropped (and logged): memory stays bounded with a dead receiver.
const WEBHOOK_QUEUE: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// startup, liveness, readiness, reload, shutdown, worker.
    pub kind: &'static str,
    /// succeeded or failed.
    pub status: &'static str,
    pub info: String,
    pub traceback: Option<String>,
}

impl Event {
    /// The startup failed before the first full pool was ready: why, and the traceback or the
    /// failing command's output when there is one.
    pub fn startup_failed(error: &str, traceback: Option<&str>) -> Event {
        Event {
            traceback: Some(traceback.unwrap_or(error).to_string()),
            ..Event::new("startup", false, format!("Startup failed: {error}"))
        }
    }

    fn new(kind: &'static str, ok: bool, info: impl Into<String>) -> Event {
        Event {
            kind,
            status: if ok { "succeeded" } else { "failed" },
            info: info.into(),
            traceback: None,
        }
    }
}

/// What changed between two published states, as webhook events (state changes only).
pub fn changes(before: &(Health, Snapshot), after: &(Health, Snapshot)) -> Vec<Event> {
    let ((h0, m0), (h1, m1)) = (before, after);
    let mut events = Vec::new();
    if !h0.is_started() && h1.is_started() {
        events.push(Event::new(
            "startup",
            true,
            format!("Startup: {} workers ready", h1.size),
        ));
    }
    let ready = Health::is_ready;
    if h0.is_started() && ready(h0) != ready(h1) {
        let info = if ready(h1) {
            "Readiness: ready".to_string()
        } else {
            format!("Readiness: {}/{} workers ready", h1.ready, h1.size)
        };
        events.push(Event::new("readiness", ready(h1), info));
    }
    let not_alive = |h: &Health| h.crash_loop.clone().or_else(|| h.not_alive.clone());
    if not_alive(h0) != not_alive(h1) {
        let info =
            not_alive(h1).map_or("Liveness: alive".to_string(), |r| format!("Liveness: {r}"));
        events.push(Event::new("liveness", not_alive(h1).is_none(), info));
    }
    if !h0.stopping && h1.stopping && h1.started {
        events.push(Event::new("shutdown", true, "Shutdown: draining workers"));
    }
    for _ in m0.reloads_succeeded..m1.reloads_succeeded {
        events.push(Event::new("reload", true, "Reload: new workers ready"));
    }
    for _ in m0.reloads_failed..m1.reloads_failed {
        events.push(Event::new(
            "reload",
            false,
            "Reload: new workers did not boot; old workers keep serving",
        ));
    }
    for (reason, n) in &m1.restarts {
        let before = m0.restarts.get(reason).copied().unwrap_or(0);
        for _ in before..*n {
            events.push(Event::new(
                "worker",
                reason.is_planned(),
                format!("Worker replaced: {}", reason.as_str()),
            ));
        }
    }
    events
}

enum Msg {
    Event(Event),
    /// Sent before exit: answer once everything before it was delivered (or given up).
    Flush(SyncSender<()>),
}

/// The master's handle on the delivery thread.
pub struct Webhooks {
    tx: SyncSender<Msg>,
}

impl Webhooks {
    pub fn send(&self, event: Event) {
        log::info!(
            "event=webhook_queued type={} status={}",
            event.kind,
            event.status
        );
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log::warn!("event=webhook_dropped reason=\"queue full; receiver too slow\"")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (at most `limit`) until queued events were delivered: used before the master exits.
    pub fn flush(&self, limit: Duration) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.try_send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(limit);
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

pub fn payload(event: &Event) -> serde_json::Value {
    let mut body = json!({
        "info": event.info,
        "type": event.kind,
        "status": event.status,
        "timestamp": timestamp(SystemTime::now()),
        "podname": std::env::var("HOSTNAME").unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(tb) = &event.traceback {
        body["traceback"] = json!(tb);
    }
    body
}

fn deliver(agent: &ureq::Agent, url: &str, body: &str, event: &Event) {
    let mut delay = Duration::from_millis(WEBHOOK_RETRY_FIRST_MS);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let started = Instant::now();
        match agent.post(url).content_type("application/json").send(body) {
            Ok(_) => {
                log::info!(
                    "event=webhook_sent type={} status={} url={url} attempt={attempt} ms={}",
                    event.kind,
                    event.status,
                    started.elapsed().as_millis()
                );
                return;
            }
            Err(e) if attempt < WEBHOOK_ATTEMPTS => {
                log::warn!(
                    "event=webhook_retry type={} url={url} attempt={attempt} error={:?}",
                    event.kind,
                    e.to_string()
                );
                thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => log::error!(
                "event=webhook_failed type={} url={url} attempts={attempt} error={:?}",
                event.kind,
                e.to_string()
            ),
        }
    }
}

fn run(rx: Receiver<Msg>, urls: Vec<String>) {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(WEBHOOK_TIMEOUT_S)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    loop {
        match rx.recv_timeout(Duration::from_secs(3600)) {
            Ok(Msg::Event(event)) => {
                let body = payload(&event).to_string();
                for url in &urls {
                    deliver(&agent, url, &body, &event);
                }
            }
            Ok(Msg::Flush(done)) => {
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

pub fn spawn(urls: Vec<String>) -> std::io::Result<Webhooks> {
    let (tx, rx) = mpsc::sync_channel(WEBHOOK_QUEUE);
    thread::Builder::new()
        .name("webhook".into())
        .spawn(move || run(rx, urls))?;
    Ok(Webhooks { tx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Reason;

    fn state(started: bool, stopping: bool, ready: usize) -> (Health, Snapshot) {
        (
            Health {
                started,
                stopping,
                ready,
                size: 2,
                ..Health::default()
            },
            Snapshot::default(),
        )
    }

    #[test]
    fn startup_readiness_and_shutdown_fire_on_changes_only() {
        let starting = state(false, false, 1);
        let up = state(true, false, 2);
        assert_eq!(changes(&starting, &starting), vec![]);
        let events = changes(&starting, &up);
        assert_eq!(
            events,
            vec![Event::new("startup", true, "Startup: 2 workers ready")]
        );
        assert_eq!(changes(&up, &up), vec![], "no event without a change");
        let down = state(true, true, 2);
        let kinds: Vec<_> = changes(&up, &down)
            .iter()
            .map(|e| (e.kind, e.status))
            .collect();
        assert_eq!(
            kinds,
            vec![("readiness", "failed"), ("shutdown", "succeeded")]
        );
    }

    #[test]
    fn reloads_restarts_and_crash_loops_become_events() {
        let before = state(true, false, 2);
        let mut after = before.clone();
        after.1.reloads_succeeded = 1;
        after.1.restarts = [(Reason::Crash, 1), (Reason::Reload, 2)].into();
        after.0.crash_loop = Some("crash loop: slot 0".into());
        let events: Vec<_> = changes(&before, &after)
            .iter()
            .map(|e| (e.kind, e.status, e.info.clone()))
            .collect();
        assert!(events.contains(&("liveness", "failed", "Liveness: crash loop: slot 0".into())));
        assert!(events.contains(&("reload", "succeeded", "Reload: new workers ready".into())));
        assert!(events.contains(&("worker", "failed", "Worker replaced: crash".into())));
        assert_eq!(
            events
                .iter()
                .filter(|e| e.2 == "Worker replaced: reload")
                .count(),
            2
        );
    }

    #[test]
    fn a_failed_startup_carries_the_traceback_or_else_the_error() {
        let event = Event::startup_failed("cannot import 'x'", Some("Traceback ..."));
        assert_eq!(
            (event.kind, event.status, event.info.as_str()),
            ("startup", "failed", "Startup failed: cannot import 'x'")
        );
        assert_eq!(event.traceback.as_deref(), Some("Traceback ..."));
        let event = Event::startup_failed("no python", None);
        assert_eq!(event.traceback.as_deref(), Some("no python"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_580_213_338);
        assert_eq!(timestamp(t), "2026-11-25T04:16:53.338Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_payload_has_django_hurricanes_fields() {
        let mut event = Event::new("startup", false, "Startup failed");
        event.traceback = Some("Traceback ...".into());
        let body = payload(&event);
        for key in [
            "info",
            "type",
            "status",
            "timestamp",
            "podname",
            "version",
            "traceback",
        ] {
            assert!(body.get(key).is_some(), "{key} missing: {body}");
        }
        assert_eq!(body["type"], "startup");
        assert_eq!(body["status"], "failed");
    }
}
