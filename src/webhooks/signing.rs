//! Standard Webhooks signatures (README.md, "Webhook events"): the three headers `webhook-id`,
//! `webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"`, keyed by the base64-decoded part of a `whsec_…` secret.
//!
//! Pure: no clock (the caller passes `now`), no I/O. Secrets never appear in errors or `Debug`.

use axum::http::HeaderMap;
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of every webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (the specification asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;
/// A timestamp further than this from the receiver's clock, either way, is refused.
pub const TOLERANCE_SECS: i64 = 300;
/// The message id header (the same on every retry of one event: receivers deduplicate by it).
pub const HEADER_ID: &str = "webhook-id";
/// The unix-seconds header (the time of this attempt).
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The signature header: space-separated `v1,<base64>` entries.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not base64.
    #[error("webhook secret is not base64 after the whsec_ prefix")]
    NotBase64,
    /// The key is shorter or longer than the specification allows.
    #[error("webhook secret key must be 24 to 64 bytes")]
    BadLength,
}

/// Why a received webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent, empty or not text.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the past.
    #[error("webhook-timestamp is too old")]
    TooOld,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the future.
    #[error("webhook-timestamp is too far in the future")]
    TooNew,
    /// No `v1` entry of `webhook-signature` matches.
    #[error("no matching signature")]
    NoMatch,
}

/// A decoded webhook secret: the HMAC key. `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Decodes `whsec_<base64>` (the prefix is optional, as the official libraries accept).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = STANDARD.decode(b64).map_err(|_| SecretError::NotBase64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength);
        }
        Ok(Self { key })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        // HMAC accepts a key of any length; ours is 24 to 64 bytes.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// A new secret: `whsec_` and the base64 of [`SECRET_BYTES`] random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::fill(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The `webhook-signature` value for one attempt: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(secret.mac(id, timestamp, body)))
}

/// Verifies a received webhook from its headers, as a receiver does: the timestamp within
/// [`TOLERANCE_SECS`] of `now` (unix seconds), and one `v1` signature in the space-separated
/// list matching (compared in constant time).
pub fn verify(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::MissingHeader(name))
    };
    verify_parts(
        secret,
        get(HEADER_ID)?,
        get(HEADER_TIMESTAMP)?,
        get(HEADER_SIGNATURE)?,
        body,
        now,
    )
}

/// [`verify`] with the three header values given directly.
pub fn verify_parts(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    if id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_ID));
    }
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if now.saturating_sub(ts) > TOLERANCE_SECS {
        return Err(VerifyError::TooOld);
    }
    if ts.saturating_sub(now) > TOLERANCE_SECS {
        return Err(VerifyError::TooNew);
    }
    let expected = secret.mac(id, ts, body);
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|given| given.len() == expected.len() && bool::from(given.ct_eq(&expected)));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The specification's test vector: standard-webhooks/standard-webhooks,
    // libraries/javascript/src/webhook.test.ts, "sign function works".
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_secret() -> WebhookSecret {
        WebhookSecret::parse(SPEC_SECRET).unwrap()
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn signs_the_specification_vector() {
        let sig = sign(&spec_secret(), SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes());
        assert_eq!(sig, SPEC_SIGNATURE);
    }

    #[test]
    fn verifies_the_specification_vector_with_or_without_the_prefix() {
        let h = headers(SPEC_ID, &SPEC_TS.to_string(), SPEC_SIGNATURE);
        verify(&spec_secret(), &h, SPEC_BODY.as_bytes(), SPEC_TS).unwrap();
        let bare = WebhookSecret::parse(SPEC_SECRET.trim_start_matches(SECRET_PREFIX)).unwrap();
        verify(&bare, &h, SPEC_BODY.as_bytes(), SPEC_TS + 10).unwrap();
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_is_refused() {
        let s = spec_secret();
        let ts = SPEC_TS.to_string();
        let h = headers(SPEC_ID, &ts, SPEC_SIGNATURE);
        assert_eq!(
            verify(&s, &h, br#"{"test": 2432232315}"#, SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        let other_id = headers("msg_other", &ts, SPEC_SIGNATURE);
        assert_eq!(
            verify(&s, &other_id, SPEC_BODY.as_bytes(), SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        let other_ts = headers(SPEC_ID, &(SPEC_TS + 1).to_string(), SPEC_SIGNATURE);
        assert_eq!(
            verify(&s, &other_ts, SPEC_BODY.as_bytes(), SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        let other_secret = WebhookSecret::parse(&generate_secret()).unwrap();
        assert_eq!(
            verify(&other_secret, &h, SPEC_BODY.as_bytes(), SPEC_TS),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn timestamps_beyond_the_tolerance_are_refused_either_way() {
        let s = spec_secret();
        let h = headers(SPEC_ID, &SPEC_TS.to_string(), SPEC_SIGNATURE);
        let body = SPEC_BODY.as_bytes();
        verify(&s, &h, body, SPEC_TS + TOLERANCE_SECS).unwrap();
        verify(&s, &h, body, SPEC_TS - TOLERANCE_SECS).unwrap();
        assert_eq!(
            verify(&s, &h, body, SPEC_TS + TOLERANCE_SECS + 1),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify(&s, &h, body, SPEC_TS - TOLERANCE_SECS - 1),
            Err(VerifyError::TooNew)
        );
        let bad = headers(SPEC_ID, "yesterday", SPEC_SIGNATURE);
        assert_eq!(
            verify(&s, &bad, body, SPEC_TS),
            Err(VerifyError::BadTimestamp)
        );
        let huge = headers(SPEC_ID, &i64::MIN.to_string(), SPEC_SIGNATURE);
        assert_eq!(verify(&s, &huge, body, i64::MAX), Err(VerifyError::TooOld));
    }

    #[test]
    fn one_matching_entry_among_several_is_enough() {
        let s = spec_secret();
        let list = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,{sig} v1,not-base64!! {SPEC_SIGNATURE} v1,",
            sig = SPEC_SIGNATURE.trim_start_matches("v1,")
        );
        let h = headers(SPEC_ID, &SPEC_TS.to_string(), &list);
        verify(&s, &h, SPEC_BODY.as_bytes(), SPEC_TS).unwrap();
        // The right bytes under another version tag do not count.
        let v2_only = format!("v2,{}", SPEC_SIGNATURE.trim_start_matches("v1,"));
        let h = headers(SPEC_ID, &SPEC_TS.to_string(), &v2_only);
        assert_eq!(
            verify(&s, &h, SPEC_BODY.as_bytes(), SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        // A truncated signature does not match either.
        let h = headers(SPEC_ID, &SPEC_TS.to_string(), &SPEC_SIGNATURE[..20]);
        assert_eq!(
            verify(&s, &h, SPEC_BODY.as_bytes(), SPEC_TS),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let s = spec_secret();
        let full = headers(SPEC_ID, &SPEC_TS.to_string(), SPEC_SIGNATURE);
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut h = full.clone();
            h.remove(name);
            assert_eq!(
                verify(&s, &h, SPEC_BODY.as_bytes(), SPEC_TS),
                Err(VerifyError::MissingHeader(name))
            );
        }
    }

    #[test]
    fn generated_secrets_are_prefixed_random_and_usable() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_ne!(a, b);
        let key = STANDARD.decode(&a[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(key.len(), SECRET_BYTES);
        let s = WebhookSecret::parse(&a).unwrap();
        let sig = sign(&s, "msg_1", 100, b"{}");
        verify_parts(&s, "msg_1", "100", &sig, b"{}", 100).unwrap();
    }

    #[test]
    fn unusable_secrets_are_refused_without_echoing_them() {
        let short = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 8]));
        assert_eq!(
            WebhookSecret::parse(&short).unwrap_err(),
            SecretError::BadLength
        );
        let err = WebhookSecret::parse("whsec_%%%SECRETVALUE%%%").unwrap_err();
        assert_eq!(err, SecretError::NotBase64);
        assert!(!err.to_string().contains("SECRETVALUE"));
        assert!(!format!("{:?}", spec_secret()).contains("MfKQ"));
    }
}
