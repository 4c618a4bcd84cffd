//! `hurricane serve -w app.wsgi` (the default command): our embedded HTTP worker, in the user's
//! interpreter, N of them sharing the listening socket.
//!
//! Why this kind has no state in the master: a WSGI worker is ready when its app imported, its
//! heartbeat carries request counters (summed by the master for every kind), and the probes need
//! nothing beyond the pool's health and the accept queue. Everything it adds is configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use serde_json::{Map, Value, json};

use crate::args::{DebugArgs, InterpreterArgs, LogArgs, ProbeArgs, ip_address, seconds, webhook_url, workers};
use crate::debugger::Debugger;
use crate::config::{Common, Config, Listen, Parts, Usage, absolute, is_dotted};
use crate::kind::{Embedded, Kind};
use crate::kinds::Setup;
use crate::pool::{PoolConfig, WorkerId};
use crate::prestart::Prestart;
use crate::spawn::Launch;
use crate::state::Doorbell;

/// `--threads`: how a worker runs its WSGI app.
///
/// Why `auto` is the default: a view that waits on PostgreSQL leaves a single-threaded worker idle
/// for the wait (an insert's commit, a connection per request at Django's `CONN_MAX_AGE=0`), while a
/// view that only computes loses ~10 % to a hand-off per request. The worker measures which one it
/// serves (`http/governor.py`) instead of asking the user to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// On the event loop until sampled requests show the app waiting, then on a pool sized from the wait.
    Auto,
    /// Always this many (1: on the event loop).
    Fixed(u16),
}

impl Threads {
    fn parse(value: &str) -> Result<Threads, String> {
        if value.eq_ignore_ascii_case("auto") {
            return Ok(Threads::Auto);
        }
        match value.parse::<u16>() {
            Ok(n @ 1..=1024) => Ok(Threads::Fixed(n)),
            _ => Err(format!("'{value}' is not auto or a thread count from 1 to 1024")),
        }
    }

    fn setting(self) -> Value {
        match self {
            Threads::Auto => json!("auto"),
            Threads::Fixed(n) => json!(n),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The WSGI app to serve: a module, optionally with the callable's name (default `application`)
    #[arg(
        short = 'w',
        long = "wsgi",
        env = "HURRICANE_WSGI",
        value_name = "MODULE[:ATTR]",
        required_unless_present = "asgi"
    )]
    pub wsgi: Option<String>,

    #[command(flatten)]
    pub asgi: crate::kinds::asgi::Args,

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

    /// Threads per worker running the app: auto starts a pool when the app is seen waiting on I/O
    /// (a database, an API), N always runs N threads, 1 runs the app on the event loop
    #[arg(long, env = "HURRICANE_THREADS", value_name = "auto|N", default_value = "auto", value_parser = Threads::parse)]
    pub threads: Threads,

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

    #[command(flatten)]
    pub debug: DebugArgs,
}

/// A static or media mount for the worker: None when off; the root may come from Django's settings.
fn mount(on: bool, url: &Option<String>, root: &Option<PathBuf>, default_url: &str) -> Value {
    if !on && root.is_none() {
        return Value::Null;
    }
    json!({
        "url": url,
        "default_url": default_url,
        "root": root.as_deref().map(|r| absolute(r).display().to_string()),
    })
}

impl Args {
    fn common(&self) -> Common<'_> {
        Common {
            interpreter: &self.interpreter,
            probes: &self.probes,
            log: &self.log,
            webhook_url: &self.webhook_url,
            bind: self.bind,
        }
    }

    /// --command and --check-migrations, run before the first worker.
    fn prestart(&self, python: &std::path::Path) -> Result<Prestart, Usage> {
        let prestart = Prestart {
            commands: self
                .command
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            check_migrations: self.check_migrations,
            apply_migrations: self.check_migrations_apply,
            python: python.to_path_buf(),
            pythonpath: self
                .interpreter
                .pythonpath
                .iter()
                .map(|p| absolute(p).display().to_string())
                .collect(),
        };
        if !prestart.is_empty()
            && std::env::var_os("DJANGO_SETTINGS_MODULE").is_none_or(|v| v.is_empty())
        {
            return Err(Usage(
                "--command and --check-migrations run Django management commands: set DJANGO_SETTINGS_MODULE".into(),
            ));
        }
        Ok(prestart)
    }

    /// What the HTTP server needs beyond the common settings: limits, proxies, static mounts.
    fn settings(&self) -> Map<String, Value> {
        let mut settings = Map::new();
        settings.insert("keep_alive".into(), json!(self.keep_alive.as_secs_f64()));
        settings.insert(
            "http".into(),
            json!({
                "threads": self.threads.setting(),
                "backlog": self.backlog,
                "access_log": self.access_log,
                "limit_request_line": self.limit_request_line,
                "limit_request_fields": self.limit_request_fields,
                "limit_request_field_size": self.limit_request_field_size,
                "max_body_size": self.max_body_size,
                "min_body_rate": self.min_body_rate,
                "write_timeout": self.write_timeout.as_secs_f64(),
                "forwarded_allow_ips": self.forwarded_allow_ips.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                "static": mount(self.r#static, &self.static_url, &self.static_root, "/static/"),
                "media": mount(self.media, &self.media_url, &self.media_root, "/media/"),
            }),
        );
        settings
    }
}

impl Setup for Args {
    fn log(&self) -> &LogArgs {
        &self.log
    }

    fn django_settings(&self) -> Option<(&InterpreterArgs, &'static str, &'static [&'static str])> {
        Some((&self.interpreter, "serve", &["HURRICANE_"]))
    }

    fn build(self: Box<Self>) -> Result<Config, Usage> {
        let common = self.common();
        let python = crate::config::python(&self.interpreter.python);
        common.chdir()?;
        let (flag, app) = match (&self.wsgi, &self.asgi.asgi) {
            (_, Some(asgi)) => ("--asgi", asgi.clone()),
            (wsgi, None) => ("-w", wsgi.clone().unwrap_or_default()),
        };
        if !is_dotted(app.split(':').next().unwrap_or_default()) {
            return Err(Usage(format!(
                "{flag} '{app}' is not MODULE[:ATTR]: give a dotted module path such as mysite.wsgi, not a file name"
            )));
        }
        if self.asgi.asgi.is_some() && matches!(self.threads, Threads::Fixed(n) if n > 1) {
            return Err(Usage(
                "--threads runs a WSGI app on threads; an ASGI app runs on its worker's event loop (Django runs sync views in a thread of its own): drop --threads or use -w".into(),
            ));
        }
        let prestart = self.prestart(&python)?;
        let autoreload = common.autoreload(
            self.autoreload,
            &self.reload_include,
            &self.reload_exclude,
            &self.reload_dir,
        )?;
        let workers = common.workers(self.workers)?;
        let mut pool = PoolConfig {
            shutdown_delay: self.shutdown_delay,
            timeout: Some(self.timeout).filter(|t| !t.is_zero()),
            heartbeat_timeout: Some(self.heartbeat_timeout).filter(|t| !t.is_zero()),
            max_requests: Some(self.max_requests).filter(|n| *n > 0),
            max_requests_jitter: self.max_requests_jitter,
            max_memory_bytes: Some(self.max_memory.saturating_mul(1 << 20)).filter(|n| *n > 0),
            ..PoolConfig::new(workers, self.boot_timeout, self.graceful_timeout)
        };
        let debugger = Debugger::from_args(&self.debug, self.bind, &python)?;
        let mut preload = self.preload;
        debugger.restrict(&mut pool, &mut preload);
        let mut settings = self.settings();
        settings.insert("debugger".into(), debugger.settings());
        let asgi = match &self.asgi.asgi {
            Some(_) => Some(self.asgi.settings(&python)?),
            None => None,
        };
        if let Some(asgi) = &asgi {
            settings.insert("asgi".into(), asgi.clone());
        }
        let worker = common.worker(
            &app,
            if asgi.is_some() { "asgi" } else { "http" },
            settings,
            &pool,
            self.autoreload,
            preload,
        );
        Ok(common.config(Parts {
            kind: {
                let embedded = Embedded {
                    python: python.clone(),
                    config: worker,
                    debugger,
                };
                match asgi {
                    Some(_) => Box::new(crate::kinds::asgi::Asgi::new(embedded)),
                    None => Box::new(Http(embedded)),
                }
            },
            app,
            python,
            pool,
            listen: Some(Listen {
                bind: self.bind,
                port: self.port,
                backlog: self.backlog,
            }),
            probe_port: self.probe_port,
            req_queue_len: self.req_queue_len,
            autoreload,
            prestart: Some(prestart),
        }))
    }
}

/// Our embedded HTTP worker on the shared socket: a pool of interchangeable workers.
pub struct Http(Embedded);

impl Kind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        self.0.launch(worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        self.0.zygote(generation)
    }

    fn start(&mut self, _bell: Doorbell) -> Result<(), String> {
        self.0.debugger.claim_port()
    }
}
