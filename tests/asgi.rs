//! `hurricane serve --asgi` (issue 23): the asyncio worker kind on the same master, probes and
//! drain: HTTP with the WSGI worker's strict parser, streamed bodies both ways, lifespan (state,
//! a failed startup), WebSockets through a real client (the `websockets` library's) and raw
//! frames, and TERM with open websockets and open streams.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

pub fn asgi(args: &[&str]) -> Command {
    asgi_on(&test_venv_python(), args)
}

/// `serve --asgi` on the tests' apps with the given Python.
fn asgi_on(python: &std::path::Path, args: &[&str]) -> Command {
    let python = python.display().to_string();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--asgi"])
        .args(args)
        .args(["--bind", "127.0.0.1", "--port", "0", "--chdir"])
        .arg(apps_dir())
        .args(["--python", &python])
        .env_remove("VIRTUAL_ENV")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    without_hurricane_env(&mut cmd);
    cmd
}

/// Runs a websockets (sync client) script against `port`; its stdout, trimmed.
fn ws_client(port: u16, script: &str) -> String {
    let prelude = "import sys\nfrom websockets.sync.client import connect\n\
                   from websockets.exceptions import InvalidStatus, ConnectionClosed\n";
    let out = Command::new(test_venv_python())
        .args(["-c", &format!("{prelude}{script}")])
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real client (the websockets library's) that opens `/ws`, exchanges one message, prints `open`
/// and then the close code the server ends the session with.
fn websocket_until_closed(port: u16) -> std::thread::JoinHandle<String> {
    let python = test_venv_python();
    std::thread::spawn(move || {
        let out = Command::new(python)
            .args([
                "-c",
                "import sys\nfrom websockets.sync.client import connect\n\
                 from websockets.exceptions import ConnectionClosed\n\
                 with connect(f'ws://127.0.0.1:{sys.argv[1]}/ws') as ws:\n\
                 \x20   ws.send('hello'); ws.recv(); print('open', flush=True)\n\
                 \x20   try:\n\
                 \x20       ws.recv()\n\
                 \x20   except ConnectionClosed as e:\n\
                 \x20       print(e.rcvd.code)\n",
            ])
            .arg(port.to_string())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    })
}

#[test]
fn http_requests_lifespan_state_and_streamed_bodies() {
    let files = TempDir::new("asgi-static");
    std::fs::write(files.path("hello.txt"), "static hello\n").unwrap();
    let server = Server::spawn(&mut asgi(&[
        "asgiapp",
        "--workers",
        "1",
        "--static-root",
        &files.0.display().to_string(),
        "--access-log",
    ]));
    server.wait_started();
    assert!(server.log.text().contains("kind=asgi"));
    // --static as in the WSGI worker: the file, its ETag, nothing outside the root.
    let file = server.get("/static/hello.txt");
    assert_eq!(
        (file.status, file.text()),
        (200, "static hello\n".to_string())
    );
    assert!(file.header("etag").is_some());
    assert_eq!(server.get("/static/../asgiapp.py").status, 404);
    assert!(
        server
            .log
            .wait_for("event=access", Duration::from_secs(5))
            .is_some_and(
                |l| l.contains("path=\"/static/hello.txt\"") || l.contains("/static/hello.txt")
            ),
        "--access-log writes a line per request"
    );
    let hello = server.get("/");
    assert_eq!(
        (hello.status, hello.text()),
        (200, "Hello, ASGI!\n".to_string())
    );
    let state = server.get("/state?x=1").text();
    assert!(
        state.contains("hello from lifespan") && state.contains("\"query\": \"x=1\""),
        "{state}"
    );
    // A chunked upload reaches the app whole; a 3 MB one in more than one part (streamed).
    let body = "x".repeat(3 << 20);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let echo = request(server.addr, raw.as_bytes()).unwrap();
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body.len(), body.len());
    let parts: u32 = echo.header("x-parts").unwrap().parse().unwrap();
    assert!(parts > 1, "the body came in {parts} part(s)");
    let chunked = request(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(chunked.text(), "hello world");
    // The app's exception: a 500, the traceback in the log, the worker serves on.
    assert_eq!(server.get("/error").status, 500);
    assert!(
        server
            .log
            .wait_for("event=app_error", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(server.get("/").status, 200);
    // The WSGI worker's parser: a request that could be read two ways never reaches the app.
    let smuggled = request(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(smuggled.status, 400);
    assert!(
        smuggled.text().contains("cl_te_conflict"),
        "{}",
        smuggled.text()
    );
    assert_eq!(
        request(server.addr, b"GET / HTTP/1.1\nHost: t\n\n")
            .unwrap()
            .status,
        400
    );
    // Keep-alive and pipelining: two requests in one write, two answers in order.
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /state HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut both = String::new();
    conn.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    assert!(both.find("Hello, ASGI!").unwrap() < both.find("greeting").unwrap());
    // --forwarded-allow-ips: a trusted peer (127.0.0.1, the default) says who the client is.
    let forwarded = request(
        server.addr,
        b"GET /state HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .text();
    assert!(
        forwarded.contains("\"client\": \"203.0.113.7\"")
            && forwarded.contains("\"scheme\": \"https\""),
        "{forwarded}"
    );
    // A scope is the request's own: what an app changes in one (its headers, asgi, state, path)
    // is not in the next, also for the same head again on the same connection.
    let mut client = KeepAlive::new(server.addr);
    let first = client.get("/mutate").unwrap().text();
    assert_eq!(
        first,
        r#"{"headers": 1, "asgi": ["spec_version", "version"], "state": ["greeting"]}"#
    );
    for _ in 0..3 {
        assert_eq!(client.get("/mutate").unwrap().text(), first);
    }
    // The metrics count ASGI requests like WSGI ones.
    let metrics = server.probe("/metrics").text();
    assert!(
        metrics.contains("hurricane_requests_total{method=\"GET\",status=\"2xx\"}"),
        "{metrics}"
    );
}

#[test]
fn server_sent_events_arrive_as_sent_and_a_client_gone_reaches_the_app() {
    let marks = TempDir::new("asgi-sse");
    let mut cmd = asgi(&["asgiapp", "--workers", "1"]);
    cmd.env("ASGI_TEST_MARKS", &marks.0);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 3 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        for i in seen.len()..3 {
            if text.contains(&format!("data: {i}\n\n")) {
                seen.push((i, started.elapsed()));
            }
        }
    }
    // Each event arrives when sent (the app sleeps 0.3 s between them), not all at the end.
    assert!(seen[0].1 < Duration::from_millis(250), "{seen:?}");
    assert!(seen[2].1 >= Duration::from_millis(500), "{seen:?}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    // A stream that only ends when the client goes: the app hears of it within a second.
    let mut forever = TcpStream::connect(server.addr).unwrap();
    forever
        .write_all(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let n = forever.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("data: first"));
    drop(forever);
    let gone = std::path::Path::new(&marks.0).join("disconnect-http.disconnect");
    wait_for(Duration::from_secs(1), || gone.exists().then_some(()))
        .expect("http.disconnect reached the app within a second");
}

#[test]
fn websockets_echo_deny_limit_and_close_codes() {
    let server = Server::spawn(&mut asgi(&[
        "asgiapp",
        "--workers",
        "1",
        "--ws-max-size",
        "1000",
    ]));
    server.wait_started();
    let port = server.addr.port();
    let out = ws_client(
        port,
        r#"
port = sys.argv[1]
with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat"]) as ws:
    print(ws.subprotocol)
    ws.send("hi"); print(ws.recv())
    ws.send(b"\x00\x01"); print(ws.recv())
    ws.send("x" * 2000)
    try:
        ws.recv(); print("no close")
    except ConnectionClosed as e:
        print(e.rcvd.code)
try:
    connect(f"ws://127.0.0.1:{port}/ws-deny")
except InvalidStatus as e:
    print(e.response.status_code)
with connect(f"ws://127.0.0.1:{port}/ws") as ws:
    ws.send("close-4001")
    try:
        ws.recv()
    except ConnectionClosed as e:
        print(e.rcvd.code, e.rcvd.reason)
"#,
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["chat", "hi", "b'\\x00\\x01'", "1009", "403", "4001 asked"],
        "log:\n{}",
        server.log.text()
    );
    // /metrics: the sessions' messages and closes, from the workers' heartbeats.
    let probe = server.probe.unwrap();
    let metrics = wait_for(Duration::from_secs(5), || {
        let text = get(probe, "/metrics").ok()?.text();
        text.contains("hurricane_websocket_closes_total{code=\"1009\"} 1")
            .then_some(text)
    })
    .expect("websocket metrics");
    assert!(
        metrics.contains("hurricane_websocket_connections 0"),
        "{metrics}"
    );
    assert!(
        // "hi", the bytes and "close-4001" (the message past --ws-max-size was refused, not received)
        metrics.contains("hurricane_websocket_messages_total{direction=\"received\"} 3")
            && metrics.contains("hurricane_websocket_messages_total{direction=\"sent\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hurricane_event_loop_lag_seconds "),
        "{metrics}"
    );
    // One line per session at its close, with its code.
    wait_for(Duration::from_secs(5), || {
        (server.log.count("event=websocket ") >= 3).then_some(())
    })
    .expect("a line per session");
    let log = server.log.text();
    assert!(
        log.contains("code=1009") && log.contains("code=403") && log.contains("code=4001"),
        "{log}"
    );
}

/// RFC 6455 by raw frames: an unmasked client frame is a protocol error (1002); a ping is answered.
#[test]
fn raw_frames_a_ping_is_answered_and_an_unmasked_frame_is_closed_1002() {
    let server = Server::spawn(&mut asgi(&["asgiapp", "--workers", "1"]));
    server.wait_started();
    let mut ws = TcpStream::connect(server.addr).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A masked ping: a pong with the same payload.
    let mask = [1u8, 2, 3, 4];
    let payload = b"ping!";
    let mut frame = vec![0x89, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).unwrap();
    let mut pong = [0u8; 7];
    ws.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\x8a\x05ping!");
    // An unmasked text frame: the server closes with 1002.
    ws.write_all(b"\x81\x02hi").unwrap();
    let mut close = [0u8; 4];
    ws.read_exact(&mut close).unwrap();
    assert_eq!(close[0], 0x88, "{close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1002);
}

#[test]
fn term_closes_websockets_with_1001_ends_streams_runs_lifespan_shutdown_and_exits_0() {
    let marks = TempDir::new("asgi-term");
    let mut cmd = asgi(&["asgiapp", "--workers", "1", "--graceful-timeout", "5"]);
    cmd.env("ASGI_TEST_MARKS", &marks.0);
    let mut server = Server::spawn(&mut cmd);
    server.wait_started();
    let port = server.addr.port();
    let client = websocket_until_closed(port);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(stream.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the graceful timeout");
    assert!(status.success(), "{status:?}; log:\n{}", server.log.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let out = client.join().unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["open", "1001"], "{out}");
    let marks = std::path::Path::new(&marks.0);
    assert!(
        marks.join("disconnect-http.disconnect").exists(),
        "the stream's app was told"
    );
    assert!(
        marks.join("lifespan-shutdown").exists(),
        "lifespan shutdown ran"
    );
}

#[test]
fn not_an_asgi_app_a_failed_lifespan_or_no_websockets_library_stop_startup() {
    // A WSGI app given to --asgi: exit 3, one line naming it.
    let out = asgi(&["asgiapp:wsgi_app"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("'asgiapp:wsgi_app' is not an ASGI 3 application") && last.contains("-w"),
        "{err}"
    );
    // The lifespan's startup fails: exit 3 with its message.
    let out = asgi(&["asgiapp"])
        .env("ASGI_TEST_STARTUP_FAILS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the database is not there"), "{err}");
    // A module that does not import: exit 3.
    assert_eq!(
        asgi(&["nosuchmodule"]).output().unwrap().status.code(),
        Some(3)
    );
    // The system python has no websockets library: exit 2, saying what to install.
    let out = Command::new(BIN)
        .args(["serve", "--asgi", "asgiapp", "--port", "0", "--chdir"])
        .arg(apps_dir())
        .args(["--python", &python()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pip install 'hurricane[asgi]'"), "{err}");
    // --threads has no meaning for an ASGI app: a usage error, not an option ignored.
    let out = Command::new(BIN)
        .args(["serve", "--asgi", "asgiapp", "--threads", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // -w and --asgi together: a usage error.
    let out = Command::new(BIN)
        .args(["-w", "app", "--asgi", "asgiapp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A blocked event loop (a sync call in an async view) is the asynchronous frozen worker: past
/// --timeout its Python stack is logged (the blocking line) and the worker replaced.
#[test]
fn a_loop_blocked_past_the_timeout_is_reported_with_its_stack_and_replaced() {
    let server = Server::spawn(&mut asgi(&["asgiapp", "--workers", "1", "--timeout", "2"]));
    server.wait_started();
    let old = server.worker_pids();
    let addr = server.addr;
    std::thread::spawn(move || get(addr, "/block?20"));
    let line = server
        .log
        .wait_for("event=timeout", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no timeout; log:\n{}", server.log.text()));
    assert!(line.contains("method=LOOP"), "{line}");
    // faulthandler's dump names the line that blocks the loop.
    wait_for(Duration::from_secs(5), || {
        let log = server.log.text();
        (log.contains("asgiapp.py") && log.contains("in application")).then_some(())
    })
    .unwrap_or_else(|| panic!("no stack; log:\n{}", server.log.text()));
    // The old worker may still be alive (killed, not yet reaped) right after its stack dump.
    server.wait_new_workers(1, &old, Duration::from_secs(15));
    wait_for(Duration::from_secs(10), || {
        (get(addr, "/").ok()?.status == 200).then_some(())
    })
    .expect("the new worker serves");
}

/// `--preload` with `--asgi`: workers forked from a zygote that imported the app serve it, and a
/// HUP brings a new generation.
#[test]
fn preloaded_asgi_workers_serve_and_reload() {
    let server = Server::spawn(&mut asgi(&["asgiapp", "--workers", "2", "--preload"]));
    server.wait_started();
    assert_eq!(server.log.count("event=fork "), 2, "{}", server.log.text());
    assert!(server.get("/state").text().contains("hello from lifespan"));
    let old = server.worker_pids();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=succeeded", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no reload; log:\n{}", server.log.text()));
    // The old generation drains and exits; only new workers are left.
    wait_for(Duration::from_secs(10), || {
        let now = server.worker_pids();
        (now.len() == 2 && now.iter().all(|pid| !old.contains(pid))).then_some(())
    })
    .unwrap_or_else(|| panic!("{old:?} -> {:?}", server.worker_pids()));
    assert_eq!(server.get("/").status, 200);
}

/// Channels on hurricane's ASGI worker: an `AsyncWebsocketConsumer` echo, and a group message
/// sent on a socket of one worker process reaching a socket of the other through channels_redis
/// (the local Redis, a database and a group of this test's own).
#[test]
fn channels_consumers_echo_and_a_redis_group_crosses_two_workers() {
    if std::net::TcpStream::connect("127.0.0.1:6379").is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis is not running on 127.0.0.1:6379"
        );
        eprintln!("skipped: no Redis on 127.0.0.1:6379");
        return;
    }
    let db = TempDir::new("channels");
    let python = test_venv_python().display().to_string();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--asgi", "djsite.channels_asgi", "--workers", "2"])
        .args(["--bind", "127.0.0.1", "--port", "0", "--chdir"])
        .arg(apps_dir().join("djproject"))
        .args(["--python", &python])
        .env("DJANGO_SETTINGS_MODULE", "djsite.settings_channels")
        .env("HURRICANE_TEST_DB", db.path("db.sqlite3"))
        .env("CHANNELS_TEST_REDIS", "redis://127.0.0.1:6379/13")
        .env(
            "CHANNELS_TEST_GROUP",
            format!("hurricane-room-{}", std::process::id()),
        )
        .env_remove("VIRTUAL_ENV")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    without_hurricane_env(&mut cmd);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let out = ws_client(
        server.addr.port(),
        r#"
port = sys.argv[1]
with connect(f"ws://127.0.0.1:{port}/ws/echo") as ws:
    ws.send("hello channels"); print(ws.recv(timeout=5))
by_pid = {}
for _ in range(40):
    ws = connect(f"ws://127.0.0.1:{port}/ws/room")
    pid = ws.recv(timeout=5).split()[1]
    if pid in by_pid:
        ws.close()
    else:
        by_pid[pid] = ws
    if len(by_pid) == 2:
        break
print(len(by_pid))
a, b = by_pid.values()
a.send("broadcast")
got = sorted(m.split(" via ")[1] for m in (a.recv(timeout=5), b.recv(timeout=5)))
print(got == sorted(by_pid))
for ws in by_pid.values():
    ws.close()
"#,
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hello channels", "2", "True"],
        "log:\n{}",
        server.log.text()
    );
}

/// A reload replaces the worker: its open WebSockets close with 1012 (service restart), not 1001,
/// so clients reconnect at once, to the new generation.
#[test]
fn a_reload_closes_websockets_with_1012_and_new_connections_reach_the_new_worker() {
    let server = Server::spawn(&mut asgi(&["asgiapp", "--workers", "1"]));
    server.wait_started();
    let port = server.addr.port();
    let client = websocket_until_closed(port);
    wait_for(Duration::from_secs(5), || {
        let metrics = get(server.probe.unwrap(), "/metrics").ok()?.text();
        metrics
            .contains("hurricane_websocket_connections 1")
            .then_some(())
    })
    .expect("the websocket is open");
    let old = server.worker_pids();
    server.signal(libc::SIGHUP);
    let out = client.join().unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["open", "1012"], "{out}");
    server
        .log
        .wait_for("event=reload result=succeeded", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no reload; log:\n{}", server.log.text()));
    wait_for(Duration::from_secs(10), || {
        let now = server.worker_pids();
        (now.len() == 1 && now != old).then_some(())
    })
    .expect("the old worker is gone");
    assert_eq!(server.get("/").status, 200);
}

/// 1,000 idle WebSockets on one worker: all open and answered, and the worker's memory per
/// connection, reported and held to the issue's goal of 12 KiB (uvicorn: 19.7 KiB here, see
/// shared/ASGI-NOTES.md; hurricane 9.1: a handshake's nonce-bearing head is never cached, and its
/// headers are dropped once answered).
#[test]
fn a_thousand_idle_websockets_on_one_worker_and_their_memory() {
    use std::io::BufRead;
    let server = Server::spawn(&mut asgi(&["asgiapp", "--workers", "1"]));
    server.wait_started();
    let worker = server.worker_pids()[0];
    let before = proc_status_kb(worker, "VmRSS");
    let script = "import asyncio, sys\n\
        from websockets.asyncio.client import connect\n\
        async def main(port, n):\n\
        \x20   conns = [await connect(f'ws://127.0.0.1:{port}/ws', ping_interval=None) for _ in range(n)]\n\
        \x20   await conns[-1].send('still there?')\n\
        \x20   print('open', len(conns), await conns[-1].recv(), flush=True)\n\
        \x20   await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n\
        asyncio.run(main(int(sys.argv[1]), 1000))\n";
    let mut client = Command::new(test_venv_python())
        .args(["-c", script])
        .arg(server.addr.port().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "open 1000 still there?",
        "log:\n{}",
        server.log.text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = proc_status_kb(worker, "VmRSS");
    let per_kib = (after.saturating_sub(before)) as f64 / 1000.0;
    eprintln!("1,000 idle websockets: worker VmRSS {before} -> {after} kB, {per_kib:.1} KiB each");
    let metrics = server.probe("/metrics").text();
    assert!(
        metrics.contains("hurricane_websocket_connections 1000"),
        "{metrics}"
    );
    assert!(
        per_kib < 12.0,
        "{per_kib:.1} KiB per idle websocket (worker VmRSS {before} -> {after} kB)"
    );
    drop(client.stdin.take());
    let _ = client.wait();
}

/// The parser's caches keep what repeats and nothing a WebSocket handshake's nonce makes unique:
/// a plain head is kept, a handshake head and its key line are not (memory per idle websocket).
#[test]
fn a_websocket_handshake_head_and_its_key_line_are_never_cached() {
    let script = "import json, sys\n\
        sys.path.insert(0, sys.argv[1])\n\
        from hurricane.http.request import HEAD_CACHE, _LINE_CACHE, HeadParser\n\
        p = HeadParser(8190, 100, 8190, 1 << 20)\n\
        p.parse(b'GET / HTTP/1.1\\r\\nHost: a')\n\
        for key in (b'dGhlIHNhbXBsZSBub25jZQ==', b'b3RoZXIgbm9uY2UgaGVyZQ=='):\n\
        \x20   p.parse(b'GET /ws HTTP/1.1\\r\\nHost: a\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: ' + key + b'\\r\\nSec-WebSocket-Version: 13')\n\
        print(json.dumps([len(HEAD_CACHE), sum(b'Key' in line for line in _LINE_CACHE), b'Upgrade: websocket' in _LINE_CACHE]))\n";
    let answer = py_json(script, &[&root().join("python").display().to_string()]);
    assert_eq!(
        answer,
        serde_json::json!([1, 0, true]),
        "[heads cached, key lines cached, other handshake lines cached]"
    );
}

/// The worker keeps the master's --backlog: asyncio re-listens on the socket it is given (100
/// unless told), which reset connections of a burst arriving while the loop was busy.
#[test]
fn the_accept_queue_keeps_the_backlog_and_a_burst_while_the_loop_is_blocked_is_served() {
    let server = Server::spawn(&mut asgi(&[
        "asgiapp",
        "--workers",
        "1",
        "--backlog",
        "1500",
    ]));
    server.wait_started();
    let max = sample_value(
        &parse_classic(&server.probe("/metrics").text()),
        "hurricane_listen_queue_max",
        &[],
    );
    assert_eq!(max, Some(1500.0), "the accept queue's limit is --backlog");
    let addr = server.addr;
    let blocked = std::thread::spawn(move || get(addr, "/block?2"));
    // Blocked once a request goes unanswered for 300 ms: the burst then waits in the accept queue.
    let mut sentinel = wait_for(Duration::from_secs(5), || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .ok()?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(stream),
            _ => None,
        }
    })
    .expect("the loop blocks");
    let burst: Vec<_> = (0..400)
        .map(|_| {
            std::thread::spawn(move || get(addr, "/").map(|r| r.status).map_err(|e| e.to_string()))
        })
        .collect();
    let failed: Vec<String> = burst
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| *r != Ok(200))
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 400 failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(blocked.join().unwrap().unwrap().status, 200);
    sentinel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 12];
    sentinel.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

/// Keep-alive: a connection in use is never cut, however long it lives, and one left idle is
/// closed once --keep-alive has passed since its last response.
#[test]
fn a_keep_alive_connection_in_use_stays_and_an_idle_one_closes_after_keep_alive() {
    let server = Server::spawn(&mut asgi(&[
        "asgiapp",
        "--workers",
        "1",
        "--keep-alive",
        "1",
    ]));
    server.wait_started();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // 8 requests 300 ms apart: 2.4 s on one connection, past two keep-alive periods.
    for i in 0..8 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"Hello, ASGI!\n") {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "request {i}: the connection was closed while in use");
            got.extend_from_slice(&chunk[..n]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let idle = Instant::now() - Duration::from_millis(300);
    let mut byte = [0u8; 1];
    assert_eq!(stream.read(&mut byte).unwrap(), 0, "closed when idle");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "closed after {waited:?} idle (--keep-alive 1)"
    );
}

/// A Python 3.12 or later on this machine (pyenv's versions, or PATH), for the eager task start;
/// each candidate is asked, since a pyenv shim on PATH may not run.
fn python_3_12_or_later() -> Option<std::path::PathBuf> {
    let pyenv = std::env::var("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".pyenv")
        });
    let mut candidates: Vec<std::path::PathBuf> = std::fs::read_dir(pyenv.join("versions"))
        .map(|versions| {
            versions
                .flatten()
                .map(|v| v.path().join("bin/python"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            for name in ["python3.14", "python3.13", "python3.12"] {
                candidates.push(dir.join(name));
            }
        }
    }
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import sys; sys.exit(sys.version_info < (3, 12))"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn on_python_3_12_a_request_starts_eagerly_and_a_long_pipeline_is_answered_in_order() {
    let Some(base) = python_3_12_or_later() else {
        assert!(
            std::env::var("CI").is_err(),
            "no Python 3.12 or later here (PATH or ~/.pyenv/versions): install one"
        );
        eprintln!("skipped: no Python 3.12 or later");
        return;
    };
    // A venv of its own with what `hurricane[asgi]` brings (websockets, uvloop: the loop `auto`
    // picks), made once per interpreter.
    let venv = root().join("target/test-venv-eager");
    let python = venv.join("bin/python");
    let marker = venv.join(".hurricane-test-packages");
    let wanted = format!("{} websockets uvloop", base.display());
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let ok = Command::new(&base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "websockets",
                    "uvloop",
                ])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "could not create {} (pip needs PyPI)", venv.display());
        std::fs::write(&marker, &wanted).unwrap();
    }
    let server = Server::spawn(&mut asgi_on(&python, &["asgiapp", "--workers", "1"]));
    server.wait_started();
    // The app's first step runs inside the server's request start, not from the loop's queue.
    let callers = server.get("/callers").text();
    assert!(
        callers.contains("_next") && callers.contains("data_received"),
        "{callers}"
    );
    // 2,000 pipelined requests in one write: each starts after the one before it finished, from
    // the loop (not nested in the one before), and all are answered in order.
    let mut pipeline = Vec::new();
    for i in 0..2000 {
        pipeline
            .extend_from_slice(format!("GET /state?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    pipeline.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&pipeline).unwrap();
    let mut answers = String::new();
    conn.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2001);
    let mut at = 0;
    for i in 0..2000 {
        let needle = format!("\"query\": \"n={i}\"");
        at += answers[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("answer {i} missing or out of order"));
    }
    assert!(answers.ends_with("Hello, ASGI!\n"));
    // What runs eagerly is contained as before: a scope of its own, an error is a 500.
    let mut client = KeepAlive::new(server.addr);
    let first = client.get("/mutate").unwrap().text();
    assert_eq!(client.get("/mutate").unwrap().text(), first);
    assert_eq!(server.get("/error").status, 500);
    assert_eq!(server.get("/").status, 200);
    assert!(!server.log.text().contains("RecursionError"));
}
