//! `hurricane serve`: the pool, the probes, shutdown and PID 1 duties (issue 2).

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn serves_on_n_workers_with_distinct_pids() {
    let server = Server::start("app", &["--workers", "3"]);
    let pids = server.wait_workers(3, START_TIMEOUT);
    assert_eq!(server.get("/").text(), "hello");
    // Three requests that each hold a worker for a while: each must land on a different one.
    let addr = server.addr;
    let handles: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || get(addr, "/sleep?s=0.5").unwrap()))
        .collect();
    let served: HashSet<i32> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap()
                .text()
                .trim_start_matches("slept ")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        served,
        pids.iter().copied().collect(),
        "every worker served one of the slow requests"
    );
}

#[test]
fn probes_say_503_while_the_app_imports_then_200() {
    let server = Server::spawn(&mut command("slowimport", &["--workers", "2"]));
    let startup = server.probe("/startup");
    assert_eq!(startup.status, 503, "{}", startup.text());
    assert!(
        startup.text().starts_with("starting: 0/2"),
        "{}",
        startup.text()
    );
    let ready = server.probe("/ready");
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("not ready"), "{}", ready.text());
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .expect("/startup turns 200 once the app imported");
    assert_eq!(server.probe("/ready").status, 200);
    assert_eq!(server.probe("/alive").status, 200);
    assert_eq!(server.probe("/nope").status, 404);
    let head = request(
        server.probe.unwrap(),
        b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(server.get("/").text(), "booted slowly");
}

#[test]
fn no_probe_leaves_the_probe_port_closed() {
    let port = free_port();
    let server = Server::start(
        "app",
        &[
            "--workers",
            "1",
            "--no-probe",
            "--probe-port",
            &port.to_string(),
        ],
    );
    assert!(server.log.count("probe=off") == 1);
    assert_eq!(server.get("/").status, 200);
    // The master's own listening sockets (another test may bind the same free port meanwhile).
    assert_eq!(
        listening_ports(server.pid()),
        vec![server.addr.port()],
        "only the app's port listens, not the probe port {port}"
    );
}

#[test]
fn custom_probe_paths_and_port() {
    let port = free_port();
    let server = Server::start(
        "app",
        &[
            "--workers",
            "1",
            "--probe-port",
            &port.to_string(),
            "--startup-probe",
            "/s",
            "--readiness-probe",
            "/r",
            "--probe",
            "/healthz",
        ],
    );
    assert_eq!(server.probe.unwrap().port(), port);
    for path in ["/s", "/r", "/healthz"] {
        assert_eq!(server.probe(path).status, 200, "{path}");
    }
    assert_eq!(server.probe("/startup").status, 404);
    assert_eq!(server.probe("/alive").status, 404);
}

#[test]
fn probes_answer_fast_while_every_worker_is_busy() {
    let dir = TempDir::new("busy");
    let server = Server::start("app", &["--workers", "2"]);
    let addr = server.addr;
    for i in 0..2 {
        let mark = dir.path(&format!("m{i}"));
        thread::spawn(move || get(addr, &format!("/sleep?s=5&mark={mark}")));
    }
    wait_for(Duration::from_secs(5), || {
        (0..2)
            .all(|i| std::path::Path::new(&dir.path(&format!("m{i}"))).exists())
            .then_some(())
    })
    .expect("both workers busy");
    // A silent client must not hold up the others.
    let _silent = std::net::TcpStream::connect(server.probe.unwrap()).unwrap();
    for path in ["/ready", "/alive", "/startup"] {
        let started = Instant::now();
        let response = server.probe(path);
        let took = started.elapsed();
        assert_eq!(response.status, 200, "{path}");
        assert!(took < Duration::from_millis(100), "{path} took {took:?}");
    }
}

#[test]
fn term_finishes_the_request_in_flight_and_exits_0() {
    let dir = TempDir::new("term");
    let mut server = Server::start("app", &["--workers", "1", "--shutdown-delay", "1"]);
    let addr = server.addr;
    let mark = dir.path("inflight");
    let slow = thread::spawn(move || get(addr, &format!("/sleep?s=2&mark={mark}")));
    wait_for(Duration::from_secs(5), || {
        std::path::Path::new(&dir.path("inflight"))
            .exists()
            .then_some(())
    })
    .expect("request in flight");
    let termed = Instant::now();
    server.signal(libc::SIGTERM);
    let not_ready = wait_for(Duration::from_millis(500), || {
        let r = server.probe("/ready");
        (r.status == 503).then_some(r)
    })
    .expect("/ready turns 503 at once");
    assert!(not_ready.text().contains("shutting down"));
    assert!(
        termed.elapsed() < Duration::from_secs(1),
        "still within --shutdown-delay"
    );
    let response = slow
        .join()
        .unwrap()
        .expect("the in-flight response arrives");
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with("slept "), "{}", response.text());
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log.text());
}

#[test]
fn a_worker_ignoring_term_is_killed_after_the_graceful_timeout() {
    let mut server = Server::start("ignoreterm", &["--workers", "1", "--graceful-timeout", "1"]);
    let worker = server.wait_workers(1, START_TIMEOUT)[0];
    let termed = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    let took = termed.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(
        server
            .log
            .count(&format!("event=kill worker=1 pid={worker}"))
            == 1,
        "{}",
        server.log.text()
    );
}

#[test]
fn a_crashed_worker_is_replaced() {
    let server = Server::start("app", &["--workers", "2"]);
    let before = server.wait_workers(2, START_TIMEOUT);
    assert!(
        get(server.addr, "/exit").is_err(),
        "the connection dies with the worker"
    );
    let after = wait_for(START_TIMEOUT, || {
        let pids = server.worker_pids();
        (pids.len() == 2 && pids != before).then_some(pids)
    })
    .expect("pool back to 2 workers");
    assert_eq!(
        after.iter().filter(|p| before.contains(p)).count(),
        1,
        "only the crashed one was replaced"
    );
    assert!(
        server
            .log
            .wait_for("event=worker_died", Duration::from_secs(1))
            .unwrap()
            .contains("exit_code=1")
    );
    wait_for(START_TIMEOUT, || {
        (server.probe("/ready").text() == "ready: 2/2 workers ready\n").then_some(())
    })
    .expect("both workers ready again");
}

#[test]
fn an_import_error_exits_3_once_with_one_line_and_no_respawn() {
    let started = Instant::now();
    let mut server = Server::spawn(&mut command("broken", &["--workers", "2"]));
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("exits instead of looping");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(status.code(), Some(3), "log:\n{}", server.log.text());
    server
        .log
        .wait_for("error: cannot import", Duration::from_secs(1));
    let log = server.log.text();
    assert_eq!(
        server.log.count("Traceback (most recent call last)"),
        1,
        "traceback once:\n{log}"
    );
    if preload_run() {
        assert_eq!(
            server.log.count("event=zygote_start"),
            1,
            "the zygote started once, no worker forked:\n{log}"
        );
    } else {
        assert_eq!(
            server.log.count("event=spawn"),
            2,
            "each worker started once:\n{log}"
        );
    }
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("error: cannot import 'broken': ModuleNotFoundError"),
        "{last}"
    );
    assert!(
        last.contains("cwd=")
            && last.contains("python=")
            && last.contains("try --chdir or --pythonpath")
    );
}

#[test]
fn orphans_are_reaped() {
    let dir = TempDir::new("orphans");
    let server = Server::start("app", &["--workers", "1"]);
    let release = dir.path("release");
    let grandchild: i32 = server
        .get(&format!("/doublefork?release={release}"))
        .text()
        .parse()
        .unwrap();
    // The grandchild is re-parented to the master (its subreaper) and exits once released;
    // the master must reap it: it must vanish from /proc, not linger as a zombie.
    assert_eq!(
        stat(grandchild).map(|s| s.0),
        Some(server.pid()),
        "re-parented to the master"
    );
    std::fs::write(&release, b"").unwrap();
    let gone = wait_for(Duration::from_secs(5), || {
        stat(grandchild).is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "grandchild {grandchild} left as {:?}",
        stat(grandchild)
    );
    let zombies: Vec<_> = children(server.pid())
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|s| s.1 == 'Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies under the master: {zombies:?}");
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let mut server = Server::start("app", &["--workers", "2"]);
    let workers = server.wait_workers(2, START_TIMEOUT);
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).unwrap();
    let killed = Instant::now();
    let all_gone = wait_for(Duration::from_secs(2), || {
        workers.iter().all(|p| has_exited(*p)).then_some(())
    });
    assert!(
        all_gone.is_some(),
        "workers {workers:?} outlived the master by {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_worker_inherits_only_stdio_the_socket_and_its_pipes() {
    if preload_run() {
        return; // the app's import-time snapshot is the zygote's there; preload.rs checks the workers'
    }
    let server = Server::start("app", &["--workers", "3"]);
    for _ in 0..3 {
        let fds: serde_json::Value = serde_json::from_slice(&server.get("/fds").body).unwrap();
        let fds = fds.as_object().unwrap();
        let mut numbers: Vec<i32> = fds.keys().map(|k| k.parse().unwrap()).collect();
        numbers.sort();
        assert_eq!(numbers, vec![0, 1, 2, 3, 4, 5], "{fds:?}");
        assert!(fds["3"].as_str().unwrap().starts_with("socket:"));
        assert!(fds["4"].as_str().unwrap().starts_with("pipe:"));
        assert!(fds["5"].as_str().unwrap().starts_with("pipe:"));
    }
}

#[test]
fn wsgi_basics_over_real_http() {
    let server = Server::start("app", &["--workers", "1"]);
    let env: serde_json::Value = serde_json::from_slice(
        &request(server.addr, b"GET /environ?a=1&b=%20 HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\nConnection: close\r\n\r\n")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["PATH_INFO"], "/environ");
    assert_eq!(env["QUERY_STRING"], "a=1&b=%20");
    assert_eq!(env["HTTP_X_TEST"], "yes");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["SCRIPT_NAME"], "");
    let echo = request(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(echo.text(), "hello");
    let chunked = request(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(chunked.text(), "abcde");
    let stream = server.get("/stream");
    assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
    assert_eq!(stream.text(), "one two three");
    let error = server.get("/error");
    assert_eq!(error.status, 500);
    assert!(
        server
            .log
            .wait_for(
                "RuntimeError: boom from the test app",
                Duration::from_secs(2)
            )
            .is_some()
    );
    // Keep-alive and pipelining: two requests in one write, two responses in order on one connection.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut data = Vec::new();
    stream.read_to_end(&mut data).unwrap();
    let text = String::from_utf8_lossy(&data);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.ends_with("hello"), "{text}");
}

#[test]
fn int_is_a_fast_shutdown_and_a_second_term_escalates() {
    let dir = TempDir::new("fast");
    let mut server = Server::start("app", &["--workers", "1"]);
    let addr = server.addr;
    let mark = dir.path("m");
    let slow = thread::spawn(move || get(addr, &format!("/sleep?s=10&mark={mark}")));
    wait_for(Duration::from_secs(5), || {
        std::path::Path::new(&dir.path("m")).exists().then_some(())
    })
    .expect("request in flight");
    let started = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fast: {:?}",
        started.elapsed()
    );
    assert!(
        slow.join().unwrap().is_err(),
        "a fast shutdown cuts the request"
    );

    // A worker that ignores TERM with a long graceful timeout: the second TERM ends it now.
    let mut server = Server::start(
        "ignoreterm",
        &["--workers", "1", "--graceful-timeout", "60"],
    );
    server.signal(libc::SIGTERM);
    server
        .log
        .wait_for("event=shutdown", Duration::from_secs(5))
        .unwrap();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5)).expect("escalated");
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(server.log.count("event=shutdown_escalated") == 1);
}

#[test]
fn an_idle_master_uses_no_cpu() {
    let server = Server::start("app", &["--workers", "2"]);
    let ticks = || {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
        let fields: Vec<u64> = text[text.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1] // utime + stime, in clock ticks (1/100 s)
    };
    let before = ticks();
    thread::sleep(Duration::from_secs(3));
    let used = ticks() - before;
    assert!(used <= 3, "idle master used {used} ticks (1/100 s) in 3 s");
}

#[test]
fn a_socket_from_listen_fds_is_used_instead_of_binding() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    // LISTEN_PID must be hurricane's own pid: a shell sets it, then execs hurricane in its place.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"", BIN])
        .args([
            "-w",
            "app",
            "--port",
            "9",
            "--probe-port",
            "0",
            "--workers",
            "1",
            "--python",
            &python(),
            "--chdir",
        ])
        .arg(apps_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it puts the listening socket at fd 3 for the child.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec; clear it by hand in that case.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    assert_eq!(
        server.addr, addr,
        "listens on the inherited socket, not on --port 9"
    );
    assert_eq!(server.get("/").text(), "hello");
}

#[test]
fn the_python_shipped_to_workers_parses_as_python_3_8() {
    // The worker runs in the user's interpreter, down to 3.8. Only a newer CPython is on the test
    // machine, but its parser still knows 3.8's grammar (no match, no except*, no parenthesized
    // context managers); the 3.9+ library calls this cannot see are kept out by review.
    let script = r#"
import ast, pathlib, sys
files = sorted(pathlib.Path("python").rglob("*.py"))
assert files, "no Python sources found"
for f in files:
    ast.parse(f.read_text(), str(f), feature_version=(3, 8))
print(len(files))
"#;
    let out = output_ok(
        std::process::Command::new(python())
            .args(["-c", script])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(count >= 8, "checked only {count} files");
}
