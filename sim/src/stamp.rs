//! Relay-delay stamps for the load generator: both fakes run in the load generator's process,
//! so the Twilio simulator records when it sent each caller frame and the fake Realtime server
//! when it received the matching `input_audio_buffer.append` (and the reverse for agent audio).
//! Frames are told apart by a hash of their base64 payload, made unique by a tag the sender
//! writes into the first bytes of the audio.
//!
//! Only frames sent while the call is relaying are timed: a frame sent before the gateway has
//! joined the two legs (the greeting buffered while the phone rang, caller audio sent while a
//! cold session is still connecting) waits for the call to start, not for the relay, so it is
//! [`Direction::held`]: counted for loss, left out of the delays. The receiver may know better
//! than the sender: a caller hearing a cached greeting takes the call for started while the
//! gateway still holds its audio for a session that is opening, so the fake Realtime server
//! leaves out of the delays what was sent before its session was ready
//! ([`Direction::received_since`]).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

const SHARDS: usize = 64;

/// The pending maps are keyed by [`key`], already a hash of the payload: hashing it again (the
/// map's default SipHash, twice per frame) would be wasted work.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); anything else still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Pending = HashMap<u64, Option<Instant>, BuildHasherDefault<KeyIsHash>>;

/// One direction's send times and measured delays.
pub struct Direction {
    pending: Vec<Mutex<Pending>>,
    delays_us: Mutex<Vec<u32>>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            pending: (0..SHARDS).map(|_| Mutex::default()).collect(),
            delays_us: Mutex::default(),
            sent: AtomicU64::default(),
            received: AtomicU64::default(),
        }
    }
}

impl Direction {
    /// Records that a frame with this payload was sent now.
    pub fn sent(&self, payload_b64: &str, at: Instant) {
        self.insert(payload_b64, Some(at));
    }

    /// Records a frame sent before the call was relaying: counted for loss, not timed.
    pub fn held(&self, payload_b64: &str) {
        self.insert(payload_b64, None);
    }

    fn insert(&self, payload_b64: &str, at: Option<Instant>) {
        let k = key(payload_b64);
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.pending[shard(k)]
            .lock()
            .expect("stamp shard")
            .insert(k, at);
    }

    /// Records that a frame with this payload arrived now; unknown payloads are ignored.
    pub fn received(&self, payload_b64: &str, at: Instant) {
        self.received_since(payload_b64, at, None);
    }

    /// Like [`Direction::received`], for a receiver that could only be reached from
    /// `ready_since` on: a frame sent before then was held on the way (by the gateway, while the
    /// session it relays to was still opening), so it is counted for loss and not timed, even if
    /// its sender took it for relayed (a caller hearing a cached greeting before the session is
    /// open).
    pub fn received_since(&self, payload_b64: &str, at: Instant, ready_since: Option<Instant>) {
        let k = key(payload_b64);
        let sent = self.pending[shard(k)]
            .lock()
            .expect("stamp shard")
            .remove(&k);
        if let Some(sent) = sent {
            self.received.fetch_add(1, Ordering::Relaxed);
            let Some(sent) = sent else { return };
            if ready_since.is_some_and(|ready| sent < ready) {
                return;
            }
            let us = at
                .saturating_duration_since(sent)
                .as_micros()
                .min(u32::MAX as u128) as u32;
            self.delays_us.lock().expect("stamp delays").push(us);
        }
    }

    /// (frames sent, frames received, delays in µs).
    pub fn take(&self) -> (u64, u64, Vec<u32>) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            std::mem::take(&mut *self.delays_us.lock().expect("stamp delays")),
        )
    }

    /// Frames sent and not (yet) received.
    pub fn pending(&self) -> usize {
        self.pending
            .iter()
            .map(|s| s.lock().expect("stamp shard").len())
            .sum()
    }
}

/// Both directions, shared by the simulator and the fake.
#[derive(Default)]
pub struct Stamps {
    /// Caller → model (simulator sends, fake receives).
    pub inbound: Direction,
    /// Model → caller (fake sends, simulator receives).
    pub outbound: Direction,
    tags: AtomicU64,
}

impl Stamps {
    /// Writes a unique tag over the first 16 samples of a frame, one hex digit per sample in
    /// the quietest μ-law codes (0xF0–0xFF decode to ±120 of 32768), so the tag is inaudible
    /// and never trips a voice detector.
    pub fn tag(&self, frame: &mut [u8]) {
        let n = self.tags.fetch_add(1, Ordering::Relaxed);
        for (i, b) in frame.iter_mut().take(16).enumerate() {
            *b = 0xF0 | ((n >> (4 * i)) & 0xF) as u8;
        }
    }
}

/// The shard of a key: bits the map inside does not use (it indexes by the low bits and tags
/// by the top seven), so every shard's keys still spread over its buckets.
fn shard(k: u64) -> usize {
    ((k >> 32) as usize) % SHARDS
}

/// A payload's key: a 64-bit hash of all of its base64 text (tag and audio), eight bytes at a
/// time (FxHash's step) with splitmix64's finaliser. Two per frame under load, so not SipHash
/// (about ten times the work for a 216-byte payload).
fn key(payload: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let bytes = payload.as_bytes();
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(w));
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `p`th percentile (0–100) of sorted values.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

impl std::fmt::Debug for Stamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamps")
            .field("inbound_pending", &self.inbound.pending())
            .field("outbound_pending", &self.outbound.pending())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn delays_are_matched_by_payload() {
        let s = Stamps::default();
        let t0 = Instant::now();
        s.inbound.sent("AAAA", t0);
        s.inbound.sent("BBBB", t0);
        s.inbound.received("AAAA", t0 + Duration::from_micros(250));
        s.inbound.received("CCCC", t0);
        let (sent, received, delays) = s.inbound.take();
        assert_eq!((sent, received, delays), (2, 1, vec![250]));
        assert_eq!(s.inbound.pending(), 1);
    }

    #[test]
    fn a_frame_sent_before_the_receiver_was_ready_is_counted_and_not_timed() {
        let s = Stamps::default();
        let t0 = Instant::now();
        let ready = t0 + Duration::from_millis(400);
        s.inbound.sent("AAAA", t0);
        s.inbound.sent("BBBB", ready);
        s.inbound
            .received_since("AAAA", ready + Duration::from_micros(90), Some(ready));
        s.inbound
            .received_since("BBBB", ready + Duration::from_micros(100), Some(ready));
        let (sent, received, delays) = s.inbound.take();
        assert_eq!((sent, received, delays), (2, 2, vec![100]));
    }

    #[test]
    fn tags_make_identical_frames_distinct_and_stay_silent() {
        let s = Stamps::default();
        let (mut a, mut b) = ([0xFFu8; 160], [0xFFu8; 160]);
        for _ in 0..1000 {
            s.tag(&mut a);
        }
        s.tag(&mut b);
        assert_ne!(a, b);
        assert!(
            !crate::audio::is_speech(&a),
            "a tagged silent frame is still silence"
        );
    }

    #[test]
    fn tagged_frames_get_distinct_keys() {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let s = Stamps::default();
        let mut keys = std::collections::HashSet::new();
        let speech = crate::audio::clips::answer();
        for i in 0..200_000 {
            let mut frame = [crate::audio::SILENCE; crate::audio::FRAME_BYTES];
            if i % 2 == 1 {
                let at = (i * 160) % (speech.mulaw.len() - 160);
                frame.copy_from_slice(&speech.mulaw[at..at + 160]);
            }
            s.tag(&mut frame);
            assert!(keys.insert(key(&STANDARD.encode(frame))), "frame {i}");
        }
        // A payload that differs anywhere (here its last byte) is another frame.
        assert_ne!(key("AAAAAAAAAAAA"), key("AAAAAAAAAAAB"));
        assert_ne!(key("AAAAAAAA"), key("AAAAAAAAA"));
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(51));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
