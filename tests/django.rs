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
