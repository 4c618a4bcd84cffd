//! The kinds of process hurricane runs, one module each, registered below with one line each.
//!
//! Why one module per kind: a kind is its options (`Args`, a clap group), how those become the
//! master's configuration (`Setup::build`, through `config::Common`), and its `kind::Kind` (how its
//! processes start, what their reports mean, what the probes and metrics add). Written together, a
//! kind can be read, changed or added without touching the master, the pool or another kind.
//! The Python side of each kind is likewise one module (`python/hurricane/worker.py`'s `KINDS`).

use crate::args::{InterpreterArgs, LogArgs};
use crate::config::{Config, Usage};

/// What the entry point needs of a parsed command, whatever its kind.
pub trait Setup {
    /// hurricane's own log settings.
    fn log(&self) -> &LogArgs;

    /// Where the Django settings are read from (`HURRICANE_*`, and more for some kinds), as
    /// (the interpreter and its paths, the command's name, the setting prefixes); None when the
    /// kind's app has a configuration of its own (Celery).
    fn django_settings(&self) -> Option<(&InterpreterArgs, &'static str, &'static [&'static str])>;

    /// The master's configuration; changes directory (--chdir) on the way.
    fn build(self: Box<Self>) -> Result<Config, Usage>;
}

/// Declares each kind's module and its subcommand: `/// about` then `module => Variant`.
macro_rules! kinds {
    ($($(#[$doc:meta])* $module:ident => $variant:ident,)*) => {
        $(pub mod $module;)*

        /// The subcommands that run a kind (`cli` adds the rest). Parsed once at startup: the
        /// size of the kinds' options costs nothing worth boxing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, clap::Subcommand)]
        pub enum Command {
            $($(#[$doc])* $variant($module::Args),)*
        }

        impl Command {
            pub fn into_setup(self) -> Box<dyn Setup> {
                match self {
                    $(Command::$variant(args) => Box::new(args),)*
                }
            }
        }
    };
}

// `serve --asgi`: a kind of `serve`'s, not a subcommand of its own.
pub mod asgi;

kinds! {
    /// Serve a WSGI app on N prefork workers (the default command)
    serve => Serve,
    /// Consume an AMQP queue with N handler workers running a TopicHandler class
    consume => Consume,
    /// Run a Celery worker or beat (`-- celery -A proj worker`) with probes, metrics and PID 1 duties
    celery => Celery,
}
