//! Worker lifecycle: rolling reloads, autoreload, timeouts, recycling, scaling, crash loops (issue 4).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A copy of tests/apps/versioned.py in a scratch dir, so a test can rewrite it.
pub fn versioned_app(dir: &TempDir) -> String {
    let source = std::fs::read_to_string(apps_dir().join("versioned.py")).unwrap();
    std::fs::write(dir.0.join("versioned.py"), source).unwrap();
    dir.0.display().to_string()
}

pub fn set_version(dir: &TempDir, version: &str) {
    let path = dir.0.join("versioned.py");
    let source = std::fs::read_to_string(&path).unwrap();
    let start = source.find("VERSION = \"").unwrap() + "VERSION = \"".len();
    let end = start + source[start..].find('"').unwrap();
    let updated = format!("{}{version}{}", &source[..start], &source[end..]);
    std::fs::write(&path, updated).unwrap();
}

fn serving(server: &Server, version: &str) -> bool {
    get(server.addr, "/").is_ok_and(|r| r.text().starts_with(&format!("{version} ")))
}

/// Polls until `version` is served: after a reload, old workers may still be draining for a moment.
pub fn wait_serving(server: &Server, version: &str) {
    wait_for(Duration::from_secs(5), || {
        serving(server, version).then_some(())
    })
    .unwrap_or_else(|| panic!("{version} is served; log:\n{}", server.log.text()));
}

/// Writes version v`round`, HUPs, and waits until it is served by a whole new set of workers
/// (none of `old`); returns their pids.
pub fn reload_to(server: &Server, dir: &TempDir, round: u64, old: &[i32]) -> Vec<i32> {
    let version = format!("v{round}");
    set_version(dir, &version);
    server.signal(libc::SIGHUP);
    let done = format!("event=reload result=succeeded gen={round}");
    server
        .log
        .wait_for(&done, START_TIMEOUT)
        .unwrap_or_else(|| panic!("{done}; log:\n{}", server.log.text()));
    // "succeeded" means the new generation is ready; the old one may still be finishing requests.
    wait_serving(server, &version);
    wait_for(Duration::from_secs(10), || {
        let now = server.worker_pids();
        (now.len() == old.len() && now.iter().all(|p| !old.contains(p))).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "every worker replaced after reload {round}: {old:?} -> {:?}",
            server.worker_pids()
        )
    })
}

fn start_in(dir: &str, app: &str, args: &[&str]) -> Server {
    let server = Server::spawn(&mut command_in(Path::new(dir), app, args));
    server.wait_started();
    server
}

#[test]
fn three_hups_under_load_lose_no_request_and_replace_every_worker() {
    let dir = TempDir::new("hup");
    let root = versioned_app(&dir);
    let server = start_in(&root, "versioned", &["--workers", "3"]);
    let mut pids = server.wait_workers(3, START_TIMEOUT);
    let load = Load::start(server.addr, 8, "/");
    for round in 1..=3 {
        pids = reload_to(&server, &dir, round, &pids);
    }
    let LoadResult { ok, failures, .. } = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "the load ran: {ok} requests");
}

#[test]
fn a_hup_with_broken_code_keeps_the_old_workers_and_the_next_hup_recovers() {
    let dir = TempDir::new("broken-hup");
    let root = versioned_app(&dir);
    let server = start_in(&root, "versioned", &["--workers", "2"]);
    let pids = server.wait_workers(2, START_TIMEOUT);
    let path = dir.0.join("versioned.py");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\ndef broken(:\n")).unwrap();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=failed", START_TIMEOUT)
        .expect("reload abandoned");
    // With --preload the traceback comes with the zygote's failure, just after the reload's line.
    server
        .log
        .wait_for("Traceback (most recent call last)", Duration::from_secs(2));
    let log = server.log.text();
    assert_eq!(
        server.log.count("Traceback (most recent call last)"),
        1,
        "traceback once:\n{log}"
    );
    assert_eq!(
        server
            .log
            .count("event=boot_failed cannot import 'versioned': SyntaxError"),
        1,
        "{log}"
    );
    assert_eq!(server.worker_pids(), pids, "old workers untouched");
    assert_eq!(server.probe("/ready").status, 200);
    assert!(serving(&server, "v0"));
    std::fs::write(&path, good.replace("\"v0\"", "\"fixed\"")).unwrap();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=succeeded", START_TIMEOUT)
        .expect("the next HUP reloads");
    wait_serving(&server, "fixed");
}

#[test]
fn autoreload_reloads_on_edit_once_per_burst_and_ignores_pycache() {
    let dir = TempDir::new("autoreload");
    let root = versioned_app(&dir);
    // Debug level: the watcher names every change it counts (event=file_changed).
    let server = start_in(
        &root,
        "versioned",
        &["--workers", "1", "--autoreload", "--log-level", "debug"],
    );
    server
        .log
        .wait_for("event=watch", Duration::from_secs(5))
        .expect("watching the app's directory");

    let edited = Instant::now();
    set_version(&dir, "edited");
    wait_for(Duration::from_secs(2), || {
        serving(&server, "edited").then_some(())
    })
    .unwrap_or_else(|| panic!("reloaded within 2 s; log:\n{}", server.log.text()));
    assert!(edited.elapsed() < Duration::from_secs(2));
    server
        .log
        .wait_for("event=reload result=succeeded gen=1", START_TIMEOUT)
        .unwrap();

    for i in 0..10 {
        set_version(&dir, &format!("burst{i}"));
        thread::sleep(Duration::from_millis(10));
    }
    server
        .log
        .wait_for("event=reload result=succeeded gen=2", START_TIMEOUT)
        .expect("the burst reloads");
    wait_serving(&server, "burst9");

    let cache = dir.0.join("__pycache__");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("versioned.cpython-311.pyc"), b"junk").unwrap();
    std::fs::write(dir.0.join(".versioned.py.swp"), b"junk").unwrap();
    // The watcher handles events in order: once the edit after the junk has reloaded, the junk
    // was seen, and counted or not.
    set_version(&dir, "after");
    server
        .log
        .wait_for("event=reload result=succeeded gen=3", START_TIMEOUT)
        .expect("the edit after the junk reloads");
    let log = server.log.text();
    assert!(
        !log.contains(".pyc") && !log.contains(".swp"),
        "caches and editor files are not changes:\n{log}"
    );
    assert_eq!(
        server.log.count("event=reload gen="),
        3,
        "one reload per burst:\n{log}"
    );
}

#[test]
fn a_request_over_the_timeout_has_its_worker_replaced_and_named_in_the_log() {
    let server = Server::start("app", &["--workers", "2", "--timeout", "1"]);
    let pids = server.wait_workers(2, START_TIMEOUT);
    let addr = server.addr;
    // Far longer than the timeout plus the kill's grace: the timeout is seen at the first
    // heartbeat past it (up to 2 s in, later on a busy machine), and the worker, told to stop,
    // would finish a 3 s sleep inside the 1 s grace before SIGKILL and answer it.
    let slow = thread::spawn(move || get(addr, "/sleep?s=20"));
    let line = server
        .log
        .wait_for("event=timeout", Duration::from_secs(5))
        .expect("timeout logged");
    assert!(
        line.contains("method=GET")
            && line.contains("path=\"/sleep\"")
            && line.contains("elapsed_s="),
        "{line}"
    );
    assert_eq!(
        server.get("/").text(),
        "hello",
        "the other worker kept serving"
    );
    assert!(
        slow.join().unwrap().is_err(),
        "the timed-out request is cut"
    );
    let after = wait_for(START_TIMEOUT, || {
        let now = server.worker_pids();
        (now.len() == 2 && now != pids).then_some(now)
    })
    .expect("the worker was replaced");
    assert_eq!(after.iter().filter(|p| pids.contains(p)).count(), 1);
    assert!(
        server
            .log
            .wait_for(
                "File \"<hurricane>/hurricane/http/server.py\"",
                Duration::from_secs(2)
            )
            .is_some()
            || server.log.text().contains("Current thread"),
        "faulthandler traceback:\n{}",
        server.log.text()
    );
}

#[test]
fn max_requests_recycles_workers_without_losing_a_request() {
    let server = Server::start(
        "app",
        &[
            "--workers",
            "2",
            "--max-requests",
            "50",
            "--max-requests-jitter",
            "10",
        ],
    );
    let pids = server.wait_workers(2, START_TIMEOUT);
    let load = Load::start(server.addr, 8, "/pid");
    wait_for(Duration::from_secs(20), || {
        (server.log.count("event=retire") >= 4).then_some(())
    })
    .unwrap_or_else(|| panic!("workers recycled; log:\n{}", server.log.text()));
    let LoadResult {
        ok,
        failures,
        bodies,
    } = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        bodies.len() >= 4,
        "served by at least 4 distinct workers: {bodies:?}"
    );
    assert!(ok >= 200);
    assert!(server.worker_pids().iter().all(|p| !pids.contains(p)));
}

#[test]
fn max_memory_recycles_the_fat_worker_without_losing_a_request() {
    let server = Server::start("app", &["--workers", "1", "--max-memory", "150"]);
    let fat: i32 = server.get("/alloc?mb=200").text().parse().unwrap();
    let load = Load::start(server.addr, 4, "/");
    let line = server
        .log
        .wait_for("event=max_memory", Duration::from_secs(10))
        .expect("noticed");
    assert!(line.contains(&format!("pid={fat}")), "{line}");
    wait_for(START_TIMEOUT, || {
        (!server.worker_pids().contains(&fat)).then_some(())
    })
    .expect("fat worker gone");
    let LoadResult { ok, failures, .. } = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 10);
}

#[test]
fn ttin_and_ttou_change_the_worker_count_never_below_one() {
    let server = Server::start("app", &["--workers", "1"]);
    server.signal(libc::SIGTTIN);
    server.wait_workers(2, START_TIMEOUT);
    server.signal(libc::SIGTTIN);
    server.wait_workers(3, START_TIMEOUT);
    wait_for(START_TIMEOUT, || {
        (server.probe("/ready").text() == "ready: 3/3 workers ready\n").then_some(())
    })
    .expect("3 ready");
    let desired = || {
        sample_value(
            &parse_classic(&server.probe("/metrics").text()),
            "hurricane_workers_desired",
            &[],
        )
    };
    assert_eq!(desired(), Some(3.0), "the pool's size follows TTIN");
    for _ in 0..4 {
        server.signal(libc::SIGTTOU);
        thread::sleep(Duration::from_millis(100));
    }
    server.wait_workers(1, START_TIMEOUT);
    assert!(
        server
            .log
            .wait_for("event=scale_refused", Duration::from_secs(2))
            .is_some()
    );
    // The refusal is the last TTOU handled: nothing is leaving any more.
    assert_eq!(server.worker_pids().len(), 1, "never below one");
    assert_eq!(desired(), Some(1.0));
    assert_eq!(server.get("/").text(), "hello");
}

#[test]
fn a_crash_loop_backs_off_fails_alive_and_recovers_when_fixed() {
    if preload_run() {
        return; // crashy starts its crashing thread at import, which --preload refuses (preload.rs)
    }
    let dir = TempDir::new("crashy");
    let flag = dir.path("crash");
    let mut cmd = command("crashy", &["--workers", "1"]);
    cmd.env("CRASHY_FLAG", &flag);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    std::fs::write(&flag, b"").unwrap();
    // The first worker is already past its 0.2 s; kill it so the next ones see the flag.
    let first = server.wait_workers(1, START_TIMEOUT)[0];
    // SAFETY: kill with integer arguments on our server's worker.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let alive = wait_for(Duration::from_secs(20), || {
        let r = server.probe("/alive");
        (r.status == 500).then_some(r)
    })
    .unwrap_or_else(|| panic!("/alive turns 500; log:\n{}", server.log.text()));
    assert!(alive.text().contains("crash loop"), "{}", alive.text());
    let delays: Vec<u64> = server
        .log
        .text()
        .lines()
        .filter_map(|l| {
            l.split("respawn_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        delays.len() >= 4 && delays.windows(2).skip(1).all(|w| w[1] > w[0]),
        "growing: {delays:?}"
    );
    std::fs::remove_file(Path::new(&flag)).unwrap();
    wait_for(Duration::from_secs(45), || {
        (server.probe("/alive").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("/alive recovers; log:\n{}", server.log.text()));
    assert_eq!(server.get("/").text(), "ok");
}

#[test]
fn a_frozen_worker_is_killed_after_the_heartbeat_timeout() {
    let server = Server::start("app", &["--workers", "2", "--heartbeat-timeout", "2"]);
    let pids = server.wait_workers(2, START_TIMEOUT);
    // SIGSTOP freezes it like a C extension holding the GIL: no heartbeats, no signal handlers.
    // SAFETY: kill with integer arguments on our server's worker.
    unsafe { libc::kill(pids[0], libc::SIGSTOP) };
    let line = server
        .log
        .wait_for("event=heartbeat_timeout", Duration::from_secs(6))
        .expect("noticed");
    assert!(line.contains(&format!("pid={}", pids[0])), "{line}");
    wait_for(Duration::from_secs(5), || has_exited(pids[0]).then_some(()))
        .expect("SIGKILL ends it");
    let now = server.wait_workers(2, START_TIMEOUT);
    assert!(
        now.contains(&pids[1]) && !now.contains(&pids[0]),
        "{pids:?} -> {now:?}"
    );
    assert_eq!(server.get("/").text(), "hello");
}
