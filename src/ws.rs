//! One WebSocket configuration for both legs of a call (the Twilio media stream the gateway
//! accepts and the Realtime socket it opens), so their buffers and limits are set in one place.
//!
//! Buffers are small: a call's frames are a few hundred bytes (a 100 ms audio delta is about
//! 1.3 KiB), a thousand calls must fit in memory, and tungstenite zero-fills up to
//! `read_buffer_size` before every read, a cost paid per frame. Writes stay in the write
//! buffer only until the flush that ends each batch of the call's loop
//! (docs/architecture.md, "The call task").

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes tungstenite reads per call of the Realtime socket (a 100 ms audio delta, ~1.3 KiB,
/// fits in one read).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes tungstenite reads per call of the Twilio socket: a 20 ms media frame is ~350 bytes,
/// and the buffer is zero-filled before every read, 50 times a second per call.
pub const TWILIO_READ_BUFFER_BYTES: usize = 1024;
/// Bytes buffered before tungstenite writes to the socket without waiting for a flush.
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Largest message accepted from Twilio (a media frame is ~300 bytes).
pub const TWILIO_MAX_MESSAGE: usize = 64 * 1024;
/// Largest message accepted from the Realtime API (audio deltas, transcripts, errors).
pub const REALTIME_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The client configuration of the Realtime socket.
pub fn realtime_client() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(REALTIME_MAX_MESSAGE))
}

/// The same settings on the Twilio media-stream upgrade.
pub fn twilio_upgrade(ws: axum::extract::WebSocketUpgrade) -> axum::extract::WebSocketUpgrade {
    ws.max_message_size(TWILIO_MAX_MESSAGE)
        .max_frame_size(TWILIO_MAX_MESSAGE)
        .read_buffer_size(TWILIO_READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}
