//! The command line and startup errors: exit codes and one-line messages (issue 2).

use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("HURRICANE_PORT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_is_a_usage_error() {
    let (code, err) = run(&["-w", "app", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );
    let (code, err) = run(&["--port", "8000"]);
    assert_eq!(code, 2);
    assert!(err.contains("--wsgi"), "{err}");
    let (code, err) = run(&["-w", "app", "--workers", "zero"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn help_and_version() {
    let (code, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--graceful-timeout") && help.contains("HURRICANE_PORT"),
        "{help}"
    );
}

#[test]
fn bad_module_path_and_chdir_are_usage_errors() {
    let (code, err) = run(&["-w", "mysite/wsgi.py", "--port", "0"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: -w 'mysite/wsgi.py' is not MODULE[:ATTR]"),
        "{err}"
    );
    let (code, err) = run(&["-w", "app", "--chdir", "/no/such/dir"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: --chdir '/no/such/dir'"), "{err}");
}

#[test]
fn missing_python_is_one_line_and_exit_1() {
    let (code, err) = run(&["-w", "app", "--port", "0", "--python", "/no/such/python3"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: cannot find python '/no/such/python3'; pass --python PATH or activate a virtualenv"
    );
}

#[test]
fn port_in_use_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args([
            "-w",
            "app",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--python",
            &python(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("address already in use") && err.contains(&port),
        "{err}"
    );
}

#[test]
fn options_come_from_the_environment_and_the_command_line_wins() {
    let server = Server::spawn(command("app", &[]).env("HURRICANE_WORKERS", "3"));
    server.wait_started();
    assert_eq!(server.wait_workers(3, START_TIMEOUT).len(), 3);
    drop(server);
    let server = Server::spawn(command("app", &["--workers", "1"]).env("HURRICANE_WORKERS", "3"));
    server.wait_started();
    assert_eq!(server.wait_workers(1, Duration::from_secs(5)).len(), 1);
}

#[test]
fn readme_documents_every_option() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    // Option lines start with a dash; descriptions (which may mention "--noinput") do not.
    let flags: Vec<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(str::split_whitespace)
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_alphanumeric()))
        .collect();
    assert!(flags.len() > 15, "{flags:?}");
    for flag in flags {
        assert!(
            readme.contains(&format!("`{flag}")),
            "README's options table lacks {flag}"
        );
    }
}

#[test]
fn prestart_commands_need_a_django_settings_module() {
    let out = Command::new(BIN)
        .args(["-w", "app", "--command", "migrate"])
        .env_remove("DJANGO_SETTINGS_MODULE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set DJANGO_SETTINGS_MODULE"), "{err}");
}

/// Issue 10: `--workers 100000` spun the master at 100 % CPU, never listening, deaf to SIGINT.
#[test]
fn absurd_or_negative_worker_counts_are_one_line_usage_errors() {
    for (count, says) in [
        (
            "100000",
            "100000 workers is more than hurricane runs (1024 at most)",
        ),
        ("50000", "50000 workers is more than hurricane runs"),
        ("-1", "'-1' is not a worker count"),
        ("0", "'0' is not a worker count"),
    ] {
        let (code, err) = run(&["-w", "app", "--port", "0", "--workers", count]);
        assert_eq!(code, 2, "--workers {count}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(says),
            "--workers {count}: {err}"
        );
    }
}

/// `--threads` takes `auto` (the default) or a count; anything else is a one-line usage error.
#[test]
fn a_thread_count_is_auto_or_a_number_from_1_to_1024() {
    for count in ["0", "1025", "many"] {
        let (code, err) = run(&["-w", "app", "--port", "0", "--threads", count]);
        assert_eq!(code, 2, "--threads {count}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value")
                && first.contains(&format!(
                    "'{count}' is not auto or a thread count from 1 to 1024"
                )),
            "--threads {count}: {err}"
        );
    }
}

/// Issue 10: a pool the process limit cannot hold is refused before anything starts.
#[test]
fn more_workers_than_the_process_limit_allows_is_refused() {
    let out = Command::new("prlimit")
        .args([
            "--nproc=40:40",
            BIN,
            "-w",
            "app",
            "--port",
            "0",
            "--workers",
            "30",
        ])
        .env_remove("HURRICANE_PORT")
        .output()
        .expect("prlimit (util-linux) is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "error: --workers 30 needs more processes than the limit allows (ulimit -u is 40); \
         give fewer workers or raise the limit"
    );
}

/// Issue 10: `--bind not-an-ip` exited 1 with a garbled resolver message.
#[test]
fn a_bind_address_that_is_not_an_ip_is_a_usage_error() {
    let (code, err) = run(&["-w", "app", "--port", "0", "--bind", "not-an-ip"]);
    assert_eq!(code, 2, "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("'not-an-ip' is not an IP address: give one such as 0.0.0.0"),
        "{err}"
    );
}
