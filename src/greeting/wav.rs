//! A WAV file of G.711 μ-law audio (8 kHz, mono, 8 bits a sample): `WAVE_FORMAT_MULAW`, with
//! the `fact` chunk every non-PCM WAV carries. Browsers, `ffprobe` and `sox` play it as is.

/// `WAVE_FORMAT_MULAW`.
const FORMAT_MULAW: u16 = 7;

/// The WAV file holding `mulaw` (8 kHz mono).
pub fn mulaw(mulaw: &[u8]) -> Vec<u8> {
    let data_len = u32::try_from(mulaw.len()).unwrap_or(u32::MAX);
    // RIFF header (12) + fmt chunk (8 + 18) + fact chunk (8 + 4) + data chunk (8 + data, padded).
    let pad = data_len % 2;
    let riff_len = 4 + (8 + 18) + (8 + 4) + (8 + data_len + pad);
    let mut out = Vec::with_capacity(riff_len as usize + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&18u32.to_le_bytes());
    out.extend_from_slice(&FORMAT_MULAW.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&8000u32.to_le_bytes()); // sample rate
    out.extend_from_slice(&8000u32.to_le_bytes()); // bytes a second
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits a sample
    out.extend_from_slice(&0u16.to_le_bytes()); // no extension
    out.extend_from_slice(b"fact");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes()); // samples
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&mulaw[..data_len as usize]);
    if pad == 1 {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn the_header_describes_mulaw_8k_mono_and_the_sizes_add_up() {
        let audio = vec![0x7Fu8; 801];
        let wav = mulaw(&audio);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32_at(&wav, 4) as usize, wav.len() - 8);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&wav, 16), 18);
        assert_eq!(u16_at(&wav, 20), 7, "WAVE_FORMAT_MULAW");
        assert_eq!(u16_at(&wav, 22), 1);
        assert_eq!(u32_at(&wav, 24), 8000);
        assert_eq!(u32_at(&wav, 28), 8000);
        assert_eq!(u16_at(&wav, 32), 1);
        assert_eq!(u16_at(&wav, 34), 8);
        assert_eq!(&wav[38..42], b"fact");
        assert_eq!(u32_at(&wav, 46), 801);
        assert_eq!(&wav[50..54], b"data");
        assert_eq!(u32_at(&wav, 54), 801);
        assert_eq!(&wav[58..58 + 801], &audio[..]);
        assert_eq!(wav.len(), 58 + 802, "padded to an even length");
    }
}
