//! The loop's event sources and their mio tokens.
//!
//! Why every source has a token of its own: nothing is decoded from a shared one, and a worker's
//! pipes, a zygote's and the kind's doorbell can never be mistaken for each other.

use mio::Token;

use crate::pool::WorkerId;
use crate::zygote::ZygoteId;

/// What woke the loop. Every source has a token of its own, so nothing is decoded from a shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Signals,
    /// The autoreload watcher saw a change.
    Autoreload,
    /// A probe wants fresh app checks.
    CheckWanted,
    /// The kind's own thread has news (consume: the broker's).
    Kind,
    /// The epoll holding the workers' status pipes has lines to read (`statuses`).
    Statuses,
    /// A worker's status pipe has lines to read.
    Status(WorkerId),
    /// A worker's control pipe has room for pending bytes.
    Control(WorkerId),
    /// A --preload zygote's status pipe has lines to read.
    ZygoteStatus(ZygoteId),
    /// A zygote's socket has room for the rest of its bootstrap.
    ZygoteControl(ZygoteId),
}

/// Tokens below this are the fixed sources; above it, four per id: a worker's two pipes, then
/// the zygote's of the same number (workers and zygotes count apart).
const FIRST_WORKER_TOKEN: usize = 16;

impl Source {
    pub fn token(self) -> Token {
        Token(match self {
            Source::Signals => 0,
            Source::Autoreload => 1,
            Source::CheckWanted => 2,
            Source::Kind => 3,
            Source::Statuses => 4,
            Source::Status(id) => FIRST_WORKER_TOKEN + id as usize * 4,
            Source::Control(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 1,
            Source::ZygoteStatus(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 2,
            Source::ZygoteControl(id) => FIRST_WORKER_TOKEN + id as usize * 4 + 3,
        })
    }

    pub fn of(token: Token) -> Option<Source> {
        match token.0 {
            0 => Some(Source::Signals),
            1 => Some(Source::Autoreload),
            2 => Some(Source::CheckWanted),
            3 => Some(Source::Kind),
            4 => Some(Source::Statuses),
            t if t >= FIRST_WORKER_TOKEN => {
                let id = ((t - FIRST_WORKER_TOKEN) / 4) as u64;
                Some(match (t - FIRST_WORKER_TOKEN) % 4 {
                    0 => Source::Status(id),
                    1 => Source::Control(id),
                    2 => Source::ZygoteStatus(id),
                    _ => Source::ZygoteControl(id),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_its_own_token_and_comes_back_from_it() {
        let sources = [
            Source::Signals,
            Source::Autoreload,
            Source::CheckWanted,
            Source::Kind,
            Source::Statuses,
            Source::Status(1),
            Source::Control(1),
            Source::Status(0),
            Source::Control(7),
            Source::ZygoteStatus(1),
            Source::ZygoteControl(1),
            Source::ZygoteStatus(7),
        ];
        let tokens: std::collections::HashSet<Token> = sources.iter().map(|s| s.token()).collect();
        assert_eq!(tokens.len(), sources.len(), "no two sources share a token");
        for source in sources {
            assert_eq!(Source::of(source.token()), Some(source));
        }
        assert_eq!(Source::of(Token(FIRST_WORKER_TOKEN - 1)), None);
    }
}
