//! Settling one channel's deliveries with as few broker calls as the rules allow.
//!
//! Why: the broker spends ~100-140 us of CPU per individually acked message, which on 2 cores caps
//! every consumer far below what the handlers could do. A run of consecutive delivery tags whose
//! handlers all acked is settled with one `basic.ack(multiple=true)`. The rule that keeps it safe:
//! `multiple` only ever covers a prefix of the outstanding tags that is settled in full, so no tag
//! is acked before its handler acknowledged it. A settled tag stuck behind a slow one is settled on
//! its own once it has waited `GAP_FLUSH_MS`, so one slow handler cannot hold the prefetch window.
//! Rejects are never coalesced with acks; each is its own `basic.nack`.
//!
//! Acks are also held for up to `ACK_HOLD_MS`, or until a quarter of the prefetch window is
//! acked: at a steady few thousand messages a second each message arrives alone, and without it
//! every one was acked alone. Holding them cut RabbitMQ's CPU a message from 233 to 185 us at
//! 2,000 msg/s and from 120 to 113 us at 6,000 (bench/consume.py's latency runs, A/B, median of
//! 3), with no loss of throughput from a full queue. It delays no handler (most of the window
//! stays open) and loses nothing: acks held when the connection is lost are as acks in flight
//! (the broker redelivers those messages), and a closing consumer flushes all first
//! (`Flush::All`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A settled delivery waits this long behind an unsettled lower tag before it is settled alone.
pub const GAP_FLUSH_MS: u64 = 20;
/// A settled run of acks waits at most this long for more to join it.
pub const ACK_HOLD_MS: u64 = 2;
/// With no prefetch limit (0), a held run is flushed at this many acks.
const UNLIMITED_PREFETCH_HOLD: usize = 100;

/// What `Settler::calls` flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// What is due: rejects, a run of acks that is old or long enough, gaps that waited.
    Due,
    /// Everything settled (the consumer is closing).
    All,
}

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

#[derive(Debug)]
pub struct Settler {
    /// Delivered, not yet settled on the broker: None while the handler works on it.
    outstanding: BTreeMap<u64, Option<(Outcome, Instant)>>,
    /// A settled run of acks this long is flushed without waiting: a quarter of the prefetch
    /// window, so the broker always has most of it to deliver into.
    hold_max: usize,
}

impl Settler {
    /// For a channel with this prefetch (`basic.qos`; 0 is no limit).
    pub fn new(prefetch: u16) -> Settler {
        let hold_max = match prefetch {
            0 => UNLIMITED_PREFETCH_HOLD,
            n => usize::from(n) / 4,
        };
        Settler {
            outstanding: BTreeMap::new(),
            hold_max,
        }
    }

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

    /// When `calls` next has something due: a held run of acks, or a settled tag behind an
    /// unsettled one.
    pub fn next_due(&self) -> Option<Instant> {
        let held = self
            .outstanding
            .values()
            .map_while(|s| *s)
            .map(|(_, at)| at + Duration::from_millis(ACK_HOLD_MS))
            .min();
        let gaps = self
            .outstanding
            .values()
            .skip_while(|s| s.is_some())
            .filter_map(|s| s.map(|(_, at)| at + Duration::from_millis(GAP_FLUSH_MS)))
            .min();
        held.into_iter().chain(gaps).min()
    }

    /// Whether the settled prefix waits for more acks: all acks, shorter than `hold_max`, and
    /// none of them older than `ACK_HOLD_MS`.
    fn holds_prefix(&self, now: Instant) -> bool {
        let mut n = 0;
        for slot in self.outstanding.values() {
            match slot {
                Some((Outcome::Ack, at)) => {
                    if now.duration_since(*at) >= Duration::from_millis(ACK_HOLD_MS) {
                        return false;
                    }
                    n += 1;
                    if n >= self.hold_max {
                        return false;
                    }
                }
                Some((Outcome::Reject { .. }, _)) => return false,
                None => break,
            }
        }
        true
    }

    /// The broker calls for everything that can be settled now (`Flush::Due`) or at all
    /// (`Flush::All`), in the order to make them.
    pub fn calls(&mut self, now: Instant, flush: Flush) -> Vec<Call> {
        let mut calls = Vec::new();
        if flush == Flush::All || !self.holds_prefix(now) {
            self.flush_prefix(&mut calls);
        }
        // Behind an unsettled tag: alone, once they have waited long enough.
        let due: Vec<(u64, Outcome)> = self
            .outstanding
            .iter()
            .filter_map(|(&tag, s)| match s {
                Some((outcome, at))
                    if flush == Flush::All
                        || now.duration_since(*at) >= Duration::from_millis(GAP_FLUSH_MS) =>
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

    /// The settled prefix: acks coalesce until a reject or the first unsettled tag.
    fn flush_prefix(&mut self, calls: &mut Vec<Call>) {
        let mut run: Option<(u64, usize)> = None; // (last acked tag, how many)
        while let Some((&tag, &Some((outcome, _)))) = self.outstanding.iter().next() {
            self.outstanding.remove(&tag);
            match outcome {
                Outcome::Ack => run = Some((tag, run.map_or(1, |(_, n)| n + 1))),
                Outcome::Reject { requeue } => {
                    flush_run(calls, run.take());
                    calls.push(Call::Nack { tag, requeue });
                }
            }
        }
        flush_run(calls, run);
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

    /// A settler that holds no acks (prefetch 4: a run of 1 is a quarter of the window), for the
    /// rules that do not depend on holding.
    fn settler(tags: std::ops::RangeInclusive<u64>) -> Settler {
        settler_with(4, tags)
    }

    fn settler_with(prefetch: u16, tags: std::ops::RangeInclusive<u64>) -> Settler {
        let mut s = Settler::new(prefetch);
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
            s.calls(now, Flush::Due),
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
            s.calls(now, Flush::Due),
            vec![Call::Ack {
                tag: 1,
                multiple: false
            }],
            "2 is still with its handler: 3 and 4 wait"
        );
        assert_eq!(
            s.next_due(),
            Some(now + Duration::from_millis(GAP_FLUSH_MS))
        );
        let later = now + Duration::from_millis(GAP_FLUSH_MS);
        assert_eq!(
            s.calls(later, Flush::Due),
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
            s.calls(later, Flush::Due),
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
            s.calls(now, Flush::Due),
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

    #[test]
    fn a_run_of_acks_is_held_until_it_is_old_or_half_the_window() {
        let now = Instant::now();
        let mut s = settler_with(200, 1..=150);
        for tag in 1..=3 {
            s.settle(tag, Outcome::Ack, now);
        }
        assert_eq!(s.calls(now, Flush::Due), vec![], "3 acks, 0 ms old: held");
        assert_eq!(s.next_due(), Some(now + Duration::from_millis(ACK_HOLD_MS)));
        let due = now + Duration::from_millis(ACK_HOLD_MS);
        assert_eq!(
            s.calls(due, Flush::Due),
            vec![Call::Ack {
                tag: 3,
                multiple: true
            }],
            "the oldest waited ACK_HOLD_MS"
        );
        for tag in 4..=53 {
            s.settle(tag, Outcome::Ack, due);
        }
        assert_eq!(
            s.calls(due, Flush::Due),
            vec![Call::Ack {
                tag: 53,
                multiple: true
            }],
            "50 acks are a quarter of the window of 200: flushed at once"
        );
        assert_eq!(s.next_due(), None, "nothing settled is left");
    }

    #[test]
    fn a_reject_is_never_held_nor_the_acks_before_it() {
        let now = Instant::now();
        let mut s = settler_with(200, 1..=3);
        s.settle(1, Outcome::Ack, now);
        s.settle(2, Outcome::Reject { requeue: true }, now);
        assert_eq!(
            s.calls(now, Flush::Due),
            vec![
                Call::Ack {
                    tag: 1,
                    multiple: false
                },
                Call::Nack {
                    tag: 2,
                    requeue: true
                }
            ]
        );
    }

    #[test]
    fn a_prefetch_of_one_is_never_held_and_closing_flushes_everything() {
        let now = Instant::now();
        let mut one = settler_with(1, 1..=1);
        one.settle(1, Outcome::Ack, now);
        assert_eq!(
            one.calls(now, Flush::Due),
            vec![Call::Ack {
                tag: 1,
                multiple: false
            }],
            "a held ack would stall a window of one"
        );
        let mut s = settler_with(0, 1..=4);
        for tag in [1, 2, 4] {
            s.settle(tag, Outcome::Ack, now);
        }
        assert_eq!(s.calls(now, Flush::Due), vec![], "unlimited prefetch: held");
        assert_eq!(
            s.calls(now, Flush::All),
            vec![
                Call::Ack {
                    tag: 2,
                    multiple: true
                },
                Call::Ack {
                    tag: 4,
                    multiple: false
                }
            ],
            "closing: the run and the tag behind the gap, at once"
        );
        assert_eq!(s.outstanding(), 1, "3 is still with its handler");
    }
}
