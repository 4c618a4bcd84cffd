//! `hurricane consume`: AMQP deliveries handled by a pool of Python handler workers.
//!
//! Why split this way: the broker connection lives in the master (`broker`, lapin on its own
//! thread), never in a worker, so a handler that crashes or is recycled costs no connection and no
//! message; `dispatch` decides which worker gets which delivery and what goes back to the broker
//! when a worker goes away; `settle` coalesces acks. `Consume` is the glue the master calls at its
//! events (a worker ready, settling, leaving, gone; the doorbell rang) and asks for what to write
//! to which worker, which settle calls to make, what the probes should say and what the metrics
//! show.
//!
//! Deliveries are read from lapin's consumer here, in the master's loop, and settle calls go down
//! to the broker thread in batches: lapin's I/O thread rings the master's doorbell itself, so a
//! message costs no wake-up of the broker thread on its way in, and its ack shares one with others
//! on its way out (see `broker`).

pub mod broker;
pub mod dispatch;
pub mod pace;
pub mod settle;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::Stream;

use crate::amqp::broker::{Broker, Command, Event, Settings};
use crate::amqp::dispatch::Dispatch;
use crate::amqp::pace::Pace;
use crate::amqp::settle::{Flush, Outcome, Settler};
use crate::metrics::{AmqpSnapshot, DURATION_BUCKETS_S, QueueStats, SIZE_BUCKETS_BYTES};
use crate::state::{Doorbell, Health};

/// How long the master waits for the broker thread to settle and close at exit.
const CLOSE_TIMEOUT_S: u64 = 5;
/// Deliveries flow while one was read this recently: the handlers' settles then wait for the
/// loop's next round instead of waking it (`status_polled`).
const FLOWING_MS: u64 = 5;
/// ... and the loop reads them at least this often. Their acks are held up to 2 ms anyway
/// (`settle::ACK_HOLD_MS`).
const STATUS_POLL_MS: u64 = 1;

/// The broker link as the probes see it.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    /// Not consuming yet (connecting, or waiting for the first handler's routing keys).
    Connecting,
    Consuming,
    Lost {
        since: Instant,
        reason: String,
    },
}

/// What `consume` needs besides the pool.
pub struct Config {
    pub broker: Settings,
    /// --routing-key; empty: the handler's get_routing_keys(queue), else the queue's name.
    pub routing_keys: Vec<String>,
    /// With --reconnect: /alive fails once the broker has been lost this long.
    pub reconnect_timeout: Option<Duration>,
    /// Deliveries a worker holds at once (one running, the rest waiting in its pipe).
    pub window: usize,
}

/// Where deliveries come from.
enum Feed {
    /// No consumer: not consuming yet, or its channel is gone.
    Idle,
    /// Read in the master's loop; lapin's I/O thread rings the doorbell when it has more.
    Reading(Channel),
    /// Cancelled at shutdown: kept (dropping lapin's consumer cancels it again) but not read.
    Cancelled(Channel),
}

/// One channel's consumer and what was delivered on it and is not settled yet.
struct Channel {
    epoch: u64,
    consumer: lapin::Consumer,
    consumer_tag: String,
    /// Our delivery id -> the channel's delivery tag, until settled.
    tags: HashMap<u64, u64>,
    settler: Settler,
    /// When to read the consumer: as deliveries come, or once a tick under a stream.
    pace: Pace,
}

pub struct Consume {
    config: Config,
    broker: Broker,
    events: mpsc::Receiver<Event>,
    /// Rings the master's doorbell: the broker thread's events and lapin's deliveries.
    waker: Waker,
    feed: Feed,
    /// Delivery ids, unique across channels.
    next_id: u64,
    /// When the last delivery was read.
    last_read: Option<Instant>,
    dispatch: Dispatch,
    started: bool,
    stopped: bool,
    link: Link,
    ever_consumed: bool,
    /// Set when the broker is lost for good (no --reconnect): the master stops with this error.
    fatal: Option<String>,
    totals: AmqpSnapshot,
    /// The broker's last count of the queue (--queue-stats-interval).
    queue_stats: Option<QueueReading>,
}

/// One passive queue.declare's answer, and when it came.
#[derive(Debug, Clone, Copy)]
struct QueueReading {
    messages: u32,
    consumers: u32,
    at: Instant,
}

impl Consume {
    pub fn start(config: Config, bell: Doorbell) -> std::io::Result<Consume> {
        let (tx, events) = mpsc::channel();
        let bell = Arc::new(bell);
        let broker = broker::spawn(config.broker.clone(), tx, Arc::clone(&bell))?;
        Ok(Consume {
            config,
            broker,
            events,
            waker: Waker::from(bell),
            feed: Feed::Idle,
            next_id: 0,
            last_read: None,
            dispatch: Dispatch::new(1),
            started: false,
            stopped: false,
            link: Link::Connecting,
            ever_consumed: false,
            fatal: None,
            totals: AmqpSnapshot::new(),
            queue_stats: None,
        })
    }

    /// A handler worker is ready; the first one's routing keys start the consumer.
    pub fn worker_ready(&mut self, pid: i32, handler_keys: &[String]) {
        if !self.started {
            self.started = true;
            let routing_keys = if !self.config.routing_keys.is_empty() {
                self.config.routing_keys.clone()
            } else if !handler_keys.is_empty() {
                handler_keys.to_vec()
            } else {
                vec![self.config.broker.queue.clone()]
            };
            self.dispatch = Dispatch::new(self.config.window);
            self.broker.send(Command::Start { routing_keys });
        }
        self.dispatch.ready(pid);
    }

    /// A worker settled a delivery.
    pub fn settled(&mut self, pid: i32, id: u64, ack: bool, requeue: bool, ms: f64) {
        if !self.dispatch.settled(pid, id) {
            log::warn!("event=amqp_settle_unknown pid={pid} id={id}");
            return;
        }
        let outcome = if ack {
            Outcome::Ack
        } else {
            Outcome::Reject { requeue }
        };
        self.totals.count(outcome);
        self.totals.observe_duration(ms / 1000.0);
        self.settle(id, outcome);
    }

    /// Records a verdict for the broker; one of a channel that is gone is dropped (the broker
    /// redelivers that message).
    fn settle(&mut self, id: u64, outcome: Outcome) {
        if let Feed::Reading(channel) | Feed::Cancelled(channel) = &mut self.feed
            && let Some(tag) = channel.tags.remove(&id)
        {
            channel.settler.settle(tag, outcome, Instant::now());
        }
    }

    /// Sends the broker thread the settle calls due now (`Flush::All`: every verdict recorded).
    fn send_settles(&mut self, flush: Flush) {
        if let Feed::Reading(channel) | Feed::Cancelled(channel) = &mut self.feed {
            let calls = channel.settler.calls(Instant::now(), flush);
            if !calls.is_empty() {
                self.broker.send(Command::Settle {
                    epoch: channel.epoch,
                    calls,
                });
            }
        }
    }

    /// A worker was told to stop: it gets no more deliveries.
    pub fn worker_leaving(&mut self, pid: i32) {
        self.dispatch.leaving(pid);
    }

    /// A worker exited: what it held goes back to the queue.
    pub fn worker_gone(&mut self, pid: i32) {
        let held = self.dispatch.gone(pid);
        if !held.is_empty() {
            log::warn!(
                "event=amqp_requeue pid={pid} deliveries={} reason=\"worker exited before settling\"",
                held.len()
            );
        }
        self.requeue(held);
    }

    fn requeue(&mut self, ids: Vec<u64>) {
        for id in ids {
            let outcome = Outcome::Reject { requeue: true };
            self.totals.count(outcome);
            self.settle(id, outcome);
        }
    }

    /// Shutting down: cancel the consumer, and requeue what no worker has started.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.broker.send(Command::Cancel);
        self.feed = match std::mem::replace(&mut self.feed, Feed::Idle) {
            Feed::Reading(channel) => Feed::Cancelled(channel),
            feed => feed,
        };
        let waiting = self.dispatch.stop();
        self.requeue(waiting);
    }

    /// The doorbell rang: take the broker thread's events, then what the consumer has.
    pub fn take_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Consuming {
                    epoch,
                    consumer,
                    consumer_tag,
                } => {
                    if self.ever_consumed {
                        self.totals.reconnects += 1;
                    }
                    self.ever_consumed = true;
                    self.link = Link::Consuming;
                    let channel = Channel {
                        epoch,
                        consumer,
                        consumer_tag,
                        tags: HashMap::new(),
                        settler: Settler::new(self.config.broker.prefetch),
                        pace: Pace::new(Instant::now()),
                    };
                    // Stopped while connecting: the broker thread cancels it (the Cancel waits
                    // for it in the command queue).
                    self.feed = if self.stopped {
                        Feed::Cancelled(channel)
                    } else {
                        Feed::Reading(channel)
                    };
                }
                Event::Lost { reason, retrying } => {
                    self.feed = Feed::Idle;
                    self.dispatch.forget_waiting();
                    if !retrying && self.fatal.is_none() {
                        self.fatal = Some(format!(
                            "lost the broker ({reason}); pass --reconnect to keep trying"
                        ));
                    }
                    if !matches!(self.link, Link::Lost { .. }) {
                        self.link = Link::Lost {
                            since: Instant::now(),
                            reason,
                        };
                    }
                }
                Event::SettleFailed { count } => {
                    log::warn!(
                        "event=amqp_settle_failed deliveries={count} reason=\"channel gone; the broker redelivers them\""
                    );
                }
                Event::QueueStats {
                    messages,
                    consumers,
                } => {
                    self.queue_stats = Some(QueueReading {
                        messages,
                        consumers,
                        at: Instant::now(),
                    });
                }
                Event::Closed => {}
            }
        }
        self.read_deliveries();
    }

    /// Under a stream, reads what came since the last tick once the tick is due (after each
    /// round of events); otherwise lapin's wake-up rings the doorbell and `take_events` reads.
    pub fn read_on_tick(&mut self) {
        if let Feed::Reading(channel) = &self.feed
            && !channel.pace.wakes()
        {
            self.read_deliveries();
        }
    }

    /// Takes every delivery the consumer holds when its pace says so (see `pace`). Reading until
    /// it is empty with the doorbell's waker is what arms lapin's wake-up for the next one; under
    /// a stream a no-op waker leaves lapin's wake-ups unheard until the next tick.
    fn read_deliveries(&mut self) {
        let now = Instant::now();
        let Feed::Reading(channel) = &mut self.feed else {
            return;
        };
        if !channel.pace.due(now) {
            return;
        }
        let ended = 'read: loop {
            let wakes = channel.pace.wakes();
            let mut cx = Context::from_waker(if wakes { &self.waker } else { Waker::noop() });
            let mut read = 0;
            let ended = loop {
                match Pin::new(&mut channel.consumer).poll_next(&mut cx) {
                    Poll::Ready(Some(Ok(d))) => {
                        read += 1;
                        self.next_id += 1;
                        let id = self.next_id;
                        channel.tags.insert(id, d.delivery_tag);
                        channel.settler.delivered(d.delivery_tag);
                        let delivery = broker::delivery(d, id, &channel.consumer_tag);
                        self.totals.observe_size(delivery.body.len() as f64);
                        self.dispatch.delivered(delivery);
                    }
                    Poll::Ready(Some(Err(e))) => break Some(e.to_string()),
                    Poll::Ready(None) => {
                        break Some("the broker ended the consumer (channel closed)".to_string());
                    }
                    Poll::Pending => break None,
                }
            };
            if let Some(reason) = ended {
                break 'read reason;
            }
            if read > 0 {
                self.last_read = Some(now);
            }
            channel.pace.read(read, now);
            if channel.pace.wakes() && !wakes {
                // The stream ended: one more read with the doorbell's waker arms lapin's wake-up.
                continue;
            }
            return;
        };
        // What was handled is settled first, in case only the consumer ended and its channel did
        // not (a settle on a closed channel fails, and the broker redelivers those messages); then
        // the broker thread reconnects (or reports) and says Lost. Until then nothing is read.
        let epoch = channel.epoch;
        self.send_settles(Flush::All);
        self.broker.send(Command::Ended {
            epoch,
            reason: ended,
        });
        self.feed = Feed::Idle;
    }

    /// The broker is gone for good (no --reconnect): why, once.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// Deliveries to write to workers now: (pid, the frames of all its deliveries), one entry a
    /// worker, so each worker's pipe is written once.
    pub fn assign(&mut self) -> Vec<(i32, Vec<u8>)> {
        let mut out: Vec<(i32, Vec<u8>)> = Vec::new();
        for (pid, delivery) in self.dispatch.assign() {
            let at = match out.iter().position(|(p, _)| *p == pid) {
                Some(at) => at,
                None => {
                    out.push((pid, Vec::new()));
                    out.len() - 1
                }
            };
            delivery.write_frame(&mut out[at].1);
        }
        out
    }

    /// What the broker link means for the probes.
    pub fn judge(&self, health: &mut Health) {
        if !self.ever_consumed {
            health.not_started = Some(match &self.link {
                Link::Lost { reason, .. } => format!("not consuming yet: {reason}"),
                _ => "not consuming yet: connecting to the broker".to_string(),
            });
        }
        match &self.link {
            Link::Consuming => {}
            Link::Connecting => health.not_ready = Some("connecting to the broker".into()),
            Link::Lost { since, reason } => {
                health.not_ready = Some(format!("broker lost: {reason}"));
                if let Some(limit) = self.config.reconnect_timeout
                    && since.elapsed() >= limit
                {
                    health.not_alive = Some(format!(
                        "broker lost for more than {} s: {reason}",
                        limit.as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Sends the settle calls that are due (after each round of events, and at `next_deadline`).
    pub fn flush(&mut self) {
        self.send_settles(Flush::Due);
    }

    /// When the loop must run without an event: held acks falling due, the next read under a
    /// stream, or `judge` answering differently (the reconnect timeout passing).
    pub fn next_deadline(&self) -> Option<Instant> {
        let lost = match (&self.link, self.config.reconnect_timeout) {
            (Link::Lost { since, .. }, Some(limit)) if since.elapsed() < limit => {
                Some(*since + limit)
            }
            _ => None,
        };
        let (settles, reads) = match &self.feed {
            Feed::Reading(channel) => (channel.settler.next_due(), channel.pace.next_deadline()),
            Feed::Cancelled(channel) => (channel.settler.next_due(), None),
            Feed::Idle => (None, None),
        };
        lost.into_iter().chain(settles).chain(reads).min()
    }

    /// While deliveries flow, the handlers' status lines (a settle per message) need not wake the
    /// loop: the wake-up cost the master and the handler 2-3 us of CPU a message at 20,000 msg/s.
    pub fn status_polled(&self, now: Instant) -> Option<Duration> {
        let last = self.last_read?;
        (now.duration_since(last) < Duration::from_millis(FLOWING_MS))
            .then(|| Duration::from_millis(STATUS_POLL_MS))
    }

    pub fn snapshot(&self) -> AmqpSnapshot {
        AmqpSnapshot {
            connected: self.link == Link::Consuming,
            in_flight: self.dispatch.in_flight() as u64,
            queue: self.config.broker.queue.clone(),
            queue_stats: self.queue_stats.map(|r| QueueStats {
                messages: r.messages,
                consumers: r.consumers,
                age_seconds: r.at.elapsed().as_secs_f64(),
            }),
            ..self.totals.clone()
        }
    }

    /// Settles what is pending and closes the connection (bounded).
    pub fn close(&mut self) {
        self.send_settles(Flush::All);
        self.broker.close(Duration::from_secs(CLOSE_TIMEOUT_S));
    }
}

impl AmqpSnapshot {
    pub fn new() -> AmqpSnapshot {
        AmqpSnapshot {
            duration: vec![0; DURATION_BUCKETS_S.len() + 1],
            size: vec![0; SIZE_BUCKETS_BYTES.len() + 1],
            ..AmqpSnapshot::default()
        }
    }

    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ack => self.acked += 1,
            Outcome::Reject { requeue: false } => self.rejected += 1,
            Outcome::Reject { requeue: true } => self.requeued += 1,
        }
    }

    fn observe_duration(&mut self, seconds: f64) {
        let bucket = DURATION_BUCKETS_S.partition_point(|b| *b < seconds);
        self.duration[bucket] += 1;
        self.duration_sum += seconds;
    }

    fn observe_size(&mut self, bytes: f64) {
        let bucket = SIZE_BUCKETS_BYTES.partition_point(|b| *b < bytes);
        self.size[bucket] += 1;
        self.size_sum += bytes;
    }
}
