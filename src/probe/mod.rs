//! The probe server: `/startup`, `/ready`, `/alive` and `/metrics` for Kubernetes, on its own port
//! and thread.
//!
//! Why a thread of its own: probes must answer in milliseconds even when every worker is stuck in
//! a slow request, and even when the master loop is busy spawning. The answer comes from the last
//! `Health` the master published; nothing here waits on a worker. This module decides what a
//! probe answers (pure, unit-tested); `server` is the one mio loop that serves the port, so that no
//! client, however slow, silent or numerous, can keep a kubelet's probe from its answer.

mod server;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::protocol::{CheckResult, Verdict};
use crate::state::{Health, Shared};
/// The master loop ticks at least once a second; this much silence means it is stuck.
pub const LOOP_STALL_LIMIT_MS: u64 = 10_000;

/// What the probe server answers, and where.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub port: Option<u16>,
    pub paths: Paths,
    /// The metrics path; None with --no-metrics.
    pub metrics: Option<String>,
    /// --req-queue-len: /ready fails while the accept queue is this long.
    pub req_queue_len: Option<u32>,
    /// --log-probes: log each probe request (at info; otherwise only at debug).
    pub log_probes: bool,
    /// How long a Django check result answers probes.
    pub check_interval: Duration,
    /// --debug: include failing checks' messages in probe bodies.
    pub debug: bool,
    /// The app's listening socket, for TCP_INFO (set by the master once bound).
    pub listen_fd: std::os::fd::RawFd,
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub startup: String,
    pub ready: String,
    pub alive: String,
}

/// Status code and body for one probe path, from the last published state and, for /ready with
/// --req-queue-len, the accept queue's (length, limit).
pub fn answer(
    paths: &Paths,
    path: &str,
    health: &Health,
    loop_silent_ms: u64,
    queue: Option<(u32, u32)>,
) -> (u16, String) {
    if path == paths.startup {
        if health.is_started() {
            (200, "started\n".into())
        } else if let (true, Some(why)) = (health.started, &health.not_started) {
            (503, format!("starting: {why}\n"))
        } else {
            (
                503,
                format!(
                    "starting: {}/{} workers booted\n",
                    health.booted, health.size
                ),
            )
        }
    } else if path == paths.ready {
        if health.stopping {
            (503, "not ready: shutting down\n".into())
        } else if !health.started {
            (
                503,
                format!(
                    "not ready: starting, {}/{} workers booted\n",
                    health.booted, health.size
                ),
            )
        } else if health.ready == 0 {
            (503, format!("not ready: 0/{} workers ready\n", health.size))
        } else if let Some(why) = health.not_ready.as_ref().or(health.not_started.as_ref()) {
            (503, format!("not ready: {why}\n"))
        } else if let Some((waiting, limit)) = queue.filter(|(waiting, limit)| waiting >= limit) {
            (
                503,
                format!("not ready: {waiting} connections queued, --req-queue-len is {limit}\n"),
            )
        } else {
            (
                200,
                format!("ready: {}/{} workers ready\n", health.ready, health.size),
            )
        }
    } else if path == paths.alive {
        if loop_silent_ms > LOOP_STALL_LIMIT_MS {
            (
                500,
                format!("not alive: master loop silent for {loop_silent_ms} ms\n"),
            )
        } else if let Some(reason) = health.crash_loop.as_ref().or(health.not_alive.as_ref()) {
            (500, format!("not alive: {reason}\n"))
        } else {
            (200, "alive\n".into())
        }
    } else {
        (404, "not found\n".into())
    }
}

/// The app's verdict for /alive or /ready: None when it passes.
pub fn judge(
    paths: &Paths,
    path: &str,
    result: &CheckResult,
    debug: bool,
) -> Option<(u16, String)> {
    let (verdict, probe): (&Verdict, &str) = if path == paths.alive {
        (&result.alive, "alive")
    } else {
        (&result.ready, "ready")
    };
    if verdict.ok {
        return None;
    }
    let mut body = format!("not {probe}: {}\n", verdict.error);
    if debug {
        for message in &verdict.messages {
            body.push_str(message);
            body.push('\n');
        }
    }
    Some((500, body))
}

/// Serves probes on `listener` until the process exits.
pub fn spawn(listener: TcpListener, config: ProbeConfig, shared: Arc<Shared>) -> io::Result<()> {
    let server = server::Server::new(listener, config, shared)?;
    thread::Builder::new()
        .name("probe".into())
        .spawn(move || server.run())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths {
            startup: "/startup".into(),
            ready: "/ready".into(),
            alive: "/alive".into(),
        }
    }

    #[test]
    fn startup_and_ready_follow_the_pool() {
        let mut h = Health {
            size: 4,
            booted: 1,
            ..Health::default()
        };
        assert_eq!(
            answer(&paths(), "/startup", &h, 0, None),
            (503, "starting: 1/4 workers booted\n".into())
        );
        assert_eq!(answer(&paths(), "/ready", &h, 0, None).0, 503);
        h = Health {
            started: true,
            size: 4,
            ready: 4,
            booted: 4,
            ..h
        };
        assert_eq!(answer(&paths(), "/startup", &h, 0, None).0, 200);
        assert_eq!(
            answer(&paths(), "/ready", &h, 0, None),
            (200, "ready: 4/4 workers ready\n".into())
        );
        h.ready = 0;
        assert_eq!(
            answer(&paths(), "/ready", &h, 0, None),
            (503, "not ready: 0/4 workers ready\n".into())
        );
        h.ready = 4;
        h.stopping = true;
        assert_eq!(
            answer(&paths(), "/ready", &h, 0, None),
            (503, "not ready: shutting down\n".into())
        );
    }

    #[test]
    fn alive_fails_on_crash_loop_or_stalled_loop() {
        let mut h = Health {
            started: true,
            ..Health::default()
        };
        assert_eq!(answer(&paths(), "/alive", &h, 0, None).0, 200);
        assert_eq!(
            answer(&paths(), "/alive", &h, LOOP_STALL_LIMIT_MS + 1, None).0,
            500
        );
        h.crash_loop = Some("crash loop: x".into());
        assert_eq!(
            answer(&paths(), "/alive", &h, 0, None),
            (500, "not alive: crash loop: x\n".into())
        );
        assert_eq!(answer(&paths(), "/nope", &h, 0, None).0, 404);
    }
}
