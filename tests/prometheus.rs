//! contrib/prometheus with the real Prometheus (issue 24): Debian's `prometheus` scrapes a running
//! `hurricane serve`, `consume` and `celery` on the local RabbitMQ and Redis, with the rule file of
//! contrib/prometheus loaded, and these tests ask its HTTP API the exact queries the adapter rules,
//! the recording rules, the KEDA ScaledObjects and the dashboard use, comparing the answers with
//! what the servers and the brokers say. promtool checks the rules, their unit tests and the
//! configuration, and that the Kubernetes wrappers are generated from them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::celery::{Run, broker_queue_length, one_child_worker, wait_metric};
use crate::consume::{Names, consumer};
use crate::util::*;

/// How long a query may take to show what the servers expose: two scrapes and a rule evaluation
/// at 1 s intervals, with room for a loaded machine.
const SCRAPED: Duration = Duration::from_secs(30);

/// Prometheus' and promtool's binary: Debian's package, installed when absent (as .ci/run does).
fn prometheus_tool(name: &str) -> PathBuf {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let path = PathBuf::from("/usr/bin").join(name);
    if !path.exists() {
        INSTALLED.get_or_init(|| {
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "prometheus"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    assert!(
        path.exists(),
        "{} is missing and `apt-get install prometheus` did not install it: install Debian's prometheus package",
        path.display()
    );
    path
}

/// One series of a query's answer: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A Prometheus server of its own (free port, its own storage), scraping `targets` every second
/// with contrib/prometheus/prometheus.yml's settings and rule file.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: Log,
    _dir: TempDir,
}

impl Prometheus {
    /// `targets`: (pod label, probe address); every series gets namespace="test" too.
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path("prometheus.yml");
        let targets: Vec<serde_json::Value> = targets
            .iter()
            .map(|(pod, addr)| serde_json::json!({"targets": [addr.to_string()], "labels": {"namespace": "test", "pod": pod}}))
            .collect();
        // The shipped file, with test intervals, an absolute rule path and these targets.
        py_json(
            "import json, sys, yaml\n\
             config = yaml.safe_load(open(sys.argv[1]))\n\
             config['global'] = {'scrape_interval': '1s', 'evaluation_interval': '1s', 'scrape_timeout': '1s'}\n\
             config['rule_files'] = [sys.argv[2]]\n\
             config['scrape_configs'][0]['static_configs'] = json.loads(sys.argv[3])\n\
             yaml.safe_dump(config, open(sys.argv[4], 'w'))\n\
             print('{}')",
            &[
                &root()
                    .join("contrib/prometheus/prometheus.yml")
                    .display()
                    .to_string(),
                &root()
                    .join("contrib/prometheus/hurricane-rules.yaml")
                    .display()
                    .to_string(),
                &serde_json::Value::Array(targets).to_string(),
                &config,
            ],
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={config}"))
            .arg(format!("--storage.tsdb.path={}", dir.path("data")))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let log = Log::default();
        capture(child.stderr.take().unwrap(), log.clone());
        let prometheus = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        wait_for(SCRAPED, || {
            get(addr, "/-/ready")
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("Prometheus never got ready:\n{}", prometheus.log.text()));
        prometheus
    }

    /// An instant query through the HTTP API: the samples, or Prometheus' error.
    fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let response = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .map_err(|e| e.to_string())?;
        let answer: serde_json::Value = serde_json::from_str(&response.text())
            .map_err(|e| format!("{e}: {}", response.text()))?;
        if answer["status"] != "success" {
            return Err(format!("{promql}: {}", answer["error"]));
        }
        let result = &answer["data"]["result"];
        Ok(result
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .map(|s| {
                        let labels = s["metric"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect();
                        let value = s["value"][1].as_str().unwrap().parse().unwrap();
                        (labels, value)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until `promql` answers one series whose value `accept`s; that value.
    fn wait_value(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        wait_for(SCRAPED, || match self.query(promql) {
            Ok(samples) if samples.len() == 1 && accept(samples[0].1) => Some(samples[0].1),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "{promql} never answered as expected; it answers {:?}\nPrometheus:\n{}",
                self.query(promql),
                self.log.text()
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An adapter rule of contrib/prometheus/adapter-rules.yaml: its series and query.
struct AdapterRule {
    series: String,
    query: String,
    published_as: String,
}

fn adapter_rules(section: &str) -> Vec<AdapterRule> {
    let rules = py_json(
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]]))",
        &[
            &root()
                .join("contrib/prometheus/adapter-rules.yaml")
                .display()
                .to_string(),
            section,
        ],
    );
    rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| AdapterRule {
            series: r["seriesQuery"]
                .as_str()
                .unwrap()
                .split('{')
                .next()
                .unwrap()
                .to_string(),
            query: r["metricsQuery"].as_str().unwrap().to_string(),
            published_as: r["name"]["as"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The rule publishing `name`, with the adapter's template filled in as it would for an HPA in
/// namespace "test" selecting `matchers`.
fn adapter_query(section: &str, name: &str, matchers: &str) -> String {
    let rule = adapter_rules(section)
        .into_iter()
        .find(|r| r.published_as == name)
        .unwrap_or_else(|| panic!("adapter-rules.yaml publishes no {name}"));
    rule.query
        .replace("<<.Series>>", &rule.series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
}

fn promtool(args: &[&str]) {
    output_ok(
        Command::new(prometheus_tool("promtool"))
            .args(args)
            .current_dir(root().join("contrib/prometheus")),
    );
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests_and_the_kubernetes_wrappers_are_generated_from_them()
 {
    promtool(&["check", "rules", "hurricane-rules.yaml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["test", "rules", "hurricane-rules.test.yaml"]);
    output_ok(Command::new(root().join("scripts/gen-contrib")).arg("--check"));
}

#[test]
fn the_web_accept_queue_query_rises_while_every_worker_is_held() {
    let dir = TempDir::new("prom-web");
    let server = Server::start("app", &["--workers", "1", "--backlog", "64"]);
    let prometheus = Prometheus::start(&[("web-0", server.probe.unwrap())]);
    let query = adapter_query(
        "rules",
        "hurricane_listen_queue_length",
        r#"namespace="test",pod=~"web-0""#,
    );
    assert_eq!(prometheus.wait_value(&query, |v| v == 0.0), 0.0, "idle");
    let (busy, waiting) = hold_the_worker(server.addr, &dir, 8, 5);
    let risen = prometheus.wait_value(&query, |v| v > 0.0);
    assert!(risen > 0.0);
    prometheus.wait_value(
        r#"hurricane:listen_queue_length:avg1m{namespace="test",pod="web-0"}"#,
        |v| v > 0.0,
    );
    assert_eq!(busy.join().unwrap().unwrap().status, 200);
    for w in waiting {
        assert_eq!(w.join().unwrap().unwrap().status, 200);
    }
}

#[test]
fn the_amqp_backlog_query_answers_500_minus_what_the_workers_hold() {
    let names = Names::new("prom");
    let server = consumer(
        &names,
        "handlers.Recorder",
        &[
            "--workers",
            "2",
            "--prefetch",
            "10",
            "--queue-stats-interval",
            "0.5",
            "--graceful-timeout",
            "1",
        ],
    );
    let prometheus = Prometheus::start(&[("consumer-0", server.probe.unwrap())]);
    let key = format!("{}.held", names.queue);
    publish(&names.exchange, &key, "held", 500, r#"{"sleep": "60"}"#);
    let matchers = format!(r#"namespace="test",queue="{}""#, names.queue);
    let in_flight = prometheus.wait_value(
        r#"hurricane_amqp_messages_in_flight{namespace="test",pod="consumer-0"}"#,
        |v| v == 10.0,
    );
    let backlog = adapter_query("externalRules", "hurricane_amqp_backlog", &matchers);
    let answer = prometheus.wait_value(&backlog, |v| v == 500.0 - in_flight);
    assert_eq!(answer, 490.0);
    assert_eq!(queue_depth(&names.queue), 490, "the broker agrees");
    // The recording rule the alerts read, and KEDA's query (its labels written out) agree.
    prometheus.wait_value(
        &format!("hurricane:amqp_queue_messages:max{{{matchers}}}"),
        |v| v == 490.0,
    );
    prometheus.wait_value(
        &format!("hurricane:amqp_queue_consumers:max{{{matchers}}}"),
        |v| v == 1.0,
    );
    let keda = keda_query("consumer.yaml")
        .replace(r#"namespace="mysite""#, r#"namespace="test""#)
        .replace(r#"queue="orders""#, &format!(r#"queue="{}""#, names.queue));
    prometheus.wait_value(&keda, |v| v == 490.0);
}

#[test]
fn the_celery_backlog_query_answers_the_queue_length() {
    let run = Run::new("prom", "redis");
    let server = one_child_worker(&run, "0.5");
    let prometheus = Prometheus::start(&[("celery-worker-0", server.probe.unwrap())]);
    let apps = apps_dir();
    run.send(&apps, "celeryapp", "slow.delay(60, 'held')");
    wait_metric(&server, "hurricane_celery_tasks_active", &[], 1.0);
    run.send(&apps, "celeryapp", "send_adds(30)");
    let matchers = format!(r#"namespace="test",queue="{}""#, run.queue);
    let backlog = adapter_query("externalRules", "hurricane_celery_backlog", &matchers);
    let answer = wait_for(SCRAPED, || {
        let theirs = broker_queue_length(&run);
        let ours = prometheus.query(&backlog).ok()?.first()?.1;
        (ours == theirs && ours >= 28.0).then_some(ours)
    })
    .unwrap_or_else(|| {
        panic!(
            "{backlog} never matched the broker's {}: {:?}",
            broker_queue_length(&run),
            prometheus.query(&backlog)
        )
    });
    prometheus.wait_value(
        &format!("hurricane:celery_queue_length:max{{{matchers}}}"),
        |v| v == answer,
    );
    let keda = keda_query("celery-worker.yaml")
        .replace(r#"namespace="mysite""#, r#"namespace="test""#)
        .replace(r#"queue="celery""#, &format!(r#"queue="{}""#, run.queue));
    prometheus.wait_value(&keda, |v| v == answer);
}

/// The Prometheus query of a KEDA ScaledObject in contrib/kubernetes/keda/.
fn keda_query(file: &str) -> String {
    let object = py_json(
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        &[&root()
            .join("contrib/kubernetes/keda")
            .join(file)
            .display()
            .to_string()],
    );
    let trigger = &object["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    trigger["metadata"]["query"].as_str().unwrap().to_string()
}

#[test]
fn every_query_of_the_rules_adapter_keda_and_dashboard_is_valid_promql() {
    let prometheus = Prometheus::start(&[]);
    let mut queries: Vec<(String, String)> = Vec::new();
    for section in ["rules", "externalRules"] {
        for rule in adapter_rules(section) {
            let query = adapter_query(section, &rule.published_as, r#"namespace="test""#);
            queries.push((format!("adapter {}", rule.published_as), query));
        }
    }
    for file in ["consumer.yaml", "celery-worker.yaml"] {
        queries.push((format!("keda/{file}"), keda_query(file)));
    }
    let rules = py_json(
        "import json, sys, yaml\nprint(json.dumps([r['expr'] for g in yaml.safe_load(open(sys.argv[1]))['groups'] for r in g['rules']]))",
        &[&root()
            .join("contrib/prometheus/hurricane-rules.yaml")
            .display()
            .to_string()],
    );
    for expr in rules.as_array().unwrap() {
        queries.push(("rule".into(), expr.as_str().unwrap().to_string()));
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("contrib/grafana/hurricane.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut dashboard_queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        for target in panel["targets"].as_array().unwrap() {
            // Grafana's variables, as Grafana fills them in.
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$namespace", ".*")
                .replace("$pod", ".*");
            queries.push((format!("dashboard: {}", panel["title"]), expr));
            dashboard_queries += 1;
        }
    }
    assert!(
        dashboard_queries >= 20,
        "{dashboard_queries} dashboard queries"
    );
    for (what, query) in &queries {
        if let Err(e) = prometheus.query(query) {
            panic!("{what} is not valid PromQL: {e}");
        }
    }
    // Every metric a query names is one hurricane exports (a typo would query nothing forever).
    let documented = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    for (what, query) in &queries {
        for name in metric_names(query) {
            let base = name.trim_end_matches("_bucket").trim_end_matches("_total");
            assert!(
                documented.contains(&format!("`{base}"))
                    || documented.contains(&format!("`{name}")),
                "{what} reads {name}, which docs/OPERATIONS.md does not list"
            );
        }
    }
}

/// The hurricane_* metric names in a query (recording rules' names, with colons, are not).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("hurricane_") {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !preceded {
            names.push(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}
