//! Several instances on one Postgres (README "Several instances"; docs/architecture.md,
//! invariant 13).
//!
//! Instances behind one load balancer share the database and nothing else, and two requests
//! about a ringing call may land on an instance that does not hold its warm session:
//! - Twilio's **status callback** (a hang-up while it rings): an instance that does not hold
//!   the call publishes [`Message::End`], and the holder closes the session and records the
//!   call exactly as if the callback had come to it;
//! - a **retried voice webhook**: the first instance claims the CallSid in the database
//!   (`call_claims`, `INSERT … ON CONFLICT DO NOTHING`) before it warms anything, so the retry
//!   finds the claim, asks the holder ([`Message::Who`] → [`Message::Holds`]) and answers with
//!   a stream to the holder, whose warm session then takes the call. When no holder answers
//!   within [`ASK_FOR`] (it crashed), the retry takes the claim over and warms the call itself.
//!
//! Messages travel through Postgres `LISTEN/NOTIFY` on [`CHANNEL`]: every instance listens on a
//! connection of its own, and publishes with `pg_notify` through its pool. A notification sent
//! while an instance's listening connection is down is lost to it (the listener reconnects and
//! counts it); what it would have closed is then reaped after `prewarm.ttl_secs`, as before.
//! On SQLite (one instance by construction) the fleet is off and costs nothing.
//!
//! Rules kept (unit-tested in [`react`]):
//! 1. An instance never acts on its own message.
//! 2. `end` closes a session only where the call is ringing; elsewhere it is ignored.
//! 3. `who` is answered only by an instance that knows the call (ringing or claiming it: with
//!    its stream URL; done there: without one); the others stay silent.
//! 4. `holds` is read only by the instance that asked.

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{config::Secret, metrics::Metrics, store::StoreError};

/// The `LISTEN/NOTIFY` channel every instance shares.
pub const CHANNEL: &str = "warmline_fleet";

/// How long a retried webhook waits for the holder to answer `who` before taking the call over.
pub const ASK_FOR: Duration = Duration::from_millis(500);

/// How long a claim is kept: far longer than any call rings.
pub const CLAIM_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// `warmline_fleet_events_total{event}` values: `status_forwarded` (a status callback for a
/// call not held here was published), `status_closed` (a published one closed a session
/// here), `webhook_forwarded` (a retried webhook answered with another instance's stream),
/// `webhook_took_over` (its holder did not answer; warmed here), `listener_reconnects` (the
/// listening connection was lost and opened again).
pub const EVENTS: &[&str] = &[
    "status_forwarded",
    "status_closed",
    "webhook_forwarded",
    "webhook_took_over",
    "listener_reconnects",
];

/// One message between instances (JSON in a notification's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Message {
    /// Twilio's status callback for the call reached `from`, which does not hold it.
    End {
        /// The call.
        call_sid: String,
        /// Twilio's `CallStatus` (`canceled`, `completed`, …).
        status: String,
        /// The instance that publishes it.
        from: String,
    },
    /// `from` asks who holds the call (a retried voice webhook reached it).
    Who {
        /// The call.
        call_sid: String,
        /// The instance that asks.
        from: String,
    },
    /// `from`'s answer to `to`.
    Holds {
        /// The call.
        call_sid: String,
        /// The instance that answers.
        from: String,
        /// The instance that asked.
        to: String,
        /// `from`'s media stream URL while the call rings there; none when it is over there.
        stream_url: Option<String>,
    },
}

/// What this instance knows of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Registered here (or being registered): its stream belongs here.
    Ringing,
    /// It streamed or ended here.
    Done,
    /// Not here.
    Unknown,
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing.
    Ignore,
    /// Close the call's warm session here as if Twilio's status callback had come here.
    Close {
        /// The call.
        call_sid: String,
        /// Twilio's `CallStatus`.
        status: String,
    },
    /// Publish this answer.
    Answer(Message),
    /// Hand the answer to the webhook that asked.
    Resolve {
        /// The call.
        call_sid: String,
        /// The holder's answer.
        answer: Answer,
    },
}

/// The holder's answer to `who`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The call rings on `holder`: its stream goes to `stream_url`.
    There {
        /// The holding instance.
        holder: String,
        /// Its media stream URL.
        stream_url: String,
    },
    /// The call already streamed or ended on the holder.
    Over,
}

/// The rules of the fleet protocol, pure: what instance `me` (whose media stream URL is
/// `stream_url`) does with `msg`, given what it knows of calls (`local`).
pub fn react(msg: Message, me: &str, stream_url: &str, local: impl Fn(&str) -> Local) -> Reaction {
    match msg {
        Message::End { from, .. } | Message::Who { from, .. } if from == me => Reaction::Ignore,
        Message::End {
            call_sid, status, ..
        } => match local(&call_sid) {
            Local::Ringing => Reaction::Close { call_sid, status },
            _ => Reaction::Ignore,
        },
        Message::Who { call_sid, from } => {
            let stream_url = match local(&call_sid) {
                Local::Ringing => Some(stream_url.to_string()),
                Local::Done => None,
                Local::Unknown => return Reaction::Ignore,
            };
            Reaction::Answer(Message::Holds {
                call_sid,
                from: me.to_string(),
                to: from,
                stream_url,
            })
        }
        Message::Holds {
            call_sid,
            from,
            to,
            stream_url,
        } if to == me => Reaction::Resolve {
            call_sid,
            answer: match stream_url {
                Some(stream_url) => Answer::There {
                    holder: from,
                    stream_url,
                },
                None => Answer::Over,
            },
        },
        Message::Holds { .. } => Reaction::Ignore,
    }
}

/// The outcome of claiming a call in the database.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The fleet is off (SQLite): this instance is the only one.
    Solo,
    /// Claimed by this instance (now or by an earlier request).
    Ours,
    /// Another instance claimed it first.
    Theirs(String),
}

/// What asking the fleet who holds a call gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    /// The holder answered.
    Answer(Answer),
    /// Nobody answered in time: the holder is gone.
    Silent,
    /// The question could not be sent (the database failed): nothing is known.
    Failed,
}

struct Inner {
    id: String,
    stream_url: String,
    db: DatabaseConnection,
    /// Webhooks waiting for an answer to `who`, by CallSid (several may ask at once).
    asking: DashMap<String, Vec<oneshot::Sender<Answer>>>,
    /// Whether the listener has listened once (`/readyz` waits for it).
    joined: std::sync::atomic::AtomicBool,
}

/// This instance's part in the fleet; cheap to clone. Off (every method a no-op) on SQLite.
#[derive(Clone, Default)]
pub struct Fleet(Option<Arc<Inner>>);

impl Fleet {
    /// The fleet on `db` when it is Postgres, off otherwise. `stream_url` is this instance's
    /// media stream URL (`public_url` + `/twilio/media`).
    pub fn new(db: &DatabaseConnection, stream_url: String) -> Self {
        if db.get_database_backend() != DbBackend::Postgres {
            return Self(None);
        }
        let mut id = [0u8; 6];
        rand::fill(&mut id);
        let id = id.iter().map(|b| format!("{b:02x}")).collect();
        Self(Some(Arc::new(Inner {
            id,
            stream_url,
            db: db.clone(),
            asking: DashMap::new(),
            joined: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// Whether the fleet is on (Postgres).
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Whether this instance hears the others (the listener has listened once), or the fleet
    /// is off. `/readyz` answers 503 until then: a call taken before could miss a hang-up.
    pub fn joined(&self) -> bool {
        self.0
            .as_deref()
            .is_none_or(|i| i.joined.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// This instance's id in the fleet (random per process), when on.
    pub fn id(&self) -> Option<&str> {
        self.0.as_deref().map(|i| i.id.as_str())
    }

    /// Claims the call for this instance, unless another claimed it first.
    pub async fn claim(&self, call_sid: &str) -> Result<Claim, StoreError> {
        let Some(inner) = &self.0 else {
            return Ok(Claim::Solo);
        };
        let inserted = inner
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO call_claims (call_sid, instance, claimed_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (call_sid) DO NOTHING",
                [call_sid.into(), inner.id.clone().into()],
            ))
            .await?
            .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Ours);
        }
        let holder = inner
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT instance FROM call_claims WHERE call_sid = $1",
                [call_sid.into()],
            ))
            .await?
            .map(|row| row.try_get::<String>("", "instance"))
            .transpose()?;
        match holder {
            Some(h) if h != inner.id => Ok(Claim::Theirs(h)),
            // Ours already (a retry to this instance), or deleted meanwhile.
            _ => Ok(Claim::Ours),
        }
    }

    /// Moves the call's claim from `holder` (silent: crashed or gone) to this instance; false
    /// when someone else moved it first.
    pub async fn take_over(&self, call_sid: &str, holder: &str) -> Result<bool, StoreError> {
        let Some(inner) = &self.0 else {
            return Ok(false);
        };
        let moved = inner
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE call_claims SET instance = $1, claimed_at = now() \
                 WHERE call_sid = $2 AND instance = $3",
                [inner.id.clone().into(), call_sid.into(), holder.into()],
            ))
            .await?
            .rows_affected();
        Ok(moved == 1)
    }

    /// Asks the fleet who holds the call; waits up to `within` for the answer.
    pub async fn ask(&self, call_sid: &str, within: Duration) -> Asked {
        let Some(inner) = self.0.as_ref() else {
            return Asked::Failed;
        };
        let (tx, rx) = oneshot::channel();
        inner
            .asking
            .entry(call_sid.to_string())
            .or_default()
            .push(tx);
        let asked = self
            .publish(&Message::Who {
                call_sid: call_sid.to_string(),
                from: inner.id.clone(),
            })
            .await;
        let answer = match asked {
            Ok(()) => match tokio::time::timeout(within, rx).await {
                Ok(Ok(answer)) => Asked::Answer(answer),
                _ => Asked::Silent,
            },
            Err(e) => {
                tracing::warn!(call_sid, error = %e, source = ?std::error::Error::source(&e), "fleet: could not ask who holds the call");
                Asked::Failed
            }
        };
        // This asker's sender is closed now (its receiver is gone): drop it, and the entry once
        // nobody else waits.
        if let Some(mut waiting) = inner.asking.get_mut(call_sid) {
            waiting.retain(|tx| !tx.is_closed());
        }
        inner
            .asking
            .remove_if(call_sid, |_, waiting| waiting.is_empty());
        answer
    }

    /// Publishes a message to every instance (this one included, which ignores it).
    pub async fn publish(&self, msg: &Message) -> Result<(), StoreError> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let payload = serde_json::to_string(msg).expect("a fleet message serializes");
        inner
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            ))
            .await?;
        Ok(())
    }

    /// Deletes claims older than [`CLAIM_KEPT_FOR`]; returns how many.
    pub async fn forget_old_claims(&self) -> Result<u64, StoreError> {
        let Some(inner) = &self.0 else {
            return Ok(0);
        };
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(CLAIM_KEPT_FOR).expect("a day fits chrono");
        Ok(inner
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM call_claims WHERE claimed_at < $1",
                [before.into()],
            ))
            .await?
            .rows_affected())
    }

    /// Handles one notification's payload: returns what to do here (answers to `who` are
    /// published and `holds` handed to the waiting webhook by the caller, [`listen`]).
    fn reaction(&self, payload: &str, local: impl Fn(&str) -> Local) -> Reaction {
        let Some(inner) = &self.0 else {
            return Reaction::Ignore;
        };
        match serde_json::from_str::<Message>(payload) {
            Ok(msg) => react(msg, &inner.id, &inner.stream_url, local),
            Err(e) => {
                tracing::warn!(error = %e, "fleet: ignoring a message that is not ours");
                Reaction::Ignore
            }
        }
    }

    fn resolve(&self, call_sid: &str, answer: Answer) {
        if let Some(inner) = &self.0
            && let Some((_, waiting)) = inner.asking.remove(call_sid)
        {
            for tx in waiting {
                let _ = tx.send(answer.clone());
            }
        }
    }
}

/// Listens on [`CHANNEL`] until `shutdown`: closes sessions (`close`), answers `who` from
/// `local`, hands `holds` to the webhook waiting for it. Reconnects (every second) when the
/// connection is lost; removes old claims every hour.
pub async fn listen(
    fleet: Fleet,
    database_url: Secret,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    local: impl Fn(&str) -> Local + Send + 'static,
    close: impl Fn(&str, &str) + Send + 'static,
) {
    use sea_orm::sqlx::postgres::PgListener;
    if !fleet.enabled() {
        return;
    }
    let mut failing = false;
    let mut sweep = tokio::time::interval(Duration::from_secs(3600));
    'connect: loop {
        let listener = async {
            let mut l = PgListener::connect(database_url.expose()).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "fleet: cannot listen for other instances' messages; retrying every second");
                        failing = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                    }
                }
            },
        };
        if let Some(inner) = &fleet.0 {
            inner
                .joined
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if std::mem::take(&mut failing) {
            tracing::info!("fleet: listening again");
            metrics.inc_fleet("listener_reconnects");
        } else {
            tracing::info!(
                instance = fleet.id().unwrap_or("-"),
                "fleet: listening for other instances on this database"
            );
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    match fleet.forget_old_claims().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(claims = n, "fleet: old call claims deleted"),
                        Err(e) => tracing::debug!(error = %e, "fleet: could not delete old call claims"),
                    }
                    continue;
                }
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => match fleet.reaction(n.payload(), &local) {
                    Reaction::Ignore => {}
                    Reaction::Close { call_sid, status } => close(&call_sid, &status),
                    // On the listening connection itself: an answer must not wait for the pool
                    // (the asker gives up after ASK_FOR and takes the call over).
                    Reaction::Answer(msg) => {
                        let payload =
                            serde_json::to_string(&msg).expect("a fleet message serializes");
                        let sent = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(CHANNEL)
                            .bind(payload)
                            .execute(&mut listener)
                            .await;
                        if let Err(e) = sent {
                            tracing::warn!(error = %e, "fleet: could not answer another instance");
                        }
                    }
                    Reaction::Resolve { call_sid, answer } => fleet.resolve(&call_sid, answer),
                },
                // Lost and (by PgListener) connected again: what was sent meanwhile is gone.
                Ok(None) => {
                    tracing::warn!(
                        "fleet: listening connection lost and opened again; messages sent meanwhile were missed"
                    );
                    metrics.inc_fleet("listener_reconnects");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet: listening connection failed; retrying every second");
                    failing = true;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "aaaaaa";
    const URL: &str = "wss://a.example/twilio/media";

    fn react_with(msg: Message, local: Local) -> Reaction {
        react(msg, ME, URL, |_| local)
    }

    #[test]
    fn end_closes_only_where_the_call_rings() {
        let end = |from: &str| Message::End {
            call_sid: "CA1".into(),
            status: "canceled".into(),
            from: from.into(),
        };
        assert_eq!(
            react_with(end("bbbbbb"), Local::Ringing),
            Reaction::Close {
                call_sid: "CA1".into(),
                status: "canceled".into()
            }
        );
        assert_eq!(react_with(end("bbbbbb"), Local::Done), Reaction::Ignore);
        assert_eq!(react_with(end("bbbbbb"), Local::Unknown), Reaction::Ignore);
        // Its own message: the status callback was already handled here.
        assert_eq!(react_with(end(ME), Local::Ringing), Reaction::Ignore);
    }

    #[test]
    fn who_is_answered_by_the_holder_only() {
        let who = |from: &str| Message::Who {
            call_sid: "CA1".into(),
            from: from.into(),
        };
        assert_eq!(
            react_with(who("bbbbbb"), Local::Ringing),
            Reaction::Answer(Message::Holds {
                call_sid: "CA1".into(),
                from: ME.into(),
                to: "bbbbbb".into(),
                stream_url: Some(URL.into()),
            })
        );
        assert_eq!(
            react_with(who("bbbbbb"), Local::Done),
            Reaction::Answer(Message::Holds {
                call_sid: "CA1".into(),
                from: ME.into(),
                to: "bbbbbb".into(),
                stream_url: None,
            })
        );
        assert_eq!(react_with(who("bbbbbb"), Local::Unknown), Reaction::Ignore);
        assert_eq!(react_with(who(ME), Local::Ringing), Reaction::Ignore);
    }

    #[test]
    fn holds_is_read_by_the_asker_only() {
        let holds = |to: &str, stream_url: Option<&str>| Message::Holds {
            call_sid: "CA1".into(),
            from: "bbbbbb".into(),
            to: to.into(),
            stream_url: stream_url.map(str::to_string),
        };
        assert_eq!(
            react_with(holds(ME, Some("wss://b/twilio/media")), Local::Unknown),
            Reaction::Resolve {
                call_sid: "CA1".into(),
                answer: Answer::There {
                    holder: "bbbbbb".into(),
                    stream_url: "wss://b/twilio/media".into()
                }
            }
        );
        assert_eq!(
            react_with(holds(ME, None), Local::Unknown),
            Reaction::Resolve {
                call_sid: "CA1".into(),
                answer: Answer::Over
            }
        );
        assert_eq!(
            react_with(holds("cccccc", Some("wss://b")), Local::Ringing),
            Reaction::Ignore
        );
    }

    #[test]
    fn messages_keep_their_wire_shape() {
        let msg = Message::Who {
            call_sid: "CA1".into(),
            from: "ab".into(),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(json, r#"{"op":"who","call_sid":"CA1","from":"ab"}"#);
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), msg);
        // Anything else on the channel is refused, not a panic.
        for junk in ["", "{}", "null", r#"{"op":"nuke"}"#, "\u{0}"] {
            assert!(serde_json::from_str::<Message>(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_fleet_is_off_without_postgres() {
        let fleet = Fleet::default();
        assert!(!fleet.enabled());
        assert_eq!(
            fleet.reaction(r#"{"op":"who","call_sid":"CA1","from":"x"}"#, |_| {
                Local::Ringing
            }),
            Reaction::Ignore
        );
    }
}
