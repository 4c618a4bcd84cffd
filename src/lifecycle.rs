//! The words every layer uses about a supervised process's life: its state, why it ended, how it
//! exited, how the master was asked to stop.
//!
//! Why a module of its own, at the bottom: the pool decides these, the metrics export them as
//! label values, the webhooks as events and the logs as `reason=` fields. Spelling them once, as
//! enums with `as_str()`, keeps the three in step and lets each import downwards only.

use std::fmt;

/// A worker's process state as the metrics show it (`hurricane_workers{state}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateName {
    Spawned,
    Booting,
    Ready,
    Draining,
    Killed,
}

impl StateName {
    pub const ALL: [StateName; 5] = [
        StateName::Spawned,
        StateName::Booting,
        StateName::Ready,
        StateName::Draining,
        StateName::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Spawned => "spawned",
            StateName::Booting => "booting",
            StateName::Ready => "ready",
            StateName::Draining => "draining",
            StateName::Killed => "killed",
        }
    }
}

/// Why a worker is being restarted: `hurricane_worker_restarts_total{reason}`, webhooks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Crash,
    Timeout,
    MaxRequests,
    MaxMemory,
    Reload,
    Scale,
    BootTimeout,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Crash,
        Reason::Timeout,
        Reason::MaxRequests,
        Reason::MaxMemory,
        Reason::Reload,
        Reason::Scale,
        Reason::BootTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Crash => "crash",
            Reason::Timeout => "timeout",
            Reason::MaxRequests => "max_requests",
            Reason::MaxMemory => "max_memory",
            Reason::Reload => "reload",
            Reason::Scale => "scale",
            Reason::BootTimeout => "boot_timeout",
        }
    }

    /// A restart the operator asked for (or configured), as opposed to one forced by a failure.
    pub fn is_planned(self) -> bool {
        matches!(
            self,
            Reason::MaxRequests | Reason::MaxMemory | Reason::Reload | Reason::Scale
        )
    }
}

/// How a process ended, as waitpid reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// --preload: the zygote could not fork the process (it died, hung or failed to import), so
    /// there was never a process to exit.
    NotForked,
}

impl ExitStatus {
    /// The shell's convention, which tini follows too: the code, or 128 + the signal.
    pub fn as_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
            ExitStatus::NotForked => 1,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit_code={c}"),
            ExitStatus::Signal(s) => write!(f, "signal={s}"),
            ExitStatus::NotForked => write!(f, "exit=not_forked"),
        }
    }
}

/// How the master was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: finish in-flight work.
    Graceful,
    /// SIGINT, SIGQUIT: stop now.
    Fast,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_exit_codes_follow_the_shell() {
        let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(ExitStatus::Code(3).as_code(), 3);
        assert_eq!(ExitStatus::Signal(9).as_code(), 137);
        assert!(Reason::Reload.is_planned() && !Reason::Crash.is_planned());
    }
}
