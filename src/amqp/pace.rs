//! When the master reads lapin's consumer: at each delivery, or once a tick under a stream.
//!
//! Why: read eagerly, every delivery wakes the master (lapin rings its doorbell) and then a
//! handler worker (its control pipe), and at 20,000 messages a second those wake-ups were most of
//! what a message cost the master and the handlers on 2 cores. Under a stream the master reads
//! once a millisecond instead: lapin's wake-ups are ignored, and what came meanwhile goes to the
//! workers in one write each, a dozen messages a wake-up. A message then waits up to that
//! millisecond more (half of it on average), where without it the machine ran out of CPU and
//! messages waited for the backlog instead. A stream is `STREAM_PER_TICK` to `BACKLOG_PER_TICK`
//! deliveries a millisecond: below, each delivery is read as it comes; above (a full queue being
//! drained), every wake-up finds many deliveries anyway, and reading at once keeps the workers'
//! pipes from running dry between ticks (a tick cost 5-10 % of the draining rate).

use std::time::{Duration, Instant};

/// How often deliveries are read under a stream.
pub const TICK_MS: u64 = 1;
/// This many deliveries within a tick make a stream (10,000 a second)...
pub const STREAM_PER_TICK: usize = 10;
/// ... and this many a backlog (32,000 a second), read as it comes again.
pub const BACKLOG_PER_TICK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each delivery wakes the loop; `count` were read since `window` began, and a window of a
    /// stream's count turns the pace to `Batched` once it has closed.
    Eager { window: Instant, count: usize },
    /// A stream: read at `next`, not woken before.
    Batched { next: Instant },
}

impl Pace {
    pub fn new(now: Instant) -> Pace {
        Pace::Eager {
            window: now,
            count: 0,
        }
    }

    /// Whether to read now: always when eager, once `next` has come under a stream.
    pub fn due(&self, now: Instant) -> bool {
        match *self {
            Pace::Eager { .. } => true,
            Pace::Batched { next } => now >= next,
        }
    }

    /// Whether lapin should wake the loop for the next delivery.
    pub fn wakes(&self) -> bool {
        matches!(self, Pace::Eager { .. })
    }

    /// `n` deliveries were read at `now`: the pace for the next read. A stream or a backlog is
    /// judged by deliveries per tick over the time they came in, so a tick the loop reached late
    /// (a busy machine) is not taken for a backlog.
    pub fn read(&mut self, n: usize, now: Instant) {
        let tick = Duration::from_millis(TICK_MS);
        let stream = |count: usize, over: Duration| {
            let per_tick = count as u128 * tick.as_nanos() / over.as_nanos().max(1);
            (STREAM_PER_TICK as u128..BACKLOG_PER_TICK as u128).contains(&per_tick)
        };
        *self = match *self {
            Pace::Eager { window, count } if now.duration_since(window) >= tick => {
                if stream(count, now.duration_since(window)) {
                    Pace::Batched { next: now + tick }
                } else {
                    Pace::Eager {
                        window: now,
                        count: n,
                    }
                }
            }
            Pace::Eager { window, count } => Pace::Eager {
                window,
                count: count + n,
            },
            Pace::Batched { next } if stream(n, now.duration_since(next - tick)) => {
                Pace::Batched { next: now + tick }
            }
            Pace::Batched { .. } => Pace::Eager {
                window: now,
                count: n,
            },
        };
    }

    /// When the loop must come back to read, under a stream.
    pub fn next_deadline(&self) -> Option<Instant> {
        match *self {
            Pace::Eager { .. } => None,
            Pace::Batched { next } => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_and_a_backlog_are_read_as_they_come_and_a_stream_once_a_tick() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut pace = Pace::new(t0);
        for at in 0..10 {
            pace.read(1, ms(at * 2)); // 500 a second
            assert!(
                pace.wakes() && pace.due(ms(at * 2)),
                "a trickle wakes the loop"
            );
        }
        assert_eq!(pace.next_deadline(), None);
        pace.read(5, ms(30));
        pace.read(4, ms(30));
        pace.read(0, ms(31));
        assert!(pace.wakes(), "9 within a tick are not yet a stream");
        pace.read(5, ms(31));
        pace.read(5, ms(31));
        assert!(pace.wakes(), "a window is judged once it has closed");
        pace.read(1, ms(32));
        assert_eq!(
            pace,
            Pace::Batched { next: ms(33) },
            "10 within a tick are a stream"
        );
        assert!(!pace.wakes(), "lapin's wake-ups are ignored");
        assert!(
            !pace.due(ms(32)),
            "a wake-up for another reason does not read"
        );
        assert_eq!(pace.next_deadline(), Some(ms(33)));
        assert!(pace.due(ms(33)));
        pace.read(20, ms(33));
        assert_eq!(pace, Pace::Batched { next: ms(34) }, "the stream goes on");
        pace.read(9, ms(34));
        assert!(pace.wakes(), "fewer than 10 in a tick: eager again");
        assert_eq!(pace.next_deadline(), None);
        pace.read(1, ms(34));
        pace.read(0, ms(35));
        assert_eq!(
            pace.next_deadline(),
            Some(ms(36)),
            "the tick's 9 and 1 more"
        );
        pace.read(40, ms(38));
        assert_eq!(
            pace,
            Pace::Batched { next: ms(39) },
            "40 over the 3 ms since the last read are a stream, not a backlog"
        );
        pace.read(40, ms(39));
        assert!(pace.wakes(), "40 in a tick are a backlog, read as it comes");
        pace.read(40, ms(39));
        pace.read(0, ms(40));
        assert!(pace.wakes(), "and stays so while it lasts");
    }
}
