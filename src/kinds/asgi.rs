//! `hurricane serve --asgi app.asgi`: our embedded asyncio worker (python/hurricane/asgi/), one
//! loop per process and many connections each, on the same shared socket, master, probes and
//! drain as the WSGI worker.
//!
//! Why a kind of its own inside `serve`: users choose the interface of their app (`-w` or
//! `--asgi`), not a different command; everything `serve` means (workers, probes, limits,
//! keep-alive, graceful timeout, reload, static files' settings) keeps its meaning. What only the
//! ASGI worker needs is here: its options (WebSocket limits, the event loop), the check that the
//! WebSocket library (and uvloop when asked for) import in the workers' Python, and its `Kind`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::args::seconds;
use crate::config::Usage;
use crate::kind::{Embedded, Kind};
use crate::pool::WorkerId;
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

/// Our embedded ASGI worker on the shared socket: a pool of interchangeable workers, as `Http`.
pub struct Asgi(pub Embedded);

impl Kind for Asgi {
    fn name(&self) -> &'static str {
        "asgi"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        self.0.launch(worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        self.0.zygote(generation)
    }

    fn start(&mut self, _bell: Doorbell) -> Result<(), String> {
        self.0.debugger.claim_port()
    }
}
