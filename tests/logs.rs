//! Logs: --access-log, --log-format json, --log-probes (issue 5, logs part).

use std::time::Duration;

use crate::util::*;

#[test]
fn json_logs_parse_line_by_line_and_the_access_log_has_each_request() {
    let mut server = Server::start(
        "app",
        &["--workers", "1", "--access-log", "--log-format", "json"],
    );
    assert_eq!(server.get("/environ?q=1").status, 200);
    assert_eq!(server.get("/error").status, 500);
    assert_eq!(server.probe("/ready").status, 200);
    server
        .log
        .wait_for("\"status\":500", Duration::from_secs(5))
        .expect("access line for /error");
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).unwrap();
    let mut access = Vec::new();
    for line in server.log.text().lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["ts"].is_string() && value["level"].is_string() && value["event"].is_string(),
            "{line}"
        );
        assert_ne!(
            value["event"], "probe",
            "probes are not logged without --log-probes"
        );
        if value["event"] == "access" {
            access.push(value);
        }
    }
    assert_eq!(
        access.len(),
        2,
        "one access line per request, none for the probe"
    );
    assert_eq!(access[0]["path"], "/environ");
    assert_eq!(access[0]["query"], "q=1");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["remote"], "127.0.0.1");
    assert!(access[0]["size"].as_u64().unwrap() > 10);
    assert!(access[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(access[0]["worker"], 1);
    assert_eq!(access[1]["status"], 500);
    let errors = server.log.text();
    assert!(
        errors.contains("\"event\":\"app_error\"") && errors.contains("boom from the test app")
    );
}

#[test]
fn probes_are_logged_only_with_log_probes_and_access_log_is_off_by_default() {
    let server = Server::start("app", &["--workers", "1", "--log-probes"]);
    assert_eq!(server.get("/").status, 200);
    assert_eq!(server.probe("/alive").status, 200);
    let line = server
        .log
        .wait_for("event=probe", Duration::from_secs(2))
        .expect("probe logged");
    assert!(
        line.contains("path=\"/alive\"") && line.contains("status=200"),
        "{line}"
    );
    // The worker writes its lines in order: once a later request's error line is in, an access
    // line for the first request would be too.
    assert_eq!(server.get("/error").status, 500);
    server
        .log
        .wait_for("event=app_error", Duration::from_secs(5))
        .expect("the app error is logged");
    assert_eq!(
        server.log.count("event=access"),
        0,
        "no access log unless asked for"
    );
}

#[test]
fn log_file_gets_master_and_access_lines_and_usr1_reopens_it_after_rotation() {
    let dir = TempDir::new("logfile");
    let path = dir.0.join("hurricane.log");
    let rotated = dir.0.join("hurricane.log.1");
    let mut cmd = command(
        "app",
        &[
            "--workers",
            "2",
            "--access-log",
            "--log-file",
            path.to_str().unwrap(),
        ],
    );
    let mut child = cmd.spawn().unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let line = wait_for(START_TIMEOUT, || {
        read(&path)
            .lines()
            .find(|l| l.contains("event=listening"))
            .map(str::to_string)
    })
    .expect("the master logs into the file");
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    wait_for(START_TIMEOUT, || {
        read(&path).contains("event=started").then_some(())
    })
    .unwrap();
    assert_eq!(get(addr, "/before").unwrap().status, 200);
    wait_for(Duration::from_secs(5), || {
        read(&path).contains("path=\"/before\"").then_some(())
    })
    .expect("access line");
    std::fs::rename(&path, &rotated).unwrap();
    // SAFETY: kill with integer arguments on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    wait_for(Duration::from_secs(5), || {
        read(&path).contains("action=reopen_log").then_some(())
    })
    .expect("reopened");
    // Both workers reopened too: every request's line lands in the new file.
    for i in 0..6 {
        assert_eq!(get(addr, &format!("/after{i}")).unwrap().status, 200);
    }
    wait_for(Duration::from_secs(5), || {
        (0..6)
            .all(|i| read(&path).contains(&format!("path=\"/after{i}\"")))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("new file:\n{}", read(&path)));
    assert!(read(&rotated).contains("path=\"/before\"") && !read(&rotated).contains("/after"));
    let _ = child.kill();
    let _ = child.wait();
}
