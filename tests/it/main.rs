//! warmline's integration tests: one binary, one module per area. Each test starts the real
//! app on 127.0.0.1:0 with a fresh database (SQLite, and Postgres for storage tests) and talks
//! to it through real sockets. No test reaches OpenAI or Twilio: the fakes in `sim` stand in.

mod accounts;
mod admin;
mod bridge;
mod call_path;
#[cfg(feature = "sim")]
mod chaos;
mod cli;
mod drain;
mod events;
mod fleet;
mod greeting;
mod handover;
mod idle_peers;
mod knowledge;
mod live;
#[cfg(feature = "sim")]
mod loadgen;
mod one_stream;
mod post_call;
mod rate_limits;
mod reconnect;
mod recording;
mod slow_peers;
mod spool;
mod store;
mod support;
mod text;
mod tools;
mod traces;
mod webhooks;
