//! /metrics and --req-queue-len (issue 5, first part): what Prometheus scrapes, parsed by
//! prometheus_client's own OpenMetrics parser.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::util::*;

type Sample = (String, BTreeMap<String, String>, f64);

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample_value(samples, name, labels)
}

/// /metrics as Prometheus asks for it (Accept: OpenMetrics), parsed by prometheus_client.
fn scrape(server: &Server) -> Vec<Sample> {
    let response = request(
        server.probe.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    parse_openmetrics(&response.text())
}

/// Issue 11, point 3: series exist at 0 before the first request, and a scraper that does not ask
/// for OpenMetrics (an agent, curl) gets the classic format, which the classic parser reads.
#[test]
fn before_any_request_the_series_exist_at_zero_in_both_formats() {
    let server = Server::start("app", &["--workers", "1"]);
    let classic = server.probe("/metrics");
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = classic.text();
    assert!(!text.contains("# EOF"), "{text}");
    let samples = parse_classic(&text);
    for (method, status) in [("GET", "2xx"), ("POST", "5xx"), ("DELETE", "4xx")] {
        assert_eq!(
            value(
                &samples,
                "hurricane_requests_total",
                &[("method", method), ("status", status)]
            ),
            Some(0.0),
            "{method} {status}:\n{text}"
        );
    }
    for reason in [
        "bare_lf",
        "cl_te_conflict",
        "header_too_large",
        "head_timeout",
    ] {
        assert_eq!(
            value(
                &samples,
                "hurricane_requests_rejected_total",
                &[("reason", reason)]
            ),
            Some(0.0),
            "{reason}:\n{text}"
        );
    }
    assert_eq!(
        value(&samples, "hurricane_workers", &[("state", "ready")]),
        Some(1.0)
    );
    let om = scrape(&server);
    assert_eq!(
        value(
            &om,
            "hurricane_requests_total",
            &[("method", "GET"), ("status", "2xx")]
        ),
        Some(0.0)
    );
    // Counters keep their values in the classic format too.
    for _ in 0..3 {
        assert_eq!(server.get("/").status, 200);
    }
    let counted = wait_for(Duration::from_secs(5), || {
        let samples = parse_classic(&server.probe("/metrics").text());
        let n = value(
            &samples,
            "hurricane_requests_total",
            &[("method", "GET"), ("status", "2xx")],
        )?;
        (n == 3.0).then_some(n)
    });
    assert_eq!(counted, Some(3.0));
}

#[test]
fn metrics_parse_and_count_exactly_the_requests_sent() {
    let server = Server::start("app", &["--workers", "2"]);
    for _ in 0..5 {
        assert_eq!(server.get("/").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(server.get("/error").status, 500);
    }
    let post = request(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(post.status, 200);
    // Counters arrive with the workers' heartbeats (once a second), never per request.
    let samples = wait_for(Duration::from_secs(5), || {
        let samples = scrape(&server);
        let total: f64 = samples
            .iter()
            .filter(|s| s.0 == "hurricane_requests_total")
            .map(|s| s.2)
            .sum();
        (total == 8.0).then_some(samples)
    })
    .unwrap_or_else(|| {
        panic!(
            "requests_total never reached 8:\n{}",
            server.probe("/metrics").text()
        )
    });
    assert_eq!(
        value(
            &samples,
            "hurricane_requests_total",
            &[("method", "GET"), ("status", "2xx")]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &samples,
            "hurricane_requests_total",
            &[("method", "GET"), ("status", "5xx")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "hurricane_requests_total",
            &[("method", "POST"), ("status", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "hurricane_request_duration_seconds_count", &[]),
        Some(8.0)
    );
    assert_eq!(
        value(
            &samples,
            "hurricane_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(8.0)
    );
    assert_eq!(
        value(&samples, "hurricane_response_size_bytes_count", &[]),
        Some(8.0)
    );
    assert!(value(&samples, "hurricane_response_size_bytes_sum", &[]).unwrap() >= 5.0 * 5.0 + 3.0);
    assert_eq!(
        value(
            &samples,
            "hurricane_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "hurricane_workers", &[("state", "ready")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "hurricane_worker_restarts_total",
            &[("reason", "crash")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "hurricane_reloads_total",
            &[("result", "succeeded")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "hurricane_requests_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "hurricane_listen_queue_length", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "hurricane_listen_queue_max", &[]),
        Some(2048.0)
    );
    assert!(value(&samples, "hurricane_startup_duration_seconds", &[]).unwrap() > 0.0);
    assert!(value(&samples, "hurricane_master_resident_memory_bytes", &[]).unwrap() > 1e5);
    for slot in ["0", "1"] {
        assert!(
            value(
                &samples,
                "hurricane_worker_resident_memory_bytes",
                &[("slot", slot)]
            )
            .unwrap()
                > 1e6
        );
    }
    // A HUP shows up as a reload and two restarts.
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=succeeded", START_TIMEOUT)
        .unwrap();
    // Published with the master's next loop turn: poll briefly rather than race the log line.
    let samples = wait_for(Duration::from_secs(3), || {
        let samples = scrape(&server);
        (value(
            &samples,
            "hurricane_reloads_total",
            &[("result", "succeeded")],
        ) == Some(1.0))
        .then_some(samples)
    })
    .expect("reloads_total{result=succeeded} reaches 1");
    assert_eq!(
        value(
            &samples,
            "hurricane_worker_restarts_total",
            &[("reason", "reload")]
        ),
        Some(2.0)
    );
}

#[test]
fn the_listen_queue_is_measured_and_fails_ready_past_req_queue_len() {
    let dir = TempDir::new("queue");
    let server = Server::start(
        "app",
        &["--workers", "1", "--req-queue-len", "3", "--backlog", "64"],
    );
    assert_eq!(server.probe("/ready").status, 200);
    let (busy, waiting) = hold_the_worker(server.addr, &dir, 5, 5);
    // /ready first (cheap), then one parsed scrape while the worker is still busy.
    let ready = wait_for(Duration::from_secs(3), || {
        let r = server.probe("/ready");
        (r.status == 503).then_some(r)
    })
    .expect("/ready turns 503 once the queue reaches --req-queue-len");
    assert!(
        ready.text().contains("--req-queue-len is 3"),
        "{}",
        ready.text()
    );
    let samples = scrape(&server);
    assert!(value(&samples, "hurricane_listen_queue_length", &[]).unwrap() >= 3.0);
    assert_eq!(
        value(&samples, "hurricane_listen_queue_max", &[]),
        Some(64.0)
    );
    assert_eq!(busy.join().unwrap().unwrap().status, 200);
    for w in waiting {
        assert_eq!(
            w.join().unwrap().unwrap().status,
            200,
            "queued requests are served, not dropped"
        );
    }
    wait_for(Duration::from_secs(3), || {
        (server.probe("/ready").status == 200).then_some(())
    })
    .expect("ready again");
}

#[test]
fn no_metrics_and_a_custom_metrics_path() {
    let server = Server::start("app", &["--workers", "1", "--metrics", "/prom"]);
    assert_eq!(server.probe("/metrics").status, 404);
    assert!(server.probe("/prom").text().contains("hurricane_info"));
    let server = Server::start("app", &["--workers", "1", "--no-metrics"]);
    assert_eq!(server.probe("/metrics").status, 404);
    assert_eq!(server.probe("/ready").status, 200);
}
