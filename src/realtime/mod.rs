//! OpenAI Realtime (GA): protocol types, the session machine and its socket task, the warm-session registry and the reaper.

pub mod registry;
