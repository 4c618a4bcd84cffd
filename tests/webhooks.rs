//! Webhooks (issue 5): events reach a real HTTP receiver on loopback; a dead receiver delays nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A webhook receiver: records each POSTed JSON body, answers 200.
pub struct Receiver {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut data = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    data.extend_from_slice(&chunk[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + len {
                        break Some(data[end + 4..end + 4 + len].to_vec());
                    }
                };
                if let Some(body) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                    seen.lock().unwrap().push(body);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            bodies,
        }
    }

    pub fn wait_for(&self, kind: &str, status: &str) -> Value {
        wait_for(Duration::from_secs(10), || {
            self.bodies
                .lock()
                .unwrap()
                .iter()
                .find(|b| b["type"] == kind && b["status"] == status)
                .cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{status} webhook; got {:?}",
                self.bodies.lock().unwrap()
            )
        })
    }
}

#[test]
fn startup_reload_readiness_and_shutdown_are_posted() {
    let receiver = Receiver::start();
    let mut server = Server::start("app", &["--workers", "1", "--webhook-url", &receiver.url]);
    let startup = receiver.wait_for("startup", "succeeded");
    for key in ["info", "type", "status", "timestamp", "podname", "version"] {
        assert!(startup.get(key).is_some(), "{key} missing: {startup}");
    }
    assert_eq!(startup["version"], env!("CARGO_PKG_VERSION"));
    assert!(startup["timestamp"].as_str().unwrap().ends_with('Z'));
    server.signal(libc::SIGHUP);
    receiver.wait_for("reload", "succeeded");
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)).unwrap().code(),
        Some(0)
    );
    receiver.wait_for("readiness", "failed");
    receiver.wait_for("shutdown", "succeeded");
    receiver.wait_for("worker", "succeeded"); // the reload replaced the worker
}

#[test]
fn a_failed_startup_posts_the_traceback() {
    let receiver = Receiver::start();
    let mut server = Server::spawn(&mut command(
        "broken",
        &["--workers", "1", "--webhook-url", &receiver.url],
    ));
    assert_eq!(server.wait_exit(START_TIMEOUT).unwrap().code(), Some(3));
    let failed = receiver.wait_for("startup", "failed");
    assert!(
        failed["traceback"]
            .as_str()
            .unwrap()
            .contains("ModuleNotFoundError"),
        "{failed}"
    );
    assert!(
        failed["info"]
            .as_str()
            .unwrap()
            .contains("cannot import 'broken'"),
        "{failed}"
    );
}

#[test]
fn a_dead_receiver_delays_neither_startup_nor_requests() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    }; // closed again: connections are refused
    let started = Instant::now();
    let server = Server::start("app", &["--workers", "1", "--webhook-url", &dead]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "startup took {:?}",
        started.elapsed()
    );
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(server.get("/").status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    assert!(
        server
            .log
            .wait_for("event=webhook_failed", Duration::from_secs(10))
            .is_some(),
        "{}",
        server.log.text()
    );
    assert_eq!(server.probe("/ready").status, 200);
}
