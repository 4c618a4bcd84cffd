//! `--debugger` (issue 26): debugpy listens in the worker, a Debug Adapter Protocol client
//! attaches, a breakpoint in the app stops a real request at the right file and line, the probes
//! answer meanwhile, `continue` lets the request finish; `--debugger-wait`, a missing debugpy, a
//! port in use, and a HUP that brings the debugger back on the same port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

const DAP_TIMEOUT: Duration = Duration::from_secs(20);

/// The app's file and the line marked BREAK.
fn break_line() -> (String, u64) {
    let path = apps_dir().join("debugapp.py");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().position(|l| l.contains("# BREAK")).unwrap() as u64 + 1;
    (path.display().to_string(), line)
}

/// A minimal Debug Adapter Protocol client over TCP: Content-Length framed JSON messages.
struct Dap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seq: u64,
    /// Events read while waiting for something else.
    events: Vec<Value>,
}

impl Dap {
    fn connect(port: u16) -> Dap {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stream =
            wait_for(DAP_TIMEOUT, || TcpStream::connect(addr).ok()).expect("the debugger listens");
        stream.set_read_timeout(Some(DAP_TIMEOUT)).unwrap();
        Dap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            seq: 0,
            events: Vec::new(),
        }
    }

    fn send(&mut self, command: &str, arguments: Value) -> u64 {
        self.seq += 1;
        let body =
            json!({"seq": self.seq, "type": "request", "command": command, "arguments": arguments})
                .to_string();
        write!(self.writer, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.seq
    }

    fn read(&mut self) -> Value {
        let mut length = 0;
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "the debugger hung up"
            );
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some(n) = line.strip_prefix("Content-Length:") {
                length = n.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Sends a request and returns its response (events that come first are kept).
    fn request(&mut self, command: &str, arguments: Value) -> Value {
        let seq = self.send(command, arguments);
        loop {
            let message = self.read();
            if message["type"] == "response" && message["request_seq"] == seq {
                assert_eq!(message["success"], true, "{command}: {message}");
                return message;
            }
            self.events.push(message);
        }
    }

    fn event(&mut self, name: &str) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(at);
        }
        let deadline = Instant::now() + DAP_TIMEOUT;
        while Instant::now() < deadline {
            let message = self.read();
            if message["type"] == "event" && message["event"] == name {
                return message;
            }
            self.events.push(message);
        }
        panic!("no {name} event; saw {:?}", self.events);
    }

    /// initialize, attach, the breakpoints, configurationDone: what VS Code's Remote Attach sends.
    fn attach(&mut self, breakpoints: &[(String, u64)]) {
        self.request(
            "initialize",
            json!({"clientID": "hurricane-tests", "adapterID": "debugpy", "pathFormat": "path",
                   "linesStartAt1": true, "columnsStartAt1": true}),
        );
        self.send("attach", json!({"justMyCode": false}));
        self.event("initialized");
        for (path, line) in breakpoints {
            let set = self.request(
                "setBreakpoints",
                json!({"source": {"path": path}, "breakpoints": [{"line": line}]}),
            );
            assert_eq!(set["body"]["breakpoints"][0]["verified"], true, "{set}");
        }
        self.request("configurationDone", json!({}));
    }
}

fn debug_server(port: u16, extra: &[&str]) -> Command {
    let python = test_venv_python().display().to_string();
    let port = port.to_string();
    let mut args = vec!["--debugger", "--debugger-port", port.as_str()];
    args.extend_from_slice(extra);
    command_with(&python, &apps_dir(), "debugapp", &args)
}

/// One round: a request stops at the breakpoint (file and line checked), the probes answer while
/// it is stopped, `continue` finishes it. Returns the worker's pid that stopped.
fn stop_at_the_breakpoint_and_continue(server: &Server, dap: &mut Dap) {
    let (path, line) = break_line();
    let addr = server.addr;
    let request = std::thread::spawn(move || get(addr, "/").unwrap());
    let stopped = dap.event("stopped");
    assert_eq!(stopped["body"]["reason"], "breakpoint", "{stopped}");
    let thread = stopped["body"]["threadId"].clone();
    let trace = dap.request("stackTrace", json!({"threadId": thread, "levels": 1}));
    let frame = &trace["body"]["stackFrames"][0];
    assert_eq!(frame["source"]["path"], path.as_str(), "{trace}");
    assert_eq!(frame["line"], line, "{trace}");
    // The worker is stopped (every Python thread of it), the master answers for it.
    let started = Instant::now();
    assert_eq!(server.probe("/alive").status, 200);
    assert_eq!(server.probe("/ready").status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        !request.is_finished(),
        "the request waits at the breakpoint"
    );
    dap.request("continue", json!({"threadId": thread}));
    let response = request.join().unwrap();
    assert_eq!(
        (response.status, response.text()),
        (200, "answer 42\n".to_string())
    );
}

#[test]
fn a_breakpoint_stops_a_request_at_its_line_the_probes_answer_and_continue_finishes_it() {
    let port = free_port();
    let server = Server::spawn(&mut debug_server(
        port,
        &["--workers", "3", "--timeout", "1"],
    ));
    server.wait_started();
    let warned = server
        .log
        .wait_for("event=debugger ", Duration::ZERO)
        .unwrap();
    assert!(
        warned.contains("WARN")
            && warned.contains("workers=1 (asked 3)")
            && warned.contains("timeout=off"),
        "{warned}"
    );
    assert!(
        server
            .log
            .wait_for("event=debugger_listening", START_TIMEOUT)
            .is_some()
    );
    assert_eq!(server.worker_pids().len(), 1, "one worker with a debugger");
    let mut dap = Dap::connect(port);
    dap.attach(&[break_line()]);
    stop_at_the_breakpoint_and_continue(&server, &mut dap);
    // Stopped past --timeout (1 s here) and with no heartbeat: nobody was killed.
    assert_eq!(
        server.log.count("event=timeout"),
        0,
        "{}",
        server.log.text()
    );
}

#[test]
fn with_debugger_wait_the_worker_is_ready_only_once_a_debugger_attached() {
    let port = free_port();
    let server = Server::spawn(&mut debug_server(port, &["--debugger-wait"]));
    server
        .log
        .wait_for("event=debugger_waiting", START_TIMEOUT)
        .expect("the worker waits for the debugger");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.probe("/startup").status,
        503,
        "not ready before attaching"
    );
    let mut dap = Dap::connect(port);
    dap.attach(&[break_line()]);
    server.wait_started();
    assert_eq!(server.probe("/ready").status, 200);
    stop_at_the_breakpoint_and_continue(&server, &mut dap);
}

#[test]
fn a_hup_brings_the_debugger_back_on_the_same_port_in_the_new_worker() {
    let port = free_port();
    let server = Server::spawn(&mut debug_server(port, &[]));
    server.wait_started();
    let old = server.worker_pids();
    {
        let mut dap = Dap::connect(port);
        dap.attach(&[break_line()]);
        stop_at_the_breakpoint_and_continue(&server, &mut dap);
    }
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=succeeded", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the reload succeeds; log:\n{}", server.log.text()));
    let new = server.worker_pids();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old, "a new worker");
    assert_eq!(
        server.log.count("event=debugger_listening"),
        2,
        "{}",
        server.log.text()
    );
    let mut dap = Dap::connect(port);
    dap.attach(&[break_line()]);
    stop_at_the_breakpoint_and_continue(&server, &mut dap);
}

#[test]
fn without_debugpy_or_with_its_port_taken_startup_stops_with_one_line() {
    // The system python has no debugpy: exit 2, saying what to install.
    let mut cmd = command("debugapp", &["--debugger"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines().count() == 1 && err.contains("pip install debugpy"),
        "{err}"
    );
    // The port taken: exit 1, naming it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let python = test_venv_python().display().to_string();
    let out = command_with(
        &python,
        &apps_dir(),
        "debugapp",
        &["--debugger", "--debugger-port", &port],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--debugger-port"),
        "{err}"
    );
    // Two debuggers at once: a usage error.
    let out = command("debugapp", &["--debugger", "--pycharm-host", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--pycharm-host`: without pydevd-pycharm, exit 2 saying what to install; with it but no debug
/// server listening, exit 3 with one line saying to start it. (Attaching a real PyCharm needs
/// PyCharm; its handshake is not faked here.)
#[test]
fn pycharm_without_its_library_or_its_server_stops_startup_with_one_line() {
    let out = command("debugapp", &["--pycharm-host", "127.0.0.1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pip install pydevd-pycharm"), "{err}");
    let closed = free_port().to_string();
    let python = test_venv_python().display().to_string();
    let out = command_with(
        &python,
        &apps_dir(),
        "debugapp",
        &["--pycharm-host", "127.0.0.1", "--pycharm-port", &closed],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "cannot connect to PyCharm's debug server at 127.0.0.1:{closed}"
        )) && last.contains("start it in PyCharm first"),
        "{err}"
    );
}
