//! What the master is given to run (`Config`), and the one builder every kind uses to make it.
//!
//! Why one builder: the options every command shares (the interpreter and --chdir, the worker
//! count and its process limit, the probe server, webhooks, the log, the pool's timeouts) must
//! mean the same in `serve`, `consume` and `celery`; each kind's module adds only what is its own
//! (its `Kind`, its listening socket, its pool rules). This module sits below the kinds and the
//! master, so neither imports the other.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::args::{InterpreterArgs, LogArgs, ProbeArgs};
use crate::kind::Kind;
use crate::pool::PoolConfig;
use crate::prestart::Prestart;
use crate::probe::{Paths, ProbeConfig};
use crate::protocol::WorkerConfig;
use crate::reload;

/// Processes and threads besides the workers that count against RLIMIT_NPROC (the master's
/// threads, the probe connections, pre-start commands).
const PROCESS_MARGIN: u64 = 16;
/// How often a worker reports in (DESIGN.md: heartbeat every second).
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;

pub use crate::args::Usage;

/// Where `serve` listens.
pub struct Listen {
    pub bind: IpAddr,
    pub port: u16,
    pub backlog: i32,
}

/// Everything the master runs with.
pub struct Config {
    /// The app's socket; None for kinds whose workers listen on nothing.
    pub listen: Option<Listen>,
    /// Where the probe server binds when there is no app socket to sit beside.
    pub probe_bind: IpAddr,
    /// What each slot runs, with the kind's own state.
    pub kind: Box<dyn Kind>,
    /// The probe server; None with --no-probe.
    pub probe: Option<ProbeConfig>,
    pub pool: PoolConfig,
    /// --autoreload: what counts as a change, and --reload-dir directories.
    pub autoreload: Option<(reload::Filter, Vec<PathBuf>)>,
    pub webhook_urls: Vec<String>,
    /// --command, --check-migrations: run before the first worker starts.
    pub prestart: Prestart,
    /// For the `event=listening` line.
    pub app: String,
    pub python: PathBuf,
}

/// The workers' interpreter; a relative path is taken from where hurricane was started, before
/// --chdir.
pub fn python(explicit: &Option<PathBuf>) -> PathBuf {
    if let Some(python) = explicit {
        if python.components().count() > 1 {
            return std::path::absolute(python).unwrap_or_else(|_| python.clone());
        }
        return python.clone();
    }
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) if !venv.is_empty() => PathBuf::from(venv).join("bin/python"),
        _ => PathBuf::from("python3"),
    }
}

/// A path as the workers get it: absolute, since they may run from another directory.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `module` is a dotted Python module path (`mysite.wsgi`), not a file name.
pub fn is_dotted(module: &str) -> bool {
    !module.is_empty()
        && module
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

/// The options every command shares, and what follows from them.
pub struct Common<'a> {
    pub interpreter: &'a InterpreterArgs,
    pub probes: &'a ProbeArgs,
    pub log: &'a LogArgs,
    pub webhook_url: &'a [String],
    pub bind: IpAddr,
}

impl Common<'_> {
    /// --chdir, after the interpreter's path (relative to where hurricane started) was resolved.
    pub fn chdir(&self) -> Result<(), Usage> {
        if let Some(dir) = &self.interpreter.chdir {
            std::env::set_current_dir(dir)
                .map_err(|e| Usage(format!("--chdir '{}': {e}", dir.display())))?;
        }
        Ok(())
    }

    /// --workers, or the CPUs this process may use; refused when the process limit could not
    /// hold the pool (better one clear line now than a fork failing halfway through startup).
    pub fn workers(&self, asked: Option<usize>) -> Result<usize, Usage> {
        let workers =
            asked.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        use nix::sys::resource::{Resource, getrlimit};
        let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NPROC) else {
            return Ok(workers);
        };
        // The master's own threads and processes of the user's other programs count too.
        if soft != nix::sys::resource::RLIM_INFINITY && workers as u64 + PROCESS_MARGIN >= soft {
            return Err(Usage(format!(
                "--workers {workers} needs more processes than the limit allows (ulimit -u is {soft}); \
                 give fewer workers or raise the limit"
            )));
        }
        Ok(workers)
    }

    /// The worker's settings: the common ones (the pool's size and drain time among them), and
    /// the kind's own (`kind`, `settings`).
    pub fn worker(
        &self,
        app: &str,
        kind: &'static str,
        settings: Map<String, Value>,
        pool: &PoolConfig,
        autoreload: bool,
        preload: bool,
    ) -> WorkerConfig {
        WorkerConfig {
            app: app.to_string(),
            pythonpath: self.interpreter.pythonpath_strings(),
            graceful_timeout: pool.graceful_timeout,
            heartbeat: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
            autoreload,
            workers: pool.size,
            log_file: self.log.log_file.as_deref().map(absolute),
            log_json: self.log.log_format == "json",
            kind,
            settings,
            preload,
        }
    }

    /// --autoreload's filter, with --reload-include/--reload-exclude and --reload-dir.
    pub fn autoreload(
        &self,
        on: bool,
        include: &[String],
        exclude: &[String],
        dirs: &[PathBuf],
    ) -> Result<Option<(reload::Filter, Vec<PathBuf>)>, Usage> {
        if !on {
            return Ok(None);
        }
        let filter = reload::Filter::new(include, exclude)
            .map_err(|e| Usage(format!("--reload-include/--reload-exclude: {e}")))?;
        Ok(Some((filter, dirs.to_vec())))
    }

    /// The probe server's settings; None with --no-probe.
    pub fn probe(&self, port: Option<u16>, req_queue_len: Option<u32>) -> Option<ProbeConfig> {
        let probes = self.probes;
        (!probes.no_probe).then(|| ProbeConfig {
            port,
            paths: Paths {
                startup: probes.startup_probe.clone(),
                ready: probes.readiness_probe.clone(),
                alive: probes.liveness_probe.clone(),
            },
            metrics: (!probes.no_metrics).then(|| probes.metrics.clone()),
            log_probes: self.log.log_probes,
            check_interval: probes.check_interval,
            debug: probes.debug,
            req_queue_len,
            listen_fd: -1,
        })
    }

    /// The master's configuration: the kind with its pool, and the common parts.
    pub fn config(&self, parts: Parts) -> Config {
        let mut pool = parts.pool;
        // Two pods started together still recycle their workers at different moments.
        pool.jitter_seed = u64::from(std::process::id());
        Config {
            listen: parts.listen,
            probe_bind: self.bind,
            kind: parts.kind,
            probe: self.probe(parts.probe_port, parts.req_queue_len),
            pool,
            autoreload: parts.autoreload,
            webhook_urls: self.webhook_url.to_vec(),
            prestart: parts.prestart.unwrap_or_else(|| Prestart {
                python: parts.python.clone(),
                ..Prestart::default()
            }),
            app: parts.app,
            python: parts.python,
        }
    }
}

/// What a kind's module decides for the master's configuration.
pub struct Parts {
    pub kind: Box<dyn Kind>,
    pub app: String,
    pub python: PathBuf,
    pub pool: PoolConfig,
    pub listen: Option<Listen>,
    pub probe_port: Option<u16>,
    pub req_queue_len: Option<u32>,
    pub autoreload: Option<(reload::Filter, Vec<PathBuf>)>,
    /// None: nothing runs before the workers.
    pub prestart: Option<Prestart>,
}
