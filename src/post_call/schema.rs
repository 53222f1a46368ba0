//! The client's `results_schema` and the schema of the whole answer (pure).
//!
//! A client may describe the structured fields it wants from each call as a JSON Schema, e.g.
//! an appointment date, the reason and the urgency. The post-call job asks the Responses API
//! for them with strict structured output, which accepts only a subset of JSON Schema
//! (sources in [`super::responses`]). warmline **refuses** a schema strict mode cannot take
//! when the client saves it (422 naming `results_schema` and the problem, with its place in
//! the schema) rather than normalising it: a normalised schema (optional fields made required
//! and nullable, `additionalProperties` forced to false, unknown keywords dropped) would mean
//! something else than what the client wrote, and the answers it validates would surprise the
//! client. What is stored is exactly what is sent to the model and what answers are validated
//! against.
//!
//! The rules ([`check_results_schema`]):
//! 1. a valid JSON Schema (draft 2020-12, checked by the `jsonschema` crate, patterns
//!    included), at most [`MAX_SCHEMA_BYTES`] as JSON;
//! 2. an object at the top (`"type": "object"`, not `anyOf`);
//! 3. every object lists every property in `required` and has `"additionalProperties": false`
//!    (an optional field is a union with null: `"type": ["string", "null"]`);
//! 4. only the keywords strict mode supports ([`KEYWORDS`]), `$defs` only at the top and
//!    `$ref` only to one of them (`#/$defs/name`);
//! 5. at most [`MAX_DEPTH`] levels of nested objects and [`MAX_ENUM_VALUES`] enum values.

use jsonschema::Validator;
use serde_json::{Map, Value, json};

/// Largest accepted `results_schema`, as compact JSON.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;

/// Most levels of nested objects in a `results_schema` (its top object counts as one). The
/// answer's schema wraps it in one more level, well inside the API's limit of 10.
pub const MAX_DEPTH: usize = 5;

/// Most `enum` values in a `results_schema`, all enums together (the API's limit is 1000).
pub const MAX_ENUM_VALUES: usize = 500;

/// The keywords strict structured output supports, and so the only ones accepted.
pub const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "description",
    "title",
    "$comment",
    // strings
    "pattern",
    "format",
    // numbers
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    // arrays
    "minItems",
    "maxItems",
];

/// The string formats strict mode supports.
pub const FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// The only `$schema` accepted (at the top): draft 2020-12, which warmline validates with.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Checks a client's `results_schema`; the error says what is wrong and where (a JSON pointer
/// into the schema), ready to follow `results_schema: ` in a 422.
pub fn check_results_schema(schema: &Value) -> Result<(), String> {
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "must be at most {MAX_SCHEMA_BYTES} bytes as JSON (this one is {size})"
        ));
    }
    let Some(top) = schema.as_object() else {
        return Err("must be a JSON Schema object".into());
    };
    if let Err(e) = jsonschema::meta::validate(schema) {
        return Err(format!(
            "is not a valid JSON Schema: {e} (at {})",
            pointer(&e.instance_path().to_string())
        ));
    }
    if let Some(v) = top.get("$schema")
        && v.as_str() != Some(DRAFT_2020_12)
    {
        return Err(format!(
            "$schema must be {DRAFT_2020_12} or left out (warmline validates with draft 2020-12)"
        ));
    }
    if top.get("type").and_then(Value::as_str) != Some("object") {
        return Err(
            "must have \"type\": \"object\" at the top (the fields form one object)".into(),
        );
    }
    let defs = match top.get("$defs") {
        None => Map::new(),
        Some(Value::Object(d)) => d.clone(),
        Some(_) => return Err("$defs must be an object".into()),
    };
    let mut walk = Walk {
        defs: &defs,
        enum_values: 0,
    };
    walk.node(schema, "", 1, true)?;
    for (name, def) in &defs {
        walk.node(def, &format!("/$defs/{}", escape(name)), 1, false)?;
    }
    if walk.enum_values > MAX_ENUM_VALUES {
        return Err(format!(
            "has {} enum values; at most {MAX_ENUM_VALUES} are accepted",
            walk.enum_values
        ));
    }
    build_validator(schema).map(drop)
}

/// A validator for answers to `schema` (formats checked too: a `"format": "date"` field must
/// hold a date).
pub fn build_validator(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            format!(
                "cannot be used: {} (at {})",
                e.masked(),
                pointer(&e.instance_path().to_string())
            )
        })
}

fn pointer(p: &str) -> String {
    if p.is_empty() { "/".into() } else { p.into() }
}

/// `~` and `/` escaped for a JSON pointer.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

struct Walk<'a> {
    defs: &'a Map<String, Value>,
    enum_values: usize,
}

impl Walk<'_> {
    /// Checks one subschema at `at` (a JSON pointer), `depth` objects deep.
    fn node(&mut self, node: &Value, at: &str, depth: usize, top: bool) -> Result<(), String> {
        let here = || pointer(at);
        let Some(obj) = node.as_object() else {
            return Err(format!(
                "at {}: every subschema must be an object (true/false schemas are not supported in strict mode)",
                here()
            ));
        };
        for key in obj.keys() {
            let allowed =
                KEYWORDS.contains(&key.as_str()) || (top && (key == "$defs" || key == "$schema"));
            if !allowed {
                return Err(format!(
                    "at {}: the keyword \"{key}\" is not supported by strict structured output",
                    here()
                ));
            }
        }
        if let Some(r) = obj.get("$ref") {
            let name = r.as_str().and_then(|r| r.strip_prefix("#/$defs/"));
            if !name.is_some_and(|n| self.defs.contains_key(n)) {
                return Err(format!(
                    "at {}: $ref must name one of the top-level $defs as \"#/$defs/<name>\"",
                    here()
                ));
            }
            if obj.len() > 1
                && obj
                    .keys()
                    .any(|k| !matches!(k.as_str(), "$ref" | "description" | "title" | "$comment"))
            {
                return Err(format!(
                    "at {}: a $ref stands alone (a description or title may go with it)",
                    here()
                ));
            }
            return Ok(());
        }
        let types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            Some(_) => Vec::new(),
        };
        if let Some(bad) = types.iter().find(|t| !TYPES.contains(t)) {
            return Err(format!("at {}: unknown type \"{bad}\"", here()));
        }
        if let Some(any) = obj.get("anyOf") {
            if top {
                return Err("the top level must not be anyOf".into());
            }
            let Some(list) = any.as_array().filter(|l| !l.is_empty()) else {
                return Err(format!("at {}: anyOf must list schemas", here()));
            };
            for (i, sub) in list.iter().enumerate() {
                self.node(sub, &format!("{at}/anyOf/{i}"), depth, false)?;
            }
        }
        if let Some(e) = obj.get("enum") {
            self.enum_values += e.as_array().map_or(0, Vec::len);
        }
        if types.is_empty()
            && !obj.contains_key("enum")
            && !obj.contains_key("const")
            && !obj.contains_key("anyOf")
        {
            return Err(format!(
                "at {}: says nothing about its value: give it a \"type\" (or enum, const, anyOf)",
                here()
            ));
        }
        if let Some(f) = obj.get("format").and_then(Value::as_str)
            && !FORMATS.contains(&f)
        {
            return Err(format!(
                "at {}: format \"{f}\" is not supported (use one of {})",
                here(),
                FORMATS.join(", ")
            ));
        }
        if types.contains(&"object") || obj.contains_key("properties") {
            self.object(obj, at, depth)?;
        }
        if types.contains(&"array") || obj.contains_key("items") {
            let Some(items) = obj.get("items") else {
                return Err(format!(
                    "at {}: an array must say what its items are (\"items\")",
                    here()
                ));
            };
            self.node(items, &format!("{at}/items"), depth, false)?;
        }
        Ok(())
    }

    fn object(&mut self, obj: &Map<String, Value>, at: &str, depth: usize) -> Result<(), String> {
        let here = pointer(at);
        if depth > MAX_DEPTH {
            return Err(format!(
                "at {here}: objects are nested more than {MAX_DEPTH} levels deep"
            ));
        }
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Err(format!(
                "at {here}: every object needs \"additionalProperties\": false in strict mode"
            ));
        }
        let empty = Map::new();
        let properties = match obj.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(format!("at {here}: properties must be an object")),
        };
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = properties
            .keys()
            .map(String::as_str)
            .filter(|k| !required.contains(k))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "at {here}: every property must be listed in \"required\" in strict mode \
                 (missing: {}); make an optional field a union with null, e.g. \
                 \"type\": [\"string\", \"null\"]",
                quoted(&missing)
            ));
        }
        let unknown: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| !properties.contains_key(*k))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "at {here}: \"required\" lists properties it does not define: {}",
                quoted(&unknown)
            ));
        }
        for (name, sub) in properties {
            self.node(
                sub,
                &format!("{at}/properties/{}", escape(name)),
                depth + 1,
                false,
            )?;
        }
        Ok(())
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema of the whole answer: `{summary, fields}`, `fields` being the client's schema
/// (its `$defs` lifted to the top, where its `#/$defs/…` references then point), or
/// `{summary}` alone for a client without one.
pub fn answer_schema(results_schema: Option<&Value>) -> Value {
    let summary = json!({
        "type": "string",
        "description": "Two or three sentences for the business: who called, what they wanted, \
                        and what was agreed or is left to do."
    });
    let Some(fields) = results_schema.and_then(Value::as_object) else {
        return json!({
            "type": "object",
            "properties": {"summary": summary},
            "required": ["summary"],
            "additionalProperties": false
        });
    };
    let mut fields = fields.clone();
    let defs = fields.remove("$defs");
    fields.remove("$schema");
    let mut answer = json!({
        "type": "object",
        "properties": {"summary": summary, "fields": Value::Object(fields)},
        "required": ["summary", "fields"],
        "additionalProperties": false
    });
    if let (Some(defs), Some(obj)) = (defs, answer.as_object_mut()) {
        obj.insert("$defs".into(), defs);
    }
    answer
}

/// A checked answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The summary (trimmed, non-empty).
    pub summary: String,
    /// The client's fields (valid against its schema); `None` for a client without one.
    pub fields: Option<Value>,
}

/// Most characters of a summary kept.
pub const MAX_SUMMARY_CHARS: usize = 2000;

/// Checks `answer` against the answer schema's `validator`: the error lists where it does not
/// match (JSON pointers, values masked: they are the caller's words) and is what the model is
/// told when it is asked again. A blank summary does not match either.
pub fn check_answer(validator: &Validator, answer: &Value) -> Result<Answer, String> {
    let problems: Vec<String> = validator
        .iter_errors(answer)
        .take(3)
        .map(|e| {
            format!(
                "at {}: {}",
                pointer(&e.instance_path().to_string()),
                e.masked()
            )
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let summary = answer
        .get("summary")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    if summary.is_empty() {
        return Err("at /summary: the summary is empty".into());
    }
    let summary: String = summary.chars().take(MAX_SUMMARY_CHARS).collect();
    Ok(Answer {
        summary,
        fields: answer.get("fields").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example: an appointment date, the reason and the urgency.
    pub(crate) fn appointment() -> Value {
        json!({
            "type": "object",
            "properties": {
                "appointment_date": {"type": ["string", "null"], "format": "date",
                                     "description": "the day the caller wants to come"},
                "reason": {"type": "string"},
                "urgency": {"type": "string", "enum": ["low", "normal", "urgent"]}
            },
            "required": ["appointment_date", "reason", "urgency"],
            "additionalProperties": false
        })
    }

    fn refusal(schema: Value) -> String {
        check_results_schema(&schema).expect_err(&schema.to_string())
    }

    #[test]
    fn a_strict_schema_is_accepted() {
        check_results_schema(&appointment()).unwrap();
        let nested = json!({
            "$schema": DRAFT_2020_12,
            "type": "object",
            "properties": {
                "callback": {"anyOf": [{"$ref": "#/$defs/phone"}, {"type": "null"}]},
                "items": {"type": "array", "items": {"$ref": "#/$defs/phone"}, "maxItems": 3},
                "count": {"type": "integer", "minimum": 0}
            },
            "required": ["callback", "items", "count"],
            "additionalProperties": false,
            "$defs": {"phone": {"type": "object", "properties": {"number": {"type": "string"}},
                                "required": ["number"], "additionalProperties": false}}
        });
        check_results_schema(&nested).unwrap();
    }

    #[test]
    fn what_strict_mode_cannot_take_is_refused_with_its_place() {
        let mut optional = appointment();
        optional["required"] = json!(["reason", "urgency"]);
        let err = refusal(optional);
        assert!(err.contains("\"appointment_date\""), "{err}");
        assert!(err.contains("union with null"), "{err}");

        let mut open = appointment();
        open.as_object_mut().unwrap().remove("additionalProperties");
        assert!(refusal(open).contains("additionalProperties"));

        let mut nested_open = appointment();
        nested_open["properties"]["where"] = json!({"type": "object", "properties": {}});
        nested_open["required"] = json!(["appointment_date", "reason", "urgency", "where"]);
        let err = refusal(nested_open);
        assert!(err.starts_with("at /properties/where:"), "{err}");

        let mut keyword = appointment();
        keyword["properties"]["reason"]["minLength"] = json!(3);
        let err = refusal(keyword);
        assert!(
            err.contains("/properties/reason") && err.contains("minLength"),
            "{err}"
        );

        let mut format = appointment();
        format["properties"]["reason"]["format"] = json!("uri");
        assert!(refusal(format).contains("format \"uri\""));

        assert!(refusal(json!({"type": "array", "items": {"type": "string"}})).contains("top"));
        assert!(refusal(json!({"anyOf": [appointment()]})).contains("top"));
        assert!(refusal(json!("object")).contains("object"));
        assert!(
            refusal(
                json!({"type": "object", "properties": {"a": {}}, "required": ["a"],
            "additionalProperties": false})
            )
            .contains("says nothing")
        );
        let remote = json!({"type": "object", "properties": {"a": {"$ref": "https://x.example/s"}},
            "required": ["a"], "additionalProperties": false});
        assert!(refusal(remote).contains("$defs"));
        let extra_required = json!({"type": "object", "properties": {}, "required": ["ghost"],
            "additionalProperties": false});
        assert!(refusal(extra_required).contains("\"ghost\""));
        let draft7 = json!({"$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object", "properties": {}, "required": [], "additionalProperties": false});
        assert!(refusal(draft7).contains("2020-12"));
    }

    #[test]
    fn an_invalid_json_schema_or_pattern_is_refused() {
        let err = refusal(json!({"type": "object", "properties": {"a": {"type": 7}},
            "required": ["a"], "additionalProperties": false}));
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = refusal(json!({"type": "object",
            "properties": {"a": {"type": "string", "pattern": "(unclosed"}},
            "required": ["a"], "additionalProperties": false}));
        assert!(err.contains("pattern") || err.contains("regex"), "{err}");
    }

    #[test]
    fn size_depth_and_enum_values_are_capped() {
        let mut big = appointment();
        big["description"] = json!("x".repeat(MAX_SCHEMA_BYTES));
        assert!(refusal(big).contains("bytes"));

        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"type": "object", "properties": {"a": deep}, "required": ["a"],
                "additionalProperties": false});
        }
        check_results_schema(&deep).unwrap();
        let deeper = json!({"type": "object", "properties": {"a": deep}, "required": ["a"],
            "additionalProperties": false});
        assert!(refusal(deeper).contains("nested"));

        let values: Vec<String> = (0..=MAX_ENUM_VALUES).map(|i| format!("v{i}")).collect();
        let many = json!({"type": "object", "properties": {"a": {"type": "string", "enum": values}},
            "required": ["a"], "additionalProperties": false});
        assert!(refusal(many).contains("enum values"));
    }

    #[test]
    fn the_answer_schema_wraps_the_fields_and_lifts_their_defs() {
        let plain = answer_schema(None);
        assert_eq!(plain["required"], json!(["summary"]));
        assert!(plain["properties"].get("fields").is_none());
        check_results_schema(&plain).unwrap();

        let with_defs = json!({"$schema": DRAFT_2020_12, "type": "object",
            "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"],
            "additionalProperties": false,
            "$defs": {"p": {"type": "string", "enum": ["a", "b"]}}});
        let wrapped = answer_schema(Some(&with_defs));
        assert_eq!(wrapped["required"], json!(["summary", "fields"]));
        assert!(wrapped["properties"]["fields"].get("$defs").is_none());
        assert!(wrapped["properties"]["fields"].get("$schema").is_none());
        assert_eq!(wrapped["$defs"]["p"]["enum"], json!(["a", "b"]));
        // The wrapped schema is itself strict-valid, and its references resolve.
        check_results_schema(&wrapped).unwrap();
        let v = build_validator(&wrapped).unwrap();
        assert!(check_answer(&v, &json!({"summary": "s", "fields": {"p": "a"}})).is_ok());
        assert!(check_answer(&v, &json!({"summary": "s", "fields": {"p": "c"}})).is_err());
    }

    #[test]
    fn answers_are_checked_against_the_clients_fields() {
        let v = build_validator(&answer_schema(Some(&appointment()))).unwrap();
        let good = json!({"summary": "  Dana wants a cleaning next week.  ",
            "fields": {"appointment_date": "2026-12-03", "reason": "cleaning", "urgency": "low"}});
        let a = check_answer(&v, &good).unwrap();
        assert_eq!(a.summary, "Dana wants a cleaning next week.");
        assert_eq!(a.fields.unwrap()["urgency"], "low");

        let nullable = json!({"summary": "s",
            "fields": {"appointment_date": null, "reason": "r", "urgency": "normal"}});
        assert!(
            check_answer(&v, &nullable).is_ok(),
            "null where the schema allows it"
        );

        let wrong = json!({"summary": "s", "fields": {"appointment_date": "next tuesday",
            "reason": "secret words", "urgency": "whenever", "extra": 1}});
        let err = check_answer(&v, &wrong).unwrap_err();
        assert!(err.contains("/fields"), "{err}");
        assert!(!err.contains("secret words"), "values are masked: {err}");
        assert!(!err.contains("next tuesday"), "values are masked: {err}");

        let missing = json!({"summary": "s"});
        assert!(check_answer(&v, &missing).unwrap_err().contains("fields"));
        let blank = json!({"summary": "  ",
            "fields": {"appointment_date": null, "reason": "r", "urgency": "low"}});
        assert!(check_answer(&v, &blank).unwrap_err().contains("empty"));

        let no_fields = build_validator(&answer_schema(None)).unwrap();
        let a = check_answer(&no_fields, &json!({"summary": "ok"})).unwrap();
        assert_eq!(a.fields, None);
        assert!(check_answer(&no_fields, &json!({"summary": "ok", "fields": {}})).is_err());
    }
}
