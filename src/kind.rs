//! Kinds of supervised process: what a slot runs, and everything that differs from one kind to
//! the next, behind one trait.
//!
//! Why a trait and not branches in the master: the pool's state machine (spawn, boot, ready,
//! drain, respawn, reload) and the master's loop are the same whether a slot runs our HTTP worker,
//! an AMQP handler worker or a user's own command (Celery); what differs is a value, and state that
//! only one kind has (consume's broker link, Celery's reports) belongs to that kind, not to a field
//! of the master. Each kind says
//! - how one process is started (`launch`, and with --preload its `zygote`);
//! - which supervision rules apply (`pool::Supervision`: a pool of workers, or a process that is
//!   the service);
//! - what its workers' reports mean beyond the common ones (`message`), what the probes should
//!   say (`judge`) and what the metrics show (`metrics`);
//! - what it needs from the loop: a thread of its own that rings a doorbell (`start`, `woken`),
//!   bytes for its workers (`pump`), a deadline (`next_deadline`), a goodbye (`close`), and
//!   whether its workers' status lines may wait for the loop's next round (`status_polled`).
//!
//! The kinds themselves live in `kinds/`, one module each with its options, its configuration and
//! its `Kind`; `cli` registers them. This module imports none of them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::debugger::Debugger;
use crate::metrics::Snapshot;
use crate::pool::{Supervision, WorkerId};
use crate::protocol::{self, Message, WorkerConfig};
use crate::spawn::Launch;
use crate::state::{Doorbell, Health};

/// What a kind's `pump` gives the loop to do.
#[derive(Debug, Default)]
pub struct Pump {
    /// The service cannot go on (e.g. the broker is lost for good): stop with exit code 1.
    pub fatal: Option<String>,
    /// Bytes to append to a worker's control pipe, by pid.
    pub frames: Vec<(i32, Vec<u8>)>,
}

/// A kind of process the master can supervise.
pub trait Kind {
    /// For logs: `kind=http`.
    fn name(&self) -> &'static str;

    /// How the pool treats a process of this kind.
    fn supervision(&self) -> Supervision {
        Supervision::Pool
    }

    /// How to start worker `worker` of generation `generation`.
    fn launch(&self, worker: WorkerId, generation: u64) -> Launch;

    /// --preload: how to start the zygote of generation `generation`, which workers are then
    /// forked from; None when this kind's workers are exec'd each.
    fn zygote(&self, _generation: u64) -> Option<Launch> {
        None
    }

    /// Whether SIGUSR1 (reopen --log-file) is passed on to its processes.
    fn forwards_log_reopen(&self) -> bool {
        true
    }

    /// Starts what the kind runs beside the pool (consume: the broker thread), which rings `bell`
    /// when it has news for `woken`. Called once, before the first worker starts; an error says
    /// what could not start, for the user.
    fn start(&mut self, _bell: Doorbell) -> Result<(), String> {
        Ok(())
    }

    /// The kind's doorbell rang.
    fn woken(&mut self) {}

    /// A worker's message, after the master's own handling; returns true when it says the app is
    /// a Django project (so the probes may ask for its checks).
    fn message(&mut self, _pid: i32, _message: &Message, _now: Instant) -> bool {
        false
    }

    /// The pool is about to signal worker `pid` (drain, kill): it takes no more work.
    fn worker_leaving(&mut self, _pid: i32) {}

    /// Worker `pid` was reaped.
    fn worker_gone(&mut self, _pid: i32) {}

    /// After each round of events: what to write to which worker, and whether the service must stop.
    fn pump(&mut self, _stopping: bool) -> Pump {
        Pump::default()
    }

    /// Adds the kind's own verdicts to the pool's health (e.g. /ready needs the broker).
    fn judge(&self, _health: &mut Health, _now: Instant) {}

    /// When the kind next needs the loop to wake, without an event.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Some(every) while its workers' status lines can wait that long: they no longer wake the
    /// loop, which reads them every round and at least that often (see `master::statuses`).
    fn status_polled(&self, _now: Instant) -> Option<Duration> {
        None
    }

    /// Adds the kind's own series to the metrics snapshot.
    fn metrics(&self, _snapshot: &mut Snapshot) {}

    /// The master is exiting: settle and close what the kind holds.
    fn close(&mut self) {}
}

/// The zygote of a kind whose workers run our embedded worker, when --preload asks for one.
pub fn embedded_zygote(python: &Path, config: &WorkerConfig, generation: u64) -> Option<Launch> {
    config.preload.then(|| Launch {
        program: python.to_path_buf(),
        args: stage_one(format!("hurricane-zygote-{generation}")),
        bootstrap: protocol::zygote_bootstrap(config, generation),
    })
}

/// Our embedded worker in `python`, set up by `config` (its `kind` says which Python side runs):
/// stage one on the command line, the rest down the control pipe.
pub fn embedded_worker(
    python: &Path,
    config: &WorkerConfig,
    worker: WorkerId,
    generation: u64,
) -> Launch {
    Launch {
        program: python.to_path_buf(),
        args: stage_one(format!("hurricane-worker-{worker}")),
        bootstrap: protocol::bootstrap(config, worker, generation),
    }
}

/// `python -c STAGE_ONE NAME`: the last argument is only for `ps`, it names the process.
fn stage_one(name: String) -> Vec<OsString> {
    vec![
        OsString::from("-c"),
        OsString::from(protocol::STAGE_ONE),
        OsString::from(name),
    ]
}

/// What every kind that runs our embedded worker holds: the interpreter, the worker's settings,
/// and the debugger it attaches to, if any.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub python: PathBuf,
    pub config: WorkerConfig,
    pub debugger: Debugger,
}

impl Embedded {
    /// A worker of `kind` in /venv/bin/python with everything else at its defaults (unit tests).
    #[cfg(test)]
    pub fn for_tests(kind: &'static str, preload: bool) -> Embedded {
        Embedded {
            python: PathBuf::from("/venv/bin/python"),
            config: WorkerConfig {
                app: "mysite.wsgi".into(),
                pythonpath: vec![],
                graceful_timeout: std::time::Duration::from_secs(30),
                heartbeat: std::time::Duration::from_secs(1),
                autoreload: false,
                workers: 2,
                log_file: None,
                log_json: false,
                kind,
                settings: serde_json::Map::new(),
                preload,
            },
            debugger: Debugger::Off,
        }
    }

    pub fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        embedded_worker(&self.python, &self.config, worker, generation)
    }

    pub fn zygote(&self, generation: u64) -> Option<Launch> {
        embedded_zygote(&self.python, &self.config, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(preload: bool) -> Embedded {
        Embedded::for_tests("http", preload)
    }

    /// The config line a launch sends last on the control pipe.
    fn config_line(bootstrap: &[u8]) -> serde_json::Value {
        let last = bootstrap[..bootstrap.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        serde_json::from_slice(&bootstrap[last + 1..]).unwrap()
    }

    #[test]
    fn a_worker_runs_stage_one_in_the_users_python_named_for_ps_and_told_who_it_is() {
        let launch = embedded(false).launch(7, 2);
        assert_eq!(launch.program, PathBuf::from("/venv/bin/python"));
        assert_eq!(
            launch.args,
            [
                OsString::from("-c"),
                OsString::from("import os;f=os.fdopen(5,'rb');exec(f.read(int(f.readline())))"),
                OsString::from("hurricane-worker-7"),
            ]
        );
        let line = config_line(&launch.bootstrap);
        assert_eq!(
            (&line["worker"], &line["generation"], &line["zygote"]),
            (&7.into(), &2.into(), &false.into())
        );
        assert_eq!(line["kind"], "http");
        assert_eq!(
            embedded(false).zygote(2),
            None,
            "no zygote without --preload"
        );
    }

    #[test]
    fn with_preload_there_is_a_zygote_per_generation_told_it_is_one() {
        let zygote = embedded(true).zygote(3).expect("--preload");
        assert_eq!(zygote.args[2], OsString::from("hurricane-zygote-3"));
        let line = config_line(&zygote.bootstrap);
        assert_eq!(
            (&line["zygote"], &line["generation"]),
            (&true.into(), &3.into())
        );
    }
}
