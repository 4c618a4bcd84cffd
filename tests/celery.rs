//! `hurricane celery -- COMMAND` with real Celery from PyPI against the real RabbitMQ and Redis on
//! this machine (issue 14): probes that follow Celery's own readiness, its event loop and its
//! broker; task metrics from the prefork pool's children; warm shutdown on TERM with Celery's exit
//! code; beat; a Django project as the Celery app. Each test uses its own queue (and Redis database).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The test venv's `celery` script: its shebang names the venv's python.
fn celery_bin() -> String {
    test_venv_python()
        .with_file_name("celery")
        .display()
        .to_string()
}

pub struct Run {
    pub queue: String,
    pub broker: String,
    out: TempDir,
}

impl Run {
    pub fn new(test: &str, broker: &str) -> Run {
        rabbitmq();
        let queue = format!("hurricane-celery-{test}-{}", std::process::id());
        let broker = match broker {
            "redis" => {
                redis();
                format!("redis://127.0.0.1:6379/{}", 1 + std::process::id() % 15)
            }
            _ => "amqp://guest:guest@127.0.0.1:5672//".to_string(),
        };
        Run {
            queue,
            broker,
            out: TempDir::new(&format!("celery-{test}")),
        }
    }

    pub fn command(&self, dir: &Path, hurricane: &[&str], celery: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["celery", "--bind", "127.0.0.1", "--probe-port", "0"])
            .args(hurricane)
            .arg("--")
            .arg(celery_bin())
            .args(celery)
            // Workers of parallel tests share the broker: each needs its own node name.
            .args(if celery.contains(&"worker") {
                vec!["-n".to_string(), format!("{}@%h", self.queue)]
            } else {
                Vec::new()
            })
            .current_dir(dir)
            .env("CELERY_TEST_QUEUE", &self.queue)
            .env("CELERY_TEST_BROKER", &self.broker)
            .env("CELERY_TEST_OUT", &self.out.0)
            .env_remove("VIRTUAL_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        without_hurricane_env(&mut cmd);
        cmd
    }

    /// Sends `celeryapp.<task>(*args)` with `.delay()` from the test venv.
    pub fn send(&self, dir: &Path, module: &str, call: &str) {
        let out = Command::new(test_venv_python())
            .args(["-c", &format!("import {module}; {module}.{call}")])
            .current_dir(dir)
            .env("CELERY_TEST_QUEUE", &self.queue)
            .env("CELERY_TEST_BROKER", &self.broker)
            .env("DJANGO_SETTINGS_MODULE", "djsite.settings")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Redis on 127.0.0.1:6379, started if it is down.
fn redis() {
    let reachable = || {
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:6379".parse().unwrap(),
            Duration::from_secs(1),
        )
        .is_ok()
    };
    if !reachable() {
        let _ = Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--save", ""])
            .status();
    }
    assert!(
        wait_for(Duration::from_secs(20), || reachable().then_some(())).is_some(),
        "Redis is not reachable on 127.0.0.1:6379 and redis-server did not start"
    );
}

fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample_value(
        &parse_classic(&server.probe("/metrics").text()),
        name,
        labels,
    )
}

pub fn wait_metric(server: &Server, name: &str, labels: &[(&str, &str)], at_least: f64) {
    wait_for(Duration::from_secs(20), || {
        metric(server, name, labels)
            .filter(|v| *v >= at_least)
            .map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}{labels:?} never reached {at_least}:\n{}\nlog:\n{}",
            server.probe("/metrics").text(),
            server.log.text()
        )
    });
}

fn worker_counts_tasks_from_its_prefork_children(broker: &str) {
    let run = Run::new(&format!("prefork-{broker}"), broker);
    let server = Server::spawn(&mut run.command(
        &apps_dir(),
        &[],
        &["-A", "celeryapp", "worker", "-c", "2", "-l", "info"],
    ));
    // Until Celery's worker_ready, /startup says so.
    let first = server.probe("/startup");
    if first.status != 200 {
        assert_eq!(first.status, 503);
        assert!(first.text().contains("starting"), "{}", first.text());
    }
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never started; log:\n{}", server.log.text()));
    assert_eq!(server.probe("/ready").status, 200);
    assert_eq!(server.probe("/alive").status, 200);
    assert_eq!(
        metric(&server, "hurricane_celery_broker_connected", &[]),
        Some(1.0)
    );
    let apps = apps_dir();
    run.send(&apps, "celeryapp", "add.delay(2, 3)");
    run.send(&apps, "celeryapp", "fail.delay()");
    run.send(&apps, "celeryapp", "retry_once.delay()");
    let ok = [("task", "celeryapp.add"), ("result", "succeeded")];
    wait_metric(&server, "hurricane_celery_tasks_total", &ok, 1.0);
    let failed = [("task", "celeryapp.fail"), ("result", "failed")];
    wait_metric(&server, "hurricane_celery_tasks_total", &failed, 1.0);
    let retried = [("task", "celeryapp.retry_once"), ("result", "retried")];
    wait_metric(&server, "hurricane_celery_tasks_total", &retried, 1.0);
    assert_eq!(
        metric(
            &server,
            "hurricane_celery_task_duration_seconds_count",
            &[("task", "celeryapp.add")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "hurricane_celery_tasks_total",
            &[("task", "celeryapp.add"), ("result", "revoked")]
        ),
        Some(0.0),
        "every result of a known task is exported"
    );
}

#[test]
fn a_prefork_worker_on_rabbitmq_gets_real_probes_and_task_metrics() {
    worker_counts_tasks_from_its_prefork_children("amqp");
}

#[test]
fn a_prefork_worker_on_redis_gets_real_probes_and_task_metrics() {
    worker_counts_tasks_from_its_prefork_children("redis");
}

/// More distinct task names than the bound, run by two prefork children: each child sees only
/// part of them, and the series stay bounded all the same (200 names and `other`), every task counted.
#[test]
fn task_names_past_the_bound_are_counted_as_other() {
    let run = Run::new("many-names", "amqp");
    let server = Server::spawn(&mut run.command(
        &apps_dir(),
        &[],
        &["-A", "celeryapp", "worker", "-c", "2", "-l", "info"],
    ));
    wait_for(START_TIMEOUT, || {
        (server.probe("/ready").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never ready; log:\n{}", server.log.text()));
    run.send(&apps_dir(), "celeryapp", "send_many()");
    let succeeded = |samples: &[(String, std::collections::BTreeMap<String, String>, f64)]| {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == "hurricane_celery_tasks_total"
                    && l.get("result").map(String::as_str) == Some("succeeded")
            })
            .map(|(_, _, v)| *v)
            .sum::<f64>()
    };
    let samples = wait_for(Duration::from_secs(60), || {
        let samples = parse_classic(&server.probe("/metrics").text());
        (succeeded(&samples) >= 205.0).then_some(samples)
    })
    .unwrap_or_else(|| {
        panic!(
            "205 tasks never all counted:\n{}\nlog:\n{}",
            server.probe("/metrics").text(),
            server.log.text()
        )
    });
    assert_eq!(succeeded(&samples), 205.0);
    let names: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|(n, _, _)| n == "hurricane_celery_tasks_total")
        .filter_map(|(_, l, _)| l.get("task").map(String::as_str))
        .collect();
    assert_eq!(names.len(), 201, "200 names and other: {names:?}");
    assert!(names.contains("other"), "{names:?}");
}

#[test]
fn a_wedged_event_loop_fails_alive_and_recovers() {
    let run = Run::new("wedged", "amqp");
    let server = Server::spawn(&mut run.command(
        &apps_dir(),
        &["--liveness-timeout", "2"],
        &["-A", "celeryapp", "worker", "-P", "solo"],
    ));
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never started; log:\n{}", server.log.text()));
    assert_eq!(server.probe("/alive").status, 200);
    // The solo pool runs the task on the event loop: 6 s without a tick.
    run.send(&apps_dir(), "celeryapp", "slow.delay(6, 'wedge')");
    let dead = wait_for(Duration::from_secs(10), || {
        let alive = server.probe("/alive");
        (alive.status == 500).then(|| alive.text())
    })
    .unwrap_or_else(|| panic!("/alive never failed; log:\n{}", server.log.text()));
    assert!(dead.contains("has not ticked"), "{dead}");
    wait_for(Duration::from_secs(15), || {
        (server.probe("/alive").status == 200).then_some(())
    })
    .expect("alive again once the loop ticks");
}

#[test]
fn with_no_broker_startup_and_ready_fail_but_alive_holds_and_it_keeps_running() {
    let mut run = Run::new("nobroker", "amqp");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    run.broker = format!("amqp://guest:guest@{}//", dead.local_addr().unwrap());
    drop(dead);
    let mut server = Server::spawn(&mut run.command(
        &apps_dir(),
        &["--liveness-timeout", "1"],
        &["-A", "celeryapp", "worker", "-c", "1"],
    ));
    server.wait_started();
    let since = Instant::now();
    // Well past the liveness timeout: still trying, still alive.
    while since.elapsed() < Duration::from_secs(3) {
        assert_eq!(server.probe("/startup").status, 503);
        assert_eq!(server.probe("/ready").status, 503);
        assert_eq!(
            server.probe("/alive").status,
            200,
            "a broker outage is not a wedge"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn term_lets_the_running_task_finish_and_exits_with_celerys_code_leaving_nothing() {
    let run = Run::new("term", "amqp");
    let mut server = Server::spawn(&mut run.command(
        &apps_dir(),
        &[],
        &["-A", "celeryapp", "worker", "-c", "2"],
    ));
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never started; log:\n{}", server.log.text()));
    run.send(&apps_dir(), "celeryapp", "slow.delay(2, 'term')");
    wait_metric(&server, "hurricane_celery_tasks_active", &[], 1.0);
    // Celery's processes: its main process (our worker) and its prefork children.
    let main = server.worker_pids();
    let mut family = main.clone();
    for pid in &main {
        family.extend(children(*pid));
    }
    assert!(family.len() >= 3, "main and 2 pool children: {family:?}");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(
        status.code(),
        Some(0),
        "Celery's warm shutdown exits 0; log:\n{}",
        server.log.text()
    );
    assert!(
        run.out.0.join("done.term").exists(),
        "the running task finished first"
    );
    assert!(
        wait_for(Duration::from_secs(5), || family
            .iter()
            .all(|p| has_exited(*p))
            .then_some(()))
        .is_some(),
        "left behind: {:?}",
        family
            .iter()
            .filter(|p| !has_exited(**p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn beat_starts_at_its_first_tick_and_counts_what_it_sends() {
    let run = Run::new("beat", "amqp");
    let schedule = run.out.path("beat-schedule");
    let server = Server::spawn(&mut run.command(
        &apps_dir(),
        &["--liveness-timeout", "30"],
        &["-A", "celeryapp", "beat", "-s", &schedule, "-l", "info"],
    ));
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("beat never ticked; log:\n{}", server.log.text()));
    assert_eq!(server.probe("/alive").status, 200);
    wait_metric(
        &server,
        "hurricane_celery_beat_sent_total",
        &[("entry", "every-second")],
        2.0,
    );
    let last = metric(
        &server,
        "hurricane_celery_beat_last_tick_timestamp_seconds",
        &[],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 30.0, "last tick {last}, now {now}");
}

#[test]
fn a_django_project_as_the_celery_app() {
    let run = Run::new("django", "amqp");
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/djproject");
    let db = run.out.path("db.sqlite3");
    let mut cmd = run.command(&project, &[], &["-A", "djsite", "worker", "-c", "1"]);
    cmd.env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", &db);
    let migrate = Command::new(test_venv_python())
        .args(["manage.py", "migrate", "--noinput"])
        .current_dir(&project)
        .env("DJANGO_SETTINGS_MODULE", "djsite.settings")
        .env("HURRICANE_TEST_DB", &db)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let server = Server::spawn(&mut cmd);
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never started; log:\n{}", server.log.text()));
    // Django's checks (a SELECT 1 on the database among them) decide /ready, as for serve.
    assert_eq!(server.probe("/ready").status, 200);
    run.send(&project, "djsite.celery", "count_sites.delay()");
    wait_metric(
        &server,
        "hurricane_celery_tasks_total",
        &[
            ("task", "djsite.celery.count_sites"),
            ("result", "succeeded"),
        ],
        1.0,
    );
}

#[test]
fn startup_and_shutdown_are_posted_as_webhooks() {
    let run = Run::new("webhooks", "amqp");
    let receiver = crate::webhooks::Receiver::start();
    let mut server = Server::spawn(&mut run.command(
        &apps_dir(),
        &["--webhook-url", &receiver.url],
        &["-A", "celeryapp", "worker", "-c", "1"],
    ));
    let started = receiver.wait_for("startup", "succeeded");
    assert!(started["info"].as_str().unwrap().starts_with("Startup"));
    server.signal(libc::SIGTERM);
    receiver.wait_for("shutdown", "succeeded");
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn a_missing_or_foreign_command_is_a_one_line_usage_error() {
    for (command, says) in [
        (
            vec!["no-such-celery", "worker"],
            "cannot find 'no-such-celery' on PATH",
        ),
        (vec!["/bin/sh", "-c", "true"], "is not a Python script"),
        (vec!["python3", "-c", "print(1)"], "is not a Celery command"),
    ] {
        let out = Command::new(BIN)
            .args(["celery", "--"])
            .args(&command)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(
            err.lines().next().unwrap_or_default().contains(says),
            "{command:?}: {err}"
        );
    }
    let out = Command::new(BIN).arg("celery").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no command at all");
}

/// Issue 26: how docs/CELERY.md debugs a task: the Celery command run under `python -m debugpy`
/// with the solo pool. Our hooks still report (startup, ready) and debugpy's port accepts an
/// attach.
#[test]
fn a_celery_worker_run_under_debugpy_as_documented_keeps_its_probes_and_listens() {
    let run = Run::new("debugpy", "amqp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let node = format!("{}@%h", run.queue);
    let mut cmd = Command::new(BIN);
    cmd.args(["celery", "--bind", "127.0.0.1", "--probe-port", "0", "--"])
        .arg(test_venv_python())
        .args(["-m", "debugpy", "--listen", &listen, "-m", "celery"])
        .args(["-A", "celeryapp", "worker", "-P", "solo", "-n", &node])
        .current_dir(apps_dir())
        .env("CELERY_TEST_QUEUE", &run.queue)
        .env("CELERY_TEST_BROKER", &run.broker)
        .env("CELERY_TEST_OUT", &run.out.0)
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_hurricane_env(&mut cmd);
    let server = Server::spawn(&mut cmd);
    wait_for(START_TIMEOUT, || {
        (server.probe("/startup").status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never started; log:\n{}", server.log.text()));
    assert_eq!(server.probe("/ready").status, 200);
    assert!(
        std::net::TcpStream::connect(&listen).is_ok(),
        "debugpy listens on {listen}; log:\n{}",
        server.log.text()
    );
}

/// The queue's length as the broker itself says (pika's passive declare; Redis' LLEN).
pub fn broker_queue_length(run: &Run) -> f64 {
    let script = if run.broker.starts_with("redis") {
        // The base list and kombu's priority sub-queues (QUEUE\x06\x16N): every list under the name.
        "import redis, sys\nr = redis.Redis.from_url(sys.argv[1])\nq = sys.argv[2].encode()\nprint(sum(r.llen(k) for k in r.keys(q + b'*') if r.type(k) == b'list' and (k == q or k.startswith(q + b'\\x06\\x16'))))"
    } else {
        "import pika, sys\nconn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1'))\nprint(conn.channel().queue_declare(sys.argv[2], passive=True).method.message_count)"
    };
    let out = Command::new(test_venv_python())
        .args(["-c", script, &run.broker, &run.queue])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A one-child Celery worker that prefetches one task, reading its queues every `interval`
/// seconds, once connected.
pub fn one_child_worker(run: &Run, interval: &str) -> Server {
    let server = Server::spawn(&mut run.command(
        &apps_dir(),
        &[
            "--queue-stats-interval",
            interval,
            "--graceful-timeout",
            "1",
        ],
        &[
            "-A",
            "celeryapp",
            "worker",
            "-c",
            "1",
            "--prefetch-multiplier",
            "1",
            "-l",
            "info",
        ],
    ));
    wait_metric(&server, "hurricane_celery_broker_connected", &[], 1.0);
    server
}

/// One child held by a long task, 40 more sent: the metric follows the broker's own count.
fn the_length_of_the_consumed_queue_is_exported(broker: &str) {
    let run = Run::new(&format!("qlen-{broker}"), broker);
    let server = one_child_worker(&run, "0.3");
    let queue = [("queue", run.queue.as_str())];
    // The queue exists and is empty (RabbitMQ), or has no list yet (Redis): 0 either way.
    wait_for(Duration::from_secs(20), || {
        (metric(&server, "hurricane_celery_queue_length", &queue) == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("no reading of 0:\n{}", server.probe("/metrics").text()));
    let apps = apps_dir();
    run.send(&apps, "celeryapp", "slow.delay(60, 'held')");
    wait_metric(&server, "hurricane_celery_tasks_active", &[], 1.0);
    run.send(&apps, "celeryapp", "send_adds(40)");
    let settled = wait_for(Duration::from_secs(20), || {
        let ours = metric(&server, "hurricane_celery_queue_length", &queue)?;
        let theirs = broker_queue_length(&run);
        (ours == theirs && ours >= 38.0).then_some(ours)
    });
    assert!(
        settled.is_some(),
        "the metric never matched the broker's {}:\n{}",
        broker_queue_length(&run),
        server.probe("/metrics").text()
    );
    let age = metric(&server, "hurricane_celery_queue_stats_age_seconds", &[]).unwrap();
    assert!((0.0..2.0).contains(&age), "reading age {age}");
}

#[test]
fn the_queue_length_is_read_on_rabbitmq() {
    the_length_of_the_consumed_queue_is_exported("amqp");
}

#[test]
fn the_queue_length_is_read_on_redis_with_its_priority_sub_queues() {
    the_length_of_the_consumed_queue_is_exported("redis");
}
