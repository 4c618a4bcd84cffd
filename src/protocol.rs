//! The master's side of the worker protocol: what goes down the control pipe, what comes up the
//! status pipe.
//!
//! Why JSON lines: the messages are rare (boot, ready, one heartbeat a second, a failure), so
//! readability and binary safety (tracebacks, paths) matter more than bytes. Requests never produce
//! a message of their own; their counters ride on the heartbeat.
//!
//! Why typed (serde, as h11 turns bytes into events): a line either parses into a `Message` whose
//! every field has the type the master relies on, or it is a `ProtocolError` that the master logs
//! and counts (`hurricane_protocol_errors_total`). A field that is missing or of the wrong type is
//! never read as a zero. Optional fields are optional on purpose (a kind sends only what it has),
//! and unknown fields are ignored, so a newer worker can say more to an older master.
//!
//! The histogram bounds live here, not in `metrics`: they are part of what master and worker agree
//! on (the worker counts into them), and `metrics` renders what this module parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

mod bundle {
    include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
}

/// Stage one of the bootstrap, given to `python -c`: read stage two from the control pipe, run it.
/// Kept short because it is what `ps` shows for a worker.
pub const STAGE_ONE: &str = "import os;f=os.fdopen(5,'rb');exec(f.read(int(f.readline())))";

/// Exit code of a worker whose app failed to import; the same number in python/hurricane/supervision.py.
pub const EXIT_BOOT_FAILED: i32 = 3;
/// Exit code of a --preload zygote that refuses to preload (the app started threads at import),
/// and so the master's at startup: a usage error. The same number in python/hurricane/zygote.py.
pub const EXIT_PRELOAD_REFUSED: i32 = 2;

/// Upper bounds of `hurricane_request_duration_seconds` (Prometheus' defaults), sent to workers.
pub const DURATION_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of `hurricane_response_size_bytes`, sent to workers.
pub const SIZE_BUCKETS_BYTES: [f64; 7] = [100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// Settings a worker needs, sent as the last line of the bootstrap.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub app: String,
    pub pythonpath: Vec<String>,
    pub graceful_timeout: Duration,
    pub heartbeat: Duration,
    /// Report the app's source directories when ready (for --autoreload).
    pub autoreload: bool,
    /// Size of the pool: a worker with siblings takes turns at accepting.
    pub workers: usize,
    /// --log-file (absolute) and --log-format, for the worker's own lines.
    pub log_file: Option<std::path::PathBuf>,
    pub log_json: bool,
    /// The Python side's name for the kind (`python/hurricane/worker.py`'s table of kinds).
    pub kind: &'static str,
    /// What only this kind needs, merged into the config line as given (e.g. `http`, `amqp`).
    pub settings: Map<String, Value>,
    /// --preload: workers are forked from a zygote per generation (see `zygote`).
    pub preload: bool,
}

/// The bytes written to a new worker's control pipe: stage two, the embedded package, the config.
pub fn bootstrap(config: &WorkerConfig, worker: u64, generation: u64) -> Vec<u8> {
    bootstrap_as(config, worker, generation, false)
}

/// The bytes written to a --preload zygote's socket: the same, with `zygote` set; it imports the
/// app and then forks workers (python/hurricane/zygote.py), which get their ids in the fork request.
pub fn zygote_bootstrap(config: &WorkerConfig, generation: u64) -> Vec<u8> {
    bootstrap_as(config, 0, generation, true)
}

fn bootstrap_as(config: &WorkerConfig, worker: u64, generation: u64, zygote: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * 1024);
    out.extend_from_slice(format!("{}\n", bundle::BOOT.len()).as_bytes());
    out.extend_from_slice(bundle::BOOT.as_bytes());
    out.extend_from_slice(format!("{}\n", bundle::MODULES.len()).as_bytes());
    for (name, is_pkg, source) in bundle::MODULES {
        out.extend_from_slice(
            format!("{name} {} {}\n", u8::from(*is_pkg), source.len()).as_bytes(),
        );
        out.extend_from_slice(source.as_bytes());
    }
    let mut line = config.settings.clone();
    let common = json!({
        "kind": config.kind,
        "app": config.app,
        "pythonpath": config.pythonpath,
        "graceful_timeout": config.graceful_timeout.as_secs_f64(),
        "heartbeat_ms": config.heartbeat.as_millis() as u64,
        "autoreload": config.autoreload,
        "log": {"file": config.log_file, "json": config.log_json},
        "metrics": {
            "duration_buckets": DURATION_BUCKETS_S,
            "size_buckets": SIZE_BUCKETS_BYTES,
        },
        "workers": config.workers,
        "worker": worker,
        "generation": generation,
        "zygote": zygote,
    });
    if let Value::Object(common) = common {
        line.extend(common);
    }
    out.extend_from_slice(Value::Object(line).to_string().as_bytes());
    out.push(b'\n');
    out
}

/// A request the worker is in the middle of, as its last heartbeat said.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    /// How long the request had been running, by the worker's own monotonic clock.
    pub elapsed: Duration,
    pub method: String,
    pub path: String,
}

/// Request metrics a worker adds up between two heartbeats (deltas, never totals).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counters {
    /// (method, status class digit, requests).
    pub requests: Vec<(String, u8, u64)>,
    /// Per-bucket counts along `DURATION_BUCKETS_S`, then +Inf.
    pub duration: Vec<u64>,
    pub duration_sum: f64,
    /// Per-bucket counts along `SIZE_BUCKETS_BYTES`, then +Inf.
    pub size: Vec<u64>,
    pub size_sum: f64,
}

/// An ASGI worker's WebSocket counters, as one heartbeat reports them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebSockets {
    /// Sessions open now (a gauge, not a delta).
    pub open: u64,
    /// Messages received since the last heartbeat.
    pub received: u64,
    /// Messages sent since the last heartbeat.
    pub sent: u64,
    /// Sessions closed since the last heartbeat, by close code (a denied handshake is 403).
    pub closes: BTreeMap<u16, u64>,
}

/// `WebSockets` on the wire: JSON object keys are strings, the close codes among them.
#[derive(Deserialize)]
struct WireWebSockets {
    open: u64,
    #[serde(rename = "in")]
    received: u64,
    #[serde(rename = "out")]
    sent: u64,
    #[serde(default)]
    closes: BTreeMap<String, u64>,
}

impl TryFrom<WireWebSockets> for WebSockets {
    type Error = ProtocolError;

    fn try_from(ws: WireWebSockets) -> Result<WebSockets, ProtocolError> {
        let mut closes = BTreeMap::new();
        for (code, n) in ws.closes {
            let code = code
                .parse::<u16>()
                .ok()
                .filter(|c| (1000..=4999).contains(c) || *c == 403)
                .ok_or_else(|| {
                    ProtocolError::Invalid(format!("websocket close code {code:?} is not one"))
                })?;
            closes.insert(code, n);
        }
        Ok(WebSockets {
            open: ws.open,
            received: ws.received,
            sent: ws.sent,
            closes,
        })
    }
}

/// One probe's verdict from the app's own checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    /// "check error" or "database error" when not ok.
    #[serde(default = "check_error")]
    pub error: String,
    #[serde(default)]
    pub messages: Vec<String>,
}

fn check_error() -> String {
    "check error".into()
}

impl Default for Verdict {
    /// No answer yet: not ok.
    fn default() -> Verdict {
        Verdict {
            ok: false,
            error: check_error(),
            messages: vec!["no answer".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct CheckResult {
    pub alive: Verdict,
    pub ready: Verdict,
}

/// Why an app did not load, as the worker classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The app failed to import (its traceback is the user's to read).
    Import,
    /// hurricane's settings do not fit the app (a static root that does not exist, say).
    Config,
    /// A --preload zygote refuses: the app started threads at import.
    Preload,
}

/// What a worker reported about its app failing to load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BootFailure {
    pub kind: FailureKind,
    pub app: String,
    pub error: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub sys_path: Vec<String>,
    #[serde(default)]
    pub traceback: String,
}

impl BootFailure {
    /// A failure that is hurricane's own finding (no import traceback): `error` is the whole story.
    pub fn config(app: &str, error: String) -> BootFailure {
        BootFailure {
            kind: FailureKind::Config,
            app: app.to_string(),
            error,
            cwd: String::new(),
            python: String::new(),
            sys_path: Vec::new(),
            traceback: String::new(),
        }
    }

    /// The master's exit code when this failure stops startup.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            FailureKind::Preload => EXIT_PRELOAD_REFUSED,
            FailureKind::Import | FailureKind::Config => EXIT_BOOT_FAILED,
        }
    }

    /// The one line a user reads first, saying what to do.
    pub fn summary(&self) -> String {
        match self.kind {
            FailureKind::Config | FailureKind::Preload => self.error.clone(),
            FailureKind::Import => format!(
                "cannot import '{}': {} (cwd={}, python={}, sys.path={}); try --chdir or --pythonpath",
                self.app,
                self.error,
                self.cwd,
                self.python,
                self.sys_path.join(":"),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The interpreter is up and importing the app.
    Boot,
    Ready {
        boot_ms: u64,
        /// Directories holding the app's own modules (for --autoreload).
        dirs: Vec<String>,
        /// The app is a Django project: the probes may ask for its checks.
        django: bool,
        /// The names of the worker's request rejections, so /metrics shows each at 0 from the start.
        reject_reasons: Vec<String>,
        /// An AMQP handler's get_routing_keys(queue).
        routing_keys: Vec<String>,
    },
    /// An AMQP handler settled a delivery (consume).
    Settle {
        id: u64,
        ack: bool,
        requeue: bool,
        /// How long the handler took, in milliseconds.
        ms: f64,
    },
    /// The answer to a `check` request: Django's checks for /alive and /ready.
    Checked(CheckResult),
    Heartbeat {
        requests: u64,
        busy: Option<Busy>,
        /// Requests running right now (more than one with --threads).
        inflight: u64,
        /// What the requests since the last heartbeat added to the metrics.
        counters: Option<Counters>,
        /// Requests refused since the last heartbeat, by rejection name.
        rejects: Vec<(String, u64)>,
        /// An asyncio (ASGI) worker: its event loop's worst lag since the last heartbeat, seconds.
        loop_lag: Option<f64>,
        /// An ASGI worker's WebSockets: open now, and what happened since the last heartbeat.
        websockets: Option<WebSockets>,
    },
    Failed(BootFailure),
    /// What the hooks inside a supervised Celery process report.
    Celery(CeleryEvent),
    /// A --preload zygote's answer to a fork request: the new worker's pid, or why there is none.
    Forked {
        worker: u64,
        pid: Result<i32, String>,
    },
}

/// A report from inside `hurricane celery`'s process (python/hurricane/celery_hooks.py).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum CeleryEvent {
    /// Celery's worker_ready (a worker), or the first scheduler tick (beat).
    Started {
        #[serde(default)]
        django: bool,
        #[serde(default)]
        beat: bool,
    },
    /// The consumer is (again) connected and its loop runs.
    Connected,
    /// The consumer lost the broker and is reconnecting.
    Lost,
    /// One tick of the consumer's event loop.
    Tick,
    /// Celery is shutting down.
    Stopping,
    /// A task began in a pool process.
    TaskStart,
    /// A task ended: succeeded, failed, retried, rejected or revoked.
    Task {
        name: String,
        result: String,
        seconds: f64,
    },
    /// One beat scheduler tick, at this Unix time.
    BeatTick { at: f64 },
    /// Beat sent a schedule entry's task.
    BeatSent { entry: String },
    /// The length of each queue the worker consumes, as its broker counts it now.
    Queues { lengths: BTreeMap<String, u64> },
}

/// A status-pipe line that is not a message this master understands.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolError {
    /// Not a JSON object at all (a stray print to fd 4, a cut line).
    NotJson(String),
    /// A JSON object, but its `t` names no message, or a field is missing or mistyped.
    Invalid(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::NotJson(e) => write!(f, "not a JSON message: {e}"),
            ProtocolError::Invalid(e) => write!(f, "not a valid message: {e}"),
        }
    }
}

/// The status pipe's lines as they are on the wire; `Message` is what the master works with.
#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Wire {
    Boot,
    Ready {
        boot_ms: u64,
        #[serde(default)]
        dirs: Vec<String>,
        #[serde(default)]
        django: bool,
        #[serde(default)]
        reject_reasons: Vec<String>,
        #[serde(default)]
        routing_keys: Vec<String>,
    },
    Forked {
        worker: u64,
        pid: Option<i32>,
        error: Option<String>,
    },
    Settle {
        id: u64,
        ack: bool,
        #[serde(default)]
        requeue: bool,
        #[serde(default)]
        ms: f64,
    },
    Check(CheckResult),
    #[serde(rename = "hb")]
    Heartbeat(WireHeartbeat),
    #[serde(rename = "fail")]
    Failed(BootFailure),
    Celery(CeleryEvent),
}

#[derive(Deserialize)]
struct WireHeartbeat {
    requests: u64,
    #[serde(default)]
    inflight: u64,
    /// "METHOD CLASS" -> requests; present with the histograms when requests were counted.
    counts: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    dur: Vec<u64>,
    #[serde(default)]
    dur_sum: f64,
    #[serde(default)]
    size: Vec<u64>,
    #[serde(default)]
    size_sum: f64,
    #[serde(default)]
    rejects: BTreeMap<String, u64>,
    busy_s: Option<f64>,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    lag_s: Option<f64>,
    ws: Option<WireWebSockets>,
}

impl TryFrom<WireHeartbeat> for Message {
    type Error = ProtocolError;

    fn try_from(hb: WireHeartbeat) -> Result<Message, ProtocolError> {
        let counters = match hb.counts {
            None => None,
            Some(counts) => {
                let mut requests = Vec::with_capacity(counts.len());
                for (key, n) in counts {
                    let class = key
                        .split_once(' ')
                        .and_then(|(method, class)| Some((method, class.parse::<u8>().ok()?)))
                        .filter(|(method, class)| !method.is_empty() && (1..=5).contains(class));
                    let Some((method, class)) = class else {
                        return Err(ProtocolError::Invalid(format!(
                            "heartbeat count {key:?} is not \"METHOD CLASS\""
                        )));
                    };
                    requests.push((method.to_string(), class, n));
                }
                Some(Counters {
                    requests,
                    duration: hb.dur,
                    duration_sum: hb.dur_sum,
                    size: hb.size,
                    size_sum: hb.size_sum,
                })
            }
        };
        let busy = match hb.busy_s {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some(Busy {
                elapsed: Duration::from_secs_f64(s),
                method: hb.method,
                path: hb.path,
            }),
            Some(s) => {
                return Err(ProtocolError::Invalid(format!(
                    "heartbeat busy_s {s} is not a duration"
                )));
            }
        };
        if let Some(lag) = hb.lag_s.filter(|l| !l.is_finite() || *l < 0.0) {
            return Err(ProtocolError::Invalid(format!(
                "heartbeat lag_s {lag} is not a duration"
            )));
        }
        Ok(Message::Heartbeat {
            requests: hb.requests,
            busy,
            inflight: hb.inflight,
            counters,
            rejects: hb.rejects.into_iter().collect(),
            loop_lag: hb.lag_s,
            websockets: hb.ws.map(WebSockets::try_from).transpose()?,
        })
    }
}

/// Parses one status-pipe line.
pub fn parse_message(line: &[u8]) -> Result<Message, ProtocolError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ProtocolError::NotJson("not an object".into()));
    }
    let wire = Wire::deserialize(value).map_err(|e| ProtocolError::Invalid(e.to_string()))?;
    Ok(match wire {
        Wire::Boot => Message::Boot,
        Wire::Ready {
            boot_ms,
            dirs,
            django,
            reject_reasons,
            routing_keys,
        } => Message::Ready {
            boot_ms,
            dirs,
            django,
            reject_reasons,
            routing_keys,
        },
        Wire::Forked { worker, pid, error } => Message::Forked {
            worker,
            pid: match (pid, error) {
                (Some(pid), None) if pid > 1 => Ok(pid),
                (_, Some(error)) => Err(error),
                (pid, None) => {
                    return Err(ProtocolError::Invalid(format!(
                        "fork answer for worker {worker} has no valid pid ({pid:?}) and no error"
                    )));
                }
            },
        },
        Wire::Settle {
            id,
            ack,
            requeue,
            ms,
        } => Message::Settle {
            id,
            ack,
            requeue,
            ms,
        },
        Wire::Check(result) => Message::Checked(result),
        Wire::Heartbeat(hb) => Message::try_from(hb)?,
        Wire::Failed(failure) => Message::Failed(failure),
        Wire::Celery(event) => Message::Celery(event),
    })
}

/// Splits complete lines off the front of a pipe buffer, leaving a partial line in place.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let rest = buf.split_off(end + 1);
        let mut line = std::mem::replace(buf, rest);
        line.pop();
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_holds_the_package() {
        let names: Vec<_> = bundle::MODULES.iter().map(|m| m.0).collect();
        assert!(names.contains(&"hurricane"));
        assert!(names.contains(&"hurricane.worker"));
        assert!(names.contains(&"hurricane.http.server"));
    }

    fn config() -> WorkerConfig {
        let mut settings = Map::new();
        settings.insert("http".into(), json!({"threads": 2}));
        WorkerConfig {
            app: "a:b".into(),
            pythonpath: vec![],
            graceful_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            autoreload: false,
            workers: 1,
            log_file: None,
            log_json: false,
            kind: "http",
            settings,
            preload: false,
        }
    }

    #[test]
    fn bootstrap_frames_each_part_with_its_length_and_ends_with_the_config_line() {
        let data = bootstrap(&config(), 1, 4);
        let newline = data.iter().position(|&b| b == b'\n').unwrap();
        let boot_len: usize = std::str::from_utf8(&data[..newline])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            &data[newline + 1..newline + 1 + boot_len],
            bundle::BOOT.as_bytes()
        );
        let last = data[..data.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        let cfg: Value = serde_json::from_slice(&data[last + 1..]).unwrap();
        assert_eq!(cfg["app"], "a:b");
        assert_eq!(cfg["kind"], "http");
        assert_eq!(
            cfg["http"]["threads"], 2,
            "the kind's settings are merged in"
        );
        assert_eq!(
            (cfg["worker"].as_u64(), cfg["generation"].as_u64()),
            (Some(1), Some(4))
        );
        assert_eq!(cfg["zygote"], false);
        let zygote = zygote_bootstrap(&config(), 4);
        let last = zygote[..zygote.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        let cfg: Value = serde_json::from_slice(&zygote[last + 1..]).unwrap();
        assert_eq!(cfg["zygote"], true);
    }

    #[test]
    fn good_messages_parse_into_their_types() {
        assert_eq!(parse_message(br#"{"t":"boot","pid":3}"#), Ok(Message::Boot));
        assert_eq!(
            parse_message(br#"{"t":"ready","boot_ms":12,"dirs":["/app"]}"#),
            Ok(Message::Ready {
                boot_ms: 12,
                dirs: vec!["/app".into()],
                django: false,
                reject_reasons: vec![],
                routing_keys: vec![],
            })
        );
        let hb =
            parse_message(br#"{"t":"hb","requests":4,"busy_s":1.5,"method":"GET","path":"/x"}"#);
        let busy = Busy {
            elapsed: Duration::from_millis(1500),
            method: "GET".into(),
            path: "/x".into(),
        };
        assert_eq!(
            hb,
            Ok(Message::Heartbeat {
                requests: 4,
                busy: Some(busy),
                inflight: 0,
                counters: None,
                rejects: vec![],
                loop_lag: None,
                websockets: None,
            })
        );
        let hb = parse_message(br#"{"t":"hb","requests":0,"rejects":{"bare_lf":2}}"#);
        let Ok(Message::Heartbeat { rejects, .. }) = hb else {
            panic!("{hb:?}")
        };
        assert_eq!(rejects, vec![("bare_lf".to_string(), 2)]);
        let hb = parse_message(
            br#"{"t":"hb","requests":3,"inflight":1,"counts":{"GET 2":2,"POST 5":1},"dur":[1,2,0],"dur_sum":0.5,"size":[3,0],"size_sum":42}"#,
        );
        let Ok(Message::Heartbeat {
            counters: Some(c),
            inflight: 1,
            ..
        }) = hb
        else {
            panic!("{hb:?}")
        };
        assert!(
            c.requests.contains(&("GET".into(), 2, 2))
                && c.requests.contains(&("POST".into(), 5, 1))
        );
        assert_eq!(
            (c.duration, c.duration_sum, c.size, c.size_sum),
            (vec![1, 2, 0], 0.5, vec![3, 0], 42.0)
        );
        assert_eq!(
            parse_message(br#"{"t":"settle","id":7,"ack":false,"requeue":true,"ms":1.5}"#),
            Ok(Message::Settle {
                id: 7,
                ack: false,
                requeue: true,
                ms: 1.5
            })
        );
        assert_eq!(
            parse_message(br#"{"t":"celery","ev":"task","name":"proj.add","result":"succeeded","seconds":0.5}"#),
            Ok(Message::Celery(CeleryEvent::Task {
                name: "proj.add".into(),
                result: "succeeded".into(),
                seconds: 0.5
            }))
        );
        assert_eq!(
            parse_message(br#"{"t":"celery","ev":"started","django":true}"#),
            Ok(Message::Celery(CeleryEvent::Started {
                django: true,
                beat: false
            }))
        );
        assert_eq!(
            parse_message(br#"{"t":"check","alive":{"ok":true},"ready":{"ok":false,"error":"database error","messages":["down"]}}"#),
            Ok(Message::Checked(CheckResult {
                alive: Verdict {
                    ok: true,
                    error: "check error".into(),
                    messages: vec![]
                },
                ready: Verdict {
                    ok: false,
                    error: "database error".into(),
                    messages: vec!["down".into()]
                },
            }))
        );
    }

    #[test]
    fn an_asgi_workers_heartbeat_carries_its_loop_lag_and_websockets() {
        let hb = parse_message(
            br#"{"t":"hb","requests":0,"lag_s":0.012,"ws":{"open":3,"in":10,"out":9,"closes":{"1000":2,"1009":1}}}"#,
        );
        let Ok(Message::Heartbeat {
            loop_lag: Some(lag),
            websockets: Some(ws),
            ..
        }) = hb
        else {
            panic!("{hb:?}")
        };
        assert_eq!(lag, 0.012);
        assert_eq!((ws.open, ws.received, ws.sent), (3, 10, 9));
        assert_eq!(ws.closes.get(&1009), Some(&1));
    }

    #[test]
    fn boot_failures_parse_with_their_kind_as_an_enum() {
        let line = br#"{"t":"fail","kind":"import","app":"x.wsgi","error":"ModuleNotFoundError: No module named 'x'","cwd":"/app","python":"/venv/bin/python","sys_path":["/app"],"traceback":"Traceback..."}"#;
        let Ok(Message::Failed(failure)) = parse_message(line) else {
            panic!()
        };
        assert_eq!(failure.kind, FailureKind::Import);
        assert_eq!(failure.exit_code(), EXIT_BOOT_FAILED);
        assert!(
            failure
                .summary()
                .starts_with("cannot import 'x.wsgi': ModuleNotFoundError")
        );
        let line = br#"{"t":"fail","kind":"preload","app":"x","error":"--preload: the app started threads"}"#;
        let Ok(Message::Failed(failure)) = parse_message(line) else {
            panic!()
        };
        assert_eq!(
            (failure.exit_code(), failure.summary().as_str()),
            (EXIT_PRELOAD_REFUSED, "--preload: the app started threads")
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_zeros() {
        let invalid = |line: &[u8]| match parse_message(line) {
            Err(ProtocolError::Invalid(e)) => e,
            other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(line)),
        };
        // A field missing or of the wrong type is no longer read as 0.
        invalid(br#"{"t":"settle","ack":true}"#);
        invalid(br#"{"t":"settle","id":"7","ack":true}"#);
        invalid(br#"{"t":"ready"}"#);
        invalid(br#"{"t":"ready","boot_ms":-5}"#);
        invalid(br#"{"t":"hb"}"#);
        invalid(br#"{"t":"hb","requests":"many"}"#);
        invalid(br#"{"t":"hb","requests":1,"busy_s":-1}"#);
        invalid(br#"{"t":"hb","requests":1,"counts":{"GET":1}}"#);
        invalid(br#"{"t":"hb","requests":1,"counts":{"GET 9":1}}"#);
        invalid(br#"{"t":"hb","requests":1,"counts":{"GET 2":-1}}"#);
        invalid(br#"{"t":"hb","requests":1,"lag_s":-0.5}"#);
        invalid(br#"{"t":"hb","requests":1,"ws":{"open":1,"in":2}}"#);
        invalid(br#"{"t":"hb","requests":1,"ws":{"open":1,"in":2,"out":3,"closes":{"abc":1}}}"#);
        invalid(br#"{"t":"fail","kind":"meltdown","app":"x","error":"e"}"#);
        invalid(br#"{"t":"forked","worker":7}"#);
        invalid(br#"{"t":"forked","worker":7,"pid":1}"#);
        invalid(br#"{"t":"celery","ev":"nonsense"}"#);
        invalid(br#"{"t":"celery","ev":"task","name":"x"}"#);
        invalid(br#"{"t":"check","alive":{"ok":true}}"#);
        invalid(br#"{"t":"future"}"#);
        invalid(br#"{"no":"type"}"#);
        for line in [&b"not json"[..], b"[1,2]", b"", b"{\"t\":\"boot\""] {
            assert!(
                matches!(parse_message(line), Err(ProtocolError::NotJson(_))),
                "{line:?}"
            );
        }
        let error = parse_message(br#"{"t":"settle","ack":true}"#).unwrap_err();
        assert!(error.to_string().contains("missing field `id`"), "{error}");
    }

    #[test]
    fn a_zygotes_fork_answers_parse() {
        assert_eq!(
            parse_message(br#"{"t":"forked","worker":7,"pid":4242}"#),
            Ok(Message::Forked {
                worker: 7,
                pid: Ok(4242)
            })
        );
        assert_eq!(
            parse_message(br#"{"t":"forked","worker":7,"error":"fork failed: ENOMEM"}"#),
            Ok(Message::Forked {
                worker: 7,
                pid: Err("fork failed: ENOMEM".into())
            })
        );
    }

    #[test]
    fn lines_are_split_and_partials_kept() {
        let mut buf = b"one\ntwo\nthr".to_vec();
        assert_eq!(take_lines(&mut buf), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(buf, b"thr");
    }
}
