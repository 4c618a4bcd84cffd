//! `hurricane serve --asgi app.asgi`: our embedded asyncio worker (python/hurricane/asgi/), one
//! loop per process and many connections each, on the same shared socket, master, probes and
//! drain as the WSGI worker.
//!
//! Why a kind of its own inside `serve`: users choose the interface of their app (`-w` or
//! `--asgi`), not a different command; everything `serve` means (workers, probes, limits,
//! keep-alive, graceful timeout, reload, static files' settings) keeps its meaning. What only the
//! ASGI worker needs is here: its options (WebSocket limits, the event loop), the check that the
//! WebSocket library (and uvloop when asked for) import in the workers' Python, and its `Kind`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::args::{Usage, seconds};
use crate::kind::{Embedded, Kind};
use crate::metrics::{AsgiSnapshot, Snapshot};
use crate::pool::WorkerId;
use crate::protocol::Message;
use crate::spawn::Launch;
use crate::state::Doorbell;

/// The ASGI worker's own options, flattened into `serve`'s.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "asgi-options")]
pub struct Args {
    /// The ASGI 3 app to serve instead of a WSGI one: a module, optionally with the app's name
    /// (default `application`, as in Django's and Channels' `mysite.asgi`); needs `pip install
    /// 'hurricane[asgi]'` (websockets, uvloop) in the workers' Python
    #[arg(
        long,
        env = "HURRICANE_ASGI",
        value_name = "MODULE[:ATTR]",
        conflicts_with = "wsgi"
    )]
    pub asgi: Option<String>,

    /// With --asgi: the largest WebSocket message, in bytes; a bigger one closes the socket with 1009
    #[arg(long, env = "HURRICANE_WS_MAX_SIZE", value_name = "BYTES", default_value_t = 1 << 20)]
    pub ws_max_size: u64,

    /// With --asgi: ping a WebSocket that has been idle this many seconds (0: never)
    #[arg(long, env = "HURRICANE_WS_PING_INTERVAL", value_name = "S", default_value = "20", value_parser = seconds)]
    pub ws_ping_interval: std::time::Duration,

    /// With --asgi: close a WebSocket (1011) whose ping is unanswered this many seconds
    #[arg(long, env = "HURRICANE_WS_PING_TIMEOUT", value_name = "S", default_value = "20", value_parser = seconds)]
    pub ws_ping_timeout: std::time::Duration,

    /// With --asgi: the event loop: uvloop, asyncio, or auto (uvloop when it imports)
    #[arg(long = "loop", env = "HURRICANE_LOOP", value_name = "LOOP", default_value = "auto", value_parser = ["auto", "asyncio", "uvloop"])]
    pub event_loop: String,
}

/// Exit code of the import check when only uvloop is missing.
const NO_UVLOOP: i32 = 4;

impl Args {
    /// The worker's `asgi` settings, once its libraries are found in `python`.
    pub fn settings(&self, python: &Path) -> Result<Value, Usage> {
        let wants_uvloop = self.event_loop == "uvloop";
        let code = format!(
            "import sys\ntry:\n import websockets.server\nexcept ImportError:\n sys.exit(3)\n\
             try:\n import uvloop\nexcept ImportError:\n sys.exit({NO_UVLOOP})\n"
        );
        let status = Command::new(python)
            .args(["-c", &code])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .and_then(|s| s.code());
        let have_uvloop = match status {
            // Python itself cannot run: main says so.
            None | Some(0) => status.is_some(),
            Some(NO_UVLOOP) => false,
            Some(_) => {
                return Err(Usage(format!(
                    "--asgi needs the websockets library in the workers' Python ({}): pip install 'hurricane[asgi]' (or pip install websockets)",
                    python.display()
                )));
            }
        };
        if wants_uvloop && !have_uvloop && status.is_some() {
            return Err(Usage(format!(
                "--loop uvloop needs uvloop in the workers' Python ({}): pip install uvloop, or --loop auto",
                python.display()
            )));
        }
        let event_loop = match self.event_loop.as_str() {
            "auto" if have_uvloop => "uvloop",
            "auto" => "asyncio",
            other => other,
        };
        Ok(json!({
            "ws_max_size": self.ws_max_size,
            "ws_ping_interval": self.ws_ping_interval.as_secs_f64(),
            "ws_ping_timeout": self.ws_ping_timeout.as_secs_f64(),
            "loop": event_loop,
        }))
    }
}

/// Our embedded ASGI worker on the shared socket: a pool of interchangeable workers, as `Http`,
/// and what their heartbeats say of their event loops and WebSockets.
pub struct Asgi {
    pub embedded: Embedded,
    /// Per worker pid: (its loop's lag, its open WebSockets), as of its last heartbeat.
    workers: HashMap<i32, (f64, u64)>,
    /// Messages and closes of every worker so far.
    totals: AsgiSnapshot,
}

impl Asgi {
    pub fn new(embedded: Embedded) -> Asgi {
        Asgi {
            embedded,
            workers: HashMap::new(),
            totals: AsgiSnapshot::default(),
        }
    }
}

impl Kind for Asgi {
    fn name(&self) -> &'static str {
        "asgi"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        self.embedded.launch(worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        self.embedded.zygote(generation)
    }

    fn start(&mut self, _bell: Doorbell) -> Result<(), String> {
        // `--loop auto` picks uvloop only when it imports: say which one the workers run.
        let asgi = self.embedded.config.settings.get("asgi");
        let asgi = asgi.unwrap_or(&Value::Null);
        log::info!(
            "event=asgi_settings loop={} ws_max_size={} ws_ping_interval={} ws_ping_timeout={}",
            asgi["loop"].as_str().unwrap_or("asyncio"),
            asgi["ws_max_size"],
            asgi["ws_ping_interval"],
            asgi["ws_ping_timeout"]
        );
        self.embedded.debugger.claim_port()
    }

    fn message(&mut self, pid: i32, message: &Message, _now: Instant) -> bool {
        if let Message::Heartbeat {
            loop_lag,
            websockets,
            ..
        } = message
        {
            let entry = self.workers.entry(pid).or_default();
            if let Some(lag) = loop_lag {
                entry.0 = *lag;
            }
            if let Some(ws) = websockets {
                entry.1 = ws.open;
                self.totals.messages_received += ws.received;
                self.totals.messages_sent += ws.sent;
                for (code, n) in &ws.closes {
                    *self.totals.closes.entry(*code).or_default() += n;
                }
            }
        }
        false
    }

    fn worker_gone(&mut self, pid: i32) {
        self.workers.remove(&pid);
    }

    fn metrics(&self, snapshot: &mut Snapshot) {
        let values = self.workers.values();
        snapshot.asgi = Some(AsgiSnapshot {
            loop_lag_seconds: values.clone().map(|(lag, _)| *lag).fold(0.0, f64::max),
            websockets_open: values.map(|(_, open)| open).sum(),
            ..self.totals.clone()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::WebSockets;

    fn heartbeat(lag: f64, open: u64, received: u64, closes: &[(u16, u64)]) -> Message {
        Message::Heartbeat {
            requests: 0,
            busy: None,
            inflight: 0,
            counters: None,
            rejects: vec![],
            loop_lag: Some(lag),
            websockets: Some(WebSockets {
                open,
                received,
                sent: received,
                closes: closes.iter().copied().collect(),
            }),
        }
    }

    #[test]
    fn the_worst_lag_the_open_sockets_and_every_message_and_close_are_exported() {
        let mut asgi = Asgi::new(Embedded::for_tests("asgi", false));
        let now = Instant::now();
        asgi.message(100, &heartbeat(0.002, 3, 10, &[(1000, 1)]), now);
        asgi.message(101, &heartbeat(0.250, 2, 5, &[(1000, 2), (1009, 1)]), now);
        asgi.message(100, &heartbeat(0.001, 4, 1, &[]), now);
        let mut snapshot = Snapshot::default();
        asgi.metrics(&mut snapshot);
        let a = snapshot.asgi.unwrap();
        assert_eq!(a.loop_lag_seconds, 0.250);
        assert_eq!(a.websockets_open, 6, "the latest count of each worker");
        assert_eq!((a.messages_received, a.messages_sent), (16, 16));
        assert_eq!(a.closes.get(&1000), Some(&3));
        asgi.worker_gone(101);
        let mut snapshot = Snapshot::default();
        asgi.metrics(&mut snapshot);
        let a = snapshot.asgi.unwrap();
        assert_eq!((a.loop_lag_seconds, a.websockets_open), (0.001, 4));
        assert_eq!(a.messages_received, 16, "counters never go back");
    }
}
