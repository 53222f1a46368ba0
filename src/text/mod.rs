//! The text channels (README "Text channels"; docs/architecture.md, "Text channels"): the same
//! business brain as voice over the OpenAI Responses API with Conversations.
//!
//! - [`stream`]: the streamed answer read as a pure state machine;
//! - [`agent`]: one message in, the answer out (conversation, tools, fallback, record);
//! - [`lanes`]: the agent's connections to the model's API (HTTP/2, spread over lanes);
//! - [`webchat`]: the web chat's routes (send, Server-Sent Events, WebSocket);
//! - [`messaging`]: WhatsApp and SMS through Twilio Messaging;
//! - [`kommo`]: Kommo CRM (its webhook, notes on the lead);
//! - [`retry`]: when a request to Twilio or Kommo is tried again;
//! - [`openai_webhook`]: OpenAI's webhook announcing background responses.

pub mod agent;
pub mod kommo;
pub mod lanes;
pub mod messaging;
pub mod openai_webhook;
pub mod retry;
pub mod stream;
pub mod webchat;
