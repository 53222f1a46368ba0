//! Twilio: voice webhook, X-Twilio-Signature, TwiML, stream token, Media Streams protocol, status callback.
