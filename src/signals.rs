//! Which signals the master handles, and what each one means.
//!
//! Why a table: the signals are the master's public interface (README's signals table), so the
//! mapping lives in one place. Delivery goes through signal-hook's self-pipe into the mio loop;
//! no work is ever done inside a signal handler.

use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1,
};

use crate::lifecycle::Shutdown;

/// Every signal the master registers a handler for.
pub const HANDLED: &[i32] = &[
    SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGCHLD,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Shutdown(Shutdown),
    /// Rolling reload: a new generation of workers, each ready before its predecessor drains.
    Reload,
    /// One worker more (true) or fewer (false).
    Scale(bool),
    /// Reopen --log-file (logrotate moved it), in the master and every worker.
    ReopenLogs,
    /// One or more children changed state: reap them all (PID 1 duty).
    ChildExited,
}

pub fn classify(signal: i32) -> Option<Event> {
    match signal {
        SIGTERM => Some(Event::Shutdown(Shutdown::Graceful)),
        SIGINT | SIGQUIT => Some(Event::Shutdown(Shutdown::Fast)),
        SIGHUP => Some(Event::Reload),
        SIGTTIN => Some(Event::Scale(true)),
        SIGTTOU => Some(Event::Scale(false)),
        SIGUSR1 => Some(Event::ReopenLogs),
        SIGCHLD => Some(Event::ChildExited),
        _ => None,
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "TERM",
        SIGINT => "INT",
        SIGQUIT => "QUIT",
        SIGHUP => "HUP",
        SIGTTIN => "TTIN",
        SIGTTOU => "TTOU",
        SIGUSR1 => "USR1",
        SIGCHLD => "CHLD",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_means_something() {
        for &sig in HANDLED {
            assert!(
                classify(sig).is_some(),
                "signal {sig} is registered but unhandled"
            );
        }
        assert_eq!(classify(SIGTERM), Some(Event::Shutdown(Shutdown::Graceful)));
        assert_eq!(classify(SIGQUIT), Some(Event::Shutdown(Shutdown::Fast)));
    }
}
