//! Rate limits and per-client caps (README.md, "Security", "Rate limits"): what a robo-dialer,
//! a busy client or an admin-token guesser may cost this instance. Pure bookkeeping: no IO, no
//! sleeping (the callers decide what a verdict means on the wire).
//!
//! - [`Rate`]: events per minute per key (a caller number, a source address), the GCRA of the
//!   `governor` crate, keyed. A key that ran over its limit is [`Rate::locked`] until the window
//!   lets one more event through.
//! - [`Slots`]: how many of something a key holds at once (warm sessions, live calls per
//!   client); a [`Slot`] gives its place back when dropped, whoever drops it.
//!
//! Invariants:
//! 1. Memory is bounded whatever the keys: a [`Rate`] forgets keys whose state is back to fresh
//!    (`retain_recent`, at most every [`SWEEP_EVERY`]), and never tracks more than its
//!    `max_keys`; past that, new and old keys alike share one overflow key (so a flood of
//!    distinct keys is limited as one) until a sweep makes room. [`Slots`] keeps a key only while
//!    it holds a slot.
//! 2. Nothing here is per frame: a rate is checked once per webhook or admin request, a slot
//!    taken once per call.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use dashmap::DashMap;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock, Reference},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

use crate::{config::LimitSettings, domain::ClientId};

/// How often a [`Rate`] forgets keys whose state is fresh again (checked on use).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Most keys one [`Rate`] tracks (then new keys share one overflow key). A key costs well
/// under 100 bytes, so a full table stays within a few MiB.
pub const MAX_KEYS: usize = 100_000;

/// `warmline_rate_limited_total{limit}` values: which limit turned something away.
pub const LIMITS: &[&str] = &[
    "caller_webhooks",
    "client_warm_sessions",
    "client_live_calls",
    "admin_bad_token",
];

/// The key of a voice webhook's caller: its number, or one key shared by every caller whose
/// number is withheld or not a phone number (`anonymous`, `Restricted`, empty).
pub fn caller_key(from: &str) -> String {
    match crate::domain::E164::parse(from) {
        Ok(n) => n.as_str().to_string(),
        Err(_) => WITHHELD.to_string(),
    }
}

/// The shared [`caller_key`] of callers without a usable number (never a valid E.164 number).
pub const WITHHELD: &str = "withheld";

/// The key of a source address: IPv4 as is (an IPv4-mapped IPv6 address as its IPv4), IPv6 by
/// its /64 (one host usually holds a whole /64, so keying by the full address would let it pick
/// a new key per request).
pub fn source_key(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A key as the limiter tracks it: itself, or the shared overflow key when the table is full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tracked<K> {
    Key(K),
    Overflow,
}

/// What [`Rate::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit (the event was counted).
    Allowed,
    /// Over the limit: the next event for this key is allowed after `retry_after`.
    Limited {
        /// How long until the window allows one more.
        retry_after: Duration,
    },
}

/// governor's keyed limiter over our tracked keys.
type KeyedLimiter<K, C> = RateLimiter<
    Tracked<K>,
    DashMapStateStore<Tracked<K>>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// Events per minute per key, bounded in memory (module docs, invariant 1).
pub struct Rate<K: Hash + Eq + Clone, C: Clock + Clone = DefaultClock> {
    limiter: KeyedLimiter<K, C>,
    clock: C,
    max_keys: usize,
    /// When stale keys were last forgotten.
    last_sweep: Mutex<C::Instant>,
    /// Keys that ran over their limit, and until when they stay refused.
    locked: DashMap<Tracked<K>, C::Instant>,
}

impl<K: Hash + Eq + Clone> Rate<K> {
    /// `per_minute` events a minute per key (a burst of that many, then one every
    /// `60 s / per_minute`), on the monotonic clock.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self::with_clock(per_minute, MAX_KEYS, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Rate<K, C> {
    /// Like [`Rate::per_minute`], with at most `max_keys` keys, on `clock` (tests use a fake).
    pub fn with_clock(per_minute: NonZeroU32, max_keys: usize, clock: C) -> Self {
        let quota = Quota::per_minute(per_minute);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            last_sweep: Mutex::new(clock.now()),
            clock,
            max_keys: max_keys.max(1),
            locked: DashMap::new(),
        }
    }

    /// Counts one event for `key`: [`Verdict::Limited`] when it is over the limit, and then the
    /// key is [`Rate::locked`] until the window allows one more.
    pub fn check(&self, key: K) -> Verdict {
        let now = self.clock.now();
        let tracked = self.track(key, now);
        match self.limiter.check_key(&tracked) {
            Ok(()) => Verdict::Allowed,
            Err(not_until) => {
                let until = not_until.earliest_possible();
                self.locked.insert(tracked, until);
                Verdict::Limited {
                    retry_after: until.duration_since(now).into(),
                }
            }
        }
    }

    /// Whether `key` ran over its limit and the window does not allow another event yet (how
    /// long until it does). Counts nothing.
    pub fn locked(&self, key: K) -> Option<Duration> {
        let now = self.clock.now();
        let tracked = self.track(key, now);
        let until = *self.locked.get(&tracked)?;
        (until > now).then(|| until.duration_since(now).into())
    }

    /// Keys tracked now (the overflow key included).
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// The key as tracked: itself, unless the table is full even after forgetting stale keys.
    fn track(&self, key: K, now: C::Instant) -> Tracked<K> {
        self.sweep(now, false);
        if self.limiter.len() >= self.max_keys {
            // Full: make room if the table has stale keys (at most once a second), else the
            // overflow key stands for every key until a sweep does.
            self.sweep(now, true);
            if self.limiter.len() >= self.max_keys {
                return Tracked::Overflow;
            }
        }
        Tracked::Key(key)
    }

    /// Forgets keys whose state is fresh again and lockouts that ended, every [`SWEEP_EVERY`]
    /// (every second when `full`). Never waits: a sweep already running is enough.
    fn sweep(&self, now: C::Instant, full: bool) {
        let every = if full {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if Duration::from(now.duration_since(*last)) < every {
            return;
        }
        *last = now;
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.locked.retain(|_, until| *until > now);
    }
}

/// How many of something each key holds at once, capped (0: no cap, only counted).
pub struct Slots<K: Hash + Eq + Clone> {
    cap: usize,
    held: Mutex<HashMap<K, usize>>,
    /// Told each time a place is given back.
    freed: tokio::sync::Notify,
}

/// One held place of a [`Slots`]; dropping it gives the place back.
pub struct Slot<K: Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// At most `cap` places per key (0: no cap).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            held: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Ready once a place of any key is given back after this is made (and, to miss none
    /// between a refused [`Slots::try_take`] and the wait, `enable`d before it).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Takes a place for `key`, or `None` when it holds `cap` already.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if self.cap != 0 && held.get(&key).is_some_and(|n| *n >= self.cap) {
            return None;
        }
        *held.entry(key.clone()).or_insert(0) += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one place (memory: nothing is kept for a key holding none).
    pub fn keys(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The cap (0: none).
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        {
            let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = held.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.key);
                }
            }
        }
        self.slots.freed.notify_waiters();
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> std::fmt::Debug for Slot<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).finish()
    }
}

/// This instance's limits (the `[limits]` settings) other than the per-client warm-session cap,
/// which the registry keeps ([`crate::realtime::registry`]).
pub struct Limits {
    /// Warm sessions opened per caller number a minute (`None`: off).
    pub caller_webhooks: Option<Rate<String>>,
    /// Calls ringing or live on this instance per client.
    pub live_calls: Arc<Slots<ClientId>>,
    /// Admin requests with a bad or missing token per source address a minute (`None`: off).
    pub admin_bad_tokens: Option<Rate<IpAddr>>,
    /// How long each bad-token answer is held back.
    pub admin_bad_token_delay: Duration,
}

impl Limits {
    /// The limits `settings` ask for.
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            caller_webhooks: NonZeroU32::new(settings.caller_webhooks_per_minute)
                .map(Rate::per_minute),
            live_calls: Slots::new(settings.live_calls_per_client),
            admin_bad_tokens: NonZeroU32::new(settings.admin_bad_tokens_per_minute)
                .map(Rate::per_minute),
            admin_bad_token_delay: Duration::from_millis(settings.admin_bad_token_delay_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn rate(
        per_minute: u32,
        max_keys: usize,
    ) -> (Rate<String, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let r = Rate::with_clock(
            NonZeroU32::new(per_minute).unwrap(),
            max_keys,
            clock.clone(),
        );
        (r, clock)
    }

    #[test]
    fn the_sixth_event_in_a_minute_is_limited_and_other_keys_are_not() {
        let (r, clock) = rate(5, 100);
        for _ in 0..5 {
            assert_eq!(r.check("+14155550100".into()), Verdict::Allowed);
        }
        let Verdict::Limited { retry_after } = r.check("+14155550100".into()) else {
            panic!("the sixth is limited");
        };
        // One event every 12 s comes back.
        assert_eq!(retry_after, Duration::from_secs(12));
        assert_eq!(r.check("+14155550199".into()), Verdict::Allowed);
        clock.advance(Duration::from_secs(12));
        assert_eq!(r.check("+14155550100".into()), Verdict::Allowed);
        assert!(matches!(
            r.check("+14155550100".into()),
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn a_limited_key_stays_locked_until_the_window_allows_one_more() {
        let (r, clock) = rate(10, 100);
        for _ in 0..10 {
            assert_eq!(r.check("a".into()), Verdict::Allowed);
        }
        assert_eq!(r.locked("a".into()), None, "not locked before it ran over");
        assert!(matches!(r.check("a".into()), Verdict::Limited { .. }));
        assert_eq!(r.locked("a".into()), Some(Duration::from_secs(6)));
        assert_eq!(r.locked("b".into()), None);
        clock.advance(Duration::from_secs(5));
        assert_eq!(r.locked("a".into()), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(r.locked("a".into()), None);
        assert_eq!(r.check("a".into()), Verdict::Allowed);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_key_cap_and_is_forgotten() {
        let (r, clock) = rate(5, 100);
        for i in 0..10_000 {
            r.check(format!("+1415555{i:04}"));
            assert!(r.tracked_keys() <= 101, "{} keys", r.tracked_keys());
        }
        // Past the cap, every key shares the overflow key: the flood is limited as one.
        assert!(matches!(
            r.check("+14155559999".into()),
            Verdict::Limited { .. }
        ));
        // Once the window has passed, the next check forgets the stale keys.
        clock.advance(Duration::from_secs(120));
        assert_eq!(r.check("+14155550000".into()), Verdict::Allowed);
        assert!(r.tracked_keys() <= 2, "{} keys", r.tracked_keys());
        assert!(r.locked.len() <= 1);
    }

    #[test]
    fn stale_keys_are_forgotten_even_below_the_cap() {
        let (r, clock) = rate(5, 100_000);
        for i in 0..500 {
            r.check(format!("k{i}"));
        }
        assert_eq!(r.tracked_keys(), 500);
        clock.advance(Duration::from_secs(60));
        r.check("k0".into());
        assert_eq!(r.tracked_keys(), 1);
    }

    #[test]
    fn slots_cap_each_key_and_come_back_when_dropped() {
        let slots = Slots::new(2);
        let a1 = slots.try_take(1).unwrap();
        let _a2 = slots.try_take(1).unwrap();
        assert!(slots.try_take(1).is_none(), "the third is refused");
        let _b1 = slots.try_take(2).expect("another key is unaffected");
        drop(a1);
        assert_eq!(slots.held(&1), 1);
        let _a3 = slots.try_take(1).expect("a dropped slot is given back");
        assert!(slots.try_take(1).is_none());
    }

    /// Whoever waits for a place is woken when one is given back: the waiter here has no timer
    /// of its own, so only the notification can end its wait.
    #[tokio::test]
    async fn a_place_given_back_wakes_whoever_waits_for_one() {
        let slots = Slots::new(1);
        let held = slots.try_take("a").unwrap();
        let (waiting, mut woken) = (slots.clone(), tokio::sync::oneshot::channel::<()>());
        let waiter = tokio::spawn(async move {
            let mut asked = 0;
            loop {
                let freed = waiting.freed();
                tokio::pin!(freed);
                freed.as_mut().enable();
                asked += 1;
                if let Some(slot) = waiting.try_take("a") {
                    let _ = woken.0.send(());
                    return (slot, asked);
                }
                freed.await;
            }
        });
        // Refused while the place is held.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(woken.1.try_recv().is_err(), "no place yet");
        drop(held);
        let (slot, asked) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when the place came back")
            .unwrap();
        assert_eq!(asked, 2, "asked once before, once when woken");
        assert_eq!(slots.held(&"a"), 1);
        drop(slot);
        assert_eq!(slots.keys(), 0);
    }

    #[test]
    fn slots_keep_no_key_that_holds_none() {
        let slots = Slots::new(1);
        for i in 0..1000 {
            let s = slots.try_take(i).unwrap();
            drop(s);
        }
        assert_eq!(slots.keys(), 0);
        let unlimited = Slots::new(0);
        let held: Vec<_> = (0..500).map(|_| unlimited.try_take(7).unwrap()).collect();
        assert_eq!(unlimited.held(&7), 500, "0 is no cap");
        drop(held);
        assert_eq!(unlimited.keys(), 0);
    }

    #[test]
    fn withheld_callers_share_one_key_and_ipv6_is_keyed_by_its_64() {
        assert_eq!(caller_key("+14155550100"), "+14155550100");
        assert_eq!(caller_key("anonymous"), WITHHELD);
        assert_eq!(caller_key("Restricted"), WITHHELD);
        assert_eq!(caller_key(""), WITHHELD);
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:6000".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();
        assert_eq!(source_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v4: SocketAddr = "127.0.0.2:9".parse().unwrap();
        assert_eq!(source_key(v4), "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}
