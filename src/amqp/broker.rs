//! The broker side of `consume`: one AMQP connection and channel (lapin), on a thread of its own.
//!
//! Why a thread with its own small executor and not tokio: the master's loop is mio and must stay
//! small; lapin runs here on async-global-executor, and the two talk through channels: `Event`s up
//! (with a doorbell that wakes the master), `Command`s down. This thread declares the topic
//! exchange and the queue, binds, sets the prefetch, starts a consumer with manual acks, and makes
//! the settle calls the master decided, checking every broker call's result.
//!
//! Why deliveries do not pass through here: each hop between threads is a wake-up. When every
//! delivery and every ack went through this thread, it spent 13-15 us of CPU a message at 20,000
//! messages a second, a third of hurricane's (bench/consume.py). The consumer is handed up with
//! `Event::Consuming` and read from the master's loop, which lapin's I/O thread wakes directly;
//! this thread then only wakes for a batch of settle calls (1.2-1.5 us a message). Each
//! channel has an epoch: settle calls for an older channel are dropped (the broker redelivers
//! those messages), and the master says when the consumer it reads has ended.
//!
//! A lost connection or channel (the broker closed it, `consumer_timeout`, a network failure) is
//! reported; with `reconnect` it connects again with backoff (0.5 s doubling to 30 s) and
//! redeclares, rebinds and resumes.

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Map, Value, json};

use crate::amqp::dispatch::Delivery;
use crate::amqp::settle::Call;
use crate::state::Doorbell;

/// First wait before reconnecting; it doubles up to the maximum.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 500;
pub const RECONNECT_BACKOFF_MAX_S: u64 = 30;
/// The largest AMQP frame asked for. lapin keeps 32 frames of buffer each way, zero-filled: with
/// RabbitMQ's default of 128 KiB that is 8 MiB of the master's memory; 16 KiB frames keep it at
/// 1 MiB, and bigger bodies simply take more frames.
pub const FRAME_MAX_BYTES: u32 = 16 * 1024;
/// A broker call (connect, declare, bind) that takes longer has failed.
const BROKER_CALL_TIMEOUT_S: u64 = 10;

/// Where and what to consume.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where, who, which vhost (the password is only ever here).
    pub uri: AMQPUri,
    /// The same without the password, for logs.
    pub display: String,
    pub queue: String,
    pub exchange: String,
    pub durable: bool,
    pub prefetch: u16,
    pub reconnect: bool,
    /// The connection's name in the broker's management (`rabbitmqctl list_connections name`).
    pub connection_name: String,
    /// How often the queue's depth and consumers are read (None: never).
    pub queue_stats: Option<Duration>,
}

/// What the broker thread tells the master.
#[derive(Debug)]
pub enum Event {
    /// Connected, declared, bound, consuming: the master reads `consumer` from now on, and its
    /// settle calls name `epoch`.
    Consuming {
        epoch: u64,
        consumer: lapin::Consumer,
        consumer_tag: String,
    },
    /// The connection or channel is gone (deliveries not settled yet come back from the broker).
    Lost { reason: String, retrying: bool },
    /// A settle could not reach the broker (its channel is gone; the broker redelivers it).
    SettleFailed { count: usize },
    /// The queue as the broker counts it (a passive queue.declare).
    QueueStats {
        /// Ready messages: not yet delivered to any consumer.
        messages: u32,
        consumers: u32,
    },
    /// Closed on request; the thread is ending.
    Closed,
}

/// What the master tells the broker thread.
#[derive(Debug)]
pub enum Command {
    /// Start consuming, bound with these routing keys.
    Start { routing_keys: Vec<String> },
    /// Broker calls for the channel of `epoch`, in order.
    Settle { epoch: u64, calls: Vec<Call> },
    /// The consumer of `epoch` ended (its channel closed, or the broker cancelled it): reconnect
    /// or report.
    Ended { epoch: u64, reason: String },
    /// Stop receiving deliveries (basic.cancel); settles still go through.
    Cancel,
    /// Close the channel and the connection (the master's last settles came before), end the
    /// thread.
    Close,
}

/// The master's handle.
pub struct Broker {
    tx: Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Broker {
    pub fn send(&self, command: Command) {
        let _ = self.tx.try_send(command); // unbounded: fails only once the thread is gone
    }

    /// Asks the thread to close and waits for it, at most `limit`.
    pub fn close(&mut self, limit: Duration) {
        self.send(Command::Close);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

pub fn spawn(
    settings: Settings,
    events: mpsc::Sender<Event>,
    bell: Arc<Doorbell>,
) -> std::io::Result<Broker> {
    let (tx, rx) = async_channel::unbounded();
    let thread = thread::Builder::new().name("amqp".into()).spawn(move || {
        let up = Up { events, bell };
        async_global_executor::block_on(run(settings, rx, &up));
        up.send(Event::Closed);
    })?;
    Ok(Broker {
        tx,
        thread: Some(thread),
    })
}

/// The way up to the master: an event, then the doorbell.
struct Up {
    events: mpsc::Sender<Event>,
    bell: Arc<Doorbell>,
}

impl Up {
    fn send(&self, event: Event) {
        let _ = self.events.send(event);
        self.bell.ring();
    }
}

/// How a session ended.
enum Ended {
    Closed,
    Lost(String),
}

async fn run(settings: Settings, rx: Receiver<Command>, up: &Up) {
    let routing_keys = loop {
        match rx.recv().await {
            Ok(Command::Start { routing_keys }) => break routing_keys,
            Ok(Command::Close) | Err(_) => return,
            Ok(_) => {} // nothing delivered yet, so nothing to settle or cancel
        }
    };
    let mut epoch = 0;
    let mut backoff = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
    loop {
        let mut consumed = false;
        match session(&settings, &routing_keys, &rx, up, &mut epoch, &mut consumed).await {
            Ended::Closed => return,
            Ended::Lost(reason) => {
                log::error!(
                    "event=amqp_lost broker={} reason={reason:?} reconnect={}",
                    settings.display,
                    settings.reconnect
                );
                up.send(Event::Lost {
                    reason,
                    retrying: settings.reconnect,
                });
                if !settings.reconnect {
                    wait_for_close(&rx).await;
                    return;
                }
            }
        }
        if consumed {
            backoff = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
        }
        log::info!(
            "event=amqp_reconnect_wait ms={} broker={}",
            backoff.as_millis(),
            settings.display
        );
        if !sleep_unless_closed(backoff, &rx).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(RECONNECT_BACKOFF_MAX_S));
    }
}

/// Waits until the master asks to close (after a lost connection without --reconnect).
async fn wait_for_close(rx: &Receiver<Command>) {
    while let Ok(command) = rx.recv().await {
        if matches!(command, Command::Close) {
            return;
        }
    }
}

/// Sleeps `wait`, dropping settles of the lost channel; false if asked to close meanwhile.
async fn sleep_unless_closed(wait: Duration, rx: &Receiver<Command>) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let timer = async {
            async_io::Timer::at(deadline).await;
            None
        };
        match future::or(timer, async { Some(rx.recv().await) }).await {
            None => return true,
            Some(Ok(Command::Close)) | Some(Err(_)) => return false,
            Some(Ok(_)) => {} // a settle of the lost channel: the broker redelivers those messages
        }
    }
}

async fn timed<T>(what: &str, call: impl Future<Output = lapin::Result<T>>) -> Result<T, String> {
    let limit = async {
        async_io::Timer::after(Duration::from_secs(BROKER_CALL_TIMEOUT_S)).await;
        Err(format!("{what}: no answer in {BROKER_CALL_TIMEOUT_S} s"))
    };
    future::or(
        async { call.await.map_err(|e| format!("{what}: {e}")) },
        limit,
    )
    .await
}

/// Connects, declares, binds and consumes until the channel is lost or the master says close.
async fn session(
    settings: &Settings,
    routing_keys: &[String],
    rx: &Receiver<Command>,
    up: &Up,
    epoch: &mut u64,
    consumed: &mut bool,
) -> Ended {
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.clone().into());
    let mut uri = settings.uri.clone();
    if uri.query.frame_max.is_none_or(|f| f > FRAME_MAX_BYTES) {
        uri.query.frame_max = Some(FRAME_MAX_BYTES);
    }
    let connection = match timed("connect", Connection::connect_uri(uri, properties)).await {
        Ok(c) => c,
        Err(e) => return Ended::Lost(e),
    };
    let channel = match open(&connection, settings, routing_keys).await {
        Ok(channel) => channel,
        Err(e) => return Ended::Lost(e),
    };
    let consumer_tag = format!("{}-{}", settings.connection_name, std::process::id());
    let consume = channel.basic_consume(
        settings.queue.as_str().into(),
        consumer_tag.as_str().into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let consumer = match timed("basic.consume", consume).await {
        Ok(c) => c,
        Err(e) => return Ended::Lost(e),
    };
    log::info!(
        "event=amqp_consuming broker={} queue={} exchange={} routing_keys={:?} prefetch={}",
        settings.display,
        settings.queue,
        settings.exchange,
        routing_keys.join(","),
        settings.prefetch
    );
    *consumed = true;
    *epoch += 1;
    up.send(Event::Consuming {
        epoch: *epoch,
        consumer,
        consumer_tag: consumer_tag.clone(),
    });
    let consuming = consume_loop(
        settings,
        &connection,
        &channel,
        &consumer_tag,
        rx,
        up,
        *epoch,
    );
    match settings.queue_stats {
        Some(every) => future::or(consuming, watch_queue(&connection, settings, every, up)).await,
        None => consuming.await,
    }
}

/// Makes the settle calls the master sends, until the master says the consumer ended or to
/// close.
async fn consume_loop(
    settings: &Settings,
    connection: &Connection,
    channel: &Channel,
    consumer_tag: &str,
    rx: &Receiver<Command>,
    up: &Up,
    epoch: u64,
) -> Ended {
    let mut receiving = true;
    loop {
        let command = match rx.recv().await {
            Ok(command) => command,
            Err(_) => Command::Close,
        };
        match command {
            Command::Settle { epoch: of, calls } if of == epoch => {
                if let Err(e) = settle(channel, &calls, up).await {
                    return Ended::Lost(e);
                }
            }
            Command::Ended { epoch: of, reason } if of == epoch => return Ended::Lost(reason),
            Command::Cancel if receiving => {
                receiving = false;
                let cancel =
                    channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default());
                match timed("basic.cancel", cancel).await {
                    Ok(()) => log::info!("event=amqp_cancelled consumer={consumer_tag}"),
                    Err(e) => log::warn!("event=amqp_cancel_failed error={e:?}"),
                }
            }
            Command::Close => {
                // Every held ack came before this (the master flushes them first).
                let _ = timed("channel.close", channel.close(200, "bye".into())).await;
                let _ = timed("connection.close", connection.close(200, "bye".into())).await;
                log::info!("event=amqp_closed broker={}", settings.display);
                return Ended::Closed;
            }
            // An older channel's (the broker redelivers those messages), or a repeated cancel.
            Command::Settle { .. }
            | Command::Ended { .. }
            | Command::Cancel
            | Command::Start { .. } => {}
        }
    }
}

/// Reads the queue's depth and consumers now and every `every` after, with a passive
/// queue.declare on a channel of its own: the consume loop never waits on it, and a broker that
/// closes this channel (the queue was deleted: 404) costs only this reading; the next one opens a
/// new channel. Never ends by itself: the session's end drops it.
async fn watch_queue(
    connection: &Connection,
    settings: &Settings,
    every: Duration,
    up: &Up,
) -> Ended {
    let mut channel: Option<Channel> = None;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    loop {
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            channel = timed("channel.open", connection.create_channel())
                .await
                .ok();
        }
        if let Some(c) = &channel {
            let declare = c.queue_declare(
                settings.queue.as_str().into(),
                passive,
                FieldTable::default(),
            );
            match timed("queue.declare passive", declare).await {
                Ok(queue) => up.send(Event::QueueStats {
                    messages: queue.message_count(),
                    consumers: queue.consumer_count(),
                }),
                // A queue deleted under us (the broker's 404) is an empty queue, not an outage.
                Err(e) if e.contains("NOT_FOUND") => up.send(Event::QueueStats {
                    messages: 0,
                    consumers: 0,
                }),
                Err(e) => log::warn!(
                    "event=amqp_queue_stats_failed queue={} error={e:?}",
                    settings.queue
                ),
            }
        }
        async_io::Timer::after(every).await;
    }
}

/// The exchange, the queue, the bindings and the prefetch, on a fresh channel.
async fn open(
    connection: &Connection,
    settings: &Settings,
    routing_keys: &[String],
) -> Result<Channel, String> {
    let channel = timed("channel.open", connection.create_channel()).await?;
    let exchange = ExchangeDeclareOptions {
        durable: settings.durable,
        ..ExchangeDeclareOptions::default()
    };
    timed(
        "exchange.declare",
        channel.exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Topic,
            exchange,
            FieldTable::default(),
        ),
    )
    .await?;
    let queue = QueueDeclareOptions {
        durable: settings.durable,
        ..QueueDeclareOptions::default()
    };
    timed(
        "queue.declare",
        channel.queue_declare(settings.queue.as_str().into(), queue, FieldTable::default()),
    )
    .await?;
    for key in routing_keys {
        timed(
            "queue.bind",
            channel.queue_bind(
                settings.queue.as_str().into(),
                settings.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    timed(
        "basic.qos",
        channel.basic_qos(settings.prefetch, BasicQosOptions::default()),
    )
    .await?;
    Ok(channel)
}

/// Makes the master's settle calls; an error means the channel is gone.
async fn settle(channel: &Channel, calls: &[Call], up: &Up) -> Result<(), String> {
    for (done, call) in calls.iter().enumerate() {
        let result = match *call {
            Call::Ack { tag, multiple } => {
                channel.basic_ack(tag, BasicAckOptions { multiple }).await
            }
            Call::Nack { tag, requeue } => {
                channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue,
                        },
                    )
                    .await
            }
        };
        if let Err(e) = result {
            // Not settled: the broker redelivers these when it notices the channel is gone.
            up.send(Event::SettleFailed {
                count: calls.len() - done,
            });
            return Err(format!("settling on the broker: {e}"));
        }
    }
    Ok(())
}

/// A lapin delivery as the master hands it to a handler worker, with our id.
pub fn delivery(d: lapin::message::Delivery, id: u64, consumer_tag: &str) -> Delivery {
    Delivery {
        id,
        routing_key: d.routing_key.to_string(),
        exchange: d.exchange.to_string(),
        redelivered: d.redelivered,
        consumer_tag: consumer_tag.to_string(),
        properties: properties_json(&d.properties),
        body: d.data,
    }
}

/// pika's BasicProperties fields that are set, as JSON for the handler.
fn properties_json(p: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            out.insert(name.to_string(), value);
        }
    };
    let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| json!(s.as_str()));
    put("content_type", text(p.content_type()));
    put("content_encoding", text(p.content_encoding()));
    put("headers", p.headers().as_ref().map(table_json));
    put("delivery_mode", p.delivery_mode().map(|v| json!(v)));
    put("priority", p.priority().map(|v| json!(v)));
    put("correlation_id", text(p.correlation_id()));
    put("reply_to", text(p.reply_to()));
    put("expiration", text(p.expiration()));
    put("message_id", text(p.message_id()));
    put("timestamp", p.timestamp().map(|v| json!(v)));
    put("type", text(p.kind()));
    put("user_id", text(p.user_id()));
    put("app_id", text(p.app_id()));
    put("cluster_id", text(p.cluster_id()));
    Value::Object(out)
}

fn table_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

impl Settings {
    /// `amqp://user@host:port/vhost`: the broker as logs may show it (never the password).
    pub fn describe(uri: &AMQPUri) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            uri.scheme,
            uri.authority.userinfo.username,
            uri.authority.host,
            uri.authority.port,
            uri.vhost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_become_pikas_field_names_with_headers_as_plain_json() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        headers.insert("attempt".into(), AMQPValue::LongInt(3));
        let p = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let json = properties_json(&p);
        assert_eq!(json["message_id"], "m-1");
        assert_eq!(json["content_type"], "application/json");
        assert_eq!(json["headers"], json!({"tenant": "acme", "attempt": 3}));
        assert!(
            json.get("reply_to").is_none(),
            "unset fields are left out (None in Python)"
        );
    }
}
