//! The stream token carried in `<Parameter name="token">` (docs/twilio-openai-reference.md §3): proof that a media
//! stream belongs to a call this instance answered. `v1.<expiry unix s>.<base64url HMAC-SHA256>`
//! over `v1|<CallSid>|<expiry>` with a server secret; constant-time check.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::CallSid;

/// Why a stream token was refused (the token itself is never included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Missing, or not of the `v1.<expiry>.<mac>` form.
    #[error("stream token is missing or malformed")]
    Malformed,
    /// The MAC does not match (forged, or issued for another call).
    #[error("stream token does not match this call")]
    BadSignature,
    /// Past its expiry.
    #[error("stream token has expired")]
    Expired,
}

fn mac(secret: &[u8], call_sid: &CallSid, expires_at: u64) -> [u8; 32] {
    // An HMAC accepts keys of any length, so this cannot fail.
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    m.update(b"v1|");
    m.update(call_sid.as_str().as_bytes());
    m.update(b"|");
    m.update(expires_at.to_string().as_bytes());
    m.finalize().into_bytes().into()
}

/// Issues a token for `call_sid`, valid until `expires_at_unix`.
pub fn issue(secret: &[u8], call_sid: &CallSid, expires_at_unix: u64) -> String {
    format!(
        "v1.{expires_at_unix}.{}",
        URL_SAFE_NO_PAD.encode(mac(secret, call_sid, expires_at_unix))
    )
}

/// Checks a token against the call it claims and the current time.
pub fn verify(
    secret: &[u8],
    token: &str,
    call_sid: &CallSid,
    now_unix: u64,
) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(expiry), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let expires_at: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let given = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let expected = mac(secret, call_sid, expires_at);
    if given.len() != expected.len() || !bool::from(given.ct_eq(&expected)) {
        return Err(TokenError::BadSignature);
    }
    if now_unix > expires_at {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    fn sid(s: &str) -> CallSid {
        CallSid::parse(s).unwrap()
    }

    #[test]
    fn a_token_verifies_for_its_call_until_it_expires() {
        let t = issue(b"secret", &sid("CA1"), 1000);
        assert!(t.len() + "token".len() < 500, "Twilio parameter limit");
        assert_eq!(verify(b"secret", &t, &sid("CA1"), 999), Ok(()));
        assert_eq!(verify(b"secret", &t, &sid("CA1"), 1000), Ok(()));
        assert_eq!(
            verify(b"secret", &t, &sid("CA1"), 1001),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_for_another_call_or_key_is_refused() {
        let t = issue(b"secret", &sid("CA1"), 1000);
        assert_eq!(
            verify(b"secret", &t, &sid("CA2"), 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"other", &t, &sid("CA1"), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_expiry_is_refused() {
        let t = issue(b"secret", &sid("CA1"), 1000);
        let forged = t.replacen("v1.1000.", "v1.9999.", 1);
        assert_eq!(
            verify(b"secret", &forged, &sid("CA1"), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed_and_never_panics() {
        for bad in [
            "", "v1", "v1..", "v2.1.abc", "v1.x.abc", "v1.1.!!!", "v1.1.",
        ] {
            assert!(verify(b"s", bad, &sid("CA1"), 0).is_err(), "{bad}");
        }
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..80);
            let s: String = (0..len)
                .map(|_| rng.random_range(32u8..127) as char)
                .collect();
            let _ = verify(b"s", &s, &sid("CA1"), 0);
        }
    }
}
