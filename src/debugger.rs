//! `--debugger` (debugpy) and `--pycharm-host` (PyCharm's debug server): a debugger attached to
//! the worker where it runs, as django-hurricane users have it.
//!
//! Why these rules: a debugger stopped at a breakpoint pauses every Python thread of the worker,
//! its heartbeat included, so the frozen-worker kill and `--timeout` would kill the very process
//! being debugged; a debugger talks to one process, so there is one worker; a forked worker would
//! share its zygote's debugger state, so there is no `--preload`. debugpy listens in the worker
//! itself (`in_process_debug_adapter`: no adapter process that outlives the worker and holds the
//! port), and since only one process can listen on the port, a reload stops the old worker before
//! the new one starts (`ReloadStyle::StopFirst`). Checked here, before anything starts: the
//! library is in the workers' Python (else exit 2, saying what to install) and the port is free
//! (else exit 1, naming it).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::args::{DebugArgs, Usage};
use crate::pool::{PoolConfig, ReloadStyle};

/// With --debugger-wait the worker waits for a person to attach: no boot deadline that matters.
const WAIT_BOOT_TIMEOUT_S: u64 = 24 * 3600;

/// Exit code of the check below when debugpy is there but too old for an in-process adapter.
const TOO_OLD: i32 = 3;
const DEBUGPY_CHECK: &str = "import debugpy, inspect, sys; \
    sys.exit(0 if 'in_process_debug_adapter' in inspect.signature(debugpy.listen).parameters else 3)";

/// The debugger the worker attaches to.
#[derive(Debug, Clone, PartialEq)]
pub enum Debugger {
    Off,
    /// debugpy listens at `addr`; with `wait`, the worker waits for a client before loading.
    Debugpy {
        addr: SocketAddr,
        wait: bool,
    },
    /// The worker connects to PyCharm's debug server.
    PyCharm {
        host: String,
        port: u16,
    },
}

impl Debugger {
    /// The debugger the options ask for, once the library is found in `python`.
    pub fn from_args(args: &DebugArgs, bind: IpAddr, python: &Path) -> Result<Debugger, Usage> {
        match (args.debugger, &args.pycharm_host) {
            (true, Some(_)) => Err(Usage(
                "--debugger and --pycharm-host are two debuggers: give one".into(),
            )),
            (false, None) if args.debugger_wait => Err(Usage(
                "--debugger-wait waits for the debugger of --debugger: give both".into(),
            )),
            (false, None) => Ok(Debugger::Off),
            (true, None) => {
                match run_python(python, DEBUGPY_CHECK) {
                    Some(0) | None => {}
                    Some(TOO_OLD) => {
                        return Err(Usage(format!(
                            "--debugger needs a newer debugpy in the workers' Python ({}), one that runs its adapter in the worker: pip install -U debugpy",
                            python.display()
                        )));
                    }
                    Some(_) => {
                        return Err(Usage(format!(
                            "--debugger needs debugpy in the workers' Python ({}): pip install debugpy",
                            python.display()
                        )));
                    }
                }
                Ok(Debugger::Debugpy {
                    addr: SocketAddr::new(bind, args.debugger_port),
                    wait: args.debugger_wait,
                })
            }
            (false, Some(host)) => {
                if let Some(code) = run_python(python, "import pydevd_pycharm")
                    && code != 0
                {
                    return Err(Usage(format!(
                        "--pycharm-host needs pydevd-pycharm in the workers' Python ({}): pip install pydevd-pycharm~=<your PyCharm's version>",
                        python.display()
                    )));
                }
                Ok(Debugger::PyCharm {
                    host: host.clone(),
                    port: args.pycharm_port,
                })
            }
        }
    }

    /// What a debugger changes in the pool: one worker, no request deadline, no frozen-worker
    /// kill, no --preload, and for debugpy's port a stop-first reload. Says so in one line.
    pub fn restrict(&self, pool: &mut PoolConfig, preload: &mut bool) {
        if *self == Debugger::Off {
            return;
        }
        let mut changed = Vec::new();
        if pool.size > 1 {
            changed.push(format!("workers=1 (asked {})", pool.size));
            pool.size = 1;
        }
        if let Some(timeout) = pool.timeout.take() {
            changed.push(format!("timeout=off (was {}s)", timeout.as_secs_f64()));
        }
        if pool.heartbeat_timeout.take().is_some() {
            changed.push("heartbeat_timeout=off".into());
        }
        if std::mem::take(preload) {
            changed.push("preload=off".into());
        }
        let what = match self {
            Debugger::Debugpy { addr, wait } => {
                pool.reload = ReloadStyle::StopFirst;
                if *wait {
                    pool.boot_timeout = Duration::from_secs(WAIT_BOOT_TIMEOUT_S);
                }
                format!("debugger=debugpy addr={addr} wait={wait}")
            }
            Debugger::PyCharm { host, port } => format!("debugger=pycharm server={host}:{port}"),
            Debugger::Off => unreachable!("returned above"),
        };
        log::warn!(
            "event=debugger {what} changed=\"{}\" hint=\"development only: whoever reaches the debugger can run code in the worker\"",
            changed.join(", ")
        );
    }

    /// What the worker is told (python/hurricane/debugger.py); null when off.
    pub fn settings(&self) -> Value {
        match self {
            Debugger::Off => Value::Null,
            Debugger::Debugpy { addr, wait } => json!({
                "kind": "debugpy",
                "host": addr.ip().to_string(),
                "port": addr.port(),
                "wait": wait,
            }),
            Debugger::PyCharm { host, port } => json!({
                "kind": "pycharm",
                "host": host,
                "port": port,
            }),
        }
    }

    /// Before the first worker: debugpy's port must be free (the worker would fail otherwise,
    /// and again after every respawn). The error names the port.
    pub fn claim_port(&self) -> Result<(), String> {
        let Debugger::Debugpy { addr, .. } = self else {
            return Ok(());
        };
        TcpListener::bind(addr).map(drop).map_err(|e| {
            format!("cannot listen for the debugger on {addr}: {e}; pick another --debugger-port")
        })
    }
}

/// Runs `code` in `python`; its exit code, or None when Python itself cannot run (main then
/// reports the missing interpreter).
fn run_python(python: &Path, code: &str) -> Option<i32> {
    Command::new(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn args() -> DebugArgs {
        DebugArgs {
            debugger: false,
            debugger_port: 5678,
            debugger_wait: false,
            pycharm_host: None,
            pycharm_port: 5678,
        }
    }

    #[test]
    fn off_unless_asked_and_two_debuggers_or_a_wait_alone_are_usage_errors() {
        let any = Path::new("/nonexistent/python");
        let bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            Debugger::from_args(&args(), bind, any).unwrap(),
            Debugger::Off
        );
        let both = DebugArgs {
            debugger: true,
            pycharm_host: Some("host".into()),
            ..args()
        };
        assert!(Debugger::from_args(&both, bind, any).is_err());
        let wait = DebugArgs {
            debugger_wait: true,
            ..args()
        };
        assert!(Debugger::from_args(&wait, bind, any).is_err());
    }

    #[test]
    fn a_debugger_runs_one_worker_without_deadlines_or_preload_and_reloads_stop_first() {
        let mut pool = PoolConfig {
            timeout: Some(Duration::from_secs(30)),
            heartbeat_timeout: Some(Duration::from_secs(30)),
            ..PoolConfig::new(4, Duration::from_secs(60), Duration::from_secs(30))
        };
        let mut preload = true;
        let debugpy = Debugger::Debugpy {
            addr: "127.0.0.1:5678".parse().unwrap(),
            wait: true,
        };
        debugpy.restrict(&mut pool, &mut preload);
        assert_eq!(pool.size, 1);
        assert_eq!((pool.timeout, pool.heartbeat_timeout), (None, None));
        assert!(!preload);
        assert_eq!(pool.reload, ReloadStyle::StopFirst);
        assert_eq!(pool.boot_timeout, Duration::from_secs(WAIT_BOOT_TIMEOUT_S));
        assert_eq!(debugpy.settings()["kind"], "debugpy");

        let mut untouched = PoolConfig::new(4, Duration::from_secs(60), Duration::from_secs(30));
        let mut preload = true;
        Debugger::Off.restrict(&mut untouched, &mut preload);
        assert_eq!((untouched.size, preload), (4, true));
        assert_eq!(untouched.reload, ReloadStyle::Rolling);
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = Debugger::Debugpy { addr, wait: false }
            .claim_port()
            .unwrap_err();
        assert!(error.contains(&addr.to_string()), "{error}");
        drop(taken);
        assert!(Debugger::Debugpy { addr, wait: false }.claim_port().is_ok());
    }
}
