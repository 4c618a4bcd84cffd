//! `hurricane celery -- COMMAND`: the user's own Celery command (worker or beat), run by our
//! bootstrap in its interpreter so hooks inside it report to the master (`celery`, the reports'
//! rules; `python/hurricane/celery_hooks.py`, the hooks).
//!
//! Why it is a kind like the others: the pool supervises it (boot, ready, drain, the kill), but as
//! the service itself (`Supervision::Service`): it is never respawned, reloaded or scaled, its exit
//! code is the master's, and a second TERM gives Celery its cold shutdown (SIGQUIT) first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::args::{InterpreterArgs, LogArgs, ProbeArgs, ip_address, seconds, webhook_url};
use crate::celery::Celery as Reports;
use crate::config::{Common, Config, Parts, Usage};
use crate::debugger::Debugger;
use crate::kind::{Embedded, Kind};
use crate::kinds::Setup;
use crate::metrics::Snapshot;
use crate::pool::{PoolConfig, Signal, Supervision, WorkerId};
use crate::protocol::Message;
use crate::spawn::Launch;
use crate::state::Health;

/// Our hooks report in at once; Celery's own start is judged by worker_ready.
const BOOT_TIMEOUT_S: u64 = 60;

/// The Celery kind's supervision: the command is the service, and Celery's cold shutdown
/// (running tasks abandoned, the process exits at once) is SIGQUIT.
pub fn supervision() -> Supervision {
    Supervision::Service {
        escalation: Signal::Quit,
    }
}

/// `hurricane celery [OPTIONS] -- COMMAND...`: the user's Celery command, as given, under hurricane's
/// probes, metrics, webhooks and PID 1 duties.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The Celery command, after `--`: `celery -A proj worker ...`, `celery -A proj beat`, or
    /// `python -m celery ...`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Seconds the worker's event loop (beat: its scheduler) may go without a tick before /alive fails
    #[arg(long, env = "HURRICANE_LIVENESS_TIMEOUT", value_name = "S", default_value = "60", value_parser = seconds)]
    pub liveness_timeout: Duration,

    /// Seconds between readings of the length of every queue the worker consumes, on the worker's
    /// own broker connection (RabbitMQ or Redis), exported as hurricane_celery_queue_length (0: never)
    #[arg(long, env = "HURRICANE_QUEUE_STATS_INTERVAL", value_name = "S", default_value = "5", value_parser = seconds)]
    pub queue_stats_interval: Duration,

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

/// Where a program is: itself if it names a path, else the first match on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path
            .is_file()
            .then(|| std::path::absolute(path).unwrap_or_else(|_| path.into()));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A script's interpreter, from its `#!` line (`#!/usr/bin/env python3` included).
fn shebang(script: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(script).ok()?, &mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?.lines().next()?;
    let mut words = line.strip_prefix("#!")?.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        return Some(PathBuf::from(words.find(|w| !w.starts_with('-'))?));
    }
    Some(PathBuf::from(first))
}

fn is_python(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
}

impl Args {
    /// How the bootstrap runs the command: (interpreter, {module|path, argv}).
    fn command(&self) -> Result<(PathBuf, Map<String, Value>), Usage> {
        let command = &self.command;
        let program = &command[0];
        let found = find_program(program).ok_or_else(|| {
            Usage(format!(
                "cannot find '{program}' on PATH; activate the virtualenv that has Celery, or give its path"
            ))
        })?;
        let explicit = self
            .interpreter
            .python
            .as_ref()
            .map(|p| crate::config::python(&Some(p.clone())));
        let as_map = |value: Value| match value {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if is_python(&found) {
            let interpreter = explicit.unwrap_or(found);
            return match command.get(1).map(String::as_str) {
                Some("-m") if command.len() > 2 => Ok((
                    interpreter,
                    as_map(json!({"module": command[2], "argv": command[2..]})),
                )),
                Some(script) if !script.starts_with('-') => Ok((
                    interpreter,
                    as_map(json!({"path": script, "argv": command[1..]})),
                )),
                _ => Err(Usage(format!(
                    "'{}' is not a Celery command: give `celery -A proj worker`, `python -m celery ...` or a script",
                    command.join(" ")
                ))),
            };
        }
        let interpreter = match explicit.or_else(|| shebang(&found)) {
            Some(python) => python,
            None => {
                return Err(Usage(format!(
                    "'{}' is not a Python script (no #! line); hurricane celery runs Python programs: pass --python PATH if it is one",
                    found.display()
                )));
            }
        };
        if !is_python(&interpreter) {
            return Err(Usage(format!(
                "'{}' is run by '{}', not by Python; hurricane celery runs Python programs (pass --python to override)",
                found.display(),
                interpreter.display()
            )));
        }
        let mut argv = vec![found.display().to_string()];
        argv.extend(command[1..].iter().cloned());
        Ok((interpreter, as_map(json!({"path": found, "argv": argv}))))
    }
}

impl Setup for Args {
    fn log(&self) -> &LogArgs {
        &self.log
    }

    /// The Celery app has its own configuration.
    fn django_settings(&self) -> Option<(&InterpreterArgs, &'static str, &'static [&'static str])> {
        None
    }

    fn build(self: Box<Self>) -> Result<Config, Usage> {
        let common = Common {
            interpreter: &self.interpreter,
            probes: &self.probes,
            log: &self.log,
            webhook_url: &self.webhook_url,
            bind: self.bind,
        };
        let (python, mut command) = self.command()?;
        common.chdir()?;
        let display = self.command.join(" ");
        command.insert(
            "liveness_s".into(),
            json!(self.liveness_timeout.as_secs_f64()),
        );
        command.insert(
            "queue_stats_s".into(),
            json!(self.queue_stats_interval.as_secs_f64()),
        );
        command.insert("display".into(), json!(display));
        let mut settings = Map::new();
        settings.insert("command".into(), Value::Object(command));
        let pool = PoolConfig::new(
            1,
            Duration::from_secs(BOOT_TIMEOUT_S),
            self.graceful_timeout,
        );
        let worker = common.worker(
            &display,
            "celery",
            settings,
            &pool,
            false,
            false,
        );
        Ok(common.config(Parts {
            kind: Box::new(CeleryCommand {
                embedded: Embedded {
                    python: python.clone(),
                    config: worker,
                    debugger: Debugger::Off,
                },
                reports: Reports::new(self.liveness_timeout),
            }),
            app: display,
            python,
            pool,
            listen: None,
            probe_port: Some(self.probe_port),
            req_queue_len: None,
            autoreload: None,
            prestart: None,
        }))
    }
}

/// The user's Celery command with our hooks in it, and what they reported.
pub struct CeleryCommand {
    embedded: Embedded,
    reports: Reports,
}

impl Kind for CeleryCommand {
    fn name(&self) -> &'static str {
        "celery"
    }

    fn supervision(&self) -> Supervision {
        supervision()
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        self.embedded.launch(worker, generation)
    }

    /// Celery uses SIGUSR1 itself (it dumps tracebacks): hurricane's log reopen is not forwarded.
    fn forwards_log_reopen(&self) -> bool {
        false
    }

    fn message(&mut self, _pid: i32, message: &Message, now: Instant) -> bool {
        match message {
            Message::Celery(event) => self.reports.event(event, now),
            _ => false,
        }
    }

    fn judge(&self, health: &mut Health, now: Instant) {
        self.reports.judge(health, now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.reports.next_deadline()
    }

    fn metrics(&self, snapshot: &mut Snapshot) {
        snapshot.celery = Some(self.reports.snapshot(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    //! The Celery kind's own rules, driven through the real pool (its test harness: a fake clock
    //! and fake processes).
    use super::*;
    use crate::lifecycle::{ExitStatus, Shutdown};
    use crate::pool::FAST_SHUTDOWN_GRACE_MS;
    use crate::pool::tests::{Harness, ready};

    /// The seam for kinds of process: the same pool runs a supervised command that is the service
    /// (`hurricane celery`), ending with its exit code instead of respawning it.
    #[test]
    fn a_command_kind_ends_the_service_with_its_exit_code() {
        let mut h = Harness::of(1, supervision());
        ready(&mut h, 100);
        assert!(h.pool.health().started);
        h.exit(100, ExitStatus::Code(7));
        assert_eq!(h.exit, Some(7), "the command's code is the master's");
        assert_eq!(h.alive, Vec::<i32>::new(), "never respawned");

        let mut h = Harness::of(1, supervision());
        ready(&mut h, 100);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Term)]);
        h.exit(100, ExitStatus::Signal(9));
        assert_eq!(h.exit, Some(137), "128 + the signal, as a shell reports it");
    }

    #[test]
    fn a_second_term_gives_a_command_its_cold_shutdown_before_the_kill() {
        let mut h = Harness::of(1, supervision());
        ready(&mut h, 100);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.pool.shutdown(Shutdown::Graceful, h.now);
        h.run();
        assert_eq!(h.signals, vec![(100, Signal::Term), (100, Signal::Quit)]);
        h.advance(Duration::from_millis(FAST_SHUTDOWN_GRACE_MS));
        assert_eq!(h.signals.last(), Some(&(100, Signal::Kill)));
    }

    #[test]
    fn a_command_kind_is_never_reloaded_or_scaled_into_a_second_process() {
        let mut h = Harness::of(1, supervision());
        ready(&mut h, 100);
        h.pool.reload(h.now);
        h.pool.scale(true, h.now);
        h.run();
        assert_eq!(h.alive, vec![100]);
        assert!(h.signals.is_empty());
    }
}
