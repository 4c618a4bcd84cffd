//! --preload (issue 15): workers forked from one zygote per generation share the app's memory and
//! are ready in milliseconds, while HUP still loads new code, a broken reload keeps the old code
//! serving, a killed zygote is replaced, and an app that starts threads at import is refused.

use std::path::Path;
use std::time::Duration;

use crate::lifecycle::{reload_to, versioned_app, wait_serving};
use crate::util::*;

/// The one zygote, once exactly one is alive.
fn the_zygote(server: &Server) -> i32 {
    wait_for(START_TIMEOUT, || match server.zygote_pids()[..] {
        [pid] => Some(pid),
        _ => None,
    })
    .unwrap_or_else(|| {
        panic!(
            "one zygote, have {:?}; log:\n{}",
            server.zygote_pids(),
            server.log.text()
        )
    })
}

/// SIGTTIN: one more worker beside `workers`, forked from `zygote` (the master's fork line says
/// so); its pid.
fn scale_up_forks_from(server: &Server, workers: &[i32], zygote: i32) -> i32 {
    server.signal(libc::SIGTTIN);
    let all = server.wait_workers(workers.len() + 1, START_TIMEOUT);
    let new = *all.iter().find(|p| !workers.contains(p)).unwrap();
    wait_for(START_TIMEOUT, || {
        server
            .log
            .text()
            .contains(&format!("zygote_pid={zygote} pid={new}"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{new} forked from {zygote}; log:\n{}", server.log.text()));
    new
}

/// `spawn_ms` of the `ready` line of the worker with this pid.
fn spawn_ms(server: &Server, pid: i32) -> u64 {
    let text = server.log.text();
    let line = text
        .lines()
        .find(|l| l.contains("event=ready") && l.contains(&format!(" pid={pid} ")))
        .unwrap_or_else(|| panic!("a ready line for {pid}; log:\n{text}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("spawn_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("spawn_ms in {line}"))
}

#[test]
fn django_workers_forked_from_the_zygote_share_its_memory_and_start_in_milliseconds() {
    let python = test_venv_python();
    let dir = TempDir::new("preload-django");
    let db_dir = dir.0.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let mut cmd = command_with(
        python.to_str().unwrap(),
        &apps_dir().join("djproject"),
        "djsite.wsgi",
        &["--workers", "4", "--preload"],
    );
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", db_dir.join("db.sqlite3"));
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let zygote = the_zygote(&server);
    let workers = server.wait_workers(4, START_TIMEOUT);
    // Django views on every worker (the page does a database round trip).
    let mut client = KeepAlive::new(server.addr);
    for _ in 0..80 {
        let page = client.get("/").unwrap();
        assert_eq!(
            (page.status, page.text().as_str()),
            (200, r#"{"hello": "django", "db": 1}"#)
        );
    }
    for _ in 0..20 {
        assert_eq!(server.get("/").status, 200);
    }

    // What each worker holds that no other process shares (its USS) against what it uses
    // (its RSS): an exec'd worker's are nearly equal; a forked one's pages are mostly the zygote's.
    let mut total_pss = proc_kb(zygote, "smaps_rollup", "Pss");
    for pid in &workers {
        let rss = proc_kb(*pid, "smaps_rollup", "Rss");
        let private = proc_kb(*pid, "smaps_rollup", "Private_Clean")
            + proc_kb(*pid, "smaps_rollup", "Private_Dirty");
        total_pss += proc_kb(*pid, "smaps_rollup", "Pss");
        assert!(
            private * 2 < rss,
            "worker {pid} adds {private} kB of its own out of {rss} kB: less than half is shared"
        );
    }
    eprintln!("preload: 4 Django workers + zygote, total PSS {total_pss} kB");

    // The first workers waited for the zygote's import; one forked later is ready in milliseconds.
    server.signal(libc::SIGTTIN);
    let fifth = wait_for(START_TIMEOUT, || {
        let pids = server.worker_pids();
        let new: Vec<i32> = pids.into_iter().filter(|p| !workers.contains(p)).collect();
        (new.len() == 1
            && server
                .log
                .text()
                .contains(&format!(" pid={} gen=0 boot_ms=", new[0])))
        .then(|| new[0])
    })
    .unwrap_or_else(|| panic!("a fifth worker; log:\n{}", server.log.text()));
    let ms = spawn_ms(&server, fifth);
    eprintln!("preload: a Django worker forked and ready in {ms} ms");
    assert!(
        ms < 250,
        "forked, not importing Django again: {ms} ms (an exec'd worker takes ~350 ms)"
    );
    assert_eq!(
        server.zygote_pids(),
        vec![zygote],
        "the same zygote forked it"
    );
    assert!(
        server
            .log
            .text()
            .contains(&format!("zygote_pid={zygote} pid={fifth}")),
        "log:\n{}",
        server.log.text()
    );
    let metrics = server.probe("/metrics").text();
    assert!(
        metrics.contains("hurricane_zygote_resident_memory_bytes{generation=\"0\"} "),
        "{metrics}"
    );
}

#[test]
fn hup_under_load_with_preload_loads_new_code_replaces_every_worker_and_the_zygote() {
    let dir = TempDir::new("preload-hup");
    let root = versioned_app(&dir);
    let server = Server::spawn(&mut command_in(
        Path::new(&root),
        "versioned",
        &["--workers", "3", "--preload"],
    ));
    server.wait_started();
    let mut zygote = the_zygote(&server);
    let mut pids = server.wait_workers(3, START_TIMEOUT);
    let load = Load::start(server.addr, 8, "/");
    for round in 1..=2 {
        let now = reload_to(&server, &dir, round, &pids);
        let new_zygote = wait_for(START_TIMEOUT, || match server.zygote_pids()[..] {
            [pid] if pid != zygote => Some(pid),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the zygote replaced; log:\n{}", server.log.text()));
        assert!(has_exited(zygote), "the old zygote is gone");
        pids = now;
        zygote = new_zygote;
    }
    let seen = load.finish();
    assert!(
        seen.failures.is_empty(),
        "no request failed across reloads: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(seen.ok > 100, "the load ran: {} requests", seen.ok);

    // A broken new version: the new zygote fails to import, the old generation keeps serving.
    std::fs::write(
        dir.0.join("versioned.py"),
        "raise ImportError('half-deployed')\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=failed", START_TIMEOUT)
        .unwrap_or_else(|| panic!("reload failed; log:\n{}", server.log.text()));
    assert!(
        server.log.text().contains("half-deployed"),
        "the traceback is logged"
    );
    wait_serving(&server, "v2");
    for _ in 0..20 {
        assert!(server.get("/").text().starts_with("v2 "));
    }
    assert_eq!(server.worker_pids(), pids, "the old workers keep serving");
    assert_eq!(
        server.zygote_pids(),
        vec![zygote],
        "and the old zygote stays"
    );
    // A worker needed now (scale up) forks from the old zygote: no re-import of broken code.
    scale_up_forks_from(&server, &pids, zygote);
    for _ in 0..20 {
        assert!(server.get("/").text().starts_with("v2 "));
    }
}

#[test]
fn a_killed_zygote_is_replaced_while_workers_serve_and_the_next_worker_forks_from_the_new_one() {
    let server = Server::spawn(&mut command("app", &["--workers", "2", "--preload"]));
    server.wait_started();
    let zygote = the_zygote(&server);
    let workers = server.wait_workers(2, START_TIMEOUT);
    // SAFETY: kill with integer arguments, on our own test's process.
    assert_eq!(unsafe { libc::kill(zygote, libc::SIGKILL) }, 0);
    for _ in 0..50 {
        assert_eq!(server.get("/").status, 200, "workers keep serving");
    }
    let new_zygote = wait_for(START_TIMEOUT, || match server.zygote_pids()[..] {
        [pid] if pid != zygote => Some(pid),
        _ => None,
    })
    .unwrap_or_else(|| panic!("a new zygote; log:\n{}", server.log.text()));
    server
        .log
        .wait_for("event=zygote_ready zygote=2", START_TIMEOUT)
        .unwrap_or_else(|| panic!("the new zygote is ready; log:\n{}", server.log.text()));
    assert_eq!(server.worker_pids(), workers, "no worker was touched");
    let metrics = server.probe("/metrics").text();
    assert!(
        metrics.contains("hurricane_zygote_restarts_total 1\n"),
        "{metrics}"
    );
    let new = scale_up_forks_from(&server, &workers, new_zygote);
    assert_eq!(server.get("/").status, 200);
    // Its fds 4 and 5 are its own pipes; nothing of the zygote's socket came along.
    let link = |pid: i32, fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let zygote_socket = link(new_zygote, 5);
    assert!(zygote_socket.starts_with("socket:"), "{zygote_socket}");
    assert!(link(new, 4).starts_with("pipe:") && link(new, 5).starts_with("pipe:"));
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{new}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(!fds.contains(&zygote_socket), "{fds:?}");
    assert_eq!(
        stat(new).map(|(ppid, _)| ppid),
        Some(server.pid()),
        "the forked worker is the master's child (re-parented), so the master reaps it"
    );
    // A master killed outright leaves nothing behind: the zygote sees its socket close.
    let mut server = server;
    let everyone: Vec<i32> = server
        .worker_pids()
        .into_iter()
        .chain([new_zygote])
        .collect();
    server.signal(libc::SIGKILL);
    server.wait_exit(START_TIMEOUT).expect("the master is gone");
    wait_for(Duration::from_secs(3), || {
        everyone.iter().all(|p| has_exited(*p)).then_some(())
    })
    .unwrap_or_else(|| panic!("{everyone:?} outlived the master"));
}

#[test]
fn preload_refuses_an_app_that_starts_threads_at_import_with_exit_2() {
    let mut server = Server::spawn(&mut command(
        "threadimport",
        &["--workers", "2", "--preload"],
    ));
    let status = server
        .wait_exit(START_TIMEOUT)
        .unwrap_or_else(|| panic!("exits; log:\n{}", server.log.text()));
    assert_eq!(status.code(), Some(2), "log:\n{}", server.log.text());
    let log = server.log.text();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: --preload: the app started threads while it was imported (metrics-pusher)"
        ) && last.contains("without --preload"),
        "one line saying why and what to do: {last}\nlog:\n{log}"
    );
    // Without --preload the same app serves: each exec'd worker starts its own thread.
    let plain = Server::start("threadimport", &["--workers", "1"]);
    assert_eq!(plain.get("/").text(), "ok");
}

#[test]
fn preload_with_a_broken_app_fails_startup_like_without() {
    let mut server = Server::spawn(&mut command("broken", &["--workers", "2", "--preload"]));
    let status = server
        .wait_exit(START_TIMEOUT)
        .unwrap_or_else(|| panic!("exits; log:\n{}", server.log.text()));
    assert_eq!(status.code(), Some(3), "log:\n{}", server.log.text());
    let log = server.log.text();
    assert!(
        log.lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: cannot import 'broken'"),
        "log:\n{log}"
    );
    assert_eq!(
        log.matches("Traceback").count(),
        1,
        "the traceback once:\n{log}"
    );
}

/// The serve, lifecycle and logs suites again, every server with --preload: orphans, signals, drains,
/// reloads, log reopening and PID 1 duties behave the same with forked workers. Runs this test
/// binary itself.
#[test]
fn the_serve_lifecycle_and_logs_suites_pass_with_preload() {
    if preload_run() {
        return; // already inside the preload run
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["serve::", "lifecycle::", "logs::", "--test-threads", "2"])
        .env("HURRICANE_TEST_PRELOAD", "1")
        .output()
        .expect("run the suites");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "with --preload:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(" passed; 0 failed"), "{text}");
}
