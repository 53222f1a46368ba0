//! warmline's simulation crate: faithful fakes of the two peers a call touches.
//!
//! - `realtime`: a fake OpenAI Realtime (GA) WebSocket server.
//! - `live`: a fake OpenAI GPT-Live WebSocket server (`/v1/live/sessions`).
//! - `responses`: a fake OpenAI Responses endpoint (the post-call summary) with Conversations,
//!   whose chat side (`text_model`: function tools, streaming) is for the text channels.
//! - `kommo`: a fake Kommo CRM account (API v4 notes) and the webhook form Kommo posts.
//! - `messaging`: a fake Twilio Messages API and the signed inbound-message webhook (the
//!   WhatsApp and SMS channels).
//! - `twilio`: a Twilio simulator (signed voice webhook, Media Streams client with a playback buffer).
//! - `audio`: G.711 μ-law, WAV output and the speech clips the fakes speak.
#![warn(missing_docs)]

pub mod audio;
mod common;
pub mod kommo;
pub mod live;
pub mod messaging;
pub mod realtime;
pub mod responses;
pub mod stamp;
pub mod text_model;
pub mod twilio;

/// WebSocket settings of the fakes' sockets: a frame here is a few hundred bytes to ~1.5 KiB,
/// and tungstenite zero-fills up to `read_buffer_size` before every read (128 KiB by default),
/// which would make the fakes, not the gateway, the bottleneck of a load test. Writes wait in
/// the buffer only until the flush that every `send` (or batch) ends with.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
}
