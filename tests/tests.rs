//! Integration tests: each drives the real hurricane binary against real Python apps (tests/apps).

mod util;

mod cli;
mod http;
mod lifecycle;
mod serve;
