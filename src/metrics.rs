//! `/metrics`: the Prometheus (OpenMetrics text) view of the master and its workers.
//!
//! Why assembled here and not counted here: requests happen in the workers, which add them up
//! locally and send differences with each heartbeat (never a message per request); the master
//! keeps the totals (`Totals`) and the pool's state, and publishes a `Snapshot` after each event.
//! A scrape renders that snapshot with the prometheus-client crate, plus what is cheapest read at
//! scrape time from the kernel: the listen queue (TCP_INFO on the listening socket) and resident
//! memory (/proc). A scrape costs the workers nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::lifecycle::{Reason, StateName};
use crate::protocol::Counters;
pub use crate::protocol::{DURATION_BUCKETS_S, SIZE_BUCKETS_BYTES};
use crate::sys;

/// Methods and status classes whose `hurricane_requests_total` series exist from the start, at 0:
/// a fresh pod's `rate()` and alerts then see a series, not an absence (Prometheus' instrumentation
/// guidance). Other methods appear when first served.
const COMMON_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, for a scraper whose Accept asks for it (Prometheus does).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for everyone else (agents, curl), as the official
    /// client libraries answer.
    Classic,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.to_ascii_lowercase()
                    .contains("application/openmetrics-text") =>
            {
                Format::OpenMetrics
            }
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Request metrics summed over every worker that ever reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// (method, status class "2xx") -> requests.
    pub requests: BTreeMap<(String, String), u64>,
    pub duration: Vec<u64>,
    pub duration_sum: f64,
    pub size: Vec<u64>,
    pub size_sum: f64,
    /// Rejection name -> requests refused; every name a worker knows, from its ready message.
    pub rejected: BTreeMap<String, u64>,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            requests: BTreeMap::new(),
            duration: vec![0; DURATION_BUCKETS_S.len() + 1],
            duration_sum: 0.0,
            size: vec![0; SIZE_BUCKETS_BYTES.len() + 1],
            size_sum: 0.0,
            rejected: BTreeMap::new(),
        }
    }
}

impl Totals {
    pub fn add(&mut self, counters: &Counters) {
        for (method, class, n) in &counters.requests {
            *self
                .requests
                .entry((method.clone(), format!("{class}xx")))
                .or_default() += n;
        }
        for (total, n) in self.duration.iter_mut().zip(&counters.duration) {
            *total += n;
        }
        for (total, n) in self.size.iter_mut().zip(&counters.size) {
            *total += n;
        }
        self.duration_sum += counters.duration_sum;
        self.size_sum += counters.size_sum;
    }

    /// A worker's rejection names: each gets a series at 0.
    pub fn know_rejections(&mut self, reasons: &[String]) {
        for reason in reasons {
            self.rejected.entry(reason.clone()).or_insert(0);
        }
    }

    pub fn add_rejects(&mut self, rejects: &[(String, u64)]) {
        for (reason, n) in rejects {
            *self.rejected.entry(reason.clone()).or_default() += n;
        }
    }
}

/// Everything /metrics shows that the master knows; published after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub totals: Totals,
    pub workers_by_state: BTreeMap<StateName, usize>,
    /// The pool's size: --workers, as changed by TTIN/TTOU.
    pub workers_desired: usize,
    pub restarts: BTreeMap<Reason, u64>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    pub reloads_abandoned: u64,
    pub in_flight: u64,
    pub startup_seconds: Option<f64>,
    /// (slot, pid) of each live worker, for its resident memory.
    pub workers: Vec<(usize, i32)>,
    /// --preload: (generation, pid) of each zygote starting or ready, for its resident memory.
    pub zygotes: Vec<(u64, i32)>,
    /// --preload: zygotes started again after one died or hung; None without --preload.
    pub zygote_restarts: Option<u64>,
    /// Status-pipe lines that were not valid messages (logged one by one as `bad_message`).
    pub protocol_errors: u64,
    /// `consume`: the broker link and its messages (then no HTTP request metrics are shown).
    pub amqp: Option<AmqpSnapshot>,
    /// `celery`: tasks, the broker link, beat (then no HTTP request metrics are shown).
    pub celery: Option<CelerySnapshot>,
    /// `serve --asgi`: the workers' event loops and WebSockets (beside the HTTP request metrics).
    pub asgi: Option<AsgiSnapshot>,
}

/// What `/metrics` shows of ASGI workers beyond their requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AsgiSnapshot {
    /// The worst event-loop lag among the workers, as of their last heartbeats.
    pub loop_lag_seconds: f64,
    pub websockets_open: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Sessions closed, by close code (403: a handshake the app denied).
    pub closes: BTreeMap<u16, u64>,
}

/// What `/metrics` shows of `celery`, without task events and without a second process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CelerySnapshot {
    pub connected: bool,
    pub reconnects: u64,
    pub active: i64,
    /// (task, result) -> tasks.
    pub tasks: BTreeMap<(String, String), u64>,
    /// task -> (per-bucket counts along `DURATION_BUCKETS_S` then +Inf, sum of seconds).
    pub durations: BTreeMap<String, (Vec<u64>, f64)>,
    pub beat: bool,
    /// beat: entry -> tasks sent.
    pub beat_sent: BTreeMap<String, u64>,
    pub beat_last_tick: Option<f64>,
    /// queue -> messages waiting, as last read (bounded as task names are).
    pub queue_lengths: BTreeMap<String, u64>,
    /// Seconds since the queue lengths were read (None: never read).
    pub queue_stats_age: Option<f64>,
}

/// What `/metrics` shows of `consume` (the names FastStream and Dramatiq users know).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AmqpSnapshot {
    pub connected: bool,
    pub reconnects: u64,
    pub acked: u64,
    pub rejected: u64,
    pub requeued: u64,
    pub in_flight: u64,
    /// Handler durations, per bucket of `DURATION_BUCKETS_S`, then +Inf.
    pub duration: Vec<u64>,
    pub duration_sum: f64,
    /// Message body sizes, per bucket of `SIZE_BUCKETS_BYTES`, then +Inf.
    pub size: Vec<u64>,
    pub size_sum: f64,
    /// The queue consumed, and the broker's last count of it (None before the first reading).
    pub queue: String,
    pub queue_stats: Option<QueueStats>,
}

/// A queue as the broker last counted it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Ready messages (not delivered to any consumer yet).
    pub messages: u32,
    pub consumers: u32,
    /// How old the reading is: it grows while the broker is away.
    pub age_seconds: f64,
}

/// A histogram whose buckets were counted elsewhere (in the workers).
#[derive(Debug)]
struct Counted {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        let count = self.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The text of a scrape, in the format asked for.
pub fn render(snapshot: &Snapshot, listen_fd: RawFd, format: Format) -> String {
    let text = render_openmetrics(snapshot, listen_fd);
    match format {
        Format::OpenMetrics => text,
        Format::Classic => to_classic(&text),
    }
}

/// Rewrites OpenMetrics text as the classic format 0.0.4: counters and info metrics are named by
/// their samples (`x_total`, `x_info`; info becomes a gauge), and `# UNIT`/`# EOF` go. The sample
/// lines themselves are the same in both.
fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest); // written with its TYPE, which decides the name
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some(text) = help.take().and_then(|h| h.split_once(' ')).map(|(_, t)| t) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The OpenMetrics text for a scrape.
fn render_openmetrics(snapshot: &Snapshot, listen_fd: RawFd) -> String {
    let mut registry = Registry::default();
    registry.register(
        "hurricane",
        "hurricane's version",
        Info::new(labels(&[("version", env!("CARGO_PKG_VERSION"))])),
    );

    let workers = Family::<Labels, Gauge>::default();
    for state in StateName::ALL {
        let n = snapshot.workers_by_state.get(&state).copied().unwrap_or(0);
        workers
            .get_or_create(&labels(&[("state", state.as_str())]))
            .set(n as i64);
    }
    registry.register("hurricane_workers", "Worker processes by state", workers);
    registry.register(
        "hurricane_workers_desired",
        "Workers the pool should have (--workers, changed by TTIN/TTOU)",
        gauge(snapshot.workers_desired as i64),
    );

    let restarts = Family::<Labels, Counter>::default();
    for reason in Reason::ALL {
        let n = snapshot.restarts.get(&reason).copied().unwrap_or(0);
        restarts
            .get_or_create(&labels(&[("reason", reason.as_str())]))
            .inc_by(n);
    }
    registry.register(
        "hurricane_worker_restarts",
        "Workers replaced, by reason",
        restarts,
    );

    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&labels(&[("result", "succeeded")]))
        .inc_by(snapshot.reloads_succeeded);
    reloads
        .get_or_create(&labels(&[("result", "failed")]))
        .inc_by(snapshot.reloads_failed);
    reloads
        .get_or_create(&labels(&[("result", "abandoned")]))
        .inc_by(snapshot.reloads_abandoned);
    registry.register(
        "hurricane_reloads",
        "Rolling reloads (HUP, --autoreload), by result",
        reloads,
    );

    match (&snapshot.amqp, &snapshot.celery) {
        (Some(amqp), _) => register_amqp(&mut registry, amqp),
        (None, Some(celery)) => register_celery(&mut registry, celery),
        (None, None) => register_http(&mut registry, snapshot, listen_fd),
    }
    if let Some(asgi) = &snapshot.asgi {
        register_asgi(&mut registry, asgi);
    }
    let startup = Gauge::<f64, AtomicU64>::default();
    startup.set(snapshot.startup_seconds.unwrap_or(0.0));
    registry.register(
        "hurricane_startup_duration_seconds",
        "Time from start to the first full pool being ready (0 until then)",
        startup,
    );
    registry.register(
        "hurricane_master_resident_memory_bytes",
        "Resident memory of the master",
        gauge(sys::resident_bytes(std::process::id() as i32).unwrap_or(0) as i64),
    );
    let worker_memory = Family::<Labels, Gauge>::default();
    for (slot, pid) in &snapshot.workers {
        if let Some(bytes) = sys::resident_bytes(*pid) {
            worker_memory
                .get_or_create(&labels(&[("slot", &slot.to_string())]))
                .set(bytes as i64);
        }
    }
    registry.register(
        "hurricane_worker_resident_memory_bytes",
        "Resident memory of each worker, by slot",
        worker_memory,
    );
    let protocol_errors = Counter::<u64>::default();
    protocol_errors.inc_by(snapshot.protocol_errors);
    registry.register(
        "hurricane_protocol_errors",
        "Lines from workers' status pipes that were not valid messages (each is logged)",
        protocol_errors,
    );
    if let Some(restarts) = snapshot.zygote_restarts {
        let counter = Counter::<u64>::default();
        counter.inc_by(restarts);
        registry.register(
            "hurricane_zygote_restarts",
            "--preload zygotes started again after one died or hung",
            counter,
        );
    }
    if !snapshot.zygotes.is_empty() {
        let zygote_memory = Family::<Labels, Gauge>::default();
        for (generation, pid) in &snapshot.zygotes {
            if let Some(bytes) = sys::resident_bytes(*pid) {
                zygote_memory
                    .get_or_create(&labels(&[("generation", &generation.to_string())]))
                    .set(bytes as i64);
            }
        }
        registry.register(
            "hurricane_zygote_resident_memory_bytes",
            "Resident memory of each --preload zygote, by generation (its pages are shared with the workers forked from it)",
            zygote_memory,
        );
    }

    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::<i64>::default();
    g.set(v);
    g
}

/// `serve`: requests, rejections, their histograms and the accept queue.
fn register_asgi(registry: &mut Registry, asgi: &AsgiSnapshot) {
    let lag = Gauge::<f64, AtomicU64>::default();
    lag.set(asgi.loop_lag_seconds);
    registry.register(
        "hurricane_event_loop_lag_seconds",
        "The worst lag of the ASGI workers' event loops since their last heartbeat (a blocked loop: how long)",
        lag,
    );
    registry.register(
        "hurricane_websocket_connections",
        "WebSocket sessions open now",
        gauge(asgi.websockets_open as i64),
    );
    let messages = Family::<Labels, Counter>::default();
    messages
        .get_or_create(&labels(&[("direction", "received")]))
        .inc_by(asgi.messages_received);
    messages
        .get_or_create(&labels(&[("direction", "sent")]))
        .inc_by(asgi.messages_sent);
    registry.register(
        "hurricane_websocket_messages",
        "WebSocket messages, by direction",
        messages,
    );
    let closes = Family::<Labels, Counter>::default();
    for (code, n) in &asgi.closes {
        closes
            .get_or_create(&labels(&[("code", &code.to_string())]))
            .inc_by(*n);
    }
    registry.register(
        "hurricane_websocket_closes",
        "WebSocket sessions closed, by close code (403: a handshake the app denied)",
        closes,
    );
}

fn register_http(registry: &mut Registry, snapshot: &Snapshot, listen_fd: RawFd) {
    let requests = Family::<Labels, Counter>::default();
    for method in COMMON_METHODS {
        for status in STATUS_CLASSES {
            requests
                .get_or_create(&labels(&[("method", method), ("status", status)]))
                .inc_by(0);
        }
    }
    for ((method, status), n) in &snapshot.totals.requests {
        requests
            .get_or_create(&labels(&[("method", method), ("status", status)]))
            .inc_by(*n);
    }
    registry.register(
        "hurricane_requests",
        "HTTP requests served, by method and status class",
        requests,
    );

    let rejected = Family::<Labels, Counter>::default();
    for (reason, n) in &snapshot.totals.rejected {
        rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    registry.register(
        "hurricane_requests_rejected",
        "Requests refused before the app ran (malformed, hostile, too large, too slow), by reason",
        rejected,
    );

    registry.register(
        "hurricane_request_duration_seconds",
        "Time from the request's arrival to the end of its response",
        Counted {
            bounds: &DURATION_BUCKETS_S,
            counts: snapshot.totals.duration.clone(),
            sum: snapshot.totals.duration_sum,
        },
    );
    registry.register(
        "hurricane_response_size_bytes",
        "Response body sizes",
        Counted {
            bounds: &SIZE_BUCKETS_BYTES,
            counts: snapshot.totals.size.clone(),
            sum: snapshot.totals.size_sum,
        },
    );

    registry.register(
        "hurricane_requests_in_flight",
        "Requests being served now",
        gauge(snapshot.in_flight as i64),
    );
    let (queue, queue_max) = sys::listen_queue(listen_fd).unwrap_or((0, 0));
    registry.register(
        "hurricane_listen_queue_length",
        "Connections waiting in the kernel's accept queue (TCP_INFO)",
        gauge(i64::from(queue)),
    );
    registry.register(
        "hurricane_listen_queue_max",
        "The accept queue's capacity (backlog)",
        gauge(i64::from(queue_max)),
    );
}

/// Histograms counted elsewhere, one per label set.
#[derive(Debug)]
struct CountedFamily(Vec<(Labels, Counted)>);

impl EncodeMetric for CountedFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (labels, counted) in &self.0 {
            counted.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `celery`: tasks by name and result, their durations, the broker link and beat.
fn register_celery(registry: &mut Registry, celery: &CelerySnapshot) {
    let tasks = Family::<Labels, Counter>::default();
    for ((task, result), n) in &celery.tasks {
        tasks
            .get_or_create(&labels(&[("task", task), ("result", result)]))
            .inc_by(*n);
    }
    registry.register(
        "hurricane_celery_tasks",
        "Tasks ended, by task and result (succeeded, failed, retried, rejected, revoked)",
        tasks,
    );
    registry.register(
        "hurricane_celery_task_duration_seconds",
        "Time a task ran, by task",
        CountedFamily(
            celery
                .durations
                .iter()
                .map(|(task, (counts, sum))| {
                    (
                        labels(&[("task", task)]),
                        Counted {
                            bounds: &DURATION_BUCKETS_S,
                            counts: counts.clone(),
                            sum: *sum,
                        },
                    )
                })
                .collect(),
        ),
    );
    registry.register(
        "hurricane_celery_tasks_active",
        "Tasks running now",
        gauge(celery.active),
    );
    registry.register(
        "hurricane_celery_broker_connected",
        "1 while the consumer is connected to the broker, else 0",
        gauge(i64::from(celery.connected)),
    );
    let reconnects = Counter::<u64>::default();
    reconnects.inc_by(celery.reconnects);
    registry.register(
        "hurricane_celery_broker_reconnects",
        "Times the consumer connected again after losing the broker",
        reconnects,
    );
    if let Some(age) = celery.queue_stats_age {
        let lengths = Family::<Labels, Gauge>::default();
        for (queue, n) in &celery.queue_lengths {
            lengths
                .get_or_create(&labels(&[("queue", queue)]))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        registry.register(
            "hurricane_celery_queue_length",
            "Messages waiting in each queue the worker consumes, as its broker last counted them",
            lengths,
        );
        let stale = Gauge::<f64, AtomicU64>::default();
        stale.set(age);
        registry.register(
            "hurricane_celery_queue_stats_age_seconds",
            "Age of the last queue-length reading (it grows while the broker is away)",
            stale,
        );
    }
    if celery.beat {
        let sent = Family::<Labels, Counter>::default();
        for (entry, n) in &celery.beat_sent {
            sent.get_or_create(&labels(&[("entry", entry)])).inc_by(*n);
        }
        registry.register(
            "hurricane_celery_beat_sent",
            "Tasks beat sent, by schedule entry",
            sent,
        );
        let tick = Gauge::<f64, AtomicU64>::default();
        tick.set(celery.beat_last_tick.unwrap_or(0.0));
        registry.register(
            "hurricane_celery_beat_last_tick_timestamp_seconds",
            "Unix time of beat's last scheduler tick",
            tick,
        );
    }
}

/// `consume`: the broker link and its messages.
fn register_amqp(registry: &mut Registry, amqp: &AmqpSnapshot) {
    let messages = Family::<Labels, Counter>::default();
    for (result, n) in [
        ("acked", amqp.acked),
        ("rejected", amqp.rejected),
        ("requeued", amqp.requeued),
    ] {
        messages
            .get_or_create(&labels(&[("result", result)]))
            .inc_by(n);
    }
    registry.register(
        "hurricane_amqp_messages",
        "Messages settled on the broker, by result (requeued: a worker went away first, or shutdown)",
        messages,
    );
    registry.register(
        "hurricane_amqp_message_duration_seconds",
        "Time a handler took over one message",
        Counted {
            bounds: &DURATION_BUCKETS_S,
            counts: amqp.duration.clone(),
            sum: amqp.duration_sum,
        },
    );
    registry.register(
        "hurricane_amqp_message_size_bytes",
        "Message body sizes",
        Counted {
            bounds: &SIZE_BUCKETS_BYTES,
            counts: amqp.size.clone(),
            sum: amqp.size_sum,
        },
    );
    registry.register(
        "hurricane_amqp_messages_in_flight",
        "Deliveries received and not yet settled",
        gauge(amqp.in_flight as i64),
    );
    registry.register(
        "hurricane_amqp_connected",
        "1 while connected and consuming, else 0",
        gauge(i64::from(amqp.connected)),
    );
    let reconnects = Counter::<u64>::default();
    reconnects.inc_by(amqp.reconnects);
    registry.register(
        "hurricane_amqp_reconnects",
        "Times the consumer was set up again after losing the broker",
        reconnects,
    );
    if let Some(stats) = &amqp.queue_stats {
        let queue = labels(&[("queue", &amqp.queue)]);
        let family = |value: f64| {
            let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            family.get_or_create(&queue).set(value);
            family
        };
        registry.register(
            "hurricane_amqp_queue_messages",
            "Messages ready in the queue (not yet delivered to a consumer), as the broker last counted them",
            family(f64::from(stats.messages)),
        );
        registry.register(
            "hurricane_amqp_queue_consumers",
            "Consumers of the queue (every replica's, and others'), as the broker last counted them",
            family(f64::from(stats.consumers)),
        );
        registry.register(
            "hurricane_amqp_queue_stats_age_seconds",
            "Age of the last queue reading (it grows while the broker is away)",
            family(stats.age_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_heartbeat_deltas() {
        let mut totals = Totals::default();
        let mut duration = vec![0; DURATION_BUCKETS_S.len() + 1];
        duration[0] = 2;
        let delta = Counters {
            requests: vec![("GET".into(), 2, 2), ("POST".into(), 5, 1)],
            duration: duration.clone(),
            duration_sum: 0.004,
            size: vec![0; SIZE_BUCKETS_BYTES.len() + 1],
            size_sum: 10.0,
        };
        totals.add(&delta);
        totals.add(&delta);
        assert_eq!(totals.requests[&("GET".to_string(), "2xx".to_string())], 4);
        assert_eq!(totals.requests[&("POST".to_string(), "5xx".to_string())], 2);
        assert_eq!(totals.duration[0], 4);
        assert!((totals.size_sum - 20.0).abs() < 1e-9);
    }

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let mut snapshot = Snapshot {
            workers_by_state: BTreeMap::from([(StateName::Ready, 2)]),
            ..Snapshot::default()
        };
        snapshot
            .totals
            .requests
            .insert(("GET".into(), "2xx".into()), 7);
        snapshot.totals.duration[3] = 7;
        snapshot.totals.know_rejections(&["bare_lf".to_string()]);
        snapshot
            .totals
            .add_rejects(&[("cl_te_conflict".to_string(), 2)]);
        let text = render(&snapshot, -1, Format::OpenMetrics);
        for needle in [
            "# TYPE hurricane info",
            "hurricane_info{version=\"",
            "hurricane_workers{state=\"ready\"} 2",
            "hurricane_worker_restarts_total{reason=\"crash\"} 0",
            "hurricane_reloads_total{result=\"failed\"} 0",
            "hurricane_requests_total{method=\"GET\",status=\"2xx\"} 7",
            "hurricane_requests_total{method=\"POST\",status=\"5xx\"} 0",
            "hurricane_requests_rejected_total{reason=\"bare_lf\"} 0",
            "hurricane_requests_rejected_total{reason=\"cl_te_conflict\"} 2",
            "hurricane_request_duration_seconds_bucket{le=\"0.025\"} 0",
            "hurricane_request_duration_seconds_bucket{le=\"0.05\"} 7",
            "hurricane_request_duration_seconds_count 7",
            "hurricane_request_duration_seconds_bucket{le=\"+Inf\"} 7",
            "# HELP hurricane_response_size_bytes",
            "hurricane_requests_in_flight 0",
            "hurricane_listen_queue_length 0",
            "hurricane_listen_queue_max 0",
            "hurricane_startup_duration_seconds 0",
            "hurricane_master_resident_memory_bytes ",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn the_classic_format_names_families_by_their_samples_and_has_no_eof() {
        let text = render(&Snapshot::default(), -1, Format::Classic);
        for needle in [
            "# TYPE hurricane_info gauge",
            "hurricane_info{version=",
            "# HELP hurricane_requests_total HTTP requests served",
            "# TYPE hurricane_requests_total counter",
            "hurricane_requests_total{method=\"GET\",status=\"2xx\"} 0",
            "# TYPE hurricane_request_duration_seconds histogram",
            "# TYPE hurricane_workers gauge",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
