//! The master's side of the worker protocol: what goes down the control pipe, what comes up the
//! status pipe.
//!
//! Why JSON lines: the messages are rare (boot, ready, one heartbeat a second, a failure), so
//! readability and binary safety (tracebacks, paths) matter more than bytes. Requests never produce
//! a message of their own; their counters ride on the heartbeat.

use std::time::Duration;

use serde_json::{Value, json};

mod bundle {
    include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
}

/// Stage one of the bootstrap, given to `python -c`: read stage two from the control pipe, run it.
/// Kept short because it is what `ps` shows for a worker.
pub const STAGE_ONE: &str = "import os;f=os.fdopen(5,'rb');exec(f.read(int(f.readline())))";

/// Exit code of a worker whose app failed to import; the same number in python/hurricane/worker.py.
pub const EXIT_BOOT_FAILED: i32 = 3;
/// Exit code of a --preload zygote that refuses to preload (the app started threads at import),
/// and so the master's at startup: a usage error. The same number in python/hurricane/zygote.py.
pub const EXIT_PRELOAD_REFUSED: i32 = 2;

/// Settings a worker needs, sent as the last line of the bootstrap.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub app: String,
    pub pythonpath: Vec<String>,
    pub keep_alive: Duration,
    pub graceful_timeout: Duration,
    pub heartbeat: Duration,
    /// Report the app's source directories when ready (for --autoreload).
    pub autoreload: bool,
    /// Size of the pool: a worker with siblings takes turns at accepting.
    pub workers: usize,
    /// Everything the HTTP server needs (limits, proxies, static mounts), passed through as given.
    pub http: Value,
    /// What the worker runs: the HTTP server, an AMQP handler, or the user's Celery command.
    pub mode: Mode,
    /// --preload: workers are forked from a zygote per generation (see `zygote`).
    pub preload: bool,
}

/// The worker's mode, with what that mode needs beyond the common settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Http,
    /// `consume`: the broker names a TopicHandler's constructor gets (queue, exchange, host, ...).
    Amqp(Value),
    /// `celery`: how to run the command (`module` or `path`, `argv`, `liveness_s`).
    Celery(Value),
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
    let line = json!({
        "app": config.app,
        "pythonpath": config.pythonpath,
        "keep_alive": config.keep_alive.as_secs_f64(),
        "graceful_timeout": config.graceful_timeout.as_secs_f64(),
        "heartbeat_ms": config.heartbeat.as_millis() as u64,
        "autoreload": config.autoreload,
        "http": config.http,
        "metrics": {
            "duration_buckets": crate::metrics::DURATION_BUCKETS_S,
            "size_buckets": crate::metrics::SIZE_BUCKETS_BYTES,
        },
        "workers": config.workers,
        "mode": match config.mode {
            Mode::Http => "http",
            Mode::Amqp(_) => "amqp",
            Mode::Celery(_) => "celery",
        },
        "amqp": match &config.mode {
            Mode::Amqp(amqp) => amqp.clone(),
            _ => Value::Null,
        },
        "command": match &config.mode {
            Mode::Celery(command) => command.clone(),
            _ => Value::Null,
        },
        "worker": worker,
        "generation": generation,
        "zygote": zygote,
    });
    out.extend_from_slice(line.to_string().as_bytes());
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
    /// Per-bucket counts along `metrics::DURATION_BUCKETS_S`, then +Inf.
    pub duration: Vec<u64>,
    pub duration_sum: f64,
    /// Per-bucket counts along `metrics::SIZE_BUCKETS_BYTES`, then +Inf.
    pub size: Vec<u64>,
    pub size_sum: f64,
}

fn counters(value: &Value) -> Option<Counters> {
    let counts = value.get("counts")?.as_object()?;
    let numbers = |key: &str| -> Vec<u64> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let requests = counts
        .iter()
        .filter_map(|(key, n)| {
            let (method, class) = key.split_once(' ')?;
            Some((method.to_string(), class.parse().ok()?, n.as_u64()?))
        })
        .collect();
    Some(Counters {
        requests,
        duration: numbers("dur"),
        duration_sum: value.get("dur_sum").and_then(Value::as_f64).unwrap_or(0.0),
        size: numbers("size"),
        size_sum: value.get("size_sum").and_then(Value::as_f64).unwrap_or(0.0),
    })
}

/// One probe's verdict from the app's own checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    pub ok: bool,
    /// "check error" or "database error" when not ok.
    pub error: String,
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckResult {
    pub alive: Verdict,
    pub ready: Verdict,
}

fn verdict(value: Option<&Value>) -> Verdict {
    let Some(value) = value else {
        return Verdict {
            ok: false,
            error: "check error".into(),
            messages: vec!["no answer".into()],
        };
    };
    Verdict {
        ok: value.get("ok").and_then(Value::as_bool).unwrap_or(false),
        error: value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("check error")
            .to_string(),
        messages: value
            .get("messages")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What a worker reported about its app failing to load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BootFailure {
    /// "import" (the app failed to load), "config" (hurricane's settings do not fit the app) or
    /// "preload" (a --preload zygote refuses: the app started threads at import).
    pub kind: String,
    pub app: String,
    pub error: String,
    pub cwd: String,
    pub python: String,
    pub sys_path: Vec<String>,
    pub traceback: String,
}

impl BootFailure {
    /// The master's exit code when this failure stops startup.
    pub fn exit_code(&self) -> i32 {
        if self.kind == "preload" {
            EXIT_PRELOAD_REFUSED
        } else {
            EXIT_BOOT_FAILED
        }
    }

    /// The one line a user reads first, saying what to do.
    pub fn summary(&self) -> String {
        if self.kind == "config" || self.kind == "preload" {
            return self.error.clone();
        }
        format!(
            "cannot import '{}': {} (cwd={}, python={}, sys.path={}); try --chdir or --pythonpath",
            self.app,
            self.error,
            self.cwd,
            self.python,
            self.sys_path.join(":"),
        )
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
#[derive(Debug, Clone, PartialEq)]
pub enum CeleryEvent {
    /// Celery's worker_ready (a worker), or the first scheduler tick (beat).
    Started { django: bool, beat: bool },
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
}

fn celery_event(value: &Value) -> Option<CeleryEvent> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let flag = |key: &str| value.get(key).and_then(Value::as_bool).unwrap_or(false);
    Some(match value.get("ev")?.as_str()? {
        "started" => CeleryEvent::Started {
            django: flag("django"),
            beat: flag("beat"),
        },
        "connected" => CeleryEvent::Connected,
        "lost" => CeleryEvent::Lost,
        "tick" => CeleryEvent::Tick,
        "stopping" => CeleryEvent::Stopping,
        "task_start" => CeleryEvent::TaskStart,
        "task" => CeleryEvent::Task {
            name: text("name")?,
            result: text("result")?,
            seconds: value.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        },
        "beat_tick" => CeleryEvent::BeatTick {
            at: value.get("at").and_then(Value::as_f64).unwrap_or(0.0),
        },
        "beat_sent" => CeleryEvent::BeatSent {
            entry: text("entry")?,
        },
        _ => return None,
    })
}

/// Parses one status-pipe line; None for a line this master does not understand (logged by the caller).
pub fn parse_message(line: &[u8]) -> Option<Message> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let strings = |key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    match value.get("t")?.as_str()? {
        "boot" => Some(Message::Boot),
        "ready" => Some(Message::Ready {
            boot_ms: value.get("boot_ms").and_then(Value::as_u64).unwrap_or(0),
            dirs: strings("dirs"),
            django: value
                .get("django")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            reject_reasons: strings("reject_reasons"),
            routing_keys: strings("routing_keys"),
        }),
        "forked" => Some(Message::Forked {
            worker: value.get("worker")?.as_u64()?,
            pid: match value.get("pid").and_then(Value::as_i64) {
                Some(pid) if pid > 1 => Ok(i32::try_from(pid).ok()?),
                _ => Err(value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no pid in the zygote's answer")
                    .to_string()),
            },
        }),
        "settle" => Some(Message::Settle {
            id: value.get("id")?.as_u64()?,
            ack: value.get("ack")?.as_bool()?,
            requeue: value
                .get("requeue")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ms: value.get("ms").and_then(Value::as_f64).unwrap_or(0.0),
        }),
        "check" => Some(Message::Checked(CheckResult {
            alive: verdict(value.get("alive")),
            ready: verdict(value.get("ready")),
        })),
        "hb" => Some(Message::Heartbeat {
            requests: value.get("requests").and_then(Value::as_u64).unwrap_or(0),
            inflight: value.get("inflight").and_then(Value::as_u64).unwrap_or(0),
            counters: counters(&value),
            rejects: value
                .get("rejects")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
            busy: value
                .get("busy_s")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|elapsed| Busy {
                    elapsed: Duration::from_secs_f64(elapsed),
                    method: text("method"),
                    path: text("path"),
                }),
        }),
        "fail" => Some(Message::Failed(BootFailure {
            kind: text("kind"),
            app: text("app"),
            error: text("error"),
            cwd: text("cwd"),
            python: text("python"),
            sys_path: strings("sys_path"),
            traceback: text("traceback"),
        })),
        "celery" => celery_event(&value).map(Message::Celery),
        _ => None,
    }
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

    #[test]
    fn bootstrap_frames_each_part_with_its_length() {
        let config = WorkerConfig {
            app: "a:b".into(),
            pythonpath: vec![],
            keep_alive: Duration::from_secs(5),
            graceful_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            autoreload: false,
            workers: 1,
            http: json!({}),
            mode: Mode::Http,
            preload: false,
        };
        let data = bootstrap(&config, 1, 0);
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
    }

    #[test]
    fn messages_parse() {
        assert_eq!(
            parse_message(br#"{"t":"boot","pid":3}"#),
            Some(Message::Boot)
        );
        assert_eq!(
            parse_message(br#"{"t":"ready","boot_ms":12,"dirs":["/app"]}"#),
            Some(Message::Ready {
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
            Some(Message::Heartbeat {
                requests: 4,
                busy: Some(busy),
                inflight: 0,
                counters: None,
                rejects: vec![],
            })
        );
        let hb = parse_message(br#"{"t":"hb","requests":0,"rejects":{"bare_lf":2}}"#);
        let Some(Message::Heartbeat { rejects, .. }) = hb else {
            panic!("{hb:?}")
        };
        assert_eq!(rejects, vec![("bare_lf".to_string(), 2)]);
        let hb = parse_message(
            br#"{"t":"hb","requests":3,"inflight":1,"counts":{"GET 2":2,"POST 5":1},"dur":[1,2,0],"dur_sum":0.5,"size":[3,0],"size_sum":42}"#,
        );
        let Some(Message::Heartbeat {
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
            Some(Message::Settle {
                id: 7,
                ack: false,
                requeue: true,
                ms: 1.5
            })
        );
        assert_eq!(
            parse_message(br#"{"t":"settle","ack":true}"#),
            None,
            "no id"
        );
        assert_eq!(
            parse_message(br#"{"t":"celery","ev":"task","name":"proj.add","result":"succeeded","seconds":0.5}"#),
            Some(Message::Celery(CeleryEvent::Task {
                name: "proj.add".into(),
                result: "succeeded".into(),
                seconds: 0.5
            }))
        );
        assert_eq!(parse_message(br#"{"t":"celery","ev":"nonsense"}"#), None);
        assert_eq!(parse_message(b"not json"), None);
        assert_eq!(parse_message(br#"{"t":"future"}"#), None);
    }

    #[test]
    fn a_zygotes_fork_answers_parse() {
        assert_eq!(
            parse_message(br#"{"t":"forked","worker":7,"pid":4242}"#),
            Some(Message::Forked {
                worker: 7,
                pid: Ok(4242)
            })
        );
        assert_eq!(
            parse_message(br#"{"t":"forked","worker":7,"error":"fork failed: ENOMEM"}"#),
            Some(Message::Forked {
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
