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
use crate::sys;
use crate::worker::Counters;

/// Upper bounds of `hurricane_request_duration_seconds` (Prometheus' defaults), sent to workers.
pub const DURATION_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of `hurricane_response_size_bytes`, sent to workers.
pub const SIZE_BUCKETS_BYTES: [f64; 7] = [100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The Content-Type of what `render` returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request metrics summed over every worker that ever reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// (method, status class "2xx") -> requests.
    pub requests: BTreeMap<(String, String), u64>,
    pub duration: Vec<u64>,
    pub duration_sum: f64,
    pub size: Vec<u64>,
    pub size_sum: f64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            requests: BTreeMap::new(),
            duration: vec![0; DURATION_BUCKETS_S.len() + 1],
            duration_sum: 0.0,
            size: vec![0; SIZE_BUCKETS_BYTES.len() + 1],
            size_sum: 0.0,
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
}

/// Everything /metrics shows that the master knows; published after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub totals: Totals,
    pub workers_by_state: BTreeMap<StateName, usize>,
    pub restarts: BTreeMap<Reason, u64>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    pub in_flight: u64,
    pub startup_seconds: Option<f64>,
    /// (slot, pid) of each live worker, for its resident memory.
    pub workers: Vec<(usize, i32)>,
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

/// The OpenMetrics text for a scrape.
pub fn render(snapshot: &Snapshot, listen_fd: RawFd) -> String {
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
    registry.register(
        "hurricane_reloads",
        "Rolling reloads (HUP, --autoreload), by result",
        reloads,
    );

    let requests = Family::<Labels, Counter>::default();
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

    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
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

    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
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
        let text = render(&snapshot, -1);
        for needle in [
            "# TYPE hurricane info",
            "hurricane_info{version=\"",
            "hurricane_workers{state=\"ready\"} 2",
            "hurricane_worker_restarts_total{reason=\"crash\"} 0",
            "hurricane_reloads_total{result=\"failed\"} 0",
            "hurricane_requests_total{method=\"GET\",status=\"2xx\"} 7",
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
}
