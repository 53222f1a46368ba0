//! One call: the state machine joining a Twilio media stream to a Realtime session.
