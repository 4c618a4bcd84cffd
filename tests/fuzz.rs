//! A bounded fuzz run of the worker's request parser over real sockets (issue 3): mutated and
//! random requests must each get a well-formed response or a clean close; the worker must never
//! crash, hang or leak an exception, and must serve normally afterwards.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::util::*;

const SEEDS: &[&[u8]] = &[
    b"GET /environ?a=1 HTTP/1.1\r\nHost: x\r\nX-Test: y\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /static/x HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nIf-None-Match: \"a\"\r\n\r\n",
];
const NASTY: &[u8] = b"\r\n\0 \t:;,=\"%/\\.?#-+0123456789aAzZ\x7f\x80\xff";
const ALLOWED: &[u16] = &[
    200, 204, 400, 404, 405, 408, 413, 414, 417, 431, 500, 501, 505,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng) -> Vec<u8> {
    let mut data = SEEDS[rng.below(SEEDS.len())].to_vec();
    if rng.below(20) == 0 {
        return (0..rng.below(300)).map(|_| rng.next() as u8).collect(); // pure noise
    }
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if at < data.len() => data[at] = NASTY[rng.below(NASTY.len())],
            1 => data.insert(at, NASTY[rng.below(NASTY.len())]),
            2 if at < data.len() => {
                data.remove(at);
            }
            3 => data.truncate(at),
            _ => {
                let end = (at + rng.below(40)).min(data.len());
                let piece = data[at.min(end)..end].to_vec();
                data.splice(at..at, piece);
            }
        }
    }
    data
}

#[test]
fn mutated_requests_never_crash_hang_or_confuse_the_worker() {
    let server = Server::start(
        "app",
        &[
            "--workers",
            "1",
            "--max-body-size",
            "10000",
            "--keep-alive",
            "2",
        ],
    );
    let worker = server.wait_workers(1, START_TIMEOUT)[0];
    let seed = 0x5EED_F00D_u64;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut sent = 0;
    // Bounded in count and in time.
    while sent < 1500 && started.elapsed() < Duration::from_secs(40) {
        let request = mutate(&mut rng);
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&request);
        let _ = stream.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            read.is_ok() || !answer.is_empty(),
            "request #{sent} (seed {seed:#x}) hung: {:?}",
            String::from_utf8_lossy(&request)
        );
        for response in text.split("HTTP/1.1 ").skip(1) {
            let status: u16 = response.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            if status == 100 {
                continue;
            }
            assert!(
                ALLOWED.contains(&status),
                "request #{sent} (seed {seed:#x}) got {status}: {:?} -> {text:?}",
                String::from_utf8_lossy(&request)
            );
        }
        assert!(
            text.is_empty() || text.starts_with("HTTP/1."),
            "#{sent}: garbage back: {text:?}"
        );
        sent += 1;
    }
    assert!(sent >= 300, "only {sent} requests in the time bound");
    assert_eq!(server.worker_pids(), vec![worker], "the worker never died");
    assert_eq!(server.get("/").text(), "hello");
    assert_eq!(server.log.count("event=worker_died"), 0);
    let log = server.log.text();
    // App errors (the validator refusing a weird method) are logged as event=app_error with their
    // traceback; any other traceback would be an exception escaping the server itself.
    let tracebacks = server.log.count("Traceback (most recent call last)");
    assert!(tracebacks <= server.log.count("event=app_error"), "{log}");
}
