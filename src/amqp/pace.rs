//! When the master reads lapin's consumer: at each delivery, or once a tick under a stream.
//!
//! Why: read eagerly, every delivery wakes the master (lapin rings its doorbell) and then a
//! handler worker (its control pipe), and at 20,000 messages a second those wake-ups were most of
//! what a message cost the master and the handlers on 2 cores. Under a stream the master reads
//! once a millisecond instead: lapin's wake-ups are ignored, and what came meanwhile goes to the
//! workers in one write each, a dozen messages a wake-up. A message then waits up to that
//! millisecond more (half of it on average), where without it the machine ran out of CPU and
//! messages waited for the backlog instead. Below `STREAM_PER_TICK` deliveries a tick (10,000 a
//! second) each delivery is read as it comes.

use std::time::{Duration, Instant};

/// How often deliveries are read under a stream.
pub const TICK_MS: u64 = 1;
/// This many deliveries within a tick make a stream.
pub const STREAM_PER_TICK: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each delivery wakes the loop; `count` were read since `window` began.
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

    /// `n` deliveries were read at `now`: the pace for the next read.
    pub fn read(&mut self, n: usize, now: Instant) {
        let tick = Duration::from_millis(TICK_MS);
        *self = match *self {
            Pace::Eager { window, count } => {
                let (window, count) = if now.duration_since(window) >= tick {
                    (now, n)
                } else {
                    (window, count + n)
                };
                if count >= STREAM_PER_TICK {
                    Pace::Batched { next: now + tick }
                } else {
                    Pace::Eager { window, count }
                }
            }
            Pace::Batched { .. } if n >= STREAM_PER_TICK => Pace::Batched { next: now + tick },
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
    fn a_trickle_is_read_as_it_comes_and_a_stream_once_a_tick() {
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
        assert!(pace.wakes(), "9 within a tick are not yet a stream");
        pace.read(1, ms(30));
        assert_eq!(pace, Pace::Batched { next: ms(31) }, "10 within a tick are");
        assert!(!pace.wakes(), "lapin's wake-ups are ignored");
        assert!(
            !pace.due(ms(30)),
            "a wake-up for another reason does not read"
        );
        assert_eq!(pace.next_deadline(), Some(ms(31)));
        assert!(pace.due(ms(31)));
        pace.read(20, ms(31));
        assert_eq!(pace, Pace::Batched { next: ms(32) }, "the stream goes on");
        pace.read(9, ms(32));
        assert!(pace.wakes(), "fewer than 10 in a tick: eager again");
        assert_eq!(pace.next_deadline(), None);
        pace.read(1, ms(32));
        assert_eq!(
            pace,
            Pace::Batched { next: ms(33) },
            "the tick's 9 and 1 more make a stream again"
        );
    }
}
