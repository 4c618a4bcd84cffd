//! contrib/docker and contrib/kubernetes (issue 13, points 4-5), checked without a Docker engine or
//! a cluster: the Dockerfile is parsed with Docker's own parser (the `dockerfile` package) and every
//! COPY source must exist and every flag must be one the binary accepts; the manifests are
//! validated offline against the Kubernetes schemas (`kubernetes-validate`), and their probe ports,
//! paths and timings must match the binary's defaults and the container's flags.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn serve_help() -> String {
    String::from_utf8(
        Command::new(BIN)
            .args(["serve", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_flags_the_binary_accepts() {
    let dockerfile = root().join("contrib/docker/Dockerfile");
    let commands = py_json(
        "import json, sys, dockerfile\n\
print(json.dumps([{'cmd': c.cmd, 'flags': list(c.flags), 'value': list(c.value), 'json': c.json} for c in dockerfile.parse_file(sys.argv[1])]))",
        &[&dockerfile.display().to_string()],
    );
    let commands = commands.as_array().unwrap();
    let of = |name: &str| -> Vec<&serde_json::Value> {
        commands
            .iter()
            .filter(|c| c["cmd"].as_str().unwrap().eq_ignore_ascii_case(name))
            .collect()
    };
    assert_eq!(of("from").len(), 2, "two stages");
    for copy in of("copy") {
        if copy["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("--from"))
        {
            continue;
        }
        let values: Vec<&str> = copy["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for source in &values[..values.len() - 1] {
            assert!(
                root().join(source).exists(),
                "COPY source {source} does not exist"
            );
        }
    }
    assert!(of("healthcheck").is_empty(), "Kubernetes probes do that");
    assert_eq!(of("stopsignal")[0]["value"][0], "SIGTERM");
    let user = of("user");
    assert!(
        !user.is_empty() && user[0]["value"][0] != "root",
        "a non-root user"
    );
    let entrypoint = &of("entrypoint")[0];
    assert_eq!(entrypoint["json"], true, "exec form: hurricane is PID 1");
    assert_eq!(entrypoint["value"], serde_json::json!(["hurricane"]));
    let cmd: Vec<String> = of("cmd")[0]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cmd[0], "serve");
    let help = serve_help();
    for flag in cmd.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{flag} is not a flag of hurricane serve"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "the build context leaves target/ out"
    );
}

#[test]
fn the_kubernetes_manifests_validate_and_match_the_binary() {
    let dir = root().join("contrib/kubernetes");
    let manifests = yaml_files(&dir);
    assert!(manifests.len() >= 12, "{manifests:?}");
    let validator = test_venv_python().with_file_name("kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "-k", "1.30.0"])
        .args(&manifests)
        .output()
        .expect("kubernetes-validate is installed in the test venv");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the custom resources (Prometheus Operator, KEDA) lack a schema there; they are checked
    // against a running Prometheus in prometheus.rs.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        assert!(
            !line.starts_with("WARN")
                || ["PodMonitor", "PrometheusRule", "ScaledObject"]
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
            "{line}"
        );
    }
    let deployment = py_json(
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        &[&dir.join("deployment.yaml").display().to_string()],
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container_args(container);
    let help = serve_help();
    for flag in args.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{flag} is not a flag of hurricane serve"
        );
    }
    let value = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].as_str())
    };
    // Ports: the container's are the flags', and the probes use the probe port.
    let ports = container["ports"].as_array().unwrap();
    let port_of = |name: &str| {
        ports.iter().find(|p| p["name"] == name).unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        port_of("http").to_string(),
        value("--port").unwrap_or("8000")
    );
    assert_eq!(
        port_of("probes").to_string(),
        value("--probe-port").unwrap_or("8001")
    );
    // The binary's defaults, which the probes rely on.
    for (probe, default) in [
        ("startupProbe", "/startup"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/alive"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], default, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "probes", "{probe}");
        assert!(
            help.contains(&format!("[default: {default}]")),
            "{default} is the binary's default"
        );
    }
    assert!(help.contains("[default: 8000]"));
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    // The grace period covers the shutdown delay and the graceful timeout.
    let delay: f64 = value("--shutdown-delay").unwrap_or("0").parse().unwrap();
    let graceful: f64 = value("--graceful-timeout").unwrap_or("30").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(grace > delay + graceful, "{grace} <= {delay} + {graceful}");
    let hpa = std::fs::read_to_string(dir.join("hpa.yaml")).unwrap();
    assert!(hpa.contains("hurricane_listen_queue_length"));
}

/// Every .yaml under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path.display().to_string());
        }
    }
    out.sort();
    out
}

/// The documents of a multi-document YAML file, as JSON.
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    py_json(
        "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        &[&path.display().to_string()],
    )
    .as_array()
    .unwrap()
    .clone()
}

fn help_of(kind: &str) -> String {
    let out = Command::new(BIN).args([kind, "--help"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// consume, Celery worker and beat: hurricane's flags exist, the probes use the probe port and the
/// binary's paths, the grace period covers the drain, beat is one and recreated, and each HPA
/// scales on a metric the adapter rules publish.
#[test]
fn the_consumer_and_celery_manifests_match_the_binary_and_the_adapter() {
    let dir = root().join("contrib/kubernetes");
    let adapter =
        std::fs::read_to_string(root().join("contrib/prometheus/adapter-rules.yaml")).unwrap();
    for (file, kind, drain_flag) in [
        ("consumer.yaml", "consume", "--graceful-timeout"),
        ("celery-worker.yaml", "celery", "--graceful-timeout"),
        ("celery-beat.yaml", "celery", "--graceful-timeout"),
    ] {
        let docs = yaml_documents(&dir.join(file));
        let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
        let deployment = of_kind("Deployment")
            .next()
            .unwrap_or_else(|| panic!("{file}: no Deployment"));
        assert!(
            of_kind("PodDisruptionBudget").next().is_some(),
            "{file}: no PodDisruptionBudget"
        );
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args = container_args(container);
        assert_eq!(args[0], kind, "{file}");
        // hurricane's own flags: up to `--` (after it, Celery's command).
        let ours: Vec<&String> = args.iter().take_while(|a| *a != "--").collect();
        let help = help_of(kind);
        for flag in ours.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "{file}: {flag} is not a flag of hurricane {kind}"
            );
        }
        let value = |flag: &str| {
            ours.iter()
                .position(|a| *a == flag)
                .map(|i| ours[i + 1].clone())
        };
        let probe_port = value("--probe-port").unwrap_or("8001".into());
        assert_eq!(
            container["ports"][0]["containerPort"].to_string(),
            probe_port,
            "{file}"
        );
        for (probe, path) in [
            ("startupProbe", "/startup"),
            ("readinessProbe", "/ready"),
            ("livenessProbe", "/alive"),
        ] {
            if container[probe].is_null() && probe == "readinessProbe" && file == "celery-beat.yaml"
            {
                continue; // beat serves no one: readiness means nothing for it
            }
            assert_eq!(container[probe]["httpGet"]["path"], path, "{file} {probe}");
            assert_eq!(
                container[probe]["httpGet"]["port"], "probes",
                "{file} {probe}"
            );
        }
        let drain: f64 = value(drain_flag).unwrap_or("30".into()).parse().unwrap();
        let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
        assert!(
            grace > drain,
            "{file}: grace {grace} <= {drain_flag} {drain}"
        );
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            probe_port,
            "{file}"
        );
        if file == "celery-beat.yaml" {
            assert_eq!(deployment["spec"]["replicas"], 1);
            assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
            assert!(
                of_kind("HorizontalPodAutoscaler").next().is_none(),
                "beat never scales"
            );
            continue;
        }
        let hpa = of_kind("HorizontalPodAutoscaler")
            .next()
            .unwrap_or_else(|| panic!("{file}: no HPA"));
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"],
            deployment["metadata"]["name"]
        );
        let metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
            .as_str()
            .unwrap();
        assert!(
            adapter.contains(&format!("as: {metric}")),
            "{file}: the adapter publishes no {metric}"
        );
        let keda = yaml_documents(&dir.join("keda").join(file));
        assert_eq!(
            keda[0]["spec"]["scaleTargetRef"]["name"],
            deployment["metadata"]["name"]
        );
    }
}
