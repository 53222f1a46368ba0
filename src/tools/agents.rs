//! A client's other agents (README "Agents"): besides its main agent (the client's own
//! instructions), a client may define specialists, each with its own instructions and tools;
//! the voice stays the same. `switch_agent {agent}` hands the caller to one of them mid-call.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{BuiltIn, Enabled, http::HttpTools};

/// The name of the client's own agent (its `instructions` and `tools`).
pub const MAIN: &str = "main";
/// Most agents per client besides the main one.
pub const MAX_AGENTS: usize = 8;
const MAX_INSTRUCTIONS: usize = 20_000;
const MAX_DESCRIPTION: usize = 500;

/// One specialist, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// How `switch_agent` names it (`^[a-z0-9_-]{1,32}$`, not `main`).
    pub name: String,
    /// When to hand a caller to it (the model reads this).
    pub description: String,
    /// Its prompt (replaces the client's instructions while it has the call).
    pub instructions: String,
    /// Built-in tools it may use (absent: the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Operator HTTP tools it may use, by name (absent: all of the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tools: Option<Vec<String>>,
}

impl AgentDef {
    /// Its built-in tools, if it restricts them.
    pub fn enabled(&self) -> Option<Enabled> {
        self.tools
            .as_ref()
            .and_then(|t| Enabled::parse(&json!(t)).ok())
    }
}

/// A client's specialists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agents(Vec<AgentDef>);

impl Agents {
    /// Parses and validates the admin API's `agents` (`null` is none) against the client's
    /// HTTP tools. Errors name the agent and field (`[0].tools: …`).
    pub fn parse(value: &Value, http: &HttpTools) -> Result<Self, String> {
        let list = match value {
            Value::Null => return Ok(Self::default()),
            Value::Array(a) => a,
            _ => return Err("must be a list of agents".into()),
        };
        if list.len() > MAX_AGENTS {
            return Err(format!("at most {MAX_AGENTS} agents"));
        }
        let mut out: Vec<AgentDef> = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let at = |field: &str, why: String| format!("[{i}].{field}: {why}");
            let mut a: AgentDef =
                serde_json::from_value(v.clone()).map_err(|e| format!("[{i}]: {e}"))?;
            a.name = a.name.trim().to_string();
            let name_ok = (1..=32).contains(&a.name.len())
                && a.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !name_ok {
                return Err(at("name", "must match ^[a-z0-9_-]{1,32}$".into()));
            }
            if a.name == MAIN || out.iter().any(|o| o.name == a.name) {
                return Err(at("name", format!("{} is taken", a.name)));
            }
            a.description = a.description.trim().to_string();
            if a.description.is_empty() || a.description.chars().count() > MAX_DESCRIPTION {
                return Err(at(
                    "description",
                    format!("must be 1 to {MAX_DESCRIPTION} characters"),
                ));
            }
            a.instructions = a.instructions.trim().to_string();
            if a.instructions.is_empty() || a.instructions.chars().count() > MAX_INSTRUCTIONS {
                return Err(at(
                    "instructions",
                    format!("must be 1 to {MAX_INSTRUCTIONS} characters"),
                ));
            }
            if let Some(t) = &a.tools {
                Enabled::parse(&json!(t)).map_err(|why| at("tools", why))?;
            }
            if let Some(names) = &a.http_tools {
                for n in names {
                    if http.get(n).is_none() {
                        return Err(at("http_tools", format!("no HTTP tool called {n:?}")));
                    }
                }
            }
            out.push(a);
        }
        Ok(Self(out))
    }

    /// As stored (`None` when there are none).
    pub fn to_stored(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_json().to_string())
    }

    /// Reads what [`Agents::to_stored`] wrote (unreadable text counts as none).
    pub fn from_stored(text: Option<&str>, http: &HttpTools) -> Self {
        crate::json::from_stored(text, |v| Self::parse(v, http))
    }

    /// The JSON form (the admin API's `agents`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Array(Vec::new()))
    }

    /// The agent called `name` (`None` for `main` or an unknown name).
    pub fn get(&self, name: &str) -> Option<&AgentDef> {
        self.0.iter().find(|a| a.name == name)
    }

    /// Whether there are none (then `switch_agent` is not offered).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `switch_agent`'s definition, from the point of view of agent `current` (it may switch
    /// to every other agent, `main` included).
    pub fn switch_definition(&self, current: &str) -> Value {
        let mut names = Vec::new();
        let mut lines = Vec::new();
        if current != MAIN {
            names.push(MAIN.to_string());
            lines.push(format!("{MAIN}: the main receptionist"));
        }
        for a in self.0.iter().filter(|a| a.name != current) {
            names.push(a.name.clone());
            lines.push(format!("{}: {}", a.name, a.description));
        }
        json!({"type": "function", "name": BuiltIn::SwitchAgent.name(),
            "description": format!(
                "Hand the caller to another agent of this business, who takes over the \
                 conversation. Agents: {}.", lines.join("; ")),
            "parameters": {"type": "object", "properties": {
                "agent": {"type": "string", "enum": names}},
                "required": ["agent"], "additionalProperties": false}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn billing() -> Value {
        json!({"name": "billing", "description": "Bills and payments.",
            "instructions": "You are the billing specialist.", "tools": ["end_call"]})
    }

    #[test]
    fn agents_round_trip_and_switch_lists_the_others() {
        let a = Agents::parse(&json!([billing()]), &HttpTools::default()).unwrap();
        assert_eq!(
            Agents::from_stored(a.to_stored().as_deref(), &HttpTools::default()),
            a
        );
        let d = a.switch_definition(MAIN);
        assert_eq!(
            d["parameters"]["properties"]["agent"]["enum"],
            json!(["billing"])
        );
        let d = a.switch_definition("billing");
        assert_eq!(
            d["parameters"]["properties"]["agent"]["enum"],
            json!(["main"])
        );
        assert_eq!(
            a.get("billing").unwrap().enabled().unwrap().names(),
            ["end_call"]
        );
    }

    #[test]
    fn bad_agents_are_refused_by_name() {
        let with = |k: &str, v: Value| {
            let mut b = billing();
            b[k] = v;
            json!([b])
        };
        for (bad, needle) in [
            (with("name", json!("main")), "taken"),
            (with("name", json!("Billing Dept")), "[0].name"),
            (with("instructions", json!(" ")), "[0].instructions"),
            (with("description", json!("")), "[0].description"),
            (with("tools", json!(["fly"])), "[0].tools"),
            (with("http_tools", json!(["book"])), "no HTTP tool"),
            (with("voice", json!("ash")), "unknown field"),
            (json!([billing(), billing()]), "taken"),
        ] {
            let err = Agents::parse(&bad, &HttpTools::default()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
