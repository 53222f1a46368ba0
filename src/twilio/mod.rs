//! Twilio: the voice webhook, X-Twilio-Signature, TwiML, the stream token, the Media Streams
//! protocol and the status callbacks (docs/twilio-openai-reference.md §1–§5).
//!
//! Pure pieces (no IO): [`signature`], [`token`], [`twiml`], [`form`], [`wire`] (Media Streams
//! JSON) and [`media`] (the `MediaStream` machine). IO edge: [`webhook`] (the HTTP routes).

pub mod form;
pub mod media;
pub mod signature;
pub mod token;
pub mod twiml;
pub mod webhook;
pub mod wire;
