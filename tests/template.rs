//! contrib/template (issue 13, point 7): a project made with `django-admin startproject --template
//! contrib/template` passes `check --deploy` with only the expected HTTPS warnings, and
//! `manage.py serve` runs it: /ready 200 (its migrations readiness check included) and JSON views.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

#[test]
fn a_project_from_the_template_deploys_clean_and_serves_json() {
    let dir = TempDir::new("template");
    let venv_bin = test_venv_python().parent().unwrap().to_path_buf();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/template");
    let status = Command::new(venv_bin.join("django-admin"))
        .args(["startproject", "--template"])
        .arg(&template)
        .args(["myservice", "."])
        .current_dir(&dir.0)
        .status()
        .unwrap();
    assert!(status.success());
    for file in [
        "manage.py",
        "myservice/settings.py",
        "myservice/checks.py",
        "Dockerfile",
        "deploy/kubernetes.yaml",
    ] {
        assert!(dir.0.join(file).is_file(), "{file} is made");
    }
    let env = [
        (
            "DJANGO_SECRET_KEY",
            "template-test-5d3f0a9c8b7e6d5c4b3a29180f7e6d5c4b3a2918f0e9d8c7b6a5",
        ),
        (
            "DATABASE_URL",
            &format!("sqlite:///{}", dir.path("db.sqlite3")),
        ),
    ];
    let manage = |args: &[&str]| {
        let mut cmd = Command::new(test_venv_python());
        cmd.arg("manage.py")
            .args(args)
            .current_dir(&dir.0)
            .envs(env);
        cmd.env_remove("DJANGO_SETTINGS_MODULE");
        cmd
    };
    // Before `migrate`, the readiness check says so; `migrate` itself is not blocked by it.
    let out = manage(&["check", "--deploy"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("myservice.E001"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = manage(&["migrate", "--noinput"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = manage(&["check", "--deploy"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    let ids: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("?: ("))
        .filter_map(|r| r.split_once(')').map(|(id, _)| id))
        .collect();
    assert!(
        ids.iter()
            .all(|id| ["security.W004", "security.W008"].contains(id)),
        "only the HTTPS warnings: {ids:?}\n{report}"
    );

    let mut cmd = manage(&[
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
    ]);
    cmd.env("HURRICANE_BINARY", BIN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = Server::spawn(&mut cmd);
    server.wait_started();
    assert_eq!(
        server.probe("/ready").status,
        200,
        "log:\n{}",
        server.log.text()
    );
    let index = server.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&index.body).unwrap()["service"],
        "myservice"
    );
    let items = server.get("/api/items");
    assert_eq!(items.status, 200);
    let items: serde_json::Value = serde_json::from_slice(&items.body).unwrap();
    assert!(
        items["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["model"] == "contenttype")
    );
}
