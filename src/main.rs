//! hurricane: a process supervisor and prefork application server for Python WSGI and ASGI apps,
//! AMQP consumers and Celery.
//!
//! Why the entry point is this small: every kind of process builds its own configuration
//! (`kinds`), and the master runs whatever it is given. What is left here is the edge of the
//! program, where every module's own error type becomes a line and an exit code (as ripgrep and
//! tini do): 0 clean shutdown, 1 fatal error, 2 bad usage, 3 the app failed to boot.

mod amqp;
mod args;
mod bind;
mod celery;
mod cli;
mod config;
mod debugger;
mod docs;
mod kind;
mod kinds;
mod lifecycle;
mod logging;
mod master;
mod metrics;
mod notify;
mod pool;
mod prestart;
mod probe;
mod protocol;
mod reload;
mod settings;
mod signals;
mod spawn;
mod state;
mod sys;
mod trim;
mod webhook;
mod zygote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cli::{Cli, Run};
use crate::config::Usage;

const EXIT_FATAL: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Finds `name` on PATH the way execvp will, so a missing interpreter is reported before binding.
fn on_path(name: &Path) -> bool {
    if name.components().count() > 1 {
        return name.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// The command line, with Django settings (HURRICANE_*, and for consume AMQP_*) in between it and
/// the environment.
fn parse_args() -> (Run, Vec<String>) {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let first = Cli::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit())
        .into_run();
    let Run::Kind(setup) = &first else {
        return (first, Vec::new());
    };
    let Some((interpreter, subcommand, prefixes)) = setup.django_settings() else {
        return (first, Vec::new());
    };
    let cwd = match &interpreter.chdir {
        Some(dir) => config::absolute(dir),
        None => PathBuf::from("."),
    };
    let python = config::python(&interpreter.python);
    let found = settings::read(&python, &cwd, &interpreter.pythonpath_strings(), prefixes);
    let Some(found) = found.filter(|s| !s.is_empty()) else {
        return (first, Vec::new());
    };
    let (extra, warnings) = settings::as_args(&found, &matches, subcommand);
    if extra.is_empty() {
        return (first, warnings);
    }
    let mut all = argv;
    all.extend(extra.into_iter().map(std::ffi::OsString::from));
    match Cli::try_parse_from(all) {
        Ok(cli) => (cli.into_run(), warnings),
        Err(e) => {
            let names: Vec<String> = prefixes.iter().map(|p| format!("{p}*")).collect();
            eprintln!(
                "error: a {} setting in the Django settings is not valid:",
                names.join(" or ")
            );
            e.exit()
        }
    }
}

fn main() -> ExitCode {
    trim::limit_heap();
    // What the loader touched to start the process (relocations, libc's start) is done.
    trim::release_clean_pages();
    let (run, warnings) = parse_args();
    let setup = match run {
        Run::GenerateDocs(dir) => {
            return match docs::generate(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the docs into '{}': {e}", dir.display());
                    ExitCode::from(EXIT_FATAL)
                }
            };
        }
        Run::Kind(setup) => setup,
    };
    let log = setup.log();
    let file = log.log_file.clone();
    if let Err(e) = logging::init(&log.log_level, log.log_format == "json", file.as_deref()) {
        let path = file.unwrap_or_default();
        eprintln!("error: cannot open --log-file '{}': {e}", path.display());
        return ExitCode::from(EXIT_USAGE);
    }
    for warning in warnings {
        log::warn!("{warning}");
    }
    let config = match setup.build() {
        Ok(config) => config,
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !on_path(&config.python) {
        eprintln!(
            "error: cannot find python '{}'; pass --python PATH or activate a virtualenv",
            config.python.display()
        );
        return ExitCode::from(EXIT_FATAL);
    }
    // The command line's code (clap, the Django settings' reader) has run for the last time.
    trim::release_clean_pages();
    match master::run(config) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
