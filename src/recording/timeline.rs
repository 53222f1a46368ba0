//! The two channels of a recording on one timeline, in milliseconds since the media stream's
//! `start`: left the caller's audio at the time Twilio stamped it, right the agent's audio when
//! the caller heard it. Twilio plays the agent audio it is sent back to back, so each chunk is
//! heard after the one before it, or at once if nothing is playing; a `clear` (barge-in) drops
//! what had not played yet, so it is cut from the recording too. Where a side said nothing the
//! channel holds silence.
//!
//! Bounded: each channel holds at most `max_ms` of audio; later audio is dropped and counted.
//!
//! A channel grows in fixed chunks ([`CHUNK`]), never by reallocating: the relay path that
//! places frames never copies what is already there (a `Vec` doubling would copy up to the
//! whole channel, hundreds of kilobytes, on the frame that crosses its capacity).

use super::{BYTES_PER_MS, SILENCE};

/// One piece of a channel: 64 KiB, 8 s of μ-law.
pub const CHUNK: usize = 64 * 1024;

/// A channel's bytes in chunks of [`CHUNK`] (the last one partly used).
#[derive(Debug, Clone, Default)]
struct Channel {
    chunks: Vec<Box<[u8]>>,
    len: usize,
}

impl Channel {
    fn len(&self) -> usize {
        self.len
    }

    /// Grows to `n` bytes, the new ones silence (never shrinks).
    fn grow(&mut self, n: usize) {
        while self.chunks.len() * CHUNK < n {
            self.chunks.push(vec![SILENCE; CHUNK].into_boxed_slice());
        }
        self.len = self.len.max(n);
    }

    /// Writes `data` from byte `at` (growing the channel if needed).
    fn write(&mut self, at: usize, data: &[u8]) {
        self.grow(at + data.len());
        let mut pos = at;
        let mut rest = data;
        while !rest.is_empty() {
            let (c, off) = (pos / CHUNK, pos % CHUNK);
            let n = rest.len().min(CHUNK - off);
            self.chunks[c][off..off + n].copy_from_slice(&rest[..n]);
            pos += n;
            rest = &rest[n..];
        }
    }

    /// Cuts the channel to `n` bytes (what is cut becomes silence again, for a later grow).
    fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        let mut pos = n;
        while pos < self.len {
            let (c, off) = (pos / CHUNK, pos % CHUNK);
            let m = (self.len - pos).min(CHUNK - off);
            self.chunks[c][off..off + m].fill(SILENCE);
            pos += m;
        }
        self.len = n;
    }

    /// Removes bytes `start..end`, moving what follows up.
    fn remove(&mut self, start: usize, end: usize) {
        let end = end.min(self.len);
        if start >= end {
            return;
        }
        let tail = self.range(end, self.len);
        self.truncate(start);
        self.write(start, &tail);
    }

    /// A copy of bytes `start..end`.
    fn range(&self, start: usize, end: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        let mut pos = start;
        while pos < end {
            let (c, off) = (pos / CHUNK, pos % CHUNK);
            let n = (end - pos).min(CHUNK - off);
            out.extend_from_slice(&self.chunks[c][off..off + n]);
            pos += n;
        }
        out
    }

    /// The bytes, `n` long (silence past the channel's own length).
    fn into_vec(self, n: usize) -> Vec<u8> {
        let mut out = self.range(0, self.len);
        out.resize(n, SILENCE);
        out
    }
}

/// The recording of one call while it runs.
#[derive(Debug, Clone)]
pub struct Timeline {
    caller: Channel,
    agent: Channel,
    /// Where the agent audio sent so far ends, bytes (samples): the next chunk plays from here
    /// (or now). Kept in samples, not ms: chunks of any length follow each other exactly.
    agent_end: usize,
    max_bytes: usize,
    dropped_bytes: u64,
}

impl Timeline {
    /// An empty recording that keeps at most `max_ms` of each side.
    pub fn new(max_ms: u64) -> Self {
        Self {
            caller: Channel::default(),
            agent: Channel::default(),
            agent_end: 0,
            max_bytes: usize::try_from(max_ms)
                .unwrap_or(usize::MAX)
                .saturating_mul(BYTES_PER_MS),
            dropped_bytes: 0,
        }
    }

    /// Caller audio (μ-law) that Twilio stamped `at_ms` after the stream's start.
    pub fn caller(&mut self, at_ms: u64, mulaw: &[u8]) {
        self.dropped_bytes += place(&mut self.caller, byte_at(at_ms), mulaw, self.max_bytes);
    }

    /// Agent audio (μ-law) written to the caller at `now_ms`: heard after what is still
    /// playing. Returns where it was placed (a byte offset, for [`Timeline::retract`]).
    pub fn agent(&mut self, now_ms: u64, mulaw: &[u8]) -> usize {
        let start = byte_at(now_ms).max(self.agent_end);
        self.dropped_bytes += place(&mut self.agent, start, mulaw, self.max_bytes);
        self.agent_end = start + mulaw.len();
        start
    }

    /// Agent audio placed at byte `start` (`len` bytes) was never sent after all (the
    /// outbound queue was full): it goes, and what was placed after it moves up, as Twilio
    /// plays it.
    pub fn retract(&mut self, start: usize, len: usize) {
        if start >= self.agent_end {
            return;
        }
        let len = len.min(self.agent_end - start);
        self.agent.remove(start, start + len);
        self.agent_end -= len;
    }

    /// Twilio's buffer was cleared at `now_ms` (a barge-in, or the call's end): the agent audio
    /// queued past it is never heard.
    pub fn clear(&mut self, now_ms: u64) {
        let at = byte_at(now_ms);
        if self.agent_end > at {
            self.agent_end = at;
            if self.agent.len() > at {
                self.agent.truncate(at);
            }
        }
    }

    /// Bytes of audio dropped because a side reached the bound.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// Length so far, ms (the longer side).
    pub fn duration_ms(&self) -> u64 {
        (self.caller.len().max(self.agent.len()) / BYTES_PER_MS) as u64
    }

    /// The two channels, (caller, agent), padded with silence to the same length.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let n = self.caller.len().max(self.agent.len());
        (self.caller.into_vec(n), self.agent.into_vec(n))
    }
}

fn byte_at(ms: u64) -> usize {
    usize::try_from(ms)
        .unwrap_or(usize::MAX)
        .saturating_mul(BYTES_PER_MS)
}

/// Writes `data` into `channel` from byte `at` (silence before it if the channel is shorter;
/// over what is there if it is longer), within `max` bytes; returns the bytes dropped.
fn place(channel: &mut Channel, at: usize, data: &[u8], max: usize) -> u64 {
    if at >= max {
        return data.len() as u64;
    }
    let take = data.len().min(max - at);
    channel.write(at, &data[..take]);
    (data.len() - take) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u8 = 0x10;
    const B: u8 = 0x20;

    #[test]
    fn the_caller_is_placed_by_its_timestamps_with_silence_in_the_gaps() {
        let mut t = Timeline::new(60_000);
        t.caller(0, &[A; 160]);
        // A frame lost on the way: 20 ms of silence where it would have been.
        t.caller(40, &[A; 160]);
        let (caller, agent) = t.finish();
        assert_eq!(caller.len(), 480);
        assert!(caller[..160].iter().all(|&b| b == A));
        assert!(caller[160..320].iter().all(|&b| b == SILENCE));
        assert!(caller[320..].iter().all(|&b| b == A));
        assert_eq!(agent, vec![SILENCE; 480], "the agent said nothing");
    }

    #[test]
    fn agent_audio_plays_back_to_back_and_a_clear_cuts_what_was_not_heard() {
        let mut t = Timeline::new(60_000);
        // 100 ms sent at once at 10 ms: heard from 10 to 110 ms.
        t.agent(10, &[A; 800]);
        // Sent at 50 ms while the first still plays: heard from 110 to 210 ms.
        t.agent(50, &[B; 800]);
        // The caller talks over it at 150 ms: 150–210 ms is never heard.
        t.clear(150);
        // The next answer, sent at 400 ms, plays at once.
        t.agent(400, &[A; 160]);
        let (_, agent) = t.finish();
        let ms = |m: usize| agent[m * 8];
        assert_eq!(ms(5), SILENCE);
        assert_eq!((ms(10), ms(109)), (A, A));
        assert_eq!((ms(110), ms(149)), (B, B));
        assert_eq!((ms(150), ms(399)), (SILENCE, SILENCE), "cut at the clear");
        assert_eq!((ms(400), ms(419)), (A, A));
        assert_eq!(agent.len(), 420 * 8);
    }

    #[test]
    fn chunks_of_any_length_follow_each_other_exactly_and_a_retracted_one_moves_the_rest_up() {
        let mut t = Timeline::new(60_000);
        // 5 bytes is less than a ms: the next chunk still starts right after it.
        assert_eq!(t.agent(0, &[A; 5]), 0);
        assert_eq!(t.agent(0, &[B; 7]), 5);
        let at = t.agent(0, &[A; 160]);
        assert_eq!(t.agent(0, &[B; 160]), at + 160);
        // The A frame was never sent: the B frame after it plays in its place.
        t.retract(at, 160);
        let (_, agent) = t.finish();
        assert_eq!(agent.len(), 5 + 7 + 160);
        assert!(agent[12..].iter().all(|&b| b == B));
    }

    #[test]
    fn a_channel_in_chunks_writes_truncates_and_removes_across_chunk_edges() {
        let mut c = Channel::default();
        // Across the first edge, after a gap of silence.
        let at = CHUNK - 3;
        c.write(at, &[A; 10]);
        assert_eq!(c.len(), CHUNK + 7);
        assert_eq!(c.chunks.len(), 2);
        let v = c.clone().into_vec(c.len());
        assert!(v[..at].iter().all(|&b| b == SILENCE));
        assert!(v[at..].iter().all(|&b| b == A));
        // Overwriting in place does not grow it.
        c.write(at + 2, &[B; 3]);
        assert_eq!(c.len(), CHUNK + 7);
        // Removing across the edge moves the rest up.
        c.remove(at + 1, at + 6);
        let v = c.clone().into_vec(c.len());
        assert_eq!(v.len(), CHUNK + 2);
        assert_eq!(&v[at..], &[A, A, A, A, A]);
        // Truncated, then grown again: the cut part is silence.
        c.truncate(at + 1);
        c.grow(at + 4);
        let v = c.into_vec(at + 6);
        assert_eq!(&v[at..], &[A, SILENCE, SILENCE, SILENCE, SILENCE, SILENCE]);
    }

    #[test]
    fn a_long_call_fills_many_chunks_and_reads_back_in_order() {
        let mut t = Timeline::new(3_600_000);
        // 30 s of caller frames, each numbered by its byte value.
        for i in 0..1500u64 {
            t.caller(i * 20, &[(i % 250) as u8; 160]);
        }
        let (caller, agent) = t.finish();
        assert_eq!(caller.len(), 1500 * 160);
        assert_eq!(agent.len(), caller.len());
        for i in 0..1500usize {
            assert!(
                caller[i * 160..(i + 1) * 160]
                    .iter()
                    .all(|&b| b == (i % 250) as u8)
            );
        }
    }

    #[test]
    fn both_sides_end_together_and_the_bound_drops_and_counts() {
        let mut t = Timeline::new(100);
        t.caller(0, &[A; 400]);
        t.agent(0, &[B; 1600]);
        assert_eq!(t.dropped_bytes(), 800);
        t.caller(200, &[A; 160]);
        assert_eq!(t.dropped_bytes(), 960);
        assert_eq!(t.duration_ms(), 100);
        let (caller, agent) = t.finish();
        assert_eq!((caller.len(), agent.len()), (800, 800));
        assert!(caller[400..].iter().all(|&b| b == SILENCE));
        // Far-off timestamps never allocate past the bound.
        let mut t = Timeline::new(1000);
        t.caller(u64::MAX / 2, &[A; 160]);
        assert_eq!((t.duration_ms(), t.dropped_bytes()), (0, 160));
    }
}
