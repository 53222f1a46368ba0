//! What this instance read or decided lately, kept in memory so that calls go on while the
//! database is unavailable (README.md, "What survives what"):
//!
//! - the client each number belongs to, as last read: the voice webhook answers a call from it
//!   when the database lookup fails (without the caller's memory, which it cannot read);
//! - how each call that streamed here ended, for a few minutes: the `<Connect action>` request
//!   (`/twilio/after-stream`) decides from it at once instead of waiting for the call's record
//!   to reach the database, so a call ended during an outage (a drain deadline, a Realtime
//!   failure, a transfer) is still put through to its number.
//!
//! Neither is ever preferred to a database that answers, except the ending, which is the
//! same fact the record will hold. Both are bounded: one client per number this instance
//! answered, endings for [`ENDED_FOR`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::{
    domain::{ClientId, E164},
    store::clients::ClientProfile,
};

/// How long the ending of a call is kept (Twilio asks for the after-stream TwiML at once).
pub const ENDED_FOR: Duration = Duration::from_secs(600);

/// How long a client read is trusted for when the database cannot be read: a change made
/// through another instance's admin API meanwhile is not seen here before then.
pub const CLIENT_FOR: Duration = Duration::from_secs(3600);

/// A call that ended on this instance.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Its client.
    pub client_id: ClientId,
    /// The end reason as the record stores it (`EndReason::describe`).
    pub end_reason: String,
    at: Instant,
}

/// A client as read from the database, and when.
#[derive(Clone)]
struct Read {
    client: Arc<ClientProfile>,
    at: Instant,
}

/// See the module documentation.
#[derive(Default)]
pub struct Recent {
    by_number: DashMap<String, Read>,
    by_id: DashMap<ClientId, Read>,
    ended: DashMap<String, Ended>,
    inserts: AtomicUsize,
}

impl Recent {
    /// A lookup of `number` answered at `now`: remembered (or forgotten when no client has it).
    pub fn client_read(&self, number: &E164, client: Option<&ClientProfile>, now: Instant) {
        match client {
            Some(c) => {
                let read = Read {
                    client: Arc::new(c.clone()),
                    at: now,
                };
                self.by_id.insert(c.id(), read.clone());
                self.by_number.insert(number.as_str().to_string(), read);
            }
            None => {
                self.by_number.remove(number.as_str());
            }
        }
    }

    /// The client `number` belonged to when the database last said so, within [`CLIENT_FOR`].
    pub fn client_for(&self, number: &E164, now: Instant) -> Option<Arc<ClientProfile>> {
        self.by_number
            .get(number.as_str())
            .filter(|r| now.duration_since(r.at) < CLIENT_FOR)
            .map(|r| r.client.clone())
    }

    /// The client with this id as last read, within [`CLIENT_FOR`].
    pub fn client(&self, id: ClientId, now: Instant) -> Option<Arc<ClientProfile>> {
        self.by_id
            .get(&id)
            .filter(|r| now.duration_since(r.at) < CLIENT_FOR)
            .map(|r| r.client.clone())
    }

    /// The client was changed or deleted (the admin API): what was read of it is forgotten.
    pub fn forget_client(&self, id: ClientId) {
        self.by_id.remove(&id);
        self.by_number.retain(|_, r| r.client.id() != id);
    }

    /// A call ended here, for this reason.
    pub fn call_ended(
        &self,
        call_sid: &str,
        client_id: ClientId,
        end_reason: String,
        now: Instant,
    ) {
        self.ended.insert(
            call_sid.to_string(),
            Ended {
                client_id,
                end_reason,
                at: now,
            },
        );
        // Old endings go now and then: at most one sweep per 256 calls.
        if self.inserts.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
            self.ended
                .retain(|_, e| now.duration_since(e.at) < ENDED_FOR);
        }
    }

    /// How the call ended, if it ended here within [`ENDED_FOR`].
    pub fn ended(&self, call_sid: &str, now: Instant) -> Option<Ended> {
        self.ended
            .get(call_sid)
            .filter(|e| now.duration_since(e.at) < ENDED_FOR)
            .map(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ending_is_kept_for_a_while_then_forgotten() {
        let r = Recent::default();
        let t0 = Instant::now();
        r.call_ended("CA1", ClientId::new(3), "drained".into(), t0);
        let e = r.ended("CA1", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(
            (e.client_id, e.end_reason.as_str()),
            (ClientId::new(3), "drained")
        );
        assert!(r.ended("CA1", t0 + ENDED_FOR).is_none());
        assert!(r.ended("CA2", t0).is_none());
        // Swept on a later insert once old.
        for i in 0..256 {
            r.call_ended(
                &format!("CX{i}"),
                ClientId::new(1),
                "twilio_stop".into(),
                t0 + ENDED_FOR,
            );
        }
        assert!(!r.ended.contains_key("CA1"));
        assert_eq!(r.ended.len(), 256);
    }
}
