//! The workers' status pipes, in an epoll of their own: either they wake the loop, or the loop
//! reads them every round while the kind says they can wait.
//!
//! Why: under a stream of AMQP deliveries every handled message is a status line (its settle),
//! and each one woke the master, a wake-up costing both sides a few microseconds (most of it the
//! kernel's, on a VM more). Those lines can wait a millisecond (their acks are held up to 2 ms
//! anyway), and while deliveries flow the loop wakes for them often. So a kind may ask for its
//! workers' status to be `Polled`: the epoll holding the status pipes leaves the loop's poll, and
//! the loop drains it each round and at least every `every`. Otherwise it is `Woken`: the nested
//! epoll's own descriptor sits in the loop's poll and wakes it like any pipe. Switching is one
//! epoll_ctl, whatever the number of workers. The zygotes' pipes stay in the loop's poll.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry};

use crate::pool::WorkerId;

use super::source::Source;

/// How the workers' status lines reach the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watch {
    /// A line wakes the loop.
    Woken,
    /// The loop reads them each round and wakes for them at least this often.
    Polled { every: Duration },
}

pub struct Statuses {
    poll: Poll,
    events: Events,
    watch: Watch,
}

impl Statuses {
    /// An empty set, registered with the loop's poll (`Woken`).
    pub fn new(main: &Registry) -> io::Result<Statuses> {
        let poll = Poll::new()?;
        main.register(
            &mut SourceFd(&poll.as_raw_fd()),
            Source::Statuses.token(),
            Interest::READABLE,
        )?;
        Ok(Statuses {
            poll,
            events: Events::with_capacity(64),
            watch: Watch::Woken,
        })
    }

    /// Where a worker's status pipe is registered (and deregistered at its EOF).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Applies the kind's wish for this round: `Some(every)` to read them by polling.
    pub fn watch(&mut self, main: &Registry, polled_every: Option<Duration>) {
        let want = match polled_every {
            Some(every) => Watch::Polled { every },
            None => Watch::Woken,
        };
        let fd = self.poll.as_raw_fd();
        match (self.watch, want) {
            (Watch::Woken, Watch::Polled { .. }) => {
                let _ = main.deregister(&mut SourceFd(&fd));
            }
            (Watch::Polled { .. }, Watch::Woken) => {
                // Lines that came meanwhile make the nested epoll readable: the loop sees them at
                // once.
                let _ = main.register(
                    &mut SourceFd(&fd),
                    Source::Statuses.token(),
                    Interest::READABLE,
                );
            }
            _ => {}
        }
        self.watch = want;
    }

    /// The loop's poll timeout, shortened while the status pipes are only polled.
    pub fn cap(&self, timeout: Duration) -> Duration {
        match self.watch {
            Watch::Woken => timeout,
            Watch::Polled { every } => timeout.min(every),
        }
    }

    /// Whether the loop must read them this round without having been woken for them.
    pub fn polled(&self) -> bool {
        matches!(self.watch, Watch::Polled { .. })
    }

    /// The workers whose status pipes have lines (or an EOF), all of them: the nested epoll is
    /// edge-triggered in the loop's poll, so it is drained every time.
    pub fn ready(&mut self) -> Vec<WorkerId> {
        let mut ready = Vec::new();
        loop {
            if self
                .poll
                .poll(&mut self.events, Some(Duration::ZERO))
                .is_err()
            {
                return ready;
            }
            let mut count = 0;
            for event in self.events.iter() {
                count += 1;
                if let Some(Source::Status(id)) = Source::of(event.token()) {
                    ready.push(id);
                }
            }
            if count < self.events.capacity() {
                return ready;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A pipe whose read end is registered as worker `id`'s status pipe.
    fn worker_pipe(statuses: &Statuses, id: WorkerId) -> mio::unix::pipe::Sender {
        let (tx, mut rx) = mio::unix::pipe::new().unwrap();
        statuses
            .registry()
            .register(&mut rx, Source::Status(id).token(), Interest::READABLE)
            .unwrap();
        std::mem::forget(rx); // stays open (and registered) for the test's life
        tx
    }

    fn woke(main: &mut Poll, events: &mut Events, wait_ms: u64) -> bool {
        main.poll(events, Some(Duration::from_millis(wait_ms)))
            .unwrap();
        events
            .iter()
            .any(|e| Source::of(e.token()) == Some(Source::Statuses))
    }

    #[test]
    fn a_line_wakes_the_loop_unless_polled_and_is_found_either_way() {
        let mut main = Poll::new().unwrap();
        let mut events = Events::with_capacity(8);
        let mut statuses = Statuses::new(main.registry()).unwrap();
        let mut one = worker_pipe(&statuses, 1);
        let mut two = worker_pipe(&statuses, 2);
        let mut three = worker_pipe(&statuses, 3);

        one.write_all(b"settle\n").unwrap();
        assert!(
            woke(&mut main, &mut events, 1000),
            "Woken: a line wakes the loop"
        );
        assert_eq!(statuses.ready(), vec![1]);
        assert_eq!(statuses.cap(Duration::from_secs(1)), Duration::from_secs(1));

        statuses.watch(main.registry(), Some(Duration::from_millis(1)));
        assert!(statuses.polled());
        assert_eq!(
            statuses.cap(Duration::from_secs(1)),
            Duration::from_millis(1)
        );
        two.write_all(b"settle\n").unwrap();
        assert!(!woke(&mut main, &mut events, 50), "Polled: no wake-up");
        assert_eq!(statuses.ready(), vec![2], "but the round finds it");

        three.write_all(b"heartbeat\n").unwrap();
        statuses.watch(main.registry(), None);
        assert!(
            woke(&mut main, &mut events, 1000),
            "a line that came while polled wakes the loop as soon as it is Woken again"
        );
        assert_eq!(statuses.ready(), vec![3]);
    }
}
