//! The probe server: `/startup`, `/ready`, `/alive` for Kubernetes, on its own port and thread.
//!
//! Why a thread of its own with plain std::net: probes must answer in milliseconds even when every
//! worker is stuck in a slow request, and even when the master loop is busy spawning. The answer
//! comes from the last `Health` the master published; nothing here waits on a worker.
//! Each connection gets a short-lived thread with read/write timeouts, so a slow or silent client
//! holds only its own thread; a cap on concurrent connections bounds what a probe storm costs.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::metrics;
use crate::state::{Health, Shared};
use crate::sys;
use crate::worker::{CheckResult, Verdict};

/// Longest a probe client may take to send its request or read the answer.
const PROBE_IO_TIMEOUT_MS: u64 = 2000;
/// Connections served at once; more are closed at once rather than queued behind slow ones.
const PROBE_MAX_CONNECTIONS: usize = 64;
const PROBE_MAX_REQUEST_BYTES: usize = 8192;
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

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() + n > PROBE_MAX_REQUEST_BYTES {
            return Err(io::ErrorKind::InvalidData.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// A header's value from a request head (the first, by case-insensitive name).
fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
}

fn serve_connection(
    mut stream: TcpStream,
    config: &ProbeConfig,
    shared: &Shared,
) -> io::Result<()> {
    let timeout = Some(Duration::from_millis(PROBE_IO_TIMEOUT_MS));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let head = read_head(&mut stream)?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let mut content_type = "text/plain; charset=utf-8";
    let (code, body) = match method {
        "GET" | "HEAD" if config.metrics.as_deref() == Some(path) => {
            let format = metrics::Format::negotiate(header(&head, "accept").as_deref());
            content_type = format.content_type();
            (
                200,
                metrics::render(&shared.metrics(), config.listen_fd, format),
            )
        }
        "GET" | "HEAD" => {
            let health = shared.health();
            let silent = shared.loop_silent_ms();
            let queue = config.req_queue_len.and_then(|limit| {
                sys::listen_queue(config.listen_fd).map(|(waiting, _)| (waiting, limit))
            });
            let (code, body) = answer(&config.paths, path, &health, silent, queue);
            // Only a probe that would pass asks the app (a failing one needs no second opinion).
            if code == 200 && (path == config.paths.ready || path == config.paths.alive) {
                match shared.fresh_checks(config.check_interval) {
                    Some(result) => {
                        judge(&config.paths, path, &result, config.debug).unwrap_or((code, body))
                    }
                    None => (code, body),
                }
            } else {
                (code, body)
            }
        }
        _ if path.is_empty() => (400, "bad request\n".into()),
        _ => (405, "method not allowed\n".into()),
    };
    let mut response = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    if config.log_probes {
        log::info!("event=probe method={method} path={path:?} status={code}");
    } else {
        log::debug!("event=probe method={method} path={path:?} status={code}");
    }
    Ok(())
}

/// Serves probes on `listener` until the process exits.
pub fn spawn(listener: TcpListener, config: ProbeConfig, shared: Arc<Shared>) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(config);
    thread::Builder::new().name("probe".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if active.fetch_add(1, Ordering::AcqRel) >= PROBE_MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                continue; // dropped: closed at once
            }
            let (active, paths, shared) = (active.clone(), paths.clone(), shared.clone());
            let spawned = thread::Builder::new()
                .name("probe-conn".into())
                .spawn(move || {
                    let _ = serve_connection(stream, &paths, &shared);
                    active.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                // Out of threads: the stream was moved into the failed closure and is closed.
                log::warn!("event=probe_thread_failed");
            }
        }
    })?;
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
