//! TwiML documents (docs/twilio-openai-reference.md §3), written with quick-xml so every attribute and text is
//! escaped by the library, never by string formatting.

use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event},
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
            el.push_attribute((*k, *v));
        }
        self.0
            .write_event(Event::Start(el))
            .expect("writing to a Vec cannot fail");
    }
    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut el = BytesStart::new(name);
        for (k, v) in attrs {
            el.push_attribute((*k, *v));
        }
        self.0
            .write_event(Event::Empty(el))
            .expect("writing to a Vec cannot fail");
    }
    fn text(&mut self, text: &str) {
        self.0
            .write_event(Event::Text(BytesText::new(text)))
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
    fn dial_says_first_then_dials() {
        let els = parse(&dial("+15551234567", Some("Transferring you."), "en"));
        let names: Vec<_> = els.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["Response", "Say", "Dial"]);
        assert_eq!(els[2].2, "+15551234567");
        assert_eq!(parse(&hangup()).last().unwrap().0, "Hangup");
    }
}
