//! Two μ-law channels → Ogg/Opus (RFC 7845): 8 kHz input, VoIP application, 20 ms frames,
//! bitrate and complexity from the settings, encoded with libopus through `audiopus`; the Ogg
//! pages written by the `ogg` crate: `OpusHead`, `OpusTags`, then the audio, a page a second,
//! each page's granule position in 48 kHz samples as RFC 7845 §4 has it. Any browser, `ffprobe`
//! and `opusinfo` read the result.

use std::io::Cursor;

use audiopus::{
    Application, Bitrate, Channels, SampleRate,
    coder::{Decoder, Encoder},
};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use super::{BYTES_PER_MS, MULAW_TO_PCM, SILENCE};

/// Samples per channel in one 20 ms frame at 8 kHz.
const FRAME_SAMPLES: usize = 160;
/// Frames per Ogg page (one second).
const FRAMES_PER_PAGE: usize = 50;
/// Opus granule positions count 48 kHz samples (RFC 7845 §4): 6 per 8 kHz sample.
const GRANULE_PER_SAMPLE: u64 = 6;
/// The largest Opus packet (RFC 6716 §3.2.1 allows 1275 bytes a frame).
const MAX_PACKET: usize = 1500;

/// Encoder settings (`recording.bitrate`, `recording.complexity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Bits per second for both channels together.
    pub bitrate: i32,
    /// 0 (fastest) to 10 (best).
    pub complexity: u8,
}

/// The lowest bitrate that keeps the two sides apart: below it libopus codes speech on one
/// side into the other (measured: at 13 kbit/s a greeting on the right leaves an RMS of 65 on
/// the silent left, at 12 kbit/s 575; from 14 kbit/s on, 0).
pub const MIN_BITRATE: i32 = 14_000;

impl Default for OpusSettings {
    /// 15 kbit/s (about 113 KB a minute), complexity 0: at 8 kHz the encoder then takes about
    /// 1.5 ms of CPU a second of call, against 2.9 ms at complexity 5, for files of the same
    /// size.
    fn default() -> Self {
        Self {
            bitrate: 15_000,
            complexity: 0,
        }
    }
}

/// Why a recording could not be encoded or read back.
#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    /// libopus refused a setting or a frame.
    #[error("opus: {0}")]
    Codec(#[from] audiopus::Error),
    /// The Ogg stream could not be written or read.
    #[error("ogg: {0}")]
    Ogg(String),
}

/// An encoded recording.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The Ogg/Opus file.
    pub ogg: Vec<u8>,
    /// Its length, ms (whole 20 ms frames).
    pub duration_ms: u64,
}

/// Encodes `left` and `right` (μ-law, 8 kHz; the shorter padded with silence) as one two-channel
/// Ogg/Opus stream with Ogg serial number `serial`.
pub fn encode(
    left: &[u8],
    right: &[u8],
    settings: OpusSettings,
    serial: u32,
) -> Result<Encoded, OpusError> {
    let mut encoder = Encoder::new(SampleRate::Hz8000, Channels::Stereo, Application::Voip)?;
    encoder.set_bitrate(Bitrate::BitsPerSecond(settings.bitrate))?;
    encoder.set_complexity(settings.complexity.min(10))?;
    // Two sides, never one: at a low bitrate libopus would otherwise fold them into mono.
    encoder.set_force_channels(Channels::Stereo)?;
    // The encoder's delay, to be skipped by the player (in 48 kHz samples).
    let pre_skip =
        u16::try_from(u64::from(encoder.lookahead()?) * GRANULE_PER_SAMPLE).unwrap_or(u16::MAX);

    let samples = left.len().max(right.len());
    let frames = samples.div_ceil(FRAME_SAMPLES).max(1);
    let mut writer = PacketWriter::new(Vec::with_capacity(frames * 40 + 256));
    let ogg = |e: std::io::Error| OpusError::Ogg(e.to_string());
    writer
        .write_packet(head(pre_skip), serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(ogg)?;
    writer
        .write_packet(tags(), serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(ogg)?;
    let at = |ch: &[u8], i: usize| MULAW_TO_PCM[usize::from(ch.get(i).copied().unwrap_or(SILENCE))];
    let mut pcm = [0i16; FRAME_SAMPLES * 2];
    let mut packet = [0u8; MAX_PACKET];
    for f in 0..frames {
        for (s, pair) in pcm.chunks_exact_mut(2).enumerate() {
            let i = f * FRAME_SAMPLES + s;
            pair[0] = at(left, i);
            pair[1] = at(right, i);
        }
        let n = encoder.encode(&pcm, &mut packet)?;
        // The last frame's granule is the audio's true end: a player trims the padding
        // (RFC 7845 §4.5).
        let end_sample = if f + 1 == frames && samples > 0 {
            samples
        } else {
            (f + 1) * FRAME_SAMPLES
        };
        let granule = u64::from(pre_skip) + end_sample as u64 * GRANULE_PER_SAMPLE;
        let end = if f + 1 == frames {
            PacketWriteEndInfo::EndStream
        } else if (f + 1) % FRAMES_PER_PAGE == 0 {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        writer
            .write_packet(packet[..n].to_vec(), serial, end, granule)
            .map_err(ogg)?;
    }
    Ok(Encoded {
        ogg: writer.into_inner(),
        duration_ms: (frames * FRAME_SAMPLES / BYTES_PER_MS) as u64,
    })
}

/// The identification header (RFC 7845 §5.1): version 1, two channels, the pre-skip, 8 kHz
/// input, no gain, channel mapping family 0 (left, right).
fn head(pre_skip: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(2);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&8000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// The comment header (RFC 7845 §5.2): the vendor, and which side is which.
fn tags() -> Vec<u8> {
    let vendor = concat!("warmline ", env!("CARGO_PKG_VERSION"));
    let comments = [
        "TITLE=warmline call recording",
        "CHANNELS=left caller, right agent",
    ];
    let mut t = Vec::new();
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for c in comments {
        t.extend_from_slice(&(c.len() as u32).to_le_bytes());
        t.extend_from_slice(c.as_bytes());
    }
    t
}

/// The length of an Ogg/Opus stream written by [`encode`], ms: its last granule position less
/// the pre-skip (a spooled recording's row is rebuilt from its file).
pub fn duration_ms(ogg_bytes: &[u8]) -> Result<u64, OpusError> {
    let bad = |e: ogg::OggReadError| OpusError::Ogg(e.to_string());
    let mut reader = ogg::PacketReader::new(Cursor::new(ogg_bytes));
    let head = reader
        .read_packet()
        .map_err(bad)?
        .filter(|h| h.data.len() >= 19 && &h.data[..8] == b"OpusHead")
        .ok_or_else(|| OpusError::Ogg("no OpusHead".into()))?;
    let pre_skip = u64::from(u16::from_le_bytes([head.data[10], head.data[11]]));
    let mut last = 0;
    while let Some(p) = reader.read_packet().map_err(bad)? {
        last = p.absgp_page();
    }
    Ok(last.saturating_sub(pre_skip) / (GRANULE_PER_SAMPLE * BYTES_PER_MS as u64))
}

/// A recording read back: the two channels, 16-bit PCM at 8 kHz, the pre-skip removed.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// The left channel (the caller).
    pub left: Vec<i16>,
    /// The right channel (the agent).
    pub right: Vec<i16>,
    /// `OpusHead`'s channel count.
    pub channels: u8,
    /// `OpusHead`'s input sample rate.
    pub input_rate: u32,
}

/// Decodes an Ogg/Opus stream written by [`encode`] (tests, and checks of stored recordings).
pub fn decode(ogg_bytes: &[u8]) -> Result<Decoded, OpusError> {
    let bad = |e: ogg::OggReadError| OpusError::Ogg(e.to_string());
    let mut reader = ogg::PacketReader::new(Cursor::new(ogg_bytes));
    let head = reader
        .read_packet()
        .map_err(bad)?
        .ok_or_else(|| OpusError::Ogg("no OpusHead".into()))?;
    if head.data.len() < 19 || &head.data[..8] != b"OpusHead" {
        return Err(OpusError::Ogg("the first packet is not OpusHead".into()));
    }
    let channels = head.data[9];
    let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]);
    let input_rate = u32::from_le_bytes(head.data[12..16].try_into().expect("4 bytes"));
    let tags = reader
        .read_packet()
        .map_err(bad)?
        .ok_or_else(|| OpusError::Ogg("no OpusTags".into()))?;
    if !tags.data.starts_with(b"OpusTags") {
        return Err(OpusError::Ogg("the second packet is not OpusTags".into()));
    }
    let mut decoder = Decoder::new(SampleRate::Hz8000, Channels::Stereo)?;
    let mut out = Decoded {
        channels,
        input_rate,
        ..Decoded::default()
    };
    // 120 ms, the longest Opus packet, of two channels.
    let mut pcm = vec![0i16; 960 * 2];
    let mut skip = usize::from(pre_skip) / GRANULE_PER_SAMPLE as usize;
    while let Some(p) = reader.read_packet().map_err(bad)? {
        let n = decoder.decode(Some(&p.data[..]), &mut pcm[..], false)?;
        for pair in pcm[..n * 2].chunks_exact(2) {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.left.push(pair[0]);
            out.right.push(pair[1]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` of a tone at `hz` (μ-law, 8 kHz), loud enough to be speech.
    fn tone(hz: f64, ms: usize) -> Vec<u8> {
        (0..ms * BYTES_PER_MS)
            .map(|i| {
                let s = (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin() * 8000.0;
                encode_mulaw(s as i16)
            })
            .collect()
    }

    /// The μ-law code nearest a sample (the inverse of [`MULAW_TO_PCM`]).
    fn encode_mulaw(s: i16) -> u8 {
        (0..=255u8)
            .min_by_key(|&c| (i32::from(MULAW_TO_PCM[usize::from(c)]) - i32::from(s)).abs())
            .expect("256 codes")
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    #[test]
    fn a_recording_decodes_back_to_its_two_sides() {
        // The caller talks for the first second, the agent for the second.
        let mut left = tone(440.0, 1000);
        left.extend(vec![SILENCE; 8000]);
        let mut right = vec![SILENCE; 8000];
        right.extend(tone(300.0, 1000));
        let e = encode(&left, &right, OpusSettings::default(), 7).unwrap();
        assert_eq!(e.duration_ms, 2000);
        let d = decode(&e.ogg).unwrap();
        assert_eq!((d.channels, d.input_rate), (2, 8000));
        // Whole 20 ms frames less the encoder's delay.
        assert!(
            d.left.len() <= 16_000 && d.left.len() > 15_700,
            "{}",
            d.left.len()
        );
        let (l1, l2) = (rms(&d.left[800..7200]), rms(&d.left[8800..15000]));
        let (r1, r2) = (rms(&d.right[800..7200]), rms(&d.right[8800..15000]));
        // Each side is loud when it talked and near silent when it did not (no bleed across).
        assert!(l1 > 3000.0 && l2 < 300.0, "left {l1} then {l2}");
        assert!(r1 < 300.0 && r2 > 3000.0, "right {r1} then {r2}");
    }

    // Real speech (the simulator's clips), not a tone: speech is what bleeds.
    #[cfg(feature = "sim")]
    #[test]
    fn speech_on_one_side_leaves_the_other_silent_from_the_lowest_bitrate_allowed() {
        let speech = sim::audio::clips::greeting().mulaw.to_vec();
        let quiet = vec![SILENCE; speech.len()];
        for bitrate in [MIN_BITRATE, OpusSettings::default().bitrate] {
            let settings = OpusSettings {
                bitrate,
                complexity: 5,
            };
            let d = decode(&encode(&quiet, &speech, settings, 1).unwrap().ogg).unwrap();
            assert!(
                rms(&d.left) < 20.0 && rms(&d.right) > 2000.0,
                "{bitrate}: left {} right {}",
                rms(&d.left),
                rms(&d.right)
            );
            let d = decode(&encode(&speech, &quiet, settings, 1).unwrap().ogg).unwrap();
            assert!(
                rms(&d.right) < 20.0 && rms(&d.left) > 2000.0,
                "{bitrate}: left {} right {}",
                rms(&d.left),
                rms(&d.right)
            );
        }
    }

    #[test]
    fn the_stream_is_ogg_opus_with_its_headers_and_granules() {
        let e = encode(&tone(440.0, 3000), &[], OpusSettings::default(), 42).unwrap();
        let mut r = ogg::PacketReader::new(Cursor::new(&e.ogg[..]));
        let head = r.read_packet().unwrap().unwrap();
        assert_eq!(&head.data[..8], b"OpusHead");
        assert_eq!((head.data[8], head.data[9], head.data[18]), (1, 2, 0));
        assert!(head.first_in_stream() && head.last_in_page());
        let tags = r.read_packet().unwrap().unwrap();
        assert!(tags.data.starts_with(b"OpusTags"));
        let pre_skip = u64::from(u16::from_le_bytes([head.data[10], head.data[11]]));
        let mut packets = 0;
        let mut last = None;
        while let Some(p) = r.read_packet().unwrap() {
            packets += 1;
            assert_eq!(p.stream_serial(), 42);
            last = Some(p);
        }
        let last = last.unwrap();
        assert_eq!(packets, 150, "20 ms a packet");
        assert!(last.last_in_stream());
        assert_eq!(last.absgp_page(), pre_skip + 150 * 960);
        // The size a minute at the default bitrate: 15 kbit/s is 113 KB, Ogg's pages add little.
        let per_minute = e.ogg.len() as f64 * 20.0;
        assert!(per_minute < 120_000.0, "{per_minute} bytes a minute");
    }

    #[test]
    fn empty_sides_still_make_a_playable_file_and_garbage_is_refused() {
        let e = encode(&[], &[], OpusSettings::default(), 1).unwrap();
        assert_eq!(e.duration_ms, 20);
        assert!(decode(&e.ogg).is_ok());
        assert!(decode(b"not ogg at all").is_err());
        assert!(decode(&[]).is_err());
    }
}
