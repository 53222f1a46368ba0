//! The warm-session registry: one entry per CallSid between the voice webhook and the media
//! stream, holding what the stream handler needs to take the call over without touching the
//! database (the client's profile, the caller's memory) and, on the warm path, the Realtime
//! session opened while the phone rang.
//!
//! Invariants (docs/architecture.md, "Invariants" 3 and 4):
//! 1. The map is touched on insert, claim, close and reap, never per frame; no guard is held
//!    across an `.await` (every method here is synchronous).
//! 2. Ownership is exactly-once: [`Registry::claim`], [`Registry::close`] and the reaper all
//!    `remove` the entry, so exactly one of them gets it and closes (or keeps) its session.
//! 3. A retried webhook for the same CallSid finds the entry in flight and reuses it; it never
//!    opens a second session.
//! 4. Warm sessions hold a permit of a semaphore sized `prewarm.max_sessions`, and a slot of
//!    their client's `limits.warm_sessions_per_client`; both are released when the entry leaves
//!    the map, whoever takes it.
//! 5. One stream per call: an entry that leaves the map (claimed, closed, reaped) leaves a
//!    tombstone for [`DONE_FOR`], so a second `start` for that CallSid ([`Registry::is_done`])
//!    and a replayed webhook ([`Begun::Over`]) open nothing. Beyond this instance and this
//!    window, the calls table says the same (`store::calls::claim_stream`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    domain::{CallSid, CallStatus, ClientId},
    limits::{Slot, Slots},
    metrics::Metrics,
};

/// A session the registry can close when nobody claims it.
pub trait WarmSession: Send + Sync + 'static {
    /// What a waiter (the webhook, or its retry) watches to know the session is ready.
    type Ready: Clone + Send + 'static;
    /// A readiness handle for one more waiter.
    fn ready(&self) -> Self::Ready;
    /// Closes the socket (idempotent; called at most once by the registry).
    fn close(self, reason: &'static str);
    /// Whether a greeting was generated on it (closed unclaimed, nobody heard it:
    /// `warmline_greetings_unheard_total`).
    fn greeted(&self) -> bool {
        false
    }
}

/// Why a call did not get a warm session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdReason {
    /// The prewarm policy said no (`never`, or `known_callers` for a new caller).
    Policy,
    /// `prewarm.max_sessions` warm sessions exist already.
    Cap,
    /// The client holds `limits.warm_sessions_per_client` warm sessions already.
    ClientCap,
    /// The caller number ran over `limits.caller_webhooks_per_minute`.
    RateLimited,
}

impl ColdReason {
    /// Label value for `warmline_cold_sessions_total{reason}` and the calls table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Cap => "cap",
            Self::ClientCap => "client_cap",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// What the webhook asks [`Registry::begin`] for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A warm session, if the caps allow.
    Warm,
    /// No session (the stream opens one), for this reason.
    Cold(ColdReason),
}

/// What [`Registry::begin`] did.
pub enum Begun<R> {
    /// A new entry with a warm session; wait on the readiness handle.
    Warm(R),
    /// A new entry without a session: the stream will open one (the cold path).
    Cold(ColdReason),
    /// The CallSid already had an entry (Twilio retried the webhook): nothing new was opened.
    Retry(Option<R>),
    /// The call already streamed or ended here (a replayed webhook): nothing was opened.
    Over,
    /// Twilio said the call ended while this webhook was still being answered (a hang-up in
    /// the first moments of ringing, [`Registry::end_arriving`]): nothing was opened; record it.
    Ended(EarlyEnd),
}

/// How a call ended before its webhook registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyEnd {
    /// Twilio's status label (`canceled`, `busy`, …).
    pub reason: &'static str,
    /// The call's final status.
    pub status: CallStatus,
}

/// A voice webhook for the call is being answered ([`Registry::arrive`]); while any is, a
/// status callback that finds no entry is kept for it ([`Registry::end_arriving`]).
pub struct Arriving {
    arriving: Arc<DashMap<CallSid, usize>>,
    ended: Arc<DashMap<CallSid, EarlyEnd>>,
    call_sid: CallSid,
}

impl Drop for Arriving {
    fn drop(&mut self) {
        let last = self
            .arriving
            .remove_if_mut(&self.call_sid, |_, n| {
                *n -= 1;
                *n == 0
            })
            .is_some();
        if last {
            self.ended.remove(&self.call_sid);
        }
    }
}

/// How long a call that left the registry is remembered as done (longer than a stream token
/// lives by default, `twilio.stream_token_ttl_secs` = 120).
pub const DONE_FOR: Duration = Duration::from_secs(600);

/// One call between webhook and stream.
struct Entry<C, S> {
    context: Arc<C>,
    warm: Option<(S, Held)>,
    created: Instant,
}

/// What a warm session holds while it is registered: its place under each cap.
struct Held {
    _permit: OwnedSemaphorePermit,
    _client: Slot<ClientId>,
}

/// What the stream handler gets when it claims a call.
pub struct Claimed<C, S> {
    /// The call's context, as the webhook built it.
    pub context: Arc<C>,
    /// The warm session, if the webhook opened one.
    pub session: Option<S>,
    /// When the webhook registered the call.
    pub registered: Instant,
}

/// Warm sessions keyed by CallSid. `C` is the per-call context, `S` the session handle.
pub struct Registry<C, S> {
    map: DashMap<CallSid, Entry<C, S>>,
    /// Calls that left the map (claimed, closed, reaped), and when.
    done: DashMap<CallSid, Instant>,
    /// Calls whose voice webhook is being answered, and how many times over.
    arriving: Arc<DashMap<CallSid, usize>>,
    /// Calls Twilio said ended while their webhook was being answered.
    ended_early: Arc<DashMap<CallSid, EarlyEnd>>,
    permits: Arc<Semaphore>,
    /// Warm sessions per client (`limits.warm_sessions_per_client`).
    client_warm: Arc<Slots<ClientId>>,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl<C: Send + Sync + 'static, S: WarmSession> Registry<C, S> {
    /// An empty registry allowing `max_sessions` warm sessions, at most `per_client` of them
    /// for one client (0: no such cap), each living `ttl` unclaimed.
    pub fn new(
        max_sessions: usize,
        per_client: usize,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            map: DashMap::new(),
            done: DashMap::new(),
            arriving: Arc::default(),
            ended_early: Arc::default(),
            permits: Arc::new(Semaphore::new(max_sessions)),
            client_warm: Slots::new(per_client),
            ttl,
            metrics,
        }
    }

    /// Registers a call of `client`: reuses an entry in flight (retry), else inserts one, warm
    /// when `want` is [`Want::Warm`] and both caps allow (calling `open` to start the session),
    /// cold otherwise. `open` runs under the map's shard lock: it must only spawn, never block.
    pub fn begin(
        &self,
        call_sid: &CallSid,
        client: ClientId,
        context: C,
        want: Want,
        now: Instant,
        open: impl FnOnce() -> S,
    ) -> Begun<S::Ready> {
        if let Some((_, early)) = self.ended_early.remove(call_sid) {
            self.mark_done(call_sid, now);
            return Begun::Ended(early);
        }
        if self.is_done(call_sid, now) {
            return Begun::Over;
        }
        match self.map.entry(call_sid.clone()) {
            MapEntry::Occupied(existing) => {
                Begun::Retry(existing.get().warm.as_ref().map(|(s, _)| s.ready()))
            }
            MapEntry::Vacant(slot) => {
                let held = match want {
                    Want::Cold(reason) => Err(reason),
                    Want::Warm => self.hold(client),
                };
                let held = match held {
                    Ok(held) => held,
                    Err(reason) => {
                        slot.insert(Entry {
                            context: Arc::new(context),
                            warm: None,
                            created: now,
                        });
                        Metrics::inc_reason(&self.metrics.cold_sessions, reason.as_str());
                        if reason == ColdReason::ClientCap {
                            self.metrics.inc_rate_limited("client_warm_sessions");
                        }
                        return Begun::Cold(reason);
                    }
                };
                let session = open();
                let ready = session.ready();
                slot.insert(Entry {
                    context: Arc::new(context),
                    warm: Some((session, held)),
                    created: now,
                });
                self.metrics.warm_sessions.inc();
                Begun::Warm(ready)
            }
        }
    }

    /// A place for one more warm session of `client`, under its cap and the global one.
    fn hold(&self, client: ClientId) -> Result<Held, ColdReason> {
        let client = self
            .client_warm
            .try_take(client)
            .ok_or(ColdReason::ClientCap)?;
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ColdReason::Cap)?;
        Ok(Held {
            _permit: permit,
            _client: client,
        })
    }

    /// Warm sessions `client` holds now.
    pub fn warm_for(&self, client: ClientId) -> usize {
        self.client_warm.held(&client)
    }

    /// Marks a voice webhook for the call as being answered, until the guard is dropped (hold it
    /// past [`Registry::begin`]).
    pub fn arrive(&self, call_sid: &CallSid) -> Arriving {
        *self.arriving.entry(call_sid.clone()).or_insert(0) += 1;
        Arriving {
            arriving: self.arriving.clone(),
            ended: self.ended_early.clone(),
            call_sid: call_sid.clone(),
        }
    }

    /// Whether a voice webhook for the call is being answered ([`Registry::arrive`]).
    pub fn is_arriving(&self, call_sid: &CallSid) -> bool {
        self.arriving.contains_key(call_sid)
    }

    /// Twilio says the call ended, and it is not registered: if its webhook is being answered,
    /// keeps the end for it ([`Begun::Ended`]: nothing is opened) and returns true.
    pub fn end_arriving(&self, call_sid: &CallSid, early: EarlyEnd) -> bool {
        if !self.arriving.contains_key(call_sid) {
            return false;
        }
        self.ended_early.insert(call_sid.clone(), early);
        true
    }

    /// Takes the call out of the registry (exactly once): the stream handler now owns it.
    pub fn claim(&self, call_sid: &CallSid) -> Option<Claimed<C, S>> {
        let (_, entry) = self.map.remove(call_sid)?;
        self.mark_done(call_sid, Instant::now());
        let session = entry.warm.map(|(session, _held)| {
            self.metrics.warm_sessions.dec();
            session
        });
        Some(Claimed {
            context: entry.context,
            session,
            registered: entry.created,
        })
    }

    /// Runs `f` on the call's warm session, if it has one (never across an `.await`).
    pub fn peek<R>(&self, call_sid: &CallSid, f: impl FnOnce(&S) -> R) -> Option<R> {
        let entry = self.map.get(call_sid)?;
        entry.warm.as_ref().map(|(s, _)| f(s))
    }

    /// Whether the call is registered and unclaimed.
    pub fn contains(&self, call_sid: &CallSid) -> bool {
        self.map.contains_key(call_sid)
    }

    /// Removes the call and closes its session, if any (status callback: the call ended before
    /// its stream). Returns whether there was a warm session to close.
    pub fn close(&self, call_sid: &CallSid, reason: &'static str) -> Option<bool> {
        let (_, entry) = self.map.remove(call_sid)?;
        self.mark_done(call_sid, Instant::now());
        Some(self.close_entry(entry, reason))
    }

    /// Closes every entry registered before `now - ttl`; returns the CallSids reaped and whether
    /// each had a warm session.
    pub fn reap(&self, now: Instant) -> Vec<(CallSid, bool)> {
        let expired: Vec<CallSid> = self
            .map
            .iter()
            .filter(|e| now.saturating_duration_since(e.created) >= self.ttl)
            .map(|e| e.key().clone())
            .collect();
        let mut reaped = Vec::with_capacity(expired.len());
        for sid in expired {
            // Re-check under the removal: a claim may have raced us.
            if let Some((sid, entry)) = self.map.remove_if(&sid, |_, e| {
                now.saturating_duration_since(e.created) >= self.ttl
            }) {
                self.mark_done(&sid, now);
                let had = self.close_entry(entry, "expired");
                if had {
                    self.metrics.warm_sessions_reaped.inc();
                }
                reaped.push((sid, had));
            }
        }
        self.done
            .retain(|_, at| now.saturating_duration_since(*at) < DONE_FOR);
        reaped
    }

    /// Whether the call left the registry within [`DONE_FOR`] (streamed, or ended while it
    /// rang): a second stream or a replayed webhook for it opens nothing.
    pub fn is_done(&self, call_sid: &CallSid, now: Instant) -> bool {
        self.done
            .get(call_sid)
            .is_some_and(|at| now.saturating_duration_since(*at) < DONE_FOR)
    }

    /// Marks a call done without a registry entry (a stream that attached from the database).
    pub fn mark_done(&self, call_sid: &CallSid, now: Instant) {
        self.done.insert(call_sid.clone(), now);
    }

    /// Closes every entry (shutdown).
    pub fn close_all(&self, reason: &'static str) -> usize {
        let keys: Vec<CallSid> = self.map.iter().map(|e| e.key().clone()).collect();
        keys.iter()
            .filter_map(|k| self.map.remove(k))
            .inspect(|(k, _)| self.mark_done(k, Instant::now()))
            .map(|(_, e)| self.close_entry(e, reason))
            .filter(|had| *had)
            .count()
    }

    /// Registered calls (warm and cold).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn close_entry(&self, entry: Entry<C, S>, reason: &'static str) -> bool {
        match entry.warm {
            Some((session, _held)) => {
                self.metrics.warm_sessions.dec();
                Metrics::inc_reason(&self.metrics.warm_sessions_closed, reason);
                if session.greeted() {
                    self.metrics.greetings_unheard.inc();
                }
                session.close(reason);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A session that records how it was closed.
    struct FakeSession {
        id: u32,
        closed: Arc<Mutex<Vec<(u32, &'static str)>>>,
    }

    impl WarmSession for FakeSession {
        type Ready = u32;
        fn ready(&self) -> u32 {
            self.id
        }
        fn close(self, reason: &'static str) {
            self.closed.lock().unwrap().push((self.id, reason));
        }
        // Odd ids stand for sessions whose socket opened (their greeting was asked for).
        fn greeted(&self) -> bool {
            self.id % 2 == 1
        }
    }

    struct Fixture {
        reg: Registry<&'static str, FakeSession>,
        closed: Arc<Mutex<Vec<(u32, &'static str)>>>,
        opened: std::cell::Cell<u32>,
        t0: Instant,
    }

    impl Fixture {
        fn new(max: usize) -> Self {
            Self {
                reg: Registry::new(max, 0, Duration::from_secs(30), Arc::new(Metrics::new())),
                closed: Arc::default(),
                opened: std::cell::Cell::new(0),
                t0: Instant::now(),
            }
        }
        fn begin(&self, sid: &str, warm: bool, at_secs: u64) -> Begun<u32> {
            self.begin_for(1, sid, warm, at_secs)
        }
        fn begin_for(&self, client: i32, sid: &str, warm: bool, at_secs: u64) -> Begun<u32> {
            let sid = CallSid::parse(sid).unwrap();
            let want = if warm {
                Want::Warm
            } else {
                Want::Cold(ColdReason::Policy)
            };
            self.reg.begin(
                &sid,
                ClientId::new(client),
                "ctx",
                want,
                self.t0 + Duration::from_secs(at_secs),
                || {
                    self.opened.set(self.opened.get() + 1);
                    FakeSession {
                        id: self.opened.get(),
                        closed: self.closed.clone(),
                    }
                },
            )
        }
        fn sid(s: &str) -> CallSid {
            CallSid::parse(s).unwrap()
        }
    }

    #[test]
    fn a_retried_webhook_reuses_the_session_in_flight() {
        let f = Fixture::new(10);
        assert!(matches!(f.begin("CA1", true, 0), Begun::Warm(1)));
        assert!(matches!(f.begin("CA1", true, 1), Begun::Retry(Some(1))));
        assert_eq!(f.opened.get(), 1, "exactly one session opened");
        assert_eq!(f.reg.metrics.warm_sessions.get(), 1);
    }

    #[test]
    fn a_claim_happens_exactly_once() {
        let f = Fixture::new(10);
        f.begin("CA1", true, 0);
        let claimed = f.reg.claim(&Fixture::sid("CA1")).expect("first claim");
        assert_eq!(claimed.session.map(|s| s.id), Some(1));
        assert!(
            f.reg.claim(&Fixture::sid("CA1")).is_none(),
            "second claim gets nothing"
        );
        assert!(f.reg.close(&Fixture::sid("CA1"), "completed").is_none());
        assert!(
            f.closed.lock().unwrap().is_empty(),
            "a claimed session is not closed here"
        );
        assert_eq!(f.reg.metrics.warm_sessions.get(), 0);
    }

    #[test]
    fn beyond_max_sessions_calls_go_cold_and_a_freed_permit_is_reused() {
        let f = Fixture::new(2);
        assert!(matches!(f.begin("CA1", true, 0), Begun::Warm(_)));
        assert!(matches!(f.begin("CA2", true, 0), Begun::Warm(_)));
        assert!(matches!(
            f.begin("CA3", true, 0),
            Begun::Cold(ColdReason::Cap)
        ));
        assert_eq!(f.opened.get(), 2);
        // Claiming CA1 frees its permit.
        f.reg.claim(&Fixture::sid("CA1"));
        assert!(matches!(f.begin("CA4", true, 0), Begun::Warm(_)));
    }

    #[test]
    fn policy_cold_calls_are_registered_without_a_session() {
        let f = Fixture::new(2);
        assert!(matches!(
            f.begin("CA1", false, 0),
            Begun::Cold(ColdReason::Policy)
        ));
        assert!(matches!(f.begin("CA1", false, 0), Begun::Retry(None)));
        let claimed = f.reg.claim(&Fixture::sid("CA1")).unwrap();
        assert!(claimed.session.is_none());
        assert_eq!(*claimed.context, "ctx");
        assert_eq!(f.opened.get(), 0);
    }

    #[test]
    fn the_reaper_closes_only_entries_older_than_the_ttl() {
        let f = Fixture::new(10);
        f.begin("CAold", true, 0);
        f.begin("CAnew", true, 20);
        f.begin("CAcold", false, 0);
        let reaped = f.reg.reap(f.t0 + Duration::from_secs(30));
        let mut sids: Vec<_> = reaped
            .iter()
            .map(|(s, w)| (s.as_str().to_string(), *w))
            .collect();
        sids.sort();
        assert_eq!(sids, vec![("CAcold".into(), false), ("CAold".into(), true)]);
        assert_eq!(*f.closed.lock().unwrap(), vec![(1, "expired")]);
        assert!(f.reg.contains(&Fixture::sid("CAnew")));
        assert_eq!(f.reg.metrics.warm_sessions_reaped.get(), 1);
        assert_eq!(f.reg.metrics.warm_sessions.get(), 1);
    }

    #[test]
    fn a_status_callback_close_closes_the_session_once() {
        let f = Fixture::new(10);
        f.begin("CA1", true, 0);
        assert_eq!(f.reg.close(&Fixture::sid("CA1"), "canceled"), Some(true));
        assert_eq!(f.reg.close(&Fixture::sid("CA1"), "canceled"), None);
        assert!(f.reg.reap(f.t0 + Duration::from_secs(999)).is_empty());
        assert_eq!(*f.closed.lock().unwrap(), vec![(1, "canceled")]);
    }

    #[test]
    fn a_call_that_left_stays_done_for_a_while() {
        let f = Fixture::new(10);
        let sid = Fixture::sid;
        f.begin("CA1", true, 0);
        assert!(f.reg.claim(&sid("CA1")).is_some());
        assert!(f.reg.is_done(&sid("CA1"), f.t0 + Duration::from_secs(1)));
        assert!(
            matches!(f.begin("CA1", true, 1), Begun::Over),
            "a replayed webhook opens nothing"
        );
        assert_eq!(f.opened.get(), 1);
        f.begin("CA2", false, 0);
        f.reg.close(&sid("CA2"), "canceled");
        assert!(f.reg.is_done(&sid("CA2"), f.t0 + Duration::from_secs(1)));
        f.begin("CA3", true, 0);
        f.reg.reap(f.t0 + Duration::from_secs(30));
        assert!(f.reg.is_done(&sid("CA3"), f.t0 + Duration::from_secs(31)));
        assert!(!f.reg.is_done(&sid("CA4"), f.t0));
        // Forgotten after DONE_FOR, and swept by the reaper.
        let later = f.t0 + DONE_FOR + Duration::from_secs(60);
        assert!(!f.reg.is_done(&sid("CA1"), later));
        f.reg.reap(later);
        assert!(f.reg.done.is_empty());
    }

    #[test]
    fn beyond_its_own_cap_a_client_goes_cold_while_others_stay_warm() {
        let mut f = Fixture::new(10);
        f.reg = Registry::new(10, 2, Duration::from_secs(30), Arc::new(Metrics::new()));
        assert!(matches!(f.begin_for(1, "CA1", true, 0), Begun::Warm(_)));
        assert!(matches!(f.begin_for(1, "CA2", true, 0), Begun::Warm(_)));
        assert!(matches!(
            f.begin_for(1, "CA3", true, 0),
            Begun::Cold(ColdReason::ClientCap)
        ));
        assert!(matches!(f.begin_for(2, "CA4", true, 0), Begun::Warm(_)));
        assert_eq!(f.reg.warm_for(ClientId::new(1)), 2);
        // Every way out gives the place back: a claim, a close, the reaper.
        f.reg.claim(&Fixture::sid("CA1"));
        assert!(matches!(f.begin_for(1, "CA5", true, 1), Begun::Warm(_)));
        f.reg.close(&Fixture::sid("CA2"), "canceled");
        f.reg.reap(f.t0 + Duration::from_secs(31));
        assert_eq!(f.reg.warm_for(ClientId::new(1)), 0);
        assert!(
            f.reg.client_warm.keys() == 0,
            "no client kept once it holds none"
        );
        let text = f.reg.metrics.encode();
        assert!(text.contains("warmline_cold_sessions_total{reason=\"client_cap\"} 1"));
        assert!(text.contains("warmline_rate_limited_total{limit=\"client_warm_sessions\"} 1"));
    }

    #[test]
    fn a_cold_reason_asked_for_is_the_one_counted() {
        let f = Fixture::new(10);
        let sid = Fixture::sid("CA1");
        let begun = f.reg.begin(
            &sid,
            ClientId::new(1),
            "ctx",
            Want::Cold(ColdReason::RateLimited),
            f.t0,
            || unreachable!("no session is opened"),
        );
        assert!(matches!(begun, Begun::Cold(ColdReason::RateLimited)));
        assert!(
            f.reg
                .metrics
                .encode()
                .contains("warmline_cold_sessions_total{reason=\"rate_limited\"} 1")
        );
    }

    #[test]
    fn close_all_closes_every_warm_session() {
        let f = Fixture::new(10);
        f.begin("CA1", true, 0);
        f.begin("CA2", true, 0);
        f.begin("CA3", false, 0);
        assert_eq!(f.reg.close_all("shutdown"), 2);
        assert!(f.reg.is_empty());
    }

    #[test]
    fn a_hang_up_while_the_webhook_is_answered_opens_nothing() {
        let f = Fixture::new(10);
        let sid = Fixture::sid("CA1");
        let early = EarlyEnd {
            reason: "canceled",
            status: CallStatus::Canceled,
        };
        // No webhook being answered: nothing to keep (the status callback is for another call).
        assert!(!f.reg.end_arriving(&sid, early));
        let arriving = f.reg.arrive(&sid);
        assert!(f.reg.end_arriving(&sid, early));
        assert!(matches!(f.begin("CA1", true, 0), Begun::Ended(e) if e == early));
        assert_eq!(f.opened.get(), 0, "no session opened");
        assert!(f.reg.is_empty());
        // Done: a retry of that webhook opens nothing either.
        assert!(matches!(f.begin("CA1", true, 1), Begun::Over));
        drop(arriving);

        // A webhook that returns before `begin` (an unknown number, say) takes the kept end
        // with it: nothing is left behind for a later call.
        let sid2 = Fixture::sid("CA2");
        let first = f.reg.arrive(&sid2);
        let second = f.reg.arrive(&sid2);
        assert!(f.reg.end_arriving(&sid2, early));
        drop(first);
        assert!(
            f.reg.end_arriving(&sid2, early),
            "one webhook still being answered"
        );
        drop(second);
        assert!(!f.reg.end_arriving(&sid2, early));
        assert!(matches!(f.begin("CA2", true, 0), Begun::Warm(_)));
    }

    #[test]
    fn a_greeting_generated_for_a_session_closed_unclaimed_is_counted_unheard() {
        let f = Fixture::new(10);
        f.begin("CA1", true, 0); // session 1: its greeting was asked for
        f.begin("CA2", true, 0); // session 2: its socket never opened
        f.begin("CA3", true, 0); // session 3: asked for, then claimed (heard)
        f.reg.claim(&Fixture::sid("CA3")).expect("claimed");
        f.reg.close(&Fixture::sid("CA1"), "canceled");
        f.reg.close(&Fixture::sid("CA2"), "canceled");
        assert_eq!(f.reg.metrics.greetings_unheard.get(), 1);
    }
}
