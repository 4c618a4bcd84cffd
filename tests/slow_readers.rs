//! Clients that stop reading hold no worker (issue 11, point 1): responses the socket does not take
//! park on their connection, app iterators and files continue as the client reads, and a client
//! that reads nothing for --write-timeout is cut.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

fn rss_kb(pid: i32) -> u64 {
    proc_status_kb(pid, "VmRSS")
}

/// Connects, asks for `path`, and reads nothing.
fn stalled_client(server: &Server, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    stream
}

/// Reads one Content-Length response off `stream`; returns (status line, body length).
fn read_whole(stream: &mut TcpStream) -> (String, usize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if data.len() >= end + 4 + length {
                let status = head.lines().next().unwrap().to_string();
                return (status, data.len() - end - 4);
            }
        }
        let n = stream.read(&mut chunk).expect("the response keeps coming");
        assert!(n > 0, "closed after {} bytes", data.len());
        data.extend_from_slice(&chunk[..n]);
    }
}

fn twenty_stalled_readers_leave_the_service_to_others(threads: &str) {
    let server = Server::start("app", &["--workers", "1", "--threads", threads]);
    let worker = server.worker_pids()[0];
    // Warm: the app's 4 MiB page and the 8 MiB file exist before memory is measured.
    assert_eq!(server.get("/big?mb=4").body.len(), 4 << 20);
    assert_eq!(server.get("/bigfile?mb=4").body.len(), 4 << 20);
    let before = rss_kb(worker);
    // 20 clients ask for 4 MiB (10 from memory, 10 from a file through sendfile), read nothing.
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/big?mb=4"
            } else {
                "/bigfile?mb=4"
            };
            stalled_client(&server, path)
        })
        .collect();
    let mut fresh = KeepAlive::new(server.addr);
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let response = fresh.get("/").expect("served while 20 clients stall");
        assert_eq!(
            (response.status, response.text()),
            (200, "hello".to_string())
        );
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest of 50 GETs took {slowest:?}"
    );
    let grew_kb = rss_kb(worker).saturating_sub(before);
    eprintln!(
        "threads={threads}: slowest GET {slowest:?}, worker RSS grew {grew_kb} kB with 20 stalled 4 MiB responses"
    );
    assert!(
        grew_kb < 32 * 1024,
        "the worker's RSS grew by {} MB for 20 stalled readers",
        grew_kb / 1024
    );
    // Nothing was lost: a stalled client that starts reading gets its whole response.
    for i in [0, 1] {
        let (status, length) = read_whole(&mut stalled[i]);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(length, 4 << 20, "stalled client {i}");
    }
    assert_eq!(server.worker_pids(), vec![worker], "no worker was replaced");
}

/// Issue 11, point 1: with one worker, 20 clients that asked for 4 MiB and read nothing leave a
/// fresh client's 50 GETs fast; the worker's memory stays bounded; the stalled responses are
/// whole once read.
#[test]
fn twenty_stalled_readers_hold_no_worker() {
    twenty_stalled_readers_leave_the_service_to_others("1");
}

/// The same with --threads: a thread hands a response that does not fit back to the loop.
#[test]
fn twenty_stalled_readers_hold_no_thread() {
    twenty_stalled_readers_leave_the_service_to_others("4");
}

/// A 200 MiB streaming response (fresh 64 KiB pieces from a generator) to a slow reader: the
/// iterator is advanced only as the client reads, so the worker's memory barely moves.
#[test]
fn a_streaming_response_to_a_slow_reader_is_never_held_in_memory() {
    let server = Server::start("app", &["--workers", "1"]);
    let worker = server.worker_pids()[0];
    let before = rss_kb(worker);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // HTTP/1.0: the body ends with the connection, which the worker closes once all of it left.
    stream
        .write_all(b"GET /bigstream?mb=200 HTTP/1.0\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = 0usize;
    let mut peak_kb = before;
    let mut chunk = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut reads = 0u64;
    loop {
        let n = stream.read(&mut chunk).expect("the stream keeps coming");
        if n == 0 {
            break;
        }
        received += n;
        reads += 1;
        if reads.is_multiple_of(16) {
            peak_kb = peak_kb.max(rss_kb(worker));
            std::thread::sleep(Duration::from_millis(5)); // a slow reader
        }
        assert!(started.elapsed() < Duration::from_secs(120), "bounded");
    }
    let head_len = b"HTTP/1.1 200 OK\r\n".len(); // at least; the exact head is checked below
    assert!(received > 200 << 20, "got {received} bytes");
    assert!(received - (200 << 20) > head_len && received - (200 << 20) < 512);
    let grew_kb = peak_kb.saturating_sub(before);
    eprintln!("200 MiB stream to a slow reader: worker RSS peak grew {grew_kb} kB");
    assert!(
        grew_kb < 8 * 1024,
        "the worker's RSS grew by {grew_kb} kB while streaming"
    );
    assert_eq!(server.get("/").text(), "hello");
}

/// A client that reads nothing of a response for --write-timeout is cut (logged), and the worker
/// serves on.
#[test]
fn a_reader_stalled_past_the_write_timeout_is_cut() {
    let server = Server::start("app", &["--workers", "1", "--write-timeout", "2"]);
    let mut stream = stalled_client(&server, "/big?mb=32");
    server
        .log
        .wait_for("event=write_timeout", Duration::from_secs(6))
        .expect("the stalled client was cut and logged");
    // What the kernel buffers already held still arrives; then the connection ends, short.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    assert!(
        data.len() < 32 << 20,
        "the stalled client got all {} bytes",
        data.len()
    );
    assert_eq!(server.get("/").text(), "hello");
    // Reading slowly but steadily is not stalling: 8 MiB read a little at a time, past 2 s.
    let mut slow = stalled_client(&server, "/big?mb=8");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = 0usize;
    let mut chunk = vec![0u8; 512 * 1024];
    let started = Instant::now();
    while received < 8 << 20 {
        let n = slow.read(&mut chunk).unwrap();
        assert!(n > 0, "cut after {received} bytes while reading");
        received += n;
        std::thread::sleep(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the read outlasted the timeout"
    );
}

/// Past 64 MiB of parked bytes a worker stops accepting connections (memory stays bounded) but
/// serves the connections it has; once the slow readers read, the waiting connection is served
/// and every stalled response arrives whole.
#[test]
fn past_the_unsent_budget_new_connections_wait_and_nothing_is_lost() {
    let server = Server::start("app", &["--workers", "1"]);
    assert_eq!(server.get("/big?mb=16").body.len(), 16 << 20);
    let mut existing = KeepAlive::new(server.addr);
    assert_eq!(existing.get("/").unwrap().text(), "hello");
    // 10 x 16 MiB unread: well past the budget once the kernel's buffers are full.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|_| stalled_client(&server, "/big?mb=16"))
        .collect();
    // The connection the worker already has is served on (its requests are read as they come).
    for _ in 0..20 {
        assert_eq!(existing.get("/").unwrap().text(), "hello");
    }
    // A new connection waits in the backlog meanwhile.
    let waiting = std::thread::spawn({
        let addr = server.addr;
        move || {
            let started = Instant::now();
            let response = get(addr, "/").expect("served in the end");
            (started.elapsed(), response.text())
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiting.is_finished(),
        "a new connection was accepted past the budget"
    );
    for (i, stream) in stalled.iter_mut().enumerate() {
        let (status, length) = read_whole(stream);
        assert_eq!(
            (status.as_str(), length),
            ("HTTP/1.1 200 OK", 16 << 20),
            "stalled client {i}"
        );
    }
    let (waited, text) = waiting.join().unwrap();
    assert_eq!(text, "hello");
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}"
    );
}

/// The app's write() callable (PEP 3333) cannot park: each call waits for the client to take the
/// bytes. A slow reader still gets every byte, in order.
#[test]
fn the_write_callable_waits_for_a_slow_reader_and_loses_nothing() {
    let server = Server::start("app", &["--workers", "1"]);
    let mut stream = stalled_client(&server, "/writecall?mb=8");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let body_at = loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} bytes", data.len());
        data.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(10)); // a slow reader
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n")
            && data.len() >= end + 4 + (8 << 20)
        {
            break end + 4;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    };
    let body = &data[body_at..];
    assert_eq!(body.len(), 8 << 20);
    for (i, piece) in body.chunks(65536).enumerate() {
        assert!(
            piece.iter().all(|&b| b == (i % 256) as u8),
            "piece {i} out of order"
        );
    }
}
