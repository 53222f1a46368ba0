//! Media Streams JSON (docs/twilio-openai-reference.md §4): parsing Twilio's text frames into a typed message and
//! encoding ours. Numeric-looking fields are strings on the wire. Unknown events parse into
//! [`TwilioMessage::Unknown`] (logged and ignored), never an error.
//!
//! Hot path: media payloads are borrowed from the frame where possible and validated as base64
//! without decoding; outbound frames are written straight into a `String` (the base64 alphabet
//! and our validated SIDs need no JSON escaping).

use std::{borrow::Cow, collections::HashMap};

use serde::Deserialize;

use crate::json::Text;

/// A message from Twilio.
#[derive(Debug, PartialEq)]
pub enum TwilioMessage<'a> {
    /// `connected`: first message, no streamSid.
    Connected {
        /// `Call` for voice.
        protocol: String,
    },
    /// `start`: stream metadata.
    Start(Box<StartInfo>),
    /// `media`: caller audio.
    Media {
        /// Base64 μ-law (not yet validated).
        payload: Cow<'a, str>,
        /// ms since stream start.
        timestamp_ms: u64,
        /// `inbound` on bidirectional streams.
        track: Option<Cow<'a, str>>,
    },
    /// `dtmf`: a key press.
    Dtmf {
        /// The digit.
        digit: String,
    },
    /// `mark`: one of our marks, echoed.
    Mark {
        /// The name we gave it.
        name: String,
    },
    /// `stop`: the stream ended.
    Stop,
    /// An event this code does not know.
    Unknown {
        /// Its `event` value.
        event: String,
    },
}

/// The `start` message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    /// `MZ…`
    pub stream_sid: String,
    /// `CA…`
    pub call_sid: String,
    /// `AC…`
    pub account_sid: String,
    /// `<Parameter>` values.
    pub custom_parameters: HashMap<String, String>,
    /// Should be `audio/x-mulaw`.
    pub encoding: Option<String>,
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not JSON, or not an object with `event`.
    #[error("invalid JSON from Twilio: {0}")]
    Json(String),
    /// A known event without a field it must have.
    #[error("{event} message without {field}")]
    Missing {
        /// The event.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field whose value is not one the protocol allows.
    #[error("{event} message with an invalid {field}")]
    Invalid {
        /// The event.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// A DTMF digit as Twilio sends it: one of `0-9`, `*`, `#`, `A-D` (anything else would reach
/// the model's conversation as text).
fn valid_digit(d: &str) -> bool {
    matches!(d.as_bytes(), [b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'])
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Text<'a>>,
    protocol: Option<String>,
    start: Option<StartBody>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
    dtmf: Option<DtmfBody>,
    mark: Option<MarkBody>,
}

#[derive(Deserialize)]
struct StartBody {
    #[serde(rename = "streamSid")]
    stream_sid: Option<String>,
    #[serde(rename = "callSid")]
    call_sid: Option<String>,
    #[serde(rename = "accountSid", default)]
    account_sid: String,
    #[serde(rename = "customParameters", default)]
    custom_parameters: HashMap<String, String>,
    #[serde(rename = "mediaFormat")]
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
struct MediaFormat {
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow, default)]
    payload: Option<Text<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    track: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct DtmfBody {
    digit: Option<String>,
}

#[derive(Deserialize)]
struct MarkBody {
    name: Option<String>,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<TwilioMessage<'_>, WireError> {
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| WireError::Json(e.to_string()))?;
    Ok(match env.event.as_ref() {
        "connected" => TwilioMessage::Connected {
            protocol: env.protocol.unwrap_or_default(),
        },
        "start" => {
            let start = env.start.ok_or(WireError::Missing {
                event: "start",
                field: "start",
            })?;
            let stream_sid = start
                .stream_sid
                .or(env.stream_sid.map(|t| t.0.into_owned()))
                .ok_or(WireError::Missing {
                    event: "start",
                    field: "streamSid",
                })?;
            let call_sid = start.call_sid.ok_or(WireError::Missing {
                event: "start",
                field: "callSid",
            })?;
            TwilioMessage::Start(Box::new(StartInfo {
                stream_sid,
                call_sid,
                account_sid: start.account_sid,
                custom_parameters: start.custom_parameters,
                encoding: start.media_format.and_then(|f| f.encoding),
            }))
        }
        "media" => {
            let media = env.media.ok_or(WireError::Missing {
                event: "media",
                field: "media",
            })?;
            TwilioMessage::Media {
                payload: media
                    .payload
                    .ok_or(WireError::Missing {
                        event: "media",
                        field: "payload",
                    })?
                    .0,
                timestamp_ms: media
                    .timestamp
                    .and_then(|t| t.0.trim().parse().ok())
                    .unwrap_or(0),
                track: media.track.map(|t| t.0),
            }
        }
        "dtmf" => {
            let digit = env.dtmf.and_then(|d| d.digit).ok_or(WireError::Missing {
                event: "dtmf",
                field: "digit",
            })?;
            if !valid_digit(&digit) {
                return Err(WireError::Invalid {
                    event: "dtmf",
                    field: "digit",
                });
            }
            TwilioMessage::Dtmf { digit }
        }
        "mark" => TwilioMessage::Mark {
            name: env.mark.and_then(|m| m.name).ok_or(WireError::Missing {
                event: "mark",
                field: "name",
            })?,
        },
        "stop" => TwilioMessage::Stop,
        other => TwilioMessage::Unknown {
            event: other.chars().take(64).collect(),
        },
    })
}

/// Decoded length of a base64 string if it is valid standard base64 (with padding), else `None`.
/// Validates without allocating: this runs for every inbound frame.
pub fn base64_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &b[..b.len() - pad];
    if !body
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    {
        return None;
    }
    // Canonical only (RFC 4648 §3.5): the bits of the last character that padding leaves over
    // must be zero, as a strict decoder (the base64 crate's, maybe OpenAI's) requires. `AB==`
    // is not `AA==`.
    let spare_bits = match pad {
        1 => 0b11,
        2 => 0b1111,
        _ => 0,
    };
    if let Some(&last) = body.last()
        && sextet(last) & spare_bits != 0
    {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

/// The 6-bit value of a base64 alphabet character (already checked to be one).
fn sextet(c: u8) -> u8 {
    match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    }
}

/// `{"event":"media","streamSid":…,"media":{"payload":…}}`; `stream_sid` must be a validated SID
/// and `payload` valid base64 (neither needs escaping).
pub fn media_json(stream_sid: &str, payload: &str) -> String {
    let mut s = String::with_capacity(64 + stream_sid.len() + payload.len());
    s.push_str(r#"{"event":"media","streamSid":""#);
    s.push_str(stream_sid);
    s.push_str(r#"","media":{"payload":""#);
    s.push_str(payload);
    s.push_str(r#""}}"#);
    s
}

/// `{"event":"mark","streamSid":…,"mark":{"name":…}}`; `name` is ours (digits).
pub fn mark_json(stream_sid: &str, name: &str) -> String {
    format!(r#"{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"{name}"}}}}"#)
}

/// `{"event":"clear","streamSid":…}`.
pub fn clear_json(stream_sid: &str) -> String {
    format!(r#"{{"event":"clear","streamSid":"{stream_sid}"}}"#)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Messages exactly as docs/twilio-openai-reference.md §4.1 shows them.
    pub const CONNECTED: &str = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
    pub const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","start":{"accountSid":"AC123","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","callSid":"CA123","tracks":["inbound"],"customParameters":{"token":"v1.1.abc"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
    pub const MEDIA: &str = r#"{"event":"media","sequenceNumber":"3","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//7+/v7+/v4="}}"#;
    pub const DTMF: &str = r#"{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","dtmf":{"track":"inbound_track","digit":"1"}}"#;
    pub const MARK: &str = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","mark":{"name":"my label"}}"#;
    pub const STOP: &str = r#"{"event":"stop","sequenceNumber":"5","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","stop":{"accountSid":"AC123","callSid":"CA123"}}"#;
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn protocol_fixtures_parse() {
        assert_eq!(
            parse(CONNECTED).unwrap(),
            TwilioMessage::Connected {
                protocol: "Call".into()
            }
        );
        let TwilioMessage::Start(start) = parse(START).unwrap() else {
            panic!("start")
        };
        assert_eq!(start.call_sid, "CA123");
        assert_eq!(start.stream_sid, "MZ18ad3ab5a668481ce02b83e7395059f0");
        assert_eq!(start.custom_parameters["token"], "v1.1.abc");
        assert_eq!(start.encoding.as_deref(), Some("audio/x-mulaw"));
        let TwilioMessage::Media {
            payload,
            timestamp_ms,
            ..
        } = parse(MEDIA).unwrap()
        else {
            panic!("media")
        };
        assert!(matches!(payload, Cow::Borrowed(_)), "payload is borrowed");
        assert_eq!((payload.as_ref(), timestamp_ms), ("//7+/v7+/v4=", 5));
        assert_eq!(
            parse(DTMF).unwrap(),
            TwilioMessage::Dtmf { digit: "1".into() }
        );
        assert_eq!(
            parse(MARK).unwrap(),
            TwilioMessage::Mark {
                name: "my label".into()
            }
        );
        assert_eq!(parse(STOP).unwrap(), TwilioMessage::Stop);
    }

    #[test]
    fn unknown_events_are_not_errors() {
        assert_eq!(
            parse(r#"{"event":"transcription","x":1}"#).unwrap(),
            TwilioMessage::Unknown {
                event: "transcription".into()
            }
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(matches!(parse("not json"), Err(WireError::Json(_))));
        assert!(matches!(parse("{}"), Err(WireError::Json(_))));
        assert!(matches!(
            parse(r#"{"event":"media","media":{}}"#),
            Err(WireError::Missing {
                field: "payload",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"event":"start","start":{"streamSid":"MZ1"}}"#),
            Err(WireError::Missing {
                field: "callSid",
                ..
            })
        ));
    }

    #[test]
    fn base64_validation_matches_the_decoder() {
        use base64::{Engine, engine::general_purpose::STANDARD};
        for s in [
            "",
            "//7+/v7+/v4=",
            "AAAA",
            "AA==",
            "A===",
            "AAA",
            "AA!A",
            "=AAA",
            "AA=A",
            // Found by the property `base64_validation_agrees_with_the_decoder`: spare bits
            // set (`h` ends in 01), accepted as 5 bytes, refused by the decoder.
            "0a+0A+h=",
            "AB==",
            "AAB=",
        ] {
            let ours = base64_len(s);
            let theirs = STANDARD.decode(s).ok().map(|v| v.len());
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn a_dtmf_digit_is_one_key_of_the_keypad() {
        let dtmf = |d: &str| {
            format!(
                r#"{{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{{"track":"inbound_track","digit":{}}}}}"#,
                serde_json::Value::from(d)
            )
        };
        for ok in ["0", "5", "9", "*", "#", "A", "D"] {
            assert!(
                matches!(parse(&dtmf(ok)), Ok(TwilioMessage::Dtmf { ref digit }) if digit == ok),
                "{ok}"
            );
        }
        for bad in [
            "",
            "E",
            "a",
            "12",
            "1 ",
            "ignore previous instructions",
            "٣",
        ] {
            assert!(
                matches!(
                    parse(&dtmf(bad)),
                    Err(WireError::Invalid {
                        event: "dtmf",
                        field: "digit"
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn outbound_frames_are_the_protocol_shapes() {
        let media: serde_json::Value = serde_json::from_str(&media_json("MZ1", "AAAA")).unwrap();
        assert_eq!(
            media,
            serde_json::json!({"event":"media","streamSid":"MZ1","media":{"payload":"AAAA"}})
        );
        let mark: serde_json::Value = serde_json::from_str(&mark_json("MZ1", "7")).unwrap();
        assert_eq!(
            mark,
            serde_json::json!({"event":"mark","streamSid":"MZ1","mark":{"name":"7"}})
        );
        let clear: serde_json::Value = serde_json::from_str(&clear_json("MZ1")).unwrap();
        assert_eq!(
            clear,
            serde_json::json!({"event":"clear","streamSid":"MZ1"})
        );
    }
}

#[cfg(test)]
mod props {
    //! Properties of the frame parser (README.md, Security, "Parsers that cannot be crashed").
    use std::time::Instant;

    use base64::{Engine, engine::general_purpose::STANDARD};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::{props::text, twilio::media::MediaStream};

    /// The names the parser looks for, so generated objects reach its branches.
    const FIELDS: &[&str] = &[
        "event",
        "streamSid",
        "protocol",
        "start",
        "callSid",
        "accountSid",
        "customParameters",
        "mediaFormat",
        "encoding",
        "media",
        "payload",
        "timestamp",
        "track",
        "dtmf",
        "digit",
        "mark",
        "name",
    ];

    const EVENTS: &[&str] = &["connected", "start", "media", "dtmf", "mark", "stop"];

    /// A frame shaped like Twilio's: a known (or any) event and arbitrary values in the fields
    /// the parser reads.
    fn frame() -> impl Strategy<Value = String> {
        crate::props::json_frame("event", EVENTS, FIELDS, &[])
    }

    /// Feeds `text` to the parser, and to a media stream before and after its `start`.
    fn feed(text: &str) {
        let _ = parse(text);
        let t0 = Instant::now();
        let mut fresh = MediaStream::new();
        let _ = fresh.handle_text(t0, text);
        while fresh.poll_event().is_some() {}
        let mut started = MediaStream::new();
        started
            .handle_text(t0, fixtures::START)
            .expect("the fixture is a valid start");
        let _ = started.handle_text(t0, text);
        while started.poll_event().is_some() {}
        started.send_media(t0, 1, "AAAA".into());
        let _ = started.send_clear(t0);
    }

    fn digit() -> impl Strategy<Value = String> {
        prop::sample::select(&b"0123456789*#ABCD"[..]).prop_map(|b| char::from(b).to_string())
    }

    proptest! {
        #![proptest_config(crate::props::config(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            feed(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_text_never_panics(s in text(64)) {
            feed(&s);
        }

        #[test]
        fn arbitrary_json_frames_never_panic(f in frame()) {
            feed(&f);
        }

        #[test]
        fn a_start_frame_parses_to_what_was_put_in(
            stream_sid in text(8),
            call_sid in text(8),
            account_sid in text(8),
            params in prop::collection::hash_map(text(6), text(10), 0..5),
            encoding in prop::option::of(text(6)),
        ) {
            let mut start = json!({
                "streamSid": stream_sid, "callSid": call_sid, "accountSid": account_sid,
                "tracks": ["inbound"], "customParameters": params,
            });
            if let Some(e) = &encoding {
                start["mediaFormat"] = json!({"encoding": e, "sampleRate": 8000, "channels": 1});
            }
            let frame = json!({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                "start": start});
            let frame = frame.to_string();
            prop_assert_eq!(parse(&frame), Ok(TwilioMessage::Start(Box::new(StartInfo {
                stream_sid, call_sid, account_sid, custom_parameters: params, encoding,
            }))));
        }

        #[test]
        fn a_media_frame_parses_to_what_was_put_in(
            payload in text(16),
            timestamp in any::<u64>(),
            track in prop::option::of(text(4)),
        ) {
            let mut media = json!({"chunk": "1", "timestamp": timestamp.to_string(),
                "payload": payload});
            if let Some(t) = &track {
                media["track"] = json!(t);
            }
            let frame = json!({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1",
                "media": media}).to_string();
            prop_assert_eq!(parse(&frame), Ok(TwilioMessage::Media {
                payload: payload.into(), timestamp_ms: timestamp, track: track.map(Into::into),
            }));
        }

        #[test]
        fn connected_mark_dtmf_and_stop_frames_parse_to_what_was_put_in(
            protocol in text(6),
            name in text(8),
            digit in digit(),
        ) {
            let frame = |v: Value| parse(&v.to_string()).map(|m| format!("{m:?}"));
            prop_assert_eq!(
                frame(json!({"event": "connected", "protocol": protocol, "version": "1.0.0"})),
                Ok(format!("{:?}", TwilioMessage::Connected { protocol }))
            );
            prop_assert_eq!(
                frame(json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}})),
                Ok(format!("{:?}", TwilioMessage::Mark { name }))
            );
            prop_assert_eq!(
                frame(json!({"event": "dtmf", "streamSid": "MZ1",
                    "dtmf": {"track": "inbound_track", "digit": digit}})),
                Ok(format!("{:?}", TwilioMessage::Dtmf { digit }))
            );
            prop_assert_eq!(
                frame(json!({"event": "stop", "streamSid": "MZ1", "stop": {}})),
                Ok(format!("{:?}", TwilioMessage::Stop))
            );
        }

        #[test]
        fn an_unknown_event_is_named_not_refused(event in text(80)) {
            prop_assume!(!EVENTS.contains(&event.as_str()));
            let frame = json!({"event": event, "x": 1}).to_string();
            prop_assert_eq!(parse(&frame), Ok(TwilioMessage::Unknown {
                event: event.chars().take(64).collect(),
            }));
        }

        #[test]
        fn a_dtmf_digit_off_the_keypad_is_refused(digit in prop_oneof![
            any::<char>().prop_map(String::from),
            text(6),
            (digit(), text(3)).prop_map(|(d, t)| d + &t),
        ]) {
            prop_assume!(!(digit.len() == 1 && "0123456789*#ABCD".contains(&digit)));
            let frame = json!({"event": "dtmf", "streamSid": "MZ1",
                "dtmf": {"track": "inbound_track", "digit": digit}}).to_string();
            prop_assert_eq!(
                parse(&frame),
                Err(WireError::Invalid { event: "dtmf", field: "digit" })
            );
        }

        #[test]
        fn base64_validation_agrees_with_the_decoder(
            s in "[A-Za-z0-9+/=!-]{0,12}",
            bytes in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            prop_assert_eq!(base64_len(&s), STANDARD.decode(&s).ok().map(|v| v.len()), "{:?}", s);
            let encoded = STANDARD.encode(&bytes);
            prop_assert_eq!(base64_len(&encoded), Some(bytes.len()));
        }
    }
}
