//! Live call events (README "Live events"): a typed stream of what happens in calls, served by
//! the admin API as Server-Sent Events (`GET /admin/api/v1/events`) for the console and for
//! operators' own tools.
//!
//! Rules:
//! 1. Publishing never waits and never fails a call: each subscriber has a queue of its own,
//!    bounded ([`QUEUE`]); a subscriber whose queue is full is cut (its stream ends with a
//!    `cut` event), the call goes on.
//! 2. With no subscriber, publishing costs one atomic load (the event is not even built:
//!    [`Events::active`]).
//! 3. A subscriber sees the events of the calls its filter selects (one call, or one client's
//!    calls), in the order they were published; `seq` numbers every event of the process.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::domain::ClientId;

/// Events one subscriber may have waiting; beyond, it is cut.
pub const QUEUE: usize = 1024;

/// One event of a call.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallEvent {
    /// Numbers the events of this process, in publishing order.
    pub seq: u64,
    /// When it was published.
    pub at: DateTime<Utc>,
    /// The call.
    pub call_sid: String,
    /// Whose call (none when the number belongs to no client).
    pub client_id: Option<i32>,
    /// `type` and the fields of that type.
    #[serde(flatten)]
    pub kind: Kind,
}

/// The event types and their fields (`type` in the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Kind {
    /// The voice webhook answered a call (it is ringing): `warm` when a session is being
    /// prepared for it.
    #[serde(rename = "call.ringing")]
    CallRinging {
        /// The caller (E.164, or `anonymous`).
        from: String,
        /// The number called.
        to: String,
        /// A warm session is being prepared.
        warm: bool,
    },
    /// The media stream started and the call is known: `path` is `warm` or `cold`.
    #[serde(rename = "call.started")]
    CallStarted {
        /// `warm` (a pre-warmed session) or `cold`.
        path: String,
        /// `realtime` or `live`.
        engine: String,
    },
    /// Part of what the agent is saying.
    #[serde(rename = "transcript.delta")]
    TranscriptDelta {
        /// `agent`.
        role: String,
        /// The new text.
        text: String,
    },
    /// A whole line of the transcript.
    #[serde(rename = "transcript.done")]
    TranscriptDone {
        /// `caller` or `agent`.
        role: String,
        /// The line (the agent's as heard, when it was cut short).
        text: String,
    },
    /// The caller talked over the agent: the agent's audio was cleared.
    #[serde(rename = "barge_in")]
    BargeIn {},
    /// The model called a tool.
    #[serde(rename = "tool.call")]
    ToolCall {
        /// The model's id of the call.
        call_id: String,
        /// The tool.
        name: String,
        /// Its arguments (JSON text, as the model gave them).
        arguments: String,
    },
    /// A tool answered.
    #[serde(rename = "tool.result")]
    ToolResult {
        /// The model's id of the call.
        call_id: String,
        /// Whether the tool succeeded.
        ok: bool,
    },
    /// A latency of the call: `time_to_first_audio` (stream start to the first agent audio),
    /// `response` (the caller stopped speaking to the agent's first audio).
    #[serde(rename = "latency")]
    Latency {
        /// `time_to_first_audio` or `response`.
        metric: String,
        /// Milliseconds.
        ms: f64,
    },
    /// The call ended.
    #[serde(rename = "call.ended")]
    CallEnded {
        /// Why (as the call record says).
        end_reason: String,
        /// Stream start to end, ms.
        duration_ms: u64,
    },
}

impl Kind {
    /// The `type` of the event.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::CallRinging { .. } => "call.ringing",
            Kind::CallStarted { .. } => "call.started",
            Kind::TranscriptDelta { .. } => "transcript.delta",
            Kind::TranscriptDone { .. } => "transcript.done",
            Kind::BargeIn {} => "barge_in",
            Kind::ToolCall { .. } => "tool.call",
            Kind::ToolResult { .. } => "tool.result",
            Kind::Latency { .. } => "latency",
            Kind::CallEnded { .. } => "call.ended",
        }
    }
}

/// Which calls a subscriber follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this call.
    pub call_sid: Option<String>,
    /// Only this client's calls.
    pub client_id: Option<ClientId>,
    /// Only the calls of these clients (an operator's: `crate::accounts`); `None`: any.
    pub within: Option<Arc<[ClientId]>>,
}

impl Filter {
    fn selects(&self, e: &CallEvent) -> bool {
        self.call_sid.as_deref().is_none_or(|s| s == e.call_sid)
            && self.client_id.is_none_or(|c| e.client_id == Some(c.get()))
            && self
                .within
                .as_ref()
                .is_none_or(|w| e.client_id.is_some_and(|c| w.iter().any(|x| x.get() == c)))
    }
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<CallEvent>>,
    cut: Arc<AtomicBool>,
}

/// A subscription: its events in order, then `None` when it was cut ([`Subscription::was_cut`])
/// or the process is shutting down.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<CallEvent>>,
    cut: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event (`None`: the subscription is over).
    pub async fn recv(&mut self) -> Option<Arc<CallEvent>> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<CallEvent>> {
        self.rx.try_recv().ok()
    }

    /// Whether it ended because it fell [`QUEUE`] events behind.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

/// The process's call events.
#[derive(Default)]
pub struct Events {
    subscribers: Mutex<Vec<Subscriber>>,
    count: AtomicUsize,
    seq: AtomicU64,
    queue: usize,
}

impl Events {
    /// A hub whose subscribers each hold up to `queue` events (0: [`QUEUE`]).
    pub fn new(queue: usize) -> Self {
        Self {
            queue: if queue == 0 { QUEUE } else { queue },
            ..Self::default()
        }
    }

    /// Whether anyone subscribes (publishers skip building events when not).
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// How many subscribe.
    pub fn subscribers(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Follows the calls `filter` selects from now on.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        self.subscribe_with_queue(filter, self.queue)
    }

    /// [`Events::subscribe`] with a queue of `queue` events of its own.
    pub fn subscribe_with_queue(&self, filter: Filter, queue: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let cut = Arc::new(AtomicBool::new(false));
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.push(Subscriber {
            filter,
            tx,
            cut: cut.clone(),
        });
        self.count.store(subs.len(), Ordering::Relaxed);
        Subscription { rx, cut }
    }

    /// Publishes an event of call `call_sid` (never waits). With no subscriber it costs one
    /// atomic load: `kind` is not even called.
    pub fn publish(
        &self,
        call_sid: &str,
        client_id: Option<ClientId>,
        kind: impl FnOnce() -> Kind,
    ) {
        if !self.active() {
            return;
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let event = Arc::new(CallEvent {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: Utc::now(),
            call_sid: call_sid.to_string(),
            client_id: client_id.map(ClientId::get),
            kind: kind(),
        });
        let mut cut = 0;
        subs.retain(|s| {
            if !s.filter.selects(&event) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.cut.store(true, Ordering::Release);
                    cut += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.count.store(subs.len(), Ordering::Relaxed);
        drop(subs);
        if cut > 0 {
            tracing::warn!(cut, "live events subscribers fell behind and were cut");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(text: &str) -> Kind {
        Kind::TranscriptDone {
            role: "caller".into(),
            text: text.into(),
        }
    }

    #[test]
    fn events_are_typed_json_with_their_fields_flat() {
        let e = CallEvent {
            seq: 7,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            call_sid: "CA1".into(),
            client_id: Some(3),
            kind: Kind::Latency {
                metric: "response".into(),
                ms: 412.5,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 7, "at": "2023-11-14T22:13:20Z", "call_sid": "CA1",
                "client_id": 3, "type": "latency", "metric": "response", "ms": 412.5})
        );
        let v = serde_json::to_value(Kind::BargeIn {}).unwrap();
        assert_eq!(v, serde_json::json!({"type": "barge_in"}));
        assert_eq!(Kind::BargeIn {}.name(), "barge_in");
    }

    #[test]
    fn nothing_is_built_or_sent_without_subscribers_and_filters_select() {
        let hub = Events::new(8);
        assert!(!hub.active());
        hub.publish("CA1", None, || done("lost"));
        let mut all = hub.subscribe(Filter::default());
        let mut one = hub.subscribe(Filter {
            call_sid: Some("CA2".into()),
            ..Default::default()
        });
        let mut client = hub.subscribe(Filter {
            client_id: Some(ClientId::new(5)),
            ..Default::default()
        });
        // An operator given clients 6 and 7, following everything it may see.
        let mut operator = hub.subscribe(Filter {
            within: Some(Arc::from(vec![ClientId::new(6), ClientId::new(7)])),
            ..Default::default()
        });
        assert_eq!(hub.subscribers(), 4);
        hub.publish("CA1", Some(ClientId::new(5)), || done("a"));
        hub.publish("CA2", Some(ClientId::new(6)), || done("b"));
        hub.publish("CA3", None, || done("c"));
        let seqs = |s: &mut Subscription| {
            std::iter::from_fn(|| s.try_recv())
                .map(|e| (e.seq, e.call_sid.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seqs(&mut all),
            vec![(1, "CA1".into()), (2, "CA2".into()), (3, "CA3".into())]
        );
        assert_eq!(seqs(&mut one), vec![(2, "CA2".into())]);
        assert_eq!(seqs(&mut client), vec![(1, "CA1".into())]);
        assert_eq!(seqs(&mut operator), vec![(2, "CA2".into())]);
        drop(operator);
        // A subscriber that went away is forgotten at the next event.
        drop(one);
        hub.publish("CA1", None, || done("c"));
        assert_eq!(hub.subscribers(), 2);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_cut_and_publishing_never_waits() {
        let hub = Events::new(4);
        let mut slow = hub.subscribe(Filter::default());
        let mut quick = hub.subscribe(Filter::default());
        for i in 0..10_000 {
            hub.publish("CA1", None, || done(&i.to_string()));
            // The quick one keeps up.
            assert!(quick.try_recv().is_some());
        }
        // Ten thousand events published with one subscriber stuck (none waited on it): it is
        // dropped from the hub.
        assert_eq!(hub.subscribers(), 1);
        // The slow one gets what its queue held, then the end, and knows it was cut.
        let mut got = Vec::new();
        while let Some(e) = slow.recv().await {
            got.push(e.seq);
        }
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert!(slow.was_cut());
        assert!(!quick.was_cut());
    }
}
