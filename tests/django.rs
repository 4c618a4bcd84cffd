//! Django behind the probes (issue 5): tagged system checks and a real database round trip,
//! asked of a worker over its control pipe and cached for --check-interval.

use std::time::Duration;

use crate::util::*;

fn check_runs(path: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn django_checks_fail_the_probes_and_a_probe_storm_costs_one_check() {
    let python = test_venv_python();
    let dir = TempDir::new("django");
    let db_dir = dir.0.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let flag = dir.path("liveness-flag");
    let counter = dir.path("check-runs");
    let mut cmd = command_with(
        python.to_str().unwrap(),
        &apps_dir().join("djproject"),
        "djsite.wsgi",
        &["--workers", "2", "--check-interval", "2"],
    );
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", db_dir.join("db.sqlite3"))
        .env("HURRICANE_TEST_LIVENESS_FLAG", &flag)
        .env("HURRICANE_TEST_CHECK_COUNTER", &counter);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let page = server.get("/");
    assert_eq!(
        (page.status, page.text().as_str()),
        (200, r#"{"hello": "django", "db": 1}"#)
    );

    // Healthy, and cached: a storm of probes inside one interval runs the checks once.
    assert_eq!(server.probe("/ready").status, 200);
    assert_eq!(check_runs(&counter), 1, "the first probe ran the checks");
    for _ in 0..30 {
        assert_eq!(server.probe("/ready").status, 200);
        assert_eq!(server.probe("/alive").status, 200);
    }
    assert_eq!(check_runs(&counter), 1, "answered from the cache");

    // A liveness-tagged check that errors: /alive 500 "check error", the message only with --debug.
    std::fs::write(&flag, b"").unwrap();
    let alive = wait_for(Duration::from_secs(8), || {
        let r = server.probe("/alive");
        (r.status == 500).then_some(r)
    })
    .expect("/alive fails");
    assert_eq!(alive.text(), "not alive: check error\n");
    assert_eq!(
        server.probe("/ready").status,
        200,
        "readiness has its own checks"
    );
    std::fs::remove_file(&flag).unwrap();
    wait_for(Duration::from_secs(8), || {
        (server.probe("/alive").status == 200).then_some(())
    })
    .expect("recovers");

    // The database goes away: /ready 500 "database error".
    std::fs::remove_dir_all(&db_dir).unwrap();
    let ready = wait_for(Duration::from_secs(8), || {
        let r = server.probe("/ready");
        (r.status == 500).then_some(r)
    })
    .expect("/ready fails without a database");
    assert_eq!(ready.text(), "not ready: database error\n");
}

#[test]
fn debug_shows_the_failing_checks_message() {
    let python = test_venv_python();
    let dir = TempDir::new("django-debug");
    let flag = dir.path("liveness-flag");
    std::fs::write(&flag, b"").unwrap();
    let mut cmd = command_with(
        python.to_str().unwrap(),
        &apps_dir().join("djproject"),
        "djsite.wsgi",
        &["--workers", "1", "--debug"],
    );
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", dir.0.join("db.sqlite3"))
        .env("HURRICANE_TEST_LIVENESS_FLAG", &flag);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let alive = server.probe("/alive");
    assert_eq!(alive.status, 500);
    assert!(
        alive.text().contains("the liveness flag is set"),
        "{}",
        alive.text()
    );
}

/// hurricane on tests/apps/djproject with a fresh SQLite database in `dir`.
fn django_command(dir: &TempDir, args: &[&str]) -> std::process::Command {
    let python = test_venv_python();
    let mut cmd = command_with(
        python.to_str().unwrap(),
        &apps_dir().join("djproject"),
        "djsite.wsgi",
        args,
    );
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", dir.0.join("db.sqlite3"));
    cmd
}

#[test]
fn a_migrate_command_creates_the_tables_before_the_first_request() {
    let dir = TempDir::new("dj-migrate");
    let server = Server::spawn(&mut django_command(
        &dir,
        &["--workers", "1", "--command", "migrate --noinput"],
    ));
    server.wait_started();
    let visits = server.get("/visits");
    assert_eq!(
        (visits.status, visits.text().as_str()),
        (200, r#"{"visits": 1}"#)
    );
    assert!(
        server
            .log
            .count("event=command_done command=\"migrate --noinput\"")
            == 1
    );
    // Without it, the table is missing: the test above can fail.
    let bare = TempDir::new("dj-nomigrate");
    let server = Server::spawn(&mut django_command(&bare, &["--workers", "1"]));
    server.wait_started();
    assert_eq!(server.get("/visits").status, 500);
}

#[test]
fn startup_waits_for_a_slow_command_and_a_failing_one_stops_it_with_a_webhook() {
    let dir = TempDir::new("dj-slow");
    let server = Server::spawn(&mut django_command(
        &dir,
        &["--workers", "1", "--command", "slowcmd 2"],
    ));
    let startup = server.probe("/startup");
    assert_eq!(startup.status, 503, "{}", startup.text());
    assert_eq!(
        server.probe("/alive").status,
        200,
        "the master is fine while it waits"
    );
    assert!(
        server.worker_pids().is_empty(),
        "no worker before the command is done"
    );
    server.wait_started();
    assert_eq!(server.probe("/startup").status, 200);

    let receiver = crate::webhooks::Receiver::start();
    let failing = TempDir::new("dj-fail");
    let mut server = Server::spawn(&mut django_command(
        &failing,
        &[
            "--workers",
            "1",
            "--command",
            "no_such_command",
            "--webhook-url",
            &receiver.url,
        ],
    ));
    let status = server.wait_exit(START_TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(3));
    let last = server
        .log
        .wait_for("error: --command", Duration::from_secs(2))
        .expect("one-line error");
    assert!(
        last.contains("\"no_such_command\" failed with exit code 1"),
        "{last}"
    );
    let hook = receiver.wait_for("startup", "failed");
    assert!(
        hook["traceback"]
            .as_str()
            .unwrap()
            .contains("Unknown command"),
        "{hook}"
    );
    assert!(server.worker_pids().is_empty());
}

#[test]
fn check_migrations_waits_until_applied_and_apply_applies() {
    let dir = TempDir::new("dj-check");
    let server = Server::spawn(&mut django_command(
        &dir,
        &["--workers", "1", "--check-migrations"],
    ));
    server
        .log
        .wait_for("event=migrations_waiting", START_TIMEOUT)
        .expect("waits and says so");
    assert_eq!(server.probe("/startup").status, 503);
    let migrated = std::process::Command::new(test_venv_python())
        .args(["-m", "django", "migrate", "--noinput"])
        .current_dir(apps_dir().join("djproject"))
        .env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", dir.0.join("db.sqlite3"))
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    server.wait_started();
    assert_eq!(server.get("/visits").status, 200);

    let fresh = TempDir::new("dj-apply");
    let server = Server::spawn(&mut django_command(
        &fresh,
        &["--workers", "1", "--check-migrations-apply"],
    ));
    server.wait_started();
    assert_eq!(server.get("/visits").text(), r#"{"visits": 1}"#);
}

/// `python manage.py serve ARGS` in `project`, with the freshly built hurricane first on PATH,
/// as a user with the hurricane Django app installed would run it.
fn manage_py_serve(project: &std::path::Path, args: &[&str]) -> std::process::Command {
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let mut cmd = std::process::Command::new(test_venv_python());
    cmd.args(["manage.py", "serve"])
        .args(args)
        .current_dir(project)
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env_remove("DJANGO_SETTINGS_MODULE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[test]
fn manage_py_serve_becomes_the_master_and_term_stops_it_cleanly() {
    let dir = TempDir::new("dj-manage");
    let python = test_venv_python();
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let project = apps_dir().join("djproject");
    let manage = |args: &[&str]| {
        std::process::Command::new(&python)
            .arg("manage.py")
            .args(args)
            .current_dir(&project)
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let help = manage(&["serve", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--graceful-timeout") && text.contains("HURRICANE_PORT"),
        "{text}"
    );
    // Issue 22: the management command's own usage, not the binary's with --wsgi required.
    assert!(help.status.success(), "{text}");
    assert!(
        text.contains("Usage: python manage.py serve [OPTIONS]")
            && text.contains("-w from WSGI_APPLICATION")
            && !text.contains("Usage: hurricane serve")
            && !text.contains("--wsgi <MODULE[:ATTR]>\n\n"),
        "{text}"
    );
    let help = manage(&["consume", "-h"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success()
            && text.contains("Usage: python manage.py consume [OPTIONS]")
            && text.contains("--amqp-host")
            && !text.contains("Usage: hurricane consume"),
        "{text}"
    );
    // Without the binary anywhere: one line saying what to do, exit 1, for both commands.
    for command in ["serve", "consume"] {
        let missing = std::process::Command::new(&python)
            .args(["manage.py", command])
            .current_dir(&project)
            .env("PATH", "/usr/bin:/bin")
            .env_remove("HURRICANE_BINARY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&missing.stderr);
        assert_eq!(missing.status.code(), Some(1), "{err}");
        assert_eq!(
            err.trim(),
            "error: cannot find the hurricane binary; pip install hurricane into this environment, put it on PATH, or set HURRICANE_BINARY"
        );
    }

    let mut cmd = manage_py_serve(
        &project,
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "2",
            "--command",
            "migrate --noinput",
        ],
    );
    cmd.env("HURRICANE_TEST_DB", dir.0.join("db.sqlite3"));
    let mut server = Server::spawn(&mut cmd);
    server.wait_started();
    // The process we started (manage.py) is now the master: the workers are its children.
    assert_eq!(server.wait_workers(2, START_TIMEOUT).len(), 2);
    assert!(
        cmdline(server.pid()).contains("hurricane"),
        "{}",
        cmdline(server.pid())
    );
    assert_eq!(server.get("/visits").text(), r#"{"visits": 1}"#);
    assert_eq!(server.probe("/ready").status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn settings_configure_hurricane_between_the_command_line_and_the_environment() {
    let dir = TempDir::new("dj-settings");
    let run = |extra: &[&str], env: Option<&str>, settings: &str| {
        let mut cmd = django_command(&dir, extra);
        cmd.env("DJANGO_SETTINGS_MODULE", settings);
        if let Some(workers) = env {
            cmd.env("HURRICANE_WORKERS", workers);
        }
        cmd
    };
    let server = Server::spawn(&mut run(&[], None, "djsite.settings_hurricane"));
    server.wait_started();
    assert_eq!(
        server.wait_workers(3, START_TIMEOUT).len(),
        3,
        "HURRICANE_WORKERS = 3 from settings.py"
    );
    let warning = server
        .log
        .wait_for("event=unknown_setting", Duration::from_secs(2))
        .expect("typo noticed");
    assert!(
        warning.contains("HURRICANE_WORKRES")
            && warning.contains("did you mean HURRICANE_WORKERS?"),
        "{warning}"
    );
    drop(server);
    let server = Server::spawn(&mut run(&[], Some("1"), "djsite.settings_hurricane"));
    server.wait_started();
    assert_eq!(
        server.wait_workers(3, START_TIMEOUT).len(),
        3,
        "the environment overrides nothing settings set"
    );
    drop(server);
    let server = Server::spawn(&mut run(
        &["--workers", "2"],
        Some("1"),
        "djsite.settings_hurricane",
    ));
    server.wait_started();
    assert_eq!(
        server.wait_workers(2, START_TIMEOUT).len(),
        2,
        "the command line wins"
    );
    drop(server);
    let out = run(&[], None, "djsite.settings_bad").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HURRICANE_* setting") && err.contains("'four'"),
        "{err}"
    );
}

#[test]
fn debug_static_files_come_through_the_finders() {
    let dir = TempDir::new("dj-static");
    let mut cmd = django_command(&dir, &["--workers", "1", "--static"]);
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings_debug");
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let css = server.get("/static/djsite/app.css");
    assert_eq!(
        (css.status, css.text().as_str()),
        (200, "body { color: teal; }\n")
    );
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    for path in [
        "/static/djsite/../../settings.py",
        "/static/djsite/nope.css",
        "/static/%2e%2e/settings.py",
    ] {
        assert_eq!(server.get(path).status, 404, "{path}");
    }
}

#[test]
fn the_example_django_project_serves_pages_static_files_and_probes() {
    let dir = TempDir::new("example");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    let python = test_venv_python();
    let mut cmd = command_with(
        python.to_str().unwrap(),
        &example,
        "mysite.wsgi",
        &["--workers", "1"],
    );
    cmd.env("DJANGO_SETTINGS_MODULE", "mysite.settings")
        .env("EXAMPLE_DATA_DIR", &dir.0);
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let page = server.get("/");
    assert!(
        page.status == 200 && page.text().contains("Hello from Django"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("/static/mysite/style.css"));
    let api = server.get("/api");
    assert_eq!(
        api.text(),
        r#"{"message": "Hello from Django under hurricane", "database": true}"#
    );
    let css = server.get("/static/mysite/style.css");
    assert_eq!(
        css.status, 200,
        "collected by the settings' HURRICANE_COMMAND and served by HURRICANE_STATIC"
    );
    assert_eq!(server.probe("/ready").status, 200);
    assert!(dir.0.join("staticfiles/mysite/style.css").exists());
}

#[test]
fn manage_py_serve_on_the_example_project_pages_static_probes_and_term() {
    let dir = TempDir::new("example-manage");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    let mut cmd = manage_py_serve(
        &example,
        &["--bind", "127.0.0.1", "--port", "0", "--workers", "2"],
    );
    cmd.env("EXAMPLE_DATA_DIR", &dir.0);
    let mut server = Server::spawn(&mut cmd);
    server.wait_started();
    assert!(server.get("/").text().contains("Hello from Django"));
    assert_eq!(server.get("/api").status, 200);
    assert_eq!(server.get("/static/mysite/style.css").status, 200);
    for probe in ["/startup", "/ready", "/alive"] {
        assert_eq!(server.probe(probe).status, 200, "{probe}");
    }
    server.signal(libc::SIGTERM); // to the pid we started: manage.py became the master
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)).unwrap().code(),
        Some(0)
    );
}

/// Issue 23: `manage.py serve --asgi` serves the project's ASGI app (here `djsite.asgi`, beside
/// the settings): an `async def` view on the event loop, a sync view in Django's thread.
#[test]
fn manage_py_serve_asgi_runs_async_and_sync_views() {
    let dir = TempDir::new("dj-asgi");
    let project = apps_dir().join("djproject");
    let mut cmd = manage_py_serve(
        &project,
        &[
            "--asgi",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "1",
        ],
    );
    cmd.env("HURRICANE_TEST_DB", dir.0.join("db.sqlite3"));
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    let listening = server
        .log
        .wait_for("event=listening", Duration::ZERO)
        .unwrap();
    assert!(
        listening.contains("kind=asgi") && listening.contains("app=djsite.asgi:application"),
        "{listening}"
    );
    let async_view = server.get("/async");
    assert_eq!(async_view.status, 200, "log:\n{}", server.log.text());
    assert_eq!(async_view.text(), r#"{"hello": "async django"}"#);
    let sync_view = server.get("/");
    assert_eq!(sync_view.status, 200, "log:\n{}", server.log.text());
    assert!(
        sync_view.text().contains("\"db\": 1"),
        "{}",
        sync_view.text()
    );
    // Django's handler raises on the lifespan scope: no lifespan, said once, not a failure.
    assert!(server.log.text().contains("event=lifespan_unsupported"));
    assert_eq!(server.probe("/ready").status, 200);
}
