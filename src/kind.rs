//! Kinds of supervised process: what a slot runs, and what differs from one kind to the next.
//!
//! Why a trait and not an assumption: the pool's state machine (spawn, boot, ready, drain, respawn,
//! reload) is the same whether a slot runs our HTTP worker, an AMQP handler worker or a user's own
//! command (Celery); what differs is a value. Each kind says
//! - how one process is started (`launch`: program, arguments, the bootstrap on its control pipe);
//! - which supervision rules apply (`pool::Rules`: e.g. whether the service ends with the process);
//! - what "ready" and the heartbeat mean, which is the worker protocol's `Ready` and `Heartbeat`
//!   messages as that kind's bootstrap sends them (for HTTP: the app imported; idle/busy and
//!   request counters).
//!
//! Three kinds exist: the HTTP worker (`serve`), the AMQP handler worker (`consume`) and the user's
//! own command with our hooks in it (`celery`). The first two can be forked from a --preload
//! zygote instead of exec'd (`zygote`); a user's command cannot.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::pool::{Rules, Signal, WorkerId};
use crate::spawn::Launch;
use crate::worker::{self, WorkerConfig};

/// A kind of process the master can supervise.
pub trait Kind: Rules {
    /// For logs: `kind=http`.
    fn name(&self) -> &'static str;
    /// How to start worker `worker` of generation `generation`.
    fn launch(&self, worker: WorkerId, generation: u64) -> Launch;
    /// Whether SIGUSR1 (reopen --log-file) is passed on to its processes.
    fn forwards_log_reopen(&self) -> bool {
        true
    }
    /// --preload: how to start the zygote of generation `generation`, which workers are then
    /// forked from; None when this kind's workers are exec'd each.
    fn zygote(&self, _generation: u64) -> Option<Launch> {
        None
    }
}

/// The zygote of a kind whose workers run our embedded worker, when --preload asks for one.
fn embedded_zygote(python: &Path, config: &WorkerConfig, generation: u64) -> Option<Launch> {
    config.preload.then(|| Launch {
        program: python.to_path_buf(),
        args: vec![
            OsString::from("-c"),
            OsString::from(worker::STAGE_ONE),
            OsString::from(format!("hurricane-zygote-{generation}")),
        ],
        bootstrap: worker::zygote_bootstrap(config, generation),
    })
}

/// Our embedded worker in `python`, set up by `config` (its mode says HTTP, AMQP or Celery): stage
/// one on the command line, the rest down the control pipe.
fn embedded_worker(
    python: &Path,
    config: &WorkerConfig,
    worker: WorkerId,
    generation: u64,
) -> Launch {
    Launch {
        program: python.to_path_buf(),
        // The last argument is only for `ps`: it names the worker.
        args: vec![
            OsString::from("-c"),
            OsString::from(worker::STAGE_ONE),
            OsString::from(format!("hurricane-worker-{worker}")),
        ],
        bootstrap: worker::bootstrap(config, worker, generation),
    }
}

/// `hurricane serve`: our embedded HTTP worker, in the user's interpreter, on the shared socket.
pub struct Http {
    pub python: PathBuf,
    pub config: WorkerConfig,
}

/// A pool of interchangeable workers: every default rule.
impl Rules for Http {}

impl Kind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        embedded_worker(&self.python, &self.config, worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        embedded_zygote(&self.python, &self.config, generation)
    }
}

/// `hurricane consume`: our embedded handler worker, in the user's interpreter, with no socket;
/// deliveries come down its control pipe.
pub struct AmqpHandler {
    pub python: PathBuf,
    /// The worker's settings (`mode: amqp`, the handler, the broker's names for its constructor).
    pub config: WorkerConfig,
}

/// A pool of interchangeable handler workers: every default rule.
impl Rules for AmqpHandler {}

impl Kind for AmqpHandler {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        embedded_worker(&self.python, &self.config, worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        embedded_zygote(&self.python, &self.config, generation)
    }
}

/// `hurricane celery`: the user's own command (Celery worker or beat) run by our bootstrap in its
/// interpreter, so hooks inside it report to the master. It is the service: it is never respawned,
/// and its exit code is the master's.
pub struct Command {
    pub python: PathBuf,
    /// `mode: celery`, with how to run the command.
    pub config: WorkerConfig,
}

impl Rules for Command {
    fn service_ends_with_process(&self) -> bool {
        true
    }

    /// Celery's cold shutdown: running tasks are abandoned, the process exits at once.
    fn escalation(&self) -> Signal {
        Signal::Quit
    }
}

impl Kind for Command {
    fn name(&self) -> &'static str {
        "celery"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        embedded_worker(&self.python, &self.config, worker, generation)
    }

    /// Celery uses SIGUSR1 itself (it dumps tracebacks): hurricane's log reopen is not forwarded.
    fn forwards_log_reopen(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn http(preload: bool) -> Http {
        Http {
            python: PathBuf::from("/venv/bin/python"),
            config: WorkerConfig {
                app: "mysite.wsgi".into(),
                pythonpath: vec![],
                keep_alive: Duration::from_secs(5),
                graceful_timeout: Duration::from_secs(30),
                heartbeat: Duration::from_secs(1),
                autoreload: false,
                workers: 2,
                http: serde_json::json!({}),
                mode: crate::worker::Mode::Http,
                preload,
            },
        }
    }

    #[test]
    fn an_http_worker_runs_stage_one_in_the_users_python_and_is_named_for_ps() {
        let http = http(false);
        let launch = http.launch(7, 2);
        assert_eq!(launch.program, PathBuf::from("/venv/bin/python"));
        assert_eq!(launch.args[1], OsString::from(worker::STAGE_ONE));
        assert_eq!(launch.args[2], OsString::from("hurricane-worker-7"));
        assert_eq!(launch.bootstrap, worker::bootstrap(&http.config, 7, 2));
        assert!(!http.service_ends_with_process());
        assert_eq!(http.name(), "http");
        assert_eq!(http.zygote(2), None, "no zygote without --preload");
    }

    #[test]
    fn with_preload_an_http_kind_has_a_zygote_per_generation() {
        let http = http(true);
        let zygote = http.zygote(3).expect("--preload");
        assert_eq!(zygote.args[2], OsString::from("hurricane-zygote-3"));
        assert_eq!(zygote.bootstrap, worker::zygote_bootstrap(&http.config, 3));
    }
}
