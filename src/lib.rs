//! warmline: a telephony voice gateway joining Twilio Media Streams to OpenAI Realtime,
//! with the agent's session opened and its greeting generated while the phone still rings.
//!
//! # Layout
//! - [`domain`]: ID newtypes (`CallSid`, `StreamSid`, `ClientId`) and validated values (`E164`, `Voice`,
//!   `CallStatus`, the stored status of a call).
//! - [`json`]: a JSON string borrowed from its frame (audio payloads on the hot path).
//! - [`engine`]: the voice-engine seam: the commands a call sends its model session and the
//!   events it gets back, whatever the engine's protocol.
//! - [`ws`]: the one WebSocket configuration of both legs.
//! - [`limits`]: rate limits and per-client caps (caller numbers, clients, admin source addresses).
//! - [`lines`]: the fixed lines warmline speaks itself, in English and Spanish.
//! - [`hours`]: business hours (weekly schedule in the client's timezone).
//! - [`knowledge`]: knowledge documents: what is accepted, passage splitting, search queries.
//! - [`config`]: typed settings (built-in defaults < `--config` file < `WARMLINE_*` env), validation, redaction.
//! - [`app`]: `AppState`, the router merging every area, serving and graceful shutdown.
//! - [`listener`]: the accept loop: header-read deadline, connection cap, TCP_NODELAY.
//! - [`telemetry`]: tracing subscriber (pretty or JSON logs).
//! - [`metrics`]: the Prometheus registry; every metric name (README.md, "Operations") is defined there and nowhere else.
//! - [`twilio`]: voice webhook, X-Twilio-Signature, TwiML, stream token, Media Streams protocol, status callback.
//! - [`realtime`]: OpenAI Realtime (GA) protocol types, the session machine and its socket task,
//!   the warm-session registry and the reaper.
//! - [`greeting`]: the instant answer: cached greetings (key, mode, the cache in memory, WAV).
//! - [`live`]: OpenAI GPT-Live (the second engine): its wire format and session machine.
//! - [`bridge`]: one call: the state machine joining a media stream to a Realtime session.
//! - [`store`]: sea-orm entities and repositories (clients, numbers, FAQs, callers, calls, transcripts),
//!   and the call-record writer every call record goes through.
//! - [`admin`]: the admin REST API under `/admin/api/v1`.
//! - [`webhooks`]: signed webhook events to the business (Standard Webhooks) and the worker
//!   delivering them from the `outbox` table.
//! - [`post_call`]: after the call, a durable job asks the Responses API for a summary and the
//!   client's structured fields, validates and stores them.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`loadgen`]: `warmline loadgen`, the benchmark (a gateway child process under simulated calls;
//!   cargo feature `sim`, on by default).
//! - [`demo`]: `warmline demo`, the whole call path on one machine against the `sim` fakes
//!   (cargo feature `sim`, on by default).
#![warn(missing_docs)]

pub mod accounts;
pub mod admin;
pub mod app;
pub mod bridge;
pub mod config;
pub mod console;
#[cfg(feature = "sim")]
pub mod demo;
pub mod domain;
pub mod engine;
pub mod events;
pub mod fleet;
pub mod greeting;
pub mod hours;
pub mod json;
pub mod knowledge;
pub mod limits;
pub mod lines;
pub mod listener;
pub mod live;
#[cfg(feature = "sim")]
pub mod loadgen;
pub mod metrics;
pub mod ops;
pub mod post_call;
#[cfg(test)]
mod props;
pub mod realtime;
pub mod recording;
#[cfg(feature = "sim")]
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod timeline;
pub mod tls;
pub mod tools;
pub mod traces;
pub mod twilio;
pub mod webhooks;
pub mod workers;
pub mod ws;
