//! OpenAI Realtime (GA) over WebSocket (docs/twilio-openai-reference.md §7–§10).
//!
//! Pure: [`wire`] (the JSON events), [`proto`] (the `Session` machine), [`profile`] (the
//! agent's instructions and greeting), [`keepalive`] (Ping and silence deadlines). IO: [`client`] (the session task and its handles),
//! [`registry`] (warm sessions by CallSid) and [`reaper`] (closes the unclaimed).

pub mod client;
pub mod keepalive;
pub mod profile;
pub mod proto;
pub mod reaper;
pub mod registry;
pub mod wire;
