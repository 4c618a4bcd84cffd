//! Which handler worker gets which delivery: the master's side of `consume`, as a pure state machine.
//!
//! Why in the master and pure: deliveries must never be lost or settled twice whatever the workers
//! do (crash mid-message, get recycled, get reloaded), and those rules are easiest to prove without
//! processes. A worker gets deliveries only while it is ready and not on its way out; each worker
//! holds at most `window` deliveries (one running, the rest queued in its pipe, so it never waits
//! for the master between messages); the least loaded ready worker gets the next one. Whatever a
//! worker held when it went away is handed back to be requeued on the broker.

use std::collections::{BTreeMap, VecDeque};

/// A delivery as the master read it from lapin's consumer: our own id (unique across reconnects),
/// what the handler sees of it, and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: u64,
    pub routing_key: String,
    pub exchange: String,
    pub redelivered: bool,
    pub consumer_tag: String,
    /// pika's BasicProperties fields that are set, as JSON.
    pub properties: serde_json::Value,
    pub body: Vec<u8>,
}

impl Delivery {
    /// The bytes for a worker's control pipe: one JSON header line, then exactly `len` body bytes.
    #[cfg(test)]
    pub fn frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_frame(&mut out);
        out
    }

    /// Appends the frame to `out` (several deliveries for one worker go in one write).
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Header<'a> {
            t: &'static str,
            id: u64,
            len: usize,
            rk: &'a str,
            ex: &'a str,
            redelivered: bool,
            ctag: &'a str,
            props: &'a serde_json::Value,
        }
        let header = Header {
            t: "msg",
            id: self.id,
            len: self.body.len(),
            rk: &self.routing_key,
            ex: &self.exchange,
            redelivered: self.redelivered,
            ctag: &self.consumer_tag,
            props: &self.properties,
        };
        serde_json::to_writer(&mut *out, &header).expect("a JSON header always serializes");
        out.push(b'\n');
        out.extend_from_slice(&self.body);
    }
}

#[derive(Debug)]
pub struct Dispatch {
    /// From the broker, not yet given to a worker, oldest first.
    waiting: VecDeque<Delivery>,
    /// Ready workers that take deliveries: pid -> ids given and not yet settled, oldest first.
    takers: BTreeMap<i32, Vec<u64>>,
    /// Workers on their way out: what they still hold.
    leaving: BTreeMap<i32, Vec<u64>>,
    window: usize,
    stopped: bool,
}

impl Dispatch {
    pub fn new(window: usize) -> Dispatch {
        Dispatch {
            waiting: VecDeque::new(),
            takers: BTreeMap::new(),
            leaving: BTreeMap::new(),
            window: window.max(1),
            stopped: false,
        }
    }

    /// A handler worker is ready for deliveries.
    pub fn ready(&mut self, pid: i32) {
        if !self.leaving.contains_key(&pid) {
            self.takers.entry(pid).or_default();
        }
    }

    /// A worker was told to stop: it gets nothing more; what it holds is settled or handed back.
    pub fn leaving(&mut self, pid: i32) {
        if let Some(held) = self.takers.remove(&pid) {
            self.leaving.insert(pid, held);
        }
    }

    pub fn delivered(&mut self, delivery: Delivery) {
        self.waiting.push_back(delivery);
    }

    /// A worker settled a delivery; false if it held no such delivery (ignored).
    pub fn settled(&mut self, pid: i32, id: u64) -> bool {
        let held = match self.takers.get_mut(&pid) {
            Some(held) => held,
            None => match self.leaving.get_mut(&pid) {
                Some(held) => held,
                None => return false,
            },
        };
        match held.iter().position(|&i| i == id) {
            Some(at) => {
                held.remove(at);
                true
            }
            None => false,
        }
    }

    /// A worker is gone: the deliveries it held, unsettled, to be requeued.
    pub fn gone(&mut self, pid: i32) -> Vec<u64> {
        let mut held = self.takers.remove(&pid).unwrap_or_default();
        held.extend(self.leaving.remove(&pid).unwrap_or_default());
        held
    }

    /// Shutting down: nothing more is given out; the waiting deliveries, to be requeued.
    pub fn stop(&mut self) -> Vec<u64> {
        self.stopped = true;
        self.waiting.drain(..).map(|d| d.id).collect()
    }

    /// The broker connection is gone: deliveries of its channel can no longer be settled, and the
    /// broker redelivers them; forget the ones not yet given out.
    pub fn forget_waiting(&mut self) {
        self.waiting.clear();
    }

    /// Deliveries held by workers or waiting for one.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
            + self.takers.values().map(Vec::len).sum::<usize>()
            + self.leaving.values().map(Vec::len).sum::<usize>()
    }

    /// Gives waiting deliveries to the least loaded ready workers, within each one's window.
    pub fn assign(&mut self) -> Vec<(i32, Delivery)> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        while !self.waiting.is_empty() {
            let Some((&pid, held)) = self
                .takers
                .iter_mut()
                .filter(|(_, held)| held.len() < self.window)
                .min_by_key(|(_, held)| held.len())
            else {
                break;
            };
            let delivery = self.waiting.pop_front().expect("not empty");
            held.push(delivery.id);
            out.push((pid, delivery));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            id,
            routing_key: "k".into(),
            exchange: "x".into(),
            redelivered: false,
            consumer_tag: "c".into(),
            properties: serde_json::json!({}),
            body: vec![0, b'\n', 255],
        }
    }

    #[test]
    fn deliveries_spread_over_ready_workers_within_their_window() {
        let mut d = Dispatch::new(2);
        for id in 1..=5 {
            d.delivered(delivery(id));
        }
        assert!(d.assign().is_empty(), "no worker ready yet");
        d.ready(10);
        d.ready(11);
        let given: Vec<(i32, u64)> = d.assign().iter().map(|(p, d)| (*p, d.id)).collect();
        assert_eq!(given, vec![(10, 1), (11, 2), (10, 3), (11, 4)]);
        assert_eq!(d.in_flight(), 5, "one still waits: both windows are full");
        assert!(d.settled(10, 1));
        assert!(!d.settled(10, 1), "settled once");
        assert!(!d.settled(11, 1), "not its delivery");
        assert_eq!(
            d.assign()
                .iter()
                .map(|(p, d)| (*p, d.id))
                .collect::<Vec<_>>(),
            vec![(10, 5)]
        );
    }

    #[test]
    fn a_worker_that_dies_hands_back_what_it_held() {
        let mut d = Dispatch::new(3);
        d.ready(10);
        for id in 1..=3 {
            d.delivered(delivery(id));
        }
        d.assign();
        d.settled(10, 2);
        assert_eq!(d.gone(10), vec![1, 3]);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_leaving_worker_gets_nothing_more_but_may_still_settle() {
        let mut d = Dispatch::new(2);
        d.ready(10);
        d.ready(11);
        d.delivered(delivery(1));
        assert_eq!(d.assign()[0].0, 10);
        d.leaving(10);
        d.ready(10); // a late ready message changes nothing
        d.delivered(delivery(2));
        d.delivered(delivery(3));
        assert!(d.assign().iter().all(|(pid, _)| *pid == 11));
        assert!(d.settled(10, 1), "its last message still settles");
        assert_eq!(d.gone(10), Vec::<u64>::new());
    }

    #[test]
    fn stopping_hands_back_the_waiting_and_gives_nothing_out() {
        let mut d = Dispatch::new(1);
        d.ready(10);
        for id in 1..=3 {
            d.delivered(delivery(id));
        }
        assert_eq!(d.assign().len(), 1);
        assert_eq!(d.stop(), vec![2, 3]);
        d.delivered(delivery(4));
        d.settled(10, 1);
        assert!(d.assign().is_empty());
    }

    #[test]
    fn a_frame_is_a_json_line_then_the_exact_body() {
        let frame = delivery(7).frame();
        let newline = frame.iter().position(|&b| b == b'\n').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&frame[..newline]).unwrap();
        assert_eq!(
            (header["id"].as_u64(), header["len"].as_u64()),
            (Some(7), Some(3))
        );
        assert_eq!(&frame[newline + 1..], &[0, b'\n', 255]);
    }
}
