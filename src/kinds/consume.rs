//! `hurricane consume HANDLER`: our embedded AMQP handler worker, in the user's interpreter, with
//! no socket; the master holds the broker connection and writes deliveries down each worker's
//! control pipe (`amqp`).
//!
//! Why the broker link is this kind's state and not the master's: only consume has one. The
//! master calls the `Kind` hooks at its events (a worker ready, settling, leaving, gone; the broker
//! thread rang) and never knows what AMQP is.

use std::time::{Duration, Instant};

use clap::builder::BoolishValueParser;
use serde_json::{Map, json};

use crate::amqp::{self, Consume};
use crate::args::{DebugArgs, InterpreterArgs, LogArgs, ProbeArgs, ip_address, seconds, webhook_url, workers};
use crate::debugger::Debugger;
use crate::config::{Common, Config, Parts, Usage, is_dotted};
use crate::kind::{Embedded, Kind, Pump};
use crate::kinds::Setup;
use crate::metrics::Snapshot;
use crate::pool::{PoolConfig, WorkerId};
use crate::protocol::Message;
use crate::spawn::Launch;
use crate::state::{Doorbell, Health};

/// A handler worker silent this long (frozen) is killed; its messages are requeued.
const HEARTBEAT_TIMEOUT_S: u64 = 30;

fn amqp_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a port (1 to 65535)")),
    }
}

fn amqp_url(s: &str) -> Result<String, String> {
    if s.starts_with("amqp://") && s.len() > "amqp://".len() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not an amqp:// URL (amqp://USER:PASSWORD@HOST:PORT/VHOST)"
        ))
    }
}

fn prefetch(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a prefetch count (1 to 65535)")),
    }
}

fn name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 {
        Err(format!(
            "'{s}' is not a queue or exchange name (1 to 255 bytes)"
        ))
    } else {
        Ok(s.to_string())
    }
}

/// `hurricane consume HANDLER`: django-hurricane's `manage.py consume` options, and serve's own
/// for the workers, probes, webhooks and logs. The broker settings also come from the Django
/// settings (AMQP_HOST, ...) and the environment (AMQP_*), in that order after the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The handler class: a subclass of hurricane.amqp.basehandler.TopicHandler (package.module.Class)
    #[arg(value_name = "HANDLER")]
    pub handler: String,

    /// The queue to consume (declared if missing)
    #[arg(long, env = "HURRICANE_QUEUE", value_name = "NAME", value_parser = name)]
    pub queue: String,

    /// The topic exchange the queue is bound to (declared if missing)
    #[arg(long, env = "HURRICANE_EXCHANGE", value_name = "NAME", value_parser = name)]
    pub exchange: String,

    /// Broker host [settings: AMQP_HOST]
    #[arg(long, env = "AMQP_HOST", value_name = "HOST")]
    pub amqp_host: Option<String>,

    /// Broker port [settings: AMQP_PORT]
    #[arg(long, env = "AMQP_PORT", value_name = "PORT", default_value = "5672", value_parser = amqp_port)]
    pub amqp_port: u16,

    /// Broker virtual host [settings: AMQP_VHOST]
    #[arg(long, env = "AMQP_VHOST", value_name = "VHOST", default_value = "/")]
    pub amqp_vhost: String,

    /// Broker user [settings: AMQP_USER] [default: guest]
    #[arg(long, env = "AMQP_USER", value_name = "USER")]
    pub amqp_user: Option<String>,

    /// Broker password [settings: AMQP_PASSWORD] [default: guest]; never logged
    #[arg(
        long,
        env = "AMQP_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub amqp_password: Option<String>,

    /// The broker as one URL, instead of the --amqp-* options
    #[arg(long, env = "AMQP_URL", value_name = "URL", value_parser = amqp_url, hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Bind the queue with this routing key (repeatable) [default: the handler's
    /// get_routing_keys(queue), else the queue's name]
    #[arg(
        long,
        env = "HURRICANE_ROUTING_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub routing_key: Vec<String>,

    /// Declare the exchange and the queue durable
    #[arg(long, env = "HURRICANE_DURABLE", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub durable: bool,

    /// Deliveries the broker sends ahead of acks (basic.qos); they are spread over the workers
    #[arg(long, env = "HURRICANE_PREFETCH", value_name = "N", default_value = "200", value_parser = prefetch)]
    pub prefetch: u16,

    /// Seconds between readings of the queue's depth and consumer count (a passive queue.declare on
    /// a channel of its own, never on the scrape path), exported as hurricane_amqp_queue_messages
    /// and hurricane_amqp_queue_consumers (0: never read)
    #[arg(long, env = "HURRICANE_QUEUE_STATS_INTERVAL", value_name = "S", default_value = "5", value_parser = seconds)]
    pub queue_stats_interval: Duration,

    /// Reconnect with backoff (0.5 s doubling to 30 s) when the broker connection or channel is lost
    #[arg(long, env = "HURRICANE_RECONNECT", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub reconnect: bool,

    /// With --reconnect, /alive fails once the broker has been lost this many seconds (0: never;
    /// a restart does not fix a broker outage)
    #[arg(long, env = "HURRICANE_RECONNECT_TIMEOUT", value_name = "S", default_value = "0", value_parser = seconds)]
    pub reconnect_timeout: Duration,

    /// Number of handler processes [default: the CPUs this process may use]
    #[arg(long, env = "HURRICANE_WORKERS", value_name = "N", value_parser = workers, allow_negative_numbers = true)]
    pub workers: Option<usize>,

    /// Import the handler once in a zygote process and fork the workers from it: they share its memory
    /// and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads.
    /// The handler module must not start threads at import (refused, exit 2)
    #[arg(long, env = "HURRICANE_PRELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub preload: bool,

    /// Address of the probe server
    #[arg(long, env = "HURRICANE_BIND", value_name = "ADDR", default_value = "0.0.0.0", value_parser = ip_address)]
    pub bind: std::net::IpAddr,

    /// Port of the probe server
    #[arg(
        long,
        env = "HURRICANE_PROBE_PORT",
        value_name = "PORT",
        default_value_t = 8001
    )]
    pub probe_port: u16,

    /// Seconds a stopping worker gets to finish its message before it is killed
    #[arg(long, env = "HURRICANE_GRACEFUL_TIMEOUT", value_name = "S", default_value = "30", value_parser = seconds)]
    pub graceful_timeout: Duration,

    /// Seconds a worker may take to import the handler and report ready
    #[arg(long, env = "HURRICANE_BOOT_TIMEOUT", value_name = "S", default_value = "60", value_parser = seconds)]
    pub boot_timeout: Duration,

    /// Seconds a handler may run on one message before its worker is killed (0: no limit); the
    /// message is requeued
    #[arg(long, env = "HURRICANE_TIMEOUT", value_name = "S", default_value = "0", value_parser = seconds)]
    pub timeout: Duration,

    /// Reload when a source file of the handler changes (development)
    #[arg(long, env = "HURRICANE_AUTORELOAD", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub autoreload: bool,

    /// POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker
    /// restarts (repeatable)
    #[arg(long, env = "HURRICANE_WEBHOOK_URL", value_name = "URL", value_delimiter = ',', value_parser = webhook_url)]
    pub webhook_url: Vec<String>,

    #[command(flatten)]
    pub interpreter: InterpreterArgs,

    #[command(flatten)]
    pub probes: ProbeArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub debug: DebugArgs,
}

impl Args {
    fn common(&self) -> Common<'_> {
        Common {
            interpreter: &self.interpreter,
            probes: &self.probes,
            log: &self.log,
            webhook_url: &self.webhook_url,
            bind: self.bind,
        }
    }

    /// The broker's address and credentials: --amqp-url, else the --amqp-* options (guest/guest as
    /// pika's defaults); a missing host is a usage error.
    fn broker_uri(&self) -> Result<lapin::uri::AMQPUri, Usage> {
        if let Some(url) = &self.amqp_url {
            return url.parse().map_err(|e| {
                Usage(format!(
                    "--amqp-url is not a broker URL ({e}); give amqp://USER:PASSWORD@HOST:PORT/VHOST"
                ))
            });
        }
        let Some(host) = self.amqp_host.clone().filter(|h| !h.trim().is_empty()) else {
            return Err(Usage(
                "no broker host: pass --amqp-host HOST (or set AMQP_HOST in the Django settings or the environment), or --amqp-url".into(),
            ));
        };
        let mut uri = lapin::uri::AMQPUri::default();
        uri.authority.host = host;
        uri.authority.port = self.amqp_port;
        uri.vhost = self.amqp_vhost.clone();
        if let Some(user) = &self.amqp_user {
            uri.authority.userinfo.username = user.clone();
        }
        if let Some(password) = &self.amqp_password {
            uri.authority.userinfo.password = password.clone();
        }
        Ok(uri)
    }
}

impl Setup for Args {
    fn log(&self) -> &LogArgs {
        &self.log
    }

    fn django_settings(&self) -> Option<(&InterpreterArgs, &'static str, &'static [&'static str])> {
        Some((&self.interpreter, "consume", &["HURRICANE_", "AMQP_"]))
    }

    fn build(self: Box<Self>) -> Result<Config, Usage> {
        let common = self.common();
        let python = crate::config::python(&self.interpreter.python);
        common.chdir()?;
        let handler = self.handler.clone();
        let (module, class) = handler
            .split_once(':')
            .or_else(|| handler.rsplit_once('.'))
            .unwrap_or(("", ""));
        if !is_dotted(module) || !is_dotted(class) {
            return Err(Usage(format!(
                "HANDLER '{handler}' is not a dotted path to a class, such as myapp.consumer.MyHandler"
            )));
        }
        let uri = self.broker_uri()?;
        let display = amqp::broker::Settings::describe(&uri);
        let workers = common.workers(self.workers)?;
        let autoreload = common.autoreload(self.autoreload, &[], &[], &[])?;
        let mut settings = Map::new();
        // What a TopicHandler's constructor is given, as in django-hurricane.
        settings.insert(
            "amqp".into(),
            json!({
                "queue": self.queue,
                "exchange": self.exchange,
                "host": uri.authority.host,
                "port": uri.authority.port,
                "vhost": uri.vhost,
                "user": uri.authority.userinfo.username,
                "password": uri.authority.userinfo.password,
            }),
        );
        let mut pool = PoolConfig {
            timeout: Some(self.timeout).filter(|t| !t.is_zero()),
            heartbeat_timeout: Some(Duration::from_secs(HEARTBEAT_TIMEOUT_S)),
            ..PoolConfig::new(workers, self.boot_timeout, self.graceful_timeout)
        };
        let debugger = Debugger::from_args(&self.debug, self.bind, &python)?;
        let mut preload = self.preload;
        debugger.restrict(&mut pool, &mut preload);
        settings.insert("debugger".into(), debugger.settings());
        let worker = common.worker(
            &handler,
            "amqp",
            settings,
            &pool,
            self.autoreload,
            preload,
        );
        let prefetch = usize::from(self.prefetch);
        let link = amqp::Config {
            broker: amqp::broker::Settings {
                uri,
                display,
                queue: self.queue.clone(),
                exchange: self.exchange.clone(),
                durable: self.durable,
                prefetch: self.prefetch,
                reconnect: self.reconnect,
                connection_name: format!("hurricane-{}", std::process::id()),
                queue_stats: Some(self.queue_stats_interval).filter(|t| !t.is_zero()),
            },
            routing_keys: self.routing_key.clone(),
            reconnect_timeout: Some(self.reconnect_timeout)
                .filter(|t| !t.is_zero() && self.reconnect),
            // Enough per worker that none waits on the master between messages, and every
            // prefetched delivery has a place.
            window: prefetch.div_ceil(workers).max(2),
        };
        Ok(common.config(Parts {
            kind: Box::new(AmqpHandler {
                embedded: Embedded {
                    python: python.clone(),
                    config: worker,
                    debugger,
                },
                link: Link::Configured(Box::new(link)),
            }),
            app: handler,
            python,
            pool,
            listen: None,
            probe_port: Some(self.probe_port),
            req_queue_len: None,
            autoreload,
            prestart: None,
        }))
    }
}

/// The broker side, before and after the loop starts it.
enum Link {
    /// Its settings, until `start` runs the broker thread.
    Configured(Box<amqp::Config>),
    Running(Box<Consume>),
    /// The broker thread could not start (the master is exiting).
    Failed,
}

/// Our embedded handler workers, fed by the master's broker link.
pub struct AmqpHandler {
    embedded: Embedded,
    link: Link,
}

impl AmqpHandler {
    fn consume(&mut self) -> Option<&mut Consume> {
        match &mut self.link {
            Link::Running(consume) => Some(consume),
            Link::Configured(_) | Link::Failed => None,
        }
    }
}

impl Kind for AmqpHandler {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn launch(&self, worker: WorkerId, generation: u64) -> Launch {
        self.embedded.launch(worker, generation)
    }

    fn zygote(&self, generation: u64) -> Option<Launch> {
        self.embedded.zygote(generation)
    }

    fn start(&mut self, bell: Doorbell) -> Result<(), String> {
        self.embedded.debugger.claim_port()?;
        let Link::Configured(config) = std::mem::replace(&mut self.link, Link::Failed) else {
            return Ok(());
        };
        let consume = Consume::start(*config, bell)
            .map_err(|e| format!("cannot start the AMQP thread: {e}"))?;
        self.link = Link::Running(Box::new(consume));
        Ok(())
    }

    fn woken(&mut self) {
        if let Some(consume) = self.consume() {
            consume.take_events();
        }
    }

    fn message(&mut self, pid: i32, message: &Message, _now: Instant) -> bool {
        let Some(consume) = self.consume() else {
            return false;
        };
        match message {
            Message::Ready { routing_keys, .. } => consume.worker_ready(pid, routing_keys),
            Message::Settle {
                id,
                ack,
                requeue,
                ms,
            } => consume.settled(pid, *id, *ack, *requeue, *ms),
            _ => {}
        }
        false
    }

    fn worker_leaving(&mut self, pid: i32) {
        if let Some(consume) = self.consume() {
            consume.worker_leaving(pid);
        }
    }

    fn worker_gone(&mut self, pid: i32) {
        if let Some(consume) = self.consume() {
            consume.worker_gone(pid);
        }
    }

    /// Stop on a lost broker, cancel on shutdown, read the consumer when its tick has come, send
    /// the settle calls due, and hand deliveries to workers.
    fn pump(&mut self, stopping: bool) -> Pump {
        let Some(consume) = self.consume() else {
            return Pump::default();
        };
        let fatal = consume.take_fatal();
        if stopping {
            consume.stop();
        }
        consume.read_on_tick();
        consume.flush();
        Pump {
            fatal,
            frames: consume.assign(),
        }
    }

    fn judge(&self, health: &mut Health, _now: Instant) {
        if let Link::Running(consume) = &self.link {
            consume.judge(health);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.link {
            Link::Running(consume) => consume.next_deadline(),
            Link::Configured(_) | Link::Failed => None,
        }
    }

    fn status_polled(&self, now: Instant) -> Option<Duration> {
        match &self.link {
            Link::Running(consume) => consume.status_polled(now),
            Link::Configured(_) | Link::Failed => None,
        }
    }

    fn metrics(&self, snapshot: &mut Snapshot) {
        if let Link::Running(consume) = &self.link {
            snapshot.amqp = Some(consume.snapshot());
        }
    }

    fn close(&mut self) {
        if let Some(consume) = self.consume() {
            consume.close();
        }
    }
}
