//! Audio for the simulators: G.711 μ-law (ITU-T G.711, the `audio/x-mulaw` / `audio/pcmu` both
//! legs of a call carry), a tiny energy detector, WAV output, and the speech clips both fakes speak.
//!
//! The clips in `sim/assets/*.ul` are real speech (espeak-ng, 8 kHz μ-law; regenerate with
//! `scripts/make-clips.sh`), so what a test or the demo records can be listened to.

use std::{io::Write, path::Path, sync::Arc};

/// Samples per second on both legs.
pub const SAMPLE_RATE: u32 = 8000;
/// μ-law bytes per millisecond (one byte per sample).
pub const BYTES_PER_MS: usize = 8;
/// The frame Twilio sends in practice: 20 ms, 160 bytes.
pub const FRAME_BYTES: usize = 160;
/// μ-law encoding of digital silence.
pub const SILENCE: u8 = 0xFF;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// Encodes one 16-bit linear PCM sample to μ-law.
pub fn encode_sample(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // Segment = position of the highest set bit among bits 14..7 (0 when below bit 7).
    let highest_bit = 31 - (s as u32).leading_zeros() as i32;
    let exponent = (highest_bit - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 as i32 | mantissa) as u8
}

/// Decodes one μ-law byte to 16-bit linear PCM.
pub const fn decode_sample(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Decodes a μ-law buffer.
pub fn decode(mulaw: &[u8]) -> Vec<i16> {
    mulaw.iter().map(|&b| decode_sample(b)).collect()
}

/// Encodes a PCM buffer.
pub fn encode(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| encode_sample(s)).collect()
}

/// Every μ-law code's decoded sample, squared (exact in an f64): the fake's voice detector
/// weighs 50 frames a second per call with it.
const SQUARES: [f64; 256] = {
    let mut t = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        let s = decode_sample(i as u8) as f64;
        t[i] = s * s;
        i += 1;
    }
    t
};

/// Root-mean-square level of a μ-law chunk in dBFS (silence is about -90).
pub fn level_dbfs(mulaw: &[u8]) -> f64 {
    if mulaw.is_empty() {
        return -90.0;
    }
    let sum: f64 = mulaw.iter().map(|&b| SQUARES[b as usize]).sum();
    let rms = (sum / mulaw.len() as f64).sqrt();
    if rms < 1.0 {
        -90.0
    } else {
        20.0 * (rms / 32768.0).log10()
    }
}

/// Whether a chunk sounds like speech rather than line noise (a plain energy gate).
pub fn is_speech(mulaw: &[u8]) -> bool {
    level_dbfs(mulaw) > -40.0
}

/// `ms` of μ-law silence.
pub fn silence(ms: usize) -> Vec<u8> {
    vec![SILENCE; ms * BYTES_PER_MS]
}

/// A named stretch of μ-law audio.
#[derive(Clone, Debug)]
pub struct Clip {
    /// Short name, e.g. `greeting`.
    pub name: &'static str,
    /// What is said (the fakes use it as the transcript).
    pub text: &'static str,
    /// The audio, 8 kHz μ-law.
    pub mulaw: Arc<[u8]>,
}

impl Clip {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> usize {
        self.mulaw.len() / BYTES_PER_MS
    }
}

macro_rules! clip {
    ($fn:ident, $name:literal, $text:literal) => {
        #[doc = concat!("The `", $name, "` clip: \"", $text, "\"")]
        pub fn $fn() -> Clip {
            Clip {
                name: $name,
                text: $text,
                mulaw: Arc::from(&include_bytes!(concat!("../assets/", $name, ".ul"))[..]),
            }
        }
    };
}

/// The speech clips (agent lines in a female voice, caller lines in a male voice).
pub mod clips {
    use super::*;
    clip!(
        greeting,
        "greeting",
        "Thanks for calling. This is your assistant. How can I help you today?"
    );
    clip!(
        answer,
        "answer",
        "Sure. We are open Monday to Friday, from nine in the morning to five in the evening. Is there anything else I can help you with?"
    );
    clip!(
        goodbye,
        "goodbye",
        "You're welcome. Have a lovely day. Goodbye!"
    );
    clip!(question, "question", "Hi. What are your opening hours?");
    clip!(
        interrupt,
        "interrupt",
        "Sorry, actually, can I book an appointment for tomorrow?"
    );
    clip!(thanks, "thanks", "Great, thank you very much.");
}

/// Writes μ-law audio as a 16-bit PCM WAV file a person can play.
pub fn write_wav(path: &Path, mulaw: &[u8]) -> std::io::Result<()> {
    let pcm = decode(mulaw);
    let data_len = (pcm.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::File::create(path)?.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_matches_g711_reference_points() {
        // Reference values from the G.711 tables.
        assert_eq!(encode_sample(0), 0xFF);
        assert_eq!(encode_sample(-1), 0x7F);
        assert_eq!(decode_sample(0xFF), 0);
        assert_eq!(decode_sample(0x80), 32124);
        assert_eq!(decode_sample(0x00), -32124);
        assert_eq!(encode_sample(i16::MAX), 0x80);
        assert_eq!(encode_sample(i16::MIN), 0x00);
    }

    #[test]
    fn the_squares_table_is_each_decoded_sample_squared() {
        for b in 0..=255u8 {
            let s = decode_sample(b) as f64;
            assert_eq!(SQUARES[b as usize], s * s);
        }
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for b in 0..=255u8 {
            let back = encode_sample(decode_sample(b));
            // 0x7F and 0xFF both mean zero.
            assert!(
                back == b || (decode_sample(b) == 0 && decode_sample(back) == 0),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn clips_are_speech_and_silence_is_not() {
        for clip in [
            clips::greeting(),
            clips::answer(),
            clips::question(),
            clips::interrupt(),
        ] {
            assert!(clip.duration_ms() > 1500, "{} too short", clip.name);
            let loud = clip
                .mulaw
                .chunks(FRAME_BYTES)
                .filter(|f| is_speech(f))
                .count();
            assert!(
                loud * 4 > clip.mulaw.len() / FRAME_BYTES,
                "{} is mostly quiet",
                clip.name
            );
        }
        assert!(!is_speech(&silence(20)));
    }

    #[test]
    fn wav_header_describes_8khz_mono_pcm16() {
        let dir = std::env::temp_dir().join(format!("sim-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        write_wav(&path, &silence(10)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 8000);
        assert_eq!(bytes.len(), 44 + 160);
        std::fs::remove_dir_all(&dir).ok();
    }
}
