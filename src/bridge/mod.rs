//! One call: the media-stream side of the call path (docs/architecture.md, "Call flow").
//!
//! - [`call`]: `Call`, the sans-IO machine joining a Twilio media stream to a Realtime session
//!   (greeting flush, relay, barge-in, DTMF, transcript, ending).
//! - [`socket`]: `GET /twilio/media`, the thin loop around `Call`: token check, claim (warm) or
//!   open (cold), Twilio writer task, Realtime events.
//! - [`outcome`]: what a finished call leaves behind (saved through `store::writer`).

pub mod call;
pub mod outcome;
pub mod socket;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    domain::{CallSid, ClientId},
    limits::Slot,
    realtime::profile::AgentProfile,
};

/// What the webhook learnt about a call, handed to its media stream through the registry so
/// the stream needs no database round trip.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The call.
    pub call_sid: CallSid,
    /// The client answering it.
    pub client_id: ClientId,
    /// Caller id as Twilio gave it.
    pub from: String,
    /// Number called.
    pub to: String,
    /// The agent (business + caller memory).
    pub profile: AgentProfile,
    /// Webhook arrival.
    pub started_at: DateTime<Utc>,
    /// The call's place under its client's `limits.live_calls_per_client` on this instance,
    /// taken by the webhook: held while the call rings (in the registry) and while its stream
    /// runs (by the call task), given back when the last holder of the context lets go. `None`
    /// for a call this instance did not answer the webhook of (read from the database).
    pub live_slot: Option<Arc<Slot<ClientId>>>,
}
