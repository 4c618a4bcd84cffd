//! Pre-start: Django management commands (`--command`) and the migrations gate
//! (`--check-migrations`, `--check-migrations-apply`), run before the first worker starts.
//!
//! Why in the master and not in a worker: they must run once per pod, in order, to completion,
//! before any worker serves; /startup stays 503 meanwhile (Kubernetes waits), /alive stays 200 (the
//! master is fine), and TERM or INT still stop the server. Each runs as `python -m django ...`, the
//! django-admin of the user's own interpreter, with stdout passed through and stderr both passed
//! through and kept (its tail goes into the startup/failed webhook).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook_mio::v1_0::Signals;

use crate::signals::{self, Event};
use crate::spawn::SOCKET_ACTIVATION_VARS;
use crate::state::Shared;

/// How often the migrations gate asks again.
pub const MIGRATIONS_POLL_S: u64 = 2;
/// The tail of a command's stderr kept for the webhook.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Prestart {
    /// Management commands with their arguments, e.g. "migrate --noinput".
    pub commands: Vec<String>,
    pub check_migrations: bool,
    pub apply_migrations: bool,
    pub python: PathBuf,
    pub pythonpath: Vec<String>,
}

impl Prestart {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && !self.check_migrations && !self.apply_migrations
    }
}

#[derive(Debug)]
pub enum Outcome {
    Done,
    /// TERM/INT/QUIT arrived: stop without starting workers.
    Stopped,
    Failed {
        message: String,
        output: String,
    },
}

/// Splits a command line into words, honouring single and double quotes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in --command '{line}'"));
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

enum Wait {
    Exited(Option<i32>),
    Stopped,
}

struct Running {
    child: Child,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Prestart {
    fn spawn(&self, args: &[String], stream: bool) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "django"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        for var in SOCKET_ACTIVATION_VARS {
            cmd.env_remove(var);
        }
        cmd.stdout(if stream {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        if !self.pythonpath.is_empty() {
            let mut path = self.pythonpath.join(":");
            if let Ok(existing) = std::env::var("PYTHONPATH") {
                path = format!("{path}:{existing}");
            }
            cmd.env("PYTHONPATH", path);
        }
        let mut child = cmd.spawn()?;
        let tail = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("piped");
        let keep = tail.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if stream {
                    let _ = std::io::stderr().write_all(&chunk[..n]);
                }
                let mut tail = keep.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&chunk[..n]);
                let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
                tail.drain(..excess);
            }
        });
        Ok(Running { child, tail })
    }

    /// `spawn`, with a failure to start already phrased for the user.
    fn start(&self, args: &[String], stream: bool) -> Result<Running, Outcome> {
        self.spawn(args, stream).map_err(|e| Outcome::Failed {
            message: format!("cannot run {} -m django: {e}", self.python.display()),
            output: String::new(),
        })
    }

    /// Waits for the child while the probes see a live master and shutdown signals still work.
    fn wait(running: &mut Running, signals: &mut Signals, shared: &Shared) -> Wait {
        loop {
            shared.loop_tick();
            for sig in signals.pending() {
                if let Some(Event::Shutdown(_)) = signals::classify(sig) {
                    log::info!("event=signal signal={} during=prestart", signals::name(sig));
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                    return Wait::Stopped;
                }
            }
            match running.child.try_wait() {
                Ok(Some(status)) => return Wait::Exited(status.code()),
                Ok(None) => thread::sleep(Duration::from_millis(100)),
                Err(_) => return Wait::Exited(None),
            }
        }
    }

    fn run_one(&self, line: &str, signals: &mut Signals, shared: &Shared) -> Outcome {
        let args = match words(line) {
            Ok(args) if !args.is_empty() => args,
            Ok(_) => {
                return Outcome::Failed {
                    message: "--command is empty".into(),
                    output: String::new(),
                };
            }
            Err(e) => {
                return Outcome::Failed {
                    message: e,
                    output: String::new(),
                };
            }
        };
        let started = Instant::now();
        log::info!("event=command command={line:?}");
        let mut running = match self.start(&args, true) {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        match Self::wait(&mut running, signals, shared) {
            Wait::Stopped => Outcome::Stopped,
            Wait::Exited(Some(0)) => {
                log::info!(
                    "event=command_done command={line:?} ms={}",
                    started.elapsed().as_millis()
                );
                Outcome::Done
            }
            Wait::Exited(code) => {
                thread::sleep(Duration::from_millis(50)); // let the stderr reader catch the last bytes
                let output = String::from_utf8_lossy(
                    &running.tail.lock().unwrap_or_else(|e| e.into_inner()),
                )
                .into_owned();
                let code = code.map_or("a signal".to_string(), |c| format!("exit code {c}"));
                Outcome::Failed {
                    message: format!("--command {line:?} failed with {code}"),
                    output,
                }
            }
        }
    }

    /// --check-migrations: poll `migrate --check` until nothing is pending (and the database answers).
    fn wait_for_migrations(&self, signals: &mut Signals, shared: &Shared) -> Outcome {
        let args: Vec<String> = ["migrate", "--check", "--noinput"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let started = Instant::now();
        loop {
            let mut running = match self.start(&args, false) {
                Ok(r) => r,
                Err(failed) => return failed,
            };
            match Self::wait(&mut running, signals, shared) {
                Wait::Stopped => return Outcome::Stopped,
                Wait::Exited(Some(0)) => {
                    log::info!(
                        "event=migrations_ready waited_ms={}",
                        started.elapsed().as_millis()
                    );
                    return Outcome::Done;
                }
                Wait::Exited(code) => {
                    let tail = String::from_utf8_lossy(
                        &running.tail.lock().unwrap_or_else(|e| e.into_inner()),
                    )
                    .into_owned();
                    let reason = tail
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("migrations pending")
                        .trim()
                        .to_string();
                    log::info!(
                        "event=migrations_waiting exit_code={} reason={reason:?} retry_s={MIGRATIONS_POLL_S}",
                        code.unwrap_or(-1)
                    );
                }
            }
            let until = Instant::now() + Duration::from_secs(MIGRATIONS_POLL_S);
            while Instant::now() < until {
                shared.loop_tick();
                for sig in signals.pending() {
                    if let Some(Event::Shutdown(_)) = signals::classify(sig) {
                        return Outcome::Stopped;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn run(&self, signals: &mut Signals, shared: &Shared) -> Outcome {
        for line in &self.commands {
            match self.run_one(line, signals, shared) {
                Outcome::Done => {}
                other => return other,
            }
        }
        if self.apply_migrations {
            return self.run_one("migrate --noinput", signals, shared);
        }
        if self.check_migrations {
            return self.wait_for_migrations(signals, shared);
        }
        Outcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_would() {
        assert_eq!(
            words("migrate --noinput").unwrap(),
            vec!["migrate", "--noinput"]
        );
        assert_eq!(
            words("  loaddata 'my fixture.json'  ").unwrap(),
            vec!["loaddata", "my fixture.json"]
        );
        assert_eq!(
            words(r#"shell -c "print(1)""#).unwrap(),
            vec!["shell", "-c", "print(1)"]
        );
        assert_eq!(words("x ''").unwrap(), vec!["x", ""]);
        assert!(words("bad 'quote").is_err());
    }
}
