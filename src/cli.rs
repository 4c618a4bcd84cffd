//! The command line, defined once: `--help`, the environment names and the README table come from here.
//!
//! Every option can also be set as `HURRICANE_<NAME>` (the long flag in upper case, dashes as
//! underscores); the command line wins. `hurricane -w app` is the same as `hurricane serve -w app`.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hurricane",
    version,
    about = "A process supervisor and prefork application server for Python WSGI apps",
    long_about = "A process supervisor and prefork application server for Python WSGI apps.\n\n\
        Binds the socket, runs N Python workers that share it, watches, respawns and reaps them, \
        answers Kubernetes probes on its own port, and shuts down without dropping requests.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a WSGI app on N prefork workers (the default command)
    Serve(ServeArgs),
    /// Consume an AMQP queue with N handler workers running a TopicHandler class
    Consume(ConsumeArgs),
    /// Run a Celery worker or beat (`-- celery -A proj worker`) with probes, metrics and PID 1 duties
    Celery(CeleryArgs),
    /// Write the man pages and shell completions into DIR (for packagers; scripts/gen-docs)
    #[command(hide = true)]
    GenerateDocs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// What to run, once parsed.
pub enum Run {
    Serve(ServeArgs),
    Consume(ConsumeArgs),
    Celery(CeleryArgs),
    GenerateDocs(PathBuf),
}

impl Cli {
    /// The command, whether serve is given as `hurricane serve ...` or `hurricane ...`.
    pub fn into_run(self) -> Run {
        match self.command {
            Some(Command::Serve(args)) => Run::Serve(args),
            Some(Command::Consume(args)) => Run::Consume(args),
            Some(Command::Celery(args)) => Run::Celery(args),
            Some(Command::GenerateDocs { dir }) => Run::GenerateDocs(dir),
            None => Run::Serve(self.serve),
        }
    }

    /// The serve options (tests and the settings layer of `serve`).
    #[cfg(test)]
    pub fn into_serve(self) -> ServeArgs {
        match self.into_run() {
            Run::Serve(args) => args,
            _ => panic!("not serve"),
        }
    }
}

impl Run {
    /// hurricane's own log settings (defaults for generate-docs, which logs nothing).
    pub fn log(&self) -> Option<&LogArgs> {
        match self {
            Run::Serve(a) => Some(&a.log),
            Run::Consume(a) => Some(&a.log),
            Run::Celery(a) => Some(&a.log),
            Run::GenerateDocs(_) => None,
        }
    }
}

fn amqp_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a port (1 to 65535)")),
    }
}

fn amqp_url(s: &str) -> Result<String, String> {
    if s.starts_with("amqp://") && s.len() > "amqp://".len() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not an amqp:// URL (amqp://USER:PASSWORD@HOST:PORT/VHOST)"
        ))
    }
}

fn prefetch(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a prefetch count (1 to 65535)")),
    }
}

fn name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 {
        Err(format!(
            "'{s}' is not a queue or exchange name (1 to 255 bytes)"
        ))
    } else {
        Ok(s.to_string())
    }
}

/// `hurricane consume HANDLER`: django-hurricane's `manage.py consume` options, and serve's own
/// for the workers, probes, webhooks and logs. The broker settings also come from the Django
/// settings (AMQP_HOST, ...) and the environment (AMQP_*), in that order after the command line.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// The handler class: a subclass of hurricane.amqp.basehandler.TopicHandler (package.module.Class)
    #[arg(value_name = "HANDLER")]
    pub handler: String,

    /// The queue to consume (declared if missing)
    #[arg(long, env = "HURRICANE_QUEUE", value_name = "NAME", value_parser = name)]
    pub queue: String,

    /// The topic exchange the queue is bound to (declared if missing)
    #[arg(long, env = "HURRICANE_EXCHANGE", value_name = "NAME", value_parser = name)]
    pub exchange: String,

    /// Broker host [settings: AMQP_HOST]
    #[arg(long, env = "AMQP_HOST", value_name = "HOST")]
    pub amqp_host: Option<String>,

    /// Broker port [settings: AMQP_PORT]
    #[arg(long, env = "AMQP_PORT", value_name = "PORT", default_value = "5672", value_parser = amqp_port)]
    pub amqp_port: u16,

    /// Broker virtual host [settings: AMQP_VHOST]
    #[arg(long, env = "AMQP_VHOST", value_name = "VHOST", default_value = "/")]
    pub amqp_vhost: String,

    /// Broker user [settings: AMQP_USER] [default: guest]
    #[arg(long, env = "AMQP_USER", value_name = "USER")]
    pub amqp_user: Option<String>,

    /// Broker password [settings: AMQP_PASSWORD] [default: guest]; never logged
    #[arg(
        long,
        env = "AMQP_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub amqp_password: Option<String>,

    /// The broker as one URL, instead of the --amqp-* options
    #[arg(long, env = "AMQP_URL", value_name = "URL", value_parser = amqp_url, hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Bind the queue with this routing key (repeatable) [default: the handler's
    /// get_routing_keys(queue), else the queue's name]
    #[arg(
        long,
        env = "HURRICANE_ROUTING_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub routing_key: Vec<String>,

    /// Declare the exchange and the queue durable
    #[arg(long, env = "HURRICANE_DURABLE", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub durable: bool,

    /// Deliveries the broker sends ahead of acks (basic.qos); they are spread over the workers
    #[arg(long, env = "HURRICANE_PREFETCH", value_name = "N", default_value = "200", value_parser = prefetch)]
    pub prefetch: u16,

    /// Reconnect with backoff (0.5 s doubling to 30 s) when the broker connection or channel is lost
    #[arg(long, env = "HURRICANE_RECONNECT", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub reconnect: bool,

    /// With --reconnect, /alive fails once the broker has been lost this many seconds (0: never;
    /// a restart does not fix a broker outage)
    #[arg(long, env = "HURRICANE_RECONNECT_TIMEOUT", value_name = "S", default_value = "0", value_parser = seconds)]
    pub reconnect_timeout: Duration,

    /// Number of handler processes [default: the CPUs this process may use]
    #[arg(long, env = "HURRICANE_WORKERS", value_name = "N", value_parser = workers, allow_negative_numbers = true)]
    pub workers: Option<usize>,

    /// Import the handler once in a zygote process and fork the workers from it: they share its memory
    /// and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads.
    /// The handler module must not start threads at import (refused, exit 2)
    #[arg(long, env = "HURRICANE_PRELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub preload: bool,

    /// Address of the probe server
    #[arg(long, env = "HURRICANE_BIND", value_name = "ADDR", default_value = "0.0.0.0", value_parser = ip_address)]
    pub bind: std::net::IpAddr,

    /// Port of the probe server
    #[arg(
        long,
        env = "HURRICANE_PROBE_PORT",
        value_name = "PORT",
        default_value_t = 8001
    )]
    pub probe_port: u16,

    /// Seconds a stopping worker gets to finish its message before it is killed
    #[arg(long, env = "HURRICANE_GRACEFUL_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub graceful_timeout: Duration,

    /// Seconds a worker may take to import the handler and report ready
    #[arg(long, env = "HURRICANE_BOOT_TIMEOUT", value_name = "S", default_value = "60", value_parser = seconds)]
    pub boot_timeout: Duration,

    /// Seconds a handler may run on one message before its worker is killed (0: no limit); the
    /// message is requeued
    #[arg(long, env = "HURRICANE_TIMEOUT", value_name = "S", default_value = "0", value_parser = seconds)]
    pub timeout: Duration,

    /// Reload when a source file of the handler changes (development)
    #[arg(long, env = "HURRICANE_AUTORELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub autoreload: bool,

    /// POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker
    /// restarts (repeatable)
    #[arg(long, env = "HURRICANE_WEBHOOK_URL", value_name = "URL", value_delimiter = ',', value_parser = webhook_url)]
    pub webhook_url: Vec<String>,

    #[command(flatten)]
    pub interpreter: InterpreterArgs,

    #[command(flatten)]
    pub probes: ProbeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

fn seconds(s: &str) -> Result<Duration, String> {
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

fn workers(s: &str) -> Result<usize, String> {
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

fn ip_address(s: &str) -> Result<std::net::IpAddr, String> {
    if s == "localhost" {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    s.parse().map_err(|_| {
        format!("'{s}' is not an IP address: give one such as 0.0.0.0 (every IPv4 interface), :: or 127.0.0.1")
    })
}

fn webhook_url(s: &str) -> Result<String, String> {
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not an http:// or https:// URL"))
    }
}

fn probe_path(s: &str) -> Result<String, String> {
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

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The WSGI app to serve: a module, optionally with the callable's name (default `application`)
    #[arg(
        short = 'w',
        long = "wsgi",
        env = "HURRICANE_WSGI",
        value_name = "MODULE[:ATTR]",
        required = true
    )]
    pub wsgi: Option<String>,

    /// Address to listen on
    #[arg(
        long,
        env = "HURRICANE_BIND",
        value_name = "ADDR",
        default_value = "0.0.0.0",
        value_parser = ip_address
    )]
    pub bind: std::net::IpAddr,

    /// Port to listen on (0 picks a free one and logs it)
    #[arg(long, env = "HURRICANE_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Number of worker processes [default: the CPUs this process may use, cgroup quota included]
    #[arg(
        long,
        env = "HURRICANE_WORKERS",
        value_name = "N",
        value_parser = workers,
        allow_negative_numbers = true
    )]
    pub workers: Option<usize>,

    /// Import the app once in a zygote process and fork the workers from it: they share its memory
    /// and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads.
    /// The app must not start threads at import (refused, exit 2)
    #[arg(long, env = "HURRICANE_PRELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub preload: bool,

    /// Listen backlog: connections the kernel queues while every worker is busy
    #[arg(
        long,
        env = "HURRICANE_BACKLOG",
        value_name = "N",
        default_value_t = 2048
    )]
    pub backlog: i32,

    /// Port of the probe server [default: --port + 1]
    #[arg(long, env = "HURRICANE_PROBE_PORT", value_name = "PORT")]
    pub probe_port: Option<u16>,

    /// /ready answers 503 while the kernel's accept queue holds this many connections or more
    #[arg(long, env = "HURRICANE_REQ_QUEUE_LEN", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub req_queue_len: Option<u32>,

    /// Seconds a stopping worker gets to finish its requests before it is killed
    #[arg(long, env = "HURRICANE_GRACEFUL_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub graceful_timeout: Duration,

    /// Seconds to keep serving after SIGTERM (with /ready failing) before workers drain
    #[arg(long, env = "HURRICANE_SHUTDOWN_DELAY", value_name = "S", default_value = "0", value_parser = seconds)]
    pub shutdown_delay: Duration,

    /// Seconds a worker may take to import the app and report ready
    #[arg(long, env = "HURRICANE_BOOT_TIMEOUT", value_name = "S", default_value = "60", value_parser = seconds)]
    pub boot_timeout: Duration,

    /// Seconds an idle keep-alive connection stays open
    #[arg(long, env = "HURRICANE_KEEP_ALIVE", value_name = "S", default_value = "5", value_parser = seconds)]
    pub keep_alive: Duration,

    /// Seconds a client may take without reading any of a response before its connection is cut
    /// (a response the socket cannot take waits on its connection, holding no worker; 0: never)
    #[arg(long, env = "HURRICANE_WRITE_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub write_timeout: Duration,

    /// Run this Django management command before the workers start, e.g. "migrate --noinput"
    /// (repeatable, in order; in the environment, ';'-separated). A failure stops startup.
    #[arg(
        long,
        env = "HURRICANE_COMMAND",
        value_name = "CMD ARGS",
        value_delimiter = ';'
    )]
    pub command: Vec<String>,

    /// Before the workers start, wait (polling) until the database answers and no migration is pending
    #[arg(long, env = "HURRICANE_CHECK_MIGRATIONS", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub check_migrations: bool,

    /// Before the workers start, apply pending migrations (migrate --noinput) instead of waiting
    #[arg(long, env = "HURRICANE_CHECK_MIGRATIONS_APPLY", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub check_migrations_apply: bool,

    /// Threads per worker running the app (for I/O-bound views; 1: the app runs on the event loop)
    #[arg(long, env = "HURRICANE_THREADS", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Longest request line, in bytes; longer is answered 414
    #[arg(
        long,
        env = "HURRICANE_LIMIT_REQUEST_LINE",
        value_name = "BYTES",
        default_value_t = 8190
    )]
    pub limit_request_line: usize,

    /// Most header fields in a request; more is answered 431
    #[arg(
        long,
        env = "HURRICANE_LIMIT_REQUEST_FIELDS",
        value_name = "N",
        default_value_t = 100
    )]
    pub limit_request_fields: usize,

    /// Longest header field line, in bytes; longer is answered 431
    #[arg(
        long,
        env = "HURRICANE_LIMIT_REQUEST_FIELD_SIZE",
        value_name = "BYTES",
        default_value_t = 8190
    )]
    pub limit_request_field_size: usize,

    /// A request body still arriving after 5 s at less than this many bytes a second on average
    /// is answered 408 (0: no minimum)
    #[arg(
        long,
        env = "HURRICANE_MIN_BODY_RATE",
        value_name = "BYTES_PER_S",
        default_value_t = 240
    )]
    pub min_body_rate: u64,

    /// Largest request body, in bytes; larger is answered 413
    #[arg(long, env = "HURRICANE_MAX_BODY_SIZE", value_name = "BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_body_size: u64,

    /// Peers trusted to set X-Forwarded-For/-Proto (comma-separated addresses or CIDRs, or *)
    #[arg(
        long,
        env = "HURRICANE_FORWARDED_ALLOW_IPS",
        value_name = "IPS",
        default_value = "127.0.0.1,::1"
    )]
    pub forwarded_allow_ips: String,

    /// Serve static files at --static-url from --static-root (or Django's STATIC_URL/STATIC_ROOT)
    #[arg(long, env = "HURRICANE_STATIC", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub r#static: bool,

    /// URL prefix of static files [default: /static/, or Django's STATIC_URL]
    #[arg(long, env = "HURRICANE_STATIC_URL", value_name = "URL")]
    pub static_url: Option<String>,

    /// Directory of static files (implies --static) [default: Django's STATIC_ROOT]
    #[arg(long, env = "HURRICANE_STATIC_ROOT", value_name = "DIR")]
    pub static_root: Option<PathBuf>,

    /// Serve uploaded media at --media-url from --media-root (or Django's MEDIA_URL/MEDIA_ROOT)
    #[arg(long, env = "HURRICANE_MEDIA", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub media: bool,

    /// URL prefix of media files [default: /media/, or Django's MEDIA_URL]
    #[arg(long, env = "HURRICANE_MEDIA_URL", value_name = "URL")]
    pub media_url: Option<String>,

    /// Directory of media files (implies --media) [default: Django's MEDIA_ROOT]
    #[arg(long, env = "HURRICANE_MEDIA_ROOT", value_name = "DIR")]
    pub media_root: Option<PathBuf>,

    /// Seconds a request may run before its worker is killed and replaced (0: no limit)
    #[arg(long, env = "HURRICANE_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub timeout: Duration,

    /// Seconds a worker may go without a heartbeat (a frozen process) before it is killed (0: no limit)
    #[arg(long, env = "HURRICANE_HEARTBEAT_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub heartbeat_timeout: Duration,

    /// Replace a worker after this many requests, its successor ready first (0: never)
    #[arg(
        long,
        env = "HURRICANE_MAX_REQUESTS",
        value_name = "N",
        default_value_t = 0
    )]
    pub max_requests: u64,

    /// Add a random 0..=J to each worker's --max-requests, so workers do not recycle together
    #[arg(
        long,
        env = "HURRICANE_MAX_REQUESTS_JITTER",
        value_name = "J",
        default_value_t = 0
    )]
    pub max_requests_jitter: u64,

    /// Replace a worker whose resident memory exceeds this many MiB, its successor ready first (0: never)
    #[arg(
        long,
        env = "HURRICANE_MAX_MEMORY",
        value_name = "MB",
        default_value_t = 0
    )]
    pub max_memory: u64,

    /// Reload when a source file of the app changes (development)
    #[arg(long, env = "HURRICANE_AUTORELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub autoreload: bool,

    /// With --autoreload, also watch this directory, recursively (repeatable)
    #[arg(
        long,
        env = "HURRICANE_RELOAD_DIR",
        value_name = "DIR",
        value_delimiter = ':'
    )]
    pub reload_dir: Vec<PathBuf>,

    /// With --autoreload, file names that count as changes (repeatable) [default: *.py]
    #[arg(
        long,
        env = "HURRICANE_RELOAD_INCLUDE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub reload_include: Vec<String>,

    /// With --autoreload, file names that never count (repeatable; __pycache__, *.pyc, .git and
    /// editor temp files never count anyway)
    #[arg(
        long,
        env = "HURRICANE_RELOAD_EXCLUDE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub reload_exclude: Vec<String>,

    /// POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker
    /// restarts (repeatable; in the environment, ','-separated)
    #[arg(long, env = "HURRICANE_WEBHOOK_URL", value_name = "URL", value_delimiter = ',', value_parser = webhook_url)]
    pub webhook_url: Vec<String>,

    /// Log one line per request (remote, method, path, status, size, duration, worker)
    #[arg(long, env = "HURRICANE_ACCESS_LOG", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub access_log: bool,

    #[command(flatten)]
    pub interpreter: InterpreterArgs,

    #[command(flatten)]
    pub probes: ProbeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// `hurricane celery [OPTIONS] -- COMMAND...`: the user's Celery command, as given, under hurricane's
/// probes, metrics, webhooks and PID 1 duties.
#[derive(Debug, Clone, Args)]
pub struct CeleryArgs {
    /// The Celery command, after `--`: `celery -A proj worker ...`, `celery -A proj beat`, or
    /// `python -m celery ...`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Seconds the worker's event loop (beat: its scheduler) may go without a tick before /alive fails
    #[arg(long, env = "HURRICANE_LIVENESS_TIMEOUT", value_name = "S", default_value = "60", value_parser = seconds)]
    pub liveness_timeout: Duration,

    /// Seconds Celery gets for its warm shutdown (running tasks finish) after SIGTERM before SIGKILL
    #[arg(long, env = "HURRICANE_GRACEFUL_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub graceful_timeout: Duration,

    /// Address of the probe server
    #[arg(long, env = "HURRICANE_BIND", value_name = "ADDR", default_value = "0.0.0.0", value_parser = ip_address)]
    pub bind: std::net::IpAddr,

    /// Port of the probe server
    #[arg(
        long,
        env = "HURRICANE_PROBE_PORT",
        value_name = "PORT",
        default_value_t = 8001
    )]
    pub probe_port: u16,

    /// POST a JSON event here on startup, readiness/liveness changes and shutdown (repeatable)
    #[arg(long, env = "HURRICANE_WEBHOOK_URL", value_name = "URL", value_delimiter = ',', value_parser = webhook_url)]
    pub webhook_url: Vec<String>,

    #[command(flatten)]
    pub interpreter: InterpreterArgs,

    #[command(flatten)]
    pub probes: ProbeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("hurricane").chain(args.iter().copied()))
            .map(Cli::into_serve)
    }

    #[test]
    fn serve_is_the_default_command() {
        let plain = parse(&["-w", "app.wsgi", "--port", "9000"]).unwrap();
        let sub = parse(&["serve", "-w", "app.wsgi", "--port", "9000"]).unwrap();
        assert_eq!(plain.wsgi.as_deref(), Some("app.wsgi"));
        assert_eq!(sub.wsgi, plain.wsgi);
        assert_eq!(sub.port, 9000);
    }

    #[test]
    fn wsgi_is_required() {
        let err = parse(&["--port", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(parse(&["serve"]).is_err());
    }

    #[test]
    fn probe_is_an_alias_of_liveness_probe() {
        let args = parse(&["-w", "a", "--probe", "/healthz"]).unwrap();
        assert_eq!(args.probes.liveness_probe, "/healthz");
    }

    #[test]
    fn values_are_checked() {
        assert!(parse(&["-w", "a", "--workers", "0"]).is_err());
        assert!(parse(&["-w", "a", "--graceful-timeout", "-1"]).is_err());
        assert!(parse(&["-w", "a", "--readiness-probe", "ready"]).is_err());
        let args = parse(&["-w", "a", "--graceful-timeout", "0.5", "--no-probe"]).unwrap();
        assert_eq!(args.graceful_timeout, Duration::from_millis(500));
        assert!(args.probes.no_probe);
    }
}
