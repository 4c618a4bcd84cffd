//! Settling one channel's deliveries with as few broker calls as the rules allow.
//!
//! Why: the broker spends ~100-140 us of CPU per individually acked message, which on 2 cores caps
//! every consumer far below what the handlers could do. A run of consecutive delivery tags whose
//! handlers all acked is settled with one `basic.ack(multiple=true)`. The rule that keeps it safe:
//! `multiple` only ever covers a prefix of the outstanding tags that is settled in full, so no tag
//! is acked before its handler acknowledged it. A settled tag stuck behind a slow one is settled on
//! its own once it has waited `GAP_FLUSH_MS`, so one slow handler cannot hold the prefetch window.
//! Rejects are never coalesced with acks; each is its own `basic.nack`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A settled delivery waits this long behind an unsettled lower tag before it is settled alone.
pub const GAP_FLUSH_MS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Reject { requeue: bool },
}

/// One broker call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, requeue: bool },
}

#[derive(Debug, Default)]
pub struct Settler {
    /// Delivered, not yet settled on the broker: None while the handler works on it.
    outstanding: BTreeMap<u64, Option<(Outcome, Instant)>>,
}

impl Settler {
    pub fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag, None);
    }

    /// The handler's verdict; false for a tag that is not outstanding (settled twice).
    pub fn settle(&mut self, tag: u64, outcome: Outcome, now: Instant) -> bool {
        match self.outstanding.get_mut(&tag) {
            Some(slot @ None) => {
                *slot = Some((outcome, now));
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// When `calls` next has something to flush alone (a settled tag behind an unsettled one).
    pub fn next_gap_flush(&self) -> Option<Instant> {
        self.outstanding
            .values()
            .skip_while(|s| s.is_some())
            .filter_map(|s| s.map(|(_, at)| at + Duration::from_millis(GAP_FLUSH_MS)))
            .min()
    }

    /// The broker calls for everything that can be settled now, in the order to make them.
    pub fn calls(&mut self, now: Instant) -> Vec<Call> {
        let mut calls = Vec::new();
        // The settled prefix: acks coalesce until a reject or the first unsettled tag.
        let mut run: Option<(u64, usize)> = None; // (last acked tag, how many)
        while let Some((&tag, &Some((outcome, _)))) = self.outstanding.iter().next() {
            self.outstanding.remove(&tag);
            match outcome {
                Outcome::Ack => run = Some((tag, run.map_or(1, |(_, n)| n + 1))),
                Outcome::Reject { requeue } => {
                    flush_run(&mut calls, run.take());
                    calls.push(Call::Nack { tag, requeue });
                }
            }
        }
        flush_run(&mut calls, run);
        // Behind an unsettled tag: alone, once they have waited long enough.
        let due: Vec<(u64, Outcome)> = self
            .outstanding
            .iter()
            .filter_map(|(&tag, s)| match s {
                Some((outcome, at))
                    if now.duration_since(*at) >= Duration::from_millis(GAP_FLUSH_MS) =>
                {
                    Some((tag, *outcome))
                }
                _ => None,
            })
            .collect();
        for (tag, outcome) in due {
            self.outstanding.remove(&tag);
            calls.push(match outcome {
                Outcome::Ack => Call::Ack {
                    tag,
                    multiple: false,
                },
                Outcome::Reject { requeue } => Call::Nack { tag, requeue },
            });
        }
        calls
    }
}

fn flush_run(calls: &mut Vec<Call>, run: Option<(u64, usize)>) {
    if let Some((tag, n)) = run {
        calls.push(Call::Ack {
            tag,
            multiple: n > 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settler(tags: std::ops::RangeInclusive<u64>) -> Settler {
        let mut s = Settler::default();
        for tag in tags {
            s.delivered(tag);
        }
        s
    }

    #[test]
    fn a_settled_run_of_acks_is_one_multiple_ack() {
        let now = Instant::now();
        let mut s = settler(1..=5);
        for tag in [3, 1, 2, 5, 4] {
            assert!(s.settle(tag, Outcome::Ack, now));
        }
        assert_eq!(
            s.calls(now),
            vec![Call::Ack {
                tag: 5,
                multiple: true
            }]
        );
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn nothing_is_acked_past_an_unsettled_tag_until_it_waited() {
        let now = Instant::now();
        let mut s = settler(1..=4);
        s.settle(1, Outcome::Ack, now);
        s.settle(3, Outcome::Ack, now);
        s.settle(4, Outcome::Ack, now);
        assert_eq!(
            s.calls(now),
            vec![Call::Ack {
                tag: 1,
                multiple: false
            }],
            "2 is still with its handler: 3 and 4 wait"
        );
        assert_eq!(
            s.next_gap_flush(),
            Some(now + Duration::from_millis(GAP_FLUSH_MS))
        );
        let later = now + Duration::from_millis(GAP_FLUSH_MS);
        assert_eq!(
            s.calls(later),
            vec![
                Call::Ack {
                    tag: 3,
                    multiple: false
                },
                Call::Ack {
                    tag: 4,
                    multiple: false
                }
            ]
        );
        assert_eq!(s.outstanding(), 1);
        assert!(s.settle(2, Outcome::Ack, later));
        assert_eq!(
            s.calls(later),
            vec![Call::Ack {
                tag: 2,
                multiple: false
            }]
        );
    }

    #[test]
    fn rejects_break_runs_and_are_never_coalesced() {
        let now = Instant::now();
        let mut s = settler(1..=5);
        s.settle(1, Outcome::Ack, now);
        s.settle(2, Outcome::Ack, now);
        s.settle(3, Outcome::Reject { requeue: false }, now);
        s.settle(4, Outcome::Reject { requeue: true }, now);
        s.settle(5, Outcome::Ack, now);
        assert_eq!(
            s.calls(now),
            vec![
                Call::Ack {
                    tag: 2,
                    multiple: true
                },
                Call::Nack {
                    tag: 3,
                    requeue: false
                },
                Call::Nack {
                    tag: 4,
                    requeue: true
                },
                Call::Ack {
                    tag: 5,
                    multiple: false
                },
            ]
        );
    }

    #[test]
    fn a_tag_is_settled_once_and_unknown_tags_are_refused() {
        let now = Instant::now();
        let mut s = settler(1..=1);
        assert!(s.settle(1, Outcome::Ack, now));
        assert!(!s.settle(1, Outcome::Ack, now), "twice");
        assert!(!s.settle(9, Outcome::Ack, now), "never delivered");
    }
}
