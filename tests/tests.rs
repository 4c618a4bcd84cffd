//! Integration tests: each drives the real hurricane binary against real Python apps (tests/apps).

mod util;

mod asgi;
mod autobahn;
mod celery;
mod cli;
mod consume;
mod contrib;
mod debugger;
mod django;
mod docs;
mod fuzz;
mod http;
mod lifecycle;
mod logs;
mod metrics;
mod pip;
mod preload;
mod probes;
mod prometheus;
mod serve;
mod slow_readers;
mod systemd;
mod template;
mod webhooks;
