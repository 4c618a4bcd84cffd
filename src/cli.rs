//! The command line as one clap definition: the kinds' subcommands (`kinds`, each with its own
//! options) and the hidden `generate-docs`, with `serve`'s options also at the top level.
//!
//! Why defined once and derived: `--help`, the man pages, the shell completions (`docs`), the
//! `HURRICANE_*` environment names and the Django settings layer (`settings`) all come from this
//! one definition, so none of them can disagree with what the binary accepts. Every option can
//! also be set as `HURRICANE_<NAME>` (the long flag in upper case, dashes as underscores); the
//! command line wins. `hurricane -w app` is the same as `hurricane serve -w app`, as gunicorn
//! users expect one command to serve.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::kinds::{self, Setup};

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
    pub serve: kinds::serve::Args,
}

/// Parsed once at startup: the size of the kinds' options costs nothing worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Kind(kinds::Command),
    /// Write the man pages and shell completions into DIR (for packagers; scripts/gen-docs)
    #[command(hide = true)]
    GenerateDocs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// What to run, once parsed.
pub enum Run {
    Kind(Box<dyn Setup>),
    GenerateDocs(PathBuf),
}

impl Cli {
    /// The command, whether serve is given as `hurricane serve ...` or `hurricane ...`.
    pub fn into_run(self) -> Run {
        match self.command {
            Some(Command::Kind(kind)) => Run::Kind(kind.into_setup()),
            Some(Command::GenerateDocs { dir }) => Run::GenerateDocs(dir),
            None => Run::Kind(Box::new(self.serve)),
        }
    }

    /// The serve options (tests of the command line and of the settings layer).
    #[cfg(test)]
    pub fn into_serve(self) -> kinds::serve::Args {
        match self.command {
            Some(Command::Kind(kinds::Command::Serve(args))) => args,
            None => self.serve,
            _ => panic!("not serve"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<kinds::serve::Args, clap::Error> {
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
