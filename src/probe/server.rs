//! The probe port's one event loop (mio): every connection is a small state machine with a
//! deadline, and none of them can keep a fresh client from its answer.
//!
//! Why not a thread per connection (as before): 250 idle connections were enough to fill its cap,
//! and a kubelet probe that times out restarts the pod, so any client that could reach the port
//! could restart the service. Here a connection costs a slot and, once it sends bytes, a buffer of
//! at most `MAX_REQUEST_BYTES`; `MAX_CONNECTIONS` bounds the memory (about 1 MiB at worst), and
//! when every slot is taken the *slowest* connection (the oldest still sending its request) makes
//! room for the new one, never the other way round. A client gets `IO_TIMEOUT_MS` to send its
//! request and as long again to read the answer; a silent or trickling one is cut at its deadline.
//! A /ready or /alive that needs a fresh Django check waits for the master's answer (woken by the
//! `Shared::probe_waker`) for at most `CHECK_WAIT_MS`, holding only its own slot.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{ProbeConfig, answer, judge};
use crate::metrics;
use crate::state::{CHECK_WAIT_MS, ChecksNow, Shared};
use crate::sys;

/// Longest a probe client may take to send its request, and again to read the answer.
const IO_TIMEOUT_MS: u64 = 2000;
/// Connections open at once; past this the slowest one is closed to make room.
pub const MAX_CONNECTIONS: usize = 256;
/// A request head longer than this is answered 431 and closed.
const MAX_REQUEST_BYTES: usize = 8192;
/// What the kernel queues on the probe port while the loop accepts (a flood arrives in bursts).
const LISTEN_BACKLOG: i32 = 1024;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Where a connection is in its one exchange.
enum Phase {
    /// Reading the request head (nothing allocated until its first bytes).
    Reading { head: Vec<u8> },
    /// A /ready or /alive that would pass waits for a fresh check result asked at `asked`.
    Checking {
        asked: Instant,
        method: String,
        path: String,
        code: u16,
        body: String,
    },
    /// Writing the response; the connection closes once it is out.
    Writing { out: Vec<u8>, sent: usize },
}

struct Conn {
    stream: TcpStream,
    opened: Instant,
    /// When this phase must be over (the request read, the check answered, the answer taken).
    deadline: Instant,
    phase: Phase,
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    config: ProbeConfig,
    shared: Arc<Shared>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
}

impl Server {
    pub fn new(
        listener: std::net::TcpListener,
        config: ProbeConfig,
        shared: Arc<Shared>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        // A burst of connects must not overflow the kernel's queue before the loop accepts it
        // (std listens with 128); listen(2) again only resizes the queue.
        if let Ok(backlog) = nix::sys::socket::Backlog::new(LISTEN_BACKLOG) {
            let _ = nix::sys::socket::listen(&listener, backlog);
        }
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let _ = shared.probe_waker.set(waker);
        Ok(Server {
            poll,
            listener,
            config,
            shared,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("event=probe_poll_failed error={e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let mut checks_arrived = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => checks_arrived = true,
                    Token(t) => self.ready(t - FIRST_CONNECTION),
                }
            }
            if checks_arrived {
                self.answer_checks(false);
            }
            self.expire(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Out of fds or memory: what is queued stays queued; the next event retries.
                Err(e) => {
                    log::warn!("event=probe_accept_failed error={e}");
                    return;
                }
            }
        }
    }

    /// A new connection gets a slot; when none is free, the slowest connection gives up its own.
    fn admit(&mut self, mut stream: TcpStream) {
        if self.open >= MAX_CONNECTIONS {
            self.evict_slowest();
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(slot + FIRST_CONNECTION),
                Interest::READABLE,
            )
            .is_err()
        {
            self.free.push(slot);
            return;
        }
        let now = Instant::now();
        self.conns[slot] = Some(Conn {
            stream,
            opened: now,
            deadline: now + Duration::from_millis(IO_TIMEOUT_MS),
            phase: Phase::Reading { head: Vec::new() },
        });
        self.open += 1;
    }

    /// Closes the connection that has been sending its request the longest (a silent or
    /// trickling client); if every connection is past its request, the oldest.
    fn evict_slowest(&mut self) {
        let oldest = |reading: bool| {
            self.conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .filter(|(_, c)| !reading || matches!(c.phase, Phase::Reading { .. }))
                .min_by_key(|(_, c)| c.opened)
                .map(|(i, _)| i)
        };
        if let Some(slot) = oldest(true).or_else(|| oldest(false)) {
            log::debug!("event=probe_evicted reason=full");
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.free.push(slot);
            self.open -= 1;
        }
    }

    /// Closes every connection past its deadline; a probe that waited long enough for a check
    /// answers from the last result.
    fn expire(&mut self, now: Instant) {
        self.answer_checks_due(now);
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.close(slot);
            }
        }
    }

    fn ready(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let outcome = match &mut conn.phase {
            Phase::Reading { head } => read(&mut conn.stream, head),
            Phase::Writing { out, sent } => write(&mut conn.stream, out, sent),
            Phase::Checking { .. } => Step::Wait,
        };
        match outcome {
            Step::Wait => {}
            Step::Close => self.close(slot),
            Step::Request => self.respond(slot),
        }
    }

    /// The request head is in: answer it, or wait for the app's checks.
    fn respond(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let Phase::Reading { head } = &conn.phase else {
            return;
        };
        let request = Request::parse(head);
        let (method, path) = (request.method.to_string(), request.path.to_string());
        let config = &self.config;
        let mut content_type = TEXT_PLAIN;
        let (code, body) = match method.as_str() {
            _ if head.len() > MAX_REQUEST_BYTES => (431, "request header too large\n".into()),
            "GET" | "HEAD" if config.metrics.as_deref() == Some(path.as_str()) => {
                let format = metrics::Format::negotiate(request.accept.as_deref());
                content_type = format.content_type();
                (
                    200,
                    metrics::render(&self.shared.metrics(), config.listen_fd, format),
                )
            }
            "GET" | "HEAD" => {
                let health = self.shared.health();
                let silent = self.shared.loop_silent_ms();
                let queue = config.req_queue_len.and_then(|limit| {
                    sys::listen_queue(config.listen_fd).map(|(waiting, _)| (waiting, limit))
                });
                let (code, body) = answer(&config.paths, &path, &health, silent, queue);
                // Only a probe that would pass asks the app (a failing one needs no second opinion).
                if code == 200 && (path == config.paths.ready || path == config.paths.alive) {
                    let now = Instant::now();
                    match self.shared.checks(config.check_interval, now) {
                        ChecksNow::NotAsked => (code, body),
                        ChecksNow::Fresh(result) => {
                            judge(&config.paths, &path, &result, config.debug)
                                .unwrap_or((code, body))
                        }
                        ChecksNow::Asked => {
                            conn.deadline = now + Duration::from_millis(CHECK_WAIT_MS);
                            conn.phase = Phase::Checking {
                                asked: now,
                                method,
                                path,
                                code,
                                body,
                            };
                            return;
                        }
                    }
                } else {
                    (code, body)
                }
            }
            _ if path.is_empty() => (400, "bad request\n".into()),
            _ => (405, "method not allowed\n".into()),
        };
        self.send(slot, &method, &path, code, content_type, &body);
    }

    /// Checks arrived (or a waiting probe's wait is over): answer the probes that waited.
    fn answer_checks(&mut self, waited_enough: bool) {
        for slot in 0..self.conns.len() {
            self.answer_check(slot, waited_enough);
        }
    }

    fn answer_checks_due(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let due = self.conns[slot]
                .as_ref()
                .is_some_and(|c| matches!(c.phase, Phase::Checking { .. }) && c.deadline <= now);
            if due {
                self.answer_check(slot, true);
            }
        }
    }

    fn answer_check(&mut self, slot: usize, waited_enough: bool) {
        let Some(Conn {
            phase:
                Phase::Checking {
                    asked,
                    method,
                    path,
                    code,
                    body,
                },
            ..
        }) = self.conns[slot].as_ref()
        else {
            return;
        };
        let result = self.shared.checks_since(*asked, waited_enough);
        if result.is_none() && !waited_enough {
            return; // still waiting for the master's fresh answer
        }
        let (code, body) = result
            .and_then(|r| judge(&self.config.paths, path, &r, self.config.debug))
            .unwrap_or((*code, body.clone()));
        let (method, path) = (method.clone(), path.clone());
        self.send(slot, &method, &path, code, TEXT_PLAIN, &body);
    }

    /// Starts writing the answer; the connection closes once it is out (or at its deadline).
    fn send(
        &mut self,
        slot: usize,
        method: &str,
        path: &str,
        code: u16,
        content_type: &str,
        body: &str,
    ) {
        let mut out = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            reason(code),
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        if self.config.log_probes {
            log::info!("event=probe method={method} path={path:?} status={code}");
        } else {
            log::debug!("event=probe method={method} path={path:?} status={code}");
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        conn.deadline = Instant::now() + Duration::from_millis(IO_TIMEOUT_MS);
        let mut sent = 0;
        match write(&mut conn.stream, &out, &mut sent) {
            Step::Wait => {
                let token = Token(slot + FIRST_CONNECTION);
                let _ =
                    self.poll
                        .registry()
                        .reregister(&mut conn.stream, token, Interest::WRITABLE);
                conn.phase = Phase::Writing { out, sent };
            }
            Step::Close | Step::Request => self.close(slot),
        }
    }
}

/// What a read or write step leaves the connection to do next.
enum Step {
    /// Nothing yet: wait for the socket.
    Wait,
    /// The request head is complete.
    Request,
    /// Done, or the client went away, or broke the rules.
    Close,
}

/// Reads what the socket has into `head`; a head past the limit is answered (431) too.
fn read(stream: &mut TcpStream, head: &mut Vec<u8>) -> Step {
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Step::Close,
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                if complete(head) || head.len() > MAX_REQUEST_BYTES {
                    return Step::Request;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Step::Close,
        }
    }
}

fn complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// Writes what the socket takes of `out[*sent..]`.
fn write(stream: &mut TcpStream, out: &[u8], sent: &mut usize) -> Step {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Step::Close,
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Step::Close,
        }
    }
    Step::Close
}

/// The parts of a request head a probe answer depends on.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    accept: Option<String>,
}

impl Request<'_> {
    fn parse(head: &[u8]) -> Request<'_> {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = std::str::from_utf8(line).unwrap_or("").trim_end();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        Request {
            method,
            path: target.split('?').next().unwrap_or(""),
            accept: header(head, "accept"),
        }
    }
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

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_gives_its_method_path_and_accept() {
        let head =
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text\r\n\r\n";
        let r = Request::parse(head);
        assert_eq!((r.method, r.path), ("GET", "/metrics"));
        assert_eq!(r.accept.as_deref(), Some("application/openmetrics-text"));
        assert!(complete(head));
        assert!(complete(b"GET / HTTP/1.0\n\n"));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        let r = Request::parse(b"\xff\xfe garbage");
        assert_eq!(r.path, "");
    }
}
