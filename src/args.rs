//! The option groups and value checks every command shares (the interpreter, the probes, the log),
//! defined once so `serve`, `consume` and `celery` spell and check them the same way.
//!
//! Why apart from `cli`: each kind's module defines its own options (`kinds::*::Args`) with these
//! groups flattened in, and `cli` assembles the kinds into one command line; both import this
//! module, which imports neither.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// A usage error found after parsing (a directory that does not exist, a library missing from the
/// workers' Python): exit 2.
#[derive(Debug)]
pub struct Usage(pub String);
use clap::builder::BoolishValueParser;

pub fn seconds(s: &str) -> Result<Duration, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("'{s}' must be zero or more seconds"));
    }
    Ok(Duration::from_secs_f64(value))
}

/// More workers than this is a typo, not a plan: each is a whole Python interpreter.
pub const MAX_WORKERS: usize = 1024;

pub fn workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        Ok(n) if n > MAX_WORKERS => Err(format!(
            "{n} workers is more than hurricane runs ({MAX_WORKERS} at most); each worker is a whole \
             Python process: give about one per CPU, or two to four with slow I/O"
        )),
        _ => Err(format!(
            "'{s}' is not a worker count (a whole number, 1 or more)"
        )),
    }
}

pub fn ip_address(s: &str) -> Result<std::net::IpAddr, String> {
    if s == "localhost" {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    s.parse().map_err(|_| {
        format!("'{s}' is not an IP address: give one such as 0.0.0.0 (every IPv4 interface), :: or 127.0.0.1")
    })
}

pub fn webhook_url(s: &str) -> Result<String, String> {
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not an http:// or https:// URL"))
    }
}

pub fn probe_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains(char::is_whitespace) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a path: it must start with '/' and contain no spaces"
        ))
    }
}

/// Where the Python side runs, the same for every command.
#[derive(Debug, Clone, Args)]
pub struct InterpreterArgs {
    /// Python interpreter of the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH;
    /// celery: the interpreter the command names, or its script's #! line]
    #[arg(long, env = "HURRICANE_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,

    /// Change to this directory before loading the app (the handler, the command)
    #[arg(long, env = "HURRICANE_CHDIR", value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Directory to put first on the workers' sys.path (repeatable; in the environment, ':'-separated)
    #[arg(
        long,
        env = "HURRICANE_PYTHONPATH",
        value_name = "DIR",
        value_delimiter = ':'
    )]
    pub pythonpath: Vec<PathBuf>,
}

impl InterpreterArgs {
    /// --pythonpath as the strings the worker puts on sys.path.
    pub fn pythonpath_strings(&self) -> Vec<String> {
        self.pythonpath
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }
}

/// The probe server's paths and switches, the same for every command.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Path of the startup probe
    #[arg(long, env = "HURRICANE_STARTUP_PROBE", value_name = "PATH", default_value = "/startup", value_parser = probe_path)]
    pub startup_probe: String,

    /// Path of the readiness probe
    #[arg(long, env = "HURRICANE_READINESS_PROBE", value_name = "PATH", default_value = "/ready", value_parser = probe_path)]
    pub readiness_probe: String,

    /// Path of the liveness probe (`--probe` is the same option)
    #[arg(long, alias = "probe", env = "HURRICANE_LIVENESS_PROBE", value_name = "PATH", default_value = "/alive", value_parser = probe_path)]
    pub liveness_probe: String,

    /// Path of the Prometheus metrics on the probe port
    #[arg(long, env = "HURRICANE_METRICS", value_name = "PATH", default_value = "/metrics", value_parser = probe_path)]
    pub metrics: String,

    /// Do not serve metrics
    #[arg(long, env = "HURRICANE_NO_METRICS", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub no_metrics: bool,

    /// Do not run the probe server
    #[arg(long, env = "HURRICANE_NO_PROBE", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub no_probe: bool,

    /// Seconds a Django check result answers probes before the next probe asks for a fresh one
    #[arg(long, env = "HURRICANE_CHECK_INTERVAL", value_name = "S", default_value = "5", value_parser = seconds)]
    pub check_interval: Duration,

    /// Show failing checks' messages in probe answers (they may name hosts or settings)
    #[arg(long, env = "HURRICANE_DEBUG", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub debug: bool,
}

/// hurricane's own log lines, the same for every command.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format of hurricane's lines (master and workers): text (key=value) or json (one object per line)
    #[arg(long, env = "HURRICANE_LOG_FORMAT", value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Write hurricane's log lines (master and workers) to this file (SIGUSR1 reopens it)
    #[arg(long, env = "HURRICANE_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Log probe requests too (they are not logged otherwise)
    #[arg(long, env = "HURRICANE_LOG_PROBES", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub log_probes: bool,

    /// Log level: error, warn, info, debug or trace
    #[arg(long, env = "HURRICANE_LOG_LEVEL", value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

/// Attaching a debugger to the worker, as django-hurricane's `serve` and `consume` offer it.
#[derive(Debug, Clone, Args)]
pub struct DebugArgs {
    /// Start debugpy in the worker, listening on --debugger-port (at --bind's address) for VS Code
    /// or any Debug Adapter Protocol client to attach. Development only: it runs one worker with
    /// no --timeout, no frozen-worker kill and no --preload, and whoever reaches the port can run
    /// code in the worker. Needs debugpy in the workers' Python
    #[arg(long, env = "HURRICANE_DEBUGGER", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub debugger: bool,

    /// Port debugpy listens on
    #[arg(
        long,
        env = "HURRICANE_DEBUGGER_PORT",
        value_name = "PORT",
        default_value_t = 5678
    )]
    pub debugger_port: u16,

    /// With --debugger: the worker waits for the debugger to attach before it loads the app and
    /// reports ready (so breakpoints at import hit; --boot-timeout does not apply)
    #[arg(long, env = "HURRICANE_DEBUGGER_WAIT", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub debugger_wait: bool,

    /// Connect the worker to PyCharm's debug server on HOST (pydevd_pycharm.settrace, not
    /// suspended); the same one-worker rules as --debugger. Needs pydevd-pycharm in the workers' Python
    #[arg(long, env = "HURRICANE_PYCHARM_HOST", value_name = "HOST")]
    pub pycharm_host: Option<String>,

    /// Port of PyCharm's debug server
    #[arg(
        long,
        env = "HURRICANE_PYCHARM_PORT",
        value_name = "PORT",
        default_value_t = 5678
    )]
    pub pycharm_port: u16,
}
