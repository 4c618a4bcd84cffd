//! `hurricane consume` against the real RabbitMQ on 127.0.0.1:5672 (issue 12): deliveries reach
//! the handler byte for byte, each is handled exactly once, failures are rejected or requeued as
//! promised, the probes follow the broker, and TERM loses nothing. Messages are published with pika
//! from the test venv; every test uses its own queue and exchange and closes only its own
//! broker connection.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A consume test's names, handled-messages directory and cleanup.
pub struct Names {
    pub queue: String,
    pub exchange: String,
    dir: TempDir,
}

impl Names {
    pub fn new(test: &str) -> Names {
        rabbitmq();
        let id = format!("hurricane-test-{test}-{}", std::process::id());
        let names = Names {
            queue: format!("{id}.q"),
            exchange: format!("{id}.x"),
            dir: TempDir::new(&format!("consume-{test}")),
        };
        delete_queue_and_exchange(&names.queue, &names.exchange);
        names
    }

    /// Files the handlers wrote whose names start with `prefix`.
    fn handled(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// Body files (not the .meta ones) of messages whose id starts with `prefix`.
    fn bodies(&self, prefix: &str) -> Vec<String> {
        self.handled(prefix)
            .into_iter()
            .filter(|n| !n.contains(".meta."))
            .collect()
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        delete_queue_and_exchange(&self.queue, &self.exchange);
    }
}

fn consume_command(names: &Names, handler: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["consume", handler, "--queue", &names.queue])
        .args(["--exchange", &names.exchange])
        .args(["--bind", "127.0.0.1", "--probe-port", "0"]);
    if !args.contains(&"--amqp-url") {
        cmd.args(["--amqp-host", "127.0.0.1"]);
    }
    cmd.arg("--chdir")
        .arg(apps_dir())
        .arg("--python")
        .arg(test_venv_python())
        .args(args)
        .env("HANDLED_DIR", &names.dir.0)
        .env_remove("VIRTUAL_ENV")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_hurricane_env(&mut cmd);
    for (key, _) in std::env::vars() {
        if key.starts_with("AMQP_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Starts a consumer and waits until /startup says it consumes.
pub fn consumer(names: &Names, handler: &str, args: &[&str]) -> Server {
    let server = Server::spawn(&mut consume_command(names, handler, args));
    wait_consuming(&server);
    server
}

fn wait_consuming(server: &Server) {
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("not consuming; log:\n{}", server.log.text()));
}

/// A metric's value from /metrics (classic format), 0 when absent.
fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample_value(
        &parse_classic(&server.probe("/metrics").text()),
        name,
        labels,
    )
    .unwrap_or(0.0)
}

#[test]
fn a_matching_message_reaches_the_handler_byte_for_byte_and_others_do_not() {
    let names = Names::new("match");
    let server = consumer(&names, "handlers.Recorder", &["--workers", "2"]);
    assert_eq!(server.probe("/ready").status, 200);
    // Recorder binds "<queue>.#": this key matches, the other does not.
    let matching = format!("{}.orders.created", names.queue);
    publish(&names.exchange, "elsewhere.key", "nomatch", 1, "{}");
    publish(
        &names.exchange,
        &matching,
        "small",
        3,
        r#"{"tenant": "acme", "n": 7}"#,
    );
    // 16 MiB of every byte value, NULs and newlines included.
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let big_path = names.dir.path("big.input");
    std::fs::write(&big_path, &big).unwrap();
    amqp_py(
        "body = open(sys.argv[3], 'rb').read()\n\
ch.basic_publish(sys.argv[1], sys.argv[2], body, pika.BasicProperties(message_id='big', headers={'kind': 'blob'}, content_type='application/octet-stream'))",
        &[&names.exchange, &matching, &big_path],
    );
    wait_for(START_TIMEOUT, || {
        // The handler writes the body, then its .meta: wait for the last meta.
        let metas = names.handled("small").len() - names.bodies("small").len();
        (metas == 3 && !names.handled("big.meta.").is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "handled: {:?}; log:\n{}",
            names.handled(""),
            server.log.text()
        )
    });
    let body_file = names.bodies("big.")[0].clone();
    let got = std::fs::read(names.dir.0.join(&body_file)).unwrap();
    assert!(got == big, "16 MiB body differs ({} bytes came)", got.len());
    let meta_file = names.handled("big.meta.")[0].clone();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(names.dir.0.join(meta_file)).unwrap()).unwrap();
    assert_eq!(meta["message_id"], "big");
    assert_eq!(meta["headers"], serde_json::json!({"kind": "blob"}));
    assert_eq!(meta["content_type"], "application/octet-stream");
    assert_eq!(meta["routing_key"], matching.as_str());
    assert_eq!(meta["exchange"], names.exchange.as_str());
    let small_meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(names.dir.0.join(&names.handled("small0.meta.")[0])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        small_meta["headers"],
        serde_json::json!({"tenant": "acme", "n": 7})
    );
    assert!(
        names.handled("nomatch").is_empty(),
        "a non-matching key never arrives"
    );
    wait_for(Duration::from_secs(5), || {
        (metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "acked")],
        ) == 4.0)
            .then_some(())
    })
    .expect("4 acked in /metrics");
    assert_eq!(metric(&server, "hurricane_amqp_connected", &[]), 1.0);
    assert!(metric(&server, "hurricane_amqp_message_size_bytes_sum", &[]) >= (16 << 20) as f64);
    assert_eq!(queue_depth(&names.queue), 0);
}

#[test]
fn two_thousand_messages_over_four_workers_are_each_handled_exactly_once() {
    let names = Names::new("exactly-once");
    let server = consumer(&names, "handlers.Recorder", &["--workers", "4"]);
    let key = format!("{}.bulk", names.queue);
    publish(&names.exchange, &key, "bulk", 2000, "{}");
    let done = wait_for(Duration::from_secs(60), || {
        (metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "acked")],
        ) >= 2000.0)
            .then_some(())
    });
    assert!(done.is_some(), "log:\n{}", server.log.text());
    let bodies = names.bodies("bulk");
    assert_eq!(
        bodies.len(),
        2000,
        "each handled once (O_EXCL files per delivery)"
    );
    let mut per_message: BTreeMap<String, usize> = BTreeMap::new();
    let mut pids = std::collections::BTreeSet::new();
    for name in &bodies {
        let mut parts = name.split('.');
        *per_message
            .entry(parts.next().unwrap().to_string())
            .or_default() += 1;
        pids.insert(parts.next().unwrap().to_string());
    }
    assert_eq!(per_message.len(), 2000);
    assert!(
        per_message.values().all(|n| *n == 1),
        "a message handled twice"
    );
    assert!(pids.len() > 1, "the work was spread over workers: {pids:?}");
    assert_eq!(queue_depth(&names.queue), 0, "the queue ends empty");
    assert_eq!(
        metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "acked")]
        ),
        2000.0
    );
}

#[test]
fn a_raising_handler_rejects_without_redelivery_and_logs_the_traceback() {
    let names = Names::new("raise");
    let server = consumer(
        &names,
        "handlers.Raiser",
        &["--workers", "1", "--routing-key", "r"],
    );
    publish(&names.exchange, "r", "boom", 2, "{}");
    wait_for(Duration::from_secs(10), || {
        (metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "rejected")],
        ) == 2.0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("log:\n{}", server.log.text()));
    server
        .log
        .wait_for("ValueError: cannot handle b'boom0'", Duration::from_secs(5))
        .expect("the traceback is logged");
    assert!(server.log.text().contains("event=handler_error"));
    // Rejected without requeue: each was handled once, and the queue is empty.
    assert_eq!(names.handled("raised.boom0.").len(), 1);
    assert_eq!(names.handled("raised.boom1.").len(), 1);
    assert_eq!(queue_depth(&names.queue), 0);
}

#[test]
fn a_handler_that_forgets_to_ack_is_warned_about_and_rejected() {
    let names = Names::new("forget");
    // The broker as one URL this time (--amqp-url instead of --amqp-host and the rest).
    let server = consumer(
        &names,
        "handlers.Forgetful",
        &[
            "--workers",
            "1",
            "--routing-key",
            "f",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ],
    );
    let line = server
        .log
        .wait_for("event=amqp_consuming", Duration::ZERO)
        .unwrap();
    assert!(
        line.contains("broker=amqp://guest@127.0.0.1:5672//"),
        "{line}"
    );
    publish(&names.exchange, "f", "quiet", 1, "{}");
    server
        .log
        .wait_for("event=handler_no_ack", Duration::from_secs(10))
        .expect("a warning");
    wait_for(Duration::from_secs(5), || {
        (metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "rejected")],
        ) == 1.0)
            .then_some(())
    })
    .expect("rejected");
    assert_eq!(names.handled("forgot.quiet0.").len(), 1, "not redelivered");
    assert_eq!(queue_depth(&names.queue), 0);
}

#[test]
fn a_handler_killed_mid_message_has_it_handled_again_by_another_worker() {
    let names = Names::new("die");
    let server = consumer(&names, "handlers.Recorder", &["--workers", "2"]);
    let key = format!("{}.x", names.queue);
    // The first handling of "doomed0" ends its process (os._exit); the second records it.
    publish(&names.exchange, &key, "doomed", 1, r#"{"die": 1}"#);
    wait_for(Duration::from_secs(20), || {
        (names.handled("doomed0.meta.").len() == 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "handled again? {:?}; log:\n{}",
            names.handled(""),
            server.log.text()
        )
    });
    assert_eq!(names.handled("died.doomed0").len(), 1);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(names.dir.0.join(&names.handled("doomed0.meta.")[0])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta["redelivered"], true,
        "the broker says it is a redelivery"
    );
    assert!(server.log.text().contains("event=amqp_requeue"));
    assert!(
        metric(
            &server,
            "hurricane_amqp_messages_total",
            &[("result", "requeued")]
        ) >= 1.0
    );
    assert_eq!(queue_depth(&names.queue), 0);
}

#[test]
fn without_reconnect_a_lost_broker_ends_the_process_non_zero() {
    let names = Names::new("lost");
    let mut server = consumer(&names, "handlers.Recorder", &["--workers", "1"]);
    close_broker_connection_of(server.pid());
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits");
    assert_eq!(status.code(), Some(1), "log:\n{}", server.log.text());
    assert!(
        server
            .log
            .text()
            .contains("pass --reconnect to keep trying")
    );
}

#[test]
fn with_reconnect_consumption_resumes_and_no_message_is_lost() {
    let names = Names::new("reconnect");
    let server = consumer(
        &names,
        "handlers.Recorder",
        &["--workers", "2", "--reconnect"],
    );
    let key = format!("{}.r", names.queue);
    publish(&names.exchange, &key, "before", 50, "{}");
    wait_for(Duration::from_secs(20), || {
        (names.bodies("before").len() == 50).then_some(())
    })
    .expect("the first 50");
    close_broker_connection_of(server.pid());
    server
        .log
        .wait_for("event=amqp_lost", Duration::from_secs(10))
        .expect("the loss is noticed");
    // Published while the consumer may be away: the durable-enough queue keeps them.
    publish(&names.exchange, &key, "after", 50, "{}");
    wait_for(Duration::from_secs(30), || {
        (metric(&server, "hurricane_amqp_reconnects_total", &[]) >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no reconnect; log:\n{}", server.log.text()));
    wait_for(Duration::from_secs(30), || {
        let after = names.bodies("after");
        let ids: std::collections::BTreeSet<String> = after
            .iter()
            .map(|n| n.split('.').next().unwrap().to_string())
            .collect();
        (ids.len() == 50).then_some(())
    })
    .unwrap_or_else(|| panic!("lost messages; handled {}", names.bodies("after").len()));
    assert_eq!(server.probe("/ready").status, 200);
    assert_eq!(queue_depth(&names.queue), 0);
}

#[test]
fn against_no_broker_with_reconnect_the_probes_fail_and_it_keeps_trying() {
    let names = Names::new("nobroker");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port().to_string();
    drop(dead); // nothing listens there now
    let mut cmd = consume_command(
        &names,
        "handlers.Recorder",
        &["--workers", "1", "--reconnect", "--amqp-port", &port],
    );
    let mut server = Server::spawn(&mut cmd);
    server.wait_started();
    server
        .log
        .wait_for("event=amqp_lost", Duration::from_secs(20))
        .expect("the failed connection is reported");
    server
        .log
        .wait_for("event=amqp_reconnect_wait", Duration::from_secs(10))
        .expect("it tries again");
    assert_eq!(server.probe("/startup").status, 503);
    let ready = server.probe("/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(
        server.probe("/alive").status,
        200,
        "a restart cannot fix the broker"
    );
    assert_eq!(metric(&server, "hurricane_amqp_connected", &[]), 0.0);
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    assert!(
        !server.log.text().contains("guest:guest"),
        "the password is never logged"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn term_with_six_slow_messages_in_flight_exits_0_and_loses_none() {
    let names = Names::new("term");
    let mut server = consumer(&names, "handlers.Recorder", &["--workers", "2"]);
    let key = format!("{}.slow", names.queue);
    publish(&names.exchange, &key, "slow", 6, r#"{"sleep": "1.5"}"#);
    // Both workers are inside a 1.5 s handler; the other four wait in their pipes or the master.
    wait_for(Duration::from_secs(10), || {
        (names.handled("started.slow").len() >= 2).then_some(())
    })
    .expect("two handlers started");
    let termed = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log.text());
    assert!(termed.elapsed() < Duration::from_secs(10));
    let handled = names.bodies("slow").len() as u64;
    let queued = queue_depth(&names.queue);
    assert!(handled >= 2, "the running handlers finished: {handled}");
    assert_eq!(handled + queued, 6, "handled {handled} + queued {queued}");
}

#[test]
fn bad_consume_input_is_a_one_line_usage_error() {
    for (args, says) in [
        (
            vec![
                "consume",
                "handlers.Recorder",
                "--queue",
                "q",
                "--exchange",
                "x",
            ],
            "no broker host: pass --amqp-host HOST",
        ),
        (
            vec![
                "consume",
                "handlers.Recorder",
                "--queue",
                "q",
                "--exchange",
                "x",
                "--amqp-host",
                "h",
                "--amqp-port",
                "http",
            ],
            "'http' is not a port",
        ),
        (
            vec![
                "consume",
                "recorder",
                "--queue",
                "q",
                "--exchange",
                "x",
                "--amqp-host",
                "h",
            ],
            "is not a dotted path to a class",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("AMQP_HOST")
            .env_remove("AMQP_URL")
            .env_remove("DJANGO_SETTINGS_MODULE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.lines().next().unwrap_or_default().contains(says),
            "{args:?}: {err}"
        );
    }
}

/// The original's entry point: `python manage.py consume HANDLER`, broker settings from the Django
/// settings (AMQP_HOST) and from the environment (AMQP_PORT), the command line winning over both;
/// Django is set up before the handler is imported, so its models work (here with --preload).
#[test]
fn manage_py_consume_takes_the_broker_from_django_settings_and_the_environment() {
    let names = Names::new("django");
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/djproject");
    let mut cmd = Command::new(test_venv_python());
    cmd.arg(project.join("manage.py"))
        .args(["consume", "handlers.DjangoAware", "--queue", &names.queue])
        .args([
            "--exchange",
            &names.exchange,
            "--probe-port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        // Forked from a zygote that set Django up: the handler's models work in every worker.
        .args(["--workers", "2", "--preload", "--pythonpath"])
        .arg(apps_dir())
        .current_dir(&project)
        .env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_AMQP_HOST", "127.0.0.1")
        .env("AMQP_PORT", "5672")
        .env("HURRICANE_BINARY", BIN)
        .env("HANDLED_DIR", &names.dir.0)
        .env_remove("AMQP_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = Server::spawn(&mut cmd);
    wait_consuming(&server);
    let line = server
        .log
        .wait_for("event=amqp_consuming", Duration::ZERO)
        .unwrap();
    assert!(
        line.contains("broker=amqp://guest@127.0.0.1:5672/"),
        "{line}"
    );
    publish(
        &names.exchange,
        &format!("{}.d", names.queue),
        "dj",
        3,
        "{}",
    );
    wait_for(Duration::from_secs(20), || {
        (names.bodies("dj").len() == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("log:\n{}", server.log.text()));
}

#[test]
fn a_hup_reloads_the_handler_workers_and_loses_no_delivery() {
    hup_loses_no_delivery("hup", &["--workers", "2"]);
}

#[test]
fn with_preload_handlers_fork_from_a_zygote_and_a_hup_loses_no_delivery() {
    let server = hup_loses_no_delivery("hup-preload", &["--workers", "2", "--preload"]);
    let log = server.log.text();
    assert_eq!(
        log.matches("event=fork ").count(),
        4,
        "two workers forked per generation:\n{log}"
    );
    assert!(
        log.contains("event=zygote_ready zygote=2 gen=1")
            && log.contains("event=zygote_exit zygote=1 gen=0"),
        "the zygote replaced by the next generation's:\n{log}"
    );
}

/// 300 deliveries stream through while a HUP replaces every worker: each is handled exactly once.
fn hup_loses_no_delivery(test: &str, args: &[&str]) -> Server {
    let names = Names::new(test);
    let server = consumer(&names, "handlers.Recorder", args);
    let before = server.wait_workers(2, START_TIMEOUT);
    let key = format!("{}.h", names.queue);
    // 300 messages of 10 ms each: the reload happens while they stream through.
    publish(&names.exchange, &key, "hup", 300, r#"{"sleep": "0.01"}"#);
    wait_for(Duration::from_secs(10), || {
        (names.bodies("hup").len() >= 20).then_some(())
    })
    .expect("handling started");
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_for("event=reload result=succeeded", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no reload; log:\n{}", server.log.text()));
    let after = server.wait_workers(2, START_TIMEOUT);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every worker replaced: {before:?} -> {after:?}"
    );
    wait_for(Duration::from_secs(30), || {
        let ids: std::collections::BTreeSet<String> = names
            .bodies("hup")
            .iter()
            .map(|n| n.split('.').next().unwrap().to_string())
            .collect();
        (ids.len() == 300).then_some(())
    })
    .unwrap_or_else(|| panic!("lost deliveries: {} of 300", names.bodies("hup").len()));
    assert_eq!(names.bodies("hup").len(), 300, "none handled twice");
    assert_eq!(queue_depth(&names.queue), 0);
    server
}

#[test]
fn the_queue_backlog_and_consumers_are_read_from_the_broker_and_exported() {
    let names = Names::new("backlog");
    let server = consumer(
        &names,
        "handlers.Recorder",
        &[
            "--workers",
            "1",
            "--prefetch",
            "10",
            "--queue-stats-interval",
            "0.2",
            "--graceful-timeout",
            "1",
            "--reconnect",
        ],
    );
    let queue = [("queue", names.queue.as_str())];
    let key = format!("{}.held", names.queue);
    // Every handler is held: what the master holds (the prefetch) is in flight, the rest waits.
    publish(&names.exchange, &key, "held", 500, r#"{"sleep": "60"}"#);
    let seen = wait_for(Duration::from_secs(15), || {
        let text = server.probe("/metrics").text();
        let samples = parse_classic(&text);
        let ready = sample_value(&samples, "hurricane_amqp_queue_messages", &queue)?;
        let in_flight = sample_value(&samples, "hurricane_amqp_messages_in_flight", &[])?;
        (in_flight == 10.0 && ready == 490.0).then_some(samples)
    })
    .unwrap_or_else(|| {
        panic!(
            "the backlog never read 500 - 10 in flight; metrics:\n{}",
            server.probe("/metrics").text()
        )
    });
    assert_eq!(
        sample_value(&seen, "hurricane_amqp_queue_consumers", &queue),
        Some(1.0)
    );
    let age = sample_value(&seen, "hurricane_amqp_queue_stats_age_seconds", &queue).unwrap();
    assert!((0.0..2.0).contains(&age), "reading age {age}");
    assert_eq!(queue_depth(&names.queue), 490, "the broker agrees");
    // A queue deleted under the consumer (the broker cancels it): with --reconnect it is declared
    // again, and the readings go on with the new session.
    amqp_py("ch.queue_delete(sys.argv[1])", &[&names.queue]);
    wait_for(Duration::from_secs(15), || {
        let samples = parse_classic(&server.probe("/metrics").text());
        let ready = sample_value(&samples, "hurricane_amqp_queue_messages", &queue)?;
        let reconnects = sample_value(&samples, "hurricane_amqp_reconnects_total", &[])?;
        (ready == 0.0 && reconnects == 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no reading after the queue came back; log:\n{}",
            server.log.text()
        )
    });
}

#[test]
fn without_queue_stats_no_backlog_is_exported() {
    let names = Names::new("nostats");
    let server = consumer(
        &names,
        "handlers.Recorder",
        &["--workers", "1", "--queue-stats-interval", "0"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = server.probe("/metrics").text();
    assert!(!text.contains("hurricane_amqp_queue_messages"), "{text}");
}
