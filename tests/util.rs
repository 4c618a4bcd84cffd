//! The test harness: start the real hurricane binary against an app in tests/apps, wait until it
//! is started, talk HTTP to it over loopback, signal it, read its log, and clean up.
//!
//! Servers listen on `--port 0`; the harness learns both ports from the `event=listening` log line,
//! so tests never race each other for fixed or "free" ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hurricane");

/// Long enough for a loaded 2-core CI machine, short enough that a hang fails the test quickly.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// The interpreter tests run workers with: HURRICANE_TEST_PYTHON, else python3.
pub fn python() -> String {
    std::env::var("HURRICANE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    closed: bool,
}

#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<LogState>, Condvar)>);

impl Log {
    fn push(&self, line: String) {
        let (lock, cond) = &*self.0;
        lock.lock().unwrap().lines.push(line);
        cond.notify_all();
    }

    fn close(&self) {
        let (lock, cond) = &*self.0;
        lock.lock().unwrap().closed = true;
        cond.notify_all();
    }

    pub fn text(&self) -> String {
        self.0.0.lock().unwrap().lines.join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let (lock, cond) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(line) = state.lines.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline || state.closed {
                return None;
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

pub struct Server {
    pub child: Child,
    pub log: Log,
    pub addr: SocketAddr,
    pub probe: Option<SocketAddr>,
}

/// Command line for hurricane serving `app` from tests/apps on a free loopback port.
pub fn command(app: &str, args: &[&str]) -> Command {
    command_in(&apps_dir(), app, args)
}

/// Command line for hurricane serving `app` from `dir` on a free loopback port.
pub fn command_in(dir: &Path, app: &str, args: &[&str]) -> Command {
    command_with(&python(), dir, app, args)
}

/// The same, with workers running `python` (the test venv's, for Django apps).
pub fn command_with(python: &str, dir: &Path, app: &str, args: &[&str]) -> Command {
    command_of(Path::new(BIN), python, dir, app, args)
}

/// The same, with another hurricane binary (the one pip installed, say).
pub fn command_of(binary: &Path, python: &str, dir: &Path, app: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["-w", app, "--bind", "127.0.0.1", "--port", "0", "--chdir"])
        .arg(dir)
        .args(["--python", python])
        .args(args)
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_hurricane_env(&mut cmd);
    // The serve suites run once more with every worker forked from a --preload zygote.
    if preload_run() && !args.contains(&"--preload") {
        cmd.arg("--preload");
    }
    cmd
}

/// Whether this run adds --preload to every server (HURRICANE_TEST_PRELOAD; see
/// preload::the_serve_lifecycle_and_logs_suites_pass_with_preload).
pub fn preload_run() -> bool {
    std::env::var_os("HURRICANE_TEST_PRELOAD").is_some()
}

/// Drops the HURRICANE_* settings of whoever runs the tests (all but HURRICANE_TEST_PYTHON), so
/// a test sees only what it sets.
pub fn without_hurricane_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("HURRICANE_") && !key.starts_with("HURRICANE_TEST_") {
            cmd.env_remove(key);
        }
    }
}

pub fn capture(stream: impl Read + Send + 'static, log: Log) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => log.push(line),
                Err(_) => break,
            }
        }
        log.close();
    });
}

/// A field of a log line, in either --log-format: `key=value` text or a JSON object.
fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    }
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// The log line of `event`, in either --log-format.
fn event_line(log: &Log, event: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        for needle in [format!("event={event}"), format!("\"event\":\"{event}\"")] {
            if let Some(line) = log.wait_for(&needle, Duration::ZERO) {
                return Some(line);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// Starts hurricane and waits until it listens (not until workers are ready).
    pub fn spawn(cmd: &mut Command) -> Server {
        let mut child = cmd.spawn().expect("start hurricane");
        let log = Log::default();
        capture(child.stderr.take().unwrap(), log.clone());
        let out = Log::default();
        capture(child.stdout.take().unwrap(), out);
        let Some(line) = event_line(&log, "listening", START_TIMEOUT) else {
            let _ = child.kill();
            panic!("hurricane did not start listening; log:\n{}", log.text());
        };
        // consume listens on nothing (addr=none): its Server has only probes.
        let addr = field(&line, "addr")
            .unwrap()
            .parse()
            .unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
        let probe = field(&line, "probe").unwrap().parse().ok();
        Server {
            child,
            log,
            addr,
            probe,
        }
    }

    /// Starts hurricane serving `app` and waits until /startup says 200.
    pub fn start(app: &str, args: &[&str]) -> Server {
        let server = Server::spawn(&mut command(app, args));
        server.wait_started();
        server
    }

    pub fn wait_started(&self) {
        if event_line(&self.log, "started", START_TIMEOUT).is_none() {
            panic!("hurricane did not start; log:\n{}", self.log.text());
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log.text()))
    }

    pub fn probe(&self, path: &str) -> Response {
        get(self.probe.expect("probe server is on"), path)
            .unwrap_or_else(|e| panic!("probe {path}: {e}; log:\n{}", self.log.text()))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with integer arguments on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().unwrap())
    }

    /// Worker processes: children of the master running a hurricane worker, exec'd (named on
    /// their command line) or forked from a --preload zygote (named by their comm).
    pub fn worker_pids(&self) -> Vec<i32> {
        children(self.pid())
            .into_iter()
            .filter(|pid| {
                cmdline(*pid).contains("hurricane-worker") || comm(*pid).starts_with("hurricane-w")
            })
            .collect()
    }

    /// --preload zygotes: children of the master named so by their comm.
    pub fn zygote_pids(&self) -> Vec<i32> {
        children(self.pid())
            .into_iter()
            .filter(|pid| comm(*pid) == "hurricane-zygot")
            .collect()
    }

    /// Waits until exactly `n` workers are alive; returns their pids (a worker being replaced may
    /// still be among them: see `wait_new_workers`).
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> Vec<i32> {
        self.wait_new_workers(n, &[], timeout)
    }

    /// Waits until exactly `n` workers are alive and none of them is in `old` (a killed worker
    /// stays alive, unreaped, for a moment after its replacement was decided).
    pub fn wait_new_workers(&self, n: usize, old: &[i32], timeout: Duration) -> Vec<i32> {
        wait_for(timeout, || {
            let pids = self.worker_pids();
            (pids.len() == n && !pids.iter().any(|p| old.contains(p))).then_some(pids)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} workers, none of {old:?}, have {:?}; log:\n{}",
                self.worker_pids(),
                self.log.text()
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let workers = self.worker_pids();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in workers {
                // SAFETY: kill with integer arguments; at worst the pid is already gone.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Pids whose parent is `pid` (from /proc/*/stat).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((ppid, _)) = stat(child)
            && ppid == pid
        {
            out.push(child);
        }
    }
    out.sort();
    out
}

/// (parent pid, state letter) of a process, None if it is gone.
pub fn stat(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True once the process is gone or only a zombie (it has exited).
/// A kB field of /proc/PID/status (VmRSS, VmHWM, ...).
pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    proc_kb(pid, "status", field)
}

/// A `Field:   123 kB` line of /proc/PID/`file` (status, smaps_rollup), in kB.
pub fn proc_kb(pid: i32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

pub fn has_exited(pid: i32) -> bool {
    stat(pid).is_none_or(|(_, state)| state == 'Z' || state == 'X')
}

/// The kernel's short name of a process (what ps -e shows), "" if it is gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One GET on a fresh connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Sends raw bytes on a fresh connection and parses the one response that comes back.
pub fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    // Read until the response is complete by its own framing, not until EOF: a process the app
    // forked may hold the connection open long after the response was sent.
    let head_request = raw.starts_with(b"HEAD ");
    let mut data = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(response) = parse_response(&data, head_request) {
            let framed = response.header("content-length").is_some()
                || response.header("transfer-encoding").is_some()
                || head_request;
            if framed {
                return Ok(response);
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    parse_response(&data, head_request).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response {:?}", String::from_utf8_lossy(&data)),
        )
    })
}

/// Parses one HTTP/1.1 response (Content-Length, chunked, or read-to-close body; none for HEAD).
pub fn parse_response(data: &[u8], head_request: bool) -> Option<Response> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &data[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if head_request {
        Vec::new()
    } else if let Some(len) = find("content-length") {
        rest.get(..len.parse::<usize>().ok()?)?.to_vec()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = pos + rest[pos..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[pos..line_end]).ok()?, 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(pos..pos + size)?);
            pos += size + 2;
        }
        body
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A scratch directory under target/ for marker files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A directory of its own: tests run in parallel threads of one process, so the pid alone
    /// would hand two tests of the same name one directory, and the first to finish deletes it.
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A keep-alive HTTP/1.1 client, as a load generator would use one: it reuses its connection and
/// reconnects only when the server said `Connection: close`.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().unwrap();
        let result = (|| {
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
            let mut chunk = [0u8; 65536];
            loop {
                if let Some((response, used)) = parse_framed(&self.buf) {
                    self.buf.drain(..used);
                    return Ok(response);
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before a response",
                    ));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })();
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.stream = None
            }
            Err(_) => self.stream = None,
            _ => {}
        }
        result
    }
}

/// One complete Content-Length-framed response at the start of `data`, and how many bytes it took.
pub fn parse_framed(data: &[u8]) -> Option<(Response, usize)> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let response = parse_response(&data[..end + 4], true)?;
    let len: usize = response.header("content-length")?.parse().ok()?;
    let body = data.get(end + 4..end + 4 + len)?.to_vec();
    Some((Response { body, ..response }, end + 4 + len))
}

/// What a `Load` saw: requests that succeeded, every failure, and the distinct bodies served.
#[derive(Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failures: Vec<String>,
    pub bodies: std::collections::HashSet<String>,
}

/// `threads` keep-alive clients requesting `path` in a loop until `finish`.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<thread::JoinHandle<LoadResult>>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, path: &'static str) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut client = KeepAlive::new(addr);
                    let mut seen = LoadResult::default();
                    // Bounded: at most this many requests per client, whatever happens.
                    for _ in 0..200_000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match client.get(path) {
                            Ok(r) if r.status == 200 => {
                                seen.ok += 1;
                                seen.bodies.insert(r.text());
                            }
                            Ok(r) => {
                                seen.failures
                                    .push(format!("status {}: {}", r.status, r.text()))
                            }
                            Err(e) => seen.failures.push(e.to_string()),
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops the clients and adds up what they saw.
    pub fn finish(self) -> LoadResult {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadResult::default();
        for h in self.handles {
            let seen = h.join().unwrap();
            total.ok += seen.ok;
            total.failures.extend(seen.failures);
            total.bodies.extend(seen.bodies);
        }
        total
    }
}

/// A Python with test-only packages (prometheus_client), in target/test-venv, created on first use.
/// The test command installs what it needs itself; a failed install fails the tests that need it.
pub fn test_venv_python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv");
        let python = venv.join("bin/python");
        let marker = venv.join(".hurricane-test-packages");
        let packages = [
            "prometheus_client",
            "django",
            "pika",
            "celery[redis]",
            "dockerfile",
            "kubernetes-validate",
            "debugpy",
            "websockets",
            "channels",
            "channels_redis",
            "pydevd-pycharm",
        ];
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(packages.join(" ").as_str()) {
            let ok = Command::new(python_for_venv())
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(&python)
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .args(packages)
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(
                ok,
                "could not create {} with {packages:?} (pip needs PyPI)",
                venv.display()
            );
            std::fs::write(&marker, packages.join(" ")).unwrap();
        }
        // This checkout's own Python package (`manage.py serve` comes from it), from the source
        // tree as an editable install would put it: a path file, so there is no second package
        // definition beside pyproject.toml's (tests/pip.rs installs the wheel that one builds).
        let purelib = Command::new(&python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .expect("ask the test venv for its site-packages");
        let purelib = PathBuf::from(String::from_utf8_lossy(&purelib.stdout).trim());
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        std::fs::write(
            purelib.join("hurricane-checkout.pth"),
            format!("{}\n", source.display()),
        )
        .expect("write the test venv's path file");
        python
    })
    .clone()
}

fn python_for_venv() -> String {
    python()
}

/// Parses OpenMetrics text with prometheus_client's own parser; returns (name, labels, value) samples.
pub fn parse_openmetrics(
    text: &str,
) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    parse_with("prometheus_client.openmetrics.parser", text)
}

/// The value of the sample `name` whose labels include all of `labels`, from parsed /metrics.
pub fn sample_value(
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// Parses the classic text format (0.0.4) with prometheus_client's classic parser.
pub fn parse_classic(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    parse_with("prometheus_client.parser", text)
}

fn parse_with(
    parser: &str,
    text: &str,
) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let script = format!(
        r#"
import json, sys
from {parser} import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#
    );
    let mut child = Command::new(test_venv_python())
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// RabbitMQ on 127.0.0.1:5672 (guest/guest), started if it is down; a test that needs it fails
/// when it cannot be had (under CI=true as anywhere else).
pub fn rabbitmq() {
    static UP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let up = *UP.get_or_init(|| {
        let reachable = || {
            TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1))
                .is_ok()
        };
        if reachable() {
            return true;
        }
        let _ = Command::new("rabbitmq-server").arg("-detached").status();
        wait_for(Duration::from_secs(60), || reachable().then_some(())).is_some()
    });
    assert!(
        up,
        "RabbitMQ is not reachable on 127.0.0.1:5672 and `rabbitmq-server -detached` did not start it"
    );
}

/// Runs a Python snippet with pika against the local broker (argv[1:] = `args`); its stdout.
pub fn amqp_py(script: &str, args: &[&str]) -> String {
    rabbitmq();
    let out = Command::new(test_venv_python())
        .arg("-c")
        .arg(format!(
            "import json, sys, pika\nconn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1'))\nch = conn.channel()\n{script}\nconn.close()\n"
        ))
        .args(args)
        .output()
        .expect("run the test venv's python");
    assert!(
        out.status.success(),
        "pika script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes `count` messages `{prefix}{i}` (message_id the same) to `exchange` with `routing_key`,
/// with headers from `headers_json`.
pub fn publish(exchange: &str, routing_key: &str, prefix: &str, count: usize, headers_json: &str) {
    amqp_py(
        "ex, rk, prefix, n, headers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])\n\
for i in range(n): ch.basic_publish(ex, rk, f'{prefix}{i}'.encode(), pika.BasicProperties(message_id=f'{prefix}{i}', headers=headers or None))",
        &[
            exchange,
            routing_key,
            prefix,
            &count.to_string(),
            headers_json,
        ],
    );
}

/// Messages ready in a queue (0 if it does not exist).
pub fn queue_depth(queue: &str) -> u64 {
    amqp_py(
        "try: print(ch.queue_declare(sys.argv[1], passive=True).method.message_count)\nexcept pika.exceptions.ChannelClosedByBroker: print(0); conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1'))",
        &[queue],
    )
    .trim()
    .parse()
    .unwrap()
}

/// Removes a test's queue and exchange.
pub fn delete_queue_and_exchange(queue: &str, exchange: &str) {
    amqp_py(
        "ch.queue_delete(sys.argv[1])\nch.exchange_delete(sys.argv[2])",
        &[queue, exchange],
    );
}

/// Closes only the broker connection of the hurricane master `pid` (its connection name).
pub fn close_broker_connection_of(pid: i32) {
    let name = format!("hurricane-{pid}");
    let found = wait_for(Duration::from_secs(10), || {
        let out = Command::new("rabbitmqctl")
            .args(["list_connections", "pid", "client_properties"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .and_then(|l| l.split('\t').next())
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no broker connection named {name}"));
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", &found, "closed by the test"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to its end and asserts it succeeded (the message: its command line, stdout and
/// stderr); its output.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python snippet in the test venv with argv[1:] = args; its stdout as JSON.
pub fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = output_ok(
        Command::new(test_venv_python())
            .args(["-c", script])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The TCP ports a process listens on: its socket fds matched with the kernel's listening sockets
/// (/proc/net/tcp and tcp6, state 0A), sorted.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_str()
                        .and_then(|t| t.strip_prefix("socket:["))
                        .map(|t| t.trim_end_matches(']').to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// Holds a one-worker server's only worker in `/sleep?s=seconds` (until its mark file exists),
/// then sends `waiting` more requests, which wait in the kernel's accept queue (their request sent,
/// so TCP_DEFER_ACCEPT counts them as ready to accept). The held request's thread, and theirs.
pub fn hold_the_worker(
    addr: SocketAddr,
    dir: &TempDir,
    seconds: u32,
    waiting: usize,
) -> (
    thread::JoinHandle<std::io::Result<Response>>,
    Vec<thread::JoinHandle<std::io::Result<Response>>>,
) {
    let mark = dir.path("busy");
    let held = thread::spawn(move || get(addr, &format!("/sleep?s={seconds}&mark={mark}")));
    wait_for(Duration::from_secs(5), || {
        Path::new(&dir.path("busy")).exists().then_some(())
    })
    .expect("the worker took the held request");
    let waiting = (0..waiting)
        .map(|_| thread::spawn(move || get(addr, "/")))
        .collect();
    (held, waiting)
}

/// A manifest's container arguments, as strings.
pub fn container_args(container: &serde_json::Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}
