//! Shared pieces of the property tests (README.md, Security, "Parsers that cannot be
//! crashed"): each parser's `mod props` states its own properties; this module fixes how many
//! cases they run and supplies the hostile text they are fed.

use proptest::prelude::*;

/// A property-test configuration running `cases` cases, or `PROPTEST_CASES` when that is set
/// (for a longer run: `PROPTEST_CASES=100000 cargo test --lib props`). proptest's own
/// `with_cases` would ignore the variable.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Pieces that break naive escaping or parsing: markup, entities, CDATA ends, quotes, every
/// line end, control characters (XML 1.0 cannot carry most of them), the noncharacters
/// U+FFFE/U+FFFF, non-BMP characters, JSON and form punctuation.
const NASTY: &[&str] = &[
    "<",
    ">",
    "&",
    "&amp;",
    "&#0;",
    "&#x1F600;",
    "]]>",
    "<![CDATA[",
    "-->",
    "\"",
    "'",
    "\\",
    "\0",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\u{1}",
    "\u{8}",
    "\u{b}",
    "\u{c}",
    "\u{1f}",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{fffd}",
    "\u{feff}",
    "\u{1f600}",
    "\u{10ffff}",
    "\u{e000}",
    "\u{d7ff}",
    "=",
    "%",
    "%zz",
    "%00",
    "+",
    "?",
    "#",
    ":",
    "/",
    "{",
    "}",
    "[",
    "]",
    ",",
    "é",
    "٣",
    " ",
];

/// Any text: mostly arbitrary Unicode scalar values (controls included), with the pieces
/// above mixed in.
pub(crate) fn text(max_pieces: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>().prop_map(String::from),
            2 => prop::sample::select(NASTY).prop_map(str::to_string),
            1 => "[a-zA-Z0-9]{1,8}",
        ],
        0..max_pieces,
    )
    .prop_map(|pieces| pieces.concat())
}

/// Any JSON value, a few levels deep: leaves of every kind (hostile text, and `words` the parser
/// looks for), objects keyed by `fields` the parser reads or by any text.
pub(crate) fn json_value(
    fields: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(8).prop_map(Value::from),
        prop::sample::select(if words.is_empty() { &[""][..] } else { words })
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(fields).prop_map(str::to_string),
                    text(4)
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON frame shaped like a protocol's: `tag` (`event`, `type`) one of `kinds` (or any
/// value), and arbitrary values ([`json_value`]) in the `fields` its parser reads.
pub(crate) fn json_frame(
    tag: &'static str,
    kinds: &'static [&'static str],
    fields: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = String> {
    use serde_json::Value;
    (
        prop_oneof![
            3 => prop::sample::select(kinds).prop_map(Value::from),
            1 => json_value(fields, words),
        ],
        prop::collection::btree_map(
            prop::sample::select(fields),
            json_value(fields, words),
            0..5,
        ),
    )
        .prop_map(move |(kind, fields)| {
            let mut o: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            o.insert(tag.into(), kind);
            Value::Object(o).to_string()
        })
}
