//! contrib/systemd (issue 13, point 6): hurricane under systemd's socket activation serves on the
//! socket it was handed, tells $NOTIFY_SOCKET READY=1 once started and STOPPING=1 on TERM, and
//! `systemd-analyze verify` accepts the units.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

#[test]
fn under_systemd_socket_activate_it_serves_the_handed_socket_and_notifies_readiness() {
    let dir = TempDir::new("systemd");
    let notify_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A free port for systemd-socket-activate to listen on (it binds; hurricane must not).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(BIN)
        .args([
            "-w",
            "app",
            "--workers",
            "1",
            "--probe-port",
            "0",
            "--chdir",
        ])
        .arg(apps_dir())
        .args(["--python", &python()])
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // systemd-socket-activate starts hurricane at the first connection, as systemd does: this
    // first request waits in the socket's backlog and is served by hurricane's worker.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let first =
        std::thread::spawn(move || wait_for(Duration::from_secs(20), || get(addr, "/pid").ok()));
    let mut server = Server::spawn(&mut cmd);
    let first = first.join().unwrap().expect("the first request was served");
    assert_eq!(first.status, 200);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1", "log:\n{}", server.log.text());
    assert!(
        server
            .log
            .text()
            .contains(&format!("addr=127.0.0.1:{port}"))
    );
    let response = get(addr, "/pid").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.text().parse::<i32>().unwrap(),
        server.worker_pids()[0],
        "a worker answered on the activated socket"
    );
    server.signal(libc::SIGTERM);
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let dir = TempDir::new("systemd-units");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    // The units name paths of a deployment (/srv/app); point them at this checkout's.
    let service = std::fs::read_to_string(root.join("hurricane.service"))
        .unwrap()
        .replace("/srv/app/venv/bin/hurricane", BIN)
        .replace("/srv/app/venv/bin/python", "/usr/bin/python3")
        .replace("/srv/app", &dir.0.display().to_string());
    std::fs::write(dir.0.join("hurricane.service"), service).unwrap();
    std::fs::copy(
        root.join("hurricane.socket"),
        dir.0.join("hurricane.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.0.join("hurricane.socket"))
        .arg(dir.0.join("hurricane.service"))
        .output()
        .expect("systemd-analyze is installed");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The unit's flags are ones the binary accepts.
    let unit = std::fs::read_to_string(root.join("hurricane.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "{flag} is not a flag of hurricane");
    }
    assert!(unit.contains("Type=notify"));
}
