//! OpenAI GPT-Live, the second voice engine (docs/gpt-live-reference.md): its wire format
//! ([`wire`]) and its session machine ([`proto`]), an implementation of the engine seam
//! ([`crate::engine::Engine`]) beside Realtime's.
//!
//! Not selectable per client yet: the warm task, the call task's silence feed and the client's
//! `engine` setting come next (README, "Voice engines").

pub mod proto;
pub mod wire;
