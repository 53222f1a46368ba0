//! Call recordings (README "Recordings"): the call's two sides as the caller heard them, on one
//! timeline ([`timeline`]), encoded as two-channel Ogg/Opus ([`opus`]): left the caller, right
//! the agent.
//!
//! Nothing here runs on the relay path: the call copies its frames into a [`timeline::Timeline`]
//! and the encoding is done after the call, off the call's task.

pub mod opus;
pub mod storage;
pub mod timeline;
pub mod worker;

/// The notice a recorded call's caller hears first, in the client's language (`es…`: Spanish,
/// anything else English); a client may set its own (`recording_notice`).
pub fn notice(language: &str) -> &'static str {
    if language.to_ascii_lowercase().starts_with("es") {
        "Esta llamada puede ser grabada."
    } else {
        "This call may be recorded."
    }
}

/// μ-law bytes per millisecond (8 kHz, one byte a sample).
pub const BYTES_PER_MS: usize = 8;

/// μ-law silence.
pub const SILENCE: u8 = 0xFF;

/// G.711 μ-law → 16-bit linear PCM, every code (ITU-T G.711; the table Twilio's audio decodes
/// with).
pub static MULAW_TO_PCM: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8);
        let exponent = ((u >> 4) & 0x07) as i32;
        let mantissa = (u & 0x0F) as i32;
        let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        table[i] = if u & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_decodes_like_g711() {
        // Silence, the loudest codes, and a mid code (the reference points of G.711).
        assert_eq!(MULAW_TO_PCM[0xFF], 0);
        assert_eq!(MULAW_TO_PCM[0x7F], 0);
        assert_eq!(MULAW_TO_PCM[0x00], -32124);
        assert_eq!(MULAW_TO_PCM[0x80], 32124);
        assert_eq!(MULAW_TO_PCM[0xF0], 120);
        assert_eq!(MULAW_TO_PCM[0x70], -120);
    }
}
