//! `hurricane celery`: what the hooks inside the user's Celery process report, turned into probe
//! verdicts and metrics.
//!
//! Why here and pure: the rules are what Celery's users have lacked (issue #4079): readiness is
//! Celery's own `worker_ready` (beat: its first tick) and a connected broker; liveness is the event
//! loop's tick, and never a broker outage (a restart does not fix one: while the consumer is
//! reconnecting, its loop is not running, and that is not a wedge). Events in, a verdict out, with
//! the clock passed in so the rules are unit-tested.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::metrics::{CelerySnapshot, DURATION_BUCKETS_S};
use crate::protocol::CeleryEvent;
use crate::state::Health;

/// Results a task is counted under; each known task has all of them, at 0 until they happen.
pub const RESULTS: [&str; 5] = ["succeeded", "failed", "retried", "rejected", "revoked"];

/// Distinct task names (and beat entries) past this many are counted as `other`, so the metrics'
/// series stay bounded. Counted here, where every report arrives: each prefork child, and each
/// child that replaces a recycled one, sees only its own share of the names.
pub const MAX_NAMES: usize = 200;

/// `name`, or `other` once `seen` holds MAX_NAMES others.
fn bounded(seen: &mut HashSet<String>, name: &str) -> String {
    if seen.contains(name) {
        return name.to_string();
    }
    if seen.len() < MAX_NAMES {
        seen.insert(name.to_string());
        return name.to_string();
    }
    "other".to_string()
}

/// The broker connection as the consumer reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    /// Not connected yet (or Celery is still connecting for the first time).
    Connecting,
    Up,
    Lost,
}

#[derive(Debug)]
pub struct Celery {
    /// --liveness-timeout: the loop's tick (beat: the scheduler's) may be this old.
    liveness: Duration,
    started: bool,
    beat: bool,
    stopping: bool,
    link: Link,
    ever_connected: bool,
    last_tick: Option<Instant>,
    totals: CelerySnapshot,
    /// Task names counted under their own name (see MAX_NAMES).
    task_names: HashSet<String>,
    /// Beat entries counted under their own name.
    entry_names: HashSet<String>,
    /// Queues counted under their own name.
    queue_names: HashSet<String>,
    /// When the queue lengths were last read.
    queues_read: Option<Instant>,
}

impl Celery {
    pub fn new(liveness: Duration) -> Celery {
        Celery {
            liveness,
            started: false,
            beat: false,
            stopping: false,
            link: Link::Connecting,
            ever_connected: false,
            last_tick: None,
            totals: CelerySnapshot::default(),
            task_names: HashSet::new(),
            entry_names: HashSet::new(),
            queue_names: HashSet::new(),
            queues_read: None,
        }
    }

    /// One report; true when it says the app is a Django project (probes may ask for its checks).
    pub fn event(&mut self, event: &CeleryEvent, now: Instant) -> bool {
        match event {
            CeleryEvent::Started { django, beat } => {
                self.started = true;
                self.beat = *beat;
                self.last_tick = Some(now);
                return *django;
            }
            CeleryEvent::Connected => {
                if self.ever_connected && self.link != Link::Up {
                    self.totals.reconnects += 1;
                }
                self.ever_connected = true;
                self.link = Link::Up;
                self.last_tick = Some(now);
            }
            CeleryEvent::Lost => {
                if self.link == Link::Up {
                    log::warn!("event=celery_broker_lost");
                }
                self.link = Link::Lost;
            }
            CeleryEvent::Tick => self.last_tick = Some(now),
            CeleryEvent::Stopping => self.stopping = true,
            CeleryEvent::TaskStart => self.totals.active += 1,
            CeleryEvent::Task {
                name,
                result,
                seconds,
            } => {
                self.totals.active = (self.totals.active - 1).max(0);
                let name = &bounded(&mut self.task_names, name);
                for r in RESULTS {
                    self.totals
                        .tasks
                        .entry((name.clone(), r.to_string()))
                        .or_insert(0);
                }
                *self
                    .totals
                    .tasks
                    .entry((name.clone(), result.clone()))
                    .or_insert(0) += 1;
                if matches!(result.as_str(), "succeeded" | "failed" | "retried") {
                    let (counts, sum) = self
                        .totals
                        .durations
                        .entry(name.clone())
                        .or_insert_with(|| (vec![0; DURATION_BUCKETS_S.len() + 1], 0.0));
                    counts[DURATION_BUCKETS_S.partition_point(|b| b < seconds)] += 1;
                    *sum += seconds;
                }
            }
            CeleryEvent::BeatTick { at } => {
                self.last_tick = Some(now);
                self.totals.beat_last_tick = Some(*at);
            }
            CeleryEvent::BeatSent { entry } => {
                let entry = bounded(&mut self.entry_names, entry);
                *self.totals.beat_sent.entry(entry).or_insert(0) += 1;
            }
            CeleryEvent::Queues { lengths } => {
                self.queues_read = Some(now);
                // A queue no longer consumed (after a restart with other -Q) keeps its last value
                // only until this reading: the reading is the whole set.
                self.totals.queue_lengths.clear();
                for (queue, n) in lengths {
                    let queue = bounded(&mut self.queue_names, queue);
                    *self.totals.queue_lengths.entry(queue).or_insert(0) += n;
                }
            }
        }
        false
    }

    /// What Celery's state means for the probes.
    pub fn judge(&self, health: &mut Health, now: Instant) {
        if !self.started {
            health.not_started = Some(if self.beat {
                "beat has not ticked yet".to_string()
            } else {
                "the Celery worker is not ready yet (no worker_ready)".to_string()
            });
        }
        if self.stopping {
            health.not_ready = Some("Celery is shutting down".into());
        } else if self.link != Link::Up {
            health.not_ready = Some(match self.link {
                Link::Lost => "the broker connection is lost; Celery is reconnecting".into(),
                _ => "not connected to the broker yet".into(),
            });
        }
        // Only a running loop can be wedged: before the start and while reconnecting it is not running.
        if self.started
            && self.link == Link::Up
            && !self.stopping
            && let Some(tick) = self.last_tick
            && now.duration_since(tick) > self.liveness
        {
            health.not_alive = Some(format!(
                "the {} has not ticked for {:.0} s (--liveness-timeout {} s)",
                if self.beat {
                    "beat scheduler"
                } else {
                    "worker's event loop"
                },
                now.duration_since(tick).as_secs_f64(),
                self.liveness.as_secs_f64()
            ));
        }
    }

    /// When `judge` would change its mind without an event: the tick growing too old.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.last_tick
            .filter(|_| self.started && self.link == Link::Up)
            .map(|t| t + self.liveness + Duration::from_millis(1))
    }

    pub fn snapshot(&self, now: Instant) -> CelerySnapshot {
        CelerySnapshot {
            connected: self.link == Link::Up,
            beat: self.beat,
            queue_stats_age: self
                .queues_read
                .map(|at| now.duration_since(at).as_secs_f64()),
            ..self.totals.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(c: &Celery, now: Instant) -> Health {
        let mut h = Health::default();
        c.judge(&mut h, now);
        h
    }

    #[test]
    fn started_on_worker_ready_and_ready_only_while_connected() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(60));
        let h = judged(&c, t0);
        assert!(h.not_started.is_some() && h.not_ready.is_some() && h.not_alive.is_none());
        c.event(&CeleryEvent::Connected, t0);
        assert!(
            judged(&c, t0).not_started.is_some(),
            "connected is not started"
        );
        assert!(c.event(
            &CeleryEvent::Started {
                django: true,
                beat: false
            },
            t0
        ));
        let h = judged(&c, t0);
        assert!(h.not_started.is_none() && h.not_ready.is_none());
        c.event(&CeleryEvent::Lost, t0);
        assert!(judged(&c, t0).not_ready.unwrap().contains("reconnecting"));
        c.event(&CeleryEvent::Connected, t0);
        assert_eq!(c.snapshot(Instant::now()).reconnects, 1);
        c.event(&CeleryEvent::Stopping, t0);
        assert!(judged(&c, t0).not_ready.unwrap().contains("shutting down"));
    }

    #[test]
    fn a_silent_loop_fails_liveness_but_a_lost_broker_never_does() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(10));
        // Never connected (no broker at startup): alive however long it takes.
        assert!(
            judged(&c, t0 + Duration::from_secs(3600))
                .not_alive
                .is_none()
        );
        c.event(&CeleryEvent::Connected, t0);
        c.event(
            &CeleryEvent::Started {
                django: false,
                beat: false,
            },
            t0,
        );
        c.event(&CeleryEvent::Tick, t0 + Duration::from_secs(5));
        assert!(judged(&c, t0 + Duration::from_secs(15)).not_alive.is_none());
        assert_eq!(
            c.next_deadline(),
            Some(t0 + Duration::from_secs(15) + Duration::from_millis(1))
        );
        let h = judged(&c, t0 + Duration::from_secs(16));
        assert!(h.not_alive.unwrap().contains("event loop has not ticked"));
        c.event(&CeleryEvent::Lost, t0 + Duration::from_secs(16));
        assert!(
            judged(&c, t0 + Duration::from_secs(600))
                .not_alive
                .is_none(),
            "a broker outage is not a wedge"
        );
    }

    #[test]
    fn tasks_are_counted_by_name_and_result_with_durations() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(60));
        c.event(&CeleryEvent::TaskStart, t0);
        assert_eq!(c.snapshot(Instant::now()).active, 1);
        let task = |result: &str| CeleryEvent::Task {
            name: "proj.add".into(),
            result: result.into(),
            seconds: 0.2,
        };
        c.event(&task("succeeded"), t0);
        c.event(&task("failed"), t0);
        let s = c.snapshot(Instant::now());
        assert_eq!(s.active, 0, "never below zero");
        assert_eq!(
            s.tasks[&("proj.add".to_string(), "succeeded".to_string())],
            1
        );
        assert_eq!(s.tasks[&("proj.add".to_string(), "revoked".to_string())], 0);
        let (counts, sum) = &s.durations["proj.add"];
        assert_eq!(counts.iter().sum::<u64>(), 2);
        assert!((sum - 0.4).abs() < 1e-9);
        assert_eq!(
            s.tasks.keys().filter(|(n, _)| n == "proj.add").count(),
            RESULTS.len()
        );
    }

    #[test]
    fn task_names_past_the_bound_are_counted_as_other() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(60));
        let task = |name: String| CeleryEvent::Task {
            name,
            result: "succeeded".into(),
            seconds: 0.1,
        };
        for i in 0..MAX_NAMES + 5 {
            c.event(&task(format!("proj.t{i}")), t0);
        }
        c.event(&task("proj.t0".into()), t0); // a name seen before the bound keeps its own
        let s = c.snapshot(Instant::now());
        let names: HashSet<&String> = s.tasks.keys().map(|(n, _)| n).collect();
        assert_eq!(names.len(), MAX_NAMES + 1);
        let ok = |n: &str| s.tasks[&(n.to_string(), "succeeded".to_string())];
        assert_eq!(ok("other"), 5);
        assert_eq!(ok("proj.t0"), 2);
        assert!(!names.contains(&format!("proj.t{MAX_NAMES}")));
        assert_eq!(s.durations.len(), MAX_NAMES + 1);
        for i in 0..MAX_NAMES + 3 {
            c.event(
                &CeleryEvent::BeatSent {
                    entry: format!("entry-{i}"),
                },
                t0,
            );
        }
        let s = c.snapshot(Instant::now());
        assert_eq!(s.beat_sent.len(), MAX_NAMES + 1);
        assert_eq!(s.beat_sent["other"], 3);
    }

    #[test]
    fn beat_starts_at_its_first_tick_and_counts_entries() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(30));
        c.event(
            &CeleryEvent::Started {
                django: false,
                beat: true,
            },
            t0,
        );
        c.event(&CeleryEvent::Connected, t0);
        c.event(
            &CeleryEvent::BeatTick {
                at: 1_700_000_000.5,
            },
            t0,
        );
        c.event(
            &CeleryEvent::BeatSent {
                entry: "every-second".into(),
            },
            t0,
        );
        let s = c.snapshot(Instant::now());
        assert!(s.beat);
        assert_eq!(s.beat_sent["every-second"], 1);
        assert_eq!(s.beat_last_tick, Some(1_700_000_000.5));
        assert!(
            judged(&c, t0 + Duration::from_secs(31))
                .not_alive
                .unwrap()
                .contains("beat")
        );
    }

    #[test]
    fn queue_lengths_are_the_last_reading_with_its_age_and_a_bounded_label_set() {
        let t0 = Instant::now();
        let mut c = Celery::new(Duration::from_secs(60));
        assert_eq!(
            c.snapshot(t0).queue_stats_age,
            None,
            "never read: not shown"
        );
        let mut lengths: std::collections::BTreeMap<String, u64> = (0..MAX_NAMES + 3)
            .map(|i| (format!("q{i:03}"), 1))
            .collect();
        lengths.insert("celery".into(), 40);
        c.event(&CeleryEvent::Queues { lengths }, t0);
        let s = c.snapshot(t0 + Duration::from_secs(2));
        assert_eq!(s.queue_stats_age, Some(2.0));
        assert_eq!(s.queue_lengths["celery"], 40);
        assert_eq!(s.queue_lengths.len(), MAX_NAMES + 1, "200 names and other");
        assert_eq!(s.queue_lengths["other"], 4);
        let fresh = [("celery".to_string(), 7)].into_iter().collect();
        c.event(&CeleryEvent::Queues { lengths: fresh }, t0);
        let s = c.snapshot(t0);
        assert_eq!(s.queue_lengths["celery"], 7);
        assert_eq!(s.queue_lengths.len(), 1, "a reading replaces the last one");
    }
}
