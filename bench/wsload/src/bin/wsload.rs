//! WebSocket echo load: `wsload URL CONNECTIONS SECONDS SIZE` opens CONNECTIONS websockets, and on
//! each (its own thread) sends a SIZE-byte text message and waits for its echo, again and again,
//! for SECONDS. Prints `messages=N rate=R p50_us=A p99_us=B errors=E` (echoes per second, round-trip
//! latency). Loopback only.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Message, client};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: wsload ws://127.0.0.1:PORT/PATH CONNECTIONS SECONDS SIZE");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let connections: usize = args[2].parse().expect("CONNECTIONS");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let size: usize = args[4].parse().expect("SIZE");
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let payload = "x".repeat(size);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (url, host, stop, payload) =
                (url.clone(), host.clone(), stop.clone(), payload.clone());
            thread::spawn(move || echo(&url, &host, &stop, &payload))
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        match w.join().unwrap() {
            Ok(mut l) => latencies.append(&mut l),
            Err(e) => {
                eprintln!("connection failed: {e}");
                errors += 1;
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "messages={} rate={:.0} p50_us={} p99_us={} errors={errors}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}

/// One connection's echoes until `stop`: the round trip of each, in microseconds.
fn echo(url: &str, host: &str, stop: &AtomicBool, payload: &str) -> Result<Vec<u32>, String> {
    let stream = TcpStream::connect(host).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut socket, _) = client(url, stream).map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        socket
            .send(Message::text(payload))
            .map_err(|e| e.to_string())?;
        loop {
            match socket.read().map_err(|e| e.to_string())? {
                Message::Text(_) | Message::Binary(_) => break,
                _ => continue, // pings are answered by tungstenite
            }
        }
        latencies.push(sent.elapsed().as_micros() as u32);
    }
    let _ = socket.close(None);
    Ok(latencies)
}
