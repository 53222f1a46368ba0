//! warmline's simulation crate: faithful fakes of the two peers a call touches.
//!
//! - `realtime`: a fake OpenAI Realtime (GA) WebSocket server.
//! - `twilio`: a Twilio simulator (signed voice webhook, Media Streams client with a playback buffer).
//! - `audio`: G.711 μ-law, WAV output and the speech clips both fakes speak.
#![warn(missing_docs)]

pub mod audio;
pub mod realtime;
pub mod stamp;
pub mod twilio;
