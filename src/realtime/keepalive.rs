//! Liveness of a Realtime socket, sans IO (README "Security", "Deadlines for idle peers"): a
//! socket quiet for `call.realtime_ping_secs` is sent a WebSocket Ping; one that sends nothing at
//! all, no event and no Pong, for `call.realtime_silence_secs` is taken as dropped. A half-open
//! connection (the peer gone without a close, or a path that lost every packet) otherwise looks
//! like a quiet one until the call's maximum duration.
//!
//! The warm session's task ([`super::client`]) and the call ([`crate::bridge::call::Call`]) each
//! hold one: every frame read goes in through [`Keepalive::handle_heard`], the owner wakes at
//! [`Keepalive::poll_timeout`] and does what [`Keepalive::handle_timeout`] says.

use std::time::{Duration, Instant};

/// The two intervals (from `[call]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveSpec {
    /// Quiet this long: a Ping (`call.realtime_ping_secs`).
    pub ping_every: Duration,
    /// Silent this long: dropped (`call.realtime_silence_secs`, longer than `ping_every`).
    pub silence: Duration,
}

impl KeepaliveSpec {
    /// The intervals the settings give.
    pub fn from_settings(call: &crate::config::CallSettings) -> Self {
        Self {
            ping_every: Duration::from_secs(call.realtime_ping_secs),
            silence: Duration::from_secs(call.realtime_silence_secs),
        }
    }
}

/// What is due at a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a WebSocket Ping.
    Ping,
    /// Nothing came for the silence deadline: treat the socket as dropped.
    Silent,
}

/// One socket's liveness.
#[derive(Debug, Clone)]
pub struct Keepalive {
    spec: KeepaliveSpec,
    /// The last frame read (or the start).
    heard: Instant,
    /// The last Ping sent since then, if any.
    pinged: Option<Instant>,
}

impl Keepalive {
    /// A socket that is alive at `now` (just opened, or just handed over).
    pub fn new(spec: KeepaliveSpec, now: Instant) -> Self {
        Self {
            spec,
            heard: now,
            pinged: None,
        }
    }

    /// A frame of any kind (an event, a Pong, a Ping) was read at `now`.
    pub fn handle_heard(&mut self, now: Instant) {
        self.heard = now;
        self.pinged = None;
    }

    /// When [`Keepalive::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next_ping().min(self.silent_at())
    }

    /// What is due at `now`: the silence deadline first, then a Ping.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        if now >= self.silent_at() {
            return Some(Due::Silent);
        }
        if now >= self.next_ping() {
            self.pinged = Some(now);
            return Some(Due::Ping);
        }
        None
    }

    /// The silence deadline, for log lines.
    pub fn silence(&self) -> Duration {
        self.spec.silence
    }

    fn next_ping(&self) -> Instant {
        self.pinged.unwrap_or(self.heard) + self.spec.ping_every
    }

    fn silent_at(&self) -> Instant {
        self.heard + self.spec.silence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const SPEC: KeepaliveSpec = KeepaliveSpec {
        ping_every: Duration::from_secs(15),
        silence: Duration::from_secs(45),
    };

    #[test]
    fn a_quiet_socket_is_pinged_every_interval_then_taken_as_dropped() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(SPEC, t0);
        assert_eq!(k.poll_timeout(), t0 + s(15));
        assert_eq!(k.handle_timeout(t0 + s(14)), None);
        assert_eq!(k.handle_timeout(t0 + s(15)), Some(Due::Ping));
        assert_eq!(k.poll_timeout(), t0 + s(30));
        assert_eq!(k.handle_timeout(t0 + s(20)), None);
        assert_eq!(k.handle_timeout(t0 + s(30)), Some(Due::Ping));
        assert_eq!(k.poll_timeout(), t0 + s(45));
        assert_eq!(k.handle_timeout(t0 + s(45)), Some(Due::Silent));
        // Still silent until something is heard.
        assert_eq!(k.handle_timeout(t0 + s(46)), Some(Due::Silent));
    }

    #[test]
    fn anything_heard_puts_both_deadlines_back() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(SPEC, t0);
        assert_eq!(k.handle_timeout(t0 + s(15)), Some(Due::Ping));
        // The Pong.
        k.handle_heard(t0 + s(16));
        assert_eq!(k.poll_timeout(), t0 + s(31));
        assert_eq!(k.handle_timeout(t0 + s(45)), Some(Due::Ping));
        assert_eq!(k.handle_timeout(t0 + s(60)), Some(Due::Ping));
        assert_eq!(k.handle_timeout(t0 + s(61)), Some(Due::Silent));
    }

    #[test]
    fn a_busy_socket_is_never_pinged() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(SPEC, t0);
        for n in 1..100 {
            k.handle_heard(t0 + s(n));
            assert_eq!(k.handle_timeout(t0 + s(n)), None);
        }
    }
}
