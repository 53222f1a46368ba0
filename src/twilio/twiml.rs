//! TwiML documents (docs/twilio-openai-reference.md §3), written with quick-xml; every text and
//! attribute value goes through [`escape`], never through string formatting.
//!
//! Invariant: any `&str` in any slot gives well-formed XML 1.0 that a conforming parser (what
//! Twilio runs) reads back as that text, except for the characters XML 1.0 cannot carry at all
//! (NUL and the other C0 controls but tab, LF and CR; U+FFFE, U+FFFF): each of those becomes
//! U+FFFD, so the document stays well-formed and nothing merges with its neighbours
//! (README.md, Security, "Parsers that cannot be crashed").

use std::borrow::Cow;

use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event, attributes::Attribute},
    name::QName,
};

/// `<Connect><Stream>` parameters.
pub struct ConnectStream<'a> {
    /// `wss://…/twilio/media` (no query string: Twilio does not support one).
    pub stream_url: &'a str,
    /// `<Connect action>`: asked what to do when the stream ends.
    pub action_url: Option<&'a str>,
    /// `<Parameter>`s, delivered in `start.customParameters`.
    pub parameters: &'a [(&'a str, &'a str)],
}

struct Doc(Writer<Vec<u8>>);

impl Doc {
    fn new() -> Self {
        let mut w = Writer::new(Vec::with_capacity(512));
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
            .expect("writing to a Vec cannot fail");
        let mut doc = Self(w);
        doc.open("Response", &[]);
        doc
    }
    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut el = BytesStart::new(name);
        for (k, v) in attrs {
            el.push_attribute(attribute(k, v));
        }
        self.0
            .write_event(Event::Start(el))
            .expect("writing to a Vec cannot fail");
    }
    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut el = BytesStart::new(name);
        for (k, v) in attrs {
            el.push_attribute(attribute(k, v));
        }
        self.0
            .write_event(Event::Empty(el))
            .expect("writing to a Vec cannot fail");
    }
    fn text(&mut self, text: &str) {
        self.0
            .write_event(Event::Text(BytesText::from_escaped(escape(text, false))))
            .expect("writing to a Vec cannot fail");
    }
    fn close(&mut self, name: &str) {
        self.0
            .write_event(Event::End(BytesEnd::new(name)))
            .expect("writing to a Vec cannot fail");
    }
    fn say(&mut self, text: &str, language: &str) {
        self.open("Say", &[("language", language)]);
        self.text(text);
        self.close("Say");
    }
    fn finish(mut self) -> String {
        self.close("Response");
        // quick-xml writes UTF-8 from &str inputs only.
        String::from_utf8(self.0.into_inner()).expect("TwiML is UTF-8")
    }
}

/// Whether XML 1.0 can carry `c` at all (its `Char` production, §2.2).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// `name="value"`, the value escaped by [`escape`] (element and attribute names are ours).
fn attribute<'a>(name: &'a str, value: &'a str) -> Attribute<'a> {
    Attribute {
        key: QName(name.as_bytes()),
        value: match escape(value, true) {
            Cow::Borrowed(v) => Cow::Borrowed(v.as_bytes()),
            Cow::Owned(v) => Cow::Owned(v.into_bytes()),
        },
    }
}

/// `s` as XML 1.0 character data (`attr`: a double-quoted attribute value) that a conforming
/// parser reads back as `s`: markup characters and quotes as entities; CR as `&#13;` (a parser
/// turns a literal CR into LF, §2.11), and in an attribute also tab and LF as references (a
/// parser turns literal ones into spaces, §3.3.3); characters XML 1.0 cannot carry become
/// U+FFFD (even as a reference they are not well-formed). quick-xml's own escaping does only
/// the markup characters: a NUL in a `<Say>` text made the whole TwiML unreadable.
fn escape(s: &str, attr: bool) -> Cow<'_, str> {
    let special = |c: char| {
        matches!(c, '<' | '>' | '&' | '"' | '\'' | '\r')
            || (attr && matches!(c, '\t' | '\n'))
            || !is_xml_char(c)
    };
    if !s.contains(special) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            c if !is_xml_char(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `<Connect [action]><Stream url><Parameter …/></Stream></Connect>`.
pub fn connect_stream(c: &ConnectStream<'_>) -> String {
    let mut d = Doc::new();
    match c.action_url {
        Some(action) => d.open("Connect", &[("action", action), ("method", "POST")]),
        None => d.open("Connect", &[]),
    }
    d.open("Stream", &[("url", c.stream_url)]);
    for (name, value) in c.parameters {
        d.empty("Parameter", &[("name", name), ("value", value)]);
    }
    d.close("Stream");
    d.close("Connect");
    d.finish()
}

/// `<Say>text</Say><Hangup/>`.
pub fn say_hangup(text: &str, language: &str) -> String {
    let mut d = Doc::new();
    d.say(text, language);
    d.empty("Hangup", &[]);
    d.finish()
}

/// Optionally `<Say>`, then `<Dial>number</Dial>`.
pub fn dial(number: &str, say_first: Option<&str>, language: &str) -> String {
    let mut d = Doc::new();
    if let Some(text) = say_first {
        d.say(text, language);
    }
    d.open("Dial", &[]);
    d.text(number);
    d.close("Dial");
    d.finish()
}

/// `<Redirect method="POST">url</Redirect>`: Twilio fetches the TwiML from `url` instead.
pub fn redirect(url: &str) -> String {
    let mut d = Doc::new();
    d.open("Redirect", &[("method", "POST")]);
    d.text(url);
    d.close("Redirect");
    d.finish()
}

/// `<Hangup/>`.
pub fn hangup() -> String {
    let mut d = Doc::new();
    d.empty("Hangup", &[]);
    d.finish()
}

#[cfg(test)]
mod tests {
    use quick_xml::{Reader, events::Event};

    use super::*;

    /// (element name, attributes, text) in document order.
    type Element = (String, Vec<(String, String)>, String);

    fn parse(xml: &str) -> Vec<Element> {
        let mut r = Reader::from_str(xml);
        let mut out = Vec::new();
        loop {
            match r.read_event().unwrap() {
                Event::Start(e) | Event::Empty(e) => {
                    let attrs = e
                        .attributes()
                        .map(|a| {
                            let a = a.unwrap();
                            (
                                String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                                a.unescape_value().unwrap().into_owned(),
                            )
                        })
                        .collect();
                    out.push((
                        String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                        attrs,
                        String::new(),
                    ));
                }
                Event::Text(t) => {
                    if let Some(last) = out.last_mut() {
                        last.2.push_str(&t.decode().unwrap());
                    }
                }
                // quick-xml reports `&amp;` and friends as separate events.
                Event::GeneralRef(r) => {
                    if let Some(last) = out.last_mut() {
                        let name = r.decode().unwrap();
                        let resolved = quick_xml::escape::resolve_predefined_entity(&name).unwrap();
                        last.2.push_str(resolved);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out
    }

    #[test]
    fn connect_stream_carries_url_action_and_token() {
        let xml = connect_stream(&ConnectStream {
            stream_url: "wss://gw.example/twilio/media",
            action_url: Some("https://gw.example/twilio/after-stream"),
            parameters: &[("token", "v1.1.abc")],
        });
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>"));
        let els = parse(&xml);
        let names: Vec<_> = els.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["Response", "Connect", "Stream", "Parameter"]);
        assert!(els[1].1.contains(&(
            "action".into(),
            "https://gw.example/twilio/after-stream".into()
        )));
        assert_eq!(
            els[2].1,
            vec![("url".into(), "wss://gw.example/twilio/media".into())]
        );
        assert_eq!(
            els[3].1,
            vec![
                ("name".into(), "token".into()),
                ("value".into(), "v1.1.abc".into())
            ]
        );
    }

    #[test]
    fn hostile_text_is_escaped() {
        let text = "Tom & Jerry's <b>\"shop\"</b>";
        let xml = say_hangup(text, "en-US");
        assert!(!xml.contains("<b>"));
        let els = parse(&xml);
        assert_eq!(els[1].0, "Say");
        assert_eq!(els[1].1, vec![("language".into(), "en-US".into())]);
        assert_eq!(els[1].2, text);
        assert_eq!(els[2].0, "Hangup");
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced_and_line_ends_survive() {
        // Found by the properties in `props`: a NUL made the document unreadable (`"\0"` in a
        // `<Say>` or a `<Parameter name>`), a CR read back as LF (`"\r"` in a `<Say>` or a
        // `<Redirect>`), and tab or LF in an attribute read back as a space.
        let xml = say_hangup("a\0b\rc\r\nd\u{fffe}", "en\tUS\n");
        assert!(!xml.contains('\0'), "{xml}");
        assert!(xml.contains("&#13;"), "{xml}");
        let xml = connect_stream(&ConnectStream {
            stream_url: "wss://x\t/",
            action_url: None,
            parameters: &[("\0", "v\n")],
        });
        assert!(
            xml.contains(
                "<Stream url=\"wss://x&#9;/\"><Parameter name=\"\u{fffd}\" value=\"v&#10;\"/>"
            ),
            "{xml}"
        );
        assert_eq!(
            redirect("\r"),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Redirect method="POST">&#13;</Redirect></Response>"#
        );
    }

    #[test]
    fn dial_says_first_then_dials() {
        let els = parse(&dial("+15551234567", Some("Transferring you."), "en"));
        let names: Vec<_> = els.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["Response", "Say", "Dial"]);
        assert_eq!(els[2].2, "+15551234567");
        assert_eq!(parse(&hangup()).last().unwrap().0, "Hangup");
    }
}

#[cfg(test)]
mod props {
    //! Any text in any slot gives well-formed XML 1.0 that reads back as the text (README.md,
    //! Security, "Parsers that cannot be crashed"), read as a conforming XML 1.0 parser (what
    //! Twilio runs) reads it: line ends normalized in text (XML 1.0 §2.11), white space in
    //! attribute values (§3.3.3).
    use proptest::prelude::*;
    use quick_xml::{
        Reader,
        escape::{resolve_predefined_entity, unescape},
        events::Event,
    };

    use super::*;
    use crate::props::text;

    /// (element name, attributes, text) in document order.
    type Element = (String, Vec<(String, String)>, String);

    /// Reads `xml` as a conforming XML 1.0 parser would, refusing what is not well-formed
    /// (quick-xml does not check characters, so that is checked here).
    fn read(xml: &str) -> Result<Vec<Element>, String> {
        if let Some(c) = xml.chars().find(|&c| !is_xml_char(c)) {
            return Err(format!("{c:?} is not an XML 1.0 character"));
        }
        let mut r = Reader::from_str(xml);
        let mut out: Vec<Element> = Vec::new();
        loop {
            match r.read_event().map_err(|e| e.to_string())? {
                Event::Start(e) | Event::Empty(e) => {
                    let mut attrs = Vec::new();
                    for a in e.attributes() {
                        let a = a.map_err(|e| e.to_string())?;
                        let raw = std::str::from_utf8(&a.value).map_err(|e| e.to_string())?;
                        // §3.3.3: each literal white-space character becomes a space; a
                        // character reference keeps its character.
                        let normalized = raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " ");
                        let value = unescape(&normalized).map_err(|e| e.to_string())?;
                        check_char_refs(&normalized)?;
                        attrs.push((
                            String::from_utf8(a.key.as_ref().to_vec())
                                .map_err(|e| e.to_string())?,
                            value.into_owned(),
                        ));
                    }
                    out.push((
                        String::from_utf8(e.name().as_ref().to_vec()).map_err(|e| e.to_string())?,
                        attrs,
                        String::new(),
                    ));
                }
                Event::End(_) => {}
                Event::Text(t) => {
                    let t = t.xml10_content().map_err(|e| e.to_string())?;
                    if let Some(last) = out.last_mut() {
                        last.2.push_str(&t);
                    }
                }
                Event::GeneralRef(g) => {
                    let resolved = match g.resolve_char_ref().map_err(|e| e.to_string())? {
                        Some(c) if is_xml_char(c) => c.to_string(),
                        Some(c) => {
                            return Err(format!("&#{};: not an XML 1.0 character", c as u32));
                        }
                        None => {
                            let name = g.decode().map_err(|e| e.to_string())?;
                            resolve_predefined_entity(&name)
                                .ok_or_else(|| format!("undeclared entity {name}"))?
                                .to_string()
                        }
                    };
                    if let Some(last) = out.last_mut() {
                        last.2.push_str(&resolved);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Refuses a character reference to a character XML 1.0 cannot carry (WFC: Legal Char).
    fn check_char_refs(raw: &str) -> Result<(), String> {
        for part in raw.split("&#").skip(1) {
            let num = part.split(';').next().unwrap_or_default();
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => num.parse(),
            }
            .map_err(|e| e.to_string())?;
            if !char::from_u32(code).is_some_and(is_xml_char) {
                return Err(format!("&#{num};: not an XML 1.0 character"));
            }
        }
        Ok(())
    }

    /// What a slot given `s` must read back as: `s`, with each character XML 1.0 cannot carry
    /// replaced by U+FFFD (see [`escape`]).
    fn carried(s: &str) -> String {
        s.chars()
            .map(|c| if is_xml_char(c) { c } else { '\u{fffd}' })
            .collect()
    }

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), carried(v)))
            .collect()
    }

    fn el(name: &str, a: &[(&str, &str)], text: &str) -> Element {
        (name.to_string(), attrs(a), carried(text))
    }

    fn response(mut els: Vec<Element>) -> Vec<Element> {
        els.insert(0, el("Response", &[], ""));
        els
    }

    proptest! {
        #![proptest_config(crate::props::config(512))]

        #[test]
        fn say_hangup_carries_any_text(say in text(32), language in text(6)) {
            let xml = say_hangup(&say, &language);
            prop_assert_eq!(read(&xml), Ok(response(vec![
                el("Say", &[("language", &language)], &say),
                el("Hangup", &[], ""),
            ])), "{}", xml);
        }

        #[test]
        fn dial_carries_any_text(number in text(16), say in prop::option::of(text(32)),
            language in text(6)) {
            let xml = dial(&number, say.as_deref(), &language);
            let mut els = Vec::new();
            if let Some(say) = &say {
                els.push(el("Say", &[("language", &language)], say));
            }
            els.push(el("Dial", &[], &number));
            prop_assert_eq!(read(&xml), Ok(response(els)), "{}", xml);
        }

        #[test]
        fn redirect_carries_any_text(url in text(24)) {
            let xml = redirect(&url);
            prop_assert_eq!(read(&xml), Ok(response(vec![
                el("Redirect", &[("method", "POST")], &url),
            ])), "{}", xml);
        }

        #[test]
        fn connect_stream_carries_any_text(
            stream_url in text(24),
            action_url in prop::option::of(text(24)),
            parameters in prop::collection::vec((text(6), text(12)), 0..4),
        ) {
            let pairs: Vec<(&str, &str)> =
                parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let xml = connect_stream(&ConnectStream {
                stream_url: &stream_url,
                action_url: action_url.as_deref(),
                parameters: &pairs,
            });
            let mut els = vec![match &action_url {
                Some(a) => el("Connect", &[("action", a), ("method", "POST")], ""),
                None => el("Connect", &[], ""),
            }];
            els.push(el("Stream", &[("url", &stream_url)], ""));
            for (k, v) in &pairs {
                els.push(el("Parameter", &[("name", k), ("value", v)], ""));
            }
            prop_assert_eq!(read(&xml), Ok(response(els)), "{}", xml);
        }
    }
}
