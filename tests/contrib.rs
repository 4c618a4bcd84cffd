//! contrib/docker and contrib/kubernetes (issue 13, points 4-5), checked without a Docker engine or
//! a cluster: the Dockerfile is parsed with Docker's own parser (the `dockerfile` package) and every
//! COPY source must exist and every flag must be one the binary accepts; the manifests are
//! validated offline against the Kubernetes schemas (`kubernetes-validate`), and their probe ports,
//! paths and timings must match the binary's defaults and the container's flags.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

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

/// Runs a Python snippet in the test venv with argv[1:] = args; its stdout as JSON.
fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(test_venv_python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    let manifests: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    assert!(manifests.len() >= 4, "{manifests:?}");
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
    let deployment = py_json(
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        &[&dir.join("deployment.yaml").display().to_string()],
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
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
