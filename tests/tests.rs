//! Integration tests: each drives the real hurricane binary against real Python apps (tests/apps).

mod util;

mod cli;
mod lifecycle;
mod serve;
