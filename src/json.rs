//! A JSON string field borrowed from the frame it was parsed from when it has no escapes (the
//! common case for base64 audio), owned otherwise. serde's own `Cow<str>` support copies inside
//! an `Option`, and audio payloads are the hot path of both protocols. Also [`from_stored`], how
//! a client's JSON columns are read back.

use std::borrow::Cow;

use serde::Deserialize;

/// A string borrowed from the input when possible.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Reads a JSON column written by a `to_stored` (the client's tools, lines, HTTP tools,
/// agents): `parse` validates it as when it was saved; absent or unreadable text is the
/// default, as if none had been set.
pub fn from_stored<T: Default>(
    text: Option<&str>,
    parse: impl FnOnce(&serde_json::Value) -> Result<T, String>,
) -> T {
    text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| parse(&v).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        payload: Option<Text<'a>>,
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_owned() {
        let f: Frame<'_> = serde_json::from_str(r#"{"payload":"AAAA"}"#).unwrap();
        assert!(matches!(f.payload.unwrap().0, Cow::Borrowed("AAAA")));
        let f: Frame<'_> = serde_json::from_str(r#"{"payload":"A\/AA"}"#).unwrap();
        assert!(matches!(f.payload.unwrap().0, Cow::Owned(ref s) if s == "A/AA"));
    }
}
