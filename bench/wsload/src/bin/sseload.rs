//! Server-sent events load: `sseload HOST:PORT PATH STREAMS SECONDS` opens STREAMS connections,
//! each a GET of PATH, and reads their event streams for SECONDS on one thread (mio): a thread per
//! stream would charge the server a thread wake-up per event. Each event's data is the server's
//! Unix time when it sent it; the lag is our clock minus that (same machine, same clock). Prints
//! `streams=N events=E rate=R lag_p50_ms=A lag_p99_ms=B errors=X`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Stream {
    socket: TcpStream,
    buffer: Vec<u8>,
    /// The response head has been read (events follow).
    in_body: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: sseload HOST:PORT PATH STREAMS SECONDS");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("HOST:PORT");
    let path = &args[2];
    let streams: usize = args[3].parse().expect("STREAMS");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let mut poll = Poll::new().unwrap();
    let mut open: HashMap<Token, Stream> = HashMap::new();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    for i in 0..streams {
        let mut socket = TcpStream::connect(addr).expect("connect");
        poll.registry()
            .register(
                &mut socket,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        open.insert(
            Token(i),
            Stream {
                socket,
                buffer: Vec::new(),
                in_body: false,
            },
        );
    }
    let mut sent = vec![false; streams];
    let mut events = Events::with_capacity(1024);
    let mut lags: Vec<f64> = Vec::new();
    let mut errors = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    // Events are counted once every stream is open and answering, for SECONDS from then.
    let mut measuring_since: Option<Instant> = None;
    let mut answering = 0usize;
    let deadline_open = Instant::now() + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        if let Some(since) = measuring_since {
            if now.duration_since(since).as_secs_f64() >= seconds {
                break;
            }
        } else if now > deadline_open {
            eprintln!("only {answering} of {streams} streams answered in 30 s");
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.iter() {
            let token = event.token();
            let Some(stream) = open.get_mut(&token) else {
                continue;
            };
            if event.is_writable() && !sent[token.0] {
                match stream.socket.write(request.as_bytes()) {
                    Ok(_) => sent[token.0] = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => {}
                    Err(_) => {
                        errors += 1;
                        open.remove(&token);
                        continue;
                    }
                }
            }
            if !event.is_readable() {
                continue;
            }
            let mut closed = false;
            loop {
                match stream.socket.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => stream.buffer.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !stream.in_body {
                if let Some(end) = find(&stream.buffer, b"\r\n\r\n") {
                    if !stream.buffer.starts_with(b"HTTP/1.1 200") {
                        errors += 1;
                        closed = true;
                    }
                    stream.buffer.drain(..end + 4);
                    stream.in_body = true;
                    answering += 1;
                    if answering == streams {
                        measuring_since = Some(Instant::now());
                    }
                }
            }
            if stream.in_body {
                let now_s = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                while let Some(end) = find(&stream.buffer, b"\n\n") {
                    let event = String::from_utf8_lossy(&stream.buffer[..end]).into_owned();
                    stream.buffer.drain(..end + 2);
                    if measuring_since.is_none() {
                        continue;
                    }
                    if let Some(at) = event
                        .lines()
                        .find_map(|l| l.split_once("data: "))
                        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                    {
                        lags.push((now_s - at) * 1000.0);
                    }
                }
            }
            if closed {
                errors += 1;
                open.remove(&token);
            }
        }
    }
    let elapsed = measuring_since.map_or(0.0, |s| s.elapsed().as_secs_f64());
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "streams={answering} events={} rate={:.0} lag_p50_ms={:.2} lag_p99_ms={:.2} errors={errors}",
        lags.len(),
        lags.len() as f64 / elapsed.max(1e-9),
        pct(0.5),
        pct(0.99)
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
